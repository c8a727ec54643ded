"""What a report shows beside its charts: intervals as bands, numbers in tables (also without scripts),
exact / interpolated counts, model-card titles, per-model predictions, and pictures that cannot mislead."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from _report_models import RotAveraged
from equiaudit.reports import default_names, figures, write_comparison, write_report
from equiaudit.reports import gallery as gal
from equiaudit.reports.correctness import matrices_from_results
from equiaudit.reports.render import render_report
from PIL import Image
from torch import nn

from equiaudit.engine import audit
from equiaudit.result import AuditResult


def _trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def _sorted(result):
    frame = result.elements.assign(_x=result.elements["angle"] % 360)
    return frame.sort_values("_x", kind="stable")


def _band_matches(band, frame, col: str) -> None:
    xs = frame["_x"].tolist()
    assert band.fill == "toself" and list(band.x) == xs + xs[::-1]
    assert list(band.y) == pytest.approx(frame[f"{col}_high"].tolist() + frame[f"{col}_low"].tolist()[::-1])


def test_every_metric_with_an_interval_is_drawn_with_its_band(so2_result) -> None:
    frame = _sorted(so2_result)
    error = figures.error_figure(so2_result)
    _band_matches(_trace(error, "mean over images · 95% interval"), frame, "invariance_error")
    _band_matches(_trace(error, "interpolation floor · 95% interval"), frame, "floor")
    agree = figures.agreement_figure(so2_result)
    _band_matches(_trace(agree, "agreement with untransformed prediction · 95% interval"), frame, "agreement")
    _band_matches(_trace(agree, "accuracy · 95% interval"), frame, "accuracy")
    polar = _trace(figures.polar_figure(so2_result), "invariance error · 95% interval")
    assert polar.fill == "toself" and len(polar.r) == 2 * (len(frame) + 1)  # the closed loop, out and back
    # every chart that plots a metric with an interval has a band for it
    for chart in figures.report_charts(so2_result):
        names = {t.name for t in chart.figure.data}
        for t in chart.figure.data:
            col = {
                "mean over images": "invariance_error",
                "agreement with untransformed prediction": "agreement",
                "accuracy": "accuracy",
            }.get(t.name)
            if col is not None:
                assert f"{t.name} · 95% interval" in names, (chart.id, t.name)


def test_bars_get_error_bars(dense_result) -> None:
    bars = _trace(figures.error_figure(dense_result), "mean over images")
    frame = dense_result.elements
    assert list(bars.error_y.array) == pytest.approx(
        (frame["equivariance_error_high"] - frame["equivariance_error"]).clip(lower=0).tolist()
    )
    assert list(bars.error_y.arrayminus) == pytest.approx(
        (frame["equivariance_error"] - frame["equivariance_error_low"]).clip(lower=0).tolist()
    )


def test_polar_tick_labels_stay_off_the_data(so2_result) -> None:
    fig = figures.polar_figure(so2_result)
    radial = fig.layout.polar.radialaxis
    assert radial.showticklabels is False  # inside the circle any label would sit on the curve somewhere
    rings = list(radial.tickvals)
    (note,) = fig.layout.annotations
    assert note.x >= fig.layout.polar.domain.x[1] and note.xref == "paper"  # beside the circle, not on it
    assert note.text.split("<br>")[-len(rings) :] == [f"{t:.3g}" for t in rings]
    assert rings[-1] <= radial.range[1]


def test_long_names_are_not_written_into_subplot_titles(so2_result, c4_result) -> None:
    long = "tests/test_models.py::test_a_very_long_parametrised_id[resnet-c4-float32]"
    fig = figures.tradeoff_figure([so2_result, c4_result], [long, "b"])
    assert all(long not in a.text for a in fig.layout.annotations)


def test_every_report_has_a_numbers_table_with_intervals_and_kinds(so2_result, seg_result) -> None:
    html = render_report(so2_result)
    table = re.search(r'<section class="numbers" id="numbers">(.*?)</section>', html, re.S)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    assert len(rows) == len(so2_result.elements)
    kinds = [re.findall(r"<td>(exact|interpolated)</td>", r)[0] for r in rows]
    assert kinds.count("exact") == int(so2_result.elements["exact"].sum()) == 4
    assert table.count("±") >= 3 * len(rows) - 3
    first = so2_result.elements.iloc[1]
    hw = max(
        first["invariance_error_high"] - first["invariance_error"],
        first["invariance_error"] - first["invariance_error_low"],
    )
    assert f"{first['invariance_error']:.3g} ±{hw:.2g}" in table
    assert "12 (4 exact, 8 interpolated)" in html  # not "12 (interpolated)"
    seg = re.search(r'id="numbers">(.*?)</section>', render_report(seg_result), re.S)[1]
    assert "IoU consistency" in seg and "equivariance error (mean)" in seg


def test_pages_say_so_when_scripts_are_blocked(so2_result, c4_result, tmp_path) -> None:
    for html in (
        render_report(so2_result),
        write_comparison([so2_result, c4_result], tmp_path / "c.html", names=["a", "b"]).read_text(),
    ):
        note = re.search(r"<noscript>(.*?)</noscript>", html, re.S)[1]
        assert "section.charts" in note and "display: none" in note
        assert "Every number they show is in the tables on this page" in note


def test_comparison_has_a_side_by_side_table(so2_result, cnn, tmp_path) -> None:
    other = audit(RotAveraged(cnn), "digits", "so2:12", limit=32, samples=0, device="cpu")
    html = write_comparison([so2_result, other], tmp_path / "c.html", names=["plain", "averaged"]).read_text()
    table = re.search(r'<section class="numbers" id="numbers-compare">(.*?)</section>', html, re.S)[1]
    header = re.findall(r'<th scope="col">(.*?)</th>', table)
    assert header == ["", "plain", "averaged"]
    row = re.search(r'<th scope="row">invariance error, mean over elements</th>(.*?)</tr>', table, re.S)[1]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert [c.split(" ")[0] for c in cells] == [
        f"{r.summary['invariance_error_mean']:.3g}" for r in (so2_result, other)
    ]
    per_element = re.search(r'id="numbers-elements">(.*?)</section>', html, re.S)[1]
    assert "plain: error" in per_element and "averaged: agreement" in per_element


def test_correctness_examples_show_what_each_model_predicted(cnn) -> None:
    a = audit(cnn, "digits", "rot:0,90", limit=24, samples=24, device="cpu")
    b = audit(RotAveraged(cnn), "digits", "rot:0,90", limit=24, samples=24, device="cpu")
    mats = matrices_from_results(a, b, names=("cnn", "avg"))
    rows = {int(i): r for r, i in enumerate(a.records["index"])}
    seen = 0
    for j, m in enumerate(mats):
        for cell, shown in m.examples.items():
            for k, image in enumerate(shown):
                want = (int(a.records["pred"][rows[image], j]), int(b.records["pred"][rows[image], j]))
                assert tuple(m.example_predictions[cell][k]) == want
                seen += 1
        assert m.to_dict()["example_predictions"] == {k: [list(p) for p in v] for k, v in m.example_predictions.items()}
    assert seen
    g = gal.correctness_gallery(mats, gal.Budget(10**8))
    captions = [c.caption for row in g.rows for c in row.cells]
    assert captions and all(re.fullmatch(r"true \d · cnn: \d · avg: \d", c) for c in captions)


def test_titles_use_the_model_cards_name(so2_result) -> None:
    doc = json.loads(so2_result.to_json())
    doc["model"].update(source="zoo:gcnn-c4", info={"card_version": 1, "name": "gcnn-c4", "model": {}})
    carded = AuditResult.from_dict(doc)
    html = render_report(carded)
    title = re.search(r"<title>(.*?)</title>", html)[1]
    assert title == "gcnn-c4 on digits under SO(2) rotations (12 angles)"
    assert "zoo:gcnn-c4 · so2:12" not in html
    assert default_names([carded, so2_result]) == ["gcnn-c4", "TinyCNN"]


def _png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


def test_the_segmentation_overlay_reads_on_a_blue_texture() -> None:
    rng = np.random.default_rng(0)
    blue = np.stack(
        [rng.integers(20, 50, (32, 32)), rng.integers(60, 110, (32, 32)), rng.integers(200, 250, (32, 32))], -1
    )
    seg = np.zeros((32, 32), np.uint8)
    seg[8:24, 8:24] = 1
    out = gal.mask_overlay(blue.astype(np.uint8), seg, None, None).astype(float)
    inner = np.zeros_like(seg, bool)
    inner[10:22, 10:22] = True
    outside = seg == 0
    outside[6:26, 6:26] = False
    gap = np.linalg.norm(out[inner].mean(0) - out[outside].mean(0))
    assert gap > 60, gap  # foreground and background differ clearly (a blue tint on blue: about 20)
    edge = gal._edges(seg)
    assert (out[edge & (seg > 0)] == gal.OUTLINE).all() and (out[edge & (seg == 0)] == gal.OUTLINE_OUTER).all()


def _gaussian_blur(k: int = 5) -> nn.Module:
    """A blur whose kernel is symmetric under quarter turns: equivariant under C4 up to summation round-off."""
    conv = nn.Conv2d(1, 1, k, padding=k // 2, bias=False)
    r = torch.arange(k) - k // 2
    with torch.no_grad():
        conv.weight.copy_(torch.exp(-(r[:, None] ** 2 + r[None] ** 2).float() / 2)[None, None])
    return conv.eval()


def test_round_off_error_maps_stay_dark_on_one_shared_scale() -> None:
    exact = audit(_gaussian_blur(), "digits", "c4", task="dense", limit=8, samples=4, device="cpu")
    largest = exact.elements["equivariance_error_max"].max()
    assert 0 < largest < 1e-5  # float32 round-off only, but not exactly 0
    galleries = gal.report_galleries(exact, gal.Budget(10**8))
    assert galleries and len({g.scale for g in galleries}) == 1 and "round-off" in galleries[0].scale
    for g in galleries:
        for book in g.flipbooks:
            for frame in book.frames[1:]:
                assert _png(frame.src).max() < 40  # noise at 1e-7 is not drawn as structure


def test_dense_maps_share_one_stated_scale(dense_result, tmp_path) -> None:
    galleries = gal.report_galleries(dense_result, gal.Budget(10**8))
    scales = {g.scale for g in galleries}
    assert len(scales) == 1 and "shared by every image and element" in scales.pop()
    assert all("colour scale" not in b.heading for g in galleries for b in g.flipbooks)  # no per-image scale
    html = write_report(dense_result, tmp_path / "dense.html").read_text()
    assert 'class="colour-scale"' in html and "shared by every image and element" in html
