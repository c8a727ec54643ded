"""Models and images whose worst case is known by construction, for the search tests."""

from __future__ import annotations

import torch
from torch import nn

FAIL_ANGLE = 37.0  # degrees, counter-clockwise as displayed


class NarrowFailure(nn.Module):
    """Reads the orientation of the image's principal axis (second moments, y up, modulo 180 degrees) and
    returns the logits ``[4, 5 exp(-(d / 2)^2)]`` with ``d`` its distance to :data:`FAIL_ANGLE`: class 0 wins
    except within ``2 sqrt(ln 1.25) = 0.94`` degrees of 37 (and of 217), where class 1 does. The margin of
    class 0 falls smoothly towards 37 degrees, so a search can follow it; on a 10 degree grid the closest
    elements (30 and 40 degrees) are 3 degrees away and class 0 still wins by 3.5."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def orientation(self, x: torch.Tensor) -> torch.Tensor:
        x = x.sum(1).double()
        h, w = x.shape[-2:]
        up = -(torch.arange(h, dtype=x.dtype, device=x.device) - (h - 1) / 2)[:, None].expand(h, w)
        right = (torch.arange(w, dtype=x.dtype, device=x.device) - (w - 1) / 2)[None].expand(h, w)
        mass = x.sum((-2, -1))

        def moment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (x * a * b).sum((-2, -1)) / mass

        cxx, cyy, cxy = moment(right, right), moment(up, up), moment(right, up)
        return torch.rad2deg(0.5 * torch.atan2(2 * cxy, cxx - cyy))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.remainder(self.orientation(x) - FAIL_ANGLE + 90, 180) - 90
        bump = 5 * torch.exp(-((d / 2) ** 2))
        return torch.stack([torch.full_like(bump, 4.0), bump], -1).to(x.dtype) + 0 * self.dummy


def bars(n: int, size: int = 33) -> torch.Tensor:
    """``(n, 1, size, size)`` horizontal Gaussian bars (orientation 0), a little different in length each."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    out = [torch.exp(-(r[:, None] ** 2 / 1.5**2 + r[None] ** 2 / (5.0 + 0.2 * i) ** 2) / 2) for i in range(n)]
    return torch.stack(out)[:, None].float()
