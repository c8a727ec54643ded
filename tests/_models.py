"""Small models with known equivariance, shared by the core tests."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A plain CNN classifier: neither invariant nor equivariant."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(width * 14 * 14, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class C4Averaged(nn.Module):
    """Logits averaged over the four rot90s of the input (and the mirrors with ``d4=True``): exactly invariant."""

    def __init__(self, base: nn.Module, d4: bool = False) -> None:
        super().__init__()
        self.base, self.d4 = base, d4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        if self.d4:
            views += [torch.flip(v, dims=(-1,)) for v in views]
        return torch.stack([self.base(v) for v in views]).mean(0)


class Identity(nn.Module):
    """f(x) = x: a dense model that is exactly equivariant; its measured error is the interpolation floor."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * self.dummy


class CoordinateModel(nn.Module):
    """Weights the image by its x coordinate: breaks rotation equivariance in a known way."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ramp = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).expand(h, w)
        return x * ramp + 0 * self.dummy


class ConstantSeg(nn.Module):
    """1-channel segmentation logits from a 3x3 blur: rot90-equivariant (symmetric kernel)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / (9 * in_channels))
            self.conv.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FailsMidScan(SmallCNN):
    """A classifier that raises on its fourth forward: a scan that breaks part-way."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("device lost\nsecond line")
        return super().forward(x)


def single_conv(k: int, kind: str, seed: int = 3) -> nn.Module:
    """One 1-channel convolution without bias: ``random`` weights, or ``iso`` (a Gaussian of the distance to
    the centre, so equivariant to rotation up to resampling), or ``one`` (a 1x1 scaling)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 1, k, padding=k // 2, bias=False)
    with torch.no_grad():
        if kind == "random":
            conv.weight.normal_()
        elif kind == "iso":
            r = torch.arange(k) - k // 2
            conv.weight.copy_(torch.exp(-(r[:, None] ** 2 + r[None] ** 2).float() / 2)[None, None])
        else:
            conv.weight.fill_(0.7)
    return conv.eval()
