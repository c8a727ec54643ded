"""The scale study's document's feature-map equivariance error, measured by an observer of the engine's one pass.

The document (``equivariance_test.py`` / ``equiv_funcs.py`` of its code) measures, on the model's last feature
map ``Φ`` (its "embedding", before the scale pooling and the head), for an input zoom ``L_s``::

    Δ(s) = mean over images and channels c of  || L_s Φ(f)_c - Φ(L_s f)_c ||_2 / || Φ(L_s f)_c ||_2

``L_s`` acts on the map at the map's own resolution (the same zoom about the centre, zeros brought in), over
the whole map; it is normalised by the moved input's map, per channel. On a scale-space map ``(C, S, h, w)`` it
also shifts the levels: level ``ℓ`` of ``Φ(L_s f)`` is compared with level ``ℓ + k`` of ``Φ(f)``, ``k =
round(-log2 s)`` (level ``s`` holds the image at scale ``2^s``; the document rounds the same way); levels with
no partner are left out (the document clamped them to the last level).

Two choices differ from the document's code and are stated in the study: the numerator is the Euclidean norm
of the channel's map (the code's ``np.linalg.norm(M, 2)`` of a matrix is its largest singular value, while the
denominator is the Frobenius norm), and channels whose moved map is zero (a dead ReLU channel) are left out
(the code divides by zero there). Our per-layer audit (:mod:`equiaudit.layers`) instead undoes the zoom on
``Φ(L_s f)``, normalises by ``||Φ(f)||`` over all channels together and compares a masked region only.

Nothing here runs the model: an engine audit with ``layers=`` the embedding records ``Φ`` of every image and of
its zoomed copies in the forwards that give the logits, and :class:`ScaleErrorObserver` turns each chunk into
per-image errors (:func:`map_error`) beside the engine's own logit invariance error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from equiaudit.errors import EquiauditError
from equiaudit.groups import GroupElement
from equiaudit.observers import ObservedBatch, Observer, Setup
from equiaudit.transforms import ElementPlan, sampling_dtype

__all__ = [
    "AUDIT_OPTIONS",
    "ScaleErrorObserver",
    "ScaleErrors",
    "embedding_layer",
    "level_shift",
    "map_error",
]

_EPS = 1e-12
# The audit the document's metric is read from: the whole image zoomed (no input mask), bilinear, zeros brought
# in; the embedding's own per-layer row moves positions only (a scale-space map's levels fold into its channels).
AUDIT_OPTIONS: dict[str, Any] = {
    "input_mask": "none",
    "interpolation": "bilinear",
    "padding": "zeros",
    "layer_action": "spatial",
}


def embedding_layer(model: nn.Module) -> str:
    """The name of the module whose output is ``model``'s last feature map: its ``embedding`` attribute, else the
    last module of its ``features``."""
    name = getattr(model, "embedding", None)
    if isinstance(name, str):
        return name
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return f"features.{len(features) - 1}"
    raise ValueError(f"{type(model).__name__} names no embedding layer (an `embedding` attribute or `features`)")


def level_shift(scale: float) -> int:
    """``k``: a zoom by ``scale`` moves a scale-space level ``ℓ + k`` of the original to level ``ℓ``."""
    return round(-math.log2(scale))


def map_error(ref: torch.Tensor, moved: torch.Tensor, elements: Sequence[GroupElement]) -> torch.Tensor:
    """``(2, G, B)`` errors from the maps ``ref = Φ(f)`` ``(B, C[, S], h, w)`` and ``moved[i] = Φ(g_i f)``
    ``(G, B, C[, S], h, w)``: the document's (module docstring), and the same pooled over the channels (one ratio
    of norms over every channel and level, which near-silent channels cannot dominate); NaN where nothing can
    be compared."""
    size = tuple(ref.shape[-2:])
    plan = ElementPlan(elements, size, device=ref.device, dtype=sampling_dtype(ref.dtype))
    pred = plan(ref.flatten(1, -3)).view(len(elements), *ref.shape)  # L_s Φ(f)
    rows = []
    for i, g in enumerate(elements):
        p, m = pred[i], moved[i]
        if ref.dim() == 5:  # (B, C, S, h, w): level ℓ of Φ(L_s f) against level ℓ + k of L_s Φ(f)
            k, n = level_shift(g.scale), ref.shape[2]
            levels = [lv for lv in range(n) if 0 <= lv + k < n]
            if not levels:
                rows.append(torch.full((2, ref.shape[0]), float("nan"), dtype=ref.dtype, device=ref.device))
                continue
            p, m = p[:, :, [lv + k for lv in levels]], m[:, :, levels]
        num = torch.linalg.vector_norm(p - m, dim=(-2, -1)).flatten(1)  # (B, channels [x levels])
        den = torch.linalg.vector_norm(m, dim=(-2, -1)).flatten(1)
        ratio = torch.where(den > _EPS, num / den.clamp_min(_EPS), torch.nan)
        pooled = num.square().sum(1).sqrt() / den.square().sum(1).sqrt().clamp_min(_EPS)
        rows.append(torch.stack([ratio.nanmean(dim=1), pooled]))
    return torch.stack(rows, dim=1)


@dataclass
class ScaleErrors:
    """Per image and element ``(N, G)`` float64 arrays, in data order (see :class:`ScaleErrorObserver`)."""

    features: np.ndarray  # the document's feature-map error
    pooled: np.ndarray  # the same with one ratio over all channels
    logits: np.ndarray  # the logits' invariance error


class ScaleErrorObserver(Observer):
    """The document's errors of every image and element, from the engine's one pass: the maps of ``layer`` the
    engine records (``ObservedBatch.layers``, audit with ``layers=layer``; :meth:`audit_options`) give the
    document's error and its channel-pooled form (:func:`map_error`), the engine's per-image scores the logits'
    invariance error (:func:`equiaudit.metrics.logit_error` of a classifier's centred logits)."""

    name = "scale_document"

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def audit_options(self) -> dict[str, Any]:
        """The options of the audit that feeds this observer (:data:`AUDIT_OPTIONS`, the layer, the observer)."""
        return {"layers": self.layer, **AUDIT_OPTIONS, "observers": [self]}

    def setup(self, setup: Setup) -> None:
        if setup.task != "classify":
            raise EquiauditError(f"the scale document's errors need a classifier; the audit found task {setup.task!r}")
        self.elements = setup.elements
        # Recorded rows: the reference block, then one block per moved element in Setup.moved order; the
        # identity's copy is the reference itself (block 0).
        at = {j: 1 + i for i, j in enumerate(setup.moved)}
        self.rows = torch.tensor([at.get(j, 0) for j in range(len(setup.elements))], device=setup.device)
        for name in ("index", "features", "pooled", "logits"):
            self.add_state(name, [], "cat")

    def update(self, batch: ObservedBatch) -> None:
        maps = (batch.layers or {}).get(self.layer)
        if maps is None:
            raise EquiauditError(
                f"the scale document's errors read layer {self.layer!r}: audit with layers={self.layer}"
            )
        b = batch.size
        blocks = maps.view(-1, b, *maps.shape[1:])  # (M + 1, B, ...)
        errors = map_error(blocks[0], blocks.index_select(0, self.rows), self.elements)  # (2, G, B)
        self.index.append(torch.arange(batch.offset, batch.offset + b))
        self.features.append(errors[0].T)
        self.pooled.append(errors[1].T)
        self.logits.append(batch.scores["invariance_error"].T)

    def compute(self) -> ScaleErrors:
        """``(N, G)`` float64 arrays in data order (shards may arrive in any order)."""
        if not self.index:
            return ScaleErrors(*(np.zeros((0, len(self.elements))) for _ in range(3)))
        order = np.argsort(torch.cat(self.index).numpy(), kind="stable")
        parts = (torch.cat(getattr(self, k)).double().cpu().numpy()[order] for k in ("features", "pooled", "logits"))
        return ScaleErrors(*parts)
