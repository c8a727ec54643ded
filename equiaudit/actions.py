"""How a group element acts on a feature map (``rho`` in ``rho(g)^-1 Phi(T_g x) = Phi(x)``), and its undo.

**Convention** (that of :mod:`equiaudit.groups` and :mod:`equiaudit.transforms`): an element is
``R(angle) · S(scale) · F^reflect`` about the map's centre, y down, a positive angle counter-clockwise as
displayed; the spatial part of every action is an :class:`~equiaudit.transforms.ElementPlan` at the map's own
size (quarter turns and flips of square maps by ``rot90`` / ``flip``, the rest by ``grid_sample`` with
``align_corners=False`` and the audit's interpolation and padding).

Actions:

* ``trivial``: ``rho(g) = 1``: invariant features and logits;
* ``spatial``: ``(rho(g) f)(p) = f(g^-1 p)``: plain feature maps, every channel moved alike;
* ``regular:N`` / ``regular:dN``: spatial plus the regular representation of ``C_N`` (a group axis of size N) or
  ``D_N`` (size 2N, index ``m·N + r`` for ``R^r F^m``, the zoo's group CNN order) in the channels:
  ``(rho(g) f)_s(p) = f_{g^-1 s}(g^-1 p)``, the lifting / group-convolution maps of a G-CNN whose filter ``s`` is
  the base filter turned by ``s``. ``layout`` says where the group axis sits: ``cg`` (channel ``c·N + s``: the
  group innermost, as e2cnn's regular fields and a ``(B, C, G, H, W)`` map flattened) or ``gc`` (``s·C + c``);
* ``field``: an e2cnn ``GeometricTensor`` transformed by its own field type: the spatial part as above and the
  channels by ``type.representation(g)`` (e2cnn is imported only when such an output is met).

An element outside what an action can represent (a 45 degree turn for ``regular:4``, a reflection for a cyclic
one, a non-group element for a finite e2cnn group) gives NaN for that element: no claim is made there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import EquiauditError
from .groups import GroupElement
from .transforms import ElementPlan, sampling_dtype

ACTION_FORMS = "auto, trivial, spatial, regular:N (cyclic C_N) or regular:dN (dihedral D_N)"
LAYOUTS = ("cg", "gc")
_REGULAR = re.compile(r"regular:(d?)(\d+)")


@dataclass(frozen=True)
class ActionSpec:
    """A parsed action name: ``kind`` (auto, trivial, spatial, regular, field), the rotation order ``n`` and
    whether the regular representation is dihedral."""

    kind: str
    n: int = 0
    dihedral: bool = False

    @property
    def axis(self) -> int:
        """Size of the group axis in the channels (regular actions)."""
        return 2 * self.n if self.dihedral else self.n

    @property
    def name(self) -> str:
        if self.kind == "regular":
            return f"regular:{'d' if self.dihedral else ''}{self.n}"
        return self.kind


def parse_action(text: Any) -> ActionSpec:
    """``auto``, ``trivial``, ``spatial``, ``regular:N`` or ``regular:dN``; anything else is a one-line error."""
    value = str(text).strip().lower() if isinstance(text, str) else None
    if value in ("auto", "trivial", "spatial"):
        return ActionSpec(value)
    match = _REGULAR.fullmatch(value or "")
    if match and int(match.group(2)) >= 1:
        return ActionSpec("regular", int(match.group(2)), bool(match.group(1)))
    raise EquiauditError(f"unknown layer action {text!r}; valid: {ACTION_FORMS}")


def regular_index(g: GroupElement, spec: ActionSpec) -> tuple[int, int] | None:
    """``(r, m)`` with ``g``'s rotation ``R^r F^m`` in the regular representation's group, or None when ``g``'s
    turn is not a multiple of ``360/N`` (or it reflects and the group is cyclic)."""
    k = g.angle * spec.n / 360.0
    if abs(k - round(k)) > 1e-6 or (g.reflect and not spec.dihedral):
        return None
    return round(k) % spec.n, int(g.reflect)


def regular_permutation(g: GroupElement, spec: ActionSpec) -> list[int] | None:
    """``perm[s]`` = index of ``g · s`` on the group axis (so ``(rho(g)^-1 f)_s = f_{g s}`` after the spatial
    undo), or None when ``g`` is not in the group. Composition ``R^a F^m R^b F^k = R^(a + (-1)^m b) F^(m + k)``."""
    at = regular_index(g, spec)
    if at is None:
        return None
    a, m = at
    n = spec.n
    states = [(r, f) for f in range(2 if spec.dihedral else 1) for r in range(n)]
    index = {s: i for i, s in enumerate(states)}
    return [index[((a + (-1) ** m * r) % n, (m + f) % 2)] for r, f in states]


def spatial_size(shape: Sequence[int]) -> tuple[int, int] | None:
    """``(h, w)`` of a per-image feature shape with spatial axes (``(C, h, w)`` or ``(C, G, h, w)``), else None."""
    return (int(shape[-2]), int(shape[-1])) if len(shape) >= 3 else None


class FeatureAction:
    """An action prepared for one feature shape and the audit's elements; :meth:`undo` applies ``rho(g)^-1`` to
    ``(G, B, *shape)`` (element ``i`` on slice ``i``), :meth:`round_trip` the spatial ``T_g^-1 T_g`` of the
    sampled elements (the per-layer floor)."""

    def __init__(
        self,
        spec: ActionSpec,
        elements: Sequence[GroupElement],
        shape: Sequence[int],
        *,
        interpolation: str,
        padding: str,
        device: torch.device,
        dtype: torch.dtype,
        layout: str = "cg",
        field_type: Any = None,
    ) -> None:
        self.spec, self.elements, self.shape = spec, tuple(elements), tuple(shape)
        self.layout, self.field_type = layout, field_type
        self.size = spatial_size(shape) if spec.kind != "trivial" else None
        self.defined = [True] * len(self.elements)
        kw = dict(interpolation=interpolation, padding=padding, device=device, dtype=sampling_dtype(dtype))
        self.back = ElementPlan(self.elements, self.size, inverse=True, **kw) if self.size else None
        self.sampled_index = [i for i, g in enumerate(self.elements) if self.size and not _exact(g, self.size)]
        picked = [self.elements[i] for i in self.sampled_index]
        self.trip_there = ElementPlan(picked, self.size, **kw) if picked else None
        self.trip_back = ElementPlan(picked, self.size, inverse=True, **kw) if picked else None
        self.channel_ops = self._channel_ops(device, dtype)

    def _channel_ops(self, device: torch.device, dtype: torch.dtype) -> list[Any]:
        """Per element: None (no channel change), a permutation index or a ``(C, C)`` matrix of ``rho(g)^-1``."""
        kind = self.spec.kind
        if kind == "regular":
            channels = math.prod(self.shape[:-2])
            if channels % self.spec.axis:
                raise EquiauditError(
                    f"{self.spec.name} needs channels in multiples of {self.spec.axis}; the map has {channels}"
                )
            ops = []
            for i, g in enumerate(self.elements):
                perm = regular_permutation(g, self.spec)
                self.defined[i] = perm is not None
                ops.append(None if perm is None else _channel_index(perm, channels, self.layout, device))
            return ops
        if kind == "field":
            ops = []
            for i, g in enumerate(self.elements):
                matrix = _field_matrix(self.field_type, g)
                self.defined[i] = matrix is not None
                ops.append(None if matrix is None else matrix.to(device=device, dtype=dtype))
            return ops
        return [None] * len(self.elements)

    def flat(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., *shape)`` as ``(..., C, h, w)`` (group axes folded into the channels) or ``(..., D)``."""
        lead = y.shape[: y.dim() - len(self.shape)]
        if self.size is None:
            return y.reshape(*lead, -1)
        return y.reshape(*lead, -1, *self.size)

    def undo(self, y: torch.Tensor) -> torch.Tensor:
        """``rho(g_i)^-1 y[i]`` for ``y`` ``(G, B, *shape)``; returns the flat form (see :meth:`flat`), NaN rows
        where the action does not represent the element."""
        y = self.flat(y)
        if self.back is not None:
            y = self.back(y)
        if self.spec.kind == "regular":
            y = torch.stack([y[i] if op is None else y[i].index_select(1, op) for i, op in enumerate(self.channel_ops)])
        elif self.spec.kind == "field":
            ops = self.channel_ops
            y = torch.stack([y[i] if op is None else _mix(op, y[i]) for i, op in enumerate(ops)])
        if not all(self.defined):
            y = y.clone()
            y[[i for i, d in enumerate(self.defined) if not d]] = float("nan")
        return y

    def round_trip(self, ref: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor | None:
        """``(S, B, C, h, w)``: ``T_g^-1 T_g`` of the flat reference under each sampled element (the padding
        brings in ``fill``, the layer's output on a zero image, as the dense floor does)."""
        if self.trip_there is None:
            return None
        ref = self.flat(ref)
        if fill is None:
            return self.trip_back(self.trip_there(ref))
        fill = self.flat(fill).to(ref.dtype)
        return self.trip_back(self.trip_there(ref - fill) + fill)


def _mix(matrix: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``matrix @ y`` on the channel axis of ``(B, C, h, w)``."""
    return torch.einsum("dc,bchw->bdhw", matrix, y)


def _exact(g: GroupElement, size: tuple[int, int] | None) -> bool:
    from .transforms import uses_exact_path

    return size is None or uses_exact_path(g, size)


def _channel_index(perm: list[int], channels: int, layout: str, device: torch.device) -> torch.Tensor:
    """The channel gather index of a group-axis permutation in a ``cg`` or ``gc`` layout."""
    axis = len(perm)
    fields = channels // axis
    p = torch.tensor(perm, dtype=torch.long)
    if layout == "cg":
        index = (torch.arange(fields)[:, None] * axis + p[None, :]).reshape(-1)
    else:
        index = (p[:, None] * fields + torch.arange(fields)[None, :]).reshape(-1)
    return index.to(device)


# ---- e2cnn field types (optional) --------------------------------------------------------------------------


def is_geometric(value: Any) -> bool:
    """Whether ``value`` is an e2cnn ``GeometricTensor`` (without importing e2cnn when it is not loaded)."""
    import sys

    module = sys.modules.get("e2cnn.nn")
    geometric = getattr(module, "GeometricTensor", None)
    return geometric is not None and isinstance(value, geometric)


def e2cnn_element(gspace: Any, g: GroupElement) -> Any:
    """The e2cnn group element of ``g``, or None when its fibre group does not hold it.

    e2cnn's rotation ``r`` turns the map as ``rot90`` does (counter-clockwise as displayed, our convention); its
    flip element ``(1, 0)`` of ``FlipRot2dOnR2`` (flip axis pi/2) mirrors left-right like ours. Both are pinned by
    the zoo's e2cnn models in the tests."""
    if abs(g.scale - 1.0) > 1e-9:
        return None
    group = gspace.fibergroup
    order = group.order()
    flips = getattr(gspace, "flips_order", 0) > 0 or "Flip" in type(gspace).__name__
    if g.reflect and not flips:
        return None
    if order > 0:
        n = getattr(group, "rotation_order", order // (2 if flips else 1))
        k = g.angle * n / 360.0
        if abs(k - round(k)) > 1e-6:
            return None
        r = round(k) % n
    else:
        r = math.radians(g.angle)
    return (int(g.reflect), r) if flips else r


def _field_matrix(field_type: Any, g: GroupElement) -> torch.Tensor | None:
    """``rho(g)^-1 = rho(g^-1)`` of a field type as a ``(C, C)`` tensor (float64 from e2cnn), or None."""
    element = e2cnn_element(field_type.gspace, g)
    if element is None:
        return None
    inverse = field_type.fibergroup.inverse(element)
    return torch.as_tensor(field_type.representation(inverse), dtype=torch.float64)
