"""Image galleries of a report: PNGs (base64 data URIs) built from a result's samples, within a byte budget.

* Classification: a grid per sample set (first images, and the images whose prediction changes most), one
  column per shown element: the transformed input the model saw, its predicted class and confidence.
* Segmentation: per image a flip-book across the elements of the predicted mask mapped back onto the image,
  shown in grey so that the class colours stand out on any texture (class colour with a yellow-and-black
  outline: foreground; red: pixels that differ from the untransformed prediction).
* Dense outputs: per image a flip-book of the error map ``|g⁻¹f(gx) − f(x)|`` on one colour scale shared by
  every image and element of the gallery (stated on the page), so that a small error never fills the scale;
  when every error is at float round-off the scale's top is about ten times round-off, so noise stays dark.

Everything shown comes from the result's samples as the audit kept them: the transformed inputs exactly as the
model saw them (``views``), per-image scores and the compared region (``samples["region"]["mask"]``); nothing is
transformed or scored again here. Images are shown as the data arrives before normalisation
(``result.data.normalisation``) or, without it, stretched from their own min to max. Outside the compared
region frames are dimmed.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .verdict import angle_wraps, element_name

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

    from .correctness import CorrectnessMatrix

GRID_MAX_ELEMENTS = 12
FLIPBOOK_MAX_FRAMES = 36
GRID_MAX_SIDE = 96
FLIPBOOK_MAX_SIDE = 192
SEG_IMAGES = 4  # per sample set: flip-books are heavier than grid rows
FOREGROUND = np.array([37, 99, 235], dtype=np.float64)
CHANGED = np.array([220, 38, 38], dtype=np.float64)
OUTLINE = np.array([250, 204, 21], dtype=np.float64)
OUTLINE_OUTER = np.array([17, 24, 39], dtype=np.float64)  # dark line outside the yellow one: visible on any image
CLASS_COLOURS = np.array(
    [
        [37, 99, 235],
        [5, 150, 105],
        [217, 119, 6],
        [124, 58, 237],
        [8, 145, 178],
        [219, 39, 119],
        [75, 85, 99],
        [101, 163, 13],
    ],
    dtype=np.float64,
)


@dataclass
class Budget:
    """Bytes of base64 image data a report may still embed."""

    remaining: int
    omitted: int = 0

    def take(self, nbytes: int) -> bool:
        if nbytes > self.remaining:
            self.omitted += 1
            return False
        self.remaining -= nbytes
        return True


@dataclass(frozen=True)
class Cell:
    src: str
    caption: str
    title: str
    changed: bool = False


@dataclass(frozen=True)
class Row:
    heading: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Flipbook:
    """A sequence of frames shown one at a time with a slider, beside a few fixed images."""

    id: str
    heading: str
    frames: tuple[Cell, ...]
    statics: tuple[Cell, ...]
    start: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of image data it adds to the page (the first frame shows twice: in the page and the JSON)."""
        return sum(len(c.src) for c in (*self.frames, *self.statics)) + len(self.frames[self.start].src)

    @property
    def frames_json(self) -> str:
        """The frames for the page's script (``</`` escaped so the JSON cannot end its ``<script>``)."""
        return json.dumps([{"src": f.src, "caption": f.caption} for f in self.frames]).replace("</", "<\\/")


@dataclass
class Gallery:
    """One section of images: grid rows (classification) or flip-books (dense outputs)."""

    id: str
    title: str
    caption: str
    columns: tuple[str, ...] = ()
    rows: list[Row] = field(default_factory=list)
    flipbooks: list[Flipbook] = field(default_factory=list)
    note: str = ""
    colour_bar: bool = False  # error maps: show the colour scale
    scale: str = ""  # error maps: what the top of the colour scale is


# ---- pixels -----------------------------------------------------------------------------------------------


def png_uri(image: np.ndarray, max_side: int | None = None) -> str:
    """``data:image/png;base64,...`` of a ``(H, W)`` or ``(H, W, 3)`` uint8 array (shrunk to ``max_side``)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image))
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_range(x: np.ndarray, normalisation: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(offset, scale, denormalised)`` mapping model-space values ``v`` of a ``(C, H, W)`` image to [0, 1]
    display values ``(v - offset) / scale``: undo the data's normalisation, or stretch min..max."""
    c = x.shape[0]
    if normalisation and normalisation.get("mean") is not None and normalisation.get("std"):
        mean = np.resize(np.asarray(normalisation["mean"], dtype=np.float64), c)[:, None, None]
        std = np.resize(np.asarray(normalisation["std"], dtype=np.float64), c)[:, None, None]
        # (v - offset) / scale = v * std + mean
        offset, scale = -mean / std, 1.0 / std
        shown = (x - offset) / scale
        if shown.min() >= -0.05 and shown.max() <= 1.05:
            return offset, scale, True
    elif x.min() >= -1e-6 and x.max() <= 1 + 1e-6:
        return np.zeros((1, 1, 1)), np.ones((1, 1, 1)), False
    lo, hi = float(x.min()), float(x.max())
    return np.full((1, 1, 1), lo), np.full((1, 1, 1), hi - lo if hi > lo else 1.0), False


def to_display(x: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` model-space image as ``(H, W)`` (1 channel) or ``(H, W, 3)`` uint8 for display."""
    v = np.clip((np.asarray(x, dtype=np.float64) - offset) / scale, 0.0, 1.0)
    img = (v * 255.0 + 0.5).astype(np.uint8)
    if img.shape[0] == 3:
        return np.transpose(img, (1, 2, 0))
    return img[0]


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=-1).astype(np.float64) if img.ndim == 2 else img.astype(np.float64)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``(H, W[, 3])`` image to ``(H', W')`` (to lay it under an output of another size)."""
    if img.shape[:2] == tuple(size):
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label map whose 4-neighbourhood holds another label (region outlines)."""
    p = np.pad(labels, 1, mode="edge")
    c = p[1:-1, 1:-1]
    return (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])


def _grey(image: np.ndarray) -> np.ndarray:
    """A uint8 ``(H, W[, 3])`` image as ``(H, W, 3)`` float grey (luminance), so class colours read on any
    texture (a blue overlay on a blue texture would vanish)."""
    rgb = _rgb(image)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    return np.repeat(lum[..., None], 3, axis=-1)


def mask_overlay(image: np.ndarray, seg: np.ndarray, ref: np.ndarray | None, valid: np.ndarray | None) -> np.ndarray:
    """A label map over an image shown in grey: class colours at 55% opacity, outlined yellow inside and dark
    outside the region's edge (readable on light, dark and coloured textures), pixels unlike ``ref`` red,
    outside ``valid`` dimmed. ``image`` is uint8 ``(H, W[, 3])`` at the label map's size."""
    out = _grey(image)
    fg = seg > 0
    colours = CLASS_COLOURS[(np.maximum(seg, 1) - 1) % len(CLASS_COLOURS)]
    out[fg] = 0.45 * out[fg] + 0.55 * colours[fg]
    edges = _edges(seg)
    out[edges & fg] = OUTLINE
    out[edges & ~fg] = OUTLINE_OUTER
    if ref is not None:
        diff = seg != ref
        out[diff] = 0.25 * out[diff] + 0.75 * CHANGED
    if valid is not None:
        out[~valid] *= 0.35
    return (out + 0.5).astype(np.uint8)


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """256 x 3 uint8 colour table of plotly's Inferno scale (so maps and charts share a look)."""
    from plotly.colors import sample_colorscale, sequential

    colours = sample_colorscale(sequential.Inferno, [i / 255 for i in range(256)], colortype="tuple")
    return (np.asarray(colours) * (255.0 if max(max(c) for c in colours) <= 1 else 1.0)).round().astype(np.uint8)


def colour_map(values: np.ndarray, vmax: float, valid: np.ndarray | None) -> np.ndarray:
    """A float ``(H, W)`` map in [0, vmax] as an Inferno ``(H, W, 3)`` uint8 image, dimmed outside ``valid``."""
    idx = np.clip(np.nan_to_num(values.astype(np.float64)) / (vmax if vmax > 0 else 1.0), 0, 1)
    img = _lut()[(idx * 255 + 0.5).astype(np.int64)].astype(np.float64)
    if valid is not None:
        img[~valid] *= 0.35
    return (img + 0.5).astype(np.uint8)


def colour_bar_css() -> str:
    """A CSS gradient of the error-map colour scale, for the legend under the flip-books."""
    lut = _lut()
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / 8:.1f}%" for i, (r, g, b) in enumerate(lut[::32].tolist()))
    return f"linear-gradient(to right, {stops}, rgb{tuple(lut[-1].tolist())} 100%)"


# ---- which elements -----------------------------------------------------------------------------------------


def shown_elements(labels: Sequence[str], limit: int, always: Sequence[str] = ()) -> list[int]:
    """Indices of at most ``limit`` (+ ``always``) elements, evenly spaced in group order, identity first."""
    step = max(1, math.ceil(len(labels) / limit))
    chosen = set(range(0, len(labels), step))
    chosen |= {labels.index(a) for a in always if a in labels}
    return sorted(chosen)


# ---- builders -------------------------------------------------------------------------------------------------


def _context(result: AuditResult) -> dict[str, Any]:
    wraps = angle_wraps(result.group.spec or "")
    rows = result.elements.to_dict(orient="records")
    return {
        "labels": list(result.elements["label"]),
        "names": [element_name(r, wraps) for r in rows],
        "normalisation": result.data.normalisation,
        "class_names": result.data.class_names or (result.per_class or {}).get("classes"),
    }


def _class_name(names: Sequence[str] | None, k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else str(k)


def _region(result: AuditResult, size: tuple[int, ...]) -> np.ndarray | None:
    """The audit's compared region at the output's resolution (``samples["region"]["mask"]``), when kept."""
    mask = ((result.samples or {}).get("region") or {}).get("mask")
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    return mask if mask.shape == tuple(size) else None


def classification_gallery(
    result: AuditResult, part: str, budget: Budget, gid: str, title: str, caption: str
) -> Gallery:
    """A grid of transformed inputs with predicted class and confidence; red frames mark changed predictions.
    The tiles are the audit's own views (``samples[part]["views"]``, the inputs exactly as the model saw them).
    Results without views (version 1) show the untransformed input in the identity column only."""
    s = result.samples[part]
    ctx = _context(result)
    worst = result.summary.get("worst_element")
    views = s.get("views")
    if views is not None:
        cols = shown_elements(ctx["labels"], GRID_MAX_ELEMENTS, [worst] if worst else [])
    else:
        cols = [j for j, label in enumerate(ctx["labels"]) if label == "identity"][:1]
    gallery = Gallery(gid, title, caption, columns=tuple(ctx["names"][j] for j in cols))
    if views is None:
        gallery.note = (
            "This result does not hold the transformed inputs (it predates them), so only the untransformed "
            "images are shown; audit again to see every element."
        )
    names = ctx["class_names"]
    for n in range(len(s["index"])):
        x = np.asarray(s["x"][n], dtype=np.float64)
        offset, scale = display_range(x, ctx["normalisation"])[:2]
        ref = int(s["ref_pred"][n, 0])
        heading = f"image {int(s['index'][n])}"
        if "label" in s:
            heading += f" · true class {_class_name(names, int(s['label'][n, 0]))}"
        heading += f" · untransformed prediction {_class_name(names, ref)} ({float(s['ref_confidence'][n, 0]):.0%})"
        cells = []
        for j in cols:
            pred, conf = int(s["pred"][n, j]), float(s["confidence"][n, j])
            seen = views[n, j] if views is not None else x
            src = png_uri(to_display(seen, offset, scale), GRID_MAX_SIDE)
            cells.append(
                Cell(
                    src,
                    f"{_class_name(names, pred)} · {conf:.0%}",
                    f"{ctx['names'][j]}: predicted {_class_name(names, pred)} ({conf:.1%})",
                    changed=pred != ref,
                )
            )
        if not cells or not budget.take(sum(len(c.src) for c in cells)):
            continue
        gallery.rows.append(Row(heading, tuple(cells)))
    return gallery


def segmentation_gallery(result: AuditResult, part: str, budget: Budget, gid: str, title: str, caption: str) -> Gallery:
    """Per image, a flip-book of the predicted mask mapped back onto the image under each element, captioned
    with the audit's own per-image IoU consistency (``samples[part]["iou_consistency"]``)."""
    s = result.samples[part]
    ctx = _context(result)
    gallery = Gallery(gid, title, caption)
    seg, ref_seg = np.asarray(s["seg"]), np.asarray(s["ref_seg"])
    size = seg.shape[-2:]
    valid = _region(result, size)
    scores = np.asarray(s["iou_consistency"], dtype=np.float64) if "iou_consistency" in s else None
    frames_idx = shown_elements(ctx["labels"], FLIPBOOK_MAX_FRAMES)
    for n in range(min(SEG_IMAGES, len(s["index"]))):
        x = np.asarray(s["x"][n], dtype=np.float64)
        base = _resize(to_display(x, *display_range(x, ctx["normalisation"])[:2]), size)
        if scores is not None:
            texts = [f"IoU with untransformed prediction {scores[n, j]:.3f}" for j in frames_idx]
            changed = [bool(scores[n, j] < 1) for j in frames_idx]
            start = int(np.argmin([scores[n, j] for j in frames_idx]))
        else:  # a result without per-image scores (version 1): no numbers to show
            texts = ["mapped back" for _ in frames_idx]
            changed = [bool((seg[n, j] != ref_seg[n, 0]).any()) for j in frames_idx]
            start = 0
        frames = tuple(
            Cell(
                png_uri(mask_overlay(base, seg[n, j], ref_seg[n, 0], valid), FLIPBOOK_MAX_SIDE),
                f"{ctx['names'][j]} · {text}",
                ctx["labels"][j],
                changed=moved,
            )
            for j, text, moved in zip(frames_idx, texts, changed, strict=True)
        )
        statics = [
            Cell(png_uri(base, FLIPBOOK_MAX_SIDE), "input", "input"),
            Cell(
                png_uri(mask_overlay(base, ref_seg[n, 0], None, valid), FLIPBOOK_MAX_SIDE),
                "untransformed prediction",
                "untransformed prediction",
            ),
        ]
        if "truth" in s:
            statics.append(
                Cell(
                    png_uri(mask_overlay(base, np.asarray(s["truth"][n, 0]), None, None), FLIPBOOK_MAX_SIDE),
                    "true mask",
                    "true mask",
                )
            )
        book = Flipbook(f"{gid}-{n}", f"image {int(s['index'][n])}", frames, tuple(statics), start=start)
        if budget.take(book.nbytes):
            gallery.flipbooks.append(book)
    return gallery


ROUNDOFF_SCALE = 10.0  # at round-off, the colour scale's top is about this many times the dtype's round-off


def _floors(result: AuditResult) -> list[float | None]:
    """Each element's mean floor (None where it is not measured)."""
    if "floor" not in result.elements:
        return [None] * len(result.elements)
    return [None if v != v else float(v) for v in result.elements["floor"].astype(float)]


def dense_scale(
    result: AuditResult, maps: np.ndarray, errors: np.ndarray | None, valid: np.ndarray | None
) -> tuple[float, str]:
    """``(vmax, words)``: one colour scale for every error map of a gallery (``maps`` ``(N, G, h, w)``).

    The top is the largest value inside the compared region, so images and elements compare at a glance and a
    small error never fills the scale. When every error of the audit is at float round-off, the maps hold only
    arithmetic noise; the top is then the difference at about ``ROUNDOFF_SCALE`` x round-off (the largest map
    value scaled by that level over the largest relative error), so the noise stays dark instead of looking
    like structure."""
    from .verdict import roundoff

    inside = maps[:, :, valid] if valid is not None else maps.reshape(maps.shape[0], maps.shape[1], -1)
    top = float(np.nanmax(inside)) if inside.size else 0.0
    key = "equivariance_error_max" if "equivariance_error_max" in result.elements else "equivariance_error"
    largest = float(result.elements[key].max()) if key in result.elements else None
    if errors is not None and errors.size:
        largest = max(largest or 0.0, float(np.nanmax(errors)))
    tol = roundoff(result.run.arithmetic, result.run.device)
    if largest is not None and 0 < largest < ROUNDOFF_SCALE * tol and top > 0:
        vmax = top * ROUNDOFF_SCALE * tol / largest
        words = (
            f"0 to {vmax:.3g}, shared by every image and element. Every error of this audit is at "
            f"{result.run.dtype or 'float32'} round-off (largest relative error {largest:.2g}), so the top of the "
            f"scale is the difference at about {ROUNDOFF_SCALE:g}× round-off ({ROUNDOFF_SCALE * tol:g}): "
            "the maps hold only arithmetic noise and stay dark."
        )
        return vmax, words
    if top <= 0:
        return 1.0, "0 to 1, shared by every image and element: every map is exactly 0 (no difference at all)."
    return (
        top,
        f"0 to {top:.3g} (the largest difference in these maps inside the compared region), shared by every "
        "image and element.",
    )


def _dense_parts(result: AuditResult, parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """The maps and per-image errors the dense galleries of ``parts`` show, stacked (for one shared scale)."""
    samples = result.samples or {}
    chosen = [samples[p] for p in parts if samples.get(p) and len(samples[p].get("index", ())) > 0]
    maps = np.concatenate([np.asarray(s["error_map"][:SEG_IMAGES], dtype=np.float32) for s in chosen])
    errors = None
    if all("error" in s for s in chosen):
        errors = np.concatenate([np.asarray(s["error"][:SEG_IMAGES], dtype=np.float64) for s in chosen])
    return maps, errors, _region(result, maps.shape[-2:])


def dense_gallery(
    result: AuditResult,
    part: str,
    budget: Budget,
    gid: str,
    title: str,
    caption: str,
    scale: tuple[float, str] | None = None,
) -> Gallery:
    """Per image, a flip-book of the error map under each element, on one colour scale shared by the gallery
    (``scale``: ``(vmax, words)`` from :func:`dense_scale`, by default that of this gallery's own maps),
    captioned with the audit's own per-image equivariance error (``samples[part]["error"]``) and the
    element's floor."""
    s = result.samples[part]
    ctx = _context(result)
    gallery = Gallery(gid, title, caption, colour_bar=True)
    maps = np.asarray(s["error_map"], dtype=np.float32)
    size = maps.shape[-2:]
    valid = _region(result, size)
    errors = np.asarray(s["error"], dtype=np.float64) if "error" in s else None
    frames_idx = shown_elements(ctx["labels"], FLIPBOOK_MAX_FRAMES)
    shown = min(SEG_IMAGES, len(s["index"]))
    vmax, gallery.scale = scale or dense_scale(result, *_dense_parts(result, [part]))
    floors = _floors(result)
    for n in range(shown):
        x = np.asarray(s["x"][n], dtype=np.float64)
        base = _resize(to_display(x, *display_range(x, ctx["normalisation"])[:2]), size)
        if errors is not None:
            values = [float(errors[n, j]) for j in frames_idx]
            texts = [
                f"equivariance error {v:.3g}" + (f" (element floor {floors[j]:.3g})" if floors[j] else "")
                for v, j in zip(values, frames_idx, strict=True)
            ]
        else:  # a result without per-image errors (version 1): the map's mean inside the compared region
            values = [
                float(maps[n, j][valid].mean()) if valid is not None and valid.any() else float(maps[n, j].mean())
                for j in frames_idx
            ]
            texts = [f"mean error inside the compared region {v:.3g}" for v in values]
        frames = tuple(
            Cell(
                png_uri(colour_map(maps[n, j], vmax, valid), FLIPBOOK_MAX_SIDE),
                f"{ctx['names'][j]} · {text}",
                ctx["labels"][j],
            )
            for j, text in zip(frames_idx, texts, strict=True)
        )
        statics = (Cell(png_uri(base, FLIPBOOK_MAX_SIDE), "input", "input"),)
        book = Flipbook(f"{gid}-{n}", f"image {int(s['index'][n])}", frames, statics, start=int(np.argmax(values)))
        if budget.take(book.nbytes):
            gallery.flipbooks.append(book)
    return gallery


def report_galleries(result: AuditResult, budget: Budget) -> list[Gallery]:
    """The galleries of a single-audit report (empty when the result carries no samples)."""
    samples = result.samples or {}
    parts = [
        (p, t, c)
        for p, t, c in (
            ("first", "Sample images", "The first images of the data under each shown element."),
            ("worst", "Worst cases", "The images whose output changes most under the group, worst first."),
        )
        if samples.get(p) and len(samples[p].get("index", ())) > 0
    ]
    builders = {
        "classify": (
            classification_gallery,
            " Each tile is the transformed input the model saw, "
            "with its predicted class and confidence; a red frame marks a prediction that differs "
            "from the untransformed one.",
        ),
        "segment": (
            segmentation_gallery,
            " Drag the slider (or press play) to step through the "
            "elements: the mask predicted on the transformed image, mapped back onto the image. "
            "The image in grey; class colour with a yellow-and-black outline: predicted foreground; "
            "red: pixels that differ from the untransformed prediction; dimmed: outside the compared "
            "region. The slider starts at the element with the lowest IoU.",
        ),
        "dense": (
            dense_gallery,
            " Drag the slider (or press play) to step through the elements: "
            "the error map |g⁻¹f(gx) − f(x)| (mean over channels), bright is large, on one colour "
            "scale for every image and element (below); dimmed: outside the compared region. The "
            "slider starts at the element with the largest error.",
        ),
    }
    build, extra = builders.get(result.task, (None, ""))
    if build is None:
        return []
    galleries = []
    options: dict[str, Any] = {}
    if build is dense_gallery and parts:  # one colour scale for both sample sets
        options["scale"] = dense_scale(result, *_dense_parts(result, [p for p, _, _ in parts]))
    for i, (p, t, c) in enumerate(parts):
        # Each sample set gets an equal share of what is left, so the worst cases are never crowded out.
        share = Budget(budget.remaining // (len(parts) - i))
        galleries.append(build(result, p, share, f"gallery-{p}", t, c + extra, **options))
        budget.remaining -= budget.remaining // (len(parts) - i) - share.remaining
        budget.omitted += share.omitted
    if budget.omitted:
        omitted = (
            f"{budget.omitted} more image(s) left out to keep the report small; every image is "
            "in the results file's samples."
        )
        last = galleries[-1]
        last.note = f"{last.note} {omitted}" if last.note else omitted
    return galleries


def correctness_gallery(matrices: Sequence[CorrectnessMatrix], budget: Budget) -> Gallery:
    """Example images of each cell of each correctness matrix, as both models saw them."""
    cells_text = {
        "both_right": "both right",
        "only_a": "only {a} right",
        "only_b": "only {b} right",
        "both_wrong": "both wrong",
    }
    gallery = Gallery(
        "gallery-correctness",
        "Correctness examples",
        "A few images from each cell of the correctness matrix, transformed as the models saw them, "
        "with their true class and what each model predicted.",
    )
    for m in matrices:
        a, b = m.names
        for cell, text in cells_text.items():
            images = m.example_images.get(cell)
            if images is None or not len(images):
                continue
            tiles = []
            predictions = m.example_predictions.get(cell) or []
            for k, x in enumerate(np.asarray(images, dtype=np.float64)):
                offset, scale = display_range(x, m.normalisation)[:2]
                label = _class_name(m.class_names, m.example_labels[cell][k])
                caption, title = f"true {label}", f"image {m.examples[cell][k]}, true class {label}"
                if k < len(predictions):
                    said = [(n, _class_name(m.class_names, p)) for n, p in zip((a, b), predictions[k], strict=True)]
                    caption += "".join(f" · {n}: {p}" for n, p in said)
                    title += "; " + ", ".join(f"{n} predicted {p}" for n, p in said)
                tiles.append(Cell(png_uri(to_display(x, offset, scale), GRID_MAX_SIDE), caption, title))
            if budget.take(sum(len(t.src) for t in tiles)):
                gallery.rows.append(
                    Row(f"{m.element} · {text.format(a=a, b=b)} ({m.counts[cell]} images)", tuple(tiles))
                )
    return gallery
