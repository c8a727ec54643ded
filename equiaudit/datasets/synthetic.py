"""Data that ships with equiaudit or is generated: UCI digits (plain, rotated, rescaled), noise, shapes.

Everything here is deterministic: the digits split uses a fixed permutation, and every generated
item is drawn from its own generator keyed by ``(seed, stream, index)`` so that any item can be made
alone, in any order, without holding the others in memory.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from .core import (
    STREAM_NOISE,
    STREAM_ROT_DIGITS,
    STREAM_SCALE_DIGITS,
    STREAM_SHAPES,
    ArrayDataset,
    Item,
    LazyDataset,
    Source,
    check_split,
    no_mask,
    rng,
)

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN = 1297  # of 1,797: the remaining 500 are the test split
DIGIT_CANVAS, DIGIT_BOX = 28, 20  # MNIST layout: the digit fills a 20x20 box centred on 28x28
SCALE_RANGE = (0.3, 1.0)  # as MNIST-scale (Sosnovik et al., 2020)
NOISE_SIGMA_F = 1 / 16  # cycles / pixel: Gaussian low-pass of the noise (spatial sigma ~ 2.5 px)
SHAPES_COUNTS = {"train": 512, "test": 128}
SHAPES_SIZE = (64, 64)
_SHAPES_SPLIT_KEY = {"train": 0, "test": 1}
_SUPERSAMPLE = 4
SHAPES_CACHE = 1024  # shapes items kept in memory (48 KB each at 64x64)


# --------------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def digit_canvases() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 shipped digits in the MNIST layout: ``(1797, 1, 28, 28)`` floats in [0, 1] and labels.

    Each 8x8 digit (values 0..16) is divided by 16, resized to 20x20 (antialiased bilinear) and centred
    on a black 28x28 canvas, so rotating it about the centre does not cut strokes.
    """
    blob = resources.files("equiaudit.shipped_data").joinpath("digits.npz").read_bytes()
    with np.load(io.BytesIO(blob)) as npz:
        images, labels = npz["images"], npz["labels"]
    x = torch.from_numpy(images).to(torch.float32).unsqueeze(1) / 16
    x = F.interpolate(x, size=(DIGIT_BOX, DIGIT_BOX), mode="bilinear", antialias=True, align_corners=False)
    pad = (DIGIT_CANVAS - DIGIT_BOX) // 2
    return F.pad(x.clamp_(0, 1), (pad, pad, pad, pad)), torch.from_numpy(labels.astype(np.int64))


def digits_indices(split: str) -> np.ndarray:
    """Indices into the 1,797 digits of ``split`` ('train', 'test' or 'all'), in their fixed order."""
    n = digit_canvases()[0].shape[0]
    # RandomState, not default_rng: its stream is frozen across NumPy versions, so the split is too.
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    return {"train": perm[:DIGITS_TRAIN], "test": perm[DIGITS_TRAIN:], "all": perm}[split]


def scale_about_centre(x: torch.Tensor, factors: torch.Tensor, supersample: int = _SUPERSAMPLE) -> torch.Tensor:
    """Scale each image of ``x`` (B, C, H, W) about its centre by ``factors`` (B,), zeros outside.

    Antialiased by supersampling: bilinear samples on a ``supersample``-times finer grid, box-averaged.
    """
    b, c, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factors.to(x.dtype)
    grid = F.affine_grid(theta, [b, c, h * supersample, w * supersample], align_corners=False)
    fine = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(fine, supersample)


def load_digits(variant: str, split: str, limit: int | None, seed: int) -> Source:
    """``digits``, ``rot-digits`` (random angle in [0, 360) each) or ``scale-digits`` (factor in [0.3, 1])."""
    check_split(split, ("train", "test", "all"), variant)
    canvases, labels = digit_canvases()
    idx = digits_indices(split)[:limit]
    x = canvases[torch.from_numpy(idx)]
    desc = "UCI hand-written digits (Alpaydin & Kaynak 1998, via scikit-learn; shipped), 28x28"
    used_seed = None
    if variant == "rot-digits":
        from kornia.geometry.transform import rotate

        angles = torch.tensor([rng(seed, STREAM_ROT_DIGITS, int(i)).uniform(0.0, 360.0) for i in idx])
        x = rotate(x, angles.to(x.dtype), mode="bilinear").clamp_(0, 1) if len(idx) else x
        desc, used_seed = desc + f", each rotated by a random angle in [0, 360) (seed {seed})", seed
    elif variant == "scale-digits":
        factors = torch.tensor([rng(seed, STREAM_SCALE_DIGITS, int(i)).uniform(*SCALE_RANGE) for i in idx])
        x = scale_about_centre(x, factors).clamp_(0, 1) if len(idx) else x
        desc += f", each rescaled by a random factor in [{SCALE_RANGE[0]}, {SCALE_RANGE[1]}] (seed {seed})"
        used_seed = seed
    return Source(
        ArrayDataset(x, labels[torch.from_numpy(idx)]),
        f"{desc}, {split} split",
        split,
        has_labels=True,
        has_masks=False,
        class_names=[str(d) for d in range(10)],
        num_classes=10,
        seed=used_seed,
    )


# ---------------------------------------------------------------------------------------------- noise


@functools.lru_cache(maxsize=16)
def _gaussian_gain(h: int, w: int, sigma_f: float) -> np.ndarray:
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    return np.exp(-(fx**2 + fy**2) / (2 * sigma_f**2)).astype(np.float32)


def lowpass_noise(gen: np.random.Generator, shape: tuple[int, ...], sigma_f: float) -> np.ndarray:
    """White Gaussian noise of ``shape`` (..., H, W) filtered by a Gaussian of ``sigma_f`` cycles/pixel.

    The filter is applied in the Fourier domain (periodic), so the result is isotropic and band-limited.
    NumPy's single-threaded FFT is used on purpose: small transforms through torch's thread pool are
    slower, and far slower on a busy machine.
    """
    h, w = shape[-2:]
    white = gen.standard_normal(shape, dtype=np.float32)
    return np.fft.irfft2(np.fft.rfft2(white) * _gaussian_gain(h, w, float(sigma_f)), s=(h, w))


def noise_item(shape: tuple[int, int, int], seed: int, index: int) -> Item:
    """Noise image ``index``: band-limited, each channel standardised to mean 0 and std 1."""
    z = lowpass_noise(rng(seed, STREAM_NOISE, index), shape, NOISE_SIGMA_F)
    z = (z - z.mean(axis=(1, 2), keepdims=True)) / (z.std(axis=(1, 2), keepdims=True) + 1e-12)
    return torch.from_numpy(z.astype(np.float32)), -1, no_mask()


def load_noise(shape: tuple[int, int, int], count: int, seed: int) -> Source:
    """``count`` band-limited noise images of ``shape``, made lazily per index."""
    c, h, w = shape
    desc = (
        f"band-limited Gaussian noise {c}x{h}x{w} (low-pass sigma {NOISE_SIGMA_F:.4g} cycles/pixel, "
        f"standardised per channel), seed {seed}"
    )
    return Source(
        LazyDataset(count, functools.partial(noise_item, shape, seed)),
        desc,
        "all",
        has_labels=False,
        has_masks=False,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------- shapes


def _inside_polygon(pts: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of ``pts`` (P, 2) lie inside the polygon ``verts`` (V, 2)."""
    px, py = pts[:, :1], pts[:, 1:]
    x0, y0 = verts[None, :, 0], verts[None, :, 1]
    x1, y1 = np.roll(verts[:, 0], 1)[None], np.roll(verts[:, 1], 1)[None]
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return ((crosses & (px < x_at)).sum(axis=1) % 2) == 1


def _shape_test(gen: np.random.Generator) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, float]:
    """A random ellipse, polygon or star: (points (P, 2) -> inside (P,), centre, radius that bounds it)."""
    centre = gen.uniform(-0.45, 0.45, size=2)
    radius = gen.uniform(0.25, 0.5)  # with the centre range, every shape lies inside the image
    theta = gen.uniform(0.0, 2 * np.pi)
    kind = gen.integers(3)
    if kind == 0:  # ellipse with semi-axes radius and radius * aspect
        aspect = gen.uniform(0.4, 0.9)
        c, s = np.cos(theta), np.sin(theta)

        def inside(p: np.ndarray) -> np.ndarray:
            d = p - centre
            u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
            return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0

        return inside, centre, radius
    if kind == 1:  # irregular polygon with 3..7 vertices, star-shaped about its centre
        n = int(gen.integers(3, 8))
        angles = theta + 2 * np.pi * (np.arange(n) + gen.uniform(-0.25, 0.25, n)) / n
        radii = radius * gen.uniform(0.75, 1.0, n)
    else:  # star with 4..7 points
        n = 2 * int(gen.integers(4, 8))
        angles = theta + 2 * np.pi * np.arange(n) / n
        radii = np.where(np.arange(n) % 2 == 0, radius, radius * gen.uniform(0.35, 0.6))
    verts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return (lambda p: _inside_polygon(p, verts)), centre, radius


def _window(centre: float, extent: float, n: int) -> slice:
    """The pixels (of ``n`` along one axis, normalised coordinates [-1, 1]) within ``centre +- extent``."""
    lo, hi = np.floor((centre - extent + 1) / 2 * n), np.ceil((centre + extent + 1) / 2 * n)
    return slice(max(int(lo), 0), min(int(hi), n))


def _points(h: int, w: int, sub: int, rows: slice, cols: slice) -> np.ndarray:
    """Sample points (x, y) in normalised coordinates, ``sub`` x ``sub`` per pixel of the window.

    Ordered so that reshaping to (rows, sub, cols, sub) groups each pixel's samples.
    """
    ys = (np.arange(rows.start * sub, rows.stop * sub) + 0.5) / (h * sub) * 2 - 1
    xs = (np.arange(cols.start * sub, cols.stop * sub) + 0.5) / (w * sub) * 2 - 1
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _background(gen: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A two-colour texture (3, h, w): band-limited noise or stripes of random frequency/orientation."""
    c1, c2 = gen.uniform(0, 1, size=(2, 3, 1, 1))
    if gen.integers(2) == 0:
        z = lowpass_noise(gen, (h, w), gen.uniform(1 / 32, 1 / 8))
        t = 1 / (1 + np.exp(-2.0 * z / (z.std() + 1e-12)))
    else:
        phi, freq, phase = gen.uniform(0, np.pi), gen.uniform(2, 6), gen.uniform(0, 2 * np.pi)
        yy, xx = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
        t = 0.5 + 0.5 * np.sin(np.pi * freq * (xx * np.cos(phi) + yy * np.sin(phi)) + phase)
    return c1 * (1 - t) + c2 * t


def _foreground_colour(gen: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour that stands out from the mean background colour."""
    mean = background.mean(axis=(1, 2))
    for _ in range(16):
        colour = gen.uniform(0, 1, size=3)
        if np.linalg.norm(colour - mean) > 0.5:
            return colour
    return np.where(mean > 0.5, 0.05, 0.95)


def shapes_item(size: tuple[int, int], seed: int, split: str, index: int) -> Item:
    """Shapes image ``index`` of ``split``: 1-3 shapes over a texture, and their exact union mask.

    Pixels are blended by the shape's coverage (4x4 supersampling); the mask says whether the pixel
    centre lies inside a shape, so it is exact. The last :data:`SHAPES_CACHE` items made are kept (copies are
    returned), as training runs read the same images again and again.
    """
    x, y, mask = _shapes_item(tuple(size), seed, split, index)
    return x.clone(), y, mask.clone()


@functools.lru_cache(maxsize=SHAPES_CACHE)
def _shapes_item(size: tuple[int, int], seed: int, split: str, index: int) -> Item:
    h, w = size
    key = _SHAPES_SPLIT_KEY[split]
    # Separate generators: the texture draws a number of values that depends on the size, the shapes
    # must not, so that the same item has the same geometry at any resolution.
    image = _background(rng(seed, STREAM_SHAPES, key, index, 0), h, w)
    gen = rng(seed, STREAM_SHAPES, key, index, 1)
    mask = np.zeros((h, w), dtype=bool)
    x_centres = (np.arange(w) + 0.5) / w * 2 - 1
    for _ in range(int(gen.integers(1, 4))):
        inside, centre, extent = _shape_test(gen)
        colour = _foreground_colour(gen, image)
        # Only the shape's bounding window is tested: everything outside it is background.
        rows, cols = _window(centre[1], extent, h), _window(centre[0], extent, w)
        nr, nc, sub = rows.stop - rows.start, cols.stop - cols.start, _SUPERSAMPLE
        cover = np.zeros((h, w))
        cover[rows, cols] = inside(_points(h, w, sub, rows, cols)).reshape(nr, sub, nc, sub).mean(axis=(1, 3))
        mask[rows, cols] |= inside(_points(h, w, 1, rows, cols)).reshape(nr, nc)
        shade = 0.8 + 0.2 * np.cos(gen.uniform(0, 2 * np.pi) + np.pi * x_centres)[None, :]
        fg = np.clip(colour[:, None, None] * shade, 0, 1)
        image = image * (1 - cover) + fg * cover
    x = torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))
    return x, -1, torch.from_numpy(mask[None].astype(np.float32))


def load_shapes(split: str, size: tuple[int, int] | None, limit: int | None, seed: int) -> Source:
    """``shapes-seg``: RGB images with foreground masks, made lazily per index; train 512 / test 128."""
    check_split(split, ("train", "test", "all"), "shapes-seg")
    size = size or SHAPES_SIZE
    parts = ["train", "test"] if split == "all" else [split]
    makers = [(p, i) for p in parts for i in range(SHAPES_COUNTS[p])][:limit]

    def make(i: int) -> Item:
        return shapes_item(size, seed, *makers[i])

    desc = (
        f"generated shapes with exact masks (ellipses, polygons, stars on noise/stripe textures), "
        f"RGB {size[0]}x{size[1]}, {split} split, seed {seed}"
    )
    return Source(LazyDataset(len(makers), make), desc, split, has_labels=False, has_masks=True, seed=seed)
