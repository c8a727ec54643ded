"""Audit results: a per-element table, a summary and metadata, with one versioned JSON schema.

JSON document (``schema_version`` 1)::

    {"schema_version": 1, "tool": "equiaudit",
     "summary": {...scalars...},
     "elements": [{"id", "label", "angle", "scale", "reflect", "exact", <metrics that apply>}, ...],
     "per_class": {"classes": [...], "<metric>": [[...per class...] per element]} | null,
     "meta": {"group", "model", "data", "task", "options", "versions", "device", "dtype",
              "wall_time_s", "images_per_s", "partial"}}

Element metrics: ``agreement``, ``flip_rate``, ``kl``, ``invariance_error`` (classification), ``accuracy``,
``accuracy_drop`` (with labels), ``equivariance_error``, ``max_abs_error``, ``iou_consistency``, ``iou_truth``
(dense / segmentation), and ``floor`` (the interpolation floor; 0 for exact elements).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import EquiauditError, ResultFormatError

SCHEMA_VERSION = 1
ELEMENT_KEYS = ("id", "label", "angle", "scale", "reflect", "exact")
ELEMENT_METRICS = (
    "agreement",
    "flip_rate",
    "kl",
    "invariance_error",
    "invariance_error_max",
    "accuracy",
    "accuracy_drop",
    "equivariance_error",
    "equivariance_error_max",
    "max_abs_error",
    "iou_consistency",
    "iou_truth",
    "floor",
    "floor_max",
)
# Higher is better for these; every other metric is an error (lower is better).
HIGHER_IS_BETTER = frozenset(
    {
        "agreement",
        "accuracy",
        "iou_consistency",
        "iou_truth",
        "accuracy_mean",
        "accuracy_min",
        "worst_case_accuracy",
        "accuracy_reference",
        "agreement_min",
        "agreement_mean",
        "iou_consistency_min",
        "iou_consistency_mean",
        "iou_truth_reference",
        "iou_truth_mean",
        "iou_truth_min",
    }
)


SUMMARY_METRICS = frozenset(
    {
        "agreement_mean", "agreement_min", "flip_rate_max", "kl_mean", "kl_max", "max_abs_error_mean",
        "max_abs_error_max", "iou_consistency_mean", "iou_consistency_min", "iou_truth_mean", "iou_truth_min",
        "accuracy_drop_max", "error_to_floor_max", "accuracy_reference", "accuracy_mean", "accuracy_min",
        "worst_case_accuracy", "iou_truth_reference",
        # X_mean: mean over elements; X_worst: the worst element's mean; X_max: the worst image anywhere
        *(f"{m}_{how}" for m in ("invariance_error", "equivariance_error", "floor")
          for how in ("mean", "worst", "max")),
    }
)  # fmt: skip


def known_metrics() -> frozenset[str]:
    """Every metric name a threshold may use: element metrics (worst element) and summary scalars."""
    return frozenset(ELEMENT_METRICS) | SUMMARY_METRICS


def _clean(value: Any) -> Any:
    """JSON-safe scalars: numpy/torch numbers to Python, NaN/inf to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: os.umask is process-wide, so never toggle it later


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a synced temporary file in the same folder and rename, so a reader never sees half a file.
    The file gets the mode a plain ``open(..., "w")`` would give (mkstemp's is 0600)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise EquiauditError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class AuditResult:
    """What an audit measured. ``elements`` has one row per group element, in group order."""

    elements: pd.DataFrame
    summary: dict[str, Any]
    meta: dict[str, Any]
    per_class: dict[str, Any] | None = None
    samples: dict[str, Any] | None = field(default=None, repr=False)  # in-memory gallery material (not in JSON)

    @property
    def task(self) -> str:
        return self.meta.get("task", "")

    def to_frame(self) -> pd.DataFrame:
        return self.elements.copy()

    def to_dict(self) -> dict[str, Any]:
        records = [{k: _clean(v) for k, v in row.items()} for row in self.elements.to_dict(orient="records")]
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "equiaudit",
            "summary": _clean(self.summary),
            "elements": records,
            "per_class": _clean(self.per_class),
            "meta": _clean(self.meta),
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, doc: Any, source: str = "document") -> AuditResult:
        if not isinstance(doc, dict) or doc.get("tool") != "equiaudit" or "schema_version" not in doc:
            raise ResultFormatError(f"{source} is not an equiaudit result (no 'tool': 'equiaudit' / schema_version)")
        if doc["schema_version"] != SCHEMA_VERSION:
            raise ResultFormatError(
                f"{source} has schema_version {doc['schema_version']!r}; this equiaudit reads version {SCHEMA_VERSION}"
            )
        elements, summary, meta = doc.get("elements"), doc.get("summary"), doc.get("meta")
        if (
            not isinstance(elements, list)
            or not elements
            or not isinstance(summary, dict)
            or not isinstance(meta, dict)
        ):
            raise ResultFormatError(f"{source} is missing 'elements', 'summary' or 'meta'")
        for i, rec in enumerate(elements):
            if not isinstance(rec, dict) or any(k not in rec for k in ELEMENT_KEYS):
                raise ResultFormatError(f"{source}: element {i} lacks one of {', '.join(ELEMENT_KEYS)}")
        frame = pd.DataFrame.from_records(elements)
        return cls(frame, summary, meta, doc.get("per_class"))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> AuditResult:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ResultFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ResultFormatError(f"{path} is not a text JSON file") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultFormatError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_dict(doc, source=str(path))

    def metric_value(self, name: str) -> float:
        """A summary scalar, or the worst value of an element metric over the non-identity elements."""
        if name in self.summary and isinstance(self.summary[name], (int, float)):
            return float(self.summary[name])
        if name in self.elements.columns:
            col = self.elements.loc[~self.elements["label"].eq("identity"), name].dropna()
            if col.empty:
                col = self.elements[name].dropna()
            if col.empty:
                raise EquiauditError(f"metric {name!r} is not defined for this audit")
            return float(col.min() if name in HIGHER_IS_BETTER else col.max())
        if name in known_metrics():
            raise EquiauditError(
                f"metric {name!r} is not defined for this audit (task {self.task or '?'}, "
                f"group {self.meta.get('group', {}).get('spec', '?')})"
            )
        defined = sorted(
            {k for k, v in self.summary.items() if isinstance(v, (int, float)) and k in known_metrics()}
            | {c for c in self.elements.columns if c in ELEMENT_METRICS}
        )
        raise EquiauditError(f"unknown metric {name!r}; this audit has: {', '.join(defined)}")

    def check(self, above: dict[str, float] | None = None, below: dict[str, float] | None = None) -> list[str]:
        """Threshold failures as readable lines: a metric's worst value above (or below) its limit."""
        failures = []
        for name, limit in (above or {}).items():
            value = self.metric_value(name)
            if value > limit:
                failures.append(f"{name} = {value:.6g} exceeds {limit:g}")
        for name, limit in (below or {}).items():
            value = self.metric_value(name)
            if value < limit:
                failures.append(f"{name} = {value:.6g} is below {limit:g}")
        return failures


def samples_path(json_path: str | os.PathLike) -> Path:
    """Where the gallery sidecar of a results JSON lives: ``result.json`` -> ``result.samples.npz``."""
    p = Path(json_path)
    return p.with_name(p.stem + ".samples.npz")


def save(result: AuditResult, path: str | os.PathLike) -> Path:
    """Write the JSON document and, when the result holds gallery samples, the ``.samples.npz`` sidecar next to
    it. The JSON (and ``result.meta["samples"]``) records the sidecar's SHA-256, so :func:`load` never pairs a
    result with another run's samples; a stale sidecar from an earlier run is removed."""
    import hashlib
    import io

    import numpy as np

    side = samples_path(path)
    result.meta.pop("samples", None)
    if result.samples:
        flat = {f"{part}/{key}": value for part, arrays in result.samples.items() for key, value in arrays.items()}
        buf = io.BytesIO()
        np.savez_compressed(buf, **flat)
        data = buf.getvalue()
        atomic_write_bytes(side, data)
        result.meta["samples"] = {"sha256": hashlib.sha256(data).hexdigest()}  # the name follows the JSON
    elif side.is_file():
        side.unlink()
    return atomic_write_text(path, result.to_json() + "\n")


def load(path: str | os.PathLike) -> AuditResult:
    """Read a results JSON and, when it names one, its ``.samples.npz`` sidecar (checked by SHA-256)."""
    import hashlib
    import io

    import numpy as np

    result = AuditResult.from_json(path)
    record = result.meta.get("samples")
    side = samples_path(path)
    if not isinstance(record, dict) or not side.is_file():
        return result
    data = side.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return result  # another run's gallery: better none than the wrong one
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            samples: dict[str, dict] = {}
            for key in z.files:
                part, name = key.split("/", 1)
                samples.setdefault(part, {})[name] = z[key]
        result.samples = samples
    except (OSError, ValueError) as exc:
        raise ResultFormatError(f"cannot read the samples file {side}: {exc}") from None
    return result
