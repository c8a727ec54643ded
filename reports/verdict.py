"""The verdict strip: headline numbers of an audit, each with a status and one plain-language sentence.

Statuses: ``pass`` (symmetric as far as the measurement can tell), ``warn`` (close, but not within the limits
below), ``fail`` (clearly broken), ``info`` (context, e.g. the accuracy with nothing to compare against).

The error of an element that needs no interpolation (a quarter turn or a flip of a square image) is compared
with the round-off of the dtype; the error of an interpolated element with its interpolation floor (the error
of resampling the input there and back), since no model can be judged more exactly than the data is sampled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from equiaudit.testing import FLOAT_TOLERANCE

if TYPE_CHECKING:
    from equiaudit.result import AuditResult

STATUS_ORDER = {"pass": 0, "info": 0, "warn": 1, "fail": 2}

# Relative error allowed as arithmetic round-off on exact elements, per dtype: the one table that the pytest
# helpers use too. CUDA float32 convolutions may use TF32 (10 mantissa bits), hence the larger value there.
ROUNDOFF = FLOAT_TOLERANCE
ROUNDOFF_CUDA_FLOAT32 = 2e-3
# Interpolated elements: error / floor at or below PASS_RATIO passes, up to WARN_RATIO warns.
PASS_RATIO, WARN_RATIO = 2.0, 4.0
# Fractions of images (agreement, accuracy points, IoU): at or above PASS, at or above WARN.
AGREEMENT_PASS, AGREEMENT_WARN = 0.99, 0.90
DROP_PASS, DROP_WARN = 0.01, 0.05
IOU_PASS, IOU_WARN = 0.95, 0.80


@dataclass(frozen=True)
class Headline:
    """One card of the verdict strip."""

    key: str
    title: str
    value: str
    sentence: str
    status: str
    short: str = ""  # the reason in the verdict line, when the sentence is too long for it


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
    if row["label"] == "identity" or reflect:
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


# ---- assessment -----------------------------------------------------------------------------------------------


def _rest(frame: pd.DataFrame) -> pd.DataFrame:
    """The non-identity elements (the identity measures nothing)."""
    rest = frame[frame["label"] != "identity"]
    return rest if len(rest) else frame


def _worst(frame: pd.DataFrame, col: str, higher_is_better: bool) -> pd.Series | None:
    values = pd.to_numeric(frame[col], errors="coerce") if col in frame else None
    if values is None or values.notna().sum() == 0:
        return None
    return frame.loc[values.idxmin() if higher_is_better else values.idxmax()]


def _band(value: float, good: float, bad: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        return "pass" if value >= good else "warn" if value >= bad else "fail"
    return "pass" if value <= good else "warn" if value <= bad else "fail"


def _error_headline(result: AuditResult, key: str, wraps: bool) -> Headline | None:
    frame = _rest(result.elements)
    if key not in frame or pd.to_numeric(frame[key], errors="coerce").notna().sum() == 0:
        return None
    err = pd.to_numeric(frame[key], errors="coerce")
    floor = pd.to_numeric(frame["floor"], errors="coerce").fillna(0.0)
    tol = roundoff(result.run.dtype, result.run.device)
    dtype = result.run.dtype or "float32"
    exact, sampled = err[floor <= 0].dropna(), err[floor > 0].dropna()
    ratio = (sampled / floor[sampled.index]) if len(sampled) else pd.Series(dtype=float)
    statuses, parts = [], []
    if len(exact):
        worst = exact.idxmax()
        e = float(exact[worst])
        where = element_phrase(frame.loc[worst], wraps)
        statuses.append(_band(e, tol, 100 * tol, higher_is_better=False))
        if e <= tol:
            parts.append(f"exact elements match to {dtype} round-off (≤ {fmt_num(e)})")
        else:
            parts.append(f"the error is {fmt_num(e)} {where} (no interpolation there, so all of it is the model's)")
    if len(ratio):
        worst = ratio.idxmax()
        r = float(ratio[worst])
        statuses.append(_band(r, PASS_RATIO, WARN_RATIO, higher_is_better=False))
        where = element_phrase(frame.loc[worst], wraps)
        parts.append(
            f"the error is {r:.3g}× the interpolation floor {where} "
            f"({fmt_num(float(err[worst]))} vs {fmt_num(float(floor[worst]))})"
            if r > PASS_RATIO
            else f"within {max(r, 1.0):.2g}× the interpolation floor (worst {where})"
        )
    status = max(statuses, key=STATUS_ORDER.__getitem__)
    # The worst finding leads: the overall verdict quotes the first clause.
    parts = [p for _, p in sorted(zip(statuses, parts, strict=True), key=lambda sp: -STATUS_ORDER[sp[0]])]
    worst_all = err.idxmax()
    title = "Invariance error" if key == "invariance_error" else "Equivariance error"
    value = f"{fmt_num(float(err[worst_all]))} {element_phrase(frame.loc[worst_all], wraps)}"
    sentence = "; ".join(parts)
    sentence = sentence[0].upper() + sentence[1:] + "."
    return Headline(key, title, value, sentence, status)


def _agreement_headline(result: AuditResult, wraps: bool) -> Headline | None:
    row = _worst(_rest(result.elements), "agreement", higher_is_better=True)
    if row is None:
        return None
    agree = float(row["agreement"])
    changed = 1.0 - agree
    where = element_phrase(row, wraps)
    if changed == 0:
        sentence = "The predicted class never changes under any element."
    else:
        sentence = f"The prediction changes for {fmt_pct(changed)} of images {where}."
    value = fmt_pct(agree) + (f" {where}" if changed else "")
    return Headline("agreement", "Prediction agreement", value, sentence, _band(agree, AGREEMENT_PASS, AGREEMENT_WARN))


def _accuracy_headlines(result: AuditResult, wraps: bool) -> list[Headline]:
    s = result.summary
    ref = s.get("accuracy_reference")
    row = _worst(_rest(result.elements), "accuracy", higher_is_better=True)
    if ref is None or row is None:
        return []
    low = float(row["accuracy"])
    drop = ref - low
    where = element_phrase(row, wraps)
    if drop > 0:
        sentence = f"{fmt_pct(ref)} untransformed; falls to {fmt_pct(low)} {where} ({100 * drop:.1f} points)."
    else:
        sentence = f"{fmt_pct(ref)} untransformed, and at least as high under every element."
    out = [
        Headline(
            "accuracy",
            "Accuracy",
            f"{fmt_pct(ref)} → {fmt_pct(low)}",
            sentence,
            _band(drop, DROP_PASS, DROP_WARN, higher_is_better=False),
        )
    ]
    wca = s.get("worst_case_accuracy")
    if wca is not None:
        out.append(
            Headline(
                "worst_case_accuracy",
                "Worst-case accuracy",
                fmt_pct(wca),
                f"{fmt_pct(wca)} of images are classified correctly under every element "
                f"(vs {fmt_pct(ref)} untransformed).",
                _band(ref - wca, DROP_PASS, DROP_WARN, higher_is_better=False),
            )
        )
    return out


def _iou_headlines(result: AuditResult, wraps: bool) -> list[Headline]:
    out = []
    rest = _rest(result.elements)
    row = _worst(rest, "iou_consistency", higher_is_better=True)
    if row is not None:
        worst = float(row["iou_consistency"])
        mean = result.summary.get("iou_consistency_mean")
        where = element_phrase(row, wraps)
        mean_text = f" (mean {mean:.3f})" if mean is not None else ""
        out.append(
            Headline(
                "iou_consistency",
                "Mask consistency (IoU)",
                f"{worst:.3f} {where}",
                f"Mapped back, the mask predicted on the transformed image overlaps the untransformed prediction "
                f"with IoU {worst:.3f} {where}{mean_text}.",
                _band(worst, IOU_PASS, IOU_WARN),
                short=f"the predicted mask overlaps the untransformed one with IoU only {worst:.3f} {where}"
                if worst < 1
                else "",
            )
        )
    row = _worst(rest, "iou_truth", higher_is_better=True)
    ref = result.summary.get("iou_truth_reference")
    if row is not None and ref is not None:
        low = float(row["iou_truth"])
        where = element_phrase(row, wraps)
        out.append(
            Headline(
                "iou_truth",
                "IoU with the true masks",
                f"{ref:.3f} → {low:.3f}",
                f"{ref:.3f} untransformed; {low:.3f} {where}.",
                _band(ref - low, DROP_PASS, DROP_WARN, higher_is_better=False),
            )
        )
    return out


def _overall(result: AuditResult, headlines: Sequence[Headline]) -> tuple[str, str]:
    name = group_name(result.group.spec or "")
    dense = result.task in ("segment", "dense")
    prop = "equivariant" if dense else "invariant"
    judged = [h for h in headlines if h.status != "info"]
    if not judged:
        return "info", f"Nothing to judge: the audit measured no element other than the identity of {name}."
    status = max((h.status for h in judged), key=STATUS_ORDER.__getitem__)
    if status == "pass":
        if result.summary.get("exact_group"):
            dtype = result.run.dtype or "float32"
            return status, f"Exactly {prop} to {name}: outputs match to {dtype} round-off."
        return status, f"{prop.capitalize()} to {name}, up to interpolation error."
    # The most telling failing card leads the sentence.
    lead = next(h for h in judged if h.status == status)
    qualifier = "Not" if status == "fail" else "Approximately"
    reason = lead.short or lead.sentence.split("; ")[0].rstrip(".")
    return status, f"{qualifier} {prop} to {name}: {reason[0].lower()}{reason[1:]}."


def verdict(result: AuditResult) -> Verdict:
    """Headline numbers of ``result`` (an :class:`~equiaudit.result.AuditResult`) in words."""
    wraps = angle_wraps(result.group.spec or "")
    headlines: list[Headline] = []
    if result.task == "classify":
        headlines += [h for h in (_agreement_headline(result, wraps),) if h]
        headlines += _accuracy_headlines(result, wraps)
        err = _error_headline(result, "invariance_error", wraps)
    else:
        headlines += _iou_headlines(result, wraps)
        err = _error_headline(result, "equivariance_error", wraps)
    if err is not None:
        headlines.append(err)
    status, sentence = _overall(result, headlines)
    if result.run.partial:
        sentence += f" (partial: the scan stopped after {result.summary.get('images', '?')} images)"
    return Verdict(status, sentence, tuple(headlines))
