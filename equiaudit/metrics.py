"""Equivariance metrics: the per-image formulas and the per-batch scores built from them.

Each formula exists once, as a per-image function (``relative_error``, ``kl_divergence``, ``iou``...).
:func:`classify_scores` and :func:`dense_scores` apply them to one batch under every element; the engine calls
them once per batch and hands the scores to the observers (:mod:`equiaudit.observers`), which reduce them.

Notation: ``ref = f(x)`` on the untransformed batch; ``out[g]`` is the model's output on ``T_g x`` (invariance),
or ``T_g^-1 f(T_g x)`` (equivariance, undone at the output's resolution).
"""

from __future__ import annotations

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


def centred(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over the classes: what a softmax sees (adding a constant to every logit changes
    neither), so errors on centred logits ignore where the logits sit."""
    return logits - logits.mean(-1, keepdim=True)


def logit_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A classifier's invariance error: :func:`relative_error` between centred logits (see :func:`centred`)."""
    return relative_error(centred(out), centred(ref))


def output_error(
    out: torch.Tensor, ref: torch.Tensor, classify: bool, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The headline error in the output's own units: :func:`logit_error` for a classifier, else
    :func:`relative_error` inside ``mask`` (the floors of both kinds of output are measured with it)."""
    return logit_error(out, ref) if classify else relative_error(out, ref, mask)


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


# ---- per-batch scores ---------------------------------------------------------------------------------------


def classify_scores(out: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-image scores of logits ``out`` ``(G, B, K)`` against ``ref`` ``(B, K)``: ``(G, B)`` agreement, KL,
    invariance error (on centred logits), prediction, confidence and (with labels) correctness; ``(B,)`` for
    the reference."""
    err = logit_error(out, ref)
    if out.shape[-1] == 1:
        # One logit is a binary classifier: softmax([0, z]) = sigmoid(z), so argmax is ``z > 0`` and the KL
        # below is the Bernoulli KL.
        out = torch.cat([torch.zeros_like(out), out], -1)
        ref = torch.cat([torch.zeros_like(ref), ref], -1)
    pred_ref, pred = ref.argmax(-1), out.argmax(-1)
    kl = kl_divergence(out, ref)
    scores = {
        "agreement": (pred == pred_ref).to(kl.dtype),
        "kl": kl,
        "invariance_error": err.to(kl.dtype),
        "pred": pred,
        "confidence": out.softmax(-1).amax(-1),
        "ref_pred": pred_ref,
        "ref_confidence": ref.softmax(-1).amax(-1),
    }
    if labels is not None:
        scores["correct"] = pred == labels
        scores["ref_correct"] = pred_ref == labels
    return scores


def dense_scores(
    out: torch.Tensor,
    ref: torch.Tensor,
    mask: torch.Tensor | None,
    truth: torch.Tensor | None,
    segment: bool,
    num_classes: int,
) -> dict[str, torch.Tensor]:
    """Per-image scores of undone maps ``out`` ``(G, B, C, H, W)`` against ``ref`` ``(B, C, H, W)`` inside
    ``mask`` ``(H, W)``: equivariance error and largest absolute difference; for segmentation the label maps,
    IoU consistency and (with ``truth`` ``(B, H, W)``) IoU against the truth."""
    m = None if mask is None else mask.to(ref.dtype)
    diff = (out - ref).abs() if m is None else (out - ref).abs() * m
    scores = {"equivariance_error": relative_error(out, ref, m), "max_abs_error": diff.flatten(2).amax(-1)}
    if segment:
        seg, seg_ref = binarize(out), binarize(ref)
        scores.update(seg=seg, ref_seg=seg_ref, iou_consistency=iou(seg, seg_ref, num_classes, mask))
        if truth is not None:
            scores["iou_truth"] = iou(seg, truth, num_classes, mask)
            scores["ref_iou_truth"] = iou(seg_ref, truth, num_classes, mask)
    return scores
