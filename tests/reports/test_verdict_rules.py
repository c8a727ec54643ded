"""The verdict judges by the calibrated rule of equiaudit.testing, says "on this data", warns about inputs the
data never varies, lets the noise probe in, names one worst element per metric with its criterion, and never
quotes a clause that holds as the reason of a failure."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from _models import single_conv
from equiaudit.reports import verdict as vd
from torch import nn

from equiaudit.engine import audit
from equiaudit.result import AuditResult

_conv = single_conv


def _card(v: vd.Verdict, key: str) -> vd.Headline:
    return next(h for h in v.headlines if h.key == key)


def test_a_random_7x7_convolution_fails_where_2x_floor_let_it_pass() -> None:
    result = audit(_conv(7, "random"), "digits", "rot:5,10", task="dense", limit=32, samples=0)
    rest = result.elements
    assert ((rest["equivariance_error"] / rest["floor"]) < vd.PASS_RATIO).all()  # the old rule: "pass"
    card = _card(vd.verdict(result), "equivariance_error")
    assert card.status == "fail"
    assert card.sentence.startswith("2 of 2 interpolated elements are above their interpolation floor (rule: mean")
    judged = vd.judge_elements(result.elements, "equivariance_error")
    for j, (_, row) in zip(judged, rest.iterrows(), strict=True):
        assert j.value == row["equivariance_error"] and j.limit == pytest.approx(row["floor_high"] + 1e-5)


@pytest.mark.parametrize(("k", "kind"), [(1, "one"), (5, "iso")])
def test_1x1_and_isotropic_convolutions_are_within_their_floor(k: int, kind: str) -> None:
    conv = _conv(k, kind) if kind == "iso" else nn.Conv2d(1, 1, 1, bias=False)
    result = audit(conv, "noise", "rot:5,20,45", task="dense", limit=16, samples=0)
    v = vd.verdict(result)
    assert _card(v, "equivariance_error").status == "pass"
    assert v.status == "pass" and "on this data (16 images of noise), within the interpolation floor" in v.sentence


def test_the_verdict_agrees_with_a_checks_own_tolerance(so2_result) -> None:
    assert _card(vd.verdict(so2_result), "invariance_error").status == "fail"
    own = _card(vd.verdict(so2_result, 10.0), "invariance_error")
    assert own.status == "pass" and "Every element is within the check's tolerance (max_error 10)" in own.sentence


@pytest.mark.parametrize("max_error", ["floor", "2x floor", 0.5])
def test_judged_elements_are_the_ones_equiaudit_testing_fails(cnn, max_error) -> None:
    from equiaudit.testing import check_equivariance, parse_max_error

    report, failures = check_equivariance(cnn, "rot:0,45,90,180", "digits", max_error=max_error, locate=False)
    judged = vd.judge_elements(report.result.elements, "invariance_error", tolerance=parse_max_error(max_error))
    assert [j.label for j in judged if not j.holds] == [f.element.label for f in failures]
    assert [j.limit for j in judged if not j.holds] == pytest.approx([f.limit for f in failures])


def test_the_verdict_says_on_this_data_and_warns_about_constant_pixels(c4_result) -> None:
    fraction = c4_result.summary["constant_input_fraction"]
    assert fraction >= vd.CONSTANT_INPUT_WARN
    v = vd.verdict(c4_result)
    assert v.status == "warn" and "on this data (24 images of digits)" in v.sentence
    card = _card(v, "coverage")
    assert card.status == "warn" and f"{vd.fmt_pct(fraction)} of the compared input pixels never vary" in card.sentence
    assert "(warning at 20% or more)" in card.sentence and "--probe noise" in card.sentence
    assert "(warning at 20% or more)" in v.sentence  # the threshold is stated where the warning is
    low = json.loads(c4_result.to_json())
    low["summary"]["constant_input_fraction"] = 0.05
    calm = vd.verdict(AuditResult.from_dict(low))
    assert _card(calm, "coverage").status == "info" and calm.status == "pass"


class PixelReader(nn.Module):
    """Logits from pixel (0, 0) only: always 0 in the digits, so on them it looks invariant."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        v = img[:, 0, 0, 0, None]
        return v * torch.linspace(-1, 1, 10) + torch.linspace(0, 0.5, 10)


def test_the_noise_probe_enters_the_verdict() -> None:
    digits_only = audit(PixelReader(), "digits", "c4", limit=32, samples=0)
    v = vd.verdict(digits_only)
    assert v.status == "warn" and v.sentence.startswith("Exactly invariant to C4 on this data")
    probed = audit(PixelReader(), "digits", "c4", limit=32, samples=0, probe="noise")
    v = vd.verdict(probed)
    card = _card(v, "probe")
    assert card.status == "fail" and card.title.startswith("On noise (")
    assert v.status == "fail" and ": on noise, " in v.sentence
    assert _card(v, "coverage").status == "info"  # the probe covers what the digits cannot show


def test_one_worst_element_per_metric_with_its_criterion(so2_result) -> None:
    v = vd.verdict(so2_result)
    wraps = vd.angle_wraps(so2_result.group.spec)
    rows = so2_result.elements.set_index("label")
    for key, metric, words in (
        ("agreement", "agreement", "the lowest agreement"),
        ("invariance_error", "invariance_error", "worst element (largest mean invariance error)"),
    ):
        label = so2_result.worst_elements[metric]
        name = vd.element_name({**rows.loc[label].to_dict(), "label": label}, wraps)
        card = _card(v, key)
        assert card.value.endswith(f"at {name}") and words in card.sentence, (card.value, card.sentence)
        # no other element is named as "the worst"
        others = {vd.element_name({**r, "label": lb}, wraps) for lb, r in rows.to_dict(orient="index").items()}
        assert [n for n in others - {name} if f"at {n} " in card.sentence or f"at {n}." in card.sentence] == []
    acc = _card(v, "accuracy")
    label = so2_result.worst_elements["accuracy"]
    assert f"{vd.element_phrase({**rows.loc[label].to_dict(), 'label': label}, wraps)} (the lowest accuracy" in (
        acc.sentence
    )


def test_cards_carry_intervals(so2_result) -> None:
    v = vd.verdict(so2_result)
    for key in ("agreement", "accuracy", "worst_case_accuracy", "invariance_error"):
        card = _card(v, key)
        assert "±" in card.value and card.value_title.startswith("95% interval ["), (key, card.value)


def test_a_clause_that_holds_never_leads_a_failure() -> None:
    from equiaudit.result import DataInfo, GroupInfo, ModelInfo, RunInfo

    base = {"angle": 0.0, "scale": 1.0, "reflect": False, "exact": True, "floor": 0.0, "floor_low": 0.0}
    rows = [
        {**base, "id": 0, "label": "identity", "equivariance_error": 0.0, "floor_high": 0.0},
        {**base, "id": 1, "label": "rot90", "angle": 90.0, "equivariance_error": 1e-8, "floor_high": 0.0},
        {**base, "id": 2, "label": "rot45", "angle": 45.0, "exact": False, "equivariance_error": 0.2,
         "equivariance_error_low": 0.18, "floor": 0.1, "floor_high": 0.11},
    ]  # fmt: skip
    run = RunInfo(spec={"group": "rot:0,90,45"}, task="segment", dtype="float32", device="cpu")
    parts = (ModelInfo("m"), DataInfo("shapes-seg", 8), GroupInfo("rot:0,90,45", 3, exact=False), run)
    v = vd.verdict(AuditResult(pd.DataFrame(rows), {"exact_group": False, "images": 8}, *parts))
    assert v.status == "fail"
    assert "round-off" not in v.sentence and "match to" not in v.sentence
    assert v.sentence.startswith("Not equivariant to ")
    assert ": 1 of 1 interpolated elements are above their interpolation floor (the largest mean" in v.sentence
