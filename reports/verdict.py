"""The verdict strip: headline numbers of an audit, each with a status and one plain-language sentence.

Statuses: ``pass`` (symmetric as far as the measurement on this data can tell), ``warn`` (close, or not
established by the data), ``fail`` (clearly broken), ``info`` (context).

The rule for the invariance / equivariance error is the one :mod:`equiaudit.testing` asserts by default
(``max_error="floor"``), so a report and a test never disagree about the same numbers:

* an element that needs no interpolation (a quarter turn or a flip of a square image; floor 0) holds when its
  largest single-image error is within the dtype's round-off (:data:`equiaudit.testing.FLOAT_TOLERANCE`);
* an interpolated element holds when its mean error over the images is at most the upper bound of its floor's
  confidence interval (the error of resampling there and back, bootstrapped over the images) plus that
  round-off. An element that does not hold is a ``warn`` while its own error interval still reaches that limit
  (more images would tell), a ``fail`` once the whole interval is above it.

Version-1 results carry no intervals; they are judged by the old rule (mean error at most 2x the mean floor
passes, 4x warns) and the card says so. Proportions (agreement) pass when the point estimate is in the pass
band and its confidence interval rules out the fail band.

Every element the verdict names is the metric's one worst element (:func:`equiaudit.result.worst_element`:
largest mean error, or lowest value of a higher-is-better metric, ties to the first in group order), the same
element the command line and the JSON name, and the sentence says which criterion picked it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from equiaudit.intervals import half_width
from equiaudit.result import HIGHER_IS_BETTER, non_identity, worst_element
from equiaudit.testing import FLOAT_TOLERANCE

if TYPE_CHECKING:
    from equiaudit.result import AuditResult
    from equiaudit.testing import Tolerance

STATUS_ORDER = {"pass": 0, "info": 0, "warn": 1, "fail": 2}

# Relative error allowed as arithmetic round-off on exact elements, per dtype: the one table that the pytest
# helpers use too. CUDA float32 convolutions in a scan may use TF32 (10 mantissa bits), hence the larger value
# there (the pytest helpers switch TF32 off and use the table as is).
ROUNDOFF = FLOAT_TOLERANCE
ROUNDOFF_CUDA_FLOAT32 = 2e-3
# Version-1 results (no intervals): error / floor at or below PASS_RATIO passes, up to WARN_RATIO warns.
PASS_RATIO, WARN_RATIO = 2.0, 4.0
# Fractions of images (agreement, accuracy points, IoU): at or above PASS, at or above WARN.
AGREEMENT_PASS, AGREEMENT_WARN = 0.99, 0.90
DROP_PASS, DROP_WARN = 0.01, 0.05
IOU_PASS, IOU_WARN = 0.95, 0.80
# At or above this fraction of constant input pixels, the verdict warns that the data cannot reveal much.
CONSTANT_INPUT_WARN = 0.2


@dataclass(frozen=True)
class Headline:
    """One card of the verdict strip. ``short`` is the clause the overall verdict quotes when this card leads
    it: the card's own finding of its status (never a clause that holds quoted as a failure)."""

    key: str
    title: str
    value: str
    sentence: str
    status: str
    short: str = ""
    value_title: str = ""  # the exact interval behind a ``±`` in ``value``


@dataclass(frozen=True)
class Verdict:
    """The overall status, a one-line summary and the headline cards behind it."""

    status: str
    sentence: str
    headlines: tuple[Headline, ...]


# ---- names and numbers in words -----------------------------------------------------------------------------


def _factor_name(token: str) -> str:
    t = token.strip().lower()
    if t.startswith("so2"):
        n = t.split(":", 1)[1] if ":" in t else "36"
        return f"SO(2) rotations ({n} angles)"
    m = re.fullmatch(r"([cd])(\d+)", t)
    if m:
        return f"{m[1].upper()}{m[2]}"
    for prefix, noun, unit in (("rot:", "rotations", "°"), ("scale:", "scalings", "×")):
        if t.startswith(prefix):
            m = re.fullmatch(r"(.+?)\.\.(.+?):(\d+)", t[len(prefix) :])
            if m:
                return f"{m[3]} {noun} from {m[1]}{unit} to {m[2]}{unit}"
            return f"{noun} by {', '.join(v + unit for v in t[len(prefix) :].split(','))}"
    return {
        "flip": "horizontal flip",
        "hflip": "horizontal flip",
        "vflip": "vertical flip",
        "id": "the identity",
        "identity": "the identity",
    }.get(t, t)


def group_name(spec: str) -> str:
    """A group spec in words: ``c4`` -> ``C4``, ``so2:36`` -> ``SO(2) rotations (36 angles)``."""
    if spec.startswith("custom:"):
        return f"the elements {spec[7:].replace(',', ', ')}"
    return " × ".join(_factor_name(tok) for tok in spec.split("*"))


def angle_wraps(spec: str) -> bool:
    """Whether angles read best in [0, 360) (full-turn groups) rather than signed (``rot:`` ranges)."""
    return not any(tok.strip().lower().startswith("rot:") for tok in spec.split("*"))


def display_angle(angle: float, wraps: bool) -> float:
    return angle % 360.0 if wraps else angle


def element_name(row: Mapping[str, Any], wraps: bool = True) -> str:
    """An element as a reader says it: ``45°``, ``1.25×``, else its label (``identity``, ``hflip*rot90``)."""
    angle, scale, reflect = float(row["angle"]), float(row["scale"]), bool(row["reflect"])
    shifted = any(float(row.get(k) or 0.0) != 0.0 for k in ("dx", "dy"))  # translations read as their label
    if row["label"] == "identity" or reflect or shifted:
        return str(row["label"])
    if abs(scale - 1.0) < 1e-9:
        return f"{display_angle(angle, wraps):g}°"
    return f"{scale:g}×" if angle == 0.0 else str(row["label"])


def element_phrase(row: Mapping[str, Any], wraps: bool = True) -> str:
    """``at 45°``, ``at scale 1.25×``, ``under hflip`` or ``under hflip*rot90``."""
    name = element_name(row, wraps)
    if name.endswith("°"):
        return f"at {name}"
    return f"at scale {name}" if name.endswith("×") else f"under {name}"


def fmt_pct(value: float) -> str:
    """A fraction as a percentage with enough decimals that 0.9996 never reads as 100%."""
    if value in (0.0, 1.0):
        return f"{100 * value:.0f}%"
    for decimals in (1, 2, 3):
        text = f"{100 * value:.{decimals}f}"
        if float(text) not in (0.0, 100.0):
            return text.rstrip("0").rstrip(".") + "%"
    return "<0.001%" if value < 0.5 else ">99.999%"


def fmt_num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3g}" if value != 0 else "0"


def roundoff(dtype: str | None = "float32", device: str | None = "cpu") -> float:
    """Relative error that counts as arithmetic round-off for an audit's dtype and device
    (``roundoff(result.run.dtype, result.run.device)``)."""
    dtype = str(dtype or "float32")
    if dtype == "float32" and str(device or "").startswith("cuda"):
        return ROUNDOFF_CUDA_FLOAT32
    return ROUNDOFF.get(dtype, ROUNDOFF["float32"])


# ---- intervals in words -------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, not a number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_interval(value: Any, low: Any = None, high: Any = None, *, percent: bool = False) -> str:
    """``0.574 ±0.031`` or ``74.2% ±3.1%`` (the larger half-width, as the command line prints it); the value
    alone without an interval."""
    v = _num(value)
    if v is None:
        return "n/a"
    text = fmt_pct(v) if percent else fmt_num(v)
    hw = half_width(v, low, high)  # the command line's ± too
    if hw is None:
        return text
    return f"{text} ±{100 * hw:.2g}%" if percent else f"{text} ±{hw:.2g}"


def interval_title(low: Any, high: Any, confidence: float, *, percent: bool = False) -> str:
    """``95% interval [0.55, 0.60]`` (empty without an interval)."""
    lo, hi = _num(low), _num(high)
    if lo is None or hi is None:
        return ""
    show = fmt_pct if percent else (lambda v: f"{v:.4g}")
    return f"{confidence:.0%} interval [{show(lo)}, {show(hi)}]"


def row_interval(row: Mapping[str, Any], col: str) -> tuple[Any, Any]:
    """``(low, high)`` of ``col`` in an element row (None, None without them)."""
    return row.get(f"{col}_low"), row.get(f"{col}_high")


# ---- judging the elements -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One element under the error rule: the judged ``value`` against its ``limit``."""

    label: str
    exact: bool
    value: float
    limit: float
    holds: bool
    status: str  # pass | warn | fail
    criterion: str  # what value is: "mean error", "largest single-image error"


def has_intervals(frame: pd.DataFrame) -> bool:
    """Whether the element table has the floor's interval (results before version 2 have none)."""
    return "floor_high" in frame and pd.to_numeric(frame["floor_high"], errors="coerce").notna().any()


def _is_exact(row: Mapping[str, Any]) -> bool:
    """Whether an element needs no interpolation: the table's ``exact`` flag (as equiaudit.testing reads it);
    without one, a floor of 0."""
    if "exact" in row and row["exact"] is not None:
        return bool(row["exact"])
    floor = _num(row.get("floor"))
    return floor is not None and floor <= 0


def judge_elements(
    frame: pd.DataFrame,
    key: str,
    *,
    dtype: str | None = "float32",
    device: str | None = "cpu",
    tolerance: Tolerance | None = None,
) -> list[Judged]:
    """Judge every non-identity element's ``key`` error (``invariance_error`` / ``equivariance_error``).

    Without ``tolerance``: the default rule of :mod:`equiaudit.testing` (see the module docstring), with the
    round-off of ``dtype`` on ``device``; a version-1 table (no floor interval) by the old 2x floor rule. With
    a :class:`~equiaudit.testing.Tolerance` (a check's own ``max_error``): exactly that check's rule, pass or
    fail."""
    from equiaudit.testing import ElementError, float_tolerance

    rows = non_identity(frame).to_dict(orient="records")
    intervals = has_intervals(frame)
    out = []
    for row in rows:
        mean = _num(row.get(key))
        if mean is None:
            continue
        largest = _num(row.get(f"{key}_max"))
        largest = mean if largest is None else largest
        exact = _is_exact(row)
        floor = _num(row.get("floor")) or 0.0
        floor_max = _num(row.get("floor_max"))
        floor_max = floor if floor_max is None else floor_max
        label = str(row["label"])
        if tolerance is not None and not tolerance.interval:
            e = ElementError(
                label, exact, largest, mean, floor_max, floor, floor_high=_num(row.get("floor_high")) or floor
            )
            value, limit = tolerance.judged(e, str(dtype or "float32"))
            holds = value <= limit
            out.append(Judged(label, exact, value, limit, holds, "pass" if holds else "fail", "largest error"))
            continue
        tol = float_tolerance(str(dtype or "float32")) if tolerance is not None else roundoff(dtype, device)
        if exact:
            holds = largest <= tol
            status = "pass" if holds else ("fail" if tolerance is not None or largest > 100 * tol else "warn")
            out.append(Judged(label, exact, largest, tol, holds, status, "largest single-image error"))
        elif intervals:
            limit = (_num(row.get("floor_high")) or floor) + tol
            holds = mean <= limit
            low = _num(row.get(f"{key}_low"))
            status = "pass" if holds else ("warn" if tolerance is None and low is not None and low <= limit else "fail")
            out.append(Judged(label, exact, mean, limit, holds, status, "mean error"))
        else:  # version 1: no interval of the floor
            limit = PASS_RATIO * floor
            holds = mean <= limit
            status = "pass" if holds else ("warn" if mean <= WARN_RATIO * floor else "fail")
            out.append(Judged(label, exact, mean, limit, holds, status, "mean error (old rule: 2x floor)"))
    return out


# ---- assessment -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every card needs besides the element table."""

    task: str
    dtype: str
    device: str
    confidence: float
    wraps: bool
    images: int
    data: str

    @property
    def prop(self) -> str:
        return "invariant" if self.task == "classify" else "equivariant"


def _context(result: AuditResult, images: int | None = None, data: str | None = None) -> _Context:
    return _Context(
        task=result.task,
        dtype=str(result.run.dtype or "float32"),
        device=str(result.run.device or "cpu"),
        confidence=float((result.intervals or {}).get("confidence", 0.95)),
        wraps=angle_wraps(result.group.spec or ""),
        images=int(images if images is not None else result.summary.get("images") or result.data.count or 0),
        data=str(data if data is not None else result.data.spec),
    )


def _band(value: float, good: float, bad: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        return "pass" if value >= good else "warn" if value >= bad else "fail"
    return "pass" if value <= good else "warn" if value <= bad else "fail"


def _row(frame: pd.DataFrame, label: str) -> dict[str, Any]:
    return frame[frame["label"] == label].iloc[0].to_dict()


def _worst_row(frame: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """The row of ``metric``'s one worst element (:func:`equiaudit.result.worst_element`)."""
    if metric not in frame or pd.to_numeric(frame[metric], errors="coerce").notna().sum() == 0:
        return None
    label = worst_element(frame, metric)
    return None if label is None else _row(frame, label)


_METRIC_WORDS = {"iou_consistency": "IoU consistency", "iou_truth": "IoU with the true masks", "kl": "KL divergence"}


def criterion(metric: str) -> str:
    """The words for how :func:`~equiaudit.result.worst_element` picks ``metric``'s worst element."""
    words = _METRIC_WORDS.get(metric, metric.replace("_", " "))
    return f"lowest {words}" if metric in HIGHER_IS_BETTER else f"largest mean {words}"


def _lead(clauses: Sequence[tuple[str, str]]) -> tuple[str, str, list[str]]:
    """``(status, the clause of that status, every clause worst first)``."""
    status = max((s for s, _ in clauses), key=STATUS_ORDER.__getitem__)
    ordered = [c for s, c in sorted(clauses, key=lambda sc: -STATUS_ORDER[sc[0]])]
    lead = next(c for s, c in clauses if s == status)
    return status, lead, ordered


def _sentence(parts: Sequence[str]) -> str:
    text = "; ".join(p for p in parts if p)
    return text[0].upper() + text[1:] + "." if text else ""


def _error_headline(
    frame: pd.DataFrame, key: str, ctx: _Context, tolerance: Tolerance | None = None, title: str | None = None
) -> Headline | None:
    rest = non_identity(frame)
    judged = judge_elements(frame, key, dtype=ctx.dtype, device=ctx.device, tolerance=tolerance)
    if not judged:
        return None
    from equiaudit.testing import float_tolerance

    tol = float_tolerance(ctx.dtype) if tolerance is not None else roundoff(ctx.dtype, ctx.device)
    clauses: list[tuple[str, str]] = []
    brief = ""  # the interpolated elements' finding without its rule, for the overall verdict
    if tolerance is not None and not tolerance.interval:
        bad = [j for j in judged if not j.holds]
        rule = f"max_error {tolerance}" + ("" if tolerance.absolute is not None else f" + {tol:g}")
        if bad:
            clauses.append(("fail", f"{len(bad)} of {len(judged)} elements exceed the check's tolerance ({rule})"))
        else:
            clauses.append(("pass", f"every element is within the check's tolerance ({rule})"))
    else:
        exact = [j for j in judged if j.exact]
        sampled = [j for j in judged if not j.exact]
        if exact:
            bad = [j for j in exact if not j.holds]
            top = max(j.value for j in exact)
            n = len(exact)
            if not bad:
                plural = "s" if n > 1 else ""
                text = f"the {n} exact element{plural} match to {ctx.dtype} round-off"
                clauses.append(("pass", f"{text} (largest single-image error {fmt_num(top)} ≤ {tol:g})"))
            else:
                status = max((j.status for j in bad), key=STATUS_ORDER.__getitem__)
                text = f"{len(bad)} of {n} exact elements (no interpolation there, so all of it is the model's)"
                text += f" exceed {ctx.dtype} round-off: largest single-image error {fmt_num(top)}, round-off {tol:g}"
                clauses.append((status, text))
        if sampled:
            bad = [j for j in sampled if not j.holds]
            n = len(sampled)
            if not has_intervals(frame):
                rule = "mean error ≤ 2× the mean floor; a version-1 result has no intervals, so the old rule"
            else:
                rule = f"mean error ≤ the upper bound of the floor's {ctx.confidence:.0%} interval + {tol:g}"
            if not bad:
                clauses.append(("pass", f"every interpolated element is within its interpolation floor ({rule})"))
            else:
                status = max((j.status for j in bad), key=STATUS_ORDER.__getitem__)
                text = f"{len(bad)} of {n} interpolated elements are above their interpolation floor (rule: {rule})"
                if status == "warn" and has_intervals(frame):
                    text += "; each one's own error interval still reaches its limit, so more images would tell"
                clauses.append((status, text))
                brief = f"{len(bad)} of {n} interpolated elements are above their interpolation floor"
    status, lead, ordered = _lead(clauses)
    label = worst_element(frame, key)
    row = _row(frame, label) if label is not None else rest.iloc[0].to_dict()
    where = element_phrase(row, ctx.wraps)
    low, high = row_interval(row, key)
    if _is_exact(row):
        floor_text = "exact, floor 0"
    else:
        floor_high = _num(row.get("floor_high"))
        floor_text = f"its floor {fmt_num(_num(row.get('floor')))}"
        floor_text += f", interval up to {fmt_num(floor_high)}" if floor_high is not None else ""
    shown = fmt_interval(row[key], low, high)
    worst = f"worst element ({criterion(key)}): {element_name(row, ctx.wraps)}, {shown} ({floor_text})"
    if brief and lead.startswith(brief):  # the overall verdict: the finding and the worst element, not the rule
        lead = f"{brief} (the {criterion(key)}: {fmt_num(_num(row[key]))} {where}, {floor_text})"
    name = title or ("Invariance error" if key == "invariance_error" else "Equivariance error")
    return Headline(
        key,
        name,
        f"{fmt_interval(row[key], low, high)} {where}",
        _sentence([*ordered, worst]),
        status,
        short="" if status == "pass" else lead,
        value_title=interval_title(low, high, ctx.confidence),
    )


def _error_proven(headline: Headline | None, frame: pd.DataFrame) -> bool:
    """Whether every non-identity element is exact and matched to round-off (predictions then cannot change)."""
    rest = non_identity(frame)
    exact = all(_is_exact(r) for r in rest.to_dict(orient="records"))
    return headline is not None and headline.status == "pass" and exact


def _agreement_headline(frame: pd.DataFrame, ctx: _Context, proven: bool) -> Headline | None:
    row = _worst_row(non_identity(frame), "agreement")
    if row is None:
        return None
    agree = float(row["agreement"])
    low, high = (_num(v) for v in row_interval(row, "agreement"))
    where = element_phrase(row, ctx.wraps)
    value = fmt_interval(agree, low, high, percent=True)
    status = _band(agree, AGREEMENT_PASS, AGREEMENT_WARN)
    interval = interval_title(low, high, ctx.confidence, percent=True)
    if agree >= 1.0:
        sentence = "The predicted class never changes under any element" + (f" ({interval})" if interval else "")
    else:
        sentence = f"The prediction changes for {fmt_pct(1 - agree)} of images {where} (the {criterion('agreement')}"
        sentence += f": {fmt_pct(agree)}, {interval})" if interval else ")"
    short = ""
    if low is not None and high is not None and not proven:
        # The data must establish the band: a pass needs the interval above the fail band, a fail below it.
        if status == "pass" and low < AGREEMENT_WARN:
            status = "warn"
            short = (
                f"on {ctx.images} images the {ctx.confidence:.0%} interval of the agreement reaches "
                f"{fmt_pct(low)}, below {fmt_pct(AGREEMENT_WARN)}: too few images to establish it"
            )
            sentence += f"; {short}"
        elif status == "fail" and high >= AGREEMENT_WARN:
            status = "warn"
    if not short and status != "pass":
        short = f"the prediction changes for {fmt_pct(1 - agree)} of images {where}"
    return Headline(
        "agreement",
        "Prediction agreement",
        value + (f" {where}" if agree < 1 else ""),
        sentence + ".",
        status,
        short=short,
        value_title=interval_title(low, high, ctx.confidence, percent=True),
    )


def _accuracy_headlines(result: AuditResult, ctx: _Context) -> list[Headline]:
    s = result.summary
    ref = s.get("accuracy_reference")
    row = _worst_row(non_identity(result.elements), "accuracy")
    if ref is None or row is None:
        return []
    acc = float(row["accuracy"])
    low, high = row_interval(row, "accuracy")
    drop = ref - acc
    where = element_phrase(row, ctx.wraps)
    shown = fmt_interval(acc, low, high, percent=True)
    if drop > 0:
        sentence = (
            f"{fmt_pct(ref)} untransformed; falls to {shown} {where} (the {criterion('accuracy')}; "
            f"{100 * drop:.1f} points)."
        )
    else:
        sentence = f"{fmt_pct(ref)} untransformed, and at least as high under every element."
    status = _band(drop, DROP_PASS, DROP_WARN, higher_is_better=False)
    out = [
        Headline(
            "accuracy",
            "Accuracy",
            f"{fmt_pct(ref)} → {shown}",
            sentence,
            status,
            short=f"accuracy falls from {fmt_pct(ref)} to {fmt_pct(acc)} {where}" if status != "pass" else "",
            value_title=interval_title(low, high, ctx.confidence, percent=True),
        )
    ]
    wca = s.get("worst_case_accuracy")
    if wca is not None:
        wlow, whigh = s.get("worst_case_accuracy_low"), s.get("worst_case_accuracy_high")
        status = _band(ref - wca, DROP_PASS, DROP_WARN, higher_is_better=False)
        out.append(
            Headline(
                "worst_case_accuracy",
                "Worst-case accuracy",
                fmt_interval(wca, wlow, whigh, percent=True),
                f"{fmt_pct(wca)} of images are classified correctly under every element "
                f"(vs {fmt_pct(ref)} untransformed).",
                status,
                short=f"only {fmt_pct(wca)} of images are classified correctly under every element"
                if status != "pass"
                else "",
                value_title=interval_title(wlow, whigh, ctx.confidence, percent=True),
            )
        )
    return out


def _iou_headlines(result: AuditResult, ctx: _Context) -> list[Headline]:
    out = []
    rest = non_identity(result.elements)
    row = _worst_row(rest, "iou_consistency")
    if row is not None:
        worst = float(row["iou_consistency"])
        mean = result.summary.get("iou_consistency_mean")
        where = element_phrase(row, ctx.wraps)
        mean_text = f"; mean over the elements {mean:.3f}" if mean is not None else ""
        status = _band(worst, IOU_PASS, IOU_WARN)
        out.append(
            Headline(
                "iou_consistency",
                "Mask consistency (IoU)",
                f"{worst:.3f} {where}",
                f"Mapped back, the mask predicted on the transformed image overlaps the untransformed prediction "
                f"with IoU {worst:.3f} {where} (the {criterion('iou_consistency')}{mean_text}).",
                status,
                short=f"the predicted mask overlaps the untransformed one with IoU only {worst:.3f} {where}"
                if status != "pass"
                else "",
            )
        )
    row = _worst_row(rest, "iou_truth")
    ref = result.summary.get("iou_truth_reference")
    if row is not None and ref is not None:
        low = float(row["iou_truth"])
        where = element_phrase(row, ctx.wraps)
        status = _band(ref - low, DROP_PASS, DROP_WARN, higher_is_better=False)
        out.append(
            Headline(
                "iou_truth",
                "IoU with the true masks",
                f"{ref:.3f} → {low:.3f}",
                f"{ref:.3f} untransformed; {low:.3f} {where} (the {criterion('iou_truth')}).",
                status,
                short=f"IoU with the true masks falls from {ref:.3f} to {low:.3f} {where}" if status != "pass" else "",
            )
        )
    return out


def _coverage_headline(result: AuditResult, ctx: _Context) -> Headline | None:
    fraction = _num(result.summary.get("constant_input_fraction"))
    if fraction is None:
        return None
    threshold = f"warning at {fmt_pct(CONSTANT_INPUT_WARN)} or more"
    value = f"{fmt_pct(fraction)} constant"
    if fraction < CONSTANT_INPUT_WARN:
        return Headline(
            "coverage",
            "Constant input pixels",
            value,
            f"{fmt_pct(fraction)} of the compared input pixels never vary across these {ctx.images} images "
            f"({threshold}).",
            "info",
        )
    probed = result.probe is not None
    short = (
        f"{fmt_pct(fraction)} of the compared input pixels never vary across this data ({threshold}), so it "
        f"cannot show what the model does with them"
    )
    sentence = (
        f"{fmt_pct(fraction)} of the compared input pixels never vary across these {ctx.images} images "
        f"({threshold}): this data cannot show what the model does with them, and a model that reads only them "
        f"would look {ctx.prop} here. "
    )
    sentence += (
        "The noise probe varies every pixel (its card)."
        if probed
        else 'Audit with --probe noise (probe="noise") to test inputs that vary everywhere.'
    )
    return Headline(
        "coverage",
        "Constant input pixels",
        value,
        sentence,
        "info" if probed else "warn",
        short=short + ("" if probed else "; audit with --probe noise"),
    )


def _probe_headline(result: AuditResult, ctx: _Context, tolerance: Tolerance | None) -> Headline | None:
    """The noise probe (``--probe noise``) judged by the same rules: it enters the overall verdict."""
    probe = result.probe
    if not probe or not probe.get("elements"):
        return None
    frame = pd.DataFrame.from_records(probe["elements"])
    data = probe.get("data") or {}
    pctx = _context(result, images=int(data.get("count") or 0), data="noise")
    key = "invariance_error" if result.task == "classify" else "equivariance_error"
    err = _error_headline(frame, key, pctx, tolerance) if key in frame else None
    cards = [h for h in (err,) if h is not None]
    if result.task == "classify":
        agree = _agreement_headline(frame, pctx, _error_proven(err, frame))
        cards = [h for h in (agree, err) if h is not None]
    if not cards:
        return None
    status = max((h.status for h in cards), key=STATUS_ORDER.__getitem__)
    lead = next(h for h in cards if h.status == status)
    title = f"On noise ({pctx.images} images)"
    sentence = f"The same audit on {pctx.images} band-limited noise images, where every pixel varies: " + " ".join(
        h.sentence[0].lower() + h.sentence[1:] for h in cards
    )
    return Headline(
        "probe",
        title,
        cards[0].value,
        sentence,
        status,
        short=f"on noise, {lead.short}" if lead.short else "",
        value_title=cards[0].value_title,
    )


def _overall(result: AuditResult, ctx: _Context, headlines: Sequence[Headline]) -> tuple[str, str]:
    name = group_name(result.group.spec or "")
    on = f"on this data ({ctx.images} images of {ctx.data})"
    coverage = next((h for h in headlines if h.key == "coverage"), None)
    judged = [h for h in headlines if h.status != "info" and h.key != "coverage"]
    if not judged:
        return "info", f"Nothing to judge: the audit measured no element other than the identity of {name}."
    status = max((h.status for h in judged), key=STATUS_ORDER.__getitem__)
    caution = coverage is not None and coverage.status == "warn"
    probed = " and on noise" if any(h.key == "probe" for h in judged) else ""
    if status == "pass":
        if result.summary.get("exact_group"):
            sentence = f"Exactly {ctx.prop} to {name} {on}{probed}: outputs match to {ctx.dtype} round-off"
        else:
            sentence = f"{ctx.prop.capitalize()} to {name} {on}{probed}, within the interpolation floor"
        if caution:
            return "warn", f"{sentence}; but {coverage.short}."
        return status, sentence + "."
    lead = next(h for h in judged if h.status == status)
    qualifier = "Not" if status == "fail" else "Approximately"
    reason = lead.short or lead.sentence.split("; ")[0].rstrip(".")
    sentence = f"{qualifier} {ctx.prop} to {name} {on}: {reason[0].lower()}{reason[1:]}."
    if caution:
        sentence += f" Also, {coverage.short}."
    return status, sentence


def verdict(result: AuditResult, tolerance: Tolerance | str | float | None = None) -> Verdict:
    """Headline numbers of ``result`` (an :class:`~equiaudit.result.AuditResult`) in words.

    ``tolerance`` (a check's ``max_error``: ``"floor"``, ``"Kx floor"`` or a number) judges the error cards
    by that check's own rule, as :mod:`equiaudit.testing` did; by default the report's rule (module docstring).
    """
    if tolerance is not None:
        from equiaudit.testing import parse_max_error

        tolerance = parse_max_error(tolerance)
    ctx = _context(result)
    frame = result.elements
    headlines: list[Headline] = []
    if result.task == "classify":
        err = _error_headline(frame, "invariance_error", ctx, tolerance)
        headlines += [h for h in (_agreement_headline(frame, ctx, _error_proven(err, frame)),) if h]
        headlines += _accuracy_headlines(result, ctx)
    else:
        headlines += _iou_headlines(result, ctx)
        err = _error_headline(frame, "equivariance_error", ctx, tolerance)
    if err is not None:
        headlines.append(err)
    headlines += [h for h in (_probe_headline(result, ctx, tolerance), _coverage_headline(result, ctx)) if h]
    status, sentence = _overall(result, ctx, headlines)
    added = layer_headlines(result)
    headlines += added
    sentence += "".join(f" {h.short}" for h in added if h.key == "layers" and h.short)
    if result.run.partial:
        sentence += f" (partial: the scan stopped after {result.summary.get('images', '?')} images)"
    return Verdict(status, sentence, tuple(headlines))


# ---- per-layer audits and Lie derivatives (--layers, --lie): context cards ------------------------------------


def layer_headline(result: AuditResult) -> Headline | None:
    """Context for the verdict: where the model breaks (``info``: the output's own cards judge the model)."""
    rows = list((result.layers or {}).get("layers") or [])
    if not rows:
        return None
    first = (result.layers or {}).get("first_breaking")
    if first is None:
        return Headline(
            "layers", "Layers", f"{len(rows)} hold", f"Every one of the {len(rows)} layers measured holds.", "info"
        )
    at = next(i for i, r in enumerate(rows) if r["name"] == first)
    r = rows[at]
    held = f"the {at} layer{'s' if at != 1 else ''} before it hold" if at else "it is the first layer measured"
    sentence = (
        f"The first layer that breaks is {first} ({r['module']}, action {r['action']}): error "
        f"{fmt_num(r['error_worst'])} under {r['worst_element']}, floor {fmt_num(r['floor_worst'])}; {held}."
    )
    return Headline("layers", "First layer that breaks", first, sentence, "info", short=sentence)


def lie_headline(result: AuditResult) -> Headline | None:
    """The output's Lie derivative beside the grid audit (``info``: it has no floor to be judged against)."""
    lie = result.lie
    if not lie:
        return None
    parts = [f"{g} {fmt_num(v.get('mean'))} {lie['units'].get(g, '')}" for g, v in lie["output"].items()]
    value = fmt_num(next(iter(lie["output"].values())).get("mean"))
    sentence = (
        f"Lie derivative of the output, the local error at the identity independent of the angle grid (mean "
        f"over {lie['images']} images): " + ", ".join(parts) + "; at a small angle e (radians) the grid error "
        "is about e times this."
    )
    return Headline("lie", "Lie derivative", value, sentence, "info")


def layer_headlines(result: AuditResult) -> list[Headline]:
    """The cards a per-layer audit and a Lie derivative add to the verdict strip."""
    return [h for h in (layer_headline(result), lie_headline(result)) if h is not None]
