"""Observers: everything the audit measures, fed once per batch by the engine (:mod:`equiaudit.engine`).

In the style of torchmetrics, an observer is state + :meth:`~Observer.update` + :meth:`~Observer.compute` +
:meth:`~Observer.reset`; each state declares how two partial states combine (``sum``, ``max``, ``min``,
``cat``), so shards of one audit merge exactly (:meth:`~Observer.merge`). States live on the audit's device.

The engine runs the model once per batch and builds one :class:`ObservedBatch`: the images, their transformed
copies, the outputs, the undone outputs, the compared region and the per-image scores. Nothing else runs the
model or re-applies a transform.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .groups import GroupElement
from .metrics import output_error

REDUCTIONS = ("sum", "max", "min", "cat")
# Gallery views (the transformed inputs as the model saw them) are kept at most this many pixels on a side.
VIEW_MAX_SIDE = 96


@dataclass
class Setup:
    """What observers learn once the engine has probed the model (see :meth:`Observer.setup`)."""

    task: str  # classify | segment | dense
    elements: tuple[GroupElement, ...]
    moved: list[int]  # element indices of the transformed copies in ObservedBatch.inputs, in that order
    in_size: tuple[int, int]
    out_shape: tuple[int, ...]  # per image
    out_dtype: torch.dtype
    device: torch.device
    dtype: torch.dtype
    interpolation: str
    padding: str
    mask: str
    in_mask: torch.Tensor  # (H, W) region compared at the input's resolution
    in_region: torch.Tensor | None  # (H, W) region inputs are restricted to before any element (None: all)
    out_mask: torch.Tensor | None  # (h, w) at the output's resolution (dense tasks)
    num_classes: int  # classes of the output (>= 2)
    floor_images: int
    floor_rows: list[int] = field(default_factory=list)  # elements of ObservedBatch.floor_out's rows (sampled)


@dataclass
class ObservedBatch:
    """One batch as the engine measured it. ``G`` elements in group order, ``B`` images, ``M`` moved ones."""

    offset: int  # index of the first image in the data
    x: torch.Tensor  # (B, C, H, W) untransformed (restricted to Setup.in_region when there is one)
    inputs: torch.Tensor  # (M, B, C, H, W) the transformed copies, element order Setup.moved
    ref: torch.Tensor  # f(x)
    outputs: torch.Tensor  # (G, B, ...) f(T_g x); the identity's row is ref
    undone: torch.Tensor | None  # (G, B, C, h, w) T_g^-1 f(T_g x) for dense outputs
    labels: torch.Tensor | None  # (B,)
    truth: torch.Tensor | None  # (B, h, w) label maps at the output's resolution
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # metrics.classify_scores / dense_scores
    # The floor: outputs of the round trip T_g^-1 T_g under each sampled element (Setup.floor_rows) and what
    # they are compared with: for a classifier f(T_g^-1 T_g x) against f(x) on the first floor_images images,
    # for a dense model T_g^-1 T_g f(x) against f(x) on every image.
    floor_out: torch.Tensor | None = None  # (S, B_f, ...)
    floor_ref: torch.Tensor | None = None  # (B_f, ...)
    # --layers: each chosen module's outputs of this chunk, rows as the forwards' ((M + 1) * B, ...), see
    # equiaudit.layers; --lie: the per-image Lie derivatives, see equiaudit.lie.
    layers: dict[str, torch.Tensor] | None = None
    lie: dict[str, dict[str, torch.Tensor]] | None = None
    # --precision bf16 / fp16 / tf32: the exact fp32 output on the first images of the floor (equiaudit.precision)
    precision_ref: torch.Tensor | None = None  # (B_p, ...)

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def error(self) -> torch.Tensor:
        """``(G, B)`` the headline per-image error: invariance error (logits) or equivariance error (maps)."""
        return self.scores["invariance_error" if "invariance_error" in self.scores else "equivariance_error"]


class Observer:
    """Reducible state fed by the engine. Subclasses declare states in :meth:`setup` with :meth:`add_state`."""

    name = "observer"

    def __init__(self) -> None:
        self._reductions: dict[str, str] = {}
        self._defaults: dict[str, Any] = {}

    def add_state(self, name: str, default: torch.Tensor | list, reduce: str) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduce!r}; valid: {', '.join(REDUCTIONS)}")
        if (reduce == "cat") != isinstance(default, list):
            raise ValueError(f"state {name!r}: 'cat' states start as a list, the others as a tensor")
        self._reductions[name] = reduce
        self._defaults[name] = default
        setattr(self, name, list(default) if isinstance(default, list) else default.clone())

    def setup(self, setup: Setup) -> None:
        """Called once before the first batch."""

    def update(self, batch: ObservedBatch) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        raise NotImplementedError

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, list(default) if isinstance(default, list) else default.clone())

    def snapshot(self) -> dict[str, Any]:
        """A copy of the states (lists are copied, not their tensors, which updates never modify in place)."""
        return {name: (list(v) if isinstance(v, list) else v.clone()) for name in self._reductions
                for v in (getattr(self, name),)}  # fmt: skip

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Go back to a :meth:`snapshot`."""
        for name, value in snapshot.items():
            setattr(self, name, value)

    def merge(self, other: Observer) -> Observer:
        """Fold another shard's state into this one: sums add, maxima and minima combine, lists concatenate."""
        for name, how in self._reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if how == "cat":
                setattr(self, name, mine + theirs)
                continue
            theirs = theirs.to(mine.device)
            combined = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}[how](mine, theirs)
            setattr(self, name, combined)
        return self


def _zeros(device: torch.device, *shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


# ---- element metrics ----------------------------------------------------------------------------------------


class ClassificationSums(Observer):
    """Per-element sums of the classifier scores (agreement, KL, invariance error, accuracy) and per class."""

    name = "classify"

    def setup(self, setup: Setup) -> None:
        g, k, dev = len(setup.elements), setup.num_classes, setup.device
        self.num_classes = k
        for name in ("count", "labelled", "correct_ref", "all_correct"):
            self.add_state(name, _zeros(dev), "sum")
        for name in ("agree", "kl_sum", "err_sum", "correct"):
            self.add_state(name, _zeros(dev, g), "sum")
        self.add_state("err_max", _zeros(dev, g), "max")
        self.add_state("class_count", _zeros(dev, k), "sum")  # images per true class
        self.add_state("class_correct", _zeros(dev, g, k), "sum")  # correct per element and true class
        self.add_state("pred_count", _zeros(dev, k), "sum")  # images per reference prediction
        self.add_state("class_agree", _zeros(dev, g, k), "sum")  # agreement per element and reference class

    def update(self, batch: ObservedBatch) -> None:
        s = batch.scores
        per_image = torch.stack([s["agreement"], s["kl"], s["invariance_error"]]).double()
        sums = per_image.sum(-1)
        self.count += batch.size
        self.agree += sums[0]
        self.kl_sum += sums[1]
        self.err_sum += sums[2]
        self.err_max = torch.maximum(self.err_max, per_image[2].amax(-1))
        ones = per_image.new_ones(batch.size)
        self.pred_count.index_add_(0, s["ref_pred"], ones)  # not bincount: on CUDA it waits to size its output
        self.class_agree.index_add_(1, s["ref_pred"], per_image[0])
        if "correct" in s:
            correct, labels = s["correct"], batch.labels
            self.labelled += batch.size
            self.correct += correct.sum(-1)
            self.correct_ref += s["ref_correct"].sum()
            self.all_correct += (correct.all(0) & s["ref_correct"]).sum()
            self.class_count.index_add_(0, labels, ones)
            self.class_correct.index_add_(1, labels, correct.double())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        res = {
            "agreement": self.agree / n,
            "flip_rate": 1 - self.agree / n,
            "kl": self.kl_sum / n,
            "invariance_error": self.err_sum / n,
            "invariance_error_max": self.err_max,
        }
        if self.labelled > 0:
            acc = self.correct / self.labelled
            res.update(accuracy=acc, accuracy_drop=self.correct_ref / self.labelled - acc)
        return {k: v.cpu() for k, v in res.items()}

    def summary(self) -> dict[str, float]:
        """Scalars over the group (reference accuracy, mean / worst-case accuracy)."""
        if not self.labelled > 0:
            return {}
        acc = self.correct / self.labelled
        return {
            "accuracy_reference": float(self.correct_ref / self.labelled),
            "accuracy_mean": float(acc.mean()),
            "accuracy_min": float(acc.min()),
            "worst_case_accuracy": float(self.all_correct / self.labelled),
        }

    def per_class(self) -> dict[str, torch.Tensor]:
        """``(G, K)`` accuracy per element and true class, and agreement per element and reference class."""
        res = {"agreement": self.class_agree / self.pred_count.clamp_min(1), "support_pred": self.pred_count}
        if self.labelled > 0:
            res.update(accuracy=self.class_correct / self.class_count.clamp_min(1), support=self.class_count)
        return {k: v.cpu() for k, v in res.items()}


class DenseSums(Observer):
    """Per-element sums of the dense scores: equivariance error, largest difference, IoU consistency and truth."""

    name = "dense"

    def setup(self, setup: Setup) -> None:
        g, dev = len(setup.elements), setup.device
        self.segment = setup.task == "segment"
        for name in ("count", "truth_count", "truth_ref_sum"):
            self.add_state(name, _zeros(dev), "sum")
        for name in ("err_sum", "iou_sum", "truth_sum"):
            self.add_state(name, _zeros(dev, g), "sum")
        for name in ("err_max", "abs_max"):
            self.add_state(name, _zeros(dev, g), "max")

    def update(self, batch: ObservedBatch) -> None:
        s = batch.scores
        err = s["equivariance_error"].double()
        self.count += batch.size
        self.err_sum += err.sum(-1)
        self.err_max = torch.maximum(self.err_max, err.amax(-1))
        self.abs_max = torch.maximum(self.abs_max, s["max_abs_error"].amax(-1).double())
        if "iou_consistency" in s:
            self.iou_sum += s["iou_consistency"].sum(-1)
        if "iou_truth" in s:
            self.truth_count += batch.size
            self.truth_sum += s["iou_truth"].sum(-1)
            self.truth_ref_sum += s["ref_iou_truth"].sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        res = {"equivariance_error": self.err_sum / n, "equivariance_error_max": self.err_max}
        res["max_abs_error"] = self.abs_max
        if self.segment:
            res["iou_consistency"] = self.iou_sum / n
            if self.truth_count > 0:
                res["iou_truth"] = self.truth_sum / self.truth_count
        return {k: v.cpu() for k, v in res.items()}

    def summary(self) -> dict[str, float]:
        if self.segment and self.truth_count > 0:
            return {"iou_truth_reference": float(self.truth_ref_sum / self.truth_count)}
        return {}


# ---- the interpolation floor --------------------------------------------------------------------------------


class FloorObserver(Observer):
    """Interpolation floor per element: what resampling alone costs, in the units of the error it is compared
    with, mean and max over the images, and per image (for its interval).

    A classifier's floor is the relative change of its centred logits when its input is only resampled there
    and back, ``||c(f(T_g^-1 T_g x)) - c(f(x))|| / ||c(f(x))||`` (first ``floor_images`` images); a dense
    model's is the round trip of its output, ``||T_g^-1 T_g f(x) - f(x)|| / ||f(x)||`` inside the compared
    region (every image). The engine computes both round trips in its one pass (``ObservedBatch.floor_out``).
    Exact elements are permutations whose round trip is the identity: floor 0.
    """

    name = "floor"

    def setup(self, setup: Setup) -> None:
        self.classify = setup.task == "classify"
        self.mask = None if self.classify else setup.out_mask.to(setup.out_dtype)
        g = len(setup.elements)
        self.rows = torch.tensor(setup.floor_rows, dtype=torch.long, device=setup.device)
        self.num_elements = g
        self.add_state("count", _zeros(setup.device), "sum")
        self.add_state("floor_sum", _zeros(setup.device, g), "sum")
        self.add_state("floor_max", _zeros(setup.device, g), "max")
        self.add_state("per_image", [], "cat")  # (B_f, G) per batch, float32 on the host

    def update(self, batch: ObservedBatch) -> None:
        ref = batch.floor_ref
        if ref is None or ref.shape[0] == 0:
            return
        self.count += ref.shape[0]
        per_image = torch.zeros((ref.shape[0], self.num_elements), dtype=torch.float64, device=ref.device)
        if len(self.rows):
            err = output_error(batch.floor_out, ref, self.classify, self.mask).double()
            self.floor_sum[self.rows] += err.sum(-1)
            self.floor_max[self.rows] = torch.maximum(self.floor_max[self.rows], err.amax(-1))
            per_image[:, self.rows] = err.T
        self.per_image.append(per_image.float())  # on the device until the end

    def compute(self) -> dict[str, torch.Tensor]:
        return {"floor": (self.floor_sum / self.count.clamp_min(1)).cpu(), "floor_max": self.floor_max.cpu()}

    def images(self) -> np.ndarray:
        """``(N_f, G)`` the floor of every image it was measured on."""
        if not self.per_image:
            return np.zeros((0, self.num_elements), dtype=np.float32)
        return torch.cat(self.per_image).cpu().numpy()


# ---- where the errors are -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where an element's largest error is: the image and the output entry with the largest difference.

    ``index`` is ``(class,)`` for logits and ``(channel, y, x)`` for dense outputs (output pixel grid);
    ``output`` is the output on the transformed image there (dense outputs: undone), ``reference`` the output on
    the image itself, ``error`` the image's error under the element.
    """

    image: int
    index: tuple[int, ...]
    output: float
    reference: float
    error: float = float("nan")

    def __str__(self) -> str:
        if len(self.index) == 1:
            where = f"logit {self.index[0]}"
        else:
            c, y, x = self.index
            where = f"channel {c}, pixel (y={y}, x={x})"
        return f"image {self.image}, {where}: {self.output:.6g} vs {self.reference:.6g} untransformed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "index": list(self.index),
            "output": self.output,
            "reference": self.reference,
            "error": self.error,
        }


class WorstLocator(Observer):
    """Per element, the image with the largest error and, in it, the output entry that differs most.

    Ties go to the earlier image (and the earlier entry), so the answer does not depend on the batch size.
    """

    name = "locate"

    def setup(self, setup: Setup) -> None:
        g, dev = len(setup.elements), setup.device
        self.out_shape = setup.out_shape
        self.mask = None if setup.out_mask is None else setup.out_mask.to(setup.out_dtype)
        self.add_state("error", torch.full((g,), -1.0, dtype=torch.float64, device=dev), "max")
        self.add_state("image", torch.zeros(g, dtype=torch.long, device=dev), "max")
        self.add_state("entry", torch.zeros(g, dtype=torch.long, device=dev), "max")
        self.add_state("values", torch.zeros((g, 2), dtype=torch.float64, device=dev), "max")

    def update(self, batch: ObservedBatch) -> None:
        err = batch.error.double()  # (G, B)
        best, b = err.max(-1)  # the first maximum: the earliest image
        out = batch.outputs if batch.undone is None else batch.undone
        rows = torch.arange(out.shape[0], device=out.device)
        picked, ref = out[rows, b], batch.ref[b]  # (G, ...)
        diff = (picked - ref).abs()
        if self.mask is not None:
            diff = diff * self.mask
        entry = diff.flatten(1).argmax(-1)
        at = entry[:, None]
        values = torch.stack([picked.flatten(1).gather(1, at)[:, 0], ref.flatten(1).gather(1, at)[:, 0]], -1)
        better = best > self.error  # strictly: an equal error later in the data does not replace the first
        self.error = torch.where(better, best, self.error)
        self.image = torch.where(better, b + batch.offset, self.image)
        self.entry = torch.where(better, entry, self.entry)
        self.values = torch.where(better[:, None], values.double(), self.values)

    def merge(self, other: Observer) -> Observer:
        assert isinstance(other, WorstLocator)
        theirs = other.error.to(self.error.device)
        # the other shard wins on a larger error, or an equal one on an earlier image
        better = (theirs > self.error) | ((theirs == self.error) & (other.image.to(self.image.device) < self.image))
        for name in ("error", "image", "entry", "values"):
            mine, t = getattr(self, name), getattr(other, name).to(self.error.device)
            setattr(self, name, torch.where(better if mine.dim() == 1 else better[:, None], t, mine))
        return self

    def compute(self) -> list[Location | None]:
        found: list[Location | None] = []
        shape = self.out_shape
        for g in range(self.error.shape[0]):
            if float(self.error[g]) < 0:
                found.append(None)
                continue
            index = tuple(int(i) for i in np.unravel_index(int(self.entry[g]), shape))
            out, ref = (float(v) for v in self.values[g])
            found.append(Location(int(self.image[g]), index, out, ref, float(self.error[g])))
        return found


class ImageRecord(Observer):
    """A compact per-image record: the headline error of every image under every element (``(N, G)``), the
    other per-image means (KL for classifiers, IoU consistency and, with masks, IoU against the truth for
    segmentation), and for classifiers the predicted class and, with labels, whether it is right. For intervals,
    correctness matrices and per-image analysis; float32 / int16 / bool, so 10,000 images x 36 elements take a
    few MB."""

    name = "records"
    FIELDS = ("index", "error", "kl", "iou_consistency", "iou_truth", "pred", "correct")

    def setup(self, setup: Setup) -> None:
        self.classify = setup.task == "classify"
        for name in self.FIELDS:
            self.add_state(name, [], "cat")

    def update(self, batch: ObservedBatch) -> None:
        s = batch.scores
        # on the device until compute(): no copy (and no wait) per batch
        self.index.append(torch.arange(batch.offset, batch.offset + batch.size))
        self.error.append(batch.error.T.float())
        for name in ("kl", "iou_consistency", "iou_truth"):
            if name in s:
                getattr(self, name).append(s[name].T.float())
        if self.classify:
            self.pred.append(s["pred"].T.to(torch.int16))
            if "correct" in s:
                self.correct.append(s["correct"].T)

    def compute(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.FIELDS:
            parts = getattr(self, name)
            if parts:
                out[name] = torch.cat(parts).cpu().numpy()
        if "index" in out:  # shards may arrive in any order
            order = np.argsort(out["index"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out


class InputVariation(Observer):
    """How much of the compared input region varies across the data: per pixel the smallest and largest value
    over the images (and channels). A pixel that never changes cannot reveal whether the model depends on it, so
    a large constant region limits what an audit on this data can show (digits have black corners; noise has
    none)."""

    name = "variation"

    def setup(self, setup: Setup) -> None:
        region = setup.in_mask if setup.in_region is None else setup.in_mask & setup.in_region
        self.region = region
        h, w = setup.in_size
        self.add_state("lo", torch.full((h, w), float("inf"), dtype=torch.float64, device=setup.device), "min")
        self.add_state("hi", torch.full((h, w), float("-inf"), dtype=torch.float64, device=setup.device), "max")

    def update(self, batch: ObservedBatch) -> None:
        x = batch.x.double()
        self.lo = torch.minimum(self.lo, x.amin(dim=(0, 1)))
        self.hi = torch.maximum(self.hi, x.amax(dim=(0, 1)))

    def compute(self) -> float:
        """The fraction of the compared input pixels whose value is the same in every image."""
        constant = (self.hi - self.lo <= 1e-6 * self.hi.abs().clamp_min(1.0)) & self.region
        return float(constant.sum() / self.region.sum().clamp_min(1))


# ---- the gallery --------------------------------------------------------------------------------------------


def _view(x: torch.Tensor) -> torch.Tensor:
    """Inputs ``(..., C, H, W)`` as a gallery shows them: at most ``VIEW_MAX_SIDE`` on a side (area average),
    float16."""
    h, w = x.shape[-2:]
    side = max(h, w)
    if side > VIEW_MAX_SIDE:
        size = (max(1, round(h * VIEW_MAX_SIDE / side)), max(1, round(w * VIEW_MAX_SIDE / side)))
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:]).float()
        x = F.interpolate(flat, size=size, mode="area").reshape(*lead, x.shape[-3], *size)
    return x.half()


class Gallery(Observer):
    """The first N and the worst N images with everything a report shows of them: the transformed inputs as the
    model saw them (``views``, ``(G, C, h, w)``), per-element predictions or maps and scores. Bounded memory.

    The selection stays on the model's device during the pass: each chunk's candidates are ranked there (score
    descending, then data order) and only the selected images' material is gathered, so a chunk costs no host
    copy and no wait. ``first`` / ``worst`` (host lists of items, the worst as a heap of ``(score, -index,
    item)``) are built from the device state when read."""

    name = "gallery"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def setup(self, setup: Setup) -> None:
        self.task, self.moved = setup.task, setup.moved
        self.out_mask = setup.out_mask
        self._moved = torch.tensor(setup.moved, dtype=torch.long, device=setup.device)
        self.reset()

    def reset(self) -> None:
        self._first: list[dict[str, Any]] = []  # host items
        self._worst: list[tuple[float, int, dict[str, Any]]] = []  # host heap
        self._first_dev: list[dict[str, torch.Tensor]] = []  # device blocks of stacked items, in data order
        self._worst_dev: dict[str, torch.Tensor] | None = None  # stacked, best first
        self._counted = 0  # images in _first and _first_dev

    @property
    def first(self) -> list[dict[str, Any]]:
        self._flush()
        return self._first

    @first.setter
    def first(self, items: list[dict[str, Any]]) -> None:
        self._first, self._first_dev, self._counted = list(items), [], len(items)

    @property
    def worst(self) -> list[tuple[float, int, dict[str, Any]]]:
        self._flush()
        return self._worst

    @worst.setter
    def worst(self, entries: list[tuple[float, int, dict[str, Any]]]) -> None:
        self._worst, self._worst_dev = list(entries), None
        heapq.heapify(self._worst)

    def snapshot(self) -> dict[str, Any]:
        """The states as they are (device tensors are replaced by updates, never modified): no copy, no wait."""
        return {
            "first": list(self._first), "worst": list(self._worst), "first_dev": list(self._first_dev),
            "worst_dev": self._worst_dev, "counted": self._counted,
        }  # fmt: skip

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._first, self._worst = list(snapshot["first"]), list(snapshot["worst"])
        self._first_dev, self._worst_dev = list(snapshot["first_dev"]), snapshot["worst_dev"]
        self._counted = snapshot["counted"]

    def _payload(self, batch: ObservedBatch, j: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(k, G, ...)`` or ``(k, 1, ...)`` tensors of the images ``j`` of the chunk."""
        s = batch.scores
        if self.task == "classify":
            out = {"pred": s["pred"][:, j], "confidence": s["confidence"][:, j]}
            out.update(ref_pred=s["ref_pred"][j][None], ref_confidence=s["ref_confidence"][j][None])
            if batch.labels is not None:
                out["label"] = batch.labels[j][None]
        else:
            error_map = (batch.undone[:, j] - batch.ref[j]).abs().mean(2).half()
            out = {"error_map": error_map, "error": s["equivariance_error"][:, j]}
            if self.task == "segment":
                out.update(seg=s["seg"][:, j].to(torch.uint8), ref_seg=s["ref_seg"][j].to(torch.uint8)[None])
                out["iou_consistency"] = s["iou_consistency"][:, j]
                if batch.truth is not None:
                    out["truth"] = batch.truth[j].to(torch.uint8)[None]
        return {k: v.transpose(0, 1) for k, v in out.items()}

    def _views(self, batch: ObservedBatch, j: torch.Tensor) -> torch.Tensor:
        """``(k, G, C, h, w)``: images ``j`` under every element, read from the engine's input buffer."""
        x = batch.x[j]
        views = x[:, None].repeat(1, len(batch.outputs), 1, 1, 1)
        if self.moved:
            views[:, self._moved] = batch.inputs[:, j].transpose(0, 1)
        return _view(views)

    def _items(self, batch: ObservedBatch, j: torch.Tensor, score: torch.Tensor) -> dict[str, torch.Tensor]:
        """The chunk's images ``j`` as stacked items (keys in the order of a host item)."""
        items = {"index": batch.offset + j, "x": batch.x[j].float(), "score": score[j], "views": self._views(batch, j)}
        items.update(self._payload(batch, j))
        return items

    def update(self, batch: ObservedBatch) -> None:
        if self.size <= 0:
            return
        if self.task == "classify":
            score = (1 - batch.scores["agreement"]).sum(0) + batch.scores["kl"].mean(0).clamp_max(0.999)
        else:
            score = batch.scores["equivariance_error"].mean(0)
        score = score.double()
        b = batch.size
        if self._counted < self.size:
            k = min(self.size - self._counted, b)
            self._first_dev.append(self._items(batch, torch.arange(k, device=score.device), score))
            self._counted += k
        self._select_worst(batch, score)

    def _select_worst(self, batch: ObservedBatch, score: torch.Tensor) -> None:
        """Keep the ``size`` best of the kept worst and the chunk's images, on the device."""
        old, b = self._worst_dev, batch.size
        n_old = 0 if old is None else old["score"].shape[0]
        index = batch.offset + torch.arange(b, device=score.device)
        cand_score = score if old is None else torch.cat([old["score"], score])
        cand_index = index if old is None else torch.cat([old["index"], index])
        by_index = torch.argsort(cand_index, stable=True)
        by_score = torch.argsort(cand_score[by_index], descending=True, stable=True)
        pick = by_index[by_score][: min(self.size, n_old + b)]
        fresh = self._items(batch, (pick - n_old).clamp(0, b - 1), score)
        if old is None:
            self._worst_dev = fresh
            return
        kept = pick < n_old
        from_old = {k: v[pick.clamp(max=n_old - 1)] for k, v in old.items()}
        self._worst_dev = {
            k: torch.where(kept.view(-1, *[1] * (v.dim() - 1)), from_old[k], v) for k, v in fresh.items()
        }

    def _flush(self) -> None:
        """Move the device state into the host lists (one copy, at the end of the pass)."""
        for block in self._first_dev:
            self._first += _host_items(block)
        self._first_dev = []
        if self._worst_dev is not None:
            entries = [(it["score"], -it["index"], it) for it in _host_items(self._worst_dev)]
            self._worst = heapq.nlargest(self.size, self._worst + entries, key=lambda e: e[:2])
            heapq.heapify(self._worst)
            self._worst_dev = None

    def merge(self, other: Observer) -> Observer:
        assert isinstance(other, Gallery)
        firsts = sorted(self.first + other.first, key=lambda it: it["index"])
        self.first = firsts[: self.size]
        self.worst = heapq.nlargest(self.size, self.worst + other.worst, key=lambda e: e[:2])
        return self

    def compute(self) -> dict[str, Any] | None:
        if self.size <= 0 or not self.first:
            return None

        def stack(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
            return {k: np.stack([it[k] for it in items]) for k in items[0]} if items else {}

        worst = [e[2] for e in sorted(self.worst, key=lambda e: (-e[0], -e[1]))]
        out: dict[str, Any] = {"first": stack(self.first), "worst": stack(worst)}
        if self.out_mask is not None:
            out["region"] = {"mask": self.out_mask.cpu().numpy()}
        return out


def _host_items(block: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Stacked device items as host items: ``index`` an int, ``score`` a float, the rest arrays."""
    host = {k: v.cpu().numpy() for k, v in block.items()}
    items = []
    for i in range(len(host["index"])):
        item = {k: v[i] for k, v in host.items()}
        item["index"], item["score"] = int(item["index"]), float(item["score"])
        items.append(item)
    return items


def default_observers(samples: int) -> list[Observer]:
    """What every audit measures besides the element metrics (``samples`` 0: no gallery)."""
    gallery = [Gallery(samples)] if samples > 0 else []
    return [FloorObserver(), WorstLocator(), ImageRecord(), InputVariation(), *gallery]


def element_observer(task: str) -> Observer:
    return ClassificationSums() if task == "classify" else DenseSums()
