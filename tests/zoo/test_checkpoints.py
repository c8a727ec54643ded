"""Checkpoints and model cards: round trips, integrity checks, and the shipped files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from equiaudit.zoo import create, model_info
from equiaudit.zoo.checkpoints import (
    CARD_VERSION,
    available,
    checkpoint_dir,
    checkpoint_paths,
    git_commit,
    has_checkpoint,
    load_card,
    load_pretrained,
    save_checkpoint,
)
from equiaudit.zoo.recipes import RECIPES, SHIPPED, Recipe, fit
from equiaudit.zoo.training import evaluate

from equiaudit.errors import ModelLoadError
from equiaudit.loading import sha256_file

SHIPPED_BUDGET_BYTES = 20 * 1024 * 1024


def _tiny(name: str = "cnn", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create(name, tiny=True).eval()


def _card(tiny: bool = True) -> dict:
    return {"model": {"name": "cnn", "tiny": tiny, "create_kwargs": {}}, "data": {"dataset": "digits"}}


def test_state_dict_and_outputs_round_trip(tmp_path: Path) -> None:
    model = _tiny(seed=0)
    path = save_checkpoint("cnn", model, _card(), tmp_path)
    other = _tiny(seed=1)
    x = torch.rand(3, 1, 28, 28)
    assert not torch.allclose(other(x), model(x))
    card = load_pretrained("cnn", other, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert not other.training
    assert card["card_version"] == CARD_VERSION and card["name"] == "cnn"
    assert card["sha256"] == sha256_file(path) and card["size_bytes"] == path.stat().st_size
    assert card["file"] == "cnn.pt" and "torch" in card["versions"] and "created" in card
    assert card == json.loads(path.with_suffix(".json").read_text())


def test_a_checkpoint_is_a_plain_state_dict_for_weights_only(tmp_path: Path) -> None:
    model = _tiny()
    path = save_checkpoint("cnn", model, _card(), tmp_path)
    state = torch.load(path, weights_only=True)
    assert list(state) == list(model.state_dict())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())


def test_steerable_checkpoints_round_trip_in_eval_mode(tmp_path: Path) -> None:
    # e2cnn caches expanded filters in eval mode: a load must refresh them
    model = _tiny("e2cnn-c8", seed=0)
    save_checkpoint("e2cnn-c8", model, _card(), tmp_path)
    other = _tiny("e2cnn-c8", seed=1)
    load_pretrained("e2cnn-c8", other, tmp_path)
    x = torch.rand(2, 1, 29, 29)
    torch.testing.assert_close(other(x), model(x), rtol=1e-6, atol=1e-6)


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint("cnn", _tiny(), _card(), tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match its model card"):
        load_pretrained("cnn", _tiny(), tmp_path)


def test_a_pickle_with_code_is_refused_even_with_a_matching_card(tmp_path: Path) -> None:
    path = save_checkpoint("cnn", _tiny(), _card(), tmp_path)
    torch.save({"weights": torch.zeros(1), "extra": Path("x")}, path)  # PosixPath is not allowed by weights_only
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["sha256"] = sha256_file(path)
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_pretrained("cnn", _tiny(), tmp_path)


def test_a_checkpoint_for_another_architecture_says_how_it_was_built(tmp_path: Path) -> None:
    save_checkpoint("cnn", _tiny(), _card(tiny=True), tmp_path)
    with pytest.raises(ModelLoadError, match=r"trained for create\('cnn', tiny=True\)"):
        load_pretrained("cnn", create("cnn"), tmp_path)


def test_no_checkpoint_says_how_to_train_one(tmp_path: Path) -> None:
    assert not has_checkpoint("cnn", tmp_path) and available(tmp_path) == []
    with pytest.raises(ModelLoadError, match="equiaudit zoo train cnn"):
        load_pretrained("cnn", _tiny(), tmp_path)


def test_a_foreign_json_is_not_a_card(tmp_path: Path) -> None:
    save_checkpoint("cnn", _tiny(), _card(), tmp_path)
    checkpoint_paths("cnn", tmp_path)[1].write_text('{"name": "cnn"}')
    with pytest.raises(ModelLoadError, match="not a version-1 model card"):
        load_card("cnn", tmp_path)


def test_git_commit_is_a_hash_or_none(monkeypatch) -> None:
    monkeypatch.delenv("EQUIAUDIT_COMMIT", raising=False)
    commit = git_commit()
    assert commit is None or (len(commit.split("-")[0]) == 40 and int(commit.split("-")[0], 16) >= 0)
    monkeypatch.setenv("EQUIAUDIT_COMMIT", "3f2ff5a")  # a copied tree says which code it holds
    assert git_commit() == "3f2ff5a"


def test_fit_builds_a_complete_card(tmp_path: Path) -> None:
    recipe = Recipe("cnn", "cnn", "digits", epochs=1, evals=("rot-digits",), audits=("c4",))
    model, card = fit(recipe, tiny=True, limit=16)
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["data"]["train_images"] == 16 and card["data"]["test_images"] == 16
    assert set(card["metrics"]) == {"digits", "rot-digits"}
    assert card["recipe"]["key"] == recipe.key() and card["training"]["epochs"] == 1
    (audit,) = card["audits"]
    assert audit["group"] == "c4" and audit["images"] == 16 and "invariance_error_mean" in audit["summary"]
    path = save_checkpoint("cnn", model, card, tmp_path)
    assert load_card("cnn", tmp_path)["sha256"] == sha256_file(path)


def test_recipe_keys_follow_what_changes_the_weights() -> None:
    base = RECIPES["cnn"]
    assert Recipe(**{**base.__dict__, "note": "other words", "audit_limit": 3}).key() == base.key()
    assert Recipe(**{**base.__dict__, "epochs": base.epochs + 1}).key() != base.key()


# ---------------------------------------------------------------------------------------------- shipped


def test_every_shipped_recipe_has_its_checkpoint_and_nothing_else_ships() -> None:
    assert sorted(available()) == sorted(SHIPPED)
    assert all(model_info(name).cpu_trainable for name in SHIPPED)


def test_shipped_checkpoints_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in checkpoint_dir().iterdir() if p.is_file())
    assert total < SHIPPED_BUDGET_BYTES


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_matches_its_file_and_recipe(name: str) -> None:
    card = load_card(name)
    pt, _ = checkpoint_paths(name)
    assert card["sha256"] == sha256_file(pt)
    assert card["recipe"]["key"] == RECIPES[name].key()  # retrain-shipped reproduces these settings
    assert not card["model"]["tiny"] and card["data"]["limit"] is None
    model = create(name)
    load_pretrained(name, model)
    assert card["model"]["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in SHIPPED if n in ("cnn", "cnn-hnet", "unet")])
def test_shipped_weights_reproduce_their_card_metric(name: str) -> None:
    card = load_card(name)
    model = create(name)
    load_pretrained(name, model)
    dataset = card["data"]["dataset"]
    ev = evaluate(model, dataset, split="test", **card["data"]["options"])
    recorded = card["metrics"][dataset]
    assert ev.images == recorded["images"]
    assert ev.score == pytest.approx(recorded.get("accuracy", recorded.get("iou")), abs=1.5 / ev.images)


def test_create_pretrained_loads_the_shipped_weights() -> None:
    # passes once registry._load_pretrained calls checkpoints.load_pretrained
    model = create("cnn", pretrained=True)
    state, reference = model.state_dict(), create("cnn")
    load_pretrained("cnn", reference)
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
