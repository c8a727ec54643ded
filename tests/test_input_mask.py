"""The input mask: every view of an image holds the same content, so an invariance audit does not charge a
model for what resampling cut away or padded in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equiaudit.engine import audit
from equiaudit.groups import parse_group
from equiaudit.metrics import relative_error
from equiaudit.testing import FLOAT_TOLERANCE, assert_invariant, equivariance_error
from equiaudit.transforms import apply_elements, input_region, valid_mask


class GlobalMean(nn.Module):
    """Logits that are a function of the input's global mean: invariant to rotation in the continuum."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.b = nn.Parameter(torch.tensor([0.3, 0.1, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None] * self.w + self.b


class CornerReader(nn.Module):
    """Logits from the mean of the top-left 10x10 block: not invariant to anything but the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[..., :10, :10].mean(dim=(1, 2, 3))
        return torch.stack([m, -m, 2 * m], -1)


def _photos() -> torch.Tensor:
    from equiaudit.data import load_data

    data = load_data("photos")
    return data.read(0, len(data)).x


@pytest.mark.parametrize("group", ["so2:12", "so2:36"])
def test_global_mean_model_is_within_its_floor_on_photos(group: str) -> None:
    x = _photos()
    masked = audit(GlobalMean(), x, group, samples=0)
    assert masked.run.input_region == "valid" and masked.run.input_fraction < 0.85
    rest = masked.elements[masked.elements["label"] != "identity"]
    assert (rest["invariance_error_max"] <= rest["floor_max"] + FLOAT_TOLERANCE["float32"]).all()
    assert rest["invariance_error_max"].max() < 1e-3  # the mean of what every view shows is the same
    assert_invariant(GlobalMean(), group, x)  # the default verdict agrees
    # Without the mask the corners that a rotation cuts away (and the zeros it pads in) change the mean.
    unmasked = audit(GlobalMean(), x, group, input_mask="none", samples=0)
    assert unmasked.run.input_region == "none"
    assert unmasked.elements["invariance_error"].max() > 100 * rest["invariance_error"].max()
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(GlobalMean(), group, x, input_mask="none", max_error=0.01)


def test_a_model_reading_a_corner_is_still_caught_on_noise() -> None:
    report = equivariance_error(CornerReader(), "so2:12", "noise", input_shape=(1, 28, 28))
    assert report.result.run.input_region == "valid"
    assert report.max_error > 10 * max(e.floor for e in report.elements)
    with pytest.raises(AssertionError):
        assert_invariant(CornerReader(), "so2:12", "noise", input_shape=(1, 28, 28))


@pytest.mark.parametrize(
    ("spec", "area"),
    [("so2:12", False), ("rot:10,33,170", False), ("scale:1.1,1.25,1.5", True), ("so2:8*scale:1,1.2", True)],
)
def test_every_view_of_a_masked_input_has_the_same_sum(spec: str, area: bool) -> None:
    """Rotations keep the sum of pixels; a zoom by s multiplies areas, so the sum, by s**2."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 40, 40, dtype=torch.float64)
    elements = parse_group(spec).elements
    region = input_region(elements, (40, 40))
    assert region is not None and not region.all()
    masked = x * region
    scale = torch.tensor([g.scale**2 if area else 1.0 for g in elements], dtype=torch.float64)[:, None]

    def change(inp: torch.Tensor) -> torch.Tensor:
        """(G,) the largest relative change of the sum of pixels (per unit of area) over the images."""
        sums = apply_elements(inp, elements).sum(dim=(-3, -2, -1)) / scale  # (G, B)
        return ((sums - inp.sum(dim=(-3, -2, -1))).abs() / inp.sum(dim=(-3, -2, -1))).amax(-1)

    back = apply_elements(apply_elements(masked, elements), elements, inverse=True)
    floor = relative_error(back, masked, valid_mask(elements, (40, 40))).amax(-1)  # (G,) round-trip floor
    assert (change(masked) <= floor + 1e-12).all(), (spec, change(masked), floor)
    # without the mask content is cut away (or padded in): the sums move by far more
    assert change(x).max() > 10 * change(masked).max(), (spec, change(x), change(masked))


def test_exact_groups_and_zooms_out_are_not_masked() -> None:
    for spec in ("c4", "d4", "flip", "scale:0.5,0.8,1"):
        assert input_region(parse_group(spec).elements, (28, 28)) is None, spec
    assert input_region(parse_group("c4").elements, (28, 28), "disk") is not None  # asked for
    res = audit(GlobalMean(), torch.rand(3, 1, 28, 28), "d4", samples=0)
    assert (res.run.input_region, res.run.input_fraction) == ("none", 1.0)


def test_gallery_shows_the_masked_inputs() -> None:
    x = _photos()[:2]
    res = audit(GlobalMean(), x, "so2:8", samples=2)
    region = input_region(parse_group("so2:8").elements, x.shape[-2:])
    shown = torch.from_numpy(res.samples["first"]["x"])
    torch.testing.assert_close(shown, x * region)
