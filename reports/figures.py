"""Plotly figures of audit results: pure functions from results to ``go.Figure``, one figure per question.

Every function takes one :class:`~equiaudit.result.AuditResult` or a sequence of them (overlaid, one colour per
model) and plots the result's own numbers: nothing is smoothed, resampled or recomputed. The x axis follows the
group: angles in degrees for rotations (0..360 for full-turn groups, signed for ``rot:`` ranges; reflections as
a second line), scale factors on a log axis, element labels for anything else.

Every metric with a confidence interval in the result (``<metric>_low`` / ``<metric>_high``: agreement,
accuracy, the mean error and the floor) is drawn with its interval: a shaded band between the bounds around a
line, error bars on a bar. The band's trace is named ``"<line> · 95% interval"`` (at the result's confidence).
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
SHORT_NAME = 24  # names longer than this are not written into chart titles
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
        varying = {c for c in ("angle", "scale", "reflect", "dx", "dy") if c in frame and frame[c].nunique() > 1}
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


def _rgba(color: str, alpha: float) -> str:
    """``#rrggbb`` as ``rgba(r,g,b,alpha)``."""
    h = color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def confidence_of(result: AuditResult) -> float:
    """The confidence level of a result's intervals (0.95 when it has none)."""
    return float((result.intervals or {}).get("confidence", 0.95))


def band_name(label: str, confidence: float) -> str:
    """The name of the band trace of the line ``label``."""
    return f"{label} · {confidence:.0%} interval"


def _bounds(frame: pd.DataFrame, col: str) -> tuple[list[float | None], list[float | None]] | None:
    """``(low, high)`` of ``col`` per row, or None when the result has no interval for it."""
    low, high = f"{col}_low", f"{col}_high"
    if low not in frame or high not in frame:
        return None
    lo, hi = _values(frame, low), _values(frame, high)
    if all(v is None for v in lo) or all(v is None for v in hi):
        return None
    return lo, hi


def _error_bars(y: list[float | None], bounds: tuple[list, list], color: str) -> dict[str, Any]:
    """``error_y`` of bars (or markers) on a category axis: the interval around each value."""
    lo, hi = bounds
    up = [None if v is None or h is None else max(h - v, 0.0) for v, h in zip(y, hi, strict=True)]
    down = [None if v is None or a is None else max(v - a, 0.0) for v, a in zip(y, lo, strict=True)]
    return dict(type="data", symmetric=False, array=up, arrayminus=down, color=color, thickness=1.2, width=4)


def _band(
    coords: list[Any], bounds: tuple[list, list], color: str
) -> tuple[list[Any], list[Any], dict[str, Any]] | None:
    """The closed outline between the lower and upper bounds of a curve (points without bounds are left out),
    and the style every band shares; None when no point has bounds."""
    points = [(c, a, b) for c, a, b in zip(coords, *bounds, strict=True) if a is not None and b is not None]
    if not points:
        return None
    cs = [p[0] for p in points]
    outline = [p[2] for p in points] + [p[1] for p in points][::-1]
    style = dict(
        fill="toself",
        fillcolor=_rgba(color, 0.16),
        line=dict(width=0, color=_rgba(color, 0)),
        mode="lines",
        hoverinfo="skip",
        showlegend=False,
    )
    return cs + cs[::-1], outline, style


def _band_trace(
    x: list[Any], bounds: tuple[list, list], *, color: str, name: str, legendgroup: str, visible: bool | str = True
) -> go.Scatter | None:
    """A shaded band between the lower and upper bounds of a line."""
    band = _band(x, bounds, color)
    if band is None:
        return None
    xs, ys, style = band
    return go.Scatter(x=xs, y=ys, name=name, legendgroup=legendgroup, visible=visible, **style)


def _with_band(
    axis: Axis,
    x: list[Any],
    y: list[float | None],
    bounds: tuple[list, list] | None,
    *,
    color: str,
    name: str,
    confidence: float,
    legendgroup: str,
    visible: bool | str = True,
    **kw: Any,
) -> list[go.BaseTraceType]:
    """A metric's trace with its interval: a band under a line, error bars on a category axis."""
    if bounds is not None and axis.kind == "category":
        kw["error_y"] = _error_bars(y, bounds, "#374151")
    traces = [_trace(axis, x, y, color=color, name=name, legendgroup=legendgroup, visible=visible, **kw)]
    if bounds is not None and axis.kind != "category":
        band = _band_trace(
            x, bounds, color=color, name=band_name(name, confidence), legendgroup=legendgroup, visible=visible
        )
        if band is not None:
            traces.insert(0, band)
    return traces


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
        model, prefix = (i, f"{name}: ") if multi else (None, "")
        parts = series(result, axis)
        confidence = confidence_of(result)
        for part, frame in parts:
            for trace in _metric_traces(axis, frame, lines, part, model=model, prefix=prefix, confidence=confidence):
                fig.add_trace(trace)
            if floor and "floor" in frame:
                x, values = frame["_x"].tolist(), _values(frame, "floor")
                key = (tuple(x), tuple(values))
                if key in floors_drawn:  # models audited on the same data share one floor
                    continue
                floors_drawn.add(key)
                suffix = (f" · {part}" if part else "") + (f" ({name})" if multi else "")
                for trace in _floor_trace(axis, x, values, suffix, _bounds(frame, "floor"), confidence):
                    fig.add_trace(trace)
        for trace in _reference_traces(axis, result, parts[0][1], references, model=model, prefix=prefix):
            fig.add_trace(trace)
    if axis.kind == "category" and multi:
        fig.update_layout(barmode="group")
    _style(fig, axis, y_title, percent=percent)
    if multi:  # the legend above the plot grows with the models: so does the chart, not at the plot's expense
        entries = sum(1 for t in fig.data if t.showlegend is not False)
        fig.update_layout(height=max(360, 300 + 22 * entries))
    return fig


def _metric_traces(
    axis: Axis,
    frame: pd.DataFrame,
    lines: Sequence[Line],
    part: str,
    *,
    model: int | None,
    prefix: str,
    confidence: float = 0.95,
) -> list[go.BaseTraceType]:
    """The traces of ``lines`` over one series of a result (``part``: ``""`` or ``mirrored``), each with its
    interval when the result has one; ``model`` is the result's index when several are overlaid (its colour
    and legend group), else None."""
    x = frame["_x"].tolist()
    suffix = f" · {part}" if part else ""
    traces: list[go.BaseTraceType] = []
    for line in lines:
        if line.col not in frame:
            continue
        color = COLORS[(line.color if model is None else model) % len(COLORS)]
        label = prefix + line.text + suffix
        dash = ("dash" if line.dash == "solid" else "dashdot") if part else line.dash
        traces += _with_band(
            axis,
            x,
            _values(frame, line.col),
            _bounds(frame, line.col),
            color=color,
            dash=dash,
            name=label,
            confidence=confidence,
            legendgroup=line.col if model is None else f"m{model}",
            visible=line.visible,
            hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{label}</extra>",
        )
    return traces


def _floor_trace(
    axis: Axis,
    x: list[Any],
    values: list[float | None],
    suffix: str,
    bounds: tuple[list, list] | None = None,
    confidence: float = 0.95,
) -> list[go.BaseTraceType]:
    """The interpolation floor of one series, dashed grey, with its interval."""
    name = f"interpolation floor{suffix}"
    return _with_band(
        axis,
        x,
        values,
        bounds,
        color=FLOOR_COLOR,
        dash="dash",
        markers=False,
        name=name,
        confidence=confidence,
        legendgroup="floor",
        hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{name}</extra>",
    )


def _reference_traces(
    axis: Axis,
    result: AuditResult,
    frame: pd.DataFrame,
    references: Sequence[tuple[str, str]],
    *,
    model: int | None,
    prefix: str,
) -> list[go.BaseTraceType]:
    """Flat dashed lines at the result's summary values of ``references`` (those it has) across the x values
    of the series ``frame``."""
    traces = []
    for key, text in references:
        value = result.summary.get(key)
        if value is None:
            continue
        x = frame["_x"].tolist()
        traces.append(
            _trace(
                axis,
                x,
                [float(value)] * len(x),
                color=FLOOR_COLOR if model is None else COLORS[model],
                dash="dash",
                markers=False,
                name=prefix + text,
                legendgroup=key if model is None else f"m{model}",
                hovertemplate=f"{text}: %{{y:.4g}}<extra></extra>",
            )
        )
    return traces


def error_key(result: AuditResult) -> str:
    """The main error metric of a result: invariance for classifiers, equivariance for dense outputs."""
    return "invariance_error" if result.task == "classify" else "equivariance_error"


def _roundoff_scale(results: Sequence[AuditResult]) -> float | None:
    """The round-off level when every error is near it (else None): such errors would otherwise be blown up
    to fill the axis, so they are drawn against that level instead."""
    tol = max(roundoff(r.run.arithmetic, r.run.device) for r in results)
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


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """About ``count`` round values in ``(0, top]`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not top > 0 or not math.isfinite(top):
        return []
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return [float(f"{step * k:.12g}") for k in range(1, int(top / step + 1e-9) + 1)]


def _polar_band(
    theta: list[Any], bounds: tuple[list, list], *, color: str, name: str, legendgroup: str
) -> go.Scatterpolar | None:
    """The ring between the lower and upper bounds of a closed (or open) curve around the circle."""
    band = _band(theta, bounds, color)
    if band is None:
        return None
    ts, rs, style = band
    return go.Scatterpolar(theta=ts, r=rs, name=name, legendgroup=legendgroup, **style)


def polar_figure(results: AuditResult | Sequence[AuditResult], names: Sequence[str] | None = None) -> go.Figure:
    """The error around the circle with its interval, floor dashed; the loop is closed for full-turn groups.

    The radial axis carries no tick labels (around a full circle they would sit on the data wherever they were
    put); the values of its rings are written beside the circle instead."""
    results = _as_list(results)
    names = _names(results, names)
    multi = len(results) > 1
    axis = element_axis(results)
    fig = go.Figure()
    floors_drawn: set[tuple] = set()
    top = 0.0
    for i, (result, name) in enumerate(zip(results, names, strict=True)):
        key = error_key(result)
        confidence = confidence_of(result)
        for part, frame in series(result, axis):
            theta = frame["_x"].tolist()
            r, fl = _values(frame, key), _values(frame, "floor")
            bounds = _bounds(frame, key)
            floor_bounds = _bounds(frame, "floor")
            if axis.wraps and len(theta) > 2:
                theta, r, fl = theta + theta[:1], r + r[:1], fl + fl[:1]
                bounds = None if bounds is None else (bounds[0] + bounds[0][:1], bounds[1] + bounds[1][:1])
                if floor_bounds is not None:
                    floor_bounds = (floor_bounds[0] + floor_bounds[0][:1], floor_bounds[1] + floor_bounds[1][:1])
            top = max([top, *(v for v in r + fl if v is not None)])
            top = max([top, *(v for b in (bounds, floor_bounds) if b for v in b[1] if v is not None)])
            suffix = f" · {part}" if part else ""
            label = (f"{name}: " if multi else "") + key.replace("_", " ") + suffix
            color = COLORS[i % len(COLORS)]
            group = f"m{i}"
            if bounds is not None:
                band = _polar_band(theta, bounds, color=color, name=band_name(label, confidence), legendgroup=group)
                if band is not None:
                    fig.add_trace(band)
            fig.add_trace(
                go.Scatterpolar(
                    theta=theta,
                    r=r,
                    mode="lines+markers",
                    name=label,
                    legendgroup=group,
                    line=dict(color=color, width=2, dash="dash" if part else "solid"),
                    marker=dict(size=4),
                    hovertemplate="%{theta}°: %{r:.4g}<extra></extra>",
                )
            )
            if tuple(theta + fl) not in floors_drawn:
                floors_drawn.add(tuple(theta + fl))
                floor_name = "interpolation floor" + suffix + (f" ({name})" if multi else "")
                if floor_bounds is not None:
                    band = _polar_band(
                        theta,
                        floor_bounds,
                        color=FLOOR_COLOR,
                        name=band_name(floor_name, confidence),
                        legendgroup="floor",
                    )
                    if band is not None:
                        fig.add_trace(band)
                fig.add_trace(
                    go.Scatterpolar(
                        theta=theta,
                        r=fl,
                        mode="lines",
                        name=floor_name,
                        legendgroup="floor",
                        line=dict(color=FLOOR_COLOR, dash="dash", width=1.5),
                        hovertemplate="%{theta}°: %{r:.4g}<extra>floor</extra>",
                    )
                )
    tol = _roundoff_scale(results)
    top = 2 * tol if tol is not None else top * 1.05
    ticks = nice_ticks(top)
    fig.update_layout(**_LAYOUT)
    fig.update_layout(
        height=420,
        legend_y=1.08,
        polar=dict(
            bgcolor="white",
            domain=dict(x=[0, 0.84]),
            angularaxis=dict(
                direction="counterclockwise",
                rotation=0,
                ticksuffix="°",
                dtick=45,
                gridcolor="#e5e7eb",
                linecolor="#9ca3af",
            ),
            radialaxis=dict(
                gridcolor="#e5e7eb",
                linecolor="#9ca3af",
                angle=90,
                range=[0, top] if top > 0 else None,
                tickvals=ticks or None,
                showticklabels=False,
                ticks="",
            ),
        ),
    )
    if ticks:
        fig.add_annotation(
            text="rings (radius:<br>relative error)<br>" + "<br>".join(f"{t:.3g}" for t in ticks),
            xref="paper",
            yref="paper",
            x=1.0,
            y=0.5,
            xanchor="right",
            yanchor="middle",
            align="right",
            showarrow=False,
            font=dict(size=11, color="#4b5563"),
        )
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
    ref = names[0] if len(names[0]) <= SHORT_NAME else "the first model"  # long names would clip the titles
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.12,
        vertical_spacing=0.2,
        subplot_titles=(
            f"{qname} (hollow: untransformed, filled: mean over the group)",
            "error, mean over the group",
            f"{qname} change vs {ref} (points)",
            f"error relative to {ref}",
        ),
    )
    for i, (name, p, (_, q_ref, q_mean), e) in enumerate(zip(names, params, quality, errors, strict=True)):
        _add_absolute_points(fig, i, name, qname, p, q_ref, q_mean, e)
        p_rel = p / base_p if p and base_p else None
        dq = None if q_mean is None or base_q is None else 100 * (q_mean - base_q)
        er = None if e is None or not base_e else e / base_e
        _add_relative_points(fig, i, name, p_rel, dq, er)
    fig.update_layout(**_LAYOUT)
    # The legend sits above the subplot titles (not on them), with room for a second row of names.
    fig.update_layout(height=680, margin=dict(t=96), legend=dict(y=1.1))
    fig.update_xaxes(**_AXIS, type="log")
    fig.update_yaxes(**_AXIS)
    for col in (1, 2):
        fig.update_xaxes(title_text="parameters", row=1, col=col)
        fig.update_xaxes(title_text=f"parameters relative to {ref}", row=2, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(type="log", row=2, col=2)
    return fig


def _tradeoff_marker(i: int) -> dict[str, Any]:
    """The marker of model ``i``, the same in the four panels of :func:`tradeoff_figure`."""
    return dict(legendgroup=f"m{i}", marker=dict(color=COLORS[i % len(COLORS)], size=12), mode="markers")


def _add_absolute_points(
    fig: go.Figure,
    i: int,
    name: str,
    qname: str,
    p: int | None,
    q_ref: float | None,
    q_mean: float | None,
    e: float | None,
) -> None:
    """The top row of :func:`tradeoff_figure` for model ``i``: its quality (mean over the group, joined to the
    untransformed value when known) and its error against its parameters ``p``."""
    color = COLORS[i % len(COLORS)]
    fig.add_trace(
        go.Scatter(
            x=[p],
            y=[q_mean],
            name=name,
            hovertemplate=f"{name}: %{{x:,}} parameters, {qname} %{{y:.4g}}<extra></extra>",
            **_tradeoff_marker(i),
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
            x=[p],
            y=[e],
            showlegend=False,
            hovertemplate=f"{name}: error %{{y:.4g}}<extra></extra>",
            **_tradeoff_marker(i),
        ),
        row=1,
        col=2,
    )


def _add_relative_points(
    fig: go.Figure, i: int, name: str, p_rel: float | None, dq: float | None, er: float | None
) -> None:
    """The bottom row of :func:`tradeoff_figure` for model ``i``: its quality change in points (``dq``) and its
    error ratio (``er``) against its parameter ratio (``p_rel``), all relative to the first model."""
    fig.add_trace(
        go.Scatter(
            x=[p_rel],
            y=[dq],
            showlegend=False,
            hovertemplate=f"{name}: %{{x:.3g}}× parameters, %{{y:+.2f}} points<extra></extra>",
            **_tradeoff_marker(i),
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
            **_tradeoff_marker(i),
        ),
        row=2,
        col=2,
    )


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


# ---- a pytest session ----------------------------------------------------------------------------------------


def _legend_rows(count: int, per_row: int = 5) -> int:
    """Rows a horizontal legend of ``count`` short entries takes in a half-width chart (conservatively)."""
    return max(1, math.ceil(count / per_row))


def session_error_figure(results: Sequence[AuditResult], labels: Sequence[str]) -> go.Figure:
    """The mean error per element of several checks (one colour per check, named by its short label), each
    with its interval band and its own floor (dotted, same colour). One legend entry per check: its mirrored
    series (dashed) and its floor go with it. The chart grows with its legend, so the plot area keeps its
    height."""
    results = list(results)
    axis = element_axis(results)
    fig = go.Figure()
    for i, (result, label) in enumerate(zip(results, labels, strict=True)):
        key = error_key(result)
        color = COLORS[i % len(COLORS)]
        confidence = confidence_of(result)
        for k, (part, frame) in enumerate(series(result, axis)):
            x = frame["_x"].tolist()
            name = label + (f" · {part}" if part else "")
            fig.add_traces(
                _with_band(
                    axis,
                    x,
                    _values(frame, key),
                    _bounds(frame, key),
                    color=color,
                    dash="dash" if part else "solid",
                    name=name,
                    confidence=confidence,
                    legendgroup=label,
                    showlegend=k == 0,
                    hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{name}</extra>",
                )
            )
            if "floor" in frame:
                fig.add_trace(
                    _trace(
                        axis,
                        x,
                        _values(frame, "floor"),
                        color=color,
                        dash="dot",
                        markers=False,
                        name=f"{name} floor",
                        legendgroup=label,
                        showlegend=False,
                        hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{name}: interpolation floor</extra>",
                    )
                )
    if axis.kind == "category":
        fig.update_layout(barmode="group")
    _style(fig, axis, "relative error (mean over images)")
    fig.update_layout(height=360 + 24 * _legend_rows(len(results)))
    return fig


def session_margin_figure(
    labels: Sequence[str], ratios: Sequence[float | None], passed: Sequence[bool], names: Sequence[str]
) -> go.Figure:
    """Per check, its largest error over its limit (the check's own ``max_error``; at most 1 holds), bars
    coloured by what pytest decided, with the limit dashed. Log axis: round-off and gross failures both show."""
    colors = [COLORS[2] if ok else COLORS[1] for ok in passed]
    shown = [None if r is None else max(r, 1e-6) for r in ratios]
    fig = go.Figure(
        go.Bar(
            x=list(labels),
            y=shown,
            marker_color=colors,
            customdata=[[n, "passed" if ok else "failed"] for n, ok in zip(names, passed, strict=True)],
            hovertemplate="%{customdata[0]}: %{y:.3g} of its limit (%{customdata[1]})<extra></extra>",
            name="largest error ÷ limit",
            showlegend=False,
        )
    )
    fig.add_hline(
        y=1, line_dash="dash", line_color=FLOOR_COLOR, annotation_text="limit", annotation_position="top left"
    )
    _style(fig, Axis("category"), "largest error ÷ its limit (log)")
    fig.update_xaxes(title_text="check (see the table)", type="category")
    fig.update_yaxes(type="log", rangemode=None)
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
            "interpolation floor of each model (in the units of its own output), drawn once when the models "
            "share it; shaded: the intervals.",
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
