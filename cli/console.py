"""What every command shares: the two consoles, one-line failures, exit codes, and saving with a rescue file.

Data on stdout (tables, or one JSON document); messages, warnings and progress on stderr. Exit codes: 0 every
check holds, 1 a threshold is crossed, 2 usage, input or IO error (one line, no traceback).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from equiaudit.errors import EquiauditError

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
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def rescue_path(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    return Path.cwd() / f"equiaudit-{kind.split()[-1] if kind else 'result'}-{stamp}.json"


def save_or_rescue(result: Any, path: Path | None, kind: str = "result") -> Path | None:
    """Save to ``path``; if that fails, to a rescue file in the working directory, so nothing is lost."""
    from equiaudit.result import save

    if path is None:
        return None
    try:
        return save(result, path)
    except EquiauditError as exc:
        rescue = rescue_path(kind)
        save(result, rescue)
        raise RescuedWrite(f"{exc}; the {kind} was written to {rescue} instead", rescue) from None
