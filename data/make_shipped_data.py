"""Regenerate the data files shipped in this directory (``digits.npz`` and ``photos/*.png``).

Not imported by equiaudit. It needs scikit-learn and scikit-image, which are *not* dependencies of
equiaudit; install them somewhere throwaway and run, for example::

    pip install --target /tmp/skl scikit-learn scikit-image
    PYTHONPATH=/tmp/skl python data/make_shipped_data.py

Sources and licences are described in ``data/README.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image sample photographs that its documentation marks public domain or CC0, all bundled
# with the scikit-image wheel (no download): name -> loader in skimage.data.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "retina", "rocket")
PHOTO_SIZE = 128


def make_digits(out_dir: Path) -> Path:
    """UCI hand-written digits as bundled by scikit-learn: uint8 images (N, 8, 8) in 0..16, labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)
    if not np.array_equal(images, bunch.images):
        raise RuntimeError("digits are expected to be integers in 0..16")
    path = out_dir / "digits.npz"
    np.savez_compressed(path, images=images, labels=bunch.target.astype(np.uint8))
    return path


def _centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


def make_photos(out_dir: Path) -> list[Path]:
    """Centre-crop each photograph to a square and resize it (Lanczos, antialiased) to 128x128 PNG."""
    import skimage.data

    photo_dir = out_dir / "photos"
    photo_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        img = _centre_square(getattr(skimage.data, name)())
        pil = Image.fromarray(img).resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS)
        path = photo_dir / f"{name}.png"
        pil.save(path, optimize=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    for path in [make_digits(args.out), *make_photos(args.out)]:
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
