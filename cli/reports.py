"""``equiaudit report`` and ``equiaudit compare``: HTML reports from saved results.

Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from equiaudit.errors import EquiauditError

from .console import err, fail
from .extras import require_reports


def _load(path: Path) -> Any:
    from equiaudit.result import load

    return load(path)


def report(
    result: Annotated[
        Path,
        typer.Argument(
            help="A results JSON written by `equiaudit scan --out` (its "
            "<stem>.samples.npz beside it adds the image galleries)."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the HTML (default: beside the JSON, .html).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title (default: model · group).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write the HTML report of a saved audit result."""
    path = out if out is not None else result.with_suffix(".html")
    try:
        require_reports()
        from equiaudit.reports import write_report

        res = _load(result)
        beside = path.with_suffix(".json")
        # Reports made in place (reports/x.json -> reports/x.html) leave the input file alone.
        same = beside.exists() and beside.resolve() == result.resolve()
        written = write_report(res, path, title=title, write_json=not same)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        err.print(f"report: {written}")


def compare(
    results: Annotated[list[Path], typer.Argument(help="Two or more results JSON files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML.")] = Path("compare.html"),
    names: Annotated[
        str | None, typer.Option(help="Comma-separated model names, one per result (default: the model file names).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    correctness: Annotated[
        str | None,
        typer.Option(
            help="Also show the correctness matrix of the first two classifiers under these elements (a group "
            "spec, e.g. rot:0,45), from the per-image records in their .samples.npz."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write an HTML report comparing several saved audit results."""
    label_list = None if names is None else [n.strip() for n in names.split(",")]
    try:
        require_reports()
        from equiaudit.reports import write_comparison

        loaded = [_load(p) for p in results]
        matrices = []
        if len(loaded) < 2:
            raise EquiauditError(f"a comparison needs at least 2 results, got {len(loaded)}")
        if correctness is not None:
            from equiaudit.reports import default_names
            from equiaudit.reports.correctness import matrices_from_results

            pair = tuple((label_list or default_names(loaded))[:2])
            matrices = matrices_from_results(loaded[0], loaded[1], correctness, names=pair)
        written = write_comparison(loaded, out, names=label_list, title=title, matrices=matrices)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        err.print(f"report: {written}")
