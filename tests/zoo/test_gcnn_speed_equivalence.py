"""The fast group convolutions of ``zoo/models/gcnn.py`` (one gathered filter bank and one conv2d per layer,
BatchNorm folded into the bank in eval mode) against a straightforward reference written here: a loop over the
group elements, one conv2d per (output element, input element) pair, with the group law found by acting on an
image. Checked in float64 on random weights, and on the shipped checkpoints in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tolerances import TOLERANCES
from equiaudit.zoo import create
from equiaudit.zoo.models.gcnn import (
    GroupCNN,
    GroupConv2d,
    LiftingConv2d,
    expand_group_kernel,
    expand_lifting_kernel,
)

from equiaudit.data import load_data

GROUPS = ["c4", "d4"]


def elements(group: str) -> list[tuple[int, int]]:
    """``(r, m)`` for ``T = R^r F^m`` (mirror first), in the module's group-axis order ``4·m + r``."""
    return [(r, m) for m in range(2 if group == "d4" else 1) for r in range(4)]


def act(x: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
    r, m = element
    return torch.rot90(torch.flip(x, dims=(-1,)) if m else x, r, dims=(-2, -1))


def act_inverse(x: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
    r, m = element
    y = torch.rot90(x, -r, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if m else y


def inverse_times(group: str) -> list[list[int]]:
    """``table[g][s]`` = index of ``g⁻¹ s``, read off the action on an image no element of D4 leaves alone."""
    els = elements(group)
    probe = torch.arange(9.0).view(3, 3)
    images = [act(probe, e) for e in els]

    def index(image: torch.Tensor) -> int:
        return next(i for i, im in enumerate(images) if torch.equal(im, image))

    return [[index(act_inverse(images[s], g)) for s in range(len(els))] for g in els]


def reference_lifting(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: str, padding: str = "same"
) -> torch.Tensor:
    pad = weight.shape[-1] // 2 if padding == "same" else 0
    return torch.stack([F.conv2d(x, act(weight, g), bias, padding=pad) for g in elements(group)], dim=2)


def reference_group(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: str, padding: str = "same"
) -> torch.Tensor:
    """Output element ``g`` = sum over input elements ``s`` of ``x[s] ⋆ T_g ψ[g⁻¹ s]`` (plus the bias)."""
    pad, table, els = weight.shape[-1] // 2 if padding == "same" else 0, inverse_times(group), elements(group)
    outs = []
    for i, g in enumerate(els):
        y = sum(F.conv2d(x[:, :, s], act(weight[:, :, table[i][s]], g), padding=pad) for s in range(len(els)))
        outs.append(y if bias is None else y + bias.view(1, -1, 1, 1))
    return torch.stack(outs, dim=2)


def reference_forward(model: GroupCNN, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode, unfused: reference convolutions, then BatchNorm with the running statistics."""
    for conv, norm in zip(model.convs, model.norms, strict=True):
        ref = reference_lifting if isinstance(conv, LiftingConv2d) else reference_group
        y = ref(x, conv.weight, conv.bias, conv.group, conv.padding)
        y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        x = F.relu(y)
    pooled = x.amax(dim=2) if model.pool == "max" else x.mean(dim=2)
    return model.head(pooled.mean(dim=(-2, -1)))


def randomise_norms(model: GroupCNN) -> GroupCNN:
    """Running statistics and affine parameters far from the identity, so folding them is really tested."""
    with torch.no_grad():
        for norm in model.norms:
            norm.running_mean.normal_(0.0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_layers_match_the_per_element_loop(group: str, bias: bool, padding: str) -> None:
    torch.manual_seed(0)
    order = len(elements(group))
    lift = LiftingConv2d(group, 2, 3, 5, bias=bias, padding=padding).double()
    conv = GroupConv2d(group, 3, 4, 3, bias=bias, padding=padding).double()
    if bias:  # the init leaves it at a small uniform; make it matter
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 2, 9, 12, dtype=torch.float64)  # not square: 'same' padding on any size
    f = torch.randn(2, 3, order, 9, 12, dtype=torch.float64)
    rtol, atol = TOLERANCES[torch.float64]
    expected = reference_lifting(x, lift.weight, lift.bias, group, padding)
    torch.testing.assert_close(lift(x), expected, rtol=rtol, atol=atol)
    expected = reference_group(f, conv.weight, conv.bias, group, padding)
    torch.testing.assert_close(conv(f), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("group", GROUPS)
def test_filter_banks_hold_every_transformed_filter(group: str) -> None:
    torch.manual_seed(1)
    els, table = elements(group), inverse_times(group)
    w, psi = torch.randn(3, 2, 5, 5), torch.randn(3, 2, len(els), 5, 5)
    lifted = expand_lifting_kernel(w, group).unflatten(0, (3, len(els)))
    bank = expand_group_kernel(psi, group).unflatten(0, (3, len(els))).unflatten(2, (2, len(els)))
    for i, g in enumerate(els):
        assert torch.equal(lifted[:, i], act(w, g))
        for s in range(len(els)):
            assert torch.equal(bank[:, i, :, s], act(psi[:, :, table[i][s]], g))


@pytest.mark.parametrize("group", GROUPS)
def test_gradients_match_the_per_element_loop(group: str) -> None:
    torch.manual_seed(2)
    order = len(elements(group))
    lift, conv = LiftingConv2d(group, 2, 3, 3).double(), GroupConv2d(group, 3, 3, 5).double()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    probe = torch.randn(2, 3, order, 8, 8, dtype=torch.float64)
    params = [lift.weight, lift.bias, conv.weight, conv.bias]
    fast = torch.autograd.grad((conv(lift(x)) * probe).sum(), params)
    h = reference_lifting(x, lift.weight, lift.bias, group)
    ref = torch.autograd.grad((reference_group(h, conv.weight, conv.bias, group) * probe).sum(), params)
    rtol, atol = TOLERANCES[torch.float64]
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(("pool", "padding"), [("max", "same"), ("mean", "same"), ("mean", "valid")])
def test_folded_eval_forward_matches_the_unfused_reference(group: str, pool: str, padding: str) -> None:
    torch.manual_seed(3)
    model = GroupCNN(group, 2, 5, hidden_channels=4, num_hidden=2, kernel_size=3, pool=pool, padding=padding)
    model = randomise_norms(model)
    model = model.double().eval()
    x = torch.randn(3, 2, 11, 11, dtype=torch.float64)
    with torch.no_grad():
        y, ref = model(x), reference_forward(model, x)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)


def test_training_mode_uses_batch_statistics() -> None:
    """Folding is for eval mode only: in training mode the BatchNorms normalise with the batch's statistics."""
    torch.manual_seed(4)
    model = randomise_norms(GroupCNN("c4", hidden_channels=4, num_hidden=1, kernel_size=3)).double().train()
    x = torch.randn(4, 1, 10, 10, dtype=torch.float64)
    y = model(x)
    h = x
    for conv, norm in zip(model.convs, model.norms, strict=True):
        ref = reference_lifting if isinstance(conv, LiftingConv2d) else reference_group
        h = F.relu(F.batch_norm(ref(h, conv.weight, conv.bias, "c4"), None, None, norm.weight, norm.bias, True))
    expected = model.head(h.amax(dim=2).mean(dim=(-2, -1)))
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(y, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_full_size_models_are_exactly_invariant(group: str, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    model = randomise_norms(GroupCNN(group, hidden_channels=16 if group == "c4" else 11)).to(dtype).eval()
    x = torch.randn(2, 1, 28, 28, dtype=dtype)
    rtol, atol = TOLERANCES[dtype]
    with torch.no_grad():
        y = model(x)
        for g in elements(group):
            torch.testing.assert_close(model(act(x, g)), y, rtol=rtol, atol=atol + rtol * y.abs().max().item())


@pytest.mark.parametrize("name", ["gcnn-c4", "gcnn-d4"])
def test_shipped_checkpoints_match_the_reference(name: str) -> None:
    """The shipped weights load as before and the fast float32 forward gives the float64 reference's logits."""
    model = create(name, pretrained=True)
    x = load_data("digits", limit=8).read(0, 8).x
    with torch.no_grad():
        y = model(x)
        ref = reference_forward(create(name, pretrained=True).double(), x.double())
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= 1e-5 * scale
    assert torch.equal(y.argmax(dim=1), ref.argmax(dim=1))


def test_training_works_after_a_first_inference_mode_call() -> None:
    """The cached gather index is made outside inference mode, so a later backward pass can save it."""
    from equiaudit.zoo.models import gcnn

    gcnn._bank_index.cache_clear()
    conv = GroupConv2d("d4", 2, 2, 3)
    x = torch.randn(1, 2, 8, 6, 6)
    with torch.inference_mode():
        conv(x)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
