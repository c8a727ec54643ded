"""The report of a pytest session (``pytest --equiaudit-report=PATH``): every equivariance check on one page.

Each check is judged as pytest judged it: its status is the test's own outcome, and every number is read
against the check's own ``max_error`` (a marker's ``max_error=10.0`` or ``"8x floor"``), never against the
default rule. Checks made by the fixture (``equivariance.check``) and by :func:`equiaudit.testing.assert_invariant`
/ :func:`~equiaudit.testing.assert_equivariant` both appear.

Test ids are long, so charts name checks by short labels (``C1``, ``C2``...) and the table of checks at the top
is their legend. One page holds every kind of check: invariant checks (classifiers) and equivariant checks
(dense outputs) get a section each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .figures import Chart, session_error_figure, session_margin_figure
from .tables import Cell, NumberTable, element_table
from .verdict import _num, element_name, fmt_interval, judge_elements, worst_element

if TYPE_CHECKING:
    from equiaudit.result import AuditResult


@dataclass
class SessionCheck:
    """One check of a pytest session, as pytest decided it."""

    name: str  # the test id (``path::test``, ``#N`` for a test's N-th check, the helper's name for asserts)
    passed: bool
    result: AuditResult
    max_error: str = "floor"  # the check's tolerance, as equiaudit.testing.parse_max_error reads it
    failures: Sequence[str] = field(default_factory=tuple)  # pytest's lines for the failing elements
    via: str = "fixture"  # fixture | assert_invariant | assert_equivariant

    @property
    def kind(self) -> str:
        return "invariant" if self.result.task == "classify" else "equivariant"


@dataclass
class _Row:
    label: str
    check: SessionCheck
    ratio: float | None  # the largest judged value over its limit
    worst: str  # the worst element (largest mean error) and its numbers
    why: str


def _judge(check: SessionCheck) -> tuple[float | None, list[Any]]:
    """The largest value / limit over the check's elements (and its noise probe's) under its own tolerance."""
    from equiaudit.testing import parse_max_error

    tolerance = parse_max_error(check.max_error)
    r = check.result
    key = "invariance_error" if r.task == "classify" else "equivariance_error"
    frames = [r.elements]
    if r.probe and r.probe.get("elements"):
        frames.append(pd.DataFrame.from_records(r.probe["elements"]))
    judged = [
        j
        for f in frames
        for j in judge_elements(f, key, dtype=r.run.arithmetic, device=r.run.device, tolerance=tolerance)
    ]
    ratios = [j.value / j.limit if j.limit > 0 else (0.0 if j.value <= 0 else float("inf")) for j in judged]
    return (max(ratios) if ratios else None), judged


def row_label(i: int) -> str:
    """The short label of the ``i``-th check (from 1) in the charts: ``C1``, ``C2``..."""
    return f"C{i}"


def _rows(checks: Sequence[SessionCheck]) -> list[_Row]:
    rows = []
    for i, c in enumerate(checks, 1):
        ratio, judged = _judge(c)
        r = c.result
        key = "invariance_error" if r.task == "classify" else "equivariance_error"
        label = worst_element(r.elements, key)
        worst = "–"
        if label is not None:
            row = r.elements[r.elements["label"] == label].iloc[0].to_dict()
            shown = fmt_interval(row[key], row.get(f"{key}_low"), row.get(f"{key}_high"))
            worst = f"{element_name(row, True)}: {shown}"
            floor = _num(row.get("floor"))
            if floor:
                worst += f" (floor {floor:.3g})"
        if c.failures:
            elements = [line.split(": error ", 1)[0] for line in c.failures if ": error " in line]
            other = [line for line in c.failures if ": error " not in line]
            parts = [f"{len(elements)} element(s) fail: {', '.join(elements)}"] if elements else []
            why = "; ".join(parts + other) + f" (details under {row_label(i)})"
        else:
            why = f"every element within max_error {c.max_error} ({len(judged)} judged)"
        rows.append(_Row(row_label(i), c, ratio, worst, why))
    return rows


def _legend(rows: Sequence[_Row], confidence: float) -> NumberTable:
    table = NumberTable(
        "checks",
        "Checks",
        "Every check of the session; the label names it in the charts. Result: what pytest decided, under the "
        "check's own max_error (and baseline, when one was compared). Largest error ÷ limit: at most 1 holds. "
        f"Worst element: the largest mean error, ± the larger half-width of its {confidence:.0%} interval.",
        (
            "label",
            "test",
            "via",
            "model",
            "group",
            "max_error",
            "result",
            "largest error ÷ limit",
            "worst element",
            "why",
        ),
    )
    for row in rows:
        c = row.check
        status = "pass" if c.passed else "fail"
        table.rows.append(
            (
                Cell(row.label, head=True),
                Cell(c.name, c.name),
                Cell(c.via),
                Cell(_model(c.result), str(c.result.model.source)),
                Cell(c.result.group.spec),
                Cell(str(c.max_error)),
                Cell("PASS" if c.passed else "FAIL", "", status),
                Cell("–" if row.ratio is None else f"{row.ratio:.3g}"),
                Cell(row.worst),
                Cell(row.why, "\n".join(c.failures)),
            )
        )
    return table


def _model(result: AuditResult) -> str:
    from .render import model_name

    return model_name(result)


def render_session(checks: Sequence[SessionCheck], json_name: str | None = None) -> str:
    """The HTML of a session report."""
    from equiaudit.testing import parse_max_error

    from .render import _charts_json, _page, check_result
    from .verdict import verdict

    checks = list(checks)
    for c in checks:
        check_result(c.result, c.name)
    rows = _rows(checks)
    confidence = max(float((c.result.intervals or {}).get("confidence", 0.95)) for c in checks)
    sections = []
    charts: list[Chart] = []
    for kind, heading in (
        ("invariant", "Invariant checks (classifiers)"),
        ("equivariant", "Equivariant checks (dense outputs)"),
    ):
        mine = [r for r in rows if r.check.kind == kind]
        if not mine:
            continue
        labels = [r.label for r in mine]
        error = "invariance" if kind == "invariant" else "equivariance"
        section_charts = [
            Chart(
                f"chart-{kind}-margin",
                "Largest error ÷ limit, per check",
                "Each check's largest judged error over its own limit (log axis; the dashed line is the limit). "
                "Green: passed, red: failed, as pytest decided.",
                session_margin_figure(
                    labels, [r.ratio for r in mine], [r.check.passed for r in mine], [r.check.name for r in mine]
                ),
            ),
            Chart(
                f"chart-{kind}-error",
                f"{error.capitalize()} error by element",
                "Mean over the images per element, with its interval shaded; dotted, in the same colour: that "
                "check's interpolation floor (each model's floor is in the units of its own output).",
                session_error_figure([r.check.result for r in mine], labels),
            ),
        ]
        charts += section_charts
        tables = []
        for r in mine:
            t = element_table(
                r.check.result,
                tolerance=parse_max_error(r.check.max_error),
                tid=f"numbers-{r.label}",
                title=f"{r.label} · {r.check.name}",
            )
            tables.append((r, t, verdict(r.check.result, r.check.max_error)))
        sections.append({"kind": kind, "heading": heading, "charts": _charts_json(section_charts), "tables": tables})
    passed = sum(c.passed for c in checks)
    return _page(
        "session.html.j2",
        title=f"equiaudit: {len(checks)} equivariance check{'s' if len(checks) != 1 else ''}, {passed} passed, "
        f"{len(checks) - passed} failed",
        status="pass" if passed == len(checks) else "fail",
        legend=_legend(rows, confidence),
        sections=sections,
        charts=[c for s in sections for c in s["charts"]],
        json_name=json_name,
    )


def write_session_report(
    checks: Sequence[SessionCheck], path: str | os.PathLike, *, json_name: str | None = None
) -> Path:
    """Write one HTML page of every check of a pytest session to ``path`` (sections for invariant and
    equivariant checks). ``json_name`` links the session's JSON summary. Returns the path."""
    from equiaudit.errors import EquiauditError
    from equiaudit.result import atomic_write_text

    if not checks:
        raise EquiauditError("a session report needs at least one check")
    return atomic_write_text(path, render_session(checks, json_name=json_name))


__all__ = ["SessionCheck", "render_session", "write_session_report"]
