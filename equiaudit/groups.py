"""Transformation groups and their elements, named by one spec string everywhere.

**Convention:** an element ``g = R(angle) · S(scale) · F^reflect`` acts on image coordinates
(x to the right, y *down*, origin at the image centre ``((W-1)/2, (H-1)/2)``):

* ``F`` mirrors left-right (``x -> -x``), applied first;
* ``S`` scales about the centre; ``scale > 1`` zooms in (content grows);
* ``R`` rotates about the centre; a positive angle turns the content **counter-clockwise as displayed**.

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
    "scale:a,b,c, scale:A..B:N, id, and products such as c4*scale:0.8,1,1.25"
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


@dataclass(frozen=True)
class GroupElement:
    """One replayable group element ``R(angle) · S(scale) · F^reflect`` (see the module convention)."""

    angle: float = 0.0
    scale: float = 1.0
    reflect: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.angle) or not math.isfinite(self.scale) or self.scale <= 0:
            raise GroupSpecError(f"invalid element: angle={self.angle}, scale={self.scale} (scale must be > 0)")
        object.__setattr__(self, "angle", _canonical_angle(float(self.angle)))
        object.__setattr__(self, "scale", float(f"{self.scale:.12g}"))
        object.__setattr__(self, "reflect", bool(self.reflect))

    @property
    def is_identity(self) -> bool:
        return self.angle == 0.0 and abs(self.scale - 1.0) < _ATOL and not self.reflect

    @property
    def quarter_turns(self) -> int | None:
        """k when the rotation is k·90 degrees (mod 4), else None."""
        k = self.angle / 90.0
        return round(k) % 4 if abs(k - round(k)) < _ATOL else None

    @property
    def exact(self) -> bool:
        """True when the element permutes the pixel grid of a square image (``rot90`` / ``flip``)."""
        return abs(self.scale - 1.0) < _ATOL and self.quarter_turns is not None

    @property
    def label(self) -> str:
        # Product order, as in spec strings: ``rot90*hflip`` is R(90)·F, the mirror acting first.
        parts = [f"rot{_fmt(self.angle)}"] if self.angle != 0.0 else []
        if abs(self.scale - 1.0) >= _ATOL:
            parts.append(f"scale{_fmt(self.scale)}")
        if self.reflect:
            parts.append("hflip")
        return "*".join(parts) or "identity"

    def params(self) -> dict[str, float | bool]:
        return {"angle": self.angle, "scale": self.scale, "reflect": self.reflect}

    def linear(self) -> np.ndarray:
        """2x2 float64 linear part ``R·S·F`` in y-down image coordinates."""
        t = math.radians(self.angle)
        c, s = math.cos(t), math.sin(t)
        # y points down, so a counter-clockwise turn as displayed is this matrix (a clockwise one in y-up maths).
        rot = np.array([[c, s], [-s, c]], dtype=np.float64)
        flip = np.diag([-1.0, 1.0]) if self.reflect else np.eye(2)
        return rot @ (self.scale * flip)

    def matrix(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """2x3 float64 forward map of points. Centred coordinates, or pixel indices of an ``(H, W)`` image."""
        lin = self.linear()
        if size is None:
            return np.concatenate([lin, np.zeros((2, 1))], axis=1)
        h, w = size
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        return np.concatenate([lin, (centre - lin @ centre)[:, None]], axis=1)

    def inverse(self) -> GroupElement:
        # (R_a S_s F)^-1 = F S_1/s R_-a = R_a S_1/s F, since F R_-a = R_a F.
        angle = self.angle if self.reflect else -self.angle
        return GroupElement(angle, 1.0 / self.scale, self.reflect)

    def __mul__(self, other: GroupElement) -> GroupElement:
        """Composition ``self · other`` (``other`` acts first)."""
        sign = -1.0 if self.reflect else 1.0
        return GroupElement(self.angle + sign * other.angle, self.scale * other.scale, self.reflect ^ other.reflect)

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
        """``rotation``, ``scale``, ``reflection`` or ``mixed``: which axis the elements vary along."""
        angles = {g.angle for g in self.elements}
        scales = {g.scale for g in self.elements}
        reflects = {g.reflect for g in self.elements}
        varying = [
            name for name, s in (("rotation", angles), ("scale", scales), ("reflection", reflects)) if len(s) > 1
        ]
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
