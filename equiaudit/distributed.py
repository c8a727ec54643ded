"""One audit over several processes: ``torchrun`` ranks, or independent jobs (``--shard K/N``) merged afterwards.

Either way each part audits a disjoint contiguous range of the images (:func:`span`; no padding, so no image is
counted twice) and the parts' observer states are combined with their declared reductions (sums add, maxima and
minima combine, ``cat`` states concatenate in image order, observers with their own ``merge`` fold with it).
The result is then assembled from the combined states exactly as a single process assembles its own, so counts
are identical and sums agree to round-off; intervals are recomputed from the combined per-image records.

* ``torchrun --nproc-per-node N -m equiaudit scan ...``: :func:`joined` starts the process group from
  torchrun's environment (gloo on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``); :func:`reduce_observers`
  all-reduces the states and every rank holds the same result (rank 0 writes it).
* ``--shard K/N``: the result carries its states (``state``: the setup and every observer's states, tensors as
  base64 of their bytes, exact); :func:`merge_results` combines the shards (``equiaudit merge``).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .errors import DeviceError, EquiauditError
from .observers import Gallery, Observer, Setup

STATE_VERSION = 1


def span(total: int, index: int, count: int) -> tuple[int, int]:
    """Images ``[start, stop)`` of part ``index`` of ``count`` contiguous parts of ``total`` (sizes differ by at
    most one)."""
    return index * total // count, (index + 1) * total // count


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() else None


def world() -> tuple[int, int]:
    """``(rank, size)`` of the process group in use (``(0, 1)`` without one)."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str | None) -> str | None:
    """The device of this rank under torchrun: ``cuda:LOCAL_RANK`` when the audit asks for CUDA (or auto on a
    CUDA machine), else ``device`` unchanged. With more processes on this machine than visible GPUs, ``auto``
    puts every rank on the CPU (one backend for all; NCCL takes one GPU per rank) and ``cuda`` is an error."""
    if not launched() or not torch.cuda.is_available() or device not in (None, "auto", "cuda"):
        return device
    local, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if local > gpus:
        if device == "cuda":
            raise DeviceError(
                f"torchrun started {local} processes on this machine but {gpus} CUDA device(s) are visible; "
                f"use --nproc-per-node {gpus} or --device cpu"
            )
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[bool]:
    """Inside: the process group of a torchrun launch (started here from its environment when no one did, and
    destroyed on exit); yields whether the audit is shared between processes."""
    dist = _dist()
    if dist is None or not (launched() or dist.is_initialized()):
        yield False
        return
    own = not dist.is_initialized()
    if own:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    try:
        yield dist.get_world_size() > 1
    finally:
        if own:
            dist.destroy_process_group()


# ---- observer states ----------------------------------------------------------------------------------------


def _declared(obs: Observer) -> dict[str, str]:
    return getattr(obs, "_reductions", {})


def state_of(obs: Observer) -> dict[str, Any]:
    """An observer's states on the host: tensors, ``cat`` states as one tensor (None when empty); a Gallery's
    ``first`` and ``worst`` lists."""
    if isinstance(obs, Gallery):
        return {"first": list(obs.first), "worst": list(obs.worst)}
    out: dict[str, Any] = {}
    for name, how in _declared(obs).items():
        value = getattr(obs, name)
        if how == "cat":
            out[name] = torch.cat(value).cpu() if value else None
        else:
            out[name] = value.detach().cpu()
    return out


def load_state(obs: Observer, state: dict[str, Any], device: torch.device) -> Observer:
    """Set an observer's states from :func:`state_of` (on ``device``)."""
    if isinstance(obs, Gallery):
        obs.first, obs.worst = list(state["first"]), list(state["worst"])
        return obs
    for name, how in _declared(obs).items():
        value = state[name]
        if how == "cat":
            setattr(obs, name, [] if value is None else [value.to(device)])
        else:
            setattr(obs, name, value.to(device))
    return obs


def fold(observers: Sequence[Observer], states: Sequence[Sequence[dict[str, Any]]], device: torch.device) -> None:
    """Set ``observers`` to the merge of the parts' ``states`` (``states[part][i]`` for ``observers[i]``), parts
    in image order."""
    for i, obs in enumerate(observers):
        load_state(obs, states[0][i], device)
        for part in states[1:]:
            obs.merge(load_state(copy.copy(obs), part[i], device))


def reduce_observers(observers: Sequence[Observer], images: int) -> int:
    """All-reduce the observers of every rank (ranks hold contiguous image ranges in rank order); returns the
    number of images of all ranks. Sum / max / min states of observers without their own ``merge`` go through
    ``all_reduce`` on their device; ``cat`` states and the other observers are gathered and folded in rank
    order."""
    dist = _dist()
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    gathered: list[Any] = [None] * dist.get_world_size()
    rest: list[tuple[Observer, list[str] | None]] = []
    for obs in observers:
        own_merge = type(obs).merge is not Observer.merge
        if own_merge or isinstance(obs, Gallery):
            rest.append((obs, None))
            continue
        for name, how in _declared(obs).items():
            if how != "cat":
                dist.all_reduce(getattr(obs, name), op=ops[how])
        cats = [n for n, how in _declared(obs).items() if how == "cat"]
        if cats:
            rest.append((obs, cats))
    mine = [_part(obs, cats) for obs, cats in rest]
    dist.all_gather_object(gathered, (images, mine))
    for i, (obs, cats) in enumerate(rest):
        parts = [g[1][i] for g in gathered]
        if cats is None:
            fold([obs], [[p] for p in parts], _device_of(obs))
        else:
            for name in cats:
                setattr(obs, name, [p[name].to(_device_of(obs)) for p in parts if p[name] is not None])
    return sum(g[0] for g in gathered)


def _part(obs: Observer, cats: list[str] | None) -> dict[str, Any]:
    state = state_of(obs)
    return state if cats is None else {n: state[n] for n in cats}


def _device_of(obs: Observer) -> torch.device:
    for name in _declared(obs):
        value = getattr(obs, name)
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


# ---- states in a result document ----------------------------------------------------------------------------


def encode(t: torch.Tensor | None) -> dict[str, Any] | None:
    """A tensor as JSON: dtype, shape and its bytes in base64 (exact, NaN and inf included)."""
    if t is None:
        return None
    a = t.detach().cpu().contiguous().numpy()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(doc: dict[str, Any] | None) -> torch.Tensor | None:
    if doc is None:
        return None
    a = np.frombuffer(base64.b64decode(doc["b64"]), dtype=np.dtype(doc["dtype"])).reshape(doc["shape"])
    return torch.from_numpy(a.copy())


SETUP_TENSORS = ("in_mask", "in_region", "out_mask")
SETUP_PLAIN = ("task", "moved", "in_size", "out_shape", "num_classes", "floor_images", "floor_rows")


def shard_state(setup: Setup, observers: Sequence[Observer], images: int) -> dict[str, Any]:
    """What merging needs of a shard: its setup and every observer's states (a Gallery's come from the
    result's samples)."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(setup, k)) for k in SETUP_PLAIN)}
    plain.update(out_dtype=str(setup.out_dtype).replace("torch.", ""), dtype=str(setup.dtype).replace("torch.", ""))
    plain.update({k: encode(getattr(setup, k)) for k in SETUP_TENSORS})
    states = {
        obs.name: {k: encode(v) for k, v in state_of(obs).items()} for obs in observers if not isinstance(obs, Gallery)
    }
    info = {obs.name: obs.describe() for obs in observers if hasattr(obs, "describe")}  # layers, lie, search
    return {"version": STATE_VERSION, "images": images, "setup": plain, "observers": states, "info": info}


def setup_from(doc: dict[str, Any], spec: Any) -> Setup:
    """The :class:`Setup` a shard recorded, on the CPU."""
    return Setup(
        task=doc["task"],
        elements=spec.parsed_group.elements,
        moved=list(doc["moved"]),
        in_size=tuple(doc["in_size"]),
        out_shape=tuple(doc["out_shape"]),
        out_dtype=getattr(torch, doc["out_dtype"]),
        device=torch.device("cpu"),
        dtype=getattr(torch, doc["dtype"]),
        interpolation=spec.interpolation,
        padding=spec.padding,
        mask=spec.mask,
        in_mask=decode(doc["in_mask"]),
        in_region=decode(doc["in_region"]),
        out_mask=decode(doc["out_mask"]),
        num_classes=doc["num_classes"],
        floor_images=doc["floor_images"],
        floor_rows=list(doc["floor_rows"]),
    )


def gallery_state(samples: dict[str, Any] | None) -> dict[str, Any]:
    """A Gallery's state from a result's samples (``first`` / ``worst`` stacked per key)."""
    if not samples or "first" not in samples:
        return {"first": [], "worst": []}

    def items(part: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        n = len(part.get("index", []))
        return [{k: (v[i].item() if k in ("index", "score") else v[i]) for k, v in part.items()} for i in range(n)]

    worst = [(it["score"], -it["index"], it) for it in items(samples.get("worst") or {})]
    return {"first": items(samples["first"]), "worst": worst}


def check_shards(results: Sequence[Any]) -> list[Any]:
    """The shards in order, or a one-line error: each must carry its states, all the same audit, one shard of
    each index of the same count."""
    if not results:
        raise EquiauditError("merge needs at least one shard result")
    for r in results:
        if r.state is None or r.run.shard is None:
            raise EquiauditError(
                f"{r.model.source} on {r.data.spec}: not a shard result (run it with --shard K/N to merge it)"
            )
    ordered = sorted(results, key=lambda r: r.run.shard["index"])
    count = ordered[0].run.shard["count"]
    indices = [r.run.shard["index"] for r in ordered]
    if indices != list(range(count)) or any(r.run.shard["count"] != count for r in ordered):
        raise EquiauditError(f"merge needs shards 0..{count - 1} of {count} once each, got {indices}")
    first = ordered[0]

    def same(r: Any) -> tuple:
        spec = {k: v for k, v in r.run.spec.items() if k != "shard"}
        return spec, r.model.source, r.model.sha256, r.data.spec, r.data.count, r.group.spec

    for r in ordered[1:]:
        if same(r) != same(first):
            raise EquiauditError(
                f"shard {r.run.shard['index']} is another audit than shard 0 (spec, model, data or group differ)"
            )
    return ordered
