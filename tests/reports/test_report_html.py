"""Reports are self-contained, deterministic, small, and show what the result holds."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from _report_models import Ramp, TinyCNN
from equiaudit.reports import gallery as gal
from equiaudit.reports import write_comparison, write_report
from equiaudit.reports.render import MAX_BYTES, check_result, figure_json, render_report
from PIL import Image

from equiaudit.engine import audit
from equiaudit.errors import EquiauditError, ResultFormatError
from equiaudit.result import AuditResult, load


def _figures(html: str) -> dict[str, dict]:
    return {
        m[1]: json.loads(m[2].replace("<\\/", "</"))
        for m in re.finditer(r'<script type="application/json" id="fig-data-([\w-]+)">(.*?)</script>', html, re.S)
    }


def _png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.mark.parametrize(
    "fixture", ["so2_result", "c4_result", "d4_result", "scale_result", "seg_result", "dense_result"]
)
def test_report_is_self_contained_and_embeds_plotly_once(request, fixture, tmp_path):
    result = request.getfixturevalue(fixture)
    path = write_report(result, tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    assert html.count('id="plotly-js-gz"') == 1
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing to fetch
    assert "<script src" not in html
    charts = re.findall(r'<div class="chart" id="([\w-]+)" data-figure="fig-data-\1">', html)
    status = re.search(r'<div id="equiaudit-status"[^>]*data-charts="(\d+)"', html)
    assert int(status[1]) == len(charts) == len(_figures(html)) >= 2
    assert path.stat().st_size < MAX_BYTES
    assert (tmp_path / "r.json").exists()


def test_charts_in_the_page_hold_the_results_numbers(so2_result, tmp_path):
    html = write_report(so2_result, tmp_path / "r.html").read_text(encoding="utf-8")
    figs = _figures(html)
    assert set(figs) >= {"chart-error", "chart-polar", "chart-agreement", "chart-kl", "chart-per-class"}
    mean = next(t for t in figs["chart-error"]["data"] if t["name"] == "mean over images")
    frame = so2_result.elements.assign(x=so2_result.elements["angle"] % 360).sort_values("x")
    assert mean["x"] == frame["x"].tolist()
    assert mean["y"] == pytest.approx(frame["invariance_error"].tolist(), rel=0, abs=0)


def test_same_result_gives_identical_html(so2_result, tmp_path):
    a = render_report(so2_result)
    b = render_report(so2_result)
    assert a == b
    write_report(so2_result, tmp_path / "one.html")
    reloaded = load(tmp_path / "one.json")  # results JSON + samples sidecar beside the report
    assert render_report(reloaded) == a


def test_results_json_beside_the_report_round_trips(seg_result, tmp_path):
    write_report(seg_result, tmp_path / "seg.html")
    back = load(tmp_path / "seg.json")
    assert back.to_dict() == json.loads(seg_result.to_json())
    assert set(back.samples) == set(seg_result.samples)
    np.testing.assert_array_equal(back.samples["worst"]["seg"], seg_result.samples["worst"]["seg"])


def test_report_path_must_not_be_its_own_json(so2_result, tmp_path):
    with pytest.raises(EquiauditError, match=r"\.json"):
        write_report(so2_result, tmp_path / "r.json")


def test_report_without_samples_says_so(so2_result, tmp_path):
    plain = AuditResult.from_dict(json.loads(so2_result.to_json()))
    html = render_report(plain)
    assert "No sample images" in html and 'class="tile' not in html


def test_verdict_strip_comes_first_and_carries_the_sentence(c4_result):
    html = render_report(c4_result)
    assert html.index('id="verdict"') < html.index('id="charts"')
    assert "Exactly invariant to C4 on this data (24 images of digits): outputs match to float32 round-off" in html
    assert 'class="verdict status-warn"' in html  # digits' constant corners: a caution


def test_partial_and_checks_banners(so2_result):
    doc = json.loads(so2_result.to_json())
    doc["run"]["partial"] = True
    doc["run"]["checks"] = {
        "fail_above": {"invariance_error": 0.01},
        "fail_below": {},
        "failures": ["invariance_error = 0.3 exceeds 0.01"],
        "passed": False,
    }
    html = render_report(AuditResult.from_dict(doc))
    assert "Partial result" in html and "Checks failed" in html and "invariance_error = 0.3 exceeds 0.01" in html


# ---- galleries ------------------------------------------------------------------------------------------------


def test_classification_tiles_are_the_transformed_inputs(c4_result):
    budget = gal.Budget(10**8)
    g = gal.classification_gallery(c4_result, "first", budget, "g", "t", "c")
    s = c4_result.samples["first"]
    assert list(g.columns) == ["identity", "90°", "180°", "270°"]
    assert len(g.rows) == len(s["index"])
    for n, row in enumerate(g.rows):
        upright = _png(row.cells[0].src)
        for k, cell in enumerate(row.cells):
            # Quarter turns are exact: the tile must be the upright tile turned k times counter-clockwise.
            np.testing.assert_array_equal(_png(cell.src), np.rot90(upright, k))
            assert cell.changed == (s["pred"][n, k] != s["ref_pred"][n, 0])
            assert cell.caption.endswith(f"{float(s['confidence'][n, k]):.0%}")


def test_changed_predictions_are_marked(so2_result):
    g = gal.classification_gallery(so2_result, "worst", gal.Budget(10**8), "g", "t", "c")
    s = so2_result.samples["worst"]
    names = ["identity" if a == 0 else f"{a % 360:g}°" for a in so2_result.elements["angle"]]
    shown = [names.index(c) for c in g.columns]
    expect = [bool(s["pred"][n, j] != s["ref_pred"][n, 0]) for n in range(len(g.rows)) for j in shown]
    assert [c.changed for row in g.rows for c in row.cells] == expect
    assert any(expect)  # the plain CNN does change its mind somewhere


def test_segmentation_flipbooks_show_the_audits_iou(seg_result, monkeypatch):
    g = gal.segmentation_gallery(seg_result, "first", gal.Budget(10**8), "g", "t", "c")
    assert len(g.flipbooks) == min(gal.SEG_IMAGES, len(seg_result.samples["first"]["index"]))
    labels = seg_result.elements["label"].tolist()
    for book in g.flipbooks:
        assert [f.title for f in book.frames] == labels
        ious = [float(f.caption.rsplit(" ", 1)[1]) for f in book.frames]
        assert ious[0] == 1.0 and book.start == int(np.argmin(ious))
        assert [s.caption for s in book.statics] == ["input", "untransformed prediction", "true mask"]
    # Every image of this audit is a sample, so the per-frame IoUs average to the audit's own numbers.
    assert seg_result.summary["images"] == len(seg_result.samples["first"]["index"])
    monkeypatch.setattr(gal, "SEG_IMAGES", 99)
    every = gal.segmentation_gallery(seg_result, "first", gal.Budget(10**8), "g", "t", "c")
    per_image = [[float(f.caption.rsplit(" ", 1)[1]) for f in b.frames] for b in every.flipbooks]
    np.testing.assert_allclose(np.mean(per_image, axis=0), seg_result.elements["iou_consistency"], atol=1e-3)


def test_dense_flipbooks_start_at_the_largest_error(dense_result):
    g = gal.dense_gallery(dense_result, "worst", gal.Budget(10**8), "g", "t", "c")
    assert g.flipbooks and g.colour_bar
    for book in g.flipbooks:
        means = [_caption_error(f.caption) for f in book.frames]
        assert book.start == int(np.argmax(means)) and max(means) > 0


def _caption_error(caption: str) -> float:
    return float(re.search(r"error (?:inside the compared region )?([0-9.e+-]+)", caption)[1])


def _without(result, *keys):
    """A copy of ``result`` whose samples lack ``keys`` and the compared region (as a version-1 sidecar does)."""
    copy = AuditResult.from_dict(result.to_dict())
    parts = {p: a for p, a in result.samples.items() if p != "region"}
    copy.samples = {p: {k: v for k, v in a.items() if k not in keys} for p, a in parts.items()}
    return copy


def test_galleries_of_results_without_views_show_only_what_they_hold(c4_result, seg_result, dense_result, tmp_path):
    """Older results hold no transformed inputs, per-image scores or compared region: nothing is recomputed."""
    old = _without(c4_result, "views")
    g = gal.classification_gallery(old, "first", gal.Budget(10**8), "g", "t", "c")
    s = old.samples["first"]
    assert list(g.columns) == ["identity"] and "untransformed" in g.note
    for n, row in enumerate(g.rows):
        (cell,) = row.cells
        x = np.asarray(s["x"][n], dtype=np.float64)
        shown = gal.to_display(x, *gal.display_range(x, old.data.normalisation)[:2])
        np.testing.assert_array_equal(_png(cell.src), shown)
    seg = gal.segmentation_gallery(_without(seg_result, "iou_consistency"), "first", gal.Budget(10**8), "g", "t", "c")
    assert seg.flipbooks and all(book.start == 0 for book in seg.flipbooks)
    dense = gal.dense_gallery(_without(dense_result, "error"), "worst", gal.Budget(10**8), "g", "t", "c")
    for book in dense.flipbooks:
        means = [_caption_error(f.caption) for f in book.frames]
        assert book.start == int(np.argmax(means))
    assert "untransformed images are shown" in render_report(old)


def test_dense_flipbooks_show_the_audits_own_errors(dense_result):
    g = gal.dense_gallery(dense_result, "worst", gal.Budget(10**8), "g", "t", "c")
    s = dense_result.samples["worst"]
    shown = gal.shown_elements(dense_result.elements["label"].tolist(), gal.FLIPBOOK_MAX_FRAMES)
    for n, book in enumerate(g.flipbooks):
        errors = [_caption_error(f.caption) for f in book.frames]
        np.testing.assert_allclose(errors, [float(s["error"][n, j]) for j in shown], rtol=1e-2)


def test_mask_overlay_marks_exactly_the_changed_pixels():
    image = np.full((6, 6), 100, np.uint8)
    ref = np.zeros((6, 6), np.uint8)
    ref[1:4, 1:4] = 1
    seg = ref.copy()
    seg[4, 4] = 1
    out = gal.mask_overlay(image, seg, ref, None)
    red = (out[..., 0] > 150) & (out[..., 1] < 100)
    assert red.sum() == 1 and red[4, 4]
    same = gal.mask_overlay(image, ref, ref, None)
    assert not np.all(same == out)
    assert np.all(gal.mask_overlay(image, np.zeros_like(ref), None, None) == 100)


@pytest.mark.parametrize("channels", [1, 3])
def test_display_undoes_the_datas_normalisation(channels):
    rng = np.random.default_rng(0)
    raw = rng.random((channels, 5, 5))
    mean, std = [0.5, 0.4, 0.3][:channels], [0.2, 0.25, 0.3][:channels]
    x = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    offset, scale, undone = gal.display_range(x, {"mean": mean, "std": std})
    assert undone
    shown = gal.to_display(x, offset, scale)
    expect = (np.clip(raw, 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(shown, expect[0] if channels == 1 else np.transpose(expect, (1, 2, 0)))


def test_display_stretches_unnormalised_data():
    x = np.linspace(-3, 5, 16).reshape(1, 4, 4)
    shown = gal.to_display(x, *gal.display_range(x, None)[:2])
    assert shown.min() == 0 and shown.max() == 255


def test_large_colour_images_stay_under_the_size_limit(tmp_path):
    """The worst case for size: RGB noise (incompressible PNGs) at 128 px under 24 angles."""
    torch.manual_seed(0)
    x = torch.rand(12, 3, 128, 128)
    y = torch.randint(0, 10, (12,))
    result = audit(TinyCNN(in_channels=3), (x, y), "so2:24", samples=8, device="cpu")
    path = write_report(result, tmp_path / "big.html")
    html = path.read_text(encoding="utf-8")
    assert path.stat().st_size < MAX_BYTES
    assert "left out to keep the report small" in html
    assert 'id="gallery-first"' in html and 'id="gallery-worst"' in html
    assert html.count("row-heading") >= 4  # both sets show images, within the budget
    dense = audit(Ramp(), x, "so2:24", samples=8, device="cpu")
    assert write_report(dense, tmp_path / "dense.html").stat().st_size < MAX_BYTES


# ---- comparisons and bad input ------------------------------------------------------------------------------


def test_comparison_report(so2_result, c4_result, seg_result, tmp_path, cnn):
    from equiaudit.reports import correctness_matrix

    other = audit(TinyCNN(), "digits", "so2:12", limit=32, device="cpu")
    mats = correctness_matrix(cnn, TinyCNN(), "digits", "rot:0,45", names=("a", "b"), limit=16, device="cpu")
    path = write_comparison([so2_result, other], tmp_path / "cmp.html", names=["a", "b"], matrices=mats)
    html = path.read_text(encoding="utf-8")
    figs = _figures(html)
    assert {
        "chart-error",
        "chart-polar",
        "chart-agreement",
        "chart-tradeoff",
        "chart-correctness-0",
        "chart-correctness-1",
    } <= set(figs)
    assert figs["chart-correctness-1"]["data"][0]["z"] == [
        [mats[1].counts["both_right"], mats[1].counts["only_a"]],
        [mats[1].counts["only_b"], mats[1].counts["both_wrong"]],
    ]
    doc = json.loads((tmp_path / "cmp.json").read_text())
    assert doc["names"] == ["a", "b"] and len(doc["results"]) == 2 and len(doc["correctness"]) == 2
    with pytest.raises(ResultFormatError):
        AuditResult.from_dict(doc)  # a comparison is not mistaken for a single result
    assert path.stat().st_size < MAX_BYTES
    with pytest.raises(EquiauditError, match="at least 2"):
        write_comparison([so2_result], tmp_path / "x.html")
    with pytest.raises(EquiauditError, match="classifiers with dense"):
        write_comparison([so2_result, seg_result], tmp_path / "x.html")
    with pytest.raises(EquiauditError, match="distinct name"):
        write_comparison([so2_result, c4_result], tmp_path / "x.html", names=["a", "a"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["group"].update(spec=None), "group.spec"),
        (lambda d: d["run"].update(task="detect"), "unknown task"),
        (lambda d: [e.pop("floor") for e in d["elements"]], "floor"),
        (lambda d: [e.update(invariance_error="high") for e in d["elements"]], "not numeric"),
    ],
)
def test_results_a_report_cannot_read_fail_with_one_line(so2_result, edit, message):
    doc = json.loads(so2_result.to_json())
    edit(doc)
    with pytest.raises(ResultFormatError, match=message) as info:
        check_result(AuditResult.from_dict(doc))
    assert "\n" not in str(info.value)


def test_figure_json_cannot_close_its_script_tag():
    import plotly.graph_objects as go

    text = figure_json(go.Figure(go.Scatter(x=[1], y=[2], name="</script><b>")))
    assert "</script>" not in text and json.loads(text.replace("<\\/", "</"))["data"][0]["name"] == "</script><b>"


@pytest.mark.parametrize(("hidden", "named"), [(("jinja2",), "jinja2"), (("plotly", "jinja2"), "plotly, jinja2")])
def test_import_without_the_reports_extra_names_what_to_install(hidden, named):
    import subprocess
    import sys

    code = (
        f"import sys; sys.modules.update(dict.fromkeys({list(hidden)!r}))\n"
        "try:\n    import equiaudit.reports\nexcept ImportError as exc:\n    print(exc)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == (
        f"HTML reports need the 'reports' extra ({named} not installed): pip install 'equiaudit[reports]'"
    )
