"""Regular group convolutions for the rot90 / flip groups C4 and D4, in plain torch.

**Convention:** a feature map on the group has shape ``(B, C, G, H, W)``; index ``i = 4·m + r`` of the group
axis is the element ``g = R^r F^m`` where ``R = torch.rot90(·, 1, dims=(-2, -1))`` (a quarter turn
counter-clockwise as displayed) and ``F = torch.flip(·, dims=(-1,))`` (left-right mirror), ``F`` applied
first. Transforming the input by ``h`` transforms a group feature map as ``f'[g] = T_h f[h⁻¹ g]``: the spatial
transform plus a permutation of the group axis. Convolutions use odd kernels with 'same' padding or none
('valid', cropping ``k // 2`` pixels on every side); both commute exactly with ``T_h`` on any image size, so the
layers are exactly equivariant (up to float rounding). Pooling over the group and over space at the end gives
exactly invariant logits.

**Speed:** a layer gathers its whole filter bank (every ``T_g``-transformed filter) from its weight with one
cached index and runs one ``conv2d``; in eval mode :class:`GroupCNN` folds each BatchNorm into that bank.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equiaudit.errors import GroupSpecError

from ..registry import register_model

__all__ = [
    "GroupBatchNorm",
    "GroupCNN",
    "GroupConv2d",
    "LiftingConv2d",
    "expand_group_kernel",
    "expand_lifting_kernel",
    "group_elements",
    "group_pool",
    "transform_image",
]

_GROUPS = {"c4": 1, "d4": 2}  # number of mirror states


def group_elements(group: str) -> list[tuple[int, int]]:
    """The elements ``(r, m)`` of ``group`` ("c4" or "d4") in group-axis order."""
    if group not in _GROUPS:
        raise GroupSpecError(f"group convolutions support 'c4' and 'd4', got {group!r}")
    return [(r, m) for m in range(_GROUPS[group]) for r in range(4)]


def transform_image(x: Tensor, element: tuple[int, int]) -> Tensor:
    """``T_g x = R^r F^m x`` on the last two axes (see the module convention)."""
    r, m = element
    if m:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, r, dims=(-2, -1))


def _compose(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    # R^r1 F^m1 R^r2 F^m2 = R^(r1 + (-1)^m1 r2) F^(m1 + m2), since F R F = R^-1.
    return ((a[0] + (-1) ** a[1] * b[0]) % 4, (a[1] + b[1]) % 2)


def _inverse(a: tuple[int, int]) -> tuple[int, int]:
    return ((-a[0]) % 4, 0) if a[1] == 0 else a


@cache
def _inverse_times_table(group: str) -> tuple[tuple[int, ...], ...]:
    """``table[g][s]`` = index of ``g⁻¹ s``."""
    els = group_elements(group)
    index = {e: i for i, e in enumerate(els)}
    return tuple(tuple(index[_compose(_inverse(g), s)] for s in els) for g in els)


def _lifting_bank(weight: Tensor, group: str) -> Tensor:
    # The straightforward construction; on an index tensor it gives the gather that :func:`_bank_index` caches.
    stacked = torch.stack([transform_image(weight, g) for g in group_elements(group)], dim=1)
    return stacked.flatten(0, 1)


def _group_bank(weight: Tensor, group: str) -> Tensor:
    table = _inverse_times_table(group)
    per_g = [transform_image(weight[:, :, list(table[i])], g) for i, g in enumerate(group_elements(group))]
    return torch.stack(per_g, dim=1).flatten(0, 1).flatten(1, 2)


@lru_cache(maxsize=64)
def _bank_index(group: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Where each entry of the filter bank of a ``shape`` weight comes from in ``weight.flatten()``.

    The bank only rotates, flips and permutes entries of the weight, so building it is one gather (one
    ``index_select``, also on the backward pass) instead of a rot90 / flip / index per group element.
    """
    with torch.inference_mode(False):  # cached, so it must stay usable by autograd after a first inference call
        positions = torch.arange(math.prod(shape)).view(shape)
        return (_lifting_bank if len(shape) == 4 else _group_bank)(positions, group).contiguous().to(device)


def _bank(weight: Tensor, group: str) -> Tensor:
    """The filter bank of a lifting (4-D) or group-conv (5-D) ``weight`` (see ``expand_*_kernel``), one gather."""
    index = _bank_index(group, tuple(weight.shape), weight.device)
    return weight.flatten().index_select(0, index.flatten()).view(index.shape)


def expand_lifting_kernel(weight: Tensor, group: str) -> Tensor:
    """``(C_out, C_in, k, k)`` -> conv2d weight ``(C_out·G, C_in, k, k)`` holding ``T_g w`` for every ``g``."""
    return _bank(weight, group)


def expand_group_kernel(weight: Tensor, group: str) -> Tensor:
    """``(C_out, C_in, G, k, k)`` -> conv2d weight ``(C_out·G, C_in·G, k, k)``: output ``g`` sees
    ``T_g ψ[g⁻¹ s]`` on input element ``s``."""
    return _bank(weight, group)


def _repeat_bias(bias: Tensor | None, order: int) -> Tensor | None:
    return None if bias is None else bias.repeat_interleave(order)


_PADDINGS = ("same", "valid")


class _GroupConvBase(nn.Module):
    def __init__(
        self, group: str, kernel_shape: tuple[int, ...], out_channels: int, bias: bool, padding: str = "same"
    ) -> None:
        if kernel_shape[-1] % 2 == 0:
            raise ValueError("group convolutions need an odd kernel_size for exact equivariance")
        if padding not in _PADDINGS:
            raise ValueError(f"group convolution padding must be one of {_PADDINGS}, got {padding!r}")
        super().__init__()
        self.group, self.padding = group, padding
        self.order = len(group_elements(group))
        self.weight = nn.Parameter(torch.empty(out_channels, *kernel_shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = math.prod(kernel_shape)
        nn.init.kaiming_uniform_(self.weight.view(out_channels, fan_in), a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        shape = tuple(self.weight.shape)
        return f"group={self.group}, weight={shape}, bias={self.bias is not None}, padding={self.padding}"

    def forward(self, x: Tensor, affine: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``affine = (scale, shift)`` per output channel folds ``y·scale + shift`` into the filter bank."""
        weight, bias = self.weight, self.bias
        if affine is not None:
            scale, shift = affine
            weight = weight * scale.view(-1, *(1,) * (weight.dim() - 1))
            bias = shift if bias is None else torch.addcmul(shift, bias, scale)
        # One conv2d with the whole bank; flatten(1, -3) merges (C_in, G) of a group feature map.
        bank = _bank(weight, self.group)
        pad = bank.shape[-1] // 2 if self.padding == "same" else 0
        y = F.conv2d(x.flatten(1, -3), bank, _repeat_bias(bias, self.order), padding=pad)
        return y.unflatten(1, (-1, self.order))


class LiftingConv2d(_GroupConvBase):
    """Image ``(B, C_in, H, W)`` -> group feature map ``(B, C_out, G, H, W)``; ``padding`` "same" keeps the
    size, "valid" (no padding) crops ``kernel_size // 2`` pixels on each side."""

    def __init__(
        self,
        group: str,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        padding: str = "same",
    ) -> None:
        super().__init__(group, (in_channels, kernel_size, kernel_size), out_channels, bias, padding)


class GroupConv2d(_GroupConvBase):
    """Group feature map ``(B, C_in, G, H, W)`` -> ``(B, C_out, G, H, W)``; ``padding`` as for
    :class:`LiftingConv2d`."""

    def __init__(
        self,
        group: str,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        padding: str = "same",
    ) -> None:
        order = len(group_elements(group))
        super().__init__(group, (in_channels, order, kernel_size, kernel_size), out_channels, bias, padding)


class GroupBatchNorm(nn.BatchNorm3d):
    """BatchNorm on ``(B, C, G, H, W)`` with statistics shared over the group axis (so it stays equivariant)."""

    def folded(self) -> tuple[Tensor, Tensor] | None:
        """``(scale, shift)`` per channel with ``self(y) = y·scale + shift`` where that holds (eval mode with
        running statistics), else None."""
        if self.training or self.running_mean is None or self.running_var is None:
            return None
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        return scale, shift if self.bias is None else shift + self.bias


_POOLS = ("max", "mean")


def _check_pool(mode: str) -> str:
    if mode not in _POOLS:
        raise ValueError(f"group pooling mode must be one of {_POOLS}, got {mode!r}")
    return mode


def group_pool(x: Tensor, mode: str = "max") -> Tensor:
    """``(B, C, G, H, W)`` -> ``(B, C, H, W)``: invariant pooling over the group axis (``mode`` max or mean)."""
    return x.amax(dim=2) if _check_pool(mode) == "max" else x.mean(dim=2)


class GroupCNN(nn.Module):
    """Lifting convolution, ``num_hidden`` group convolutions (group BatchNorm + ReLU after each), pooling over
    the group (``pool``: max or mean) and then over space, linear head: exactly invariant logits for ``group``.

    ``padding`` "valid" is the published design (UvA tutorial): each convolution crops ``kernel_size // 2``
    pixels per side (28x28 -> 8x8 after five 5x5 convolutions): 3.6x fewer multiply-adds in the group
    convolutions of gcnn-c4 than "same".
    """

    def __init__(
        self,
        group: str = "c4",
        in_channels: int = 1,
        num_classes: int = 10,
        hidden_channels: int = 16,
        num_hidden: int = 4,
        kernel_size: int = 5,
        pool: str = "max",
        padding: str = "same",
    ) -> None:
        super().__init__()
        self.pool = _check_pool(pool)
        convs: list[nn.Module] = [LiftingConv2d(group, in_channels, hidden_channels, kernel_size, padding=padding)]
        convs += [
            GroupConv2d(group, hidden_channels, hidden_channels, kernel_size, padding=padding)
            for _ in range(num_hidden)
        ]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(GroupBatchNorm(hidden_channels) for _ in convs)
        self.head = nn.Linear(hidden_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            affine = norm.folded()
            # In eval mode the BatchNorm is folded into the filter bank: one pass less over the feature map.
            x = F.relu(norm(conv(x)) if affine is None else conv(x, affine), inplace=True)
        return self.head(group_pool(x, self.pool).mean(dim=(-2, -1)))


_COMMON = dict(
    family="gcnn",
    task="classify",
    input_shape=(1, 28, 28),
    num_classes=10,
    default_dataset="rot-digits",
    reference="UvA DL tutorial 'GDL - Regular Group Convolutions'; Cohen & Welling 2016, Group Equivariant CNNs",
)


def _build(
    group: str,
    tiny: bool,
    in_channels: int,
    num_classes: int,
    hidden_channels: int,
    num_hidden: int,
    kernel_size: int,
    pool: str,
    padding: str = "same",
) -> GroupCNN:
    if tiny:
        hidden_channels, num_hidden = 2, 1
    return GroupCNN(group, in_channels, num_classes, hidden_channels, num_hidden, kernel_size, pool, padding)


@register_model(
    "gcnn-c4",
    description="C4 group CNN from scratch as published (lifting + 4 group convs of 16 channels, kernel 5, no "
    "padding; mean over rotations and space, linear head), exactly C4-invariant",
    groups=("c4",),
    exact_groups=("c4",),
    **_COMMON,
)
def gcnn_c4(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 16,
    num_hidden: int = 4,
    kernel_size: int = 5,
    pool: str = "mean",
    padding: str = "valid",
) -> GroupCNN:
    return _build("c4", tiny, in_channels, num_classes, hidden_channels, num_hidden, kernel_size, pool, padding)


@register_model(
    "gcnn-d4",
    description="D4 group CNN from scratch (lifting + 4 group convs of 11 channels, kernel 5), exactly D4-invariant",
    groups=("d4", "c4", "flip", "vflip"),
    exact_groups=("d4", "c4", "flip", "vflip"),
    **_COMMON,
)
def gcnn_d4(
    *,
    tiny: bool = False,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden_channels: int = 11,
    num_hidden: int = 4,
    kernel_size: int = 5,
    pool: str = "max",
) -> GroupCNN:
    # Group-conv parameters grow as channels² x |G|: 11² x 8 is about 16² x 4, the parameter count of gcnn-c4.
    return _build("d4", tiny, in_channels, num_classes, hidden_channels, num_hidden, kernel_size, pool)
