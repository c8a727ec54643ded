"""Precision as an explicit choice (``--precision fp32|tf32|bf16|fp16``) and the numeric floor it costs.

Convention:

* ``fp32``: float32 arithmetic with TF32 off for CUDA matmuls and convolutions (the default: CPU and CUDA
  results then agree to float32 round-off; torch's own default has TF32 convolutions on);
* ``tf32``: TF32 on for CUDA matmuls and convolutions (no effect on a CPU);
* ``bf16`` / ``fp16``: the model's forward under :func:`torch.autocast` with that dtype (TF32 off for what stays
  float32); outputs are cast back to the audit's dtype before anything is scored.

Transforms, undo and scores always run in the audit's dtype. The backend flags are set for the audit only and
restored afterwards; the flags in force are recorded in ``run.precision``.

A reduced precision reports its own floor, :class:`PrecisionFloor`: the error of the identity element under
that precision, i.e. the model's output on the same image under the chosen precision against exact fp32 (TF32
off), in the units of the headline error, on the first ``floor_images`` images. Errors below it are what the
speed costs in resolution, not the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .metrics import output_error
from .observers import ObservedBatch, Observer, Setup

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def reduced(precision: str) -> bool:
    """Whether ``precision`` can differ from exact fp32 (and so has a floor of its own)."""
    return precision != "fp32"


def _new_api() -> bool:
    """torch >= 2.9 sets TF32 per backend with ``fp32_precision`` ("ieee" / "tf32"); mixing it with the legacy
    ``allow_tf32`` flags is an error there, so only one of the two is ever used."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def _raw_flags() -> tuple[Any, Any]:
    if _new_api():
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_raw(matmul: Any, conv: Any) -> None:
    if _new_api():
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def _set_tf32(on: bool) -> None:
    if _new_api():
        _set_raw(*(("tf32" if on else "ieee"),) * 2)
    else:
        _set_raw(on, on)


def backend_flags() -> dict[str, Any]:
    """The flags that decide float32 matmul / convolution precision on CUDA, as they are now: whether TF32 is
    allowed, and the raw ``fp32_precision`` values where torch has them (None: the legacy flags)."""
    matmul, conv = _raw_flags()
    new = _new_api()
    return {
        "cuda_matmul_allow_tf32": matmul == "tf32" if new else bool(matmul),
        "cudnn_allow_tf32": conv == "tf32" if new else bool(conv),
        "fp32_precision": {"cuda.matmul": matmul, "cudnn.conv": conv} if new else None,
    }


@contextlib.contextmanager
def precision_flags(precision: str) -> Iterator[dict[str, Any]]:
    """Set the TF32 flags for ``precision`` (on for ``tf32`` only) and restore the previous ones on exit; yields
    the record of ``run.precision``."""
    before = _raw_flags()
    _set_tf32(precision == "tf32")
    try:
        yield {"precision": precision, "autocast": autocast_name(precision), **backend_flags()}
    finally:
        _set_raw(*before)


def autocast_name(precision: str) -> str | None:
    dt = AUTOCAST.get(precision)
    return None if dt is None else str(dt).replace("torch.", "")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's autocast for ``precision`` on ``device`` (a no-op context for fp32 / tf32)."""
    dt = AUTOCAST.get(precision)
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Float32 as exact as the backend has it: autocast off, TF32 off (restored on exit)."""
    before = _raw_flags()
    _set_tf32(False)
    try:
        with torch.autocast(device_type="cpu", enabled=False), torch.autocast(device_type="cuda", enabled=False):
            yield
    finally:
        _set_raw(*before)


class PrecisionFloor(Observer):
    """The floor of a reduced precision: per image, the relative error of the output under that precision
    against exact fp32 on the same image (classifiers: centred logits; dense models: inside the compared region).
    Mean, max and per image (for the interval); the engine computes the fp32 outputs for the first
    ``floor_images`` images (``ObservedBatch.precision_ref``)."""

    name = "precision_floor"

    def setup(self, setup: Setup) -> None:
        self.classify = setup.task == "classify"
        self.mask = None if setup.out_mask is None else setup.out_mask.to(setup.out_dtype)
        dev = setup.device
        self.add_state("count", torch.zeros((), dtype=torch.float64, device=dev), "sum")
        self.add_state("err_sum", torch.zeros((), dtype=torch.float64, device=dev), "sum")
        self.add_state("err_max", torch.zeros((), dtype=torch.float64, device=dev), "max")
        self.add_state("per_image", [], "cat")

    def update(self, batch: ObservedBatch) -> None:
        exact = getattr(batch, "precision_ref", None)
        if exact is None or exact.shape[0] == 0:
            return
        got = batch.ref[: exact.shape[0]]
        err = output_error(got, exact, self.classify, self.mask).double()
        self.count += err.shape[0]
        self.err_sum += err.sum()
        self.err_max = torch.maximum(self.err_max, err.max())
        self.per_image.append(err.float())

    def compute(self) -> dict[str, float]:
        if not float(self.count) > 0:
            return {}
        return {"precision_floor": float(self.err_sum / self.count), "precision_floor_max": float(self.err_max)}

    def images(self) -> torch.Tensor:
        """``(N,)`` the precision floor of every image it was measured on (on the host)."""
        if not self.per_image:
            return torch.zeros(0)
        return torch.cat(self.per_image).cpu()
