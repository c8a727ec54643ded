"""Audit-core benchmarks (issue 2). Prints ratios measured in one run; never asserts on wall-clock time.

1. throughput: audit throughput / the bare model's forward throughput on the same number of transformed
   images (small CNN, 28x28 digits, so2:36). Target >= 0.90 on CPU.
2. speed-up over the butterfly study's naive loop (one angle at a time with torchvision's rotate, batches of 4,
   the same agreement/KL numbers computed). Target >= 5x.
3. peak memory scanning 1,000 vs 10,000 images (each in a fresh process): must not grow with the count.

Usage: python benchmarks/bench_scan.py [--images N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import InterpolationMode, rotate

from equiaudit.audit import audit
from equiaudit.data import load_data
from equiaudit.groups import parse_group
from equiaudit.transforms import apply_elements


class SmallCNN(nn.Module):
    """The benchmark's model: 3 conv layers + linear head, ~30k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_throughput(
    model: nn.Module, x: torch.Tensor, steps: int, batch_size: int, repeats: int = 5
) -> dict[str, float]:
    group = parse_group("so2", steps)
    n = x.shape[0]

    def run_audit() -> None:
        audit(model, x, group, batch_size=batch_size, samples=0)

    # The bare forward sees the same transformed images (made outside the timing) at the same forward batch size.
    bare_inputs = apply_elements(x, group).reshape(-1, *x.shape[1:]).contiguous()

    def run_bare() -> None:
        with torch.inference_mode():
            for i in range(0, bare_inputs.shape[0], batch_size):
                model(bare_inputs[i : i + batch_size])

    run_audit(), run_bare()  # warm-up
    # Interleaved repeats, best of each: a busy machine slows both alike instead of biasing one.
    t_audit = t_bare = float("inf")
    for _ in range(repeats):
        t_audit = min(t_audit, best_of(run_audit, 1))
        t_bare = min(t_bare, best_of(run_bare, 1))
    transformed = n * len(group)
    return {
        "images": n,
        "elements": len(group),
        "audit_s": t_audit,
        "bare_forward_s": t_bare,
        "audit_transformed_per_s": transformed / t_audit,
        "bare_forward_per_s": transformed / t_bare,
        "throughput_ratio": t_bare / t_audit,
    }


def bench_naive_loop(
    model: nn.Module, x: torch.Tensor, steps: int, batch_size: int, repeats: int = 3
) -> dict[str, float]:
    """The butterfly study's loop: for each angle, rotate batches of 4 with torchvision, run, compare.

    Timed interleaved with the audit (best of ``repeats`` each), so drifting machine speed biases neither.
    """
    group = parse_group("so2", steps)
    angles = [e.angle for e in group]

    def run_naive() -> None:
        with torch.inference_mode():
            for angle in angles:
                for i in range(0, x.shape[0], 4):
                    batch = x[i : i + 4]
                    ref = model(batch)
                    out = model(rotate(batch, angle, interpolation=InterpolationMode.BILINEAR))
                    (out.argmax(-1) == ref.argmax(-1)).float().mean()
                    F.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")

    def run_audit() -> None:
        audit(model, x, group, batch_size=batch_size, samples=0)

    t_naive = t_audit = float("inf")
    for _ in range(repeats):
        t_naive = min(t_naive, best_of(run_naive, 1))
        t_audit = min(t_audit, best_of(run_audit, 1))
    return {"naive_loop_s": t_naive, "naive_audit_s": t_audit, "speedup_vs_naive": t_naive / t_audit}


def _peak_rss_child(count: int) -> tuple[float, float]:
    """(peak RSS after imports and a warm-up scan, peak RSS after scanning ``count`` images), in MiB."""
    code = (
        "import resource, torch, sys; sys.path.insert(0, 'benchmarks');"
        "from bench_scan import SmallCNN; from equiaudit.audit import audit;"
        "torch.manual_seed(0); m = SmallCNN();"
        "audit(m, 'noise', 'so2:8', limit=64, samples=8, batch_size=256);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss);"
        f"audit(m, 'noise', 'so2:8', limit={count}, samples=8, batch_size=256);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    base, peak = (float(v) / 1024.0 for v in out.stdout.split()[-2:])  # KiB -> MiB on Linux
    return base, peak


def bench_memory() -> dict[str, float]:
    (b1, small), (b2, large) = _peak_rss_child(1_000), _peak_rss_child(10_000)
    growth_small, growth_large = small - b1, large - b2
    return {
        "peak_rss_1000_mib": small,
        "peak_rss_10000_mib": large,
        "memory_ratio_10k_vs_1k": large / small,
        "growth_over_warmup_1000_mib": growth_small,
        "growth_over_warmup_10000_mib": growth_large,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SmallCNN().eval()
    data = load_data("digits", split="all", limit=args.images)
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    res = {"torch_threads": torch.get_num_threads(), **bench_throughput(model, x, args.steps, args.batch_size)}
    res.update(bench_naive_loop(model, x, args.steps, args.batch_size))
    if not args.skip_memory:
        res.update(bench_memory())
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(
        f"throughput ratio (audit / bare forward, so2:{args.steps}, {len(x)} digits): "
        f"{res['throughput_ratio']:.3f}   target >= 0.90"
    )
    print(f"  audit {res['audit_transformed_per_s']:.0f} transformed img/s, bare {res['bare_forward_per_s']:.0f} img/s")
    print(f"speed-up over the naive torchvision loop (batches of 4): {res['speedup_vs_naive']:.1f}x   target >= 5x")
    if not args.skip_memory:
        print(
            f"peak RSS 10,000 vs 1,000 images: {res['peak_rss_10000_mib']:.0f} MiB vs "
            f"{res['peak_rss_1000_mib']:.0f} MiB, ratio {res['memory_ratio_10k_vs_1k']:.3f}   target ~1.0"
        )
        print(
            f"  growth over a 64-image warm-up scan: {res['growth_over_warmup_10000_mib']:.1f} MiB (10,000 images) "
            f"vs {res['growth_over_warmup_1000_mib']:.1f} MiB (1,000 images)"
        )


if __name__ == "__main__":
    main()
