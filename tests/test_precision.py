"""--precision: the backend flags are set for the audit only and recorded; a reduced precision (bf16 autocast,
testable on a CPU) reports its own floor, checked against a float64 reference computed here."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _models import Identity, SmallCNN
from test_result_schema import _validator
from typer.testing import CliRunner

from equiaudit.engine import audit
from equiaudit.errors import EquiauditError
from equiaudit.precision import _raw_flags, _set_raw, _set_tf32, backend_flags
from equiaudit.spec import AuditSpec


def _digits(n: int = 24) -> torch.Tensor:
    from equiaudit.data import load_data

    return load_data("digits", limit=n).read(0, n).x


def test_default_is_fp32_with_tf32_off_recorded_and_the_flags_restored() -> None:
    before = _raw_flags()
    _set_tf32(True)  # as torch's default has it for convolutions on CUDA
    try:
        res = audit(SmallCNN(), torch.rand(3, 1, 28, 28), "c4", samples=0)
        on = backend_flags()
        assert on["cuda_matmul_allow_tf32"] and on["cudnn_allow_tf32"]  # restored
    finally:
        _set_raw(*before)
    record = res.run.precision
    assert (record["precision"], record["autocast"]) == ("fp32", None)
    assert not record["cuda_matmul_allow_tf32"] and not record["cudnn_allow_tf32"]
    if record["fp32_precision"] is not None:  # torch >= 2.9: the raw per-backend values
        assert record["fp32_precision"] == {"cuda.matmul": "ieee", "cudnn.conv": "ieee"}
    assert "precision_floor" not in res.summary  # exact fp32 has no floor of its own
    tf32 = audit(SmallCNN(), torch.rand(3, 1, 28, 28), "c4", samples=0, precision="tf32")
    assert tf32.run.precision["cuda_matmul_allow_tf32"] and tf32.run.precision["cudnn_allow_tf32"]


def _reference_floor(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per image ||c(f_low(x)) - c(f_32(x))|| / ||c(f_32(x))|| in float64 (c: centred logits)."""
    with torch.inference_mode():
        exact = model(x).double()
        with torch.autocast("cpu", dtype=dtype):
            low = model(x).double()
    exact, low = exact - exact.mean(-1, keepdim=True), low - low.mean(-1, keepdim=True)
    return (low - exact).norm(dim=-1) / exact.norm(dim=-1)


def test_bf16_floor_is_the_identity_error_against_fp32_on_the_first_floor_images() -> None:
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), _digits(24)
    res = audit(model, x, "so2:6", precision="bf16", floor_images=10, batch_size=4096, samples=0)
    ref = _reference_floor(model, x[:10], torch.bfloat16)  # one forward of the 10 images, as the audit's
    assert ref.mean() > 1e-4  # bf16 really is coarser than fp32 here, so the check below can fail
    assert res.summary["precision_floor"] == pytest.approx(float(ref.mean()), rel=1e-5)
    assert res.summary["precision_floor_max"] == pytest.approx(float(ref.max()), rel=1e-5)
    assert res.summary["precision_floor_low"] <= res.summary["precision_floor"] <= res.summary["precision_floor_high"]
    assert res.run.precision["autocast"] == "bfloat16"
    # the audit's errors are of the bf16 model: they differ from the fp32 audit's by about the floor
    exact = audit(model, x, "so2:6", floor_images=10, batch_size=4096, samples=0)
    diff = abs(res.summary["invariance_error_mean"] - exact.summary["invariance_error_mean"])
    assert 0 < diff < 10 * res.summary["precision_floor_max"]


def test_dense_floor_of_an_exact_model_under_fp16_is_zero_and_of_a_conv_is_not() -> None:
    x = torch.rand(4, 1, 16, 16)
    exact = audit(Identity(), x, "c4", task="dense", precision="fp16", samples=0)
    assert exact.summary["precision_floor"] == 0.0  # x + 0 * w: no arithmetic to round in fp16 but the cast
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    res = audit(conv, x, "c4", task="dense", precision="bf16", samples=0)
    assert 1e-5 < res.summary["precision_floor"] < 5e-2


def test_precision_is_validated_in_one_line() -> None:
    with pytest.raises(EquiauditError, match="unknown precision 'half'"):
        AuditSpec(precision="half")
    with pytest.raises(EquiauditError, match="cannot go with --dtype float64"):
        AuditSpec(precision="bf16", dtype="float64")


def test_cli_precision_in_the_json_and_no_bfloat16_dtype_listed() -> None:
    from equiaudit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["scan", "zoo:cnn", "--limit", "8", "-g", "c4", "--precision", "bf16", "--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    _validator().validate(doc)
    assert doc["run"]["spec"]["precision"] == "bf16" and doc["run"]["precision"]["autocast"] == "bfloat16"
    assert doc["summary"]["precision_floor"] > 0
    text = runner.invoke(app, ["scan", "zoo:cnn", "--limit", "8", "-g", "c4", "--precision", "bf16"])
    assert "precision_floor=" in text.stdout
    helped = runner.invoke(app, ["scan", "--help"], env={"COLUMNS": "200"})
    assert "fp32|tf32|bf16|fp16" in helped.stdout and "bfloat16" not in helped.stdout


def test_a_reduced_precision_is_judged_by_its_own_round_off_in_reports() -> None:
    pytest.importorskip("plotly")
    from equiaudit.reports.render import details
    from equiaudit.reports.verdict import roundoff

    from equiaudit.testing import FLOAT_TOLERANCE

    torch.manual_seed(0)
    res = audit(SmallCNN(), _digits(16), "c4", precision="bf16", samples=0)
    # exact elements are held to the round-off of the arithmetic the forward used, not of the float32 weights
    assert res.run.arithmetic == "bfloat16" and res.run.dtype == "float32"
    assert roundoff(res.run.arithmetic, res.run.device) == FLOAT_TOLERANCE["bfloat16"]
    assert audit(SmallCNN(), _digits(4), "c4", samples=0).run.arithmetic == "float32"
    shown = dict(row[:2] for _, rows in details(res) for row in rows)
    assert shown["precision"].startswith("bf16 (TF32 off, autocast bfloat16); precision floor ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pass_is_device_resident_and_agrees_with_the_cpu() -> None:
    """On CUDA the chunks run without a host sync (torch's sync debug mode raises on one) between the NaN reads,
    and fp32 with TF32 off gives the CPU's numbers to float32 round-off."""
    from equiaudit.engine import Engine

    x = _digits(64)
    torch.manual_seed(0)
    model = SmallCNN()
    cpu = audit(copy.deepcopy(model), x, "so2:8", samples=0, batch_size=64, device="cpu")
    step = Engine.step

    def strict_step(self: Engine, batch) -> None:
        torch.cuda.set_sync_debug_mode("error")
        try:
            if self._steps % self.check_every != self.check_every - 1:  # the flag read itself is a sync
                return step(self, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return step(self, batch)

    Engine.step = strict_step  # type: ignore[method-assign]
    try:
        gpu = audit(model, x, "so2:8", samples=0, batch_size=64, device="cuda")
    finally:
        Engine.step = step  # type: ignore[method-assign]
    assert gpu.run.precision["cudnn_allow_tf32"] is False and gpu.summary["images"] == 64
    for col in ("invariance_error", "kl", "floor"):
        torch.testing.assert_close(
            torch.tensor(gpu.elements[col].values), torch.tensor(cpu.elements[col].values), rtol=1e-4, atol=1e-6
        )
    bf16 = audit(model, x, "so2:8", samples=0, device="cuda", precision="bf16")
    assert bf16.summary["precision_floor"] > 0
