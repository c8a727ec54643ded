"""Train and evaluate zoo models: one loop for classifiers (labels) and segmenters (foreground masks).

The data are held in memory as tensors (the zoo's data sets are small), shuffled by a generator seeded with
``seed``, optionally rotated by random angles (``kornia.augmentation.RandomRotation``, masks rotated with the
same angles), and fitted with AdamW under a cosine learning-rate schedule with a short linear warm-up.
With the same seed, data, device and thread count, two runs give the same weights.

The task follows the data: labels -> ``classify`` (cross-entropy on ``(B, K)`` logits), masks ->
``segment`` (binary cross-entropy on one logit channel, or cross-entropy on ``C > 1`` channels).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from equiaudit.data import AuditData, load_data
from equiaudit.errors import DataError, EquiauditError, InputMismatchError
from equiaudit.loading import resolve_device
from equiaudit.metrics import binarize, iou

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "AUGMENTS", "Evaluation", "TrainResult", "as_data", "evaluate", "full_augment", "progress_bars",
    "rotate_pairs", "seed_everything", "train",
]  # fmt: skip

# progress(step, total_steps, info) with info = {"epoch": 1-based epoch, "loss": running mean of this epoch}
TrainProgress = Callable[[int, int, dict[str, float]], None]
WARMUP_FRACTION = 0.05
# Augmentation sets (the butterfly study's): "minimal" trains on the data as loaded (padded and normalised by the
# recipe's data options); "full" adds, each with probability 1/2 per image as Albumentations' defaults, colour
# jitter (brightness, contrast, saturation x [0.8, 1.2], hue +- 0.2 turn), brightness / contrast (x [0.8, 1.2],
# + [-0.2, 0.2]) and a rotation by up to FULL_ROTATION degrees, masks rotated alike.
AUGMENTS = ("minimal", "full")
FULL_ROTATION = 90.0
_JITTER = 0.2


@dataclass
class TrainResult:
    """What a training run did (recorded in model cards)."""

    task: str
    epochs: int
    steps: int
    images: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    augment_rotation: float
    device: str
    seconds: float  # wall-clock time
    cpu_seconds: float  # CPU time of this process (all threads): comparable on a busy machine
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    augment: str | None = None  # the augmentation set (see AUGMENTS), None: augment_rotation alone
    # per epoch: training accuracy / IoU of the batches as trained, and loss and score on the validation data
    scores: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    """Test metrics: accuracy (classify) or mean per-image foreground IoU (segment), and the mean loss.

    ``per_image`` holds each image's correctness (0/1) or IoU, in the data's order.
    """

    task: str
    images: int
    loss: float
    accuracy: float | None = None
    iou: float | None = None
    per_image: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        """Accuracy for classifiers, IoU for segmenters."""
        return float(self.accuracy if self.task == "classify" else self.iou)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "images": self.images, "loss": self.loss}
        out["accuracy" if self.task == "classify" else "iou"] = self.score
        return out


@contextlib.contextmanager
def progress_bars(console: Console | None) -> Iterator[Callable[[str], TrainProgress] | None]:
    """Rich training bars on ``console``: yields ``bar(name) -> progress callback`` for :func:`train`, one
    bar per model; yields None when ``console`` is None or not a terminal."""
    if console is None or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("training {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps {task.fields[info]}"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bars:

        def bar(name: str) -> TrainProgress:
            task = bars.add_task(name, total=None, info="")

            def update(step: int, total: int, info: dict[str, float]) -> None:
                text = f"epoch {info['epoch']:.0f} loss {info['loss']:.3f}"
                bars.update(task, completed=step, total=total, info=text)

            return update

        yield bar


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), so model initialisation and training repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_data(data: Any, split: str = "train", **options: Any) -> AuditData:
    """``data`` as :class:`AuditData`: a spec string (loaded with ``split`` and ``options``, see
    :func:`equiaudit.data.load_data`), an ``AuditData``, a tensor ``x`` or a tuple ``(x, y[, mask])``."""
    if isinstance(data, AuditData):
        return data
    if isinstance(data, str):
        return load_data(data, split=split, **options)
    if isinstance(data, torch.Tensor):
        return AuditData.from_tensors(data)
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return AuditData.from_tensors(*data)
    raise DataError(f"data must be a spec string, AuditData, a tensor or (x, y[, mask]); got {type(data).__name__}")


def _task(data: AuditData) -> str:
    if data.has_labels:
        return "classify"
    if data.has_masks:
        return "segment"
    raise DataError(f"the data {data.spec!r} has neither labels nor masks, so there is nothing to train on")


def _tensors(data: AuditData, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and targets (labels, or (N, 1, H, W) masks) stacked in memory."""
    xs, ts = [], []
    for batch in data.batches(512):
        xs.append(batch.x)
        ts.append(batch.y if task == "classify" else batch.mask)
    return torch.cat(xs), torch.cat(ts)  # type: ignore[arg-type]


def _loss(out: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classify":
        if out.dim() != 2:
            raise InputMismatchError(f"a classifier must output (batch, classes) logits, got {tuple(out.shape)}")
        if int(target.max()) >= out.shape[1]:
            raise InputMismatchError(
                f"labels go up to {int(target.max())} but the model outputs {out.shape[1]} classes"
            )
        return F.cross_entropy(out, target)
    if out.dim() != 4:
        raise InputMismatchError(f"a segmenter must output (batch, C, H, W) logits, got {tuple(out.shape)}")
    mask = target if target.shape[-2:] == out.shape[-2:] else F.interpolate(target, size=out.shape[-2:])
    if out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out, mask)
    return F.cross_entropy(out, mask[:, 0].long())


def _schedule(total: int) -> Callable[[int], float]:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0 (a factor on the base rate)."""
    warmup = max(1, round(WARMUP_FRACTION * total))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))

    return factor


def _rotate(x: torch.Tensor, target: torch.Tensor, degrees: float, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    from kornia.augmentation import RandomRotation

    aug = RandomRotation(degrees=degrees, p=1.0)
    x = aug(x)
    if task == "segment":  # the same angles for the masks, re-binarised after bilinear resampling
        target = (aug(target, params=aug._params) >= 0.5).to(target.dtype)
    return x, target


def train(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    augment_rotation: float = 0.0,
    device: str | torch.device | None = None,
    progress: TrainProgress | None = None,
    augment: str | None = None,
    validation: Any = None,
    **data_options: Any,
) -> TrainResult:
    """Fit ``model`` to ``train_data`` in place and leave it in eval mode on ``device``.

    Args:
        model: a classifier (``(B, K)`` logits) or a segmenter (``(B, C, H, W)`` logits).
        train_data: a data spec (its ``train`` split; ``data_options`` go to
            :func:`equiaudit.data.load_data`), an :class:`AuditData`, a tensor or ``(x, y[, mask])``.
        epochs, lr, batch_size, weight_decay: AdamW, cosine schedule over ``epochs`` passes of the data.
        seed: seeds shuffling, augmentation and any randomness in the model's forward.
        augment_rotation: rotate each training image by a random angle in ``[-a, a]`` degrees (0: off;
            180: any angle).
        augment: ``minimal`` or ``full`` (see :data:`AUGMENTS`; colours are jittered before the data's
            normalisation, the padding stays black).
        validation: data measured after every epoch (loss and accuracy / IoU in ``val_losses`` /
            ``val_scores``), each image turned by a random number of quarter turns drawn from ``seed``.
        device: ``None`` / ``auto`` picks CUDA when present.
        progress: called after every step with ``(step, total_steps, {"epoch", "loss"})``.
    """
    _check_settings(epochs, batch_size, lr, augment_rotation)
    if augment is not None and augment not in AUGMENTS:
        raise EquiauditError(f"unknown augmentation set {augment!r}; valid: {', '.join(AUGMENTS)}")
    data = as_data(train_data, **data_options)
    task = _task(data)
    x_all, t_all = _tensors(data, task)
    n = x_all.shape[0]
    if n < 2:
        raise DataError(f"training needs at least 2 images; {data.spec!r} has {n}")
    dev = resolve_device(device)
    model.to(dev)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = _steps_per_epoch(n, batch_size)
    held_out = None if validation is None else _quarter_turned(as_data(validation, "test"), task, gen)
    stats = None if data.mean is None else (data.mean, data.std or (1.0,))
    history: dict[str, list[float]] = {"scores": [], "val_losses": [], "val_scores": []}
    t0, c0 = time.perf_counter(), time.process_time()
    losses = _fit(
        model,
        x_all,
        t_all,
        task,
        epochs=epochs,
        per_epoch=per_epoch,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        augment_rotation=augment_rotation,
        gen=gen,
        device=dev,
        progress=progress,
        augment=None if augment is None else (augment, stats),
        validation=held_out,
        history=history,
    )
    return TrainResult(
        task,
        epochs,
        per_epoch * epochs,
        n,
        batch_size,
        lr,
        weight_decay,
        seed,
        float(augment_rotation),
        str(dev),
        time.perf_counter() - t0,
        time.process_time() - c0,
        losses,
        augment,
        **history,
    )


def _check_settings(epochs: int, batch_size: int, lr: float, augment_rotation: float) -> None:
    """Raise on training settings :func:`train` cannot use."""
    for value, what in ((epochs, "epochs"), (batch_size, "batch size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EquiauditError(f"{what} must be a positive integer, got {value!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise EquiauditError(f"learning rate must be positive, got {lr!r}")
    if not 0 <= augment_rotation <= 180:
        raise EquiauditError(f"augment_rotation is a maximum angle in [0, 180] degrees, got {augment_rotation!r}")


def _steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches of ``batch_size`` in one pass over ``n`` images."""
    per_epoch = math.ceil(n / batch_size)
    if n % batch_size == 1:  # a last batch of one image breaks BatchNorm in training mode: drop it
        per_epoch -= 1
    return per_epoch


def _fit(
    model: nn.Module,
    x_all: torch.Tensor,
    t_all: torch.Tensor,
    task: str,
    *,
    epochs: int,
    per_epoch: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment_rotation: float,
    gen: torch.Generator,
    device: torch.device,
    progress: TrainProgress | None,
    augment: tuple[str, Any] | None = None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    history: dict[str, list[float]] | None = None,
) -> list[float]:
    """The optimisation loop of :func:`train`: ``epochs`` passes of ``per_epoch`` batches, each pass in a new
    order drawn from ``gen``; leaves ``model`` in eval mode and returns the mean loss of each epoch.
    ``augment``: ``(set, (mean, std) of the data or None)``; ``history`` gets each epoch's training score and
    ``validation`` loss and score."""
    history = {"scores": [], "val_losses": [], "val_scores": []} if history is None else history
    total = per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total))
    losses: list[float] = []
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=gen)
        running, seen, scored = 0.0, 0, 0.0
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, target = x_all[idx].to(device), t_all[idx].to(device)
            if augment_rotation > 0:
                x, target = _rotate(x, target, augment_rotation, task)
            if augment is not None and augment[0] == "full":
                x, target = full_augment(x, target, augment[1], gen, task)
            out = model(x)
            loss = _loss(out, target, task)
            if not torch.isfinite(loss):
                raise EquiauditError(
                    f"training diverged (loss {float(loss)}) at epoch {epoch + 1}, step {i + 1}; "
                    f"lower the learning rate (now {lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
            scored += float(_scores(out.detach(), target, task).sum())
            seen += len(idx)
            step += 1
            if progress is not None:
                progress(step, total, {"epoch": epoch + 1, "loss": running / seen})
        losses.append(running / seen)
        history["scores"].append(scored / seen)
        if validation is not None:
            val_loss, val_score = _validate(model, *validation, task, batch_size, device)
            history["val_losses"].append(val_loss)
            history["val_scores"].append(val_score)
    model.eval()
    return losses


def _scores(out: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Per-image correctness (classify) or foreground IoU (segment) of ``out`` against ``target``."""
    if task == "classify":
        return (out.argmax(-1) == target).double()
    mask = target if target.shape[-2:] == out.shape[-2:] else F.interpolate(target, out.shape[-2:])
    return iou(binarize(out), mask[:, 0].long(), max(2, out.shape[1]))


def _quarter_turned(data: AuditData, task: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and targets of ``data``, each (image and mask) turned by 0-3 quarter turns drawn from ``gen``
    (the study's validation transform, exact on square images)."""
    x, t = _tensors(data, task)
    turns = torch.randint(0, 4, (x.shape[0],), generator=gen)
    for k in range(1, 4):
        pick = turns == k
        x[pick] = torch.rot90(x[pick], k, dims=(-2, -1))
        if task == "segment":
            t[pick] = torch.rot90(t[pick], k, dims=(-2, -1))
    return x, t


def _validate(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, task: str, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean loss and accuracy / IoU of ``model`` (eval mode, then back to training) on ``(x, t)``."""
    model.eval()
    loss, score = 0.0, 0.0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb, tb = x[i : i + batch_size].to(device), t[i : i + batch_size].to(device)
            out = model(xb)
            loss += float(_loss(out, tb, task)) * xb.shape[0]
            score += float(_scores(out, tb, task).sum())
    model.train()
    return loss / x.shape[0], score / x.shape[0]


def full_augment(
    x: torch.Tensor,
    target: torch.Tensor,
    stats: tuple[Any, Any] | None,
    gen: torch.Generator,
    task: str = "segment",
    angles: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``full`` augmentation set on a batch, on its device: colours in image space (``x * std + mean``),
    pixels black in every channel (the padding) kept black, then a rotation by up to :data:`FULL_ROTATION`
    degrees about the centre (zero fill, masks rotated alike and re-binarised); ``angles`` (degrees, one per
    image) replaces the random rotations."""
    b = x.shape[0]
    mean, std = (torch.zeros(1), torch.ones(1)) if stats is None else (torch.tensor(stats[0]), torch.tensor(stats[1]))
    mean, std = (v.to(x.device, x.dtype).view(1, -1, 1, 1) for v in (mean, std))
    img = x * std + mean
    content = (img.abs().amax(1, keepdim=True) > 1e-6).to(x.dtype)
    img = _jitter_colours(img, gen) * content
    if angles is None:
        drawn = (torch.rand(b, generator=gen) * 2 - 1) * FULL_ROTATION
        angles = torch.where(torch.rand(b, generator=gen) < 0.5, drawn, torch.zeros(b))
    img, target = rotate_pairs(img, target if task == "segment" else None, angles)
    return (img - mean) / std, target


def _uniform(gen: torch.Generator, b: int, low: float, high: float, p: float = 0.5) -> torch.Tensor:
    """``b`` factors uniform in ``[low, high]``, each replaced by the identity (1, or 0 when ``low < 0``) with
    probability ``1 - p``."""
    drawn = low + (high - low) * torch.rand(b, generator=gen)
    keep = torch.rand(b, generator=gen) < p
    return torch.where(keep, drawn, torch.full((b,), 0.0 if low < 0 else 1.0))


def _jitter_colours(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter, then brightness / contrast (see :data:`AUGMENTS`), per image, clamped to [0, 1]."""
    from kornia.enhance import adjust_hue, adjust_saturation

    b, dev = img.shape[0], img.device

    def draw(low: float, high: float, p: float = 0.5) -> torch.Tensor:
        return _uniform(gen, b, low, high, p).to(dev, img.dtype)

    on = (torch.rand(b, generator=gen) < 0.5).to(dev)  # whether this image's colour jitter applies (p = 1/2)
    one = torch.ones(b, device=dev, dtype=img.dtype)
    bright, contrast, sat = (torch.where(on, draw(1 - _JITTER, 1 + _JITTER, 1.0), one) for _ in range(3))
    hue = torch.where(on, draw(-_JITTER, _JITTER, 1.0), 0 * one) * 2 * math.pi
    img = (img * bright.view(-1, 1, 1, 1)).clamp(0, 1)
    grey = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (grey + (img - grey) * contrast.view(-1, 1, 1, 1)).clamp(0, 1)
    if img.shape[1] == 3:
        img = adjust_hue(adjust_saturation(img, sat), hue).clamp(0, 1)
    alpha, beta = draw(1 - _JITTER, 1 + _JITTER), draw(-_JITTER, _JITTER)
    return (img * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)).clamp(0, 1)


def rotate_pairs(
    x: torch.Tensor, mask: torch.Tensor | None, angles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate image ``i`` (and its mask) by ``angles[i]`` degrees counter-clockwise about the centre, zero fill,
    with the audit's convention (:func:`equiaudit.transforms.apply_per_row`, bilinear); masks are re-binarised
    at 0.5. Quarter turns of square images are exact."""
    from equiaudit.groups import GroupElement
    from equiaudit.transforms import apply_per_row

    elements = [GroupElement(float(a)) for a in angles.tolist()]
    x = apply_per_row(x, elements)
    if mask is not None:
        mask = (apply_per_row(mask, elements) >= 0.5).to(mask.dtype)
    return x, mask


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    split: str = "test",
    **data_options: Any,
) -> Evaluation:
    """Test metrics of ``model`` on ``data`` (a spec's ``split``, default ``test``), in eval mode.

    The model's training mode is restored afterwards. ``device=None`` keeps the model where it is.
    """
    data = as_data(data, split, **data_options)
    task = _task(data)
    param = next(iter(model.parameters()), None)
    dev = resolve_device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    was_training = model.training
    model.to(dev).eval()
    total_loss, scores = 0.0, []
    try:
        with torch.inference_mode():
            for batch in data.batches(batch_size):
                target = batch.y if task == "classify" else batch.mask
                x, target = batch.x.to(dev), target.to(dev)  # type: ignore[union-attr]
                out = model(x)
                total_loss += float(_loss(out, target, task)) * x.shape[0]
                if task == "classify":
                    scores.append((out.argmax(-1) == target).double().cpu())
                else:
                    mask = target if target.shape[-2:] == out.shape[-2:] else F.interpolate(target, out.shape[-2:])
                    scores.append(iou(binarize(out), mask[:, 0].long(), max(2, out.shape[1])).cpu())
    finally:
        model.train(was_training)
    per_image = torch.cat(scores).numpy()
    n = len(per_image)
    mean = float(per_image.mean())
    return Evaluation(
        task,
        n,
        total_loss / n,
        accuracy=mean if task == "classify" else None,
        iou=mean if task == "segment" else None,
        per_image=per_image,
    )
