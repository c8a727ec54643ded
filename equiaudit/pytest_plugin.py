"""pytest plugin: the ``equivariance`` fixture, the ``equivariance`` marker and the ``--equiaudit-*`` options.

Loaded through the ``pytest11`` entry point. Importing it imports no torch, numpy or pandas: they load on the
first check, so projects that never use the fixture start as fast as before.

Usage::

    def test_c4(equivariance):
        equivariance.check(MyModel(), group="c4")

    @pytest.mark.equivariance(group="so2:36", max_error="2x floor")   # defaults for this test's checks
    def test_rotations(equivariance, model):
        equivariance.check(model)

Options (group ``equiaudit``):

``--equiaudit-device``
    ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a missing CUDA skips the check.
``--equiaudit-dtype``
    ``auto`` (the model's own), ``float32`` or ``float64``.
``--equiaudit-report PATH``
    one HTML page of every check in the session (``equiaudit.reports.write_session_report``): checks of the
    ``equivariance`` fixture and of ``assert_invariant`` / ``assert_equivariant``, each shown with the
    outcome pytest gave it under its own ``max_error``, invariant and equivariant checks in a section each;
    with a JSON summary of every check (its test, whether it passed, its ``max_error``, its failure lines and
    its result) beside it (``<stem>.checks.json``; a ``.json`` PATH gets the summary alone).
``--equiaudit-baseline PATH``
    a JSON file of per-element error budgets keyed by test id (``<node id>#N`` for a test's N-th check,
    N >= 2).
    A check fails when an element's error exceeds its budget x (1 + ``BASELINE_RTOL``, 5 %) + the dtype's
    round-off tolerance, or when the entry was recorded for another group, mode or dtype.
``--equiaudit-update-baseline``
    record the current errors as the budgets (in PATH, default ``<rootdir>/equivariance-baseline.json``),
    merged into the file under a lock file and written atomically, so pytest-xdist workers do not clobber
    each other.
    Entries of tests that did not run are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import EquiauditError

if TYPE_CHECKING:
    from .result import AuditResult
    from .testing import EquivarianceReport

# Marker and check() keywords besides the AuditSpec fields (see marker_keys()).
CHECK_KEYS = ("max_error", "input_shape")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DTYPES = ("auto", "float32", "float64")
DEFAULT_BASELINE = "equivariance-baseline.json"
BASELINE_KIND = "pytest-baseline"
BASELINE_SCHEMA = 1
LOCK_TIMEOUT_S = 120.0  # how long to wait for another process's lock
LOCK_STALE_S = 60.0  # a lock file older than this is left over from a killed run and is taken over


# ---- marker arguments --------------------------------------------------------------------------------------


def marker_keys() -> tuple[str, ...]:
    """The keywords of the marker and of ``check()``: every AuditSpec field, ``max_error`` and ``input_shape``.
    (A function, so that importing the plugin imports no torch.)"""
    from .spec import SPEC_FIELDS

    return (*SPEC_FIELDS, *CHECK_KEYS)


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the keywords of the marker or of ``check()`` (the spec validates its own); ``None`` values are
    dropped."""
    from .spec import SPEC_FIELDS, AuditSpec

    keys = marker_keys()
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise EquiauditError(f"unknown keyword(s) {', '.join(map(repr, unknown))}; valid: {', '.join(keys)}")
    out = {k: v for k, v in options.items() if v is not None}
    AuditSpec(**{k: v for k, v in out.items() if k in SPEC_FIELDS})
    if "max_error" in out:
        from .testing import parse_max_error

        parse_max_error(out["max_error"])
    if "input_shape" in out:
        shape = out["input_shape"]
        ok = not isinstance(shape, str) and isinstance(shape, Sequence) and len(shape) == 3
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
            raise EquiauditError(f"input_shape must be (C, H, W) of positive integers, got {shape!r}")
        out["input_shape"] = tuple(shape)
    return out


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    """The merged ``equivariance`` markers of an item (the closest wins), validated."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers("equivariance"))):
        if len(mark.args) > 1:
            raise EquiauditError(f"takes at most one positional argument (the group), got {len(mark.args)}")
        kwargs = dict(mark.kwargs)
        if mark.args:
            if "group" in kwargs:
                raise EquiauditError("got the group both as a positional and as a keyword argument")
            kwargs["group"] = mark.args[0]
        merged.update(kwargs)
    return validate_options(merged)


# ---- session state -----------------------------------------------------------------------------------------


@dataclass
class _Check:
    name: str
    passed: bool
    result: AuditResult | None = None
    path: str | None = None  # where an xdist worker saved the result
    max_error: str = "floor"  # the check's own tolerance, as parsed
    failures: list[str] = field(default_factory=list)  # pytest's lines for what failed
    via: str = "fixture"  # fixture | assert_invariant | assert_equivariant

    def to_worker(self, path: str) -> dict[str, Any]:
        """What an xdist worker hands to the controller (plain JSON-able values)."""
        return {
            "name": self.name,
            "passed": self.passed,
            "path": path,
            "max_error": self.max_error,
            "failures": list(self.failures),
            "via": self.via,
        }

    @classmethod
    def from_worker(cls, doc: Any) -> _Check:
        """A check an xdist worker handed over (see :meth:`to_worker`)."""
        return cls(
            doc["name"],
            doc["passed"],
            path=doc["path"],
            max_error=doc.get("max_error", "floor"),
            failures=list(doc.get("failures", [])),
            via=doc.get("via", "fixture"),
        )


@dataclass
class _State:
    device: str
    dtype: str | None
    report: Path | None
    baseline: Path | None
    baseline_arg: str | None  # as the user typed it, for messages
    update: bool
    entries: dict[str, dict] = field(default_factory=dict)
    pending: dict[str, dict] = field(default_factory=dict)
    checks: list[_Check] = field(default_factory=list)
    recorded: int = 0
    missing: list[str] = field(default_factory=list)  # checks without a baseline entry
    errors: list[str] = field(default_factory=list)  # baseline or report writing that failed
    messages: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def comparing(self) -> bool:
        return self.baseline is not None and not self.update

    def update_hint(self) -> str:
        path = f"--equiaudit-baseline={self.baseline_arg} " if self.baseline_arg else ""
        return f"If this change is intended, run: pytest {path}--equiaudit-update-baseline"


_STATE = pytest.StashKey[_State]()
_DEFAULTS = pytest.StashKey[dict]()
_ERROR = pytest.StashKey[str]()


def _state_from_config(config: pytest.Config) -> _State:
    device = config.getoption("equiaudit_device")
    if not DEVICE_RE.fullmatch(device):
        raise pytest.UsageError(f"--equiaudit-device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    dtype = config.getoption("equiaudit_dtype")
    report, baseline_arg = config.getoption("equiaudit_report"), config.getoption("equiaudit_baseline")
    update = bool(config.getoption("equiaudit_update_baseline"))
    shared = getattr(config, "workerinput", {}).get("equiaudit")  # absolute paths from the xdist controller
    if shared is not None:
        report_path = Path(shared["report"]) if shared["report"] else None
        baseline = Path(shared["baseline"]) if shared["baseline"] else None
    else:
        here = config.invocation_params.dir
        report_path = here / report if report else None
        baseline = here / baseline_arg if baseline_arg else (config.rootpath / DEFAULT_BASELINE if update else None)
    state = _State(device, None if dtype == "auto" else dtype, report_path, baseline, baseline_arg, update)
    if state.comparing and baseline is not None:
        if not baseline.exists():
            raise pytest.UsageError(
                f"--equiaudit-baseline: {baseline_arg} does not exist; record it with "
                f"pytest --equiaudit-baseline={baseline_arg} --equiaudit-update-baseline"
            )
        try:
            state.entries = read_baseline(baseline)
        except EquiauditError as exc:
            raise pytest.UsageError(f"--equiaudit-baseline: {exc}") from None
    return state


# ---- the baseline file -------------------------------------------------------------------------------------


def read_baseline(path: Path) -> dict[str, dict]:
    """The ``entries`` of a baseline file: ``{test id: {"group", "mode", "dtype", "errors": {label: e}}}``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EquiauditError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EquiauditError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("tool") != "equiaudit" or doc.get("kind") != BASELINE_KIND:
        raise EquiauditError(f"{path} is not an equiaudit baseline file")
    if doc.get("schema_version") != BASELINE_SCHEMA:
        raise EquiauditError(
            f"{path} has schema_version {doc.get('schema_version')!r}; this equiaudit reads {BASELINE_SCHEMA}"
        )
    entries = doc.get("entries")
    if not isinstance(entries, dict) or not all(_is_entry(e) for e in entries.values()):
        raise EquiauditError(f"{path}: 'entries' must map test ids to objects with 'errors': {{label: number}}")
    return entries


def _is_entry(entry: Any) -> bool:
    errors = entry.get("errors") if isinstance(entry, dict) else None
    return isinstance(errors, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in errors.values()
    )


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S, stale_after: float = LOCK_STALE_S) -> Iterator[None]:
    """Hold ``<path>.lock`` (created with O_EXCL, so exactly one process gets it; works on every OS)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                stale = time.time() - lock.stat().st_mtime > stale_after
            except FileNotFoundError:
                continue
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            if time.monotonic() > deadline:
                raise EquiauditError(
                    f"timed out waiting for {lock}; delete it if no pytest run is writing {path}"
                ) from None
            time.sleep(0.02)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def merge_baseline(path: Path, entries: dict[str, dict]) -> None:
    """Add or replace ``entries`` in the baseline file at ``path`` (created if missing), under the lock."""
    from .result import atomic_write_text

    with file_lock(path):
        current = read_baseline(path) if path.exists() else {}
        current.update(entries)
        doc = {
            "tool": "equiaudit",
            "kind": BASELINE_KIND,
            "schema_version": BASELINE_SCHEMA,
            "entries": current,
        }
        atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _entry(report: EquivarianceReport) -> dict[str, Any]:
    return {
        "group": report.group,
        "mode": report.mode,
        "dtype": report.dtype,
        "device": report.device,
        "inputs": report.inputs,
        "errors": {e.label: float(f"{e.error:.6g}") for e in report.elements},
    }


# ---- the fixture -------------------------------------------------------------------------------------------


class EquivarianceChecker:
    """What the ``equivariance`` fixture returns. ``check(model, ...)`` measures every element of the group,
    compares it with ``max_error`` (and the baseline when one is active) and fails with one line per element.

    Defaults come from ``@pytest.mark.equivariance(...)``, then the ``--equiaudit-*`` options; keywords given
    to ``check`` win. ``reports`` holds every report of the test, in order.
    """

    def __init__(self, node_id: str, defaults: dict[str, Any], state: _State) -> None:
        self.node_id = node_id
        self.defaults = defaults
        self.reports: list[EquivarianceReport] = []
        self._state = state

    def __repr__(self) -> str:
        return f"<equivariance checker of {self.node_id}>"

    def _key(self) -> str:
        n = len(self.reports) + 1
        return self.node_id if n == 1 else f"{self.node_id}#{n}"

    def check(
        self,
        model: Any,
        group: Any = None,
        inputs: Any = None,
        *,
        max_error: str | float | None = None,
        input_shape: Sequence[int] | None = None,
        **options: Any,
    ) -> EquivarianceReport:
        """Check ``model`` (an ``nn.Module`` or a source such as ``"zoo:NAME"``) under ``group`` (default: the
        marker's, else ``"c4"``) on ``inputs`` (default: 16 shipped digits); returns the measured report.
        ``options`` are :class:`~equiaudit.spec.AuditSpec` fields (``steps``, ``task``, ``interpolation``...)."""
        __tracebackhide__ = True
        from .groups import parse_group
        from .testing import DEFAULT_MAX_ERROR, check_equivariance, format_failure, parse_max_error

        state = self._state
        given = {"group": group, "max_error": max_error, "input_shape": input_shape, **options}
        try:
            opts = {**self.defaults, **validate_options(given)}
        except EquiauditError as exc:
            raise exc.with_traceback(None) from None
        group_spec = opts.pop("group", "c4")
        key = self._key()
        device = opts.pop("device", None) or _device(state.device)
        dtype = opts.pop("dtype", None) or state.dtype
        entry = state.entries.get(key) if state.comparing else None
        budgets = None
        if entry is not None and entry.get("group") == parse_group(group_spec, opts.get("steps")).spec:
            budgets = entry["errors"]
        try:
            report, failures = check_equivariance(
                model, group_spec, inputs, budgets=budgets, device=device, dtype=dtype, **opts
            )
        except EquiauditError as exc:
            raise exc.with_traceback(None) from None
        self.reports.append(report)
        mismatch = None
        if entry is not None:
            then = (entry.get("group"), entry.get("mode"), entry.get("dtype"))
            now = (report.group, report.mode, report.dtype)
            if then != now:
                mismatch = (
                    f"{key}: the baseline entry was recorded for {then[0]} ({then[1]}, {then[2]}) but this "
                    f"check measures {now[0]} ({now[1]}, {now[2]})"
                )
                failures = [f for f in failures if f.kind != "baseline"]
        if state.update:
            state.pending[key] = _entry(report)
        elif state.comparing and entry is None:
            state.missing.append(key)
        if state.report is not None:
            lines = [f.line() for f in failures] + ([mismatch] if mismatch else [])
            tolerance = str(parse_max_error(opts.get("max_error")))
            state.checks.append(_Check(key, not lines, report.result, max_error=tolerance, failures=lines))
        if failures or mismatch:
            parts = [format_failure(report, failures, key)] if failures else []
            if mismatch:
                parts.append(mismatch)
            if mismatch or any(f.kind == "baseline" for f in failures):
                parts.append(state.update_hint())
            else:
                now = opts.get("max_error", DEFAULT_MAX_ERROR)
                parts.append(f"If this is expected, raise max_error (now {now!r}) in check() or the marker.")
            raise AssertionError("\n".join(parts))
        return report


def _device(option: str) -> str:
    if option.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"--equiaudit-device {option}: CUDA is not available")
    return option


@pytest.fixture
def equivariance(request: pytest.FixtureRequest) -> EquivarianceChecker:
    """Check models for invariance / equivariance: ``equivariance.check(model, group="c4")``."""
    node = request.node
    defaults = node.stash.get(_DEFAULTS, None)
    if defaults is None:
        try:
            defaults = _marker_options(node)
        except EquiauditError as exc:
            raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.equivariance {exc}") from None
    return EquivarianceChecker(node.nodeid, defaults, request.config.stash[_STATE])


# ---- hooks -------------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("equiaudit", "equivariance checks (equiaudit)")
    group.addoption(
        "--equiaudit-device",
        default="auto",
        metavar="DEVICE",
        help="device of equivariance checks: auto (CUDA when present), cpu, cuda, cuda:N. Default: auto",
    )
    group.addoption(
        "--equiaudit-dtype",
        default="auto",
        choices=DTYPES,
        help="dtype of equivariance checks: auto (the model's), float32, float64. Default: auto",
    )
    group.addoption(
        "--equiaudit-report",
        default=None,
        metavar="PATH",
        help="write one HTML report of every equivariance check in the session to PATH",
    )
    group.addoption(
        "--equiaudit-baseline",
        default=None,
        metavar="PATH",
        help="fail a check when an element's error rises above the budget recorded in PATH (JSON)",
    )
    group.addoption(
        "--equiaudit-update-baseline",
        action="store_true",
        default=False,
        help=f"record the current errors as the budgets (in --equiaudit-baseline, default "
        f"<rootdir>/{DEFAULT_BASELINE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "equivariance(group=None, *, max_error=None, input_shape=None, steps=None, task=None, "
        "interpolation=None, mask=None): defaults for the checks of the equivariance fixture (equiaudit)",
    )
    config.stash[_STATE] = state = _state_from_config(config)
    if state.report is not None:  # keep the checks of assert_invariant / assert_equivariant for the report
        from .testing import record_checks

        record_checks(True)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.report is not None:
        from .testing import record_checks

        record_checks(False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """With ``--equiaudit-report``: collect the checks the assert helpers made during the test."""
    state = item.config.stash.get(_STATE, None)
    if state is None or state.report is None:
        return (yield)
    from .testing import recorded_checks

    recorded_checks()  # forget checks made outside any test
    try:
        return (yield)
    finally:
        taken = recorded_checks()
        for helper in sorted({r.helper for r in taken}):
            mine = [r for r in taken if r.helper == helper]
            for n, rec in enumerate(mine, 1):
                name = f"{item.nodeid} ({helper}{f' #{n}' if len(mine) > 1 else ''})"
                lines = [f.line() for f in rec.failures]
                state.checks.append(
                    _Check(name, rec.passed, rec.report.result, max_error=rec.max_error, failures=lines, via=helper)
                )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the resolved paths to each worker (workers may not share the invocation dir)."""
    state = node.config.stash[_STATE]
    node.workerinput["equiaudit"] = {
        "report": str(state.report) if state.report else None,
        "baseline": str(state.baseline) if state.baseline else None,
    }


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every ``equivariance`` marker: a bad one stops the run with a usage error (exit code 4). An
    xdist worker cannot stop the run here without an internal error, so there the test errors at setup."""
    errors = []
    for item in items:
        if item.get_closest_marker("equivariance") is None:
            continue
        try:
            item.stash[_DEFAULTS] = _marker_options(item)
        except EquiauditError as exc:
            errors.append(f"{item.nodeid}: @pytest.mark.equivariance {exc}")
            item.stash[_ERROR] = errors[-1]
            continue
        own = any(m.name == "equivariance" for m in getattr(item, "own_markers", []))
        if own and "equivariance" not in getattr(item, "fixturenames", ()):
            item.warn(
                pytest.PytestWarning(
                    "@pytest.mark.equivariance has no effect on a test that does not use the equivariance fixture"
                )
            )
    if errors and not hasattr(config, "workerinput"):
        raise pytest.UsageError(*errors)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    error = item.stash.get(_ERROR, None)
    if error is not None:
        pytest.fail(error, pytrace=False)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_STATE, None)
    if state is None or (state.report is None and state.baseline is None):
        return None
    parts = [f"device={state.device}", f"dtype={state.dtype or 'auto'}"]
    if state.baseline is not None:
        parts.append(f"baseline={state.baseline}{' (update)' if state.update else ''}")
    if state.report is not None:
        parts.append(f"report={state.report}")
    return "equiaudit: " + ", ".join(parts)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect the checks a worker measured and how many baseline entries it recorded."""
    out = getattr(node, "workeroutput", None) or {}
    state = node.config.stash[_STATE]
    state.checks += [_Check.from_worker(doc) for doc in out.get("equiaudit_checks", [])]
    state.recorded += int(out.get("equiaudit_recorded", 0))
    state.missing += out.get("equiaudit_missing", [])
    state.errors += out.get("equiaudit_errors", [])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    if state.update and state.pending and state.baseline is not None:
        try:
            merge_baseline(state.baseline, state.pending)
            state.recorded += len(state.pending)
        except EquiauditError as exc:
            state.errors.append(f"equiaudit: the baseline was not updated: {exc}")
    worker = getattr(config, "workeroutput", None)
    if worker is not None:
        worker["equiaudit_recorded"] = state.recorded
        worker["equiaudit_checks"] = _save_for_controller(state.checks)
        worker["equiaudit_missing"] = state.missing
        worker["equiaudit_errors"] = state.errors
        return
    if state.update and state.recorded:
        state.messages.append(
            (
                f"equiaudit: recorded {state.recorded} baseline entr"
                f"{'y' if state.recorded == 1 else 'ies'} in {state.baseline}",
                {"green": True},
            )
        )
    if state.missing:
        names = ", ".join(sorted(state.missing)[:3]) + (", ..." if len(state.missing) > 3 else "")
        state.messages.append(
            (
                f"equiaudit: {len(state.missing)} check(s) have no entry in the baseline {state.baseline} "
                f"({names}); record them with --equiaudit-update-baseline",
                {"yellow": True},
            )
        )
    if state.report is not None and state.checks:
        try:
            state.messages += _write_report(state.report, state.checks)
        except EquiauditError as exc:
            state.errors.append(f"equiaudit: the report was not written: {exc}")
    if state.errors:
        state.messages += [(text, {"red": True}) for text in state.errors]
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    for text, markup in state.messages:
        terminalreporter.write_line(text, **markup)


# ---- the session report ------------------------------------------------------------------------------------


def _save_for_controller(checks: list[_Check]) -> list[list]:
    """xdist worker: save each result (and gallery) to a temporary folder the controller reads and removes."""
    if not checks:
        return []
    from .result import save

    folder = Path(tempfile.mkdtemp(prefix="equiaudit-xdist-"))
    out = []
    for i, c in enumerate(checks):
        path = folder / f"{i}.json"
        if c.result is not None:
            save(c.result, path)
        out.append(c.to_worker(str(path)))
    return out


def _collect(checks: list[_Check]) -> list[_Check]:
    from .result import load

    folders = set()
    for c in checks:
        if c.result is None and c.path is not None:
            c.result = load(c.path)
            folders.add(Path(c.path).parent)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(checks, key=lambda c: c.name)


def _write_report(path: Path, checks: list[_Check]) -> list[tuple[str, dict]]:
    """Write the JSON summary and, for a non-JSON path, the HTML report; returns terminal lines."""
    from .result import atomic_write_text

    checks = _collect(checks)
    summary = {
        "tool": "equiaudit",
        "kind": "pytest-session",
        "schema_version": 1,
        "checks": [
            {
                "test": c.name,
                "passed": c.passed,
                "via": c.via,
                "max_error": c.max_error,
                "failures": list(c.failures),
                "result": c.result.to_dict(),
            }
            for c in checks
        ],
    }
    json_path = path if path.suffix.lower() == ".json" else path.with_name(path.stem + ".checks.json")
    atomic_write_text(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    if json_path == path:
        return [(f"equiaudit: wrote {len(checks)} checks to {path}", {"green": True})]
    try:
        from .reports import SessionCheck, write_session_report
    except ImportError:
        return [
            (
                f"equiaudit: no HTML report (equiaudit.reports is not available); wrote the JSON summary "
                f"{json_path} instead",
                {"yellow": True},
            )
        ]
    session = [SessionCheck(c.name, c.passed, c.result, c.max_error, tuple(c.failures), c.via) for c in checks]
    try:
        write_session_report(session, path, json_name=json_path.name)
    except EquiauditError as exc:
        return [(f"equiaudit: no HTML report ({exc}); wrote the JSON summary {json_path}", {"yellow": True})]
    return [
        (f"equiaudit: wrote the report of {len(checks)} check(s) to {path} (summary: {json_path})", {"green": True})
    ]
