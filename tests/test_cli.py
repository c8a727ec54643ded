"""`equiaudit scan` through typer's CliRunner: exit codes, stdout/stderr separation, the JSON schema, safety."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from _models import C4Averaged, SmallCNN
from equiaudit.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "cnn.pt"
    torch.save(SmallCNN().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def invariant_file(tmp_path_factory) -> Path:
    """A whole pickled C4-averaged module (needs --trust)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "c4avg.pt"
    torch.save(C4Averaged(SmallCNN()), path)
    return path


def test_scan_json_prints_one_document(state_dict_file: Path) -> None:
    res = _run(
        "scan",
        str(state_dict_file),
        "--arch",
        "_models:SmallCNN",
        "--group",
        "so2",
        "--steps",
        "4",
        "--limit",
        "8",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema_version"] == 2
    assert [e["label"] for e in doc["elements"]] == ["identity", "rot90", "rot180", "rot-90"]
    assert doc["model"]["sha256"] and doc["model"]["kind"] == "state_dict"
    assert doc["group"]["spec"] == "so2:4"
    assert res.stderr == ""  # --json: no progress, no messages


def test_scan_human_mode_table_on_stdout_messages_on_stderr(state_dict_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.json"
    res = _run(
        "scan", str(state_dict_file), "--arch", "_models:SmallCNN", "-g", "c4", "--limit", "8", "--out", str(out)
    )
    assert res.exit_code == 0
    assert "rot90" in res.stdout and "summary:" in res.stdout
    assert "task: classify" in res.stderr
    assert json.loads(out.read_text())["schema_version"] == 2
    assert (tmp_path / "sub" / "r.samples.npz").exists()


def test_fail_above_exits_1_and_passing_check_exits_0(invariant_file: Path) -> None:
    ok = _run(
        "scan",
        str(invariant_file),
        "--trust",
        "-g",
        "c4",
        "--limit",
        "8",
        "--json",
        "--fail-above",
        "invariance_error=1e-5",
        "--fail-below",
        "agreement=1",
    )
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["run"]["checks"]["passed"] is True
    bad = _run(
        "scan",
        str(invariant_file),
        "--trust",
        "-g",
        "so2:8",
        "--limit",
        "8",
        "--json",
        "--fail-above",
        "invariance_error=1e-5",
    )
    assert bad.exit_code == 1
    assert "check failed: invariance_error" in bad.stderr
    assert json.loads(bad.stdout)["run"]["checks"]["passed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-g", "so3"], "valid forms"),
        (["--fail-above", "invariance_error"], "METRIC=VALUE"),
        (["--fail-above", "bogus=1"], "unknown metric"),
        (["--data", "no/such/place"], ""),
        (["--mask", "square"], "mask"),
        (["--channels", "3"], "channel"),
        (["--input-shape", "1,28"], "C,H,W"),
    ],
)
def test_usage_and_input_errors_exit_2_with_one_line(state_dict_file: Path, args: list[str], message: str) -> None:
    res = _run("scan", str(state_dict_file), "--arch", "_models:SmallCNN", "--limit", "4", *args)
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr


def test_state_dict_without_arch_and_missing_file(state_dict_file: Path, tmp_path: Path) -> None:
    res = _run("scan", str(state_dict_file))
    assert res.exit_code == 2 and "--arch" in res.stderr
    res = _run("scan", str(tmp_path / "missing.pt"))
    assert res.exit_code == 2 and res.stderr.startswith("error:")


class _Payload:
    """Unpickling this calls Path.write_text: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_untrusted_pickle_is_refused_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh)
    torch.save({"model": _Payload(marker)}, evil)
    assert not marker.exists()
    res = _run("scan", str(evil), "--limit", "4")
    assert res.exit_code == 2
    assert "--trust" in res.stderr and "pathlib" in res.stderr  # names the globals it would import
    assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_whole_module_needs_trust(invariant_file: Path) -> None:
    res = _run("scan", str(invariant_file), "-g", "c4", "--limit", "4")
    assert res.exit_code == 2 and "--trust" in res.stderr


def test_unwritable_out_is_rescued_not_lost(state_dict_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run(
        "scan",
        str(state_dict_file),
        "--arch",
        "_models:SmallCNN",
        "-g",
        "c4",
        "--limit",
        "4",
        "--out",
        str(blocker / "r.json"),
    )
    assert res.exit_code == 2  # the file asked for is not there: the run fails, the result is not lost
    assert "written to" in res.stderr and "rot90" in res.stdout
    rescued = list(tmp_path.glob("equiaudit-result-*.json"))
    assert len(rescued) == 1 and json.loads(rescued[0].read_text())["schema_version"] == 2


def test_groups_command_lists_elements() -> None:
    res = _run("groups", "d4")
    assert res.exit_code == 0 and "rot90*hflip" in res.stdout
    assert _run("groups", "bogus").exit_code == 2


def test_scan_that_breaks_part_way_writes_its_partial_result(tmp_path: Path) -> None:
    torch.save(SmallCNN().state_dict(), tmp_path / "w.pt")
    out = tmp_path / "partial.json"
    res = _run(
        "scan",
        str(tmp_path / "w.pt"),
        "--arch",
        "_models:FailsMidScan",
        "-g",
        "c4",
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--out",
        str(out),
    )
    assert res.exit_code == 2
    assert "scan stopped after" in res.stderr and str(out) in res.stderr
    doc = json.loads(out.read_text())
    assert doc["run"]["partial"] is True and 0 < doc["summary"]["images"] < 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scan", "zoo:unet", "--steps", "abc"], "Invalid value for '--steps'"),
        (["scan", "zoo:unet", "--batch-size", "0"], "--batch-size"),
        (["scan"], "Missing argument"),
        (["no-such-command"], "No such command"),
    ],
)
def test_console_entry_point_reports_parse_errors_in_one_line(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from equiaudit import cli  # the package: cli.main

    monkeypatch.setattr(sys, "argv", ["equiaudit", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and message in stderr
    assert "--help" in stderr and "╭" not in stderr


def test_console_entry_point_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from equiaudit import cli  # the package: cli.main

    for argv, code in ((["groups", "c4"], 0), (["scan", "--help"], 0), ([], 2)):
        monkeypatch.setattr(sys, "argv", ["equiaudit", *argv])
        with pytest.raises(SystemExit) as info:
            cli.main()
        assert info.value.code == code, argv
    assert "Usage" in capsys.readouterr().out  # a bare command prints its help
