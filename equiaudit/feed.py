"""Feeding the engine: a reader that prepares the next chunk while the current one computes, and SIGTERM as a
stop that keeps what was measured.

:class:`Prefetcher` reads chunks ``[a, b)`` of an :class:`~equiaudit.data.AuditData` in a background thread, one
or two ahead of the engine (file-backed data is decoded by the data's own DataLoader workers; the thread collates
it). For a CUDA device the chunk is copied into pinned host memory, so the engine's ``.to(device,
non_blocking=True)`` is an asynchronous copy that overlaps the previous chunk's kernels.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .data import AuditData, Batch


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the scan stops the same way (partial result)."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_reason(exc: BaseException) -> str:
    """``sigterm``, ``sigint`` or ``error``: why a scan stopped (``run.stop_reason``)."""
    if isinstance(exc, Terminated):
        return "sigterm"
    return "sigint" if isinstance(exc, KeyboardInterrupt) else "error"


def _pinned(batch: Batch) -> Batch:
    return Batch(*(None if t is None else t.pin_memory() for t in batch))


class Prefetcher:
    """Chunks of ``data`` read ahead in a thread: ``next(size)`` returns the chunk starting where the last one
    ended, ``size`` images long (sizes may change between calls; a chunk read ahead with another size is
    re-read). ``pin``: copy chunks to pinned host memory (for CUDA)."""

    def __init__(self, data: AuditData, start: int, stop: int, pin: bool = False, depth: int = 2) -> None:
        self.data, self.pos, self.stop, self.pin = data, start, stop, pin
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.halt = threading.Event()
        self.thread: threading.Thread | None = None
        self.size = 0

    def _read(self, a: int, b: int) -> Batch:
        batch = self.data.read(a, b)
        return _pinned(batch) if self.pin else batch

    def _work(self, size: int) -> None:
        pos = self.pos
        while pos < self.stop and not self.halt.is_set():
            b = min(self.stop, pos + size)
            try:
                item: Any = (pos, b, self._read(pos, b))
            except BaseException as exc:  # handed to the engine's thread, which raises it
                item = (pos, b, exc)
            while not self.halt.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[2], BaseException):
                return
            pos = b

    def _start(self, size: int) -> None:
        self.close()
        self.halt = threading.Event()
        self.queue = queue.Queue(maxsize=self.queue.maxsize)
        self.size = size
        self.thread = threading.Thread(target=self._work, args=(size,), daemon=True, name="equiaudit-prefetch")
        self.thread.start()

    def next(self, size: int) -> Batch:
        """The chunk ``[pos, min(stop, pos + size))``."""
        if self.thread is None or size != self.size:
            self._start(size)
        a, b, item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        assert a == self.pos, (a, self.pos)
        self.pos = b
        return item

    def close(self) -> None:
        self.halt.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (asynchronously from pinned memory)."""
    return t.to(device=device, dtype=dtype, non_blocking=t.is_pinned())
