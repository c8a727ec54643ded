"""Study 1, rotated digits: seeds and intervals in quick mode, the gate, and gcnn-c4's invariant head."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from equiaudit.zoo import create
from equiaudit.zoo.models.gcnn import GroupCNN, transform_image
from equiaudit.zoo.studies import rotated_digits, run_study

T_975_ONE_DOF = 12.706  # Student t quantile (0.975, 1 degree of freedom): a 95% interval from two values


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    out: Path = tmp_path_factory.mktemp("study")
    return run_study("rotated-digits", quick=True, out_dir=out, device="cpu")


def test_quick_mode_trains_two_seeds_per_model_and_reports_intervals(quick) -> None:
    first = quick.tables[0]
    headers = [h for h, _ in first.columns]
    upright, rotated = headers.index("upright"), headers.index("rotated")
    assert dict(first.columns)["upright"] == "ci" == dict(first.columns)["rotated"]
    for row, name in zip(first.rows, rotated_digits.MODELS, strict=True):
        m = quick.measured[name]
        assert m["seeds"] == [0, 1] and len(m["checkpoints"]) == 2
        assert row[upright] is m["upright"] and row[rotated] is m["rotated"]
        for interval in (m["upright"], m["rotated"]):
            assert interval["n"] == 2 and len(interval["values"]) == 2
            assert all(0.0 <= v <= 1.0 for v in interval["values"])
            assert interval["low"] <= interval["mean"] <= interval["high"]
    assert quick.tables[-1].rows and len(quick.tables[-1].rows) == 3  # the published claims, last


def test_seed_interval_of_a_column_is_the_hand_computed_one(quick) -> None:
    interval = quick.measured["gcnn-c4"]["rotated"]
    a, b = interval["values"]
    mean = (a + b) / 2
    half = T_975_ONE_DOF * abs(a - b) / math.sqrt(2) / math.sqrt(2)  # sd of two values is |a - b| / sqrt(2)
    assert interval["mean"] == pytest.approx(mean, abs=1e-12)
    assert interval["low"] == pytest.approx(mean - half, abs=1e-9)
    assert interval["high"] == pytest.approx(mean + half, abs=1e-9)
    gap = quick.measured["gap"]["values"]
    cnn = quick.measured["cnn"]["rotated"]["values"]
    assert gap == pytest.approx([g - c for g, c in zip(interval["values"], cnn, strict=True)])


def test_the_gate_is_computed_and_stated(quick) -> None:
    gate = quick.measured["gate"]
    difference = quick.measured["gcnn-c4"]["upright"]["mean"] - quick.measured["cnn"]["upright"]["mean"]
    assert gate["upright_difference"] == pytest.approx(difference)
    assert gate["passed"] == (difference >= -rotated_digits.GATE_POINTS)
    assert any(note.startswith("Gate:") and f"{100 * difference:+.1f} points" in note for note in quick.notes)


def test_the_slant_setting_trains_both_models_with_the_same_jitter(quick) -> None:
    from equiaudit.zoo.recipes import RECIPES, SLANT_DEGREES

    for name in rotated_digits.MODELS:
        slant = RECIPES[name + rotated_digits.SLANT]
        assert slant.model == name and slant.augment_rotation == SLANT_DEGREES == 15.0
        assert RECIPES[name].augment_rotation == 0.0 and slant.dataset == RECIPES[name].dataset
        m = quick.measured["slant"][name]
        assert m["checkpoints"] == [f"{name}@slant", f"{name}@slant@seed1"] and m["rotated"]["n"] == 2
    gap = quick.measured["slant"]["gap"]["values"]
    slant = quick.measured["slant"]
    assert gap == pytest.approx(
        [g - c for g, c in zip(slant["gcnn-c4"]["rotated"]["values"], slant["cnn"]["rotated"]["values"], strict=True)]
    )
    assert set(quick.audits) == {"cnn", "gcnn-c4", "cnn@slant", "gcnn-c4@slant"}
    assert any(note.startswith("With +-15 degree slant") for note in quick.notes)


@pytest.mark.parametrize(
    ("cnn", "gcnn", "passed"), [(0.998, 0.990, True), (0.998, 0.987, False), (0.95, 0.99, True), (1.0, 0.99, True)]
)
def test_gate_allows_one_point_below_the_cnn(cnn: float, gcnn: float, passed: bool) -> None:
    measured = {"cnn": {"upright": {"mean": cnn}}, "gcnn-c4": {"upright": {"mean": gcnn}}}
    assert rotated_digits._gate(measured)["passed"] is passed


def _head_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_gcnn_c4_pools_over_rotations_before_a_spatially_invariant_head() -> None:
    torch.manual_seed(0)
    model = create("gcnn-c4").double().eval()
    assert isinstance(model, GroupCNN) and model.pool == "mean"
    assert all(conv.padding == "valid" for conv in model.convs)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    features = x
    with torch.no_grad():
        for conv, norm in zip(model.convs, model.norms, strict=True):
            features = torch.relu(norm(conv(features)))
    assert features.shape == (3, 16, 4, 8, 8)  # five 5x5 convolutions without padding: 28 -> 8
    pooled = features.mean(dim=2).mean(dim=(-2, -1))  # over the rotations, then over space
    torch.testing.assert_close(_head_input(model, x), pooled, rtol=1e-12, atol=1e-12)
    for r in range(1, 4):
        turned = _head_input(model, transform_image(x, (r, 0)))
        torch.testing.assert_close(turned, pooled, rtol=1e-12, atol=1e-12)
