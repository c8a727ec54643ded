"""Worst case per image, found instead of sampled, and the consistency of predictions across elements.

``--search`` names the methods, comma-separated (``grid`` is always measured, it is the audit's own pass):

* ``grid``: the group's elements (the pass itself; no extra forward). An image counts as a worst-case success
  when it is right under every element.
* ``random:K``: K elements per image drawn uniformly from the group's **parameter box** (angle, log-scale and
  shift ranges spanned by its elements, reflections as listed), Engstrom et al.'s worst-of-K. Draws come from
  ``numpy.random.default_rng((seed, image index))``, so they do not depend on the batch size or on which other
  images are audited. ``random`` (mean) is the accuracy over the draws, ``worst-of-K`` the images right under
  all K.
* ``refine``: from each image's worst grid element, a few rounds of local grid between its grid neighbours:
  each round tries one step down and up along every varying parameter (starting at half the distance to the
  neighbours, halving each round) and moves to the best; ``search_budget`` extra forwards per image bound the
  rounds (``budget // (2 * parameters)``). Every image is refined, batched across the images of a chunk.

The objective, per image, is the **margin** (true-class logit minus the largest other, negative = wrong) with
labels, else minus the invariance error (the relative change of the centred logits). For every method the
result holds worst-case accuracy (with its Wilson interval), worst-case error (the mean over images of each
image's largest invariance error over the elements the method evaluated), the per-image worst element, the
extra forwards and the time spent. Per image and method, the JSON keeps the worst element (``angle``, ``scale``,
``reflect``, ``dx``, ``dy``), its ``objective``, the invariance error under it (``chosen_error``), the largest
error over the evaluated elements (``error``) and the worst element's ``floor``: random and refine spend one
more forward per image on the round trip ``T_g^-1 T_g x`` of the worst element, so checks can judge it like any
sampled element (the grid's floors are the audit's own). Searches run on classifiers.

``consistency`` (every classifier audit): the fraction of pairs of distinct elements ``(g, h)`` of the group
under which an image's predicted classes agree, averaged over the images, with a bootstrap interval. This is
Zhang's shift consistency (two random shifts of one image, same class?) computed over all pairs instead of
sampled ones, which is its expectation: ``sum_c n_c (n_c - 1) / (G (G - 1))`` with ``n_c`` the elements
predicting class ``c``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import OptionError
from .groups import Group, GroupElement
from .metrics import logit_error
from .observers import ObservedBatch, Observer, Setup
from .transforms import apply_per_row

SEARCH_SEED = 0
SEARCH_FORMS = "grid, random:K, refine, or a comma-separated list such as random:10,refine"
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SearchPlan:
    """Which searches run besides the grid: ``random`` K draws per image (0: none) and ``refine``."""

    random: int = 0
    refine: bool = False

    @property
    def methods(self) -> tuple[str, ...]:
        return ("grid",) + ((f"random:{self.random}",) if self.random else ()) + (("refine",) if self.refine else ())

    @property
    def extra(self) -> bool:
        return bool(self.random or self.refine)


def parse_search(text: Any) -> SearchPlan:
    """``grid`` | ``random:K`` | ``refine`` | comma-separated; a one-line error otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise OptionError(f"search must be a string such as 'refine'; valid: {SEARCH_FORMS}")
    random, refine = 0, False
    for part in (p.strip().lower() for p in text.split(",")):
        name, sep, count = part.partition(":")
        if name == "grid" and not sep:
            continue
        if name == "refine" and not sep:
            refine = True
        elif name == "random" and count.isdigit() and int(count) >= 1:
            random = int(count)
        else:
            raise OptionError(f"unknown search {part!r}; valid: {SEARCH_FORMS}")
    return SearchPlan(random, refine)


# ---- the parameter box -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One continuous parameter of the group: ``angle`` (degrees), ``log_scale``, ``dx`` or ``dy`` (pixels)."""

    name: str
    values: tuple[float, ...]  # the grid's values, sorted
    lo: float
    hi: float
    circular: bool = False  # angles covering the circle evenly: neighbours wrap, draws span 360 degrees


def _value(g: GroupElement, name: str) -> float:
    return {"angle": g.angle, "log_scale": math.log(g.scale), "dx": g.shift[0], "dy": g.shift[1]}[name]


def _angle_axis(angles: list[float]) -> Axis:
    """The arc the angles span: the circle minus the largest gap between neighbours (all of it when they are
    evenly spaced around it, as in so2 or c4)."""
    turns = sorted({a % 360.0 for a in angles})
    gaps = [(turns[(i + 1) % len(turns)] - t) % 360.0 or 360.0 for i, t in enumerate(turns)]
    if len(turns) > 2 and max(gaps) - min(gaps) < 1e-6:
        return Axis("angle", tuple(turns), 0.0, 360.0, circular=True)
    start = turns[(int(np.argmax(gaps)) + 1) % len(turns)]
    start = start - 360.0 if start > 180.0 else start  # rot:-30..30 spans [-30, 30], not [330, 390]
    unrolled = sorted(((t - start) % 360.0) + start for t in turns)
    return Axis("angle", tuple(unrolled), unrolled[0], unrolled[-1])


def parameter_box(group: Group) -> list[Axis]:
    """The group's varying continuous parameters, each with its grid values and range."""
    axes = []
    angles = [g.angle for g in group]
    if len(set(angles)) > 1:
        axes.append(_angle_axis(angles))
    for name in ("log_scale", "dx", "dy"):
        values = sorted({round(_value(g, name), 9) for g in group})
        if len(values) > 1:
            axes.append(Axis(name, tuple(values), values[0], values[-1]))
    return axes


def _element(axes: Sequence[Axis], point: np.ndarray, reflect: bool) -> GroupElement:
    p = {a.name: float(v) for a, v in zip(axes, point, strict=True)}
    return GroupElement(
        p.get("angle", 0.0), math.exp(p.get("log_scale", 0.0)), reflect, (p.get("dx", 0.0), p.get("dy", 0.0))
    )


def _point(axes: Sequence[Axis], g: GroupElement) -> np.ndarray:
    point = []
    for a in axes:
        v = _value(g, a.name)
        if a.name == "angle":  # onto the circle [0, 360) or the arc the axis unrolls
            v = v % 360.0 if a.circular else ((v - a.lo) % 360.0) + a.lo
        point.append(v)
    return np.array(point, dtype=np.float64)


def random_elements(
    axes: Sequence[Axis], reflects: Sequence[bool], index: int, k: int, seed: int = SEARCH_SEED
) -> list[GroupElement]:
    """K elements drawn uniformly from the box for the image at ``index`` (reproducible per image)."""
    rng = np.random.default_rng((seed, index))
    lo = np.array([a.lo for a in axes])
    hi = np.array([a.hi for a in axes])
    points = lo + (hi - lo) * rng.random((k, len(axes)))
    flips = rng.integers(0, len(reflects), k)
    return [_element(axes, p, reflects[int(f)]) for p, f in zip(points, flips, strict=True)]


def _neighbour_steps(axes: Sequence[Axis], point: np.ndarray) -> np.ndarray:
    """``(D, 2)`` half the distance from ``point`` to its grid neighbours below and above on each axis (0 at an
    edge of the box)."""
    steps = np.zeros((len(axes), 2))
    for d, a in enumerate(axes):
        v = np.asarray(a.values)
        i = int(np.argmin(np.abs(v - point[d])))
        if a.circular:
            below, above = (v[i] - v[i - 1]) % 360.0, (v[(i + 1) % len(v)] - v[i]) % 360.0
        else:
            below = v[i] - v[i - 1] if i > 0 else 0.0
            above = v[i + 1] - v[i] if i + 1 < len(v) else 0.0
        steps[d] = (below / 2, above / 2)
    return steps


# ---- per-image scores --------------------------------------------------------------------------------------


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(..., B)`` true-class logit minus the largest other (one logit ``z``: the binary classifier
    ``[0, z]``); negative when the prediction is wrong (ties count as wrong)."""
    if logits.shape[-1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], -1)
    lab = labels.expand(logits.shape[:-1])
    true = logits.gather(-1, lab[..., None])[..., 0]
    others = logits.scatter(-1, lab[..., None], float("-inf"))
    return (true - others.amax(-1)).double()


def objective(logits: torch.Tensor, error: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """What a search minimises per image: the margin with labels, else minus the invariance ``error`` (the
    caller's :func:`~equiaudit.metrics.logit_error` of the same logits, in float64)."""
    return margin(logits, labels) if labels is not None else -error


def pair_agreement(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` the fraction of ordered pairs of distinct elements whose predictions agree, from ``(G, B)``."""
    g = pred.shape[0]
    if g < 2:
        return torch.ones(pred.shape[1], dtype=torch.float64, device=pred.device)
    counts = torch.zeros((pred.shape[1], num_classes), dtype=torch.float64, device=pred.device)
    counts.scatter_add_(1, pred.T.long(), torch.ones_like(pred.T, dtype=torch.float64))
    return (counts * (counts - 1)).sum(-1) / (g * (g - 1))


class ConsistencyObserver(Observer):
    """Per image, the fraction of pairs of distinct elements with the same predicted class (see the module)."""

    name = "consistency"

    def setup(self, setup: Setup) -> None:
        self.num_classes = max(2, setup.num_classes)
        self.add_state("per_image", [], "cat")

    def update(self, batch: ObservedBatch) -> None:
        if batch.scores["pred"].shape[0] > 1:  # one element has no pairs
            self.per_image.append(pair_agreement(batch.scores["pred"], self.num_classes))  # on the device

    def compute(self) -> np.ndarray:
        """``(N,)`` per-image consistency."""
        return torch.cat(self.per_image).cpu().numpy() if self.per_image else np.zeros(0)


# ---- the search observer -----------------------------------------------------------------------------------


@dataclass
class Found:
    """One method's outcome on one chunk: per image, the worst element, its objective, whether every evaluated
    element was right, the largest error, and the method's extra forwards and time."""

    elements: list[GroupElement]
    objective: torch.Tensor
    all_correct: torch.Tensor | None
    error: torch.Tensor
    forwards: int
    seconds: float
    mean_correct: torch.Tensor | None = None  # random: the fraction of draws right, per image
    chosen_error: torch.Tensor | None = None  # the invariance error under the worst element itself


class SearchObserver(Observer):
    """Runs ``random:K`` and ``refine`` on each chunk the engine measured (the grid's worst element per image
    comes from the chunk's outputs) and keeps, per method, the per-image outcome."""

    name = "search"

    def __init__(self, plan: SearchPlan, forward: Forward, budget: int, seed: int = SEARCH_SEED) -> None:
        super().__init__()
        self.plan, self.forward, self.budget, self.seed = plan, forward, budget, seed

    def setup(self, setup: Setup) -> None:
        group = Group("grid", tuple(setup.elements))
        self.elements = setup.elements
        self.axes = parameter_box(group)
        self.reflects = sorted({g.reflect for g in group})
        self.interpolation, self.padding = setup.interpolation, setup.padding
        d = max(1, len(self.axes))
        self.rounds = max(1, self.budget // (2 * d)) if self.axes else 0
        self.add_state("index", [], "cat")
        for m in self.plan.methods:  # per image a row of COLUMNS; per method the extra forwards and seconds
            self.add_state(_key(m, "found"), [], "cat")
            self.add_state(_key(m, "forwards"), torch.zeros((), dtype=torch.float64, device=setup.device), "sum")
            self.add_state(_key(m, "seconds"), torch.zeros((), dtype=torch.float64, device=setup.device), "sum")

    def describe(self) -> dict[str, Any]:
        """What a merge checks the shards agree on: the methods, the parameter box, the seed and rounds."""
        box = {a.name: [a.lo, a.hi] for a in self.axes}
        return {"methods": list(self.plan.methods), "box": box, "reflects": self.reflects, "seed": self.seed,
                "budget": self.budget, "rounds": self.rounds}  # fmt: skip

    def update(self, batch: ObservedBatch) -> None:
        labels = batch.labels
        t0 = time.perf_counter()
        err = batch.scores["invariance_error"].double()
        obj = objective(batch.outputs, err, labels)  # (G, B)
        worst = obj.argmin(0)
        correct = None if labels is None else batch.scores["correct"].all(0) & batch.scores["ref_correct"]
        grid = Found([self.elements[int(i)] for i in worst], obj.min(0).values, correct, err.amax(0), 0, 0.0)
        grid.chosen_error = err.gather(0, worst[None])[0]
        grid.seconds = time.perf_counter() - t0
        found = {"grid": grid}
        if self.plan.random:
            found[f"random:{self.plan.random}"] = self._random(batch)
        if self.plan.refine:
            found["refine"] = self._refine(batch, grid)
        self.index.append(torch.arange(batch.offset, batch.offset + batch.size, device=batch.x.device))
        for name, f in found.items():
            row, forwards, seconds = self._record(batch, f)
            getattr(self, _key(name, "found")).append(row)
            setattr(self, _key(name, "forwards"), getattr(self, _key(name, "forwards")) + forwards)
            setattr(self, _key(name, "seconds"), getattr(self, _key(name, "seconds")) + seconds)

    # -- forwards --

    def _logits(self, x: torch.Tensor, elements: Sequence[GroupElement]) -> torch.Tensor:
        """The model's logits on row ``i`` of ``x`` transformed by ``elements[i]``."""
        rows = apply_per_row(x, elements, interpolation=self.interpolation, padding=self.padding)
        with torch.inference_mode():
            return self.forward(rows)

    def _random(self, batch: ObservedBatch) -> Found:
        t0 = time.perf_counter()
        k, b = self.plan.random, batch.size
        drawn = [random_elements(self.axes, self.reflects, batch.offset + i, k, self.seed) for i in range(b)]
        flat = [g for per_image in drawn for g in per_image]
        logits = self._logits(batch.x.repeat_interleave(k, 0), flat)
        logits = logits.reshape(b, k, -1).transpose(0, 1)  # (K, B, classes)
        err = logit_error(logits, batch.ref).double()
        obj = objective(logits, err, batch.labels)
        worst = obj.argmin(0)
        correct = mean_correct = None
        if batch.labels is not None:
            right = obj > 0
            correct, mean_correct = right.all(0), right.double().mean(0)
        chosen = [drawn[i][int(worst[i])] for i in range(b)]
        seconds = time.perf_counter() - t0
        return Found(
            chosen, obj.min(0).values, correct, err.amax(0), b * k, seconds, mean_correct, err.gather(0, worst[None])[0]
        )

    def _refine(self, batch: ObservedBatch, grid: Found) -> Found:
        """Rounds of one step down and up each axis from each image's best point so far, halving the steps."""
        t0 = time.perf_counter()
        b, d = batch.size, len(self.axes)
        best = grid.objective.clone()
        correct = None if grid.all_correct is None else grid.all_correct.clone()
        error = grid.error.clone()
        chosen_error = grid.chosen_error.clone()
        chosen = list(grid.elements)
        if not d:
            return Found(chosen, best, correct, error, 0, time.perf_counter() - t0, chosen_error=chosen_error)
        points = np.stack([_point(self.axes, g) for g in chosen])
        steps = np.stack([_neighbour_steps(self.axes, p) for p in points])  # (B, D, 2)
        reflect = [g.reflect for g in chosen]
        for _ in range(self.rounds):
            cands = np.repeat(points[:, None], 2 * d, 1)  # (B, 2D, D)
            for a in range(d):
                cands[:, 2 * a, a] -= steps[:, a, 0]
                cands[:, 2 * a + 1, a] += steps[:, a, 1]
            elems = [_element(self.axes, cands[i, j], reflect[i]) for i in range(b) for j in range(2 * d)]
            logits = self._logits(batch.x.repeat_interleave(2 * d, 0), elems).reshape(b, 2 * d, -1).transpose(0, 1)
            err = logit_error(logits, batch.ref).double()
            obj = objective(logits, err, batch.labels)  # (2D, B)
            error = torch.maximum(error, err.amax(0))
            if correct is not None:
                correct = correct & (obj > 0).all(0)
            low, j = obj.min(0)
            better = low < best
            chosen_error = torch.where(better, err.gather(0, j[None])[0], chosen_error)
            moved = better.cpu().numpy()
            best = torch.minimum(best, low)
            j = j.cpu().numpy()
            for i in np.flatnonzero(moved):
                points[i] = cands[i, j[i]]
                chosen[i] = elems[i * 2 * d + j[i]]
                a, side = divmod(int(j[i]), 2)
                steps[i, a, :] = steps[i, a, side]  # the new bracket along the axis it moved on
            steps = steps / 2
        seconds = time.perf_counter() - t0
        return Found(chosen, best, correct, error, b * 2 * d * self.rounds, seconds, chosen_error=chosen_error)

    def _record(self, batch: ObservedBatch, f: Found) -> tuple[torch.Tensor, int, float]:
        """What is kept per image (``(B, len(COLUMNS))`` on the device; NaN: not measured), with the worst
        element's floor (one round-trip forward per image); the extra forwards and the seconds."""
        t0 = time.perf_counter()
        dev = batch.x.device
        floor = torch.zeros(batch.size, dtype=torch.float64, device=dev)
        forwards = f.forwards
        if f.forwards:  # the grid's floors are the audit's own
            there = apply_per_row(batch.x, f.elements, interpolation=self.interpolation, padding=self.padding)
            back = [g.inverse() for g in f.elements]
            trip = apply_per_row(there, back, interpolation=self.interpolation, padding=self.padding)
            with torch.inference_mode():
                out = self.forward(trip)
            floor = logit_error(out, batch.ref).double()
            forwards += batch.size
        params = torch.tensor([[g.angle, g.scale, float(g.reflect), *g.shift] for g in f.elements],
                              dtype=torch.float64, device=dev)  # fmt: skip
        nan = torch.full((batch.size,), float("nan"), dtype=torch.float64, device=dev)
        cols = [
            f.objective, nan if f.all_correct is None else f.all_correct, nan if f.mean_correct is None else
            f.mean_correct, f.error, f.chosen_error, floor,
        ]  # fmt: skip
        row = torch.cat([params, torch.stack([c.to(dev, torch.float64) for c in cols], 1)], 1)
        return row, forwards, f.seconds + time.perf_counter() - t0

    def compute(self) -> dict[str, dict[str, Any]]:
        """Per method, the per-image arrays in image order, and the totals."""
        if not self.index:
            return {}
        order = np.argsort(torch.cat(self.index).cpu().numpy(), kind="stable")
        out = {}
        for m in self.plan.methods:
            rows = torch.cat(getattr(self, _key(m, "found"))).cpu().numpy()[order]
            res: dict[str, Any] = {"forwards": int(getattr(self, _key(m, "forwards"))), "params": rows[:, :5]}
            res["seconds"] = float(getattr(self, _key(m, "seconds")))
            for i, name in enumerate(COLUMNS, start=5):
                if not np.isnan(rows[:, i]).all():  # correct without labels, mean_correct but for random
                    res[name] = rows[:, i] != 0 if name == "correct" else rows[:, i]
            out[m] = res
        return out


COLUMNS = ("objective", "correct", "mean_correct", "error", "chosen_error", "floor")  # after the 5 parameters


def _key(method: str, what: str) -> str:
    return f"{what}_{method.replace(':', '_')}"


def search_observers(search: str, budget: int, task: str, forward: Forward) -> list[Observer]:
    """The observers of this module an audit needs: consistency for classifiers, and the search when
    ``search`` asks for more than the grid (classifiers only: a one-line error otherwise)."""
    plan = parse_search(search)
    if task != "classify":
        if plan.extra:
            raise OptionError(f"--search {search} searches the margin of a classifier; this model's task is {task}")
        return []
    observers: list[Observer] = [ConsistencyObserver()]
    if plan.extra:
        observers.append(SearchObserver(plan, forward, budget))
    return observers


# ---- into the result ---------------------------------------------------------------------------------------

_PARAMS = ("angle", "scale", "reflect", "dx", "dy")


def _method_row(method: str, found: dict[str, Any], n: int, grid_size: int, confidence: float) -> dict[str, Any]:
    from .intervals import bootstrap_mean, wilson

    row: dict[str, Any] = {"method": method}
    # the elements whose outcome counts: the grid, the K draws, or the grid and every refined candidate (the
    # last forward per image of random and refine is the worst element's floor, which is not judged)
    searched = (found["forwards"] - n) // n if n and found["forwards"] else 0
    row["elements_per_image"] = {"grid": grid_size, "refine": grid_size + searched}.get(method, searched)
    row["extra_forwards"] = int(found["forwards"])
    row["extra_forwards_per_image"] = found["forwards"] / n if n else 0.0
    row["seconds"] = float(found["seconds"])
    if "mean_correct" in found:
        row["accuracy_mean"] = float(found["mean_correct"].mean())
    if "correct" in found:
        k = float(found["correct"].sum())
        row["worst_case_accuracy"] = k / n
        low, high = wilson(k, float(n), confidence)
        row["worst_case_accuracy_low"], row["worst_case_accuracy_high"] = float(low), float(high)
    row["worst_case_error"] = float(found["error"].mean())
    low, high = bootstrap_mean(found["error"][:, None], confidence)
    row["worst_case_error_low"], row["worst_case_error_high"] = float(low[0]), float(high[0])
    row["objective_mean"] = float(found["objective"].mean())
    return row


def search_results(
    observers: Sequence[Observer], summary: dict[str, Any], intervals: dict[str, Any] | None, spec: Any
) -> dict[str, Any] | None:
    """Put ``consistency`` (with its interval) into the summary and return the result's ``search`` section
    (None when no search beyond the grid ran)."""
    from .intervals import BOOTSTRAP, bootstrap_mean

    section = None
    for obs in observers:
        if isinstance(obs, ConsistencyObserver):
            per_image = obs.compute()
            if len(per_image):
                summary["consistency"] = float(per_image.mean())
                if intervals is not None:
                    low, high = bootstrap_mean(per_image[:, None], intervals["confidence"])
                    summary["consistency_low"], summary["consistency_high"] = float(low[0]), float(high[0])
                    intervals["methods"]["consistency"] = BOOTSTRAP
        if isinstance(obs, SearchObserver):
            section = _section(obs, summary, spec)
    return section


def _section(obs: SearchObserver, summary: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    found = obs.compute()
    if not found:
        return None
    n = len(found["grid"]["error"])
    labelled = "correct" in found["grid"]
    methods = [_method_row(m, f, n, len(obs.elements), spec.confidence) for m, f in found.items()]
    grid = methods[0]
    if "accuracy_mean" in summary:
        grid["accuracy_mean"] = summary["accuracy_mean"]
    worst = {}
    for m, f in found.items():
        cols = {p: f["params"][:, i].round(6).tolist() for i, p in enumerate(_PARAMS)}
        cols["reflect"] = [bool(v) for v in cols["reflect"]]
        cols.update({k: f[k].tolist() for k in ("objective", "error", "chosen_error", "floor")})
        worst[m] = cols
    return {
        "methods": methods,
        "objective": "margin" if labelled else "invariance_error",
        "natural_accuracy": summary.get("accuracy_reference"),
        "seed": obs.seed,
        "budget": obs.budget,
        "rounds": obs.rounds,
        "box": {a.name: [a.lo, a.hi] for a in obs.axes},
        "reflects": obs.reflects,
        "worst": worst,
    }
