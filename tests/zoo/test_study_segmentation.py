"""Study 3 (butterflies): its models, augmentation sets, protocol over 0-360 degrees, tables and data options."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from equiaudit.zoo import create
from equiaudit.zoo.recipes import RECIPES, holdout_split, padded_side, recipe_data
from equiaudit.zoo.studies import run_study
from equiaudit.zoo.studies.common import QUICK_AUDIT_IMAGES
from equiaudit.zoo.studies.segmentation import LABELS, MODELS, PUBLISHED, protocol_ious, protocol_options
from equiaudit.zoo.training import full_augment, rotate_pairs, train
from PIL import Image
from torch import nn

from equiaudit.data import AuditData, load_data
from equiaudit.engine import audit
from equiaudit.errors import DataError, EquiauditError


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    return run_study("segmentation", quick=True, out_dir=tmp_path_factory.mktemp("seg"), device="cpu")


def test_quick_mode_gives_the_four_models_of_the_final_epoch_table(quick) -> None:
    final, angles, by_angle, published = quick.tables
    assert [row[0] for row in final.rows] == [LABELS[m] for m in MODELS] and len(final.rows) == 4
    assert [h for h, _ in final.columns][2:] == ["train IoU", "train loss", "validation IoU", "validation loss"]
    for row in final.rows:
        assert all(cell["n"] == 2 and cell["low"] <= cell["mean"] <= cell["high"] for cell in row[2:])
    assert [row[0] for row in angles.rows] == [LABELS[m] for m in MODELS]
    assert [row[0] for row in by_angle.rows] == [0, 45, 90, 135, 180, 225, 270, 315]
    assert published.title == "Published / ours / why different" and len(published.rows) == len(PUBLISHED) + 2
    for name in MODELS:
        m = quick.measured[name]
        assert m["test_images"] == QUICK_AUDIT_IMAGES and m["seeds"] == 2 and m["epochs"] == 1
        assert len(m["iou_by_angle"]) == 8 and 0 <= m["iou_spread"]["mean"] <= 1
        spread = m["first_seed_images"]["iou_spread"]
        assert spread["low"] <= spread["high"] and spread["mean"] >= 0
    assert set(quick.audits) == set(MODELS) | {f"{m}@seed1" for m in MODELS}  # one protocol audit per seed


def test_the_group_unet_is_exact_at_quarter_turns_in_the_quick_run(quick) -> None:
    curve = quick.measured["group-unet-gn-c4@minimal"]["iou_by_angle"]  # 0, 45, ..., 315
    assert curve[0] == pytest.approx(curve[2], abs=1e-12) == pytest.approx(curve[4], abs=1e-12)
    assert curve[0] == pytest.approx(curve[6], abs=1e-12)


def test_the_study_models_have_the_published_filters_and_about_equal_parameters() -> None:
    plain, group = create("unet-gn"), create("group-unet-gn-c4")
    assert [plain.first.out_channels] + [d.proj[0].out_channels for d in plain.downs] == [32, 32, 64, 64]
    assert [d.proj[0].weight.shape[0] for d in group.downs] == [16, 32, 32] and group.first.weight.shape[0] == 16
    n_plain, n_group = (sum(p.numel() for p in m.parameters()) for m in (plain, group))
    assert abs(n_group - n_plain) / n_plain < 0.05  # half the filters on 4 group elements: about the same count
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_recipes_pad_by_half_and_normalise() -> None:
    recipe = RECIPES["unet-gn@full"]
    assert padded_side(recipe) == 96 and recipe.data_options["mean"] == (0.485, 0.456, 0.406)
    assert {RECIPES[m].augment for m in MODELS} == {"minimal", "full"}
    assert all("augment" not in RECIPES[n].training_fields() for n in ("unet", "cnn"))  # shipped keys kept


def test_pad_puts_the_image_on_a_black_canvas() -> None:
    plain = load_data("shapes-seg", split="test", limit=2)
    padded = load_data("shapes-seg", split="test", limit=2, pad=96)
    a, b = next(plain.batches(2)), next(padded.batches(2))
    assert b.x.shape[-2:] == (96, 96) and b.mask.shape[-2:] == (96, 96)
    assert torch.equal(b.x[..., 16:80, 16:80], a.x) and torch.equal(b.mask[..., 16:80, 16:80], a.mask)
    assert b.x[..., :16, :].abs().sum() == 0 and b.mask.sum() == a.mask.sum()
    with pytest.raises(DataError, match="pad must be at least"):
        next(load_data("shapes-seg", split="test", limit=1, pad=32).batches(1))


def _shape_batch(n: int = 4, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """White discs / squares off centre on black: masks and their RGB images."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for i in range(n):
        cy, cx = 14 + 3 * i, 18 + 2 * i
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (6 + i) ** 2
        masks.append(disc | ((yy > 30) & (yy < 36 + i) & (xx > 8) & (xx < 20)))
    mask = torch.stack(masks)[:, None].float()
    return mask.expand(-1, 3, -1, -1).clone(), mask


def test_rotations_keep_image_and_mask_aligned() -> None:
    x, mask = _shape_batch()
    turned, turned_mask = rotate_pairs(x, mask, torch.full((4,), 90.0))
    assert torch.equal(turned_mask, torch.rot90(mask, 1, dims=(-2, -1)))  # counter-clockwise, exact
    torch.testing.assert_close(turned, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    angled, angled_mask = rotate_pairs(x, mask, torch.tensor([17.0, -63.0, 38.0, 90.0]))
    agree = ((angled[:, 0] >= 0.5) == (angled_mask[:, 0] > 0)).float().mean()
    assert agree == 1.0 and not torch.equal(angled_mask[0], mask[0])


def test_full_augmentation_jitters_colours_but_keeps_the_mask_on_the_shape() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x, mask = _shape_batch()
    norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(3)
    out, out_mask = full_augment(norm, mask, (mean, std), gen, angles=torch.full((4,), 90.0))
    image = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.equal(out_mask, torch.rot90(mask, 1, dims=(-2, -1)))
    assert torch.equal(image.amax(1, keepdim=True) > 0.05, out_mask > 0)  # the padding stays black
    random_out, random_mask = full_augment(norm, mask, (mean, std), torch.Generator().manual_seed(4), "segment")
    assert random_out.shape == norm.shape and random_mask.shape == mask.shape
    assert not torch.allclose(out, torch.rot90(norm, 1, dims=(-2, -1)), atol=1e-3)  # colours did change


class _Pixelwise(nn.Module):
    """Foreground where the image is bright: a pointwise map, equivariant to every rotation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(1, keepdim=True) - 0.5) * 20


def _padded_data(x: torch.Tensor, mask: torch.Tensor, pad: int) -> AuditData:
    s = (pad - x.shape[-1]) // 2
    return AuditData.from_tensors(
        torch.nn.functional.pad(x, (s, s, s, s)), mask=torch.nn.functional.pad(mask, (s, s, s, s))
    )


def _protocol(model: nn.Module, data: AuditData | str, group: str, side: int, **options) -> np.ndarray:
    """The study's protocol as the study runs it: one engine audit, its per-image IoU against the truth."""
    res = audit(model, data, group, device="cpu", samples=1, **protocol_options(side), **options)
    return protocol_ious(res)


def _reference_protocol(model: nn.Module, data: AuditData, angles: list[float], side: int) -> np.ndarray:
    """The protocol by hand in float64: each padded image back in image space, rotated about its centre
    (bilinear, black fill) by an affine grid written here, segmented, the logits rotated back, the centre
    ``side`` x ``side`` crop binarised and compared with the truth's crop (foreground IoU, both empty: 1)."""
    batch = data.read(0, len(data))
    mean = torch.tensor(data.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float64).view(1, -1, 1, 1)
    x, truth = batch.x.double() * std + mean, batch.mask[:, 0].double() > 0.5
    n = x.shape[-1]
    top = round((n - side) / 2.0)
    rows = []
    for a in angles:
        t = math.radians(a)
        turn = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]], dtype=torch.float64)
        back = torch.tensor([[math.cos(t), math.sin(t), 0.0], [-math.sin(t), math.cos(t), 0.0]], dtype=torch.float64)

        def rotate(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            grid = F.affine_grid(m.expand(v.shape[0], 2, 3), list(v.shape), align_corners=False)
            return F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        with torch.no_grad():
            logits = rotate(model((rotate(x, turn) - mean) / std), back)
        pred = (logits[:, 0] > 0)[:, top : top + side, top : top + side]
        gt = truth[:, top : top + side, top : top + side]
        inter, union = (pred & gt).flatten(1).sum(1).double(), (pred | gt).flatten(1).sum(1).double()
        rows.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)))
    return torch.stack(rows, 1).numpy()


def test_the_protocol_is_one_audit_that_matches_a_reference_written_here() -> None:
    data = load_data("shapes-seg", split="test", limit=5, input_size=32, pad=48, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    model = create("unet-gn", tiny=True).double().eval()  # one logit per pixel
    angles = [30.0 * k for k in range(12)]
    got = _protocol(model, data, "so2:12", 32, dtype="float64")
    # records are float32; one pixel flipped would move an IoU by more than 1 / 1024
    np.testing.assert_allclose(got, _reference_protocol(model, data, angles, 32), atol=1e-6, rtol=0)
    assert np.ptp(got) > 0.05  # a model of random weights: the angles do change its IoU
    for batch_size in (3, 7):  # the audit's batching does not change a per-image number
        same = _protocol(model, data, "so2:12", 32, dtype="float64", batch_size=batch_size)
        np.testing.assert_array_equal(same, got)


def test_the_protocol_gives_iou_one_for_an_equivariant_model() -> None:
    x, mask = _shape_batch()
    ious = _protocol(_Pixelwise(), _padded_data(x, mask, 72), "so2:12", 48)
    assert ious.shape == (4, 12)
    assert np.all(ious[:, ::3] == 1.0)  # 0, 90, 180, 270 degrees: exact
    assert ious.min() > 0.93  # in between: only the resampling of image and logits


def test_the_protocol_tells_the_group_unet_from_the_plain_one_at_quarter_turns() -> None:
    x, mask = _shape_batch()
    data = _padded_data(x, mask, 72)
    torch.manual_seed(0)
    plain, group = create("unet-gn", tiny=True).eval(), create("group-unet-gn-c4", tiny=True).eval()
    assert np.ptp(_protocol(group, data, "c4", 48), axis=1).max() < 1e-6
    assert np.ptp(_protocol(plain, data, "c4", 48), axis=1).max() > 1e-3


def test_training_records_each_epochs_train_and_validation_metrics() -> None:
    torch.manual_seed(0)
    data = load_data("shapes-seg", split="train", limit=8, input_size=32, pad=48)
    val = load_data("shapes-seg", split="test", limit=4, input_size=32, pad=48)
    result = train(create("unet-gn", tiny=True), data, epochs=2, batch_size=4, augment="full", validation=val)
    assert result.augment == "full" and len(result.scores) == len(result.val_losses) == len(result.val_scores) == 2
    assert all(0 <= s <= 1 for s in result.scores + result.val_scores) and all(v > 0 for v in result.val_losses)
    with pytest.raises(EquiauditError, match="unknown augmentation set"):
        train(create("unet-gn", tiny=True), data, epochs=1, augment="heavy")


def _butterflies(root: Path, n: int = 10) -> None:
    """A tiny folder in the Leeds layout: images/NNNxxxx.png and segmentations/<stem>_seg0.png."""
    gen = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "segmentations").mkdir()
    for i in range(n):
        stem = f"{1 + i % 10:03d}{i:04d}"
        img = gen.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        mask = np.zeros((30 + i, 40), np.uint8)
        mask[8:20, 10 + i : 30] = 255
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "segmentations" / f"{stem}_seg0.png")


def test_butterflies_layout_runs_the_same_protocol_on_held_out_images(tmp_path: Path) -> None:
    _butterflies(tmp_path / "leeds")
    result = run_study(
        "segmentation",
        quick=True,
        out_dir=tmp_path / "out",
        device="cpu",
        options={"data": f"butterflies:{tmp_path / 'leeds'}"},
    )
    assert [row[0] for row in result.tables[0].rows] == [LABELS[m] for m in MODELS]
    for name in MODELS:
        assert result.measured[name]["test_images"] == 2 and result.measured[name]["train_images"] == 8
    recipe = next(r for r in result.models.values())
    assert recipe["dataset"].startswith("butterflies:")
    with pytest.raises(EquiauditError, match="runs on shapes-seg or butterflies"):
        run_study("segmentation", quick=True, out_dir=tmp_path / "bad", options={"data": "rot-mnist"})


def test_holdout_split_is_fixed_and_disjoint() -> None:
    data = load_data("shapes-seg", split="test", limit=20)
    train_part, test_part = holdout_split(data, 0.2)
    assert len(train_part) == 16 and len(test_part) == 4
    assert not set(train_part.dataset.indices) & set(test_part.dataset.indices)
    assert holdout_split(data, 0.2)[1].dataset.indices == test_part.dataset.indices
    with pytest.raises(EquiauditError, match="fraction"):
        holdout_split(data, 1.5)
    recipe = RECIPES["unet-gn@minimal"]
    train_data, test_data = recipe_data(recipe, limit=3)
    assert len(train_data) == 3 and test_data.input_shape == (3, 96, 96) and not train_data.has_labels
