"""``blossoms``: generated, rotationally symmetric flowers (an offline stand-in for the flowers data).

Each image is one blossom of ``k`` identical petals (``k`` in :data:`PETAL_COUNTS`) of one shape
(:data:`PETAL_SHAPES`) and one colour (:data:`COLOURS`), with a centre disc, over a two-colour texture. The
class is the combination (count, shape, colour): 24 classes, balanced in every split. Orientation is uniform
in [0, 360), the centre is jittered, and size, colour shade and background vary per image.

**Convention:** coordinates are normalised to [-1, 1] across the image (pixel centres, ``align_corners=False``),
y pointing down; the blossom's orientation ``phi`` turns counter-clockwise as displayed. A blossom of ``k``
petals rendered with ``phi + 2 pi / k`` is the same image, and rotating an image about the blossom's centre by
``a`` degrees gives the blossom with ``phi + a`` over the rotated background. Every shape is symmetric about
its petal axes, so a blossom is also mirror-symmetric: its symmetry group is the dihedral group ``D_k``.

Geometry and texture are functions of the normalised coordinates, so one item rendered at 96 or 224 pixels is
the same scene at two resolutions. Rendering is batched in torch (2x2 supersampled, stored as uint8);
parameters are drawn per split from ``(seed, split)`` in one go, so the first ``n`` items do not depend on how
many are made.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .core import ArrayDataset, Source, check_split

PETAL_COUNTS = (5, 6, 7, 8)
PETAL_SHAPES = ("round", "pointed")
COLOURS = {
    "yellow": (0.95, 0.80, 0.15),
    "magenta": (0.85, 0.20, 0.60),
    "blue": (0.30, 0.45, 0.95),
}
PER_CLASS = {"train": 150, "val": 20, "test": 50}
NATIVE_SIZE = 96
_SPLIT_KEY = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 2
_CHUNK = 64  # images rendered at once
_WAVES = 6  # cosines summed into the background texture


def class_names() -> list[str]:
    """``"<count>-<shape>-<colour>"`` in label order (count slowest, colour fastest)."""
    return [f"{k}-{s}-{c}" for k in PETAL_COUNTS for s in PETAL_SHAPES for c in COLOURS]


def class_parts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (count, shape, colour) of each label into :data:`PETAL_COUNTS`, :data:`PETAL_SHAPES`, colours."""
    n_shape, n_colour = len(PETAL_SHAPES), len(COLOURS)
    return labels // (n_shape * n_colour), (labels // n_colour) % n_shape, labels % n_colour


@dataclass
class BlossomParams:
    """Everything that decides a batch of ``n`` images (tensors with a leading dimension ``n``)."""

    label: torch.Tensor  # (n,) int64
    phi: torch.Tensor  # (n,) orientation in radians, counter-clockwise as displayed
    centre: torch.Tensor  # (n, 2) blossom centre (x, y), normalised coordinates
    radius: torch.Tensor  # (n,) petal length, normalised
    disc: torch.Tensor  # (n,) radius of the centre disc as a fraction of ``radius``
    petal_rgb: torch.Tensor  # (n, 3)
    disc_rgb: torch.Tensor  # (n, 3)
    back_rgb: torch.Tensor  # (n, 2, 3) the two colours of the background texture
    waves: torch.Tensor  # (n, WAVES, 4): frequency x, frequency y (cycles per unit), phase, amplitude

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def select(self, index: slice | torch.Tensor) -> BlossomParams:
        return BlossomParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_params(labels: torch.Tensor, gen: torch.Generator) -> BlossomParams:
    """Random parameters for blossoms of classes ``labels``, drawn from ``gen``."""
    n = labels.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    _, _, colour = class_parts(labels)
    base = torch.tensor(list(COLOURS.values()))[colour]
    petal = (base * uniform(0.8, 1.0, 1) + uniform(-0.06, 0.06, 3)).clamp(0, 1)
    disc_rgb = torch.stack([uniform(0.35, 0.6), uniform(0.2, 0.4), uniform(0.0, 0.15)], dim=1)
    greens = torch.stack([uniform(0.05, 0.3), uniform(0.25, 0.55), uniform(0.05, 0.3)], dim=1)
    darks = uniform(0.02, 0.25, 3)
    back = torch.stack([greens, darks], dim=1)
    angle = uniform(0.0, 2 * math.pi, _WAVES)
    freq = uniform(0.5, 2.5, _WAVES)
    waves = torch.stack(
        [freq * torch.cos(angle), freq * torch.sin(angle), uniform(0, 2 * math.pi, _WAVES), uniform(0.5, 1.0, _WAVES)],
        dim=-1,
    )
    return BlossomParams(
        label=labels.to(torch.int64),
        phi=uniform(0.0, 2 * math.pi),
        centre=uniform(-0.12, 0.12, 2),
        radius=uniform(0.45, 0.75),
        disc=uniform(0.22, 0.32),
        petal_rgb=petal,
        disc_rgb=disc_rgb,
        back_rgb=back,
        waves=waves,
    )


def _grid(size: tuple[int, int], supersample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (x, y) of the sample points, ``(H*s, W*s)`` each."""
    h, w = size[0] * supersample, size[1] * supersample
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    return torch.meshgrid(xs, ys, indexing="xy")


def petal_profile(s: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Petal length (a fraction of the radius) at ``s`` in [-1, 1] across a petal (0 on its axis): round
    petals are elliptical arcs, pointed ones end in a tip. Even in ``s``, so every petal is mirror-symmetric."""
    round_ = torch.sqrt((1 - s * s).clamp_min(0))
    pointed = (1 - s.abs()).clamp_min(0) ** 1.3
    return torch.where(shape == 0, round_, pointed)


def background(p: BlossomParams, size: tuple[int, int]) -> torch.Tensor:
    """The texture ``(n, 3, H, W)`` at pixel centres: two colours mixed by a sum of random low-frequency
    cosines, each split as ``cos(a + b) = cos a cos b - sin a sin b`` into a product of a row and a column
    term (one batched matrix product instead of a cosine per pixel and wave)."""
    x, y = _grid(size, 1)
    fx, fy, phase, amp = (p.waves[..., i, None] for i in range(4))  # (n, WAVES, 1)
    ax = math.pi * fx * x[0] + phase  # (n, WAVES, W)
    by = math.pi * fy * y[:, 0]  # (n, WAVES, H)
    rows = torch.cat([amp * torch.cos(by), -amp * torch.sin(by)], dim=1)  # (n, 2 WAVES, H)
    cols = torch.cat([torch.cos(ax), torch.sin(ax)], dim=1)  # (n, 2 WAVES, W)
    z = rows.transpose(1, 2) @ cols  # (n, H, W)
    t = torch.sigmoid(2.5 * z / amp.pow(2).sum(dim=1, keepdim=True).sqrt())[:, None]
    return p.back_rgb[:, 0, :, None, None] * (1 - t) + p.back_rgb[:, 1, :, None, None] * t


def coverage(p: BlossomParams, size: tuple[int, int], supersample: int) -> tuple[torch.Tensor, ...]:
    """Per pixel ``(n, 1, H, W)``: the shaded petal coverage, the petal coverage and the disc coverage
    (fractions of the ``supersample`` x ``supersample`` samples)."""
    x, y = _grid(size, supersample)
    dx = x - p.centre[:, 0, None, None]
    dy = y - p.centre[:, 1, None, None]
    r = torch.sqrt(dx * dx + dy * dy)
    theta = torch.atan2(-dy, dx)  # counter-clockwise as displayed (y points down)
    count_idx, shape_idx, _ = class_parts(p.label)
    k = torch.tensor(PETAL_COUNTS, dtype=torch.float32)[count_idx][:, None, None]
    sector = 2 * math.pi / k
    s = (torch.remainder(theta - p.phi[:, None, None] + sector / 2, sector) - sector / 2) / (sector / 2)
    radius = p.radius[:, None, None]
    disc = (r <= p.disc[:, None, None] * radius).float()
    petal = (r <= radius * petal_profile(s, shape_idx[:, None, None])).float() * (1 - disc)
    shade = 0.7 + 0.3 * (r / radius).clamp(0, 1)
    pool = functools.partial(F.avg_pool2d, kernel_size=supersample)
    return pool((petal * shade)[:, None]), pool(petal[:, None]), pool(disc[:, None])


def render(
    p: BlossomParams, size: tuple[int, int] = (NATIVE_SIZE, NATIVE_SIZE), supersample: int = _SUPERSAMPLE
) -> torch.Tensor:
    """Images ``(n, 3, H, W)`` in [0, 1] of the blossoms ``p``: petals and disc antialiased by
    ``supersample`` x ``supersample`` samples per pixel over the (smooth) background."""
    shaded, petal, disc = coverage(p, size, supersample)
    rgb = p.petal_rgb[:, :, None, None] * shaded + p.disc_rgb[:, :, None, None] * disc
    return background(p, size) * (1 - petal - disc) + rgb


def split_labels(split: str, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """The labels of ``split`` (each class ``PER_CLASS[split]`` times, in a random order) and the generator
    that then draws their parameters."""
    gen = torch.Generator().manual_seed(1_000_003 * seed + 17 * _SPLIT_KEY[split] + 5)
    n_classes = len(class_names())
    labels = torch.arange(PER_CLASS[split] * n_classes) % n_classes
    return labels[torch.randperm(labels.shape[0], generator=gen)], gen


def split_params(split: str, seed: int) -> BlossomParams:
    """The parameters of every blossom of ``split`` in order."""
    labels, gen = split_labels(split, seed)
    return draw_params(labels, gen)


@functools.lru_cache(maxsize=8)
def _rendered(split: str, size: tuple[int, int], seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images of ``split`` as uint8 ``(count, 3, H, W)`` and their labels."""
    params = split_params(split, seed).select(slice(0, count))
    out = torch.empty(count, 3, *size, dtype=torch.uint8)
    for start in range(0, count, _CHUNK):
        chunk = render(params.select(slice(start, start + _CHUNK)), size)
        out[start : start + _CHUNK] = (chunk * 255).round().to(torch.uint8)
    return out, params.label


def load_blossoms(split: str, size: tuple[int, int] | None, limit: int | None, seed: int) -> Source:
    """``blossoms``: 96x96 RGB (or rendered at ``size``), 24 classes; train 3,600 / val 480 / test 1,200."""
    check_split(split, ("train", "val", "test", "all"), "blossoms")
    size = size or (NATIVE_SIZE, NATIVE_SIZE)
    parts = list(PER_CLASS) if split == "all" else [split]
    xs, ys, left = [], [], limit
    for part in parts:
        total = PER_CLASS[part] * len(class_names())
        count = total if left is None else min(total, left)
        if count <= 0:
            break
        x, y = _rendered(part, tuple(size), seed, count)
        xs.append(x)
        ys.append(y)
        left = None if left is None else left - count
    desc = (
        f"generated blossoms ({'/'.join(map(str, PETAL_COUNTS))} petals, {'/'.join(PETAL_SHAPES)}, "
        f"{'/'.join(COLOURS)}: {len(class_names())} classes; random orientation, position, size, shade and "
        f"background), RGB {size[0]}x{size[1]}, {split} split, seed {seed}"
    )
    return Source(
        ArrayDataset(torch.cat(xs), torch.cat(ys), scale=1 / 255),
        desc,
        split,
        has_labels=True,
        has_masks=False,
        class_names=class_names(),
        num_classes=len(class_names()),
        seed=seed,
    )
