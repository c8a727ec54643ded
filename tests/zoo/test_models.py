"""The zoo's models: shapes, parameter counts, and the exactness their ModelInfo claims, checked directly with
``torch.rot90`` / ``torch.flip`` (independently of the audit core)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from _tolerances import TOLERANCES
from equiaudit.zoo import create, list_models, model_info, register_model, registry

from equiaudit.errors import InputMismatchError, ModelLoadError

# e2cnn samples its filter bases into float32 buffers, so a float64 e2cnn model still carries float32 rounding of
# the basis (relative ~1e-9 measured): its float64 checks use this (rtol, atol) instead of TOLERANCES[float64].
E2CNN_FLOAT64 = (1e-7, 1e-7)


def bound(dtype: torch.dtype, y_max: float, rtol_atol: tuple[float, float] | None = None) -> float:
    """The largest error an exact symmetry may show on outputs of magnitude ``y_max``."""
    rtol, atol = rtol_atol or TOLERANCES[dtype]
    return atol + rtol * y_max


SHIPPED = [
    "cnn", "cnn-hnet", "deform-cnn", "dss", "e2cnn-c8", "e2cnn-d4", "gcnn-c4", "gcnn-d4", "group-unet-c4",
    "hnet", "unet", "wide-resnet50-2", "wrn16-8-d8d4d1",
]  # fmt: skip
ALL_MODELS = list_models()  # models registered later are tested too

# D4 elements as (quarter turns k, mirror m): x -> rot90(flip_lr^m x, k), counter-clockwise as displayed.
D4 = [(k, m) for m in (0, 1) for k in range(4)]
SPEC_ELEMENTS = {
    "c4": {(k, 0) for k in range(4)},
    "d4": set(D4),
    "flip": {(0, 0), (0, 1)},
    "vflip": {(0, 0), (2, 1)},
}


def act(x: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
    k, m = element
    return torch.rot90(torch.flip(x, dims=(-1,)) if m else x, k, dims=(-2, -1))


def act_inverse(x: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
    k, m = element
    y = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if m else y


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def symmetry_errors(
    model: torch.nn.Module, x: torch.Tensor, segment: bool
) -> tuple[dict[tuple[int, int], float], float, float]:
    """Max abs error of f(g x) = f(x) (classifiers) or g⁻¹ f(g x) = f(x) (segmentation) per D4 element, the
    output magnitude max |f(x)|, and the spread max |f(x_a) - f(x_b)| over the batch."""
    with torch.no_grad():
        y = model(x)
        errors = {}
        for g in D4:
            yg = model(act(x, g))
            if segment:
                yg = act_inverse(yg, g)
            errors[g] = (yg - y).abs().max().item()
    return errors, y.abs().max().item(), (y[:, None] - y[None]).abs().max().item()


def exact_elements(name: str) -> set[tuple[int, int]]:
    out = {(0, 0)}
    for spec in model_info(name).exact_groups:
        out |= SPEC_ELEMENTS[spec]
    return out


def test_registry_lists_every_model() -> None:
    assert set(SHIPPED) <= set(list_models())
    assert list_models() == sorted(list_models())
    assert list_models("e2cnn-*") == ["e2cnn-c8", "e2cnn-d4"]
    assert list_models("GCNN*") == ["gcnn-c4", "gcnn-d4"]
    assert list_models("nothing*") == []


_SPEC = re.compile(r"^(c\d+|d\d+|flip|vflip|so2|scale:[\d.]+\.\.[\d.]+:\d+)$")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_info_is_consistent(name: str) -> None:
    info = model_info(name)
    assert info.name == name
    assert info.task in ("classify", "segment")
    assert set(info.exact_groups) <= set(info.groups)
    assert all(_SPEC.match(spec) for spec in info.groups), info.groups
    assert set(info.exact_groups) <= set(SPEC_ELEMENTS), "exact groups must be checkable on the grid"
    assert (info.num_classes is None) == (info.task == "segment")
    assert info.default_dataset in ("digits", "rot-digits", "scale-digits", "shapes-seg", "flowers")
    assert len(info.input_shape) == 3 and info.description and info.reference
    d = info.to_dict()
    assert "factory" not in d and json.loads(json.dumps(d))["name"] == name


def test_unknown_model_names_close_matches() -> None:
    with pytest.raises(ModelLoadError, match="gcnn-c4") as e:
        model_info("gcnn-c5")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelLoadError, match="known models"):
        create("zzzzzz")


def test_unknown_argument_and_pretrained_are_clear_errors() -> None:
    with pytest.raises(ModelLoadError, match="no argument 'widht'"):
        create("cnn", widht=3)
    with pytest.raises(ModelLoadError, match="no shipped checkpoint for zoo model 'wrn16-8-d8d4d1'"):
        create("wrn16-8-d8d4d1", tiny=True, pretrained=True)
    with pytest.raises(ModelLoadError, match=r"does not fit this model .* create\('gcnn-c4', tiny=False\)"):
        create("gcnn-c4", tiny=True, pretrained=True)


def test_register_model_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    common = dict(family="x", description="d", task="classify", input_shape=(1, 8, 8), num_classes=2,
                  default_dataset="digits", reference="r")  # fmt: skip

    @register_model(groups=("c4",), exact_groups=("c4",), **common)
    def my_model(*, tiny: bool = False, width: int = 3) -> torch.nn.Module:
        return torch.nn.Conv2d(1, width, 1)

    assert "my-model" in list_models() and create("my-model", width=5).out_channels == 5
    with pytest.raises(ValueError, match="twice"):
        register_model("my-model", groups=(), exact_groups=(), **common)(my_model)
    with pytest.raises(ValueError, match="subset"):
        register_model("other", groups=(), exact_groups=("c4",), **common)(my_model)
    with pytest.raises(ValueError, match="tiny"):
        register_model("other", groups=(), exact_groups=(), **common)(lambda: None)


# Smaller inputs that keep each tiny model's exactness conditions (and the tests fast).
TEST_SIZE = {"wrn16-8-d8d4d1": 33, "wide-resnet50-2": 32, "unet": 32, "group-unet-c4": 32}


def _input(name: str, batch: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    c, h, w = model_info(name).input_shape
    size = TEST_SIZE.get(name)
    return torch.randn(batch, c, size or h, size or w, dtype=dtype)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_tiny_variant_forward_shape(name: str, device: torch.device) -> None:
    torch.manual_seed(0)
    info = model_info(name)
    model = create(name, tiny=True).to(device).eval()
    x = _input(name).to(device)
    with torch.no_grad():
        y = model(x)
    expected = (2, info.num_classes) if info.task == "classify" else (2, 1, *x.shape[-2:])
    assert y.shape == expected
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["cnn", "gcnn-c4", "hnet", "dss", "unet", "e2cnn-c8"])
def test_factories_take_channels_and_classes(name: str) -> None:
    info = model_info(name)
    kwargs = {"in_channels": 2} | ({"num_classes": 3} if info.task == "classify" else {})
    model = create(name, tiny=True, **kwargs).eval()
    x = torch.randn(1, 2, *_input(name).shape[-2:])
    assert model(x).shape[1] == (3 if info.task == "classify" else 1)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_exact_groups_hold_and_nothing_more(name: str) -> None:
    """Every D4 element of the claimed exact groups holds at float32 precision; every other one changes the
    output by a clear fraction of how much it varies between inputs. Random init, eval mode."""
    torch.manual_seed(1)
    info = model_info(name)
    model = create(name, tiny=True).eval()
    errors, y_max, spread = symmetry_errors(model, _input(name, batch=4), segment=info.task == "segment")
    tol = bound(torch.float32, y_max)
    assert spread > 100 * tol, "the output hardly depends on the input"
    expected = exact_elements(name)
    for g, err in errors.items():
        if g in expected:
            assert err <= tol, (name, g, err)
        else:
            assert err > max(0.05 * spread, 10 * tol), (name, g, err, spread)


@pytest.mark.parametrize("name", ["gcnn-c4", "gcnn-d4", "hnet", "group-unet-c4", "e2cnn-c8", "e2cnn-d4"])
def test_exact_groups_hold_in_float64(name: str) -> None:
    torch.manual_seed(2)
    info = model_info(name)
    model = create(name, tiny=True).double().eval()
    errors, y_max, _ = symmetry_errors(model, _input(name, dtype=torch.float64), segment=info.task == "segment")
    tol = bound(torch.float64, y_max, E2CNN_FLOAT64 if name.startswith("e2cnn") else None)
    for g in exact_elements(name):
        assert errors[g] <= tol, (name, g, errors[g])


def test_plain_cnn_is_not_invariant_in_float64() -> None:
    torch.manual_seed(3)
    model = create("cnn").double().eval()
    errors, y_max, _ = symmetry_errors(model, _input("cnn", dtype=torch.float64), segment=False)
    assert min(err for g, err in errors.items() if g != (0, 0)) > 1e4 * bound(torch.float64, y_max)


@pytest.mark.parametrize("name", ["gcnn-c4", "hnet"])
def test_full_models_are_exactly_c4_invariant(name: str) -> None:
    torch.manual_seed(4)
    model = create(name).double().eval()
    errors, y_max, _ = symmetry_errors(model, _input(name, dtype=torch.float64), segment=False)
    assert max(errors[(k, 0)] for k in range(4)) <= bound(torch.float64, y_max)


def test_steerable_exactness_needs_the_documented_sizes() -> None:
    """e2cnn-d4 is exact on 29x29 and 33x33 (4k + 1), not on 31x31 (its stride-2 stages sample asymmetrically)."""
    torch.manual_seed(5)
    model = create("e2cnn-d4", tiny=True).eval()
    for size, exact in ((29, True), (33, True), (31, False)):
        x = torch.randn(2, 1, size, size)
        with torch.no_grad():
            y, yr = model(x), model(act(x, (1, 0)))
        err = (yr - y).abs().max().item()
        assert (err <= bound(torch.float32, y.abs().max().item())) == exact, (size, err)


# --- parameter counts of the full models (the studies' designs) --------------------------------------------


def test_parameter_counts_match_the_studies() -> None:
    gcnn, cnn = n_params(create("gcnn-c4")), n_params(create("cnn"))
    hnet, cnn_hnet = n_params(create("hnet")), n_params(create("cnn-hnet"))
    unet, gunet = n_params(create("unet")), n_params(create("group-unet-c4"))
    assert abs(gcnn - 103_000) / 103_000 < 0.03
    assert abs(cnn - gcnn) / gcnn < 0.2
    assert abs(hnet - 34_000) / 34_000 < 0.1
    assert abs(cnn_hnet - hnet) / hnet < 0.2
    assert abs(gunet - unet) / unet < 0.25
    assert abs(n_params(create("gcnn-d4")) - gcnn) / gcnn < 0.1


def test_group_cnn_weights_are_shared_over_the_group() -> None:
    """gcnn-c4 has the parameters of a CNN with 16 channels per layer, not 16 x 4."""
    k, c = 5, 16
    expected = (c * k * k + c) + 4 * (c * 4 * c * k * k + c) + 5 * 2 * c + (c * 10 + 10)
    assert n_params(create("gcnn-c4")) == expected


def test_wide_resnet50_2_is_torchvisions_with_a_new_head() -> None:
    from torchvision.models import wide_resnet50_2

    model = create("wide-resnet50-2")
    reference = wide_resnet50_2(weights=None)
    assert model.fc.out_features == 104
    assert n_params(model) == n_params(reference) - n_params(reference.fc) + (2048 * 104 + 104)


# --- layer-level properties --------------------------------------------------------------------------------


def test_group_convolution_permutes_the_group_axis() -> None:
    """Rotating the input by 90 degrees rotates every C4 feature map and shifts the group axis by one."""
    from equiaudit.zoo.models.gcnn import GroupConv2d, LiftingConv2d

    torch.manual_seed(6)
    lift, conv = LiftingConv2d("c4", 2, 3, 3).double(), GroupConv2d("c4", 3, 3, 5).double()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    y, yr = conv(lift(x)), conv(lift(torch.rot90(x, 1, dims=(-2, -1))))
    torch.testing.assert_close(yr, torch.roll(torch.rot90(y, 1, dims=(-2, -1)), 1, dims=2))


def test_scale_convolution_commutes_with_a_scale_shift() -> None:
    """With dilation 2^s on level s, a feature map whose level s + 1 is the 2x nearest up-sampling of level s of
    another gives outputs related the same way (exactly, on the levels the scale kernel does not truncate)."""
    from equiaudit.zoo.models.scale import ScaleConv2d

    torch.manual_seed(7)
    conv = ScaleConv2d(2, 3, scale_size=2, kernel_size=3).double()
    f = torch.randn(1, 2, 4, 8, 8, dtype=torch.float64)
    levels = [F.interpolate(f[:, :, s], scale_factor=2, mode="nearest") for s in range(3)]
    up = torch.stack([torch.randn(1, 2, 16, 16, dtype=torch.float64), *levels], dim=2)
    out, out_up = conv(f), conv(up)
    for s in range(2):  # levels s and s + 1 both inside the scale kernel's reach
        torch.testing.assert_close(out_up[:, :, s + 1, ::2, ::2], out[:, :, s])


def test_scale_space_levels_follow_a_zoom() -> None:
    """Level s + 1 of a 2x zoomed smooth image matches level s of the original (approximately: the assumed
    intrinsic blur of the zoomed image is not exact)."""
    from equiaudit.zoo.models.scale import scale_space

    torch.manual_seed(8)
    x = F.interpolate(torch.randn(4, 1, 9, 9, dtype=torch.float64), size=56, mode="bicubic", align_corners=False)
    zoomed = F.interpolate(x[..., 14:42, 14:42], size=56, mode="bilinear", align_corners=False)
    levels, levels_zoomed = scale_space(x, 3), scale_space(zoomed, 3)
    for s in range(2):
        a = F.avg_pool2d(levels_zoomed[:, :, s + 1], 2)[..., 4:24, 4:24]
        b = levels[:, :, s][..., 18:38, 18:38]
        assert ((a - b).norm() / b.norm()).item() < 0.1


def test_harmonic_filters_have_their_rotation_order() -> None:
    """A filter of order m turned by 90 degrees counter-clockwise (rot90) is the filter times exp(-i m pi / 2):
    W(R⁻¹p) with φ(R⁻¹p) = φ(p) - pi / 2, φ measured counter-clockwise as displayed."""
    from equiaudit.zoo.models.hnet import harmonic_basis

    basis = harmonic_basis(5, 4, max_order=2)  # (orders, rings, re/im, k, k)
    z = torch.complex(basis[:, :, 0], basis[:, :, 1])
    for m in range(3):
        rotated = torch.rot90(z[m], 1, dims=(-2, -1))
        torch.testing.assert_close(rotated, z[m] * complex(math.cos(m * math.pi / 2), -math.sin(m * math.pi / 2)))


def test_e2cnn_he_init_matches_e2cnn() -> None:
    from e2cnn.nn import R2Conv
    from e2cnn.nn.init import _generalized_he_init_variances
    from equiaudit.zoo.models.steerable import he_variances

    model = create("wrn16-8-d8d4d1", tiny=True)
    convs = [m for m in model.modules() if isinstance(m, R2Conv)]
    assert len(convs) > 5
    for conv in convs:
        torch.testing.assert_close(
            he_variances(conv.basisexpansion), _generalized_he_init_variances(conv.basisexpansion)
        )


@pytest.mark.parametrize("name", ["e2cnn-c8", "wrn16-8-d8d4d1"])
def test_steerable_state_dict_does_not_depend_on_the_mode(name: str) -> None:
    torch.manual_seed(9)
    trained = create(name, tiny=True).eval()
    state = trained.state_dict()
    assert state.keys() == create(name, tiny=True).state_dict().keys()  # eval-mode keys == train-mode keys
    x = _input(name, batch=1)
    for target in (create(name, tiny=True), create(name, tiny=True).eval()):  # loaded in train and in eval mode
        target.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(target.eval()(x), trained(x))


# --- input checks and weights files -----------------------------------------------------------------------


def test_models_reject_inputs_they_cannot_take() -> None:
    with pytest.raises(InputMismatchError, match="29x29"):
        create("e2cnn-c8", tiny=True).eval()(torch.randn(1, 1, 28, 28))
    with pytest.raises(InputMismatchError, match="divisible by 8"):
        create("unet", tiny=False).eval()(torch.randn(1, 3, 36, 36))


def test_wide_resnet_loads_user_weights_into_the_backbone(tmp_path) -> None:
    torch.manual_seed(10)
    source = create("wide-resnet50-2", tiny=True, num_classes=7)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = create("wide-resnet50-2", tiny=True, weights_path=path)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    assert model.fc.out_features == 104


def test_wide_resnet_weights_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        create("wide-resnet50-2", tiny=True, weights_path=tmp_path / "missing.pt")
    bad = tmp_path / "object.pt"
    torch.save({"conv1.weight": torch.zeros(1), "extra": ModelLoadError("x")}, bad)
    with pytest.raises(ModelLoadError, match="weights_only"):
        create("wide-resnet50-2", tiny=True, weights_path=bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(ModelLoadError, match="does not fit"):
        create("wide-resnet50-2", tiny=True, weights_path=wrong)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read"):
        create("wide-resnet50-2", tiny=True, weights_path=text)


def test_import_without_the_zoo_extra_names_what_to_install() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['kornia'] = None\n"
        "try:\n    import equiaudit.zoo\nexcept ImportError as exc:\n    print(exc)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert (
        run.stdout.strip() == "The model zoo needs the 'zoo' extra (kornia not installed): pip install 'equiaudit[zoo]'"
    )
