"""The SO(2) group CNN of the scale study, built with e2cnn.

``group="c8"`` (default, as e2cnn's own example of a rotation-equivariant CNN): ``gspaces.Rot2dOnR2(8)``, the
8 rotations approximating SO(2), with regular fields, ``InnerBatchNorm`` and ReLU, and group pooling (the maximum
over the 8 rotations) at the end; any ``"cN"`` works the same way. ``group="so2"``: ``Rot2dOnR2(-1,
max_frequency)``, the continuous group itself, every layer's fields ``ψ_0 ⊕ ψ_1 ⊕ ... ⊕ ψ_F`` (its irreducible
representations up to frequency ``F``) normalised by ``GNormBatchNorm`` and passed through norm-ReLUs
(``NormNonLinearity``, which act on each field's norm and so commute with every rotation), norm pooling at the
end (on one CPU core this variant did not learn in 8 epochs with the recipe's settings: loss 2.25). Either way
the invariant map is averaged over space and read by a linear head.

**Exactness:** e2cnn samples its analytically steerable filters on the pixel grid, which quarter turns map onto
itself, so every convolution is exactly C4-equivariant (float rounding); other angles hold up to the filters'
sampling. Each downsampling is a Gaussian blur ('same' size) followed by 2x2 average pooling, whose blocks
quarter turns permute on even sides (28 -> 14 -> 7), so the logits are exactly C4-invariant on 28x28 (a
strided blur would sample positions that are not symmetric about the centre of an even side).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from ..registry import register_model
from .steerable import _e2cnn, _r2conv, _SteerableModel

__all__ = ["SO2CNN"]

# Norm-ReLUs compute relu(|x| - exp(log_bias)); e2cnn starts log_bias at 0, a threshold of 1 that silences most
# fields of a deep stack at initialisation; exp(-2) = 0.14 lets them through.
NORM_RELU_LOG_BIAS = -2.0


def _space(gspaces: Any, group: str, max_frequency: int) -> tuple[Any, bool]:
    """``(gspace, regular)`` of ``group`` ("so2" or "cN")."""
    if group == "so2":
        return gspaces.Rot2dOnR2(-1, maximum_frequency=max_frequency), False
    found = re.fullmatch(r"c(\d+)", group)
    if found is None or int(found.group(1)) < 2:
        raise ValueError(f"SO2CNN group must be 'so2' or 'cN' with N >= 2, got {group!r}")
    return gspaces.Rot2dOnR2(int(found.group(1))), True


def _head(features: int, hidden: int, num_classes: int) -> nn.Module:
    """e2cnn's example head (linear, BatchNorm, ELU, linear: the invariant features are few, one per field), or
    one linear layer when ``hidden`` is 0."""
    if not hidden:
        return nn.Linear(features, num_classes)
    return nn.Sequential(
        nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ELU(inplace=True), nn.Linear(hidden, num_classes)
    )


class SO2CNN(_SteerableModel):
    """Five R2Conv blocks (kernels 7, 5, 5, 5, 5; 'same' padding) with antialiased 2x2 average pooling after the
    second and fourth (28 -> 14 -> 7), an invariant map, global average pooling and a head (:func:`_head`).

    ``widths`` count fields per block: ``cN`` regular fields hold ``N`` channels, ``so2`` fields one copy of every
    irrep up to ``max_frequency`` (``2F + 1`` channels)."""

    _KERNELS = (7, 5, 5, 5, 5)
    _POOL_AFTER = (1, 3)

    def __init__(
        self,
        group: str = "c8",
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (8, 12, 16, 16, 24),
        max_frequency: int = 2,
        fc_hidden: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != len(self._KERNELS):
            raise ValueError(f"SO2CNN needs {len(self._KERNELS)} widths, got {widths}")
        gspaces, enn = _e2cnn()
        gs, regular = _space(gspaces, group, max_frequency)
        field = gs.regular_repr if regular else None
        irreps = None if regular else [gs.irrep(f) for f in range(max_frequency + 1)]
        self.input_type = t = enn.FieldType(gs, in_channels * [gs.trivial_repr])
        layers: list[nn.Module] = []
        for i, (k, width) in enumerate(zip(self._KERNELS, widths, strict=True)):
            out = enn.FieldType(gs, width * [field]) if regular else enn.FieldType(gs, width * irreps)
            layers.append(_r2conv(enn, t, out, k, padding=k // 2, bias=False))
            if regular:
                layers += [enn.InnerBatchNorm(out), enn.ReLU(out, inplace=True)]
            else:
                act = enn.NormNonLinearity(out, "n_relu", bias=True)
                nn.init.constant_(act.log_bias, NORM_RELU_LOG_BIAS)
                layers += [enn.GNormBatchNorm(out), act]
            if i in self._POOL_AFTER:  # a Gaussian blur, then 2x2 blocks: antialiased, and exact under C4 on 28
                layers += [
                    enn.PointwiseAvgPoolAntialiased(out, sigma=0.66, stride=1, padding=2),
                    enn.PointwiseAvgPool(out, 2),
                ]
            t = out
        layers.append(enn.GroupPooling(t) if regular else enn.NormPool(t))
        self.features = enn.SequentialModule(*layers)
        self.head = _head(self.features.out_type.size, fc_hidden, num_classes)
        self._wrap = enn.GeometricTensor
        self._finish_init()

    @property
    def embedding(self) -> str:
        """The module whose output is the last feature map before global pooling (the scale study's layer)."""
        return f"features.{len(self.features._modules) - 1}"

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(self._wrap(x, self.input_type)).tensor
        return self.head(features.mean(dim=(-2, -1)))


@register_model(
    "so2-cnn",
    family="scale",
    description="SO(2) group CNN (e2cnn Rot2dOnR2(8): regular fields of the 8 rotations approximating SO(2), "
    "group pooling; group='so2' for irreducible SO(2) fields); exactly C4-invariant on 28x28",
    task="classify",
    groups=("so2", "c4"),
    exact_groups=("c4",),
    input_shape=(1, 28, 28),
    num_classes=10,
    default_dataset="scale-digits",
    reference="Weiler & Cesa 2019, General E(2)-Equivariant Steerable CNNs; the SO(2) CNN of the scale study",
)
def so2_cnn(
    *,
    tiny: bool = False,
    group: str = "c8",
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, ...] = (8, 12, 16, 16, 24),
    max_frequency: int = 2,
    fc_hidden: int = 64,
) -> SO2CNN:
    if tiny:
        widths = (2,) * 5 if group == "so2" else (1,) * 5  # one regular field is N channels already
        max_frequency, fc_hidden = 1, 0
    return SO2CNN(group, in_channels, num_classes, tuple(widths), max_frequency, fc_hidden)
