"""Arrays: ``.npz`` / ``.pt`` files with keys ``x`` [, ``y``, ``mask``], and tensors handed over in memory.

Layout: ``x`` is (N, H, W) or (N, C, H, W), uint8 (0..255, divided by 255) or float (as is); NumPy arrays
may also be channels-last (N, H, W, C) with C = 1 or 3, the layout of PIL / OpenCV images; ``y`` is
(N,) integer labels >= 0; ``mask`` is (N, H, W) or (N, 1, H, W), bool / integer (non-zero is
foreground) or float in [0, 1] (thresholded at 0.5). ``.pt`` files load with ``weights_only=True``
only, so a file cannot run code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .core import ArrayDataset, Source, one_line, splitless

ARRAY_KEYS = ("x", "y", "mask")


def _tensor(value: Any, key: str, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataError(f"{key!r} in {what} is an object array; store numbers")
        if key == "x" and value.ndim == 4 and value.shape[-1] in (1, 3) and value.shape[1] not in (1, 3):
            value = value.transpose(0, 3, 1, 2)  # channels-last, as images from PIL / OpenCV are
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise DataError(f"{key!r} in {what} is a {type(value).__name__}, not an array or tensor")


def _images(x: torch.Tensor, what: str) -> tuple[torch.Tensor, float]:
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[0] == 0 or 0 in x.shape[2:]:
        raise DataError(f"'x' in {what} has shape {tuple(x.shape)}; expected (N, H, W) or (N, C, H, W), N > 0")
    if x.dtype == torch.uint8:
        return x, 1 / 255
    if not x.is_floating_point():
        raise DataError(f"'x' in {what} has dtype {x.dtype}; expected uint8 (0..255) or float")
    if not torch.isfinite(x).all():
        raise DataError(f"'x' in {what} contains NaN or inf")
    return x, 1.0


def _labels(y: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"'y' in {what} has shape {tuple(y.shape)}; expected ({n},), one label per image")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise DataError(f"'y' in {what} holds non-integer labels")
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"'y' in {what} has dtype {y.dtype}; expected integer labels")
    y = y.to(torch.int64)
    if n and int(y.min()) < 0:
        raise DataError(f"'y' in {what} holds negative labels; expected class indices 0, 1, ...")
    return y


def _masks(mask: torch.Tensor, shape: torch.Size, what: str) -> torch.Tensor:
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    n, _, h, w = shape
    if mask.ndim != 4 or tuple(mask.shape) != (n, 1, h, w):
        raise DataError(
            f"'mask' in {what} has shape {tuple(mask.shape)}; expected ({n}, {h}, {w}) or "
            f"({n}, 1, {h}, {w}) to match 'x'"
        )
    if mask.is_floating_point():
        if not torch.isfinite(mask).all() or float(mask.min()) < 0 or float(mask.max()) > 1:
            raise DataError(f"'mask' in {what} has float values outside [0, 1]")
        return mask >= 0.5
    return mask != 0


def arrays_source(x: Any, y: Any = None, mask: Any = None, *, what: str, desc: str, split: str = "all") -> Source:
    """Validate ``x`` [, ``y``, ``mask``] (numpy arrays or tensors) and wrap them as a :class:`Source`."""
    xt, scale = _images(_tensor(x, "x", what), what)
    yt = None if y is None else _labels(_tensor(y, "y", what), xt.shape[0], what)
    mt = None if mask is None else _masks(_tensor(mask, "mask", what), xt.shape, what)
    num_classes = None if yt is None else int(yt.max()) + 1
    return Source(
        ArrayDataset(xt, yt, mt, scale),
        desc,
        split,
        has_labels=yt is not None,
        has_masks=mt is not None,
        num_classes=num_classes,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if k in ARRAY_KEYS} | {"": np.array(list(npz.files))}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as .npz: {one_line(exc)}") from exc


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        why = f"it refers to {found.group(1)}" if found else one_line(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)), 200)
        raise DataError(
            f"{path} cannot be loaded with weights_only=True ({why}); save a dict of tensors "
            f"{{'x': ..., 'y': ..., 'mask': ...}}"
        ) from exc
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a torch file: {one_line(exc)}") from exc
    if isinstance(obj, torch.Tensor):
        return {"x": obj, "": np.array(["<tensor>"])}
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}; expected a dict with keys 'x' [, 'y', 'mask']")
    return {k: v for k, v in obj.items() if k in ARRAY_KEYS} | {"": np.array([str(k) for k in obj])}


def load_array_file(path: Path, split: str) -> Source:
    """A ``.npz`` or ``.pt`` file with key ``x`` and optional ``y`` and ``mask``."""
    split = splitless(split, f"file {path}")
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    arrays = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pt(path)
    keys = arrays.pop("")
    if "x" not in arrays:
        listed = ", ".join(map(str, keys)) or "none"
        raise DataError(f"{path} has no key 'x' (keys: {listed}); expected 'x' [, 'y', 'mask']")
    return arrays_source(
        arrays["x"], arrays.get("y"), arrays.get("mask"), what=str(path), desc=f"arrays in {path}", split=split
    )
