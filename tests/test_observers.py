"""Observers: one pass feeds them all; partial states merge exactly; the locator, the per-image record and the
gallery agree with references computed here; nothing depends on the batch size."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _models import C4Averaged, Identity, SmallCNN

from equiaudit.data import AuditData
from equiaudit.engine import Engine, audit
from equiaudit.metrics import centred, relative_error
from equiaudit.observers import Observer
from equiaudit.spec import AuditSpec
from equiaudit.transforms import apply_elements


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def _engine(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, spec: AuditSpec) -> Engine:
    data = AuditData.from_tensors(x, y)
    engine = Engine(model, data, spec, torch.device("cpu"), torch.float32)
    engine.prepare(x[:2])
    while engine.images < len(data):
        engine.step(data.read(engine.images, min(len(data), engine.images + engine.images_per_chunk)))
    return engine


class _Counter(Observer):
    """Counts what the engine hands over: batches, images, and the shapes it promised."""

    def setup(self, setup) -> None:
        self.add_state("images", torch.zeros(()), "sum")
        self.batches = 0
        self.groups = len(setup.elements)

    def update(self, batch) -> None:
        assert batch.outputs.shape[0] == self.groups and batch.inputs.shape[0] == len(batch.scores["pred"]) - 1
        self.images += batch.size
        self.batches += 1

    def compute(self) -> int:
        return int(self.images)


def test_every_observer_sees_every_batch_once_and_the_model_runs_once_per_image() -> None:
    calls = []
    model = _seeded(SmallCNN())
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    counter = _Counter()
    x = torch.rand(10, 1, 28, 28)
    audit(model, x, "c4", observers=[counter], batch_size=8, samples=2)
    assert counter.compute() == 10 and counter.batches >= 2
    probe = 2  # the probe runs on two images before the scan
    assert sum(calls) == probe + 10 * 4  # each image once untransformed, once per moved element


@pytest.mark.parametrize("task", ["classify", "dense"])
def test_two_shards_merge_to_the_single_pass(task: str) -> None:
    torch.manual_seed(1)
    x, y = torch.rand(12, 1, 28, 28), torch.randint(0, 10, (12,))
    model = _seeded(SmallCNN()) if task == "classify" else Identity()
    spec = AuditSpec(group="so2:6", task=task, samples=3, batch_size=12)
    whole = _engine(model, x, y, spec)
    a, b = _engine(model, x[:5], y[:5], spec), _engine(model, x[5:], y[5:], spec)
    for obs in b.observers:  # shard b's images are 5.. of the whole
        if hasattr(obs, "image"):
            obs.image += 5
        if hasattr(obs, "index") and isinstance(obs.index, list):
            obs.index = [i + 5 for i in obs.index]
    merged = copy.deepcopy(a.observers)
    for mine, theirs in zip(merged, b.observers, strict=True):
        mine.merge(theirs)
    for one, two in zip(whole.observers, merged, strict=True):
        got, want = two.compute(), one.compute()
        if isinstance(want, dict) and want and all(isinstance(v, torch.Tensor) for v in want.values()):
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-9, msg=key)
        elif isinstance(want, list):  # locations
            for g, w in zip(got, want, strict=True):
                assert (g.image, g.index) == (w.image, w.index) and g.error == pytest.approx(w.error, rel=1e-6)
        elif isinstance(want, dict) and "error" in want:  # per-image records
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6)


def test_locator_and_records_match_a_direct_computation() -> None:
    torch.manual_seed(2)
    model = _seeded(SmallCNN())
    x = torch.rand(9, 1, 28, 28)
    res = audit(model, x, "rot:0,30,90", batch_size=5, samples=4, task="classify", input_mask="none")
    with torch.inference_mode():
        ref = model(x).double()
        views = apply_elements(x, _elements("rot:0,30,90"))
        outs = torch.stack([model(v) for v in views]).double()
    err = relative_error(centred(outs), centred(ref))  # (G, B), on logits centred over the classes
    np.testing.assert_allclose(res.records["error"], err.T.numpy(), rtol=1e-4, atol=1e-6)
    for g, loc in enumerate(res.locations):
        b = int(err[g].argmax())
        assert loc["image"] == b
        k = int((outs[g, b] - ref[b]).abs().argmax())
        assert loc["index"] == [k]
        assert loc["output"] == pytest.approx(float(outs[g, b, k]), rel=1e-4, abs=1e-6)
        assert loc["reference"] == pytest.approx(float(ref[b, k]), rel=1e-4, abs=1e-6)


def _elements(spec: str):
    from equiaudit.groups import parse_group

    return parse_group(spec).elements


def test_gallery_views_are_what_the_model_saw() -> None:
    torch.manual_seed(3)
    x = torch.rand(4, 1, 28, 28)
    res = audit(_seeded(SmallCNN()), x, "so2:8", samples=4, batch_size=7, input_mask="none")
    views = res.samples["first"]["views"]  # (N, G, C, H, W)
    want = apply_elements(x, _elements("so2:8")).transpose(0, 1)
    np.testing.assert_allclose(views.astype(np.float32), want.numpy(), atol=2e-3)  # float16 storage


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_results_do_not_depend_on_the_batch_size(batch_size: int) -> None:
    torch.manual_seed(4)
    x, y = torch.rand(7, 1, 28, 28), torch.randint(0, 10, (7,))
    model = _seeded(SmallCNN())
    base = audit(model, (x, y), "so2:6", samples=2, batch_size=42)
    other = audit(model, (x, y), "so2:6", samples=2, batch_size=batch_size)
    for col in ("agreement", "kl", "invariance_error", "invariance_error_max", "accuracy", "floor"):
        np.testing.assert_allclose(other.elements[col], base.elements[col], rtol=1e-5, atol=1e-7)
    assert [loc["image"] for loc in other.locations] == [loc["image"] for loc in base.locations]
    np.testing.assert_allclose(other.records["error"], base.records["error"], rtol=1e-5, atol=1e-7)
    assert list(other.samples["worst"]["index"]) == list(base.samples["worst"]["index"])


def test_an_exactly_invariant_model_has_no_location_error() -> None:
    res = audit(C4Averaged(_seeded(SmallCNN())), torch.rand(5, 1, 28, 28), "c4", samples=0)
    assert all(loc["error"] < 1e-5 for loc in res.locations)
