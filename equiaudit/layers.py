"""Per-layer equivariance: which modules are looked at, their outputs from the engine's one pass, and the error
``|| rho(g)^-1 Phi(T_g x) - Phi(x) || / || Phi(x) ||`` of each (inside the compared region at the layer's own
resolution), with its own interpolation floor and verdict.

The engine runs the model once per chunk of images (the untransformed images and every moved element in the
same forwards, :mod:`equiaudit.engine`); while it does, forward hooks copy the chosen modules' outputs into one
buffer per layer (:class:`LayerRecorder`). :class:`LayerObserver` turns each chunk into per-layer sums and
maxima and drops the maps: memory is one chunk's feature maps, whatever the number of images.

Selection (``layers``): ``auto`` takes the modules a person would look at: every convolution (``nn.Conv*``,
any module whose class name says ``Conv``: the zoo's group convolutions, e2cnn's ``R2Conv``), every block (a
module that is not a plain container and holds a convolution: a ResNet ``BasicBlock``) and e2cnn's pooling
modules, never activations or normalisations; ``all`` every module that runs once per forward with a tensor
output; ``NAME[,NAME...]`` the named modules (``named_modules()`` names of the model). The root is the audit's
output and is never a layer. A module that runs more than once per forward (a shared activation) is left out.

Verdict (``LAYER_RULE``): an element that is a permutation at the layer's size holds when its largest
single-image error is within the dtype's round-off (:data:`equiaudit.roundoff.FLOAT_TOLERANCE`); an
interpolated one when its mean error is at most ``FLOOR_RATIO`` times its mean floor plus that round-off. A
layer holds when every element its action represents holds; the first layer (in execution order) that does
not is where the model breaks.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .actions import ActionSpec, FeatureAction, is_geometric, parse_action, spatial_size
from .errors import EquiauditError, OptionError
from .groups import GroupElement
from .metrics import relative_error
from .observers import ObservedBatch, Observer, Setup
from .roundoff import FLOAT_TOLERANCE
from .transforms import at_resolution, uses_exact_path, valid_mask

FLOOR_RATIO = 2.0
LAYER_RULE = (
    "exact elements: largest single-image error <= the dtype's round-off; interpolated elements: mean error <= "
    f"{FLOOR_RATIO:g} x the mean floor + that round-off"
)
# Auto keeps a regular action only when it fits clearly better than the spatial one on the exact elements.
AUTO_MARGIN = 0.5
AUTO_IMAGES = 8  # images the choice is made on
# Bytes the recorded feature maps of one chunk may take (see LayerRecorder.cap_batch).
RECORD_BYTES = {"cpu": 128 << 20, "other": 2 << 30}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class LayerInfo:
    """What the probe learnt of one chosen module."""

    name: str
    module: str  # class name
    order: int  # first call in the forward
    shape: tuple[int, ...]  # per image
    geometric: bool = False
    field_type: Any = field(default=None, repr=False)
    fill: torch.Tensor | None = field(default=None, repr=False)  # output on a zero image (1, *shape)


def _output_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if is_geometric(value):
        return value.tensor
    return None


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, _CONTAINERS) or type(module).__name__ == "SequentialModule"


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) or "Conv" in type(module).__name__


def _auto_pick(module: nn.Module) -> bool:
    if _is_container(module):
        return False
    if _is_conv(module):
        return True
    if type(module).__module__.startswith("e2cnn") and "Pool" in type(module).__name__:
        return True
    return any(_is_conv(m) for m in module.modules() if m is not module)


def parse_layers(text: Any) -> str | None:
    """Validate the ``layers`` option's form: None (off), ``auto``, ``all`` or ``NAME[,NAME...]``."""
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip() or any(not n.strip() for n in text.split(",")):
        raise EquiauditError(f"layers must be auto, all or NAME[,NAME...], got {text!r}")
    value = ",".join(n.strip() for n in text.split(","))
    return None if value.lower() == "none" else value


class LayerRecorder:
    """Forward hooks on the chosen modules: :meth:`probe` picks them, :meth:`recording` copies their outputs of
    one chunk's forwards into one buffer per layer (rows in the engine's order), :meth:`take` hands them over."""

    def __init__(self, root: nn.Module, selection: str) -> None:
        self.root, self.selection = root, selection
        self.modules = dict(root.named_modules())
        self.layers: list[LayerInfo] = []
        self.notes: list[str] = []
        self._buffers: dict[str, torch.Tensor] = {}
        self._filled: dict[str, int] = {}
        self._rows = 0

    def probe(self, module: nn.Module, x: torch.Tensor) -> None:
        """Run ``module`` (the audited model, ``root`` inside it) on ``x`` and a zero image with hooks on every
        submodule; keep the selected ones in execution order, with each one's output on the zero image."""
        seen: dict[str, list[Any]] = {}
        rows = x.shape[0] + 1

        def hook(name: str) -> Any:
            def record(_m: nn.Module, _i: Any, out: Any) -> None:
                t = _output_tensor(out)
                entry = seen.setdefault(name, [len(seen), 0, None, None, out])
                entry[1] += 1
                entry[2] = None if t is None or t.shape[0] != rows else t[-1:].detach().clone()
                entry[3] = getattr(out, "type", None) if t is not None and t is not out else None

            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items() if n]
        try:
            with torch.inference_mode():
                module(torch.cat([x, torch.zeros_like(x[:1])]))
        finally:
            for h in handles:
                h.remove()
        self.layers = self._select(seen)

    def _select(self, seen: dict[str, list[Any]]) -> list[LayerInfo]:
        usable = {n: e for n, e in seen.items() if e[1] == 1 and e[2] is not None}
        sel = self.selection
        if sel in ("auto", "all"):
            names = [n for n in usable if sel == "all" or _auto_pick(self.modules[n])]
            skipped = sorted(n for n, e in seen.items() if e[1] > 1 and (sel == "all" or _auto_pick(self.modules[n])))
            if skipped:
                self.notes.append(f"layers run more than once per forward are left out: {', '.join(skipped)}")
        else:
            names = sel.split(",")
            for n in names:
                self._check_name(n, seen)
        if not names:
            raise EquiauditError(f"layers={sel!r} found no module to look at in {type(self.root).__name__}")
        picked = sorted(names, key=lambda n: usable[n][0])
        return [
            LayerInfo(
                n,
                type(self.modules[n]).__name__,
                usable[n][0],
                tuple(usable[n][2].shape[1:]),
                usable[n][3] is not None,
                usable[n][3],
                usable[n][2],
            )
            for n in picked
        ]

    def _check_name(self, name: str, seen: dict[str, list[Any]]) -> None:
        if name not in self.modules or not name:
            close = difflib.get_close_matches(name, [n for n in self.modules if n], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; modules: {_some(self.modules)}"
            raise EquiauditError(f"no layer {name!r} in {type(self.root).__name__}{hint}")
        entry = seen.get(name)
        if entry is None:
            raise EquiauditError(f"layer {name!r} does not run in the model's forward")
        if entry[1] != 1:
            raise EquiauditError(f"layer {name!r} runs {entry[1]} times per forward; pick a module that runs once")
        if entry[2] is None:
            raise EquiauditError(f"layer {name!r} outputs {type(entry[4]).__name__}, not one batched tensor")

    def cap_batch(self, forward_batch: int, device: torch.device) -> int:
        """The forward batch with which a chunk's recorded maps (up to four forwards' rows, every chosen layer)
        stay within ``RECORD_BYTES``: the chunk's feature maps are the only per-layer memory."""
        per_row = sum(math.prod(info.shape) * info.fill.element_size() for info in self.layers)
        budget = RECORD_BYTES["cpu" if device.type == "cpu" else "other"]
        return max(1, min(forward_batch, int(budget / (4 * max(1, per_row)))))

    @contextmanager
    def recording(self, rows: int) -> Iterator[None]:
        """Copy the chosen modules' outputs of the first ``rows`` rows forwarded inside this block."""
        self._rows, self._filled = rows, {}
        handles = [self.modules[info.name].register_forward_hook(self._hook(info.name)) for info in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Any:
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            t = _output_tensor(out)
            start = self._filled.get(name, 0)
            take = min(t.shape[0], self._rows - start)
            if take <= 0:
                return
            buf = self._buffers.get(name)
            if buf is None or buf.shape[0] != self._rows or buf.dtype != t.dtype or buf.device != t.device:
                buf = self._buffers[name] = torch.empty((self._rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
            buf[start : start + take].copy_(t[:take])  # a copy now: an in-place activation may follow
            self._filled[name] = start + take

        return record

    def take(self) -> dict[str, torch.Tensor]:
        """The buffers of the last :meth:`recording` (reused by the next one)."""
        return {info.name: self._buffers[info.name] for info in self.layers}


def _some(modules: dict[str, nn.Module]) -> str:
    names = [n for n in modules if n]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def regular_candidate(elements: Sequence[GroupElement]) -> ActionSpec | None:
    """``regular:N`` / ``regular:dN`` of the exact subgroup of the audited elements (quarter turns and mirrors),
    the one auto tries against ``spatial``; None when no exact element moves anything."""
    turns = {g.quarter_turns for g in elements if g.exact}
    reflect = any(g.reflect for g in elements if g.exact)
    n = 4 if turns & {1, 3} else 2 if 2 in turns else 1
    if n == 1 and not reflect:
        return None
    return ActionSpec("regular", n, reflect)


class LayerObserver(Observer):
    """Per layer and element: sums and maxima of the error and of the floor over the images, streamed."""

    name = "layers"

    def __init__(self, recorder: LayerRecorder, action: str, layout: str) -> None:
        super().__init__()
        self.recorder, self.requested, self.layout = recorder, parse_action(action), layout
        self.actions: list[FeatureAction | None] = []
        self.evidence: list[dict[str, float] | None] = []

    def setup(self, setup: Setup) -> None:
        self.s = setup
        n_l, g, dev = len(self.recorder.layers), len(setup.elements), setup.device
        self.add_state("count", torch.zeros((), dtype=torch.float64, device=dev), "sum")
        for name in ("err_sum", "floor_sum"):
            self.add_state(name, torch.zeros((n_l, g), dtype=torch.float64, device=dev), "sum")
        for name in ("err_max", "floor_max"):
            self.add_state(name, torch.zeros((n_l, g), dtype=torch.float64, device=dev), "max")
        self.masks = [self._mask(info) for info in self.recorder.layers]
        # Maps are measured in the forwards' row order (the reference, then the moved elements): no gather.
        self.row_elements = (GroupElement(), *(setup.elements[j] for j in setup.moved))
        self.group_of_row = [-1, *setup.moved]
        at = {j: 1 + i for i, j in enumerate(setup.moved)}  # the identity's row is the reference, row 0
        self.rows = torch.tensor([at.get(j, 0) for j in range(g)], dtype=torch.long, device=dev)

    def _mask(self, info: LayerInfo) -> torch.Tensor | None:
        size = spatial_size(info.shape)
        if size is None:
            return None
        elements = at_resolution(self.s.elements, self.s.in_size, size)  # as the engine's output mask
        mask = valid_mask(elements, size, self.s.mask, self.s.device, self.s.padding, self.s.in_size)
        return None if bool(mask.all()) else mask  # no mask: two passes less over every map

    def _build(
        self, spec: ActionSpec, info: LayerInfo, elements: Sequence[GroupElement] | None = None
    ) -> FeatureAction:
        s, size = self.s, spatial_size(info.shape)
        elements = self.row_elements if elements is None else elements
        if size is None:
            spec = ActionSpec("trivial")
        else:  # shifts in the map's own pixels (a stride-2 map sees a 2 px input shift as 1 px)
            elements = at_resolution(elements, s.in_size, size)
        return FeatureAction(
            spec, elements, info.shape, interpolation=s.interpolation,
            padding=s.padding, device=s.device, dtype=s.out_dtype, layout=self.layout, field_type=info.field_type,
        )  # fmt: skip

    def _choose(
        self, info: LayerInfo, outputs: torch.Tensor, ref: torch.Tensor, mask: Any
    ) -> tuple[ActionSpec, dict[str, float] | None]:
        """The layer's action and the fits it was chosen on: as requested, the field type for e2cnn outputs under
        ``auto``, else the better fitting of ``spatial`` and the regular action of the exact subgroup on this
        first chunk."""
        req = self.requested
        if req.kind != "auto":
            return self._build(req, info).spec, None
        if info.geometric:
            return self._build(ActionSpec("field"), info).spec, None
        spatial = self._build(ActionSpec("spatial"), info)
        cand = regular_candidate(self.s.elements)
        exact = [r for r, g in enumerate(self.row_elements) if r and g.exact]
        channels = int(torch.tensor(info.shape[:-2]).prod()) if spatial_size(info.shape) else 0
        if spatial.size is None or cand is None or not exact or channels % cand.axis:
            return spatial.spec, None
        picked = [self.row_elements[r] for r in exact]
        fits = {}
        for spec in (ActionSpec("spatial"), cand):  # on the exact elements and the first AUTO_IMAGES images
            act = self._build(spec, info, picked)
            err = relative_error(act.undo(outputs[:, :AUTO_IMAGES][exact]), act.flat(ref[:AUTO_IMAGES]), mask)
            fits[spec.name] = float(err.nanmean())
        better = fits[cand.name] < AUTO_MARGIN * fits["spatial"]
        return (cand if better else spatial.spec), fits

    def _outputs(self, batch: ObservedBatch, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s ``(R, B, *shape)`` outputs in row order (:attr:`row_elements`) and its reference."""
        info = self.recorder.layers[i]
        y = batch.layers[info.name].view(len(self.row_elements), batch.size, *info.shape)
        return y, y[0]

    def choose_actions(self, batch: ObservedBatch) -> list[str]:
        """Fix every layer's action on the first chunk (see :meth:`_choose`); their kinds. Under torchrun every
        rank takes rank 0's choices, made on the data's first images as one process makes them."""
        layers = self.recorder.layers
        if len(self.actions) < len(layers):
            picks = [self._choose(info, *self._outputs(batch, i), self.masks[i]) for i, info in enumerate(layers)]
            picks = _rank0(picks) if self.requested.kind == "auto" else picks
            self.actions = [self._build(spec, info) for (spec, _), info in zip(picks, layers, strict=True)]
            self.evidence = [fits for _, fits in picks]
            self._prepare_floors(batch.ref.device)
        return [a.spec.kind for a in self.actions]

    def _prepare_floors(self, device: torch.device) -> None:
        """Once the actions are fixed: per layer, the group-order rows of its sampled elements and the fill of its
        round trip (zero padding), so that no chunk builds them again."""
        self.floor_rows = [
            torch.tensor([self.group_of_row[r] for r in a.sampled_index], dtype=torch.long, device=device)
            for a in self.actions
        ]
        zeros = self.s.padding == "zeros"
        self.fills = [
            info.fill.to(device) if zeros and info.fill is not None else None for info in self.recorder.layers
        ]

    def describe(self) -> dict[str, Any]:
        """What a merge needs to rebuild this observer without the model (:meth:`recorded`)."""
        return {
            "selection": self.recorder.selection,
            "notes": list(self.recorder.notes),
            "layers": [
                {"name": i.name, "module": i.module, "order": i.order, "shape": list(i.shape), "geometric": i.geometric}
                for i in self.recorder.layers
            ],
            "actions": [a.spec.name for a in self.actions],
            "evidence": list(self.evidence),
        }

    @classmethod
    def recorded(cls, doc: dict[str, Any], action: str, layout: str) -> LayerObserver:
        """The observer a shard described (:meth:`describe`), without the model: its states are to be loaded."""
        infos = [
            LayerInfo(d["name"], d["module"], d["order"], tuple(d["shape"]), d["geometric"]) for d in doc["layers"]
        ]
        obs = cls(RecordedLayers(infos, doc["selection"], list(doc["notes"])), action, layout)  # type: ignore[arg-type]
        obs.actions = [RecordedAction(_action_spec(name)) for name in doc["actions"]]  # type: ignore[misc]
        obs.evidence = list(doc["evidence"])
        return obs

    def update(self, batch: ObservedBatch) -> None:
        if batch.layers is None:
            return
        self.choose_actions(batch)
        for i, act in enumerate(self.actions):
            out, ref = self._outputs(batch, i)
            flat_ref = act.flat(ref)
            err = relative_error(act.undo(out), flat_ref, self.masks[i]).double().index_select(0, self.rows)
            self.err_sum[i] += err.sum(-1)
            self.err_max[i] = torch.maximum(self.err_max[i], err.amax(-1))
            trips = act.round_trip(ref, self.fills[i])
            if trips is not None:
                floor = relative_error(trips, flat_ref, self.masks[i]).double()
                rows_at = self.floor_rows[i]
                self.floor_sum[i, rows_at] += floor.sum(-1)
                self.floor_max[i, rows_at] = torch.maximum(self.floor_max[i, rows_at], floor.amax(-1))
        self.count += batch.size

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {
            "error": (self.err_sum / n).cpu(),
            "error_max": self.err_max.cpu(),
            "floor": (self.floor_sum / n).cpu(),
            "floor_max": self.floor_max.cpu(),
        }

    def report(self, dtype: str, lie: dict[str, Any] | None = None) -> dict[str, Any]:
        """The document's ``layers`` section (see :func:`layer_report`)."""
        return layer_report(self, dtype, lie)


@dataclass
class RecordedLayers:
    """The layers a shard's recorder chose (a merge has no model to hook)."""

    layers: list[LayerInfo]
    selection: str
    notes: list[str]


@dataclass
class RecordedAction:
    """A layer's action as a shard chose it (a merge applies none)."""

    spec: ActionSpec


def _action_spec(name: str) -> ActionSpec:
    return ActionSpec(name) if name == "field" else parse_action(name)


def check_first_part(action: str, total: int, first: int) -> None:
    """A one-line error when ``action`` is auto and the first of several parts (shard or rank) holds fewer of the
    images auto decides on than one process would (it could then decide otherwise)."""
    if parse_action(action).kind == "auto" and first < min(AUTO_IMAGES, total):
        raise OptionError(
            f"--layer-action auto chooses each layer's action on the first {AUTO_IMAGES} images and the first part "
            f"holds {first} of {total}: use fewer shards or processes, or name the action (--layer-action spatial)"
        )


def _rank0(picks: list[Any]) -> list[Any]:
    """Rank 0's ``picks`` on every rank of a torchrun process group (``picks`` without one)."""
    from .distributed import world

    if world()[1] == 1:
        return picks
    import torch.distributed as dist

    shared = [picks]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def _num(value: float) -> float | None:
    return None if value != value else float(value)


def layer_report(obs: LayerObserver, dtype: str, lie: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per layer: name, module, shape, action (and how auto chose it), per-element error / floor lists in group
    order, the worst element, the verdict and the elements that break it; the first layer that breaks."""
    s, values = obs.s, obs.compute()
    tol = FLOAT_TOLERANCE.get(dtype, FLOAT_TOLERANCE["float32"])
    labels = [g.label for g in s.elements]
    rows, first = [], None
    for i, info in enumerate(obs.recorder.layers):
        act = obs.actions[i] if i < len(obs.actions) else None
        err, err_max = values["error"][i].tolist(), values["error_max"][i].tolist()
        floor, floor_max = values["floor"][i].tolist(), values["floor_max"][i].tolist()
        size = spatial_size(info.shape)
        broken, measured = [], []
        for j, g in enumerate(s.elements):
            if g.is_identity or err[j] != err[j]:
                continue
            measured.append(j)
            exact = size is None or uses_exact_path(g, size)
            holds = err_max[j] <= tol if exact else err[j] <= FLOOR_RATIO * floor[j] + tol
            if not holds:
                broken.append(labels[j])
        worst = max(measured, key=lambda j: err[j]) if measured else None
        holds = None if act is None or not measured else not broken
        if holds is False and first is None:
            first = info.name
        row = {
            "name": info.name,
            "module": info.module,
            "shape": list(info.shape),
            "action": None if act is None else act.spec.name,
            "action_auto": obs.requested.kind == "auto",
            "action_fit": obs.evidence[i] if i < len(obs.evidence) else None,
            "error": [_num(v) for v in err],
            "error_max": [_num(v) for v in err_max],
            "floor": [_num(v) for v in floor],
            "floor_max": [_num(v) for v in floor_max],
            "error_worst": None if worst is None else _num(err[worst]),
            "floor_worst": None if worst is None else _num(floor[worst]),
            "worst_element": None if worst is None else labels[worst],
            "holds": holds,
            "breaks_at": broken,
        }
        if lie is not None:
            row["lie"] = {k: _num(v["layers"][i]) for k, v in lie.items()}
        rows.append(row)
    return {
        "selection": obs.recorder.selection,
        "action": obs.requested.name,
        "layout": obs.layout,
        "elements": labels,
        "rule": LAYER_RULE,
        "images": int(obs.count),
        "first_breaking": first,
        "notes": list(obs.recorder.notes),
        "layers": rows,
    }


def layer_sections(observers: Sequence[Observer], images: int, dtype: str) -> dict[str, Any]:
    """The result's ``layers`` and ``lie`` sections from the pass's observers (None when not asked for)."""
    found = {o.name: o for o in observers}
    lie_obs, layer_obs = found.get("lie"), found.get("layers")
    lie = layer_obs_lie = None
    if lie_obs is not None and images:
        lie = lie_obs.report()
        layer_obs_lie = lie_obs.compute()
    layers = None
    if isinstance(layer_obs, LayerObserver) and images:
        layers = layer_obs.report(dtype, layer_obs_lie)
    return {"layers": layers, "lie": lie}


def breaking_lines(section: dict[str, Any] | None) -> list[str]:
    """What a failing check adds when layers were measured: the first layer that breaks, with its numbers, and
    the layers before it that hold (empty without a ``layers`` section)."""
    if not section:
        return []
    first = section.get("first_breaking")
    rows = section.get("layers") or []
    if first is None:
        return [f"  every one of the {len(rows)} layers measured holds ({section.get('selection')})"]
    at = next(i for i, r in enumerate(rows) if r["name"] == first)
    row = rows[at]
    text = (
        f"  first layer that breaks: {first} ({row['module']}, action {row['action']}): error "
        f"{_fmt(row['error_worst'])} under {row['worst_element']}, floor {_fmt(row['floor_worst'])}; breaks at "
        f"{', '.join(row['breaks_at'])}"
    )
    held = [r["name"] for r in rows[:at] if r["holds"]]
    return [text] + ([f"  layers before it hold: {', '.join(held)}"] if held else [])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
