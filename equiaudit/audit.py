"""The audit loop: transform a batch by every element at once, run the model once, undo, score, stream."""

from __future__ import annotations

import heapq
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import __version__
from .data import AuditData, Batch, load_data
from .errors import EquiauditError, InputMismatchError, ScanInterrupted
from .groups import Group, GroupElement, parse_group
from .loading import LoadedModel, load_model, resolve_device
from .metrics import ClassificationMetrics, DenseMetrics, FloorMetric, Metric, binarize
from .result import AuditResult
from .transforms import ElementPlan, check_options, sampling_dtype, uses_exact_path, valid_mask

TASKS = ("auto", "classify", "segment", "dense")
Progress = Callable[[int, int], None]


@dataclass
class AuditOptions:
    """How an audit samples and compares (recorded in the result's ``meta.options``)."""

    interpolation: str = "bilinear"
    padding: str = "zeros"
    mask: str = "auto"
    batch_size: int | None = None  # images per model forward (transformed copies included); None: automatic
    samples: int = 8  # gallery images kept in memory for reports (first N and worst N)
    # A classifier's floor depends on the data alone (resampling the input there and back), so it is estimated
    # on the first N images; a dense model's floor involves its outputs and is measured on every image.
    floor_images: int = 256


def _first_conv_channels(module: nn.Module) -> int | None:
    """``in_channels`` of the first ``Conv2d`` registered; only a hint, since registration order is not always
    the order of use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# An automatic forward batch keeps the largest activation of one forward within this many bytes. On a CPU a
# larger batch is slower per image once its live activations (several times the largest) spill out of the
# caches: the zoo's 0.5M-parameter U-Net at 64x64 px runs 2.2 ms per image at 8 to 16 images (4 MiB here),
# 2.7 ms at 27 and 3.2 ms at 54. On a GPU the budget only guards memory.
AUTO_BATCH_BYTES = {"cpu": 4 << 20, "other": 2 << 30}
AUTO_BATCH_MAX = 256
# Where no submodule's hook fires (TorchScript, traced and exported programs) or some refuse one, the largest
# activation is taken as at least this many times the input.
_GUESSED_EXPANSION = 16
# The probe runs on two images: two, so that a model which squeezes its batch dimension still shows its shape.
_PROBE_IMAGES = 2


def auto_batch_size(activation_bytes_per_image: float, device: torch.device) -> int:
    """Images per forward for a model whose largest activation takes ``activation_bytes_per_image``."""
    budget = AUTO_BATCH_BYTES["cpu" if device.type == "cpu" else "other"]
    fits = int(budget / max(1.0, activation_bytes_per_image) + 1e-9)  # 1e-9: 40 must not round down to 39
    return max(1, min(AUTO_BATCH_MAX, fits))


def _nbytes(value: Any) -> int:
    """Bytes of the largest tensor in a module output (tensors, tuples / lists / dicts of them, e2cnn-style
    wrappers with a ``.tensor``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return max((_nbytes(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((_nbytes(v) for v in value.values()), default=0)
    inner = getattr(value, "tensor", None)
    return _nbytes(inner) if isinstance(inner, torch.Tensor) else 0


def _forward(module: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``module(x)`` in forwards of at most ``batch_size`` images, split evenly (36 rows at 32: 18 + 18)."""
    n = x.shape[0]
    size = -(-n // -(-n // batch_size)) if n else 1
    outs = [module(x[i : i + size]) for i in range(0, n, size)]
    for o in outs:
        if not isinstance(o, torch.Tensor):
            raise InputMismatchError(f"the model returned {type(o).__name__}, not a tensor")
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class Probe(NamedTuple):
    """What the probe learnt about the model on a few real images."""

    task: str
    out_shape: tuple[int, ...]  # per image
    out_dtype: torch.dtype
    activation_bytes: float  # per image, of the largest activation (see :func:`probe`)


def probe(module: nn.Module, data: AuditData, x: torch.Tensor, task: str) -> Probe:
    """Check the model on a few real images before the scan.

    The largest activation is measured with forward hooks on every submodule; where none of them fires
    (TorchScript, traced or exported programs) or some refuse a hook, it is taken as at least
    ``_GUESSED_EXPANSION`` times the input (and at least the output).
    """
    x = x[:_PROBE_IMAGES]
    largest = [0]
    refused = False

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        largest[0] = max(largest[0], _nbytes(output))

    handles = []
    for sub in module.modules():
        if sub is module:  # the root's output is not an inner activation
            continue
        try:
            handles.append(sub.register_forward_hook(record))
        except Exception:  # TorchScript submodules refuse hooks
            refused = True
    try:
        with torch.inference_mode():
            y = _forward(module, x, x.shape[0])
    except EquiauditError:
        raise
    except Exception as exc:
        c = _first_conv_channels(module)
        if c is not None and c != x.shape[1]:
            raise InputMismatchError(
                f"the model fails on {x.shape[1]}-channel input from {data.spec!r} and its first convolution takes "
                f"{c} channel(s); use --channels {c} ({_one_line(exc)})"
            ) from None
        raise InputMismatchError(
            f"the model fails on input of shape {tuple(x.shape)} from {data.spec!r}: {_one_line(exc)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    guess = max(_nbytes(y), _GUESSED_EXPANSION * _nbytes(x))
    activation = max(largest[0], guess) if refused or largest[0] == 0 else max(largest[0], _nbytes(y))
    activation_per_image = activation / x.shape[0]
    if not torch.isfinite(y).all():
        raise InputMismatchError(f"the model outputs NaN or inf on {data.spec!r} (shape {tuple(x.shape)})")
    if y.dim() == 2:
        chosen = "classify"
    elif y.dim() == 4:
        ratio = y.shape[-2] / x.shape[-2]
        # Strided layers on odd sizes round (65 -> 33): allow one pixel either way.
        if abs(x.shape[-1] * ratio - y.shape[-1]) > 1 + 1e-9:
            raise InputMismatchError(
                f"dense output {tuple(y.shape[-2:])} is not proportional to the input "
                f"{tuple(x.shape[-2:])}, so transformations cannot be undone on it"
            )
        chosen = "segment" if data.has_masks else "dense"
    else:
        raise InputMismatchError(f"output shape {tuple(y.shape)} is neither (B, classes) nor (B, C, H, W)")
    if task == "auto":
        return Probe(chosen, tuple(y.shape[1:]), y.dtype, activation_per_image)
    if (task == "classify") != (y.dim() == 2):
        raise InputMismatchError(
            f"--task {task} cannot use output shape {tuple(y.shape)}; it looks like {chosen} (try --task auto)"
        )
    return Probe(task, tuple(y.shape[1:]), y.dtype, activation_per_image)


@dataclass
class _Gallery:
    """First-N and worst-N images with their per-element predictions (bounded memory)."""

    size: int
    first: list[dict[str, Any]] = field(default_factory=list)
    worst: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, offset: int, x: torch.Tensor, score: torch.Tensor, payload: dict[str, torch.Tensor]) -> None:
        if self.size <= 0:
            return
        for b in range(x.shape[0]):
            item = None
            if len(self.first) < self.size or len(self.worst) < self.size or float(score[b]) > self.worst[0][0]:
                item = {"index": offset + b, "x": x[b].float().cpu().numpy(), "score": float(score[b])}
                item.update({k: v[:, b].cpu().numpy() for k, v in payload.items()})
            if item is None:
                continue
            if len(self.first) < self.size:
                self.first.append(item)
            entry = (item["score"], -item["index"], item)
            if len(self.worst) < self.size:
                heapq.heappush(self.worst, entry)
            elif entry[:2] > self.worst[0][:2]:
                heapq.heapreplace(self.worst, entry)

    def export(self) -> dict[str, Any]:
        def stack(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
            return {k: np.stack([it[k] for it in items]) for k in items[0]} if items else {}

        worst = [e[2] for e in sorted(self.worst, key=lambda e: (-e[0], -e[1]))]
        return {"first": stack(self.first), "worst": stack(worst)}


def as_audit_data(data: Any, data_options: dict[str, Any] | None = None) -> AuditData:
    """Accept a spec string (options go to :func:`load_data`), an AuditData, a tensor or ``(x, y[, mask])``."""
    data_options = data_options or {}
    if isinstance(data, AuditData):
        return data
    if isinstance(data, str):
        return load_data(data, **data_options)
    if isinstance(data, torch.Tensor):
        return AuditData.from_tensors(data)
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return AuditData.from_tensors(*data)
    raise EquiauditError(
        f"data must be a spec string, AuditData, a tensor or (x, y[, mask]); got {type(data).__name__}"
    )


def _summary(frame: pd.DataFrame, extra: dict[str, float]) -> dict[str, Any]:
    rest = frame[frame["label"] != "identity"]
    rest = rest if len(rest) else frame
    out: dict[str, Any] = {}

    def stat(col: str, how: str, name: str | None = None) -> None:
        if col in rest and rest[col].notna().any():
            out[name or f"{col}_{how}"] = float(getattr(rest[col], how)())

    for col in ("agreement",):
        stat(col, "mean"), stat(col, "min")
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
    if key is not None and len(rest):
        out["worst_element"] = str(rest.loc[rest[key].idxmax(), "label"])
    if "equivariance_error" in rest and (rest["floor"] > 0).any():
        # Only dense errors and their floor are the same kind of quantity (relative output error).
        ratio = rest["equivariance_error"] / rest["floor"].where(rest["floor"] > 0)
        out["error_to_floor_max"] = float(ratio.max())
    out.update(extra)
    out["exact_group"] = bool(frame["exact"].all())
    return out


def audit(
    model: nn.Module | str | LoadedModel,
    data: Any = "digits",
    group: str | Group = "so2",
    steps: int | None = None,
    *,
    task: str = "auto",
    interpolation: str = "bilinear",
    padding: str = "zeros",
    mask: str = "auto",
    batch_size: int | None = None,
    samples: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    trust: bool = False,
    arch: str | None = None,
    progress: Progress | None = None,
    on_task: Callable[[str, bool], None] | None = None,
    **data_options: Any,
) -> AuditResult:
    """Audit ``model`` on ``data`` under every element of ``group``.

    Args:
        model: an ``nn.Module``, a path or source string (see :func:`equiaudit.loading.load_model`), or a
            :class:`LoadedModel`. Modules are moved to ``device`` / ``dtype`` in place (like ``.to``).
        data: a data spec (see :func:`equiaudit.data.load_data`; extra keyword arguments go there), an
            :class:`AuditData`, a tensor ``x`` or a tuple ``(x, y[, mask])``.
        group, steps: a group spec (see :mod:`equiaudit.groups`).
        task: ``auto`` | ``classify`` | ``segment`` | ``dense``; auto picks from the output shape.
        interpolation, padding, mask: sampling options (see :mod:`equiaudit.transforms`).
        batch_size: images per model forward, transformed copies included. ``None`` sizes it from the model's
            largest activation on a few images (see :data:`AUTO_BATCH_BYTES`), at most 256.
        samples: gallery images kept for reports (first N and worst N).
        device: ``None`` uses the model's device; ``auto`` picks CUDA when present.
        on_task: called once with the chosen task and whether it was chosen automatically.

    Raises:
        ScanInterrupted: when the scan stops part-way; its ``partial`` result holds what was measured.
    """
    if task not in TASKS:
        raise EquiauditError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if samples < 0:
        raise EquiauditError(f"samples must be >= 0, got {samples}")
    if batch_size is not None and batch_size < 1:
        raise EquiauditError(f"batch size must be >= 1, got {batch_size}")
    grp = parse_group(group, steps)
    options = AuditOptions(interpolation, padding, mask, batch_size, samples)
    valid_mask(grp.elements, (3, 3), mask)  # validates the options before any work
    check_options(interpolation, padding)

    if device is None and isinstance(model, nn.Module):  # in-memory modules stay where they are
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, arch=arch, trust=trust, device=None if device is None else resolve_device(device))
    )
    module = loaded.module if loaded.kind == "export" else loaded.module.eval()  # exported graphs have no eval()
    param = next(iter(module.parameters()), None)
    dev = resolve_device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise EquiauditError(f"unknown dtype {dtype!r}; valid: float32, float64, float16, bfloat16")
        dtype = getattr(torch, dtype)
    dt = dtype or (param.dtype if param is not None and param.is_floating_point() else torch.float32)
    module.to(device=dev, dtype=dt)
    dataset = as_audit_data(data, data_options)
    if len(dataset) == 0:
        raise EquiauditError(f"the data {dataset.spec!r} holds no images")

    scan = _Scan(module, dataset, grp.elements, options, task, dev, dt, on_task)
    t0 = time.perf_counter()
    total = len(dataset)

    def build() -> AuditResult:
        return _build_result(grp, loaded, dataset, options, scan, time.perf_counter() - t0, scan.images < total)

    try:
        scan.prepare(dataset.read(0, min(total, _PROBE_IMAGES)).x)
        while scan.images < total:
            scan.step(dataset.read(scan.images, min(total, scan.images + scan.images_per_chunk)))
            if progress is not None:
                progress(scan.images, total)
    except (KeyboardInterrupt, Exception) as exc:
        if scan.images == 0:
            if isinstance(exc, EquiauditError):
                raise
            if isinstance(exc, KeyboardInterrupt):
                raise ScanInterrupted("interrupted before the first batch finished") from exc
            raise EquiauditError(f"scan failed on the first batch: {_one_line(exc)}") from exc
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _one_line(exc)
        raise ScanInterrupted(f"scan stopped after {scan.images} of {total} images: {reason}", partial=build()) from exc
    return build()


class _Scan:
    """One audit's streaming state. :meth:`prepare` probes the model on the first images and sets up the
    forward batch, masks, metrics and prepared transforms; every :meth:`step` then costs one input transform,
    the forwards, the undo of dense outputs and the metric updates."""

    def __init__(
        self,
        module: nn.Module,
        data: AuditData,
        elements: tuple[GroupElement, ...],
        options: AuditOptions,
        task: str,
        device: torch.device,
        dtype: torch.dtype,
        on_task: Callable[[str, bool], None] | None,
    ) -> None:
        self.module, self.data, self.elements, self.options = module, data, elements, options
        self.requested_task = task
        self.device, self.dtype = device, dtype
        self.on_task = on_task
        # The identity's copy would equal x, so its output is the reference itself and is not computed twice.
        self.moved = [i for i, g in enumerate(elements) if not g.is_identity]
        self.forward_batch = options.batch_size  # set by prepare() when None
        self.images = 0
        self.task: str | None = None
        self.out_shape: tuple[int, ...] = ()
        self.in_size: tuple[int, int] | None = None
        self.mask_fraction: float | None = None
        self.metrics: dict[str, Metric] = {}
        self.gallery = _Gallery(options.samples)
        self._inputs: torch.Tensor | None = None  # reused across equal chunks: no fresh allocation per batch
        # Set by prepare(); the dense-only ones stay None for classifiers.
        self.to_inputs: ElementPlan | None = None  # the moved elements on the input
        self.undo: ElementPlan | None = None  # every element's inverse on the output
        self.out_mask: torch.Tensor | None = None
        self.floor_index: list[int] = []  # elements with a nonzero floor (sampled at the floor's size)
        self.floor_rows = torch.zeros(0, dtype=torch.long)
        self.floor_mask: torch.Tensor | None = None
        self.floor_there: ElementPlan | None = None  # dense only: a classifier reads the input buffer's head
        self.floor_back: ElementPlan | None = None

    @property
    def images_per_chunk(self) -> int:
        """Each chunk runs its images once untransformed and once per moved element, in up to four forwards:
        as many as fill them best (forward batch 83, 36 rows per image: 9 images in 4 forwards of 81, not 2
        in one of 72)."""
        rows, fb = len(self.moved) + 1, self.forward_batch
        best_fill, best = 0.0, 1
        for forwards in range(1, 5):
            images = forwards * fb // rows
            fill = images * rows / (forwards * fb)
            if fill > best_fill + 1e-9:
                best_fill, best = fill, images
        return max(1, best)

    def prepare(self, x: torch.Tensor) -> None:
        """Probe the model on the first images ``x`` and set everything up."""
        x = x.to(device=self.device, dtype=self.dtype)
        elems, opts = self.elements, self.options
        found = probe(self.module, self.data, x, self.requested_task)
        self.task, self.out_shape = found.task, found.out_shape
        if self.forward_batch is None:
            self.forward_batch = auto_batch_size(found.activation_bytes, self.device)
        self.in_size = (x.shape[-2], x.shape[-1])
        in_mask = valid_mask(elems, self.in_size, opts.mask, self.device)
        self.mask_fraction = float(in_mask.float().mean())
        if self.on_task is not None:
            self.on_task(self.task, self.requested_task == "auto")
        kw = {
            "interpolation": opts.interpolation,
            "padding": opts.padding,
            "device": self.device,
            "dtype": sampling_dtype(self.dtype),
        }
        # Sampled elements first: the grid_sample result then lands in one slice of the input buffer, and the
        # classifier floor reads that slice as it is.
        self.moved.sort(key=lambda i: uses_exact_path(elems[i], self.in_size))
        self.to_inputs = ElementPlan([elems[i] for i in self.moved], self.in_size, **kw)
        if self.task == "classify":
            self.metrics["cls"] = ClassificationMetrics(len(elems), self.out_shape[0])
            # The floor of a classifier is measured on its input: resampling there is all an invariant model sees.
            floor_size, self.floor_mask = self.in_size, in_mask
        else:
            num_classes = max(2, self.out_shape[0])
            self.metrics["dense"] = DenseMetrics(len(elems), segment=self.task == "segment", num_classes=num_classes)
            out_size = (self.out_shape[-2], self.out_shape[-1])
            self.out_mask = valid_mask(elems, out_size, opts.mask, self.device)
            kw["dtype"] = sampling_dtype(found.out_dtype)  # outputs are undone in their own precision
            self.undo = ElementPlan(elems, out_size, inverse=True, **kw)
            # A dense model's floor is the round trip of its own output, at the output's resolution: what undoing
            # an element costs an exactly equivariant model (for f = identity it is the input's round trip).
            floor_size, self.floor_mask = out_size, self.out_mask
        self.metrics["floor"] = FloorMetric(len(elems))
        # Exact elements are permutations: their round trip is the identity, floor 0.
        self.floor_index = [i for i, g in enumerate(elems) if not uses_exact_path(g, floor_size)]
        self.floor_rows = torch.tensor(self.floor_index, dtype=torch.long)
        # the metrics weight by it: converted once to the dtype it meets, not per batch
        self.floor_mask = self.floor_mask.to(self.dtype if self.task == "classify" else found.out_dtype)
        picked = [elems[i] for i in self.floor_index]
        self.floor_back = ElementPlan(picked, floor_size, inverse=True, **kw)
        if self.task != "classify":  # a classifier's forward half of the round trip is the input buffer's head
            self.floor_there = ElementPlan(picked, floor_size, **kw)

    def step(self, batch: Batch) -> None:
        x = batch.x.to(device=self.device, dtype=self.dtype)
        b, c, h, w = x.shape
        m, n_el = len(self.moved), len(self.elements)
        if self._inputs is None or self._inputs.shape[1:] != x.shape:
            self._inputs = torch.empty((m + 1, b, c, h, w), dtype=x.dtype, device=x.device)
        inputs = self._inputs
        inputs[0] = x
        xm = inputs[1:]
        if m:
            self.to_inputs(x, out=xm)
        with torch.inference_mode():
            y = _forward(self.module, inputs.view((m + 1) * b, c, h, w), self.forward_batch)
        if not torch.isfinite(y).all():
            raise InputMismatchError(f"the model output NaN or inf on images {self.images}..{self.images + b - 1}")
        y = y.reshape(m + 1, b, *y.shape[1:])
        ref = y[0]
        if m == n_el:
            out = y[1:]
        else:
            out = y.new_empty((n_el, *y.shape[1:]))
            out[:] = ref
            if m:
                out[self.moved] = y[1:]
        self._update_floor(x, xm, ref)
        labels = self._labels(batch)
        keep = self.gallery.size > 0  # the gallery's scores and payload cost work only when it is kept
        if self.task == "classify":
            scores = self.metrics["cls"].update(out, ref, labels, details=keep)
            if keep:
                worst = (1 - scores["agreement"]).sum(0) + scores["kl"].mean(0).clamp_max(0.999)
                payload = {
                    "pred": scores["pred"],
                    "confidence": scores["confidence"],
                    "ref_pred": scores["ref_pred"][None],
                    "ref_confidence": scores["ref_confidence"][None],
                }
                if labels is not None:
                    payload["label"] = labels[None]
        else:
            back = self.undo(out)
            truth = self._truth(batch, ref)
            scores = self.metrics["dense"].update(back, ref, self.out_mask, truth)
            if keep:
                worst = scores["equivariance_error"].mean(0)
                payload = {"error_map": (back - ref).abs().mean(2).half()}
                if self.task == "segment":
                    payload["seg"] = binarize(back).to(torch.uint8)
                    payload["ref_seg"] = binarize(ref).to(torch.uint8)[None]
                    if truth is not None:
                        payload["truth"] = truth.to(torch.uint8)[None]
        if keep:
            self.gallery.add(self.images, x, worst, payload)
        self.images += b

    def _update_floor(self, x: torch.Tensor, xm: torch.Tensor, ref: torch.Tensor) -> None:
        floor = self.metrics["floor"]
        if not self.floor_index:
            floor.update(xm[:0], x, self.floor_mask, [])  # counts the images; every floor is 0
            return
        if self.task == "classify":
            if 0 < self.options.floor_images <= self.images:
                return  # the estimate is complete (see AuditOptions.floor_images)
            base, there = x, xm[: len(self.floor_index)]
        else:
            base = ref
            there = self.floor_there(ref)
        floor.update(self.floor_back(there), base, self.floor_mask, self.floor_rows)

    def _labels(self, batch: Batch) -> torch.Tensor | None:
        if batch.y is None or not self.data.has_labels:
            return None
        labels = batch.y.to(self.device)
        if self.task == "classify":
            k = max(2, self.out_shape[0])
            if labels.min() < 0 or labels.max() >= k:
                raise InputMismatchError(
                    f"labels of {self.data.spec!r} run from {int(labels.min())} to {int(labels.max())} but the model "
                    f"has {self.out_shape[0]} output(s); check --data or the model's head"
                )
        return labels

    def _truth(self, batch: Batch, ref: torch.Tensor) -> torch.Tensor | None:
        """Ground-truth label maps at the output's resolution, or None."""
        if batch.mask is None or not self.data.has_masks:
            return None
        m = batch.mask.to(self.device, torch.float32)
        if m.shape[-2:] != ref.shape[-2:]:
            # area pooling keeps the pixel-centre convention when the output is smaller (nearest would shift)
            mode = "area" if m.shape[-1] > ref.shape[-1] else "nearest"
            m = torch.nn.functional.interpolate(m, size=ref.shape[-2:], mode=mode)
        return (m[:, 0] > 0.5).long()


def _build_result(
    grp: Group,
    loaded: LoadedModel,
    data: AuditData,
    options: AuditOptions,
    scan: _Scan,
    wall: float,
    partial: bool,
) -> AuditResult:
    size = scan.in_size
    rows = [
        {"id": i, "label": g.label, **g.params(), "exact": uses_exact_path(g, size) if size else g.exact}
        for i, g in enumerate(grp.elements)
    ]
    frame = pd.DataFrame(rows)
    extra: dict[str, float] = {}
    per_class = None
    for key, metric in scan.metrics.items():
        for name, values in metric.compute().items():
            frame[name] = values.numpy()
        if hasattr(metric, "summary"):
            extra.update(metric.summary())
        if key == "cls":
            pc = metric.per_class()
            names = data.class_names if data.class_names and len(data.class_names) == metric.num_classes else None
            per_class = {"classes": names or [str(k) for k in range(metric.num_classes)]}
            per_class.update({k: v.numpy().tolist() for k, v in pc.items()})
    summary = _summary(frame, extra) if scan.metrics else {}
    n_img = summary["images"] = scan.images
    meta = {
        "group": grp.describe(),
        "model": loaded.describe(),
        "data": data.describe(),
        "task": scan.task,
        "task_auto": scan.requested_task == "auto" if scan.task else None,
        "output_shape": list(scan.out_shape),
        "options": {
            "interpolation": options.interpolation,
            "padding": options.padding,
            "mask": options.mask,
            "batch_size": scan.forward_batch,
            "batch_size_auto": options.batch_size is None,
            "floor_images": int(scan.metrics["floor"].count) if "floor" in scan.metrics else 0,
            "mask_fraction": scan.mask_fraction,
        },
        "versions": {
            "equiaudit": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "device": str(scan.device),
        "dtype": str(scan.dtype).replace("torch.", ""),
        "wall_time_s": wall,
        "images_per_s": n_img / wall if wall > 0 else None,
        "transformed_images_per_s": n_img * len(grp) / wall if wall > 0 else None,
        "partial": partial,
    }
    samples = scan.gallery.export() if scan.gallery.size > 0 and n_img else None
    return AuditResult(frame, summary, meta, per_class, samples)
