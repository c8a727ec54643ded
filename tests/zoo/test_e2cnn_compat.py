"""e2cnn 0.2.3 on today's NumPy / torch through equiaudit.zoo.e2cnn_compat."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _tolerances import TOLERANCES
from equiaudit.zoo import e2cnn_compat

e2cnn_compat.apply()

from e2cnn import gspaces, kernels  # noqa: E402
from e2cnn import nn as enn  # noqa: E402
from e2cnn.group import o2_group  # noqa: E402

# Each case fails on the unpatched e2cnn under the library versions that broke it.
_REPRO = r"""
import json, sys, warnings
import numpy as np, torch
from e2cnn import gspaces, kernels, nn as enn
from e2cnn.group import o2_group

def conv(gs, out_reprs, k=5):
    t_in = enn.FieldType(gs, [gs.trivial_repr])
    c = enn.R2Conv(t_in, enn.FieldType(gs, out_reprs), k)
    return c(enn.GeometricTensor(torch.randn(1, 1, 9, 9), t_in))

cases = {
    "tostring": lambda: conv(gspaces.FlipRot2dOnR2(4), [gspaces.FlipRot2dOnR2(4).regular_repr]),
    "copy_false": lambda: kernels.chi(1),
    "np_float": lambda: o2_group().induced_representation((None, -1), o2_group().subgroup((None, -1))[0].irrep(1)),
    "uint8_mask": lambda: conv(gspaces.Rot2dOnR2(4), [gspaces.Rot2dOnR2(4).trivial_repr], k=1),
}
out = {}
for name, fn in cases.items():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        out[name] = "ok"
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e).splitlines()[0]
print(json.dumps(out))
"""


def _np_version() -> tuple[int, int]:
    return tuple(int(p) for p in np.__version__.split(".")[:2])


def test_unpatched_e2cnn_fails_as_documented() -> None:
    """The failures each patch exists for, reproduced on the untouched e2cnn in a fresh process."""
    run = subprocess.run([sys.executable, "-c", _REPRO], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {
        "tostring": ("tostring" if _np_version() >= (2, 3) else None),
        "copy_false": ("Unable to avoid copy" if _np_version() >= (2, 0) else None),
        "np_float": ("float" if _np_version() >= (1, 24) else None),
        "uint8_mask": ("boolean masks" if int(torch.__version__.split(".")[0]) >= 2 else None),
    }
    for case, fragment in expected.items():
        if fragment is None:
            assert result[case] == "ok", case
        else:
            assert fragment in result[case], f"{case}: {result[case]}"


def test_apply_is_idempotent() -> None:
    from e2cnn.kernels import utils
    from e2cnn.nn.modules.r2_conv import basisexpansion_blocks

    views = utils.np
    pooling, block_factory = enn.GroupPooling.forward, basisexpansion_blocks.block_basisexpansion
    e2cnn_compat.apply()
    e2cnn_compat.apply()
    assert e2cnn_compat.is_applied()
    assert utils.np is views and isinstance(views, e2cnn_compat._ModuleView)
    assert enn.GroupPooling.forward is pooling
    assert basisexpansion_blocks.block_basisexpansion is block_factory


def _gspace(name: str):
    return {
        "c8": lambda: gspaces.Rot2dOnR2(8),
        "d4": lambda: gspaces.FlipRot2dOnR2(4),
        "so2": lambda: gspaces.Rot2dOnR2(-1, maximum_frequency=4),
        "o2": lambda: gspaces.FlipRot2dOnR2(-1, maximum_frequency=4),
    }[name]()


def _model(gs) -> enn.EquivariantModule:
    """Two R2Convs with a non-linearity, ending in a non-trivial field type (so equivariance, not invariance,
    is checked)."""
    t_in = enn.FieldType(gs, [gs.trivial_repr])
    if gs.fibergroup.order() > 0:
        hidden = enn.FieldType(gs, 3 * [gs.regular_repr])
        nonlin = enn.ReLU(hidden)
    else:  # continuous groups: the lowest irreps, with a norm non-linearity
        irreps = list(gs.fibergroup.irreps.values())[:4]
        hidden = enn.FieldType(gs, 2 * irreps)
        nonlin = enn.NormNonLinearity(hidden)
    out = enn.FieldType(gs, hidden.representations[:4])
    return enn.SequentialModule(
        enn.R2Conv(t_in, hidden, 5, padding=2), nonlin, enn.R2Conv(hidden, out, 3, padding=1)
    ).eval()


def _quarter_turn_elements(gs) -> list:
    """The elements acting as quarter turns and mirrors, which e2cnn applies to images with rot90 / flips."""
    g = gs.fibergroup
    if g.order() < 0:  # SO(2): angles; O(2): (flip, angle)
        rotations = [k * math.pi / 2 for k in range(4)]
    else:  # C_N: rotation index; D_N: (flip, rotation index)
        n = getattr(g, "rotation_order", g.order())
        rotations = [k * n // 4 for k in range(4)]
    if isinstance(gs, gspaces.FlipRot2dOnR2):
        return [(f, r) for f in (0, 1) for r in rotations][1:]
    return rotations[1:]


@pytest.mark.parametrize("group", ["c8", "d4", "so2", "o2"])
def test_r2conv_models_build_run_and_are_equivariant(group: str) -> None:
    torch.manual_seed(0)
    gs = _gspace(group)
    model = _model(gs)
    x = enn.GeometricTensor(torch.randn(2, 1, 17, 17), model.in_type)
    with torch.no_grad():
        y = model(x)
        assert y.tensor.shape == (2, model.out_type.size, 17, 17)
        assert torch.isfinite(y.tensor).all()
        elements = _quarter_turn_elements(gs)
        assert elements
        for g in elements:
            err = (model(x.transform(g)).tensor - y.transform(g).tensor).abs().max().item()
            rtol, atol = TOLERANCES[torch.float32]
            assert err <= atol + rtol * y.tensor.abs().max().item(), (group, g, err)
            # a broken model would also "pass" if every output were ~0
            assert y.tensor.abs().max() > 1e-3


def test_induced_o2_representation_is_a_representation() -> None:
    o2 = o2_group()
    so2 = o2.subgroup((None, -1))[0]
    rep = o2.induced_representation((None, -1), so2.irrep(1))
    assert rep.size == 2 * so2.irrep(1).size
    elements = [(0, 0.3), (1, 1.1), (1, -2.0), (0, 2.5)]
    for a in elements:
        assert np.allclose(rep(a) @ rep(a).T, np.eye(rep.size), atol=1e-9)  # orthogonal
        for b in elements:
            assert np.allclose(rep(o2.combine(a, b)), rep(a) @ rep(b), atol=1e-9)  # homomorphism


def test_kernel_helpers_accept_scalars() -> None:
    theta = 0.7
    rot = kernels.psi(np.array([theta]), k=1)[..., 0, 0]
    assert np.allclose(rot, [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    assert np.allclose(kernels.chi(1)[..., 0, 0], np.diag([1.0, -1.0]))
    assert np.allclose(kernels.psichi(np.array([theta]), s=0, k=1)[..., 0, 0], rot)


def test_single_element_basis_uses_a_bool_mask_without_warnings() -> None:
    gs = gspaces.Rot2dOnR2(4)
    t = enn.FieldType(gs, [gs.trivial_repr])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv = enn.R2Conv(t, t, 1)
        y = conv(enn.GeometricTensor(torch.randn(1, 1, 5, 5), t))
    block = next(m for m in conv.modules() if hasattr(m, "_mask"))
    assert block._mask.dtype == torch.bool
    assert y.shape == (1, 1, 5, 5)


def test_basis_modules_are_not_shared_between_models() -> None:
    gs = gspaces.Rot2dOnR2(8)
    t_in, t_out = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    a, b = enn.R2Conv(t_in, t_out, 5), enn.R2Conv(t_in, t_out, 5)
    assert not {id(m) for m in a.basisexpansion.modules()} & {id(m) for m in b.basisexpansion.modules()}
    a.double()
    x = torch.randn(1, 1, 9, 9)
    assert b(enn.GeometricTensor(x, t_in)).tensor.dtype == torch.float32
    assert a(enn.GeometricTensor(x.double(), t_in)).tensor.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_pooling_keeps_dtype_and_takes_the_field_max(dtype: torch.dtype) -> None:
    gs = gspaces.Rot2dOnR2(4)
    t = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr, gs.regular_repr])  # non-contiguous sizes
    x = torch.randn(2, t.size, 3, 3, dtype=dtype)
    y = enn.GroupPooling(t)(enn.GeometricTensor(x, t)).tensor
    expected = torch.stack([x[:, 0:4].amax(1), x[:, 4], x[:, 5:9].amax(1)], dim=1)
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_non_contiguous_fields_build_without_warnings() -> None:
    gs = gspaces.Rot2dOnR2(4)
    t_in = enn.FieldType(gs, [gs.trivial_repr])
    t_out = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr, gs.regular_repr])  # regular fields apart
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv = enn.R2Conv(t_in, t_out, 3)
    assert conv(enn.GeometricTensor(torch.randn(1, 1, 5, 5), t_in)).shape == (1, 9, 3, 3)
