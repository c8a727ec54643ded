"""How the audit's forward runs fast: the memory format (``--channels-last auto|on|off``), ``torch.compile``
(``--compile``) and CUDA graphs (``--cuda-graphs``). None of them changes what is computed, only how: the
results equal the plain forward's within float32 round-off.

- **Memory format.** ``on`` converts the model's 4-D weights and every forward's input to ``channels_last``;
  ``auto`` times a few forwards of each format at the audit's forward batch, on the probe images, interleaved,
  and keeps the faster (both timings are recorded). The model's weights go back to their own format afterwards.
- **Compile.** ``torch.compile`` of the model, one compiled module for every forward of the pass. Every forward
  then takes exactly the forward batch: the last, shorter one is padded with copies of its last row (whose
  outputs are dropped), so the compiled code is specialised to one shape and never recompiled. The compile
  happens on a warm-up forward before the pass; its time is recorded, not counted in the audit's throughput.
- **CUDA graphs.** On CUDA only: the forward of one forward batch is captured once into a static input buffer
  (warm-up on a side stream, as torch documents) and replayed; the last forward is padded as above.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import EquiauditError, OptionError, one_line

MEMORY_FORMATS = ("auto", "on", "off")
# ``auto``: forwards timed per format (interleaved, the best of each counts), after one untimed of each.
_AUTO_REPEATS = 3


class FastForward:
    """The model's forward as the pass runs it: inputs in the chosen memory format, through the compiled
    module or the CUDA graph when asked. ``fixed_batch`` (compiled or graphed) makes :func:`engine._forward`
    pad every forward to the same rows."""

    def __init__(self, module: nn.Module, channels_last: bool) -> None:
        self.module = module
        self.target: Callable[[torch.Tensor], Any] = module
        self.channels_last = channels_last
        self.fixed_batch: int | None = getattr(module, "fixed_batch", None)

    def __call__(self, x: torch.Tensor) -> Any:
        return self.target(_format(x, self.channels_last))


class CudaGraphForward:
    """One forward batch captured in a CUDA graph: a static input buffer, replayed per forward. The output is
    the graph's static buffer, cloned so that the next replay does not overwrite what the audit still holds."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], example: torch.Tensor) -> None:
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs documents
            for _ in range(3):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)
        if not isinstance(self.static_out, torch.Tensor):
            raise EquiauditError("--cuda-graphs needs a model whose forward returns a tensor")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out.clone()


def prepare_forward(
    module: nn.Module,
    rows: torch.Tensor,
    spec: Any,
    run_context: Callable[[], Any],
) -> tuple[FastForward, dict[str, Any]]:
    """The pass's forward for ``module`` and what was chosen (``run.forward``). ``rows``: one forward batch of
    real images; ``run_context``: the contexts the pass runs its forwards in (inference mode, autocast)."""
    info: dict[str, Any] = {"memory_format": "contiguous", "memory_format_s": None, "compiled": False,
                            "compile_s": None, "cuda_graphs": False, "capture_s": None}  # fmt: skip
    fast = FastForward(module, channels_last=False)
    try:
        _choose_format(module, rows, spec.channels_last, run_context, fast, info)
    except EquiauditError:
        raise
    except Exception as exc:
        module.to(memory_format=torch.contiguous_format)
        raise EquiauditError(f"--channels-last {spec.channels_last} failed for this model: {one_line(exc)}") from None
    if spec.compile:
        t = time.perf_counter()
        fast.target = torch.compile(module)
        fast.fixed_batch = rows.shape[0]
        _warm(fast, rows, run_context, "--compile")
        info.update(compiled=True, compile_s=time.perf_counter() - t)
    if spec.cuda_graphs:
        check_device(spec, rows.device)
        t = time.perf_counter()
        target = fast.target
        with run_context():
            try:
                fast.target = CudaGraphForward(lambda x: target(_format(x, fast.channels_last)), rows)
            except EquiauditError:
                raise
            except Exception as exc:
                raise EquiauditError(f"--cuda-graphs failed for this model: {one_line(exc)}") from None
        fast.fixed_batch = rows.shape[0]
        fast.channels_last = False  # the graph converts its own input
        info.update(cuda_graphs=True, capture_s=time.perf_counter() - t)
    return fast, info


def _choose_format(
    module: nn.Module,
    rows: torch.Tensor,
    mode: str,
    run_context: Callable[[], Any],
    fast: FastForward,
    info: dict[str, Any],
) -> None:
    """``--channels-last``: ``auto`` times both formats and keeps the faster; ``on`` converts the weights."""
    if mode == "auto":
        timings = _time_formats(module, rows, run_context)
        info["memory_format_s"] = timings
        mode = "on" if timings["channels_last"] < timings["contiguous"] else "off"
    if mode == "on":
        module.to(memory_format=torch.channels_last)
        fast.channels_last = True
        info["memory_format"] = "channels_last"


def check_device(spec: Any, device: torch.device) -> None:
    """``--cuda-graphs`` runs on CUDA only: elsewhere a one-line error before anything runs."""
    if spec.cuda_graphs and device.type != "cuda":
        raise OptionError(f"--cuda-graphs needs a CUDA device; the audit runs on {device.type}")


def _format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _warm(fast: FastForward, rows: torch.Tensor, run_context: Callable[[], Any], option: str) -> None:
    """One forward that compiles (a failure is one line naming the option)."""
    try:
        with run_context():
            fast(rows)
        if rows.device.type == "cuda":
            torch.cuda.synchronize(rows.device)
    except Exception as exc:
        raise EquiauditError(f"{option} failed for this model: {one_line(exc)}; audit it without {option}") from None


def _time_formats(module: nn.Module, rows: torch.Tensor, run_context: Callable[[], Any]) -> dict[str, float]:
    """Seconds per forward of ``rows`` in each memory format (best of ``_AUTO_REPEATS``, interleaved)."""
    best = {"contiguous": float("inf"), "channels_last": float("inf")}
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    inputs = {name: rows.contiguous(memory_format=f) for name, f in formats.items()}
    for i in range(_AUTO_REPEATS + 1):
        for name, f in formats.items():
            module.to(memory_format=f)
            with run_context():
                t = time.perf_counter()
                module(inputs[name])
                if rows.device.type == "cuda":
                    torch.cuda.synchronize(rows.device)
                spent = time.perf_counter() - t
            if i:
                best[name] = min(best[name], spent)
    module.to(memory_format=torch.contiguous_format)
    return best


def restore_format(module: nn.Module, info: dict[str, Any] | None) -> None:
    """The model's weights back in the standard layout after a channels-last pass."""
    if info and info.get("memory_format") == "channels_last":
        module.to(memory_format=torch.contiguous_format)
