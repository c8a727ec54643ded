"""Generated artefacts stay out of the source packages: make_examples never writes into the installed package,
never deletes files it did not make, `make demo` writes only git-ignored paths, and the example reports live
in the top-level examples/ folder."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from equiaudit.reports import make_examples

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def checkout() -> Path:
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout")
    return ROOT


# --- make_examples -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "examples", "deep/er"])
def test_make_examples_refuses_the_installed_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sub: str
) -> None:
    folders = make_examples.package_folders()
    assert Path(make_examples.__file__).resolve().parent in folders
    for folder in folders:
        out = folder / sub if sub else folder
        with pytest.raises(SystemExit) as exc:
            make_examples.main(["--out", str(out)])
        assert exc.value.code == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and "inside the installed package folder" in message
        if sub:
            assert not out.exists()


def test_make_examples_default_is_relative_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # From inside the package folder the default ./examples lands in the package: refused, nothing written.
    here = Path(make_examples.__file__).resolve().parent
    monkeypatch.chdir(here)
    with pytest.raises(SystemExit) as exc:
        make_examples.main([])
    assert exc.value.code == 2 and "inside the installed package folder" in capsys.readouterr().err
    assert not (here / "examples").exists()


def test_make_examples_removes_only_its_own_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import equiaudit

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(equiaudit, "audit", stop)  # stop right after the clean-up, before any audit
    own = [tmp_path / n for n in ("digits-cnn-so2.html", "digits-cnn-so2.json", "compare-cnn-gcnn-c4.samples.npz")]
    foreign = [tmp_path / n for n in ("notes.md", "mine.html", "mine.samples.npz", "sub/x.json")]
    for path in own + foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with pytest.raises(Stop):
        make_examples.main(["--out", str(tmp_path)])
    assert not any(p.exists() for p in own)
    assert all(p.exists() for p in foreign)
    assert {p.name for p in make_examples.owned_files(tmp_path)} == {
        f"{stem}{suffix}" for stem in make_examples.STEMS for suffix in (".html", ".json", ".samples.npz")
    }


# --- make demo -----------------------------------------------------------------------------------------------


def _recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of ``target`` (tab-indented lines after ``target:``), continuation lines joined."""
    lines = makefile.replace("\\\n", " ").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:(?!=)", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            if line.strip() and not line.lstrip().startswith("#"):
                break
            continue
        recipe.append(line.strip())
    return recipe


def _written_paths(recipe: list[str]) -> list[str]:
    """Every file a recipe's ``--out``/``-o``/``--report`` options name, with what is written beside them
    (the results JSON beside a report, the ``.samples.npz`` sidecar beside a results JSON)."""
    paths = []
    for line in recipe:
        words = shlex.split(line)
        for i, word in enumerate(words):
            flag, eq, value = word.partition("=")
            if flag in ("--out", "-o", "--report"):
                paths.append(value if eq else words[i + 1])
    beside = []
    for p in paths:
        path = Path(p)
        if path.suffix == ".html":
            beside.append(str(path.with_suffix(".json")))
        beside.append(str(path.with_name(path.stem + ".samples.npz")))
    return paths + beside


def test_make_demo_writes_only_ignored_paths(checkout: Path) -> None:
    recipe = _recipe((checkout / "Makefile").read_text(encoding="utf-8"), "demo")
    paths = _written_paths(recipe)
    assert any(p.endswith(".html") for p in paths), f"no --report in the demo recipe: {recipe}"
    for p in paths:
        assert not Path(p).is_absolute() and ".." not in Path(p).parts, p
        # exit 0: ignored; 1: not ignored (tracked paths count as not ignored, which is what we want)
        assert _git("check-ignore", "-q", p).returncode == 0, f"make demo writes {p}, which git does not ignore"
        assert Path(p).parts[0] not in {"equiaudit", "reports", "zoo", "data"}, f"{p} is in a source package"


# --- example reports -----------------------------------------------------------------------------------------


def test_no_tracked_examples_inside_the_reports_package(checkout: Path) -> None:
    tracked = set(_git("ls-files", "--", "reports/examples").stdout.split())
    removed = set(_git("ls-files", "--deleted", "--", "reports/examples").stdout.split())  # moved, not yet committed
    assert tracked - removed == set()
    assert not (checkout / "reports" / "examples").exists()


def test_readme_links_the_top_level_examples(checkout: Path) -> None:
    readme = (checkout / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:reports/)?examples/[^)]+)\)", readme)
    assert links and all(link.startswith("examples/") for link in links), links
    assert all((checkout / link).is_file() for link in links)
    assert not (checkout / "examples" / "__init__.py").exists()  # a folder of pages, not a package
