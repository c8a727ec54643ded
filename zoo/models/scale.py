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

__all__ = ["DSS", "DeformCNN", "ScaleConv2d", "scale_space"]


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

    def forward(self, x: Tensor) -> Tensor:
        n_scales, k = x.shape[2], self.weight.shape[-1]
        out = []
        for s in range(n_scales):
            taps = min(self.weight.shape[2], n_scales - s)
            inp = x[:, :, s : s + taps].flatten(1, 2)  # channel index c·taps + t
            w = self.weight[:, :, :taps].flatten(1, 2)
            d = 2**s
            out.append(F.conv2d(inp, w, self.bias, padding=d * (k // 2), dilation=d))
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
        self.head = nn.Linear(hidden_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = scale_space(x, self.n_scales, self.sigma0)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))
        return self.head(x.amax(dim=(2, 3, 4)))


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
