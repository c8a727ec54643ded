"""Models for the scale study: Deep Scale-Spaces (DSS) and a deformable CNN.

**DSS convention:** a scale-space feature map has shape ``(B, C, S, H, W)``; level ``s`` holds the image at
scale ``2^s`` (Gaussian blur ``σ0 · sqrt(4^s - 1)`` on top of an assumed intrinsic blur ``σ0``) and is
convolved with dilation ``2^s``. Zooming the input in by 2 then shifts the levels by one (``s -> s + 1``),
and a scale convolution, which mixes levels ``s .. s + K - 1`` with shared weights, commutes with that shift
apart from the ends of the finite scale axis. Max pooling over scales and space gives logits that are
approximately invariant to zooms by ``2^{±1}`` (not exactly: the blurs and the truncated scale axis are
approximations, and intermediate zooms are interpolated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from ..registry import register_model

__all__ = [
    "DSS",
    "DSSv2",
    "DeformCNN",
    "DeformDSS",
    "DeformScaleConv2d",
    "PyramidScaleConv2d",
    "ScaleConv2d",
    "scale_pyramid",
    "scale_space",
]


def scale_space(x: Tensor, n_scales: int, sigma0: float = 0.5) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, S, H, W)``: level ``s`` is ``x`` blurred to scale ``2^s`` (see module)."""
    levels = [x]
    for s in range(1, n_scales):
        sigma = sigma0 * math.sqrt(4**s - 1)
        size = 2 * math.ceil(3 * sigma) + 1
        levels.append(gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="constant"))
    return torch.stack(levels, dim=2)


class ScaleConv2d(nn.Module):
    """Semigroup scale convolution: ``out[s] = Σ_{t<K, s+t<S} conv(f[s+t], W_t, dilation=2^s)``, 'same'
    padding, on ``(B, C, S, H, W)``."""

    def __init__(
        self, in_channels: int, out_channels: int, scale_size: int = 2, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("ScaleConv2d needs an odd kernel_size")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, scale_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * scale_size * kernel_size**2
        nn.init.kaiming_uniform_(self.weight.view(out_channels, fan_in), a=math.sqrt(5))

    def level_inputs(self, x: Tensor, s: int) -> tuple[Tensor, Tensor, int]:
        """``(input, weight, dilation)`` of output level ``s``: the levels ``s .. s + taps - 1`` of ``x`` and the
        weights of those taps, folded into channels (index ``c·taps + t``)."""
        taps = min(self.weight.shape[2], x.shape[2] - s)
        return x[:, :, s : s + taps].flatten(1, 2), self.weight[:, :, :taps].flatten(1, 2), 2**s

    def forward(self, x: Tensor) -> Tensor:
        pad = self.weight.shape[-1] // 2
        out = []
        for s in range(x.shape[2]):
            inp, w, d = self.level_inputs(x, s)
            out.append(F.conv2d(inp, w, self.bias, padding=d * pad, dilation=d))
        return torch.stack(out, dim=2)


class DeformScaleConv2d(ScaleConv2d):
    """A :class:`ScaleConv2d` with deformable sampling: a parallel convolution (dilated like the level it serves,
    zero-initialised) predicts the kernel's offsets from the same taps, in units of the level's dilation ``2^s``,
    so the offsets shift with the levels as the features do. With zero offsets it equals :class:`ScaleConv2d`."""

    def __init__(
        self, in_channels: int, out_channels: int, scale_size: int = 2, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, scale_size, kernel_size, bias)
        self.offset_weight = nn.Parameter(
            torch.zeros(2 * kernel_size**2, in_channels, scale_size, kernel_size, kernel_size)
        )
        self.offset_bias = nn.Parameter(torch.zeros(2 * kernel_size**2))

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.ops import deform_conv2d  # torchvision is slow to import; only load it when used

        pad = self.weight.shape[-1] // 2
        out = []
        for s in range(x.shape[2]):
            inp, w, d = self.level_inputs(x, s)
            ow = self.offset_weight[:, :, : w.shape[1] // self.weight.shape[1]].flatten(1, 2)
            offset = d * F.conv2d(inp, ow, self.offset_bias, padding=d * pad, dilation=d)
            out.append(deform_conv2d(inp, offset, w, self.bias, padding=d * pad, dilation=d))
        return torch.stack(out, dim=2)


class DSS(nn.Module):
    """Scale-space lifting, a per-level convolution, ``num_hidden`` scale convolutions (BatchNorm shared over
    scales, ReLU), max pooling over scales and space, linear head."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_channels: int = 40,
        num_hidden: int = 3,
        n_scales: int = 3,
        scale_size: int = 2,
        kernel_size: int = 3,
        sigma0: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_scales, self.sigma0 = n_scales, sigma0
        convs = [ScaleConv2d(in_channels, hidden_channels, 1, kernel_size)]
        convs += [ScaleConv2d(hidden_channels, hidden_channels, scale_size, kernel_size) for _ in range(num_hidden)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(nn.BatchNorm3d(hidden_channels) for _ in convs)
        self.acts = nn.ModuleList(nn.ReLU() for _ in convs)  # modules (no weights) so hooks see each output
        self.head = nn.Linear(hidden_channels, num_classes)

    @property
    def embedding(self) -> str:
        """The module whose output is the last scale-space feature map ``(B, C, S, H, W)`` before pooling."""
        return f"acts.{len(self.acts) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        x = scale_space(x, self.n_scales, self.sigma0)
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=True):
            x = act(norm(conv(x)))
        return self.head(x.amax(dim=(2, 3, 4)))


class DeformDSS(nn.Module):
    """Deformable DSS (the scale study's document, 2.2): DSS's Gaussian lifting and dilated scale convolutions,
    with 2x2 max pooling over space (28 -> 14 -> 7, as the document's model pools after each deformable layer)
    and deformable sampling (:class:`DeformScaleConv2d`) in the scale convolutions after each pooling; max over
    scales and space, linear head. The offset branches start at zero, so at initialisation every deformable
    layer equals the plain scale convolution with its weights."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_channels: int = 32,
        n_scales: int = 3,
        scale_size: int = 2,
        kernel_size: int = 3,
        sigma0: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_scales, self.sigma0 = n_scales, sigma0
        c = hidden_channels
        self.convs = nn.ModuleList(
            [
                ScaleConv2d(in_channels, c, 1, kernel_size),
                ScaleConv2d(c, c, scale_size, kernel_size),
                DeformScaleConv2d(c, c, scale_size, kernel_size),
                DeformScaleConv2d(c, c, scale_size, kernel_size),
            ]
        )
        self.norms = nn.ModuleList(nn.BatchNorm3d(c) for _ in self.convs)
        self.acts = nn.ModuleList(nn.ReLU() for _ in self.convs)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.head = nn.Linear(c, num_classes)

    @property
    def embedding(self) -> str:
        """The module whose output is the last scale-space feature map ``(B, C, S, h, w)`` before pooling."""
        return f"acts.{len(self.acts) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        x = scale_space(x, self.n_scales, self.sigma0)
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts, strict=True)):
            x = act(norm(conv(x)))
            if i in (1, 2):
                x = self.pool(x)
        return self.head(x.amax(dim=(2, 3, 4)))


def scale_pyramid(x: Tensor, n_scales: int) -> list[Tensor]:
    """DSS v2's lifting: level ``s`` is ``x`` resized by bilinear interpolation to ``(H // 2^s, W // 2^s)``."""
    h, w = x.shape[-2:]
    levels = [x]
    for s in range(1, n_scales):
        size = (max(1, h >> s), max(1, w >> s))
        levels.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    return levels


class PyramidScaleConv2d(nn.Module):
    """DSS v2's scale convolution on a pyramid (a list of ``(B, C, H_s, W_s)`` levels, each half the size of the
    one before): ``out[s] = Σ_{t<K, s+t<S} conv(up_s(f[s+t]), W_t)``, where ``up_s`` resizes bilinearly to level
    ``s``'s size; one kernel for every level, no dilation (the levels' smaller grids play its part)."""

    def __init__(
        self, in_channels: int, out_channels: int, scale_size: int = 2, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        self.conv = ScaleConv2d(in_channels, out_channels, scale_size, kernel_size, bias)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        weight, bias = self.conv.weight, self.conv.bias
        out = []
        for s, level in enumerate(levels):
            taps = min(weight.shape[2], len(levels) - s)
            size = level.shape[-2:]
            parts = [level] + [_resize(levels[s + t], size) for t in range(1, taps)]
            inp = torch.stack(parts, dim=2).flatten(1, 2)  # channel index c·taps + t
            out.append(F.conv2d(inp, weight[:, :, :taps].flatten(1, 2), bias, padding=weight.shape[-1] // 2))
        return out


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _PyramidBlock(nn.Module):
    """A pyramid scale convolution, then BatchNorm (statistics shared over the levels) and ReLU on each level."""

    def __init__(self, in_channels: int, out_channels: int, scale_size: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = PyramidScaleConv2d(in_channels, out_channels, scale_size, kernel_size)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        out = self.conv(levels)
        sizes = [o.shape[-2] * o.shape[-1] for o in out]
        flat = self.norm(torch.cat([o.flatten(2) for o in out], dim=2).unsqueeze(-1)).squeeze(-1)
        return [F.relu(p).view_as(o) for p, o in zip(flat.split(sizes, dim=2), out, strict=True)]


class LevelMaxPool(nn.Module):
    """DSS v2 before its head: each level max-pooled to the smallest level's size, stacked ``(B, C, S, h, w)``."""

    def forward(self, levels: list[Tensor]) -> Tensor:
        size = levels[-1].shape[-2:]
        return torch.stack([F.adaptive_max_pool2d(level, size) for level in levels], dim=2)


class DSSv2(nn.Module):
    """DSS v2 (the scale study's document, 2.1): the lifting is a bilinear pyramid (:func:`scale_pyramid`)
    instead of Gaussian blurs, the scale convolutions work on each level at its own size
    (:class:`PyramidScaleConv2d`), and the levels are max-pooled to the smallest one's size
    (:class:`LevelMaxPool`) before the max over scales and space and the linear head."""

    audit_layers = "levels"  # the pyramid's blocks output lists, which the per-layer audit cannot hook

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_channels: int = 40,
        num_hidden: int = 3,
        n_scales: int = 3,
        scale_size: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.n_scales = n_scales
        blocks = [_PyramidBlock(in_channels, hidden_channels, 1, kernel_size)]
        blocks += [_PyramidBlock(hidden_channels, hidden_channels, scale_size, kernel_size) for _ in range(num_hidden)]
        self.blocks = nn.Sequential(*blocks)
        self.levels = LevelMaxPool()
        self.head = nn.Linear(hidden_channels, num_classes)

    @property
    def embedding(self) -> str:
        """The module whose output is the last scale-space feature map ``(B, C, S, h, w)`` before pooling."""
        return "levels"

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.levels(self.blocks(scale_pyramid(x, self.n_scales))).amax(dim=(2, 3, 4)))


class _DeformBlock(nn.Module):
    """Offsets predicted by a convolution (zero-initialised: starts as a plain convolution), a deformable
    convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        from torchvision.ops import DeformConv2d  # torchvision is slow to import; only load it when used

        self.offset = nn.Conv2d(in_channels, 2 * kernel_size**2, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x, self.offset(x))))


class DeformCNN(nn.Module):
    """A 5x5 convolution stem and a 3x3 convolution at full resolution, then 2x2 max pooling and a deformable
    block at 1/2 and at 1/4 resolution (where deformable convolutions are affordable on a CPU), global average
    pooling, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (32, 48)) -> None:
        super().__init__()
        c0, c1 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c0, 5, padding=2),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
            nn.Conv2d(c0, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _DeformBlock(c1, c1),
            nn.MaxPool2d(2),
            _DeformBlock(c1, c1),
        )
        self.head = nn.Linear(c1, num_classes)

    @property
    def embedding(self) -> str:
        """The module whose output is the last feature map before global pooling."""
        return f"features.{len(self.features) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


_COMMON = dict(
    family="scale",
    task="classify",
    exact_groups=(),
    input_shape=(1, 28, 28),
    num_classes=10,
    default_dataset="scale-digits",
)


@register_model(
    "dss",
    description="Deep Scale-Spaces: Gaussian scale-space lifting (scales 1, 2, 4), dilated semigroup scale "
    "convolutions, max over scales; approximately invariant to zooms by 2^±1",
    groups=("scale:0.5..2:5",),
    reference="Worrall & Welling 2019, Deep Scale-spaces: Equivariance Over Scale",
    **_COMMON,
)
def dss(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 40,
    num_hidden: int = 3,
    n_scales: int = 3,
    scale_size: int = 2,
    kernel_size: int = 3,
) -> DSS:
    if tiny:
        hidden_channels, num_hidden = 2, 1
    return DSS(in_channels, num_classes, hidden_channels, num_hidden, n_scales, scale_size, kernel_size)


@register_model(
    "deform-cnn",
    description="Deformable CNN (torchvision DeformConv2d, offsets predicted by a convolution); learns to adapt "
    "its sampling, no symmetry by construction",
    groups=(),
    reference="Dai et al. 2017, Deformable Convolutional Networks",
    **_COMMON,
)
def deform_cnn(
    *, tiny: bool = False, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (32, 48)
) -> DeformCNN:
    if tiny:
        widths = (2, 2)
    return DeformCNN(in_channels, num_classes, tuple(widths))


@register_model(
    "dss-v2",
    description="DSS v2: a bilinear pyramid lifting (sizes 28, 14, 7) instead of Gaussian blurs, scale "
    "convolutions on each level at its own size, levels max-pooled to the smallest before the max over scales",
    groups=("scale:0.5..2:5",),
    reference="the scale study's document (2.1 DSS v2), after Worrall & Welling 2019",
    **_COMMON,
)
def dss_v2(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 40,
    num_hidden: int = 3,
    n_scales: int = 3,
    scale_size: int = 2,
    kernel_size: int = 3,
) -> DSSv2:
    if tiny:
        hidden_channels, num_hidden = 2, 1
    return DSSv2(in_channels, num_classes, hidden_channels, num_hidden, n_scales, scale_size, kernel_size)


@register_model(
    "deform-dss",
    description="Deformable DSS: DSS's Gaussian lifting and dilated scale convolutions, 2x2 max pooling to 14 and "
    "7 px, deformable sampling after each pooling (offsets from a parallel dilated convolution, zero at start)",
    groups=("scale:0.5..2:5",),
    reference="the scale study's document (2.2 Deformable DSS); Dai et al. 2017; Worrall & Welling 2019",
    **_COMMON,
)
def deform_dss(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 32,
    n_scales: int = 3,
    scale_size: int = 2,
    kernel_size: int = 3,
) -> DeformDSS:
    if tiny:
        hidden_channels = 2
    return DeformDSS(in_channels, num_classes, hidden_channels, n_scales, scale_size, kernel_size)
