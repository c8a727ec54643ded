"""The engine: one pass over the data. Each chunk of images is transformed by every element at once, run through
the model once, undone (dense outputs), scored once, and handed to every observer (:mod:`equiaudit.observers`).

Data flow: :class:`~equiaudit.spec.AuditSpec` -> transforms (:class:`~equiaudit.transforms.ElementPlan`) ->
model -> undo -> scores (:mod:`equiaudit.metrics`) -> observers -> :class:`~equiaudit.result.AuditResult`.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from . import distributed
from .adapt import fit, inner
from .assemble import assemble
from .data import AuditData, Batch, load_data
from .errors import EquiauditError, InputMismatchError, OptionError, ScanInterrupted, one_line
from .feed import Prefetcher, sigterm_stops, stop_reason, to_device
from .groups import Group, GroupElement
from .loading import LoadedModel, load_model, resolve_device
from .metrics import classify_scores, dense_scores
from .observers import ObservedBatch, Observer, Setup, default_observers, element_observer
from .precision import PrecisionFloor, autocast, exact_fp32, precision_flags, reduced
from .preprocess import merge as merge_preprocess
from .preprocess import pipeline_record
from .result import AuditResult
from .search import search_observers
from .spec import SPEC_FIELDS, AuditSpec, shard_of
from .speed import FastForward, check_device, prepare_forward, restore_format
from .transforms import ElementPlan, at_resolution, input_region, sampling_dtype, uses_exact_path, valid_mask

Progress = Callable[[int, int], None]
# Keywords of audit() that go to load_data when ``data`` is a spec string.
DATA_OPTIONS = tuple(p for p in inspect.signature(load_data).parameters if p != "spec")


def _first_conv_channels(module: nn.Module) -> int | None:
    """``in_channels`` of the first ``Conv2d`` registered; only a hint, since registration order is not always
    the order of use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


# An automatic forward batch keeps the largest activation of one forward within this many bytes. On a CPU a
# larger batch is slower per image once its live activations (several times the largest) spill out of the
# caches: the zoo's 0.5M-parameter U-Net at 64x64 px runs 2.2 ms per image at 8 to 16 images (4 MiB here),
# 2.7 ms at 27 and 3.2 ms at 54. On a GPU the budget only guards memory, and the cap is high: every chunk costs
# a fixed host time (its observers' kernel launches), which a small model's forward cannot hide; on an H200 the
# small CNN's audit at 256 per forward spent 11 ms of host time per chunk against 0.7 ms of forwards.
AUTO_BATCH_BYTES = {"cpu": 4 << 20, "other": 2 << 30}
AUTO_BATCH_CAP = {"cpu": 256, "other": 4096}
AUTO_BATCH_MAX = AUTO_BATCH_CAP["cpu"]
# Where no submodule's hook fires (TorchScript, traced and exported programs) or some refuse one, the largest
# activation is taken as at least this many times the input.
_GUESSED_EXPANSION = 16
# The probe runs on two images: two, so that a model which squeezes its batch dimension still shows its shape.
_PROBE_IMAGES = 2


def auto_batch_size(activation_bytes_per_image: float, device: torch.device, input_bytes_per_image: float = 0) -> int:
    """Images per forward for a model whose largest activation takes ``activation_bytes_per_image``; off the
    CPU a chunk's transformed inputs (up to four forwards' worth) must fit the same budget too."""
    kind = "cpu" if device.type == "cpu" else "other"
    per_image = activation_bytes_per_image
    if kind != "cpu":
        per_image = max(per_image, 4 * input_bytes_per_image)
    fits = int(AUTO_BATCH_BYTES[kind] / max(1.0, per_image) + 1e-9)  # 1e-9: 40 must not round down to 39
    return max(1, min(AUTO_BATCH_CAP[kind], fits))


def _nbytes(value: Any) -> int:
    """Bytes of the largest tensor in a module output (tensors, tuples / lists / dicts of them, e2cnn-style
    wrappers with a ``.tensor``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return max((_nbytes(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((_nbytes(v) for v in value.values()), default=0)
    inner = getattr(value, "tensor", None)
    return _nbytes(inner) if isinstance(inner, torch.Tensor) else 0


def _forward(module: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``module(x)`` in forwards of at most ``batch_size`` images, split evenly (36 rows at 32: 18 + 18).

    A module with a ``fixed_batch`` (an exported program traced with one batch size, see
    :class:`~equiaudit.adapt.ModelAdapter`) gets exactly that many rows per forward: the last forward is padded
    with copies of its last row, whose outputs are dropped."""
    n = x.shape[0]
    fixed = getattr(module, "fixed_batch", None)
    if fixed:
        outs = []
        for i in range(0, n, fixed):
            part = x[i : i + fixed]
            short = fixed - part.shape[0]
            if short:
                part = torch.cat([part, part[-1:].expand(short, *part.shape[1:])])
            outs.append(module(part)[: fixed - short])
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    size = -(-n // -(-n // batch_size)) if n else 1
    outs = [module(x[i : i + size]) for i in range(0, n, size)]
    for o in outs:
        if not isinstance(o, torch.Tensor):
            raise InputMismatchError(f"the model returned {type(o).__name__}, not a tensor")
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class Probe(NamedTuple):
    """What the probe learnt about the model on a few real images."""

    task: str
    out_shape: tuple[int, ...]  # per image
    out_dtype: torch.dtype
    activation_bytes: float  # per image, of the largest activation (see :func:`probe`)


def probe(module: nn.Module, data: AuditData, x: torch.Tensor, task: str) -> Probe:
    """Check the model on a few real images before the scan.

    The largest activation is measured with forward hooks on every submodule; where none of them fires
    (TorchScript, traced or exported programs) or some refuse a hook, it is taken as at least
    ``_GUESSED_EXPANSION`` times the input (and at least the output).
    """
    x = x[:_PROBE_IMAGES]
    largest = [0]
    refused = False

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        largest[0] = max(largest[0], _nbytes(output))

    handles = []
    roots = (module, inner(module))
    for sub in module.modules():
        if any(sub is root for root in roots):  # the root's output is not an inner activation
            continue
        try:
            handles.append(sub.register_forward_hook(record))
        except Exception:  # TorchScript submodules refuse hooks
            refused = True
    try:
        with torch.inference_mode():
            y = _forward(module, x, x.shape[0])
    except EquiauditError:
        raise
    except Exception as exc:
        c = _first_conv_channels(module)
        if c is not None and c != x.shape[1]:
            raise InputMismatchError(
                f"the model fails on {x.shape[1]}-channel input from {data.spec!r} and its first convolution takes "
                f"{c} channel(s); use --channels {c} ({one_line(exc)})"
            ) from None
        raise InputMismatchError(
            f"the model fails on input of shape {tuple(x.shape)} from {data.spec!r}: {one_line(exc)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    guess = max(_nbytes(y), _GUESSED_EXPANSION * _nbytes(x))
    activation = max(largest[0], guess) if refused or largest[0] == 0 else max(largest[0], _nbytes(y))
    activation_per_image = activation / x.shape[0]
    if not torch.isfinite(y).all():
        raise InputMismatchError(f"the model outputs NaN or inf on {data.spec!r} (shape {tuple(x.shape)})")
    if y.dim() == 2:
        chosen = "classify"
    elif y.dim() == 4:
        ratio = y.shape[-2] / x.shape[-2]
        # Strided layers on odd sizes round (65 -> 33): allow one pixel either way.
        if abs(x.shape[-1] * ratio - y.shape[-1]) > 1 + 1e-9:
            raise InputMismatchError(
                f"dense output {tuple(y.shape[-2:])} is not proportional to the input "
                f"{tuple(x.shape[-2:])}, so transformations cannot be undone on it"
            )
        chosen = "segment" if data.has_masks else "dense"
    else:
        raise InputMismatchError(f"output shape {tuple(y.shape)} is neither (B, classes) nor (B, C, H, W)")
    if chosen == "classify":
        _check_classes(data, y.shape[1])
    if task == "auto":
        return Probe(chosen, tuple(y.shape[1:]), y.dtype, activation_per_image)
    if (task == "classify") != (y.dim() == 2):
        raise InputMismatchError(
            f"--task {task} cannot use output shape {tuple(y.shape)}; it looks like {chosen} (try --task auto)"
        )
    return Probe(task, tuple(y.shape[1:]), y.dtype, activation_per_image)


def _check_classes(data: AuditData, outputs: int) -> None:
    """Class folders must match the model's outputs one to one: a missing or extra folder shifts every label."""
    if data.classes_from is None or data.num_classes is None or data.num_classes == outputs:
        return
    names = data.class_names or []
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    if data.classes_from == "folders":
        raise InputMismatchError(
            f"{data.spec!r} has {data.num_classes} class folders ({shown}) but the model has {outputs} outputs: a "
            f"missing or extra folder would shift every label; pass --classes (classes=) with the model's classes "
            f"in output order"
        )
    raise InputMismatchError(
        f"the class list of {data.spec!r} names {data.num_classes} classes but the model has {outputs} outputs"
    )


def as_audit_data(data: Any, data_options: dict[str, Any] | None = None) -> AuditData:
    """Accept a spec string (options go to :func:`load_data`), an AuditData, a tensor or ``(x, y[, mask])``."""
    data_options = data_options or {}
    if isinstance(data, AuditData):
        return data
    if isinstance(data, str):
        return load_data(data, **data_options)
    if isinstance(data, torch.Tensor):
        return AuditData.from_tensors(data)
    if isinstance(data, np.ndarray):
        return AuditData.from_tensors(data)  # NumPy images may be channels-last (see equiaudit.datasets.arrays)
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], (torch.Tensor, np.ndarray)):
        return AuditData.from_tensors(*data)
    raise EquiauditError(
        f"data must be a spec string, AuditData, a tensor / array or (x, y[, mask]); got {type(data).__name__}"
    )


def _audit_data(loaded: LoadedModel, data: Any, data_options: dict[str, Any]) -> AuditData:
    """:func:`as_audit_data`, with the preprocessing the model's source declares for the data options the caller
    left unset (data named by a spec string only: tensors and AuditData are used as they are)."""
    if not isinstance(data, str):
        return as_audit_data(data, data_options)
    options, record = merge_preprocess(loaded.preprocess, data_options)
    dataset = as_audit_data(data, options)
    dataset.preprocess = {**pipeline_record(options), **(record or {})} or None
    return dataset


def split_options(options: dict[str, Any], where: str = "audit()") -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options into the spec's and :func:`load_data`'s; any other is a one-line error."""
    unknown = sorted(set(options) - set(SPEC_FIELDS) - set(DATA_OPTIONS))
    if unknown:
        raise OptionError(
            f"{where} got unknown option(s) {', '.join(unknown)}; spec options: {', '.join(SPEC_FIELDS)}; "
            f"data options: {', '.join(DATA_OPTIONS)}"
        )
    return (
        {k: v for k, v in options.items() if k in SPEC_FIELDS},
        {k: v for k, v in options.items() if k in DATA_OPTIONS},
    )


def make_spec(
    spec: AuditSpec | None, group: str | Group | None, steps: int | None, options: dict[str, Any]
) -> AuditSpec:
    """``spec`` (or the defaults) with ``group``, ``steps`` and the spec options applied."""
    if group is not None:
        options = {"group": group, **options}
    if steps is not None:
        options = {**options, "steps": steps}
    if spec is None:
        return AuditSpec(**options)
    return spec.replace(**options) if options else spec


def audit(
    model: nn.Module | str | LoadedModel,
    data: Any = "digits",
    group: str | Group | None = None,
    steps: int | None = None,
    *,
    spec: AuditSpec | None = None,
    trust: bool = False,
    arch: str | None = None,
    progress: Progress | None = None,
    on_task: Callable[[str, bool], None] | None = None,
    observers: Sequence[Observer] = (),
    on_note: Callable[[str], None] | None = None,
    **options: Any,
) -> AuditResult:
    """Audit ``model`` on ``data`` under every element of a group, in one pass.

    Args:
        model: an ``nn.Module``, a path or source string (see :func:`equiaudit.loading.load_model`), or a
            :class:`LoadedModel`. Modules are moved to the spec's device / dtype in place (like ``.to``).
        data: a data spec (see :func:`equiaudit.data.load_data`; its keyword options are accepted here), an
            :class:`AuditData`, a tensor or NumPy array ``x`` or a tuple ``(x, y[, mask])``.
        group, steps: the group (shorthand for the spec options of the same names).
        spec: an :class:`AuditSpec`; keyword ``options`` named like its fields override it.
        observers: extra observers fed with every batch (see :mod:`equiaudit.observers`).
        on_task: called once with the chosen task and whether it was chosen automatically.
        on_note: called with each note on what was chosen or what to beware of (the output taken, inputs that
            are not square, ...); without it, caveats are :class:`~equiaudit.errors.EquiauditWarning` warnings.

    The model's source may declare its preprocessing (``torchvision:``, ``timm:``, ``hf:``): it completes the
    data options the caller left unset. The group acts on the image before normalisation (see
    :mod:`equiaudit.adapt`).

    Raises:
        ScanInterrupted: when the scan stops part-way; its ``partial`` result holds what was measured.
    """
    spec_options, data_options = split_options(options)
    spec = make_spec(spec, group, steps, spec_options)
    if distributed.launched():
        spec = spec.replace(device=distributed.rank_device(spec.device))
    loaded, module, dev, dt = _prepare_model(model, spec, trust, arch)
    check_device(spec, dev)
    dataset = _audit_data(loaded, data, data_options)
    loaded, module, dataset, spec = fit(loaded, module, dataset, spec, dev, dt, on_note)
    if len(dataset) == 0:
        raise EquiauditError(f"the data {dataset.spec!r} holds no images")
    with precision_flags(spec.precision) as flags, distributed.joined(dev) as shared, sigterm_stops():
        result = _scan(loaded, module, dataset, spec, dev, dt, on_task, observers, progress, shared)
        result.run.precision = flags
        if spec.probe == "noise":
            result.probe = _noise_probe(loaded, dataset, spec, result)
    return result


def _scan(
    loaded: LoadedModel,
    module: nn.Module,
    dataset: AuditData,
    spec: AuditSpec,
    dev: torch.device,
    dt: torch.dtype,
    on_task: Callable[[str, bool], None] | None,
    observers: Sequence[Observer],
    progress: Progress | None,
    shared: bool,
) -> AuditResult:
    """The pass over this process's images (all of them, a ``--shard`` or a torchrun rank's part), combined with
    the other processes' when ``shared``."""
    if shared and spec.shard is not None:
        raise OptionError("--shard splits the data between independent jobs; under torchrun the ranks split it")
    rank, size = distributed.world() if shared else shard_of(spec.shard)
    full = len(dataset)
    start, stop = distributed.span(full, rank, size)
    if spec.layers and size > 1:  # auto layer actions are decided on the first part's first images
        from .layers import check_first_part

        check_first_part(spec.layer_action, full, distributed.span(full, 0, size)[1])
    engine = Engine(module, dataset, spec, dev, dt, on_task, observers)
    engine.start = start
    t0 = time.perf_counter()
    total = stop - start
    reader = Prefetcher(dataset, start, stop, pin=dev.type == "cuda")

    def build() -> AuditResult:
        result = engine.result(loaded, time.perf_counter() - t0 - engine.untimed_s, partial=engine.images < total)
        result.run.forward = engine.forward_info
        return result

    try:
        engine.prepare(dataset.read(0, min(full, _PROBE_IMAGES)).x)
        while engine.images < total:
            engine.step(reader.next(engine.images_per_chunk))
            if progress is not None:
                progress(engine.images, total)
        engine.finish()
    except (KeyboardInterrupt, Exception) as exc:
        if engine.images == 0:
            if isinstance(exc, EquiauditError):
                raise
            if isinstance(exc, KeyboardInterrupt):
                raise ScanInterrupted("interrupted before the first batch finished") from exc
            raise EquiauditError(f"scan failed on the first batch: {one_line(exc)}") from exc
        why = stop_reason(exc)
        detail = {"sigint": "interrupted", "sigterm": "terminated (SIGTERM)"}.get(why) or one_line(exc)
        message = f"scan stopped after {engine.images} of {total} images: {detail}"
        partial = build()
        partial.run.stop_reason, partial.run.stop_detail = why, None if why != "error" else detail
        raise ScanInterrupted(message, partial=partial) from exc
    finally:
        reader.close()
        restore_format(module, engine.forward_info)
    if shared:
        engine.images = distributed.reduce_observers(engine.observers, engine.images)
        total = full
    result = build()
    result.run.processes = size if shared else 1
    if spec.shard is not None:
        result.run.shard = {"index": rank, "count": size, "start": start, "stop": stop, "total": full}
        result.state = distributed.shard_state(engine.setup, engine.observers, engine.images)
    return result


def _noise_probe(loaded: LoadedModel, data: AuditData, spec: AuditSpec, result: AuditResult) -> dict[str, Any]:
    """The same audit on band-limited noise of the data's shape (in image space, normalised for the model as the
    data is), as a compact part of the result: pixels that never vary in the data (black digit corners) vary in
    noise."""
    from .spec import PROBE_IMAGES

    norm = (result.data.preprocess or {}).get("normalise") or {}  # the model's own, applied after the transform
    noise = load_data(
        "noise", input_shape=tuple(data.input_shape), limit=PROBE_IMAGES, mean=norm.get("mean"), std=norm.get("std")
    )
    task = result.task or spec.task
    whole = spec.replace(probe="none", samples=0, task=task, layers=None, lie=False, search="grid", shard=None)
    whole = whole.replace(compile=False, cuda_graphs=False)  # 32 images do not repay a compile
    probe = audit(loaded, noise, spec=whole)  # the whole probe in every shard
    return {
        "data": {"spec": "noise", "count": probe.data.count, "input_shape": probe.data.input_shape},
        "summary": probe.summary,
        "elements": probe.to_dict()["elements"],
    }


def _prepare_model(
    model: nn.Module | str | LoadedModel, spec: AuditSpec, trust: bool, arch: str | None
) -> tuple[LoadedModel, nn.Module, torch.device, torch.dtype]:
    """Load ``model`` and move it to the spec's device and dtype (an in-memory module stays where it is when the
    spec names no device)."""
    device: Any = spec.device
    if device is None and isinstance(model, nn.Module):
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(model, arch=arch, trust=trust, device=None if device is None else resolve_device(device))
    module = loaded.module if loaded.kind == "export" else loaded.module.eval()  # exported graphs have no eval()
    param = next(iter(module.parameters()), None)
    dev = resolve_device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    own = param.dtype if param is not None and param.is_floating_point() else torch.float32
    dt = getattr(torch, spec.dtype) if spec.dtype else own
    module.to(device=dev, dtype=dt)
    return loaded, module, dev, dt


def pass_observers(
    spec: AuditSpec, task: str, search_forward: Callable[[torch.Tensor], torch.Tensor]
) -> list[Observer]:
    """The observers of every audit of ``spec`` but the layer and Lie ones, in order: the pass builds them and a
    merge of ``--shard`` results rebuilds them (:mod:`equiaudit.merge`), so both must be this one list."""
    found = [element_observer(task), *default_observers(spec.samples)]
    found += search_observers(spec.search, spec.search_budget, task, search_forward)
    if reduced(spec.precision):
        found.insert(1, PrecisionFloor())
    return found


class Engine:
    """One audit's pass. :meth:`prepare` probes the model on the first images and sets up the forward batch,
    masks, prepared transforms and observers; every :meth:`step` then costs one input transform, the forwards,
    the undo of dense outputs, one scoring and the observers' updates."""

    # Chunks per read of the NaN / inf flag: 1 on a CPU (free, and before the observers see the chunk); on an
    # accelerator each read waits for the device, so it is read every 8 chunks (a hit restores the observers).
    CHECK_EVERY: ClassVar[dict[str, int]] = {"cpu": 1}

    def __init__(
        self,
        module: nn.Module,
        data: AuditData,
        spec: AuditSpec,
        device: torch.device,
        dtype: torch.dtype,
        on_task: Callable[[str, bool], None] | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.module, self.data, self.spec = module, data, spec
        self.elements: tuple[GroupElement, ...] = spec.parsed_group.elements
        self.device, self.dtype = device, dtype
        self.on_task = on_task
        self.extra = list(observers)
        self.observers: list[Observer] = []
        # The identity's copy would equal x, so its output is the reference itself and is not computed twice.
        self.moved = [i for i, g in enumerate(self.elements) if not g.is_identity]
        self.forward_batch = spec.batch_size  # set by prepare() when None
        self.images = 0
        self.start = 0  # index of this pass's first image in the data (a shard's or a rank's part)
        # NaN / inf outputs: a device flag, read every `check_every` chunks (each read waits for the device); on
        # a hit the observers go back to their state before the window, so nothing poisoned is kept.
        self.check_every = self.CHECK_EVERY.get(device.type, 8)
        self._nonfinite: torch.Tensor | None = None
        self._window: tuple[int, list[Any]] | None = None  # (images, observer snapshots) at the window's start
        self._steps = 0
        self.setup: Setup | None = None
        self._inputs: torch.Tensor | None = None  # reused across equal chunks: no fresh allocation per batch
        self.to_inputs: ElementPlan | None = None  # the moved elements on the input
        self.undo: ElementPlan | None = None  # every element's inverse on the output (dense)
        self.floor_index: list[int] = []  # the sampled elements, whose floor is not 0 (see _prepare_floor)
        self.layer_recorder: Any = None  # --layers (equiaudit.layers.LayerRecorder)
        self.layer_observer: Any = None  # --layers (equiaudit.layers.LayerObserver)
        self.lie_probe: Any = None  # --lie (equiaudit.lie.LieProbe)
        self.fast: FastForward | None = None  # --compile / --channels-last / --cuda-graphs (equiaudit.speed)
        self.forward_info: dict[str, Any] | None = None  # what they chose, for run.forward
        self.untimed_s = 0.0  # seconds of compiling and format timing, not counted in the throughput

    @property
    def task(self) -> str | None:
        return None if self.setup is None else self.setup.task

    @property
    def images_per_chunk(self) -> int:
        """Each chunk runs its images once untransformed and once per moved element, in up to four forwards:
        as many as fill them best (forward batch 83, 36 rows per image: 9 images in 4 forwards of 81, not 2
        in one of 72)."""
        rows, fb = len(self.moved) + 1, self.forward_batch
        best_fill, best = 0.0, 1
        for forwards in range(1, 5):
            images = forwards * fb // rows
            fill = images * rows / (forwards * fb)
            if fill > best_fill + 1e-9:
                best_fill, best = fill, images
        return max(1, best)

    def prepare(self, x: torch.Tensor) -> None:
        """Probe the model on the first images ``x`` and set everything up."""
        x = x.to(device=self.device, dtype=self.dtype)
        elems, spec = self.elements, self.spec
        found = probe(self.module, self.data, x, spec.task)
        if self.forward_batch is None:
            self.forward_batch = auto_batch_size(found.activation_bytes, self.device, x[0].numel() * x.element_size())
        in_size = (x.shape[-2], x.shape[-1])
        if self.on_task is not None:
            self.on_task(found.task, spec.task == "auto")
        kw = {
            "interpolation": spec.interpolation,
            "padding": spec.padding,
            "device": self.device,
            "dtype": sampling_dtype(self.dtype),
        }
        # Sampled elements first: the grid_sample result then lands in one slice of the input buffer, and the
        # classifier floor reads that slice as it is.
        self.moved.sort(key=lambda i: uses_exact_path(elems[i], in_size))
        self.to_inputs = ElementPlan([elems[i] for i in self.moved], in_size, **kw)
        out_mask = None
        classify = found.task == "classify"
        floor_size = in_size
        if not classify:
            floor_size = out_size = (found.out_shape[-2], found.out_shape[-1])
            out_elems = at_resolution(elems, in_size, out_size)  # shifts in output pixels
            out_mask = valid_mask(out_elems, out_size, spec.mask, self.device, spec.padding, in_size)
            kw["dtype"] = sampling_dtype(found.out_dtype)  # outputs are undone in their own precision
            self.undo = ElementPlan(out_elems, out_size, inverse=True, **kw)
        self._prepare_floor(x, floor_size, classify, kw, None if classify else out_elems)
        self.setup = Setup(
            task=found.task,
            elements=elems,
            moved=list(self.moved),
            in_size=in_size,
            out_shape=found.out_shape,
            out_dtype=found.out_dtype,
            device=self.device,
            dtype=self.dtype,
            interpolation=spec.interpolation,
            padding=spec.padding,
            mask=spec.mask,
            in_mask=valid_mask(elems, in_size, spec.mask, self.device, spec.padding),
            in_region=input_region(elems, in_size, spec.input_mask, self.device, spec.padding),
            out_mask=out_mask,
            num_classes=max(2, found.out_shape[0]),
            floor_images=spec.floor_images,
            floor_rows=list(self.floor_index),
        )
        self.observers = [*pass_observers(spec, found.task, self._search_forward), *self.extra]
        self.observers += self._layer_observers(x)
        self._prepare_fast(x)
        self._moved_index = torch.tensor(self.moved, dtype=torch.long, device=self.device)
        self._in_region = None if self.setup.in_region is None else self.setup.in_region.to(self.dtype)
        for obs in self.observers:
            obs.setup(self.setup)

    def _prepare_fast(self, x: torch.Tensor) -> None:
        """``--compile`` / ``--channels-last`` / ``--cuda-graphs``: the pass's forward, set up on one forward batch
        of the probe images (its time is not the audit's)."""
        spec = self.spec
        if not (spec.compile or spec.cuda_graphs or spec.channels_last != "off"):
            return
        t = time.perf_counter()
        rows = x[torch.arange(self.forward_batch, device=x.device) % x.shape[0]]
        self.fast, self.forward_info = prepare_forward(self.module, rows, spec, self._forward_context)
        self.untimed_s += time.perf_counter() - t

    def _forward_context(self) -> contextlib.ExitStack:
        """The contexts every forward of the pass runs in."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.spec.precision, self.device))
        return stack

    def _layer_observers(self, x: torch.Tensor) -> list[Observer]:
        """With ``layers``: hooks on the chosen modules and their observer; with ``lie``: the Lie derivative's."""
        spec, found = self.spec, []
        if spec.layers:
            from .layers import LayerObserver, LayerRecorder

            self.layer_recorder = LayerRecorder(inner(self.module), spec.layers)
            self.layer_recorder.probe(self.module, x)
            if spec.batch_size is None:  # a chunk's recorded maps stay within a budget, like its activations
                self.forward_batch = self.layer_recorder.cap_batch(self.forward_batch, self.device)
            self.layer_observer = LayerObserver(self.layer_recorder, spec.layer_action, spec.channel_layout)
            found.append(self.layer_observer)
        if spec.lie:
            from .lie import LieObserver, LieProbe

            names = [info.name for info in self.layer_recorder.layers] if self.layer_recorder else []
            self.lie_probe = LieProbe(self.module, inner(self.module), self.setup, names)
            found.append(LieObserver(self.lie_probe))
        return found

    def _prepare_floor(
        self,
        x: torch.Tensor,
        size: tuple[int, int],
        classify: bool,
        kw: dict[str, Any],
        elements: Sequence[GroupElement] | None = None,
    ) -> None:
        """The floor's transforms: the round trip ``T_g^-1 T_g`` of every sampled element at ``size``.

        A classifier's floor is the change of its own output when its input is only resampled there and back
        (the round-tripped inputs run in the same forwards as the transformed ones, for the first
        ``floor_images`` images); a dense model's floor is the round trip of its output. With zero padding the
        output's forward half fills with the model's own output on a zero image, not with 0: an exactly
        equivariant model outputs that (its bias, say) where the input was padded.
        """
        elements = self.elements if elements is None else elements  # dense: as they act on the output
        self.floor_index = [i for i, g in enumerate(elements) if not uses_exact_path(g, size)]
        picked = [elements[i] for i in self.floor_index]
        self.floor_back = ElementPlan(picked, size, inverse=True, **kw)
        self.floor_there = None if classify else ElementPlan(picked, size, **kw)
        self.out_fill = None
        if not classify and self.spec.padding == "zeros":
            with self._forward_context():
                self.out_fill = _forward(self.module, torch.zeros_like(x[:1]), 1)

    def step(self, batch: Batch) -> None:
        """Measure one chunk of images and hand it to every observer."""
        setup = self.setup
        assert setup is not None
        self._open_window()
        x = to_device(batch.x, self.device, self.dtype)
        if self._in_region is not None:
            x = x * self._in_region  # a copy: batch.x may be a view of the data
        classify = setup.task == "classify"
        floor_n = self._floor_images(x.shape[0]) if classify else x.shape[0]
        labels = self._labels(batch)
        ref, out, inputs, floor_out = self._run(x, floor_n if classify and self.floor_index else 0)
        if classify:
            observed = ObservedBatch(self.start + self.images, x, inputs, ref, out, None, labels, None)
            observed.scores = classify_scores(out, ref, labels)
            observed.floor_ref = ref[:floor_n]
        else:
            truth = self._truth(batch, ref)
            undone = self.undo(out)
            observed = ObservedBatch(self.start + self.images, x, inputs, ref, out, undone, labels, truth)
            observed.scores = dense_scores(
                undone, ref, setup.out_mask, truth, setup.task == "segment", setup.num_classes
            )
            observed.floor_ref, floor_out = ref, self._dense_floor(ref)
        observed.floor_out = floor_out if floor_out is not None else observed.floor_ref.new_empty((0, *ref.shape))
        if self.layer_recorder is not None:
            observed.layers = self.layer_recorder.take()
        if self.lie_probe is not None:
            self._lie_kinds(observed)
            observed.lie = self.lie_probe(x, max(1, self.forward_batch // 2))
        observed.precision_ref = self._exact_ref(x)
        if self.check_every == 1:
            self._check_finite(x.shape[0])  # before the observers: a bad chunk never enters them
        for obs in self.observers:
            obs.update(observed)
        self.images += x.shape[0]
        self._steps += 1
        if self.check_every > 1 and self._steps % self.check_every == 0:
            self._check_finite()

    def finish(self) -> None:
        """The end of the pass: the last NaN / inf window is read."""
        self._check_finite()

    def _open_window(self) -> None:
        """At the start of a NaN / inf window read lazily: remember the observers' states to go back to."""
        if self.check_every > 1 and self._window is None:
            self._window = (self.images, [obs.snapshot() for obs in self.observers])

    def _note_finite(self, y: torch.Tensor) -> None:
        """Accumulate, on the device, whether every output so far is finite (no host sync)."""
        bad = ~torch.isfinite(y).all()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    def _check_finite(self, pending: int = 0) -> None:
        """Read the NaN / inf flag (one device sync); on a hit, go back to the window's start and stop.
        ``pending``: images of a chunk measured but not yet handed to the observers."""
        flag, self._nonfinite = self._nonfinite, None
        window, self._window = self._window, None
        if flag is None or not bool(flag):
            return
        first, last = self.images, self.images + pending  # images [first, last) hold the NaN / inf
        if window is not None:
            for obs, snap in zip(self.observers, window[1], strict=True):
                obs.restore(snap)
            first, self.images = window[0], window[0]
        raise InputMismatchError(f"the model output NaN or inf on images {self.start + first}..{self.start + last - 1}")

    def _exact_ref(self, x: torch.Tensor) -> torch.Tensor | None:
        """Under a reduced precision: the exact fp32 output on the first images of the precision floor (the
        same ``floor_images`` as the interpolation floor's)."""
        if not reduced(self.spec.precision):
            return None
        n = self._floor_images(x.shape[0])
        if n == 0:
            return None
        with torch.inference_mode(), exact_fp32():
            return _forward(self.module, x[:n], self.forward_batch).to(self.dtype)

    def _lie_kinds(self, observed: ObservedBatch) -> None:
        """The Lie derivative of a layer needs its action's kind, which the layer observer fixes on the first
        chunk."""
        if self.layer_observer is not None:
            self.lie_probe.kinds = self.layer_observer.choose_actions(observed)

    def _search_forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits of extra rows a search asked for (:mod:`equiaudit.search`), in the audit's forward batches."""
        with self._forward_context():
            y = _forward(self.module, rows, self.forward_batch).to(self.dtype)
        # one sync per chunk, only with a search: the device flag of _run is read before the observers run
        if not torch.isfinite(y).all():
            near = self.start + self.images
            raise InputMismatchError(f"the model output NaN or inf on a searched element near image {near}")
        return y

    def _floor_images(self, b: int) -> int:
        """How many of the next ``b`` images still enter the classifier's floor (``floor_images``, 0: all),
        counted from the data's first image (a shard or rank later in the data may have none)."""
        limit = self.spec.floor_images
        return b if limit == 0 else max(0, min(b, limit - self.start - self.images))

    def _dense_floor(self, ref: torch.Tensor) -> torch.Tensor | None:
        """``(S, B, C, h, w)``: the round trip of the output under each sampled element (see _prepare_floor)."""
        if not self.floor_index:
            return None
        if self.out_fill is None:
            return self.floor_back(self.floor_there(ref))
        fill = self.out_fill.to(ref.dtype)
        return self.floor_back(self.floor_there(ref - fill) + fill)

    def _run(
        self, x: torch.Tensor, floor_n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One transform and the forwards: ``ref``, the outputs ``(G, B, ...)``, the moved copies
        ``(M, B, C, H, W)`` and, for the first ``floor_n`` images, the outputs on the round-tripped inputs
        ``(S, floor_n, ...)``."""
        b, c, h, w = x.shape
        m, n_el, s = len(self.moved), len(self.elements), len(self.floor_index)
        if self._inputs is None or self._inputs.shape[1:] != x.shape:
            self._inputs = torch.empty((m + 1, b, c, h, w), dtype=x.dtype, device=x.device)
        inputs = self._inputs
        inputs[0] = x
        if m:
            self.to_inputs(x, out=inputs[1:])
        rows = inputs.view((m + 1) * b, c, h, w)
        if floor_n:  # the sampled copies head the buffer, in floor order
            trips = self.floor_back(inputs[1 : 1 + s, :floor_n])
            rows = torch.cat([rows, trips.reshape(s * floor_n, c, h, w)])
        recording = self.layer_recorder.recording((m + 1) * b) if self.layer_recorder else contextlib.nullcontext()
        with self._forward_context(), recording:
            y = _forward(self.module if self.fast is None else self.fast, rows, self.forward_batch)
        if y.dtype in (torch.bfloat16, torch.float16) and reduced(self.spec.precision):
            y = y.to(self.dtype)  # autocast: everything after the forward runs in the audit's dtype
        self._note_finite(y)
        floor_out = y[(m + 1) * b :].reshape(s, floor_n, *y.shape[1:]) if floor_n else None
        y = y[: (m + 1) * b].reshape(m + 1, b, *y.shape[1:])
        ref = y[0]
        if m == n_el:
            out = y[1:]
        else:
            out = y.new_empty((n_el, *y.shape[1:]))
            out[:] = ref
            if m:
                out[self._moved_index] = y[1:]
        return ref, out, inputs[1:], floor_out

    def _labels(self, batch: Batch) -> torch.Tensor | None:
        if batch.y is None or not self.data.has_labels:
            return None
        labels = batch.y
        if self.task == "classify" and labels.numel():  # checked on the host, before the copy
            k = self.setup.num_classes
            if labels.min() < 0 or labels.max() >= k:
                raise InputMismatchError(
                    f"labels of {self.data.spec!r} run from {int(labels.min())} to {int(labels.max())} but the model "
                    f"has {self.setup.out_shape[0]} output(s); check --data or the model's head"
                )
        return to_device(labels, self.device)

    def _truth(self, batch: Batch, ref: torch.Tensor) -> torch.Tensor | None:
        """Ground-truth label maps at the output's resolution, or None."""
        if batch.mask is None or not self.data.has_masks:
            return None
        m = batch.mask.to(self.device, torch.float32)
        if m.shape[-2:] != ref.shape[-2:]:
            # area pooling keeps the pixel-centre convention when the output is smaller (nearest would shift)
            mode = "area" if m.shape[-1] > ref.shape[-1] else "nearest"
            m = torch.nn.functional.interpolate(m, size=ref.shape[-2:], mode=mode)
        return (m[:, 0] > 0.5).long()

    def result(self, loaded: LoadedModel, wall: float, partial: bool) -> AuditResult:
        """What the observers measured, as an :class:`AuditResult`."""
        return assemble(self, loaded, wall, partial)
