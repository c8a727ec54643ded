"""Regenerate the example reports the README links to (``examples/`` at the top of the repository) from the
zoo's shipped models.

    make examples                                        # from a checkout
    python -m equiaudit.reports.make_examples [--out examples]

* ``digits-cnn-so2.html``: the zoo's plain CNN (trained on upright digits) under 36 rotations;
* ``digits-gcnn-c4-so2.html``: the C4 group CNN under the same rotations (exact at quarter turns);
* ``compare-cnn-gcnn-c4.html``: the two compared, with their correctness matrices upright and at 45°;
* ``shapes-seg-group-unet-so2.html``: the C4 group U-Net on generated shapes under 24 rotations.

Every audit also runs the noise probe (``probe="noise"``): the digits' black corners never vary, so the verdict
needs inputs that vary everywhere to say what the models do there.

``--out`` (default ``examples`` in the current folder) may not lie inside the installed ``equiaudit`` package.
Only the files named above, their results JSON and ``.samples.npz`` sidecars are replaced or removed there;
anything else in the folder is left alone. Only audits run here (a minute on a CPU): the models are the
shipped checkpoints.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

# The pages this script writes (``STEM.html``, with ``STEM.json`` and a ``STEM.samples.npz`` sidecar beside it).
STEMS = ("digits-cnn-so2", "digits-gcnn-c4-so2", "compare-cnn-gcnn-c4", "shapes-seg-group-unet-so2")
# The installed package and the sub-packages that install from folders of their own (package-dir in
# pyproject.toml); an editable install's finder adds any others it maps.
PACKAGES = ("equiaudit", "equiaudit.cli", "equiaudit.reports", "equiaudit.zoo", "equiaudit.shipped_data")


def _editable_packages() -> set[str]:
    """The ``equiaudit`` packages a setuptools editable finder on ``sys.meta_path`` maps to folders, if any."""
    names = set()
    for finder in sys.meta_path:
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", ""), None), "MAPPING", None)
        if isinstance(mapping, dict):
            names.update(n for n in mapping if isinstance(n, str) and n.partition(".")[0] == "equiaudit")
    return names


def package_folders() -> list[Path]:
    """The folders the installed ``equiaudit`` package (and its separately mapped sub-packages) load from."""
    folders = {Path(__file__).resolve().parent}
    for name in sorted(set(PACKAGES) | _editable_packages()):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        if spec is not None and spec.submodule_search_locations:
            folders.update(Path(p).resolve() for p in spec.submodule_search_locations)
    return sorted(folders)


def owned_files(out: Path) -> list[Path]:
    """Every file in ``out`` this script writes: the pages, their results JSON and samples sidecars."""
    return [out / f"{stem}{suffix}" for stem in STEMS for suffix in (".html", ".json", ".samples.npz")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("examples"), help="Folder for the pages (default: ./examples)."
    )
    args = parser.parse_args(argv)
    out = args.out.expanduser().resolve()
    for folder in package_folders():
        if out.is_relative_to(folder):
            print(
                f"make_examples: error: --out {args.out} is inside the installed package folder {folder}; "
                "write the examples elsewhere (e.g. --out examples in a checkout)",
                file=sys.stderr,
            )
            raise SystemExit(2)

    from equiaudit import audit

    from . import correctness_matrix, write_comparison, write_report

    for old in owned_files(out):  # only what is regenerated below: never other files in --out
        old.unlink(missing_ok=True)
    cnn = audit("zoo:cnn", "digits", "so2", limit=300, samples=6, device="cpu", probe="noise")
    gcnn = audit("zoo:gcnn-c4", "digits", "so2", limit=300, samples=6, device="cpu", probe="noise")
    write_report(cnn, out / "digits-cnn-so2.html", title="Plain CNN (zoo:cnn) on digits under SO(2)")
    write_report(gcnn, out / "digits-gcnn-c4-so2.html", title="C4 group CNN (zoo:gcnn-c4) on digits under SO(2)")
    matrices = correctness_matrix(
        "zoo:cnn", "zoo:gcnn-c4", "digits", "rot:0,45", names=("cnn", "gcnn-c4"), limit=300, device="cpu"
    )
    write_comparison(
        [cnn, gcnn],
        out / "compare-cnn-gcnn-c4.html",
        names=["cnn", "gcnn-c4"],
        title="Plain CNN vs C4 group CNN on rotated digits",
        matrices=matrices,
    )
    seg = audit("zoo:group-unet-c4", "shapes-seg", "so2:24", limit=32, samples=2, device="cpu", probe="noise")
    write_report(seg, out / "shapes-seg-group-unet-so2.html", title="C4 group U-Net on shapes-seg under SO(2)")
    for sidecar in owned_files(out):  # the pages hold the galleries; keep the repository small
        if sidecar.name.endswith(".samples.npz"):
            sidecar.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
