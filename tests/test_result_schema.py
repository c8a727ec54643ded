"""The result document: JSON Schema version 2 (shipped and checked here), and version-1 documents still load."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from _models import ConstantSeg, Identity, SmallCNN

from equiaudit.engine import audit
from equiaudit.errors import ResultFormatError
from equiaudit.result import SCHEMA_FILE, AuditResult, load, save

V1 = sorted((Path(__file__).parent / "data").glob("result-v1-*.json"))


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("task", ["classify", "dense"])
def test_documents_follow_the_shipped_schema(task: str, tmp_path: Path) -> None:
    model = SmallCNN() if task == "classify" else Identity()
    res = audit(model, torch.rand(4, 1, 28, 28), "so2:4*flip", task=task, samples=2)
    doc = json.loads(res.to_json())
    _validator().validate(doc)
    back = load(save(res, tmp_path / "r.json"))
    assert back.to_dict() == json.loads(back.to_json()) and back.run.samples is not None
    assert back.model == res.model and back.data == res.data and back.group == res.group


def test_a_segmentation_audit_on_a_centre_mask_follows_the_schema() -> None:
    x = torch.nn.functional.pad(torch.rand(3, 3, 20, 20), (4, 4, 4, 4))
    res = audit(ConstantSeg(), (x, None, (x.mean(1, keepdim=True) > 0.5).float()), "so2:4", mask="centre:20")
    doc = json.loads(res.to_json())
    _validator().validate(doc)
    assert doc["run"]["spec"]["mask"] == "centre:20" and "iou_truth_low" in doc["elements"][0]
    for bad in ("centre:0", "centre:", "square"):
        with pytest.raises(jsonschema.ValidationError):
            _validator().validate({**doc, "run": {**doc["run"], "spec": {**doc["run"]["spec"], "mask": bad}}})


def test_the_schema_rejects_what_the_loader_rejects() -> None:
    res = audit(SmallCNN(), torch.rand(2, 1, 28, 28), "c4", samples=0)
    doc = json.loads(res.to_json())
    bad = {**doc, "run": {**doc["run"], "spec": {**doc["run"]["spec"], "padding": "wrap"}}}
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(bad)
    missing = {k: v for k, v in doc.items() if k != "group"}
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(missing)
    with pytest.raises(ResultFormatError, match="missing 'group'"):
        AuditResult.from_dict(missing)


@pytest.mark.parametrize("path", V1, ids=[p.stem for p in V1])
def test_version_1_documents_load_as_version_2(path: Path) -> None:
    old = json.loads(path.read_text())
    res = AuditResult.from_json(path)
    meta = old["meta"]
    assert res.model.source == meta["model"]["source"] and res.group.spec == meta["group"]["spec"]
    assert res.task == meta["task"] and res.run.batch_size == meta["options"]["batch_size"]
    assert res.run.interpolation == meta["options"]["interpolation"] and res.data.count == meta["data"]["count"]
    assert res.summary == old["summary"]
    _validator().validate(json.loads(res.to_json()))  # re-saved, it is a valid version-2 document


def test_unknown_versions_are_refused() -> None:
    doc = json.loads(V1[0].read_text())
    doc["schema_version"] = 3
    with pytest.raises(ResultFormatError, match="reads versions 1, 2"):
        AuditResult.from_dict(doc)
