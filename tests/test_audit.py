"""The audit loop end to end, on properties: exactly invariant models score ~0, broken ones do not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _models import C4Averaged, ConstantSeg, CoordinateModel, FailsMidScan, Identity, SmallCNN
from torch import nn

from equiaudit.engine import audit
from equiaudit.errors import EquiauditError, InputMismatchError, ScanInterrupted
from equiaudit.result import AuditResult, load, save


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from equiaudit.data import load_data

    data = load_data("digits", limit=24)
    return torch.stack([data.dataset[i][0] for i in range(len(data))])


def _seeded(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return module


def test_c4_averaged_model_is_exactly_invariant_on_c4_not_on_so2() -> None:
    model = C4Averaged(_seeded(SmallCNN()))
    exact = audit(model, "digits", "c4", limit=32, samples=0)
    assert (exact.elements["agreement"] == 1).all()
    assert exact.elements["invariance_error_max"].max() <= 1e-6
    assert (exact.elements["floor"] == 0).all()
    assert exact.summary["exact_group"] is True
    so2 = audit(model, "digits", "so2", steps=36, limit=32, samples=0)
    assert so2.summary["invariance_error_max"] > 1e-2
    assert so2.summary["kl_max"] > 1e-6
    assert so2.summary["floor_max"] > 0


def test_d4_averaged_model_is_exactly_invariant_on_d4() -> None:
    model = C4Averaged(_seeded(SmallCNN()), d4=True)
    res = audit(model, "digits", "d4", limit=16, dtype="float64", samples=0)
    assert res.elements["invariance_error_max"].max() <= 1e-12
    assert res.summary["kl_max"] <= 1e-12
    plain = audit(_seeded(SmallCNN()), "digits", "d4", limit=16, samples=0)
    assert plain.summary["invariance_error_max"] > 1e-2


def test_identity_dense_model_scores_exactly_the_floor(digits: torch.Tensor) -> None:
    res = audit(Identity(), digits, "so2:12", task="dense", samples=0)
    assert res.task == "dense"
    torch.testing.assert_close(
        torch.tensor(res.elements["equivariance_error"].values),
        torch.tensor(res.elements["floor"].values),
        rtol=0,
        atol=0,
    )
    sampled = ~res.elements["exact"]
    assert res.elements.loc[sampled, "floor"].min() > 0
    assert (res.elements.loc[~sampled, "floor"] == 0).all()  # rot90 multiples are permutations
    broken = audit(CoordinateModel(), digits, "so2:12", task="dense", samples=0)
    ratio = broken.elements["equivariance_error"][sampled] / broken.elements["floor"][sampled]
    assert ratio.min() > 5
    assert broken.elements.loc[~sampled & (broken.elements["label"] != "identity"), "equivariance_error"].min() > 0.1


def test_scale_group_floor_and_mask(digits: torch.Tensor) -> None:
    res = audit(Identity(), digits, "scale:0.5..2:5", task="dense", samples=0)
    assert res.run.mask_fraction < 0.5  # zooming in by 2 keeps the central quarter
    assert (res.elements["equivariance_error"] == res.elements["floor"]).all()


def test_results_do_not_depend_on_batch_size(digits: torch.Tensor) -> None:
    model = _seeded(SmallCNN())
    a = audit(model, digits, "so2:8", batch_size=9, samples=0).elements
    b = audit(model, digits, "so2:8", batch_size=500, samples=0).elements
    for col in ("agreement", "kl", "invariance_error", "floor"):
        torch.testing.assert_close(torch.tensor(a[col].values), torch.tensor(b[col].values), rtol=1e-4, atol=1e-6)


def test_labels_give_accuracy_metrics() -> None:
    res = audit(_seeded(SmallCNN()), "digits", "c4", limit=40, samples=4)
    assert {"accuracy", "accuracy_drop"} <= set(res.elements.columns)
    assert res.elements.loc[0, "accuracy_drop"] == 0  # identity element
    assert 0 <= res.summary["worst_case_accuracy"] <= res.summary["accuracy_min"]
    assert res.per_class is not None and len(res.per_class["classes"]) == 10
    assert res.samples["first"]["pred"].shape == (4, 4)
    assert res.samples["worst"]["x"].shape == (4, 1, 28, 28)


def test_segmentation_with_masks() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    mask = (x.mean(1, keepdim=True) > 0.5).float()
    res = audit(ConstantSeg(), (x, None, mask), "c4", samples=2)
    assert res.task == "segment"
    assert (res.elements["iou_consistency"] == 1).all()
    assert res.elements["equivariance_error"].max() < 1e-6
    assert "iou_truth" in res.elements and "iou_truth_reference" in res.summary
    assert res.samples["first"]["seg"].shape == (2, 4, 32, 32)
    truth = res.records["iou_truth"]  # per image and element; its means are the element column
    assert truth.shape == (6, 4)
    np.testing.assert_allclose(truth.mean(0), res.elements["iou_truth"], atol=1e-6, rtol=0)
    low, high = res.elements["iou_truth_low"], res.elements["iou_truth_high"]
    assert (low <= res.elements["iou_truth"] + 1e-9).all() and (res.elements["iou_truth"] <= high + 1e-9).all()


def test_centre_mask_compares_the_image_inside_its_canvas_only() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.pad(torch.rand(3, 1, 16, 16), (4, 4, 4, 4), value=0.0)

    class Corners(torch.nn.Module):  # the identity, plus a spot in one corner of the canvas, outside the image
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            out = v.clone()
            out[..., :3, :3] += 5.0
            return out

    whole, inner = (audit(Corners(), x, "c4", task="dense", mask=m) for m in ("auto", "centre:16"))
    assert whole.summary["equivariance_error_mean"] > 0.1  # the corner spot does not turn with the image
    assert inner.summary["equivariance_error_mean"] < 1e-6  # inside the image the model is exactly equivariant
    with pytest.raises(EquiauditError, match="larger than the 24x24 input"):
        audit(Corners(), x, "c4", task="dense", mask="centre:25")


class _Nan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3), float("nan"))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (SmallCNN(in_channels=3), "takes 3 channel\\(s\\); use --channels 3"),
        (_Nan(), "NaN"),
        (nn.Flatten(0), "neither"),
    ],
)
def test_input_mismatch_is_one_clear_line(model: nn.Module, match: str) -> None:
    with pytest.raises(InputMismatchError, match=match) as info:
        audit(model, "digits", "c4", limit=4)
    assert "\n" not in str(info.value)


def test_wrong_task_and_bad_options() -> None:
    with pytest.raises(InputMismatchError, match="task dense"):
        audit(SmallCNN(), "digits", "c4", limit=4, task="dense")
    for kwargs in ({"task": "detect"}, {"mask": "square"}, {"interpolation": "area"}, {"batch_size": 0}):
        with pytest.raises(EquiauditError):
            audit(SmallCNN(), "digits", "c4", limit=4, **kwargs)


def test_failure_mid_scan_keeps_partial_results() -> None:
    with pytest.raises(ScanInterrupted) as info:
        audit(FailsMidScan(), "digits", "c4", limit=20, batch_size=10)  # 2 images per forward after the probe
    partial = info.value.partial
    assert partial is not None and partial.run.partial is True
    assert 0 < partial.summary["images"] < 20
    assert "device lost" in str(info.value) and "second line" not in str(info.value)


def test_json_round_trip_and_schema(tmp_path) -> None:
    res = audit(_seeded(SmallCNN()), "digits", "so2:4", limit=8, samples=2)
    doc = json.loads(res.to_json())
    assert doc["schema_version"] == 2 and doc["tool"] == "equiaudit"
    assert set(doc) == {
        "schema_version",
        "tool",
        "model",
        "data",
        "group",
        "run",
        "summary",
        "elements",
        "locations",
        "intervals",
        "worst_elements",
        "probe",
        "per_class",
        "layers",  # --layers (None here)
        "lie",  # --lie (None here)
    }
    assert doc["layers"] is None and doc["lie"] is None
    first = doc["elements"][1]
    for key in (
        "id",
        "label",
        "angle",
        "scale",
        "reflect",
        "exact",
        "agreement",
        "flip_rate",
        "kl",
        "invariance_error",
        "accuracy",
        "accuracy_drop",
        "floor",
    ):
        assert key in first
    for key in ("spec", "task", "batch_size", "versions", "device", "dtype", "wall_time_s", "images_per_s"):
        assert key in doc["run"]
    path = save(res, tmp_path / "r.json")
    back = load(path)
    assert back.summary == doc["summary"]
    assert back.samples["first"]["pred"].shape == res.samples["first"]["pred"].shape
    assert AuditResult.from_dict(doc).to_dict() == doc


def test_metric_value_and_checks() -> None:
    res = audit(C4Averaged(_seeded(SmallCNN())), "digits", "c4", limit=8, samples=0)
    assert res.check(above={"invariance_error": 1e-5}, below={"agreement": 0.99}) == []
    assert res.check(above={"invariance_error": -1.0})
    with pytest.raises(EquiauditError, match="not defined for this audit"):
        res.metric_value("iou_truth")
    with pytest.raises(EquiauditError, match="unknown metric"):
        res.metric_value("bogus")
    # summary X_max is the worst image under the worst element: the max of the element column X_max
    assert res.summary["invariance_error_max"] == res.elements["invariance_error_max"].iloc[1:].max()
    assert res.summary["invariance_error_worst"] == res.elements["invariance_error"].iloc[1:].max()


class _SignFlipBinary(nn.Module):
    """One logit whose sign flips under a left-right mirror: a binary classifier that is not flip-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return (x[..., : w // 2].sum((1, 2, 3)) - x[..., w // 2 :].sum((1, 2, 3)))[:, None] + self.dummy


def test_one_logit_classifier_is_binary() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    res = audit(_SignFlipBinary(), x, "flip", samples=0)
    assert res.elements.loc[1, "agreement"] == 0  # every prediction flips
    assert res.elements.loc[1, "kl"] > 0


class _PoolDense(nn.Module):
    """A pointwise map then 2x2 average pooling: equivariant up to resampling, at half resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(self.conv(x), 2)


def test_downsampled_dense_output_is_compared_with_its_own_floor(digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    res = audit(_PoolDense(), digits, "rot:0,30,45", task="dense", samples=0)
    assert res.run.output_shape == [2, 14, 14]
    assert res.summary["error_to_floor_max"] < 1.5  # at its floor, not 2x it (the floor is at output resolution)


def test_exact_flag_follows_the_path_taken() -> None:
    x = torch.rand(4, 1, 6, 10)
    res = audit(Identity(), x, "c4", task="dense", samples=0)
    assert res.elements["exact"].tolist() == [True, False, True, False]  # odd quarter turns are sampled
    assert res.summary["exact_group"] is False


def test_labels_out_of_range_are_an_input_error() -> None:
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 12])
    with pytest.raises(InputMismatchError, match="labels"):
        audit(SmallCNN(), (x, y), "c4")


def test_stale_samples_sidecar_is_never_attached(tmp_path) -> None:
    model = _seeded(SmallCNN())
    save(audit(model, "digits", "c4", limit=4, samples=2), tmp_path / "r.json")
    assert load(tmp_path / "r.json").samples is not None
    save(audit(model, "digits", "rot:0,45", limit=4, samples=0), tmp_path / "r.json")
    assert load(tmp_path / "r.json").samples is None
    assert not (tmp_path / "r.samples.npz").exists()


def test_classifier_floor_is_estimated_on_the_first_images() -> None:
    res = audit(_seeded(SmallCNN()), "digits", "so2:6", limit=300, batch_size=50, samples=0)
    assert res.run.floor_images == 128  # exactly the default floor_images, whatever the chunks
    assert res.summary["images"] == 300
    dense = audit(Identity(), "digits", "so2:6", limit=300, task="dense", samples=0)
    assert dense.run.floor_images == 300  # a dense model's floor uses every image


class _RecordsBatches(nn.Module):
    """A dense model whose largest activation is ``width`` channels at full resolution; records forward sizes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Conv2d(width, 1, 1)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.head(self.wide(x))


def test_auto_batch_size_follows_the_largest_activation(digits: torch.Tensor) -> None:
    from equiaudit.engine import AUTO_BATCH_BYTES, AUTO_BATCH_CAP, AUTO_BATCH_MAX, auto_batch_size

    cpu, gpu = torch.device("cpu"), torch.device("meta")  # meta: any device but the CPU
    assert auto_batch_size(AUTO_BATCH_BYTES["cpu"] / 40, cpu) == 40
    assert auto_batch_size(1.0, cpu) == AUTO_BATCH_MAX == AUTO_BATCH_CAP["cpu"] and auto_batch_size(1e12, cpu) == 1
    assert auto_batch_size(AUTO_BATCH_BYTES["cpu"] / 40, cpu, input_bytes_per_image=1e9) == 40  # CPU: activations
    # a GPU's budget: 2 GiB of activations, and of four forwards' inputs; the cap is high
    assert auto_batch_size(AUTO_BATCH_BYTES["other"] / 1000, gpu) == 1000
    assert auto_batch_size(AUTO_BATCH_BYTES["other"] / 1000, gpu, AUTO_BATCH_BYTES["other"] / 500) == 125
    assert auto_batch_size(1.0, gpu) == AUTO_BATCH_CAP["other"] == 4096
    narrow, wide = _seeded(_RecordsBatches(4)), _seeded(_RecordsBatches(256))
    small = audit(narrow, digits, "so2:8", task="dense", samples=0).run
    large = audit(wide, digits, "so2:8", task="dense", samples=0).run
    # 256 float32 channels of 28x28 are 802,816 bytes per image: the CPU budget of 4 MiB holds 5 of them
    assert AUTO_BATCH_BYTES["cpu"] == 4 << 20
    assert (large.batch_size, large.batch_size_auto) == (5, True)
    assert small.batch_size > large.batch_size
    assert max(wide.sizes) <= 5
    explicit = audit(wide, digits, "so2:8", task="dense", samples=0, batch_size=64).run
    assert explicit.batch_size == 64 and explicit.batch_size_auto is False


def test_auto_and_explicit_batch_sizes_give_the_same_metrics(digits: torch.Tensor) -> None:
    model = _seeded(_RecordsBatches(256))
    auto = audit(model, digits, "so2:12", task="dense", samples=0).elements
    fixed = audit(model, digits, "so2:12", task="dense", samples=0, batch_size=300).elements
    for col in ("equivariance_error", "equivariance_error_max", "floor"):
        torch.testing.assert_close(
            torch.tensor(auto[col].values), torch.tensor(fixed[col].values), rtol=1e-4, atol=1e-6
        )


def test_forwards_are_split_evenly() -> None:
    model = _RecordsBatches(2)
    audit(model, torch.rand(3, 1, 12, 12), "so2:12", task="dense", samples=0, batch_size=8)
    # after the probe and one zero image (the output's fill for the floor, see Engine._prepare_floor): 2 images
    # (24 rows) fill 3 forwards of 8; the last image's 12 rows are 6 + 6, not 8 + 4
    assert model.sizes[1] == 1 and model.sizes[2:] == [8, 8, 8, 6, 6]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_models_get_a_guessed_batch_size(digits: torch.Tensor) -> None:
    eager = _seeded(SmallCNN())
    scripted = torch.jit.script(eager)  # refuses forward hooks
    res = audit(scripted, digits, "c4", samples=0)
    # guessed as 16x the input: 16 x 3,136 bytes per 28x28 float32 image -> 4 MiB holds 83
    assert res.run.batch_size == 83 and res.run.batch_size_auto is True
    assert audit(eager, digits, "c4", samples=0).run.batch_size == 167  # measured: 8 channels
    torch.testing.assert_close(
        res.summary["invariance_error_max"], audit(eager, digits, "c4", samples=0).summary["invariance_error_max"]
    )


def test_chunks_are_sized_before_the_first_one(digits: torch.Tensor) -> None:
    # the first chunk is no larger than the rest: a model with a forward batch of 5 and 36 rows per image
    seen: list[int] = []
    audit(_RecordsBatches(256), digits[:4], "so2:36", task="dense", samples=0, progress=lambda n, _: seen.append(n))
    assert seen == [1, 2, 3, 4]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated", "ignore:`torch.jit.trace.*` is deprecated")
def test_activation_guess_covers_models_whose_submodules_are_not_hooked(digits: torch.Tensor) -> None:
    wide = _seeded(_RecordsBatches(256))
    # measured: 256 channels of 28x28 float32 = 802,816 bytes per image -> 5; guessed: 16 x the input -> 83
    assert audit(wide, digits, "c4", task="dense", samples=0).run.batch_size == 5
    traced = torch.jit.trace(wide, digits[:2])  # only the root's hook would fire
    assert audit(traced, digits, "c4", task="dense", samples=0).run.batch_size == 83
    mixed = _seeded(_RecordsBatches(256))
    mixed.wide = torch.jit.script(mixed.wide)  # refuses a hook; the head alone would say 3,136 bytes
    assert audit(mixed, digits, "c4", task="dense", samples=0).run.batch_size == 83


class _DoubleOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def test_dense_outputs_are_undone_in_their_own_precision(digits: torch.Tensor) -> None:
    # the floor depends on f(x) alone: float64 outputs of a float32 audit give the float64 audit's floor
    mixed = audit(_DoubleOutput(), digits, "so2:8", task="dense", samples=0)
    pure = audit(Identity(), digits.double(), "so2:8", task="dense", dtype="float64", samples=0)
    torch.testing.assert_close(
        torch.tensor(mixed.elements["floor"].values), torch.tensor(pure.elements["floor"].values), rtol=0, atol=1e-15
    )
