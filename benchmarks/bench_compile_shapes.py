"""How ``--compile`` should handle a chunk's shorter last forward: padded to the forward batch (one static shape,
what equiaudit does) or ``torch.compile(dynamic=True)`` (no wasted rows, symbolic shapes). Prints, for the zoo
U-Net at 64x64 and forwards of 16 rows, the speed-up of each over the eager forward for a chunk whose last
forward is short (7 rows: 14% of the padded rows wasted) and nearly full (14 rows: 3%). Interleaved, best of 5,
one run; never asserts on time.

Usage: python benchmarks/bench_compile_shapes.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from equiaudit.zoo import create

FORWARD_BATCH = 16


def _chunk(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sizes: list[int], pad: bool) -> None:
    i = 0
    for n in sizes:
        part = x[i : i + n]
        i += n
        if pad and n < FORWARD_BATCH:
            part = torch.cat([part, part[-1:].expand(FORWARD_BATCH - n, *part.shape[1:])])
        f(part)


def main() -> None:
    torch.manual_seed(0)
    model = create("unet").eval()
    padded, dynamic = torch.compile(model), torch.compile(model, dynamic=True)
    for last in (7, 14):
        sizes = [FORWARD_BATCH] * 3 + [last]
        x = torch.rand(sum(sizes), 3, 64, 64)
        runs = {"eager": (model, False), "padded": (padded, True), "dynamic": (dynamic, False)}
        best = dict.fromkeys(runs, float("inf"))
        with torch.inference_mode():
            for f, pad in runs.values():  # compiles
                _chunk(f, x, sizes, pad)
            for _ in range(5):
                for name, (f, pad) in runs.items():
                    t = time.perf_counter()
                    _chunk(f, x, sizes, pad)
                    best[name] = min(best[name], time.perf_counter() - t)
        print(
            f"last forward {last} of {FORWARD_BATCH} rows: speed-up over eager, padded "
            f"{best['eager'] / best['padded']:.2f}x, dynamic {best['eager'] / best['dynamic']:.2f}x"
        )


if __name__ == "__main__":
    main()
