"""Study 2 (H-Net vs a CNN of equal size): the learning curve, its intervals, the --data option, the CNN's design."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from equiaudit.zoo import create
from equiaudit.zoo.recipes import RECIPES
from equiaudit.zoo.studies import rot_digits_hnet as study
from equiaudit.zoo.studies import run_study
from equiaudit.zoo.studies.common import QUICK_TRAIN_IMAGES
from equiaudit.zoo.training import _steps_per_epoch
from typer.testing import CliRunner

from equiaudit.datasets import mnist as mnist_mod
from equiaudit.errors import DataError, EquiauditError

T95_DF1 = 12.706  # two-sided 95% Student-t quantile, 1 degree of freedom (2 seeds)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_study(study.NAME, quick=True, out_dir=tmp_path_factory.mktemp("hnet"), device="cpu")


def _by_hand(values: list[float]) -> tuple[float, float, float]:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    half = T95_DF1 * sd / len(values) ** 0.5
    return mean, mean - half, mean + half


def test_quick_mode_draws_the_curve_with_two_sizes_and_two_seeds(quick: Any) -> None:
    curve = quick.measured["curve"]
    assert [p["train_images"] for p in curve] == [QUICK_TRAIN_IMAGES // 2, QUICK_TRAIN_IMAGES]
    for point in curve:
        for name in study.MODELS:
            acc = point["accuracy"][name]
            assert acc["n"] == 2 and all(0 <= v <= 1 for v in acc["values"])
    # every (size, seed) but the main model (all images, seed 0) is a trained variant with its own provenance
    small = [m for m in quick.models.values() if m["train_images"] == QUICK_TRAIN_IMAGES // 2]
    assert sorted((m["model"], m["seed"]) for m in small) == [(n, s) for n in sorted(study.MODELS) for s in (0, 1)]
    assert {"hnet@seed1", "cnn-hnet@seed1"} <= set(quick.models)
    assert curve[-1]["accuracy"]["hnet"]["values"][0] == quick.measured["models"]["hnet"]["accuracy"]
    titles = [t.title for t in quick.tables]
    assert titles[1].startswith("Learning curve") and titles[-1] == "Published / ours / why different"
    assert len(quick.tables[1].rows) == 2 and [r[0] for r in quick.tables[0].rows] == list(study.MODELS)


def test_curve_intervals_and_gaps_come_from_the_per_seed_values(quick: Any) -> None:
    for point in quick.measured["curve"]:
        h, c = (point["accuracy"][m]["values"] for m in study.MODELS)
        gaps = [a - b for a, b in zip(h, c, strict=True)]
        assert point["gap"]["values"] == pytest.approx(gaps)
        for values, got in ((h, point["accuracy"]["hnet"]), (c, point["accuracy"]["cnn-hnet"])):
            mean, low, high = _by_hand(values)  # accuracies: the interval clipped to [0, 1]
            assert (got["mean"], got["low"], got["high"]) == pytest.approx((mean, max(0, low), min(1, high)))
        mean, low, high = _by_hand(gaps)  # a difference of accuracies: clipped to [-1, 1]
        got = point["gap"]
        assert (got["mean"], got["low"], got["high"]) == pytest.approx((mean, max(-1, low), min(1, high)))
    doc = json.loads(Path(quick.files["results"]).read_text())
    assert doc["measured"]["curve"][0]["gap"]["values"] == pytest.approx(quick.measured["curve"][0]["gap"]["values"])


def test_sizes_and_epochs_keep_the_optimisation_steps_equal() -> None:
    assert study.curve_sizes(1297, quick=False) == [162, 324, 648, 1297]
    assert study.curve_sizes(10_000, quick=False) == [1250, 2500, 5000, 10_000]
    assert study.curve_sizes(48, quick=True) == [24, 48]
    epochs, batch = RECIPES["hnet"].epochs, RECIPES["hnet"].batch_size
    full = epochs * _steps_per_epoch(1297, batch)
    for n in study.curve_sizes(1297, quick=False):
        steps = study.scaled_epochs(epochs, 1297, n, batch) * _steps_per_epoch(n, batch)
        assert abs(steps - full) / full < 0.02, (n, steps, full)
    assert study.scaled_epochs(12, 1297, 1297, 32) == 12 and study.scaled_epochs(12, 1297, 162, 32) == 82


def test_the_cnn_has_the_hnet_size_and_layout() -> None:
    hnet, cnn = create("hnet"), create("cnn-hnet")
    n_h, n_c = (sum(p.numel() for p in m.parameters()) for m in (hnet, cnn))
    assert abs(n_c - n_h) / n_h < 0.02
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(c.kernel_size == (5, 5) for c in convs)  # as the H-Net's 7 harmonic convs
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in cnn.modules()) == 2
    assert cnn(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    same = {k: getattr(RECIPES["hnet"], k) for k in ("dataset", "epochs", "lr", "batch_size", "weight_decay")}
    assert same == {k: getattr(RECIPES["cnn-hnet"], k) for k in same}  # one training budget for both


# ------------------------------------------------------------------------------------------------ --data


def _write_amat(path: Path, n: int, offset: int = 0) -> None:
    """Rot-MNIST .amat rows: 784 pixels in [0, 1], then the label as a float."""
    gen = np.random.default_rng(offset)
    rows = [" ".join(f"{v:.4g}" for v in gen.random(784)) + f" {float((i + offset) % 10)}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")


def test_rot_mnist_data_reaches_the_loader_and_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_download(root: Path) -> None:  # stands in for fetching and unzipping the .amat zip
        calls.append(root)
        root.mkdir(parents=True)
        _write_amat(root / mnist_mod.ROT_MNIST_AMAT["train_valid"], 60)
        _write_amat(root / mnist_mod.ROT_MNIST_AMAT["test"], 12, offset=60)

    monkeypatch.setattr(mnist_mod, "_download_rot_mnist", fake_download)
    monkeypatch.setattr(mnist_mod, "ROT_MNIST_TRAIN", 50)  # the real file: 10,000 train + 2,000 val rows
    monkeypatch.setenv("EQUIAUDIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"Rot-MNIST not found in .*--download") as excinfo:
        run_study(study.NAME, quick=True, out_dir=tmp_path, device="cpu", options={"data": "rot-mnist"})
    assert "\n" not in str(excinfo.value) and calls == []
    options = {"data": "rot-mnist", "download": True}
    result = run_study(study.NAME, quick=True, out_dir=tmp_path, device="cpu", options=options)
    assert calls == [tmp_path / "cache" / "rot-mnist"]
    assert result.measured["data"] == "rot-mnist" and result.run["options"] == options
    assert {m["dataset"] for m in result.models.values()} == {"rot-mnist"}
    assert result.measured["models"]["hnet"]["upright_accuracy"] is None  # upright digits only beside rot-digits
    assert "Rot-MNIST" in (result.audits["hnet"].data.source or "")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data": "flowers"}, "runs on rot-digits or rot-mnist[:DIR], not 'flowers'"),
        ({"data": "rot-digits", "download": True}, "--download fetches Rot-MNIST"),
        ({"weights": "w.pt"}, "takes no --weights"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(EquiauditError) as excinfo:
        run_study(study.NAME, quick=True, out_dir=tmp_path, device="cpu", options=options)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_unknown_data_spec_exits_2_in_one_line(tmp_path: Path) -> None:
    from equiaudit.cli import app

    res = CliRunner().invoke(app, ["zoo", "study", study.NAME, "--quick", "--data", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not 'nope'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_rot_mnist_amat_is_parsed_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from equiaudit.data import load_data

    parsed: list[str] = []
    real = mnist_mod.read_amat

    def counting(path: Path, skip: int = 0, nrows: int | None = None) -> Any:
        parsed.append(path.name)
        return real(path, skip, nrows)

    monkeypatch.setattr(mnist_mod, "read_amat", counting)
    monkeypatch.setattr(mnist_mod, "ROT_MNIST_TRAIN", 8)
    _write_amat(tmp_path / mnist_mod.ROT_MNIST_AMAT["train_valid"], 10)
    test_file = tmp_path / mnist_mod.ROT_MNIST_AMAT["test"]
    _write_amat(test_file, 5, offset=10)
    first = next(load_data(f"rot-mnist:{tmp_path}").batches(10))
    again = next(load_data(f"rot-mnist:{tmp_path}").batches(10))
    assert parsed == [test_file.name] and torch.equal(first.x, again.x) and first.y.tolist() == [0, 1, 2, 3, 4]
    _write_amat(test_file, 6, offset=20)  # a new version of the file is read again
    assert next(load_data(f"rot-mnist:{tmp_path}").batches(10)).y.tolist() == [0, 1, 2, 3, 4, 5]
    assert parsed == [test_file.name] * 2


def test_full_mode_at_a_toy_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # full mode end to end with narrow models, one epoch of 6 batches on all images, two sizes, one seed; the cache
    for name, widths in (("hnet", (2, 2, 2)), ("cnn-hnet", (4, 4, 4))):
        toy = replace(RECIPES[name], epochs=1, batch_size=256, create_kwargs={"widths": widths})
        monkeypatch.setitem(RECIPES, name, toy)
    monkeypatch.setattr(study, "CURVE_DIVISORS", (2, 1))
    monkeypatch.setattr(study, "AUDIT_GROUP", "so2:4")
    monkeypatch.setattr(study, "AUDIT_IMAGES", 16)
    result = run_study(study.NAME, out_dir=tmp_path, device="cpu", options={"seeds": 1})
    curve = result.measured["curve"]
    assert [p["train_images"] for p in curve] == [648, 1297]
    assert [p["epochs"]["hnet"] for p in curve] == [2, 1]  # 6 optimisation steps at both sizes
    assert result.measured["models"]["hnet"]["test_images"] == 500 and result.measured["train_images"] == 1297
    assert len(result.models) == 4 and {"hnet", "cnn-hnet"} <= set(result.models)  # and two NAME@HASH of 648
    assert sorted(m["train_images"] for m in result.models.values()) == [648, 648, 1297, 1297]
    assert all(m["origin"].startswith("trained now") for m in result.models.values())
    gap = curve[-1]["gap"]
    assert gap["n"] == 1 and gap["low"] == gap["mean"] == gap["high"]
    assert any("one seed cannot tell" in note for note in result.notes)
    again = run_study(study.NAME, out_dir=tmp_path, device="cpu", options={"seeds": 1})
    assert all(m["origin"].startswith("cached checkpoint") for m in again.models.values())
    assert again.measured["curve"] == curve
