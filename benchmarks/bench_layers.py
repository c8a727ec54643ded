"""Per-layer audit benchmarks (issue 10). Prints ratios measured in one run; never asserts on wall-clock time.

1. cost: a ``layers="auto"`` audit of the zoo CNN (5 convolutions of 32 channels at 28x28) relative to the plain
   audit of the same model, data and group, interleaved, best of each. Target <= 1.5x. Also printed: the same
   with ``lie=True`` (two forward-mode passes per image, so it is priced apart) and for the group CNN.
2. peak memory of a ``layers="auto"`` scan of 1,000 vs 5,000 images (each in a fresh process): must not grow
   with the count (per-layer sums are streamed; one chunk's feature maps are kept at a time).

Usage: python benchmarks/bench_layers.py [--images N] [--group G] [--skip-memory] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_scan import peak_rss_child

from equiaudit import zoo
from equiaudit.data import load_data
from equiaudit.engine import audit


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_cost(name: str, x: torch.Tensor, group: str, repeats: int = 3) -> dict[str, float]:
    """Seconds of a plain, a per-layer and a per-layer + Lie audit, interleaved (a busy machine slows all
    alike), best of ``repeats``; and the ratios."""
    model = zoo.create(name, pretrained=True)
    runs = {
        "plain": dict(samples=0),
        "layers": dict(samples=0, layers="auto"),
        "layers_lie": dict(samples=0, layers="auto", lie=True),
    }
    for kw in runs.values():  # warm-up
        audit(model, x[:16], group, **kw)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for key, kw in runs.items():
            best[key] = min(best[key], _timed(lambda kw=kw: audit(model, x, group, **kw)))
    layers = len(audit(model, x[:2], group, samples=0, layers="auto").layers["layers"])
    return {
        f"{name}_layers": layers,
        f"{name}_plain_s": best["plain"],
        f"{name}_layers_s": best["layers"],
        f"{name}_layers_lie_s": best["layers_lie"],
        f"{name}_layers_ratio": best["layers"] / best["plain"],
        f"{name}_layers_lie_ratio": best["layers_lie"] / best["plain"],
    }


def _peak_rss_child(count: int, group: str) -> tuple[float, float]:
    """(peak RSS after a 64-image warm-up scan, peak RSS after scanning ``count`` images), MiB."""
    setup = "from equiaudit import zoo; from equiaudit.engine import audit; m = zoo.create('cnn', pretrained=True)"
    scan = f"audit(m, 'noise', {group!r}, limit={{count}}, samples=8, layers='auto')"
    return peak_rss_child(setup, scan, count)


def bench_memory(group: str, small: int = 1_000, large: int = 5_000) -> dict[str, float]:
    (b1, p1), (b2, p2) = _peak_rss_child(small, group), _peak_rss_child(large, group)
    return {
        "memory_images": [small, large],
        "peak_rss_small_mib": p1,
        "peak_rss_large_mib": p2,
        "memory_ratio": p2 / p1,
        "growth_small_mib": p1 - b1,
        "growth_large_mib": p2 - b2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--group", default="c4")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_data("digits", split="all", limit=args.images)
    x = data.read(0, len(data)).x
    res: dict = {"images": len(x), "group": args.group, "torch_threads": torch.get_num_threads()}
    res.update(bench_cost("cnn", x, args.group))
    res.update(bench_cost("gcnn-c4", x, args.group))
    if not args.skip_memory:
        res.update(bench_memory(args.group))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for name in ("cnn", "gcnn-c4"):
        print(
            f"{name} ({res[f'{name}_layers']} layers, {len(x)} digits, {args.group}): layers=auto costs "
            f"{res[f'{name}_layers_ratio']:.2f}x the plain audit"
            + ("   target <= 1.5x" if name == "cnn" else "")
            + f"; with lie=True {res[f'{name}_layers_lie_ratio']:.2f}x "
            f"(plain {res[f'{name}_plain_s']:.2f} s, layers {res[f'{name}_layers_s']:.2f} s)"
        )
    if not args.skip_memory:
        a, b = res["memory_images"]
        print(
            f"peak RSS of a layers=auto scan, {b:,} vs {a:,} images: {res['peak_rss_large_mib']:.0f} MiB vs "
            f"{res['peak_rss_small_mib']:.0f} MiB, ratio {res['memory_ratio']:.3f}   target ~1.0 "
            f"(growth over a 64-image warm-up: {res['growth_large_mib']:.1f} vs {res['growth_small_mib']:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
