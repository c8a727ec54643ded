"""Study 4 (scale): its models (SO(2) group CNN, DSS v2, deformable DSS), the document's feature-map error and the
study in quick mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from equiaudit.zoo import create
from equiaudit.zoo.models.scale import (
    DeformScaleConv2d,
    LevelMaxPool,
    PyramidScaleConv2d,
    ScaleConv2d,
    scale_pyramid,
)
from equiaudit.zoo.recipes import RECIPES, SHIPPED
from equiaudit.zoo.studies import run_study
from equiaudit.zoo.studies import scale as study
from equiaudit.zoo.studies.scale_metric import (
    ScaleErrorObserver,
    ScaleErrors,
    embedding_layer,
    level_shift,
    map_error,
)
from torch import nn

from equiaudit import audit
from equiaudit.data import load_data
from equiaudit.errors import EquiauditError
from equiaudit.groups import parse_group
from equiaudit.result import AuditResult

ZOOMS = "scale:0.5,0.8,1,1.25,2"
KEYS = ("features", "pooled", "logits")


def _observed(model: nn.Module, x: torch.Tensor, group: str, **options) -> tuple[ScaleErrors, AuditResult]:
    """The document's errors from one engine audit of ``model`` on ``x`` with the observer attached."""
    obs = ScaleErrorObserver(embedding_layer(model))
    res = audit(model, x, group, **{"samples": 0, **obs.audit_options(), **options})
    return obs.compute(), res


def _digits(n: int) -> torch.Tensor:
    data = load_data("scale-digits", split="test", limit=n)
    return torch.stack([data.dataset[i][0] for i in range(len(data.dataset))])


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    return run_study("scale", quick=True, out_dir=tmp_path_factory.mktemp("scale"), device="cpu")


def test_quick_mode_runs_every_model_over_the_seeds_and_ends_with_the_published_table(quick) -> None:
    labels = [study.LABELS[m] for m in study.MODELS]
    assert "so2-cnn" in labels and "dss-v2" in labels and "deform-dss" in labels
    assert [row[0] for row in quick.tables[0].rows] == labels
    for name in study.MODELS:  # seed 0 under the recipe's name, seed 1 as its variant
        assert name in quick.models and f"{name}@seed1" in quick.models
    for label in labels:
        m = quick.measured[label]
        assert m["seeds"] == [0, 1] and m["accuracy"]["n"] == 2
        assert isinstance(m["within_gate"], bool)
        assert m["within_gate"] == (m["accuracy"]["mean"] >= quick.measured["cnn"]["accuracy"]["mean"] - study.GATE)
        assert m["document_error_by_scale"][1.0] == 0.0 and m["logit_error_by_scale"][1.0] == 0.0
    assert quick.tables[-1].title == "Published / ours / why different" and len(quick.tables[-1].rows) == 6
    # the document's errors come from one engine audit of each seed's embedding, beside the per-layer audit
    assert set(quick.audits) == {*labels, *(f"{label}-embedding@seed{s}" for label in labels for s in (0, 1))}
    for label in labels:
        res = quick.audits[f"{label}-embedding@seed0"]
        assert res.run.spec["input_mask"] == "none" and len(res.layers["layers"]) == 1
        assert res.summary["images"] == quick.measured[label]["images"]
    assert any("Accuracy gate" in n for n in quick.notes)


def test_new_models_have_study_recipes_tiny_variants_and_comparable_sizes() -> None:
    for model in ("so2-cnn", "dss-v2", "deform-dss"):
        name = f"{model}@scale-digits"
        assert RECIPES[name].model == model and RECIPES[name].dataset == "scale-digits" and name not in SHIPPED
        full = sum(p.numel() for p in create(model).parameters())
        tiny = sum(p.numel() for p in create(model, tiny=True).parameters())
        assert 70_000 <= full <= 100_000 and tiny < 2_000
        assert create(model, tiny=True).eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("group", ["so2", "c8"])
def test_so2_cnn_is_exactly_c4_equivariant_at_every_layer_with_its_field_type(group: str) -> None:
    torch.manual_seed(0)
    model = create("so2-cnn", tiny=True, group=group).eval()
    res = audit(model, torch.rand(4, 1, 28, 28), "c4", layers="auto", samples=0)
    rows = res.layers["layers"]
    assert [r["module"] for r in rows].count("R2Conv") == 5 and rows[-1]["name"] == embedding_layer(model)
    for row in rows:  # convolutions, poolings (blur, 2x2 blocks on 28 and 14) and the invariant map
        assert row["action"] == "field" and row["holds"], row["name"]
        assert max(e for e in row["error_max"] if e is not None) < 1e-5
    assert res.summary["invariance_error_max"] < 1e-5


def test_so2_cnn_rejects_an_unknown_group() -> None:
    with pytest.raises(ValueError, match="'so2' or 'cN'"):
        create("so2-cnn", tiny=True, group="d4")


def test_zero_offsets_make_the_deformable_scale_convolution_the_plain_one() -> None:
    torch.manual_seed(0)
    plain, deform = ScaleConv2d(3, 4, 2, 3), DeformScaleConv2d(3, 4, 2, 3)
    deform.load_state_dict(plain.state_dict(), strict=False)  # the offset branch stays zero
    x = torch.rand(2, 3, 3, 12, 12)  # three levels: dilations 1, 2, 4
    torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        deform.offset_bias.fill_(0.5)  # half a pixel at level 0, two at level 2: sampling moves
    assert (deform(x) - plain(x)).abs().max() > 1e-3
    model = create("deform-dss", tiny=True).eval()
    assert sum(isinstance(m, DeformScaleConv2d) for m in model.modules()) == 2
    assert all(not m.offset_weight.any() for m in model.modules() if isinstance(m, DeformScaleConv2d))


def test_dss_v2_pyramid_shapes_and_a_centre_tap_kernel_passes_each_level_through() -> None:
    x = torch.rand(2, 1, 28, 28)
    levels = scale_pyramid(x, 3)
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(28, 28), (14, 14), (7, 7)]
    constant = scale_pyramid(torch.full((1, 1, 28, 28), 0.3), 3)  # bilinear resizing keeps a constant
    assert all(torch.allclose(lv, torch.full_like(lv, 0.3)) for lv in constant)
    conv = PyramidScaleConv2d(1, 1, 2, 3)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0, 0, 1, 1] = 1.0  # own level, centre tap
        conv.conv.bias.zero_()
    out = conv(levels)
    assert all(torch.allclose(o, lv) for o, lv in zip(out, levels, strict=True))
    pooled = LevelMaxPool()(out)
    assert pooled.shape == (2, 1, 3, 7, 7) and torch.equal(pooled[:, :, 2], levels[2])
    model = create("dss-v2", tiny=True).eval()
    assert embedding_layer(model) == "levels" and model(x).shape == (2, 10)


def _zoom(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``(N, C, H, W)`` zoomed by ``scale`` about the centre by grid_sample (bilinear, zeros, pixel centres at
    ``(2i+1)/W - 1``): the output's normalised point ``p`` reads the input at ``p / scale``."""
    theta = torch.tensor([[[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def _hand_errors(model: nn.Module, layer: nn.Module, x: torch.Tensor, scales: list[float]) -> list[list[list[float]]]:
    """The document's errors by loops, one image and one zoom per forward: per image and zoom, the mean over
    channels (and matched levels) of ||L_s Φ(f)_c - Φ(L_s f)_c|| / ||Φ(L_s f)_c||, the pooled form (one ratio of
    norms over all of them) and the centred logits' ||c(f(L_s x)) - c(f(x))|| / ||c(f(x))||."""
    maps = []
    handle = layer.register_forward_hook(lambda _m, _i, out: maps.append(out.detach()))
    rows = []
    for i in range(x.shape[0]):
        row = []
        for s in scales:
            maps.clear()
            logits = model(x[i : i + 1])[0], model(_zoom(x[i : i + 1], s))[0]
            ref, moved = maps[0][0], maps[1][0]
            pred = _zoom(ref.reshape(1, -1, *ref.shape[-2:]), s)[0].reshape(ref.shape)
            pairs = []
            for c in range(ref.shape[0]):
                if ref.dim() == 4:  # (C, S, h, w): levels l of moved against l + k of the prediction
                    k, n = round(-math.log2(s)), ref.shape[1]
                    pairs += [(pred[c, lv + k], moved[c, lv]) for lv in range(n) if 0 <= lv + k < n]
                else:
                    pairs.append((pred[c], moved[c]))
            ratios = [float((p - m).norm() / m.norm()) for p, m in pairs if float(m.norm()) > 1e-12]
            num, den = sum(float((p - m).norm()) ** 2 for p, m in pairs), sum(float(m.norm()) ** 2 for _, m in pairs)
            centred = [v - v.mean() for v in logits]
            logit = float((centred[1] - centred[0]).norm() / centred[0].norm())
            row.append([sum(ratios) / len(ratios), math.sqrt(num / den), logit])
        rows.append(row)
    handle.remove()
    return rows


@pytest.mark.parametrize("name", ["cnn", "dss"])
def test_the_observer_equals_a_hand_computation_in_float64(name: str) -> None:
    torch.manual_seed(1)
    model = create(name, tiny=True).double().eval()
    x = torch.rand(3, 1, 28, 28).double()  # the audit's data hold float32 images
    elements = parse_group(ZOOMS).elements
    errors, _ = _observed(model, x, ZOOMS, batch_size=4)
    layer = dict(model.named_modules())[embedding_layer(model)]
    hand = torch.tensor(_hand_errors(model, layer, x, [g.scale for g in elements]), dtype=torch.float64)
    assert errors.features.shape == errors.pooled.shape == errors.logits.shape == (3, len(elements))
    for i, key in enumerate(KEYS):
        got = torch.from_numpy(getattr(errors, key))
        torch.testing.assert_close(got, hand[..., i], rtol=1e-9, atol=1e-12, msg=key)
    identity = [g.is_identity for g in elements].index(True)
    assert [getattr(errors, key)[:, identity].tolist() for key in KEYS] == [[0.0] * 3] * 3


@pytest.mark.parametrize("name", ["cnn", "dss"])
def test_the_errors_do_not_depend_on_the_audits_batch_size(name: str) -> None:
    torch.manual_seed(3)
    model = create(name, tiny=True).eval()
    x = _digits(10)
    runs = [_observed(model, x, ZOOMS, batch_size=size) for size in (3, 7, None)]
    assert [res.run.batch_size for _, res in runs][:2] == [3, 7]
    for errors, _ in runs[1:]:
        for key in KEYS:
            got, want = torch.from_numpy(getattr(errors, key)), torch.from_numpy(getattr(runs[0][0], key))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)


def test_the_observer_needs_its_layer_recorded_and_a_classifier() -> None:
    model = create("cnn", tiny=True).eval()
    obs = ScaleErrorObserver(embedding_layer(model))
    with pytest.raises(EquiauditError, match="audit with layers=features"):
        audit(model, torch.rand(2, 1, 28, 28), ZOOMS, samples=0, observers=[obs])
    dense = nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(EquiauditError, match="need a classifier"):
        audit(dense, torch.rand(2, 1, 28, 28), ZOOMS, samples=0, observers=[ScaleErrorObserver("weight")])


def test_a_pointwise_linear_map_commutes_with_every_zoom() -> None:
    class Pointwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False))
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(-2, -1)))

    torch.manual_seed(2)
    model = Pointwise().double()
    errors, _ = _observed(model, torch.rand(2, 1, 20, 20, dtype=torch.float64), ZOOMS)
    assert errors.features.max() < 1e-12 and errors.pooled.max() < 1e-12


def test_map_error_leaves_out_dead_channels_and_levels_without_a_partner() -> None:
    torch.manual_seed(4)
    elements = parse_group("scale:0.25,1").elements  # k = 2 and 0
    ref = torch.rand(2, 3, 2, 8, 8, dtype=torch.float64)  # (B, C, S, h, w): two levels
    moved = torch.stack([ref, ref + 0.1])  # Φ(g f) per element
    moved[1, :, 0] = 0.0  # a dead channel under the identity
    err = map_error(ref, moved, elements)
    assert err.shape == (2, 2, 2) and err[:, 0].isnan().all()  # 0.25: no level has a partner two levels up
    ratios = 0.8 / moved[1, :, 1:].square().sum((-2, -1)).sqrt()  # ||0.1 * ones(8, 8)|| = 0.8, live channels only
    num = (4 * 0.8**2 + ref[:, 0].square().sum((1, 2, 3))).sqrt()  # pooled: the dead channel counts
    den = moved[1].square().sum((1, 2, 3, 4)).sqrt()
    torch.testing.assert_close(err[0, 1], ratios.flatten(1).mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(err[1, 1], num / den, rtol=1e-12, atol=1e-12)


def test_level_shift_follows_the_scale_space_convention() -> None:
    assert [level_shift(s) for s in (0.25, 0.5, 0.59, 0.84, 1.0, 1.19, 2.0)] == [2, 1, 1, 0, 0, 0, -1]


def test_the_gate_marks_models_within_two_points_of_the_cnn(tmp_path: Path) -> None:
    measured = {n: {"accuracy": {"mean": a}} for n, a in (("cnn", 0.99), ("a", 0.971), ("b", 0.969))}
    study._gate(measured, ["cnn", "a", "b"])
    assert [measured[n]["within_gate"] for n in ("cnn", "a", "b")] == [True, True, False]
    assert measured["b"]["accuracy_gap"] == pytest.approx(-0.021)


def test_data_option_refuses_images_that_are_not_labelled_one_channel_digits(tmp_path: Path) -> None:
    with pytest.raises(EquiauditError, match="the scale study needs labelled one-channel digit images; 'photos'"):
        run_study("scale", quick=True, out_dir=tmp_path, device="cpu", options={"data": "photos"})
    with pytest.raises(EquiauditError, match="takes no --weights"):
        run_study("scale", quick=True, out_dir=tmp_path, device="cpu", options={"weights": "w.pt"})
