"""From the observers of one pass to an :class:`~equiaudit.result.AuditResult`: the element table, the summary,
the intervals and the run information.

The engine hands over its state as a :class:`PassState`; this module needs nothing else of it, so the
dependencies point one way: engine -> assemble -> result.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Protocol

import pandas as pd
import torch

from . import __version__
from .data import AuditData
from .loading import LoadedModel
from .observers import (
    ClassificationSums,
    DenseSums,
    FloorObserver,
    Gallery,
    ImageRecord,
    InputVariation,
    Observer,
    Setup,
    WorstLocator,
)
from .precision import PrecisionFloor
from .result import AuditResult, DataInfo, GroupInfo, ModelInfo, RunInfo, non_identity, record_from, worst_element
from .search import search_results
from .spec import AuditSpec


class PassState(Protocol):
    """What :func:`assemble` reads of the engine's pass."""

    spec: AuditSpec
    setup: Setup | None
    data: AuditData
    observers: list[Observer]
    images: int
    forward_batch: int | None
    device: torch.device
    dtype: torch.dtype

    @property
    def task(self) -> str | None: ...


def summarize(frame: pd.DataFrame, extra: dict[str, float]) -> dict[str, Any]:
    """The summary scalars over the non-identity elements (all of them when the identity is alone)."""
    rest = non_identity(frame)
    out: dict[str, Any] = {}

    def stat(col: str, how: str, name: str | None = None) -> None:
        if col in rest and rest[col].notna().any():
            out[name or f"{col}_{how}"] = float(getattr(rest[col], how)())

    stat("agreement", "mean"), stat("agreement", "min")
    stat("flip_rate", "max")
    for col in ("kl", "max_abs_error"):
        stat(col, "mean"), stat(col, "max")
    # X_mean: mean over elements of the per-element mean; X_worst: the worst element's mean;
    # X_max: the worst single image under the worst element (the max of the element column X_max).
    for col in ("invariance_error", "equivariance_error", "floor"):
        stat(col, "mean"), stat(col, "max", f"{col}_worst"), stat(f"{col}_max", "max", f"{col}_max")
    for col in ("iou_consistency", "iou_truth"):
        stat(col, "mean"), stat(col, "min")
    stat("accuracy_drop", "max")
    key = next((c for c in ("invariance_error", "equivariance_error") if c in rest), None)
    if key is not None:
        out["worst_element"] = worst_element(frame, key)
    if "equivariance_error" in rest and (rest["floor"] > 0).any():
        # Only dense errors and their floor are the same kind of quantity (relative output error).
        ratio = rest["equivariance_error"] / rest["floor"].where(rest["floor"] > 0)
        out["error_to_floor_max"] = float(ratio.max())
    out.update(extra)
    out["exact_group"] = bool(frame["exact"].all())
    return out


def _versions() -> dict[str, str]:
    return {
        "equiaudit": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _input_region(kind: str, setup: Any) -> dict[str, Any]:
    region = None if setup is None else setup.in_region
    if region is None:
        return {"input_region": "none", "input_fraction": 1.0}
    return {"input_region": "disk" if kind == "disk" else "valid", "input_fraction": float(region.float().mean())}


def _precision_floor(obs: PrecisionFloor, confidence: float) -> dict[str, float]:
    """The reduced precision's floor (see :mod:`equiaudit.precision`): mean, max and its bootstrap interval."""
    from .intervals import bootstrap_mean

    out = obs.compute()
    per_image = obs.images().numpy()
    if len(per_image):
        low, high = bootstrap_mean(per_image[:, None], confidence)
        out.update(precision_floor_low=float(low[0]), precision_floor_high=float(high[0]))
    return out


def _intervals(
    frame: pd.DataFrame, summary: dict[str, Any], engine: PassState, records: dict[str, Any], floors: Any
) -> dict[str, Any]:
    """Add ``<metric>_low`` / ``<metric>_high`` to the element table and the summary; return the document's
    ``intervals`` section (confidence, images, the method of each)."""
    from .intervals import BOOTSTRAP, WILSON, bootstrap_mean, wilson

    c = engine.spec.confidence
    methods: dict[str, str] = {}

    def put(name: str, bounds: tuple[Any, Any], method: str) -> None:
        frame[f"{name}_low"], frame[f"{name}_high"] = bounds
        methods[name] = method

    sums = next((o for o in engine.observers if isinstance(o, ClassificationSums)), None)
    if sums is not None:
        n, labelled = float(sums.count), float(sums.labelled)
        put("agreement", wilson(sums.agree.cpu().numpy(), n, c), WILSON)
        if labelled > 0:
            put("accuracy", wilson(sums.correct.cpu().numpy(), labelled, c), WILSON)
            low, high = wilson(float(sums.all_correct), labelled, c)
            summary["worst_case_accuracy_low"], summary["worst_case_accuracy_high"] = float(low), float(high)
            methods["worst_case_accuracy"] = WILSON
    if "error" in records:
        name = "invariance_error" if sums is not None else "equivariance_error"
        put(name, bootstrap_mean(records["error"], c), BOOTSTRAP)
    for name in ("kl", "iou_consistency", "iou_truth"):  # the other means over images
        if name in records:
            put(name, bootstrap_mean(records[name], c), BOOTSTRAP)
    if floors is not None and len(floors):
        put("floor", bootstrap_mean(floors, c), BOOTSTRAP)
    images = int(engine.images)
    return {"confidence": c, "images": images, "floor_images": len(floors), "methods": methods}


def assemble(engine: PassState, loaded: LoadedModel, wall: float, partial: bool) -> AuditResult:
    """The result of a pass so far: every observer's ``compute`` in one typed result."""
    from .transforms import uses_exact_path

    spec, setup, data = engine.spec, engine.setup, engine.data
    grp = spec.parsed_group
    size = setup.in_size if setup is not None else None
    rows = [
        {"id": i, "label": g.label, **g.params(), "exact": uses_exact_path(g, size) if size else g.exact}
        for i, g in enumerate(grp.elements)
    ]
    frame = pd.DataFrame(rows)
    extra: dict[str, float] = {}
    per_class = locations = None
    records: dict[str, Any] = {}
    floors = None
    samples: dict[str, Any] = {}
    floor_count = 0
    for obs in engine.observers:
        if isinstance(obs, (ClassificationSums, DenseSums, FloorObserver)):
            for name, values in obs.compute().items():
                frame[name] = values.numpy()
        if isinstance(obs, (ClassificationSums, DenseSums)):
            extra.update(obs.summary())
        if isinstance(obs, FloorObserver):
            floor_count = int(obs.count)
        if isinstance(obs, ClassificationSums):
            pc = obs.per_class()
            names = data.class_names if data.class_names and len(data.class_names) == obs.num_classes else None
            per_class = {"classes": names or [str(k) for k in range(obs.num_classes)]}
            per_class.update({k: v.numpy().tolist() for k, v in pc.items()})
        if isinstance(obs, WorstLocator):
            locations = [None if loc is None else loc.to_dict() for loc in obs.compute()]
        if isinstance(obs, Gallery) and engine.images:
            samples.update(obs.compute() or {})
        if isinstance(obs, ImageRecord) and engine.images:
            records = obs.compute()
            if spec.samples > 0:  # --samples 0 keeps no per-image material in the result
                samples["records"] = records
        if isinstance(obs, FloorObserver):
            floors = obs.images()
        if isinstance(obs, InputVariation) and engine.images:
            extra["constant_input_fraction"] = obs.compute()
        if isinstance(obs, PrecisionFloor):
            extra.update(_precision_floor(obs, spec.confidence))
    summary = summarize(frame, extra) if engine.observers else {}
    intervals = _intervals(frame, summary, engine, records, floors) if engine.images else None
    search = search_results(engine.observers, summary, intervals, spec) if engine.images else None
    n_img = summary["images"] = engine.images
    d = data.describe()
    run = RunInfo(
        spec=spec.to_dict(),
        task=engine.task,
        task_auto=spec.task == "auto" if engine.task else None,
        output_shape=list(setup.out_shape) if setup else [],
        batch_size=engine.forward_batch,
        batch_size_auto=spec.batch_size is None,
        floor_images=floor_count,
        mask_fraction=float(setup.in_mask.float().mean()) if setup else None,
        **_input_region(spec.input_mask, setup),
        device=str(engine.device),
        dtype=str(engine.dtype).replace("torch.", ""),
        versions=_versions(),
        wall_time_s=wall,
        images_per_s=n_img / wall if wall > 0 else None,
        transformed_images_per_s=n_img * len(grp) / wall if wall > 0 else None,
        partial=partial,
    )
    from .layers import layer_sections
    from .precision import autocast_name

    return AuditResult(
        frame,
        summary,
        record_from(ModelInfo, loaded.describe(), "model"),
        record_from(DataInfo, d, "data"),
        record_from(GroupInfo, grp.describe(), "group"),
        run,
        per_class=per_class,
        locations=locations,
        intervals=intervals,
        samples=samples or None,
        **layer_sections(engine.observers, engine.images, autocast_name(spec.precision) or run.dtype),
        search=search,
    )
