"""``equiaudit scan`` and ``equiaudit groups``.

The scan's audit options are not declared here: they are the fields of :class:`equiaudit.spec.AuditSpec`, turned
into typer options by :func:`spec_options` (flag, type, default, help and choices from the spec).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

from equiaudit.errors import EquiauditError, ScanInterrupted
from equiaudit.spec import spec_fields

from .console import EXIT_FAILED, RescuedWrite, err, fail, out, rescue_path, save_or_rescue
from .extras import require_reports
from .layers import print_layers, print_lie

_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "int | None": int | None,
    "str | None": str | None,
}  # field types


# Output options shared by every command that ends with a result (scan, merge): one declaration each.
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
ReportPath = Annotated[Path | None, typer.Option(help="Write an HTML audit report here.")]
FailAbove = Annotated[
    list[str] | None,
    typer.Option(help="METRIC=VALUE: exit 1 when the metric's worst value is above VALUE (repeatable)."),
]
FailBelow = Annotated[
    list[str] | None,
    typer.Option(help="METRIC=VALUE: exit 1 when the metric's worst value is below VALUE (repeatable)."),
]


def _spec_parameter(f: dataclasses.Field) -> inspect.Parameter:
    """A typer option for one AuditSpec field (``batch_size`` -> ``--batch-size``)."""
    meta = f.metadata
    help_text = meta["help"]
    if meta.get("choices"):
        help_text += escape(f" [{'|'.join(meta['choices'])}]")  # escaped: rich would read [a|b] as markup
    names = [f"--{f.name.replace('_', '-')}"] + ([meta["flag"]] if meta.get("flag") else [])
    option = typer.Option(*names, help=help_text, show_default=f.default is not None, min=meta.get("min"))
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=Annotated[_TYPES[f.type], option]
    )


def spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` (which takes ``**spec``) one option per AuditSpec field, after its own parameters."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    params = own + [_spec_parameter(f) for f in spec_fields()]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{name} takes comma-separated numbers, got {text!r}") from None


def _thresholds(items: list[str], flag: str) -> dict[str, float]:
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name or not math.isfinite(float(value)):
                raise ValueError
            parsed[name.strip()] = float(value)
        except ValueError:
            raise fail(f"{flag} takes METRIC=VALUE (e.g. invariance_error=0.01), got {item!r}") from None
    return parsed


def _cell(row: Any, col: str) -> str:
    """``0.33 ±0.065`` where the metric has an interval (the larger half-width), else the value."""
    from equiaudit.intervals import half_width

    value = row.get(col)
    if value is None or value != value:
        return "-"
    hw = half_width(value, row.get(f"{col}_low"), row.get(f"{col}_high"))
    return f"{value:.4g}" if hw is None else f"{value:.4g} ±{hw:.2g}"


def _print_table(result: Any) -> None:
    from equiaudit.result import ELEMENT_METRICS

    frame = result.elements
    # per-element means only: the *_max columns (worst image) are in the JSON and the summary line
    metric_cols = [c for c in ELEMENT_METRICS if c in frame and not c.endswith("_max")]
    table = Table(title=f"{result.model.source} · {result.group.spec} · {result.task}", title_justify="left")
    table.add_column("element")
    table.add_column("exact", justify="center")
    for col in metric_cols:
        table.add_column(col, justify="right")
    for _, row in frame.iterrows():
        cells = [_cell(row, c) for c in metric_cols]
        table.add_row(str(row["label"]), "yes" if row["exact"] else "", *cells)
    out.print(table)
    if result.intervals:
        i = result.intervals
        out.print(
            f"± : half-width of the {i['confidence']:.0%} interval ({i['images']} images; Wilson for proportions, "
            "bootstrap over the images for mean errors)"
        )
    summary = result.summary
    keys = [k for k in summary if k not in ("exact_group",)]
    out.print(
        "summary: "
        + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys)
    )
    if result.search:
        _print_search(result.search)


def _print_search(search: dict[str, Any]) -> None:
    """The worst case per search method, side by side (``--search``)."""
    table = Table(title=f"worst case per image (objective: {search['objective']})", title_justify="left")
    cols = ("method", "elements/image", "accuracy (mean)", "worst-case accuracy", "worst-case error",
            "extra forwards/image", "seconds")  # fmt: skip
    for i, col in enumerate(cols):
        table.add_column(col, justify="left" if i == 0 else "right")
    for m in search["methods"]:
        table.add_row(
            m["method"],
            str(m["elements_per_image"]),
            _cell(m, "accuracy_mean"),
            _cell(m, "worst_case_accuracy"),
            _cell(m, "worst_case_error"),
            f"{m['extra_forwards_per_image']:.4g}",
            f"{m['seconds']:.3g}",
        )
    out.print(table)


def _data_options(
    split: str,
    limit: int | None,
    input_size: int | None,
    channels: int | None,
    mean: str | None,
    std: str | None,
    input_shape: str | None,
    download: bool,
    cache_dir: Path | None,
    resize: int | None = None,
    crop: int | None = None,
    resample: str | None = None,
    classes: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The scan's data options as :func:`equiaudit.data.load_data` keywords."""
    options: dict[str, Any] = {
        "split": split,
        "limit": limit,
        "input_size": input_size,
        "channels": channels,
        "mean": _floats(mean, "--mean"),
        "std": _floats(std, "--std"),
        "download": download,
        "cache_dir": cache_dir,
        "resize": resize,
        "crop": crop,
        "resample": resample,
        "classes": classes,
        "workers": workers,
    }
    if input_shape is not None:
        dims = _floats(input_shape, "--input-shape") or []
        if len(dims) != 3 or any(d < 1 or d != int(d) for d in dims):
            raise fail(f"--input-shape takes C,H,W (e.g. 1,28,28), got {input_shape!r}")
        options["input_shape"] = tuple(int(d) for d in dims)
    return options


@spec_options
def scan(
    model: Annotated[
        str,
        typer.Argument(
            help="Model file (.pt state dict / pickle / TorchScript, .pt2), zoo:NAME, torchvision:NAME, timm:NAME "
            "or hf:PATH; constructor keywords after '?' (torchvision:resnet18?weights=None)."
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="digits, rot-digits, scale-digits, shapes-seg, photos, noise, mnist, rot-mnist, imagenet[:DIR], "
            "a folder (class sub-folders, or images/ + masks/), or a .npz/.pt file.",
        ),
    ] = "digits",
    split: Annotated[str, typer.Option(help="Data split: train, val, test or all.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Use at most this many images.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Resize images to SIZE x SIZE.")] = None,
    resize: Annotated[
        int | None, typer.Option(help="Resize the shorter side to SIZE, keeping the aspect ratio (before --crop).")
    ] = None,
    crop: Annotated[int | None, typer.Option(help="Centre-crop SIZE x SIZE after --resize.")] = None,
    resample: Annotated[
        str | None, typer.Option(help="Resizing filter: bilinear (default), bicubic or nearest.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="The model's classes in output order, for class folders: a file (one per line, first word) or "
            "a,b,c. Needed when the folders are not exactly the model's classes."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes decoding image files (default: up to 4 for folders of more than 256 images).", min=0
        ),
    ] = None,
    channels: Annotated[int | None, typer.Option(help="Convert images to 1 or 3 channels.")] = None,
    mean: Annotated[str | None, typer.Option(help="Normalisation mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, e.g. 0.229,0.224,0.225.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W of --data noise (default 1,28,28).")] = None,
    download: Annotated[bool, typer.Option(help="Allow downloading mnist / rot-mnist into the cache.")] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Dataset cache (default $EQUIAUDIT_CACHE or ~/.cache/equiaudit)."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture for a state dict: module:factory, file.py:factory, zoo:NAME, torchvision:NAME or "
            "timm:NAME, with keywords after '?' (torchvision:resnet18?num_classes=10)."
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(
            help="Allow files that run code when loaded (pickled modules, "
            "TorchScript, .pt2). Only for files from a source you trust."
        ),
    ] = False,
    json_out: JsonOut = False,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON document here.")] = None,
    report: ReportPath = None,
    fail_above: FailAbove = None,
    fail_below: FailBelow = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")] = False,
    **spec: Any,
) -> None:
    """Audit a model's invariance / equivariance under a transformation group."""
    from equiaudit.engine import audit
    from equiaudit.result import known_metrics
    from equiaudit.spec import AuditSpec

    above, below = _thresholds(fail_above or [], "--fail-above"), _thresholds(fail_below or [], "--fail-below")
    data_options = _data_options(
        split, limit, input_size, channels, mean, std, input_shape, download, cache_dir, resize, crop, resample,
        classes, workers,
    )  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))  # torchrun: every rank scans its part, rank 0 speaks and writes
    show = not (quiet or json_out) and rank == 0
    for name in [*above, *below]:
        if name not in known_metrics():
            raise fail(f"unknown metric {name!r} in a threshold; known: {', '.join(sorted(known_metrics()))}")

    def on_task(chosen: str, auto: bool) -> None:
        if show and auto:
            err.print(f"task: {chosen} (chosen from the model's output shape; override with --task)")

    def on_note(note: str) -> None:
        if show:
            err.print(f"note: {note}", markup=False, highlight=False)

    try:
        if report is not None:
            require_reports()  # before the scan, not after it
        audit_spec = AuditSpec(**spec)  # a bad option fails before the model or data load
        kwargs = {"spec": audit_spec, "arch": arch, "trust": trust, "on_task": on_task, "on_note": on_note}
        kwargs.update(data_options)
        result = _run_scan(audit, model, data, kwargs, show)
    except ScanInterrupted as exc:
        if exc.partial is None:
            raise fail(str(exc)) from None
        path = out_file or rescue_path("partial")
        if rank != 0:  # torchrun: each rank's own part, beside rank 0's
            path = path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
        try:
            saved = save_or_rescue(exc.partial, path, "partial result")
        except RescuedWrite as rescued:
            saved = rescued.path
        raise fail(f"{exc}; partial results written to {saved}") from None
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    if rank != 0:
        return
    _finish(result, above, below, out_file, report, json_out, show)


def _finish(
    result: Any,
    above: dict[str, float],
    below: dict[str, float],
    out_file: Path | None,
    report: Path | None,
    json_out: bool,
    show: bool,
) -> None:
    """Check the thresholds, save, write the report, print; exit 1 on a crossed threshold, 2 on an IO error."""
    problems: list[str] = []  # IO failures: reported after the result is printed, then exit 2
    try:
        failures = result.check(above, below)
    except EquiauditError as exc:
        failures = []
        problems.append(str(exc))
    if above or below:
        result.run.checks = {"fail_above": above, "fail_below": below, "failures": failures, "passed": not failures}
    try:
        saved = save_or_rescue(result, out_file if out_file or not problems else rescue_path("result"))
    except RescuedWrite as rescued:
        saved = rescued.path
        problems.append(str(rescued))
    if report is not None:
        try:
            from equiaudit.reports import write_report

            path = write_report(result, report)
            if show:
                err.print(f"report: {path}")
        except EquiauditError as exc:
            problems.append(f"{exc} (results {'in ' + str(saved) if saved else 'not saved; use --out'})")
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    else:
        _print_table(result)
        print_lie(result)
        print_layers(result)
        if saved and show:
            err.print(f"results: {saved}")
    for line in failures:
        err.print(f"[bold red]check failed:[/] {line}")
    if problems:
        raise fail(problems[0])
    if failures:
        raise typer.Exit(EXIT_FAILED)


def _run_scan(audit: Any, model: str, data: str, kwargs: dict[str, Any], show: bool) -> Any:
    """``audit(model, data, **kwargs)`` with progress on stderr: a bar on a terminal, otherwise a plain line
    about every 10 s (so a long scan under make or CI is not silent)."""
    if not show:
        return audit(model, data, **kwargs)
    if not _interactive():
        return audit(model, data, progress=_PlainProgress(), **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        _RateColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        tid = bar.add_task("scan", total=None)
        return audit(model, data, progress=lambda done, total: bar.update(tid, completed=done, total=total), **kwargs)


def _interactive() -> bool:
    """Whether stderr is a terminal a bar can redraw: rich's view (which FORCE_COLOR, set by many CI systems,
    turns on) and the file's own ``isatty`` (off under a pipe, ``make ... | tee`` or CI logs)."""
    isatty = getattr(err.file, "isatty", None)
    return bool(err.is_terminal and isatty is not None and isatty())


def rate_text(rate: float) -> str:
    """A rate with two significant digits below 10 (``0.4``, ``2.5``), whole numbers above (``1234``)."""
    if rate >= 9.95:
        return f"{rate:.0f}"
    return f"{rate:.2g}" if rate >= 0.01 else f"{rate:.1g}"


class _RateColumn(ProgressColumn):
    """``123 images/s`` of a rich progress bar (blank until rich has a speed)."""

    def render(self, task: Any) -> Text:
        return Text("" if task.speed is None else f"{rate_text(task.speed)} images/s")


class _PlainProgress:
    """``scanned N / M images (R images/s)`` on stderr, at most every ``every`` seconds, and at the end."""

    def __init__(self, every: float = 10.0) -> None:
        import time

        self.clock = time.perf_counter
        self.every = every
        self.start = self.last = self.clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        err.print(f"scanned {done} / {total} images ({rate_text(rate)} images/s)")


def groups(
    spec: Annotated[str, typer.Argument(help="A group spec, e.g. d4 or c4*scale:0.8,1,1.25.")],
    steps: Annotated[int | None, typer.Option("--steps", "-n")] = None,
) -> None:
    """List the elements of a group spec with their parameters and matrices."""
    from equiaudit.groups import parse_group

    try:
        grp = parse_group(spec, steps)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    table = Table(
        title=f"{grp.spec}: {len(grp)} elements ({'exact' if grp.exact else 'interpolated'})", title_justify="left"
    )
    shifts = any(g.shifted for g in grp)
    cols = ("id", "label", "angle", "scale", "reflect", *(("shift (px)",) if shifts else ()), "exact")
    for col in (*cols, "matrix (centred, y down)"):
        table.add_column(col)
    for i, g in enumerate(grp):
        m = g.matrix()
        shift = (f"({g.shift[0]:g}, {g.shift[1]:g})",) if shifts else ()
        matrix = f"[{m[0, 0]:+.3f} {m[0, 1]:+.3f}; {m[1, 0]:+.3f} {m[1, 1]:+.3f}]"
        if shifts:  # p -> L p + L t: the translation column too
            matrix = f"[{m[0, 0]:+.3f} {m[0, 1]:+.3f} {m[0, 2]:+.3f}; {m[1, 0]:+.3f} {m[1, 1]:+.3f} {m[1, 2]:+.3f}]"
        table.add_row(str(i), g.label, f"{g.angle:g}", f"{g.scale:g}", str(g.reflect), *shift, str(g.exact), matrix)
    out.print(table)
