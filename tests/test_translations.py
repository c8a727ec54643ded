"""Translations: the grammar, the convention (content moves right / down), exact integer shifts under every
padding, circular padding as a true group action, masks, dense outputs at another resolution, and models whose
shift behaviour is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tolerances import TOLERANCES
from torch import nn

from equiaudit import audit
from equiaudit.data import AuditData
from equiaudit.errors import GroupSpecError
from equiaudit.groups import GroupElement, parse_group
from equiaudit.transforms import (
    PADDINGS,
    apply_elements,
    apply_per_row,
    at_resolution,
    input_region,
    shift_pixels,
    transform,
    uses_exact_path,
    valid_mask,
)

RTOL, ATOL = TOLERANCES[torch.float64]


def _image(h: int = 7, w: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---- grammar ------------------------------------------------------------------------------------------------


def test_translate_forms_and_labels() -> None:
    grid = parse_group("translate:-3..3:7")
    assert len(grid) == 49 and grid.kind == "translation" and grid.exact
    assert {g.shift for g in grid} == {(float(x), float(y)) for x in range(-3, 4) for y in range(-3, 4)}
    assert [g.shift for g in parse_group("translate-x:-1,0,2")] == [(-1.0, 0.0), (0.0, 0.0), (2.0, 0.0)]
    assert [g.shift for g in parse_group("translate-y:0..1:3")] == [(0.0, 0.0), (0.0, 0.5), (0.0, 1.0)]
    assert not parse_group("translate-y:0..1:3").exact  # a half-pixel shift is resampled
    (one,) = parse_group("shift:2,-1")
    assert one.label == "shift(2,-1)" and one.params()["dx"] == 2.0 and one.params()["dy"] == -1.0
    product = parse_group("rot:-30..30:31*translate:-3..3:7")
    assert len(product) == 31 * 49 and product.kind == "mixed"
    # the shift acts first, so the product lists the grid's (angle, shift) pairs as they are
    pairs = {(g.angle, g.shift) for g in product}
    assert (-30.0, (3.0, -3.0)) in pairs and (12.0, (0.0, 1.0)) in pairs
    assert GroupElement(12.0, shift=(0, 1)).label == "rot12*shift(0,1)"


@pytest.mark.parametrize("spec", ["shift:1", "shift:1,2,3", "shift:0..1:2", "translate:a,b", "translate-x:1..2"])
def test_bad_translations_name_the_valid_forms(spec: str) -> None:
    with pytest.raises(GroupSpecError, match="valid forms") as info:
        parse_group(spec)
    assert "\n" not in str(info.value)


def test_composition_inverse_and_matrix_agree() -> None:
    """``matrix`` is the forward map ``p -> L (p + t)``; composition and inverse follow it in float64."""

    def hom(g: GroupElement) -> np.ndarray:
        return np.vstack([g.matrix(), [0.0, 0.0, 1.0]])

    a, b = GroupElement(30, 1.25, True, (1.5, -2)), GroupElement(-70, 0.8, False, (0.25, 2))
    np.testing.assert_allclose(hom(a * b), hom(a) @ hom(b), atol=1e-8)
    assert (a * a.inverse()).is_identity and (a.inverse() * a).is_identity
    # by hand: shift (2, 1), then a quarter turn counter-clockwise (y down): (x, y) -> (y, -x)
    m = GroupElement(90, shift=(2, 1)).matrix()
    np.testing.assert_allclose(m @ np.array([1.0, 0.0, 1.0]), [1.0, -3.0], atol=1e-12)
    assert (GroupElement(shift=(1, 0)) * GroupElement(shift=(2, -1))).shift == (3.0, -1.0)


# ---- transforms ---------------------------------------------------------------------------------------------


def test_positive_shift_moves_content_right_and_down() -> None:
    x = torch.zeros(1, 1, 5, 6, dtype=torch.float64)
    x[..., 1, 2] = 1.0
    y = transform(x, GroupElement(shift=(2, 1)))
    assert y[0, 0].nonzero().tolist() == [[2, 4]]  # (row, column): one down, two right


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize(
    "g", [GroupElement(shift=(2, -3)), GroupElement(90, shift=(1, 2)), GroupElement(180, reflect=True, shift=(-4, 1))]
)
def test_integer_shifts_are_exact_and_agree_with_the_sampler(padding: str, g: GroupElement) -> None:
    x = _image(9, 9)
    assert uses_exact_path(g, (9, 9))
    exact = apply_elements(x, [g], padding=padding)[0]
    sampled = apply_per_row(x.repeat(1, 1, 1, 1), [g, g], padding=padding)  # the grid path, one theta per row
    torch.testing.assert_close(exact, sampled, rtol=RTOL, atol=1e-12)


def test_shifted_in_pixels_follow_the_padding() -> None:
    x = torch.arange(1.0, 6.0, dtype=torch.float64).view(1, 1, 1, 5)  # [1 2 3 4 5]
    row = {p: shift_pixels(x, 2, 0, p)[0, 0, 0].tolist() for p in PADDINGS}
    assert row["zeros"] == [0, 0, 1, 2, 3]
    assert row["border"] == [1, 1, 1, 2, 3]
    assert row["reflection"] == [2, 1, 1, 2, 3]  # mirrored about the edge: -1 -> 0, -2 -> 1
    assert row["circular"] == [4, 5, 1, 2, 3]


def test_circular_padding_makes_integer_shifts_a_group_action() -> None:
    x = _image()
    a, b = GroupElement(shift=(2, -1)), GroupElement(shift=(-5, 3))
    ab = apply_elements(apply_elements(x, [b], padding="circular")[0], [a], padding="circular")[0]
    assert torch.equal(ab, apply_elements(x, [a * b], padding="circular")[0])  # bit for bit
    back = apply_elements(apply_elements(x, [a], padding="circular")[0], [a], inverse=True, padding="circular")[0]
    assert torch.equal(back, x)
    assert torch.equal(apply_elements(x, [a], padding="circular")[0], torch.roll(x, (-1, 2), dims=(-2, -1)))
    # with zero padding the pixels shifted out are lost: not a group action
    lost = apply_elements(apply_elements(x, [a], padding="zeros")[0], [a], inverse=True, padding="zeros")[0]
    assert not torch.equal(lost, x)


def test_subpixel_circular_shift_by_hand() -> None:
    """Half a pixel to the right on the torus is the mean of the image and its roll by one (bilinear)."""
    x = _image()
    y = transform(x, GroupElement(shift=(0.5, 0)), padding="circular")
    torch.testing.assert_close(y, (x + torch.roll(x, 1, dims=-1)) / 2, rtol=RTOL, atol=ATOL)
    z = transform(x, GroupElement(shift=(0.5, 0)), padding="zeros")
    torch.testing.assert_close(z[..., 0], x[..., 0] / 2, rtol=RTOL, atol=ATOL)  # half of a padded zero


def test_masks_know_shifts() -> None:
    grid = parse_group("translate-x:-2..2:5").elements
    mask = valid_mask(grid, (4, 8))
    assert mask.all(0).tolist() == [False, False, True, True, True, True, False, False]
    assert valid_mask(grid, (4, 8), padding="circular").all()  # a torus keeps every pixel
    assert input_region(grid, (4, 8), padding="circular") is None
    assert input_region(grid, (4, 8)).sum() == 4 * 4


def test_shifts_scale_to_the_output_resolution() -> None:
    (g,) = at_resolution([GroupElement(30, shift=(4, -2))], (32, 32), (16, 16))
    assert g.shift == (2.0, -1.0) and g.angle == 30.0


# ---- models with a known shift behaviour --------------------------------------------------------------------


class PooledConv(nn.Module):
    """A binary classifier: global average pooling of a circular-padded convolution, minus a threshold (stride 1:
    exactly shift-invariant on the torus; stride 4 without anti-aliasing: not). The threshold lies between the
    middle two pooled features of ``data`` (an even number of images), so half the images are predicted as each
    class and several sit near the decision boundary, none on it."""

    def __init__(self, data: torch.Tensor, stride: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 5, stride=stride, padding=2, padding_mode="circular")
        self.threshold = 0.0
        with torch.no_grad():
            z = self(data)[:, 1].sort().values
            self.threshold = float(z[len(z) // 2 - 1 : len(z) // 2 + 1].mean())  # between the middle two

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv(x)).mean((-2, -1)) - self.threshold
        return torch.cat([torch.zeros_like(z), z], -1)  # two logits: the centred ones change with z


def _noise(n: int = 12, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_circular_conv_with_pooling_is_shift_invariant_under_circular_translate() -> None:
    x = _noise()
    res = audit(PooledConv(x), AuditData.from_tensors(x), "translate:-3..3:7", padding="circular", samples=0)
    assert res.run.input_region == "none"  # nothing cut away: the torus keeps every pixel
    assert res.summary["invariance_error_max"] < 1e-5
    assert res.summary["consistency"] == 1.0 and res.summary["exact_group"]


def test_strided_conv_without_anti_aliasing_is_not_shift_consistent() -> None:
    x = _noise()
    res = audit(PooledConv(x, 4), AuditData.from_tensors(x), "translate:-3..3:7", padding="circular", samples=0)
    assert res.summary["invariance_error_max"] > 1e-2
    c = res.summary["consistency"]
    assert c < 1.0 and res.summary["consistency_low"] <= c <= res.summary["consistency_high"]
    assert res.intervals["methods"]["consistency"].startswith("bootstrap")


class AvgPoolDense(nn.Module):
    """A dense map at half the resolution: 2x2 average pooling, equivariant to even circular shifts."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 2) + 0 * self.dummy


def test_dense_outputs_undo_shifts_at_their_own_resolution() -> None:
    data = AuditData.from_tensors(_noise(4))
    even = audit(AvgPoolDense(), data, "translate:-2,0,2", padding="circular", task="dense", samples=0)
    assert even.summary["equivariance_error_max"] < 1e-6  # a 2 px input shift is 1 px of the output
    odd = audit(AvgPoolDense(), data, "translate-x:-1,0,1", padding="circular", task="dense", samples=0)
    assert odd.summary["equivariance_error_max"] > 1e-2  # half an output pixel: pooling is not equivariant
