"""Plain CNN baselines: no symmetry built in."""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import register_model

__all__ = ["PlainCNN"]


class PlainCNN(nn.Module):
    """``1 + num_hidden`` convolutions (``kernel_size``, 'same' padding) with BatchNorm and ReLU, global average
    pooling and a linear head: the "normal CNN" of the UvA group-convolution tutorial."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_channels: int = 32,
        num_hidden: int = 4,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(1 + num_hidden):
            layers += [
                nn.Conv2d(
                    in_channels if i == 0 else hidden_channels, hidden_channels, kernel_size, padding=kernel_size // 2
                ),
                nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


_COMMON = dict(
    family="cnn",
    task="classify",
    groups=(),
    exact_groups=(),
    input_shape=(1, 28, 28),
    num_classes=10,
)


@register_model(
    "cnn",
    description="Plain CNN baseline (5 conv layers of 32 channels, kernel 5), parameters matched to gcnn-c4",
    default_dataset="rot-digits",
    reference="UvA DL tutorial 'GDL - Regular Group Convolutions' (CNN with twice the hidden channels)",
    **_COMMON,
)
def cnn(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 32,
    num_hidden: int = 4,
    kernel_size: int = 5,
) -> PlainCNN:
    if tiny:
        hidden_channels, num_hidden = 4, 1
    return PlainCNN(in_channels, num_classes, hidden_channels, num_hidden, kernel_size)
