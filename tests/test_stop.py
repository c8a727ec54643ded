"""Whatever stops a scan, nothing measured is lost: SIGTERM writes the partial result like Ctrl-C, with the reason
in the JSON; a NaN found late restores the observers to a consistent state; the reader that reads ahead hands
chunks over in order and passes its errors on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _models import SmallCNN
from test_result_schema import _validator

from equiaudit.data import AuditData
from equiaudit.engine import Engine, audit
from equiaudit.errors import ScanInterrupted
from equiaudit.feed import Prefetcher

SLOW = """
import os, time
import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head, self.calls = nn.Conv2d(1, 4, 3), nn.Linear(4, 10), 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 4:  # the probe and a few forwards in: tell the test to send the signal
            open(os.environ["EQA_READY"], "w").close()
        if self.calls >= 4:
            time.sleep(0.2)
        return self.head(self.conv(x).mean((2, 3)))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_writes_the_partial_result_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "slowmod.py").write_text(textwrap.dedent(SLOW))
    sys.path.insert(0, str(tmp_path))
    try:
        from slowmod import Slow
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(Slow().state_dict(), tmp_path / "slow.pt")
    ready, out = tmp_path / "ready", tmp_path / "part.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EQA_READY": str(ready), "OMP_NUM_THREADS": "1"}
    args = ["scan", "slow.pt", "--arch", "slowmod:Slow", "-g", "c4", "--limit", "200", "--batch-size", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "equiaudit", *args, "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert "terminated (SIGTERM); partial results written to" in lines[-1] and "Traceback" not in stderr
    doc = json.loads(out.read_text())
    _validator().validate(doc)
    run = doc["run"]
    assert run["partial"] and run["stop_reason"] == "sigterm" and run["stop_detail"] is None
    assert 0 < doc["summary"]["images"] < 200 and doc["intervals"]["images"] == doc["summary"]["images"]


class _NaNAfter(torch.nn.Module):
    """A CNN that outputs NaN for images whose first pixel is negative."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = SmallCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.where(x[:, :1, 0, 0] < 0, torch.full_like(y, float("nan")), y)


@pytest.mark.parametrize("every", [1, 3])
def test_a_late_nan_check_keeps_only_the_clean_chunks(monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    # an accelerator reads the NaN flag every few chunks: the chunks since the last read are dropped, so the
    # partial result is exactly the audit of the images before them
    monkeypatch.setitem(Engine.CHECK_EVERY, "cpu", every)
    x = torch.rand(40, 1, 28, 28)
    x[33, 0, 0, 0] = -1.0  # chunks of 4 images (forward batch 16, c4): the NaN is in chunk 8 (images 32..35)
    kw = {"group": "c4", "batch_size": 16, "samples": 2}
    with pytest.raises(ScanInterrupted) as info:
        audit(_NaNAfter(), x, **kw)
    partial = info.value.partial
    kept = 32 if every == 1 else 24  # every 3 chunks: reads after chunks 3 and 6 (24 images), then 9
    assert partial.summary["images"] == kept and partial.run.stop_reason == "error"
    assert f"NaN or inf on images {kept}..35" in str(info.value) and "NaN" in partial.run.stop_detail
    clean = audit(_NaNAfter(), x[:kept], **kw)
    for col in ("invariance_error", "kl", "agreement", "floor"):
        torch.testing.assert_close(torch.tensor(partial.elements[col].values), torch.tensor(clean.elements[col].values))
    assert len(partial.records["index"]) == kept and partial.samples["worst"]["index"].max() < kept


def test_the_reader_hands_over_chunks_in_order_and_passes_errors_on() -> None:
    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    data = AuditData.from_tensors(x)
    reader = Prefetcher(data, 2, 9)
    got = [reader.next(3).x.flatten().tolist(), reader.next(2).x.flatten().tolist(), reader.next(3).x.flatten()]
    reader.close()
    assert got[:2] == [[2, 3, 4], [5, 6]] and got[2].tolist() == [7, 8]  # sizes may change; the end is the end

    def broken(start: int, stop: int) -> None:
        raise OSError("disk gone")

    data.read = broken  # type: ignore[method-assign]
    broken_reader = Prefetcher(data, 0, 10)
    with pytest.raises(OSError, match="disk gone"):
        broken_reader.next(4)
    broken_reader.close()
