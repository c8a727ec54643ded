"""The model as the audit sees it: images in, one tensor out (:class:`ModelAdapter`), and the checks that fit a
loaded model to its data before the pass (:func:`fit`).

**Where the group acts.** On the image: ``[0, 1]`` pixel values after the data's resize and crop, before any
normalisation. A normalisation (the data's ``mean`` / ``std``, or the model's own from its source) is moved
into the adapter's forward, after the transform, so every view is normalised the same way. Outside the image,
``padding zeros`` brings in the ``fill`` colour, defined in image space: ``zeros`` is black (as the shipped
data and the zoo's studies pad); ``mean`` is the normalisation mean, which is what padding the normalised
input with 0 gives. Resampling is linear and the normalisation is a per-channel affine map, so the two
differ only in that colour: the engine works on ``image - fill`` (zero padding is then the fill colour, and
the input mask's zeros too) and the adapter adds ``fill`` back before normalising.

**Which output.** ``output="auto"`` takes a tensor as it is, else ``.logits`` (Hugging Face), else the key
``'out'`` (torchvision segmentation), else the only tensor of a tuple, list or dict, and says which it took;
``output="aux"`` / ``"0"`` / ``"logits"`` (dotted for nested parts) picks one. The choice is made on the first
forward and kept for the whole pass, and recorded as ``result.model.output``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .data import AuditData
from .errors import EquiauditError, EquiauditWarning, InputMismatchError
from .loading import LoadedModel
from .spec import AuditSpec
from .transforms import sampling_dtype, uses_exact_path

Note = Callable[[str], None]
_INDEX = re.compile(r"-?\d+")


def _describe(value: Any) -> str:
    """What a model output holds, in words (for messages)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        return f"{type(value).__name__} with keys {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
    if isinstance(value, (tuple, list)):
        kinds = ", ".join("tensor" if isinstance(v, torch.Tensor) else type(v).__name__ for v in value[:8])
        return f"a {type(value).__name__} of {len(value)} ({kinds})"
    return f"a {type(value).__name__}"


def _step(value: Any, part: str) -> tuple[Any, str]:
    """One part of an ``output`` path: a key, an index or an attribute of ``value``."""
    if isinstance(value, torch.Tensor):
        raise InputMismatchError(f"--output {part!r}: the model's output is already {_describe(value)}")
    # an attribute first (ModelOutput.logits, a named tuple's field), but never a method (a dict's "items")
    if part.isidentifier() and not callable(getattr(value, part, len)):
        return getattr(value, part), f".{part}"
    if isinstance(value, Mapping) and part in value:
        return value[part], f"[{part!r}]"
    if _INDEX.fullmatch(part) and isinstance(value, (Sequence, Mapping)) and not isinstance(value, str):
        try:
            return value[int(part)], f"[{int(part)}]"
        except (IndexError, KeyError, TypeError):
            pass
    raise InputMismatchError(f"--output {part!r} is not in the model's output, which is {_describe(value)}")


def _auto(value: Any) -> list[str] | None:
    """The path ``output="auto"`` takes through ``value`` (``[]``: the value itself), or None."""
    if isinstance(value, torch.Tensor):
        return []
    if isinstance(getattr(value, "logits", None), torch.Tensor):
        return ["logits"]
    if isinstance(value, Mapping):
        if isinstance(value.get("out"), torch.Tensor):
            return ["out"]
        tensors = [k for k, v in value.items() if isinstance(v, torch.Tensor)]
        return [str(tensors[0])] if len(tensors) == 1 else None
    if isinstance(value, (tuple, list)):
        tensors = [i for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
        return [str(tensors[0])] if len(tensors) == 1 else None
    if isinstance(getattr(value, "tensor", None), torch.Tensor):  # e2cnn / escnn GeometricTensor
        return ["tensor"]
    return None


class ModelAdapter(nn.Module):
    """``forward(x) = select(model((x + fill - mean) / std))``: the model as the audit sees it.

    Args:
        model: the user's module (an exported graph is never switched to train mode).
        output: ``auto`` or a dotted path of keys, indices and attributes (see the module docstring).
        mean, std: the normalisation applied after the transform (None: none).
        fill: the colour the engine's values are offset by (``image - fill``), per channel (None: black).
        fixed_batch: the batch size an exported program was traced with; forwards are padded to it.
        on_choice: called on the first forward with the path taken through the output, in words (``''`` for the
            output itself), the output, and whether ``output`` was auto.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        output: str = "auto",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        fill: Sequence[float] | None = None,
        fixed_batch: int | None = None,
        exported: bool = False,
        on_choice: Callable[[str, Any, bool], None] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.fixed_batch = fixed_batch
        self.exported = exported
        self.on_choice = on_choice
        self._path: list[str] | None = None if output == "auto" else output.split(".")
        self.chosen: str | None = None  # the path taken, in words, once the first forward ran
        c = max(len(v) for v in (mean or (), std or (), fill or (), (1,)))
        mean_t = torch.zeros(c, dtype=torch.float64) if mean is None else torch.tensor(mean, dtype=torch.float64)
        std_t = torch.ones(c, dtype=torch.float64) if std is None else torch.tensor(std, dtype=torch.float64)
        fill_t = torch.zeros(c, dtype=torch.float64) if fill is None else torch.tensor(fill, dtype=torch.float64)
        self.affine = mean is not None or std is not None or fill is not None
        # model input = x * gain + bias, with x = image - fill (float64 here; fit() casts to the audit's dtype)
        self.register_buffer("gain", (1.0 / std_t).view(-1, 1, 1), persistent=False)
        self.register_buffer("bias", ((fill_t - mean_t) / std_t).view(-1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ModelAdapter:
        self.training = mode
        if not self.exported:  # exported graphs refuse train() / eval(); they were checked to be in eval mode
            self.model.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine:
            gain, bias = self.gain, self.bias
            if gain.dtype != x.dtype or gain.device != x.device:
                gain, bias = gain.to(x.device, x.dtype), bias.to(x.device, x.dtype)
            x = torch.addcmul(bias, x, gain)
        return self.select(self.model(x))

    def select(self, value: Any) -> torch.Tensor:
        """The audited tensor of a model output (the path is chosen on the first call when ``output`` is auto,
        and kept)."""
        if self._path is None:
            path = _auto(value)
            if path is None:
                raise InputMismatchError(
                    f"the model returned {_describe(value)}; choose the output to audit with --output "
                    f"KEY|INDEX|ATTR (output= in Python)"
                )
            self._path = path
        out, where = self._walk(value)
        if not isinstance(out, torch.Tensor):
            raise InputMismatchError(f"--output {self.output}: {where} of the model's output is {_describe(out)}")
        if self.chosen is None:
            self.chosen = where
            if self.on_choice is not None:
                self.on_choice(where, value, self.output == "auto")
        return out

    def _walk(self, value: Any) -> tuple[Any, str]:
        where = ""
        for part in self._path or ():
            value, step = _step(value, part)
            where += step
        return value, where

    def extra_repr(self) -> str:
        return f"output={self.output!r}, affine={self.affine}, fixed_batch={self.fixed_batch}"


def inner(module: nn.Module) -> nn.Module:
    """The user's module inside an adapter (the module itself otherwise)."""
    return module.model if isinstance(module, ModelAdapter) else module


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_group_size(spec: AuditSpec, input_shape: Sequence[int], dtype: torch.dtype) -> None:
    """Refuse a group larger than ``spec.max_elements`` unless ``spec.force``, saying what it would cost."""
    elements = spec.parsed_group.elements
    n = len(elements)
    if n <= spec.max_elements or spec.force:
        return
    c, h, w = input_shape
    per_copy = c * h * w * torch.empty(0, dtype=dtype).element_size()
    sampled = sum(not uses_exact_path(g, (h, w)) for g in elements)
    grid = sampled * h * w * 2 * torch.empty(0, dtype=sampling_dtype(dtype)).element_size()
    raise EquiauditError(
        f"group {spec.group!r} has {n:,} elements, more than max_elements {spec.max_elements:,}: every image runs "
        f"through the model {n:,} times, its transformed copies take {_bytes(n * per_copy)} per image "
        f"({c}x{h}x{w} {str(dtype).replace('torch.', '')}) and the sampling grid {_bytes(grid)}; pass --force "
        f"(force=True) to run it, or use fewer elements"
    )


def non_square_note(spec: AuditSpec, input_shape: Sequence[int]) -> str | None:
    """Which exact elements lose their exact path on a non-square input, in words (None: none do)."""
    h, w = input_shape[-2:]
    lost = [g.label for g in spec.parsed_group.elements if g.exact and not uses_exact_path(g, (h, w))]
    if not lost:
        return None
    shown = ", ".join(lost[:6]) + (f" and {len(lost) - 6} more" if len(lost) > 6 else "")
    return (
        f"the input is {h}x{w}, not square: {shown} cannot permute its pixels, so "
        f"{'they are' if len(lost) > 1 else 'it is'} resampled (corners cut, a floor above 0); crop the images "
        f"square (--crop) to keep {'them' if len(lost) > 1 else 'it'} exact"
    )


def fit(
    loaded: LoadedModel,
    module: nn.Module,
    data: AuditData,
    spec: AuditSpec,
    device: torch.device,
    dtype: torch.dtype,
    on_note: Note | None = None,
) -> tuple[LoadedModel, ModelAdapter, AuditData, AuditSpec]:
    """Fit a loaded model to its data before the pass: the guards (group size, non-square inputs), the fill and
    the normalisation (:class:`ModelAdapter`), the batch of an exported program. Returns the model's record (a
    copy that will hold the chosen output), the adapter, the data in image space and the spec to run."""

    def note(message: str, caveat: bool = False) -> None:
        if on_note is not None:
            on_note(message)
        elif caveat:
            warnings.warn(message, EquiauditWarning, stacklevel=4)

    check_group_size(spec, data.input_shape, dtype)
    square = non_square_note(spec, data.input_shape)
    if square is not None:
        note(square, caveat=True)

    mean, std = data.mean, data.std
    c = data.input_shape[0]
    if spec.fill == "mean" and mean is None:
        raise EquiauditError(
            "fill 'mean' pads with the normalisation mean, but the data has none: give mean= / --mean, or use a "
            "model source that declares one (torchvision:, timm:, hf:)"
        )
    fill = None if spec.fill == "zeros" or mean is None else tuple(mean[i % len(mean)] for i in range(c))
    image_space = data.without_normalisation(fill)
    record = dict(data.preprocess or {})
    if image_space is None:  # normalised in memory by the caller: the group acts on the input as given
        note(
            "the data's normalisation cannot be moved after the transform (data given already normalised), so "
            "--padding zeros brings in 0 of the normalised input",
            caveat=True,
        )
        image_space, mean, std, fill = data, None, None, None
    else:
        if mean is not None:  # applied in the model's forward, after the group acts
            record["normalise"] = {"mean": list(mean), "std": list(std or (1.0,))}
        record["fill"] = list(fill) if fill is not None else [0.0] * c
    image_space = dataclasses.replace(image_space, preprocess=record or None)

    fixed = loaded.info.get("fixed_batch")
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    if fixed is not None and spec.batch_size != fixed:
        if spec.batch_size is not None:
            note(
                f"the exported program takes batches of exactly {fixed}: --batch-size {spec.batch_size} becomes {fixed}"
            )
        spec = spec.replace(batch_size=fixed)

    loaded = dataclasses.replace(loaded, info=dict(loaded.info))

    def chosen(where: str, value: Any, auto: bool) -> None:
        loaded.output = where or None
        if where and auto:
            note(f"output: {where} of the model's {type(value).__name__} (chosen automatically; --output picks one)")

    adapter = ModelAdapter(
        module,
        output=spec.output,
        mean=mean,
        std=std,
        fill=fill,
        fixed_batch=fixed,
        exported=loaded.kind == "export",
        on_choice=chosen,
    )
    adapter.gain, adapter.bias = adapter.gain.to(device, dtype), adapter.bias.to(device, dtype)
    adapter.training = False
    return loaded, adapter, image_space, spec
