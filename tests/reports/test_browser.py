"""Reports in a real browser: headless Chromium opens them from file:// with the network off, logs no
script error, and draws every chart; a screenshot of each is kept.

Skipped where Chromium is not installed, except in CI (``CI`` set), where its absence fails.
Screenshots land in the test's temporary folder, or in ``$EQUIAUDIT_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from equiaudit.reports import write_comparison, write_report
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No network at all: every host name fails to resolve and every request goes to a dead proxy.
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (Debian package `chromium`; .ci/run installs it)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def _browse(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
        *OFFLINE,
        *args,
        page.as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    # A generous limit only so that a hung browser cannot hang the suite; not a performance check.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, so2_result, c4_result, d4_result, scale_result, seg_result, dense_result, cnn):
    from _report_models import RotAveraged
    from equiaudit.reports import correctness_matrix

    from equiaudit.engine import audit

    folder = tmp_path_factory.mktemp("reports")
    out = {
        name: write_report(result, folder / f"{name}.html")
        for name, result in (
            ("so2", so2_result),
            ("c4", c4_result),
            ("d4", d4_result),
            ("scale", scale_result),
            ("seg", seg_result),
            ("dense", dense_result),
        )
    }
    avg = audit(RotAveraged(cnn), "digits", "so2:12", limit=32, device="cpu")
    mats = correctness_matrix(
        cnn, RotAveraged(cnn), "digits", "rot:0,90", names=("cnn", "averaged"), limit=32, device="cpu"
    )
    out["compare"] = write_comparison(
        [so2_result, avg], folder / "compare.html", names=["cnn", "averaged"], matrices=mats
    )
    return out


@pytest.mark.parametrize("name", ["so2", "c4", "d4", "scale", "seg", "dense", "compare"])
def test_report_renders_offline_without_errors(chromium, pages, name, tmp_path):
    page = pages[name]
    run = _browse(chromium, page, tmp_path / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    status = re.search(r'<div id="equiaudit-status"([^>]*)>', dom)
    assert status, "the page never reached its status element"
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', status[1]))
    assert attrs["data-done"] == "1", "charts were still drawing when the time budget ran out"
    assert attrs["data-errors"] == "", attrs["data-errors"]
    expected = re.findall(r'<div class="chart" id="([\w-]+)"', page.read_text(encoding="utf-8"))
    assert int(attrs["data-charts"]) == len(expected) >= 2
    assert int(attrs["data-rendered"]) == len(expected)
    for chart in expected:  # independently of the page's own count: each div holds a drawn plot area
        div = re.search(rf'<div class="chart[^"]*" id="{chart}"[^>]*>(.*?)</figcaption>', dom, re.S)
        assert div and "js-plotly-plot" in div[0] and 'class="main-svg"' in div[1], chart
        assert re.search(r'class="(cartesianlayer|polarlayer|heatmaplayer)', div[1]) or 'class="plot"' in div[1]
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not [ln for ln in console if "rror" in ln or "Uncaught" in ln], console


@pytest.mark.parametrize("name", ["so2", "c4", "seg", "dense", "compare"])
def test_screenshot(chromium, pages, name, tmp_path):
    folder = Path(os.environ.get("EQUIAUDIT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"{name}.png"
    run = _browse(chromium, pages[name], tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert image.shape[:2] == (1600, 1280)
    top = image[:500]
    # The verdict strip is painted in its status colour near the top of the page.
    colours = {"pass": (21, 128, 61), "warn": (180, 83, 9), "fail": (185, 28, 28)}
    status = re.search(r'class="verdict status-(\w+)"', pages[name].read_text(encoding="utf-8"))
    if status:
        near = np.abs(top - np.array(colours[status[1]])).sum(-1) < 30
        assert near.sum() > 500, f"no {status[1]} verdict colour in the top of the screenshot"
    assert image.std() > 10  # not a blank page


def test_flipbook_slider_steps_through_the_frames(chromium, pages, tmp_path):
    """Move a segmentation flip-book's slider from a script and read back the frame it shows."""
    html = pages["seg"].read_text(encoding="utf-8")
    frames_id = re.search(r'<script type="application/json" id="([\w-]+-frames)">', html)[1]
    frames = json.loads(re.search(rf'id="{frames_id}">(.*?)</script>', html, re.S)[1].replace("<\\/", "</"))
    probe = (
        "<script>window.addEventListener('load', function () {"
        f"var book = document.querySelector('[data-frames=\"{frames_id}\"]');"
        "var slider = book.querySelector('input[type=range]'); slider.value = 0;"
        "slider.dispatchEvent(new Event('input'));"
        "document.body.setAttribute('data-probe-caption', book.querySelector('.frame-caption').textContent);"
        "document.body.setAttribute('data-probe-src', book.querySelector('img.frame').src.slice(0, 200));"
        "});</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    run = _browse(chromium, page, tmp_path / "profile", "--dump-dom")
    body = re.search(r"<body([^>]*)>", run.stdout)[1]
    assert f'data-probe-caption="{frames[0]["caption"]}"' in body
    assert f'data-probe-src="{frames[0]["src"][:200]}"' in body
    start = int(re.search(rf'data-frames="{frames_id}".*?value="(\d+)"', html, re.S)[1])
    assert start != 0 and frames[start]["caption"] != frames[0]["caption"]  # the slider really moved


def _probe_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)[1]
    return {k: html_unescape(v) for k, v in re.findall(r'(data-probe-[\w-]+)="([^"]*)"', body)}


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


@pytest.mark.parametrize("name", ["so2", "compare"])
def test_numbers_are_visible_with_scripts_blocked(chromium, pages, name, tmp_path):
    """The report in a sandboxed frame without scripts (as under a strict content policy): the <noscript> note
    shows, the empty chart boxes are hidden, and the numbers tables are rendered with their values."""
    import shutil as _shutil

    page = tmp_path / "report.html"
    _shutil.copy(pages[name], page)
    table = "numbers" if name == "so2" else "numbers-compare"
    wrapper = tmp_path / "wrapper.html"
    wrapper.write_text(
        '<!DOCTYPE html><html><body><iframe id="f" sandbox="allow-same-origin" src="report.html" '
        'style="width:1280px;height:1600px"></iframe><script>'
        "document.getElementById('f').addEventListener('load', function () {"
        "var d = this.contentDocument, w = d.defaultView, b = document.body;"
        "var note = d.getElementById('noscript-note'), charts = d.querySelector('section.charts');"
        f"var t = d.getElementById('{table}');"
        "b.setAttribute('data-probe-note', note ? String(note.getBoundingClientRect().height > 0) : 'missing');"
        "b.setAttribute('data-probe-charts', charts ? w.getComputedStyle(charts).display : 'missing');"
        "b.setAttribute('data-probe-table', t ? String(t.getBoundingClientRect().height) : 'missing');"
        "b.setAttribute('data-probe-text', t ? t.innerText.replace(/\\s+/g, ' ') : 'missing');"
        "b.setAttribute('data-probe-scripts', d.getElementById('equiaudit-status').getAttribute('data-done'));"
        "});</script></body></html>",
        encoding="utf-8",
    )
    run = _browse(chromium, wrapper, tmp_path / "profile", "--dump-dom", "--allow-file-access-from-files")
    assert run.returncode == 0, run.stderr[-2000:]
    attrs = _probe_attrs(run.stdout)
    assert attrs["data-probe-scripts"] == "0", "the page's scripts ran: the frame was not script-free"
    assert attrs["data-probe-note"] == "true" and attrs["data-probe-charts"] == "none"
    assert float(attrs["data-probe-table"]) > 100
    text = attrs["data-probe-text"]
    if name == "so2":
        html = pages[name].read_text(encoding="utf-8")
        cells = re.findall(r"<td[^>]*>([^<]*±[^<]*)</td>", html.split('id="numbers"')[1].split("</section>")[0])
        assert cells and all(c in text for c in cells)  # every value with its interval is rendered
    else:
        assert "invariance error, mean over elements" in text and "cnn" in text and "averaged" in text


def test_session_report_with_long_test_ids_squeezes_no_chart(
    chromium, tmp_path, so2_result, c4_result, d4_result, scale_result, seg_result, dense_result
):
    """Real test ids are long: charts name checks by short labels (the ids are in the table), so no plot area
    is squeezed by its legend, and the title stays on one line."""
    from equiaudit.reports import SessionCheck, write_session_report

    long = "tests/integration/models/test_equivariance_of_every_model_in_the_zoo.py::test_check[{}-float32-cpu]"
    results = [so2_result, c4_result, d4_result, scale_result, seg_result, dense_result] * 2
    checks = [
        SessionCheck(long.format(f"{r.group.spec}-{i}-" + "x" * 30), i % 5 != 3, r, "8x floor" if i % 2 else "floor")
        for i, r in enumerate(results)
    ]
    page = write_session_report(checks, tmp_path / "session.html")
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var timer = setInterval(function () {"
        "var status = document.getElementById('equiaudit-status');"
        "if (status.getAttribute('data-done') !== '1') return;"
        "clearInterval(timer);"
        "var sizes = Array.prototype.map.call(document.querySelectorAll('.chart .nsewdrag'), function (r) {"
        "var box = r.getBoundingClientRect(); return Math.round(box.width) + 'x' + Math.round(box.height); });"
        "var h1 = document.querySelector('h1'), line = parseFloat(getComputedStyle(h1).lineHeight);"
        "document.body.setAttribute('data-probe-sizes', sizes.join(' '));"
        "document.body.setAttribute('data-probe-title', String(h1.getBoundingClientRect().height / line));"
        "document.body.setAttribute('data-probe-rendered', status.getAttribute('data-rendered'));"
        "document.body.setAttribute('data-probe-errors', status.getAttribute('data-errors'));"
        "}, 100);});</script></body>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    run = _browse(chromium, probed, tmp_path / "profile", "--dump-dom", "--window-size=1280,1600")
    assert run.returncode == 0, run.stderr[-2000:]
    attrs = _probe_attrs(run.stdout)
    assert attrs.get("data-probe-errors") == "", attrs
    assert int(attrs["data-probe-rendered"]) == 4
    sizes = [tuple(map(int, s.split("x"))) for s in attrs["data-probe-sizes"].split()]
    assert len(sizes) == 4
    assert all(w >= 300 and h >= 150 for w, h in sizes), sizes
    assert float(attrs["data-probe-title"]) < 1.5  # one line
