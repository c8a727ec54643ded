"""HTML audit reports: one self-contained page per audit or comparison, with the results JSON beside it.

>>> from equiaudit.reports import write_report
>>> write_report(result, "runs/model-so2.html")      # also writes runs/model-so2.json

``write_comparison`` puts several audits on one page; ``write_session_report`` is the page of a pytest session
(``pytest --equiaudit-report``). Every page has its verdict, its numbers in HTML tables (with intervals; they
show where scripts are blocked) and its charts (with the intervals shaded).

This package needs the ``reports`` extra (plotly, jinja2): importing it without them raises ImportError
naming what to install. plotly and jinja2 themselves load when a report is written.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from equiaudit.errors import EquiauditError

_MISSING = [name for name in ("plotly", "jinja2") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"HTML reports need the 'reports' extra ({', '.join(_MISSING)} not installed): pip install 'equiaudit[reports]'"
    )

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

    from .correctness import CorrectnessMatrix
    from .session import SessionCheck

__all__ = [
    "CorrectnessMatrix",
    "SessionCheck",
    "correctness_matrix",
    "default_names",
    "write_comparison",
    "write_report",
    "write_session_report",
]


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    html = Path(path)
    if html.suffix.lower() == ".json":
        raise EquiauditError(f"the report path {html} ends in .json, where its results JSON would go; use .html")
    return html, html.with_suffix(".json")


def write_report(
    result: AuditResult, path: str | os.PathLike, *, title: str | None = None, write_json: bool = True
) -> Path:
    """Write the HTML report of ``result`` to ``path`` and (unless ``write_json`` is false) the results JSON,
    with its samples sidecar, beside it as ``<stem>.json``. Returns the HTML path."""
    from equiaudit.result import atomic_write_text, save

    from .render import render_report

    html, doc = _paths(path)
    if write_json:
        save(result, doc)
    text = render_report(result, title=title, json_name=doc.name if write_json or doc.exists() else None)
    return atomic_write_text(html, text)


def default_names(results: Sequence[AuditResult]) -> list[str]:
    """Short distinct names of the models of ``results`` (file names, ``zoo:NAME``, module classes)."""
    from .render import model_name

    names = [model_name(r) for r in results]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def write_comparison(
    results: Sequence[AuditResult],
    path: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    matrices: Sequence[CorrectnessMatrix] = (),
) -> Path:
    """Write a report comparing several audits (overlaid charts, trade-off, optional correctness matrices from
    :func:`correctness_matrix`) and a JSON with every result beside it. Returns the HTML path."""
    from equiaudit.result import atomic_write_text

    from .render import comparison_document, render_comparison

    results = list(results)
    if len(results) < 2:
        raise EquiauditError(f"a comparison needs at least 2 results, got {len(results)}")
    tasks = {"classify" if r.task == "classify" else "dense" for r in results}
    if len(tasks) > 1:
        raise EquiauditError(
            "cannot compare classifiers with dense models: their metrics differ "
            f"(tasks: {', '.join(r.task for r in results)})"
        )
    names = list(names) if names is not None else default_names(results)
    if len(names) != len(results) or len(set(names)) != len(names):
        raise EquiauditError(f"give one distinct name per result ({len(results)}), got {names}")
    html, doc = _paths(path)
    atomic_write_text(doc, comparison_document(results, names, matrices))
    return atomic_write_text(
        html, render_comparison(results, names, title=title, matrices=matrices, json_name=doc.name)
    )


def write_session_report(
    checks: Sequence[SessionCheck], path: str | os.PathLike, *, json_name: str | None = None
) -> Path:
    """Write one page of every check of a pytest session (see :mod:`equiaudit.reports.session`): each check
    judged by its own ``max_error``, with the status pytest gave it. Returns the HTML path."""
    from .session import write_session_report as write

    html, _ = _paths(path)
    return write(checks, html, json_name=json_name)


def __getattr__(name: str) -> Any:
    if name in ("correctness_matrix", "CorrectnessMatrix"):
        from . import correctness

        return getattr(correctness, name)
    if name == "SessionCheck":
        from .session import SessionCheck

        return SessionCheck
    raise AttributeError(f"module 'equiaudit.reports' has no attribute {name!r}")
