"""The correctness matrix of two classifiers: on which images both are right, only one, or neither.

Audit results keep aggregates, not per-image predictions, so the matrix is measured here: both models see the
same labelled images under each chosen element (transformed with :func:`equiaudit.transforms.apply_elements`,
as the audit does) and each image falls into one of four cells. Per-image correctness computed elsewhere can
be given directly to :meth:`CorrectnessMatrix.from_predictions`.
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
        }


def _logits(module: Any, x: Any, batch_size: int) -> Any:
    import torch

    with torch.inference_mode():
        y = torch.cat([module(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if y.dim() != 2:
        raise InputMismatchError(
            f"the correctness matrix compares classifiers; a model returned shape "
            f"{tuple(y.shape)}, not (batch, classes)"
        )
    return y


def correctness_matrix(
    model_a: Any,
    model_b: Any,
    data: Any = "digits",
    elements: Any = "id",
    *,
    names: tuple[str, str] = ("A", "B"),
    examples: int = 4,
    batch_size: int = 256,
    device: Any = None,
    interpolation: str = "bilinear",
    padding: str = "zeros",
    trust: bool = False,
    arch: str | None = None,
    **data_options: Any,
) -> list[CorrectnessMatrix]:
    """One matrix per element of ``elements`` (a group spec, e.g. ``"rot:0,45"`` for upright and 45 degrees).

    ``model_a`` / ``model_b`` and ``data`` take what :func:`equiaudit.audit.audit` takes (modules, paths,
    ``zoo:NAME``; a data spec, :class:`~equiaudit.data.AuditData`, or ``(x, y)`` tensors). The data must have
    labels. Both models run in float32 on ``device`` (default: the first model's device, CUDA for files).
    """
    import torch

    from equiaudit.audit import as_audit_data
    from equiaudit.groups import parse_group
    from equiaudit.loading import LoadedModel, load_model, resolve_device
    from equiaudit.transforms import apply_elements

    group = parse_group(elements)
    dev = None if device is None else resolve_device(device)
    loaded = [
        m if isinstance(m, LoadedModel) else load_model(m, arch=arch, trust=trust, device=dev)
        for m in (model_a, model_b)
    ]
    modules = [m.module.eval() for m in loaded]
    if dev is None:
        param = next(iter(modules[0].parameters()), None)
        dev = param.device if param is not None else torch.device("cpu")
    for m in modules:
        m.to(device=dev, dtype=torch.float32)
    dataset = as_audit_data(data, data_options)
    if not dataset.has_labels:
        raise DataError(f"the correctness matrix needs labelled data; {dataset.spec!r} has no labels")
    kw = {"interpolation": interpolation, "padding": padding, "cache": {}}
    per_chunk = max(1, batch_size // len(group))
    correct: list[list[Any]] = [[], []]
    for batch in dataset.batches(per_chunk):
        x = batch.x.to(dev, torch.float32)
        xg = apply_elements(x, group.elements, **kw)
        flat = xg.reshape(-1, *x.shape[1:])
        y = batch.y.to(dev)
        for k, module in enumerate(modules):
            pred = _logits(module, flat, batch_size).argmax(-1).reshape(len(group), -1)
            correct[k].append((pred == y).cpu())
    ca, cb = torch.cat(correct[0], dim=1).numpy(), torch.cat(correct[1], dim=1).numpy()
    described = dataset.describe()
    matrices = []
    for j, g in enumerate(group.elements):
        mat = CorrectnessMatrix.from_predictions(ca[j], cb[j], names=names, element=g.label, examples=examples)
        mat.class_names = described.get("class_names")
        mat.normalisation = described.get("normalisation")
        for cell, idx in mat.examples.items():
            if idx:
                items = [dataset.dataset[i] for i in idx]
                xs = torch.stack([it[0] for it in items]).to(torch.float32)
                mat.example_images[cell] = apply_elements(xs, (g,), **kw)[0].numpy()
                mat.example_labels[cell] = [int(it[1]) for it in items]
        matrices.append(mat)
    return matrices
