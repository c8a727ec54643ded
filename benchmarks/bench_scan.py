"""Audit-core benchmarks (issue 2). Prints ratios measured in one run; never asserts on wall-clock time.

1. throughput: audit throughput / the bare model's forward throughput on the same number of transformed
   images (small CNN, 28x28 digits, so2:36). Target >= 0.90 on CPU.
2. speed-up over the butterfly study's naive loop (one angle at a time with torchvision's rotate, batches of 4):
   a classifier version (the small CNN, agreement/KL) and the study's own segmentation loop (a U-Net, the
   prediction rotated back, IoU against the unrotated prediction and the truth). Target >= 5x.
   Also printed: how much a second thread speeds up a large forward right now, since batched work gains from
   both cores and batches of 4 barely do.
3. peak memory scanning 1,000 vs 10,000 images (each in a fresh process): must not grow with the count.
4. precision: throughput and numeric floor of fp32 / tf32 / bf16 (issue 12), the floor being the identity's
   error under that precision against exact fp32 on the same images.
6. the forward's options (issue 12): the audit's own time (``run.wall_time_s``, which leaves compiling and the
   format timing out) with ``channels_last`` on, ``--compile`` and, on CUDA, ``--cuda-graphs``, against the plain
   forward, for the zoo CNN (digits) and the zoo U-Net (64x64 shapes), interleaved, best of three; the compile
   time; and what ``channels_last auto`` chose.
5. processes: the same scan by 1 and by N torchrun processes (gloo on CPU, NCCL on CUDA), the audit's own wall
   time (run.wall_time_s of rank 0, without the start-up) and whether the results agree.

With ``--device cuda`` the throughput table adds torchvision's ResNet-50 at 224x224 (random weights), and the
classifier and U-Net loops run on the GPU. Targets (issue 12): CUDA ResNet-50 >= 0.90 of the bare forward, small
CNN >= 0.60, U-Net >= 20x the seed's loop; CPU >= 0.90 of the bare forward.

Usage: python benchmarks/bench_scan.py [--device cpu|cuda] [--images N] [--skip-memory] [--skip-segmentation]
       [--skip-processes] [--processes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import InterpolationMode, rotate

from equiaudit.data import load_data
from equiaudit.engine import audit
from equiaudit.groups import parse_group
from equiaudit.precision import precision_flags
from equiaudit.spec import AuditSpec
from equiaudit.transforms import apply_elements, uses_exact_path


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


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_throughput(
    model: nn.Module, x: torch.Tensor, steps: int, batch_size: int | None, repeats: int = 5
) -> dict[str, float]:
    group = parse_group("so2", steps)
    n = x.shape[0]
    used = audit(model, x, group, batch_size=batch_size, samples=0).run.batch_size

    def run_audit() -> None:
        audit(model, x, group, batch_size=batch_size, samples=0)

    # The bare forward sees the same rows as the audit's model (made outside the timing) at the audit's forward
    # batch: every transformed image, and the classifier floor's round trips (the first floor_images images
    # resampled there and back under each sampled element, see Engine._prepare_floor).
    floor_n = min(n, AuditSpec().floor_images)
    sampled = [g for g in group.elements if not uses_exact_path(g, tuple(x.shape[-2:]))]
    trips = apply_elements(apply_elements(x[:floor_n], sampled), sampled, inverse=True)
    rows = [apply_elements(x, group).reshape(-1, *x.shape[1:]), trips.reshape(-1, *x.shape[1:])]
    device = next(model.parameters()).device
    bare_inputs = torch.cat(rows).contiguous().to(device)

    def run_bare() -> None:
        # the audit's arithmetic (fp32, TF32 off): torch's CUDA default runs convolutions in TF32, 1.75x faster
        # for ResNet-50 on an H200, which would charge the audit for a precision it does not use
        with torch.inference_mode(), precision_flags(AuditSpec().precision):
            for i in range(0, bare_inputs.shape[0], used):
                model(bare_inputs[i : i + used])

    run_audit(), run_bare()  # warm-up
    # Interleaved repeats, best of each: a busy machine slows both alike instead of biasing one.
    t_audit = t_bare = float("inf")
    for _ in range(repeats):
        t_audit = min(t_audit, best_of(run_audit, 1))
        t_bare = min(t_bare, best_of(run_bare, 1))
    transformed = bare_inputs.shape[0]
    return {
        "images": n,
        "elements": len(group),
        "forward_batch": used,
        "audit_s": t_audit,
        "bare_forward_s": t_bare,
        "audit_transformed_per_s": transformed / t_audit,
        "bare_forward_per_s": transformed / t_bare,
        "throughput_ratio": t_bare / t_audit,
    }


def _interleaved(naive, audited, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` each, interleaved, so drifting machine speed biases neither."""
    t_naive = t_audit = float("inf")
    for _ in range(repeats):
        t_naive = min(t_naive, best_of(naive, 1))
        t_audit = min(t_audit, best_of(audited, 1))
    return t_naive, t_audit


def bench_naive_loop(
    model: nn.Module, x: torch.Tensor, steps: int, batch_size: int | None, repeats: int = 3
) -> dict[str, float]:
    """A classifier version of the study's loop: for each angle, rotate batches of 4 with torchvision, run the
    model on them and on the originals, compare predictions (agreement, KL)."""
    group = parse_group("so2", steps)
    angles = [e.angle for e in group]
    device = next(model.parameters()).device

    def run_naive() -> None:
        with torch.inference_mode():
            for angle in angles:
                for i in range(0, x.shape[0], 4):
                    batch = x[i : i + 4].to(device)
                    ref = model(batch)
                    out = model(rotate(batch, angle, interpolation=InterpolationMode.BILINEAR))
                    (out.argmax(-1) == ref.argmax(-1)).float().mean()
                    F.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")

    def run_audit() -> None:
        audit(model, x, group, batch_size=batch_size, samples=0)

    t_naive, t_audit = _interleaved(run_naive, run_audit, repeats)
    return {"naive_loop_s": t_naive, "naive_audit_s": t_audit, "speedup_vs_naive": t_naive / t_audit}


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter, union = (a & b).sum((-2, -1)), (a | b).sum((-2, -1))
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union, dtype=torch.float32))


def bench_naive_segmentation(
    steps: int, images: int, batch_size: int | None, repeats: int = 2, device: str = "cpu"
) -> dict[str, float]:
    """The butterfly study's loop itself: a U-Net on 64x64 foreground images; for each angle, batches of 4 are
    rotated with torchvision, segmented, the prediction rotated back and compared with the unrotated prediction
    and the true mask (IoU). The audit computes the same IoUs and more."""
    from equiaudit.zoo import create

    torch.manual_seed(0)
    model = create("unet").eval().to(device)  # timing does not depend on the weights
    data = load_data("shapes-seg", split="test", limit=images)
    batch = data.read(0, len(data))
    x, truth = batch.x.to(device), batch.mask[:, 0].to(device) > 0.5
    group = parse_group("so2", steps)
    angles = [e.angle for e in group]
    bilinear = InterpolationMode.BILINEAR

    def run_naive() -> None:
        with torch.inference_mode():
            for angle in angles:
                for i in range(0, x.shape[0], 4):
                    xb, tb = x[i : i + 4], truth[i : i + 4]
                    ref = model(xb)[:, 0] > 0
                    out = rotate(model(rotate(xb, angle, interpolation=bilinear)), -angle, interpolation=bilinear)
                    seg = out[:, 0] > 0
                    _iou(seg, ref).mean(), _iou(seg, tb).mean()

    def run_audit() -> None:  # from the same in-memory tensors as the naive loop
        audit(model, (batch.x, None, batch.mask), group, task="segment", batch_size=batch_size, samples=0)

    seg = (batch.x, None, batch.mask)
    used = audit(model, seg, group, task="segment", batch_size=batch_size, samples=0).run.batch_size
    # The bound: the naive loop runs two forwards per image and angle in batches of 4, the audit one at its own
    # batch; with nothing else costing time the speed-up would be 2 x (time per image at 4 / at the audit's).
    rows = apply_elements(x[:8].cpu(), group).reshape(-1, *x.shape[1:]).contiguous().to(device)

    def per_image(size: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for i in range(0, rows.shape[0], size):
                    model(rows[i : i + size])

        return run

    t4, t_used = _interleaved(per_image(4), per_image(used), repeats + 1)
    t_naive, t_audit = _interleaved(run_naive, run_audit, repeats)
    return {
        "segmentation_images": len(data),
        "segmentation_forward_batch": used,
        "segmentation_naive_s": t_naive,
        "segmentation_audit_s": t_audit,
        "segmentation_speedup_vs_naive": t_naive / t_audit,
        "segmentation_speedup_bound": 2 * t4 / t_used,
    }


def bench_thread_scaling(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How much a second thread speeds up a large forward right now: about 2 when both cores are free, about 1
    when another load holds one (batched work gains from the cores, batches of 4 barely do)."""
    inputs = x.repeat(4, 1, 1, 1)[:1024]
    threads = torch.get_num_threads()

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, inputs.shape[0], 256):
                model(inputs[i : i + 256])

    times = {}
    for n in (1, threads):
        torch.set_num_threads(n)
        run()
        times[n] = best_of(run, 3)
    torch.set_num_threads(threads)
    return {"thread_scaling": times[1] / times[threads]}


def bench_precision(model: nn.Module, x: torch.Tensor, steps: int, repeats: int = 3) -> dict[str, float]:
    """Audit throughput and the numeric floor of each precision, in one run (interleaved, best of ``repeats``)."""
    group = parse_group("so2", steps)
    names = ("fp32", "tf32", "bf16")
    runs = {p: (lambda p=p: audit(model, x, group, precision=p, samples=0)) for p in names}
    floors = {p: runs[p]().summary.get("precision_floor", 0.0) for p in names}  # and a warm-up
    best = dict.fromkeys(names, float("inf"))
    for _ in range(repeats):
        for p in names:
            best[p] = min(best[p], best_of(runs[p], 1))
    out: dict[str, float] = {}
    for p in names:
        out[f"precision_{p}_s"] = best[p]
        out[f"precision_{p}_images_per_s"] = x.shape[0] / best[p]
        out[f"precision_{p}_speedup"] = best["fp32"] / best[p]
        out[f"precision_{p}_floor"] = floors[p]
    return out


def bench_resnet50(images: int, steps: int, device: str) -> dict[str, float]:
    """torchvision ResNet-50 (random weights) at 224x224: audit / bare forward on the same transformed images."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    model = resnet50(weights=None).eval().to(device)
    x = torch.rand(images, 3, 224, 224)
    res = bench_throughput(model, x, steps, None, repeats=3)
    return {f"resnet50_{k}": v for k, v in res.items()}


def _scan_processes(n: int, args: list[str], out: str, device: str) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
    base = [sys.executable, "-m", "equiaudit", "scan", *args, "--device", device, "--out", out, "-q"]
    if n > 1:
        base[1:3] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "equiaudit"]
    subprocess.run(base, check=True, capture_output=True, text=True, env=env)
    with open(out) as f:
        doc = json.load(f)
    return doc["run"]["wall_time_s"], doc


def bench_processes(n: int, images: int, steps: int, device: str) -> dict[str, float]:
    """The same scan by 1 and by ``n`` torchrun processes: rank 0's audit wall time, and whether the results
    agree (every count exactly, the summary to 1e-6 relative)."""
    args = ["zoo:cnn", "--data", "digits", "--split", "all", "--limit", str(images), "-g", f"so2:{steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        t1, one = _scan_processes(1, args, f"{tmp}/one.json", device)
        tn, many = _scan_processes(n, args, f"{tmp}/many.json", device)
    worst = max(
        abs(v - many["summary"][k]) / max(abs(v), 1e-12) for k, v in one["summary"].items() if isinstance(v, float)
    )
    same_counts = one["summary"]["images"] == many["summary"]["images"] and one["intervals"] == many["intervals"]
    return {
        "processes": n,
        "processes_1_s": t1,
        "processes_n_s": tn,
        "processes_speedup": t1 / tn,
        "processes_summary_rel_diff": worst,
        "processes_counts_equal": bool(same_counts),
    }


FORWARD_VARIANTS = {
    "plain": {},
    "channels_last": {"channels_last": "on"},
    "compile": {"compile": True},
    "compile_channels_last": {"compile": True, "channels_last": "on"},
}
CUDA_VARIANTS = {"cuda_graphs": {"cuda_graphs": True}}


def bench_forward_options(images: int, seg_images: int, steps: int, device: str, repeats: int = 3) -> dict:
    """Audit time per variant of the forward / the plain forward's, interleaved in one run (see the docstring)."""
    from equiaudit.zoo import create

    cases = {
        "cnn": (create("cnn").eval(), load_data("digits", split="all", limit=images), {}),
        "unet": (create("unet").eval(), load_data("shapes-seg", split="test", limit=seg_images), {"task": "segment"}),
    }
    variants = {**FORWARD_VARIANTS, **(CUDA_VARIANTS if device.startswith("cuda") else {})}
    out: dict = {}
    for name, (model, data, extra) in cases.items():
        model = model.to(device)
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(repeats):
            for variant, options in variants.items():
                res = audit(model, data, "so2", steps=steps, samples=0, device=device, **extra, **options)
                best[variant] = min(best[variant], res.run.wall_time_s)
                if res.run.forward and res.run.forward["compile_s"] is not None:
                    out.setdefault(f"forward_{name}_{variant}_compile_s", res.run.forward["compile_s"])
        for variant in variants:
            out[f"forward_{name}_{variant}_images_per_s"] = len(data) / best[variant]
            out[f"forward_{name}_{variant}_speedup"] = best["plain"] / best[variant]
        auto = audit(model, data, "so2", steps=steps, samples=0, device=device, channels_last="auto", **extra)
        out[f"forward_{name}_auto_choice"] = auto.run.forward["memory_format"]
        out[f"forward_{name}_images"] = len(data)
    return out


def peak_rss_child(setup: str, scan: str, count: int) -> tuple[float, float]:
    """(peak RSS after ``setup`` and a 64-image warm-up scan, peak RSS after scanning ``count`` images), in MiB,
    measured in a fresh Python process; ``scan`` is the scan's code with ``{count}`` for the number of images."""
    code = (
        f"import resource, sys; sys.path.insert(0, 'benchmarks'); {setup}; {scan.format(count=64)};"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss);"
        f"{scan.format(count=count)};"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    base, peak = (float(v) / 1024.0 for v in out.stdout.split()[-2:])  # KiB -> MiB on Linux
    return base, peak


def _peak_rss_child(count: int) -> tuple[float, float]:
    setup = "import torch; from bench_scan import SmallCNN; from equiaudit.engine import audit; torch.manual_seed(0)"
    setup += "; m = SmallCNN()"
    return peak_rss_child(setup, "audit(m, 'noise', 'so2:8', limit={count}, samples=8, batch_size=256)", count)


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
    parser.add_argument("--seg-images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=None, help="the audit's forward batch (default: automatic)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-segmentation", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--resnet-images", type=int, default=64, help="ResNet-50 images (CUDA only)")
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--skip-forward", action="store_true", help="skip the compile / channels_last table")
    parser.add_argument("--forward-images", type=int, default=300, help="digits for the forward-options table")
    parser.add_argument("--processes", type=int, default=None, help="N for 1 vs N (default: 2 on CPU, GPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.manual_seed(0)
    model = SmallCNN().eval().to(args.device)
    data = load_data("digits", split="all", limit=args.images)
    x = data.read(0, len(data)).x
    res: dict = {"device": args.device, "torch_threads": torch.get_num_threads()}
    if not cuda:
        res.update(bench_thread_scaling(model, x))
    res.update(bench_throughput(model, x, args.steps, args.batch_size))
    res.update(bench_naive_loop(model, x, args.steps, args.batch_size))
    if cuda:
        res.update(bench_resnet50(args.resnet_images, args.steps, args.device))
    if not args.skip_segmentation:
        res.update(bench_naive_segmentation(args.steps, args.seg_images, args.batch_size, device=args.device))
    if not args.skip_precision:
        if cuda:
            from torchvision.models import resnet50

            heavy = resnet50(weights=None).eval().to(args.device)
            res.update(bench_precision(heavy, torch.rand(args.resnet_images, 3, 224, 224), args.steps))
        else:
            res.update(bench_precision(model, x, args.steps))
    if not args.skip_forward:
        res.update(bench_forward_options(args.forward_images, args.seg_images, args.steps, args.device))
    if not args.skip_processes:
        n = args.processes or (torch.cuda.device_count() if cuda else 2)
        res.update(bench_processes(n, 1000, args.steps, args.device))
    if not args.skip_memory and not cuda:
        res.update(bench_memory())
    if args.json:
        print(json.dumps(res, indent=2))
        return
    _print(res, args)


def _print(res: dict, args: argparse.Namespace) -> None:
    """The tables of the issue, in words."""
    cuda = res["device"].startswith("cuda")
    x_count = res["images"]
    if "thread_scaling" in res:
        print(f"thread scaling now: {res['thread_scaling']:.2f}x from {res['torch_threads']} threads (2 = both cores)")
    print(
        f"[{res['device']}] throughput ratio (audit / bare forward, small CNN, so2:{args.steps}, {x_count} digits, "
        f"forward batch {res['forward_batch']}): {res['throughput_ratio']:.3f}   target >= {0.6 if cuda else 0.9:.2f}"
    )
    print(f"  audit {res['audit_transformed_per_s']:.0f} transformed img/s, bare {res['bare_forward_per_s']:.0f} img/s")
    print(
        f"speed-up over the naive torchvision loop, small CNN classifier (batches of 4): "
        f"{res['speedup_vs_naive']:.1f}x   target >= 5x"
    )
    if not args.skip_segmentation:
        print(
            f"speed-up over the naive torchvision loop, U-Net segmentation ({res['segmentation_images']} images, "
            f"batches of 4): {res['segmentation_speedup_vs_naive']:.1f}x   target >= 5x"
        )
        print(
            f"  bound on this machine: {res['segmentation_speedup_bound']:.1f}x (2 forwards per image and angle at "
            f"batch 4 against 1 at batch {res['segmentation_forward_batch']})"
        )
    if "resnet50_throughput_ratio" in res:
        print(
            f"[{res['device']}] throughput ratio, torchvision ResNet-50 at 224 ({res['resnet50_images']} images): "
            f"{res['resnet50_throughput_ratio']:.3f} (audit {res['resnet50_audit_s']:.3f} s, bare "
            f"{res['resnet50_bare_forward_s']:.3f} s)   target >= 0.90"
        )
    if "precision_fp32_s" in res:
        print(f"[{res['device']}] precision ({'ResNet-50' if cuda else 'small CNN'}): images/s, speed-up, floor")
        for p in ("fp32", "tf32", "bf16"):
            print(
                f"  {p:5s} {res[f'precision_{p}_images_per_s']:9.1f} img/s  {res[f'precision_{p}_speedup']:.2f}x  "
                f"floor {res[f'precision_{p}_floor']:.3g}"
            )
    if "forward_cnn_plain_images_per_s" in res:
        print(f"[{res['device']}] the forward's options: images/s of the audit (compile time apart), speed-up")
        for name, label in (("cnn", "zoo CNN, digits"), ("unet", "zoo U-Net, 64x64 shapes")):
            print(
                f"  {label} ({res[f'forward_{name}_images']} images; channels_last auto chose "
                f"{res[f'forward_{name}_auto_choice']}):"
            )
            for variant in (*FORWARD_VARIANTS, *CUDA_VARIANTS):
                if f"forward_{name}_{variant}_images_per_s" not in res:
                    continue
                compiled = res.get(f"forward_{name}_{variant}_compile_s")
                print(
                    f"    {variant:22s} {res[f'forward_{name}_{variant}_images_per_s']:9.1f} img/s  "
                    f"{res[f'forward_{name}_{variant}_speedup']:.2f}x"
                    + (f"  (compile {compiled:.1f} s)" if compiled is not None else "")
                )
    if "processes_speedup" in res:
        print(
            f"[{res['device']}] 1 vs {res['processes']} processes (torchrun, zoo:cnn, 1000 digits): "
            f"{res['processes_1_s']:.2f} s vs {res['processes_n_s']:.2f} s, speed-up {res['processes_speedup']:.2f}x; "
            f"counts equal: {res['processes_counts_equal']}, summary max rel diff "
            f"{res['processes_summary_rel_diff']:.1e}"
        )
    if not args.skip_memory and not cuda:
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
