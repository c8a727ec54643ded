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
