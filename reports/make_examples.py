"""Regenerate the example reports the README links to (``reports/examples/``) from the zoo's shipped models.

    python -m equiaudit.reports.make_examples [--out reports/examples]

* ``digits-cnn-so2.html``: the zoo's plain CNN (trained on upright digits) under 36 rotations;
* ``digits-gcnn-c4-so2.html``: the C4 group CNN under the same rotations (exact at quarter turns);
* ``compare-cnn-gcnn-c4.html``: the two compared, with their correctness matrices upright and at 45°;
* ``shapes-seg-group-unet-so2.html``: the C4 group U-Net on generated shapes under 24 rotations.

Only audits run here (a minute on a CPU): the models are the shipped checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from equiaudit.audit import audit

from . import correctness_matrix, write_comparison, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "examples")
    args = parser.parse_args(argv)
    for old in args.out.glob("*"):
        old.unlink()
    cnn = audit("zoo:cnn", "digits", "so2", limit=300, samples=6, device="cpu")
    gcnn = audit("zoo:gcnn-c4", "digits", "so2", limit=300, samples=6, device="cpu")
    write_report(cnn, args.out / "digits-cnn-so2.html", title="Plain CNN (zoo:cnn) on digits under SO(2)")
    write_report(gcnn, args.out / "digits-gcnn-c4-so2.html", title="C4 group CNN (zoo:gcnn-c4) on digits under SO(2)")
    matrices = correctness_matrix(
        "zoo:cnn", "zoo:gcnn-c4", "digits", "rot:0,45", names=("cnn", "gcnn-c4"), limit=300, device="cpu"
    )
    write_comparison(
        [cnn, gcnn],
        args.out / "compare-cnn-gcnn-c4.html",
        names=["cnn", "gcnn-c4"],
        title="Plain CNN vs C4 group CNN on rotated digits",
        matrices=matrices,
    )
    seg = audit("zoo:group-unet-c4", "shapes-seg", "so2:24", limit=32, samples=2, device="cpu")
    write_report(seg, args.out / "shapes-seg-group-unet-so2.html", title="C4 group U-Net on shapes-seg under SO(2)")
    for sidecar in args.out.glob("*.samples.npz"):  # the pages hold the galleries; keep the repository small
        sidecar.unlink()


if __name__ == "__main__":
    main()
