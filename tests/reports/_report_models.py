"""Tiny models with known symmetry for the report tests."""

from __future__ import annotations

import torch
from _models import C4Averaged as RotAveraged  # noqa: F401 - the one quarter-turn-averaged model of the tests
from torch import nn


class TinyCNN(nn.Module):
    """A plain CNN classifier (no symmetry)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TinySeg(nn.Module):
    """One-channel segmentation logits from two convolutions (no symmetry)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv2d(6, 1, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Ramp(nn.Module):
    """A dense model that adds a horizontal ramp: breaks rotation and scale equivariance in a known way."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1], dtype=x.dtype, device=x.device).expand(x.shape[-2:])
        return x + ramp + 0 * self.dummy
