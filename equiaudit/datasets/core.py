"""What every loader shares: the item format, the :class:`Source` it returns, splits and seeding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError

Item = tuple[torch.Tensor, int, torch.Tensor]
# (x (B, C, H, W), labels (B,) or None, masks (B, 1, H, W) or None): a range of items read at once
RangeItems = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
SPLITS = ("train", "val", "test", "all")
# Streams keep the random numbers of different generated data sets independent for the same seed.
STREAM_NOISE, STREAM_SHAPES, STREAM_ROT_DIGITS, STREAM_SCALE_DIGITS = 1, 2, 3, 4


def no_mask() -> torch.Tensor:
    """The mask slot of an item without a mask (a fresh empty tensor, so callers may not alias it)."""
    return torch.empty(0)


@dataclass
class Source:
    """What a loader found: the raw items (before resize / channels / normalisation) and their metadata."""

    dataset: Dataset
    source: str
    split: str
    has_labels: bool
    has_masks: bool
    class_names: list[str] | None = None
    num_classes: int | None = None
    seed: int | None = None
    class_source: str | None = None  # "folders" (sorted folder names) or "classes" (a given list); None otherwise


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, cut at ``limit`` characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_split(split: str, valid: Sequence[str], name: str) -> str:
    """``split`` if ``name`` has it, else a :class:`DataError` that lists the valid ones."""
    if split not in valid:
        raise DataError(f"{name} has no split {split!r}; valid splits: {', '.join(valid)}")
    return split


def splitless(split: str, name: str) -> str:
    """Sources without splits serve every image for the default ``test`` and for ``all``."""
    if split not in ("test", "all"):
        raise DataError(f"{name} has no train/val/test splits; use split 'all' (or leave the default)")
    return "all"


def rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """The generator of one generated item, e.g. ``rng(seed, STREAM_NOISE, index)``.

    Independent for every distinct key tuple; the same keys always give the same numbers.
    """
    return np.random.default_rng([seed, stream, *keys])


class ArrayDataset(Dataset):
    """Items from stacked tensors; ``x`` may stay uint8 in memory and is scaled on access.

    Args:
        x: ``(N, C, H, W)`` tensor of any real dtype.
        y: ``(N,)`` int64 labels or None.
        mask: ``(N, 1, H, W)`` tensor of {0, 1} or None.
        scale: factor applied to ``x`` when it is read (``1 / 255`` for uint8 images).
        transpose: swap H and W of each image when it is read (data stored column-major).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        scale: float = 1.0,
        transpose: bool = False,
    ) -> None:
        self.x, self.y, self.mask, self.scale, self.transpose = x, y, mask, scale, transpose

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _convert(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stored images (and masks) of one item or a range as float32, scaled and oriented."""
        x = x.to(torch.float32, copy=True)  # callers may modify what they get in place
        if self.scale != 1.0:
            x = x * self.scale
        mask = None if mask is None else mask.to(torch.float32)
        if self.transpose:
            x = x.transpose(-1, -2).contiguous()
            mask = None if mask is None else mask.transpose(-1, -2).contiguous()
        return x, mask

    def __getitem__(self, i: int) -> Item:
        x, mask = self._convert(self.x[i], None if self.mask is None else self.mask[i])
        return x, (-1 if self.y is None else int(self.y[i])), no_mask() if mask is None else mask

    def read_range(self, start: int, stop: int) -> RangeItems:
        """Items ``start..stop-1`` stacked, the same values as ``__getitem__`` gives one by one."""
        x, mask = self._convert(self.x[start:stop], None if self.mask is None else self.mask[start:stop])
        return x, (None if self.y is None else self.y[start:stop].to(torch.int64)), mask


def read_range(ds: Dataset, start: int, stop: int) -> RangeItems | None:
    """Items ``start..stop-1`` of ``ds`` as stacked tensors when it can slice (``read_range``, or a contiguous
    :class:`~torch.utils.data.Subset` of one), else None (then read them one by one)."""
    if isinstance(ds, Subset) and isinstance(ds.indices, range) and ds.indices.step == 1:
        offset = ds.indices.start
        return read_range(ds.dataset, offset + start, offset + stop)
    reader = getattr(ds, "read_range", None)
    return reader(start, stop) if reader is not None else None


class LazyDataset(Dataset):
    """``n`` items made on demand by ``make(i)``: nothing is held in memory between calls."""

    def __init__(self, n: int, make: Callable[[int], Item]) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Item:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        return self.make(i)
