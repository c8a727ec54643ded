"""Data for audits, named by one spec string everywhere (CLI, API, pytest marker, report).

Specs (see :data:`SPEC_FORMS`):

- ``digits`` (default): the 1,797 UCI hand-written digits shipped with equiaudit, 8x8 upsampled to a
  20x20 box centred on a 28x28 canvas (MNIST layout), values in [0, 1]; splits train 1,297 / test 500.
  ``rot-digits``: each rotated by a random angle in [0, 360); ``scale-digits``: each rescaled by a
  random factor in [0.3, 1] about the centre (as MNIST-scale). Same splits.
- ``shapes-seg``: generated RGB shapes on textures with exact foreground masks (64x64; train 512 /
  test 128), a stand-in for segmentation data. ``blossoms``: generated rotationally symmetric flowers (96x96 RGB,
  24 classes of petal count, shape and colour, random orientation; train 3,600 / val 480 / test 1,200; rendered at
  ``input_size`` when given), a stand-in for the flowers data. ``photos``: 7 public-domain / CC0 photographs (128x128).
- ``noise``: band-limited Gaussian noise of ``input_shape`` (default (1, 28, 28)); 256 images unless
  ``limit`` says otherwise; made lazily per index from ``seed``.
- ``mnist``, ``rot-mnist``, ``mnist-scale``, ``flowers``, ``butterflies``, each optionally ``NAME:DIR``
  (default ``<cache_dir>/...``). Only ``mnist`` and ``rot-mnist`` download, and only with ``download``.
- ``imagenet[:DIR]``: the ImageNet validation (or train) images in one of the usual layouts:
  ``DIR/val/<wnid>/*``, Kaggle's ``DIR/ILSVRC/Data/CLS-LOC/val/*`` with ``LOC_val_solution.csv``, or ``DIR``
  holding the ``<wnid>`` folders. Labels index the 1,000 classes in the order of ``LOC_synset_mapping.txt``
  (found in ``DIR``) or of ``classes``; all 1,000 folders alone give it too (sorted).
- A folder of images: class sub-folders give labels (sorted, or in the order of ``classes``), a folder with
  ``images/`` and ``masks/`` gives segmentation pairs (a mask per image, same name, non-zero = foreground),
  else the images are unlabelled; or a ``.npz`` / ``.pt`` file with ``x`` [, ``y``, ``mask``].

Every item is ``(x, y, mask)``: ``x`` a float32 (C, H, W) tensor, ``y`` an int (-1 without labels),
``mask`` a float32 (1, H, W) {0, 1} tensor or an empty tensor. Order is deterministic; ``limit`` keeps
the first N. Options apply in this order, as torchvision's and timm's evaluation transforms do: ``resize``
(the shorter side to N pixels, aspect ratio kept), a centre ``crop``, ``input_size`` (every image to exactly
H x W), all antialiased with ``resample`` (masks follow, thresholded at 0.5), then a black ``pad`` canvas;
channels (1 -> 3 by repeating, 3 -> 1 by luminance 0.299 R + 0.587 G + 0.114 B); then normalisation
``(x - mean) / std``. Image files are decoded by a :class:`~torch.utils.data.DataLoader` with ``workers``
processes, read ahead in order.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .datasets.arrays import arrays_source, load_array_file
from .datasets.blossoms import load_blossoms
from .datasets.core import SPLITS, Item, RangeItems, Source, read_range, splitless
from .datasets.images import (
    ImageFileDataset,
    load_butterflies,
    load_folder,
    load_imagenet,
    load_photos,
    load_split_folders,
    read_class_list,
)
from .datasets.mnist import load_mnist, load_rot_mnist
from .datasets.synthetic import load_digits, load_noise, load_shapes
from .errors import DataError
from .transforms import centre_offset

__all__ = [
    "SPEC_FORMS", "AuditData", "Batch", "convert_channels", "default_cache_dir", "load_data", "normalise",
    "resize_image",
]  # fmt: skip

SPEC_FORMS = (
    "digits, rot-digits, scale-digits, shapes-seg, blossoms, photos, noise, mnist[:DIR], rot-mnist[:DIR], "
    "mnist-scale[:DIR], flowers[:DIR], butterflies[:DIR], imagenet[:DIR], a folder of images, or a .npz/.pt file"
)
RESAMPLES = ("bilinear", "bicubic", "nearest")
# Image files are read by this many worker processes by default (when there are more than AUTO_WORKERS_MIN).
AUTO_WORKERS_MAX, AUTO_WORKERS_MIN = 4, 256
_PREFETCH_BATCH = 8  # items per worker round trip
NOISE_SHAPE = (1, 28, 28)
NOISE_COUNT = 256
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
_GENERATED = ("digits", "rot-digits", "scale-digits", "shapes-seg", "blossoms", "photos", "noise")
_ROOTED = {
    "mnist": "",
    "rot-mnist": "rot-mnist",
    "mnist-scale": "mnist-scale",
    "flowers": "flowers",
    "butterflies": "butterflies",
    "imagenet": "imagenet",
}  # name -> default folder under the cache dir
_ARRAY_SUFFIXES = (".npz", ".pt", ".pth")


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, H, W) float32, after the data's options (normalisation included)
    y: torch.Tensor | None  # (B,) int64 labels, or None when the data has no labels
    mask: torch.Tensor | None  # (B, 1, H, W) float32 {0, 1} ground-truth foreground masks, or None


def default_cache_dir() -> Path:
    """Where downloadable data sets live: ``$EQUIAUDIT_CACHE`` or ``~/.cache/equiaudit``."""
    return Path(os.environ.get("EQUIAUDIT_CACHE") or "~/.cache/equiaudit").expanduser()


# ------------------------------------------------------------------------------ per-image operations


def resize_image(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (..., C, H, W) images to ``size`` (H, W): antialiased ``bilinear`` or ``bicubic`` (clamped to the
    input's range, as PIL's 8-bit result is) or ``nearest``; no-op if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    flat = x.reshape(-1, *x.shape[-3:])
    if mode == "nearest":
        out = F.interpolate(flat, size=tuple(size), mode="nearest-exact")
    else:
        out = F.interpolate(flat, size=tuple(size), mode=mode, antialias=True, align_corners=False)
        if mode == "bicubic":
            out = out.clamp(float(flat.min()), float(flat.max()))
    return out.reshape(*x.shape[:-2], *size)


def shorter_side_size(h: int, w: int, side: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``side`` and the aspect ratio kept (the longer side truncated, as torchvision)."""
    if h <= w:
        return side, int(side * w / h)
    return int(side * h / w), side


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre ``size`` (H, W) of (..., C, H, W) images (offsets rounded as torchvision's ``CenterCrop``)."""
    h, w = x.shape[-2:]
    ch, cw = size
    if ch > h or cw > w:
        raise DataError(f"cannot crop {ch}x{cw} from a {h}x{w} image; resize it first (--resize)")
    top, left = centre_offset(h, ch), centre_offset(w, cw)
    return x[..., top : top + ch, left : left + cw]


def pad_centre(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., C, H, W) images centred on a black (zero) ``size`` canvas: the inverse of :func:`centre_crop`."""
    h, w = x.shape[-2:]
    ph, pw = size
    if ph < h or pw < w:
        raise DataError(f"cannot pad a {h}x{w} image to {ph}x{pw}; pad must be at least the image size")
    top, left = centre_offset(ph, h), centre_offset(pw, w)
    return F.pad(x, (left, pw - w - left, top, ph - h - top))


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
    """Applies resize / crop, channel conversion and normalisation ``(mean, std)`` to the items of ``base``."""

    def __init__(
        self,
        base: Dataset,
        size: tuple[int, int] | None,
        channels: int | None,
        stats: tuple[Sequence[float], Sequence[float]] | None,
        resize: int | None = None,
        crop: tuple[int, int] | None = None,
        resample: str = "bilinear",
        pad: tuple[int, int] | None = None,
    ) -> None:
        self.base, self.size, self.channels = base, size, channels
        self.resize, self.crop, self.resample, self.pad = resize, crop, resample, pad
        self.stats = None if stats is None else (torch.tensor(stats[0]), torch.tensor(stats[1]))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def with_stats(self, stats: tuple[Sequence[float], Sequence[float]] | None) -> _Pipeline:
        """The same pipeline with another normalisation (None: none)."""
        return _Pipeline(self.base, self.size, self.channels, stats, self.resize, self.crop, self.resample, self.pad)

    def _geometry(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        def resized(size: tuple[int, int]) -> None:
            nonlocal x, mask
            x = resize_image(x, size, self.resample)
            if mask is not None:
                mask = (resize_image(mask, size) >= 0.5).to(torch.float32)

        if self.resize is not None:
            resized(shorter_side_size(x.shape[-2], x.shape[-1], self.resize))
        if self.crop is not None:
            x = centre_crop(x, self.crop)
            mask = None if mask is None else centre_crop(mask, self.crop)
        if self.size is not None:
            resized(self.size)
        if self.pad is not None:
            x = pad_centre(x, self.pad)
            mask = None if mask is None else pad_centre(mask, self.pad)
        return x, mask

    def _process(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize / crop, convert and normalise one image ``(C, H, W)`` or a stack of them (masks only resized
        and cropped)."""
        x, mask = self._geometry(x, mask)
        if self.channels is not None:
            x = convert_channels(x, self.channels)
        if self.stats is not None:
            x = normalise(x, *self.stats)
        return x, mask

    def __getitem__(self, i: int) -> Item:
        x, y, mask = self.base[i]
        x, resized = self._process(x, mask if mask.numel() else None)
        return x.contiguous(), y, mask if resized is None else resized.contiguous()

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
    workers: int = 0  # worker processes reading items that are not held in tensors
    preprocess: dict[str, Any] | None = None  # what an audit recorded of the pipeline (see equiaudit.adapt)
    classes_from: str | None = None  # what the labels index: "folders" (sorted names), "classes" (a given list)
    _prefetch: _Prefetch | None = field(default=None, init=False, repr=False, compare=False)

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
        """Batches in the data's fixed order (no shuffling); the last may be short."""
        size = _positive_int(batch_size, "batch_size")
        n = len(self)
        for start in range(0, n, size):
            yield self.read(start, min(n, start + size))

    def read(self, start: int, stop: int) -> Batch:
        """Items ``start..stop-1`` as one batch: data held in tensors is sliced, other data is read item by item
        and stacked."""
        items = read_range(self.dataset, start, stop)
        if items is None:
            if self.workers > 0 and stop - start > 0:
                if self._prefetch is None:
                    self._prefetch = _Prefetch(self.dataset, self.workers)
                return self._collate(self._prefetch.read(start, stop))
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
            "preprocess": self.preprocess,
            "classes_from": self.classes_from,
        }

    def without_normalisation(self, offset: Sequence[float] | None = None) -> AuditData | None:
        """The same images before the normalisation, minus ``offset`` per channel (None: as they are), or None
        when the normalisation is not this data's own pipeline (data given in memory)."""
        ds, wrap = self.dataset, None
        if isinstance(ds, Subset):  # a limit applied after the pipeline
            ds, wrap = ds.dataset, ds.indices
        if not isinstance(ds, _Pipeline):
            return None if self.mean is not None else self._with(ds, wrap, offset)
        stats = None if offset is None else (tuple(offset), (1.0,) * len(offset))
        return self._with(ds.with_stats(stats), wrap, offset)

    def _with(self, ds: Dataset, indices: Any, offset: Sequence[float] | None) -> AuditData:
        if offset is not None and not isinstance(ds, _Pipeline):
            ds = _Pipeline(ds, None, None, (tuple(offset), (1.0,) * len(offset)))
        if indices is not None:
            ds = Subset(ds, indices)
        mean = None if offset is None else tuple(float(v) for v in offset)
        std = None if offset is None else (1.0,) * len(offset)
        return dataclasses.replace(self, dataset=ds, mean=mean, std=std)

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


class _Prefetch:
    """Items of a dataset read ahead, in order, by a DataLoader with worker processes; ranges asked in order are
    served from it (one worker pool for the whole pass), any other range restarts it there."""

    def __init__(self, dataset: Dataset, workers: int) -> None:
        self.dataset, self.workers = dataset, workers
        self.items: dict[int, Item] = {}
        self.next = 0  # index of the next item the loader yields
        self.iterator: Iterator[list[Item]] | None = None

    def _restart(self, start: int) -> None:
        self.close()
        n = len(self.dataset)  # type: ignore[arg-type]
        loader = DataLoader(
            Subset(self.dataset, range(start, n)),
            batch_size=_PREFETCH_BATCH,
            num_workers=self.workers,
            collate_fn=list,
            prefetch_factor=4,
        )
        self.iterator, self.next = iter(loader), start

    def read(self, start: int, stop: int) -> list[Item]:
        first = min(self.items, default=self.next)
        if (self.iterator is None and self.next < stop) or start < first or start > self.next:
            self._restart(start)
        for i in [i for i in self.items if i < start]:
            del self.items[i]
        while self.next < stop:
            assert self.iterator is not None
            for item in next(self.iterator):
                self.items[self.next] = item
                self.next += 1
        out = [self.items[i] for i in range(start, stop)]
        if self.next >= len(self.dataset):  # type: ignore[arg-type]
            self.close()  # everything is read: the workers go
        return out

    def close(self) -> None:
        self.iterator = None  # the DataLoader's iterator shuts its workers down when it goes


def _reads_files(ds: Dataset) -> bool:
    while isinstance(ds, (Subset, _Pipeline)):
        ds = ds.dataset if isinstance(ds, Subset) else ds.base
    return isinstance(ds, ImageFileDataset)


def _workers(workers: int | None, ds: Dataset) -> int:
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise DataError(f"workers must be an integer >= 0, got {workers!r}")
        return workers if _reads_files(ds) else 0
    if not _reads_files(ds) or len(ds) <= AUTO_WORKERS_MIN:  # type: ignore[arg-type]
        return 0
    return max(0, min(AUTO_WORKERS_MAX, (os.cpu_count() or 1) - 1))


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


def _size(input_size: int | Sequence[int] | None, name: str = "input_size") -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, Sequence) and not isinstance(input_size, str):
        if len(input_size) != 2:
            raise DataError(f"{name} must be N or (H, W), got {tuple(input_size)!r}")
        return _positive_int(input_size[0], name), _positive_int(input_size[1], name)
    n = _positive_int(input_size, name)
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


@dataclass(frozen=True)
class _Geometry:
    """The resize / crop options of load_data, checked."""

    size: tuple[int, int] | None = None  # input_size
    resize: int | None = None
    crop: tuple[int, int] | None = None
    resample: str = "bilinear"
    pad: tuple[int, int] | None = None

    @property
    def fixed(self) -> bool:
        """Whether every image comes out the same size whatever it was (so differing sizes are fine)."""
        return self.size is not None or self.crop is not None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.size, self.resize, self.crop, self.pad))


def _assemble(
    spec: str,
    src: Source,
    size: tuple[int, int] | None,
    channels: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    limit: int | None = None,
    geometry: _Geometry | None = None,
    workers: int | None = 0,
) -> AuditData:
    """Apply ``limit`` and the per-image options to a loader's :class:`Source`."""
    geometry = geometry or _Geometry(size)
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
    if geometry.any or channels is not None or stats is not None:
        g = geometry
        ds = _Pipeline(ds, g.size, channels, stats, g.resize, g.crop, g.resample, g.pad)
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
        workers=_workers(workers, ds),
        classes_from=src.class_source,
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
    resized: bool = False,
    classes: list[str] | None = None,
) -> Source:
    """Find the loader for ``spec`` and run it (``resized``: every image comes out one size whatever it was)."""
    resized = resized or size is not None
    if spec in ("digits", "rot-digits", "scale-digits"):
        return load_digits(spec, split, limit, seed)
    if spec == "shapes-seg":
        return load_shapes(split, size, limit, seed)
    if spec == "blossoms":
        return load_blossoms(split, size, limit, seed)
    if spec == "photos":
        return load_photos(split, channels, resized)
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
        return _open_rooted(name, root, split, limit, resized, channels, download, classes)
    path = Path(spec).expanduser()
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return load_array_file(path, split)
    if path.is_dir():
        return load_folder(path, split, channels, resized, limit, classes)
    if path.exists():
        raise DataError(f"{spec!r} is a file but not .npz or .pt; valid forms: {SPEC_FORMS}")
    raise DataError(f"unknown data spec {spec!r} (no such name, file or folder); valid forms: {SPEC_FORMS}")


def _open_rooted(
    name: str,
    root: Path,
    split: str,
    limit: int | None,
    resize: bool,
    channels: int | None,
    download: bool,
    classes: list[str] | None = None,
) -> Source:
    if name == "imagenet":
        return load_imagenet(root, split, channels, resize, limit, classes)
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
    return load_split_folders(root, name, split, channels, resize, limit, hint, classes)


def _classes(classes: str | Sequence[str] | None) -> list[str] | None:
    """A class list: names in the model's output order, or a text file of them (one per line; the first word of
    each line is the name, so ``LOC_synset_mapping.txt`` works as it is), or ``a,b,c``."""
    if classes is None:
        return None
    if isinstance(classes, str):
        path = Path(classes).expanduser()
        names = read_class_list(path) if path.is_file() else [c.strip() for c in classes.split(",") if c.strip()]
    elif isinstance(classes, Sequence):
        names = [str(c) for c in classes]
    else:
        raise DataError(f"classes must be a list of names or a file of them, got {type(classes).__name__}")
    if not names:
        raise DataError(f"classes {classes!r} names no class")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"classes lists {dup!r} twice")
    return names


def _name_classes(src: Source, names: list[str]) -> None:
    """Give labelled data that is not organised in class folders the class names ``names``."""
    if not src.has_labels:
        raise DataError(f"classes were given but {src.source} has no labels")
    if src.num_classes is not None and src.num_classes > len(names):
        raise DataError(f"labels go up to {src.num_classes - 1} but classes lists only {len(names)} names")
    src.class_names, src.num_classes, src.class_source = names, len(names), "classes"


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
    resize: int | None = None,
    crop: int | tuple[int, int] | None = None,
    resample: str | None = None,
    classes: str | Sequence[str] | None = None,
    workers: int | None = None,
    pad: int | tuple[int, int] | None = None,
) -> AuditData:
    """Load the data named by ``spec`` (see the module docstring and :data:`SPEC_FORMS`).

    Args:
        spec: a data set name, ``NAME:DIR``, a folder of images, or a ``.npz`` / ``.pt`` file.
        split: ``train``, ``val``, ``test`` or ``all`` where the data has splits; data without splits
            serve all their images for ``test`` (the default) and ``all``.
        limit: keep the first ``limit`` images of the fixed order (for ``noise``: how many to make).
        input_size: resize every image (and mask) to N x N or (H, W), antialiased (after ``resize`` / ``crop``).
        channels: the number of channels wanted; converts 1 <-> 3 (any other count must already match).
            Folders default to RGB unless every image is grayscale.
        mean, std: per-channel normalisation applied last (1 or C values each).
        input_shape: (C, H, W) of ``noise`` (default (1, 28, 28)); ignored by other data.
        download: let ``mnist`` / ``rot-mnist`` fetch missing files into ``cache_dir``.
        cache_dir: where downloadable data sets live (default :func:`default_cache_dir`).
        seed: seed of generated data (noise, shapes-seg, rot-digits / scale-digits parameters).
        resize: resize the shorter side of every image to N pixels, keeping the aspect ratio.
        crop: centre-crop N x N or (H, W) pixels after ``resize``.
        resample: ``bilinear`` (default), ``bicubic`` or ``nearest`` for ``resize`` and ``input_size``.
        classes: the model's classes in output order (names, or a file with one per line): class folders are
            labelled by their place in it, and every folder must be in it.
        workers: processes decoding image files (default: up to 4 for folders of more than 256 images, else 0).
        pad: centre every image (and mask) on a black N x N or (H, W) canvas after ``input_size``, before the
            normalisation (so rotations about the centre keep the corners).

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
    resample = "bilinear" if resample is None else str(resample)
    if resample not in RESAMPLES:
        raise DataError(f"unknown resample {resample!r}; valid: {', '.join(RESAMPLES)}")
    side = None if resize is None else _positive_int(resize, "resize")
    geometry = _Geometry(size, side, _size(crop, "crop"), resample, _size(pad, "pad"))
    names = _classes(classes)
    src = _open(spec, split, limit, size, channels, shape, download, cache, seed, geometry.fixed, names)
    if names is not None and src.class_source != "classes":
        _name_classes(src, names)
    return _assemble(spec, src, size, channels, mean, std, limit, geometry, workers)
