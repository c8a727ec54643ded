"""``equiaudit merge``: one result from the results of independent jobs run with ``--shard K/N``.

Each shard result carries its setup and its observers' states (``state``, see :mod:`equiaudit.distributed`). The
merge rebuilds the observers from the setup, folds the shards' states in image order with the observers' own
reductions and assembles the result exactly as a single process does (the same :func:`~equiaudit.assemble.assemble`),
so the element table, summary, locations and the intervals (recomputed from the merged per-image records) are
those of one process over all the images. The gallery comes from the shards' samples, when they were saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .assemble import assemble
from .distributed import check_shards, decode, fold, gallery_state, setup_from
from .engine import pass_observers
from .errors import EquiauditError
from .layers import LayerObserver
from .lie import LieObserver
from .observers import Gallery, Observer, Setup
from .result import AuditResult
from .search import SearchObserver, parse_search
from .spec import AuditSpec


@dataclass
class _Described:
    """What :func:`assemble` reads of a loaded model or of the data: ``describe()`` and the class names."""

    record: dict[str, Any]
    class_names: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        return dict(self.record)


@dataclass
class _MergedPass:
    """The merged pass, as :func:`assemble` reads an engine (:class:`~equiaudit.assemble.PassState`)."""

    spec: AuditSpec
    setup: Setup
    data: _Described
    observers: list[Observer]
    images: int
    forward_batch: int | None
    device: str
    dtype: str

    @property
    def task(self) -> str:
        return self.setup.task


def _observers(spec: AuditSpec, setup: Setup, shards: Sequence[AuditResult]) -> list[Observer]:
    """The observers an audit of ``spec`` runs (see :meth:`equiaudit.engine.Engine.prepare`), set up; the layer,
    Lie and search observers as the shards described them (``state.info``), which must agree."""
    found = pass_observers(spec, setup.task, _no_forward)
    info = _described(shards, spec)
    if spec.layers:
        found.append(LayerObserver.recorded(info["layers"], spec.layer_action, spec.channel_layout))
    if spec.lie:
        found.append(LieObserver.recorded(info["lie"]))
    for obs in found:
        obs.setup(setup)
    search = next((o for o in found if isinstance(o, SearchObserver)), None)
    if search is not None and search.describe() != info.get("search"):
        raise EquiauditError("the shards searched another parameter box or budget than this version does; rerun them")
    return found


def _described(shards: Sequence[AuditResult], spec: AuditSpec) -> dict[str, Any]:
    """The first shard's descriptions of its layer, Lie and search observers (the first with images: one with
    none chose no action), once every shard with images is checked to agree."""
    infos = [r.state.get("info") or {} for r in shards]
    wanted = [n for n, on in (("layers", spec.layers), ("lie", spec.lie), ("search", _searches(spec))) if on]
    for k, info in enumerate(infos):
        for name in wanted:
            if name not in info:
                raise EquiauditError(f"shard {k} does not describe its {name} (an older equiaudit wrote it): rerun it")
    at = next((k for k, r in enumerate(shards) if r.state["images"]), 0)  # a shard of no image chose nothing
    first = infos[at]
    for k, info in enumerate(infos):
        if k == at or not shards[k].state["images"]:
            continue
        if "layers" in wanted and info["layers"]["actions"] != first["layers"]["actions"]:
            raise EquiauditError(
                f"shard {k} chose other layer actions than shard {at} ({_actions(info['layers']['actions'])} vs "
                f"{_actions(first['layers']['actions'])}; --layer-action auto decides on each shard's first "
                "images): rerun the shards with the actions named, e.g. --layer-action spatial"
            )
        for name in wanted:
            mine = {key: v for key, v in info[name].items() if key != "evidence"}
            if mine != {key: v for key, v in first[name].items() if key != "evidence"}:
                raise EquiauditError(f"shard {k} describes its {name} otherwise than shard {at}: rerun the shards")
    return first


def _searches(spec: AuditSpec) -> bool:
    return parse_search(spec.search).extra


def _actions(names: Sequence[str]) -> str:
    return ", ".join(names)


def _no_forward(rows: torch.Tensor) -> torch.Tensor:
    raise EquiauditError("a merge runs no model")


def _states(result: AuditResult, observers: Sequence[Observer]) -> list[dict[str, Any]]:
    saved = result.state["observers"]
    states = []
    for obs in observers:
        if isinstance(obs, Gallery):
            states.append(gallery_state(result.samples))
            continue
        if obs.name not in saved:
            raise EquiauditError(f"shard {result.run.shard['index']} has no state for {obs.name!r}")
        states.append({k: decode(v) for k, v in saved[obs.name].items()})
    return states


def merge_results(results: Sequence[AuditResult]) -> AuditResult:
    """One result from shard results (any order; each shard once)."""
    shards = check_shards(results)
    first = shards[0]
    spec = AuditSpec(**{**first.run.spec, "shard": None})
    setup = setup_from(first.state["setup"], spec)
    observers = _observers(spec, setup, shards)
    fold(observers, [_states(r, observers) for r in shards], torch.device("cpu"))
    data = _Described(asdict(first.data), (first.per_class or {}).get("classes"))
    images = sum(int(r.state["images"]) for r in shards)
    merged = _MergedPass(spec, setup, data, observers, images, first.run.batch_size, first.run.device, first.run.dtype)
    wall = max(r.run.wall_time_s or 0.0 for r in shards)  # independent jobs run side by side
    partial = any(r.run.partial for r in shards)
    result = assemble(merged, _Described(asdict(first.model)), wall, partial)
    result.run.precision = first.run.precision
    result.run.batch_size_auto = first.run.batch_size_auto
    result.run.processes = len(shards)
    result.run.stop_reason = next((r.run.stop_reason for r in shards if r.run.stop_reason), None)
    result.probe = first.probe
    if result.samples and not all(r.samples for r in shards):  # a gallery of some shards only: none
        result.samples = {k: v for k, v in result.samples.items() if k not in ("first", "worst")} or None
    return result
