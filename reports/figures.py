"""Plotly figures of audit results: pure functions from results to ``go.Figure``, one figure per question.

Every function takes one :class:`~equiaudit.result.AuditResult` or a sequence of them (overlaid, one colour per
model) and plots the result's own numbers: nothing is smoothed, resampled or recomputed. The x axis follows the
group: angles in degrees for rotations (0..360 for full-turn groups, signed for ``rot:`` ranges; reflections as
a second line), scale factors on a log axis, element labels for anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .verdict import angle_wraps, display_angle, group_name, roundoff

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

    from .correctness import CorrectnessMatrix

COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
FLOOR_COLOR = "#6b7280"
_LAYOUT = dict(
    font=dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=13, color="#1f2937"),
    paper_bgcolor="white",
    plot_bgcolor="white",
    colorway=list(COLORS),
    height=360,
    margin=dict(l=64, r=40, t=36, b=56),
    hoverlabel=dict(namelength=-1),
    # Legend above the plot, tool bar down the right edge: neither collides with tick labels below.
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
    modebar=dict(orientation="v"),
)
_AXIS = dict(
    showgrid=True,
    gridcolor="#e5e7eb",
    zeroline=False,
    linecolor="#9ca3af",
    ticks="outside",
    tickcolor="#9ca3af",
    automargin=True,
)


@dataclass(frozen=True)
class Chart:
    """A figure with the stable id of its ``<div>`` and the words shown above and below it."""

    id: str
    title: str
    caption: str
    figure: go.Figure
    wide: bool | None = None  # a full row of the page; None: the page decides


@dataclass(frozen=True)
class Axis:
    """How elements map to the x axis: ``angle`` (degrees), ``scale`` (log) or ``category`` (labels)."""

    kind: str
    wraps: bool = True

    @property
    def title(self) -> str:
        return {
            "angle": "rotation angle (degrees, counter-clockwise)",
            "scale": "scale factor (log axis)",
            "category": "group element",
        }[self.kind]

    def x(self, row: Mapping[str, Any]) -> Any:
        if self.kind == "angle":
            return display_angle(float(row["angle"]), self.wraps)
        if self.kind == "scale":
            return float(row["scale"])
        return str(row["label"])


def _as_list(results: AuditResult | Sequence[AuditResult]) -> list[AuditResult]:
    return list(results) if isinstance(results, (list, tuple)) else [results]


def _names(results: Sequence[AuditResult], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        return [str(n) for n in names]
    return [str(r.model.source or f"model {i + 1}") for i, r in enumerate(results)]


def element_axis(results: AuditResult | Sequence[AuditResult]) -> Axis:
    """The x axis shared by ``results``: the element parameter that varies, when it is the same for all."""
    kinds = set()
    wraps = True
    for r in _as_list(results):
        frame = r.elements
        varying = {c for c in ("angle", "scale", "reflect") if frame[c].nunique() > 1}
        if varying <= {"angle", "reflect"} and "angle" in varying:
            kinds.add("angle")
        elif varying == {"scale"}:
            kinds.add("scale")
        else:
            kinds.add("category")
        wraps = wraps and angle_wraps(r.group.spec or "")
    kind = kinds.pop() if len(kinds) == 1 else "category"
    return Axis(kind, wraps)


def series(result: AuditResult, axis: Axis) -> list[tuple[str, pd.DataFrame]]:
    """The element rows in plotting order, split into rotations and mirrored rotations on an angle axis."""
    frame = result.elements.copy()
    frame["_x"] = [axis.x(row) for row in frame.to_dict(orient="records")]
    if axis.kind == "category":
        return [("", frame)]
    frame = frame.sort_values("_x", kind="stable")
    if axis.kind == "angle" and frame["reflect"].nunique() > 1:
        return [("", frame[~frame["reflect"].astype(bool)]), ("mirrored", frame[frame["reflect"].astype(bool)])]
    return [("", frame)]


def _values(frame: pd.DataFrame, col: str) -> list[float | None]:
    """Column values with NaN / missing as None (a gap in the line)."""
    if col not in frame:
        return [None] * len(frame)
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in frame[col]]


def _has(results: Sequence[AuditResult], col: str) -> bool:
    return any(col in r.elements and pd.to_numeric(r.elements[col], errors="coerce").notna().any() for r in results)


def _style(fig: go.Figure, axis: Axis | None, y_title: str, *, percent: bool = False) -> go.Figure:
    fig.update_layout(**_LAYOUT)
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS, title_text=y_title, rangemode="tozero")
    if percent:
        fig.update_yaxes(tickformat=".0%", range=[0, 1.04])
    if axis is not None:
        fig.update_xaxes(title_text=axis.title)
        if axis.kind == "angle":
            fig.update_xaxes(ticksuffix="°", dtick=45 if axis.wraps else None)
        elif axis.kind == "scale":
            fig.update_xaxes(type="log")
    return fig


def _trace(
    axis: Axis, x: list[Any], y: list[float | None], *, color: str, dash: str = "solid", markers: bool = True, **kw: Any
) -> go.BaseTraceType:
    """A line over a numeric axis; on a category axis a bar, or short ticks for a dashed reference level."""
    if axis.kind == "category":
        if dash != "solid":
            return go.Scatter(
                x=x,
                y=y,
                mode="markers",
                marker=dict(symbol="line-ew-open", size=28, color=color, line=dict(width=2, color=color)),
                **kw,
            )
        return go.Bar(x=x, y=y, marker_color=color, **kw)
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers" if markers else "lines",
        line=dict(color=color, dash=dash, width=2 if markers else 1.5),
        marker=dict(size=5),
        **kw,
    )


@dataclass(frozen=True)
class Line:
    """One element metric to draw: its column, legend text, dash style, colour (one model) and visibility."""

    col: str
    text: str
    dash: str = "solid"
    color: int = 0
    visible: bool | str = True


def _line_figure(
    results: Sequence[AuditResult],
    names: Sequence[str],
    lines: Sequence[Line],
    y_title: str,
    *,
    floor: bool = False,
    percent: bool = False,
    references: Sequence[tuple[str, str]] = (),
) -> go.Figure:
    """Element metrics of several results on one axis; ``references`` are ``(summary key, legend text)``
    drawn flat. One model: a colour per line. Several: a colour per model (dash styles tell the lines apart).
    Mirrored elements (reflections on an angle axis) are a second, dashed series."""
    axis = element_axis(results)
    fig = go.Figure()
    multi = len(results) > 1
    floors_drawn: set[tuple] = set()
    for i, (result, name) in enumerate(zip(results, names, strict=True)):
        parts = series(result, axis)
        for part, frame in parts:
            x = frame["_x"].tolist()
            suffix = f" · {part}" if part else ""
            for line in lines:
                if line.col not in frame:
                    continue
                color = COLORS[(i if multi else line.color) % len(COLORS)]
                label = (f"{name}: " if multi else "") + line.text + suffix
                dash = ("dash" if line.dash == "solid" else "dashdot") if part else line.dash
                fig.add_trace(
                    _trace(
                        axis,
                        x,
                        _values(frame, line.col),
                        color=color,
                        dash=dash,
                        name=label,
                        legendgroup=f"m{i}" if multi else line.col,
                        visible=line.visible,
                        hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{label}</extra>",
                    )
                )
            if floor and "floor" in frame:
                values = _values(frame, "floor")
                key = (tuple(x), tuple(values))
                if key in floors_drawn:  # models audited on the same data share one floor
                    continue
                floors_drawn.add(key)
                fig.add_trace(
                    _trace(
                        axis,
                        x,
                        values,
                        color=FLOOR_COLOR,
                        dash="dash",
                        markers=False,
                        name=f"interpolation floor{suffix}",
                        legendgroup="floor",
                        hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>interpolation floor{suffix}</extra>",
                    )
                )
        for key, text in references:
            value = result.summary.get(key)
            if value is None:
                continue
            x = parts[0][1]["_x"].tolist()
            label = (f"{name}: " if multi else "") + text
            fig.add_trace(
                _trace(
                    axis,
                    x,
                    [float(value)] * len(x),
                    color=COLORS[i] if multi else FLOOR_COLOR,
                    dash="dash",
                    markers=False,
                    name=label,
                    legendgroup=f"m{i}" if multi else key,
                    hovertemplate=f"{text}: %{{y:.4g}}<extra></extra>",
                )
            )
    if axis.kind == "category" and multi:
        fig.update_layout(barmode="group")
    return _style(fig, axis, y_title, percent=percent)


def error_key(result: AuditResult) -> str:
    """The main error metric of a result: invariance for classifiers, equivariance for dense outputs."""
    return "invariance_error" if result.task == "classify" else "equivariance_error"


def _roundoff_scale(results: Sequence[AuditResult]) -> float | None:
    """The round-off level when every error is near it (else None): such errors would otherwise be blown up
    to fill the axis, so they are drawn against that level instead."""
    tol = max(roundoff(r.run.dtype, r.run.device) for r in results)
    top = max((v for r in results for v in _values(r.elements, error_key(r)) if v is not None), default=0.0)
    return tol if top < 10 * tol else None


def error_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """The invariance / equivariance error per element, with the interpolation floor dashed."""
    results = _as_list(results)
    key = error_key(results[0])
    lines = [Line(key, "mean over images"), Line(f"{key}_max", "worst image", "dot", 0, "legendonly")]
    fig = _line_figure(results, _names(results, names), lines, "relative error", floor=True)
    tol = _roundoff_scale(results)
    if tol is not None:
        dtype = "/".join(sorted({str(r.run.dtype or "float32") for r in results}))
        fig.add_hrect(
            y0=0,
            y1=tol,
            fillcolor=COLORS[2],
            opacity=0.12,
            line_width=0,
            annotation_text=f"{dtype} round-off",
            annotation_position="top left",
        )
        fig.update_yaxes(range=[0, 2 * tol])
    return fig


def polar_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """The error around the circle, floor dashed; the loop is closed for full-turn groups."""
    results = _as_list(results)
    names = _names(results, names)
    multi = len(results) > 1
    axis = element_axis(results)
    fig = go.Figure()
    floors_drawn: set[tuple] = set()
    for i, (result, name) in enumerate(zip(results, names, strict=True)):
        key = error_key(result)
        for part, frame in series(result, axis):
            theta = frame["_x"].tolist()
            r, fl = _values(frame, key), _values(frame, "floor")
            if axis.wraps and len(theta) > 2:
                theta, r, fl = theta + theta[:1], r + r[:1], fl + fl[:1]
            suffix = f" · {part}" if part else ""
            label = (f"{name}: " if multi else "") + key.replace("_", " ") + suffix
            fig.add_trace(
                go.Scatterpolar(
                    theta=theta,
                    r=r,
                    mode="lines+markers",
                    name=label,
                    line=dict(color=COLORS[i % len(COLORS)], width=2, dash="dash" if part else "solid"),
                    marker=dict(size=4),
                    hovertemplate="%{theta}°: %{r:.4g}<extra></extra>",
                )
            )
            if tuple(theta + fl) not in floors_drawn:
                floors_drawn.add(tuple(theta + fl))
                fig.add_trace(
                    go.Scatterpolar(
                        theta=theta,
                        r=fl,
                        mode="lines",
                        name="interpolation floor" + suffix,
                        line=dict(color=FLOOR_COLOR, dash="dash", width=1.5),
                        hovertemplate="%{theta}°: %{r:.4g}<extra>floor</extra>",
                    )
                )
    fig.update_layout(**_LAYOUT)
    fig.update_layout(
        height=420,
        legend_y=1.08,
        polar=dict(
            bgcolor="white",
            angularaxis=dict(
                direction="counterclockwise",
                rotation=0,
                ticksuffix="°",
                dtick=45,
                gridcolor="#e5e7eb",
                linecolor="#9ca3af",
            ),
            radialaxis=dict(gridcolor="#e5e7eb", linecolor="#9ca3af", angle=90, tickangle=90),
        ),
    )
    tol = _roundoff_scale(results)
    if tol is not None:
        fig.update_polars(radialaxis_range=[0, 2 * tol])
    return fig


def agreement_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """Classifiers: agreement with the untransformed prediction and accuracy per element (reference dashed)."""
    results = _as_list(results)
    lines = [Line("agreement", "agreement with untransformed prediction")]
    if _has(results, "accuracy"):
        lines.append(Line("accuracy", "accuracy", "dot", 1))
    return _line_figure(
        results,
        _names(results, names),
        lines,
        "fraction of images",
        percent=True,
        references=[("accuracy_reference", "accuracy untransformed")],
    )


def kl_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """Classifiers: KL(p(x) ‖ p(gx)) per element, in nats."""
    results = _as_list(results)
    return _line_figure(results, _names(results, names), [Line("kl", "KL divergence")], "KL divergence (nats)")


def iou_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """Segmentation: mask consistency and IoU with the true masks per element (untransformed IoU dashed)."""
    results = _as_list(results)
    lines = [Line("iou_consistency", "IoU with untransformed prediction")]
    if _has(results, "iou_truth"):
        lines.append(Line("iou_truth", "IoU with true masks", "dot", 1))
    return _line_figure(
        results,
        _names(results, names),
        lines,
        "IoU",
        references=[("iou_truth_reference", "IoU with true masks, untransformed")],
    )


def max_abs_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """Dense outputs: the largest absolute difference per element (inside the compared region)."""
    results = _as_list(results)
    return _line_figure(
        results, _names(results, names), [Line("max_abs_error", "max absolute error")], "max |g⁻¹f(gx) − f(x)|"
    )


def per_class_figure(result: AuditResult, max_classes: int = 30) -> go.Figure | None:
    """Accuracy (or agreement, without labels) per class and element; the classes that break first on top."""
    pc = result.per_class
    if not pc or not pc.get("classes"):
        return None
    metric = "accuracy" if pc.get("accuracy") else "agreement"
    support = pc.get("support" if metric == "accuracy" else "support_pred") or []
    axis = element_axis(result)
    order = [row["id"] for _, frame in series(result, axis) for row in frame.to_dict(orient="records")]
    labels = result.elements.set_index("id")["label"]
    table = pd.DataFrame(pc[metric], index=result.elements["id"].tolist(), columns=pc["classes"]).T
    table = table[order]
    rest = [i for i in order if labels[i] != "identity"] or order
    present = [c for k, c in enumerate(pc["classes"]) if not support or support[k] > 0]
    table = table.loc[present]
    ranking = table[rest].mean(axis=1).sort_values(kind="stable")
    table = table.loc[ranking.index[:max_classes]]
    counts = dict(zip(pc["classes"], support, strict=False))
    fig = go.Figure(
        go.Heatmap(
            z=table.to_numpy().tolist(),
            x=[labels[i] for i in table.columns],
            y=[str(c) for c in table.index],
            zmin=0,
            zmax=1,
            colorscale="RdYlGn",
            colorbar=dict(title=metric, tickformat=".0%"),
            customdata=[[counts.get(c, 0)] * len(table.columns) for c in table.index],
            hovertemplate="class %{y} · %{x}: %{z:.1%} of %{customdata} images<extra></extra>",
        )
    )
    fig.update_layout(**_LAYOUT)
    fig.update_layout(height=max(300, 110 + 24 * len(table)), margin=dict(t=16))
    fig.update_xaxes(title_text="group element", type="category", tickangle=-45 if len(table.columns) > 12 else 0)
    fig.update_yaxes(title_text="class (weakest first)", autorange="reversed", type="category", dtick=1)
    return fig


# ---- comparisons --------------------------------------------------------------------------------------------


def _quality(result: AuditResult) -> tuple[str, float | None, float | None]:
    """(name, untransformed, mean over the group) of the task's quality score."""
    s = result.summary
    for name, ref, mean in (
        ("accuracy", "accuracy_reference", "accuracy_mean"),
        ("IoU with true masks", "iou_truth_reference", "iou_truth_mean"),
    ):
        if s.get(ref) is not None:
            return name, s.get(ref), s.get(mean)
    for name, mean in (("agreement", "agreement_mean"), ("mask consistency (IoU)", "iou_consistency_mean")):
        if s.get(mean) is not None:
            return name, None, s.get(mean)
    return "quality", None, None


def tradeoff_figure(results: Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """Parameters vs quality vs equivariance error, absolute (top) and relative to the first model (bottom)."""
    results = list(results)
    names = _names(results, names)
    params = [r.model.parameters for r in results]
    quality = [_quality(r) for r in results]
    errors = [r.summary.get(f"{error_key(r)}_mean") for r in results]
    qname = quality[0][0]
    base_p, base_q, base_e = params[0], quality[0][2], errors[0]
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.12,
        vertical_spacing=0.2,
        subplot_titles=(
            f"{qname} (hollow: untransformed, filled: mean over the group)",
            "error, mean over the group",
            f"{qname} change vs {names[0]} (points)",
            f"error relative to {names[0]}",
        ),
    )
    for i, (name, p, (_, q_ref, q_mean), e) in enumerate(zip(names, params, quality, errors, strict=True)):
        color = COLORS[i % len(COLORS)]
        common = dict(legendgroup=f"m{i}", marker=dict(color=color, size=12), mode="markers")
        p_rel = p / base_p if p and base_p else None
        fig.add_trace(
            go.Scatter(
                x=[p],
                y=[q_mean],
                name=name,
                hovertemplate=f"{name}: %{{x:,}} parameters, {qname} %{{y:.4g}}<extra></extra>",
                **common,
            ),
            row=1,
            col=1,
        )
        if q_ref is not None:
            fig.add_trace(
                go.Scatter(
                    x=[p, p],
                    y=[q_ref, q_mean],
                    mode="lines+markers",
                    showlegend=False,
                    legendgroup=f"m{i}",
                    line=dict(color=color, width=1),
                    marker=dict(color="white", size=[12, 0], line=dict(color=color, width=2)),
                    hovertemplate=f"{name} untransformed: %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[p], y=[e], showlegend=False, hovertemplate=f"{name}: error %{{y:.4g}}<extra></extra>", **common
            ),
            row=1,
            col=2,
        )
        dq = None if q_mean is None or base_q is None else 100 * (q_mean - base_q)
        er = None if e is None or not base_e else e / base_e
        fig.add_trace(
            go.Scatter(
                x=[p_rel],
                y=[dq],
                showlegend=False,
                hovertemplate=f"{name}: %{{x:.3g}}× parameters, %{{y:+.2f}} points<extra></extra>",
                **common,
            ),
            row=2,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[p_rel],
                y=[er],
                showlegend=False,
                hovertemplate=f"{name}: %{{x:.3g}}× parameters, %{{y:.3g}}× error<extra></extra>",
                **common,
            ),
            row=2,
            col=2,
        )
    fig.update_layout(**_LAYOUT)
    fig.update_layout(height=640)
    fig.update_xaxes(**_AXIS, type="log")
    fig.update_yaxes(**_AXIS)
    for col in (1, 2):
        fig.update_xaxes(title_text="parameters", row=1, col=col)
        fig.update_xaxes(title_text=f"parameters relative to {names[0]}", row=2, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(type="log", row=2, col=2)
    return fig


def correctness_figure(matrix: CorrectnessMatrix) -> go.Figure:
    """The 2x2 correctness matrix of two classifiers (counts and shares of the images)."""
    a, b = matrix.names
    c = matrix.counts
    grid = [[c["both_right"], c["only_a"]], [c["only_b"], c["both_wrong"]]]
    total = max(1, sum(c.values()))
    text = [[f"{v}<br>{v / total:.1%}" for v in row] for row in grid]
    fig = go.Figure(
        go.Heatmap(
            z=grid,
            x=[f"{b} right", f"{b} wrong"],
            y=[f"{a} right", f"{a} wrong"],
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
            hovertemplate="%{y}, %{x}: %{z} images<extra></extra>",
        )
    )
    fig.update_layout(**_LAYOUT)
    fig.update_layout(height=300, width=None, margin=dict(l=110, r=24, t=24, b=48))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="top")
    return fig


# ---- the charts of a report ---------------------------------------------------------------------------------


def _axis_words(axis: Axis) -> str:
    return {"angle": "rotation angle", "scale": "scale factor", "category": "group element"}[axis.kind]


def report_charts(result: AuditResult) -> list[Chart]:
    """The charts of a single-audit report, in reading order, with stable ids."""
    axis = element_axis(result)
    spec = result.group.spec or ""
    prop = "invariance" if result.task == "classify" else "equivariance"
    charts = [
        Chart(
            "chart-error",
            f"{prop.capitalize()} error by {_axis_words(axis)}",
            f"Relative change of the model's output under each element of {group_name(spec)}, mean over "
            "images (click \u201cworst image\u201d in the legend for the worst single image). The dashed grey "
            "line is the interpolation floor: "
            "the error of resampling the input there and back. An exactly symmetric model still sits near "
            "it; only the distance above it is the model's.",
            error_figure(result),
        )
    ]
    if axis.kind == "angle":
        charts.append(
            Chart(
                "chart-polar",
                f"{prop.capitalize()} error around the circle",
                "The same error as a polar plot: radius is the error, angle the rotation.",
                polar_figure(result),
            )
        )
    if result.task == "classify":
        charts.append(
            Chart(
                "chart-agreement",
                "Agreement and accuracy by element",
                "Share of images whose predicted class is unchanged by the transformation, and the "
                "accuracy under it (dashed: accuracy on the untransformed images).",
                agreement_figure(result),
            )
        )
        charts.append(
            Chart(
                "chart-kl",
                "KL divergence by element",
                "How far the predicted class probabilities move, mean over images.",
                kl_figure(result),
            )
        )
        fig = per_class_figure(result)
        if fig is not None:
            which = "accuracy" if (result.per_class or {}).get("accuracy") else "agreement"
            charts.append(
                Chart(
                    "chart-per-class",
                    f"Per-class {which}",
                    f"{which.capitalize()} per class and element; classes sorted by their mean over the "
                    "transformed elements, so the ones that break first are on top.",
                    fig,
                    wide=len(result.elements) > 12,
                )
            )
    else:
        if _has([result], "iou_consistency"):
            charts.append(
                Chart(
                    "chart-iou",
                    "Mask IoU by element",
                    "IoU of the mask predicted on the transformed image, mapped back, with the "
                    "untransformed prediction (and with the true masks, when the data has them).",
                    iou_figure(result),
                )
            )
        charts.append(
            Chart(
                "chart-max-abs",
                "Largest absolute difference by element",
                "Maximum over images and pixels of |g⁻¹f(gx) − f(x)| inside the compared region.",
                max_abs_figure(result),
            )
        )
    return charts


def comparison_charts(results: Sequence[AuditResult], names: Sequence[str]) -> list[Chart]:
    """The charts of a comparison report: the models overlaid, then the parameter / quality / error trade-off."""
    results = list(results)
    axis = element_axis(results)
    classify = all(r.task == "classify" for r in results)
    charts = [
        Chart(
            "chart-error",
            f"Error by {_axis_words(axis)}",
            "Each model's invariance / equivariance error per element (mean over images); dashed: the "
            "interpolation floor (drawn once when the models share it).",
            error_figure(results, names),
        )
    ]
    if axis.kind == "angle":
        charts.append(
            Chart(
                "chart-polar",
                "Error around the circle",
                "The same errors as a polar plot.",
                polar_figure(results, names),
            )
        )
    if classify:
        charts.append(
            Chart(
                "chart-agreement",
                "Agreement and accuracy by element",
                "Solid: agreement with the untransformed prediction; dotted: accuracy; dashed: accuracy "
                "on untransformed images.",
                agreement_figure(results, names),
                wide=True,
            )
        )
    elif _has(results, "iou_consistency"):
        charts.append(
            Chart(
                "chart-iou",
                "Mask IoU by element",
                "Solid: IoU with the untransformed prediction; dotted: IoU with the true masks.",
                iou_figure(results, names),
            )
        )
    charts.append(
        Chart(
            "chart-tradeoff",
            "Parameters, quality and error",
            f"Top: absolute values. Bottom: relative to {names[0]} (points of change in quality; "
            "ratio of errors, below 1 is better).",
            tradeoff_figure(results, names),
            wide=True,
        )
    )
    return charts
