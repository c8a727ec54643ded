"""`equiaudit report`, `equiaudit compare` and `scan --report`: outputs, defaults, and one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _report_models import TinyCNN
from equiaudit.cli import app
from typer.testing import CliRunner

from equiaudit.result import save

runner = CliRunner()
ARCH = "_report_models:TinyCNN"


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_error_line(res) -> str:
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, so2_result) -> Path:
    path = tmp_path_factory.mktemp("results") / "cnn-so2.json"
    save(so2_result, path)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(folder / f"cnn{seed}.pt")
        torch.save(TinyCNN().state_dict(), paths[-1])
    return paths


def test_report_from_a_saved_result(saved, tmp_path):
    out = tmp_path / "sub" / "model.html"
    res = _run("report", saved, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "" and f"report: {out}" in res.stderr.replace("\n", "")
    html = out.read_text(encoding="utf-8")
    assert 'id="gallery-worst"' in html  # the samples sidecar came along
    assert json.loads((tmp_path / "sub" / "model.json").read_text()) == json.loads(saved.read_text())


def test_report_defaults_to_beside_the_json(saved, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    copy = folder / saved.name
    copy.write_bytes(saved.read_bytes())
    monkeypatch.chdir(tmp_path)
    res = _run("report", copy, "--quiet")
    assert res.exit_code == 0 and res.stderr == ""
    assert (folder / "cnn-so2.html").exists() and not (tmp_path / "reports").exists()


def test_report_in_place_leaves_the_input_alone(saved, tmp_path):
    copy = tmp_path / "r.json"
    copy.write_bytes(saved.read_bytes())
    before = copy.stat().st_mtime_ns
    res = _run("report", copy, "-o", tmp_path / "r.html")
    assert res.exit_code == 0, res.stderr
    assert copy.stat().st_mtime_ns == before and (tmp_path / "r.html").exists()
    assert "No sample images" in (tmp_path / "r.html").read_text(encoding="utf-8")  # no sidecar was copied


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ('{"hello": "world"}', "is not an equiaudit result"),
        ("[1, 2, 3]", "is not an equiaudit result"),
        ('{"tool": "equiaudit", "schema_version": 99, "elements": [], "summary": {}, "meta": {}}', "schema_version 99"),
        (
            '{"tool": "equiaudit", "schema_version": 2, "summary": {}, "model": {"source": "m"}, '
            '"data": {"spec": "digits", "count": 1}, "group": {"spec": "id", "size": 1, "exact": true}, '
            '"run": {"spec": {}, "task": null, "task_auto": null, "output_shape": [], "batch_size": null, '
            '"batch_size_auto": true, "floor_images": 0, "mask_fraction": null, "device": "cpu", '
            '"dtype": "float32", "versions": {}}, "elements": '
            '[{"id": 0, "label": "identity", "angle": 0, "scale": 1, "reflect": false, "exact": true}]}',
            "lacks run.task",
        ),
    ],
)
def test_report_of_a_bad_file_is_one_line_and_exit_2(tmp_path, content, fragment):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    line = _one_error_line(_run("report", bad, "-o", tmp_path / "x.html"))
    assert fragment in line
    assert not (tmp_path / "x.html").exists()


def test_report_of_a_binary_or_missing_file(tmp_path):
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "not a text JSON file" in _one_error_line(_run("report", binary))
    assert "cannot read" in _one_error_line(_run("report", tmp_path / "missing.json"))


def test_report_to_a_json_path_is_refused(saved, tmp_path):
    assert ".json" in _one_error_line(_run("report", saved, "-o", tmp_path / "x.json"))


def test_compare(saved, tmp_path, c4_result):
    other = tmp_path / "c4.json"
    save(c4_result, other)
    out = tmp_path / "cmp.html"
    res = _run("compare", saved, other, "-o", out, "--names", "plain,averaged")
    assert res.exit_code == 0, res.stderr
    html = out.read_text(encoding="utf-8")
    assert "<strong>plain</strong>" in html and "<strong>averaged</strong>" in html
    assert json.loads((tmp_path / "cmp.json").read_text())["names"] == ["plain", "averaged"]


def test_compare_errors_are_one_line(saved, tmp_path, seg_result):
    seg = tmp_path / "seg.json"
    save(seg_result, seg)
    assert "at least 2" in _one_error_line(_run("compare", saved, "-o", tmp_path / "x.html"))
    assert "at least 2" in _one_error_line(_run("compare", saved, "--correctness", "id", "-o", tmp_path / "x.html"))
    assert "classifiers with dense" in _one_error_line(_run("compare", saved, seg, "-o", tmp_path / "x.html"))
    assert "distinct name" in _one_error_line(_run("compare", saved, saved, "--names", "a", "-o", tmp_path / "x.html"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "not valid JSON" in _one_error_line(_run("compare", saved, bad, "-o", tmp_path / "x.html"))
    assert "not in both audits' groups" in _one_error_line(
        _run("compare", saved, saved, "--names", "a,b", "--correctness", "rot:0,45", "-o", tmp_path / "x.html")
    )
    bare = tmp_path / "bare.json"  # no samples sidecar: no per-image records to build the matrix from
    bare.write_bytes(saved.read_bytes())
    assert "per-image records" in _one_error_line(
        _run("compare", saved, bare, "--names", "a,b", "--correctness", "rot:0,30", "-o", tmp_path / "x.html")
    )


def test_scan_report_then_compare_with_correctness(model_files, tmp_path):
    """The whole path: scan two saved models with --report, then compare them with a correctness matrix."""
    saved = []
    for path in model_files:
        report = tmp_path / f"{path.stem}.html"
        res = _run("scan", path, "--arch", ARCH, "--group", "so2:8", "--limit", "24", "--report", report, "--quiet")
        assert res.exit_code == 0, res.stderr
        assert report.exists() and report.with_suffix(".json").exists()
        saved.append(report.with_suffix(".json"))
    out = tmp_path / "cmp.html"
    res = _run("compare", *saved, "-o", out, "--correctness", "rot:0,90")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [m["element"] for m in doc["correctness"]] == ["identity", "rot90"]
    assert all(sum(m["counts"].values()) == 24 for m in doc["correctness"])
    html = out.read_text(encoding="utf-8")
    assert 'id="chart-correctness-1"' in html and 'id="gallery-correctness"' in html
