"""Study 2, rotated digits with a Harmonic Network: H-Net vs a CNN of equal size (``cnn-hnet``: the H-Net's
layout with plain convolutions, the same parameter count), both trained and tested on randomly rotated digits.
Published on Rot-MNIST (10,000 training images): H-Net 96.43% vs CNN 95.86%.

Besides the two models trained on all the data (seed 0: accuracy, audit), the study draws a learning curve:
the accuracy of both models, over seeds, against the number of training images (the first N of the train
split; one test split for all sizes), and the gap between them paired by seed, to show whether the gap closes
as data grows. Every size gets the same number of optimisation steps as the full set (epochs scaled by the
ratio of steps per epoch), so a small set is not under-trained against a large one: the models differ only in
the images they see, not in how long they are optimised. ``--data rot-mnist[:DIR]`` (with ``--download``
to fetch it) runs on Rot-MNIST's own 10,000 / 50,000 split instead of the offline ``rot-digits``.
"""

from __future__ import annotations

import time
from typing import Any

from equiaudit.data import load_data
from equiaudit.errors import EquiauditError
from equiaudit.intervals import wilson

from ..recipes import RECIPES, Recipe
from ..training import _steps_per_epoch
from .common import (
    QUICK_TRAIN_IMAGES,
    Request,
    StudyContext,
    StudyResult,
    Table,
    interval_text,
    published_table,
    seed_interval,
    summary_value,
)

NAME = "rot-digits-hnet"
TITLE = "Study 2 - rotated digits: H-Net vs a CNN of equal size (cnn-hnet), trained and tested on rotated digits"
MODELS = ("hnet", "cnn-hnet")
OPTIONS = ("data", "download", "seeds")
PUBLISHED = {"hnet": 0.9643, "cnn-hnet": 0.9586}  # Rot-MNIST test accuracy, 10,000 training images
PUBLISHED_TRAIN, PUBLISHED_TEST = 10_000, 50_000
DATA_SETS = ("rot-digits", "rot-mnist")  # --data: the offline default, or Rot-MNIST (rot-mnist[:DIR])
AUDIT_GROUP, AUDIT_IMAGES = "so2:36", 200
_ci = interval_text  # the interval texts of the notes and the published table
CURVE_DIVISORS, QUICK_DIVISORS = (8, 4, 2, 1), (2, 1)  # learning-curve sizes: the training set / these


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    data, n_full = _prepare_data(ctx)
    measured: dict[str, Any] = {"data": data, "train_images": n_full, "models": {}}
    for name in MODELS:
        measured["models"][name] = _measure(ctx, name, data, n_full)
    measured["curve"] = learning_curve(ctx, data, n_full, measured["models"])
    tables = [_main_table(ctx, measured), _curve_table(measured["curve"]), _published(ctx, measured)]
    return ctx.finish(TITLE, tables, _notes(measured), measured, started, comparisons=[("report", list(MODELS), [])])


def trainings(ctx: StudyContext) -> list[Request]:
    """The models the run asks for: each model on all the training images (the recipe's seed), and on every
    size of the learning curve with every seed."""
    data, n_full = _prepare_data(ctx)
    main = [(name, None, _variant(name, data, n_full, n_full)) for name in MODELS]
    sizes = curve_sizes(n_full, ctx.quick)
    return main + [(m, seed, _variant(m, data, n, n_full)) for n in sizes for m in MODELS for seed in ctx.seeds]


# -------------------------------------------------------------------------------------------------- data


def _prepare_data(ctx: StudyContext) -> tuple[str, int]:
    """The data spec the study runs on (``--data``, default ``rot-digits``) and its number of training images
    (in quick mode: the few images quick training uses). Loading the train split once here checks the spec and,
    with ``--download``, fetches missing Rot-MNIST files, so every later load finds them."""
    spec = str(ctx.option("data", DATA_SETS[0]))
    name = spec.split(":", 1)[0]
    if name not in DATA_SETS:
        raise EquiauditError(f"the {NAME} study runs on rot-digits or rot-mnist[:DIR], not {spec!r}")
    download = bool(ctx.option("download", False))
    if download and name != "rot-mnist":
        raise EquiauditError(f"--download fetches Rot-MNIST; {spec!r} is shipped (give --data rot-mnist)")
    n_full = len(load_data(spec, split="train", download=download))
    return spec, min(n_full, QUICK_TRAIN_IMAGES) if ctx.quick else n_full


def curve_sizes(n_full: int, quick: bool) -> list[int]:
    """The learning curve's training-set sizes: ``n_full`` divided by :data:`CURVE_DIVISORS` (quick mode:
    :data:`QUICK_DIVISORS`), at least 2 images each, ascending, without repeats."""
    divisors = QUICK_DIVISORS if quick else CURVE_DIVISORS
    return sorted({max(2, round(n_full / d)) for d in divisors})


def scaled_epochs(epochs: int, n_full: int, n: int, batch_size: int) -> int:
    """Epochs on ``n`` images that make about as many optimisation steps as ``epochs`` on ``n_full`` images."""
    return max(1, round(epochs * _steps_per_epoch(n_full, batch_size) / _steps_per_epoch(n, batch_size)))


def _variant(name: str, data: str, n: int, n_full: int) -> dict[str, Any]:
    """The recipe changes of model ``name`` on ``n`` of the ``n_full`` training images of ``data``."""
    changes: dict[str, Any] = {"dataset": data}
    if n < n_full:
        base = RECIPES[name]
        changes |= {"train_limit": n, "epochs": scaled_epochs(base.epochs, n_full, n, base.batch_size)}
    return changes


# ---------------------------------------------------------------------------------------------- measure


def _measure(ctx: StudyContext, name: str, data: str, n_full: int) -> dict[str, Any]:
    """Train (or load) model ``name`` on all of ``data`` with the recipe's seed, test and audit it."""
    model, recipe = ctx.model(name, **_variant(name, data, n_full, n_full))
    rotated = ctx.evaluate(model, recipe, data)
    upright = ctx.evaluate(model, recipe, "digits") if data == "rot-digits" else None
    res = ctx.audit(name, model, recipe, data, AUDIT_GROUP, AUDIT_IMAGES, quick_group="so2:4")
    low, high = wilson(float(rotated.per_image.sum()), rotated.images, 0.95)
    return {
        "recipe": recipe.name,
        "seed": recipe.seed,
        "epochs": recipe.epochs,
        "parameters": ctx.models[recipe.name]["parameters"],
        "accuracy": rotated.accuracy,
        "accuracy_interval": {"mean": rotated.accuracy, "low": float(low), "high": float(high)},
        "upright_accuracy": None if upright is None else upright.accuracy,
        "test_images": rotated.images,
        "agreement_mean": summary_value(res, "agreement_mean"),
        "agreement_min": summary_value(res, "agreement_min"),
        "invariance_error_mean": summary_value(res, "invariance_error_mean"),
        "worst_case_accuracy": summary_value(res, "worst_case_accuracy"),
        "audit_images": res.summary["images"],
        "audit_group": res.group.spec,
    }


def learning_curve(ctx: StudyContext, data: str, n_full: int, main: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per training-set size: each model's test accuracy per seed with its interval over seeds, and
    the gap hnet - cnn-hnet paired by seed. The models of ``main`` (all images, the recipe's seed) are reused."""
    curve = []
    for n in curve_sizes(n_full, ctx.quick):
        per_model: dict[str, list[float]] = {}
        for name in MODELS:
            per_model[name] = [_curve_accuracy(ctx, name, data, n, n_full, seed, main[name]) for seed in ctx.seeds]
        gaps = [h - c for h, c in zip(per_model["hnet"], per_model["cnn-hnet"], strict=True)]
        curve.append(
            {
                "train_images": n,
                "epochs": {m: _recipe(ctx, m, data, n, n_full).epochs for m in MODELS},
                "accuracy": {m: _clipped(seed_interval(v)) for m, v in per_model.items()},
                "gap": _clipped(seed_interval(gaps), floor=-1.0),
            }
        )
    return curve


def _recipe(ctx: StudyContext, name: str, data: str, n: int, n_full: int, seed: int | None = None) -> Recipe:
    return ctx.recipe(name, seed=seed, **_variant(name, data, n, n_full))


def _curve_accuracy(
    ctx: StudyContext, name: str, data: str, n: int, n_full: int, seed: int, main: dict[str, Any]
) -> float:
    """Test accuracy of model ``name`` trained on ``n`` images with ``seed`` (the main model's when it is one)."""
    if _recipe(ctx, name, data, n, n_full, seed).name == main["recipe"]:
        return main["accuracy"]
    model, recipe = ctx.model(name, seed=seed, **_variant(name, data, n, n_full))
    return ctx.evaluate(model, recipe, data).accuracy


# ----------------------------------------------------------------------------------------------- tables


def _main_table(ctx: StudyContext, measured: dict[str, Any]) -> Table:
    data, models, full = measured["data"], measured["models"], measured["curve"][-1]
    n_test, n_seeds = models["hnet"]["test_images"], len(ctx.seeds)
    table = Table(
        f"Accuracy on {n_test:,} rotated test digits ({data}, {measured['train_images']:,} training images) "
        "and invariance",
        [
            ("model", "text"),
            ("parameters", "int"),
            ("accuracy, seed 0 [95% Wilson]", "ci"),
            (f"accuracy, {n_seeds} seeds [95% t]", "ci"),
            ("published (Rot-MNIST)", "pct"),
            ("upright digits", "pct"),
            ("agreement (mean)", "pct"),
            ("agreement (worst angle)", "pct"),
            ("invariance error (mean)", "f3"),
        ],
    )
    for name in MODELS:
        m = models[name]
        table.rows.append(
            [
                name,
                m["parameters"],
                m["accuracy_interval"],
                full["accuracy"][name],
                PUBLISHED[name],
                m["upright_accuracy"],
                m["agreement_mean"],
                m["agreement_min"],
                m["invariance_error_mean"],
            ]
        )
    return table


def _curve_table(curve: list[dict[str, Any]]) -> Table:
    n_seeds = curve[0]["gap"]["n"]
    table = Table(
        f"Learning curve: test accuracy against training images (mean over {n_seeds} seeds [95% t]; "
        "equal optimisation steps at every size)",
        [
            ("training images", "int"),
            ("epochs (hnet / cnn-hnet)", "text"),
            ("hnet", "ci"),
            ("cnn-hnet", "ci"),
            ("gap hnet - cnn-hnet (points)", "cipts"),
        ],
    )
    for point in curve:
        epochs = " / ".join(str(point["epochs"][m]) for m in MODELS)
        acc = point["accuracy"]
        table.rows.append([point["train_images"], epochs, acc["hnet"], acc["cnn-hnet"], point["gap"]])
    return table


def _published(ctx: StudyContext, measured: dict[str, Any]) -> Table:
    data, n_full, full = measured["data"], measured["train_images"], measured["curve"][-1]
    n_test, n_seeds = measured["models"]["hnet"]["test_images"], full["gap"]["n"]
    where = f"{n_full:,} training / {n_test:,} test images of {data}, {n_seeds} seeds"
    epochs = measured["models"]["hnet"]["epochs"]
    if data.startswith("rot-mnist"):
        why = f"same data; our CPU-sized schedule ({epochs} epoch(s), AdamW, cosine) instead of the source's long run"
    else:
        why = (
            f"rot-digits: {n_full:,} rotated UCI digits (8x8 scans upsampled) instead of Rot-MNIST's "
            f"{PUBLISHED_TRAIN:,}, {n_test:,} test digits instead of {PUBLISHED_TEST:,}, {epochs} epoch(s)"
        )
    cnn_why = why + "; the source does not describe its CNN beyond ~34K parameters (ours: the H-Net's layout)"
    gap = PUBLISHED["hnet"] - PUBLISHED["cnn-hnet"]
    return published_table(
        [
            ("H-Net test accuracy", f"{_pct(PUBLISHED['hnet'], 2)}", f"{_ci(full['accuracy']['hnet'])} ({where})", why),
            (
                "CNN of equal size, test accuracy",
                f"{_pct(PUBLISHED['cnn-hnet'], 2)}",
                f"{_ci(full['accuracy']['cnn-hnet'])} ({where})",
                cnn_why,
            ),
            ("gap H-Net - CNN", f"{100 * gap:+.2f} points", f"{_ci(full['gap'], signed=True)} points", cnn_why),
            (
                "parameters (both ~34K)",
                "~34K each",
                " / ".join(f"{measured['models'][m]['parameters']:,}" for m in MODELS),
                "-",
            ),
        ]
    )


def _notes(measured: dict[str, Any]) -> list[str]:
    curve, models = measured["curve"], measured["models"]
    h, c = models["hnet"], models["cnn-hnet"]
    notes = [_gap_note(curve)]
    notes.append(
        f"Audit ({h['audit_group']} on {h['audit_images']} rotated test digits, seed 0, all images): the H-Net's "
        f"predictions agree with the unrotated ones on {_pct(h['agreement_mean'])} of images on average "
        f"(worst angle {_pct(h['agreement_min'])}), the CNN's on {_pct(c['agreement_mean'])} "
        f"(worst angle {_pct(c['agreement_min'])})."
    )
    notes.append(
        "cnn-hnet is the H-Net's layout with plain 5x5 convolutions (3 blocks of two, 2x2 mean pooling, a final "
        f"convolution averaged over space) at the H-Net's parameter count ({c['parameters']:,} vs "
        f"{h['parameters']:,}); both train with the same recipe budget ({h['epochs']} epoch(s) on all images)."
    )
    return notes


def _gap_note(curve: list[dict[str, Any]]) -> str:
    """Whether the gap closes: the change of the per-seed gap from the smallest to the largest size."""
    first, last = curve[0], curve[-1]
    change = seed_interval([a - b for a, b in zip(first["gap"]["values"], last["gap"]["values"], strict=True)])
    if change["n"] < 2:
        verdict = "one seed cannot tell whether it changes"
    elif change["low"] > 0:
        verdict = "it narrows as data grows (interval of the change above 0)"
    elif change["high"] < 0:
        verdict = "it widens as data grows (interval of the change below 0)"
    else:
        verdict = "the change is within the seeds' spread (interval of the change contains 0)"
    at_full = "above 0" if last["gap"]["low"] > 0 else ("below 0" if last["gap"]["high"] < 0 else "not apart from 0")
    return (
        f"Gap H-Net - CNN (paired by seed): {_ci(first['gap'], signed=True)} points at {first['train_images']:,} "
        f"training images, {_ci(last['gap'], signed=True)} at {last['train_images']:,}; narrowing by "
        f"{_ci(change, signed=True)} points: {verdict}. With all images the gap is {at_full} "
        f"(published at 10,000 Rot-MNIST images: {100 * (PUBLISHED['hnet'] - PUBLISHED['cnn-hnet']):+.2f})."
    )


def _clipped(interval: dict[str, Any], floor: float = 0.0) -> dict[str, Any]:
    """A seed interval of an accuracy (or with ``floor`` -1 of a difference of two), its ends clipped to
    [floor, 1]: the t interval of few seeds can reach past them."""
    return interval | {"low": max(floor, interval["low"]), "high": min(1.0, interval["high"])}


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"
