"""The ``equiaudit`` command line: the one place that composes the core, the zoo and the reports.

``scan`` and ``groups`` use the core; ``zoo ...`` the zoo (``equiaudit[zoo]``); ``report`` and ``compare`` the
reports (``equiaudit[reports]``). Dependencies point one way: this package imports the core, the zoo and the
reports; none of them imports it.
"""

from __future__ import annotations

import os
import sys

import typer

from . import merge, reports, scan, zoo
from .console import EXIT_OK, EXIT_USAGE, err, fail, out

__all__ = ["app", "err", "fail", "main", "out"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Equivariance testing and auditing for PyTorch vision models.",
)
app.command("scan")(scan.scan)
app.command("groups")(scan.groups)
app.command("report")(reports.report)
app.command("compare")(reports.compare)
app.command("merge")(merge.merge)
app.add_typer(zoo.app, name="zoo")

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
