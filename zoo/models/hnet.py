"""Harmonic Networks (Worrall et al. 2017) in plain torch: complex circular-harmonic filters.

**Convention:** a feature map has shape ``(B, C, O, P, H, W)``: ``O`` rotation orders (0 and 1 after the first
layer), ``P`` = 1 (real) or 2 (real, imaginary). A filter of rotation order ``m`` is
``W(ρ, φ) = R(ρ) · exp(i (m φ + β))``: a learned radial profile ``R`` on Gaussian rings, a learned phase ``β``,
and ``φ`` measured counter-clockwise as displayed. Cross-correlating an order-``a`` field with an order-``m``
filter gives an order ``a + m`` field, so output order ``o`` sums the input orders ``i`` through filters of
order ``o - i`` (complex conjugate for negative orders): the paper's cross-stream connections.

Rotating the input by ``θ`` multiplies every order-``o`` stream by ``exp(i o θ)`` (and rotates it), so the
magnitudes are rotation invariant. This holds for every angle up to the filter discretisation, and exactly for
quarter turns: the filters are built from ``x ± i y`` on the pixel grid, which ``rot90`` maps onto itself, and
2x2 mean pooling tiles even sizes symmetrically (28 -> 14 -> 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_model

__all__ = ["HNet", "HNetLayoutCNN", "HarmonicConv2d", "harmonic_basis", "magnitude"]

_EPS = 1e-4  # as in the paper's code: |z| = sqrt(re² + im² + eps) keeps the gradient finite at 0


def harmonic_basis(kernel_size: int, n_rings: int, max_order: int = 1) -> Tensor:
    """``(max_order + 1, n_rings, 2, k, k)`` float64: Gaussian ring ``j`` times ``exp(i m φ)`` as (re, im),
    each basis filter of unit L2 norm. Rings are evenly spaced on ``[0, (k - 1) / 2]``."""
    half = (kernel_size - 1) / 2
    coords = torch.arange(kernel_size, dtype=torch.float64) - half
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    rho = torch.sqrt(x**2 + y**2)
    radii = torch.linspace(0.0, half, n_rings, dtype=torch.float64)
    sigma = half / max(n_rings - 1, 1)
    rings = torch.exp(-((rho - radii[:, None, None]) ** 2) / (2 * sigma**2))  # (J, k, k)
    # exp(i φ) with φ counter-clockwise as displayed (y points down): (x - i y) / ρ, 0 at the centre.
    unit = torch.complex(x, -y) / torch.where(rho > 0, rho, torch.ones_like(rho))
    unit = torch.where(rho > 0, unit, torch.zeros_like(unit))
    basis = []
    for m in range(max_order + 1):
        b = rings * unit**m if m else rings.to(torch.complex128)
        b = b / torch.linalg.vector_norm(b, dim=(-2, -1), keepdim=True)
        basis.append(torch.stack([b.real, b.imag], dim=1))
    return torch.stack(basis)


def magnitude(x: Tensor) -> Tensor:
    """``(B, C, O, P, H, W)`` -> ``(B, C, O, 1, H, W)``: ``sqrt(re² + im² + eps)``."""
    return torch.sqrt((x**2).sum(dim=3, keepdim=True) + _EPS)


class HarmonicConv2d(nn.Module):
    """Harmonic cross-correlation from ``in_orders`` orders (``in_parts`` = 1 real or 2 complex) to orders
    ``0..max_order`` (complex), 'same' padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        n_rings: int = 4,
        in_orders: int = 2,
        in_parts: int = 2,
        max_order: int = 1,
        phase: bool = True,
        std_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_orders, self.in_parts, self.max_order = in_orders, in_parts, max_order
        self.register_buffer("basis", harmonic_basis(kernel_size, n_rings, max_order).float())
        std = std_mult * math.sqrt(2.0 / (in_channels * in_orders * n_rings))
        self.radial = nn.Parameter(torch.randn(max_order + 1, out_channels, in_channels, n_rings) * std)
        self.phase = nn.Parameter(torch.rand(max_order + 1, out_channels, in_channels) * 2 * math.pi) if phase else None

    def filters(self) -> tuple[Tensor, Tensor]:
        """Real and imaginary parts ``(max_order + 1, C_out, C_in, k, k)`` of the filters of each order."""
        re = torch.einsum("moij,mjkl->moikl", self.radial, self.basis[:, :, 0])
        im = torch.einsum("moij,mjkl->moikl", self.radial, self.basis[:, :, 1])
        if self.phase is not None:
            c, s = torch.cos(self.phase)[..., None, None], torch.sin(self.phase)[..., None, None]
            re, im = c * re - s * im, s * re + c * im
        return re, im

    def weight(self) -> Tensor:
        """The conv2d weight ``(C_out·O_out·2, C_in·O_in·P_in, k, k)`` of all cross-stream connections."""
        re, im = self.filters()
        rows = []
        for o in range(self.max_order + 1):
            out_re, out_im = [], []
            for i in range(self.in_orders):
                f = o - i
                c, d = re[abs(f)], (im[abs(f)] if f >= 0 else -im[abs(f)])  # conjugate for negative orders
                # (a + i b)(c + i d) = (a c - b d) + i (a d + b c)
                out_re += [c, -d] if self.in_parts == 2 else [c]
                out_im += [d, c] if self.in_parts == 2 else [d]
            rows.append(torch.stack([torch.stack(out_re, 2), torch.stack(out_im, 2)], 1))  # (C_out, 2, C_in, O·P)
        w = torch.stack(rows, 1)  # (C_out, O_out, 2, C_in, O_in·P_in, k, k)
        return w.flatten(0, 2).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()
        y = F.conv2d(x.flatten(1, 3), w, padding=w.shape[-1] // 2)
        return y.unflatten(1, (-1, self.max_order + 1, 2))


class HNonlinearity(nn.Module):
    """``z -> relu(norm(|z|) + b) · z / |z|``: a magnitude non-linearity that keeps the phase. ``batch_norm``
    normalises the magnitudes with BatchNorm (its affine shift playing the bias) instead of adding a bias."""

    def __init__(self, channels: int, orders: int = 2, batch_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels * orders) if batch_norm else None
        self.bias = None if batch_norm else nn.Parameter(torch.full((channels, orders, 1, 1, 1), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        mag = magnitude(x)
        scaled = self.norm(mag.flatten(1, 3)).view_as(mag) if self.norm is not None else mag + self.bias
        return F.relu(scaled) / mag * x


def _mean_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x.flatten(1, 3), 2).unflatten(1, x.shape[1:4])


class HNet(nn.Module):
    """The Rot-MNIST H-Net: three blocks of two harmonic convolutions (bias non-linearity, then BatchNorm
    non-linearity), 2x2 mean pooling between blocks, a final harmonic convolution to ``num_classes`` channels
    whose magnitudes are averaged over orders and space (rotation-invariant logits)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (10, 20, 40),
        kernel_size: int = 5,
        n_rings: int = 4,
    ) -> None:
        super().__init__()
        blocks = []
        c_in, orders, parts = in_channels, 1, 1
        for width in widths:
            blocks.append(
                nn.Sequential(
                    HarmonicConv2d(c_in, width, kernel_size, n_rings, in_orders=orders, in_parts=parts),
                    HNonlinearity(width),
                    HarmonicConv2d(width, width, kernel_size, n_rings),
                    HNonlinearity(width, batch_norm=True),
                )
            )
            c_in, orders, parts = width, 2, 2
        self.blocks = nn.ModuleList(blocks)
        self.final = HarmonicConv2d(c_in, num_classes, kernel_size, n_rings, phase=False)
        self.bias = nn.Parameter(torch.full((num_classes,), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, None, None]  # (B, C, order 0, real part, H, W)
        for i, block in enumerate(self.blocks):
            if i:
                x = _mean_pool(x)
            x = block(x)
        return magnitude(self.final(x)).mean(dim=(2, 3, 4, 5)) + self.bias


@register_model(
    "hnet",
    family="hnet",
    description="Harmonic Network (rotation orders 0 and 1, 7 harmonic conv layers of 10/20/40 channels); "
    "continuous rotation invariance up to discretisation, exact for quarter turns",
    task="classify",
    groups=("so2", "c4"),
    exact_groups=("c4",),
    input_shape=(1, 28, 28),
    num_classes=10,
    default_dataset="rot-digits",
    reference="Worrall, Garbin, Turmukhambetov & Brostow 2017, Harmonic Networks (Rot-MNIST model)",
)
def hnet(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, int, int] = (10, 20, 40),
    kernel_size: int = 5,
    n_rings: int = 4,
) -> HNet:
    if tiny:
        widths = (2, 2, 2)
    return HNet(in_channels, num_classes, tuple(widths), kernel_size, n_rings)


class HNetLayoutCNN(nn.Module):
    """The H-Net's CNN of equal size: the H-Net's layout with plain convolutions. Three blocks of two
    ``kernel_size`` convolutions (BatchNorm, ReLU), 2x2 mean pooling between blocks (28 -> 14 -> 7), a final
    convolution to ``num_classes`` channels averaged over space; ``widths`` (6, 12, 24) give the H-Net's
    parameter count (a 5x5 convolution has 25 weights per channel pair, a harmonic one 10)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (6, 12, 24),
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, pad = in_channels, kernel_size // 2
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.AvgPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, width, kernel_size, padding=pad), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
        self.features = nn.Sequential(*layers)
        self.final = nn.Conv2d(c_in, num_classes, kernel_size, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.features(x)).mean(dim=(-2, -1))


@register_model(
    "cnn-hnet",
    family="cnn",
    description="Plain CNN of hnet's size and layout (3 blocks of two 5x5 convolutions of 6/12/24 channels, "
    "2x2 mean pooling between blocks, a final convolution averaged over space)",
    task="classify",
    groups=(),
    exact_groups=(),
    input_shape=(1, 28, 28),
    num_classes=10,
    default_dataset="rot-digits",
    reference="Worrall et al. 2017, Harmonic Networks (Rot-MNIST comparison with a CNN of equal parameter count)",
)
def cnn_hnet(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, int, int] = (6, 12, 24),
    kernel_size: int = 5,
) -> HNetLayoutCNN:
    if tiny:
        widths = (4, 4, 4)
    return HNetLayoutCNN(in_channels, num_classes, tuple(widths), kernel_size)
