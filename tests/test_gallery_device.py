"""The gallery keeps its selection on the model's device: it equals the per-image host selection it replaced
(same images, same order, same material), ties included, across chunks and snapshots; on CUDA a chunk makes
no host sync."""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import pytest
import torch
from _models import SmallCNN

from equiaudit.data import AuditData
from equiaudit.engine import Engine
from equiaudit.observers import Observer, _view
from equiaudit.spec import AuditSpec


class _HostGallery(Observer):
    """The reference: the previous gallery, which copied each chunk's scores to the host and kept a heap."""

    name = "host_gallery"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def setup(self, setup: Any) -> None:
        self.task, self.moved = setup.task, setup.moved
        self.first: list[dict[str, Any]] = []
        self.worst: list[tuple[float, int, dict[str, Any]]] = []

    def _payload(self, batch: Any) -> dict[str, torch.Tensor]:
        s = batch.scores
        if self.task == "classify":
            out = {"pred": s["pred"], "confidence": s["confidence"]}
            out.update(ref_pred=s["ref_pred"][None], ref_confidence=s["ref_confidence"][None])
            if batch.labels is not None:
                out["label"] = batch.labels[None]
            return out
        return {"error_map": (batch.undone - batch.ref).abs().mean(2).half(), "error": s["equivariance_error"]}

    def _views(self, batch: Any, b: int) -> np.ndarray:
        views = batch.x[b][None].repeat(len(batch.outputs), 1, 1, 1)
        if self.moved:
            views[self.moved] = batch.inputs[:, b]
        return _view(views).cpu().numpy()

    def update(self, batch: Any) -> None:
        if self.task == "classify":
            score = (1 - batch.scores["agreement"]).sum(0) + batch.scores["kl"].mean(0).clamp_max(0.999)
        else:
            score = batch.scores["equivariance_error"].mean(0)
        score = score.double().cpu()
        payload = {k: v.cpu() for k, v in self._payload(batch).items()}
        for b in range(batch.size):
            s, index = float(score[b]), batch.offset + b
            item = {"index": index, "x": batch.x[b].float().cpu().numpy(), "score": s, "views": self._views(batch, b)}
            item.update({k: v[:, b].numpy() for k, v in payload.items()})
            if len(self.first) < self.size:
                self.first.append(item)
            entry = (s, -index, item)
            if len(self.worst) < self.size:
                heapq.heappush(self.worst, entry)
            elif entry[:2] > self.worst[0][:2]:
                heapq.heapreplace(self.worst, entry)

    def compute(self) -> dict[str, Any]:
        def stack(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
            return {k: np.stack([it[k] for it in items]) for k in items[0]}

        worst = [e[2] for e in sorted(self.worst, key=lambda e: (-e[0], -e[1]))]
        return {"first": stack(self.first), "worst": stack(worst)}


class _Constant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.linspace(-1, 1, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def _run(model: torch.nn.Module, data: AuditData, spec: AuditSpec, size: int, device: str = "cpu") -> Engine:
    engine = Engine(model.to(device), data, spec, torch.device(device), torch.float32, observers=[_HostGallery(size)])
    engine.prepare(data.read(0, 2).x)
    while engine.images < len(data):
        engine.step(data.read(engine.images, min(len(data), engine.images + engine.images_per_chunk)))
    engine.finish()
    return engine


def _galleries(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    by_name = {obs.name: obs for obs in engine.observers}
    return by_name["gallery"].compute(), by_name["host_gallery"].compute()


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for part in ("first", "worst"):
        assert list(got[part]) == list(want[part])  # the same keys in the same order
        for key, value in want[part].items():
            assert got[part][key].dtype == value.dtype, (part, key)
            np.testing.assert_array_equal(got[part][key], value, err_msg=f"{part}.{key}")


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


@pytest.mark.parametrize("size", [1, 3, 8])
def test_classifier_gallery_equals_the_host_selection_across_chunks(size: int) -> None:
    torch.manual_seed(1)
    data = AuditData.from_tensors(torch.rand(23, 1, 28, 28), torch.randint(0, 10, (23,)))
    spec = AuditSpec(group="so2:6", batch_size=18, samples=size)  # 3 images a chunk: 8 chunks
    got, want = _galleries(_run(_seeded(SmallCNN()), data, spec, size))
    _assert_same(got, want)
    assert len(want["worst"]["index"]) == size


def test_ties_keep_the_earliest_images_first() -> None:
    # a model that ignores its input: every score is exactly 0, so the worst are the first images, in data order
    torch.manual_seed(2)
    data = AuditData.from_tensors(torch.rand(10, 1, 28, 28))
    spec = AuditSpec(group="so2:4", batch_size=8, samples=4)
    got, want = _galleries(_run(_Constant(), data, spec, 4))
    assert not got["worst"]["score"].any()
    _assert_same(got, want)
    assert list(got["worst"]["index"]) == [0, 1, 2, 3]


def test_dense_gallery_equals_the_host_selection() -> None:
    torch.manual_seed(3)
    model = _seeded(torch.nn.Conv2d(1, 2, 3, padding=1))
    data = AuditData.from_tensors(torch.rand(9, 1, 16, 16))
    spec = AuditSpec(group="rot:0,20,90", batch_size=6, samples=3, task="dense")
    got, want = _galleries(_run(model, data, spec, 3))
    _assert_same(got, want)


def test_a_restored_snapshot_forgets_the_chunks_after_it() -> None:
    torch.manual_seed(4)
    model, spec = _seeded(SmallCNN()), AuditSpec(group="so2:4", batch_size=8, samples=2)
    x = torch.rand(6, 1, 28, 28)
    data = AuditData.from_tensors(x)
    engine = Engine(model, data, spec, torch.device("cpu"), torch.float32)
    engine.prepare(x[:2])
    gallery = next(obs for obs in engine.observers if obs.name == "gallery")
    engine.step(data.read(0, 2))
    snap = gallery.snapshot()
    engine.step(data.read(2, 6))  # its images would enter the worst
    gallery.restore(snap)
    alone = _run(model, AuditData.from_tensors(x[:2]), spec, 2)
    _assert_same(gallery.compute(), _galleries(alone)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_chunk_makes_no_host_sync_on_cuda() -> None:
    torch.manual_seed(5)
    model, spec = _seeded(SmallCNN()).cuda(), AuditSpec(group="so2:6", batch_size=18, samples=8, device="cuda")
    data = AuditData.from_tensors(torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,)))
    seen: list[Any] = []

    class _Keep(Observer):
        def update(self, observed: Any) -> None:
            seen.append(observed)

    engine = Engine(model, data, spec, torch.device("cuda"), torch.float32, observers=[_Keep()])
    engine.prepare(data.read(0, 2).x)
    gallery = next(obs for obs in engine.observers if obs.name == "gallery")
    engine.observers.remove(gallery)  # fed here, under the sync check
    for start in range(0, 30, 3):
        engine.step(data.read(start, start + 3))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            gallery.update(seen[-1])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len(seen) == 10 and len(gallery.compute()["worst"]["index"]) == 8
