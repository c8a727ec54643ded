"""Data for audits, named by one spec string everywhere (CLI, API, pytest marker, report).

Specs (see :data:`SPEC_FORMS`):

- ``digits`` (default): the 1,797 UCI hand-written digits shipped with equiaudit, 8x8 upsampled to a
  20x20 box centred on a 28x28 canvas (MNIST layout), values in [0, 1]; splits train 1,297 / test 500.
  ``rot-digits``: each rotated by a random angle in [0, 360); ``scale-digits``: each rescaled by a
  random factor in [0.3, 1] about the centre (as MNIST-scale). Same splits.
- ``shapes-seg``: generated RGB shapes on textures with exact foreground masks (64x64; train 512 /
  test 128), a stand-in for segmentation data. ``photos``: 7 public-domain / CC0 photographs (128x128).
- ``noise``: band-limited Gaussian noise of ``input_shape`` (default (1, 28, 28)); 256 images unless
  ``limit`` says otherwise; made lazily per index from ``seed``.
- ``mnist``, ``rot-mnist``, ``mnist-scale``, ``flowers``, ``butterflies``, each optionally ``NAME:DIR``
  (default ``<cache_dir>/...``). Only ``mnist`` and ``rot-mnist`` download, and only with ``download``.
- A folder of images (class sub-folders give labels, sorted) or a ``.npz`` / ``.pt`` file with ``x``
  [, ``y``, ``mask``].

Every item is ``(x, y, mask)``: ``x`` a float32 (C, H, W) tensor, ``y`` an int (-1 without labels),
``mask`` a float32 (1, H, W) {0, 1} tensor or an empty tensor. Order is deterministic; ``limit`` keeps
the first N. Options apply in this order: resize (antialiased bilinear; masks thresholded at 0.5),
channels (1 -> 3 by repeating, 3 -> 1 by luminance 0.299 R + 0.587 G + 0.114 B), then
normalisation ``(x - mean) / std``.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .datasets.arrays import arrays_source, load_array_file
from .datasets.core import SPLITS, Item, RangeItems, Source, read_range, splitless
from .datasets.images import load_butterflies, load_folder, load_photos, load_split_folders
from .datasets.mnist import load_mnist, load_rot_mnist
from .datasets.synthetic import load_digits, load_noise, load_shapes
from .errors import DataError

__all__ = [
    "SPEC_FORMS", "AuditData", "Batch", "convert_channels", "default_cache_dir", "load_data", "normalise",
    "resize_image",
]  # fmt: skip

SPEC_FORMS = (
    "digits, rot-digits, scale-digits, shapes-seg, photos, noise, mnist[:DIR], rot-mnist[:DIR], "
    "mnist-scale[:DIR], flowers[:DIR], butterflies[:DIR], a folder of images, or a .npz/.pt file"
)
NOISE_SHAPE = (1, 28, 28)
NOISE_COUNT = 256
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
_GENERATED = ("digits", "rot-digits", "scale-digits", "shapes-seg", "photos", "noise")
_ROOTED = {
    "mnist": "",
    "rot-mnist": "rot-mnist",
    "mnist-scale": "mnist-scale",
    "flowers": "flowers",
    "butterflies": "butterflies",
}  # name -> default folder under the cache dir
_ARRAY_SUFFIXES = (".npz", ".pt", ".pth")


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, H, W) float32 in the normalised model space
    y: torch.Tensor | None  # (B,) int64 labels, or None when the data has no labels
    mask: torch.Tensor | None  # (B, 1, H, W) float32 {0, 1} ground-truth foreground masks, or None


def default_cache_dir() -> Path:
    """Where downloadable data sets live: ``$EQUIAUDIT_CACHE`` or ``~/.cache/equiaudit``."""
    return Path(os.environ.get("EQUIAUDIT_CACHE") or "~/.cache/equiaudit").expanduser()


# ------------------------------------------------------------------------------ per-image operations


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (..., C, H, W) images to ``size`` (H, W): antialiased bilinear, no-op if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*x.shape[:-2], *size)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, H, W) to ``channels``: 1 -> 3 repeats, 3 -> 1 takes the luminance; C == channels is a no-op."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).clone()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    raise DataError(f"cannot convert images with {c} channels to {channels}; only 1 <-> 3 is supported")


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` have 1 or C entries."""
    return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


class _Pipeline(Dataset):
    """Applies resize, channel conversion and normalisation ``(mean, std)`` to the items of ``base``."""

    def __init__(
        self,
        base: Dataset,
        size: tuple[int, int] | None,
        channels: int | None,
        stats: tuple[Sequence[float], Sequence[float]] | None,
    ) -> None:
        self.base, self.size, self.channels = base, size, channels
        self.stats = None if stats is None else (torch.tensor(stats[0]), torch.tensor(stats[1]))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _process(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize, convert and normalise one image ``(C, H, W)`` or a stack of them (masks only resized)."""
        if self.size is not None:
            x = resize_image(x, self.size)
            if mask is not None:
                mask = (resize_image(mask, self.size) >= 0.5).to(torch.float32)
        if self.channels is not None:
            x = convert_channels(x, self.channels)
        if self.stats is not None:
            x = normalise(x, *self.stats)
        return x, mask

    def __getitem__(self, i: int) -> Item:
        x, y, mask = self.base[i]
        x, resized = self._process(x, mask if mask.numel() else None)
        return x, y, mask if resized is None else resized

    def read_range(self, start: int, stop: int) -> RangeItems | None:
        items = read_range(self.base, start, stop)
        if items is None:
            return None
        x, y, mask = items
        x, mask = self._process(x, mask)
        return x, y, mask


# ----------------------------------------------------------------------------------------- AuditData


@dataclass
class AuditData:
    """A data set ready for an audit: items in a fixed order plus what is known about them."""

    spec: str
    dataset: Dataset
    input_shape: tuple[int, int, int]
    has_labels: bool
    has_masks: bool
    num_classes: int | None
    class_names: list[str] | None
    source: str
    split: str = "all"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _collate(self, items: list[Item]) -> Batch:
        xs, ys, masks = zip(*items, strict=True)
        return Batch(
            torch.stack(xs),
            torch.tensor(ys, dtype=torch.int64) if self.has_labels else None,
            torch.stack(masks) if self.has_masks else None,
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches in the data's fixed order (no shuffling, no worker processes); the last may be short."""
        size = _positive_int(batch_size, "batch_size")
        n = len(self)
        for start in range(0, n, size):
            yield self.read(start, min(n, start + size))

    def read(self, start: int, stop: int) -> Batch:
        """Items ``start..stop-1`` as one batch: data held in tensors is sliced, other data is read item by item
        and stacked."""
        items = read_range(self.dataset, start, stop)
        if items is None:
            return self._collate([self.dataset[i] for i in range(start, stop)])
        x, y, mask = items
        if self.has_labels and y is None:
            y = torch.full((stop - start,), -1, dtype=torch.int64)
        return Batch(x, y if self.has_labels else None, mask if self.has_masks else None)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for results and reports."""
        norm = None if self.mean is None else {"mean": list(self.mean), "std": list(self.std or ())}
        return {
            "spec": self.spec,
            "source": self.source,
            "count": len(self),
            "input_shape": list(self.input_shape),
            "has_labels": self.has_labels,
            "has_masks": self.has_masks,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "split": self.split,
            "normalisation": norm,
            "seed": self.seed,
        }

    @classmethod
    def from_tensors(
        cls, x: Any, y: Any = None, mask: Any = None, *, spec: str = "tensors", class_names: Sequence[str] | None = None
    ) -> AuditData:
        """Wrap in-memory images ``x`` (N, [C,] H, W), labels ``y`` (N,) and masks (N, [1,] H, W).

        Same rules as ``.npz`` files: uint8 is divided by 255, floats are used as they are.
        """
        src = arrays_source(x, y, mask, what="the given tensors", desc="tensors given in memory")
        if class_names is not None:
            names = [str(n) for n in class_names]
            if src.num_classes is not None and src.num_classes > len(names):
                raise DataError(f"labels go up to {src.num_classes - 1} but only {len(names)} class names were given")
            src.class_names, src.num_classes = names, len(names)
        return _assemble(spec, src, None, None, None, None)


# ----------------------------------------------------------------------------------------- load_data


def _positive_int(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise DataError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise DataError(f"{name} must be a positive integer, got {n}")
    return n


def _size(input_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, Sequence) and not isinstance(input_size, str):
        if len(input_size) != 2:
            raise DataError(f"input_size must be N or (H, W), got {tuple(input_size)!r}")
        return _positive_int(input_size[0], "input_size"), _positive_int(input_size[1], "input_size")
    n = _positive_int(input_size, "input_size")
    return n, n


def _shape3(shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    if isinstance(shape, str) or not isinstance(shape, Sequence) or len(shape) != 3:
        raise DataError(f"input_shape must be (C, H, W), got {shape!r}")
    c, h, w = (_positive_int(v, "input_shape entries") for v in shape)
    return c, h, w


def _stats(values: Sequence[float] | None, name: str, channels: int) -> torch.Tensor | None:
    if values is None:
        return None
    try:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a list of numbers, got {values!r}") from None
    if t.numel() not in (1, channels):
        raise DataError(
            f"{name} has {t.numel()} values but the images have {channels} channel(s); give "
            f"{'1 value' if channels == 1 else f'1 or {channels} values'}"
        )
    if not torch.isfinite(t).all() or (name == "std" and bool((t <= 0).any())):
        raise DataError(f"{name} must be finite{' and positive' if name == 'std' else ''}, got {t.tolist()}")
    return t


def _assemble(
    spec: str,
    src: Source,
    size: tuple[int, int] | None,
    channels: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    limit: int | None = None,
) -> AuditData:
    """Apply ``limit`` and the per-image options to a loader's :class:`Source`."""
    ds = src.dataset
    if limit is not None and len(ds) > limit:  # type: ignore[arg-type]
        ds = Subset(ds, range(limit))
    if len(ds) == 0:  # type: ignore[arg-type]
        raise DataError(f"the data {spec!r} holds no images ({src.source})")
    native_c = ds[0][0].shape[0]
    out_c = channels or native_c
    if channels is not None and native_c != channels and {native_c, channels} != {1, 3}:
        raise DataError(
            f"cannot convert the {native_c}-channel images of {spec!r} to {channels} channels; "
            f"only 1 <-> 3 is supported"
        )
    mean_t, std_t = _stats(mean, "mean", out_c), _stats(std, "std", out_c)
    stats = None
    if mean_t is not None or std_t is not None:  # one of them alone leaves the other at 0 / 1
        mean_t = torch.zeros(1, dtype=torch.float64) if mean_t is None else mean_t
        std_t = torch.ones(1, dtype=torch.float64) if std_t is None else std_t
        stats = (tuple(mean_t.expand(out_c).tolist()), tuple(std_t.expand(out_c).tolist()))
    if size is not None or channels is not None or stats is not None:
        ds = _Pipeline(ds, size, channels, stats)
    x0 = ds[0][0]
    return AuditData(
        spec=spec,
        dataset=ds,
        input_shape=(x0.shape[0], x0.shape[1], x0.shape[2]),
        has_labels=src.has_labels,
        has_masks=src.has_masks,
        num_classes=src.num_classes,
        class_names=src.class_names,
        source=src.source,
        split=src.split,
        mean=None if stats is None else stats[0],
        std=None if stats is None else stats[1],
        seed=src.seed,
    )


def _open(
    spec: str,
    split: str,
    limit: int | None,
    size: tuple[int, int] | None,
    channels: int | None,
    shape: tuple[int, int, int] | None,
    download: bool,
    cache: Path,
    seed: int,
) -> Source:
    """Find the loader for ``spec`` and run it."""
    if spec in ("digits", "rot-digits", "scale-digits"):
        return load_digits(spec, split, limit, seed)
    if spec == "shapes-seg":
        return load_shapes(split, size, limit, seed)
    if spec == "photos":
        return load_photos(split, channels, size is not None)
    if spec == "noise":
        splitless(split, "noise")
        shape = shape or (channels or NOISE_SHAPE[0], *(size or NOISE_SHAPE[1:]))
        return load_noise(shape, limit or NOISE_COUNT, seed)
    name, colon, rest = spec.partition(":")
    if name in _GENERATED and colon:
        raise DataError(f"{name!r} takes no ':' argument; valid forms: {SPEC_FORMS}")
    if name in _ROOTED:
        if colon and not rest:
            raise DataError(f"{spec!r} names no folder after ':'; valid forms: {SPEC_FORMS}")
        root = Path(rest).expanduser() if colon else cache / _ROOTED[name]
        return _open_rooted(name, root, split, limit, size, channels, download)
    path = Path(spec).expanduser()
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return load_array_file(path, split)
    if path.is_dir():
        return load_folder(path, split, channels, size is not None, limit)
    if path.exists():
        raise DataError(f"{spec!r} is a file but not .npz or .pt; valid forms: {SPEC_FORMS}")
    raise DataError(f"unknown data spec {spec!r} (no such name, file or folder); valid forms: {SPEC_FORMS}")


def _open_rooted(
    name: str,
    root: Path,
    split: str,
    limit: int | None,
    size: tuple[int, int] | None,
    channels: int | None,
    download: bool,
) -> Source:
    resize = size is not None
    if name == "mnist":
        return load_mnist(root, split, download, limit)
    if name == "rot-mnist":
        return load_rot_mnist(root, split, download, limit)
    if name == "butterflies":
        return load_butterflies(root, split, channels, resize, limit)
    hint = {
        "mnist-scale": "no download: build MNIST-scale with the scripts of Sosnovik et al. (2020) and put it "
        "there, or pass mnist-scale:PATH",
        "flowers": "no download: export the 'Petals to the Metal' images as <split>/<class>/<image> there, "
        "or pass flowers:PATH",
    }[name]
    return load_split_folders(root, name, split, channels, resize, limit, hint)


def load_data(
    spec: str = "digits",
    *,
    split: str = "test",
    limit: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> AuditData:
    """Load the data named by ``spec`` (see the module docstring and :data:`SPEC_FORMS`).

    Args:
        spec: a data set name, ``NAME:DIR``, a folder of images, or a ``.npz`` / ``.pt`` file.
        split: ``train``, ``val``, ``test`` or ``all`` where the data has splits; data without splits
            serve all their images for ``test`` (the default) and ``all``.
        limit: keep the first ``limit`` images of the fixed order (for ``noise``: how many to make).
        input_size: resize every image (and mask) to N x N or (H, W), antialiased.
        channels: the number of channels wanted; converts 1 <-> 3 (any other count must already match).
            Folders default to RGB unless every image is grayscale.
        mean, std: per-channel normalisation applied last (1 or C values each).
        input_shape: (C, H, W) of ``noise`` (default (1, 28, 28)); ignored by other data.
        download: let ``mnist`` / ``rot-mnist`` fetch missing files into ``cache_dir``.
        cache_dir: where downloadable data sets live (default :func:`default_cache_dir`).
        seed: seed of generated data (noise, shapes-seg, rot-digits / scale-digits parameters).

    Raises:
        DataError: a bad spec or option, missing or unreadable files; the message is one line.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be a non-empty string; valid forms: {SPEC_FORMS}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    limit = None if limit is None else _positive_int(limit, "limit")
    size = _size(input_size)
    channels = None if channels is None else _positive_int(channels, "channels")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    shape = _shape3(input_shape) if spec == "noise" else None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    src = _open(spec, split, limit, size, channels, shape, download, cache, seed)
    return _assemble(spec, src, size, channels, mean, std, limit)
