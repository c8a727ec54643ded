"""The fast forward (equiaudit.speed): channels_last, torch.compile and CUDA graphs change how the forward runs,
not what the audit measures: results equal the plain forward's within float32 round-off, what ran is recorded
in run.forward, and what cannot run is a one-line error."""

from __future__ import annotations

import json
import time

import jsonschema
import numpy as np
import pytest
import torch
from _models import SmallCNN
from equiaudit.cli import app
from typer.testing import CliRunner

from equiaudit import audit
from equiaudit.errors import EquiauditError, OptionError
from equiaudit.result import SCHEMA_FILE
from equiaudit.spec import AuditSpec

COLUMNS = ("agreement", "kl", "invariance_error", "invariance_error_max", "floor")


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def _data(n: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def _assert_close(got, want) -> None:
    for col in COLUMNS:
        np.testing.assert_allclose(got.elements[col], want.elements[col], rtol=1e-4, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(got.records["error"], want.records["error"], rtol=1e-4, atol=1e-6)
    assert list(got.samples["worst"]["index"]) == list(want.samples["worst"]["index"])


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_channels_last_measures_what_the_plain_forward_does(mode: str) -> None:
    model, data = _seeded(SmallCNN()), _data()
    plain = audit(model, data, "so2:6", batch_size=14, samples=3)
    fast = audit(model, data, "so2:6", batch_size=14, samples=3, channels_last=mode)
    _assert_close(fast, plain)
    forward = fast.run.forward
    if mode == "on":
        assert forward["memory_format"] == "channels_last" and forward["memory_format_s"] is None
    else:  # auto keeps the faster of the two timings it recorded
        timings = forward["memory_format_s"]
        faster = min(timings, key=timings.get)
        assert forward["memory_format"] == faster and all(t > 0 for t in timings.values())
    assert plain.run.forward is None  # the default runs the plain forward and says nothing
    assert model.features[0].weight.is_contiguous()  # the user's model is handed back in its own layout
    jsonschema.validate(fast.to_dict(), json.loads(SCHEMA_FILE.read_text()))


def test_compiled_audit_equals_the_plain_one_and_its_compile_is_not_throughput() -> None:
    # 11 images, 6 rows an image plus the floor's round trips, forwards of 14 rows: chunks of 7 and 4 images
    # end on shorter forwards, padded to 14 rows, so one compiled shape serves the pass
    model, data = _seeded(SmallCNN(width=4)), _data()
    plain = audit(model, data, "so2:6", batch_size=14, samples=3)
    t = time.perf_counter()
    fast = audit(model, data, "so2:6", batch_size=14, samples=3, compile=True)
    elapsed = time.perf_counter() - t
    _assert_close(fast, plain)
    forward = fast.run.forward
    assert forward["compiled"] and forward["compile_s"] > 0
    assert fast.run.wall_time_s < elapsed - forward["compile_s"]  # the throughput leaves the compile out
    assert fast.run.spec["compile"] is True
    jsonschema.validate(fast.to_dict(), json.loads(SCHEMA_FILE.read_text()))


def test_a_model_that_does_not_compile_is_a_one_line_error(monkeypatch) -> None:
    def broken(module, **_kw):
        def run(x):
            raise RuntimeError("backend compiler failed\nwith a long traceback")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(EquiauditError, match=r"^--compile failed for this model: backend compiler failed; audit it"):
        audit(_seeded(SmallCNN()), _data(4), "c4", compile=True, samples=0)


def test_options_that_cannot_run_are_one_line_errors() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="--cuda-graphs needs a CUDA device; the audit runs on cpu"):
            audit(_seeded(SmallCNN()), _data(4), "c4", cuda_graphs=True, samples=0)
    with pytest.raises(EquiauditError, match="--compile cannot go with --layers / --lie"):
        AuditSpec(compile=True, layers="auto")
    with pytest.raises(EquiauditError, match="unknown channels last 'yes'; valid: auto, on, off"):
        AuditSpec(channels_last="yes")
    with pytest.raises(EquiauditError, match="--cuda-graphs captures fp32 / tf32 forwards only"):
        AuditSpec(cuda_graphs=True, precision="bf16")
    res = CliRunner().invoke(app, ["scan", "zoo:cnn", "--limit", "4", "-g", "c4", "--cuda-graphs", "--device", "cpu"])
    assert res.exit_code == 2 and "--cuda-graphs needs a CUDA device" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_the_cli_takes_the_options_and_records_what_ran() -> None:
    res = CliRunner().invoke(app, ["scan", "zoo:cnn", "--limit", "4", "-g", "c4", "--channels-last", "on", "--json"])
    assert res.exit_code == 0, res.stderr
    run = json.loads(res.stdout)["run"]
    assert run["spec"]["channels_last"] == "on" and run["forward"]["memory_format"] == "channels_last"
    assert run["spec"]["compile"] is False and run["forward"]["compiled"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{"cuda_graphs": True}, {"channels_last": "on"}])
def test_cuda_fast_forwards_equal_the_plain_one(options: dict) -> None:
    model, data = _seeded(SmallCNN()).cuda(), _data()
    plain = audit(model, data, "so2:6", batch_size=14, samples=3, device="cuda")
    fast = audit(model, data, "so2:6", batch_size=14, samples=3, device="cuda", **options)
    _assert_close(fast, plain)
    if "cuda_graphs" in options:
        assert fast.run.forward["cuda_graphs"] and fast.run.forward["capture_s"] > 0
