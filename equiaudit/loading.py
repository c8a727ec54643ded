"""Load a user's model without running code from the file unless the user said they trust it.

Sources, in the order they are recognised:

* an in-memory ``nn.Module`` (used as is);
* ``NAME:REST`` where ``NAME`` is a model source: the built-in ``torchvision:NAME``, ``timm:NAME`` and
  ``hf:PATH`` (:mod:`equiaudit.sources`), or one registered through the entry-point group
  ``equiaudit.model_sources`` (``zoo:c4_cnn``) or :func:`register_source`;
* a file, routed by its content, never by its name alone:

  - TorchScript archive -> ``torch.jit.load`` (needs ``trust``);
  - ``torch.export`` archive (``.pt2``) -> ``torch.export.load(...).module()`` (needs ``trust``);
  - ``.safetensors`` -> a state dict (needs the ``safetensors`` package);
  - anything else -> ``torch.load(weights_only=True)``. A state dict (bare, or inside a checkpoint dict) is
    loaded into the architecture named by ``arch``; a file that ``weights_only`` refuses is unpickled only
    with ``trust``, and the refusal names the globals that would be imported.

Constructor keywords follow a ``?``, for sources and ``--arch`` alike: ``torchvision:resnet18?num_classes=10``,
``--arch 'mymodels:Net?width=32,norm=batch'`` (values are Python literals, bare words are strings; see
:func:`parse_keywords`).

Nothing falls back silently: every refusal is a :class:`~equiaudit.errors.ModelLoadError` with one line that
says what was found and what to do.
"""

from __future__ import annotations

import _compat_pickle
import ast
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from equiaudit.errors import DeviceError, EquiauditError, ModelLoadError
from equiaudit.preprocess import Preprocess

__all__ = [
    "ENTRY_POINT_GROUP",
    "DeviceError",
    "LoadedModel",
    "ModelSource",
    "check_torch_version",
    "load_model",
    "model_sources",
    "parse_keywords",
    "register_source",
    "resolve_device",
    "sha256_file",
    "unregister_source",
]

ENTRY_POINT_GROUP = "equiaudit.model_sources"
MIN_TORCH = (2, 6)  # CVE-2025-32434: torch.load(weights_only=True) could be bypassed before 2.6
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")
# Wrappers that prefix every key: nn.DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]+")  # >= 2 characters, so C:\ stays a path
_SCHEME_RE = re.compile(rf"({_NAME_RE.pattern}):(.*)", re.DOTALL)
_MAX_LISTED = 8
# Model sources that ship with the core (imported on first use; an entry point or register_source may replace them).
BUILTIN_SOURCES = {"torchvision": "torchvision", "timm": "timm", "hf": "hf"}  # name -> attribute of .sources


class ModelSource(Protocol):
    """What an ``equiaudit.model_sources`` entry point loads (an object or a module with these functions).

    ``load`` returns a trusted, shipped model and a JSON-able card (a ``"sha256"`` entry, if present, is
    reported as the model's hash; a ``"preprocess"`` entry, a :class:`~equiaudit.preprocess.Preprocess` or its
    dict, is the input pipeline the model expects); ``create`` builds an untrained architecture for a state dict.
    Keywords after a ``?`` in the source string (``NAME?key=value``) are passed to ``load`` / ``create``.
    """

    def load(self, rest: str, *, device: torch.device, **kwargs: Any) -> tuple[nn.Module, dict]: ...

    def create(self, rest: str, **kwargs: Any) -> nn.Module: ...


@dataclass
class LoadedModel:
    """A model ready for auditing: in eval mode, on the requested device, with where it came from."""

    module: nn.Module
    source: str
    kind: str
    sha256: str | None
    parameters: int
    arch: str | None = None
    info: dict = field(default_factory=dict)
    preprocess: Preprocess | None = None  # the input pipeline the model's source declares
    output: str | None = None  # which part of the model's output is audited (set when the audit chooses it)

    def describe(self) -> dict:
        """JSON-able summary (everything but the module); objects JSON cannot hold become their repr."""
        return json.loads(
            json.dumps(
                {
                    "source": self.source,
                    "kind": self.kind,
                    "sha256": self.sha256,
                    "parameters": self.parameters,
                    "arch": self.arch,
                    "info": self.info,
                    "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
                    "output": self.output,
                },
                default=repr,
            )
        )


# --------------------------------------------------------------------------------------------------------
# Environment checks


def check_torch_version() -> None:
    """Refuse to load anything with a torch whose ``weights_only`` loader has a known bypass."""
    version = torch.torch_version.TorchVersion(str(torch.__version__))
    if version < MIN_TORCH:
        raise ModelLoadError(
            f"torch {version} is too old to load model files safely (CVE-2025-32434: weights_only=True can "
            f"be bypassed before torch 2.6); upgrade with: pip install 'torch>=2.6'"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> the current CUDA device if there is one, else CPU; check any other name exists.

    ``"cuda"`` without an index resolves to the current CUDA device, so the result compares equal to the
    ``.device`` of tensors placed there.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available; use cpu or auto")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if not 0 <= index < torch.cuda.device_count():  # below 0: some torch builds wrap a large index around
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {device!r} requested but MPS is not available; use cpu or auto")
        return dev
    if dev.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise DeviceError(f"device {device!r} requested but XPU is not available; use cpu or auto")
        return dev
    raise DeviceError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Model sources (schemes)

_registered: dict[str, object] = {}
_entry_point_cache: dict[str, EntryPoint] | None = None


def register_source(name: str, source: object) -> None:
    """Register ``source`` (see :class:`ModelSource`) under ``name``; replaces an entry point of that name."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid model source name {name!r}: use 2+ letters, digits, '_', '.', '+', '-'")
    _registered[name] = source


def unregister_source(name: str) -> None:
    """Forget a source registered with :func:`register_source` (entry points stay visible)."""
    _registered.pop(name, None)


def _entry_points() -> dict[str, EntryPoint]:
    global _entry_point_cache
    if _entry_point_cache is None:
        eps: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            eps.setdefault(ep.name, ep)
        _entry_point_cache = eps
    return _entry_point_cache


def model_sources() -> list[str]:
    """Names usable as ``NAME:REST`` sources and ``--arch NAME:REST``."""
    return sorted(set(_registered) | set(_entry_points()) | set(BUILTIN_SOURCES))


def _get_source(name: str) -> object | None:
    """The source registered as ``name`` (importing its entry point on first use), or None."""
    if name in _registered:
        return _registered[name]
    ep = _entry_points().get(name)
    if ep is None:
        if name not in BUILTIN_SOURCES:
            return None
        from . import sources

        source = getattr(sources, BUILTIN_SOURCES[name])
        _registered[name] = source
        return source
    try:
        source = ep.load()
    except Exception as err:
        raise ModelLoadError(
            f"model source {name!r} (entry point {ep.value}) failed to import: {_one_line(err)}"
        ) from err
    _registered[name] = source
    return source


def _source_method(name: str, source: object, method: str) -> Any:
    fn = getattr(source, method, None)
    if not callable(fn):
        what = "load models" if method == "load" else "build architectures"
        raise ModelLoadError(f"model source {name!r} cannot {what} (it has no {method}() method)")
    return fn


def _split_scheme(source: str) -> tuple[str, str] | None:
    """``(name, rest)`` when ``source`` names a registered model source; raise for an unknown one.

    An existing path always wins over an unknown scheme, and single letters (``C:``) are never schemes.
    """
    match = _SCHEME_RE.fullmatch(source)
    if match is None:
        return None
    name, rest = match.groups()
    if _get_source(name) is not None:
        return name, rest
    if os.path.exists(source):
        return None
    known = ", ".join(model_sources()) or "none installed"
    raise ModelLoadError(
        f"{source!r} is neither a file nor a known model source: unknown source {name!r} (known: {known}); "
        f"give a file path, or install the package that provides {name!r}"
    )


def parse_keywords(text: str, what: str = "model") -> tuple[str, dict[str, Any]]:
    """``NAME?key=value,key=value`` -> ``(NAME, {key: value})``; without a ``?``, ``(text, {})``.

    Values are Python literals (``10``, ``None``, ``False``, ``0.5``, ``'text'``, ``(1, 2)``); a bare word is a
    string (``norm=batch``). Nothing is evaluated, so a keyword string cannot run code.
    """
    name, sep, query = text.partition("?")
    if not sep:
        return text, {}
    hint = "use NAME?key=value,key=value (e.g. torchvision:resnet18?num_classes=10)"
    if not query.strip():
        raise ModelLoadError(f"{what} {text!r} has a '?' but no keywords; {hint}")
    try:
        call = ast.parse(f"f({query})", mode="eval").body
    except SyntaxError:
        raise ModelLoadError(f"{what} {text!r}: cannot read the keywords {query!r}; {hint}") from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ModelLoadError(f"{what} {text!r}: keywords must be key=value pairs; {hint}")
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        node = keyword.value
        if isinstance(node, ast.Name):
            kwargs[str(keyword.arg)] = node.id
            continue
        try:
            kwargs[str(keyword.arg)] = ast.literal_eval(node)
        except ValueError:
            raise ModelLoadError(
                f"{what} {text!r}: the value of {keyword.arg!r} is not a literal (numbers, strings, None, "
                f"True / False, tuples, lists)"
            ) from None
    return name, kwargs


def _merge_keywords(given: dict[str, Any], parsed: dict[str, Any], what: str) -> dict[str, Any]:
    both = sorted(set(given) & set(parsed))
    if both:
        raise ModelLoadError(f"{what}: {', '.join(both)} given both after '?' and as arch_kwargs; give each once")
    return {**given, **parsed}


# --------------------------------------------------------------------------------------------------------
# Architectures for state dicts


@contextlib.contextmanager
def _sys_path_prepended(folder: str | None) -> Iterator[None]:
    if folder is None or folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _import_module_file(path: Path) -> Any:
    name = f"_equiaudit_arch_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"--arch: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec, so dataclasses and pickling inside the file work
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"--arch: importing {path} failed: {_one_line(err)}") from err
    return module


def _import_module_name(module_name: str, arch: str) -> tuple[Any, str | None]:
    """Import by name; if the top-level package is missing, look in the working directory (as ``python -m``).

    Returns the module and the folder that had to be put on ``sys.path`` for it (None if none).
    """
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    folders: list[str | None] = [None] if cwd in sys.path or "" in sys.path else [None, cwd]
    for folder in folders:
        try:
            with _sys_path_prepended(folder):
                return importlib.import_module(module_name), folder
        except ModuleNotFoundError as err:
            if err.name == top and folder is not folders[-1]:
                continue
            known = ", ".join(model_sources()) or "none installed"
            raise ModelLoadError(
                f"--arch {arch}: cannot import {module_name!r} ({err}); pass module.path:factory, "
                f"path/to/file.py:factory or SOURCE:NAME (known sources: {known})"
            ) from err
        except Exception as err:
            raise ModelLoadError(f"--arch {arch}: importing {module_name!r} failed: {_one_line(err)}") from err
    raise AssertionError("unreachable")  # the last folder either returns or raises


def _build_arch(arch: str, arch_kwargs: dict, info: dict) -> nn.Module:
    """Build the architecture named by ``arch``: ``SOURCE:NAME``, ``module.path:factory`` or ``file.py:factory``,
    each optionally followed by ``?key=value,...`` constructor keywords."""
    arch, parsed = parse_keywords(arch, "--arch")
    arch_kwargs = _merge_keywords(arch_kwargs, parsed, f"--arch {arch}")
    if parsed:
        info["arch_kwargs"] = dict(arch_kwargs)
    scheme, sep, rest = arch.partition(":")
    source = _get_source(scheme) if sep and _SCHEME_RE.fullmatch(arch) else None
    if source is not None:
        create = _source_method(scheme, source, "create")
        return _call_factory(create, arch, (rest,), arch_kwargs, folder=None)

    module_name, sep, attr = arch.rpartition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"--arch {arch!r} is not module.path:factory, path/to/file.py:factory or SOURCE:NAME")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"--arch {arch}: no such file {module_name}")
        info["arch_sha256"] = sha256_file(path)
        folder: str | None = str(path.parent)
        with _sys_path_prepended(folder):  # so the file can import its siblings
            module = _import_module_file(path)
    else:
        module, folder = _import_module_name(module_name, arch)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(f"--arch {arch}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"--arch {arch}: {attr!r} is not callable")
    return _call_factory(factory, arch, (), arch_kwargs, folder)


def _call_factory(factory: Any, arch: str, args: tuple, kwargs: dict, folder: str | None) -> nn.Module:
    try:
        with _sys_path_prepended(folder):
            model = factory(*args, **kwargs)
    except EquiauditError:
        raise
    except Exception as err:
        raise ModelLoadError(f"--arch {arch}: building the architecture failed: {_one_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())
    )


def _strip_wrapper_prefixes(state: Mapping[str, Any], model_keys: list[str]) -> tuple[dict, str]:
    """Strip ``module.`` / ``_orig_mod.`` when every key has it and the model's own keys do not."""
    state, stripped = dict(state), ""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped += prefix
                changed = True
    return state, stripped


def _listed(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def _load_state_dict(model: nn.Module, state: Mapping[str, Any], where: str, arch: str, info: dict) -> None:
    expected = model.state_dict()
    state, info["stripped_prefix"] = _strip_wrapper_prefixes(state, list(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected
        and isinstance(v, torch.Tensor)
        and isinstance(expected[k], torch.Tensor)
        and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {label}{'' if len(items) == 1 else plural} ({_listed(items)})"
            for items, label, plural in (
                (missing, "missing key", "s"),
                (unexpected, "unexpected key", "s"),
                (mismatched, "shape mismatch", "es"),
            )
            if items
        ]
        raise ModelLoadError(f"the state dict in {where} does not fit --arch {arch}: {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:
        raise ModelLoadError(f"loading the state dict in {where} into --arch {arch} failed: {_one_line(err)}") from err


# --------------------------------------------------------------------------------------------------------
# Files


def _one_line(err: BaseException) -> str:
    """``Type: first meaningful line`` of an exception (torch's messages span many lines, some with ANSI)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    line = detail.group(1) if detail else next((s.strip() for s in text.splitlines() if s.strip()), "")
    if len(line) > 120 and ". " in line:  # torch appends paragraphs of advice after the first sentence
        line = line.split(". ", 1)[0]
    line = line if len(line) <= 200 else line[:197] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _zip_members(data: bytes) -> set[str] | None:
    """Member names relative to the archive's top folder, or None when ``data`` is not a zip archive."""
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        return None
    try:
        with zipfile.ZipFile(buffer) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # torch.load will report it as corrupt
    return {name.split("/", 1)[1] for name in names if "/" in name}


def _allowed_globals() -> set[str]:
    try:  # the private table torch.serialization.get_unsafe_globals_in_checkpoint itself uses
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:
        return set()


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 unpickling resolves it (protocol 2 pickles say ``__builtin__``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _pickle_globals(data: bytes) -> list[str]:
    """Globals the consecutive pickles at the start of ``data`` would import, found without unpickling."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        memo: dict[int, object] = {}
        pushed: list[object] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(_py3_name(*str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL":
                    module, name = pushed[-2:] if len(pushed) >= 2 else [None, None]
                    found.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif op.name not in ("FRAME", "PROTO", "STOP"):
                    pushed.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
        except Exception:
            break  # tensor bytes of a legacy file, or not a pickle at all
    allowed = _allowed_globals()
    return list(dict.fromkeys(name for name in found if name not in allowed))


def _unsafe_globals(data: bytes, is_zip: bool) -> list[str] | None:
    """Globals that ``weights_only`` refuses, non-torch ones (the user's code) first; None if unreadable."""
    try:
        names = (
            torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)) if is_zip else _pickle_globals(data)
        )
    except Exception:
        return None
    return sorted(set(names), key=lambda n: (n.startswith("torch."), n))


def _trust_hint() -> str:
    return "pass --trust only if the file comes from a source you trust"


def _read(path: Path, source: str) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {source}")
    if path.is_dir():
        raise ModelLoadError(f"{source} is a directory; pass a model file (.pt, .pth, .pt2, .safetensors)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"cannot read {source}: {_one_line(err)}") from err
    if not data:
        raise ModelLoadError(f"{source} is empty")
    return data


def _load_safetensors(data: bytes, source: str) -> dict:
    try:
        from safetensors.torch import load as safetensors_load
    except ImportError as err:
        raise ModelLoadError(f"{source} is a safetensors file; install it with: pip install safetensors") from err
    try:
        return safetensors_load(data)
    except Exception as err:
        raise ModelLoadError(f"{source} is not a valid safetensors file: {_one_line(err)}") from err


def _is_safetensors(path: Path, data: bytes) -> bool:
    if path.suffix == ".safetensors":
        return True
    # 8-byte little-endian header length, then a JSON object
    return len(data) > 9 and data[8:9] == b"{" and 0 < int.from_bytes(data[:8], "little") <= len(data) - 8


def _torch_load(data: bytes, source: str, members: set[str] | None, trust: bool, info: dict) -> object:
    """``torch.load(weights_only=True)``; unpickle fully only with ``trust``, and say why it was needed."""
    try:
        with warnings.catch_warnings():
            # raw pickles (protocol > 2) are refused below anyway; the protocol warning only adds noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        info["weights_only"] = True
        return obj
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(data, members is not None)
        if unsafe is None:  # even the static scan of the checkpoint's pickle fails
            raise ModelLoadError(f"{source} is not a readable PyTorch file (corrupt): {_one_line(err)}") from None
        if not trust:
            if unsafe:
                more = f" and {len(unsafe) - _MAX_LISTED} more" if len(unsafe) > _MAX_LISTED else ""
                raise ModelLoadError(
                    f"refusing to unpickle {source}: it can run code when loaded (it imports "
                    f"{', '.join(unsafe[:_MAX_LISTED])}{more}); {_trust_hint()}, or save model.state_dict() "
                    f"and pass --arch"
                ) from None
            raise ModelLoadError(
                f"{source} cannot be loaded safely ({_one_line(err)}): it is not a PyTorch file, is corrupt, "
                f"or needs code to load; {_trust_hint()}"
            ) from None
        reason = err
    except Exception as err:
        raise ModelLoadError(f"{source} is not a readable PyTorch file: {_one_line(err)}") from None
    # The pickle imports the classes it names; like --arch module:factory, a module missing from sys.path is
    # looked up in the working directory too (as `python -m` would find it).
    cwd = os.getcwd()
    folders: list[str | None] = [None] if cwd in sys.path or "" in sys.path else [None, cwd]
    for folder in folders:
        try:
            with _sys_path_prepended(folder):
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            if folder is not None:
                info["imported_from"] = folder
            break
        except ModuleNotFoundError as err:
            if folder is not folders[-1]:
                continue
            raise ModelLoadError(
                f"loading {source} with --trust failed: {_one_line(err)}; the pickle names a module that is not "
                f"importable from here nor from {cwd} (run from the folder that holds it, or set PYTHONPATH)"
            ) from err
        except Exception as err:
            raise ModelLoadError(
                f"loading {source} with --trust failed: {_one_line(err)} (the safe loader said: {_one_line(reason)})"
            ) from err
    info["weights_only"] = False
    info["unsafe_globals"] = unsafe
    return obj


def _from_object(obj: object, source: str, arch: str | None, arch_kwargs: dict, info: dict) -> tuple[nn.Module, str]:
    """Turn what a file held into a module: a module as is, a state dict through ``arch``."""
    if isinstance(obj, nn.Module):
        return _no_arch(obj, "pickle", source, arch)
    key = None
    state = obj if _is_state_dict(obj) else None
    if state is None and isinstance(obj, Mapping):
        for candidate in CHECKPOINT_KEYS:
            value = obj.get(candidate)
            if isinstance(value, nn.Module) or _is_state_dict(value):
                key = candidate
                break
        if key is not None:
            info["checkpoint_key"] = key
            if isinstance(obj[key], nn.Module):
                return _no_arch(obj[key], "pickle", source, arch)
            state = obj[key]
    if state is None:
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            keys = [str(k) for k in obj][:_MAX_LISTED]
            raise ModelLoadError(
                f"{source} holds a {what} with keys [{', '.join(keys)}] but no model nor state dict under "
                f"{'/'.join(CHECKPOINT_KEYS)}"
            )
        raise ModelLoadError(f"{source} holds a {what}, not a torch.nn.Module nor a state dict")
    if arch is None:
        raise ModelLoadError(
            f"{source} is a state dict; pass --arch module:factory (or zoo:NAME) to build the architecture"
        )
    info["arch_kwargs"] = dict(arch_kwargs)
    model = _build_arch(arch, arch_kwargs, info)
    _load_state_dict(model, state, source, arch, info)
    return model, "state_dict"


def _no_arch(module: nn.Module, kind: str, source: str, arch: str | None) -> tuple[nn.Module, str]:
    if arch is not None:
        raise ModelLoadError(f"--arch is only for state dicts, but {source} holds a whole model; drop --arch")
    return module, kind


def _load_file(
    path: Path, source: str, arch: str | None, arch_kwargs: dict, trust: bool, device: torch.device
) -> tuple[nn.Module, str, str, dict]:
    data = _read(path, source)
    sha = hashlib.sha256(data).hexdigest()  # of the very bytes that are loaded
    info: dict = {}
    members = _zip_members(data)
    archive = None
    if members is not None and ("constants.pkl" in members or any(m.startswith("code/") for m in members)):
        archive = "torchscript"
    elif members is not None and "archive_format" in members:
        archive = "export"
    if archive is not None:
        label = "a TorchScript archive" if archive == "torchscript" else "a torch.export archive"
        if arch is not None:
            raise ModelLoadError(f"--arch is only for state dicts, but {source} is {label}; drop --arch")
        if not trust:
            raise ModelLoadError(f"{source} is {label}, which can run code when loaded; {_trust_hint()}")
        if archive == "torchscript":
            return _load_torchscript(data, source, device), archive, sha, info
        return _load_export(data, source, device, info), archive, sha, info
    if members is not None and "data.pkl" not in members:
        raise ModelLoadError(
            f"{source} is a zip archive but not a PyTorch checkpoint, TorchScript or torch.export archive"
        )
    if members is None and _is_safetensors(path, data):
        info["format"] = "safetensors"
        obj: object = _load_safetensors(data, source)
    else:
        obj = _torch_load(data, source, members, trust, info)
    module, kind = _from_object(obj, source, arch, arch_kwargs, info)
    return module, kind, sha, info


def _load_torchscript(data: bytes, source: str, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as err:
        raise ModelLoadError(f"cannot load TorchScript archive {source}: {_one_line(err)}") from err


def _training_ops(graph_module: torch.fx.GraphModule) -> list[str]:
    """Ops of an exported graph called in training mode (batch norm with batch statistics, active dropout)."""
    found = []
    graphs = [m.graph for m in graph_module.modules() if isinstance(m, torch.fx.GraphModule)]
    for node in (node for graph in graphs for node in graph.nodes):
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for i, argument in enumerate(schema.arguments):
            if argument.name in ("training", "train"):
                value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
                if value is True:
                    found.append(str(node.target))
    return list(dict.fromkeys(found))


def _fixed_input(program: Any) -> list[int] | None:
    """The input shape an exported program was traced with, when its batch size is fixed (an int, not a symbol)."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                shape = getattr(node.meta.get("val"), "shape", None)
                if shape is not None and len(shape) == 4 and isinstance(shape[0], int):
                    return [s if isinstance(s, int) else -1 for s in shape]
                return None
    except Exception:  # an unusual program: no guess, the probe reports what fails
        return None
    return None


def _load_export(data: bytes, source: str, device: torch.device, info: dict) -> nn.Module:
    try:
        program = torch.export.load(io.BytesIO(data))
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
    except Exception as err:
        raise ModelLoadError(f"cannot load torch.export archive {source}: {_one_line(err)}") from err
    # An exported graph cannot be switched to eval mode afterwards: refuse one traced in training mode.
    training = _training_ops(program.graph_module)
    if training:
        raise ModelLoadError(
            f"{source} was exported in training mode ({', '.join(training[:3])}): its outputs depend on the "
            f"batch; call model.eval() before torch.export.export and save it again"
        )
    fixed = _fixed_input(program)
    if fixed is not None:
        info["fixed_batch"], info["input_shape"] = fixed[0], fixed[1:]
    module = program.module()
    for submodule in module.modules():  # eval() raises on exported graphs; the flag alone is safe to set
        submodule.training = False
    return module


# --------------------------------------------------------------------------------------------------------
# Entry point


def load_model(
    source: str | os.PathLike | nn.Module,
    *,
    arch: str | None = None,
    trust: bool = False,
    device: str | torch.device | None = None,
    arch_kwargs: dict | None = None,
) -> LoadedModel:
    """Load a model for auditing; see the module docstring for the formats and the rules.

    Args:
        source: an ``nn.Module``, ``NAME:REST`` of a registered model source, or a file path.
        arch: for state dicts, ``module.path:factory``, ``path/to/file.py:factory`` or ``SOURCE:NAME``.
        trust: allow formats that can run code when loaded (pickled modules, TorchScript, torch.export).
        device: where to put the model (``None``/``"auto"``: CUDA if available, else CPU).
        arch_kwargs: keyword arguments for the ``arch`` factory.

    Returns:
        The module in eval mode on ``device`` (dtype unchanged) and where it came from.
    """
    check_torch_version()
    dev = resolve_device(device)
    preprocess: Preprocess | None = None
    if arch_kwargs is not None and arch is None:
        raise ModelLoadError("arch_kwargs were given without --arch")
    kwargs = dict(arch_kwargs or {})
    sha: str | None = None
    info: dict = {}

    if isinstance(source, nn.Module):
        label = f"<module {type(source).__name__}>"
        module, kind = _no_arch(source, "module", label, arch)
    elif isinstance(source, str | os.PathLike):
        label = os.fspath(source)
        if not isinstance(label, str):
            raise ModelLoadError(f"model source must be a str path, got {type(label).__name__}")
        scheme = _split_scheme(label) if isinstance(source, str) else None
        if scheme is not None:
            name, rest = scheme
            if arch is not None:
                raise ModelLoadError(f"--arch is only for state dicts, but {label} is a shipped model; drop --arch")
            module, info, preprocess = _load_from_source(name, rest, label, dev)
            kind = name
            sha = info.get("sha256") if isinstance(info.get("sha256"), str) else None
        else:
            module, kind, sha, info = _load_file(Path(label).expanduser(), label, arch, kwargs, trust, dev)
    else:
        raise ModelLoadError(f"cannot load a model from a {type(source).__name__}; pass a path or an nn.Module")

    module = module.to(dev)
    if kind != "export":  # exported graphs refuse eval(); _load_export checked they are in eval mode
        module.eval()
    parameters = sum(p.numel() for p in module.parameters())
    return LoadedModel(module, label, kind, sha, parameters, arch, info, preprocess)


def _load_from_source(name: str, rest: str, label: str, dev: torch.device) -> tuple[nn.Module, dict, Preprocess | None]:
    """``NAME:REST[?key=value,...]`` through the model source ``NAME``: the module, its card and preprocessing."""
    rest, kwargs = parse_keywords(rest, "model source")
    load = _source_method(name, _get_source(name), "load")
    if kwargs:
        try:
            signature = inspect.signature(load)
        except (TypeError, ValueError):
            signature = None
        takes = signature is None or any(
            p.kind is p.VAR_KEYWORD or p.name in kwargs for p in signature.parameters.values()
        )
        if not takes:
            raise ModelLoadError(f"model source {name!r} takes no keywords, but {label} gives {', '.join(kwargs)}")
    result = load(rest, device=dev, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise ModelLoadError(f"model source {name!r} returned {type(result).__name__}, not (module, info)")
    info = dict(result[1] or {})
    declared = info.pop("preprocess", None)
    if isinstance(declared, Mapping):
        declared = Preprocess.from_dict(declared)
    if kwargs:
        info.setdefault("kwargs", kwargs)
    return result[0], info, declared if isinstance(declared, Preprocess) else None
