"""Steerable CNNs built with e2cnn: the C8 / D4 model of e2cnn's example and its wide ResNet D8-D4-D1.

e2cnn is imported (and patched by :mod:`..e2cnn_compat`) only when one of these models is built, so
importing the zoo stays fast.

**Exactness on the pixel grid:** e2cnn samples its steerable filters on the grid, which quarter turns and
mirrors map onto itself, so C4 (for C8) and D4 hold exactly up to float rounding; 45-degree turns are only
approximate. Strided layers sample positions ``0, 2, 4, ...``, which are symmetric about the centre only on
odd sizes, so every strided stage must see an odd size: the C8/D4 models are exact on sides ``4k + 1 >= 29``
(29: digits padded by one row and column, as in e2cnn's example; 25 -> 13 -> 7 -> 5 inside), not on 30 or
31; the wide ResNet is exact on sides ``8k + 1`` (97 -> 49 -> 25 -> 13). The one mirror left in the wide
ResNet's last stage (e2cnn's subgroup ``(0, 1)`` of D8) is the left-right mirror of the image tensor.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from equiaudit.errors import InputMismatchError

from ..registry import register_model

__all__ = ["SteerableCNN", "SteerableWideResNet", "he_variances"]


def _e2cnn() -> tuple[Any, Any]:
    from .. import e2cnn_compat

    e2cnn_compat.apply()
    from e2cnn import gspaces
    from e2cnn import nn as enn

    return gspaces, enn


def he_variances(basisexpansion: Any) -> Tensor:
    """Standard deviations (e2cnn's "vars") of e2cnn's generalized He initialisation
    (``e2cnn.nn.init.generalized_he_init``) of the weights of one R2Conv: equal to e2cnn's, but computed per block
    instead of per parameter (e2cnn's Python loop takes minutes on a wide ResNet).

    For the output irrep at position ``p`` e2cnn uses ``1 / sqrt(n_in(p) · count(in_irrep, p))``, with
    ``n_in(p)`` the number of distinct input irreps reaching ``p`` and ``count`` the number of basis elements
    from that input irrep to ``p``. Both depend only on the output field's representation and the irrep index
    inside it, so they are summed over the blocks (input field counts times block basis counts)."""
    be = basisexpansion
    pairs = be._representations_pairs
    blocks = {pair: list(getattr(be, f"block_expansion_{pair}").get_basis_info()) for pair in pairs}
    counts: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for (in_repr, out_repr), attrs in blocks.items():
        for attr in attrs:
            counts[out_repr, attr["out_irrep_idx"]][attr["in_irrep"]] += be._in_count[in_repr]
    parts = []
    for (in_repr, out_repr), attrs in blocks.items():
        per_basis = torch.tensor(
            [
                1.0 / math.sqrt(len(c) * c[attr["in_irrep"]])
                for attr in attrs
                for c in [counts[out_repr, attr["out_irrep_idx"]]]
            ]
        )
        # the weights of a block are laid out (output field, input field, basis element)
        parts.append(per_basis.repeat(be._out_count[out_repr] * be._in_count[in_repr]))
    return torch.cat(parts)


def _r2conv(enn: Any, in_type: Any, out_type: Any, kernel_size: int, **kwargs: Any) -> Any:
    """``enn.R2Conv`` with e2cnn's default (generalized He) initialisation, computed fast."""
    conv = enn.R2Conv(in_type, out_type, kernel_size, initialize=False, **kwargs)
    with torch.no_grad():
        conv.weights.copy_(he_variances(conv.basisexpansion) * torch.randn_like(conv.weights))
    return conv


def _refresh_cached_filters(module: nn.Module, incompatible_keys: Any) -> None:
    # In eval mode e2cnn's R2Conv caches its expanded filter, which a load would leave stale.
    if not module.training:
        module.train().eval()


class _SteerableModel(nn.Module):
    """Keeps e2cnn's eval-mode filter caches out of ``state_dict`` (so a checkpoint does not depend on the mode
    it was saved in) and rebuilds them after ``load_state_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_refresh_cached_filters)

    def _finish_init(self) -> None:
        # R2Conv registers a zero `filter` buffer at construction; train() drops it (see train).
        self.train()

    def train(self, mode: bool = True) -> _SteerableModel:
        super().train(mode)
        _, enn = _e2cnn()
        for m in self.modules():
            if isinstance(m, enn.R2Conv):
                # R2Conv.train(False) registers `filter` / `expanded_bias` as persistent buffers.
                m._non_persistent_buffers_set.update({"filter", "expanded_bias"})
        return self


class SteerableCNN(_SteerableModel):
    """e2cnn's ``C8SteerableCNN`` example for ``group`` "c8" (``Rot2dOnR2(8)``) or "d4" (``FlipRot2dOnR2(4)``):
    six R2Conv + InnerBatchNorm + ReLU blocks on regular fields (``widths`` fields each), antialiased average
    pooling, group pooling, and a two-layer head. The input mask of the example is left out so that any input
    size works."""

    _KERNELS = ((7, 1), (5, 2), None, (5, 2), (5, 2), None, (5, 2), (5, 1))  # (kernel, padding); None: pool
    MIN_SIZE = 29  # 29 -> 25 -> 13 -> 7 -> 5, what the final 5x5 pooling needs

    def __init__(
        self,
        group: str = "c8",
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (6, 12, 12, 24, 24, 16),
        fc_hidden: int = 64,
    ) -> None:
        super().__init__()
        gspaces, enn = _e2cnn()
        builders = {"c8": lambda: gspaces.Rot2dOnR2(8), "d4": lambda: gspaces.FlipRot2dOnR2(4)}
        if group not in builders or len(widths) != 6:
            raise ValueError(f"SteerableCNN needs group 'c8' or 'd4' and 6 widths, got {group!r}, {widths}")
        gs = builders[group]()
        self.input_type = t = enn.FieldType(gs, in_channels * [gs.trivial_repr])
        layers, width = [], iter(widths)
        for spec in self._KERNELS:
            if spec is None:
                layers.append(enn.PointwiseAvgPoolAntialiased(t, sigma=0.66, stride=2))
                continue
            out = enn.FieldType(gs, next(width) * [gs.regular_repr])
            layers += [
                _r2conv(enn, t, out, spec[0], padding=spec[1], bias=False),
                enn.InnerBatchNorm(out),
                enn.ReLU(out, inplace=True),
            ]
            t = out
        layers += [enn.PointwiseAvgPoolAntialiased(t, sigma=0.66, stride=1, padding=0), enn.GroupPooling(t)]
        self.features = enn.SequentialModule(*layers)
        self.head = nn.Sequential(
            nn.Linear(self.features.out_type.size, fc_hidden),
            nn.BatchNorm1d(fc_hidden),
            nn.ELU(inplace=True),
            nn.Linear(fc_hidden, num_classes),
        )
        self._wrap = enn.GeometricTensor
        self._finish_init()

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.MIN_SIZE:
            raise InputMismatchError(
                f"this steerable CNN needs inputs of at least {self.MIN_SIZE}x{self.MIN_SIZE}, got "
                f"{x.shape[-2]}x{x.shape[-1]}; scan with --input-size 29 (odd sides 4k+1 keep C4 exact), or pad your "
                "28x28 digits by one row and column as e2cnn's example does"
            )
        features = self.features(self._wrap(x, self.input_type)).tensor
        return self.head(features.mean(dim=(-2, -1)))  # 1x1 at 29x29; other sizes are averaged


class _WideBasic(nn.Module):
    """Pre-activation wide residual block on e2cnn fields (BN-ReLU-conv-BN-ReLU-dropout-conv + shortcut)."""

    def __init__(self, enn: Any, in_type: Any, inner_type: Any, out_type: Any, dropout: float, stride: int):
        super().__init__()
        fibergroup = in_type.gspace.fibergroup
        rotations = getattr(fibergroup, "rotation_order", 1)  # the mirror-only group D1 has none
        # as in e2cnn's wrn: 3x3 filters for up to 4 rotations, 5x5 for finer rotation groups
        k = 3 if rotations <= 4 else 5

        def conv(a: Any, b: Any, size: int, s: int = 1) -> Any:
            return _r2conv(
                enn, a, b, size, stride=s, padding=size // 2, bias=False, sigma=None, frequencies_cutoff=lambda r: 3 * r
            )

        self.in_type, self.out_type = in_type, out_type
        self.pre = enn.SequentialModule(enn.InnerBatchNorm(in_type), enn.ReLU(in_type, inplace=True))
        self.body = enn.SequentialModule(
            conv(in_type, inner_type, k),
            enn.InnerBatchNorm(inner_type),
            enn.ReLU(inner_type, inplace=True),
            enn.PointwiseDropout(inner_type, p=dropout),
            conv(inner_type, out_type, k, stride),
        )
        self.shortcut = conv(in_type, out_type, 1, stride) if stride != 1 or in_type != out_type else None

    def forward(self, x: Any) -> Any:
        pre = self.pre(x)
        out = self.body(pre)
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class SteerableWideResNet(_SteerableModel):
    """e2cnn's equivariant wide ResNet (``examples/e2wrn.py``): stem conv, three stages of ``(depth - 4) / 6``
    wide blocks with widths ``16k, 32k, 64k`` (``k = widen_factor``, 16 = ``base``; regular fields, ``fixparams``:
    channels scaled by ``sqrt(|G|)`` to keep the parameter count of the plain WRN), equivariant to ``D_N`` in stage 1,
    restricted to ``D_{N/2}`` before stage 2 and to ``D_1`` (one mirror) before stage 3, which ends in
    invariant (trivial) fields; average pooling and a linear head."""

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 8,
        dropout: float = 0.3,
        num_classes: int = 104,
        in_channels: int = 3,
        rotations: int = 8,
        initial_stride: int = 2,
        base: int = 16,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide ResNet depth must be 6n + 4, got {depth}")
        gspaces, enn = _e2cnn()
        n = (depth - 4) // 6
        gs = gspaces.FlipRot2dOnR2(rotations)

        def fields(space: Any, planes: int, kind: str = "regular") -> Any:
            order = space.fibergroup.order()
            if kind == "trivial":
                return enn.FieldType(space, int(planes * math.sqrt(order)) * [space.trivial_repr])
            return enn.FieldType(space, int(planes * math.sqrt(order) / order) * [space.regular_repr])

        self.input_type = enn.FieldType(gs, in_channels * [gs.trivial_repr])
        t = fields(gs, base)
        self.stem = _r2conv(
            enn, self.input_type, t, 5, padding=2, bias=False, sigma=None, frequencies_cutoff=lambda r: 3 * r
        )
        stages: list[nn.Module] = []
        for i, (planes, stride) in enumerate(((base, initial_stride), (2 * base, 2), (4 * base, 2))):
            if i:  # restrict D_N -> D_{N/2} before stage 2, -> D_1 before stage 3 (the "D8D4D1" of the name)
                sub = (0, rotations // 2) if i == 1 else (0, 1)
                restrict = enn.RestrictionModule(t, sub)
                disentangle = enn.DisentangleModule(restrict.out_type)
                stages.append(enn.SequentialModule(restrict, disentangle))
                t = disentangle.out_type
            space = t.gspace
            main = fields(space, planes * widen_factor)
            last = fields(space, planes * widen_factor, "trivial" if i == 2 else "regular")
            blocks = []
            for b in range(n):
                out = last if b == n - 1 else main
                blocks.append(_WideBasic(enn, t, main, out, dropout, stride if b == 0 else 1))
                t = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = enn.SequentialModule(enn.InnerBatchNorm(t, momentum=0.9), enn.ReLU(t, inplace=True))
        self.head = nn.Linear(t.size, num_classes)
        nn.init.zeros_(self.head.bias)
        self._wrap = enn.GeometricTensor
        self._finish_init()

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(self._wrap(x, self.input_type))
        for stage in self.stages:
            h = stage(h)
        return self.head(self.norm(h).tensor.mean(dim=(-2, -1)))


_DIGITS = dict(
    family="steerable",
    task="classify",
    input_shape=(1, 29, 29),
    num_classes=10,
    default_dataset="rot-digits",
    reference="Weiler & Cesa 2019, General E(2)-Equivariant Steerable CNNs (e2cnn examples/model.ipynb)",
)


def _steerable_cnn(
    group: str, tiny: bool, in_channels: int, num_classes: int, widths: tuple[int, ...], fc_hidden: int
) -> SteerableCNN:
    if tiny:
        widths, fc_hidden = (2, 2, 2, 2, 2, 2), 4
    return SteerableCNN(group, in_channels, num_classes, tuple(widths), fc_hidden)


@register_model(
    "e2cnn-c8",
    description="e2cnn C8 steerable CNN (regular fields, a quarter of the example's width); exactly "
    "C4-invariant on sides 4k+1 (29x29), 45-degree turns approximate",
    groups=("c8", "c4"),
    exact_groups=("c4",),
    **_DIGITS,
)
def e2cnn_c8(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, ...] = (6, 12, 12, 24, 24, 16),
    fc_hidden: int = 64,
) -> SteerableCNN:
    return _steerable_cnn("c8", tiny, in_channels, num_classes, widths, fc_hidden)


@register_model(
    "e2cnn-d4",
    description="e2cnn D4 steerable CNN (the C8 example's architecture on FlipRot2dOnR2(4)); exactly "
    "D4-invariant on sides 4k+1 (29x29)",
    groups=("d4", "c4", "flip", "vflip"),
    exact_groups=("d4", "c4", "flip", "vflip"),
    **_DIGITS,
)
def e2cnn_d4(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, ...] = (6, 12, 12, 24, 24, 16),
    fc_hidden: int = 64,
) -> SteerableCNN:
    return _steerable_cnn("d4", tiny, in_channels, num_classes, widths, fc_hidden)


@register_model(
    "wrn16-8-d8d4d1",
    family="steerable",
    description="e2cnn wide ResNet 16-8 with D8, D4, D1 stages (restriction); invariant to the left-right "
    "mirror, exactly on sides 8k+1 (97x97)",
    task="classify",
    groups=("flip",),
    exact_groups=("flip",),
    input_shape=(3, 97, 97),
    num_classes=104,
    default_dataset="flowers",
    reference="Weiler & Cesa 2019 (e2cnn examples/e2wrn.py wrn16_8_stl_d8d4d1); the flowers study",
    cpu_trainable=False,
)
def wrn16_8_d8d4d1(
    *,
    tiny: bool = False,
    in_channels: int = 3,
    num_classes: int = 104,
    depth: int = 16,
    widen_factor: int = 8,
    dropout: float = 0.3,
    base: int = 16,
) -> SteerableWideResNet:
    """``widen_factor`` 2 is the study's reduced width (0.75M parameters, 18% of wide-resnet50-2 at a quarter
    width); ``tiny``: depth 10, widen 1, base 4 (for tests)."""
    if tiny:
        depth, widen_factor, base = 10, 1, 4
    return SteerableWideResNet(depth, widen_factor, dropout, num_classes, in_channels, base=base)
