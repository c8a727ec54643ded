"""The Lie derivative (equiaudit.lie): its generator is the transforms' own derivative at the identity, it is ~0
for exactly SO(2)-invariant / -equivariant models and clearly not for coordinate-dependent ones, and it agrees
with a finite difference of the grid audit at small angles on smooth inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equiaudit import audit
from equiaudit.groups import GroupElement
from equiaudit.lie import generators_for, tangent
from equiaudit.transforms import transform

S = 48


def blobs(n: int = 6, sigma: float = 4.0) -> torch.Tensor:
    """Smooth float64 images: three Gaussian blobs each, near the centre (nothing at the border)."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    out = torch.zeros(n, 1, S, S, dtype=torch.float64)
    for i in range(n):
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=gen, dtype=torch.float64) - 0.5) * 16 + (S - 1) / 2
            out[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return out


def radius() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    return torch.sqrt((yy - (S - 1) / 2) ** 2 + (xx - (S - 1) / 2) ** 2)


class Radial(nn.Module):
    """Logits from soft radial averages of the image: exactly SO(2)-invariant in the continuum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        centres = torch.linspace(2, 20, 6, dtype=torch.float64)
        self.register_buffer("rings", torch.exp(-((radius()[None] - centres[:, None, None]) ** 2) / 8))
        self.head = nn.Linear(6, 5).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(torch.einsum("bchw,khw->bk", x, self.rings) / 20))


class Coordinates(nn.Module):
    """A convolution, then a linear map of every pixel: depends on where things are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 5, padding=2).double()
        self.head = nn.Linear(4 * S * S, 5).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def kernel(weights: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, weights.shape[-1], padding=weights.shape[-1] // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(weights)
    return conv


@pytest.mark.parametrize(("generator", "element"), [("rotation", "angle"), ("scale", "scale")])
def test_generator_is_the_transforms_derivative_at_the_identity(generator: str, element: str) -> None:
    """Pins the sign and the centre: a symmetric difference of the transforms (bilinear, align_corners=False,
    about the centre, counter-clockwise as displayed) at +-1e-3 matches the closed-form tangent to 1e-3."""
    x, eps = blobs(2), 1e-3
    plus = GroupElement(angle=math.degrees(eps)) if element == "angle" else GroupElement(scale=math.exp(eps))
    minus = GroupElement(angle=-math.degrees(eps)) if element == "angle" else GroupElement(scale=math.exp(-eps))
    finite = (transform(x, plus) - transform(x, minus)) / (2 * eps)
    t, inner = tangent(x, generator), (..., slice(6, -6), slice(6, -6))
    assert float((finite - t)[inner].norm() / t[inner].norm()) < 1e-3
    assert float((finite + t)[inner].norm() / t[inner].norm()) > 1.9  # the opposite sign is far off


def test_invariant_model_has_a_lie_derivative_near_zero_and_a_coordinate_model_does_not() -> None:
    x = blobs()
    flat = audit(Radial(), x, "so2:8", lie=True, samples=0).lie["output"]["rotation"]["mean"]
    moved = audit(Coordinates(), x, "so2:8", lie=True, samples=0).lie["output"]["rotation"]["mean"]
    assert flat < 2e-3  # measured 7e-4: the discretisation of the rings, not the model
    assert moved > 0.2 and moved > 100 * flat


def test_lie_derivative_agrees_with_a_finite_difference_of_the_grid_audit() -> None:
    """At +-0.5 degrees the grid audit's invariance error is about 0.5 degrees (in radians) times the Lie
    derivative; the mean of the two signs cancels bilinear resampling's first-order bias. Tolerance 5%
    (measured 1.3%)."""
    res = audit(Coordinates(), blobs(), "rot:0,0.5,-0.5", lie=True, samples=0)
    err = res.elements.set_index("label")["invariance_error"]
    finite = (err["rot0.5"] + err["rot-0.5"]) / 2 / math.radians(0.5)
    lie = res.lie["output"]["rotation"]["mean"]
    assert finite == pytest.approx(lie, rel=0.05)


def test_lie_derivative_of_maps_uses_the_spatial_action() -> None:
    """An isotropic blur commutes with rotations (~0); a shift by two pixels does not."""
    yy, xx = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    g = torch.exp(-((yy - 3) ** 2 + (xx - 3) ** 2) / 4).double()
    shift = torch.zeros(7, 7, dtype=torch.float64)
    shift[3, 5] = 1
    x = blobs()
    blur = audit(kernel(g / g.sum()), x, "so2:8", task="dense", lie=True, samples=0).lie["output"]["rotation"]["mean"]
    moved = audit(kernel(shift), x, "so2:8", task="dense", lie=True, samples=0).lie["output"]["rotation"]["mean"]
    assert blur < 3e-3 and moved > 0.1  # measured 1e-3 and 0.29


def test_lie_per_layer_and_generators() -> None:
    """Per layer the same quantity: a model whose only layer is its output has the output's Lie derivative;
    the scale generator appears when the group scales."""
    model = nn.Sequential(kernel(torch.ones(1, 1, 3, 3, dtype=torch.float64) / 9), nn.Tanh())
    res = audit(model, blobs(3), "scale:0.9,1,1.1*c4", task="dense", lie=True, layers="1", samples=0)
    assert res.lie["generators"] == ["rotation", "scale"]
    row = res.layers["layers"][0]
    for gen in ("rotation", "scale"):
        assert row["lie"][gen] == pytest.approx(res.lie["output"][gen]["mean"], rel=1e-9)
    assert generators_for(tuple(GroupElement(reflect=r) for r in (False, True))) == ("rotation",)
