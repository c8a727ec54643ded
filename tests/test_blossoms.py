"""The generated ``blossoms`` data: determinism, splits, balance, labels and the symmetry of each blossom."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from kornia.geometry.transform import rotate

from equiaudit.data import load_data
from equiaudit.datasets import blossoms as bl
from equiaudit.errors import DataError

N_CLASSES = len(bl.PETAL_COUNTS) * len(bl.PETAL_SHAPES) * len(bl.COLOURS)


def _centred(label: int, phi: float, size: int = 97) -> torch.Tensor:
    """One blossom of class ``label`` at the image centre over a plain background, orientation ``phi``."""
    p = bl.split_params("test", 0).select(slice(0, 1))
    p = replace(
        p,
        label=torch.tensor([label]),
        phi=torch.tensor([phi]),
        centre=torch.zeros(1, 2),
        radius=torch.tensor([0.7]),
        back_rgb=torch.full((1, 2, 3), 0.2),
    )
    return bl.render(p, (size, size), supersample=4)


def _disc(size: int, radius: float) -> torch.Tensor:
    c = (torch.arange(size) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return (xx**2 + yy**2) <= radius**2


def test_same_seed_same_images_and_another_seed_other_images() -> None:
    a = next(load_data("blossoms", split="val", limit=8).batches(8))
    b = next(load_data("blossoms", split="val", limit=8).batches(8))
    c = next(load_data("blossoms", split="val", limit=8, seed=1).batches(8))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_first_items_do_not_depend_on_the_limit() -> None:
    few = next(load_data("blossoms", split="test", limit=5).batches(5))
    more = next(load_data("blossoms", split="test", limit=40).batches(5))
    assert torch.equal(few.x, more.x) and torch.equal(few.y, more.y)


def test_shapes_splits_and_rendering_at_the_input_size() -> None:
    data = load_data("blossoms", split="train", limit=4)
    assert data.input_shape == (3, 96, 96) and data.num_classes == N_CLASSES and data.has_labels
    assert data.class_names is not None and data.class_names[0] == "5-round-yellow" and len(data.class_names) == 24
    x = next(data.batches(4)).x
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    big = next(load_data("blossoms", split="train", limit=4, input_size=224).batches(4)).x
    assert big.shape == (4, 3, 224, 224)
    # the same scene at two resolutions: the 224 px image brought down to 96 px is close to the 96 px one
    down = torch.nn.functional.interpolate(big, size=(96, 96), mode="bilinear", antialias=True)
    assert float((down - x).abs().mean()) < 0.03
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_data("blossoms", split="dev")
    with pytest.raises(DataError, match="takes no ':' argument"):
        load_data("blossoms:x")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_class_equally_often_in_every_split(split: str) -> None:
    labels, _ = bl.split_labels(split, 0)
    assert labels.shape[0] == bl.PER_CLASS[split] * N_CLASSES
    assert torch.bincount(labels, minlength=N_CLASSES).tolist() == [bl.PER_CLASS[split]] * N_CLASSES


def test_split_all_is_train_then_val_then_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bl, "PER_CLASS", {"train": 2, "val": 1, "test": 1})
    bl._rendered.cache_clear()
    try:
        everything = next(load_data("blossoms", split="all").batches(100))
        parts = [next(load_data("blossoms", split=s).batches(100)) for s in ("train", "val", "test")]
    finally:
        bl._rendered.cache_clear()
    assert everything.x.shape[0] == 4 * N_CLASSES
    assert torch.equal(everything.x, torch.cat([p.x for p in parts]))
    assert torch.equal(everything.y, torch.cat([p.y for p in parts]))


def test_labels_match_the_generating_parameters() -> None:
    labels = torch.arange(N_CLASSES)
    count, shape, colour = bl.class_parts(labels)
    names = bl.class_names()
    for i in range(N_CLASSES):
        k, s, c = names[i].split("-")
        assert (bl.PETAL_COUNTS[count[i]], bl.PETAL_SHAPES[shape[i]], list(bl.COLOURS)[colour[i]]) == (int(k), s, c)
    # the colour of the rendered petals is the class colour (shaded by at most the drawn factor and jitter)
    p = bl.draw_params(labels, torch.Generator().manual_seed(0))
    base = torch.tensor(list(bl.COLOURS.values()))[colour]
    assert torch.all((p.petal_rgb - base).abs() <= 0.2 * base + 0.061)


@pytest.mark.parametrize("label", [0, 9, 12, 23])  # 5 round, 6 pointed, 7 round, 8 pointed petals
def test_counting_the_petals_on_a_circle_gives_the_class_count(label: int) -> None:
    k = bl.PETAL_COUNTS[int(bl.class_parts(torch.tensor(label))[0])]
    image = _centred(label, 0.3, size=193)[0]
    angles = torch.linspace(0, 2 * math.pi, 721)[:-1]
    r = 0.45  # inside every petal's reach near its axis, outside the disc
    x = ((r * torch.cos(angles) + 1) / 2 * 193).long().clamp(0, 192)
    y = ((-r * torch.sin(angles) + 1) / 2 * 193).long().clamp(0, 192)
    on_petal = (image[:, y, x] - 0.2).abs().sum(0) > 0.3
    rises = int((on_petal & ~on_petal.roll(1)).sum())
    assert rises == k


@pytest.mark.parametrize("label", [0, 9, 12, 23])
def test_a_blossom_of_k_petals_is_invariant_under_turns_by_360_over_k(label: int) -> None:
    k = bl.PETAL_COUNTS[int(bl.class_parts(torch.tensor(label))[0])]
    # exactly: the orientation is defined modulo one petal
    assert torch.allclose(_centred(label, 0.3), _centred(label, 0.3 + 2 * math.pi / k), atol=1e-4)
    # on the pixel grid: rotating the image by 360 / k matches it up to interpolation, half a petal does not
    image = _centred(label, 0.3)
    inside = _disc(97, 0.9)

    def error(degrees: float) -> float:
        turned = rotate(image, torch.tensor([degrees]), mode="bilinear")
        return float((turned - image).abs()[..., inside].mean())

    assert error(360 / k) < 0.02
    assert error(180 / k) > 5 * error(360 / k)
    # mirrored left-right, the blossom of orientation phi is the one of pi - phi (D_k-symmetric: every petal
    # shape is symmetric about its axis)
    mirrored = _centred(label, math.pi - 0.3).flip(-1)
    assert float((mirrored - image).abs()[..., inside].mean()) < 0.01
