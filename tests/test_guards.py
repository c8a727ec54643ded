"""Guards before a pass: a group too large to run without --force says what it would cost; an exported program
with a fixed batch gets that batch; non-square inputs say which elements lose the exact path."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from _models import SmallCNN
from equiaudit.cli import app
from typer.testing import CliRunner

from equiaudit import AuditSpec, audit
from equiaudit.errors import EquiauditError, EquiauditWarning


def test_a_huge_group_is_refused_quickly_with_its_cost() -> None:
    """rot:0..90:100000 ran for 9.5 minutes on one image (4.6 GB); now it is a one-line refusal."""
    start = time.perf_counter()
    with pytest.raises(EquiauditError) as excinfo:
        audit(SmallCNN(), torch.rand(1, 1, 28, 28), "rot:0..90:100000")
    elapsed = time.perf_counter() - start
    message = str(excinfo.value)
    assert "\n" not in message and elapsed < 20
    assert "has 100,000 elements, more than max_elements 4,096" in message
    assert "runs through the model 100,000 times" in message and "--force" in message
    assert "313.6 MB per image (1x28x28 float32)" in message  # 100,000 copies of 784 float32 values
    assert "sampling grid 627.2 MB" in message  # 99,998 sampled elements (identity and rot90 are exact)


def test_max_elements_and_force() -> None:
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(EquiauditError, match="'so2:16' has 16 elements, more than max_elements 8"):
        audit(SmallCNN(), x, "so2:16", max_elements=8)
    res = audit(SmallCNN(), x, "so2:16", max_elements=8, force=True, samples=0)
    assert len(res.elements) == 16 and res.run.spec["force"] is True and res.run.spec["max_elements"] == 8
    assert len(audit(SmallCNN(), x, "so2:16", max_elements=16, samples=0).elements) == 16


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_elements": 0}, "max elements must be a positive integer"), ({"force": "yes"}, "force must be True")],
)
def test_guard_options_are_validated(options: dict, message: str) -> None:
    with pytest.raises(EquiauditError, match=message):
        AuditSpec(**options)


NET = """
import torch


def net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 13 * 13, 10)
    )
"""


def test_the_command_line_refuses_a_huge_group(tmp_path) -> None:
    (tmp_path / "net.py").write_text(NET)
    namespace: dict = {}
    exec(NET, namespace)
    torch.save(namespace["net"]().state_dict(), tmp_path / "sd.pt")
    args = ["scan", str(tmp_path / "sd.pt"), "--arch", f"{tmp_path / 'net.py'}:net", "--limit", "2", "--samples", "0"]
    start = time.perf_counter()
    result = CliRunner().invoke(app, [*args, "-g", "so2:5000"])
    assert time.perf_counter() - start < 20
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "5,000 elements" in result.stderr and "--force" in result.stderr
    result = CliRunner().invoke(app, [*args, "-g", "so2:6", "--max-elements", "4", "--force", "--json"])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------- exported programs


def test_an_exported_program_with_a_fixed_batch_gets_its_batch(tmp_path) -> None:
    """Traced with 2 images, the program refuses any other batch (Guard failed: x.size()[0] == 2): forwards are
    made of exactly 2 rows, the last padded, and the metrics equal the eager model's."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), path)
    x = torch.rand(5, 1, 28, 28)
    notes: list[str] = []
    res = audit(str(path), x, "so2:6", trust=True, samples=0, batch_size=7, on_note=notes.append)
    assert res.model.info["fixed_batch"] == 2 and res.model.info["input_shape"] == [1, 28, 28]
    assert res.run.batch_size == 2 and any("batches of exactly 2" in n for n in notes)
    eager = audit(model, x, "so2:6", samples=0)
    for col in ("agreement", "invariance_error", "floor"):
        assert res.elements[col].tolist() == pytest.approx(eager.elements[col].tolist(), rel=1e-4, abs=1e-6)


def test_a_dynamic_batch_is_left_alone(tmp_path) -> None:
    model = SmallCNN().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, path)
    res = audit(str(path), torch.rand(3, 1, 28, 28), "c4", trust=True, samples=0)
    assert "fixed_batch" not in res.model.info and res.run.batch_size_auto


# -------------------------------------------------------------------------------------------------- non-square


class GlobalMean(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * self.w


def test_non_square_inputs_say_which_elements_lose_the_exact_path() -> None:
    x = torch.rand(2, 1, 20, 28)
    with pytest.warns(
        EquiauditWarning,
        match=r"the input is 20x28, not square: rot90, rot-90, rot90\*hflip, rot-90\*hflip cannot permute",
    ):
        res = audit(GlobalMean(), x, "d4", samples=0)
    assert res.elements.set_index("label")["exact"].to_dict() == {
        "identity": True, "rot90": False, "rot180": True, "rot-90": False,
        "hflip": True, "rot90*hflip": False, "rot180*hflip": True, "rot-90*hflip": False,
    }  # fmt: skip
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a note callback, nothing is warned
        audit(GlobalMean(), x, "c4", samples=0, on_note=notes.append)
        audit(GlobalMean(), torch.rand(2, 1, 24, 24), "c4", samples=0, on_note=notes.append)  # square: no note
    assert len(notes) == 1 and "crop the images square (--crop)" in notes[0]
