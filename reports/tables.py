"""The numbers of a report as HTML tables: per element (with intervals, exact / interpolated marked and how
each element fares under the verdict's rule), and side by side for a comparison.

Tables are plain HTML, so they show their numbers where scripts are blocked and charts are not drawn. A value
with an interval reads ``0.574 ±0.031`` (the larger half-width, as on the command line); the cell's tooltip
holds the exact interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from .verdict import (
    Judged,
    _is_exact,
    _num,
    criterion,
    element_name,
    fmt_interval,
    interval_title,
    judge_elements,
    row_interval,
    verdict,
    worst_element,
)

if TYPE_CHECKING:
    from equiaudit.result import AuditResult
    from equiaudit.testing import Tolerance


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown, its tooltip and a status class (``pass``, ``warn``, ``fail`` or ``""``)."""

    text: str
    title: str = ""
    status: str = ""
    head: bool = False  # a row heading (``<th scope="row">``)


@dataclass
class NumberTable:
    """A table of numbers with its heading and the words that explain it."""

    id: str
    title: str
    caption: str
    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]] = field(default_factory=list)


# Element metrics shown per task: (column, heading, percent).
_CLASSIFY = (
    ("agreement", "agreement", True),
    ("accuracy", "accuracy", True),
    ("kl", "KL (nats)", False),
    ("invariance_error", "invariance error (mean)", False),
    ("invariance_error_max", "worst image", False),
    ("floor", "floor (mean)", False),
)
_DENSE = (
    ("iou_consistency", "IoU consistency", False),
    ("iou_truth", "IoU with true masks", False),
    ("equivariance_error", "equivariance error (mean)", False),
    ("equivariance_error_max", "worst image", False),
    ("floor", "floor (mean)", False),
    ("max_abs_error", "max |difference|", False),
)


def _value_cell(row: dict[str, Any], col: str, percent: bool, confidence: float) -> Cell:
    value = _num(row.get(col))
    if value is None:
        return Cell("–")
    low, high = row_interval(row, col)
    if col in ("iou_consistency", "iou_truth"):
        return Cell(f"{value:.3f}")
    return Cell(fmt_interval(value, low, high, percent=percent), interval_title(low, high, confidence, percent=percent))


def _judged_cell(j: Judged | None) -> Cell:
    if j is None:
        return Cell("–", "the identity measures nothing")
    kind = "round-off" if j.exact else "floor"
    text = f"within {kind}" if j.holds else f"above {kind}"
    if j.criterion == "largest error":  # a check's own max_error
        text = "within tolerance" if j.holds else "above tolerance"
    return Cell(text, f"{j.criterion} {j.value:.4g}, limit {j.limit:.4g}", j.status)


def element_table(
    result: AuditResult,
    *,
    frame: pd.DataFrame | None = None,
    tolerance: Tolerance | None = None,
    tid: str = "numbers",
    title: str = "Numbers per element",
    caption: str | None = None,
) -> NumberTable:
    """Every element of ``result`` (or of ``frame``, e.g. the noise probe's elements) with its metrics and
    intervals, whether it is exact (no interpolation) or interpolated, and how it fares under the verdict's
    rule (or a check's own ``tolerance``)."""
    frame = result.elements if frame is None else frame
    key = "invariance_error" if result.task == "classify" else "equivariance_error"
    spec = _CLASSIFY if result.task == "classify" else _DENSE
    cols = [(c, h, p) for c, h, p in spec if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any()]
    from .verdict import _context

    ctx = _context(result)
    judged = {j.label: j for j in judge_elements(frame, key, dtype=ctx.dtype, device=ctx.device, tolerance=tolerance)}
    worst = worst_element(frame, key)
    rule = (
        f"its check's tolerance (max_error {tolerance})"
        if tolerance is not None and not tolerance.interval
        else (
            f"the verdict's rule: an interpolated element's mean error at most the upper bound of its floor's "
            f"{ctx.confidence:.0%} interval + round-off, an exact element's largest error at most round-off"
        )
    )
    table = NumberTable(
        tid,
        title,
        caption
        or (
            f"Mean over the images per element, ± the larger half-width of the {ctx.confidence:.0%} interval "
            f"(Wilson for proportions, bootstrap over the images for mean errors; the exact interval in each "
            f"cell's tooltip). Exact: no interpolation (a permutation of pixels), so its floor is 0. The last "
            f"column judges each element by {rule}. ★ marks the worst element ({criterion(key)})."
        ),
        ("element", "kind", *(h for _, h, _ in cols), "verdict"),
    )
    for row in frame.to_dict(orient="records"):
        label = str(row["label"])
        name = element_name(row, ctx.wraps)
        exact = _is_exact(row)
        cells = [
            Cell(name + (" ★" if label == worst else ""), label, head=True),
            Cell("exact" if exact else "interpolated"),
            *(_value_cell(row, c, p, ctx.confidence) for c, _, p in cols),
            _judged_cell(judged.get(label)) if label != "identity" or len(frame) == 1 else _judged_cell(None),
        ]
        table.rows.append(tuple(cells))
    return table


# ---- comparisons ----------------------------------------------------------------------------------------------


def _worst_value(result: AuditResult, metric: str, percent: bool) -> Cell:
    frame = result.elements
    label = worst_element(frame, metric)
    if label is None:
        return Cell("–")
    row = frame[frame["label"] == label].iloc[0].to_dict()
    low, high = row_interval(row, metric)
    c = float((result.intervals or {}).get("confidence", 0.95))
    where = element_name(row, True)
    text = fmt_interval(row[metric], low, high, percent=percent) + f" at {where}"
    return Cell(text, interval_title(low, high, c, percent=percent) + f"; {criterion(metric)}: {label}".lstrip("; "))


def _summary_cell(result: AuditResult, key: str, percent: bool = False) -> Cell:
    value = _num(result.summary.get(key))
    if value is None:
        return Cell("–")
    low, high = result.summary.get(f"{key}_low"), result.summary.get(f"{key}_high")
    c = float((result.intervals or {}).get("confidence", 0.95))
    return Cell(fmt_interval(value, low, high, percent=percent), interval_title(low, high, c, percent=percent))


def _above(result: AuditResult) -> Cell:
    key = "invariance_error" if result.task == "classify" else "equivariance_error"
    judged = judge_elements(result.elements, key, dtype=result.run.arithmetic, device=result.run.device)
    if not judged:
        return Cell("–")
    bad = [j for j in judged if not j.holds]
    status = "pass" if not bad else max((j.status for j in bad), key={"warn": 1, "fail": 2}.__getitem__)
    return Cell(f"{len(bad)} of {len(judged)}", ", ".join(j.label for j in bad), status)


def _verdict_cell(result: AuditResult) -> Cell:
    v = verdict(result)
    return Cell(v.status.upper(), v.sentence, v.status)


def comparison_table(results: Sequence[AuditResult], names: Sequence[str]) -> NumberTable:
    """The headline numbers of several audits side by side: one column per model."""
    classify = all(r.task == "classify" for r in results)
    key = "invariance_error" if classify else "equivariance_error"
    rows: list[tuple[str, Any]] = [
        ("verdict", _verdict_cell),
        (
            "parameters",
            lambda r: Cell(f"{r.model.parameters:,}" if isinstance(r.model.parameters, int) else "–"),
        ),
        ("data", lambda r: Cell(f"{r.data.spec} ({r.summary.get('images', r.data.count)} images)")),
        ("group", lambda r: Cell(f"{r.group.spec} ({r.group.size} elements)")),
    ]
    if classify:
        rows += [
            ("agreement, mean over elements", lambda r: _summary_cell(r, "agreement_mean", True)),
            ("agreement, lowest element", lambda r: _worst_value(r, "agreement", True)),
            ("accuracy untransformed", lambda r: _summary_cell(r, "accuracy_reference", True)),
            ("accuracy, mean over elements", lambda r: _summary_cell(r, "accuracy_mean", True)),
            ("accuracy, lowest element", lambda r: _worst_value(r, "accuracy", True)),
            ("worst-case accuracy", lambda r: _summary_cell(r, "worst_case_accuracy", True)),
        ]
    else:
        rows += [
            ("IoU consistency, mean", lambda r: _summary_cell(r, "iou_consistency_mean")),
            ("IoU consistency, lowest element", lambda r: _worst_value(r, "iou_consistency", False)),
            ("IoU with true masks untransformed", lambda r: _summary_cell(r, "iou_truth_reference")),
        ]
    rows += [
        (f"{key.replace('_', ' ')}, mean over elements", lambda r: _summary_cell(r, f"{key}_mean")),
        (f"{key.replace('_', ' ')}, worst element", lambda r: _worst_value(r, key, False)),
        (f"{key.replace('_', ' ')}, worst image", lambda r: _summary_cell(r, f"{key}_max")),
        ("interpolation floor, mean", lambda r: _summary_cell(r, "floor_mean")),
        ("elements above the verdict's limit", _above),
        ("constant input pixels", lambda r: _summary_cell(r, "constant_input_fraction", True)),
    ]
    table = NumberTable(
        "numbers-compare",
        "Side by side",
        "One column per model. ± is the larger half-width of the interval (tooltips: the exact interval); "
        "worst elements by the rule used everywhere (lowest value of agreement / accuracy / IoU, largest mean "
        "error; ties to the first in group order).",
        ("", *names),
    )
    for heading, get in rows:
        table.rows.append((Cell(heading, head=True), *(get(r) for r in results)))
    return table


def comparison_element_table(results: Sequence[AuditResult], names: Sequence[str]) -> NumberTable:
    """Per element (by label, in the first result's order), each model's mean error and, for classifiers, its
    agreement, with intervals."""
    classify = all(r.task == "classify" for r in results)
    key = "invariance_error" if classify else "equivariance_error"
    metrics = [(key, "error", False)] + ([("agreement", "agreement", True)] if classify else [])
    labels: list[str] = []
    for r in results:
        labels += [str(lb) for lb in r.elements["label"] if str(lb) not in labels]
    header = ["element", *(f"{n}: {h}" for _, h, _ in metrics for n in names)]
    table = NumberTable(
        "numbers-elements",
        "Numbers per element",
        "Mean over the images per element and model, ± the larger half-width of the interval (tooltips: the "
        "exact interval). Each model's floor is in the units of its own output, so floors differ by model.",
        tuple(header),
    )
    frames = [r.elements.set_index(r.elements["label"].astype(str)) for r in results]
    for label in labels:
        first = next(f.loc[label].to_dict() for f in frames if label in f.index)
        cells = [Cell(element_name({**first, "label": label}, True), label, head=True)]
        for col, _, percent in metrics:
            for r, f in zip(results, frames, strict=True):
                if label not in f.index or col not in f:
                    cells.append(Cell("–"))
                    continue
                cells.append(
                    _value_cell(
                        f.loc[label].to_dict(), col, percent, float((r.intervals or {}).get("confidence", 0.95))
                    )
                )
        table.rows.append(tuple(cells))
    return table
