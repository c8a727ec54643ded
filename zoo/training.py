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

__all__ = ["Evaluation", "TrainResult", "as_data", "evaluate", "progress_bars", "seed_everything", "train"]

# progress(step, total_steps, info) with info = {"epoch": 1-based epoch, "loss": running mean of this epoch}
TrainProgress = Callable[[int, int, dict[str, float]], None]
WARMUP_FRACTION = 0.05


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
        device: ``None`` / ``auto`` picks CUDA when present.
        progress: called after every step with ``(step, total_steps, {"epoch", "loss"})``.
    """
    _check_settings(epochs, batch_size, lr, augment_rotation)
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
) -> list[float]:
    """The optimisation loop of :func:`train`: ``epochs`` passes of ``per_epoch`` batches, each pass in a new
    order drawn from ``gen``; leaves ``model`` in eval mode and returns the mean loss of each epoch."""
    total = per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total))
    losses: list[float] = []
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=gen)
        running, seen = 0.0, 0
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, target = x_all[idx].to(device), t_all[idx].to(device)
            if augment_rotation > 0:
                x, target = _rotate(x, target, augment_rotation, task)
            loss = _loss(model(x), target, task)
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
            seen += len(idx)
            step += 1
            if progress is not None:
                progress(step, total, {"epoch": epoch + 1, "loss": running / seen})
        losses.append(running / seen)
    model.eval()
    return losses


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
