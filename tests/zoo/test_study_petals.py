"""The petals study (steerable wide ResNet vs torchvision wide ResNet): quick runs on blossoms and on a flowers
folder with pretrained weights, the correctness matrix, option errors, and what the D8-D4-D1 model guarantees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from equiaudit.cli import app
from equiaudit.zoo import create
from equiaudit.zoo.studies import run_study
from equiaudit.zoo.studies import steerable as petals
from equiaudit.zoo.studies.common import StudyContext
from PIL import Image
from typer.testing import CliRunner

from equiaudit.data import load_data
from equiaudit.errors import EquiauditError

FLOWERS = {"daisy": 0, "rose": 7, "tulip": 14}  # folder -> the blossoms class drawn in it


@pytest.fixture(scope="module")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 'Petals to the Metal' folder: train/ and val/ by class, test/ unlabelled (as Kaggle's)."""
    root = tmp_path_factory.mktemp("flowers")
    batch = next(load_data("blossoms", split="train", limit=400).batches(400))
    images = (batch.x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for folder, label in FLOWERS.items():
        picked = np.flatnonzero(batch.y.numpy() == label)
        for k, i in enumerate(picked[:12]):
            split = "train" if k < 8 else "val"
            path = root / split / folder / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    (root / "test").mkdir()
    Image.fromarray(images[0]).save(root / "test" / "unlabelled.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout state dict of the tiny baseline (with a head of another size)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "wide_resnet50_2.pt"
    torch.save(create("wide-resnet50-2", tiny=True, num_classes=5).state_dict(), path)
    return path


def _context(tmp_path: Path, **options: object) -> StudyContext:
    return StudyContext(
        petals.NAME,
        quick=True,
        out_dir=tmp_path,
        device=torch.device("cpu"),
        log=None,
        options=options,
        accepts=petals.OPTIONS,
    )


def test_correctness_cells_match_a_hand_count() -> None:
    a = np.array([1, 1, 0, 0, 1, 0, 1], dtype=bool)  # model A right on images 0, 1, 4, 6
    b = np.array([1, 0, 1, 0, 1, 0, 0], dtype=bool)  # model B right on images 0, 2, 4
    assert petals.correctness_cells(a, b) == {"both_right": 2, "only_a": 2, "only_b": 1, "both_wrong": 2}


def test_summary_pairs_the_seeds_and_counts_every_image() -> None:
    def run(correct: list[int], seed: int) -> dict:
        c = np.array(correct, dtype=bool)
        audit = {"group": "so2:36", "images": len(c), "mirror_error": None, **dict.fromkeys(petals.AUDIT_METRICS, 0.5)}
        return {
            "recipe": f"m@seed{seed}", "seed": seed, "parameters": 10 if seed < 9 else 0, "input_size": 97,
            "train_images": 4, "epochs": 1, "train_seconds": 1.0, "accuracy": float(c.mean()), "images": len(c),
            "correct": c, "audits": dict.fromkeys(petals.GROUPS, audit),
        }  # fmt: skip

    per_seed = {
        petals.BASELINE: [run([1, 1, 1, 0], 0), run([1, 1, 0, 0], 1)],
        petals.STEERABLE: [run([1, 0, 1, 1], 0), run([0, 0, 0, 0], 1)],
    }
    m = petals.summarise(per_seed, quick=True)
    assert m["correctness"]["counts"] == [
        {"both_right": 2, "only_a": 1, "only_b": 1, "both_wrong": 0},
        {"both_right": 0, "only_a": 2, "only_b": 0, "both_wrong": 2},
    ]
    both = m["correctness"]["fractions"]["both_right"]
    assert both["mean"] == pytest.approx(0.25) and both["values"] == [0.5, 0.0]
    # paired per seed: (0.75 - 0.75) and (0.0 - 0.5)
    assert m["accuracy_difference"]["values"] == pytest.approx([0.0, -0.5])
    first = m[petals.BASELINE]["accuracy_first_seed"]
    assert first["mean"] == 0.75 and 0.3 < first["low"] < 0.75 < first["high"] < 1


def test_quick_run_on_blossoms(tmp_path: Path) -> None:
    result = run_study(petals.NAME, quick=True, out_dir=tmp_path, device="cpu", options={"seeds": 1})
    doc = json.loads((tmp_path / petals.NAME / "results.json").read_text())
    models, matrix, rotations, published = result.tables
    assert [row[0] for row in models.rows] == [petals.LABELS[m] for m in petals.MODELS]
    assert published.title == "Published / ours / why different" and len(published.rows) == 3
    counts = doc["measured"]["correctness"]["counts"][0]
    n = doc["measured"][petals.BASELINE]["images"]
    assert sum(counts.values()) == n == 6 and [row[1] for row in matrix.rows] == list(counts.values())
    # the cells agree with each model's accuracy, measured apart
    for name, cells in ((petals.BASELINE, ("both_right", "only_a")), (petals.STEERABLE, ("both_right", "only_b"))):
        assert sum(counts[c] for c in cells) == round(doc["measured"][name]["accuracy"]["mean"] * n)
    assert [row[1] for row in rotations.rows] == ["so2:4", "flip", "so2:4", "flip"]
    e2cnn_mirror = rotations.rows[1][-1]  # exact by construction, also for the tiny model trained one epoch
    assert e2cnn_mirror < 1e-4 < rotations.rows[3][-1]
    assert doc["measured"]["setting"] == {"data": "blossoms", "split": "test", "num_classes": 24, "weights": None}
    html = (tmp_path / petals.NAME / "report.html").read_text()
    shown = sum(min(c, petals.EXAMPLES) for c in counts.values())  # example images per quadrant
    assert "Correctness examples" in html and html.count("data:image/png") == shown
    assert (tmp_path / petals.NAME / "report-d8.html").is_file()


def test_weights_load_into_the_baseline_before_its_head_is_trained(flowers: Path, weights: Path, tmp_path) -> None:
    ctx = _context(tmp_path, data=f"flowers:{flowers}", weights=weights)
    s = petals.setting(ctx)
    assert (s.split, s.num_classes) == ("val", 3)
    model, recipe = ctx.model(petals.BASELINE, seed=0, **s.changes[petals.BASELINE])
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])  # loaded, and frozen through the training
    assert torch.equal(model.layer4[0].conv3.weight, saved["layer4.0.conv3.weight"])
    assert model.fc.out_features == 3 and not torch.equal(model.fc.weight[:3], saved["fc.weight"][:3])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert recipe.dataset == f"flowers:{flowers}" and "@" in recipe.name


def test_quick_run_on_a_flowers_folder_with_weights(flowers: Path, weights: Path, tmp_path: Path) -> None:
    options = {"data": f"flowers:{flowers}", "weights": weights, "seeds": 1}
    result = run_study(petals.NAME, quick=True, out_dir=tmp_path, device="cpu", options=options)
    setting = result.measured["setting"]
    assert setting["split"] == "val" and setting["num_classes"] == 3 and setting["weights"] == str(weights)
    assert sum(result.measured["correctness"]["counts"][0].values()) == 6
    assert all(m["dataset"] == f"flowers:{flowers}" for m in result.models.values())
    assert "pretrained backbone" in result.tables[-1].rows[1][3]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not a checkpoint"), "cannot read weights file"),
        (lambda p: torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, p), "does not fit the model"),
        (lambda p: torch.save(create("cnn", tiny=True).state_dict(), p), "does not fit the model"),
    ],
)
def test_a_bad_weights_file_is_a_one_line_error(tmp_path: Path, make, message: str) -> None:
    bad = tmp_path / "bad.pt"
    make(bad)
    res = CliRunner().invoke(
        app, ["zoo", "study", petals.NAME, "--quick", "--quiet", "--weights", str(bad), "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_other_data_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EquiauditError, match="runs on blossoms or flowers"):
        petals.setting(_context(tmp_path, data="digits"))
    with pytest.raises(EquiauditError, match="flowers not found"):
        petals.setting(_context(tmp_path, data=f"flowers:{tmp_path / 'none'}"))
    with pytest.raises(EquiauditError, match="no such file"):
        petals.setting(_context(tmp_path, weights=tmp_path / "none.pt"))


def test_d8_d4_d1_model_is_exactly_invariant_to_the_left_right_mirror_only() -> None:
    """The last stage is restricted to D1 = {identity, left-right mirror}: on sides 8k + 1 the mirror holds to
    float rounding; quarter turns and the up-down mirror (elements of D8 and D4, lost by the restriction) do
    not."""
    torch.manual_seed(0)
    model = create("wrn16-8-d8d4d1", tiny=True, num_classes=24).eval()
    x = next(load_data("blossoms", split="test", limit=4, input_size=97).batches(4)).x
    with torch.no_grad():
        out = model(x)
        scale = float(out.abs().max())

        def error(t: torch.Tensor) -> float:
            return float((model(t) - out).abs().max()) / scale

        assert error(x.flip(-1)) < 1e-5
        assert error(x.flip(-2)) > 1e-3
        assert error(torch.rot90(x, 1, (-2, -1))) > 1e-3


def test_full_mode_runs_end_to_end_at_a_toy_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full mode (not quick) with few blossoms, small widths and one epoch: the whole test split, the full
    groups, checkpoints cached."""
    from dataclasses import replace

    from equiaudit.zoo.recipes import RECIPES

    from equiaudit.datasets import blossoms

    monkeypatch.setattr(blossoms, "PER_CLASS", {"train": 2, "val": 1, "test": 1})
    blossoms._rendered.cache_clear()
    small = {
        petals.STEERABLE: {"depth": 10, "widen_factor": 1, "base": 4, "num_classes": 24},
        petals.BASELINE: {"planes": 8, "width_per_group": 8, "layers": (1, 1, 1, 1), "num_classes": 24},
    }
    for name, kwargs in small.items():
        monkeypatch.setitem(RECIPES, name, replace(RECIPES[name], epochs=1, create_kwargs=kwargs))
    monkeypatch.setattr(petals, "AUDIT_IMAGES", 3)
    try:
        first = run_study(petals.NAME, out_dir=tmp_path, device="cpu", options={"seeds": 1})
    finally:
        blossoms._rendered.cache_clear()
    assert all(m["origin"].startswith("trained now") for m in first.models.values())
    assert all((tmp_path / "checkpoints" / f"{name}.pt").is_file() for name in petals.MODELS)
    assert sum(first.measured["correctness"]["counts"][0].values()) == 24  # the whole (toy) test split
    assert [row[1] for row in first.tables[2].rows] == ["so2:36", "d8", "so2:36", "d8"]
    assert first.tables[2].rows[1][-1] < 1e-4  # the e2cnn model's mirror error under d8
