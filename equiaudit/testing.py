"""Equivariance assertions for test suites: measure with :func:`equivariance_error`, assert with
:func:`assert_invariant` / :func:`assert_equivariant`. The pytest plugin's ``equivariance`` fixture uses the
same functions, and all of them measure through :func:`equiaudit.audit` (one pass, one implementation of the
metrics).

Errors are relative: ``||c(f(g x)) - c(f(x))|| / ||c(f(x))||`` per image for invariant outputs (``c``: logits
centred over the classes, so a constant added to every logit changes nothing) and
``||g^-1 f(g x) - f(x)|| / ||f(x)||`` inside the compared region for equivariant (dense) outputs. The floor is
in the same units: the change of the output when the input (classifiers) or the output (dense models) is only
resampled there and back.

Tolerances (``max_error``):

* ``"floor"`` (the default): an element holds when its **mean** error over the inputs is within its floor's
  confidence interval (at most the upper bound of the interval of the mean floor, a bootstrap over the
  images) plus :data:`FLOAT_TOLERANCE` of the dtype. This is a calibrated rule, not a fixed multiple: it accepts
  1x1 and isotropic convolutions at every angle and rejects a random 7x7 convolution at every angle from 5
  degrees (tested). Exact elements (quarter turns, flips) have a floor of 0 and are held to float precision
  on their largest error.
* ``"Kx floor"``: an element's **largest** error may reach ``K`` times its largest floor plus the float
  tolerance.
* a number: the same absolute limit on every element's largest error, exact ones included.

Measured (CPU, 16 shipped digits, untrained models; the largest error over the elements of ``c4`` / ``d4``,
float32 / float64): C4-averaged ResNet-18 1.2e-7 / 2.1e-16, D4-averaged ResNet-18 1.5e-7 / 2.7e-16, C4 and D4
group CNNs 4e-8 / 1e-16. Under ``so2:8`` / ``so2:16`` (bilinear, floor about 0.11), e2cnn C8 and C16
steerable classifiers reach 0.16-0.46x floor, the identity map (dense) exactly 1x floor, C4-averaged CNNs
2.3-5.7x floor.

On CUDA, TF32 is switched off while a check runs (it keeps 10 mantissa bits, far from float32 round-off) and
restored afterwards.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import EquiauditError, InputMismatchError
from .roundoff import FLOAT_TOLERANCE

if TYPE_CHECKING:
    from torch import nn

    from .data import AuditData
    from .groups import Group
    from .loading import LoadedModel
    from .observers import Location
    from .result import AuditResult

__all__ = [
    "BASELINE_RTOL",
    "DEFAULT_MAX_ERROR",
    "FLOAT_TOLERANCE",
    "ElementError",
    "EquivarianceReport",
    "Failure",
    "Location",
    "Tolerance",
    "assert_equivariant",
    "assert_invariant",
    "check_equivariance",
    "equivariance_error",
    "float_tolerance",
    "format_failure",
    "parse_max_error",
    "record_checks",
    "recorded_checks",
]

DEFAULT_MAX_ERROR = "floor"
# A baseline budget b allows b * (1 + BASELINE_RTOL) + FLOAT_TOLERANCE[dtype]: errors move by round-off
# between machines and library versions (a few 1e-7 in float32), far below 5 %; a real regression more.
BASELINE_RTOL = 0.05
DEFAULT_COUNT = 16  # shipped digits used when no inputs are given
NOISE_COUNT = 8  # band-limited noise images when the digits cannot take the input shape
_FLOOR_RE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*[x×*]\s*floor", re.IGNORECASE)


# ---- tolerances --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How an element is judged. ``Tolerance()`` (``"floor"``, the default): its mean error is within its
    floor's confidence interval (at most the interval's upper bound) + the dtype's float tolerance; ``factor``:
    its largest error is at most ``factor`` x its largest floor + the float tolerance; ``absolute``: its
    largest error is at most that number. Exact elements (floor 0) are held to the float tolerance by the floor
    rules."""

    factor: float | None = None
    absolute: float | None = None

    @property
    def interval(self) -> bool:
        return self.factor is None and self.absolute is None

    def limit(self, floor: float, dtype: str) -> float:
        """The limit for an element whose floor (the upper bound of its interval for the default rule) is
        ``floor``."""
        if self.absolute is not None:
            return self.absolute
        return (1.0 if self.factor is None else self.factor) * floor + float_tolerance(dtype)

    def judged(self, e: ElementError, dtype: str) -> tuple[float, float]:
        """``(value, limit)`` of element ``e``: it holds when value <= limit."""
        if self.interval and not e.exact:
            return e.error_mean, self.limit(e.floor_high, dtype)
        return e.error, self.limit(e.floor, dtype)

    def explain(self, dtype: str, exact: bool) -> str:
        if self.absolute is not None:
            return "max_error"
        if exact:
            return f"{dtype} round-off, exact element"
        if self.interval:
            return f"mean error within the floor's interval: its upper bound + {float_tolerance(dtype):g}"
        return f"{self.factor:g}x floor + {float_tolerance(dtype):g}"

    def __str__(self) -> str:
        if self.absolute is not None:
            return f"{self.absolute:g}"
        return "floor" if self.interval else f"{self.factor:g}x floor"


def float_tolerance(dtype: str) -> float:
    """The round-off tolerance of a dtype name (``float32``...); unknown names get the float32 value."""
    return FLOAT_TOLERANCE.get(dtype.replace("torch.", ""), FLOAT_TOLERANCE["float32"])


def parse_max_error(value: str | float | Tolerance | None) -> Tolerance:
    """``None`` (the default ``"floor"``), ``"floor"``, ``"Kx floor"``, or a non-negative number (or its
    string)."""
    if value is None:
        value = DEFAULT_MAX_ERROR
    if isinstance(value, Tolerance):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise EquiauditError(f"max_error must be a number or 'Kx floor', got {type(value).__name__}")
    if isinstance(value, str):
        if value.strip().lower() in ("floor", "within floor"):
            return Tolerance()
        m = _FLOOR_RE.fullmatch(value.strip())
        if m:
            return Tolerance(factor=float(m[1]))
        try:
            value = float(value)
        except ValueError:
            raise EquiauditError(f"max_error {value!r} is neither a number nor 'Kx floor' (e.g. '2x floor')") from None
    if not value >= 0:  # also rejects NaN
        raise EquiauditError(f"max_error must be >= 0, got {value!r}")
    return Tolerance(absolute=float(value))


# ---- what a measurement returns ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementError:
    """One element's numbers: ``error`` (max over the inputs, the asserted value), its mean, and the floor."""

    label: str
    exact: bool
    error: float
    error_mean: float
    floor: float
    floor_mean: float
    where: Location | None = None
    floor_high: float = float("nan")  # upper bound of the mean floor's confidence interval


@dataclass(frozen=True)
class EquivarianceReport:
    """What :func:`equivariance_error` measured, per element, with the full :class:`AuditResult` behind it."""

    group: str
    mode: str  # invariant | equivariant
    dtype: str
    device: str
    inputs: str  # which inputs were used, in words
    elements: tuple[ElementError, ...]
    result: AuditResult = field(repr=False, compare=False)

    def __getitem__(self, label: str) -> ElementError:
        for e in self.elements:
            if e.label == label:
                return e
        raise KeyError(f"no element {label!r}; elements: {', '.join(e.label for e in self.elements)}")

    @property
    def worst(self) -> ElementError:
        """The worst element by the rule used everywhere (CLI, JSON, report): the largest mean error among the
        non-identity elements (the identity only if it is the sole element), ties to the first in group order."""
        return max(self._measured, key=lambda e: e.error_mean)  # max() keeps the first of equal keys

    @property
    def max_error(self) -> float:
        """The largest error over the elements and the inputs."""
        return max(e.error for e in self._measured)

    @property
    def _measured(self) -> list[ElementError]:
        """Every element but the identity (all of them when it is alone)."""
        return [e for e in self.elements if e.label != "identity"] or list(self.elements)

    def errors(self) -> dict[str, float]:
        """``{label: error}`` (max over the inputs), in group order."""
        return {e.label: e.error for e in self.elements}

    def __str__(self) -> str:
        head = f"{self.mode} under {self.group} ({self.dtype} on {self.device}; inputs: {self.inputs})"
        rows = [
            f"  {e.label:>16}  error {e.error:.3e} (mean {e.error_mean:.3e})  floor {e.floor:.3e}"
            for e in self.elements
        ]
        return "\n".join([head, *rows])


@dataclass(frozen=True)
class Failure:
    """An element above its limit: ``kind`` is ``tolerance`` or ``baseline``, ``rule`` how it was set."""

    element: ElementError
    limit: float
    rule: str
    kind: str = "tolerance"

    def line(self) -> str:
        e = self.element
        name = "baseline budget" if self.kind == "baseline" else "tolerance"
        interval = e.floor_high == e.floor_high and not e.exact  # not NaN: the floor has an interval
        floor = f"floor {e.floor:.3g}" + (
            f" (mean {e.floor_mean:.3g}, interval up to {e.floor_high:.3g})" if interval else ""
        )
        text = (
            f"{e.label}: error {e.error:.4g} (mean {e.error_mean:.3g}), {floor}, {name} {self.limit:.4g} ({self.rule})"
        )
        return text + (f"; max at {e.where}" if e.where is not None else "")


# ---- measuring ---------------------------------------------------------------------------------------------


def _input_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        c = getattr(m, "in_channels", None)
        if isinstance(c, int):
            return c
    return None


def _default_data(module: nn.Module, input_shape: Sequence[int] | None) -> tuple[AuditData, str]:
    from .data import load_data

    c, h, w = tuple(input_shape) if input_shape is not None else (_input_channels(module) or 1, 28, 28)
    if c in (1, 3) and h == w:
        data = load_data(
            "digits", limit=DEFAULT_COUNT, input_size=None if h == 28 else h, channels=None if c == 1 else c
        )
        return data, f"{len(data)} shipped digits {c}x{h}x{w}"
    data = load_data("noise", input_shape=(c, h, w), limit=NOISE_COUNT)
    return data, f"{len(data)} band-limited noise images {c}x{h}x{w} (digits cannot take this shape)"


def _as_data(inputs: Any, module: nn.Module, input_shape: Sequence[int] | None) -> tuple[AuditData, str, bool]:
    """The data to measure on, a description for messages, and whether it is the default."""
    import torch

    from .data import AuditData, load_data

    if inputs is None:
        return (*_default_data(module, input_shape), True)
    if isinstance(inputs, torch.Tensor):
        data = AuditData.from_tensors(inputs, spec="inputs")
        c, h, w = data.input_shape
        return data, f"{len(data)} given images {c}x{h}x{w}", False
    if isinstance(inputs, AuditData):
        return inputs, f"{len(inputs)} images of {inputs.spec!r}", False
    if isinstance(inputs, str):
        size = channels = None
        if input_shape is not None:
            channels, size = input_shape[0], (input_shape[1], input_shape[2])
        data = load_data(inputs, limit=DEFAULT_COUNT, input_size=size, channels=channels, input_shape=input_shape)
        return data, f"{len(data)} images of {inputs!r}", False
    raise EquiauditError(
        f"inputs must be a tensor (N, C, H, W), a data spec string or AuditData; got {type(inputs).__name__}"
    )


@contextlib.contextmanager
def _prepared(model: Any, device: Any, dtype: Any) -> Iterator[tuple[LoadedModel, Any, Any]]:
    """Load ``model`` (a module stays the same object) and afterwards put a module back on
    its device, dtype and train/eval modes (the audit moves it in place and sets eval mode)."""
    import torch

    from .loading import LoadedModel, load_model

    own = isinstance(model, torch.nn.Module)
    param = next(iter(model.parameters()), None) if own else None
    before = (param.device, param.dtype) if param is not None else None
    modes = {m: m.training for m in model.modules()} if own else {}
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(model, device=_module_device(model) if own else device or "auto")
    module = loaded.module
    try:  # TF32: the audit sets it for its --precision (fp32: off) and restores it (equiaudit.precision)
        yield loaded, device if device is not None else _module_device(module), dtype
    finally:
        after = next(iter(module.parameters()), None)
        if before is not None and after is not None and (after.device, after.dtype) != before:
            module.to(device=before[0], dtype=before[1])
        for m, mode in modes.items():
            m.training = mode


def _module_device(module: nn.Module) -> Any:
    import torch

    param = next(iter(module.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _measure(loaded: LoadedModel, inputs: Any, input_shape: Any, spec_options: dict[str, Any]) -> EquivarianceReport:
    from .engine import audit
    from .spec import AuditSpec

    spec = AuditSpec.from_options("equivariance_error()", **{"samples": 0, **spec_options})
    data, described, default = _as_data(inputs, loaded.module, input_shape)
    try:
        result = audit(loaded, data, spec=spec)
    except InputMismatchError as exc:
        if not default:
            raise
        raise InputMismatchError(f"{exc}; pass inputs= or input_shape=(C, H, W)") from None
    task = result.task
    elements = _element_errors(result.elements.to_dict(orient="records"), task)
    if result.probe is not None:  # --probe noise: its elements enter the checks, named as such
        rows = [r for r in result.probe["elements"] if r["label"] != "identity"]
        elements += _element_errors(rows, task, " on noise")
    if result.search is not None:  # search="random:K" / "refine": each method's per-image worst elements
        elements += _search_errors(result.search, spec.confidence)
    mode = "invariant" if task == "classify" else "equivariant"
    return EquivarianceReport(spec.group, mode, result.run.dtype, result.run.device, described, elements, result)


def _element_errors(rows: Sequence[Mapping[str, Any]], task: str, suffix: str = "") -> tuple[ElementError, ...]:
    metric = "invariance_error" if task == "classify" else "equivariance_error"
    return tuple(
        ElementError(
            str(row["label"]) + suffix,
            bool(row["exact"]),
            float(row[f"{metric}_max"]),
            float(row[metric]),
            float(row["floor_max"]),
            float(row["floor"]),
            floor_high=float(row.get("floor_high", row["floor"])),
        )
        for row in rows
    )


def _search_errors(search: Mapping[str, Any], confidence: float) -> tuple[ElementError, ...]:
    """One judged entry per search beyond the grid, labelled ``worst of <method>``: the invariance error under
    each image's worst element (max and mean over the images) against that element's own floor."""
    import numpy as np

    from .intervals import bootstrap_mean

    out = []
    for method, cols in search["worst"].items():
        if method == "grid":  # the grid's elements are judged one by one already
            continue
        err, floor = np.asarray(cols["chosen_error"], float), np.asarray(cols["floor"], float)
        high = float(bootstrap_mean(floor[:, None], confidence)[1][0])
        out.append(
            ElementError(
                f"worst of {method}",
                False,
                float(err.max()),
                float(err.mean()),
                float(floor.max()),
                float(floor.mean()),
                floor_high=high,
            )
        )
    return tuple(out)


def _with_locations(report: EquivarianceReport, labels: Sequence[str] | None = None) -> EquivarianceReport:
    """The report with each element's (or each of ``labels``') worst image and output entry, as the engine's
    locator observed them in the same pass."""
    from .observers import Location

    found = list(report.result.locations or [])
    found += [None] * (len(report.elements) - len(found))  # the noise probe's elements have none
    elements = []
    for e, loc in zip(report.elements, found, strict=True):
        if loc is not None and (labels is None or e.label in labels):
            where = Location(loc["image"], tuple(loc["index"]), loc["output"], loc["reference"], loc["error"])
            e = replace(e, where=where)
        elements.append(e)
    return replace(report, elements=tuple(elements))


def equivariance_error(
    model: Any,
    group: str | Group = "c4",
    inputs: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    locate: bool = True,
    **options: Any,
) -> EquivarianceReport:
    """Measure how far ``model`` is from invariant / equivariant under every element of ``group``.

    Args:
        model: an ``nn.Module`` (left on its device, dtype and modes afterwards), a source such as
            ``"zoo:NAME"`` or a path (see :func:`equiaudit.loading.load_model`).
        group: a group spec (see :mod:`equiaudit.groups`).
        inputs: ``None`` (16 shipped digits at ``input_shape``, or band-limited noise when digits cannot take
            the shape), a tensor ``(N, C, H, W)`` / ``(N, H, W)``, a data spec string or an ``AuditData``.
        input_shape: ``(C, H, W)`` of the default inputs (default: the first convolution's channels, 28x28).
        locate: attach where in the output each element's largest error is (measured in the same pass).
        options: :class:`~equiaudit.spec.AuditSpec` options (``steps``, ``task``: ``classify`` for invariant
            logits, ``dense`` for equivariant maps or ``auto``; ``interpolation``, ``padding``, ``mask``,
            ``batch_size``, ``device``, ``dtype``...; ``None`` device / dtype: the model's own).

    Returns:
        Per element the error (max and mean over the inputs), the interpolation floor and, with ``locate``,
        the image and output entry of the largest error.
    """
    options = {"group": group, **options}
    with _prepared(model, options.get("device"), options.get("dtype")) as (loaded, dev, dt):
        report = _measure(loaded, inputs, input_shape, {**options, "device": dev, "dtype": dt})
    return _with_locations(report) if locate else report


# ---- asserting ---------------------------------------------------------------------------------------------


def _failures(report: EquivarianceReport, tolerance: Tolerance, budgets: Mapping[str, float] | None) -> list[Failure]:
    out = []
    slack = float_tolerance(report.dtype)
    for e in report.elements:
        value, limit = tolerance.judged(e, report.dtype)
        if not value <= limit:  # NaN fails
            out.append(Failure(e, limit, tolerance.explain(report.dtype, e.exact)))
            continue
        budget = None if budgets is None else budgets.get(e.label)
        if budget is not None:
            allowed = budget * (1 + BASELINE_RTOL) + slack
            if not e.error <= allowed:
                out.append(
                    Failure(e, allowed, f"recorded {budget:.4g} x {1 + BASELINE_RTOL:g} + {slack:g}", "baseline")
                )
    return out


def check_equivariance(
    model: Any,
    group: str | Group = "c4",
    inputs: Any = None,
    *,
    max_error: str | float | Tolerance | None = None,
    budgets: Mapping[str, float] | None = None,
    **options: Any,
) -> tuple[EquivarianceReport, list[Failure]]:
    """Measure (as :func:`equivariance_error`, ``options`` are its keywords) and judge each element against
    ``max_error`` and, when given, per-element ``budgets`` (a recorded baseline). Failing elements carry where
    their largest error is. Returns the report and the failures (empty when every element holds)."""
    tolerance = parse_max_error(max_error)
    locate = options.pop("locate", True)
    report = equivariance_error(model, group, inputs, locate=False, **options)
    failures = _failures(report, tolerance, budgets)
    if failures and locate:
        report = _with_locations(report, [f.element.label for f in failures])
        failures = [replace(f, element=report[f.element.label]) for f in failures]
    return report, failures


def format_failure(
    report: EquivarianceReport, failures: Sequence[Failure], subject: str, hint: str | None = None
) -> str:
    """The assertion message: what was checked, then one line per failing element, then ``hint``."""
    kinds = {f.kind for f in failures}
    what = "baseline budget" if kinds == {"baseline"} else "tolerance"
    lines = [
        f"{subject}: not {report.mode} under {report.group} within {what} ({len(failures)} of "
        f"{len(report.elements)} elements fail; {report.dtype} on {report.device}; inputs: {report.inputs})"
    ]
    lines += [f"  {f.line()}" for f in failures]
    lines += _layer_lines(report)
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def _layer_lines(report: EquivarianceReport) -> list[str]:
    """With ``layers``: which layer breaks first (see :func:`equiaudit.layers.breaking_lines`)."""
    from .layers import breaking_lines

    return breaking_lines(getattr(report.result, "layers", None))


def _subject(model: Any) -> str:
    return f"model {model!r}" if isinstance(model, str) else type(model).__name__


# ---- what the assert helpers checked (the pytest plugin's session report reads it) ------------------------


@dataclass(frozen=True)
class RecordedCheck:
    """One call of :func:`assert_invariant` / :func:`assert_equivariant` made while recording was on."""

    helper: str  # assert_invariant | assert_equivariant
    report: EquivarianceReport
    failures: tuple[Failure, ...]
    max_error: str  # the tolerance as parsed (``floor``, ``8x floor``, ``10``)

    @property
    def passed(self) -> bool:
        return not self.failures


_recorded: list[RecordedCheck] | None = None  # None: not recording (the default: nothing is kept)


def record_checks(enabled: bool = True) -> None:
    """Start (or, with ``False``, stop) keeping every check the assert helpers make. The pytest plugin turns
    this on for ``--equiaudit-report`` and collects the checks of each test with :func:`recorded_checks`."""
    global _recorded
    _recorded = [] if enabled else None


def recorded_checks() -> list[RecordedCheck]:
    """The checks kept since the last call, in order; they are forgotten here (empty when not recording)."""
    if _recorded is None:
        return []
    taken = list(_recorded)
    _recorded.clear()
    return taken


def _assert(
    model: Any, group: str | Group, inputs: Any, task: str, max_error: Any, options: dict[str, Any]
) -> EquivarianceReport:
    __tracebackhide__ = True
    report, failures = check_equivariance(model, group, inputs, max_error=max_error, task=task, **options)
    if _recorded is not None:
        helper = "assert_invariant" if task == "classify" else "assert_equivariant"
        _recorded.append(RecordedCheck(helper, report, tuple(failures), str(parse_max_error(max_error))))
    if failures:
        raise AssertionError(format_failure(report, failures, _subject(model)))
    return report


def assert_invariant(
    model: Any,
    group: str | Group = "c4",
    inputs: Any = None,
    *,
    max_error: str | float | Tolerance | None = None,
    **options: Any,
) -> EquivarianceReport:
    """Fail (``AssertionError``, one line per failing element) unless the logits of ``model`` are invariant
    under ``group`` within ``max_error`` (default ``"floor"``); ``options`` as
    :func:`equivariance_error`."""
    __tracebackhide__ = True
    return _assert(model, group, inputs, "classify", max_error, options)


def assert_equivariant(
    model: Any,
    group: str | Group = "c4",
    inputs: Any = None,
    *,
    max_error: str | float | Tolerance | None = None,
    **options: Any,
) -> EquivarianceReport:
    """Fail unless the dense outputs of ``model`` are equivariant under ``group`` within ``max_error``
    (default ``"floor"``); ``options`` as :func:`equivariance_error`."""
    __tracebackhide__ = True
    return _assert(model, group, inputs, "dense", max_error, options)


def __getattr__(name: str) -> Any:
    if name == "Location":  # lazily: importing this module imports no torch (the pytest plugin imports it)
        from .observers import Location

        return Location
    raise AttributeError(f"module 'equiaudit.testing' has no attribute {name!r}")
