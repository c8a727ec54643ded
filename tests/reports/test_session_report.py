"""The pytest session report: one page, every check as pytest decided it under its own max_error, short labels
in the charts with the test ids in a legend table."""

from __future__ import annotations

import json
import re

import pytest
from equiaudit.reports import SessionCheck, write_session_report

from equiaudit.errors import EquiauditError

LONG = "tests/integration/test_equivariance_of_all_the_models.py::test_model_under_group[{}-float32-cpu-bilinear]"


@pytest.fixture
def checks(so2_result, c4_result, dense_result, seg_result):
    return [
        SessionCheck(LONG.format("plain-so2-absolute"), True, so2_result, "10"),
        SessionCheck(LONG.format("plain-so2-floor"), False, so2_result, "floor", ("rot30: error 0.3 ...",)),
        SessionCheck(LONG.format("averaged-c4"), True, c4_result, "floor", via="assert_invariant"),
        SessionCheck(LONG.format("ramp-eight-floors"), True, dense_result, "8x floor"),
        SessionCheck(LONG.format("seg"), False, seg_result, "floor", ("rot90: error 1.4 ...",)),
    ]


def _rows(html: str) -> dict[str, list[str]]:
    table = re.search(r'<section class="numbers" id="checks">(.*?)</section>', html, re.S)[1]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]:
        label = re.search(r'<th scope="row">(\w+)</th>', row)[1]
        out[label] = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    return out


def test_each_check_shows_what_pytest_decided_under_its_own_tolerance(checks, tmp_path) -> None:
    html = write_session_report(checks, tmp_path / "rep.html", json_name="rep.checks.json").read_text()
    rows = _rows(html)
    assert list(rows) == ["C1", "C2", "C3", "C4", "C5"]
    for (_, cells), check in zip(rows.items(), checks, strict=True):
        test, via, _, group, max_error, result = cells[:6]
        assert test == check.name and via == check.via and max_error == check.max_error
        assert result == ("PASS" if check.passed else "FAIL")
        assert group == check.result.group.spec
    # C1: the plain CNN fails the default rule, but its check said max_error=10 and passed: PASS, ratio < 1
    assert float(rows["C1"][6]) < 1 and float(rows["C2"][6]) > 1
    c1 = re.search(r'id="check-C1">(.*?)</details>', html, re.S)[1]
    assert "above floor" not in c1 and "within tolerance" in c1 and "max_error 10" in c1
    assert 'class="badge status-pass">PASS</span> <strong>C1</strong>' in html
    assert "C4" in html and "8x floor" in rows["C4"][4]


def test_one_page_with_a_section_per_kind_and_short_labels_in_the_charts(checks, tmp_path) -> None:
    path = write_session_report(checks, tmp_path / "rep.html")
    html = path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep.html"]
    assert 'id="section-invariant"' in html and 'id="section-equivariant"' in html
    title = re.search(r"<h1>(.*?)</h1>", html, re.S)[1]
    assert title == "equiaudit: 5 equivariance checks, 3 passed, 2 failed" and "<br" not in title
    figures = {
        m[1]: json.loads(m[2].replace("<\\/", "</"))
        for m in re.finditer(r'<script type="application/json" id="fig-data-([\w-]+)">(.*?)</script>', html, re.S)
    }
    assert set(figures) == {
        "chart-invariant-margin",
        "chart-invariant-error",
        "chart-equivariant-margin",
        "chart-equivariant-error",
    }
    for fig in figures.values():
        # long ids only in the legend table (and the margin bars' hover text), never in titles or legends
        assert "test_model_under_group" not in json.dumps(fig["layout"])
        assert not any("test_model_under_group" in t.get("name", "") for t in fig["data"])
        names = {t.get("name", "") for t in fig["data"] if t.get("showlegend", True) is not False}
        assert all(re.fullmatch(r"C\d( · .*)?|largest error ÷ limit", n) for n in names), names
    margin = figures["chart-invariant-margin"]["data"][0]
    assert margin["x"] == ["C1", "C2", "C3"]
    assert [c == "#059669" for c in margin["marker"]["color"]] == [True, False, True]  # as pytest decided


def test_a_session_report_needs_checks(tmp_path) -> None:
    with pytest.raises(EquiauditError, match="at least one check"):
        write_session_report([], tmp_path / "rep.html")
