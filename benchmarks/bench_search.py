"""Spatial robustness the way Engstrom et al. (ICML 2019, "Exploring the Landscape of Spatial Robustness",
Table 1) measure it, for the zoo CNN on the shipped digits under ``rot:-30..30:31*translate:-3..3:7``
(rotations within 30 degrees, shifts within 3 px): natural accuracy, random (the mean accuracy over random
elements), worst-of-10, the exhaustive grid and refine, with the forwards each costs per image and its time
relative to the grid audit. One audit measures everything (``search="random:10,refine"``): the grid is its
pass, and the searches record their own time and extra forwards. Prints ratios measured in one run; never
asserts on wall-clock time.

Usage: python benchmarks/bench_search.py [--images N] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from equiaudit.data import load_data
from equiaudit.engine import audit

GROUP = "rot:-30..30:31*translate:-3..3:7"
MODEL = "zoo:cnn"


def measure(images: int, k: int, budget: int) -> dict:
    data = load_data("digits", split="test", limit=images)
    t0 = time.perf_counter()
    res = audit(MODEL, data, GROUP, search=f"random:{k},refine", search_budget=budget, samples=0, device="cpu")
    wall = time.perf_counter() - t0
    methods = {m["method"]: m for m in res.search["methods"]}
    searched = sum(m["seconds"] for name, m in methods.items() if name != "grid")
    grid_s = wall - searched  # the audit's own pass (transforms, forwards, every observer) without the searches
    elements = len(res.elements)
    rows = [
        {"method": "natural", "accuracy": res.summary["accuracy_reference"], "forwards": 1, "time": None},
        {
            "method": "random",
            "accuracy": methods[f"random:{k}"]["accuracy_mean"],
            "forwards": k,
            "time": methods[f"random:{k}"]["seconds"] / grid_s,
        },
        {
            "method": f"worst-of-{k}",
            "accuracy": methods[f"random:{k}"]["worst_case_accuracy"],
            "forwards": k,
            "time": methods[f"random:{k}"]["seconds"] / grid_s,
        },
        {"method": "grid", "accuracy": res.summary["worst_case_accuracy"], "forwards": elements, "time": 1.0},
        {
            "method": "refine",
            "accuracy": methods["refine"]["worst_case_accuracy"],
            "forwards": elements + methods["refine"]["extra_forwards_per_image"],
            "time": (grid_s + methods["refine"]["seconds"]) / grid_s,
        },
    ]
    for row, name in zip(rows, ("natural", f"random:{k}", f"random:{k}", "grid", "refine"), strict=True):
        m = methods.get(name, {})
        row["extra_forwards"] = 0 if name in ("natural", "grid") else m.get("extra_forwards_per_image")
        if name != "natural" and row["method"] != "random":
            row["low"], row["high"] = m.get("worst_case_accuracy_low"), m.get("worst_case_accuracy_high")
    return {
        "model": MODEL,
        "data": f"digits test, {len(data)} images",
        "group": GROUP,
        "elements": elements,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "grid_audit_s": grid_s,
        "refine_rounds": res.search["rounds"],
        "rows": rows,
    }


def print_table(out: dict) -> None:
    print(f"{out['model']} on {out['data']} under {out['group']} ({out['elements']} elements), CPU")
    print("\nEngstrom et al. layout (accuracy):")
    head = " | ".join(r["method"] for r in out["rows"])
    print(f"| model | {head} |")
    print("|" + " --- |" * (len(out["rows"]) + 1))
    print(f"| {out['model']} | " + " | ".join(f"{100 * r['accuracy']:.1f}%" for r in out["rows"]) + " |")
    print("\nPer method:")
    print("| method | accuracy | 95% interval | elements / image | extra forwards / image | time / grid audit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in out["rows"]:
        ci = f"[{100 * r['low']:.1f}%, {100 * r['high']:.1f}%]" if r.get("low") is not None else "-"
        print(
            f"| {r['method']} | {100 * r['accuracy']:.1f}% | {ci} | {r['forwards']:.0f} | {r['extra_forwards']:.0f} "
            f"| {'-' if r['time'] is None else format(r['time'], '.4f')} |"
        )
    print(
        f"\ngrid audit {out['grid_audit_s']:.1f} s ({out['threads']} threads); refine: {out['refine_rounds']} rounds. "
        "Extra forwards include one per image for the worst element's floor; random's time is its own (it "
        "needs no grid), refine's includes the grid it starts from."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="digits audited (default 100)")
    parser.add_argument("--quick", action="store_true", help="8 images: a smoke run of a minute")
    parser.add_argument("--k", type=int, default=10, help="random draws per image (worst-of-K)")
    parser.add_argument("--budget", type=int, default=24, help="refine's extra forwards per image")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    out = measure(8 if args.quick else args.images, args.k, args.budget)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)


if __name__ == "__main__":
    main()
