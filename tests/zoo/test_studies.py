"""The five reference studies in quick mode (tiny models, one epoch, a few images); how they pick models."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from equiaudit.zoo import create
from equiaudit.zoo.checkpoints import save_checkpoint
from equiaudit.zoo.recipes import RECIPES
from equiaudit.zoo.studies import STUDIES, list_studies, run_study, study_title
from equiaudit.zoo.studies.common import QUICK_AUDIT_IMAGES, StudyContext, Table

from equiaudit.errors import EquiauditError
from equiaudit.result import AuditResult

HAS_REPORTS = importlib.util.find_spec("equiaudit.reports") is not None


@pytest.mark.parametrize("name", list(STUDIES))
def test_each_study_runs_quickly_and_writes_its_tables(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"equiaudit.zoo.studies.{STUDIES[name]}")
    result = run_study(name, quick=True, out_dir=tmp_path, device="cpu")
    assert result.name == name and result.quick and result.title == module.TITLE
    variants = {re.sub(r"@(seed\d+|[0-9a-f]{8})$", "", key) for key in result.models}  # NAME@seedS, NAME@HASH
    assert set(module.MODELS) <= variants  # and a study's further recipes of its models, such as NAME@slant
    assert {v.split("@")[0] for v in variants} == {m.split("@")[0] for m in module.MODELS}
    assert all(m["origin"].startswith("trained now (quick") for m in result.models.values())
    ctx = StudyContext(name, quick=True, out_dir=tmp_path, device=torch.device("cpu"), log=None)
    assert {r.name for r in ctx.planned(module.trainings(ctx))} == set(result.models)  # what --jobs trains first
    for table in result.tables:
        assert table.rows and all(len(row) == len(table.columns) for row in table.rows)
    first = result.tables[0]
    assert [row[0] for row in first.rows] == [getattr(module, "LABELS", {}).get(m, m) for m in module.MODELS]
    doc = json.loads((tmp_path / name / "results.json").read_text())
    assert doc["study"] == name and doc["quick"] and doc["tables"][0]["rows"] == json.loads(json.dumps(first.rows))
    assert len(result.audits) == len(module.MODELS) * getattr(module, "AUDITS_PER_MODEL", 1)
    for key, audit in result.audits.items():
        saved = AuditResult.from_json(tmp_path / name / f"{key}.json")
        assert saved.summary["images"] == QUICK_AUDIT_IMAGES == audit.summary["images"]
    if HAS_REPORTS:
        assert (tmp_path / name / "report.html").stat().st_size > 0
    markdown = result.to_markdown()
    assert markdown.startswith(f"### {module.TITLE} (quick mode)") and markdown.count("| --") >= len(result.tables)


def test_unknown_study_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(EquiauditError, match="unknown study 'nope'; studies: rotated-digits"):
        run_study("nope", out_dir=tmp_path)
    assert list_studies() == list(STUDIES) and all(study_title(n) for n in STUDIES)


def test_table_formats_cells_and_markdown() -> None:
    table = Table("t", [("model", "text"), ("acc", "pct"), ("n", "int"), ("err", "sci"), ("d", "pts")])
    table.rows.append(["a", 0.5, 1234, 0.000123, -0.04])
    table.rows.append(["b", None, 1, 1.0, 0.0])
    assert table.cells() == [["a", "50.0%", "1,234", "1.23e-04", "-4.0"], ["b", "-", "1", "1.00e+00", "+0.0"]]
    assert table.to_markdown().splitlines()[2:4] == [
        "| model | acc | n | err | d |",
        "| :-- | --: | --: | --: | --: |",
    ]


def _context(tmp_path: Path) -> StudyContext:
    return StudyContext("rotated-digits", quick=False, out_dir=tmp_path, device=torch.device("cpu"), log=None)


def test_full_mode_reuses_a_cached_checkpoint_of_the_same_recipe(tmp_path: Path, monkeypatch) -> None:
    # a small recipe under a study-only name, trained for real once and then found in the cache
    recipe = replace(RECIPES["cnn"], name="cnn@test", epochs=1, create_kwargs={"hidden_channels": 4, "num_hidden": 1})
    monkeypatch.setitem(RECIPES, "cnn@test", recipe)
    ctx = _context(tmp_path)
    model, _ = ctx.model("cnn@test")
    assert ctx.models["cnn@test"]["origin"].startswith("trained now")
    assert (tmp_path / "checkpoints" / "cnn@test.pt").is_file()
    again, _ = _context(tmp_path).model("cnn@test")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    ctx = _context(tmp_path)
    ctx.model("cnn@test")
    assert ctx.models["cnn@test"]["origin"].startswith("cached checkpoint")


def test_full_mode_does_not_reuse_a_checkpoint_of_another_recipe(tmp_path: Path, monkeypatch) -> None:
    recipe = replace(RECIPES["cnn"], name="cnn@test", epochs=1, create_kwargs={"hidden_channels": 4, "num_hidden": 1})
    monkeypatch.setitem(RECIPES, "cnn@test", recipe)
    stale = create("cnn", hidden_channels=4, num_hidden=1)
    card = {
        "model": {"parameters": 0, "tiny": False},
        "data": {"limit": None, "train_images": 1},
        "training": {"epochs": 9, "seconds": 0.0},
        "recipe": {"key": replace(recipe, epochs=9).key()},
    }
    save_checkpoint("cnn@test", stale, card, tmp_path / "checkpoints")
    ctx = _context(tmp_path)
    ctx.model("cnn@test")
    assert ctx.models["cnn@test"]["origin"].startswith("trained now")
    assert ctx.models["cnn@test"]["epochs"] == 1


def test_scale_study_reads_the_feature_map_error_from_the_per_layer_audit() -> None:
    from equiaudit.zoo.studies.scale import feature_error_by_scale

    from equiaudit import audit

    model = create("cnn", tiny=True)
    res = audit(model, torch.rand(3, 1, 28, 28), "scale:0.5,1,2", layers="auto", samples=0)
    by_scale = feature_error_by_scale(res)
    assert list(by_scale) == [0.5, 1.0, 2.0] and by_scale[1.0] == 0.0
    rows = res.layers["layers"]
    assert len(rows) == 2  # the tiny CNN's two convolutions
    j = res.layers["elements"].index("scale2")
    assert by_scale[2.0] == sum(r["error"][j] for r in rows) / 2 and by_scale[2.0] > 0.05


def test_seed_interval_is_the_student_t_interval_of_the_mean() -> None:
    from equiaudit.zoo.studies.common import seed_interval

    got = seed_interval([0.90, 0.92, 0.97])
    mean = (0.90 + 0.92 + 0.97) / 3
    sd = (((0.90 - mean) ** 2 + (0.92 - mean) ** 2 + (0.97 - mean) ** 2) / 2) ** 0.5
    half = 4.303 * sd / 3**0.5  # t(0.975, df=2)
    assert got["n"] == 3 and got["values"] == [0.90, 0.92, 0.97]
    assert got["mean"] == pytest.approx(mean) and got["low"] == pytest.approx(mean - half)
    assert got["high"] == pytest.approx(mean + half)
    assert seed_interval([0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1, "values": [0.5]}
    wide = seed_interval([float(i % 2) for i in range(40)])  # beyond the table: the normal quantile
    assert wide["high"] - wide["mean"] == pytest.approx(1.96 * (40 / 39 / 4) ** 0.5 / 40**0.5)
    with pytest.raises(ValueError):
        seed_interval([])


def test_interval_cells_and_the_published_table() -> None:
    from equiaudit.zoo.studies.common import published_table, seed_interval

    table = Table("t", [("model", "text"), ("acc", "ci"), ("err", "ci3")])
    table.rows.append(["a", seed_interval([0.9, 0.92, 0.94]), {"mean": 0.25, "low": 0.2, "high": 0.3}])
    assert table.cells() == [["a", "92.0% [87.0, 97.0]", "0.250 [0.200, 0.300]"]]
    gap = Table("t", [("gap", "cipts")], [[seed_interval([0.30, -0.05])]])
    assert gap.cells() == [["+12.5 [-209.9, +234.9]"]]  # a signed difference: not clipped
    near_one = seed_interval([0.994, 1.0, 1.0])
    assert near_one["high"] > 1.0 and Table("t", [("acc", "ci")], [[near_one]]).cells() == [["99.8% [98.9, 100.0]"]]
    error = seed_interval([0.1, 2.9, 1.4])  # an error over three seeds: the t-interval reaches below 0
    assert error["low"] < 0 and Table("t", [("err", "ci3")], [[error]]).cells() == [["1.467 [0.000, 4.948]"]]
    assert json.loads(json.dumps(table.to_dict()))["rows"][0][1]["values"] == [0.9, 0.92, 0.94]
    pub = published_table([("rotated accuracy", "91%", "85%", "fewer digits")])
    assert pub.title == "Published / ours / why different"
    assert [h for h, _ in pub.columns] == ["what", "published", "ours", "why different"]
    assert pub.cells() == [["rotated accuracy", "91%", "85%", "fewer digits"]]


def test_recipe_variants_are_named_and_keyed_apart(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    base = RECIPES["cnn"]
    assert ctx.recipe("cnn") == base
    assert ctx.recipe("cnn", seed=base.seed) == base  # the default seed is no variant
    seeded = ctx.recipe("cnn", seed=1)
    assert seeded.name == "cnn@seed1" and seeded.seed == 1 and seeded.key() != base.key()
    limited = ctx.recipe("cnn", seed=1, train_limit=300)
    assert limited.name == f"cnn@{limited.key()[:8]}" and limited.train_limit == 300
    assert "train_limit" in limited.training_fields() and "train_limit" not in base.training_fields()
    quick = StudyContext("rotated-digits", quick=True, out_dir=tmp_path, device=torch.device("cpu"), log=None)
    assert quick.recipe("cnn", seed=2).epochs == 1 and quick.recipe("cnn", seed=2).name == "cnn@seed2"


def test_shipped_cards_keep_their_recipe_keys() -> None:
    # a later training field left at its default must not make every shipped checkpoint look stale
    from equiaudit.zoo.checkpoints import load_card
    from equiaudit.zoo.recipes import SHIPPED

    for name in SHIPPED:
        card = load_card(name)
        if card["recipe"]["key"] != RECIPES[name].key():
            assert card["recipe"] != RECIPES[name].to_dict(), name  # only a changed recipe may differ


def test_train_limit_trains_on_the_first_images(tmp_path: Path, monkeypatch) -> None:
    from equiaudit.zoo.recipes import fit

    recipe = replace(RECIPES["cnn"], epochs=1, train_limit=20, evals=(), audits=())
    _, card = fit(recipe, tiny=True)
    assert card["data"]["train_images"] == 20 and card["recipe"]["train_limit"] == 20
    _, card = fit(recipe, tiny=True, limit=12)
    assert card["data"]["train_images"] == 12


def test_seeds_and_options_of_a_study(tmp_path: Path) -> None:
    def ctx(quick: bool, options: dict, accepts: tuple = ("data", "seeds")) -> StudyContext:
        return StudyContext(
            "x", quick=quick, out_dir=tmp_path, device=torch.device("cpu"), log=None, options=options, accepts=accepts
        )

    assert ctx(False, {}).seeds == (0, 1, 2) and ctx(True, {}).seeds == (0, 1)
    assert ctx(False, {"seeds": 5}).seeds == (0, 1, 2, 3, 4)
    assert ctx(False, {"data": "flowers:/x", "weights": None}).option("data") == "flowers:/x"
    assert ctx(False, {}).option("data", "digits") == "digits"
    with pytest.raises(EquiauditError, match=r"the x study takes no --weights \(it takes: --data, --seeds\)"):
        ctx(False, {"weights": "w.pt"})
    with pytest.raises(EquiauditError, match="takes no --download"):
        ctx(False, {"download": True}, accepts=())
    with pytest.raises(EquiauditError, match="--seeds must be a whole number"):
        ctx(False, {"seeds": 0})
    with pytest.raises(EquiauditError, match="unknown study option 'colour'"):
        ctx(False, {"colour": 1})
    assert ctx(False, {"download": False}, accepts=()).options == {}


def test_results_json_records_how_the_run_was_made(tmp_path: Path) -> None:
    result = run_study("rotated-digits", quick=True, out_dir=tmp_path, device="cpu")
    run = json.loads((tmp_path / "rotated-digits" / "results.json").read_text())["run"]
    assert run == result.run
    assert run["device"] == "cpu" and run["device_name"] == "cpu" and run["torch"] == torch.__version__
    assert run["seeds"] == [0, 1] and run["started"].endswith("Z")
    assert run["commit"] is None or len(run["commit"].removesuffix("-dirty")) == 40
    for entry in result.models.values():
        assert entry["seed"] in run["seeds"] and entry["device"] == "cpu"


def test_a_recipes_key_follows_the_contents_of_its_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save({"w": torch.zeros(3)}, path)
    recipe = replace(RECIPES["wide-resnet50-2@blossoms"], create_kwargs={"weights_path": str(path)})
    first = recipe.key()
    assert recipe.key() == first  # the same file: the same key (and a cached checkpoint is found again)
    before = path.stat().st_mtime_ns
    torch.save({"w": torch.ones(3)}, path)  # other weights under the same name (and, as make sees it, newer)
    os.utime(path, ns=(before + 10**9, before + 10**9))
    assert recipe.key() != first
    path.unlink()
    assert recipe.key() not in (first, replace(recipe, create_kwargs={}).key())
