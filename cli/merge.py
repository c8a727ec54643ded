"""``equiaudit merge``: one result from the results of independent ``--shard K/N`` jobs (a Slurm array, say).

The merged result is the one a single process would have written over all the images (see
:mod:`equiaudit.merge`); it is printed and saved like a scan's, with the same thresholds and exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from equiaudit.errors import EquiauditError

from .console import fail
from .extras import require_reports
from .scan import FailAbove, FailBelow, JsonOut, ReportPath, _finish, _thresholds


def merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard results (JSON written by scan --shard K/N --out).")],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write the merged JSON document here.")] = None,
    report: ReportPath = None,
    json_out: JsonOut = False,
    fail_above: FailAbove = None,
    fail_below: FailBelow = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr.")] = False,
) -> None:
    """Merge the results of --shard K/N scans into the result of one scan over all the images."""
    from equiaudit.merge import merge_results
    from equiaudit.result import load

    above, below = _thresholds(fail_above or [], "--fail-above"), _thresholds(fail_below or [], "--fail-below")
    try:
        if report is not None:
            require_reports()
        result = merge_results([load(path) for path in shards])
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    _finish(result, above, below, out_file, report, json_out, not (quiet or json_out))
