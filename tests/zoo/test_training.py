"""The zoo's training loop and evaluation: the loss goes down, runs repeat, metrics match references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from equiaudit.zoo import create
from equiaudit.zoo.training import _rotate, _schedule, as_data, evaluate, train

from equiaudit.data import load_data
from equiaudit.errors import DataError, EquiauditError

CASES = {  # model, data, lr: one classifier and one segmenter, tiny on a few images
    "classify": ("cnn", "digits", 3e-2),
    "segment": ("unet", "shapes-seg", 3e-2),
}


@pytest.fixture(scope="module")
def datasets() -> dict[str, object]:
    return {
        "classify": load_data("digits", split="train", limit=48),
        "segment": load_data("shapes-seg", split="train", limit=12),
    }


def _model(task: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create(CASES[task][0], tiny=True)


@pytest.mark.parametrize("task", list(CASES))
def test_one_epoch_lowers_the_loss(task: str, datasets: dict) -> None:
    data = datasets[task]
    model = _model(task)
    before = evaluate(model, data)
    result = train(model, data, epochs=1, lr=CASES[task][2], batch_size=8, device="cpu")
    after = evaluate(model, data)
    assert result.task == task and result.epochs == 1 and result.images == len(data)
    assert result.steps == math.ceil(len(data) / 8)
    assert len(result.losses) == 1 and math.isfinite(result.losses[0])
    assert after.loss < before.loss
    assert not model.training  # left in eval mode


@pytest.mark.parametrize("task", list(CASES))
def test_same_seed_same_weights_other_seed_other_weights(task: str, datasets: dict) -> None:
    data = datasets[task]
    states = []
    for seed in (1, 1, 2):
        model = _model(task)  # same initial weights each time: only the training seed varies
        train(model, data, epochs=1, lr=1e-2, batch_size=8, seed=seed, augment_rotation=30.0, device="cpu")
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_progress_reports_every_step_with_epoch_and_running_loss(datasets: dict) -> None:
    calls = []
    model = _model("classify")
    result = train(
        model,
        datasets["classify"],
        epochs=2,
        batch_size=16,
        device="cpu",
        progress=lambda step, total, info: calls.append((step, total, info["epoch"], info["loss"])),
    )
    assert [c[0] for c in calls] == list(range(1, result.steps + 1))
    assert {c[1] for c in calls} == {result.steps}
    assert [c[2] for c in calls] == [1] * (result.steps // 2) + [2] * (result.steps // 2)
    assert calls[-1][3] == pytest.approx(result.losses[-1])


def test_a_last_batch_of_one_image_is_dropped() -> None:
    # 17 images in batches of 8: 8 + 8 + 1, and BatchNorm cannot train on the single image
    data = load_data("digits", split="train", limit=17)
    result = train(_model("classify"), data, epochs=1, batch_size=8, device="cpu")
    assert result.steps == 2


def test_schedule_warms_up_then_decays_to_zero() -> None:
    factor = _schedule(200)
    values = [factor(s) for s in range(200)]
    peak = int(np.argmax(values))
    assert values[0] < values[peak] and 0 < peak < 20
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))
    assert values[-1] < 1e-3


def test_rotation_augmentation_turns_masks_with_their_images() -> None:
    torch.manual_seed(0)
    mask = (torch.rand(6, 1, 24, 24) > 0.5).float()
    mask = F.max_pool2d(mask, 5, 1, 2)  # blobs, so a rotation keeps most pixels clear of the 0.5 threshold
    x, rotated = _rotate(mask.repeat(1, 3, 1, 1), mask.clone(), 180.0, "segment")
    assert set(rotated.unique().tolist()) <= {0.0, 1.0}
    agree = ((x[:, :1] >= 0.5).float() == rotated).float().mean()
    assert agree == 1.0  # the image channels and the mask saw the same angles
    assert not torch.equal(rotated, mask)


def test_evaluate_matches_an_independent_reference(datasets: dict) -> None:
    model = _model("classify").eval()
    data = datasets["classify"]
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    y = torch.tensor([data.dataset[i][1] for i in range(len(data))])
    with torch.no_grad():
        logits = model(x)
    ev = evaluate(model, data, batch_size=7)
    assert ev.images == len(data)
    assert ev.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    assert ev.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert ev.per_image.tolist() == (logits.argmax(1) == y).double().tolist()


def test_evaluate_iou_matches_numpy(datasets: dict) -> None:
    model = _model("segment").eval()
    data = datasets["segment"]
    ev = evaluate(model, data, batch_size=5)
    with torch.no_grad():
        pred = np.stack([(model(data.dataset[i][0][None])[0, 0] > 0).numpy() for i in range(len(data))])
    truth = np.stack([data.dataset[i][2][0].numpy() > 0.5 for i in range(len(data))])
    inter, union = (pred & truth).sum((1, 2)), (pred | truth).sum((1, 2))
    expected = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    np.testing.assert_allclose(ev.per_image, expected, rtol=0, atol=1e-12)
    assert ev.iou == pytest.approx(expected.mean()) and ev.accuracy is None and ev.score == ev.iou


def test_evaluate_restores_the_training_mode(datasets: dict) -> None:
    model = _model("classify").train()
    evaluate(model, datasets["classify"])
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"lr": -1.0}, "learning rate must be positive"),
        ({"augment_rotation": 270.0}, r"\[0, 180\]"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs: dict, match: str, datasets: dict) -> None:
    with pytest.raises(EquiauditError, match=match):
        train(_model("classify"), datasets["classify"], **kwargs)


def test_data_without_labels_or_masks_cannot_train() -> None:
    with pytest.raises(DataError, match="neither labels nor masks"):
        train(_model("classify"), torch.rand(8, 1, 28, 28))


def test_as_data_reads_specs_and_tensors() -> None:
    assert as_data("digits", limit=5).split == "train"
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    wrapped = as_data((x, y))
    assert len(wrapped) == 4 and wrapped.has_labels
    with pytest.raises(DataError):
        as_data(3)
