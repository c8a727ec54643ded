"""The example reports shipped in examples/ (made by `make examples`) match the current schema and code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from equiaudit.result import SCHEMA_FILE, SCHEMA_VERSION, AuditResult

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOCUMENTS = sorted(EXAMPLES.glob("*.json"))
PAGES = sorted(EXAMPLES.glob("*.html"))


def _results(doc: dict) -> list[dict]:
    """The result documents of an example JSON: itself, or a comparison's results."""
    return doc["results"] if doc.get("kind") == "comparison" else [doc]


def test_there_are_examples() -> None:
    from equiaudit.reports.make_examples import STEMS

    assert sorted(p.stem for p in DOCUMENTS) == sorted(STEMS)
    assert sorted(p.stem for p in PAGES) == sorted(STEMS)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_example_results_follow_the_current_schema(path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    doc = json.loads(path.read_text(encoding="utf-8"))
    for result in _results(doc):
        assert result["schema_version"] == SCHEMA_VERSION == 2
        validator.validate(result)
        loaded = AuditResult.from_dict(result, source=str(path))
        assert loaded.intervals is not None and "floor_high" in loaded.elements  # made by the current code


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_example_verdicts_never_quote_a_clause_that_holds_as_a_failure(path: Path) -> None:
    html = path.read_text(encoding="utf-8")
    for status, sentence in re.findall(
        r'<span class="badge(?: status-\w+)?">(FAIL|WARN|PASS)</span>\s*(?:<p>)?([^<]*)', html
    ):
        if status == "PASS":
            continue
        reason = sentence.split(": ", 1)[-1]
        assert "match to" not in reason and "within its" not in reason, (status, sentence)
    assert "on this data" in html
