"""Applying elements: conventions pinned, exact path vs grid path, round trips, masks, the module face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from equiaudit.data import pad_centre
from equiaudit.errors import EquiauditError
from equiaudit.groups import GroupElement, parse_group
from equiaudit.transforms import (
    GroupTransform,
    apply_elements,
    centre_offset,
    centre_region,
    parse_mask,
    sampling_grid,
    transform,
    valid_mask,
)


def _pixel(h: int, w: int, y: int, x: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w, dtype=dtype)
    img[0, 0, y, x] = 1.0
    return img


@pytest.mark.parametrize("path", ["exact", "grid"])
def test_bright_pixel_rotates_counter_clockwise(path: str) -> None:
    # A pixel right of the centre of a 7x7 image lands above the centre under +90 degrees (y down).
    img = _pixel(7, 7, 3, 5)
    if path == "exact":
        out = transform(img, GroupElement(90))
    else:
        grid = sampling_grid([GroupElement(90)], (7, 7))
        out = F.grid_sample(img, grid, align_corners=False)
    assert out[0, 0].argmax().item() == 1 * 7 + 3  # row 1, column 3
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_flip_and_scale_conventions() -> None:
    img = _pixel(7, 7, 3, 5)
    assert transform(img, GroupElement(reflect=True))[0, 0, 3, 1] == 1.0  # mirrored left-right
    assert transform(img, GroupElement(180, reflect=True))[0, 0, 3, 5] == 1.0  # vflip keeps this row
    # scale 2 zooms in about the centre: the pixel 2 right of centre moves to 4 right of centre... off a 7-wide image
    # edge, so take the pixel 1 right of centre: it moves 2 right.
    out = transform(_pixel(7, 7, 3, 4), GroupElement(scale=2.0), interpolation="nearest")
    assert out[0, 0, 3, 5] == 1.0


def test_element_then_inverse_is_identity_on_exact_elements(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 9, 9, dtype=dtype)
    group = parse_group("d4")
    back = apply_elements(apply_elements(x, group), group, inverse=True)
    assert torch.equal(back, x.expand_as(back))


def test_grid_path_agrees_with_rot90(dtype: torch.dtype, tol: dict[str, float]) -> None:
    x = torch.randn(2, 3, 12, 12, dtype=dtype)
    for k in range(4):
        grid = sampling_grid([GroupElement(90 * k)], (12, 12), dtype=dtype)
        sampled = F.grid_sample(x.reshape(1, 6, 12, 12), grid, align_corners=False).reshape(2, 3, 12, 12)
        torch.testing.assert_close(sampled, torch.rot90(x, k, dims=(-2, -1)), **tol)


def test_round_trip_of_smooth_image_is_small_inside_the_mask() -> None:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x = torch.exp(-((xx - 0.2) ** 2 + yy**2) / 0.2)[None, None].double()
    group = parse_group("so2:12")
    back = apply_elements(apply_elements(x, group), group, inverse=True)
    mask = valid_mask(group.elements, (32, 32))
    err = ((back - x) * mask).abs().max().item()
    assert err < 0.02
    assert (back - x).abs().amax() > err  # outside the mask the zero padding shows


def test_stacked_input_applies_each_element_to_its_slice() -> None:
    x = torch.randn(3, 1, 2, 8, 8)
    group = parse_group("c4")[:3]
    out = apply_elements(x, group)
    for i, g in enumerate(group):
        torch.testing.assert_close(out[i], transform(x[i], g))


def test_non_square_quarter_turn_falls_back_to_sampling() -> None:
    x = torch.randn(1, 1, 6, 10)
    out = transform(x, GroupElement(90))
    assert out.shape == x.shape
    assert torch.equal(transform(x, GroupElement(180)), torch.rot90(x, 2, dims=(-2, -1)))


def test_valid_mask_is_disk_for_rotations_and_centre_for_zoom() -> None:
    so2 = valid_mask(parse_group("so2:36").elements, (33, 33))
    disk = valid_mask([], (33, 33), "disk")
    assert abs(so2.float().mean() - disk.float().mean()) < 0.03
    assert valid_mask(parse_group("c4").elements, (33, 33)).all()
    zoom = valid_mask([GroupElement(scale=2.0)], (33, 33))
    rows = zoom.any(1).nonzero().flatten()
    assert rows.min() >= 7 and rows.max() <= 25
    assert valid_mask([GroupElement(scale=0.5)], (33, 33)).all()
    assert valid_mask(parse_group("so2").elements, (8, 8), "none").all()


def test_centre_mask_is_the_image_inside_its_pad_canvas() -> None:
    # at the input's resolution: exactly the pixels pad_centre puts the image on (odd margins rounded alike)
    for inner, size in (((5, 4), (9, 8)), ((64, 64), (96, 96)), ((3, 3), (8, 8))):
        canvas = pad_centre(torch.ones(1, *inner), size)[0].bool()
        assert torch.equal(centre_region(inner, size, size), canvas)
    # at half the resolution: the pixels whose centres (1, 3, 5, 7 in input pixels) fall in [2, 6)
    half = centre_region((4, 4), (8, 8), (4, 4))
    assert torch.equal(half, torch.tensor([False, True, True, False])[:, None] & torch.tensor([0, 1, 1, 0]).bool())
    # within auto: a 1.5x canvas keeps the image's corners in view under every rotation, so the mask is the crop
    so2 = parse_group("so2:36").elements
    crop = valid_mask(so2, (96, 96), "centre:64")
    assert torch.equal(crop, centre_region((64, 64), (96, 96), (96, 96)))
    assert torch.equal(valid_mask(so2, (33, 33), "centre:33"), valid_mask(so2, (33, 33)))  # no canvas: auto
    assert valid_mask(so2, (48, 48), "centre:64", in_size=(96, 96)).sum() == 32 * 32  # an output at half size


def test_mask_option_is_parsed_or_refused_in_one_line() -> None:
    assert parse_mask("disk") == ("disk", None) and parse_mask("centre:64") == ("auto", (64, 64))
    assert parse_mask("centre:48x64") == ("auto", (48, 64))
    for bad in ("square", "centre:", "centre:0", "centre:4x", "center:4", "centre:-2", "centre:064", " centre:64"):
        with pytest.raises(EquiauditError, match="unknown mask"):
            parse_mask(bad)
    with pytest.raises(EquiauditError, match="larger than the 8x8 input"):
        valid_mask([], (8, 8), "centre:9")
    with pytest.raises(EquiauditError, match="holds no pixel centre of a 6x6 map"):  # 0 compared would read as 0
        valid_mask([], (6, 6), "centre:2", in_size=(24, 24))


def test_centre_offset_rounds_an_odd_margins_half_to_even() -> None:
    # torchvision's CenterCrop convention (round half to even), for crops, pads and centre masks alike
    assert [centre_offset(outer, 1) for outer in (2, 4, 6, 8)] == [0, 2, 2, 4]
    assert torch.equal(centre_region((1, 1), (4, 4), (4, 4))[:, 2], torch.tensor([False, False, True, False]))
    assert torch.equal(pad_centre(torch.ones(1, 1, 1), (2, 4))[0], torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 0]]))


def test_grids_are_cached_per_size_and_dtype() -> None:
    cache: dict = {}
    group = parse_group("so2:8")
    x = torch.randn(1, 1, 16, 16)
    apply_elements(x, group, cache=cache)
    apply_elements(x, group, cache=cache)
    assert len(cache) == 1
    apply_elements(x.double(), group, cache=cache)
    apply_elements(torch.randn(1, 1, 8, 8), group, cache=cache)
    assert len(cache) == 3


def test_module_wraps_the_function() -> None:
    module = GroupTransform("so2", steps=6, interpolation="bicubic", padding="border")
    x = torch.randn(2, 1, 10, 10)
    expected = apply_elements(x, parse_group("so2:6"), interpolation="bicubic", padding="border")
    torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(
        module.inverse(module(x)),
        apply_elements(expected, parse_group("so2:6"), inverse=True, interpolation="bicubic", padding="border"),
    )
    assert "so2:6" in repr(module)


@pytest.mark.parametrize("kwargs", [{"interpolation": "lanczos"}, {"padding": "wrap"}])
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(EquiauditError):
        apply_elements(torch.zeros(1, 1, 4, 4), parse_group("so2:4"), **kwargs)


def test_sampling_matches_independent_reference_rotation() -> None:
    # Independent reference: rotate pixel coordinates with numpy and sample bilinearly by hand at one pixel.
    rng = np.random.default_rng(0)
    img = rng.random((16, 16))
    g = GroupElement(30)
    out = transform(torch.from_numpy(img)[None, None], g)[0, 0].numpy()
    inv = g.inverse().matrix((16, 16))
    for y, x in [(8, 8), (5, 9), (10, 6)]:
        sx, sy = inv @ [x, y, 1]
        x0, y0 = int(np.floor(sx)), int(np.floor(sy))
        fx, fy = sx - x0, sy - y0
        ref = (
            img[y0, x0] * (1 - fx) * (1 - fy)
            + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy
            + img[y0 + 1, x0 + 1] * fx * fy
        )
        assert out[y, x] == pytest.approx(ref, abs=1e-10)


def test_integer_images_are_permuted_exactly_but_not_sampled() -> None:
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    assert torch.equal(transform(x, GroupElement(90)), torch.rot90(x, 1, dims=(-2, -1)))
    with pytest.raises(EquiauditError, match="floating-point"):
        transform(x, GroupElement(30))
