"""The five reference studies of the zoo, rerun end to end on offline data.

>>> from equiaudit.zoo.studies import run_study
>>> result = run_study("rotated-digits", quick=True)   # tiny models and data: seconds
>>> print(result.to_markdown())

Each study trains its models (or loads the shipped checkpoints), measures them, audits them with
:func:`equiaudit.engine.audit`, and writes ``OUT/NAME/results.json``, one audit JSON per model and, when
:mod:`equiaudit.reports` is available, an HTML comparison ``OUT/NAME/report.html``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from equiaudit.errors import EquiauditError
from equiaudit.loading import resolve_device

from .common import StudyContext, StudyResult, Table

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["STUDIES", "StudyResult", "Table", "list_studies", "run_study", "study_options", "study_title"]

# name -> module (each has NAME, TITLE, MODELS, OPTIONS, trainings(ctx) and run(ctx))
STUDIES = {
    "rotated-digits": "rotated_digits",
    "rot-digits-hnet": "rot_digits_hnet",
    "segmentation": "segmentation",
    "scale": "scale",
    "steerable-vs-baseline": "steerable",
}
DEFAULT_OUT = Path("runs/studies")  # git-ignored in a checkout; never inside the source package reports/


def list_studies() -> list[str]:
    """The study names, in the order of the issue."""
    return list(STUDIES)


def _module(name: str) -> ModuleType:
    if name not in STUDIES:
        raise EquiauditError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    return importlib.import_module(f"{__name__}.{STUDIES[name]}")


def study_title(name: str) -> str:
    """One line saying what the study compares."""
    return _module(name).TITLE


def study_options(name: str) -> tuple[str, ...]:
    """The options study ``name`` takes (its module's ``OPTIONS``)."""
    return tuple(getattr(_module(name), "OPTIONS", ()))


def run_study(
    name: str,
    *,
    quick: bool = False,
    out_dir: str | Path = DEFAULT_OUT,
    device: str | torch.device | None = None,
    console: Console | None = None,
    log: Console | None = None,
    options: dict[str, Any] | None = None,
    jobs: int = 1,
) -> StudyResult:
    """Run study ``name`` and write its results under ``out_dir / name``.

    Args:
        quick: tiny models trained for one epoch on a few images, audits on a few images (for tests; the
            numbers mean nothing).
        device: ``None`` / ``auto`` picks CUDA when present.
        console: where the tables are printed (None: not printed); ``log``: progress and messages.
        options: what the user gave the study (``data``, ``weights``, ``download``, ``seeds``: see
            :data:`.common.STUDY_OPTIONS`); an option the study does not take is a one-line error.
        jobs: train the models the study asks for (its ``trainings(ctx)``) that have no checkpoint in this many
            processes before the run (:mod:`.parallel`; full mode only).
    """
    module = _module(name)
    ctx = StudyContext(
        name,
        quick=quick,
        out_dir=Path(out_dir),
        device=resolve_device(device),
        log=log,
        options=options,
        accepts=study_options(name),
        jobs=jobs,
    )
    started = time.perf_counter()
    ctx.pretrain(module.trainings)
    result = module.run(ctx)
    result.seconds = time.perf_counter() - started
    if console is not None:
        result.print(console)
    return result
