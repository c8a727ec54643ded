"""Study 4, scale: a plain CNN, a deformable CNN, Deep Scale-Spaces (DSS), the document's DSS v2 and deformable
DSS, and an SO(2) group CNN, all trained on rescaled digits; the document's feature-map equivariance error and
the logits' invariance error as functions of the scale factor (:mod:`.scale_metric`), over seeds.

Published shape (graphs, no numbers): the error grows with the scale change, the SO(2) group CNN has the lowest
error, deformable convolution beats plain convolution in accuracy and equivariance, DSS v2 underperforms DSS.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
from torch import nn

from equiaudit.errors import EquiauditError
from equiaudit.groups import parse_group
from equiaudit.intervals import bootstrap_mean

from ..recipes import Recipe
from .common import (
    QUICK_SEEDS,
    Request,
    StudyContext,
    StudyResult,
    Table,
    by_scale,
    published_table,
    seed_interval,
    summary_value,
)
from .scale_metric import ScaleErrorObserver, ScaleErrors, embedding_layer

NAME = "scale"
TITLE = (
    "Study 4 - scale: CNN, deformable CNN, DSS, DSS v2, deformable DSS and SO(2) group CNN; feature-map "
    "equivariance error against the scale factor"
)
MODELS = (
    "cnn@scale-digits",
    "deform-cnn",
    "dss",
    "dss-v2@scale-digits",
    "deform-dss@scale-digits",
    "so2-cnn@scale-digits",
)
LABELS = {
    "cnn@scale-digits": "cnn",
    "deform-cnn": "deform-cnn",
    "dss": "dss",
    "dss-v2@scale-digits": "dss-v2",
    "deform-dss@scale-digits": "deform-dss",
    "so2-cnn@scale-digits": "so2-cnn",
}
OPTIONS = ("data", "seeds")
AUDITS_PER_MODEL = 1 + QUICK_SEEDS  # in quick mode: each seed's audit of the embedding, the first's per-layer audit
DATA = "scale-digits"
AUDIT_GROUP, QUICK_GROUP, AUDIT_IMAGES = "scale:0.5..2:9", "scale:0.5,1,2", 200
GATE = 0.02  # every model's accuracy within 2 points of the CNN's
CONFIDENCE = 0.95


def _slope(errors: dict[float, float | None]) -> float | None:
    """Least-squares slope of the error against |log2 scale| (identity excluded): how fast the error grows."""
    pts = [(abs(math.log2(s)), e) for s, e in errors.items() if e is not None and s != 1.0]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var > 0 else None


def feature_error_by_scale(result: Any) -> dict[float, float | None]:
    """``{scale factor: error}`` of the per-layer audit: per element, the mean over the audited layers of each
    layer's mean error ``||ρ(g)^-1 Φ(g x) - Φ(x)|| / ||Φ(x)||`` (equiaudit.layers)."""
    rows = (result.layers or {}).get("layers") or []
    out: dict[float, float | None] = {}
    for j, s in enumerate(result.elements["scale"]):
        values = [r["error"][j] for r in rows if r["error"][j] is not None]
        out[float(s)] = sum(values) / len(values) if values else None
    return out


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` without the warning on all-NaN slices (they stay NaN: nothing could be compared)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _value(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _moved_mean(values: np.ndarray, scales: list[float]) -> np.ndarray:
    """Per image, the mean over the elements that move the image (identity left out) of ``(N, G)`` values."""
    moved = [j for j, s in enumerate(scales) if abs(s - 1.0) > 1e-9]
    return _nanmean(values[:, moved], axis=1)


def _interval(values: np.ndarray) -> dict[str, float] | None:
    """Mean of the per-image values (NaN ones left out) and its percentile bootstrap interval over the images."""
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = bootstrap_mean(values[:, None], CONFIDENCE)
    return {"mean": float(values.mean()), "low": float(low[0]), "high": float(high[0]), "n": int(values.size)}


def _over_seeds(values: list[float]) -> dict[str, Any] | None:
    """:func:`seed_interval` of the finite values, None when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return seed_interval(finite) if finite else None


def _data(ctx: StudyContext) -> str:
    """The data set the study trains and measures on: ``--data`` (e.g. ``mnist-scale:PATH``, the document's
    MNIST-scale) or the offline :data:`DATA`; one-channel labelled images, else a one-line error."""
    from equiaudit.data import load_data

    spec = str(ctx.option("data", DATA))
    if spec != DATA:
        probe = load_data(spec, split="test", limit=1)
        if probe.input_shape[0] != 1 or not probe.has_labels:
            raise EquiauditError(
                f"the scale study needs labelled one-channel digit images; {spec!r} has {probe.input_shape[0]} "
                f"channel(s){'' if probe.has_labels else ' and no labels'}"
            )
    return spec


def _document_errors(ctx: StudyContext, name: str, seed: int, model: nn.Module, recipe: Recipe) -> ScaleErrors:
    """The document's errors of every test image and element: one engine audit (the whole image zoomed, the
    embedding's maps recorded in the same forwards as the logits) with :class:`ScaleErrorObserver` attached,
    saved as ``LABEL-embedding@seedS``."""
    observer = ScaleErrorObserver(embedding_layer(model))
    key = f"{LABELS[name]}-embedding@seed{seed}"
    options = {"samples": 0, **observer.audit_options()}
    ctx.audit(key, model, recipe, recipe.dataset, AUDIT_GROUP, AUDIT_IMAGES, QUICK_GROUP, **options)
    return observer.compute()


def _seed_run(ctx: StudyContext, name: str, seed: int, data: str) -> dict[str, Any]:
    """Train (or load) ``name`` with ``seed`` on ``data``; its accuracy and per-image document / logit errors."""
    model, recipe = ctx.model(name, seed=seed, **_changes(data))
    test = ctx.evaluate(model, recipe, recipe.dataset)
    errors = _document_errors(ctx, name, seed, model, recipe)
    return {
        "model": model,
        "recipe": recipe,
        "accuracy": test.accuracy,
        "test_images": test.images,
        "features": errors.features,
        "pooled": errors.pooled,
        "logits": errors.logits,
        "provenance": ctx.models[recipe.name],
    }


def _measure(ctx: StudyContext, name: str, data: str) -> dict[str, Any]:
    """Every seed of ``name``; the per-layer audit of the first seed's model; the numbers of the tables."""
    scales = [float(g.scale) for g in parse_group(QUICK_GROUP if ctx.quick else AUDIT_GROUP).elements]
    runs = [_seed_run(ctx, name, seed, data) for seed in ctx.seeds]
    first = runs[0]
    res = ctx.audit(
        LABELS[name],
        first["model"],
        first["recipe"],
        data,
        AUDIT_GROUP,
        AUDIT_IMAGES,
        QUICK_GROUP,
        layers=_layers(first),
        layer_action="spatial",  # a zoom moves every map's positions and nothing else, e2cnn fields included
    )
    return {"data": data, **_seed_numbers(runs, scales), **_audit_numbers(res)}


def _seed_numbers(runs: list[dict[str, Any]], scales: list[float]) -> dict[str, Any]:
    """Accuracy and the document / logit errors over the seeds' runs; intervals over images for the first."""
    first = runs[0]
    keys = ("features", "pooled", "logits")
    per_seed = {key: [float(_nanmean(_moved_mean(r[key], scales))) for r in runs] for key in keys}
    by_scale_mean = {
        key: {s: _value(_nanmean(np.array([_nanmean(r[key][:, j]) for r in runs]))) for j, s in enumerate(scales)}
        for key in keys
    }
    return {
        "parameters": first["provenance"]["parameters"],
        "epochs": first["provenance"]["epochs"],
        "train_seconds": [r["provenance"]["train_seconds"] for r in runs],
        "device": first["provenance"]["device"],
        "seeds": [r["provenance"]["seed"] for r in runs],
        "accuracy": seed_interval([r["accuracy"] for r in runs]),
        "test_images": first["test_images"],
        "document_error": _over_seeds(per_seed["features"]),
        "pooled_error": _over_seeds(per_seed["pooled"]),
        "logit_error": _over_seeds(per_seed["logits"]),
        "document_error_images": _interval(_moved_mean(first["features"], scales)),
        "logit_error_images": _interval(_moved_mean(first["logits"], scales)),
        "document_error_by_scale": by_scale_mean["features"],
        "pooled_error_by_scale": by_scale_mean["pooled"],
        "logit_error_by_scale": by_scale_mean["logits"],
        "document_error_slope": _slope(by_scale_mean["features"]),
        "images": int(first["features"].shape[0]),
    }


def _audit_numbers(res: Any) -> dict[str, Any]:
    """What the first seed's per-layer audit adds."""
    layers = feature_error_by_scale(res)
    return {
        "layer_error_mean": _moved(layers),
        "layer_error_by_scale": layers,
        "layers": [r["name"] for r in res.layers["layers"]],
        "invariance_error_by_scale": by_scale(res, "invariance_error"),
        "agreement_mean": summary_value(res, "agreement_mean"),
        "accuracy_over_scales": summary_value(res, "accuracy_mean"),
        "audit_images": res.summary["images"],
        "audit_group": res.group.spec,
    }


def _layers(run: dict[str, Any]) -> str:
    """The per-layer audit's selection: the convolutions, or the layers a model names (DSS v2's pyramid blocks
    output lists of maps, which cannot be hooked)."""
    return getattr(run["model"], "audit_layers", "auto")


def _moved(errors: dict[float, float | None]) -> float | None:
    values = [e for s, e in errors.items() if s != 1.0 and e is not None]
    return sum(values) / len(values) if values else None


def _gate(measured: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Mark each model whose mean accuracy over seeds is within :data:`GATE` of the CNN's."""
    reference = measured[names[0]]["accuracy"]["mean"]
    for n in names:
        gap = measured[n]["accuracy"]["mean"] - reference
        measured[n]["accuracy_gap"] = gap
        measured[n]["within_gate"] = gap >= -GATE - 1e-12


def _summary_table(measured: dict[str, dict[str, Any]], names: list[str], ctx: StudyContext) -> Table:
    first = measured[names[0]]
    seeds = len(ctx.seeds)
    table = Table(
        f"Accuracy on {first['test_images']} test images of {first['data']} and the errors under "
        f"{first['audit_group']} ({first['images']} images), mean over {seeds} seeds [95% t-interval]",
        [
            ("model", "text"),
            ("parameters", "int"),
            ("epochs", "int"),
            ("accuracy", "ci"),
            ("vs cnn", "pts"),
            (f"within {100 * GATE:g} pts", "text"),
            ("feature-map error (document)", "ci3"),
            ("channels pooled", "ci3"),
            ("logit error", "ci3"),
            ("per-layer error (audit)", "f3"),
            ("error growth per octave", "f3"),
        ],
    )
    for n in names:
        m = measured[n]
        table.rows.append(
            [
                n,
                m["parameters"],
                m["epochs"],
                m["accuracy"],
                m["accuracy_gap"],
                "yes" if m["within_gate"] else "no",
                m["document_error"],
                m["pooled_error"],
                m["logit_error"],
                m["layer_error_mean"],
                m["document_error_slope"],
            ]
        )
    return table


def _by_scale_table(measured: dict[str, dict[str, Any]], names: list[str]) -> Table:
    table = Table(
        "Feature-map equivariance error as the document defines it (last feature map, per channel, normalised by "
        "the moved input's map) and the logits' invariance error, by scale factor (mean over seeds)",
        [("scale", "f3")] + [(f"{n} {part}", "f3") for n in names for part in ("maps", "logits")],
    )
    for s in sorted(measured[names[0]]["document_error_by_scale"]):
        table.rows.append(
            [s, *(measured[n][key][s] for n in names for key in ("document_error_by_scale", "logit_error_by_scale"))]
        )
    return table


def _curve_table(title: str, measured: dict[str, dict[str, Any]], names: list[str], key: str) -> Table:
    """One row per scale factor, one column per model: ``measured[model][key][scale]``."""
    table = Table(title, [("scale", "f3")] + [(n, "f3") for n in names])
    for s in sorted(measured[names[0]][key]):
        table.rows.append([s, *(measured[n][key].get(s) for n in names)])
    return table


def _image_table(measured: dict[str, dict[str, Any]], names: list[str]) -> Table:
    table = Table(
        "First seed's model: mean errors over the moved elements with 95% bootstrap intervals over the images",
        [("model", "text"), ("images", "int"), ("feature-map error (document)", "ci3"), ("logit error", "ci3")],
    )
    for n in names:
        m = measured[n]
        table.rows.append([n, m["images"], m["document_error_images"], m["logit_error_images"]])
    return table


def _mean(measured: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    value = measured[name][key]
    return None if value is None else value["mean"]


def _ranked(measured: dict[str, dict[str, Any]], names: list[str], key: str) -> list[str]:
    """``names`` with a ``key`` interval, lowest mean first."""
    return sorted((n for n in names if _mean(measured, n, key) is not None), key=lambda n: _mean(measured, n, key))


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _published(measured: dict[str, dict[str, Any]], names: list[str]) -> Table:
    """The document's claims (its graphs give no numbers) against ours."""
    rising = [n for n in names if (measured[n]["document_error_slope"] or 0.0) > 0]
    ranked = _ranked(measured, names, "document_error")
    doc = {n: _mean(measured, n, "document_error") for n in names}
    acc = {n: 100 * measured[n]["accuracy"]["mean"] for n in names}
    small, large = _split_scales(measured[names[0]]["document_error_by_scale"])
    curve = {n: measured[n]["document_error_by_scale"] for n in ("dss", "deform-dss")}
    gap = {
        part: _difference(curve["deform-dss"].get(s), curve["dss"].get(s))
        for part, s in (("small", small), ("large", large))
    }
    lowest = f"{ranked[0]} ({_num(doc[ranked[0]])})" if ranked else "-"
    rank = f"rank {ranked.index('so2-cnn') + 1} of {len(ranked)}" if "so2-cnn" in ranked else "not measured"
    why = f"{_setting(measured[names[0]]['data'])}; small models; zoom-ins crop the digits; DSS: 3 levels, base 2"
    return published_table(
        [
            (
                "error grows with the scale change",
                "rising curves for every model (graphs)",
                f"slope > 0 for {len(rising)} of {len(names)}: {', '.join(rising) or 'none'}",
                why,
            ),
            (
                "SO(2) group CNN has the lowest equivariance error",
                "lowest curve (graph)",
                f"lowest: {lowest}; so2-cnn {_num(doc['so2-cnn'])} ({rank})",
                "rotation equivariance does not act on scale; " + why,
            ),
            (
                "the SO(2) group CNN costs too much computation to be practical",
                "stated, no numbers",
                f"training seconds per epoch: so2-cnn {_epoch_seconds(measured['so2-cnn']):.1f}, cnn "
                f"{_epoch_seconds(measured['cnn']):.1f} (on {measured['cnn']['device']})",
                "our so2-cnn is small (C8 regular fields, ~80k parameters) on 28 px digits",
            ),
            (
                "deformable convolution beats plain convolution in accuracy and equivariance",
                "higher accuracy, lower error than the CNN (graphs)",
                f"accuracy {acc['deform-cnn']:.1f}% vs {acc['cnn']:.1f}%; error {_num(doc['deform-cnn'])} vs "
                f"{_num(doc['cnn'])}",
                why,
            ),
            (
                "DSS v2 underperforms DSS v1",
                "lower accuracy (graph)",
                f"accuracy {acc['dss-v2']:.1f}% vs {acc['dss']:.1f}%; error {_num(doc['dss-v2'])} vs "
                f"{_num(doc['dss'])}",
                why,
            ),
            (
                "deformable DSS helps for small scale changes, hurts for large ones",
                "graph, no numbers",
                f"deform-dss minus dss error: {_num(gap['small'], '+.3f')} at scale {small:.3f}, "
                f"{_num(gap['large'], '+.3f')} at {large:.3f}",
                why,
            ),
        ]
    )


def _epoch_seconds(m: dict[str, Any]) -> float:
    """Mean training seconds per epoch over the seeds."""
    return float(np.mean(m["train_seconds"])) / m["epochs"]


def _setting(data: str) -> str:
    if data == DATA:
        return "UCI digits rescaled by random factors in [0.3, 1] (as MNIST-scale) instead of MNIST-scale"
    return f"trained and measured on {data}"


def _split_scales(errors: dict[float, float]) -> tuple[float, float]:
    """The smallest and the largest zoom-out (scale < 1) of the curve: a small and a large scale change."""
    outs = sorted((s for s in errors if s < 1.0), reverse=True)
    return (outs[0], outs[-1]) if outs else (1.0, 1.0)


def _tables(measured: dict[str, dict[str, Any]], names: list[str], ctx: StudyContext) -> list[Table]:
    return [
        _summary_table(measured, names, ctx),
        _by_scale_table(measured, names),
        _curve_table(
            "The document's feature-map error with the channels pooled (one norm ratio over all channels, which "
            "near-silent channels cannot dominate), by scale factor (mean over seeds)",
            measured,
            names,
            "pooled_error_by_scale",
        ),
        _curve_table(
            "Per-layer audit (first seed): mean over each model's audited layers of ||ρ(g)^-1 Φ(g x) - Φ(x)|| / "
            "||Φ(x)|| (maps rescaled back at their own resolution, compared region only), by scale factor",
            measured,
            names,
            "layer_error_by_scale",
        ),
        _image_table(measured, names),
        _published(measured, names),
    ]


def _notes(measured: dict[str, dict[str, Any]], names: list[str], data: str) -> list[str]:
    failed = [n for n in names if not measured[n]["within_gate"]]
    epochs = ", ".join(f"{n} {measured[n]['epochs']}" for n in names)
    ranked = ", ".join(
        f"{n} {_mean(measured, n, 'document_error'):.3f}" for n in _ranked(measured, names, "document_error")
    )
    return [
        f"Accuracy gate (every model within {100 * GATE:g} points of the CNN's mean accuracy): "
        + ("met by every model." if not failed else f"NOT met by {', '.join(failed)}."),
        f"Document's feature-map error, lowest first: {ranked}.",
        "Feature-map error as the document defines it: on the last feature map (before the scale / global pooling), "
        "per channel ||L_s Φ(f) - Φ(L_s f)|| / ||Φ(L_s f)||, L_s the same zoom at the map's resolution with zeros "
        "brought in, the whole map; scale-space maps (DSS, DSS v2, deformable DSS) also shift their levels by "
        "round(-log2 s), the levels without a partner left out. Measured in each seed's audit of its embedding "
        "(LABEL-embedding@seedS: the whole image zoomed, no input mask) by an observer of the engine's one pass, "
        "from the maps recorded in the same forwards as the logits; a metric of its own because the document's "
        "normalisation (per channel, by the moved map) differs from the per-layer audit's (all channels, by the "
        "reference map, undone zoom, compared region only), which is reported beside it. The code's numerator is a "
        "matrix 2-norm (largest singular value); ours is the Euclidean norm of the map; dead channels are left out.",
        "Per-layer audit (first seed): every convolution and block (layers=auto; DSS v2: its level-pooled map, as "
        "its pyramid blocks output lists of maps), spatial action (a zoom moves positions only, e2cnn fields "
        "included; scale-space levels are folded into the channels and not shifted there).",
        "so2-cnn: e2cnn regular fields of C8 (the 8 rotations approximating SO(2), as e2cnn's own example); the "
        "irreducible-field SO(2) variant (group='so2') did not learn with these settings.",
        f"Differs from the published setting: {_setting(data)}; {measured[names[0]]['test_images']} test images; "
        f"scale factors {measured[names[0]]['audit_group']} (the document zooms out by 1/1.1 .. 1/3 only); "
        f"epochs: {epochs}.",
    ]


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    data = _data(ctx)
    measured = {LABELS[name]: _measure(ctx, name, data) for name in MODELS}
    names = [LABELS[n] for n in MODELS]
    _gate(measured, names)
    notes = _notes(measured, names, data)
    return ctx.finish(
        TITLE, _tables(measured, names, ctx), notes, measured, started, comparisons=[("report", names, [])]
    )


def trainings(ctx: StudyContext) -> list[Request]:
    """The models the run asks for: every model, every seed, on the study's data."""
    data = _data(ctx)
    return [(name, seed, _changes(data)) for name in MODELS for seed in ctx.seeds]


def _changes(data: str) -> dict[str, Any]:
    """The recipe changes of every model on ``data``: none on the offline :data:`DATA`."""
    return {} if data == DATA else {"dataset": data}
