"""Study 5, petals: an e2cnn wide ResNet with D8-D4-D1 stages against torchvision's wide ResNet-50-2.

The document trains e2cnn's ``wrn16_8_stl_d8d4d1`` from scratch on 96 px flowers and fine-tunes the head of an
ImageNet ``wide_resnet50_2`` at 224 px (104 classes), then compares parameters (18%), accuracy (about 4 points
lower) and the correctness matrix (83.94% both right), with example images per quadrant; it leaves open which
model resists rotations better. Offline, both architectures are trained from scratch at a quarter of every
width (the parameter ratio stays 18%) on the generated ``blossoms``; ``--data flowers:PATH`` runs the same on
the flowers, and ``--weights PATH`` (torchvision weights of wide_resnet50_2) switches to the published pair:
full widths, the baseline's head fine-tuned on its frozen pretrained backbone. Every model is trained with each
seed; numbers over seeds carry a 95% Student-t interval, accuracies of one model a Wilson interval over images.
The rotations part audits both models under ``so2:36`` and ``d8`` (quick mode: ``so2:4`` and the mirror).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from equiaudit.data import load_data
from equiaudit.errors import EquiauditError
from equiaudit.intervals import wilson

from ..training import evaluate
from .common import (
    QUICK_SEEDS,
    Request,
    StudyContext,
    StudyResult,
    Table,
    published_table,
    seed_interval,
    summary_value,
)

NAME = "steerable-vs-baseline"
TITLE = (
    "Study 5 - petals: e2cnn wide ResNet (D8-D4-D1) vs torchvision wide ResNet-50-2: parameters, accuracy, "
    "the correctness matrix and rotations"
)
STEERABLE, BASELINE = "wrn16-8-d8d4d1@blossoms", "wide-resnet50-2@blossoms"
MODELS = (STEERABLE, BASELINE)
LABELS = {STEERABLE: "e2cnn WRN16 D8-D4-D1", BASELINE: "wide ResNet-50-2"}
SHORT = {STEERABLE: "e2cnn", BASELINE: "wrn50"}  # audit file names
OPTIONS = ("data", "weights", "seeds")
GROUPS = {"so2": ("so2:36", "so2:4"), "d8": ("d8", "flip")}  # audit key -> (group, group in quick mode)
AUDIT_IMAGES = 1200  # of the evaluation split (all of the blossoms test split)
AUDITS_PER_MODEL = len(GROUPS) * QUICK_SEEDS  # in quick mode: every group for every seed
CELLS = {"both_right": "both right", "only_a": "only {a} right", "only_b": "only {b} right", "both_wrong": "both wrong"}
EXAMPLES = 4  # example images per quadrant in the report
SAMPLES = 2  # gallery images (first and worst) kept by each audit of the first seed; none for the other seeds
PUBLISHED_WIDTH = {"widen_factor": 8}  # e2cnn's wrn16_8 (with --weights: the published pair)
DATA_NAMES = ("blossoms", "flowers")
AUDIT_METRICS = ("agreement_mean", "invariance_error_mean", "accuracy_mean", "worst_case_accuracy")
MIRROR = "hflip"  # the left-right mirror: the one element the D8-D4-D1 model is invariant to by construction


@dataclass
class Setting:
    """What the run uses: data, its evaluation split, classes, the pretrained weights and each model's
    recipe changes."""

    data: str
    split: str
    num_classes: int
    weights: str | None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


def setting(ctx: StudyContext) -> Setting:
    """The data and model changes the user's options ask for; bad options are one-line errors."""
    from ..recipes import RECIPES

    data = str(ctx.option("data", "blossoms"))
    if data.partition(":")[0] not in DATA_NAMES:
        raise EquiauditError(f"the petals study runs on blossoms or flowers[:DIR], got --data {data!r}")
    split = "test" if data == "blossoms" else "val"  # the Kaggle flowers' test images have no labels
    classes = load_data(data, split="train", limit=1).num_classes
    if not classes:
        raise EquiauditError(f"{data}: the train split has no class folders, so there is nothing to learn")
    load_data(data, split=split, limit=1)  # the evaluation split must be there
    weights = ctx.option("weights")
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise EquiauditError(f"--weights: no such file {path}")
        weights = str(path)
    out = Setting(data, split, int(classes), weights)
    for name in MODELS:
        kwargs = {**RECIPES[name].create_kwargs, "num_classes": out.num_classes}
        if weights is not None:  # the published pair: full widths, the baseline's head on pretrained weights
            kwargs = {"num_classes": out.num_classes}
            kwargs |= PUBLISHED_WIDTH if name == STEERABLE else _pretrained(weights)
        out.changes[name] = {"dataset": data, "test_split": split, "create_kwargs": kwargs}
    return out


def _pretrained(weights: str) -> dict[str, Any]:
    return {"weights_path": weights, "imagenet_normalise": True, "train_head_only": True}


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    s = setting(ctx)
    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in MODELS}
    first: dict[str, tuple[torch.nn.Module, Any]] = {}
    for seed in ctx.seeds:
        for name in (BASELINE, STEERABLE):  # the baseline first: a bad --weights file fails at once
            model, recipe, numbers = _measure(ctx, s, name, seed)
            per_seed[name].append(numbers)
            if seed == ctx.seeds[0]:
                first[name] = (model, recipe)
    measured = summarise(per_seed, ctx.quick)
    matrix = _example_matrix(ctx, s, per_seed, first)
    tables = [
        _models_table(measured),
        _matrix_table(measured),
        _rotations_table(measured),
        _published(measured, s),
    ]
    first_keys = [f"{SHORT[n]}-{g}-seed{ctx.seeds[0]}" for n in (BASELINE, STEERABLE) for g in GROUPS]
    comparisons = [
        ("report", [k for k in first_keys if "-so2-" in k], [matrix] if matrix is not None else []),
        ("report-d8", [k for k in first_keys if "-d8-" in k], []),
    ]
    measured["setting"] = {"data": s.data, "split": s.split, "num_classes": s.num_classes, "weights": s.weights}
    return ctx.finish(TITLE, tables, _notes(measured, s), measured, started, comparisons=comparisons)


def trainings(ctx: StudyContext) -> list[Request]:
    """The models the run asks for: the pair, every seed."""
    s = setting(ctx)
    return [(name, seed, s.changes[name]) for seed in ctx.seeds for name in (BASELINE, STEERABLE)]


def _measure(ctx: StudyContext, s: Setting, name: str, seed: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Train (or load) model ``name`` with ``seed``, test it on the evaluation split and audit it under
    every group of :data:`GROUPS`."""
    model, recipe = ctx.model(name, seed=seed, **s.changes[name])
    ev = evaluate(model, s.data, split=s.split, limit=ctx.limit, device=ctx.device, **recipe.data_options)
    audits = {}
    for key, (group, quick_group) in GROUPS.items():
        samples = SAMPLES if seed == ctx.seeds[0] else 0  # the report shows the first seed's audits
        key_seed = f"{SHORT[name]}-{key}-seed{seed}"
        res = ctx.audit(
            key_seed, model, recipe, s.data, group, AUDIT_IMAGES, quick_group, split=s.split, samples=samples
        )
        audits[key] = {
            "group": res.group.spec,
            "images": res.summary["images"],
            **{k: summary_value(res, k) for k in AUDIT_METRICS},
            "mirror_error": element_value(res, MIRROR, "invariance_error"),
        }
    info = ctx.models[recipe.name]
    return (
        model,
        recipe,
        {
            "recipe": recipe.name,
            "seed": seed,
            "parameters": info["parameters"],
            "input_size": recipe.input_size,
            "train_images": info["train_images"],
            "epochs": info["epochs"],
            "train_seconds": info["train_seconds"],
            "accuracy": ev.accuracy,
            "images": ev.images,
            "correct": ev.per_image.astype(bool),
            "audits": audits,
        },
    )


def element_value(result: Any, label: str, column: str) -> float | None:
    """The ``column`` of the element ``label`` of an audit, None when its group has no such element."""
    frame = result.elements
    rows = [i for i, v in enumerate(frame["label"]) if v == label]
    return float(list(frame[column])[rows[0]]) if rows else None


def correctness_cells(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
    """Counts of the four cells of the correctness matrix of models A and B (per-image correctness)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return {
        "both_right": int((a & b).sum()),
        "only_a": int((a & ~b).sum()),
        "only_b": int((~a & b).sum()),
        "both_wrong": int((~a & ~b).sum()),
    }


def summarise(per_seed: dict[str, list[dict[str, Any]]], quick: bool) -> dict[str, Any]:
    """Intervals over seeds of every measured number; the correctness matrix of each seed's pair (A: the
    baseline, B: the steerable model)."""
    out: dict[str, Any] = {"quick": quick}
    for name, runs in per_seed.items():
        first = runs[0]
        k, n = int(first["correct"].sum()), first["images"]
        low, high = wilson(k, n, 0.95)
        out[name] = {
            "parameters": first["parameters"],
            "input_size": first["input_size"],
            "images": n,
            "accuracy": seed_interval([r["accuracy"] for r in runs]),
            "accuracy_first_seed": {"mean": k / n, "low": float(low), "high": float(high), "n": n},
            "train_seconds": [r["train_seconds"] for r in runs],
            "train_images": first["train_images"],
            "epochs": first["epochs"],
            "recipes": [r["recipe"] for r in runs],
            "audits": {
                g: {
                    "group": first["audits"][g]["group"],
                    "images": first["audits"][g]["images"],
                    **{m: _interval([r["audits"][g][m] for r in runs]) for m in (*AUDIT_METRICS, "mirror_error")},
                }
                for g in GROUPS
            },
        }
    pairs = list(zip(per_seed[BASELINE], per_seed[STEERABLE], strict=True))
    cells = [correctness_cells(b["correct"], s["correct"]) for b, s in pairs]
    out["correctness"] = {
        "counts": cells,
        "fractions": {c: seed_interval([m[c] / sum(m.values()) for m in cells]) for c in CELLS},
    }
    out["parameter_ratio"] = out[STEERABLE]["parameters"] / out[BASELINE]["parameters"]
    out["accuracy_difference"] = seed_interval([s["accuracy"] - b["accuracy"] for b, s in pairs])
    return out


def _interval(values: list[float | None]) -> dict[str, Any] | None:
    kept = [v for v in values if v is not None]
    return seed_interval(kept) if kept else None


def _example_matrix(
    ctx: StudyContext, s: Setting, per_seed: dict[str, list[dict[str, Any]]], first: dict[str, tuple[Any, Any]]
) -> Any:
    """The correctness matrix of the first seed's pair with up to :data:`EXAMPLES` images per quadrant (at the
    data's own size), their classes and what each model predicted; None without :mod:`equiaudit.reports`."""
    try:
        from equiaudit.reports.correctness import CorrectnessMatrix
    except ImportError:
        return None
    names = (LABELS[BASELINE], LABELS[STEERABLE])
    matrix = CorrectnessMatrix.from_predictions(
        per_seed[BASELINE][0]["correct"],
        per_seed[STEERABLE][0]["correct"],
        names=names,
        element=f"{s.split} images, seed {ctx.seeds[0]}",
        examples=EXAMPLES,
    )
    baseline_recipe = first[BASELINE][1]
    shown = load_data(s.data, split=s.split, limit=ctx.limit, **baseline_recipe.data_options)  # one size
    matrix.class_names = shown.class_names
    for cell, rows in matrix.examples.items():
        if not rows:
            continue
        items = [shown.dataset[i] for i in rows]
        matrix.example_images[cell] = torch.stack([x for x, _, _ in items]).numpy()
        matrix.example_labels[cell] = [int(y) for _, y, _ in items]
        said = [_predict(model, recipe, s, rows, ctx) for model, recipe in (first[BASELINE], first[STEERABLE])]
        matrix.example_predictions[cell] = list(zip(*said, strict=True))
    return matrix


def _predict(model: torch.nn.Module, recipe: Any, s: Setting, rows: list[int], ctx: StudyContext) -> list[int]:
    """The classes ``model`` predicts for images ``rows`` of the evaluation split, as it saw them when tested."""
    data = load_data(s.data, split=s.split, limit=ctx.limit, **recipe.data_options)
    x = torch.stack([data.dataset[i][0] for i in rows]).to(ctx.device)
    with torch.inference_mode():
        return model.eval()(x).argmax(-1).tolist()


# ------------------------------------------------------------------------------------------------- tables


def _models_table(measured: dict[str, Any]) -> Table:
    """Parameters, inputs, training and accuracy of both models (the first column lists :data:`MODELS`)."""
    n = measured[BASELINE]["images"]
    table = Table(
        f"Parameters and accuracy on {n} evaluation images",
        [
            ("model", "text"),
            ("input", "text"),
            ("parameters", "int"),
            ("parameters vs baseline", "pct"),
            ("training (seconds per seed)", "text"),
            ("accuracy over seeds", "ci"),
            ("accuracy, first seed [Wilson]", "ci"),
        ],
    )
    for name in MODELS:
        m = measured[name]
        size = m["input_size"]
        seconds = "/".join(f"{t:.0f}" for t in m["train_seconds"])
        table.rows.append(
            [
                LABELS[name],
                f"{size}x{size}",
                m["parameters"],
                m["parameters"] / measured[BASELINE]["parameters"],
                f"{m['train_images']} images x {m['epochs']} epochs, {seconds} s",
                m["accuracy"],
                m["accuracy_first_seed"],
            ]
        )
    return table


def _matrix_table(measured: dict[str, Any]) -> Table:
    """The correctness matrix: counts of the first seed's pair, shares over seeds."""
    a, b = LABELS[BASELINE], LABELS[STEERABLE]
    counts = measured["correctness"]["counts"][0]
    total = sum(counts.values())
    table = Table(
        f"Correctness matrix ({a} vs {b}, {total} evaluation images)",
        [("quadrant", "text"), ("images, first seed", "int"), ("share, first seed", "pct"), ("share over seeds", "ci")],
    )
    for cell, text in CELLS.items():
        share = measured["correctness"]["fractions"][cell]
        table.rows.append([text.format(a=a, b=b), counts[cell], counts[cell] / total, share])
    return table


def _rotations_table(measured: dict[str, Any]) -> Table:
    """The document's future work: which model resists rotations better (audits over seeds)."""
    groups = " and ".join(measured[STEERABLE]["audits"][g]["group"] for g in GROUPS)
    table = Table(
        f"Rotations (the document's future work): audits under {groups}, over seeds",
        [
            ("model", "text"),
            ("group", "text"),
            ("images", "int"),
            ("agreement", "ci"),
            ("invariance error", "ci3"),
            ("accuracy over the group", "ci"),
            ("worst-case accuracy", "ci"),
            (f"invariance error at {MIRROR}, worst seed", "sci"),
        ],
    )
    for name in MODELS:
        for g in GROUPS:
            a = measured[name]["audits"][g]
            mirror = a["mirror_error"]
            worst = None if mirror is None else max(mirror["values"])
            table.rows.append([LABELS[name], a["group"], a["images"], *(a[k] for k in AUDIT_METRICS), worst])
    return table


def _published(measured: dict[str, Any], s: Setting) -> Table:
    """Each published claim beside ours."""
    steer, base = measured[STEERABLE], measured[BASELINE]
    diff, both = measured["accuracy_difference"], measured["correctness"]["fractions"]["both_right"]
    widths = (
        "the published widths" if s.weights else "both at a quarter of every width (e2cnn widen 2, ResNet 16 planes)"
    )
    data = f"{s.data} ({s.num_classes} classes, {s.split} split)"
    training = (
        "baseline: head fine-tuned on the given pretrained backbone"
        if s.weights
        else "both from scratch (no ImageNet weights offline)"
    )
    return published_table(
        [
            (
                "parameters, e2cnn / baseline",
                "18% (12.0M / 67.0M)",
                f"{100 * measured['parameter_ratio']:.1f}% ({steer['parameters'] / 1e6:.2f}M / "
                f"{base['parameters'] / 1e6:.2f}M)",
                f"{widths}; the ratio of the architectures is kept",
            ),
            (
                "accuracy, e2cnn - baseline",
                "about -4 points",
                f"{100 * diff['mean']:+.1f} points [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}] "
                f"over {diff['n']} seed{'s' if diff['n'] > 1 else ''}",
                f"{data}; {training}; e2cnn at 97 px, baseline at 224 px",
            ),
            (
                "both right (correctness matrix)",
                "83.94% of the validation images",
                f"{100 * both['mean']:.2f}% [{100 * both['low']:.2f}, {100 * both['high']:.2f}]",
                f"{data}; {training}",
            ),
        ]
    )


def _notes(measured: dict[str, Any], s: Setting) -> list[str]:
    """Which model resists rotations better, and how the setting differs from the document's."""
    wc = {n: measured[n]["audits"]["so2"].get("worst_case_accuracy") for n in MODELS}
    group = measured[STEERABLE]["audits"]["so2"]["group"]
    notes = []
    if all(v is not None for v in wc.values()):
        better = max(MODELS, key=lambda n: wc[n]["mean"])
        other = STEERABLE if better == BASELINE else BASELINE
        apart = wc[better]["low"] > wc[other]["high"]
        notes.append(
            f"Rotations: under {group}, {LABELS[better]} keeps the class on every turn for "
            f"{100 * wc[better]['mean']:.1f}% of the images, {LABELS[other]} for {100 * wc[other]['mean']:.1f}% "
            f"({'intervals apart' if apart else 'intervals overlap: no clear winner'})."
        )
    notes.append(
        "The e2cnn model is exactly invariant only to the left-right mirror at 97 px (its last stage is "
        "restricted to D1); rotations, including quarter turns, are learned from the randomly oriented data by "
        "both models."
    )
    if s.data == "blossoms":
        notes.append(
            "Offline: generated blossoms (24 classes of petal count, shape and colour, random orientation) instead "
            "of the 104 flower classes; both models trained from scratch, so the baseline has no ImageNet "
            "pretraining. Run with --data flowers:PATH --weights WIDE_RESNET50_2.pt for the published setting."
        )
    return notes
