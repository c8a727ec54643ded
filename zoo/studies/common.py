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

from ..checkpoints import git_commit, has_checkpoint, load_card, load_pretrained, save_checkpoint
from ..recipes import RECIPES, Recipe, fit
from ..registry import create
from ..training import Evaluation, evaluate, progress_bars

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "QUICK_AUDIT_IMAGES",
    "QUICK_TRAIN_IMAGES",
    "STUDY_OPTIONS",
    "Request",
    "StudyContext",
    "StudyResult",
    "Table",
    "interval_text",
    "published_table",
    "seed_interval",
]

QUICK_TRAIN_IMAGES = 48  # quick mode: tiny models, one epoch on this many images
QUICK_AUDIT_IMAGES = 6  # ... and this many test images per evaluation and audit
FULL_SEEDS, QUICK_SEEDS = 3, 2  # seeds a study trains of each model it reports over seeds
RESULTS_VERSION = 2
# One model a study's run asks for: (recipe name, seed or None, recipe changes), as StudyContext.model takes it.
Request = tuple[str, "int | None", dict[str, Any]]
# What a user may give a study (`equiaudit zoo study NAME --data ... --weights ... --download --seeds N`);
# each study module lists the ones it takes in OPTIONS.
STUDY_OPTIONS = {
    "data": "--data",
    "weights": "--weights",
    "download": "--download",
    "seeds": "--seeds",
}
# Two-sided 95% Student-t quantiles by degrees of freedom (1-30); the normal 1.96 beyond.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def interval_text(interval: dict[str, Any], *, signed: bool = False) -> str:
    """An interval of a fraction as text, unclipped: ``96.0% [95.1, 96.9]``, or with ``signed`` a difference of
    fractions in points, ``+1.2 [+0.3, +2.1]``."""
    mean, low, high = (100 * interval[k] for k in ("mean", "low", "high"))
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]" if signed else f"{mean:.1f}% [{low:.1f}, {high:.1f}]"


def _interval_text(value: Any, scale: float, digits: int) -> str:
    """``mean [low, high]`` of a quantity that cannot be negative; its interval is shown clipped at 0, and a
    fraction's (``scale`` 100) at 100% too (the t-interval of a few seeds near a bound reaches past it; the JSON
    keeps it as computed)."""
    mean, low, high = (scale * value[k] for k in ("mean", "low", "high"))
    unit = "%" if scale == 100 else ""
    low = max(low, 0.0)
    if scale == 100:
        high = min(high, 100.0)
    return f"{mean:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


_FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.1f}%",
    "int": lambda v: f"{int(v):,}",
    "sci": lambda v: f"{v:.2e}",
    "f3": lambda v: f"{v:.3f}",
    "pts": lambda v: f"{100 * v:+.1f}",
    "text": str,
    "ci": lambda v: _interval_text(v, 100, 1),
    "ci3": lambda v: _interval_text(v, 1, 3),
    "cipts": lambda v: interval_text(v, signed=True),  # a difference of fractions in signed points, never clipped
}


@dataclass
class Table:
    """Rows of raw values (floats stay floats in JSON) with a display format per column.

    ``columns`` are ``(header, format)`` with format ``pct`` (a fraction shown as %), ``pts`` (a difference
    of fractions shown in signed percentage points), ``int``, ``sci``, ``f3``, ``text``, ``ci`` (an interval
    dict with ``mean``, ``low``, ``high`` of a fraction, shown as ``97.1% [96.5, 97.7]``), ``ci3`` (the same
    for a plain number that cannot be negative, such as an error or a loss, 3 decimals) or ``cipts`` (a
    difference of fractions in signed points, ``+6.6 [-8.6, +21.8]``); ``None`` shows as ``-``.
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


def seed_interval(values: Sequence[float]) -> dict[str, Any]:
    """The mean of ``values`` (one per seed) with its two-sided 95% Student-t interval: ``{"mean", "low",
    "high", "n", "values"}``; ``low == high == mean`` for a single value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("seed_interval needs at least one value")
    n = len(vals)
    mean = sum(vals) / n
    half = 0.0
    if n > 1:
        sd = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5
        half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / n**0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "values": vals}


def published_table(rows: Iterable[tuple[str, str, str, str]]) -> Table:
    """The table every study ends with: each published claim beside what we measured, and why they differ."""
    table = Table(
        "Published / ours / why different",
        [("what", "text"), ("published", "text"), ("ours", "text"), ("why different", "text")],
    )
    table.rows.extend([list(row) for row in rows])
    return table


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
    run: dict[str, Any] = field(default_factory=dict)

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
            "run": self.run,
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

    def __init__(
        self,
        name: str,
        *,
        quick: bool,
        out_dir: Path,
        device: torch.device,
        log: Console | None,
        options: dict[str, Any] | None = None,
        accepts: Sequence[str] = (),
        jobs: int = 1,
    ):
        self.name, self.quick, self.device, self.log = name, quick, device, log
        self.jobs = _jobs(jobs)
        self.options = _check_options(name, options or {}, accepts)
        self.started = time.time()
        self.commit = git_commit()  # at the start: the code that runs, whatever is committed meanwhile
        self.pretrain_seconds = 0.0  # --jobs: training in worker processes before the run
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / name
        self.cache = self.out_dir / "checkpoints"
        self.audits: dict[str, AuditResult] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}  # each model's card (its training history included)
        self.files: dict[str, str] = {}

    # ---------------------------------------------------------------------------------------------- output

    def status(self, message: str) -> None:
        if self.log is not None:
            self.log.print(f"[{self.name}] {message}", highlight=False, markup=False)

    # ---------------------------------------------------------------------------------------------- models

    def option(self, key: str, default: Any = None) -> Any:
        """The study option ``key`` the user gave (see :data:`STUDY_OPTIONS`), else ``default``."""
        value = self.options.get(key)
        return default if value is None else value

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds to train each model over: ``--seeds N`` gives 0..N-1; default 3 (2 in quick mode)."""
        return tuple(range(self.option("seeds", QUICK_SEEDS if self.quick else FULL_SEEDS)))

    def recipe(self, name: str, *, seed: int | None = None, **changes: Any) -> Recipe:
        """Recipe ``name`` with ``seed`` and the Recipe fields in ``changes`` replaced; a changed recipe is
        renamed ``NAME@seedS`` (only the seed changed) or ``NAME@HASH`` (its key), so its checkpoint is cached
        apart. In quick mode it trains one epoch."""
        base = RECIPES[name]
        if seed is not None:
            changes["seed"] = seed
        recipe = replace(base, **changes)
        if recipe.key() != base.key():
            only_seed = replace(base, seed=recipe.seed) == recipe
            recipe = replace(recipe, name=f"{name}@seed{recipe.seed}" if only_seed else f"{name}@{recipe.key()[:8]}")
        return replace(recipe, epochs=1) if self.quick else recipe

    def planned(self, requests: Iterable[Request]) -> list[Recipe]:
        """The recipes of ``requests`` (``(name, seed, changes)`` as :meth:`model` takes them), each once."""
        recipes = {}
        for name, seed, changes in requests:
            recipe = self.recipe(name, seed=seed, **changes)
            recipes.setdefault(recipe.name, recipe)
        return list(recipes.values())

    def pretrain(self, trainings: Callable[[StudyContext], Iterable[Request]]) -> list[str]:
        """With ``jobs`` > 1 in full mode: train the models ``trainings(self)`` requests that have no checkpoint
        in parallel processes (:mod:`.parallel`) before the run asks for them; the names trained. Otherwise
        ``trainings`` is not called."""
        if self.quick or self.jobs == 1:
            if self.jobs > 1:
                self.status("--jobs: quick mode trains its tiny models in the run")
            return []
        from .parallel import train_all

        started = time.perf_counter()
        missing = [r for r in self.planned(trainings(self)) if _checkpoint(r, self.cache) is None]
        try:
            return train_all(missing, self.cache, self.device, self.jobs, self.status)
        finally:
            self.pretrain_seconds = time.perf_counter() - started

    def model(self, name: str, *, seed: int | None = None, **changes: Any) -> tuple[nn.Module, Recipe]:
        """The trained model of recipe ``name`` with ``seed`` and ``changes`` (see :meth:`recipe`; the module
        docstring says where it comes from); its provenance is ``self.models[recipe.name]``."""
        recipe = self.recipe(name, seed=seed, **changes)
        if self.quick:
            model, card = self._fit(recipe, tiny=True, limit=QUICK_TRAIN_IMAGES)
            origin = "trained now (quick: tiny variant, 1 epoch)"
        else:
            model, card, origin = self._full(recipe)
        model.to(self.device).eval()
        self.models[recipe.name] = _provenance(recipe, card, origin)
        self.cards[recipe.name] = card
        self.status(f"{recipe.name}: {origin}")
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
            self.run_info(),
        )
        path = self.folder / "results.json"
        result.files["results"] = str(path)
        atomic_write_text(path, json.dumps(result.to_dict(), indent=2, allow_nan=False, default=_json_default) + "\n")
        self.status(f"results: {path}")
        return result

    def run_info(self) -> dict[str, Any]:
        """How this run was made: code commit, device, torch, seeds, options, start time (UTC)."""
        dev = self.device
        return {
            "commit": self.commit,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "jobs": self.jobs,
            "pretrain_seconds": self.pretrain_seconds,
            "seeds": list(self.seeds),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
        }

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
        "seed": recipe.seed,
        "device": card["training"].get("device"),
        "train_seconds": card["training"]["seconds"],
        "recipe_key": recipe.key(),
        "sha256": card.get("sha256"),
    }


def _check_options(study: str, options: dict[str, Any], accepts: Sequence[str]) -> dict[str, Any]:
    """``options`` without the unset ones; one that ``study`` does not take is a one-line error."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    for key in given:
        if key not in STUDY_OPTIONS:
            raise EquiauditError(f"unknown study option {key!r}; options: {', '.join(STUDY_OPTIONS)}")
        if key not in accepts:
            takes = ", ".join(STUDY_OPTIONS[k] for k in accepts) or "none"
            raise EquiauditError(f"the {study} study takes no {STUDY_OPTIONS[key]} (it takes: {takes})")
    seeds = given.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise EquiauditError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    return given


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


def _checkpoint(recipe: Recipe, cache: Path) -> tuple[Path | None, str] | None:
    """``(directory, origin)`` of the shipped checkpoint trained by ``recipe`` (directory None), else of the one
    cached in ``cache``; None when neither exists."""
    for directory, origin in (
        (None, "shipped checkpoint"),
        (cache, f"cached checkpoint in {cache}"),
    ):
        if directory is None and recipe.name != recipe.model:
            continue  # only checkpoints named after their model ship
        if _matching_card(recipe, directory) is not None:
            return directory, origin
    return None


def _load_checkpoint(recipe: Recipe, cache: Path) -> tuple[nn.Module, dict[str, Any], str] | None:
    """``(model, card, origin)`` of the checkpoint :func:`_checkpoint` finds, else None."""
    found = _checkpoint(recipe, cache)
    if found is None:
        return None
    model = create(recipe.model, **recipe.create_kwargs)
    return model, load_pretrained(recipe.name, model, found[0]), found[1]


def _jobs(jobs: Any) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise EquiauditError(f"jobs must be a whole number >= 1, got {jobs!r}")
    return jobs


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
