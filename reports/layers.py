"""What a report shows of a per-layer audit (``--layers``) and of the Lie derivative (``--lie``): the error by
depth with each layer's floor and a numeric table (the verdict's cards for them are in :mod:`reports.verdict`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from .figures import _AXIS, _LAYOUT, Chart
from .tables import Cell, NumberTable
from .verdict import fmt_num

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

_ERROR, _FLOOR, _BREAK = "#1f5fa8", "#9a9a9a", "#c0392b"
_TINY = 1e-12  # errors of exactly 0 (exact layers in float64) sit at the bottom of the log axis


def _rows(result: AuditResult) -> list[dict[str, Any]]:
    return list((result.layers or {}).get("layers") or [])


def _mean_measured(values: list[float | None], labels: list[str]) -> float | None:
    got = [v for v, lab in zip(values, labels, strict=True) if v is not None and lab != "identity"]
    return sum(got) / len(got) if got else None


def depth_figure(result: AuditResult) -> go.Figure:
    """Per layer in execution order: the worst element's mean error, the mean over the elements, and the
    largest floor over the elements (dashed; exact elements have none); the first layer that breaks is marked."""
    section, rows = result.layers or {}, _rows(result)
    names = [r["name"] for r in rows]
    labels = section.get("elements") or []
    worst = [max(r["error_worst"], _TINY) if r["error_worst"] is not None else None for r in rows]
    mean = [_mean_measured(r["error"], labels) for r in rows]
    floor = [max((f for f in r["floor"] if f is not None), default=0.0) or None for r in rows]
    hover = [f"{r['name']} ({r['module']}, {r['action']})<br>worst: {r['worst_element']}" for r in rows]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=names, y=worst, name="error, worst element", mode="lines+markers", text=hover,
                   hovertemplate="%{text}<br>error %{y:.3g}<extra></extra>", line={"color": _ERROR})
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=names, y=[max(m, _TINY) if m is not None else None for m in mean], name="error, mean over "
                   "elements", mode="lines+markers", line={"color": _ERROR, "dash": "dot"}, opacity=0.6)
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=names, y=floor, name="floor (largest over the elements)", mode="lines+markers",
                   line={"color": _FLOOR, "dash": "dash"})
    )  # fmt: skip
    first = section.get("first_breaking")
    if first is not None:
        at = names.index(first)
        fig.add_trace(
            go.Scatter(x=[first], y=[worst[at]], name="first layer that breaks", mode="markers",
                       marker={"color": _BREAK, "size": 14, "symbol": "x"})
        )  # fmt: skip
    fig.update_layout(**_LAYOUT)
    fig.update_xaxes(**_AXIS, title_text="layer (execution order)", type="category")
    fig.update_yaxes(**_AXIS, title_text="relative error", type="log")
    return fig


def layer_charts(result: AuditResult) -> list[Chart]:
    """The error-by-depth chart (none without a ``layers`` section)."""
    if not _rows(result):
        return []
    section = result.layers or {}
    return [
        Chart(
            "chart-layers",
            "Equivariance error by depth",
            f"Per layer (execution order): ||ρ(g)⁻¹ Φ(T_g x) − Φ(x)|| / ||Φ(x)|| with each layer's action on its "
            f"feature map ({section.get('action')}; the table says which one each layer got), mean over "
            f"{section.get('images')} images, for the worst element and over all elements; dashed grey: the "
            "layer's largest interpolation floor (its map resampled there and back; exact elements have none). "
            "The red cross marks the first layer "
            "that breaks; the layers before it hold.",
            depth_figure(result),
            wide=len(_rows(result)) > 12,
        )
    ]


def layer_table(result: AuditResult) -> NumberTable | None:
    """One row per layer: module, shape, action (and how auto chose it), worst element, error, floor, Lie
    derivative, verdict."""
    rows = _rows(result)
    if not rows:
        return None
    section = result.layers or {}
    gens = (result.lie or {}).get("generators") or []
    table = NumberTable(
        "numbers-layers",
        "Numbers per layer",
        f"Rule: {section.get('rule')}. Action: what ρ is on each layer's map (auto: the e2cnn field type, else "
        "spatial or regular, whichever fits the exact elements; the tooltip gives both fits)."
        + (" Lie derivative: per radian / per unit of log scale, mean over the images." if gens else ""),
        ("layer", "module", "shape", "action", "worst element", "error", "floor", *(f"Lie {g}" for g in gens),
         "verdict"),
    )  # fmt: skip
    for r in rows:
        fit = r.get("action_fit") or {}
        status = {True: "pass", False: "fail", None: ""}[r["holds"]]
        verdict = {True: "holds", False: "breaks at " + ", ".join(r["breaks_at"]), None: "-"}[r["holds"]]
        table.rows.append(
            (
                Cell(r["name"], head=True, status="fail" if r["name"] == section.get("first_breaking") else ""),
                Cell(r["module"]),
                Cell("×".join(map(str, r["shape"]))),
                Cell(str(r["action"]), ", ".join(f"{k}: {fmt_num(v)}" for k, v in fit.items())),
                Cell(str(r["worst_element"] or "-")),
                Cell(fmt_num(r["error_worst"])),
                Cell(fmt_num(r["floor_worst"])),
                *(Cell(fmt_num((r.get("lie") or {}).get(g))) for g in gens),
                Cell(verdict, status=status),
            )
        )
    return table
