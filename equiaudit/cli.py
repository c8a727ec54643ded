"""The ``equiaudit`` command line (typer + rich).

Data on stdout (the table, or with ``--json`` one JSON document and nothing else); messages, warnings and
progress on stderr. Exit codes: 0 every check holds, 1 a ``--fail-above`` / ``--fail-below`` threshold is
crossed, 2 usage, input or IO error (one line, no traceback).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import EquiauditError, ScanInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Equivariance testing and auditing for PyTorch vision models.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
# A pipe or a file gets full-width tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RescuedWrite(EquiauditError):
    """The requested file could not be written; the result went to ``path`` instead (the run still fails)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def fail(message: str) -> typer.Exit:
    """Print one line on stderr and return the exit-2 exception to raise."""
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


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


def _rescue_path(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    return Path.cwd() / f"equiaudit-{kind.split()[-1] if kind else 'result'}-{stamp}.json"


def _save(result: Any, path: Path | None, kind: str = "result") -> Path | None:
    """Save to ``path``; if that fails, to a rescue file in the working directory, so nothing is lost."""
    from .result import save

    if path is None:
        return None
    try:
        return save(result, path)
    except EquiauditError as exc:
        rescue = _rescue_path(kind)
        save(result, rescue)
        raise RescuedWrite(f"{exc}; the {kind} was written to {rescue} instead", rescue) from None


def _print_table(result: Any) -> None:
    frame = result.elements
    from .result import ELEMENT_METRICS

    # per-element means only: the *_max columns (worst image) are in the JSON and the summary line
    metric_cols = [c for c in ELEMENT_METRICS if c in frame and not c.endswith("_max")]
    title = f"{result.meta['model']['source']} · {result.meta['group']['spec']} · {result.meta['task']}"
    table = Table(title=title, title_justify="left")
    table.add_column("element")
    table.add_column("exact", justify="center")
    for col in metric_cols:
        table.add_column(col, justify="right")
    for _, row in frame.iterrows():
        cells = [f"{row[c]:.4g}" if row[c] == row[c] else "-" for c in metric_cols]
        table.add_row(str(row["label"]), "yes" if row["exact"] else "", *cells)
    out.print(table)
    summary = result.summary
    keys = [k for k in summary if k not in ("exact_group",)]
    out.print(
        "summary: "
        + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys)
    )


@app.command()
def scan(
    model: Annotated[
        str, typer.Argument(help="Model file (.pt state dict / pickle / TorchScript, .pt2), or zoo:NAME.")
    ],
    group: Annotated[
        str,
        typer.Option(
            "--group",
            "-g",
            help="Group spec: so2, so2:N, rot:A..B:N, c4, d4, flip, scale:0.5..2:7, products like c4*scale:0.8,1,1.25.",
        ),
    ] = "so2",
    steps: Annotated[int | None, typer.Option("--steps", "-n", help="Angles for so2 (default 36).")] = None,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="digits, rot-digits, scale-digits, shapes-seg, photos, "
            "noise, mnist, rot-mnist, a folder, or a .npz/.pt file.",
        ),
    ] = "digits",
    split: Annotated[str, typer.Option(help="Data split: train, val, test or all.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Use at most this many images.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Resize images to SIZE x SIZE.")] = None,
    channels: Annotated[int | None, typer.Option(help="Convert images to 1 or 3 channels.")] = None,
    mean: Annotated[str | None, typer.Option(help="Normalisation mean, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, e.g. 0.229,0.224,0.225.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W of --data noise (default 1,28,28).")] = None,
    download: Annotated[bool, typer.Option(help="Allow downloading mnist / rot-mnist into the cache.")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Dataset cache (default $EQUIAUDIT_CACHE or ~/.cache/equiaudit).")
    ] = None,
    task: Annotated[str, typer.Option(help="auto, classify, segment or dense.")] = "auto",
    interpolation: Annotated[str, typer.Option(help="bilinear, bicubic or nearest.")] = "bilinear",
    padding: Annotated[str, typer.Option(help="zeros, border or reflection.")] = "zeros",
    mask: Annotated[str, typer.Option(help="auto (region valid under every element), disk or none.")] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Images per model forward, transformed copies included (default: sized from the model's largest "
            "activation, at most 256).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    arch: Annotated[str | None, typer.Option(help="Architecture for a state dict: module:factory or zoo:NAME.")] = None,
    trust: Annotated[
        bool,
        typer.Option(
            help="Allow files that run code when loaded (pickled modules, "
            "TorchScript, .pt2). Only for files from a source you trust."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON document here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write an HTML audit report here.")] = None,
    samples: Annotated[int, typer.Option(help="Gallery images kept for reports.")] = 8,
    fail_above: Annotated[
        list[str] | None,
        typer.Option(help="METRIC=VALUE: exit 1 when the metric's worst value is above VALUE (repeatable)."),
    ] = None,
    fail_below: Annotated[
        list[str] | None,
        typer.Option(help="METRIC=VALUE: exit 1 when the metric's worst value is below VALUE (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")] = False,
) -> None:
    """Audit a model's invariance / equivariance under a transformation group."""
    from .audit import audit
    from .groups import parse_group
    from .result import known_metrics

    above, below = _thresholds(fail_above or [], "--fail-above"), _thresholds(fail_below or [], "--fail-below")
    shape = None
    if input_shape is not None:
        dims = _floats(input_shape, "--input-shape") or []
        if len(dims) != 3 or any(d < 1 or d != int(d) for d in dims):
            raise fail(f"--input-shape takes C,H,W (e.g. 1,28,28), got {input_shape!r}")
        shape = tuple(int(d) for d in dims)
    data_options = {
        "split": split,
        "limit": limit,
        "input_size": input_size,
        "channels": channels,
        "mean": _floats(mean, "--mean"),
        "std": _floats(std, "--std"),
        "download": download,
        "cache_dir": cache_dir,
    }
    if shape is not None:
        data_options["input_shape"] = shape
    show = not (quiet or json_out)
    for name in [*above, *below]:
        if name not in known_metrics():
            raise fail(f"unknown metric {name!r} in a threshold; known: {', '.join(sorted(known_metrics()))}")

    def on_task(chosen: str, auto: bool) -> None:
        if show and auto:
            err.print(f"task: {chosen} (chosen from the model's output shape; override with --task)")

    try:
        grp = parse_group(group, steps)  # a bad spec fails before the model or data load
        kwargs = dict(
            task=task,
            interpolation=interpolation,
            padding=padding,
            mask=mask,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            arch=arch,
            trust=trust,
            samples=samples,
            on_task=on_task,
        )
        result = _run_scan(audit, model, data, grp, {**kwargs, **data_options}, show)
    except ScanInterrupted as exc:
        if exc.partial is None:
            raise fail(str(exc)) from None
        try:
            saved = _save(exc.partial, out_file or _rescue_path("partial"), "partial result")
        except RescuedWrite as rescued:
            saved = rescued.path
        raise fail(f"{exc}; partial results written to {saved}") from None
    except EquiauditError as exc:
        raise fail(str(exc)) from None

    problems: list[str] = []  # IO failures: reported after the result is printed, then exit 2
    try:
        failures = result.check(above, below)
    except EquiauditError as exc:
        failures = []
        problems.append(str(exc))
    if above or below:
        result.meta["checks"] = {"fail_above": above, "fail_below": below, "failures": failures, "passed": not failures}
    try:
        saved = _save(result, out_file if out_file or not problems else _rescue_path("result"))
    except RescuedWrite as rescued:
        saved = rescued.path
        problems.append(str(rescued))
    if report is not None:
        try:
            from .reports import write_report

            path = write_report(result, report)
            if show:
                err.print(f"report: {path}")
        except EquiauditError as exc:
            problems.append(f"{exc} (results {'in ' + str(saved) if saved else 'not saved; use --out'})")
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    else:
        _print_table(result)
        if saved and show:
            err.print(f"results: {saved}")
    for line in failures:
        err.print(f"[bold red]check failed:[/] {line}")
    if problems:
        raise fail(problems[0])
    if failures:
        raise typer.Exit(EXIT_FAILED)


def _run_scan(audit: Any, model: str, data: str, group: Any, kwargs: dict[str, Any], show: bool) -> Any:
    """``audit(model, data, group, **kwargs)``, with a progress bar on stderr when it is a terminal."""
    kwargs = {"group": group, **kwargs}
    if not show or not err.is_terminal:
        return audit(model, data, **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tid = bar.add_task("scan", total=None)
        return audit(model, data, progress=lambda done, total: bar.update(tid, completed=done, total=total), **kwargs)


@app.command()
def groups(
    spec: Annotated[str, typer.Argument(help="A group spec, e.g. d4 or c4*scale:0.8,1,1.25.")],
    steps: Annotated[int | None, typer.Option("--steps", "-n")] = None,
) -> None:
    """List the elements of a group spec with their parameters and matrices."""
    from .groups import parse_group

    try:
        grp = parse_group(spec, steps)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    table = Table(
        title=f"{grp.spec}: {len(grp)} elements ({'exact' if grp.exact else 'interpolated'})", title_justify="left"
    )
    for col in ("id", "label", "angle", "scale", "reflect", "exact", "matrix (centred, y down)"):
        table.add_column(col)
    for i, g in enumerate(grp):
        m = g.matrix()[:, :2]
        table.add_row(
            str(i),
            g.label,
            f"{g.angle:g}",
            f"{g.scale:g}",
            str(g.reflect),
            str(g.exact),
            f"[{m[0, 0]:+.3f} {m[0, 1]:+.3f}; {m[1, 0]:+.3f} {m[1, 1]:+.3f}]",
        )
    out.print(table)


def _add_subcommands() -> None:
    """The zoo and the reports add their own commands (they sit above the core; the core never imports them)."""
    import importlib

    for module, name in (("equiaudit.zoo.cli", "zoo"), ("equiaudit.reports.cli", None)):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app) if name is None else app.add_typer(mod.app, name=name)


_add_subcommands()


# click's base exception as typer raises it (typer may vendor click), found through a public typer name
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException") or (typer.BadParameter,)


def main() -> None:
    """Console entry point: one-line errors, never a traceback (set EQUIAUDIT_DEBUG=1 to see one)."""
    try:
        code = app(standalone_mode=False)  # usage errors come back here instead of as a framed message
    except _CLICK_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # a bare command group: its help
            out.print(ctx.get_help(), markup=False, highlight=False)
            sys.exit(EXIT_USAGE)
        where = ctx.command_path if ctx is not None else "equiaudit"
        message = " ".join(exc.format_message().split())  # click wraps long messages
        err.print(f"error: {message} (see '{where} --help')", markup=False)
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        err.print("error: interrupted")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # a bug: still one line for the user
        if os.environ.get("EQUIAUDIT_DEBUG"):
            raise
        err.print(
            f"error: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with EQUIAUDIT_DEBUG=1 for the traceback)"
        )
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
