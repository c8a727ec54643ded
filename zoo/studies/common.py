"""What every reference study shares: tables, the result, and a context that gets models and audits them.

A study gets its trained models from :meth:`StudyContext.model`: in quick mode a tiny variant trained for
one epoch on a few images; otherwise the shipped checkpoint when its card was trained by the study's recipe,
else a checkpoint cached in ``OUT/checkpoints`` by an earlier run of the same recipe, else it trains the
recipe and caches the result. Audits go through :func:`equiaudit.engine.audit` and are saved next to the
results.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from equiaudit.errors import EquiauditError, ModelLoadError
from equiaudit.result import AuditResult, atomic_write_text

from ..checkpoints import has_checkpoint, load_card, load_pretrained, save_checkpoint
from ..recipes import RECIPES, Recipe, fit
from ..registry import create
from ..training import Evaluation, evaluate, progress_bars

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["QUICK_AUDIT_IMAGES", "QUICK_TRAIN_IMAGES", "StudyContext", "StudyResult", "Table"]

QUICK_TRAIN_IMAGES = 48  # quick mode: tiny models, one epoch on this many images
QUICK_AUDIT_IMAGES = 6  # ... and this many test images per evaluation and audit
RESULTS_VERSION = 1

_FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.1f}%",
    "int": lambda v: f"{int(v):,}",
    "sci": lambda v: f"{v:.2e}",
    "f3": lambda v: f"{v:.3f}",
    "pts": lambda v: f"{100 * v:+.1f}",
    "text": str,
}


@dataclass
class Table:
    """Rows of raw values (floats stay floats in JSON) with a display format per column.

    ``columns`` are ``(header, format)`` with format ``pct`` (a fraction shown as %), ``pts`` (a difference
    of fractions shown in signed percentage points), ``int``, ``sci``, ``f3`` or ``text``; ``None`` shows
    as ``-``.
    """

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[Any]] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        return [
            ["-" if v is None else _FORMATS[fmt](v) for v, (_, fmt) in zip(row, self.columns, strict=True)]
            for row in self.rows
        ]

    def to_rich(self) -> Any:
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, title_justify="left")
        for header, fmt in self.columns:
            table.add_column(header, justify="left" if fmt == "text" else "right", overflow="fold")
        for row in self.cells():
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        head = [h for h, _ in self.columns]
        align = [":--" if fmt == "text" else "--:" for _, fmt in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [h for h, _ in self.columns],
            "formats": [f for _, f in self.columns],
            "rows": self.rows,
        }


@dataclass
class StudyResult:
    """What a study measured: its tables (measured beside published), notes on what differs, the numbers
    behind the tables (``measured``), the models' provenance, the audits and the files written."""

    name: str
    title: str
    quick: bool
    tables: list[Table]
    notes: list[str]
    measured: dict[str, Any]
    models: dict[str, dict[str, Any]]
    audits: dict[str, AuditResult] = field(default_factory=dict, repr=False)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "results_version": RESULTS_VERSION,
            "tool": "equiaudit",
            "study": self.name,
            "title": self.title,
            "quick": self.quick,
            "tables": [t.to_dict() for t in self.tables],
            "notes": self.notes,
            "measured": self.measured,
            "models": self.models,
            "files": self.files,
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        parts = [f"### {self.title}" + (" (quick mode)" if self.quick else "")]
        parts += [t.to_markdown() for t in self.tables]
        parts += ["\n".join(f"- {n}" for n in self.notes)] if self.notes else []
        return "\n\n".join(parts) + "\n"

    def print(self, console: Console) -> None:
        """Print the tables and notes on ``console``."""
        console.print(self)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        title = Text(self.title + (" (quick mode: tiny models, tiny data)" if self.quick else ""), style="bold")
        notes = [Text(f"- {n}") for n in self.notes]
        return Group(title, *(t.to_rich() for t in self.tables), *notes)


class StudyContext:
    """Models, evaluations and audits for one study run; messages and progress go to ``log``."""

    def __init__(self, name: str, *, quick: bool, out_dir: Path, device: torch.device, log: Console | None):
        self.name, self.quick, self.device, self.log = name, quick, device, log
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / name
        self.cache = self.out_dir / "checkpoints"
        self.audits: dict[str, AuditResult] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.files: dict[str, str] = {}

    # ---------------------------------------------------------------------------------------------- output

    def status(self, message: str) -> None:
        if self.log is not None:
            self.log.print(f"[{self.name}] {message}", highlight=False, markup=False)

    # ---------------------------------------------------------------------------------------------- models

    def recipe(self, name: str) -> Recipe:
        recipe = RECIPES[name]
        return replace(recipe, epochs=1) if self.quick else recipe

    def model(self, name: str) -> tuple[nn.Module, Recipe]:
        """The trained model of recipe ``name`` (see the module docstring for where it comes from)."""
        recipe = self.recipe(name)
        if self.quick:
            model, card = self._fit(recipe, tiny=True, limit=QUICK_TRAIN_IMAGES)
            origin = "trained now (quick: tiny variant, 1 epoch)"
        else:
            model, card, origin = self._full(recipe)
        model.to(self.device).eval()
        self.models[name] = _provenance(recipe, card, origin)
        self.status(f"{name}: {origin}")
        return model, recipe

    def _full(self, recipe: Recipe) -> tuple[nn.Module, dict[str, Any], str]:
        found = _load_checkpoint(recipe, self.cache)
        if found is not None:
            return found
        model, card = self._fit(recipe, tiny=False, limit=None)
        save_checkpoint(recipe.name, model, card, self.cache)
        return model, card, f"trained now ({card['training']['seconds']:.0f} s), cached in {self.cache}"

    def _fit(self, recipe: Recipe, *, tiny: bool, limit: int | None) -> tuple[nn.Module, dict[str, Any]]:
        with progress_bars(self.log) as bars:
            progress = bars(recipe.name) if bars else None
            kwargs = {"device": self.device, "audit_card": False, "progress": progress, "status": self.status}
            return fit(recipe, tiny=tiny, limit=limit, **kwargs)

    # ------------------------------------------------------------------------------------- measurements

    @property
    def limit(self) -> int | None:
        """Test images per evaluation in quick mode (None: the whole test split)."""
        return QUICK_AUDIT_IMAGES if self.quick else None

    def evaluate(self, model: nn.Module, recipe: Recipe, data: str) -> Evaluation:
        """Test-split metrics of ``model`` on ``data``, with the recipe's input options."""
        return evaluate(model, data, split="test", limit=self.limit, device=self.device, **recipe.data_options)

    def audit(
        self,
        key: str,
        model: nn.Module,
        recipe: Recipe,
        data: str,
        group: str,
        limit: int,
        quick_group: str,
        **options: Any,
    ) -> AuditResult:
        """Audit ``model`` (``group``, ``limit`` test images of ``data``; in quick mode ``quick_group`` on a
        few images; ``options``: further spec options such as ``layers``) and save the result as
        ``FOLDER/KEY.json``."""
        from equiaudit.engine import audit
        from equiaudit.result import save

        group = quick_group if self.quick else group
        n = QUICK_AUDIT_IMAGES if self.quick else limit
        self.status(f"auditing {key} under {group} on {n} images of {data}")
        with _audit_progress(self.log, key) as progress:
            result = audit(
                model, data, group, limit=n, device=self.device, progress=progress, **recipe.data_options, **options
            )
        path = save(result, self.folder / f"{key}.json")
        self.audits[key] = result
        self.files[f"audit:{key}"] = str(path)
        return result

    # ---------------------------------------------------------------------------------------------- finish

    def finish(
        self,
        title: str,
        tables: list[Table],
        notes: list[str],
        measured: dict[str, Any],
        started: float,
        comparisons: list[tuple[str, list[str], list[Any]]] = (),
    ) -> StudyResult:
        """Write the HTML comparisons (``(file stem, audit keys, correctness matrices)``) when
        :mod:`equiaudit.reports` is there, then ``results.json``; return the result."""
        for stem, keys, matrices in comparisons:
            self._comparison(stem, title, keys, matrices)
        result = StudyResult(
            self.name,
            title,
            self.quick,
            tables,
            notes,
            measured,
            self.models,
            dict(self.audits),
            self.files,
            time.perf_counter() - started,
        )
        path = self.folder / "results.json"
        result.files["results"] = str(path)
        atomic_write_text(path, json.dumps(result.to_dict(), indent=2, allow_nan=False, default=_json_default) + "\n")
        self.status(f"results: {path}")
        return result

    def _comparison(self, stem: str, title: str, keys: list[str], matrices: list[Any]) -> None:
        try:
            from equiaudit.reports import write_comparison
        except ImportError as exc:
            warnings.warn(
                f"no HTML report for the {self.name} study: equiaudit.reports is unavailable ({exc})",
                stacklevel=3,
            )
            return
        try:
            html = write_comparison(
                [self.audits[k] for k in keys],
                self.folder / f"{stem}.html",
                names=keys,
                title=title,
                matrices=matrices,
            )
        except EquiauditError as exc:
            warnings.warn(f"the HTML report {stem} of the {self.name} study failed: {exc}", stacklevel=3)
            return
        self.files[f"report:{stem}"] = str(html)
        self.status(f"report: {html}")


def _provenance(recipe: Recipe, card: dict[str, Any], origin: str) -> dict[str, Any]:
    """Where a study's model came from and how it was trained (its entry in ``results.json``)."""
    return {
        "model": recipe.model,
        "origin": origin,
        "parameters": card["model"]["parameters"],
        "dataset": recipe.dataset,
        "train_images": card["data"]["train_images"],
        "epochs": card["training"]["epochs"],
        "train_seconds": card["training"]["seconds"],
        "recipe_key": recipe.key(),
        "sha256": card.get("sha256"),
    }


def _matching_card(recipe: Recipe, directory: Path | None) -> dict[str, Any] | None:
    """The card of the full (not tiny, not limited) checkpoint ``recipe.name`` in ``directory`` when it was
    trained by ``recipe``, else None."""
    if not has_checkpoint(recipe.name, directory):
        return None
    try:
        card = load_card(recipe.name, directory)
    except ModelLoadError:
        return None
    trained = card.get("recipe", {}).get("key") == recipe.key() and not card.get("model", {}).get("tiny")
    return card if trained and card.get("data", {}).get("limit") is None else None


def _load_checkpoint(recipe: Recipe, cache: Path) -> tuple[nn.Module, dict[str, Any], str] | None:
    """``(model, card, origin)`` of the shipped checkpoint trained by ``recipe``, else of the one cached in
    ``cache``; None when neither exists."""
    for directory, origin in (
        (None, "shipped checkpoint"),
        (cache, f"cached checkpoint in {cache}"),
    ):
        if directory is None and recipe.name != recipe.model:
            continue  # only checkpoints named after their model ship
        if _matching_card(recipe, directory) is not None:
            model = create(recipe.model, **recipe.create_kwargs)
            card = load_pretrained(recipe.name, model, directory)
            return model, card, origin
    return None


@contextlib.contextmanager
def _audit_progress(log: Console | None, key: str) -> Iterator[Callable[[int, int], None] | None]:
    """A transient rich bar for the audit ``key`` on ``log``: yields its ``progress(done, total)`` callback, or
    None when ``log`` is None or not a terminal."""
    if log is None or not log.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn(f"auditing {key}"), BarColumn(), MofNCompleteColumn(), console=log, transient=True) as bar:
        task = bar.add_task(key, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def by_angle(result: AuditResult, column: str) -> dict[float, float | None]:
    """``{angle in [0, 360): value}`` of an element metric of a rotation audit, identity at 0."""
    frame = result.elements
    return {float(a) % 360: (None if v != v else float(v)) for a, v in zip(frame["angle"], frame[column], strict=True)}


def by_scale(result: AuditResult, column: str) -> dict[float, float | None]:
    """``{scale factor: value}`` of an element metric of a scale audit."""
    frame = result.elements
    return {float(s): (None if v != v else float(v)) for s, v in zip(frame["scale"], frame[column], strict=True)}


def pick(values: dict[float, Any], every: float) -> list[float]:
    """The keys of ``values`` that are multiples of ``every`` (all keys when none are), sorted."""
    keys = sorted(values)
    chosen = [k for k in keys if abs(k / every - round(k / every)) < 1e-6]
    return chosen or keys


def model_table(
    title: str,
    columns: list[tuple[str, str]],
    measured: dict[str, dict[str, Any]],
    names: Iterable[str],
    keys: Sequence[str],
) -> Table:
    """A table with one row per model of ``names``: the name, then its ``measured`` value of each of ``keys``
    (``columns`` starts with the name's column)."""
    table = Table(title, columns)
    for name in names:
        table.rows.append([name, *(measured[name][k] for k in keys)])
    return table


def summary_value(result: AuditResult, key: str) -> float | None:
    value = result.summary.get(key)
    return float(value) if isinstance(value, (int, float)) and value == value else None
