"""The correctness matrix of two classifiers: on which images both are right, only one, or neither.

Each audit keeps a per-image record (whether each image is classified right under each element), so the matrix
comes from two results (:func:`matrices_from_results`), or from two audits run here
(:func:`correctness_matrix`); no model runs outside the audit's one pass. Per-image correctness computed
elsewhere can be given directly to :meth:`CorrectnessMatrix.from_predictions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from equiaudit.errors import DataError, InputMismatchError


@dataclass
class CorrectnessMatrix:
    """Counts of the four cells for one element, with a few example images per cell."""

    names: tuple[str, str]
    element: str
    counts: dict[str, int]
    examples: dict[str, list[int]]  # image indices, first few per cell
    example_images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # (k, C, H, W) as seen
    example_labels: dict[str, list[int]] = field(default_factory=dict)
    # per cell, per example image: the class each model predicted, (model A, model B); -1 when unknown
    example_predictions: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    class_names: list[str] | None = None
    normalisation: dict[str, Any] | None = None

    @classmethod
    def from_predictions(
        cls,
        correct_a: Sequence[bool] | np.ndarray,
        correct_b: Sequence[bool] | np.ndarray,
        *,
        names: tuple[str, str] = ("A", "B"),
        element: str = "identity",
        examples: int = 4,
    ) -> CorrectnessMatrix:
        """Build the matrix from per-image correctness of the two models (same images, same order)."""
        a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
        if a.shape != b.shape or a.ndim != 1:
            raise InputMismatchError(
                f"per-image correctness of the two models must be two 1-D arrays of one "
                f"length, got shapes {a.shape} and {b.shape}"
            )
        cells = {"both_right": a & b, "only_a": a & ~b, "only_b": ~a & b, "both_wrong": ~a & ~b}
        return cls(
            tuple(names),
            element,
            {k: int(v.sum()) for k, v in cells.items()},
            {k: np.flatnonzero(v)[:examples].tolist() for k, v in cells.items()},
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "element": self.element,
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "example_predictions": {k: [list(p) for p in v] for k, v in self.example_predictions.items()},
        }


def _views(result: Any) -> dict[int, dict[str, Any]]:
    """Image index -> its gallery entry (``views`` ``(G, C, h, w)`` as the model saw them, ``label``)."""
    found: dict[int, dict[str, Any]] = {}
    for part in ("first", "worst"):
        s = (result.samples or {}).get(part) or {}
        for n, index in enumerate(s.get("index", ())):
            found.setdefault(int(index), {"views": s["views"][n], "label": s["label"][n, 0] if "label" in s else None})
    return found


def matrices_from_results(
    result_a: Any,
    result_b: Any,
    elements: str | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
    examples: int = 4,
) -> list[CorrectnessMatrix]:
    """One matrix per element from two audits' per-image records (no model runs again).

    Both audits must have scanned the same labelled images; ``elements`` (a group spec) picks elements by label
    from the first audit's group (default: all of them), and each must be in both. Example images are the
    cell's first images among those the two galleries kept (first and worst N), as the model saw them, with
    the class each model predicted for them (``example_predictions``, from the per-image records).
    """
    from equiaudit.groups import parse_group

    recs = [r.records for r in (result_a, result_b)]
    if any(rec is None or "correct" not in rec for rec in recs):
        raise InputMismatchError(
            "the correctness matrix needs per-image records of labelled data in both results (a results JSON "
            "with its .samples.npz, from an audit of labelled data)"
        )
    if result_a.data.spec != result_b.data.spec or not np.array_equal(recs[0]["index"], recs[1]["index"]):
        raise InputMismatchError(
            f"the audits used different images ({result_a.data.spec!r}, {len(recs[0]['index'])} images vs "
            f"{result_b.data.spec!r}, {len(recs[1]['index'])}); the correctness matrix needs the same images"
        )
    labels_a, labels_b = list(result_a.elements["label"]), list(result_b.elements["label"])
    wanted = labels_a if elements is None else [g.label for g in parse_group(elements).elements]
    missing = [w for w in wanted if w not in labels_a or w not in labels_b]
    if missing:
        raise InputMismatchError(
            f"element(s) {', '.join(missing)} are not in both audits' groups "
            f"({result_a.group.spec}, {result_b.group.spec}); audit both under a group that has them"
        )
    index = recs[0]["index"]
    row_of = {int(i): r for r, i in enumerate(index)}
    preds = [rec.get("pred") for rec in recs]
    views = [_views(result_a), _views(result_b)]
    matrices = []
    for label in wanted:
        ja, jb = labels_a.index(label), labels_b.index(label)
        mat = CorrectnessMatrix.from_predictions(
            recs[0]["correct"][:, ja], recs[1]["correct"][:, jb], names=names, element=label, examples=len(index)
        )
        mat.class_names = result_a.data.class_names
        mat.normalisation = result_a.data.normalisation
        for cell, rows in mat.examples.items():
            shown = [int(index[r]) for r in rows if int(index[r]) in views[0] or int(index[r]) in views[1]][:examples]
            mat.examples[cell] = shown
            if shown:
                picked = [(views[0][i], ja) if i in views[0] else (views[1][i], jb) for i in shown]
                mat.example_images[cell] = np.stack([p["views"][j] for p, j in picked]).astype(np.float32)
                mat.example_labels[cell] = [-1 if p["label"] is None else int(p["label"]) for p, _ in picked]
                mat.example_predictions[cell] = [
                    tuple(-1 if pr is None else int(pr[row_of[i], j]) for pr, j in zip(preds, (ja, jb), strict=True))
                    for i in shown
                ]
        matrices.append(mat)
    return matrices


def correctness_matrix(
    model_a: Any,
    model_b: Any,
    data: Any = "digits",
    elements: Any = "id",
    *,
    names: tuple[str, str] = ("A", "B"),
    examples: int = 4,
    samples: int = 16,
    **options: Any,
) -> list[CorrectnessMatrix]:
    """One matrix per element of ``elements`` (a group spec, e.g. ``"rot:0,45"`` for upright and 45 degrees).

    Audits both models (:func:`equiaudit.audit`, one pass each; ``options`` are its keywords) and builds the
    matrices from their per-image records with :func:`matrices_from_results`; ``samples`` gallery images per
    audit (first and worst) are the pool of example images. The data must have labels.
    """
    from equiaudit.engine import audit

    results = [audit(m, data, elements, samples=samples, **options) for m in (model_a, model_b)]
    if not results[0].data.has_labels:
        raise DataError(f"the correctness matrix needs labelled data; {results[0].data.spec!r} has no labels")
    return matrices_from_results(*results, names=names, examples=examples)
