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
    kw = {"group": "so2:6", "samples": 3, **options}
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
    base = ["scan", "zoo:cnn", "--limit", "30", "-g", "so2:4", "--floor-images", "10", "-q"]
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
        res = audit(model, x, **{"group": "c4", **opts, "samples": 0})
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
    scan = ["-m", "equiaudit", "scan", "zoo:cnn", "--limit", "40", "-g", "so2:6", "--floor-images", "15", "-q"]
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
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["one.json", "two.json"]  # rank 1 wrote nothing
