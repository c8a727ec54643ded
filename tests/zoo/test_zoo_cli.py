"""``equiaudit zoo ...`` and ``equiaudit scan zoo:NAME`` through the real command line (typer's CliRunner)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from equiaudit.cli import app
from equiaudit.zoo import list_models, source
from equiaudit.zoo.checkpoints import available, load_card
from equiaudit.zoo.recipes import RECIPES
from typer.testing import CliRunner

from equiaudit.loading import model_sources, register_source, unregister_source

runner = CliRunner()


@pytest.fixture(autouse=True)
def zoo_source() -> Iterator[None]:
    """The ``zoo`` source, registered here when its ``equiaudit.model_sources`` entry point is missing."""
    added = "zoo" not in model_sources()
    if added:
        register_source("zoo", source)
    yield
    if added:
        unregister_source("zoo")


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_list_shows_every_model_and_which_ship() -> None:
    res = _run("zoo", "list")
    assert res.exit_code == 0, res.output
    for name in list_models():
        assert name in res.stdout
    doc = json.loads(_run("zoo", "list", "--json").stdout)
    rows = {r["name"]: r for r in doc["zoo"]}
    assert set(rows) == set(list_models())
    assert {n for n, r in rows.items() if r["shipped"]} == set(available())
    for name in available():
        card = load_card(name)
        assert rows[name]["parameters"] == card["model"]["parameters"]
        assert rows[name]["value"] == card["metrics"][card["data"]["dataset"]][rows[name]["metric"]]


def test_list_pattern_filters_and_an_empty_match_is_an_error() -> None:
    doc = json.loads(_run("zoo", "list", "gcnn*", "--json").stdout)
    assert [r["name"] for r in doc["zoo"]] == list_models("gcnn*")
    res = _run("zoo", "list", "nothing*")
    assert res.exit_code == 2 and "no zoo model matches" in res.stderr and res.stdout == ""


def test_info_shows_the_card_and_unknown_names_fail_in_one_line() -> None:
    name = available()[0]
    res = _run("zoo", "info", name, "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["card"] == load_card(name) and doc["model"]["name"] == name
    assert _run("zoo", "info", name).exit_code == 0
    res = _run("zoo", "info", "gcnn-c5")
    assert res.exit_code == 2 and "unknown zoo model 'gcnn-c5'; did you mean gcnn-c4" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_train_writes_a_checkpoint_that_scan_reads_with_arch(tmp_path: Path) -> None:
    res = _run(
        "zoo",
        "train",
        "cnn",
        "--tiny",
        "--epochs",
        "1",
        "--limit",
        "24",
        "--out",
        str(tmp_path),
        "--no-audit",
        "--seed",
        "3",
        "--augment-rotation",
    )
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "cnn.json").read_text())
    assert card["model"]["tiny"] and card["training"]["seed"] == 3 and card["training"]["augment_rotation"] == 180
    assert card["data"]["train_images"] == 24 and card["audits"] == []
    assert "cnn" in res.stdout and "--arch zoo:cnn:tiny" in res.stderr
    scan = _run("scan", str(tmp_path / "cnn.pt"), "--arch", "zoo:cnn:tiny", "--group", "c4", "--limit", "4", "--json")
    assert scan.exit_code == 0, scan.output
    assert json.loads(scan.stdout)["model"]["sha256"] == card["sha256"]


def test_train_rejects_bad_options_in_one_line(tmp_path: Path) -> None:
    res = _run("zoo", "train", "cnn", "--dataset", "no-such-data", "--out", str(tmp_path))
    assert res.exit_code == 2 and "unknown data spec 'no-such-data'" in res.stderr
    assert not (tmp_path / "cnn.pt").exists()


def test_scan_a_shipped_model_needs_no_trust() -> None:
    name = "gcnn-c4" if "gcnn-c4" in available() else available()[0]
    res = _run("scan", f"zoo:{name}", "--group", "c4", "--limit", "8", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    card = load_card(name)
    assert doc["model"]["kind"] == "zoo" and doc["model"]["sha256"] == card["sha256"]
    assert doc["model"]["info"]["recipe"]["key"] == card["recipe"]["key"]
    if "c4" in card["model"]["exact_groups"]:
        assert doc["summary"]["invariance_error_max"] < 1e-4  # exact by construction, up to float32 rounding


def test_scan_an_unshipped_zoo_model_says_how_to_get_one() -> None:
    unshipped = [n for n in list_models() if n not in available()]
    res = _run("scan", f"zoo:{unshipped[0]}", "--limit", "2")
    assert res.exit_code == 2 and "has no shipped checkpoint" in res.stderr


def test_train_shipped_rejects_names_that_do_not_ship() -> None:
    res = _run("zoo", "train-shipped", "wide-resnet50-2")
    assert res.exit_code == 2 and "is not a shipped checkpoint" in res.stderr


def test_train_shipped_retrains_with_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = replace(
        RECIPES["cnn"], epochs=1, create_kwargs={"hidden_channels": 4, "num_hidden": 1}, audits=(), evals=()
    )
    monkeypatch.setitem(RECIPES, "cnn", small)
    res = _run("zoo", "train-shipped", "cnn", "--out", str(tmp_path), "--quiet")
    assert res.exit_code == 0, res.output
    card = load_card("cnn", tmp_path)
    assert card["recipe"]["key"] == small.key() and card["data"]["train_images"] == 1297
    assert res.stderr == ""


def test_study_lists_runs_and_rejects_unknown_names(tmp_path: Path) -> None:
    res = _run("zoo", "study")
    assert res.exit_code == 0 and "rotated-digits" in res.stdout and "steerable-vs-baseline" in res.stdout
    res = _run("zoo", "study", "rotated-digits", "--quick", "--out", str(tmp_path), "--markdown", "--quiet")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("### Study 1") and "| cnn |" in res.stdout
    assert (tmp_path / "rotated-digits" / "results.json").is_file()
    res = _run("zoo", "study", "nope", "--out", str(tmp_path))
    assert res.exit_code == 2 and "unknown study 'nope'" in res.stderr


def test_study_options_a_study_does_not_take_are_one_line_errors(tmp_path: Path, monkeypatch) -> None:
    from equiaudit.zoo.studies import list_studies, study_options

    name = next(n for n in list_studies() if "weights" not in study_options(n))
    res = _run("zoo", "study", name, "--quick", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path))
    assert res.exit_code == 2 and f"the {name} study takes no --weights" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _run("zoo", "study", "all", "--quick", "--data", "digits", "--out", str(tmp_path))
    assert res.exit_code == 2 and "given to one study, not to 'all'" in res.stderr
    res = _run("zoo", "study", name, "--seeds", "0", "--out", str(tmp_path))
    assert res.exit_code == 2


def test_study_options_reach_the_study(tmp_path: Path, monkeypatch) -> None:
    import equiaudit.zoo.studies as studies

    seen = {}

    def fake(name, **kwargs):
        seen[name] = kwargs["options"]
        raise studies.EquiauditError("stop here")

    monkeypatch.setattr(studies, "run_study", fake)
    res = _run("zoo", "study", "rotated-digits", "--seeds", "4", "--data", "x", "--out", str(tmp_path))
    assert res.exit_code == 2 and "stop here" in res.stderr
    assert seen["rotated-digits"] == {"seeds": 4, "data": "x", "weights": None, "download": False}
