"""Audit results: a per-element table, a summary, and typed model, data, group and run information, with one
versioned JSON schema (``schema/result-v2.json``, JSON Schema draft 2020-12).

JSON document (``schema_version`` 2)::

    {"schema_version": 2, "tool": "equiaudit",
     "model": {"source", "kind", "sha256", "parameters", "arch", "info"},
     "data": {"spec", "source", "count", "input_shape", "has_labels", "has_masks", "num_classes", ...},
     "group": {"spec", "size", "exact", "kind", "elements"},
     "run": {"spec": {<AuditSpec>}, "task", "task_auto", "action", "output_shape", "batch_size",
             "batch_size_auto", "floor_images", "mask_fraction", "device", "dtype", "versions",
             "wall_time_s", "images_per_s", "transformed_images_per_s", "partial", "checks", "samples"},
     "summary": {...scalars...},
     "elements": [{"id", "label", "angle", "scale", "reflect", "exact", <metrics that apply>}, ...],
     "locations": [{"image", "index", "output", "reference", "error"} | null per element],
     "per_class": {"classes": [...], "<metric>": [[...per class...] per element]} | null}

Version-1 documents (one ``meta`` object instead of model / data / group / run) still load.

Element metrics: ``agreement``, ``flip_rate``, ``kl``, ``invariance_error`` (classification), ``accuracy``,
``accuracy_drop`` (with labels), ``equivariance_error``, ``max_abs_error``, ``iou_consistency``, ``iou_truth``
(dense / segmentation), and ``floor`` (the interpolation floor; 0 for exact elements).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import EquiauditError, ResultFormatError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCHEMA_FILE = Path(__file__).with_name("schema") / "result-v2.json"
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
        "consistency",
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
        "worst_case_accuracy", "iou_truth_reference", "constant_input_fraction", "consistency",
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


def record_from(cls: type, doc: Any, where: str) -> Any:
    """A typed record from a JSON object: known keys only; a missing required key is a ResultFormatError."""
    if not isinstance(doc, dict):
        raise ResultFormatError(f"{where} is not an object")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in doc.items() if k in known})
    except TypeError as exc:
        raise ResultFormatError(f"{where}: {exc}") from None


@dataclass
class ModelInfo:
    """The audited model: where it came from and what it is."""

    source: str
    kind: str = "module"
    sha256: str | None = None
    parameters: int | None = None
    arch: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None  # the input pipeline the model's source declares
    output: str | None = None  # the part of the model's output audited (".logits", "['out']"; None: all of it)


@dataclass
class DataInfo:
    """The images audited."""

    spec: str
    count: int
    input_shape: list[int] = field(default_factory=list)
    source: str | None = None
    has_labels: bool = False
    has_masks: bool = False
    num_classes: int | None = None
    class_names: list[str] | None = None
    split: str | None = None
    normalisation: dict[str, list[float]] | None = None
    seed: int | None = None
    preprocess: dict[str, Any] | None = None  # resize / crop / channels, the model's normalisation, the fill
    classes_from: str | None = None  # "folders" or "classes": what the labels index


@dataclass
class GroupInfo:
    """The group: its spec and elements (the element table holds each element's parameters)."""

    spec: str
    size: int
    exact: bool
    kind: str = ""
    elements: list[str] = field(default_factory=list)


@dataclass
class RunInfo:
    """How the audit ran: the spec as asked, what was chosen (task, forward batch), where, how fast."""

    spec: dict[str, Any] = field(default_factory=dict)  # AuditSpec.to_dict()
    task: str | None = None
    task_auto: bool | None = None
    output_shape: list[int] = field(default_factory=list)
    batch_size: int | None = None
    batch_size_auto: bool = True
    floor_images: int = 0
    mask_fraction: float | None = None
    input_region: str = "none"  # what --input-mask chose: none, valid (kept by every element) or disk
    input_fraction: float = 1.0  # fraction of input pixels kept
    device: str = "cpu"
    dtype: str = "float32"
    versions: dict[str, str] = field(default_factory=dict)
    wall_time_s: float | None = None
    images_per_s: float | None = None
    transformed_images_per_s: float | None = None
    partial: bool = False
    checks: dict[str, Any] | None = None  # --fail-above / --fail-below and their outcome
    samples: dict[str, str] | None = None  # the gallery sidecar's SHA-256
    precision: dict[str, Any] | None = None  # --precision and the backend flags in force (equiaudit.precision)
    stop_reason: str | None = None  # why a partial run stopped: sigint, sigterm or error (None: it did not)
    stop_detail: str | None = None  # the error's one line, when stop_reason is error
    processes: int = 1  # torchrun processes that shared the audit
    shard: dict[str, Any] | None = None  # --shard K/N: index, count and the images [start, stop) of total
    forward: dict[str, Any] | None = None  # --compile / --channels-last / --cuda-graphs: what ran (equiaudit.speed)

    @property
    def action(self) -> str | None:
        """How the group acts on the output: ``trivial`` (classify) or ``spatial`` (maps)."""
        return None if self.task is None else ("trivial" if self.task == "classify" else "spatial")

    @property
    def arithmetic(self) -> str:
        """The dtype the model's forward computed in: the autocast dtype of ``--precision bf16 / fp16``, else
        ``dtype`` (its round-off is what exact elements are held to)."""
        autocast = (self.precision or {}).get("autocast")
        return str(autocast or self.dtype or "float32")

    @property
    def interpolation(self) -> str:
        return str(self.spec.get("interpolation", "bilinear"))

    @property
    def padding(self) -> str:
        return str(self.spec.get("padding", "zeros"))

    @property
    def mask(self) -> str:
        return str(self.spec.get("mask", "auto"))


@dataclass
class AuditResult:
    """What an audit measured. ``elements`` has one row per group element, in group order."""

    elements: pd.DataFrame
    summary: dict[str, Any]
    model: ModelInfo
    data: DataInfo
    group: GroupInfo
    run: RunInfo
    per_class: dict[str, Any] | None = None
    locations: list[dict[str, Any] | None] | None = None  # per element: where its largest error is
    intervals: dict[str, Any] | None = None  # confidence, images and method of the *_low / *_high values
    probe: dict[str, Any] | None = None  # --probe noise: the same audit on noise (data, summary, elements)
    layers: dict[str, Any] | None = None  # --layers: per-layer errors, floors, verdicts (equiaudit.layers)
    lie: dict[str, Any] | None = None  # --lie: the output's Lie derivative per generator (equiaudit.lie)
    samples: dict[str, Any] | None = field(default=None, repr=False)  # gallery and per-image records (sidecar)
    search: dict[str, Any] | None = None  # --search: worst case per method and per image (equiaudit.search)
    state: dict[str, Any] | None = field(default=None, repr=False)  # a shard's observer states (equiaudit merge)

    @property
    def task(self) -> str:
        return self.run.task or ""

    @property
    def records(self) -> dict[str, Any] | None:
        """Per-image records (``index``, ``error`` ``(N, G)``, ``pred``, ``correct``) when kept."""
        return (self.samples or {}).get("records")

    def to_frame(self) -> pd.DataFrame:
        return self.elements.copy()

    @property
    def worst_elements(self) -> dict[str, str]:
        """``{metric: label}``: each element metric's one worst element (see :func:`worst_element`)."""
        found = {m: worst_element(self.elements, m) for m in ELEMENT_METRICS if not m.endswith("_max")}
        return {m: label for m, label in found.items() if label is not None and m != "floor"}

    def to_dict(self) -> dict[str, Any]:
        records = [{k: _clean(v) for k, v in row.items()} for row in self.elements.to_dict(orient="records")]
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "equiaudit",
            "model": _clean(asdict(self.model)),
            "data": _clean(asdict(self.data)),
            "group": _clean(asdict(self.group)),
            "run": _clean(asdict(self.run)),
            "summary": _clean(self.summary),
            "elements": records,
            "locations": _clean(self.locations),
            "worst_elements": self.worst_elements,
            "intervals": _clean(self.intervals),
            "probe": _clean(self.probe),
            "per_class": _clean(self.per_class),
            "layers": _clean(self.layers),
            "lie": _clean(self.lie),
            **({"search": _clean(self.search)} if self.search is not None else {}),
            **({} if self.state is None else {"state": self.state}),
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
        if doc["schema_version"] not in READABLE_VERSIONS:
            raise ResultFormatError(
                f"{source} has schema_version {doc['schema_version']!r}; this equiaudit reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        if doc["schema_version"] == 1:
            doc = upgrade_v1(doc, source)
        elements, summary = doc.get("elements"), doc.get("summary")
        if not isinstance(elements, list) or not elements or not isinstance(summary, dict):
            raise ResultFormatError(f"{source} is missing 'elements' or 'summary'")
        for i, rec in enumerate(elements):
            if not isinstance(rec, dict) or any(k not in rec for k in ELEMENT_KEYS):
                raise ResultFormatError(f"{source}: element {i} lacks one of {', '.join(ELEMENT_KEYS)}")
        parts = {}
        for key, kind in (("model", ModelInfo), ("data", DataInfo), ("group", GroupInfo), ("run", RunInfo)):
            if key not in doc:
                raise ResultFormatError(f"{source} is missing {key!r}")
            parts[key] = record_from(kind, doc[key], f"{source}: {key!r}")
        frame = pd.DataFrame.from_records(elements)
        extras = {
            k: doc.get(k) for k in ("per_class", "locations", "intervals", "probe", "layers", "lie", "search", "state")
        }
        return cls(frame, summary, **extras, **parts)

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
                f"metric {name!r} is not defined for this audit (task {self.task or '?'}, group {self.group.spec})"
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
    it. The JSON (and ``result.run.samples``) records the sidecar's SHA-256, so :func:`load` never pairs a
    result with another run's samples; a stale sidecar from an earlier run is removed."""
    import hashlib
    import io

    import numpy as np

    side = samples_path(path)
    result.run.samples = None
    if result.samples:
        flat = {f"{part}/{key}": value for part, arrays in result.samples.items() for key, value in arrays.items()}
        buf = io.BytesIO()
        np.savez_compressed(buf, **flat)
        data = buf.getvalue()
        atomic_write_bytes(side, data)
        result.run.samples = {"sha256": hashlib.sha256(data).hexdigest()}  # the name follows the JSON
    elif side.is_file():
        side.unlink()
    return atomic_write_text(path, result.to_json() + "\n")


def load(path: str | os.PathLike) -> AuditResult:
    """Read a results JSON and, when it names one, its ``.samples.npz`` sidecar (checked by SHA-256)."""
    import hashlib
    import io

    import numpy as np

    result = AuditResult.from_json(path)
    record = result.run.samples
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


def upgrade_v1(doc: dict[str, Any], source: str = "document") -> dict[str, Any]:
    """A version-1 document (one ``meta`` object) in the version-2 layout, so old results still load and render."""
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise ResultFormatError(f"{source} is missing 'meta'")
    options = dict(meta.get("options") or {})
    group = meta.get("group") or {}
    auto = bool(options.get("batch_size_auto", False))
    spec = {
        "group": group.get("spec", ""),
        "steps": None,
        "task": "auto" if meta.get("task_auto") else meta.get("task") or "auto",
        "interpolation": options.get("interpolation", "bilinear"),
        "padding": options.get("padding", "zeros"),
        "mask": options.get("mask", "auto"),
        "input_mask": "none",  # version 1 had no input mask
        "batch_size": None if auto else options.get("batch_size"),
        "floor_images": 256,
        "samples": 8,
        "confidence": 0.95,
        "probe": "none",
        "device": meta.get("device"),
        "dtype": meta.get("dtype"),
        "output": "auto",  # version 1 took tensor outputs only
        # version 1 padded the data as given: with a normalisation, 0 of the normalised input is its mean colour
        "fill": "mean" if (meta.get("data") or {}).get("normalisation") else "zeros",
        "max_elements": 4096,
        "force": False,
        "layers": None,  # version 1 had no per-layer audit nor Lie derivative
        "layer_action": "auto",
        "channel_layout": "cg",
        "lie": False,
        "search": "grid",  # version 1 had no search
        "search_budget": 24,
        "precision": "fp32",  # version 1 ran float32 with the backend's default flags (not recorded)
        "shard": None,
        "compile": False,  # version 1 ran the plain forward
        "channels_last": "off",
        "cuda_graphs": False,
    }
    run = {
        "spec": spec,
        "task": meta.get("task"),
        "task_auto": meta.get("task_auto"),
        "output_shape": meta.get("output_shape") or [],
        "batch_size": options.get("batch_size"),
        "batch_size_auto": auto,
        "floor_images": options.get("floor_images", 0),
        "mask_fraction": options.get("mask_fraction"),
        "device": meta.get("device", "cpu"),
        "dtype": meta.get("dtype", "float32"),
        **{k: meta.get(k) for k in ("versions", "wall_time_s", "images_per_s", "transformed_images_per_s")},
        "partial": bool(meta.get("partial", False)),
        "checks": meta.get("checks"),
        "samples": meta.get("samples"),
    }
    run["versions"] = run["versions"] or {}
    upgraded = {k: v for k, v in doc.items() if k != "meta"}
    upgraded.update(
        schema_version=SCHEMA_VERSION, model=meta.get("model") or {"source": "?"}, data=meta.get("data"), group=group
    )
    upgraded["run"] = run
    return upgraded


def non_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """The element rows that measure something: every one but the identity (all of them when it is alone)."""
    rest = frame[frame["label"] != "identity"]
    return rest if len(rest) else frame


def worst_element(frame: pd.DataFrame, metric: str) -> str | None:
    """The one worst element of ``metric``, by the one rule used everywhere (CLI, JSON, report, plugin): among
    the non-identity elements (all of them when the identity is alone), the largest mean error, or the smallest
    mean for a metric where higher is better (agreement, accuracy, IoU); ties go to the first in group order.
    None when the metric is not measured."""
    rest = non_identity(frame)
    if metric not in rest or not rest[metric].notna().any():
        return None
    values = rest[metric]
    at = values.idxmin() if metric in HIGHER_IS_BETTER else values.idxmax()  # the first extreme: group order
    return str(rest.loc[at, "label"])
