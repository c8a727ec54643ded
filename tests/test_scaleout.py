"""One audit over several processes equals the audit in one: --shard K/N results merged by `equiaudit merge`,
and torchrun ranks on gloo (2 CPU processes). Counts must agree exactly, sums to 1e-6 relative."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import SmallCNN
from equiaudit.cli import app
from test_result_schema import _validator
from typer.testing import CliRunner

from equiaudit.distributed import span
from equiaudit.engine import audit
from equiaudit.merge import merge_results
from equiaudit.result import AuditResult, load, save

COUNTS = ("images", "floor_images")


# Everything here runs on the CPU: the ranks talk over gloo, and on CUDA a float32 convolution's result depends on
# the batch it is in (cuDNN picks its algorithm by shape), which 1e-6 cannot absorb (seen on an H200: 1.2e-6).
CPU = ("--device", "cpu")


def _same(a: AuditResult, b: AuditResult, rel: float = 1e-6) -> None:
    """Everything but how the run went (wall time, processes, shard) agrees: counts exactly, floats to ``rel``."""
    da, db = a.to_dict(), b.to_dict()
    for key in ("model", "data", "group", "worst_elements", "per_class"):
        assert da[key] == db[key], key
    assert da["run"]["spec"] == {**db["run"]["spec"], "shard": da["run"]["spec"]["shard"]}
    assert da["intervals"]["images"] == db["intervals"]["images"]
    assert da["intervals"]["floor_images"] == db["intervals"]["floor_images"]
    assert a.summary["images"] == b.summary["images"] and a.run.floor_images == b.run.floor_images
    assert set(a.summary) == set(b.summary)
    for k, v in a.summary.items():
        assert v == pytest.approx(b.summary[k], rel=rel, abs=1e-12) if isinstance(v, float) else v == b.summary[k], k
    assert list(a.elements.columns) == list(b.elements.columns)
    for col in a.elements.columns:
        x, y = a.elements[col].to_numpy(), b.elements[col].to_numpy()
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=rel, atol=1e-12, err_msg=col)
        else:
            assert (x == y).all(), col
    for la, lb in zip(a.locations, b.locations, strict=True):
        assert la["image"] == lb["image"] and la["index"] == lb["index"]
        assert la["error"] == pytest.approx(lb["error"], rel=rel)


def test_spans_are_disjoint_contiguous_and_cover_every_image() -> None:
    for total in (0, 1, 5, 7, 100):
        for count in (1, 2, 3, 8):
            parts = [span(total, k, count) for k in range(count)]
            assert parts[0][0] == 0 and parts[-1][1] == total
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))  # no gap, no overlap, no padding
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("task", ["classify", "dense"])
def test_shards_merge_into_the_single_process_result(task: str) -> None:
    torch.manual_seed(0)
    if task == "classify":
        model, data = SmallCNN().eval(), "digits"
        # the floor's 20 images end inside the first of 3 shards; the noise probe is audited whole by each
        options = {"limit": 45, "floor_images": 20, "probe": "noise"}
    else:
        model = torch.nn.Conv2d(1, 2, 3, padding=1)
        data = (torch.rand(13, 1, 16, 16),)
        options = {"task": "dense"}
    kw = {"group": "so2:6", "samples": 3, "device": "cpu", **options}
    whole = audit(model, data, **kw)
    shards = [audit(model, data, shard=f"{k}/3", **kw) for k in range(3)]
    assert [s.run.shard["stop"] - s.run.shard["start"] for s in shards] == [s.summary["images"] for s in shards]
    merged = merge_results(shards[::-1])  # any order
    _same(merged, whole)
    assert merged.run.shard is None and merged.run.processes == 3 and merged.state is None
    assert merged.probe == whole.probe
    np.testing.assert_array_equal(merged.records["index"], np.arange(whole.summary["images"]))
    np.testing.assert_array_equal(merged.records["error"], whole.records["error"])  # per image, bit for bit
    for part in ("first", "worst"):  # the gallery: the same images, in the same order
        np.testing.assert_array_equal(merged.samples[part]["index"], whole.samples[part]["index"])


def test_merge_on_the_command_line_from_saved_shards(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["scan", "zoo:cnn", "--limit", "30", "-g", "so2:4", "--floor-images", "10", "-q", *CPU]
    for k in range(2):
        res = runner.invoke(app, [*base, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}.json")])
        assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "s1.json").read_text())
    _validator().validate(doc)
    assert doc["run"]["shard"] == {"index": 1, "count": 2, "start": 15, "stop": 30, "total": 30}
    assert set(doc["state"]["observers"]) >= {"classify", "floor", "records", "locate"}
    res = runner.invoke(
        app, ["merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"), "--out", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 0, res.stderr
    merged = load(tmp_path / "m.json")
    _validator().validate(json.loads((tmp_path / "m.json").read_text()))
    whole = runner.invoke(app, [*base, "--out", str(tmp_path / "w.json")])
    assert whole.exit_code == 0, whole.stderr
    _same(merged, load(tmp_path / "w.json"))
    assert merged.samples is not None and "first" in merged.samples  # the gallery from the shards' sidecars


def test_merge_refuses_what_is_not_one_audit_in_one_line(tmp_path: Path) -> None:
    x = torch.rand(6, 1, 28, 28)
    torch.manual_seed(0)
    model = SmallCNN()
    paths = {}
    for name, opts in {"s0": {"shard": "0/2"}, "s1": {"shard": "1/2"}, "other": {"shard": "1/2", "group": "c2"},
                       "plain": {}}.items():  # fmt: skip
        res = audit(model, x, **{"group": "c4", **opts, "samples": 0, "device": "cpu"})
        paths[name] = str(save(res, tmp_path / f"{name}.json"))
    runner = CliRunner()
    cases = {
        (paths["s0"],): "shards 0..1 of 2 once each, got [0]",
        (paths["s0"], paths["s0"], paths["s1"]): "once each",
        (paths["s0"], paths["plain"]): "not a shard result",
        (paths["s0"], paths["other"]): "another audit than shard 0",
    }
    for args, message in cases.items():
        res = runner.invoke(app, ["merge", *args])
        assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_two_gloo_processes_under_torchrun_give_the_single_process_result(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.run")
    scan = ["-m", "equiaudit", "scan", "zoo:cnn", "--limit", "40", "-g", "so2:6", "--floor-images", "15", "-q", *CPU,
            "--layers", "auto", "--lie", "--search", "random:3,refine", "--search-budget", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run([*runner, *scan, "--out", str(tmp_path / "two.json")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=240)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, *scan, "--out", str(tmp_path / "one.json")], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=240)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = load(tmp_path / "two.json"), load(tmp_path / "one.json")
    assert (a.run.processes, b.run.processes) == (2, 1)
    _validator().validate(json.loads((tmp_path / "two.json").read_text()))
    _same(a, b)
    _same_sections(a, b)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["one.json", "two.json"]  # rank 1 wrote nothing


# ---- per-layer audits, Lie derivatives and searches -------------------------------------------------------

# layers (auto actions), the Lie derivative and both searches together: every section a shard must carry
LAYERED = {"layers": "auto", "lie": True, "search": "random:3,refine", "search_budget": 4, "samples": 0}


def _close(a: object, b: object, rel: float, where: str = "") -> None:
    """Nested documents agree: floats to ``rel``, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], rel, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, rel, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert a == pytest.approx(b, rel=rel, abs=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def _same_sections(a: AuditResult, b: AuditResult) -> None:
    """The layers, lie and search sections agree (a search's seconds are timings)."""
    assert a.layers is not None and a.lie is not None and a.search is not None
    _close(a.layers, b.layers, 1e-6, "layers")
    _close(a.lie, b.lie, 1e-6, "lie")
    timeless = [[{k: v for k, v in m.items() if k != "seconds"} for m in r.search["methods"]] for r in (a, b)]
    _close(timeless[0], timeless[1], 1e-6, "search.methods")
    _close({k: v for k, v in a.search.items() if k != "methods"},
           {k: v for k, v in b.search.items() if k != "methods"}, 1e-6, "search")  # fmt: skip


def test_layers_lie_and_searches_merge_into_the_single_process_result() -> None:
    from equiaudit.zoo import create

    model = create("gcnn-c4", pretrained=True)
    kw = {"group": "c4", "limit": 18, "batch_size": 8, "device": "cpu", **LAYERED}
    whole = audit(model, "digits", **kw)
    shards = [audit(model, "digits", shard=f"{k}/2", **kw) for k in range(2)]
    merged = merge_results(shards)
    _same(merged, whole)
    _same_sections(merged, whole)
    # auto chose the group convolutions' regular action, on the data's first images, in every shard
    assert {r["action"] for r in whole.layers["layers"]} == {"regular:4"}
    assert [m["method"] for m in merged.search["methods"]] == ["grid", "random:3", "refine"]
    # random draws are seeded by the global image index: shard 1's worst draws are the whole audit's last ones
    tail = shards[1].search["worst"]["random:3"]["angle"]
    assert tail == whole.search["worst"]["random:3"]["angle"][-len(tail) :] and len(tail) == 9
    # and do not depend on the batch size either
    other = audit(model, "digits", **{**kw, "batch_size": 3, "layers": None, "lie": False})
    assert other.search["worst"]["random:3"] == whole.search["worst"]["random:3"]


def test_layers_lie_and_searches_merge_on_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["scan", "zoo:cnn", "--limit", "20", "-g", "c4", "--samples", "0", "-q", *CPU, "--layers", "auto", "--lie",
            "--search", "random:3,refine", "--search-budget", "4"]  # fmt: skip
    for k in range(2):
        res = runner.invoke(app, [*base, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}.json")])
        assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "s0.json").read_text())
    _validator().validate(doc)
    assert set(doc["state"]["info"]) == {"layers", "lie", "search"}
    res = runner.invoke(app, ["merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out",
                              str(tmp_path / "m.json")])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    _validator().validate(json.loads((tmp_path / "m.json").read_text()))
    whole = runner.invoke(app, [*base, "--out", str(tmp_path / "w.json")])
    assert whole.exit_code == 0, whole.stderr
    merged, one = load(tmp_path / "m.json"), load(tmp_path / "w.json")
    _same(merged, one)
    _same_sections(merged, one)

    # shards whose auto actions differ do not merge: one line naming --layer-action
    doc = json.loads((tmp_path / "s1.json").read_text())
    doc["state"]["info"]["layers"]["actions"][0] = "regular:4"
    (tmp_path / "s1.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--layer-action" in res.stderr and "shard 1 chose other layer actions" in res.stderr
    # a shard without the description of its layers (an older equiaudit) does not either
    del doc["state"]["info"]
    (tmp_path / "s1.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "shard 1 does not describe its layers" in res.stderr


def test_auto_layer_actions_refuse_a_first_part_smaller_than_their_images(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["scan", "zoo:cnn", "--limit", "10", "-g", "c4", "--samples", "0", "-q", *CPU, "--layers", "auto"]
    res = runner.invoke(app, [*base, "--shard", "1/2"])  # 5 images in shard 0: auto would decide on fewer than 8
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--layer-action" in res.stderr and "first part holds 5 of 10" in res.stderr
    res = runner.invoke(app, [*base, "--shard", "1/2", "--layer-action", "spatial", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.stderr


def test_a_shard_without_images_merges_with_named_layer_actions() -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.rand(3, 1, 28, 28)
    kw = {"group": "c4", "layers": "auto", "layer_action": "spatial", "lie": True, "samples": 0, "device": "cpu"}
    shards = [audit(model, x, shard=f"{k}/4", **kw) for k in range(4)]
    assert [s.state["images"] for s in shards] == [0, 1, 1, 1]  # shard 0 chose no action
    merged, whole = merge_results(shards), audit(model, x, **kw)
    _close(merged.layers, whole.layers, 1e-6, "layers")
    _close(merged.lie, whole.lie, 1e-6, "lie")
    assert [r["action"] for r in merged.layers["layers"]] == ["spatial", "spatial"]


def test_rank_device_with_more_local_processes_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # measured on a one-GPU H200 machine: two torchrun ranks with --device auto asked for cuda:1 and stopped
    from equiaudit.distributed import rank_device
    from equiaudit.errors import DeviceError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert rank_device("auto") == "cpu" and rank_device(None) == "cpu" and rank_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="torchrun started 2 processes on this machine but 1 CUDA device"):
        rank_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto") == "cuda:1" == rank_device("cuda")
