"""Streaming equivariance metrics: sums, counts and maxima per group element (O(1) memory in images).

Each formula exists once, as a per-image function (``relative_error``, ``kl_divergence``, ``iou``...). The metric
classes hold only reducible state (``sum`` or ``max``), in the style of torchmetrics, so shards merge exactly
(:meth:`Metric.merge`) and processes reduce with :meth:`Metric.sync`.

Notation: ``ref = f(x)`` on the untransformed batch; ``out[g]`` is the model's output on ``T_g x`` (invariance),
or ``T_g^-1 f(T_g x)`` (equivariance, undone at the output's resolution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-12


# ---- per-image formulas -------------------------------------------------------------------------------------


def relative_error(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``||out - ref|| / ||ref||`` per image over all trailing dims (optionally inside a broadcastable mask).

    ``out`` is ``(..., B, *D)`` and ``ref`` ``(B, *D)``; returns ``(..., B)``.
    """
    diff = out - ref
    if mask is not None:
        m = mask.to(ref.dtype)
        diff, ref = diff * m, ref * m
    dims = tuple(range(-(ref.dim() - 1), 0)) if ref.dim() > 1 else None
    num = torch.linalg.vector_norm(diff, dim=dims) if dims else diff.abs()
    den = torch.linalg.vector_norm(ref, dim=dims) if dims else ref.abs()
    return num / den.clamp_min(_EPS)


def kl_divergence(out_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(ref) || softmax(out))`` per image in nats: ``(..., B, K)`` -> ``(..., B)``."""
    log_p = F.log_softmax(ref_logits, dim=-1)
    log_q = F.log_softmax(out_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)


def binarize(logits: torch.Tensor) -> torch.Tensor:
    """Segmentation map from ``(..., C, H, W)`` logits: ``logit > 0`` (sigmoid > 0.5) for C == 1, else argmax."""
    if logits.shape[-3] == 1:
        return (logits[..., 0, :, :] > 0).long()
    # argmax over a middle dimension is ~30x slower on CPU than over a contiguous last one (same result, ties too)
    return logits.movedim(-3, -1).contiguous().argmax(dim=-1)


def iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image IoU of label maps ``(..., H, W)``: foreground IoU when binary, else the mean over the classes
    present in either map. An image where both maps are empty scores 1."""
    keep = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.bool().expand_as(pred)
    classes = [1] if num_classes <= 2 else list(range(num_classes))
    scores, present = [], []
    for c in classes:
        a, b = (pred == c) & keep, (target == c) & keep
        inter = (a & b).sum(dim=(-2, -1)).double()
        union = (a | b).sum(dim=(-2, -1)).double()
        scores.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
        present.append((union > 0).double())
    s, p = torch.stack(scores), torch.stack(present)
    if num_classes <= 2:
        return s[0]
    return torch.where(p.sum(0) > 0, (s * p).sum(0) / p.sum(0).clamp_min(1), torch.ones_like(s[0]))


# ---- reducible state ----------------------------------------------------------------------------------------


class Metric:
    """State + ``update`` + ``compute`` + ``merge``; every state declares its reduction (``sum`` | ``max``)."""

    def __init__(self) -> None:
        self._reductions: dict[str, str] = {}

    def add_state(self, name: str, default: torch.Tensor, reduce: str) -> None:
        if reduce not in ("sum", "max"):
            raise ValueError(f"unknown reduction {reduce!r}")
        self._reductions[name] = reduce
        setattr(self, name, default.clone())

    def state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._reductions}

    def merge(self, other: Metric) -> Metric:
        """Fold another shard's state into this one (exact: sums add, maxima take the max)."""
        for name, how in self._reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name).to(getattr(self, name).device)
            setattr(self, name, mine + theirs if how == "sum" else torch.maximum(mine, theirs))
        return self

    def sync(self) -> None:
        """All-reduce the state across ``torch.distributed`` processes, if a process group is initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for name, how in self._reductions.items():
            dist.all_reduce(getattr(self, name), op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX)


def _zeros(n: int, *shape: int) -> torch.Tensor:
    return torch.zeros((n, *shape), dtype=torch.float64)


class FloorMetric(Metric):
    """Interpolation floor per element: ``||T_g^-1 T_g x - x|| / ||x||`` inside the mask, mean and max."""

    def __init__(self, num_elements: int) -> None:
        super().__init__()
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("floor_sum", _zeros(num_elements), "sum")
        self.add_state("floor_max", _zeros(num_elements), "max")

    def update(
        self,
        roundtrip: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        index: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """``roundtrip`` is ``(S, B, ...)`` for the elements at ``index`` (all when None); the others are exact
        permutations whose floor is 0 by definition."""
        self.count += x.shape[0]
        if roundtrip.shape[0] == 0:
            return
        err = relative_error(roundtrip, x, mask).double()
        idx = slice(None) if index is None else torch.as_tensor(index, dtype=torch.long)
        self.floor_sum[idx] += err.sum(-1).cpu()
        self.floor_max[idx] = torch.maximum(self.floor_max[idx], err.amax(-1).cpu())

    def compute(self) -> dict[str, torch.Tensor]:
        return {"floor": self.floor_sum / self.count.clamp_min(1), "floor_max": self.floor_max}


class ClassificationMetrics(Metric):
    """Invariance of class predictions ``(B, K)`` under each of ``G`` elements, with optional labels."""

    def __init__(self, num_elements: int, num_classes: int) -> None:
        super().__init__()
        g, k = num_elements, max(2, num_classes)  # one logit = a binary classifier (two classes)
        self.num_classes = k
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("agree", _zeros(g), "sum")
        self.add_state("kl_sum", _zeros(g), "sum")
        self.add_state("err_sum", _zeros(g), "sum")
        self.add_state("err_max", _zeros(g), "max")
        self.add_state("correct", _zeros(g), "sum")
        self.add_state("correct_ref", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("all_correct", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("class_count", _zeros(k), "sum")  # images per true class
        self.add_state("class_correct", _zeros(g, k), "sum")  # correct per element and true class
        self.add_state("pred_count", _zeros(k), "sum")  # images per reference prediction
        self.add_state("class_agree", _zeros(g, k), "sum")  # agreement per element and reference class

    def update(
        self, out: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor | None = None, details: bool = True
    ) -> dict[str, torch.Tensor]:
        """Add a batch: ``out`` is ``(G, B, K)``, ``ref`` ``(B, K)``. Returns per-image scores ``(G, B)``, with the
        predictions and their confidences when ``details``."""
        k = self.num_classes
        err = relative_error(out, ref)
        if out.shape[-1] == 1:
            # One logit is a binary classifier: softmax([0, z]) = sigmoid(z), so argmax is ``z > 0`` and the KL
            # below is the Bernoulli KL.
            out = torch.cat([torch.zeros_like(out), out], -1)
            ref = torch.cat([torch.zeros_like(ref), ref], -1)
        pred_ref, pred = ref.argmax(-1), out.argmax(-1)
        agree = pred == pred_ref
        kl = kl_divergence(out, ref)
        # One float64 stack, one reduction and one transfer for the three per-element sums.
        per_image = torch.stack([agree.to(kl.dtype), kl, err.to(kl.dtype)]).double()
        sums = per_image.sum(-1).cpu()
        self.count += ref.shape[0]
        self.agree += sums[0]
        self.kl_sum += sums[1]
        self.err_sum += sums[2]
        self.err_max = torch.maximum(self.err_max, per_image[2].amax(-1).cpu())
        pred_ref_cpu, agree_cpu = pred_ref.cpu(), per_image[0].cpu()
        self.pred_count += torch.bincount(pred_ref_cpu, minlength=k)
        self.class_agree.index_add_(1, pred_ref_cpu, agree_cpu)
        if labels is not None:
            correct = pred == labels
            correct_ref = pred_ref == labels
            labels_cpu, correct_cpu = labels.cpu(), correct.cpu()
            self.labelled += labels.shape[0]
            self.correct += correct_cpu.sum(-1)
            self.correct_ref += correct_ref.sum().cpu()
            self.all_correct += (correct.all(0) & correct_ref).sum().cpu()
            self.class_count += torch.bincount(labels_cpu, minlength=k)
            self.class_correct.index_add_(1, labels_cpu, correct_cpu.double())
        scores = {"agreement": per_image[0], "kl": per_image[1], "invariance_error": per_image[2]}
        if details:
            scores.update(
                pred=pred,
                confidence=out.softmax(-1).amax(-1),
                ref_pred=pred_ref,
                ref_confidence=ref.softmax(-1).amax(-1),
            )
        return scores

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
            m = self.labelled
            acc = self.correct / m
            res.update(accuracy=acc, accuracy_drop=self.correct_ref / m - acc)
        return res

    def summary(self) -> dict[str, float]:
        """Scalars over the group (reference accuracy, mean/worst-case accuracy...)."""
        out: dict[str, float] = {}
        if self.labelled > 0:
            m = self.labelled
            acc = self.correct / m
            out.update(
                accuracy_reference=float(self.correct_ref / m),
                accuracy_mean=float(acc.mean()),
                accuracy_min=float(acc.min()),
                worst_case_accuracy=float(self.all_correct / m),
            )
        return out

    def per_class(self) -> dict[str, torch.Tensor]:
        """``(G, K)`` accuracy per element and true class, and agreement per element and reference class."""
        res = {"agreement": self.class_agree / self.pred_count.clamp_min(1), "support_pred": self.pred_count}
        if self.labelled > 0:
            res.update(accuracy=self.class_correct / self.class_count.clamp_min(1), support=self.class_count)
        return res


class DenseMetrics(Metric):
    """Equivariance of dense outputs ``(B, C, H, W)``; IoU consistency and IoU against truth for segmentation."""

    def __init__(self, num_elements: int, segment: bool, num_classes: int = 2) -> None:
        super().__init__()
        g = num_elements
        self.segment = segment
        self.num_classes = num_classes
        self.add_state("count", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("err_sum", _zeros(g), "sum")
        self.add_state("err_max", _zeros(g), "max")
        self.add_state("abs_max", _zeros(g), "max")
        self.add_state("iou_sum", _zeros(g), "sum")
        self.add_state("truth_count", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("truth_sum", _zeros(g), "sum")
        self.add_state("truth_ref_sum", torch.zeros((), dtype=torch.float64), "sum")

    def update(
        self, out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None, truth: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Add a batch: ``out`` ``(G, B, C, H, W)`` already undone, ``ref`` ``(B, C, H, W)``, ``mask`` ``(H, W)``,
        ``truth`` ``(B, H, W)`` label maps. Returns per-image scores ``(G, B)``."""
        m = None if mask is None else mask.to(ref.dtype)
        err = relative_error(out, ref, m).double()
        absdiff = (out - ref).abs() if m is None else (out - ref).abs() * m
        self.count += ref.shape[0]
        self.err_sum += err.sum(-1).cpu()
        self.err_max = torch.maximum(self.err_max, err.max(-1).values.cpu())
        self.abs_max = torch.maximum(self.abs_max, absdiff.flatten(1).amax(-1).double().cpu())
        scores = {"equivariance_error": err}
        if self.segment:
            seg, seg_ref = binarize(out), binarize(ref)
            consistency = iou(seg, seg_ref, self.num_classes, mask)
            self.iou_sum += consistency.sum(-1).cpu()
            scores["iou_consistency"] = consistency
            if truth is not None:
                t = iou(seg, truth, self.num_classes, mask)
                self.truth_count += truth.shape[0]
                self.truth_sum += t.sum(-1).cpu()
                self.truth_ref_sum += iou(seg_ref, truth, self.num_classes, mask).sum().cpu()
                scores["iou_truth"] = t
        return scores

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        res = {
            "equivariance_error": self.err_sum / n,
            "equivariance_error_max": self.err_max,
            "max_abs_error": self.abs_max,
        }
        if self.segment:
            res["iou_consistency"] = self.iou_sum / n
            if self.truth_count > 0:
                res["iou_truth"] = self.truth_sum / self.truth_count
        return res

    def summary(self) -> dict[str, float]:
        if self.segment and self.truth_count > 0:
            return {"iou_truth_reference": float(self.truth_ref_sum / self.truth_count)}
        return {}


def merged(metrics: Mapping[str, Metric]) -> dict[str, torch.Tensor]:
    """``compute()`` of several metrics into one dict (later keys win)."""
    out: dict[str, torch.Tensor] = {}
    for m in metrics.values():
        out.update(m.compute())
    return out
