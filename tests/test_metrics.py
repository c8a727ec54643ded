"""Metric formulas against independent references, and streaming state that merges exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equiaudit.groups import parse_group
from equiaudit.metrics import binarize, classify_scores, dense_scores, iou, kl_divergence, relative_error
from equiaudit.observers import ClassificationSums, DenseSums, FloorObserver, ObservedBatch, Setup
from equiaudit.transforms import apply_elements


def _setup(task: str, g: int, k: int, size: tuple[int, int] = (6, 6), elements=None) -> Setup:
    elements = elements or parse_group(f"rot:{','.join(str(i) for i in range(g))}").elements
    mask = torch.ones(size, dtype=torch.bool)
    return Setup(
        task, tuple(elements), [], size, (k, *size) if task != "classify" else (k,), torch.float64,
        torch.device("cpu"), torch.float64, "bilinear", "zeros", "none", mask, None, mask, max(2, k), 0,
        [i for i, g in enumerate(elements) if not g.exact],
    )  # fmt: skip


class ClassificationMetrics(ClassificationSums):
    """The observer fed with ``(out, ref, labels)`` scored as the engine scores them."""

    def __init__(self, g: int, k: int) -> None:
        super().__init__()
        self.setup(_setup("classify", g, k))

    def update(self, out: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        batch = ObservedBatch(0, ref[:, :, None, None], ref[:0], ref, out, None, labels, None)
        batch.scores = classify_scores(out, ref, labels)
        super().update(batch)


class DenseMetrics(DenseSums):
    def __init__(self, g: int, segment: bool) -> None:
        super().__init__()
        self.setup(_setup("segment" if segment else "dense", g, 1))

    def update(self, out, ref, mask=None, truth=None) -> None:
        batch = ObservedBatch(0, ref, ref[:0], ref, out, out, None, truth)
        batch.scores = dense_scores(out, ref, mask, truth, self.segment, 2)
        super().update(batch)


def test_relative_error_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    ref, out = rng.normal(size=(4, 3, 5, 5)), rng.normal(size=(2, 4, 3, 5, 5))
    got = relative_error(torch.from_numpy(out), torch.from_numpy(ref)).numpy()
    want = np.linalg.norm((out - ref).reshape(2, 4, -1), axis=-1) / np.linalg.norm(ref.reshape(4, -1), axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    mask = torch.zeros(5, 5, dtype=torch.float64)
    mask[1:4, 1:4] = 1
    got_m = relative_error(torch.from_numpy(out), torch.from_numpy(ref), mask).numpy()
    inner = (slice(None), slice(None), slice(None), slice(1, 4), slice(1, 4))
    want_m = np.linalg.norm((out - ref)[inner].reshape(2, 4, -1), axis=-1) / np.linalg.norm(
        ref[inner[1:]].reshape(4, -1), axis=-1
    )
    np.testing.assert_allclose(got_m, want_m, rtol=1e-12)


def test_kl_matches_definition_and_is_zero_for_equal_logits() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    want = (p * np.log(p / q)).sum(-1)
    np.testing.assert_allclose(kl_divergence(torch.from_numpy(b), torch.from_numpy(a)).numpy(), want, rtol=1e-10)
    assert kl_divergence(torch.from_numpy(a), torch.from_numpy(a)).abs().max() < 1e-12


def test_iou_binary_and_multiclass() -> None:
    a = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 0]]])
    b = torch.tensor([[[1, 0, 0], [0, 0, 0], [0, 0, 0]]])
    assert iou(a, b, 2).item() == pytest.approx(0.5)
    assert iou(torch.zeros_like(a), torch.zeros_like(a), 2).item() == 1.0
    c = torch.tensor([[[0, 1, 2], [2, 2, 2], [0, 0, 1]]])
    d = torch.tensor([[[0, 1, 2], [2, 2, 1], [0, 0, 1]]])
    # class 0: 3/3, class 1: 2/3, class 2: 3/4
    assert iou(c, d, 3).item() == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_binarize_single_channel_threshold_and_argmax() -> None:
    logits = torch.tensor([[[[-1.0, 0.5]]]])
    assert binarize(logits).tolist() == [[[0, 1]]]
    two = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])
    assert binarize(two).tolist() == [[[1, 0]]]
    # stacked (G, B, C, H, W) maps with ties agree with the channel argmax taken one map at a time
    many = torch.randint(0, 3, (3, 2, 5, 4, 6)).float()
    expected = torch.stack([torch.stack([m.argmax(0) for m in g]) for g in many])
    assert torch.equal(binarize(many), expected)


def _random_batches(n: int, g: int, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(g, 5, k, generator=gen),
            torch.randn(5, k, generator=gen),
            torch.randint(0, k, (5,), generator=gen),
        )
        for _ in range(n)
    ]


def test_classification_streaming_equals_one_shot_and_merges_exactly() -> None:
    batches = _random_batches(4, 3, 4, seed=0)
    streamed, merged, one = ClassificationMetrics(3, 4), ClassificationMetrics(3, 4), ClassificationMetrics(3, 4)
    for out, ref, y in batches:
        streamed.update(out, ref, y)
    one.update(
        torch.cat([b[0] for b in batches], 1), torch.cat([b[1] for b in batches]), torch.cat([b[2] for b in batches])
    )
    a, b = ClassificationMetrics(3, 4), ClassificationMetrics(3, 4)
    for out, ref, y in batches[:2]:
        a.update(out, ref, y)
    for out, ref, y in batches[2:]:
        b.update(out, ref, y)
    merged.merge(a).merge(b)
    for key, value in one.compute().items():
        torch.testing.assert_close(streamed.compute()[key], value)
        torch.testing.assert_close(merged.compute()[key], value)
    assert streamed.summary() == pytest.approx(one.summary())


def test_classification_values_against_direct_computation() -> None:
    out, ref, y = _random_batches(1, 2, 3, seed=3)[0]
    m = ClassificationMetrics(2, 3)
    m.update(out, ref, y)
    res = m.compute()
    agree = (out.argmax(-1) == ref.argmax(-1)).double().mean(-1)
    torch.testing.assert_close(res["agreement"], agree)
    acc = (out.argmax(-1) == y).double().mean(-1)
    torch.testing.assert_close(res["accuracy"], acc)
    ref_acc = (ref.argmax(-1) == y).double().mean()
    torch.testing.assert_close(res["accuracy_drop"], ref_acc - acc)
    all_ok = ((out.argmax(-1) == y).all(0) & (ref.argmax(-1) == y)).double().mean()
    assert m.summary()["worst_case_accuracy"] == pytest.approx(all_ok.item())
    per_class = m.per_class()
    assert per_class["accuracy"].shape == (2, 3)
    assert per_class["support"].sum() == 5


def test_invariant_outputs_score_perfectly() -> None:
    ref = torch.randn(7, 5)
    m = ClassificationMetrics(4, 5)
    m.update(ref.expand(4, 7, 5), ref)
    res = m.compute()
    assert torch.all(res["agreement"] == 1) and torch.all(res["invariance_error"] == 0)
    assert torch.all(res["kl"] < 1e-12)


def test_dense_and_floor_metrics() -> None:
    ref = torch.randn(3, 1, 6, 6)
    out = torch.stack([ref, ref + 0.1])
    d = DenseMetrics(2, segment=True)
    d.update(out, ref, torch.ones(6, 6, dtype=torch.bool), truth=(ref[:, 0] > 0).long())
    res = d.compute()
    assert res["equivariance_error"][0] == 0 and res["equivariance_error"][1] > 0
    assert res["max_abs_error"][1] == pytest.approx(0.1, abs=1e-6)
    assert res["iou_consistency"][0] == 1 and res["iou_truth"][0] == 1
    assert d.summary()["iou_truth_reference"] == 1
    # The dense floor is the round trip of f(x) under each element, by the same formula as the error.
    group = parse_group("rot:0,45").elements
    f = FloorObserver()
    f.setup(_setup("dense", 2, 1, elements=group))
    x = ref.double()
    there = apply_elements(x, group[1:], padding="zeros")
    back = apply_elements(there, group[1:], inverse=True, padding="zeros")
    batch = ObservedBatch(0, x, x[:0], x, x.expand(2, *x.shape), x.expand(2, *x.shape), None, None)
    batch.floor_out, batch.floor_ref = back, x
    f.update(batch)
    want = torch.stack([torch.zeros(3, dtype=torch.float64), relative_error(back[0], x)]).mean(-1)
    torch.testing.assert_close(f.compute()["floor"], want)
    torch.testing.assert_close(torch.from_numpy(f.images()).double().mean(0), want, rtol=1e-6, atol=1e-7)
