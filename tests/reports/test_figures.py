"""The figures plot the result's own numbers, on the axis the group calls for; the verdict reads them right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _report_models import RotAveraged
from equiaudit.reports import figures, verdict
from equiaudit.reports.correctness import CorrectnessMatrix, correctness_matrix


def _pairs(trace) -> set[tuple]:
    return {(x, None if y is None else round(float(y), 12)) for x, y in zip(trace.x, trace.y, strict=True)}


def _expected(result, col: str, wraps: bool = True, rows=None) -> set[tuple]:
    frame = result.elements if rows is None else result.elements[rows]
    return {
        (float(a) % 360 if wraps else float(a), round(float(v), 12))
        for a, v in zip(frame["angle"], frame[col], strict=True)
    }


def _trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


@pytest.mark.parametrize(
    ("fixture", "kind", "wraps"),
    [
        ("so2_result", "angle", True),
        ("c4_result", "angle", True),
        ("d4_result", "angle", True),
        ("scale_result", "scale", True),
        ("dense_result", "category", True),
        ("seg_result", "angle", True),
    ],
)
def test_element_axis_follows_the_group(request, fixture, kind, wraps):
    axis = figures.element_axis(request.getfixturevalue(fixture))
    assert (axis.kind, axis.wraps) == (kind, wraps)


def test_signed_angles_for_rot_ranges(cnn):
    from equiaudit.engine import audit

    result = audit(cnn, "digits", "rot:-30..30:5", limit=4, samples=0, device="cpu")
    axis = figures.element_axis(result)
    assert (axis.kind, axis.wraps) == ("angle", False)
    trace = _trace(figures.error_figure(result), "mean over images")
    assert list(trace.x) == [-30.0, -15.0, 0.0, 15.0, 30.0]  # sorted, signed
    assert _pairs(trace) == _expected(result, "invariance_error", wraps=False)


@pytest.mark.parametrize("fixture", ["so2_result", "c4_result", "seg_result"])
def test_error_chart_points_are_the_results_numbers(request, fixture):
    result = request.getfixturevalue(fixture)
    key = figures.error_key(result)
    fig = figures.error_figure(result)
    assert _pairs(_trace(fig, "mean over images")) == _expected(result, key)
    assert _pairs(_trace(fig, "worst image")) == _expected(result, f"{key}_max")
    assert _pairs(_trace(fig, "interpolation floor")) == _expected(result, "floor")
    assert _trace(fig, "worst image").visible == "legendonly"
    xs = list(_trace(fig, "mean over images").x)
    assert xs == sorted(xs) and fig.layout.xaxis.type is None


def test_round_off_errors_are_drawn_against_the_round_off_band(c4_result, so2_result):
    exact = figures.error_figure(c4_result)
    tol = verdict.roundoff(c4_result.run.dtype, c4_result.run.device)
    assert max(_trace(exact, "mean over images").y) < tol
    assert list(exact.layout.yaxis.range) == [0, 2 * tol] and len(exact.layout.shapes) == 1
    assert not figures.error_figure(so2_result).layout.shapes


def test_reflections_are_a_second_series_on_the_angle_axis(d4_result):
    fig = figures.error_figure(d4_result)
    mirrored = d4_result.elements["reflect"].astype(bool)
    assert _pairs(_trace(fig, "mean over images")) == _expected(d4_result, "invariance_error", rows=~mirrored)
    assert _pairs(_trace(fig, "mean over images · mirrored")) == _expected(d4_result, "invariance_error", rows=mirrored)


def test_scale_axis_is_logarithmic(scale_result):
    fig = figures.agreement_figure(scale_result)
    assert fig.layout.xaxis.type == "log"
    trace = _trace(fig, "accuracy")
    assert list(trace.x) == sorted(scale_result.elements["scale"])
    assert list(trace.y) == pytest.approx(scale_result.elements.sort_values("scale")["accuracy"].tolist())


def test_category_axis_draws_bars_in_group_order(dense_result):
    fig = figures.error_figure(dense_result)
    bars = _trace(fig, "mean over images")
    assert bars.type == "bar"
    assert list(bars.x) == dense_result.elements["label"].tolist()
    assert list(bars.y) == pytest.approx(dense_result.elements["equivariance_error"].tolist())


def test_polar_chart_closes_the_circle(so2_result):
    fig = figures.polar_figure(so2_result)
    trace = _trace(fig, "invariance error")
    assert trace.theta[0] == trace.theta[-1] and trace.r[0] == trace.r[-1]
    got = {(t, round(r, 12)) for t, r in zip(trace.theta[:-1], trace.r[:-1], strict=True)}
    assert got == _expected(so2_result, "invariance_error")
    assert fig.layout.polar.angularaxis.direction == "counterclockwise"


def test_agreement_chart_and_reference_accuracy(so2_result):
    fig = figures.agreement_figure(so2_result)
    assert _pairs(_trace(fig, "agreement with untransformed prediction")) == _expected(so2_result, "agreement")
    assert _pairs(_trace(fig, "accuracy")) == _expected(so2_result, "accuracy")
    ref = _trace(fig, "accuracy untransformed")
    assert set(ref.y) == {so2_result.summary["accuracy_reference"]}


def test_kl_and_dense_charts(so2_result, seg_result, dense_result):
    kl = [t for t in figures.kl_figure(so2_result).data if t.fill != "toself"]  # the line, not its interval band
    assert _pairs(kl[0]) == _expected(so2_result, "kl")
    iou = figures.iou_figure(seg_result)
    assert _pairs(_trace(iou, "IoU with untransformed prediction")) == _expected(seg_result, "iou_consistency")
    assert _pairs(_trace(iou, "IoU with true masks")) == _expected(seg_result, "iou_truth")
    assert set(_trace(iou, "IoU with true masks, untransformed").y) == {seg_result.summary["iou_truth_reference"]}
    bars = figures.max_abs_figure(dense_result).data[0]
    assert list(bars.y) == pytest.approx(dense_result.elements["max_abs_error"].tolist())


def test_per_class_heatmap_puts_the_weakest_classes_first(so2_result):
    fig = figures.per_class_figure(so2_result)
    heat = fig.data[0]
    pc = so2_result.per_class
    table = pd.DataFrame(pc["accuracy"], columns=pc["classes"]).T  # class x element id
    labels = so2_result.elements["label"].tolist()
    assert [labels.index(x) for x in heat.x] == sorted(
        range(len(labels)), key=lambda i: so2_result.elements["angle"][i] % 360
    )
    for row, cls in zip(heat.z, heat.y, strict=True):
        assert list(row) == pytest.approx([table.loc[cls, labels.index(x)] for x in heat.x])
    rest = [i for i, lab in enumerate(labels) if lab != "identity"]
    present = [c for c, n in zip(pc["classes"], pc["support"], strict=True) if n > 0]
    means = table.loc[present, rest].mean(axis=1)
    assert list(heat.y) == list(means.sort_values(kind="stable").index)


def test_comparison_overlays_each_model_and_shares_one_floor(so2_result, cnn):
    from equiaudit.engine import audit

    other = audit(RotAveraged(cnn), "digits", "so2:12", limit=32, samples=0, device="cpu")
    fig = figures.error_figure([so2_result, other], ["a", "b"])
    assert _pairs(_trace(fig, "a: mean over images")) == _expected(so2_result, "invariance_error")
    assert _pairs(_trace(fig, "b: mean over images")) == _expected(other, "invariance_error")
    # a classifier's floor is in the units of its own output (its logits), so each model has its own, named
    assert _pairs(_trace(fig, "interpolation floor (a)")) == _expected(so2_result, "floor")
    assert _pairs(_trace(fig, "interpolation floor (b)")) == _expected(other, "floor")

    trade = figures.tradeoff_figure([so2_result, other], ["a", "b"])
    params = [r.model.parameters for r in (so2_result, other)]
    absolute = [t for t in trade.data if t.name in ("a", "b")]
    assert [t.x[0] for t in absolute] == params
    assert [t.y[0] for t in absolute] == [r.summary["accuracy_mean"] for r in (so2_result, other)]
    errors = [t for t in trade.data if t.xaxis == "x2"]
    assert [t.y[0] for t in errors] == [r.summary["invariance_error_mean"] for r in (so2_result, other)]
    ratios = [t for t in trade.data if t.xaxis == "x4"]
    assert ratios[0].y[0] == pytest.approx(1.0)
    assert ratios[1].y[0] == pytest.approx(
        other.summary["invariance_error_mean"] / so2_result.summary["invariance_error_mean"]
    )


@pytest.mark.parametrize("seed", range(3))
def test_correctness_matrix_from_predictions(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(50) < 0.6, rng.random(50) < 0.5
    m = CorrectnessMatrix.from_predictions(a, b, names=("x", "y"), examples=3)
    assert m.counts == {
        "both_right": int(np.sum(a & b)),
        "only_a": int(np.sum(a & ~b)),
        "only_b": int(np.sum(~a & b)),
        "both_wrong": int(np.sum(~a & ~b)),
    }
    assert m.total == 50
    for cell, idx in m.examples.items():
        assert len(idx) <= 3 and all(
            {"both_right": a & b, "only_a": a & ~b, "only_b": ~a & b, "both_wrong": ~a & ~b}[cell][i] for i in idx
        )
    fig = figures.correctness_figure(m)
    assert [list(r) for r in fig.data[0].z] == [
        [m.counts["both_right"], m.counts["only_a"]],
        [m.counts["only_b"], m.counts["both_wrong"]],
    ]


def test_correctness_matrix_of_real_models(cnn):
    import torch

    from equiaudit.data import load_data

    data = load_data("digits", limit=40)
    mats = correctness_matrix(cnn, RotAveraged(cnn), data, "c4", names=("cnn", "avg"), device="cpu")
    assert [m.element for m in mats] == ["identity", "rot90", "rot180", "rot-90"]
    batch = next(iter(data.batches(40)))
    with torch.inference_mode():
        right_avg = (RotAveraged(cnn)(batch.x).argmax(-1) == batch.y).numpy()
    for k, m in enumerate(mats):
        with torch.inference_mode():
            right_cnn = (cnn(torch.rot90(batch.x, k, dims=(-2, -1))).argmax(-1) == batch.y).numpy()
        # The averaged model is exactly invariant: its column is the same under every element.
        assert m.counts["both_right"] + m.counts["only_b"] == int(right_avg.sum())
        assert m.counts["both_right"] + m.counts["only_a"] == int(right_cnn.sum())
        assert m.total == 40
        for cell, imgs in m.example_images.items():
            assert imgs.shape[0] == len(m.examples[cell])
            # The audit keeps the views the models saw in float16.
            expect = torch.rot90(batch.x[m.examples[cell]], k, dims=(-2, -1)).half().float().numpy()
            np.testing.assert_allclose(imgs, expect)


def test_correctness_matrix_needs_labels(cnn):
    import torch

    from equiaudit.errors import DataError

    with pytest.raises(DataError, match="labelled"):
        correctness_matrix(cnn, cnn, torch.rand(4, 1, 28, 28))


# ---- verdict --------------------------------------------------------------------------------------------------


def test_verdict_of_an_exactly_invariant_model(c4_result):
    v = verdict.verdict(c4_result)
    # exact, but on digits, whose black corners never vary: the verdict says "on this data" and warns
    assert v.status == "warn"
    assert v.sentence.startswith(
        "Exactly invariant to C4 on this data (24 images of digits): outputs match to float32 round-off; but "
    )
    assert {h.key for h in v.headlines} >= {"agreement", "invariance_error", "accuracy", "worst_case_accuracy"}
    assert all(h.status == "pass" for h in v.headlines if h.key != "coverage")


def test_verdict_names_the_worst_element_with_the_results_numbers(so2_result):
    v = verdict.verdict(so2_result)
    rest = so2_result.elements[so2_result.elements["label"] != "identity"]
    worst = rest.loc[rest["agreement"].idxmin()]
    card = next(h for h in v.headlines if h.key == "agreement")
    changed = verdict.fmt_pct(1 - worst["agreement"])
    assert card.sentence.startswith(
        f"The prediction changes for {changed} of images at {worst['angle'] % 360:g}° (the lowest agreement: "
    )
    assert worst["agreement_high"] < verdict.AGREEMENT_WARN and card.status == "fail"  # the interval rules out warn
    assert v.status == "fail"
    assert v.sentence.startswith("Not invariant to SO(2) rotations (12 angles) on this data (32 images of digits): ")


def test_segmentation_verdict_uses_iou(seg_result):
    v = verdict.verdict(seg_result)
    card = next(h for h in v.headlines if h.key == "iou_consistency")
    assert card.value.startswith(f"{seg_result.elements['iou_consistency'].min():.3f}")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0%"),
        (1.0, "100%"),
        (0.234, "23.4%"),
        (0.9996, "99.96%"),
        (0.00004, "0.004%"),
        (1e-9, "<0.001%"),
        (1 - 1e-9, ">99.999%"),
        (0.5, "50%"),
    ],
)
def test_fmt_pct_never_rounds_to_a_false_extreme(value, text):
    assert verdict.fmt_pct(value) == text


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("c4", "C4"),
        ("d8", "D8"),
        ("so2:36", "SO(2) rotations (36 angles)"),
        ("scale:0.5..2:5", "5 scalings from 0.5× to 2×"),
        ("c4*flip", "C4 × horizontal flip"),
    ],
)
def test_group_names(spec, name):
    assert verdict.group_name(spec) == name


def test_element_phrases():
    row = {"label": "rot-45", "angle": -45.0, "scale": 1.0, "reflect": False}
    assert verdict.element_phrase(row, wraps=True) == "at 315°"
    assert verdict.element_phrase(row, wraps=False) == "at -45°"
    assert verdict.element_phrase({**row, "angle": 0.0, "scale": 1.25}) == "at scale 1.25×"
    assert (
        verdict.element_phrase({**row, "label": "hflip*rot90", "angle": 90.0, "reflect": True}) == "under hflip*rot90"
    )
    assert (
        verdict.element_name(row) == "315°"
        and verdict.element_name({**row, "angle": 0.0, "label": "identity"}) == "identity"
    )
    assert verdict.element_name({**row, "angle": 0.0, "scale": 0.8, "label": "scale0.8"}) == "0.8×"
    assert verdict.element_name({**row, "angle": 90.0, "scale": 0.8, "label": "rot90*scale0.8"}) == "rot90*scale0.8"
    assert (
        verdict.roundoff("float64", "cpu") < verdict.roundoff("float32", "cpu") < verdict.roundoff("float32", "cuda:0")
    )


def test_the_failing_clause_leads_the_verdict() -> None:
    from equiaudit.result import AuditResult, DataInfo, GroupInfo, ModelInfo, RunInfo

    rows = [
        {
            "id": 0,
            "label": "identity",
            "angle": 0.0,
            "scale": 1.0,
            "reflect": False,
            "exact": True,
            "equivariance_error": 0.0,
            "floor": 0.0,
        },
        {
            "id": 1,
            "label": "rot90",
            "angle": 90.0,
            "scale": 1.0,
            "reflect": False,
            "exact": True,
            "equivariance_error": 1e-8,
            "floor": 0.0,
        },
        {
            "id": 2,
            "label": "rot45",
            "angle": 45.0,
            "scale": 1.0,
            "reflect": False,
            "exact": False,
            "equivariance_error": 0.3,
            "floor": 0.03,
        },
    ]
    run = RunInfo(
        spec={"group": "rot:0,90,45"},
        task="dense",
        task_auto=False,
        output_shape=[],
        batch_size=None,
        batch_size_auto=True,
        floor_images=0,
        mask_fraction=None,
        device="cpu",
        dtype="float32",
        versions={},
    )
    parts = (ModelInfo("model"), DataInfo("data", 0), GroupInfo("rot:0,90,45", 3, exact=False), run)
    v = verdict.verdict(AuditResult(pd.DataFrame(rows), {"exact_group": False}, *parts))
    assert v.status == "fail"
    reason = v.sentence.split(": ", 1)[1]
    # the exact element holds (it matches to round-off): that is never quoted as the reason of a failure
    assert reason.startswith("1 of 1 interpolated elements are above their interpolation floor")
    assert "round-off" not in reason
    card = next(h for h in v.headlines if h.key == "equivariance_error")
    assert "version-1 result has no intervals, so the old rule" in card.sentence  # no floor_high: says so
