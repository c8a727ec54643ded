"""Progress when stderr is not a terminal: a plain line about every 10 s and one at the end, never silence."""

from __future__ import annotations

import json

from equiaudit.cli import app
from equiaudit.cli.scan import _PlainProgress
from typer.testing import CliRunner


def test_plain_progress_prints_every_interval_and_at_the_end(capsys) -> None:
    clock = iter([3.0, 11.0, 12.0, 25.0, 26.0])
    progress = _PlainProgress(every=10.0)
    progress.clock = lambda: next(clock)
    progress.start = progress.last = 0.0
    for done in (10, 20, 30, 40):  # at 3 s (quiet), 11 s (a line), 12 s (quiet), 25 s (a line)
        progress(done, 100)
    progress(100, 100)  # the end always prints
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" images")[0] for line in lines] == ["scanned 20 / 100", "scanned 40 / 100", "scanned 100 / 100"]


def test_a_scan_without_a_terminal_reports_progress_on_stderr() -> None:
    res = CliRunner().invoke(app, ["scan", "zoo:cnn", "--limit", "20", "-g", "c4", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["group"]["spec"] == "c4"
    quiet = CliRunner().invoke(app, ["scan", "zoo:cnn", "--limit", "20", "-g", "c4"])
    assert "scanned 20 / 20 images" in quiet.stderr  # CliRunner's stderr is not a terminal


def test_ci_with_force_color_still_gets_plain_lines() -> None:
    # FORCE_COLOR (set by many CI systems) makes rich call stderr a terminal; a bar redrawn into a log is noise
    res = CliRunner().invoke(app, ["scan", "zoo:cnn", "--limit", "20", "-g", "c4"], env={"FORCE_COLOR": "1"})
    assert res.exit_code == 0 and "scanned 20 / 20 images" in res.stderr


def test_the_bar_shows_images_per_second() -> None:
    from types import SimpleNamespace

    from equiaudit.cli.scan import _RateColumn

    assert _RateColumn().render(SimpleNamespace(speed=1234.4)).plain == "1234 images/s"
    assert _RateColumn().render(SimpleNamespace(speed=None)).plain == ""


def test_slow_scans_print_a_rate_not_zero(capsys) -> None:
    from equiaudit.cli.scan import rate_text

    rates = (0.4, 0.04, 0.004, 2.54, 9.96, 1234.4)
    assert [rate_text(r) for r in rates] == ["0.4", "0.04", "0.004", "2.5", "10", "1234"]
    clock = iter([25.0])
    progress = _PlainProgress(every=10.0)
    progress.clock = lambda: next(clock)
    progress.start = progress.last = 0.0
    progress(10, 100)  # 10 images in 25 s
    assert "(0.4 images/s)" in capsys.readouterr().err
