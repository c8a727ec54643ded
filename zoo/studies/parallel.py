"""A study's models trained in parallel processes before its run (``equiaudit zoo study NAME --jobs N``).

Each study names the models its run will ask for (its module's ``trainings(ctx)``: ``(recipe name, seed,
changes)`` as :meth:`.common.StudyContext.model` takes them). Those without a checkpoint (shipped, or cached in
``OUT/checkpoints``) train in ``N`` spawned processes, longest recipes first, each with ``cpu_count // N``
threads on the study's device (on CUDA without an index, spread over the visible GPUs), and are saved in the
cache as they finish; the run then loads them like any cached checkpoint. A worker trains exactly what the run
would (same recipe, seed and data, through :func:`..recipes.fit`), so only the thread count and the device's
own nondeterminism can tell the two apart. A run that stops keeps every model finished so far.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from equiaudit.errors import EquiauditError

from ..checkpoints import save_checkpoint
from ..recipes import Recipe, fit

__all__ = ["train_all", "worker_devices", "worker_threads"]


def worker_threads(jobs: int, cpus: int | None = None) -> int:
    """Threads of each of ``jobs`` workers: the machine's CPUs shared out, at least one."""
    return max(1, (cpus or os.cpu_count() or 1) // jobs)


def worker_devices(device: torch.device, jobs: int, gpus: int | None = None) -> list[str]:
    """The device of each worker: ``device`` itself, or with ``cuda`` (no index) and several GPUs, the GPUs in
    turn."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if device.type == "cuda" and device.index is None and gpus > 1:
        return [f"cuda:{i % gpus}" for i in range(jobs)]
    return [str(device)] * jobs


def train_all(
    recipes: Sequence[Recipe],
    cache: Path,
    device: torch.device,
    jobs: int,
    status: Callable[[str], None] = lambda _msg: None,
) -> list[str]:
    """Train ``recipes`` in ``jobs`` processes and save each in ``cache``; the names trained, in the order they
    finished. A failed training is a one-line error once the trainings under way have finished and been saved
    (the ones not started are dropped); Ctrl-C stops every worker at once."""
    if not recipes:
        return []
    order = sorted(recipes, key=_cost, reverse=True)
    jobs = min(jobs, len(order))
    devices, threads = worker_devices(device, jobs), worker_threads(jobs)
    status(f"training {len(order)} models in {jobs} processes ({threads} threads each, on {', '.join(set(devices))})")
    done: list[str] = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_ignore_interrupts)
    pending = {pool.submit(_train_one, r, str(cache), devices[i % jobs], threads): r for i, r in enumerate(order)}
    try:
        _collect(pending, done, status, cache)
    except EquiauditError as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        running = [r.name for f, r in pending.items() if f.running()]
        if running:
            status(f"{exc}; waiting for {', '.join(running)} to finish and be saved (Ctrl-C stops them)")
        try:
            _finish_running(pending, status, cache)
        except BaseException:
            _stop(pool)
            raise
        raise
    except BaseException:  # Ctrl-C, or the run being stopped: no worker outlives it
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return done


def _collect(pending: dict[Future, Recipe], done: list[str], status: Callable[[str], None], cache: Path) -> None:
    """Take the trainings as they finish (``done`` gets their names); the first failure is raised."""
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            recipe = pending.pop(future)
            seconds = _result(future, recipe, list(pending.values()))
            done.append(recipe.name)
            status(f"{recipe.name}: trained in a worker ({seconds:.0f} s), cached in {cache}")


def _finish_running(pending: dict[Future, Recipe], status: Callable[[str], None], cache: Path) -> None:
    """Wait for the trainings under way (each is saved by its worker as it ends); Ctrl-C stops them."""
    for future, recipe in pending.items():
        if future.cancelled():
            continue
        try:
            seconds = future.result()
        except Exception:  # the first error is the one reported
            continue
        status(f"{recipe.name}: trained in a worker ({seconds:.0f} s), cached in {cache}")


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a half-trained model is not saved)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on the workers
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _ignore_interrupts() -> None:
    """In a worker: Ctrl-C reaches the whole process group, and only the parent answers it (by stopping them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cost(recipe: Recipe) -> float:
    """A rough training cost to start the longest first: epochs times the training images (when limited)."""
    return recipe.epochs * (recipe.train_limit or 1_000_000)


def _result(future: Future, recipe: Recipe, others: list[Recipe]) -> float:
    """The training seconds of a finished future, or a one-line error naming what failed."""
    try:
        return future.result()
    except BrokenProcessPool:
        names = ", ".join(r.name for r in [recipe, *others])
        raise EquiauditError(
            f"a training process died (killed, or out of memory?) while training among {names}"
        ) from None
    except EquiauditError as exc:
        raise EquiauditError(f"training {recipe.name} in a worker: {exc}") from None
    except Exception as exc:  # a worker's traceback stays in the worker; the user gets one line
        raise EquiauditError(f"training {recipe.name} in a worker failed: {type(exc).__name__}: {exc}") from None


def _train_one(recipe: Recipe, cache: str, device: str, threads: int) -> float:
    """In a worker: train ``recipe`` as a study run would and save it in ``cache``; its training seconds."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, card = fit(recipe, device=device, audit_card=False)
    save_checkpoint(recipe.name, model, card, cache)
    return time.perf_counter() - started
