"""torchvision's wide_resnet50_2 with a new head, for transfer learning (the flowers study), and its scaled-down
variants (every width a parameter) for the offline blossoms study."""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from equiaudit.errors import ModelLoadError

from ..registry import register_model

__all__ = ["load_backbone_weights", "wide_resnet"]


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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.cache
def _wide_resnet_class() -> type[nn.Module]:
    """The class behind :func:`wide_resnet`, made on first use (importing torchvision takes seconds)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    class WideResNet(ResNet):
        """torchvision's bottleneck ResNet with every width scalable: stage ``i`` has ``planes * 2**i`` planes
        (torchvision: 64) and bottlenecks ``width_per_group / 64`` times as wide (wide_resnet50_2: 128). At the
        torchvision widths the modules and state-dict keys are torchvision's, so its weights load.

        ``imagenet_normalise`` standardises the input with ImageNet's mean and std inside the model (for
        ImageNet weights fed images in [0, 1])."""

        def __init__(
            self,
            layers: Sequence[int] = (3, 4, 6, 3),
            planes: int = 64,
            width_per_group: int = 128,
            num_classes: int = 104,
            in_channels: int = 3,
            imagenet_normalise: bool = False,
        ) -> None:
            nn.Module.__init__(self)
            self._norm_layer, self.inplanes, self.dilation = nn.BatchNorm2d, planes, 1
            self.groups, self.base_width = 1, width_per_group
            self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(Bottleneck, planes, layers[0])
            self.layer2 = self._make_layer(Bottleneck, planes * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(Bottleneck, planes * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(Bottleneck, planes * 8, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(planes * 8 * Bottleneck.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            self.imagenet_normalise = imagenet_normalise
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        def forward(self, x: Tensor) -> Tensor:
            if self.imagenet_normalise:
                x = (x - self.mean) / self.std
            return self._forward_impl(x)

    return WideResNet


def wide_resnet(
    layers: Sequence[int] = (3, 4, 6, 3),
    planes: int = 64,
    width_per_group: int = 128,
    num_classes: int = 104,
    in_channels: int = 3,
    imagenet_normalise: bool = False,
) -> nn.Module:
    """torchvision's bottleneck ResNet with every width scalable (see ``WideResNet`` inside): at the defaults,
    wide_resnet50_2 with its torchvision module names."""
    return _wide_resnet_class()(tuple(layers), planes, width_per_group, num_classes, in_channels, imagenet_normalise)


@register_model(
    "wide-resnet50-2",
    family="resnet",
    description="torchvision wide_resnet50_2 (68.9M parameters) with a new num_classes head; weights_path loads "
    "user-supplied backbone weights (nothing is downloaded); planes / width_per_group scale it down",
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
    *,
    tiny: bool = False,
    in_channels: int = 3,
    num_classes: int = 104,
    weights_path: str | Path | None = None,
    planes: int = 64,
    width_per_group: int = 128,
    layers: tuple[int, ...] = (3, 4, 6, 3),
    imagenet_normalise: bool = False,
    train_head_only: bool = False,
) -> nn.Module:
    """``planes`` 16 is the study's reduced width (a quarter of every width: 4.2M parameters);
    ``train_head_only`` freezes everything but ``fc`` (transfer learning); ``tiny``: one bottleneck per stage,
    8 planes, bottlenecks of width 8 (for tests)."""
    if tiny:
        layers, planes, width_per_group = (1, 1, 1, 1), 8, 8
    model = wide_resnet(layers, planes, width_per_group, num_classes, 3, imagenet_normalise)
    if weights_path is not None:
        load_backbone_weights(model, weights_path)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, planes, kernel_size=7, stride=2, padding=3, bias=False)
    if train_head_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("fc."))
    return model
