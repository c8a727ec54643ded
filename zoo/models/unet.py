"""U-Nets for foreground segmentation: a plain one and an exactly C4-equivariant group U-Net.

Both output one channel of logits at the input size. Down-sampling is 2x2 max pooling, up-sampling is 2x
nearest-neighbour followed by 3x3 convolutions. On a grid whose side is divisible by ``2**depth`` the 2x2
windows tile the image symmetrically about its centre, so pooling and nearest up-sampling commute exactly
with ``rot90``; with the group convolutions of :mod:`.gcnn` the group U-Net is then exactly C4-equivariant.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equiaudit.errors import InputMismatchError

from ..registry import register_model
from .gcnn import GroupBatchNorm, GroupConv2d, LiftingConv2d, group_pool

__all__ = ["GroupUNet", "StudyGroupUNet", "StudyUNet", "UNet"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _group_double_conv(group: str, c_in: int, c_out: int, lift: bool = False) -> nn.Sequential:
    first = (LiftingConv2d if lift else GroupConv2d)(group, c_in, c_out, 3, bias=False)
    return nn.Sequential(
        first,
        GroupBatchNorm(c_out),
        nn.ReLU(inplace=True),
        GroupConv2d(group, c_out, c_out, 3, bias=False),
        GroupBatchNorm(c_out),
        nn.ReLU(inplace=True),
    )


def _spatial(fn, x: Tensor) -> Tensor:
    """Apply a 4-D spatial op to ``(B, C, H, W)`` or, group axis folded into channels, ``(B, C, G, H, W)``."""
    if x.dim() == 4:
        return fn(x)
    return fn(x.flatten(1, 2)).unflatten(1, x.shape[1:3])


class _UNetBase(nn.Module):
    """Encoder (double conv, then [pool, double conv] x depth), decoder ([upsample, concat skip, double conv]
    x depth); ``head`` maps the last decoder features to one logit channel."""

    def __init__(self, downs: list[nn.Module], ups: list[nn.Module], multiple: int) -> None:
        super().__init__()
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)
        self.multiple = multiple

    def head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InputMismatchError(f"U-Net input size {h}x{w} must be divisible by {self.multiple}")
        skips = []
        for i, down in enumerate(self.downs):
            if i:
                x = _spatial(lambda t: F.max_pool2d(t, 2), x)
            x = down(x)
            skips.append(x)
        for up, skip in zip(self.ups, reversed(skips[:-1]), strict=True):
            x = _spatial(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), x)
            x = up(torch.cat([x, skip], dim=1))
        return self.head(x)


class UNet(_UNetBase):
    """Plain U-Net with widths ``base · 2^level`` for ``level = 0..depth``."""

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 3) -> None:
        widths = [base_channels * 2**i for i in range(depth + 1)]
        downs = [_double_conv(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)]
        ups = [_double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
        super().__init__(downs, ups, 2**depth)
        self.out = nn.Conv2d(widths[0], 1, 1)

    def head(self, x: Tensor) -> Tensor:
        return self.out(x)


class GroupUNet(_UNetBase):
    """U-Net on group feature maps ``(B, C, G, H, W)``: lifting convolution first, group convolutions after;
    the last features are max-pooled over the group (C4-invariant scalar fields) and a 1x1 convolution gives the
    logits, so the output rotates with the input."""

    def __init__(self, group: str = "c4", in_channels: int = 3, base_channels: int = 8, depth: int = 3) -> None:
        widths = [base_channels * 2**i for i in range(depth + 1)]
        downs = [
            _group_double_conv(group, in_channels if i == 0 else widths[i - 1], w, lift=i == 0)
            for i, w in enumerate(widths)
        ]
        ups = [_group_double_conv(group, widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
        super().__init__(downs, ups, 2**depth)
        self.out = nn.Conv2d(widths[0], 1, 1)

    def head(self, x: Tensor) -> Tensor:
        return self.out(group_pool(x, "max"))


_COMMON = dict(
    family="unet",
    task="segment",
    input_shape=(3, 64, 64),
    num_classes=None,
    default_dataset="shapes-seg",
    reference="Ronneberger et al. 2015, U-Net; the butterfly segmentation study (group U-Net vs U-Net)",
)


@register_model(
    "unet",
    description="Plain U-Net (widths 16-128, 3 poolings), foreground logits at the input size",
    groups=(),
    exact_groups=(),
    **_COMMON,
)
def unet(*, tiny: bool = False, in_channels: int = 3, base_channels: int = 16, depth: int = 3) -> UNet:
    if tiny:
        base_channels, depth = 2, 2
    return UNet(in_channels, base_channels, depth)


@register_model(
    "group-unet-c4",
    description="C4 group U-Net (half the filters of unet, about its parameter count), exactly C4-equivariant "
    "on sides divisible by 8",
    groups=("c4",),
    exact_groups=("c4",),
    **_COMMON,
)
def group_unet_c4(*, tiny: bool = False, in_channels: int = 3, base_channels: int = 8, depth: int = 3) -> GroupUNet:
    if tiny:
        base_channels, depth = 1, 2
    return GroupUNet("c4", in_channels, base_channels, depth)


# ---- the butterfly study's U-Nets: GroupNorm, residual down blocks, 4 levels ------------------------------------

STUDY_FILTERS = (32, 32, 64, 64)  # the study's U-Net; its group U-Net has half of each
NORM_GROUPS = 4  # GroupNorm groups per layer, as the study


def _act() -> nn.Module:
    """SiLU: the study's code takes the activation as a parameter. With ReLU, on images padded with black, the
    last block's useful units died early (the highest logit stayed at the output bias, no foreground predicted
    after 320 steps on padded shapes); SiLU keeps a gradient for negative inputs."""
    return nn.SiLU()


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over channels and every trailing axis: on ``(B, C, G, H, W)`` its statistics span the group
    axis too, so it commutes with rotating the maps and permuting the group axis."""
    return nn.GroupNorm(min(NORM_GROUPS, channels), channels)


class _ConvNormBlock(nn.Module):
    """Two ``conv -> GroupNorm -> SiLU`` layers; ``conv(c_in, c_out)`` builds a convolution."""

    def __init__(self, conv, c_in: int, c_out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(conv(c_in, c_out), _norm(c_out), _act(), conv(c_out, c_out), _norm(c_out), _act())

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _ResidualDown(nn.Module):
    """The study's down block: ``x + block(x)`` at ``c_in`` channels, then ``conv -> GroupNorm -> SiLU`` to
    ``c_out`` (a residual connection from the block's input to its output)."""

    def __init__(self, conv, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = _ConvNormBlock(conv, c_in, c_in)
        self.proj = nn.Sequential(conv(c_in, c_out), _norm(c_out), _act())

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x + self.block(x))


class _StudyUNet(nn.Module):
    """First conv to ``filters[0]``; a residual down block per consecutive pair of ``filters``, each followed by
    2x2 average pooling; up-sampling (2x nearest), concatenation with the block's output and a two-conv block
    per level on the way back; last conv to one logit channel. ``conv(c_in, c_out)`` makes every 3x3
    convolution after the first."""

    def __init__(self, first: nn.Module, conv, filters: tuple[int, ...], last: nn.Module) -> None:
        super().__init__()
        pairs = list(itertools.pairwise(filters))
        self.first, self.last = first, last
        self.downs = nn.ModuleList(_ResidualDown(conv, a, b) for a, b in pairs)
        self.ups = nn.ModuleList(_ConvNormBlock(conv, 2 * b, a) for a, b in reversed(pairs))
        self.multiple = 2 ** len(pairs)

    def reduce(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InputMismatchError(f"U-Net input size {h}x{w} must be divisible by {self.multiple}")
        x = self.first(x)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = _spatial(lambda t: F.avg_pool2d(t, 2), x)
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = _spatial(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), x)
            x = up(torch.cat([skip, x], dim=1))
        return self.reduce(self.last(x))


class StudyUNet(_StudyUNet):
    """The butterfly study's U-Net: GroupNorm, residual down blocks, filters ``(32, 32, 64, 64)`` (4 levels)."""

    def __init__(self, in_channels: int = 3, filters: tuple[int, ...] = STUDY_FILTERS) -> None:
        def conv(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, 3, padding=1)

        super().__init__(conv(in_channels, filters[0]), conv, tuple(filters), conv(filters[0], 1))


class StudyGroupUNet(_StudyUNet):
    """The butterfly study's group U-Net: the same layout on ``(B, C, G, H, W)`` group maps (lifting conv first,
    group convs after, GroupNorm over channels and the group axis), the last group conv averaged over the group:
    exactly C4-equivariant on sides divisible by ``2**(len(filters) - 1)``."""

    def __init__(self, group: str = "c4", in_channels: int = 3, filters: tuple[int, ...] = (16, 16, 32, 32)) -> None:
        def conv(c_in: int, c_out: int) -> GroupConv2d:
            return GroupConv2d(group, c_in, c_out, 3)

        first = LiftingConv2d(group, in_channels, filters[0], 3)
        super().__init__(first, conv, tuple(filters), conv(filters[0], 1))

    def reduce(self, x: Tensor) -> Tensor:
        return x.mean(dim=2)


_STUDY = dict(
    _COMMON,
    input_shape=(3, 96, 96),
    reference="The butterfly segmentation study (dogeplusplus, group U-Net vs U-Net): GroupNorm, residual down blocks",
)


@register_model(
    "unet-gn",
    description="The butterfly study's U-Net: GroupNorm, SiLU, residual down blocks, filters 32-32-64-64 (4 levels)",
    groups=(),
    exact_groups=(),
    **_STUDY,
)
def unet_gn(*, tiny: bool = False, in_channels: int = 3, filters: tuple[int, ...] = STUDY_FILTERS) -> StudyUNet:
    return StudyUNet(in_channels, (2, 4) if tiny else tuple(filters))


@register_model(
    "group-unet-gn-c4",
    description="The butterfly study's C4 group U-Net (half the filters of unet-gn, 16-16-32-32), exactly "
    "C4-equivariant on sides divisible by 8",
    groups=("c4",),
    exact_groups=("c4",),
    **_STUDY,
)
def group_unet_gn_c4(
    *, tiny: bool = False, in_channels: int = 3, filters: tuple[int, ...] = tuple(f // 2 for f in STUDY_FILTERS)
) -> StudyGroupUNet:
    return StudyGroupUNet("c4", in_channels, (1, 2) if tiny else tuple(filters))
