"""Apply group elements to batched images: exact permutations where possible, one grid-sampling call otherwise.

**Convention** (the same as :mod:`equiaudit.groups`): tensors are ``(..., C, H, W)`` with y pointing down;
elements act about the image centre ``((W-1)/2, (H-1)/2)``; a positive angle turns the content
counter-clockwise as displayed; ``scale > 1`` zooms in. Sampling uses ``align_corners=False`` (pixel centres
at ``(2i+1)/W - 1`` in normalised coordinates), so a 90 degree turn of a square image maps pixel centres onto
pixel centres and the grid path agrees with ``torch.rot90``. Outside the image the ``padding`` mode applies
(``zeros`` by default). The transformed image is ``T_g[x](p) = x(g^-1 p)``.

Elements with ``exact=True`` (multiples of 90 degrees without scaling, optionally mirrored, after an integer
shift) go through a pixel shift and ``torch.flip`` / ``torch.rot90`` and are bit-exact; quarter turns of
non-square images fall back to sampling.

Shifts (``T(dx, dy)``, content moves right / down by positive values) and the padding: an integer shift is a
roll of the pixel grid whose shifted-in pixels are what the sampler would read there: ``zeros`` 0, ``border``
the nearest edge pixel, ``reflection`` the mirror image about the edge (``-1 -> 0``, ``-2 -> 1``, as
``grid_sample`` with ``align_corners=False``), ``circular`` the pixels that left on the other side
(``torch.roll``). Sub-pixel shifts, and every element with ``circular`` padding that is not exact, go through
the same grid sampling, with coordinates wrapped onto the torus for ``circular``. Only ``circular`` makes
integer shifts a true group action (``T(a) T(b) = T(a + b)`` exactly, and ``T(-a) T(a)`` the identity): with
the other paddings the pixels shifted out are lost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import EquiauditError
from .groups import Group, GroupElement, parse_group

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PADDINGS = ("zeros", "border", "reflection", "circular")
_WRAP_PAD = 2  # pixels of circular padding around an image sampled with padding="circular" (bicubic reads 2)
MASKS = ("auto", "disk", "none")  # and centre:H[xW] (see parse_mask)
MASK_CHOICES = (*MASKS, "centre:H[xW]")
INPUT_MASKS = ("auto", "disk", "none")


def check_options(interpolation: str, padding: str) -> None:
    """Raise a one-line error for an unknown ``interpolation`` or ``padding``."""
    if interpolation not in INTERPOLATIONS:
        raise EquiauditError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if padding not in PADDINGS:
        raise EquiauditError(f"unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")


def _check_rank(x: torch.Tensor) -> None:
    if x.dim() not in (4, 5):
        raise EquiauditError(f"expected a (B, C, H, W) or (G, B, C, H, W) tensor, got shape {tuple(x.shape)}")


def uses_exact_path(g: GroupElement, size: tuple[int, int]) -> bool:
    """Whether ``g`` is applied by permutation on an ``(H, W)`` grid (odd quarter turns need a square)."""
    k = g.quarter_turns
    return g.exact and k is not None and (k % 2 == 0 or size[0] == size[1])


def sampling_theta(elements: Sequence[GroupElement], size: tuple[int, int], inverse: bool = False) -> np.ndarray:
    """``(G, 2, 3)`` float64 ``affine_grid`` matrices: output normalised coords -> input normalised coords."""
    h, w = size
    d = np.diag([2.0 / w, 2.0 / h])
    d_inv = np.diag([w / 2.0, h / 2.0])
    thetas = np.zeros((len(elements), 2, 3))
    for i, g in enumerate(elements):
        # T_g samples the input at g^-1 p (centred pixel coordinates; normalised ones are d @ p).
        back = (g if inverse else g.inverse()).matrix()
        thetas[i, :, :2] = d @ back[:, :2] @ d_inv
        thetas[i, :, 2] = d @ back[:, 2]
    return thetas


def wrap_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A sampling grid for an image of ``size`` moved onto the torus: coordinates taken modulo the image and
    re-expressed in the image circularly padded by :data:`_WRAP_PAD` pixels (see :func:`circular_pad`), so
    every interpolation tap reads the periodic image."""
    h, w = size
    out = torch.empty_like(grid)
    for axis, n in ((0, w), (1, h)):
        pix = (grid[..., axis] + 1) * n / 2 - 0.5  # pixel coordinate, align_corners=False
        pix = torch.remainder(pix + 0.5, n) - 0.5  # in [-0.5, n - 0.5)
        out[..., axis] = (2 * (pix + _WRAP_PAD) + 1) / (n + 2 * _WRAP_PAD) - 1
    return out


def circular_pad(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` padded periodically by :data:`_WRAP_PAD` pixels on each side (for :func:`wrap_grid`)."""
    p = _WRAP_PAD
    x = torch.cat([x[..., -p:, :], x, x[..., :p, :]], -2)
    return torch.cat([x[..., -p:], x, x[..., :p]], -1)


def _shift_index(n: int, d: int, padding: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Source indices of an integer shift by ``d`` along an axis of ``n`` pixels (output ``i`` reads ``i - d``)
    mapped by the padding, and for ``zeros`` which of them are inside."""
    i = torch.arange(n, device=device) - d
    if padding == "circular":
        return torch.remainder(i, n), None
    if padding == "border":
        return i.clamp(0, n - 1), None
    if padding == "reflection":
        m = torch.remainder(i, 2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m), None
    return i.clamp(0, n - 1), (i >= 0) & (i < n)


def shift_pixels(x: torch.Tensor, dx: int, dy: int, padding: str = "zeros") -> torch.Tensor:
    """``x`` ``(..., H, W)`` with its content moved ``dx`` pixels right and ``dy`` down, exactly (no
    resampling); shifted-in pixels follow ``padding`` (see the module docstring)."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    if padding == "circular":
        return torch.roll(x, (dy, dx), dims=(-2, -1))
    iy, keep_y = _shift_index(h, dy, padding, x.device)
    ix, keep_x = _shift_index(w, dx, padding, x.device)
    out = x.index_select(-2, iy).index_select(-1, ix)
    if keep_y is not None and keep_x is not None:
        out = out * (keep_y[:, None] & keep_x[None, :]).to(x.dtype)
    return out


def sampling_grid(
    elements: Sequence[GroupElement],
    size: tuple[int, int],
    *,
    inverse: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(G, H, W, 2)`` sampling grid for ``F.grid_sample``, computed in float64, then cast."""
    theta = torch.from_numpy(sampling_theta(elements, size, inverse))
    grid = F.affine_grid(theta, [len(elements), 1, *size], align_corners=False)
    return grid.to(device=device, dtype=dtype)


def grid_sample(x: torch.Tensor, grid: torch.Tensor, interpolation: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` with ``align_corners=False``, and ``padding="circular"`` read on the torus (the grid as
    made by :func:`sampling_grid`, wrapped here)."""
    if padding == "circular":
        x, grid, padding = circular_pad(x), wrap_grid(grid, (x.shape[-2], x.shape[-1])), "zeros"
    return F.grid_sample(x, grid, mode=interpolation, padding_mode=padding, align_corners=False)


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype images of ``dtype`` are sampled in: float64 stays, everything else uses float32 (half-precision
    grids are off by up to ~0.4 px at 224 px, and the CPU has no half kernel)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ElementPlan:
    """Elements prepared for one image size, direction, device and dtype; call it on images.

    Everything that does not depend on the pixels is done once here: which elements are exact permutations
    (reduced to a flip and a number of quarter turns) and the sampling grid of all the others. Calling the plan
    costs one ``grid_sample`` plus one ``rot90`` / ``flip`` per exact element.

    Args:
        elements: the elements, in output order.
        size: ``(H, W)`` of the images the plan is called on.
        inverse: apply ``g^-1`` instead of ``g``.
        interpolation, padding: ``grid_sample`` options (see :data:`INTERPOLATIONS`, :data:`PADDINGS`).
        device, dtype: where the grid lives (see :func:`sampling_dtype`); images of another dtype are cast to
            it for sampling and back.
    """

    def __init__(
        self,
        elements: Sequence[GroupElement],
        size: tuple[int, int],
        *,
        inverse: bool = False,
        interpolation: str = "bilinear",
        padding: str = "zeros",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        check_options(interpolation, padding)
        self.elements = tuple(elements)
        self.size = (int(size[0]), int(size[1]))
        self.inverse = inverse
        self.interpolation, self.padding = interpolation, padding
        exact = [uses_exact_path(g, self.size) for g in self.elements]
        self.sampled = [i for i, e in enumerate(exact) if not e]
        # (index, quarter turns, mirror, integer shift (dx, dy) first) of the applied element
        self.exact: list[tuple[int, int, bool, tuple[int, int]]] = []
        for i, g in enumerate(self.elements):
            if exact[i]:
                h = g.inverse() if inverse else g
                shift = (round(h.shift[0]), round(h.shift[1]))
                self.exact.append((i, h.quarter_turns or 0, h.reflect, shift))
        # a contiguous run of sampled elements is read and written through views instead of gathered copies
        s = self.sampled
        self._run = slice(s[0], s[-1] + 1) if s and s[-1] - s[0] + 1 == len(s) else None
        # otherwise an index on the device, made once: a list index would be copied to the device on every call
        self._index = torch.tensor(s, dtype=torch.long, device=device)
        picked = [self.elements[i] for i in self.sampled]
        self.grid = sampling_grid(picked, self.size, inverse=inverse, device=device, dtype=dtype) if picked else None

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Apply every element to ``x``, returning ``(G, B, C, H, W)`` (written into ``out`` when given).

        ``x`` is ``(B, C, H, W)`` (every element applied to the whole batch) or ``(G, B, C, H, W)`` (element
        ``i`` applied to ``x[i]``, as when undoing each element on the model's outputs).
        """
        n = len(self.elements)
        _check_rank(x)
        stacked = x.dim() == 5
        if stacked and x.shape[0] != n:
            raise EquiauditError(f"stacked input has {x.shape[0]} slices for {n} elements")
        size = (x.shape[-2], x.shape[-1])
        if size != self.size:
            raise EquiauditError(f"images of size {size} given to transforms prepared for {self.size}")
        if self.grid is not None and not x.is_floating_point():
            raise EquiauditError(f"sampling needs floating-point images, got {x.dtype} (convert with .float())")
        if self.grid is not None and x.dtype != self.grid.dtype:  # half precision: sampled in float32
            res = self(x.to(self.grid.dtype))
            return res.to(x.dtype) if out is None else out.copy_(res)
        b, c = x.shape[-4], x.shape[-3]
        res = None
        if self.grid is not None:
            s = len(self.sampled)
            # Fold the batch into channels: one grid per element, one grid_sample call for all of them.
            src = x if not stacked or s == n else x[self._run] if self._run is not None else x[self._index]
            src = src.reshape(s, b * c, *size) if stacked else src.reshape(1, b * c, *size).expand(s, b * c, *size)
            res = grid_sample(src, self.grid, self.interpolation, self.padding).reshape(s, b, c, *size)
            if s == n and out is None:
                return res
        if out is None:
            out = torch.empty((n, b, c, *size), dtype=x.dtype, device=x.device)
        if res is not None:
            if self._run is not None:
                out[self._run].copy_(res)
            else:
                out[self._index] = res
        for i, k, mirror, (dx, dy) in self.exact:
            src = shift_pixels(x[i] if stacked else x, dx, dy, self.padding)
            if mirror:
                src = torch.flip(src, dims=(-1,))
            out[i] = torch.rot90(src, k, dims=(-2, -1)) if k else src
        return out


PlanCache = dict[tuple, ElementPlan]


def apply_elements(
    x: torch.Tensor,
    elements: Group | Sequence[GroupElement],
    *,
    inverse: bool = False,
    interpolation: str = "bilinear",
    padding: str = "zeros",
    cache: PlanCache | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply every element to a batch, returning ``(G, B, C, H, W)`` (a thin wrapper over :class:`ElementPlan`).

    Args:
        x: ``(B, C, H, W)``: every element is applied to the whole batch; or ``(G, B, C, H, W)``:
            element ``i`` is applied to ``x[i]`` (as when undoing each element on the model's outputs).
        elements: the group or its elements.
        inverse: apply ``g^-1`` instead of ``g``.
        interpolation: ``bilinear`` | ``bicubic`` | ``nearest``.
        padding: ``zeros`` | ``border`` | ``reflection``.
        cache: a dict reused across calls so plans (and their grids) are built once per
            (elements, size, direction, options, device, dtype).
        out: an optional ``(G, B, C, H, W)`` tensor to write into (e.g. a slice of the model's input buffer).

    All non-exact elements go through one ``grid_sample`` call; exact ones are permutations.
    """
    _check_rank(x)
    elements, size, dtype = tuple(elements), (x.shape[-2], x.shape[-1]), sampling_dtype(x.dtype)
    key = (elements, size, inverse, interpolation, padding, str(x.device), dtype)
    plan = None if cache is None else cache.get(key)
    if plan is None:
        plan = ElementPlan(
            elements, size, inverse=inverse, interpolation=interpolation, padding=padding, device=x.device, dtype=dtype
        )
        if cache is not None:
            cache[key] = plan
    return plan(x, out)


def transform(x: torch.Tensor, element: GroupElement, **kwargs) -> torch.Tensor:
    """Apply one element to ``(B, C, H, W)`` (a thin wrapper over :func:`apply_elements`)."""
    return apply_elements(x, (element,), **kwargs)[0]


def parse_mask(kind: str) -> tuple[str, tuple[int, int] | None]:
    """``(kind, centre)`` of a mask option: ``auto`` / ``disk`` / ``none`` with no centre, or ``centre:H[xW]``
    as ``("auto", (H, W))``; a one-line error otherwise."""
    if kind in MASKS:
        return kind, None
    match = re.fullmatch(r"centre:([1-9]\d*)(?:x([1-9]\d*))?", kind) if isinstance(kind, str) else None
    if match is None:
        raise EquiauditError(f"unknown mask {kind!r}; valid: {', '.join(MASK_CHOICES)} (e.g. centre:64)")
    return "auto", (int(match[1]), int(match[2] or match[1]))


def centre_offset(outer: int, inner: int) -> int:
    """Where a centred ``inner``-pixel span starts in ``outer`` pixels: half the margin, an odd margin's half
    rounded to even as torchvision's ``CenterCrop`` does (margin 1: 0 before, 1 after; margin 3: 2 before, 1
    after). The one convention of centre crops, pads and ``centre:`` masks."""
    return round((outer - inner) / 2.0)


def centre_region(
    inner: tuple[int, int], in_size: tuple[int, int], size: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(H, W)`` bool mask at ``size`` of the centre ``inner`` pixels of an ``in_size`` input (the image inside
    a pad canvas, say): exact at the input's resolution; at another resolution the pixels whose centres fall
    inside that span (both share the image's extent, ``align_corners=False``)."""
    if inner[0] > in_size[0] or inner[1] > in_size[1]:
        raise EquiauditError(f"mask centre:{inner[0]}x{inner[1]} is larger than the {in_size[0]}x{in_size[1]} input")
    axes = []
    for n_in, n_c, n in zip(in_size, inner, size, strict=True):
        start = centre_offset(n_in, n_c)
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * n_in / n  # in input pixels
        axes.append((centres >= start) & (centres < start + n_c))
    return (axes[0][:, None] & axes[1][None, :]).to(device)


def valid_mask(
    elements: Sequence[GroupElement],
    size: tuple[int, int],
    kind: str = "auto",
    device: torch.device | str = "cpu",
    padding: str = "zeros",
    in_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``(H, W)`` bool mask of the pixels compared by default.

    ``auto``: pixels ``p`` with ``g(p)`` inside the image (pixel centres, so bilinear taps stay inside) for every
    sampled element: undoing ``g`` on an output reads it at ``g(p)``. For many rotations this is the inscribed
    disk; for scales > 1 the common visible centre; for shifts the pixels whose shifted position stays inside.
    With ``padding="circular"`` the image is a torus, so shifts keep every pixel: only the elements' linear parts
    count. ``disk``: the inscribed disk. ``none``: every pixel. ``centre:H[xW]``: the ``auto`` region within the
    centre ``H x W`` pixels of the ``in_size`` input (default ``size``; :func:`centre_region`), e.g. the image
    inside a pad canvas.
    """
    kind, centre = parse_mask(kind)
    if centre is not None:
        region = centre_region(centre, in_size or size, size).to(device)
        if not bool(region.any()):  # nothing compared would read as an error of 0
            raise EquiauditError(
                f"mask centre:{centre[0]}x{centre[1]} holds no pixel centre of a {size[0]}x{size[1]} map; "
                f"give a larger centre"
            )
        return valid_mask(elements, size, kind, device, padding) & region
    h, w = size
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    keep = np.ones(h * w, dtype=bool)
    if kind == "disk":
        r = (min(h, w) - 1) / 2.0
        keep = (xs.ravel() - (w - 1) / 2) ** 2 + (ys.ravel() - (h - 1) / 2) ** 2 <= r * r + 1e-9
    elif kind == "auto":
        eps = 1e-6
        for g in elements:
            if padding == "circular":
                g = g.linear_part
            if uses_exact_path(g, size) and not g.shifted:  # a permutation of the pixel grid
                continue
            q = g.matrix(size) @ pts
            keep &= (q[0] >= -eps) & (q[0] <= w - 1 + eps) & (q[1] >= -eps) & (q[1] <= h - 1 + eps)
    return torch.from_numpy(keep.reshape(h, w)).to(device)


def input_region(
    elements: Sequence[GroupElement],
    size: tuple[int, int],
    kind: str = "auto",
    device: torch.device | str = "cpu",
    padding: str = "zeros",
) -> torch.Tensor | None:
    """``(H, W)`` bool region an input is restricted to before any element is applied, or None (unmasked).

    The region is filled with 0 outside, so the untransformed view and every transformed view hold the same
    content: nothing that one view shows is cut away or padded in another. ``auto``: the pixels that every
    sampled element keeps inside the image (:func:`valid_mask`'s ``auto`` region: the inscribed disk for many
    rotations, the common centre for zooms in), and None when no sampled element moves content across the
    border (exact groups such as ``c4`` or flips, zooms out only, shifts with circular padding). ``disk``: the
    inscribed disk. ``none``: None.
    """
    if kind not in INPUT_MASKS:
        raise EquiauditError(f"unknown input mask {kind!r}; valid: {', '.join(INPUT_MASKS)}")
    if kind == "none":
        return None
    region = valid_mask(elements, size, "disk" if kind == "disk" else "auto", device, padding)
    return None if kind == "auto" and bool(region.all()) else region


def at_resolution(
    elements: Sequence[GroupElement], in_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[GroupElement, ...]:
    """The elements as they act on an output of ``out_size`` computed from an input of ``in_size``: shifts in
    output pixels (a stride-2 output sees a 2 px input shift as 1 px), the linear part unchanged (both images
    share the centre under ``align_corners=False``)."""
    fy, fx = out_size[0] / in_size[0], out_size[1] / in_size[1]
    return tuple(g.at_resolution(fx, fy) if g.shifted else g for g in elements)


def apply_per_row(
    x: torch.Tensor,
    elements: Sequence[GroupElement],
    *,
    interpolation: str = "bilinear",
    padding: str = "zeros",
) -> torch.Tensor:
    """Apply ``elements[i]`` to row ``i`` of ``x`` ``(N, C, H, W)``: one batched grid (one theta per row) and one
    grid sampling call, with the conventions of :class:`ElementPlan`'s sampled path. For searches that draw a
    different element per image."""
    _check_rank(x)
    if x.dim() != 4 or x.shape[0] != len(elements):
        raise EquiauditError(f"apply_per_row needs (N, C, H, W) with N = {len(elements)}, got {tuple(x.shape)}")
    check_options(interpolation, padding)
    dtype = sampling_dtype(x.dtype)
    size = (x.shape[-2], x.shape[-1])
    grid = sampling_grid(elements, size, device=x.device, dtype=dtype)
    res = grid_sample(x.to(dtype), grid, interpolation, padding)
    return res.to(x.dtype)


class GroupTransform(nn.Module):
    """Module face of :func:`apply_elements`: stores the group and options, caches grids across calls."""

    def __init__(
        self, group: str | Group, steps: int | None = None, *, interpolation: str = "bilinear", padding: str = "zeros"
    ) -> None:
        super().__init__()
        check_options(interpolation, padding)
        self.group = parse_group(group, steps)
        self.interpolation = interpolation
        self.padding = padding
        self._cache: PlanCache = {}

    def forward(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        return apply_elements(
            x,
            self.group.elements,
            inverse=inverse,
            interpolation=self.interpolation,
            padding=self.padding,
            cache=self._cache,
        )

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo each element on its own slice of ``(G, B, C, H, W)``."""
        return self.forward(y, inverse=True)

    def extra_repr(self) -> str:
        return (
            f"group={self.group.spec!r}, size={len(self.group)}, interpolation={self.interpolation!r}, "
            f"padding={self.padding!r}"
        )
