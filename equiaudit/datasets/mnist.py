"""MNIST (through torchvision) and Rot-MNIST (Larochelle et al. 2007) in both published layouts.

Nothing is downloaded unless ``download=True``; without the files the error says where they go.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .core import ArrayDataset, Source, check_split, one_line

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_CLASSES = [str(d) for d in range(10)]

ROT_MNIST_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
ROT_MNIST_AMAT = {
    "train_valid": "mnist_all_rotation_normalized_float_train_valid.amat",
    "test": "mnist_all_rotation_normalized_float_test.amat",
}
# The .npz conversions found in public code: Harmonic Networks' rotated_*.npz (keys x, y) and the
# e2cnn experiments' mnist_rot_*.npz (keys images, labels).
ROT_MNIST_NPZ = {
    "train": ("rotated_train.npz", "mnist_rot_train.npz"),
    "val": ("rotated_valid.npz", "mnist_rot_valid.npz"),
    "test": ("rotated_test.npz", "mnist_rot_test.npz"),
}
ROT_MNIST_X_KEYS, ROT_MNIST_Y_KEYS = ("x", "images", "data", "X"), ("y", "labels", "targets", "Y")
ROT_MNIST_TRAIN = 10_000  # rows of the train_valid file in the train split; the remaining 2,000 are val
# The .amat rows are taken to store each 28x28 image column by column (transposed relative to MNIST)
# and the .npz conversions to keep that pixel order, so both are transposed on reading and digits come
# out in MNIST orientation. Public training code (e2cnn experiments, GCNN) reshapes the rows without
# transposing, so models trained that way saw the stored orientation: set False to read as stored.
ROT_MNIST_TRANSPOSED = True


def _mnist_part(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress; stdout may carry --json
            ds = MNIST(str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, AssertionError, ... ; report as one line
        raise DataError(f"cannot load MNIST from {root}: {one_line(exc)}") from exc
    return ds.data, ds.targets


def load_mnist(root: Path, split: str, download: bool, limit: int | None) -> Source:
    """MNIST from ``<root>/MNIST/raw/*-ubyte`` (torchvision's layout); ``download`` fetches it there."""
    check_split(split, ("train", "test", "all"), "mnist")
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing and not download:
        raise DataError(
            f"MNIST not found in {root} (no {raw / missing[0]}); pass --download (download=True) to fetch it (~12 MB)"
        )
    parts = [_mnist_part(root, s == "train", download) for s in (("train", "test") if split == "all" else (split,))]
    x = torch.cat([p[0] for p in parts])[:limit].unsqueeze(1)
    y = torch.cat([p[1] for p in parts])[:limit].to(torch.int64)
    return Source(
        ArrayDataset(x, y, scale=1 / 255),
        f"MNIST (LeCun et al. 1998) from {root}, {split} split",
        split,
        has_labels=True,
        has_masks=False,
        class_names=list(MNIST_CLASSES),
        num_classes=10,
    )


# ------------------------------------------------------------------------------------------ Rot-MNIST


def read_amat(path: Path, skip: int = 0, nrows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``skip .. skip + nrows`` of a Rot-MNIST ``.amat``: 784 floats in [0, 1], then the label."""
    import pandas as pd

    if nrows == 0:
        return np.zeros((0, 784), np.float32), np.zeros(0, np.int64)
    try:
        table = pd.read_csv(
            path, sep=r"\s+", header=None, skiprows=skip, nrows=nrows, dtype=np.float32, engine="c"
        ).to_numpy()
    except pd.errors.EmptyDataError:
        return np.zeros((0, 784), np.float32), np.zeros(0, np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .amat text: {one_line(exc)}") from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path} has {table.shape[-1]} columns; a Rot-MNIST .amat row is 784 pixels and a label")
    return table[:, :784], _rot_labels(table[:, 784], path)


def _rot_labels(raw: np.ndarray, path: Path) -> np.ndarray:
    labels = raw.astype(np.int64)
    if not np.array_equal(labels, raw) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"labels in {path} are not digits 0..9")
    return labels


def _read_rot_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            xk = next((k for k in ROT_MNIST_X_KEYS if k in npz.files), None)
            yk = next((k for k in ROT_MNIST_Y_KEYS if k in npz.files), None)
            if xk is None or yk is None:
                raise DataError(
                    f"{path} has keys {', '.join(npz.files) or 'none'}; expected images under one of "
                    f"{', '.join(ROT_MNIST_X_KEYS)} and labels under one of {', '.join(ROT_MNIST_Y_KEYS)}"
                )
            x, y = npz[xk], npz[yk]
    except DataError:
        raise
    except Exception as exc:  # zipfile / pickle / IO errors of a damaged file
        raise DataError(f"cannot read {path} as .npz: {one_line(exc)}") from exc
    if not (x.ndim in (2, 3, 4) and y.size == x.shape[0] and np.prod(x.shape[1:]) == 784):
        raise DataError(
            f"{path}: images of shape {x.shape} and labels of shape {y.shape}; expected (N, 784), "
            f"(N, 28, 28) or (N, 1, 28, 28) and (N,)"
        )
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255
    return x.reshape(-1, 784).astype(np.float32), _rot_labels(y.reshape(-1), path)


def _find_rot_mnist(root: Path) -> tuple[str, Path] | None:
    for folder in (root, root / "mnist_rotation_new"):
        if all(any((folder / n).is_file() for n in names) for names in ROT_MNIST_NPZ.values()):
            return "npz", folder
        if all((folder / n).is_file() for n in ROT_MNIST_AMAT.values()):
            return "amat", folder
    return None


def _download_rot_mnist(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress; stdout may carry --json
            download_and_extract_archive(ROT_MNIST_URL, download_root=str(root))
    except Exception as exc:  # network / archive errors, reported as one line
        raise DataError(f"cannot download Rot-MNIST from {ROT_MNIST_URL}: {one_line(exc)}") from exc


def _amat_rows(folder: Path, split: str, limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows of ``split`` from the two .amat files, at most ``limit`` of them (read no further)."""
    spans = {
        "train": [("train_valid", 0, ROT_MNIST_TRAIN)],
        "val": [("train_valid", ROT_MNIST_TRAIN, None)],
        "test": [("test", 0, None)],
        "all": [("train_valid", 0, None), ("test", 0, None)],
    }[split]
    chunks, left = [], limit
    for key, start, count in spans:
        if left is not None:
            count = left if count is None else min(left, count)
        path = folder / ROT_MNIST_AMAT[key]
        stat = path.stat()
        chunks.append(_read_amat_once(path, (stat.st_mtime_ns, stat.st_size), start, count))
        left = None if left is None else left - len(chunks[-1][1])
    return chunks


@functools.lru_cache(maxsize=8)
def _read_amat_once(path: Path, stamp: tuple[int, int], skip: int, nrows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_amat`, parsed once per process for each file version (``stamp``: mtime, size) and row span:
    the text files take seconds per 10,000 rows, and a study loads the same split once per model. Callers
    must not modify the arrays (they are shared)."""
    return read_amat(path, skip, nrows)


def load_rot_mnist(root: Path, split: str, download: bool, limit: int | None) -> Source:
    """Rot-MNIST from the original ``.amat`` files or the ``rotated_{train,valid,test}.npz`` conversion."""
    check_split(split, ("train", "val", "test", "all"), "rot-mnist")
    found = _find_rot_mnist(root)
    if found is None and download:
        _download_rot_mnist(root)
        found = _find_rot_mnist(root)
    if found is None:
        raise DataError(
            f"Rot-MNIST not found in {root}: expected {ROT_MNIST_AMAT['train_valid']} and "
            f"{ROT_MNIST_AMAT['test']}, or rotated_{{train,valid,test}}.npz; pass --download "
            f"(download=True) to fetch the .amat zip, or rot-mnist:PATH"
        )
    layout, folder = found
    if layout == "amat":
        chunks = _amat_rows(folder, split, limit)
    else:
        parts = ("train", "val", "test") if split == "all" else (split,)
        files = [next(folder / n for n in ROT_MNIST_NPZ[p] if (folder / n).is_file()) for p in parts]
        chunks = [_read_rot_npz(f) for f in files]
    x = np.concatenate([c[0] for c in chunks])[:limit]
    y = np.concatenate([c[1] for c in chunks])[:limit]
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28))
    return Source(
        ArrayDataset(images, torch.from_numpy(y), transpose=ROT_MNIST_TRANSPOSED),
        f"Rot-MNIST (Larochelle et al. 2007, {layout} files in {folder}), {split} split",
        split,
        has_labels=True,
        has_masks=False,
        class_names=list(MNIST_CLASSES),
        num_classes=10,
    )
