"""Study 3, the butterfly study: U-Net vs C4 group U-Net, each with a minimal and a full augmentation set.

Four models (``unet-gn`` / ``group-unet-gn-c4`` x ``minimal`` / ``full``, see :mod:`..recipes`), trained over
the context's seeds on generated textured shapes (offline) or on the Leeds butterflies (``--data
butterflies:PATH``, 20% held out). The study's protocol over 0-360 degrees: every test image, padded on a black
canvas 1.5 times its side (so rotations keep its corners), is rotated, segmented, the logits rotated back and
centre-cropped to the image, and the prediction compared with the truth (foreground IoU). That is one
:func:`equiaudit.engine.audit` per model and seed (:func:`protocol_options`: inputs unmasked, maps compared on
the centre crop), whose per-image records give the IoU of every image at every angle; the first seed's audit
is the HTML report's. The C4 model is exact at quarter turns; between them resampling limits every model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn

from equiaudit.errors import EquiauditError
from equiaudit.groups import parse_group
from equiaudit.intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_mean
from equiaudit.result import AuditResult

from ..recipes import Recipe, image_side, recipe_data
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

NAME = "segmentation"
TITLE = "Study 3 - butterflies: U-Net vs group U-Net (C4), minimal vs full augmentation, IoU over 0-360 degrees"
MODELS = ("unet-gn@minimal", "unet-gn@full", "group-unet-gn-c4@minimal", "group-unet-gn-c4@full")
LABELS = {
    "unet-gn@minimal": "Plain U-Net, minimal",
    "unet-gn@full": "Plain U-Net, full",
    "group-unet-gn-c4@minimal": "Group U-Net, minimal",
    "group-unet-gn-c4@full": "Group U-Net, full",
}
OPTIONS = ("data", "seeds")
ANGLES, QUICK_ANGLES = "so2:36", "so2:8"  # the protocol's rotations
AUDITS_PER_MODEL = QUICK_SEEDS  # in quick mode: the protocol is one audit per model and seed
BUTTERFLY_SIZE, BUTTERFLY_HOLDOUT = 128, 0.2  # Leeds butterflies resized to 128 px (256 in the study), 20% held out
QUICK_BUTTERFLY_SIZE = 32
CONFIDENCE = 0.95
# (train IoU, train loss, validation IoU, validation loss) at the last of 150 epochs, the study's table
PUBLISHED = {
    "unet-gn@minimal": (0.9404, 0.007263, 0.8678, 0.05585),
    "unet-gn@full": (0.8543, 0.0247, 0.8522, 0.05425),
    "group-unet-gn-c4@minimal": (0.9076, 0.007864, 0.8563, 0.05154),
    "group-unet-gn-c4@full": (0.7927, 0.01696, 0.8332, 0.06099),
}


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    changes = _data_changes(ctx.option("data"), ctx.quick)
    measured = {name: _measure(ctx, name, changes) for name in MODELS}
    tables = [_final_epoch_table(measured), _angle_summary_table(measured), _angle_table(measured)]
    tables.append(_published(measured, changes))
    keys = [measured[n]["audit_key"] for n in MODELS]
    return ctx.finish(TITLE, tables, _notes(ctx, measured, changes), measured, started, [("report", keys, [])])


def trainings(ctx: StudyContext) -> list[Request]:
    """The models the run asks for: the four models, every seed."""
    changes = _data_changes(ctx.option("data"), ctx.quick)
    return [(name, seed, changes) for name in MODELS for seed in ctx.seeds]


def _data_changes(spec: str | None, quick: bool) -> dict[str, Any]:
    """Recipe changes for ``--data``: none for the generated shapes, else the Leeds butterflies at
    :data:`BUTTERFLY_SIZE` px (quick mode: :data:`QUICK_BUTTERFLY_SIZE`) with :data:`BUTTERFLY_HOLDOUT` of the
    images held out."""
    if spec is None or spec == "shapes-seg":
        return {}
    if spec.split(":", 1)[0] != "butterflies":
        raise EquiauditError(f"the segmentation study runs on shapes-seg or butterflies[:PATH], not {spec!r}")
    size = QUICK_BUTTERFLY_SIZE if quick else BUTTERFLY_SIZE
    return {"dataset": spec, "input_size": size, "holdout": BUTTERFLY_HOLDOUT}


# ---------------------------------------------------------------------------------------------- measuring


def _measure(ctx: StudyContext, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Train (or load) ``name`` for every seed and audit it under the protocol (one audit per seed, all test
    images); its final-epoch metrics and its IoU against the truth over the angles."""
    group = QUICK_ANGLES if ctx.quick else ANGLES
    runs, keys, results = [], [], []
    for seed in ctx.seeds:
        model, recipe = ctx.model(name, seed=seed, **changes)
        _, test = recipe_data(recipe, ctx.limit)
        data = recipe.dataset if recipe.holdout is None else test  # a held-out split exists only in memory
        side = int(image_side(recipe) or 0)
        options = {**protocol_options(side), **({"split": recipe.test_split} if isinstance(data, str) else {})}
        if seed != ctx.seeds[0]:
            options["samples"] = 1  # the per-image records with a one-image gallery: the report shows the first seed's
        res = ctx.audit(recipe.name, model, recipe, data, group, len(test), QUICK_ANGLES, **options)
        keys.append(recipe.name)
        results.append(res)
        runs.append({"training": _training(ctx, recipe), "ious": protocol_ious(res), "parameters": _count(model)})
    provenance = ctx.models[keys[0]]
    return {
        **_summarise(runs, group),
        "audit_key": keys[0],  # the first seed's audit is the report's
        "epochs": provenance["epochs"],
        "train_images": provenance["train_images"],
        **_audit_numbers(results[0]),
    }


def protocol_options(side: int) -> dict[str, Any]:
    """The study's protocol as audit options: the inputs as they are (the canvas's black border is the study's
    padding; the group acts in image space, black brought in) and every map compared on the centre ``side`` x
    ``side`` pixels, the image inside its canvas (the logits are rotated back by the audit, bilinear)."""
    return {"input_mask": "none", "mask": f"centre:{side}"}


def protocol_ious(result: AuditResult) -> np.ndarray:
    """``(images, angles)`` foreground IoU against the truth, from the audit's per-image records."""
    records = result.records or {}
    if "iou_truth" not in records:
        raise EquiauditError("the audit recorded no per-image IoU against the truth (masks and samples > 0)")
    return np.asarray(records["iou_truth"], dtype=np.float64)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _training(ctx: StudyContext, recipe: Recipe) -> dict[str, float]:
    """The last epoch's training / validation IoU and loss, from the model's card."""
    t = ctx.cards[recipe.name]["training"]
    missing = [src for src in _HISTORY.values() if not t.get(src)]
    if missing:
        raise EquiauditError(f"the card of {recipe.name} records no per-epoch {', '.join(missing)}; retrain it")
    return {k: t[src][-1] for k, src in _HISTORY.items()}


_HISTORY = {"train_iou": "scores", "train_loss": "losses", "val_iou": "val_scores", "val_loss": "val_losses"}


def _summarise(runs: list[dict[str, Any]], group: str) -> dict[str, Any]:
    """Seed intervals of the final-epoch metrics and of the IoU over angles; the first seed's bootstrap
    intervals over its test images (mean IoU, and spread of the mean IoU curve)."""
    angles = [e.angle % 360 for e in parse_group(group).elements]
    curves = [r["ious"].mean(0) for r in runs]
    quarter = [i for i, a in enumerate(angles) if abs(a / 90 - round(a / 90)) < 1e-9]
    between = [i for i in range(len(angles)) if i not in quarter]
    first = runs[0]["ious"]
    low, high = bootstrap_mean(first.mean(1, keepdims=True), CONFIDENCE)
    out: dict[str, Any] = {
        "parameters": runs[0]["parameters"],
        "seeds": len(runs),
        "test_images": int(first.shape[0]),
        "angles": angles,
        **{k: seed_interval([r["training"][k] for r in runs]) for k in _HISTORY},
        "iou_mean": seed_interval([c.mean() for c in curves]),
        "iou_min": seed_interval([c.min() for c in curves]),
        "iou_spread": seed_interval([c.max() - c.min() for c in curves]),
        "iou_quarter_turns": seed_interval([c[quarter].mean() for c in curves]),
        "iou_between": seed_interval([c[between].mean() for c in curves]) if between else None,
        "iou_by_angle": [float(v) for v in np.mean(curves, axis=0)],
        "first_seed_images": {
            "iou_mean": {"mean": float(first.mean()), "low": float(low[0]), "high": float(high[0])},
            "iou_spread": _bootstrap_spread(first),
        },
    }
    return out


def _bootstrap_spread(ious: np.ndarray) -> dict[str, float]:
    """The spread (max - min over the angles) of the mean IoU curve of ``ious`` ``(images, angles)``, with its
    percentile bootstrap interval over the images (the resamples and seed of :mod:`equiaudit.intervals`)."""
    curve = ious.mean(0)
    n = ious.shape[0]
    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, n, (BOOTSTRAP_RESAMPLES, n))
    curves = ious[picks].mean(1)  # (resamples, angles)
    spreads = curves.max(1) - curves.min(1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(spreads, [alpha, 1 - alpha])
    return {"mean": float(curve.max() - curve.min()), "low": float(low), "high": float(high)}


def _audit_numbers(res: Any) -> dict[str, float | None]:
    return {
        "iou_consistency_mean": summary_value(res, "iou_consistency_mean"),
        "equivariance_error_mean": summary_value(res, "equivariance_error_mean"),
        "audit_images": res.summary["images"],
        "audit_group": res.group.spec,
    }


# ------------------------------------------------------------------------------------------------- tables


def _label(name: str) -> str:
    return LABELS[name]


def _final_epoch_table(measured: dict[str, dict[str, Any]]) -> Table:
    """The study's 'final epoch performance' table, each number a mean over seeds with its interval."""
    m = measured[MODELS[0]]
    table = Table(
        f"Final epoch performance (mean over {m['seeds']} seeds [95% interval]; validation: the test images, "
        f"each turned by a random number of quarter turns, as the study)",
        [
            ("model", "text"),
            ("parameters", "int"),
            ("train IoU", "ci"),
            ("train loss", "ci3"),
            ("validation IoU", "ci"),
            ("validation loss", "ci3"),
        ],
    )
    for name in MODELS:
        r = measured[name]
        table.rows.append([_label(name), r["parameters"], r["train_iou"], r["train_loss"], r["val_iou"], r["val_loss"]])
    return table


def _angle_summary_table(measured: dict[str, dict[str, Any]]) -> Table:
    """IoU against the truth over the protocol's angles: over seeds, and over the first seed's test images."""
    m = measured[MODELS[0]]
    table = Table(
        f"IoU against the truth over {len(m['angles'])} angles in 0-360 degrees ({m['test_images']} test images "
        f"padded 1.5x, prediction rotated back, centre-cropped): mean over seeds [95% interval]; 'images': the "
        f"first seed's bootstrap interval over its test images",
        [
            ("model", "text"),
            ("IoU: mean", "ci"),
            ("lowest angle", "ci"),
            ("spread (max - min)", "ci3"),
            ("quarter turns", "ci"),
            ("between", "ci"),
            ("images: mean", "ci"),
            ("images: spread", "ci3"),
            ("consistency (audit)", "f3"),
            ("equivariance error (audit)", "f3"),
        ],
    )
    for name in MODELS:
        r, img = measured[name], measured[name]["first_seed_images"]
        table.rows.append(
            [
                _label(name),
                r["iou_mean"],
                r["iou_min"],
                r["iou_spread"],
                r["iou_quarter_turns"],
                r["iou_between"],
                img["iou_mean"],
                img["iou_spread"],
                r["iou_consistency_mean"],
                r["equivariance_error_mean"],
            ]
        )
    return table


def _angle_table(measured: dict[str, dict[str, Any]]) -> Table:
    """Mean IoU against the truth (over seeds and images) at every 30 degrees of the protocol (or every angle
    when there are fewer)."""
    angles = measured[MODELS[0]]["angles"]
    every = range(len(angles))
    if len(angles) > 12:
        every = [i for i, a in enumerate(angles) if abs(a / 30 - round(a / 30)) < 1e-9]
    table = Table("IoU against the truth by angle (mean over seeds)", [("angle", "int")])
    table.columns += [(_label(n), "f3") for n in MODELS]
    for i in sorted(every, key=lambda j: angles[j]):
        table.rows.append([angles[i], *[measured[n]["iou_by_angle"][i] for n in MODELS]])
    return table


def _published(measured: dict[str, dict[str, Any]], changes: dict[str, Any]) -> Table:
    """The study's claims beside ours."""
    setting = (
        f"Leeds butterflies at {changes['input_size']} px (study: 256), {BUTTERFLY_HOLDOUT:.0%} held out"
        if changes
        else "generated textured shapes (64 px, exact masks, 512 train / 128 test) instead of 832 butterfly photos"
    )
    epochs = f"{measured[MODELS[0]].get('epochs', '?')} epochs instead of 150"
    rows = []
    for name in MODELS:
        tr_iou, tr_loss, va_iou, va_loss = PUBLISHED[name]
        r = measured[name]
        ours = (
            f"{r['train_iou']['mean']:.4f} / {r['train_loss']['mean']:.4g} / {r['val_iou']['mean']:.4f} / "
            f"{r['val_loss']['mean']:.4g}"
        )
        rows.append(
            (
                f"{_label(name)}: final train IoU / loss / validation IoU / loss",
                f"{tr_iou} / {tr_loss} / {va_iou} / {va_loss}",
                ours,
                f"{setting}; {epochs}; one run published, mean of {r['seeds']} seeds here",
            )
        )
    spreads = ", ".join(f"{_label(n)} {measured[n]['iou_spread']['mean']:.3f}" for n in MODELS)
    rows.append(
        (
            "IoU over 0-360 degrees: the group U-Net's curve is flatter; the others vary by up to 0.04",
            "flatter for the group U-Net; up to 0.04 for the others",
            f"spread (max - min of the mean curve): {spreads}",
            "one butterfly image published; the mean over the test images here (a mean curve is flatter than "
            "one image's), so spreads are smaller; the C4 model is exact at quarter turns only",
        )
    )
    best = max(MODELS, key=lambda n: measured[n]["val_iou"]["mean"])
    gap = max(measured[n]["val_iou"]["mean"] for n in MODELS) - min(measured[n]["val_iou"]["mean"] for n in MODELS)
    rows.append(
        (
            "best validation IoU; gap between best and worst model",
            "Plain U-Net, minimal; about 0.03",
            f"{_label(best)}; {gap:.3f}",
            setting,
        )
    )
    return published_table(rows)


def _notes(ctx: StudyContext, measured: dict[str, dict[str, Any]], changes: dict[str, Any]) -> list[str]:
    """How the models were trained and what the protocol does."""
    first = measured[MODELS[0]]
    data = changes.get("dataset", "shapes-seg")
    notes = []
    silent = [n for n in MODELS if 0 in measured[n]["val_iou"]["values"]]
    if silent:
        counts = [
            f"{_label(n)} ({measured[n]['val_iou']['values'].count(0)} of {measured[n]['seeds']})" for n in silent
        ]
        notes.append(
            f"Predicted no foreground on the validation images at the last epoch (seeds): {', '.join(counts)}; "
            "the study saw its group U-Nets predict nothing for several epochs too."
        )
    notes += [
        f"Data: {data}; {first['train_images']} training images, {first['epochs']} epochs, seeds "
        f"{', '.join(str(s) for s in ctx.seeds)}; AdamW lr 1e-3, weight decay 1e-2, batch 16, binary "
        f"cross-entropy, as the study. Images are padded on a black canvas 1.5x their side and normalised with "
        f"the ImageNet statistics (the minimal set); the full set adds colour jitter, brightness / contrast and "
        f"rotations of up to 90 degrees (each with probability 1/2), the masks rotated alike.",
        "Train IoU / loss: the mean over the last epoch's (augmented) training batches; validation: the test "
        "images, each turned by a random number of quarter turns (fixed per image), measured after each epoch.",
        "Protocol: each test image is rotated about its centre by every angle (black fill: the padding keeps the "
        "corners), segmented, its logits rotated back and centre-cropped to the image, and compared with the "
        "truth. The engine's audits (consistency with the unrotated prediction, equivariance error) cover the "
        "first seed's models on the padded images without an input mask; their HTML comparison is report.html.",
    ]
    return notes
