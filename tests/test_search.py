"""Worst-case search (grid, random:K, refine) and consistency: formulas against hand-written references, a
classifier whose failure angle is known by construction, reproducibility, the result document and the checks."""

from __future__ import annotations

import json
from itertools import permutations

import jsonschema
import numpy as np
import pytest
import torch
from _models import SmallCNN
from _search_models import FAIL_ANGLE, NarrowFailure, bars

from equiaudit import audit
from equiaudit.data import AuditData
from equiaudit.errors import OptionError
from equiaudit.groups import parse_group
from equiaudit.result import SCHEMA_FILE, AuditResult
from equiaudit.search import (
    SearchPlan,
    margin,
    pair_agreement,
    parameter_box,
    parse_search,
    random_elements,
)
from equiaudit.testing import check_equivariance


def _bars(n: int = 4) -> AuditData:
    return AuditData.from_tensors(bars(n), torch.zeros(n, dtype=torch.long))


# ---- parsing and formulas -----------------------------------------------------------------------------------


def test_search_forms() -> None:
    assert parse_search("grid") == SearchPlan()
    assert parse_search("refine").methods == ("grid", "refine")
    assert parse_search("random:10, refine") == SearchPlan(10, True)
    for bad in ("random", "random:x", "best", "refine:3", ""):
        with pytest.raises(OptionError, match="valid: grid, random:K, refine"):
            parse_search(bad)


def test_margin_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]], dtype=torch.float64)
    assert margin(logits, torch.tensor([1, 0])).tolist() == [1.0, -2.0]  # 3 - 2, 1 - 3
    assert margin(logits + 7.5, torch.tensor([1, 0])).tolist() == [1.0, -2.0]  # a constant shift changes nothing
    one = torch.tensor([[0.5], [0.5]], dtype=torch.float64)  # one logit z: the binary classifier [0, z]
    assert margin(one, torch.tensor([1, 0])).tolist() == [0.5, -0.5]


def test_pair_agreement_against_every_pair() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (6, 5), generator=gen)
    fast = pair_agreement(pred, 3)
    for b in range(5):
        pairs = list(permutations(range(6), 2))
        slow = sum(bool(pred[i, b] == pred[j, b]) for i, j in pairs) / len(pairs)
        assert fast[b].item() == pytest.approx(slow, abs=1e-12)
    assert pair_agreement(torch.tensor([[0], [0], [1], [2]]), 3).item() == pytest.approx(2 / 12)


def test_parameter_boxes() -> None:
    (rot,) = parameter_box(parse_group("rot:-30..30:31"))
    assert (rot.lo, rot.hi, rot.circular) == (-30.0, 30.0, False)
    (full,) = parameter_box(parse_group("so2:36"))
    assert full.circular and (full.lo, full.hi) == (0.0, 360.0)
    (arc,) = parameter_box(parse_group("rot:150..210:7"))  # crosses 180: unrolled, not folded
    assert (arc.lo, arc.hi) == pytest.approx((150.0, 210.0))
    names = [a.name for a in parameter_box(parse_group("rot:-30..30:31*translate:-3..3:7"))]
    assert names == ["angle", "dx", "dy"]


def test_refine_starts_between_the_right_neighbours() -> None:
    from equiaudit.groups import GroupElement
    from equiaudit.search import _neighbour_steps, _point

    (full,) = parameter_box(parse_group("so2:36"))
    point = _point([full], GroupElement(-170.0))
    assert point.tolist() == [190.0] and _neighbour_steps([full], point).tolist() == [[5.0, 5.0]]
    edge = parameter_box(parse_group("rot:-30..30:7*translate-x:-2..2:5"))
    point = _point(edge, GroupElement(-30.0, shift=(1, 0)))
    assert point.tolist() == [-30.0, 1.0]
    assert _neighbour_steps(edge, point).tolist() == [[0.0, 5.0], [0.5, 0.5]]  # nothing below the box's edge


def test_consistency_needs_two_elements() -> None:
    res = audit(SmallCNN(), torch.rand(2, 1, 28, 28), "id", samples=0)
    assert "consistency" not in res.summary


def test_random_draws_are_reproducible_and_stay_in_the_box() -> None:
    axes = parameter_box(parse_group("rot:-30..30:31*translate:-3..3:7"))
    a = random_elements(axes, [False], index=5, k=200)
    assert a == random_elements(axes, [False], index=5, k=200)
    assert a != random_elements(axes, [False], index=6, k=200)
    angles = np.array([g.angle for g in a])
    shifts = np.array([g.shift for g in a])
    assert angles.min() >= -30 and angles.max() <= 30 and np.abs(shifts).max() <= 3
    assert angles.max() - angles.min() > 50 and np.ptp(shifts, 0).min() > 5  # spread over the box


# ---- a classifier that fails only within a degree of 37 ------------------------------------------------------


def test_narrow_failure_model_by_construction() -> None:
    from equiaudit.groups import GroupElement
    from equiaudit.transforms import transform

    x = bars(1)
    model = NarrowFailure()
    for angle, wins in ((0.0, 0), (30.0, 0), (40.0, 0), (36.0, 0), (FAIL_ANGLE, 1), (37.5, 1), (217.0, 1)):
        turned = transform(x, GroupElement(angle))
        assert model.orientation(turned).item() == pytest.approx(((angle + 90) % 180) - 90, abs=0.2)
        assert model(turned).argmax(-1).item() == wins, angle


def test_refine_finds_the_narrow_failure_and_the_grid_does_not() -> None:
    res = audit(NarrowFailure(), _bars(), "so2:36", search="refine", samples=0)
    grid, refine = res.search["methods"]
    assert grid["method"] == "grid" and grid["worst_case_accuracy"] == 1.0
    assert res.summary["worst_case_accuracy"] == 1.0  # the grid alone sees no failure
    assert refine["method"] == "refine" and refine["worst_case_accuracy"] == 0.0
    worst = res.search["worst"]
    assert worst["grid"]["angle"] == [40.0] * 4  # the grid's closest element, 3 degrees away
    for angle, obj in zip(worst["refine"]["angle"], worst["refine"]["objective"], strict=True):
        assert abs(((angle - FAIL_ANGLE + 90) % 180) - 90) < 1.0 and obj < 0
    rounds = res.search["rounds"]
    assert rounds == 24 // 2  # the default budget, one parameter: two forwards a round
    assert refine["extra_forwards"] == 4 * (2 * rounds + 1)  # + one floor forward per image
    assert refine["worst_case_error"] > grid["worst_case_error"]


def test_random_is_reproducible_and_independent_of_the_batch_size() -> None:
    data = _bars(6)
    runs = [
        audit(NarrowFailure(), data, "rot:-60..60:13", search="random:8", batch_size=b, samples=0).search
        for b in (7, 40)
    ]
    assert runs[0]["worst"] == runs[1]["worst"]
    a, b = runs[0]["methods"][1], runs[1]["methods"][1]
    assert a["method"] == "random:8" and a["extra_forwards"] == 6 * (8 + 1)
    for key in ("accuracy_mean", "worst_case_accuracy", "worst_case_error"):
        assert a[key] == b[key]
    # the worst of image 3 is one of its own draws
    axes = parameter_box(parse_group("rot:-60..60:13"))
    drawn = {round(g.angle, 6) for g in random_elements(axes, [False], index=3, k=8)}
    assert runs[0]["worst"]["random:8"]["angle"][3] in drawn


def test_unlabelled_search_maximises_the_error_and_follows_the_schema() -> None:
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    res = audit(SmallCNN(), x, "rot:-30..30:5*translate:-2..2:3", search="random:4,refine", search_budget=6)
    assert res.search["objective"] == "invariance_error" and res.search["rounds"] == 1
    grid, rnd, refine = res.search["methods"]
    assert "worst_case_accuracy" not in grid and "accuracy_mean" not in rnd  # no labels
    assert (rnd["extra_forwards"], refine["extra_forwards"]) == (3 * (4 + 1), 3 * (1 * 2 * 3 + 1))
    # refine starts from the grid's worst and only keeps improvements: never below the grid's error there
    g_err, r_err = res.search["worst"]["grid"]["chosen_error"], res.search["worst"]["refine"]["chosen_error"]
    assert all(r >= g - 1e-6 for g, r in zip(g_err, r_err, strict=True))
    assert refine["worst_case_error"] >= grid["worst_case_error"] - 1e-6
    doc = json.loads(res.to_json())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(doc)
    assert AuditResult.from_dict(doc).search == doc["search"]


def test_searches_need_a_classifier() -> None:
    from _models import Identity

    with pytest.raises(OptionError, match="classifier"):
        audit(Identity(), torch.rand(2, 1, 8, 8), "c4", task="dense", search="refine", samples=0)


# ---- checks fail on the worst case ---------------------------------------------------------------------------


def test_check_with_refine_fails_on_the_worst_case() -> None:
    inputs = bars(3)
    report, failures = check_equivariance(NarrowFailure(), "so2:36", inputs, max_error=0.5)
    assert not failures and report.max_error < 0.5  # every grid element holds
    report, failures = check_equivariance(NarrowFailure(), "so2:36", inputs, max_error=0.5, search="refine")
    assert [f.element.label for f in failures] == ["worst of refine"]
    assert failures[0].element.error > 1.0


def test_plugin_check_with_search(pytester: pytest.Pytester) -> None:
    from pathlib import Path

    pytester.syspathinsert(Path(__file__).parent)
    pytester.makepyfile(
        """
        from _search_models import NarrowFailure, bars

        def test_grid(equivariance):
            equivariance.check(NarrowFailure(), "so2:36", bars(2), max_error=0.5)

        def test_refine(equivariance):
            equivariance.check(NarrowFailure(), "so2:36", bars(2), max_error=0.5, search="refine")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*worst of refine: error*"])


# ---- where it shows: the command line and the report ---------------------------------------------------------


def test_cli_prints_the_search_table_and_rejects_a_bad_search(tmp_path) -> None:
    from equiaudit.cli import app
    from typer.testing import CliRunner

    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.save(SmallCNN().state_dict(), path)
    common = ["scan", str(path), "--arch", "_models:SmallCNN", "--limit", "4", "--samples", "0"]
    runner = CliRunner()
    res = runner.invoke(app, [*common, "-g", "rot:-10..10:3*translate-x:-1..1:3", "--search", "random:3,refine"])
    assert res.exit_code == 0, res.stderr
    assert "worst case per image" in res.stdout and "random:3" in res.stdout and "consistency=" in res.stdout
    bad = runner.invoke(app, [*common, "--search", "best"])
    assert bad.exit_code == 2 and "unknown search 'best'" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    doc = json.loads(runner.invoke(app, [*common, "-g", "c4", "--search", "refine", "--json"]).stdout)
    assert doc["run"]["spec"]["search"] == "refine" and doc["search"]["methods"][1]["method"] == "refine"


def test_report_heatmap_and_search_charts_show_the_result_numbers() -> None:
    from equiaudit.reports.spatial import heatmap_figure, search_charts, search_table

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    data = AuditData.from_tensors(x, torch.tensor([0, 1, 2, 3]))
    res = audit(SmallCNN(), data, "rot:-20..20:3*translate:-1..1:3", search="random:2,refine", search_budget=6)
    fig = heatmap_figure(res)
    (heat,) = fig.data
    assert list(heat.x) == [-20.0, 0.0, 20.0] and len(heat.y) == 9
    frame = res.elements
    for r, label in enumerate(heat.y):
        dx, dy = (float(v) for v in label.strip("()").split(","))
        for c, angle in enumerate(heat.x):
            row = frame[(frame["angle"] == angle) & (frame["dx"] == dx) & (frame["dy"] == dy)]
            assert heat.z[r][c] == pytest.approx(float(row["accuracy"].iloc[0]))
    ids = [c.id for c in search_charts(res)]
    assert ids == ["chart-heatmap", "chart-search", "chart-worst-elements"]
    table = search_table(res)
    assert [row[0].text for row in table.rows] == ["grid", "random:2", "refine"]
    # translations alone: dx across, dy down; a group without shifts has no heatmap
    only = audit(SmallCNN(), data, "translate:-1..1:3", samples=0)
    assert heatmap_figure(only).data[0].x == (-1.0, 0.0, 1.0)
    assert heatmap_figure(audit(SmallCNN(), data, "c4", samples=0)) is None


def test_report_renders_offline_with_the_search(tmp_path) -> None:
    from equiaudit.reports import write_report

    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    res = audit(SmallCNN(), AuditData.from_tensors(x, torch.tensor([1, 2, 3])), "rot:-10,0,10*translate-x:-1,0,1",
                search="refine", search_budget=4, samples=1)  # fmt: skip
    html = write_report(res, tmp_path / "r.html").read_text()
    for needle in ("chart-heatmap", "chart-search", "chart-worst-elements", "numbers-search", "refine"):
        assert needle in html
    assert "cdn.plot.ly" not in html and '<script src="http' not in html


def test_consistency_from_the_pass_matches_the_predictions_pair_by_pair() -> None:
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    model = SmallCNN()
    runs = [audit(model, x, "rot:-40..40:5*translate-x:-2,0,2", batch_size=b, samples=1) for b in (4, 64)]
    pred = runs[0].records["pred"]  # (N, G) the predicted class of every image under every element
    g = pred.shape[1]
    by_hand = np.mean([np.mean([pred[n, i] == pred[n, j] for i in range(g) for j in range(g) if i != j])
                       for n in range(len(pred))])  # fmt: skip
    assert runs[0].summary["consistency"] == pytest.approx(by_hand, abs=1e-12)
    assert runs[1].summary["consistency"] == runs[0].summary["consistency"]  # independent of the batch size
    lo, hi = runs[0].summary["consistency_low"], runs[0].summary["consistency_high"]
    assert 0 <= lo <= by_hand <= hi <= 1
