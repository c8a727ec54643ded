"""The report of a per-layer audit: the error-by-depth chart with the floor, the numbers per layer, and the
verdict that names the first layer that breaks (and the Lie derivative beside the grid audit)."""

from __future__ import annotations

import torch
from torch import nn

from equiaudit import audit
from equiaudit.data import load_data
from reports.layers import depth_figure, layer_charts, layer_table
from reports.render import render_report
from reports.verdict import verdict


def _sym(conv: nn.Conv2d) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_(sum(torch.rot90(conv.weight, k, dims=(-2, -1)) for k in range(4)) / 4)
    return conv


class MiddleBroken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = _sym(nn.Conv2d(1, 4, 5, padding=2))
        self.b = nn.Conv2d(4, 4, 5, padding=2)
        self.c = _sym(nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(torch.relu(self.b(torch.relu(self.a(x))))).mean(dim=(-2, -1)))


def _result():
    x = load_data("digits", limit=4).read(0, 4).x
    return audit(MiddleBroken(), x, "so2:8", layers="auto", lie=True, samples=0)


def test_verdict_chart_and_table_name_the_first_breaking_layer() -> None:
    res = _result()
    v = verdict(res)
    assert "The first layer that breaks is b (Conv2d, action spatial)" in v.sentence
    assert "the 1 layer before it hold" in v.sentence
    cards = {h.key: h for h in v.headlines}
    assert cards["layers"].value == "b" and cards["layers"].status == "info"
    assert cards["lie"].status == "info" and "per radian" in cards["lie"].sentence
    fig = depth_figure(res)
    traces = {t.name: t for t in fig.data}
    assert list(traces["error, worst element"].x) == ["a", "b", "c"]
    rows = {r["name"]: r for r in res.layers["layers"]}
    assert traces["error, worst element"].y[1] == rows["b"]["error_worst"]
    assert traces["floor (largest over the elements)"].y[1] == max(rows["b"]["floor"]) > 0  # so2:8 interpolates
    assert list(traces["first layer that breaks"].x) == ["b"]
    assert "chart-layers" in [c.id for c in layer_charts(res)]
    table = layer_table(res)
    assert [r[0].text for r in table.rows] == ["a", "b", "c"] and table.rows[1][0].status == "fail"
    assert table.rows[0][-1].text == "holds" and table.rows[1][-1].text.startswith("breaks at")


def test_report_without_layers_is_unchanged_and_with_layers_renders() -> None:
    x = load_data("digits", limit=2).read(0, 2).x
    plain = audit(MiddleBroken(), x, "c4", samples=0)
    assert layer_table(plain) is None and "chart-layers" not in [c.id for c in layer_charts(plain)]
    assert all(h.key not in ("layers", "lie") for h in verdict(plain).headlines)
    html = render_report(_result())
    assert 'id="numbers-layers"' in html and "chart-layers" in html and "First layer that breaks" in html
