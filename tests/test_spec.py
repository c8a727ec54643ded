"""AuditSpec is the one declaration of the audit's options: every interface derives from it and validates
through it; the core stands alone; the public ``equiaudit.audit`` cannot be shadowed."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import SmallCNN

import equiaudit
from equiaudit.engine import DATA_OPTIONS, audit
from equiaudit.errors import EquiauditError, OptionError
from equiaudit.spec import SPEC_FIELDS, AuditSpec

SPEC = set(SPEC_FIELDS)
# What each interface takes besides the spec's fields, declared here so that a new option anywhere fails a test.
AUDIT_OWN = {"model", "data", "spec", "trust", "arch", "progress", "on_task", "on_note", "observers"}
CLI_OWN = {"model", "data", "arch", "trust", "json_out", "out_file", "report", "fail_above", "fail_below", "quiet"}
TESTING_OWN = {"model", "inputs", "input_shape", "locate"}


def test_cli_options_are_the_spec_fields_with_their_defaults() -> None:
    from equiaudit.cli import scan

    params = inspect.signature(scan.scan).parameters
    cli_data = {"split", "limit", "input_size", "channels", "mean", "std", "input_shape", "download", "cache_dir",
                "resize", "crop", "resample", "classes", "workers"}  # fmt: skip
    assert set(params) == SPEC | CLI_OWN | cli_data
    assert cli_data <= set(DATA_OPTIONS)  # the CLI's data options are load_data's
    for name, f in SPEC_FIELDS.items():
        assert params[name].default == f.default, name


def test_audit_accepts_exactly_the_spec_and_data_options() -> None:
    params = inspect.signature(audit).parameters
    named = {p for p, v in params.items() if v.kind is not v.VAR_KEYWORD}
    assert named - {"group", "steps"} == AUDIT_OWN
    x = torch.rand(2, 1, 28, 28)
    for name in SPEC | set(DATA_OPTIONS):
        assert name in SPEC_FIELDS or name in DATA_OPTIONS
    with pytest.raises(OptionError, match=r"unknown option.*interpolaton"):
        audit(SmallCNN(), x, "c4", interpolaton="bicubic")
    res = audit(SmallCNN(), x, "c4", floor_images=1, samples=0)  # every spec field is settable through audit()
    assert res.run.spec["floor_images"] == 1 and res.run.floor_images == 1  # exactly: the floor takes one image


def test_marker_keys_and_testing_helpers_are_the_spec_fields() -> None:
    from equiaudit import testing
    from equiaudit.pytest_plugin import CHECK_KEYS, marker_keys

    assert set(marker_keys()) == SPEC | set(CHECK_KEYS)
    params = inspect.signature(testing.equivariance_error).parameters
    named = {p for p, v in params.items() if v.kind is not v.VAR_KEYWORD}
    assert named - {"group"} == TESTING_OWN
    with pytest.raises(OptionError, match="groop"):
        testing.equivariance_error(SmallCNN(), "c4", torch.rand(2, 1, 28, 28), groop="d4")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "sideways"}, "unknown task 'sideways'"),
        ({"interpolation": "cubic"}, "unknown interpolation 'cubic'"),
        ({"padding": "wrap"}, "unknown padding 'wrap'"),
        ({"mask": "square"}, "unknown mask 'square'"),
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"floor_images": -1}, "floor images must be an integer >= 0"),
        ({"samples": 1.5}, "samples must be an integer >= 0"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"dtype": "bfloat16"}, "unknown dtype 'bfloat16'"),
        ({"group": "c 4x"}, "unknown group"),
        ({"group": 4}, "group must be a spec string"),
        ({"search": "worst"}, "unknown search 'worst'"),
        ({"search": "random:0"}, "unknown search 'random:0'"),
        ({"search_budget": 0}, "search budget must be a positive integer"),
        ({"group": "translate:-3..3"}, "a range needs a count"),
        ({"group": "shift:1"}, "shift takes two numbers"),
    ],
)
def test_spec_validates_every_option_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(EquiauditError, match=message) as info:
        AuditSpec(**options)
    assert "\n" not in str(info.value)


def test_spec_normalises_and_derives() -> None:
    spec = AuditSpec(group="so2", steps=8, dtype=torch.float64, device=torch.device("cpu"), task="segment")
    assert (spec.dtype, spec.device, spec.action) == ("float64", "cpu", "spatial")
    assert len(spec.parsed_group) == 8 and AuditSpec(task="classify").action == "trivial"
    assert spec.replace(group="c4").parsed_group.spec == "c4"  # the old steps go with the old group
    with pytest.raises(AttributeError):
        spec.task = "dense"  # frozen


def test_public_audit_is_never_shadowed_by_a_submodule() -> None:
    for info in pkgutil.walk_packages(equiaudit.__path__, "equiaudit."):
        if info.name.startswith(("equiaudit.zoo", "equiaudit.reports", "equiaudit.cli")):
            continue  # optional parts: imported by their own tests
        importlib.import_module(info.name)
    assert callable(equiaudit.audit) and equiaudit.audit is audit
    res = equiaudit.audit(SmallCNN(), torch.rand(2, 1, 28, 28), "c4", samples=0)
    assert res.group.spec == "c4"


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    here = Path(__file__).parent
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(here), **env},
        cwd=here,
        timeout=300,
    )


def test_core_stands_alone() -> None:
    code = (
        "import sys, torch, equiaudit\n"
        "from _models import SmallCNN\n"
        "r = equiaudit.audit(SmallCNN(), torch.rand(2, 1, 28, 28), 'c4', samples=2)\n"
        "heavy = ('equiaudit.zoo', 'equiaudit.reports', 'equiaudit.cli', 'plotly', 'jinja2', 'e2cnn', 'kornia')\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)])"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


_BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {blocked!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "import importlib.util\n"
    "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] in {blocked!r} else _find(name, *a)\n"
)


def _cli_without(blocked: set[str], *args: str) -> subprocess.CompletedProcess:
    code = (
        "import importlib.util\n_find = importlib.util.find_spec\n"
        + _BLOCK.format(blocked=sorted(blocked))
        + f"sys.argv = ['equiaudit', *{list(args)!r}]\n"
        "from equiaudit.cli import main\nmain()\n"
    )
    return _run_python(code)


def test_without_the_reports_extra_a_report_is_a_one_line_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(SmallCNN().state_dict(), path)
    args = ["scan", str(path), "--arch", "_models:SmallCNN", "-g", "c4", "--limit", "2", "--report", "r.html"]
    proc = _cli_without({"plotly", "jinja2"}, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'equiaudit[reports]'" in lines[0], proc.stderr
    ok = _cli_without({"plotly", "jinja2"}, *args[:-2], "--json")  # the scan itself needs no extra
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["group"]["spec"] == "c4"


def test_without_the_zoo_extra_a_zoo_model_is_a_one_line_error() -> None:
    proc = _cli_without({"e2cnn", "kornia"}, "scan", "zoo:cnn", "--limit", "2", "-g", "c4")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'equiaudit[zoo]'" in lines[0], proc.stderr
