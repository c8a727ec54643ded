"""``AuditSpec``: the one place where an audit's options are declared, defaulted and validated.

The command line (``equiaudit scan``), :func:`equiaudit.audit`, the pytest marker and :mod:`equiaudit.testing`
take their options from :func:`spec_fields`; a test checks that none of them knows an option the spec does not.

What the output is and how the group acts on it is one option, ``task``:

* ``classify``: logits ``(B, K)``, the **trivial** action (invariance: ``f(g x) = f(x)``);
* ``segment`` / ``dense``: maps ``(B, C, H, W)``, the **spatial** action (equivariance: ``g^-1 f(g x) = f(x)``,
  undone at the output's resolution); ``segment`` adds IoU of the label maps;
* ``auto``: chosen from the output's shape on the first images.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .actions import LAYOUTS, parse_action
from .errors import EquiauditError, OptionError
from .groups import Group, parse_group
from .layers import parse_layers
from .precision import PRECISIONS
from .speed import MEMORY_FORMATS
from .transforms import INPUT_MASKS, INTERPOLATIONS, MASK_CHOICES, PADDINGS, parse_mask

TASKS = ("auto", "classify", "segment", "dense")
PROBES = ("none", "noise")
PROBE_IMAGES = 32  # noise images audited by --probe noise
ACTIONS = {"classify": "trivial", "segment": "spatial", "dense": "spatial"}
DTYPES = ("float32", "float64")
FILLS = ("zeros", "mean")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _option(
    default: Any, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None, min: int | None = None
) -> Any:
    """A spec field with what the command line needs to show it (help, choices, short flag, smallest value)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "min": min})


@dataclass(frozen=True)
class AuditSpec:
    """How an audit samples, forwards and compares (recorded in the result's ``run.spec``)."""

    group: str = _option(
        "so2",
        "Group spec: so2, so2:N, rot:A..B:N, c4, d4, flip, scale:0.5..2:7, shift:DX,DY, translate:-3..3:7, "
        "translate-x:/-y:, products like c4*scale:0.8,1,1.25 or rot:-30..30:31*translate:-3..3:7.",
        flag="-g",
    )
    steps: int | None = _option(None, "Angles for so2 (default 36).", flag="-n", min=1)
    task: str = _option(
        "auto",
        "What the output is: classify (logits, invariant), segment or dense (maps, equivariant); auto: from its shape.",
        TASKS,
    )
    interpolation: str = _option("bilinear", "Resampling of interpolated elements.", INTERPOLATIONS)
    padding: str = _option("zeros", "Fill outside the image when resampling.", PADDINGS)
    mask: str = _option(
        "auto",
        "Compared region of maps and of the floor: auto (valid under every element), disk, none, or centre:H[xW] "
        "(auto within the centre H x W input pixels, e.g. the image inside a --pad canvas).",
        MASK_CHOICES,
    )
    input_mask: str = _option(
        "auto",
        "Restrict inputs to the region every element keeps inside the image, so every view holds the same "
        "content: auto (when a sampled element moves content across the border), disk or none.",
        INPUT_MASKS,
    )
    batch_size: int | None = _option(
        None,
        "Images per model forward, transformed copies included (default: sized from the model's largest "
        "activation, at most 256).",
        min=1,
    )
    floor_images: int = _option(
        128,
        "Images the classifier's interpolation floor is estimated on (0: all); dense floors use every image.",
        min=0,
    )
    samples: int = _option(
        8,
        "Gallery images kept for reports (first N and worst N); 0 keeps no per-image material (no gallery, no "
        "per-image records).",
        min=0,
    )
    confidence: float = _option(
        0.95, "Confidence level of every interval (Wilson for proportions, bootstrap over images for means)."
    )
    probe: str = _option(
        "none",
        "noise: also audit band-limited noise of the data's shape (pixels that never vary in the data cannot "
        "reveal what the model does with them); the probe's elements enter the checks.",
        PROBES,
    )
    device: str | None = _option(
        None, "auto (CUDA when present), cpu, cuda, cuda:N or mps (default: a module's own device, else auto)."
    )
    dtype: str | None = _option(None, "float32 or float64 (default: the model's own).", DTYPES)
    precision: str = _option(
        "fp32",
        "Arithmetic of the model's forward: fp32 (TF32 off), tf32 (TF32 on CUDA), bf16 or fp16 (autocast). A reduced "
        "precision reports its own floor: the identity's error under it against fp32 on the same images.",
        PRECISIONS,
    )
    shard: str | None = _option(
        None,
        "K/N: audit only the K-th (from 0) of N contiguous parts of the data, for independent jobs joined by "
        "'equiaudit merge' (the result then carries the observer states merging needs).",
    )
    output: str = _option(
        "auto",
        "Which part of a tuple / dict / object output is audited: a key, an index or an attribute, dotted for "
        "nested ones (out, 0, logits); auto takes .logits, then the key 'out', then a single tensor.",
    )
    fill: str = _option(
        "zeros",
        "What --padding zeros brings in, in image space: zeros (black) or mean (the normalisation mean, which is "
        "what padding the normalised input with 0 gives). The group acts on the image before normalisation.",
        FILLS,
    )
    max_elements: int = _option(
        4096, "Largest group audited without --force (every element is one more forward of every image).", min=1
    )
    force: bool = _option(False, "Audit a group with more than --max-elements elements.")
    # ---- per-layer equivariance and the Lie derivative (equiaudit.layers, equiaudit.actions, equiaudit.lie)
    layers: str | None = _option(
        None,
        "Per-layer equivariance: auto (every convolution / block, no activations), all, or NAME[,NAME...] "
        "(module names); off by default.",
    )
    layer_action: str = _option(
        "auto",
        "How the group acts on feature maps: auto (an e2cnn output's field type, else spatial or regular, "
        "whichever fits the exact elements), trivial, spatial, regular:N (C_N group axis) or regular:dN (D_N).",
    )
    channel_layout: str = _option(
        "cg",
        "Where a regular action's group axis sits in the channels: cg (c*N + g, the group innermost, as e2cnn's "
        "regular fields and (B, C, G, H, W) maps) or gc (g*C + c).",
        LAYOUTS,
    )
    lie: bool = _option(
        False, "Also measure the Lie derivative (rotation / scale at the identity) of the output and of each layer."
    )
    search: str = _option(
        "grid",
        "Worst case per image: grid (the group's elements), random:K (worst of K elements drawn per image from "
        "the group's parameter box), refine (from each image's worst grid element, between its grid neighbours); "
        "comma-separated to compare, e.g. random:10,refine. Classifiers.",
    )
    search_budget: int = _option(24, "Extra forwards per image that --search refine may spend.", min=1)
    # ---- how the forward runs fast (equiaudit.speed); results equal the plain forward's within round-off
    compile: bool = _option(
        False,
        "Run the model's forward through torch.compile (one compiled module, every forward padded to the forward "
        "batch; the compile time is recorded, not counted as audit throughput).",
    )
    channels_last: str = _option(
        "off",
        "Memory format of the model's forward: on (channels_last), off, or auto (time a few forwards of both on "
        "the probe images and keep the faster; recorded in run.forward).",
        MEMORY_FORMATS,
    )
    cuda_graphs: bool = _option(
        False, "CUDA only: capture one forward batch in a CUDA graph and replay it for every forward."
    )

    def __post_init__(self) -> None:
        group = self.group
        if isinstance(group, Group):  # a parsed group is kept as its spec; parse_group reads it back identically
            object.__setattr__(self, "group", group.spec)
            object.__setattr__(self, "_group", group)
        elif not isinstance(group, str):
            raise EquiauditError(f"group must be a spec string such as 'c4', got {type(group).__name__}")
        if self.steps is not None:
            _positive_int(self.steps, "steps")
        if not isinstance(group, Group):
            object.__setattr__(self, "_group", parse_group(group, self.steps))
        for name in ("task", "interpolation", "padding", "input_mask", "probe"):
            _choice(getattr(self, name), name, SPEC_FIELDS[name].metadata["choices"])
        parse_mask(self.mask)
        if self.batch_size is not None:
            _positive_int(self.batch_size, "batch size")
        for name in ("floor_images", "samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EquiauditError(f"{name.replace('_', ' ')} must be an integer >= 0, got {value!r}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)):
            raise EquiauditError(f"confidence must be a number between 0 and 1, got {self.confidence!r}")
        if not 0 < self.confidence < 1:
            raise EquiauditError(f"confidence must be between 0 and 1 (e.g. 0.95), got {self.confidence!r}")
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "device", _device_name(self.device))
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        _check_precision(self.precision, self.dtype)
        _check_shard(self.shard)
        if not isinstance(self.output, str) or not self.output.strip() or any(c.isspace() for c in self.output):
            raise EquiauditError(f"output must be auto, a key, an index or an attribute (out, 0), got {self.output!r}")
        _choice(self.fill, "fill", FILLS)
        _positive_int(self.max_elements, "max elements")
        if not isinstance(self.force, bool):
            raise EquiauditError(f"force must be True or False, got {self.force!r}")
        self._check_layer_options()
        self._check_search_options()
        self._check_speed_options()

    def _check_layer_options(self) -> None:
        object.__setattr__(self, "layers", parse_layers(self.layers))
        object.__setattr__(self, "layer_action", parse_action(self.layer_action).name)
        _choice(self.channel_layout, "channel layout", LAYOUTS)
        if not isinstance(self.lie, bool):
            raise EquiauditError(f"lie must be True or False, got {self.lie!r}")

    def _check_search_options(self) -> None:
        from .search import parse_search

        parse_search(self.search)
        _positive_int(self.search_budget, "search budget")

    def _check_speed_options(self) -> None:
        _choice(self.channels_last, "channels last", MEMORY_FORMATS)
        for name in ("compile", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise EquiauditError(f"{name.replace('_', ' ')} must be True or False, got {getattr(self, name)!r}")
        if (self.compile or self.cuda_graphs) and (self.layers or self.lie):
            option = "--compile" if self.compile else "--cuda-graphs"
            raise EquiauditError(f"{option} cannot go with --layers / --lie, whose hooks run inside the forward")
        if self.cuda_graphs and self.precision in ("bf16", "fp16"):
            raise EquiauditError("--cuda-graphs captures fp32 / tf32 forwards only (autocast's cache is not captured)")

    @property
    def parsed_group(self) -> Group:
        return self._group  # type: ignore[attr-defined]

    @property
    def action(self) -> str | None:
        """How the group acts on the output: ``trivial`` or ``spatial`` (None while the task is ``auto``)."""
        return ACTIONS.get(self.task)

    @classmethod
    def from_options(cls, where: str = "audit()", **options: Any) -> AuditSpec:
        """A spec from keyword options; an unknown one is a one-line error naming the valid ones."""
        unknown = sorted(set(options) - set(SPEC_FIELDS))
        if unknown:
            raise OptionError(f"{where} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(SPEC_FIELDS)}")
        return cls(**options)

    def replace(self, **changes: Any) -> AuditSpec:
        if "group" in changes and "steps" not in changes and isinstance(changes["group"], str):
            changes["steps"] = None  # the old steps belonged to the old group
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


SPEC_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(AuditSpec)}


def spec_fields() -> tuple[dataclasses.Field, ...]:
    """The spec's fields in declaration order (name, default, ``metadata['help' | 'choices' | 'flag']``)."""
    return tuple(SPEC_FIELDS.values())


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EquiauditError(f"{name} must be a positive integer, got {value!r}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise EquiauditError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")


def _device_name(device: Any) -> str | None:
    """``None``, ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (a ``torch.device`` becomes its name);
    whether the device exists is checked when the audit resolves it."""
    if device is None:
        return None
    text = str(device).strip().lower()
    if not _DEVICE_RE.fullmatch(text):
        raise EquiauditError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return text


def _check_precision(precision: Any, dtype: str | None) -> None:
    _choice(precision, "precision", PRECISIONS)
    if precision != "fp32" and dtype == "float64":
        raise EquiauditError(f"--precision {precision} reduces float32 arithmetic; it cannot go with --dtype float64")


def shard_of(shard: str | None) -> tuple[int, int]:
    """``(k, n)`` of a shard spec ``K/N`` (``(0, 1)`` for None)."""
    if shard is None:
        return 0, 1
    k, n = (int(v) for v in shard.split("/"))
    return k, n


def _check_shard(shard: Any) -> None:
    if shard is None:
        return
    match = re.fullmatch(r"(\d+)/(\d+)", shard) if isinstance(shard, str) else None
    if match is None or not int(match[1]) < int(match[2]):
        raise EquiauditError(f"shard takes K/N with 0 <= K < N (e.g. 0/4), got {shard!r}")


def _dtype_name(dtype: Any) -> str | None:
    """``None`` (the model's own), ``float32`` or ``float64``; a ``torch.dtype`` becomes its name."""
    if dtype is None:
        return None
    text = str(dtype).replace("torch.", "")
    if text in ("auto", ""):
        return None
    if text not in DTYPES:
        raise EquiauditError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return text
