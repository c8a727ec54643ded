"""equiaudit.testing: measuring (equivariance_error), judging (tolerances, budgets) and asserting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equiaudit.engine import audit
from equiaudit.errors import EquiauditError, GroupSpecError, InputMismatchError
from equiaudit.testing import (
    BASELINE_RTOL,
    FLOAT_TOLERANCE,
    Tolerance,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    equivariance_error,
    parse_max_error,
)


class Plain(nn.Module):
    """A small CNN classifier with no symmetry."""

    def __init__(self, in_channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head((h * torch.linspace(0, 1, h.shape[-1], dtype=h.dtype)).mean((-2, -1)))


class Averaged(nn.Module):
    """Logits averaged over the rot90s (and mirrors with ``d4``): exactly invariant under c4 (d4)."""

    def __init__(self, base: nn.Module, d4: bool = False) -> None:
        super().__init__()
        self.base, self.d4 = base, d4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
        views += [torch.flip(v, (-1,)) for v in views] if self.d4 else []
        return torch.stack([self.base(v) for v in views]).mean(0)


class Bump(nn.Module):
    """Dense: ``x`` plus a fixed one-pixel bump at ``(y, x)``, so equivariance breaks at known pixels."""

    def __init__(self, y: int, x: int, size: int = 12) -> None:
        super().__init__()
        bump = torch.zeros(1, size, size)
        bump[0, y, x] = 1.0
        self.register_buffer("bump", bump)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bump.to(x.dtype)


class Readout(nn.Module):
    """Logits ``[sum(x), x[y, x]]``: logit 0 is invariant under c4, logit 1 is not."""

    def __init__(self, y: int, x: int) -> None:
        super().__init__()
        self.y, self.x = y, x
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.stack([x.sum((1, 2, 3)), x[:, 0, self.y, self.x]], dim=1)


def _reference_invariance_error(model: nn.Module, x: torch.Tensor, k: int) -> float:
    """Max over images of ||c(f(rot90^k x)) - c(f(x))|| / ||c(f(x))|| with torch.rot90 (counter-clockwise as
    shown); ``c`` subtracts the mean logit, which a softmax ignores."""
    with torch.no_grad():
        ref, out = model(x), model(torch.rot90(x, k, (-2, -1)))
    ref, out = ref - ref.mean(1, keepdim=True), out - out.mean(1, keepdim=True)
    return float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())


# ---- tolerances -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, Tolerance()),
        ("floor", Tolerance()),
        ("Within Floor", Tolerance()),
        ("2x floor", Tolerance(factor=2.0)),
        ("0.5 x floor", Tolerance(factor=0.5)),
        ("3*floor", Tolerance(factor=3.0)),
        ("1.5X Floor", Tolerance(factor=1.5)),
        (0.01, Tolerance(absolute=0.01)),
        (0, Tolerance(absolute=0.0)),
        ("1e-3", Tolerance(absolute=1e-3)),
    ],
)
def test_parse_max_error_accepts(value: object, expected: Tolerance) -> None:
    assert parse_max_error(value) == expected


@pytest.mark.parametrize("value", ["two x floor", "floors", "2x", -1.0, float("nan"), True, [1.0], "x floor"])
def test_parse_max_error_rejects(value: object) -> None:
    with pytest.raises(EquiauditError, match="max_error"):
        parse_max_error(value)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_tolerance_limits(dtype_name: str) -> None:
    slack = FLOAT_TOLERANCE[dtype_name]
    floor_rule = parse_max_error("3x floor")
    assert floor_rule.limit(0.1, dtype_name) == pytest.approx(0.3 + slack, rel=1e-12)
    assert floor_rule.limit(0.0, dtype_name) == slack  # exact elements: round-off only
    assert parse_max_error(0.25).limit(0.1, dtype_name) == 0.25  # absolute: floor ignored
    assert FLOAT_TOLERANCE["float64"] < FLOAT_TOLERANCE["float32"]


# ---- measuring ------------------------------------------------------------------------------------------


def test_error_matches_independent_reference(dtype: torch.dtype, tol: dict[str, float]) -> None:
    """The per-element maximum equals ||c(f(g x)) - c(f(x))|| / ||c(f(x))|| computed with torch.rot90 directly."""
    model = Plain().to(dtype)
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = equivariance_error(model, "c4", x.to(torch.float32), locate=False)
    xs = x.to(torch.float32).to(dtype)
    for label, k in (("rot90", 1), ("rot180", 2), ("rot-90", 3)):
        reference = _reference_invariance_error(model, xs, k)
        assert report[label].error == pytest.approx(reference, rel=tol["rtol"], abs=tol["atol"])
    assert report["identity"].error == 0.0
    assert report.mode == "invariant" and report.dtype == str(dtype).replace("torch.", "")


def test_error_is_the_audit_numbers() -> None:
    """One implementation: the report carries audit's *_max and floor_max columns unchanged."""
    model = Averaged(Plain())
    report = equivariance_error(model, "so2:8", locate=False)
    frame = audit(model, "digits", "so2:8", limit=16, task="classify").elements
    assert [e.label for e in report.elements] == list(frame["label"])
    assert [e.error for e in report.elements] == pytest.approx(list(frame["invariance_error_max"]), rel=1e-6)
    assert [e.floor for e in report.elements] == pytest.approx(list(frame["floor_max"]), rel=1e-6)
    assert [e.error_mean for e in report.elements] == pytest.approx(list(frame["invariance_error"]), rel=1e-6)


@pytest.mark.parametrize(("group", "d4"), [("c4", False), ("d4", True)])
def test_averaged_model_within_float_tolerance(dtype: torch.dtype, group: str, d4: bool) -> None:
    model = Averaged(Plain(), d4=d4)
    report = equivariance_error(model, group, dtype=dtype, locate=False)
    name = str(dtype).replace("torch.", "")
    assert report.dtype == name
    assert all(e.exact and e.floor == 0.0 for e in report.elements)
    assert 0.0 <= report.max_error < FLOAT_TOLERANCE[name]


def test_plain_model_is_far_from_invariant() -> None:
    report = equivariance_error(Plain(), "c4", locate=False)
    assert report.max_error > 1e-2
    assert report.worst.label != "identity"


def test_location_of_a_dense_error() -> None:
    """A bump at (2, 5) breaks rot90 equivariance at the bump and where rot90 moves it; the image with the
    smallest output norm has the largest relative error."""
    model = Bump(2, 5)
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2)) + 0.5
    x[1] *= 0.1
    report = equivariance_error(model, "c4", x, task="dense", mask="none")
    where = report["rot90"].where
    assert where is not None and where.image == 1
    bump = model.bump[0]
    undone = torch.rot90(bump, -1)  # g^-1 applied to the bump the model adds after the rotation
    diff = (undone - bump).abs()
    expected = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    assert where.index == (0, *expected)
    assert where.output - where.reference == pytest.approx(float(undone[expected] - bump[expected]), abs=1e-6)
    assert report["identity"].where is not None and report["identity"].error == 0.0


def test_location_of_a_logit_error() -> None:
    model = Readout(3, 7)
    x = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    report = equivariance_error(model, "c4", x)
    with torch.no_grad():
        ref, out = model(x), model(torch.rot90(x, 1, (-2, -1)))
    image = int(((out - ref).norm(dim=1) / ref.norm(dim=1)).argmax())
    where = report["rot90"].where
    assert where is not None and (where.image, where.index) == (image, (1,))
    assert where.output == pytest.approx(float(out[image, 1]), rel=1e-6)
    assert where.reference == pytest.approx(float(ref[image, 1]), rel=1e-6)
    assert "logit 1" in str(where)


@pytest.mark.parametrize(
    ("input_shape", "expected"),
    [
        (None, "16 shipped digits 1x28x28"),
        ((3, 32, 32), "16 shipped digits 3x32x32"),
        ((2, 16, 16), "8 band-limited noise images 2x16x16"),
        ((1, 16, 20), "8 band-limited noise images 1x16x20"),
    ],
)
def test_default_inputs(input_shape: tuple[int, int, int] | None, expected: str) -> None:
    report = equivariance_error(nn.Identity(), "c4", input_shape=input_shape, locate=False)
    assert report.inputs.startswith(expected)
    data = report.result.data
    assert tuple(data.input_shape) == (input_shape or (1, 28, 28))
    assert report.mode == "equivariant"
    # The identity map's error is at most its floor (0 on square images; round-off when 90 degrees samples).
    assert all(e.error <= e.floor + FLOAT_TOLERANCE["float32"] for e in report.elements)


def test_default_inputs_follow_the_first_convolution() -> None:
    report = equivariance_error(Averaged(Plain(in_channels=3)), "c4", locate=False)
    assert report.inputs == "16 shipped digits 3x28x28"


def test_given_inputs_are_used_and_named() -> None:
    x = torch.rand(3, 2, 10, 10)
    report = equivariance_error(nn.Identity(), "c4", x, locate=False)
    assert report.inputs == "3 given images 2x10x10"
    assert report.result.data.count == 3


def test_default_inputs_that_do_not_fit_say_how_to_fix_it() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(InputMismatchError, match=r"input_shape=\(C, H, W\)"):
        equivariance_error(model, "c4")
    assert equivariance_error(model, "c4", input_shape=(3, 8, 8), locate=False).mode == "invariant"


def test_bad_arguments_raise_equiaudit_errors() -> None:
    with pytest.raises(GroupSpecError):
        equivariance_error(Plain(), "c 4")
    with pytest.raises(EquiauditError, match="unknown task"):
        equivariance_error(Plain(), "c4", task="sideways")
    with pytest.raises(EquiauditError, match="inputs must be"):
        equivariance_error(Plain(), "c4", inputs=[1, 2, 3])


def test_model_state_is_restored() -> None:
    model = Plain()
    model.train()
    model.conv.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = equivariance_error(model, "c4", dtype=torch.float64, locate=True)
    assert report.dtype == "float64"
    assert next(model.parameters()).dtype == torch.float32
    assert model.training and not model.conv.training and model.head.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# ---- asserting ------------------------------------------------------------------------------------------


def test_assert_invariant_passes_and_returns_the_report() -> None:
    report = assert_invariant(Averaged(Plain(), d4=True), "d4")
    assert len(report.elements) == 8 and report.mode == "invariant"


def test_assert_invariant_fails_with_one_line_per_failing_element() -> None:
    with pytest.raises(AssertionError) as info:
        assert_invariant(Plain(), "c4")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("Plain: not invariant under c4 within tolerance (3 of 4 elements fail; float32")
    assert "inputs: 16 shipped digits 1x28x28" in lines[0]
    assert len(lines) == 4
    for line, label in zip(lines[1:], ("rot90", "rot180", "rot-90"), strict=True):
        assert line.strip().startswith(f"{label}: error ")
        assert "floor 0, tolerance 1e-05 (float32 round-off, exact element); max at image " in line
        assert ", logit " in line


def test_mixed_group_holds_exact_elements_to_float_precision() -> None:
    """The identity map's error equals the floor: it passes 2x floor and fails 0.5x floor on the interpolated
    elements only; at 0x floor a C4-averaged classifier fails so2:8 on the interpolated elements only."""
    report = assert_equivariant(nn.Identity(), "so2:8", dtype=torch.float64)
    for e in report.elements:
        assert e.error == pytest.approx(e.floor, rel=1e-9, abs=1e-15)
    with pytest.raises(AssertionError) as info:
        assert_equivariant(nn.Identity(), "so2:8", max_error="0.5x floor", dtype=torch.float64)
    failing = [line.split(":")[0].strip() for line in str(info.value).splitlines()[1:]]
    assert failing == ["rot45", "rot135", "rot-135", "rot-45"]
    _, failures = check_equivariance(Averaged(Plain()), "so2:8", max_error="0x floor", locate=False)
    assert {f.element.label for f in failures} == {"rot45", "rot135", "rot-135", "rot-45"}


def test_absolute_max_error_applies_to_every_element() -> None:
    report, failures = check_equivariance(Plain(), "c4", max_error=10.0, locate=False)
    assert not failures
    worst = report.max_error
    _, failures = check_equivariance(Plain(), "c4", max_error=worst * 0.99, locate=False)
    largest = max(report.elements, key=lambda e: e.error)  # the element with the largest single error
    assert [f.element.label for f in failures] == [largest.label]
    assert failures[0].limit == worst * 0.99


def test_budgets() -> None:
    model = Plain()
    report, failures = check_equivariance(model, "c4", max_error=10.0, locate=False)
    assert not failures
    errors = report.errors()
    # Budgets at the measured errors hold; 10 % lower ones fail on every element with a real error.
    _, failures = check_equivariance(model, "c4", max_error=10.0, budgets=errors, locate=False)
    assert not failures
    lower = {k: v / (1 + 2 * BASELINE_RTOL) for k, v in errors.items()}
    _, failures = check_equivariance(model, "c4", max_error=10.0, budgets=lower)
    assert {f.element.label for f in failures} == {"rot90", "rot180", "rot-90"}
    assert all(f.kind == "baseline" and f.element.where is not None for f in failures)
    f = failures[0]
    assert f.limit == pytest.approx(lower[f.element.label] * (1 + BASELINE_RTOL) + FLOAT_TOLERANCE["float32"])
    assert "baseline budget" in f.line()


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="groop"):
        check_equivariance(Plain(), "c4", groop="d4")


def test_nan_error_fails() -> None:
    class Nan(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) * math.nan

    with pytest.raises(InputMismatchError, match="NaN"):
        assert_invariant(Nan(), "c4")


def test_helper_frames_are_hidden(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from torch import nn
        from equiaudit.testing import assert_invariant

        class Tilted(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.linspace(0, 1, 8))
            def forward(self, x):
                return x.mean(-2).squeeze(1) * self.w

        def test_tilted():
            assert_invariant(Tilted(), "c4", torch.rand(2, 1, 8, 8))
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert_invariant(Tilted(), *", "E   *AssertionError: Tilted: not invariant*"])
    assert "testing.py" not in result.stdout.str()
