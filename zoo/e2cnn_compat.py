"""Make e2cnn 0.2.3 (its last release) build and run on NumPy >= 2 and torch 2.x.

Call :func:`apply` once before building any e2cnn module; it is idempotent and cheap after the first call.
Nothing in site-packages is edited: each patch replaces one attribute of one e2cnn module or class, at the
narrowest point that fixes the failure.

=======================================================  ============================================================
e2cnn file / function                                     failure it fixes
=======================================================  ============================================================
``kernels/irreps_basis.py``: ``__hash__`` of               ``ndarray.tostring`` was removed in NumPy 2.3, so building
``R2FlipsSolution``, ``R2ContinuousRotationsSolution``,    any ``R2Conv`` for D_N, SO(2) or O(2) raises
``R2FlipsDiscreteRotationsSolution``,                      ``AttributeError``. Replaced by the same hash computed
``R2FlipsContinuousRotationsSolution``                     with ``tobytes()`` (the bytes are identical).
``kernels/utils.py``: ``psi``, ``chi``, ``psichi``         ``np.array(x, copy=False)`` raises ``ValueError`` on
(public as ``e2cnn.kernels.psi`` etc.)                     NumPy 2 when a copy is needed, i.e. for scalar arguments
                                                           such as ``chi(1)`` (the kernel bases pass arrays). The
                                                           module sees a numpy whose ``array`` maps ``copy=False``
                                                           to NumPy 2's ``copy=None`` (NumPy 1 semantics).
``group/groups/o2group.py``:                               ``np.float`` was removed in NumPy 1.24, so induced O(2)
``O2._induced_from_irrep``                                 representations raise ``AttributeError``. The module
                                                           sees ``np.float`` as the builtin ``float`` it aliased.
``nn/modules/r2_conv/basisexpansion_singleblock.py``:      The basis mask is a uint8 tensor (a PyTorch < 1.2
``SingleBlockBasisExpansion.__init__``                     workaround); torch 2 rejects uint8 masks for blocks with
                                                           one basis element (``masked_fill_ only supports boolean
                                                           masks``) and deprecates them otherwise. The module sees
                                                           ``np.uint8`` as ``bool`` and ``torch.uint8`` as
                                                           ``torch.bool``, so it builds the bool mask torch expects.
``nn/modules/r2_conv/basisexpansion_blocks.py``:          Not a new-library break but an e2cnn bug that a zoo hits:
``block_basisexpansion`` (as imported there)               the cache hands the *same* basis module (and its sampled
                                                           basis buffer) to every R2Conv with that basis, across
                                                           models, so ``.double()`` or ``.to("cuda")`` on one model
                                                           silently converts the others' buffers (dtype / device
                                                           mismatch errors). Each R2Conv now gets a copy of the
                                                           cached module: the basis is still sampled only once.
``nn/modules/r2_conv/basisexpansion_blocks.py``:          ``torch.meshgrid`` without ``indexing`` warns on torch 2
``BlocksBasisExpansion.__init__``                          (fields of one type that are not contiguous) and is to
                                                           become an error. The module sees ``torch.meshgrid`` with
                                                           ``indexing="ij"``, the default it relied on.
``nn/modules/invariantmaps/gpool.py``:                     Not a new-library break but an e2cnn limitation: the
``GroupPooling.forward``                                   output is allocated as float32 whatever the input, so a
                                                           float64 (``.double()``) model fails in its head. The
                                                           replacement allocates the output in the input's dtype.
=======================================================  ============================================================
"""

from __future__ import annotations

import copy
import functools
import importlib
import types
from typing import Any

import numpy as np
import torch

__all__ = ["apply", "is_applied"]

_applied = False


class _ModuleView(types.ModuleType):
    """A library module as seen by one e2cnn module: every name falls through except the overrides."""

    def __init__(self, target: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(target.__name__)
        self.__dict__.update(overrides)
        self._e2cnn_compat_target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._e2cnn_compat_target, name)


def _array_numpy1_copy(obj: Any, *args: Any, copy: bool | None = True, **kwargs: Any) -> np.ndarray:
    # NumPy 1's copy=False meant "copy only if needed", which NumPy 2 spells copy=None.
    return np.array(obj, *args, copy=None if copy is False else copy, **kwargs)


def _hash_with_tobytes(self: Any) -> int:
    """``IrrepBasis.__hash__`` of e2cnn with ``tobytes()`` in place of the removed ``tostring()``."""
    gamma = self.gamma.tobytes() if isinstance(self.gamma, np.ndarray) else self.gamma
    return hash(self.in_irrep) + hash(self.out_irrep) + hash(self.mu.tobytes()) + hash(gamma)


def _unshared_block_basisexpansion(basis: Any, points: Any, basis_filter: Any = None, recompute: bool = False) -> Any:
    """e2cnn's cached ``block_basisexpansion``, returning a private copy of the cached module."""
    from e2cnn.nn.modules.r2_conv import basisexpansion_singleblock

    block = basisexpansion_singleblock.block_basisexpansion(basis, points, basis_filter, recompute=recompute)
    return block if recompute else copy.deepcopy(block)


def _group_pooling_forward(self: Any, input: Any) -> Any:
    """``GroupPooling.forward`` of e2cnn 0.2.3, with the output in the input's dtype instead of float32."""
    from e2cnn.nn import GeometricTensor

    x = input.tensor
    b, _, h, w = x.shape
    output = x.new_empty(self.evaluate_output_shape(x.shape))
    for size, contiguous in self._contiguous.items():
        in_idx, out_idx = getattr(self, f"in_indices_{size}"), getattr(self, f"out_indices_{size}")
        fields = x[:, in_idx[0] : in_idx[1]] if contiguous else x[:, in_idx]
        pooled = fields.view(b, -1, size, h, w).max(dim=2).values
        if contiguous:
            output[:, out_idx[0] : out_idx[1]] = pooled
        else:
            output[:, out_idx] = pooled
    return GeometricTensor(output, self.out_type)


_HASH_CLASSES = (
    "R2FlipsSolution",
    "R2ContinuousRotationsSolution",
    "R2FlipsDiscreteRotationsSolution",
    "R2FlipsContinuousRotationsSolution",
)

# (e2cnn module, name under which it imported the library) -> overridden attributes of that library
_VIEWS: dict[tuple[str, str], dict[str, Any]] = {
    ("e2cnn.kernels.utils", "np"): {"array": _array_numpy1_copy},
    ("e2cnn.group.groups.o2group", "np"): {"float": float},
    ("e2cnn.nn.modules.r2_conv.basisexpansion_singleblock", "np"): {"uint8": bool},
    ("e2cnn.nn.modules.r2_conv.basisexpansion_singleblock", "torch"): {"uint8": torch.bool},
    ("e2cnn.nn.modules.r2_conv.basisexpansion_blocks", "torch"): {
        "meshgrid": functools.partial(torch.meshgrid, indexing="ij")
    },
}


def apply() -> None:
    """Patch the installed e2cnn in memory (idempotent). Imports e2cnn."""
    global _applied
    if _applied:
        return
    irreps_basis = importlib.import_module("e2cnn.kernels.irreps_basis")
    for name in _HASH_CLASSES:
        getattr(irreps_basis, name).__hash__ = _hash_with_tobytes
    importlib.import_module("e2cnn.nn").GroupPooling.forward = _group_pooling_forward
    blocks = importlib.import_module("e2cnn.nn.modules.r2_conv.basisexpansion_blocks")
    blocks.block_basisexpansion = _unshared_block_basisexpansion
    for (module_name, alias), overrides in _VIEWS.items():
        module = importlib.import_module(module_name)
        if not isinstance(getattr(module, alias), _ModuleView):
            setattr(module, alias, _ModuleView(getattr(module, alias), overrides))
    _applied = True


def is_applied() -> bool:
    """Whether :func:`apply` has patched e2cnn in this process."""
    return _applied
