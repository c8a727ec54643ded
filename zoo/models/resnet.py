"""torchvision's wide_resnet50_2 with a new head, for transfer learning (the flowers study)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from equiaudit.errors import ModelLoadError

from ..registry import register_model

__all__ = ["load_backbone_weights"]


def load_backbone_weights(model: nn.Module, weights_path: str | Path) -> None:
    """Load a user-supplied state dict (``torch.load(weights_only=True)``) into ``model``; the ``fc`` head may
    be absent or of any size (it is replaced afterwards). Anything else that does not fit is an error."""
    path = Path(weights_path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ModelLoadError(
                f"{path}: torch.load(weights_only=True) refuses the global {found[1]}; "
                "save the weights as a plain state_dict of tensors"
            ) from None
        raise ModelLoadError(f"cannot read weights file {path}: not a torch checkpoint") from None
    except Exception as e:  # zip / IO errors of torch.load have no common base class
        raise ModelLoadError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ModelLoadError(f"{path} does not fit the model: {detail}") from None
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"{path} does not fit the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )


@register_model(
    "wide-resnet50-2",
    family="resnet",
    description="torchvision wide_resnet50_2 (68.9M parameters) with a new num_classes head; weights_path loads "
    "user-supplied backbone weights (nothing is downloaded)",
    task="classify",
    groups=(),
    exact_groups=(),
    input_shape=(3, 224, 224),
    num_classes=104,
    default_dataset="flowers",
    reference="Zagoruyko & Komodakis 2016, Wide Residual Networks (torchvision); the flowers transfer-learning study",
    cpu_trainable=False,
)
def wide_resnet50_2(
    *, tiny: bool = False, in_channels: int = 3, num_classes: int = 104, weights_path: str | Path | None = None
) -> nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.resnet import wide_resnet50_2 as build

    # tiny: one bottleneck per stage at a quarter of the bottleneck width (3.5M parameters)
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16) if tiny else build(weights=None)
    if weights_path is not None:
        load_backbone_weights(model, weights_path)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
