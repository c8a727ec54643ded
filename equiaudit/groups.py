"""Transformation groups and their elements, named by one spec string everywhere.

**Convention:** an element ``g = R(angle) · S(scale) · F^reflect · T(shift)`` acts on image coordinates
(x to the right, y *down*, origin at the image centre ``((W-1)/2, (H-1)/2)``):

* ``T`` translates by ``shift = (dx, dy)`` pixels, applied first; positive ``dx`` moves the content **right**,
  positive ``dy`` moves it **down** (as displayed);
* ``F`` mirrors left-right (``x -> -x``);
* ``S`` scales about the centre; ``scale > 1`` zooms in (content grows);
* ``R`` rotates about the centre; a positive angle turns the content **counter-clockwise as displayed**.

So ``p -> L (p + shift)`` with ``L = R·S·F``: the shift acts before the rotation, and a product
``rot:-30..30:31*translate:-3..3:7`` lists exactly the grid's (angle, shift) pairs. Shifts are in pixels of the
image the element is applied to (outputs of another resolution get the shift scaled to theirs, see
:meth:`GroupElement.at_resolution`). Integer shifts with ``scale == 1`` and quarter turns are exact (a roll of
the pixel grid, :mod:`equiaudit.transforms`); with ``padding="circular"`` they form a true group action (the
image lives on a torus: ``T(a)·T(b) = T(a+b)`` pixel for pixel, nothing is lost at the border).

Angles are in degrees at the interface and radians inside. ``matrix()`` is the forward map of points
(where an input point lands in the output), computed in float64.

Spec strings (case-insensitive, products with ``*``):

=====================  =====================================================================
``so2`` / ``so2:N``    N evenly spaced angles in [0, 360), identity included (N = ``steps`` or 36)
``rot:A..B:N``         N evenly spaced angles from A to B inclusive; ``rot:0,15,30`` lists angles
``cN`` (``c4``)        the N rotations by multiples of 360/N
``dN`` (``d4``)        the N rotations and the N reflections (2N elements)
``flip`` / ``hflip``   identity and the left-right mirror; ``vflip``: identity and the up-down mirror
``scale:a,b,c``        scale factors; ``scale:A..B:N`` N log-spaced factors from A to B inclusive
``shift:DX,DY``        one translation by (DX, DY) pixels (and the identity is *not* added)
``translate:A..B:N``   every shift (dx, dy) with dx and dy on N evenly spaced values from A to B (N*N)
``translate:a,b,c``    the same grid on listed values; ``translate-x:`` / ``translate-y:`` one axis only
``id``                 the identity alone
``G*H``                every product ``g·h`` (e.g. ``c4*scale:0.8,1,1.25``)
=====================  =====================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from .errors import GroupSpecError

VALID_FORMS = (
    "so2, so2:N, rot:A..B:N, rot:a,b,c, cN (c4), dN (d4), flip, hflip, vflip, "
    "scale:a,b,c, scale:A..B:N, shift:DX,DY, translate:A..B:N, translate-x:A..B:N, translate-y:a,b,c, id, "
    "and products such as c4*scale:0.8,1,1.25 or rot:-30..30:31*translate:-3..3:7"
)
DEFAULT_SO2_STEPS = 36
_ATOL = 1e-9


def _canonical_angle(angle: float) -> float:
    """Angle in degrees folded into (-180, 180], rounded so that 360/N steps print cleanly."""
    a = math.remainder(angle, 360.0)
    if a <= -180.0 + _ATOL:
        a += 360.0
    r = round(a, 9)
    return 0.0 if r == 0 else r


def _fmt(value: float) -> str:
    return f"{value:g}"


def _canonical_shift(shift: tuple[float, float]) -> tuple[float, float]:
    """``(dx, dy)`` as floats rounded to 1e-9 px, so that composed integer shifts stay integers."""
    values = tuple(float(v) for v in shift)
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise GroupSpecError(f"invalid shift {shift!r}: two finite numbers (dx, dy) in pixels")
    return tuple(0.0 if round(v, 9) == 0 else round(v, 9) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True)
class GroupElement:
    """One replayable group element ``R(angle) · S(scale) · F^reflect · T(shift)`` (see the module convention)."""

    angle: float = 0.0
    scale: float = 1.0
    reflect: bool = False
    shift: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not math.isfinite(self.angle) or not math.isfinite(self.scale) or self.scale <= 0:
            raise GroupSpecError(f"invalid element: angle={self.angle}, scale={self.scale} (scale must be > 0)")
        object.__setattr__(self, "angle", _canonical_angle(float(self.angle)))
        object.__setattr__(self, "scale", float(f"{self.scale:.12g}"))
        object.__setattr__(self, "reflect", bool(self.reflect))
        object.__setattr__(self, "shift", _canonical_shift(self.shift))

    @property
    def is_identity(self) -> bool:
        return self.angle == 0.0 and abs(self.scale - 1.0) < _ATOL and not self.reflect and not self.shifted

    @property
    def shifted(self) -> bool:
        """Whether the element translates."""
        return self.shift != (0.0, 0.0)

    @property
    def integer_shift(self) -> bool:
        """Whether the shift is a whole number of pixels on both axes."""
        return all(abs(v - round(v)) < _ATOL for v in self.shift)

    @property
    def quarter_turns(self) -> int | None:
        """k when the rotation is k·90 degrees (mod 4), else None."""
        k = self.angle / 90.0
        return round(k) % 4 if abs(k - round(k)) < _ATOL else None

    @property
    def exact(self) -> bool:
        """True when the element moves pixels onto pixels of a square image (``rot90`` / ``flip`` / an integer
        shift): no resampling. Shifts move content across the border, where the padding applies."""
        return abs(self.scale - 1.0) < _ATOL and self.quarter_turns is not None and self.integer_shift

    @property
    def label(self) -> str:
        # Product order, as in spec strings: ``rot90*hflip`` is R(90)·F, the mirror acting first.
        parts = [f"rot{_fmt(self.angle)}"] if self.angle != 0.0 else []
        if abs(self.scale - 1.0) >= _ATOL:
            parts.append(f"scale{_fmt(self.scale)}")
        if self.reflect:
            parts.append("hflip")
        if self.shifted:
            parts.append(f"shift({_fmt(self.shift[0])},{_fmt(self.shift[1])})")
        return "*".join(parts) or "identity"

    def params(self) -> dict[str, float | bool]:
        dx, dy = self.shift
        return {"angle": self.angle, "scale": self.scale, "reflect": self.reflect, "dx": dx, "dy": dy}

    @property
    def linear_part(self) -> GroupElement:
        """The element without its shift (``R·S·F``)."""
        return GroupElement(self.angle, self.scale, self.reflect)

    def at_resolution(self, factor_x: float, factor_y: float) -> GroupElement:
        """The same element on an image resampled by ``factor`` (output pixels per input pixel): the shift is
        scaled, the linear part (about the centre) is unchanged."""
        return GroupElement(self.angle, self.scale, self.reflect, (self.shift[0] * factor_x, self.shift[1] * factor_y))

    def linear(self) -> np.ndarray:
        """2x2 float64 linear part ``R·S·F`` in y-down image coordinates."""
        t = math.radians(self.angle)
        c, s = math.cos(t), math.sin(t)
        # y points down, so a counter-clockwise turn as displayed is this matrix (a clockwise one in y-up maths).
        rot = np.array([[c, s], [-s, c]], dtype=np.float64)
        flip = np.diag([-1.0, 1.0]) if self.reflect else np.eye(2)
        return rot @ (self.scale * flip)

    def matrix(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """2x3 float64 forward map of points ``p -> L (p + shift)``. Centred coordinates, or pixel indices of an
        ``(H, W)`` image."""
        lin = self.linear()
        moved = lin @ np.asarray(self.shift, dtype=np.float64)
        if size is None:
            return np.concatenate([lin, moved[:, None]], axis=1)
        h, w = size
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        return np.concatenate([lin, (centre - lin @ centre + moved)[:, None]], axis=1)

    def inverse(self) -> GroupElement:
        # (L T(t))^-1 = T(-t) L^-1 = L^-1 T(-L t); (R_a S_s F)^-1 = F S_1/s R_-a = R_a S_1/s F, since F R_-a = R_a F.
        angle = self.angle if self.reflect else -self.angle
        back = -(self.linear() @ np.asarray(self.shift, dtype=np.float64))
        return GroupElement(angle, 1.0 / self.scale, self.reflect, (float(back[0]), float(back[1])))

    def __mul__(self, other: GroupElement) -> GroupElement:
        """Composition ``self · other`` (``other`` acts first): ``L1 T1 L2 T2 = L1 L2 T(L2^-1 t1 + t2)``."""
        sign = -1.0 if self.reflect else 1.0
        shift = other.shift
        if self.shifted:
            moved = np.linalg.solve(other.linear(), np.asarray(self.shift, dtype=np.float64))
            shift = (float(moved[0]) + shift[0], float(moved[1]) + shift[1])
        return GroupElement(
            self.angle + sign * other.angle, self.scale * other.scale, self.reflect ^ other.reflect, shift
        )

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Group:
    """A finite set of test elements named by a spec string."""

    spec: str
    elements: tuple[GroupElement, ...]

    def __len__(self) -> int:
        return len(self.elements)

    def __iter__(self) -> Iterator[GroupElement]:
        return iter(self.elements)

    def __getitem__(self, i: int) -> GroupElement:
        return self.elements[i]

    @property
    def exact(self) -> bool:
        return all(g.exact for g in self.elements)

    @property
    def labels(self) -> list[str]:
        return [g.label for g in self.elements]

    @property
    def kind(self) -> str:
        """``rotation``, ``scale``, ``reflection``, ``translation`` or ``mixed``: which axis the elements vary
        along."""
        angles = {g.angle for g in self.elements}
        scales = {g.scale for g in self.elements}
        reflects = {g.reflect for g in self.elements}
        shifts = {g.shift for g in self.elements}
        axes = (("rotation", angles), ("scale", scales), ("reflection", reflects), ("translation", shifts))
        varying = [name for name, s in axes if len(s) > 1]
        return varying[0] if len(varying) == 1 else ("mixed" if varying else "trivial")

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "size": len(self),
            "exact": self.exact,
            "kind": self.kind,
            "elements": [g.label for g in self.elements],
        }


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GroupSpecError(f"bad number {text!r} in group spec {spec!r}; valid forms: {VALID_FORMS}") from None
    if not math.isfinite(value):
        raise GroupSpecError(f"bad number {text!r} in group spec {spec!r}; valid forms: {VALID_FORMS}")
    return value


def _count(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise GroupSpecError(
            f"bad count {text!r} in group spec {spec!r} (a positive integer); valid forms: {VALID_FORMS}"
        )
    return int(text)


def _values(body: str, spec: str, log: bool) -> list[float]:
    """``a,b,c`` or ``A..B:N`` (linear, or log-spaced when ``log``)."""
    m = re.fullmatch(r"(.+?)\.\.(.+?):(\d+)", body)
    if m:
        lo, hi, n = _number(m[1], spec), _number(m[2], spec), _count(m[3], spec)
        if log:
            if lo <= 0 or hi <= 0:
                raise GroupSpecError(f"scale factors must be > 0 in {spec!r}; valid forms: {VALID_FORMS}")
            return [float(v) for v in np.geomspace(lo, hi, n)]
        return [float(v) for v in np.linspace(lo, hi, n)]
    if ".." in body:
        raise GroupSpecError(f"a range needs a count, as in rot:-30..30:31, in {spec!r}; valid forms: {VALID_FORMS}")
    return [_number(v, spec) for v in body.split(",") if v.strip()] or [_number(body, spec)]


def _factor(token: str, spec: str, steps: int | None) -> list[GroupElement]:
    t = token.strip().lower()
    if t in ("id", "identity", "e", "trivial"):
        return [GroupElement()]
    if t == "so2" or t.startswith("so2:"):
        n = _count(t[4:], spec) if ":" in t else (steps or DEFAULT_SO2_STEPS)
        return [GroupElement(360.0 * i / n) for i in range(n)]
    if t.startswith("rot:"):
        return [GroupElement(a) for a in _values(t[4:], spec, log=False)]
    if t.startswith("scale:"):
        factors = _values(t[6:], spec, log=True)
        if any(f <= 0 for f in factors):
            raise GroupSpecError(f"scale factors must be > 0 in {spec!r}; valid forms: {VALID_FORMS}")
        return [GroupElement(scale=f) for f in factors]
    if t.startswith(("shift:", "translate:", "translate-x:", "translate-y:")):
        return _translations(t, spec)
    if t in ("flip", "hflip"):
        return [GroupElement(), GroupElement(reflect=True)]
    if t == "vflip":
        return [GroupElement(), GroupElement(180.0, reflect=True)]
    m = re.fullmatch(r"([cd])(\d+)", t)
    if m:
        n = _count(m[2], spec)
        rotations = [GroupElement(360.0 * i / n) for i in range(n)]
        return rotations + ([GroupElement(360.0 * i / n, reflect=True) for i in range(n)] if m[1] == "d" else [])
    raise GroupSpecError(f"unknown group {token!r} in spec {spec!r}; valid forms: {VALID_FORMS}")


def _translations(token: str, spec: str) -> list[GroupElement]:
    """``shift:DX,DY`` (one element), ``translate:V`` (the grid V x V), ``translate-x:V`` / ``translate-y:V``."""
    name, _, body = token.partition(":")
    if name == "shift":
        values = _values(body, spec, log=False)
        if ".." in body or len(values) != 2:
            raise GroupSpecError(f"shift takes two numbers, as in shift:2,-1, in {spec!r}; valid forms: {VALID_FORMS}")
        return [GroupElement(shift=(values[0], values[1]))]
    values = _values(body, spec, log=False)
    if name == "translate-x":
        return [GroupElement(shift=(v, 0.0)) for v in values]
    if name == "translate-y":
        return [GroupElement(shift=(0.0, v)) for v in values]
    return [GroupElement(shift=(dx, dy)) for dy in values for dx in values]


def parse_group(spec: str | Group | Sequence[GroupElement], steps: int | None = None) -> Group:
    """Parse a spec string (see the module docstring) into a :class:`Group`; duplicates are dropped in order."""
    if isinstance(spec, Group):
        return spec
    if not isinstance(spec, str):
        elements = tuple(spec)
        if not elements or not all(isinstance(g, GroupElement) for g in elements):
            raise GroupSpecError("a group is a spec string or a non-empty sequence of GroupElement")
        return Group("custom:" + ",".join(g.label for g in elements), elements)
    if steps is not None and steps < 1:
        raise GroupSpecError(f"--steps must be a positive integer, got {steps}")
    text = spec.strip()
    if not text:
        raise GroupSpecError(f"empty group spec; valid forms: {VALID_FORMS}")
    factors = [_factor(tok, spec, steps) for tok in text.split("*")]
    product = reduce(lambda acc, f: [a * b for a in acc for b in f], factors)
    unique = tuple(dict.fromkeys(product))
    canonical = "*".join(
        f"so2:{steps or DEFAULT_SO2_STEPS}" if tok == "so2" else tok for tok in text.lower().replace(" ", "").split("*")
    )
    return Group(canonical, unique)
