"""The Lie derivative (Gruver et al., ICLR 2023): the local equivariance error of a model under the continuous
rotation and scaling, at the identity, per image, for the output and per layer. It does not depend on an
angle grid, so it complements the grid audit.

For a generator ``A`` (``rotation``: the angle in radians; ``scale``: the log of the scale factor) and the
transform ``T_t = exp(t A)`` of :mod:`equiaudit.transforms`' convention (about the centre, y down, a positive
angle counter-clockwise as displayed, scale > 1 zooms in):

* the input tangent ``v = d/dt T_t x |_{t=0}`` is the transform differentiated at the identity in closed form:
  ``rotation``: ``v(p) = -p_y d_x x + p_x d_y x``; ``scale``: ``v(p) = -(p_x d_x x + p_y d_y x)``, with ``p``
  centred pixel coordinates and the derivatives by central differences (the derivative of the image's
  Catmull-Rom interpolant at the pixel centres; one-sided on the border);
* ``torch.func.jvp`` carries ``v`` through the model: ``J_f(x) v``, for the output and, with hooks that return
  the chosen layers' outputs from the same function, for every layer;
* the Lie derivative is ``L = J_f(x) v`` for invariant outputs (logits: centred, as the grid audit's invariance
  error) and ``L = J_f(x) v - A_out f(x)`` for feature maps (``A_out``: the same generator at the map's own
  resolution). Regular and field-type layers get none (a continuous turn does not act on a discrete group axis).

Reported per image as ``||L|| / ||f(x)||`` (per radian, per unit of log scale), inside the inscribed disk for
maps; the mean over images is what the result shows. At a small angle ``e`` the grid audit's error is about
``|e|`` times this.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .actions import is_geometric
from .metrics import centred
from .observers import ObservedBatch, Observer, Setup
from .transforms import valid_mask

GENERATORS = ("rotation", "scale")
TRANSFORM = "closed-form generator at the identity, central differences; torch.func.jvp through the model"


def generators_for(elements: Sequence[Any]) -> tuple[str, ...]:
    """The continuous motions the audited group moves along: rotation and / or scale (rotation when neither)."""
    found = tuple(
        name
        for name, moved in (
            ("rotation", any(g.angle != 0 for g in elements)),
            ("scale", any(abs(g.scale - 1) > 1e-9 for g in elements)),
        )
        if moved
    )
    return found or ("rotation",)


def tangent(x: torch.Tensor, generator: str) -> torch.Tensor:
    """``d/dt T_t x`` at ``t = 0`` for ``(..., H, W)`` maps (see the module docstring)."""
    h, w = x.shape[-2:]
    dy, dx = torch.gradient(x, dim=(-2, -1)) if min(h, w) > 1 else (torch.zeros_like(x), torch.zeros_like(x))
    py = torch.arange(h, dtype=x.dtype, device=x.device)[:, None] - (h - 1) / 2
    px = torch.arange(w, dtype=x.dtype, device=x.device)[None, :] - (w - 1) / 2
    if generator == "rotation":
        return -py * dx + px * dy
    return -(px * dx + py * dy)


def _flat(t: Any) -> torch.Tensor:
    return t.tensor if is_geometric(t) else t


def _norms(value: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``||value|| / ||ref||`` per image over all trailing dims (inside ``mask`` when given)."""
    if mask is not None:
        m = mask.to(ref.dtype)
        value, ref = value * m, ref * m
    num = torch.linalg.vector_norm(value.flatten(1), dim=1)
    return num / torch.linalg.vector_norm(ref.flatten(1), dim=1).clamp_min(1e-12)


class LieProbe:
    """Computes the per-image Lie derivatives of a batch: the output and the layers named in ``layers`` with
    their action kind (``trivial`` / ``spatial``; any other gives NaN)."""

    def __init__(self, module: nn.Module, root: nn.Module, setup: Setup, layers: Sequence[str] = ()) -> None:
        self.module, self.setup = module, setup
        self.named = dict(root.named_modules())
        self.layers = list(layers)
        self._disks: dict[tuple[int, int], torch.Tensor] = {}  # per map size: made once, not per chunk
        self.kinds: list[str] = ["spatial"] * len(self.layers)
        self.generators = generators_for(setup.elements)

    def _run(self, x: torch.Tensor, v: torch.Tensor) -> tuple[Any, Any]:
        captured: dict[str, torch.Tensor] = {}

        def hook(name: str) -> Any:
            def record(_m: nn.Module, _i: Any, out: Any) -> None:
                captured[name] = _flat(out).clone()  # an in-place activation may follow

            return record

        def f(inp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            captured.clear()
            return self.module(inp), dict(captured)

        handles = [self.named[n].register_forward_hook(hook(n)) for n in self.layers]
        try:
            with warnings.catch_warnings():  # torch.func scripts a helper on first use and warns about it
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
                return torch.func.jvp(f, (x,), (v,))
        finally:
            for h in handles:
                h.remove()

    def __call__(self, x: torch.Tensor, batch: int) -> dict[str, dict[str, torch.Tensor]]:
        """``{generator: {"output": (B,), "layers": (L, B)}}`` for images ``x``, in forwards of ``batch``."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for gen in self.generators:
            parts = [self._one(x[i : i + batch], gen) for i in range(0, x.shape[0], batch)]
            out[gen] = {k: torch.cat([p[k] for p in parts], dim=-1) for k in ("output", "layers")}
        return out

    def _one(self, x: torch.Tensor, gen: str) -> dict[str, torch.Tensor]:
        (y, feats), (ty, tfeats) = self._run(x, tangent(x, gen))
        y, ty = y.detach(), ty.detach()
        classify = self.setup.task == "classify"
        output = _norms(centred(ty), centred(y), None) if classify else self._spatial(y, ty, gen)
        rows = []
        for name, kind in zip(self.layers, self.kinds, strict=True):
            f, tf = feats[name].detach(), tfeats[name].detach()
            if kind == "trivial" or f.dim() < 3:
                rows.append(_norms(tf, f, None))
            elif kind == "spatial":
                rows.append(self._spatial(f.flatten(1, -3), tf.flatten(1, -3), gen))
            else:
                rows.append(torch.full((x.shape[0],), float("nan"), device=x.device, dtype=y.dtype))
        layers = torch.stack(rows) if rows else y.new_zeros((0, x.shape[0]))
        return {"output": output, "layers": layers}

    def _spatial(self, f: torch.Tensor, tf: torch.Tensor, gen: str) -> torch.Tensor:
        """``||J v - A f|| / ||f||`` inside the map's inscribed disk."""
        size = (f.shape[-2], f.shape[-1])
        if size not in self._disks:
            self._disks[size] = valid_mask((), size, "disk", f.device)
        return _norms(tf - tangent(f, gen), f, self._disks[size])


@dataclass
class RecordedProbe:
    """What a merge needs of a shard's :class:`LieProbe`: the generators and the layer names."""

    generators: tuple[str, ...]
    layers: list[str]


class LieObserver(Observer):
    """Per generator: the mean and the largest per-image Lie derivative of the output and of each layer."""

    name = "lie"

    def __init__(self, probe: LieProbe) -> None:
        super().__init__()
        self.probe = probe

    def setup(self, setup: Setup) -> None:
        k, n_l, dev = len(self.probe.generators), len(self.probe.layers), setup.device
        self.add_state("count", torch.zeros((), dtype=torch.float64, device=dev), "sum")
        self.add_state("out_sum", torch.zeros(k, dtype=torch.float64, device=dev), "sum")
        self.add_state("out_max", torch.zeros(k, dtype=torch.float64, device=dev), "max")
        self.add_state("layer_sum", torch.zeros((k, n_l), dtype=torch.float64, device=dev), "sum")

    def describe(self) -> dict[str, Any]:
        """What a merge needs to rebuild this observer without the model."""
        return {"generators": list(self.probe.generators), "layers": list(self.probe.layers)}

    @classmethod
    def recorded(cls, doc: dict[str, Any]) -> LieObserver:
        return cls(RecordedProbe(tuple(doc["generators"]), list(doc["layers"])))  # type: ignore[arg-type]

    def update(self, batch: ObservedBatch) -> None:
        if batch.lie is None:
            return
        for i, gen in enumerate(self.probe.generators):
            got = batch.lie[gen]
            self.out_sum[i] += got["output"].double().sum()
            self.out_max[i] = torch.maximum(self.out_max[i], got["output"].double().max())
            if len(self.probe.layers):
                self.layer_sum[i] += got["layers"].double().sum(-1)
        self.count += batch.size

    def compute(self) -> dict[str, dict[str, Any]]:
        """``{generator: {"mean", "max", "layers": [mean per layer]}}``."""
        n = self.count.clamp_min(1)
        return {
            gen: {
                "mean": float(self.out_sum[i] / n),
                "max": float(self.out_max[i]),
                "layers": (self.layer_sum[i] / n).tolist(),
            }
            for i, gen in enumerate(self.probe.generators)
        }

    def report(self) -> dict[str, Any]:
        """The document's ``lie`` section."""
        values = self.compute()
        return {
            "generators": list(self.probe.generators),
            "units": {"rotation": "per radian", "scale": "per unit of log scale"},
            "transform": TRANSFORM,
            "images": int(self.count),
            "output": {k: {"mean": _num(v["mean"]), "max": _num(v["max"])} for k, v in values.items()},
        }


def _num(value: float) -> float | None:
    return None if value != value else float(value)
