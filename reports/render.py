"""Render reports to one self-contained HTML page with jinja2.

plotly.js is embedded once, gzip-compressed and base64-encoded (4.8 MB raw, 2 MB so), and unpacked in the
browser with ``DecompressionStream``; figures are JSON rendered by ``Plotly.newPlot`` into fixed ``<div>`` ids.
Nothing is fetched from the network. The output is a pure function of its inputs (no timestamps, fixed ids),
so the same result always gives the same bytes.

The page reports on itself for tests and tools: ``<div id="equiaudit-status" data-charts="N"
data-rendered="M" data-errors="..." data-done="1">`` once every chart has been drawn (or failed to).

Every number a chart shows is also in a plain HTML table (per element, with intervals; side by side in a
comparison), and a ``<noscript>`` note says so where scripts are blocked (as under a CI server's default content
policy): the page still shows its verdict, its cards and its tables.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from .figures import Chart, comparison_charts, report_charts
from .gallery import Budget, Gallery, colour_bar_css, correctness_gallery, report_galleries
from .layers import layer_charts, layer_table
from .spatial import search_charts, search_table
from .tables import NumberTable, comparison_element_table, comparison_table, element_table
from .verdict import fmt_num, fmt_pct, group_name, verdict

if TYPE_CHECKING:
    from equiaudit.result import AuditResult, RunInfo

    from .correctness import CorrectnessMatrix

MAX_BYTES = 5_000_000  # a default report stays under this
TARGET_BYTES = 4_500_000  # galleries fill the page up to this, leaving a margin below MAX_BYTES
_PAGE_OVERHEAD = 80_000  # template, styles and scripts, with room to spare
TEMPLATES = Path(__file__).parent / "templates"
_TASK_METRICS = {
    "classify": ("agreement", "invariance_error"),
    "segment": ("equivariance_error",),
    "dense": ("equivariance_error",),
}


@lru_cache(maxsize=1)
def plotly_js_gz_b64() -> str:
    """The installed plotly.js, gzip-compressed (mtime 0, so the bytes are stable) and base64-encoded."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode("ascii")


def figure_json(fig: Any) -> str:
    """A figure as JSON that is safe inside ``<script type="application/json">``."""
    import plotly.io as pio

    return pio.to_json(fig, validate=False, pretty=False, engine="json").replace("</", "<\\/")


def fmt_count(value: Any) -> str:
    """``16354`` -> ``16.4k``, ``23500000`` -> ``23.5M`` (exact value in the page's tooltips)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= limit:
            return f"{v / limit:.3g}{suffix}"
    return f"{v:g}"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=fmt_num, pct=fmt_pct, count=fmt_count)
    return env


def card_name(result: AuditResult) -> str | None:
    """The name on the model's card (zoo models carry their card in ``result.model.info``), if any."""
    info = result.model.info if isinstance(result.model.info, dict) else {}
    name = info.get("name") if info.get("card_version") is not None else None
    return name if isinstance(name, str) and name else None


def model_name(result: AuditResult) -> str:
    """A short name for a result's model: its model card's name, else the file name, the source string or the
    module class."""
    card = card_name(result)
    if card is not None:
        return card
    source = str(result.model.source or "model")
    if source.startswith("<module ") and source.endswith(">"):
        return source[8:-1]
    return Path(source).name if ("/" in source or "\\" in source) else source


def default_title(result: AuditResult) -> str:
    """``gcnn-c4 on digits under SO(2) rotations (36 angles)``: names in words (the raw specs are in the
    subtitle and the details)."""
    return f"{model_name(result)} on {result.data.spec} under {group_name(result.group.spec or '')}"


def element_counts(result: AuditResult) -> str:
    """``36 (4 exact, 32 interpolated)``, ``4 (all exact)``, ``8 (all interpolated)``."""
    frame = result.elements
    n = len(frame)
    exact = int(frame["exact"].astype(bool).sum()) if "exact" in frame else (n if result.group.exact else 0)
    if exact == n:
        return f"{n} (all exact)"
    return f"{n} (all interpolated)" if exact == 0 else f"{n} ({exact} exact, {n - exact} interpolated)"


def _fmt_seconds(value: Any) -> str:
    if value is None:
        return "n/a"
    v = float(value)
    return f"{v:.2f} s" if v < 60 else f"{int(v // 60)} min {v % 60:.0f} s"


def _shorten(items: Sequence[str], limit: int = 12) -> str:
    """A list in a line: all of it when short, else its start and end around an ellipsis."""
    items = [str(i) for i in items]
    return ", ".join(items) if len(items) <= limit else ", ".join([*items[:6], "…", *items[-2:]])


def _input_mask_text(run: RunInfo) -> str:
    """What the inputs were restricted to before any element was applied (every view holds the same content)."""
    asked = str(run.spec.get("input_mask", "none"))
    if run.input_region == "none":
        return f"{asked}: none (every element keeps the whole image)" if asked == "auto" else "none"
    kept = f"{fmt_pct(run.input_fraction)} of pixels kept, the rest set to 0 in every view"
    where = "inscribed disk" if run.input_region == "disk" else "pixels every element keeps inside the image"
    return f"{asked}: {where} ({kept})"


def _precision_text(run: RunInfo, summary: dict[str, Any]) -> str | None:
    """``--precision`` with its TF32 flags and, for a reduced precision, its own floor (see
    :mod:`equiaudit.precision`)."""
    rec = run.precision
    if not rec:
        return None
    tf32 = "on" if rec.get("cudnn_allow_tf32") or rec.get("cuda_matmul_allow_tf32") else "off"
    text = f"{rec.get('precision')} (TF32 {tf32}" + (f", autocast {rec['autocast']})" if rec.get("autocast") else ")")
    floor = summary.get("precision_floor")
    if isinstance(floor, (int, float)):
        text += f"; precision floor {fmt_num(floor)} (max {fmt_num(summary.get('precision_floor_max'))}): "
        text += "the identity's error under it against fp32 on the same images"
    return text


def details(result: AuditResult) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The header's facts as ``(section, [(name, shown value, full value)])``."""
    model, group, data, run = result.model, result.group, result.data, result.run
    sha = model.sha256 or ""
    params = model.parameters
    norm = data.normalisation
    mask_fraction = run.mask_fraction
    shape = data.input_shape
    elements = group.elements or []
    rows: list[tuple[str, list[tuple[str, Any, Any]]]] = [
        (
            "Model",
            [
                ("source", model.source, None),
                ("kind", model.kind, None),
                ("architecture", model.arch, None),
                ("parameters", fmt_count(params), f"{params:,}" if isinstance(params, int) else None),
                ("SHA-256", sha[:16] + "…" if sha else None, sha),
            ],
        ),
        (
            "Group",
            [
                ("spec", group.spec, None),
                ("name", group_name(group.spec or ""), None),
                ("elements", f"{element_counts(result)}: " + _shorten(elements), ", ".join(elements)),
                ("kind", group.kind, None),
            ],
        ),
        (
            "Data",
            [
                ("spec", data.spec, None),
                ("source", data.source, None),
                ("split", data.split, None),
                ("images", data.count, None),
                ("input shape", "×".join(str(d) for d in shape) if shape else None, None),
                ("classes", data.num_classes, ", ".join(map(str, data.class_names or [])) or None),
                ("normalisation", f"mean {norm.get('mean')}, std {norm.get('std')}" if norm else "none", None),
            ],
        ),
        (
            "Task and options",
            [
                (
                    "task",
                    str(run.task) + (" (chosen from the output shape)" if run.task_auto else ""),
                    None,
                ),
                ("output shape", "×".join(str(d) for d in run.output_shape or []) or None, None),
                ("interpolation", run.interpolation, None),
                ("padding", run.padding, None),
                (
                    "mask",
                    f"{run.mask}"
                    + (f" ({fmt_pct(mask_fraction)} of pixels compared)" if mask_fraction is not None else ""),
                    None,
                ),
                ("input mask", _input_mask_text(run), None),
                ("batch size", run.batch_size, None),
            ],
        ),
        (
            "Run",
            [
                ("device", run.device, None),
                ("dtype", run.dtype, None),
                ("precision", _precision_text(run, result.summary), None),
                ("time taken", _fmt_seconds(run.wall_time_s), None),
                ("images / s", fmt_num(run.images_per_s), None),
                *[(k, v, None) for k, v in (run.versions or {}).items()],
            ],
        ),
    ]
    return [
        (section, [(k, str(v), str(full) if full else str(v)) for k, v, full in items if v not in (None, "")])
        for section, items in rows
    ]


def _charts_json(charts: Sequence[Chart]) -> list[dict[str, Any]]:
    """Charts for the template: two side by side, those marked wide in a full row, as is the last chart
    when an odd one is left over."""
    wide = [bool(c.wide) for c in charts]
    narrow = [i for i, w in enumerate(wide) if not w]
    if len(narrow) % 2:
        wide[narrow[-1]] = True
    return [
        {"id": c.id, "title": c.title, "caption": c.caption, "json": Markup(figure_json(c.figure)), "wide": w}
        for c, w in zip(charts, wide, strict=True)
    ]


def _budget(charts: Sequence[dict[str, Any]], limit: int) -> Budget:
    used = len(plotly_js_gz_b64()) + sum(len(c["json"]) for c in charts) + _PAGE_OVERHEAD
    return Budget(max(0, limit - used))


def _page(template: str, **context: Any) -> str:
    from equiaudit import __version__

    return (
        _env()
        .get_template(template)
        .render(plotly_js=Markup(plotly_js_gz_b64()), version=__version__, colour_bar=colour_bar_css(), **context)
    )


def check_result(result: AuditResult, source: str = "the result") -> None:
    """Raise :class:`ResultFormatError` (one line) unless ``result`` has everything a report reads."""
    import pandas as pd

    from equiaudit.errors import ResultFormatError

    for path in ("group.spec", "group.size", "model.source", "data.spec", "data.count", "run.task"):
        node: Any = result
        for key in path.split("."):
            node = getattr(node, key, None)
        if node is None or node == "":
            raise ResultFormatError(f"{source} lacks {path}, which a report needs")
    task = result.task
    if task not in _TASK_METRICS:
        raise ResultFormatError(f"{source} has an unknown task {task!r}")
    frame = result.elements
    missing = [c for c in (*_TASK_METRICS[task], "floor") if c not in frame]
    if missing:
        raise ResultFormatError(f"{source} lacks the element column(s) {', '.join(missing)} of a {task} audit")
    for col in ("angle", "scale", *_TASK_METRICS[task], "floor"):
        if pd.to_numeric(frame[col], errors="coerce").isna().all() and frame[col].notna().any():
            raise ResultFormatError(f"{source}: element column {col!r} is not numeric")


def render_report(
    result: AuditResult, title: str | None = None, json_name: str | None = None, max_bytes: int = TARGET_BYTES
) -> str:
    """The HTML of a single-audit report."""
    check_result(result)
    charts = _charts_json([*report_charts(result), *layer_charts(result), *search_charts(result)])
    # Gallery images are the samples' first and worst sets (per-image records alone show nothing).
    has_samples = any((result.samples or {}).get(part) for part in ("first", "worst"))
    galleries: list[Gallery] = report_galleries(result, _budget(charts, max_bytes)) if has_samples else []
    tables = [element_table(result)]
    tables += [t for t in (search_table(result),) if t is not None]
    if result.probe and result.probe.get("elements"):
        import pandas as pd

        count = (result.probe.get("data") or {}).get("count", "?")
        tables.append(
            element_table(
                result,
                frame=pd.DataFrame.from_records(result.probe["elements"]),
                tid="numbers-probe",
                title=f"Numbers per element on noise ({count} images)",
            )
        )

    tables += [t for t in (layer_table(result),) if t is not None]
    return _page(
        "report.html.j2",
        title=title or default_title(result),
        result=result,
        tables=tables,
        model_name=model_name(result),
        group_name=group_name(result.group.spec),
        verdict=verdict(result),
        details=details(result),
        charts=charts,
        galleries=galleries,
        has_samples=has_samples,
        json_name=json_name,
        checks=result.run.checks,
    )


def render_comparison(
    results: Sequence[AuditResult],
    names: Sequence[str],
    title: str | None = None,
    matrices: Sequence[CorrectnessMatrix] = (),
    json_name: str | None = None,
    max_bytes: int = TARGET_BYTES,
) -> str:
    """The HTML of a comparison of several audits (and optional correctness matrices)."""
    from .figures import correctness_figure

    for i, r in enumerate(results):
        check_result(r, f"result {i + 1} ({names[i]})")
    charts = comparison_charts(results, names)
    charts[-1:-1] = [  # before the trade-off grid, which closes the page
        Chart(
            f"chart-correctness-{i}",
            f"Correctness matrix at {m.element}",
            f"Images of the data on which {m.names[0]} and {m.names[1]} are right or wrong, under "
            f"{m.element}; {m.total} images.",
            correctness_figure(m),
        )
        for i, m in enumerate(matrices)
    ]
    chart_data = _charts_json(charts)
    galleries = [correctness_gallery(matrices, _budget(chart_data, max_bytes))] if matrices else []
    rows = [
        {"name": n, "result": r, "verdict": verdict(r), "summary": r.summary}
        for n, r in zip(names, results, strict=True)
    ]
    specs = sorted({r.group.spec for r in results})
    tables: list[NumberTable] = [comparison_table(results, names), comparison_element_table(results, names)]
    return _page(
        "compare.html.j2",
        title=title or "Comparison: " + " vs ".join(names),
        rows=rows,
        tables=tables,
        group_text=", ".join(f"{group_name(s)} ({s})" for s in specs),
        charts=chart_data,
        galleries=[g for g in galleries if g.rows],
        json_name=json_name,
    )


def comparison_document(
    results: Sequence[AuditResult], names: Sequence[str], matrices: Sequence[CorrectnessMatrix] = ()
) -> str:
    """The JSON written beside a comparison report: every result and the correctness matrices."""
    doc = {
        "tool": "equiaudit",
        "kind": "comparison",
        "comparison_version": 1,
        "names": list(names),
        "results": [r.to_dict() for r in results],
        "correctness": [m.to_dict() for m in matrices],
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
