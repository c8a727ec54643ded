"""Spatial robustness in a report: accuracy over rotation x translation, the worst case per search method
(``--search``) side by side, and where each image's worst element lies.

Charts follow :mod:`reports.figures` (the same layout, axes and colours, aggregated data only); the methods'
numbers are also a plain HTML table, so they show where scripts are blocked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import _AXIS, _LAYOUT, COLORS, Chart
from .tables import Cell, NumberTable
from .verdict import fmt_interval, interval_title

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

_AXIS_NAMES = {"angle": "rotation angle (degrees)", "scale": "scale factor", "dx": "shift x (px, right)",
               "dy": "shift y (px, down)"}  # fmt: skip


def _shift_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in ("dx", "dy") if c in frame and frame[c].nunique() > 1]


def heatmap_figure(result: AuditResult) -> go.Figure | None:
    """Accuracy (agreement without labels) over rotation x translation, or over dx x dy for translations alone;
    None when the group is not such a 2-D product. Cells average what else varies (mirrors, the other axis)."""
    frame = result.elements
    metric = "accuracy" if "accuracy" in frame and frame["accuracy"].notna().any() else "agreement"
    if metric not in frame:
        return None
    shifts = _shift_columns(frame)
    if not shifts:
        return None
    if frame["angle"].nunique() > 1:
        x, y = "angle", "shift"
        frame = frame.assign(shift=[f"({a:g}, {b:g})" for a, b in zip(frame["dx"], frame["dy"], strict=True)])
        order = frame.sort_values(["dy", "dx"])["shift"].drop_duplicates().tolist()
    elif len(shifts) == 2:
        x, y, order = "dx", "dy", None
    else:
        return None
    table = frame.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
    if order is not None:
        table = table.reindex(order)
    fig = go.Figure(
        go.Heatmap(
            z=table.to_numpy(),
            x=[float(v) for v in table.columns],
            y=[str(v) for v in table.index] if order is not None else [float(v) for v in table.index],
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar=dict(title=metric, tickformat=".0%"),
            hovertemplate=f"{x} %{{x}}<br>{y} %{{y}}<br>{metric} %{{z:.1%}}<extra></extra>",
        )
    )
    fig.update_layout(**{**_LAYOUT, "height": max(360, min(900, 14 * len(table.index) + 120))})
    fig.update_xaxes(**_AXIS, title_text=_AXIS_NAMES.get(x, x))
    fig.update_yaxes(**_AXIS, title_text="shift (dx, dy) px" if y == "shift" else _AXIS_NAMES[y])
    if y == "dy":
        fig.update_yaxes(autorange="reversed")  # down is down, as in the image
    return fig


def methods_figure(result: AuditResult) -> go.Figure:
    """Worst-case accuracy (error without labels) per search method, with its interval."""
    methods = result.search["methods"]
    labelled = any(m.get("worst_case_accuracy") is not None for m in methods)
    key = "worst_case_accuracy" if labelled else "worst_case_error"
    names = [m["method"] for m in methods]
    values = [m.get(key) for m in methods]
    fig = go.Figure()
    if labelled and result.search.get("natural_accuracy") is not None:
        fig.add_hline(y=result.search["natural_accuracy"], line_dash="dash", line_color="#6b7280",
                      annotation_text="natural accuracy")  # fmt: skip
    err = [
        (m.get(f"{key}_high", v) - v if v is not None else 0, v - m.get(f"{key}_low", v) if v is not None else 0)
        for m, v in zip(methods, values, strict=True)
    ]
    fig.add_bar(
        x=names,
        y=values,
        marker_color=[COLORS[i % len(COLORS)] for i in range(len(names))],
        error_y=dict(type="data", array=[e[0] for e in err], arrayminus=[e[1] for e in err], visible=True),
        name=key.replace("_", " "),
        hovertemplate="%{x}: %{y:.4g}<extra></extra>",
    )
    if labelled:
        means = [m.get("accuracy_mean") for m in methods]
        fig.add_scatter(x=names, y=means, mode="markers", marker=dict(symbol="diamond", size=10, color="#111827"),
                        name="accuracy (mean over the elements)")  # fmt: skip
    fig.update_layout(**_LAYOUT)
    fig.update_xaxes(**_AXIS, title_text="search method")
    fig.update_yaxes(**_AXIS, title_text=key.replace("_", " "), rangemode="tozero")
    if labelled:
        fig.update_yaxes(tickformat=".0%", range=[0, 1.04])
    return fig


def worst_elements_figure(result: AuditResult) -> go.Figure | None:
    """Histograms of each image's worst element, one panel per varying parameter, one colour per method."""
    search = result.search
    params = list(search.get("box") or {})
    params = ["scale" if p == "log_scale" else p for p in params]
    if not params:
        return None
    fig = make_subplots(rows=1, cols=len(params), horizontal_spacing=0.08)
    for i, (method, cols) in enumerate(search["worst"].items()):
        for j, p in enumerate(params):
            fig.add_histogram(
                x=cols[p],
                name=method,
                legendgroup=method,
                showlegend=j == 0,
                marker_color=COLORS[i % len(COLORS)],
                opacity=0.6,
                row=1,
                col=j + 1,
            )
            fig.update_xaxes(**_AXIS, title_text=_AXIS_NAMES.get(p, p), row=1, col=j + 1)
    fig.update_layout(**_LAYOUT, barmode="overlay")
    fig.update_yaxes(**_AXIS, title_text="images", row=1, col=1)
    return fig


def search_charts(result: AuditResult) -> list[Chart]:
    """The report's spatial charts: the heatmap for 2-D products, and with ``--search`` the methods and the
    per-image worst elements."""
    charts = []
    heat = heatmap_figure(result)
    if heat is not None:
        charts.append(
            Chart(
                "chart-heatmap",
                "Accuracy over rotation and translation",
                "Accuracy under each combination of the group's parameters (agreement with the untransformed "
                "prediction when the data has no labels); cells average what else varies.",
                heat,
                wide=True,
            )
        )
    if result.search:
        charts.append(
            Chart(
                "chart-search",
                "Worst case per search method",
                "Share of images right under every element a method evaluated (grid: the group's elements; "
                "random:K: K draws per image from the parameter box; refine: the grid and a local search around "
                "each image's worst grid element), with its interval; diamonds: accuracy averaged over the "
                "elements. Without labels: the mean over images of each image's largest invariance error.",
                methods_figure(result),
            )
        )
        fig = worst_elements_figure(result)
        if fig is not None:
            charts.append(
                Chart(
                    "chart-worst-elements",
                    "Where each image's worst element lies",
                    "Per method, how the images' worst elements (lowest margin, or largest error without "
                    "labels) spread over the group's parameters.",
                    fig,
                    wide=True,
                )
            )
    return charts


def _cell(row: dict[str, Any], key: str, confidence: float, percent: bool) -> Cell:
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    return Cell(
        fmt_interval(row.get(key), low, high, percent=percent), interval_title(low, high, confidence, percent=percent)
    )


_HEADER = ("method", "elements / image", "accuracy (mean)", "worst-case accuracy", "worst-case error",
           "extra forwards / image", "seconds")  # fmt: skip


def search_table(result: AuditResult) -> NumberTable | None:
    """The search methods side by side as numbers (None without ``--search``)."""
    if not result.search:
        return None
    c = (result.intervals or {}).get("confidence", 0.95)
    table = NumberTable(
        "numbers-search",
        "Worst case per search method",
        f"Objective: {result.search['objective'].replace('_', ' ')}; seed {result.search['seed']}; refine "
        f"budget {result.search['budget']} extra forwards per image ({result.search['rounds']} rounds).",
        _HEADER,
    )
    for m in result.search["methods"]:
        table.rows.append(
            (
                Cell(m["method"], head=True),
                Cell(str(m["elements_per_image"])),
                _cell(m, "accuracy_mean", c, True),
                _cell(m, "worst_case_accuracy", c, True),
                _cell(m, "worst_case_error", c, False),
                Cell(f"{m['extra_forwards_per_image']:.4g}"),
                Cell(f"{m.get('seconds', 0):.3g}"),
            )
        )
    return table
