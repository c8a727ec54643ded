"""Tests for equiaudit.loading: formats, refusals (one line, nothing executed), hashes, devices, sources."""

from __future__ import annotations

import argparse
import builtins
import hashlib
import importlib
import io
import json
import os
import pickle
import struct
import sys
import textwrap
import uuid
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from _tolerances import TOLERANCES

from equiaudit import loading
from equiaudit.errors import EquiauditError, ModelLoadError
from equiaudit.loading import (
    ENTRY_POINT_GROUP,
    DeviceError,
    LoadedModel,
    check_torch_version,
    load_model,
    model_sources,
    register_source,
    resolve_device,
    sha256_file,
    unregister_source,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

HELPER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    from equiaudit.errors import ModelLoadError


    class Net(nn.Module):
        # BatchNorm and Dropout make train-mode outputs differ from eval-mode ones.
        def __init__(self, width: int = 4):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(width, 5)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.head(self.drop(x.mean((2, 3))))


    def factory(width: int = 4) -> nn.Module:
        return Net(width)


    def not_a_module():
        return 3


    def broken():
        raise RuntimeError("boom")


    class Payload:
        pass


    class Source:
        def load(self, rest, *, device):
            if rest != "tiny":
                raise ModelLoadError(f"no shipped model {rest!r}")
            torch.manual_seed(0)
            return Net(), {"name": rest, "sha256": "ab" * 32, "device": device}

        def create(self, rest, **kwargs):
            return Net(**kwargs)


    SOURCE = Source()
    """
)


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """A freshly named, importable module holding the test architecture; removed from sys.modules after."""
    name = f"eqa_helper_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "helper_pkg"
    folder.mkdir()
    (folder / f"{name}.py").write_text(HELPER_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
def reference(helper):
    """An eval-mode Net with non-trivial batch-norm statistics, and an input."""
    torch.manual_seed(1)
    model = helper.Net()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    return model, x


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def _outputs_equal(loaded: LoadedModel, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# State dicts


CONTAINERS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "model": lambda sd: {"model": sd},
    "state_dict_ema": lambda sd: {"state_dict_ema": sd, "best_acc": 0.5},
    "DataParallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "compiled+DataParallel": lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("container", list(CONTAINERS))
def test_state_dict_loads_with_arch(tmp_path, helper, reference, container, legacy):
    model, x = reference
    path = tmp_path / "weights.pth"
    torch.save(CONTAINERS[container](model.state_dict()), path, _use_new_zipfile_serialization=not legacy)
    arch = f"{helper.__name__}:factory"
    loaded = load_model(path, arch=arch, device="cpu")
    assert loaded.kind == "state_dict"
    assert loaded.arch == arch
    assert loaded.source == str(path)
    assert not loaded.module.training
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.parameters == sum(p.numel() for p in model.parameters())
    assert loaded.info["weights_only"] is True
    expected_key = None if container in ("bare", "DataParallel") else container.split("+")[0]
    if container == "compiled+DataParallel":
        expected_key = "state_dict"
    assert loaded.info.get("checkpoint_key") == expected_key
    expected_prefix = {"DataParallel": "module.", "compiled+DataParallel": "module._orig_mod."}.get(container, "")
    assert loaded.info["stripped_prefix"] == expected_prefix
    _outputs_equal(loaded, model, x)
    json.dumps(loaded.describe())


def test_prefix_kept_when_the_model_itself_has_it(tmp_path, helper):
    """A model whose own keys start with ``module.`` must not have the prefix stripped."""
    torch.manual_seed(0)
    wrapped = torch.nn.Sequential()
    wrapped.add_module("module", helper.Net())
    path = tmp_path / "w.pt"
    torch.save(wrapped.state_dict(), path)
    (tmp_path / "wrap_arch.py").write_text(
        f"import torch\nimport {helper.__name__} as h\n\n"
        "def build():\n    s = torch.nn.Sequential()\n    s.add_module('module', h.Net())\n    return s\n"
    )
    loaded = load_model(path, arch=f"{tmp_path / 'wrap_arch.py'}:build", device="cpu")
    assert loaded.info["stripped_prefix"] == ""
    assert torch.equal(loaded.module.module.conv.weight, wrapped.module.conv.weight)


def test_arch_kwargs_reach_the_factory(tmp_path, helper):
    torch.manual_seed(0)
    wide = helper.Net(width=7).eval()
    path = tmp_path / "w.pt"
    torch.save(wide.state_dict(), path)
    loaded = load_model(path, arch=f"{helper.__name__}:factory", arch_kwargs={"width": 7}, device="cpu")
    assert loaded.module.conv.out_channels == 7
    assert loaded.info["arch_kwargs"] == {"width": 7}
    assert loaded.parameters == sum(p.numel() for p in wide.parameters())


def test_arch_from_a_python_file(tmp_path, reference, helper):
    model, x = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    arch_file = tmp_path / "my_arch.py"
    arch_file.write_text(f"from {helper.__name__} import Net\n\ndef build():\n    return Net()\n")
    loaded = load_model(path, arch=f"{arch_file}:build", device="cpu")
    _outputs_equal(loaded, model, x)
    assert loaded.info["arch_sha256"] == hashlib.sha256(arch_file.read_bytes()).hexdigest()


def test_arch_module_found_in_working_directory(tmp_path, reference, helper, monkeypatch):
    model, x = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    name = f"cwd_arch_{uuid.uuid4().hex[:8]}"
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / f"{name}.py").write_text(f"from {helper.__name__} import Net as Model\n")
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(workdir))])
    try:
        loaded = load_model(path, arch=f"{name}:Model", device="cpu")
    finally:
        sys.modules.pop(name, None)
    _outputs_equal(loaded, model, x)
    assert str(workdir) not in sys.path


def test_state_dict_without_arch_is_refused(tmp_path, reference):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, device="cpu")
    message = _one_line(excinfo)
    assert "is a state dict" in message and "--arch module:factory" in message and "zoo:NAME" in message


def _drop_key(sd):
    return {k: v for k, v in sd.items() if k != "head.bias"}


def _add_key(sd):
    return {**sd, "extra.weight": torch.zeros(1)}


@pytest.mark.parametrize(
    ("edit", "arch_kwargs", "expected"),
    [
        (_drop_key, None, "1 missing key (head.bias)"),
        (_add_key, None, "1 unexpected key (extra.weight)"),
        (lambda sd: sd, {"width": 6}, "conv.weight: file [4, 3, 3, 3] vs model [6, 3, 3, 3]"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_state_dict_mismatch_is_one_clear_line(tmp_path, helper, reference, edit, arch_kwargs, expected):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save(edit(model.state_dict()), path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, arch=f"{helper.__name__}:factory", arch_kwargs=arch_kwargs, device="cpu")
    message = _one_line(excinfo)
    assert expected in message
    assert "does not fit --arch" in message


def test_shape_mismatch_count(tmp_path, helper, reference):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, arch=f"{helper.__name__}:factory", arch_kwargs={"width": 6}, device="cpu")
    # conv.weight, conv.bias, 4 batch-norm tensors and head.weight change shape with the width
    assert "7 shape mismatches" in _one_line(excinfo)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("no_such_module_eqa:factory", "cannot import 'no_such_module_eqa'"),
        ("{helper}:nope", "has no attribute 'nope'"),
        ("{helper}:not_a_module", "returned a int, not a torch.nn.Module"),
        ("{helper}:broken", "building the architecture failed: RuntimeError: boom"),
        ("{helper}:Payload", "returned a Payload"),
        ("just_a_name", "is not module.path:factory"),
        ("missing_file.py:build", "no such file"),
    ],
)
def test_bad_arch_is_one_clear_line(tmp_path, helper, reference, arch, expected):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, arch=arch.format(helper=helper.__name__), device="cpu")
    assert expected in _one_line(excinfo)


def test_arch_kwargs_without_arch_is_refused(reference):
    with pytest.raises(ModelLoadError, match="without --arch"):
        load_model(reference[0], arch_kwargs={"width": 3}, device="cpu")


# ---------------------------------------------------------------------------------------------------------
# safetensors


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Write the safetensors format by hand (8-byte header length, JSON header, raw little-endian data)."""
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        raw = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_safetensors_without_package_says_how_to_install(tmp_path, reference, helper, monkeypatch):
    model, _ = reference
    path = tmp_path / "w.safetensors"
    path.write_bytes(_safetensors_bytes(model.state_dict()))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, arch=f"{helper.__name__}:factory", device="cpu")
    assert "pip install safetensors" in _one_line(excinfo)


def test_safetensors_loads(tmp_path, reference, helper):
    pytest.importorskip("safetensors")
    model, x = reference
    path = tmp_path / "w.safetensors"
    path.write_bytes(_safetensors_bytes({k: v.float() for k, v in model.state_dict().items()}))
    with pytest.raises(ModelLoadError, match="is a state dict"):
        load_model(path, device="cpu")
    loaded = load_model(path, arch=f"{helper.__name__}:factory", device="cpu")
    assert loaded.kind == "state_dict" and loaded.info["format"] == "safetensors"
    _outputs_equal(loaded, model, x)


# ---------------------------------------------------------------------------------------------------------
# TorchScript and torch.export


def _save_torchscript(model, x, path):
    torch.jit.trace(model, (x,)).save(str(path))


def _save_export(model, x, path):
    torch.export.save(torch.export.export(model, (x,)), path)


ARCHIVES = {"torchscript": (_save_torchscript, "TorchScript"), "export": (_save_export, "torch.export")}


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_archives_need_trust(tmp_path, reference, kind, suffix, device):
    model, x = reference
    path = tmp_path / f"model{suffix}"
    save, label = ARCHIVES[kind]
    save(model, x, path)

    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, device="cpu")
    message = _one_line(excinfo)
    assert label in message and "run code" in message and "--trust" in message

    loaded = load_model(path, trust=True, device=device)
    assert loaded.kind == kind and not loaded.module.training
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.parameters == sum(p.numel() for p in model.parameters())
    assert {p.device.type for p in loaded.module.parameters()} == {device}
    rtol, atol = TOLERANCES[torch.float32]
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x.to(device)).cpu(), model(x), rtol=rtol, atol=atol)
    json.dumps(loaded.describe())


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_archives_refuse_arch(tmp_path, reference, kind, helper):
    model, x = reference
    path = tmp_path / "model.bin"
    ARCHIVES[kind][0](model, x, path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, trust=True, arch=f"{helper.__name__}:factory", device="cpu")
    assert "drop --arch" in _one_line(excinfo)


def test_export_in_training_mode_is_refused(tmp_path, reference):
    model, x = reference
    path = tmp_path / "train.pt2"
    _save_export(model.train(), x, path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, trust=True, device="cpu")
    message = _one_line(excinfo)
    assert "exported in training mode" in message and "batch_norm" in message


# ---------------------------------------------------------------------------------------------------------
# Pickles: nothing runs without trust


class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


PAYLOADS = {
    "open": lambda marker: _Evil(builtins.open, (str(marker), "w")),
    "exec": lambda marker: _Evil(builtins.exec, (f"open({str(marker)!r}, 'w').write('pwned')",)),
}
PAYLOAD_GLOBALS = {"open": f"{open.__module__}.open", "exec": "builtins.exec"}

WRITERS = {
    "torch.save": lambda obj, path: torch.save(obj, path),
    "torch.save legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "pickle protocol 2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "pickle protocol 5": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=5)),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("nested", [False, True], ids=["bare", "in-checkpoint"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, writer, nested):
    marker = tmp_path / "pwned"
    evil = PAYLOADS[payload](marker)
    obj = {"state_dict": {"w": torch.zeros(2)}, "hook": evil} if nested else evil
    path = tmp_path / "model.pt"
    WRITERS[writer](obj, path)

    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, device="cpu")
    message = _one_line(excinfo)
    assert not marker.exists(), "unpickling ran the payload"
    assert PAYLOAD_GLOBALS[payload] in message
    assert "can run code" in message and "--trust" in message and "source you trust" in message

    # The payload is live: plain unpickling does create the marker, so the check above can fail.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(PAYLOADS[payload](control), protocol=2))
    assert control.exists()


def test_pickled_module_needs_trust(tmp_path, helper, reference):
    model, x = reference
    path = tmp_path / "whole.pt"
    torch.save(model, path)

    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, device="cpu")
    message = _one_line(excinfo)
    assert f"{helper.__name__}.Net" in message and "--trust" in message

    loaded = load_model(path, trust=True, device="cpu")
    assert loaded.kind == "pickle"
    assert loaded.info["weights_only"] is False
    assert f"{helper.__name__}.Net" in loaded.info["unsafe_globals"]
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    _outputs_equal(loaded, model, x)
    json.dumps(loaded.describe())


def test_pickled_module_inside_checkpoint(tmp_path, helper, reference):
    model, x = reference
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model, "epoch": 1}, path)
    loaded = load_model(path, trust=True, device="cpu")
    assert loaded.kind == "pickle" and loaded.info["checkpoint_key"] == "model"
    _outputs_equal(loaded, model, x)
    with pytest.raises(ModelLoadError, match="drop --arch"):
        load_model(path, trust=True, arch=f"{helper.__name__}:factory", device="cpu")


def test_checkpoint_with_unsafe_extras_needs_trust_then_arch(tmp_path, helper, reference):
    model, x = reference
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    arch = f"{helper.__name__}:factory"
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, arch=arch, device="cpu")
    assert "argparse.Namespace" in _one_line(excinfo)

    loaded = load_model(path, arch=arch, trust=True, device="cpu")
    assert loaded.kind == "state_dict" and loaded.info["weights_only"] is False
    _outputs_equal(loaded, model, x)


def test_trust_still_loads_safe_files_safely(tmp_path, helper, reference):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=f"{helper.__name__}:factory", trust=True, device="cpu")
    assert loaded.info["weights_only"] is True and "unsafe_globals" not in loaded.info


def test_trusted_pickle_that_is_not_a_model(tmp_path, helper):
    path = tmp_path / "obj.pt"
    torch.save(helper.Payload(), path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, trust=True, device="cpu")
    assert "holds a Payload, not a torch.nn.Module" in _one_line(excinfo)


def test_dict_without_model_lists_its_keys(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "net": {"w": torch.zeros(1)}, "lr": 0.1}, path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, device="cpu")
    message = _one_line(excinfo)
    assert "keys [epoch, net, lr]" in message and "state_dict/model_state_dict/model/state_dict_ema" in message


# ---------------------------------------------------------------------------------------------------------
# Unreadable files


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _corrupt_pickle_in_zip(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"\x80\x02xxxx" + data[6:] if item.filename.endswith("data.pkl") else data)


def _other_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photos/readme.txt", "not a model")


BAD_FILES = {
    "missing": (lambda p: None, "not found"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "text": (lambda p: p.write_text("hello world\n"), ""),
    "random": (lambda p: p.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()), ""),
    "truncated zip": (_truncated, "not a readable PyTorch file"),
    "corrupt zip": (_corrupt_pickle_in_zip, "(corrupt)"),
    "other zip": (_other_zip, "zip archive but not a PyTorch"),
}


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_files_are_one_line_errors(tmp_path, case, trust):
    make, expected = BAD_FILES[case]
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    make(path)
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(path, trust=trust, device="cpu")
    message = _one_line(excinfo)
    assert expected in message
    assert str(path) in message


# ---------------------------------------------------------------------------------------------------------
# In-memory modules, hashes, describe, devices, torch version


def test_in_memory_module(reference, helper):
    model, _ = reference
    model.train()
    loaded = load_model(model, device="cpu")
    assert loaded.module is model and not model.training
    assert (loaded.kind, loaded.source, loaded.sha256, loaded.arch) == ("module", "<module Net>", None, None)
    assert loaded.parameters == sum(p.numel() for p in model.parameters())
    assert json.loads(json.dumps(loaded.describe())) == {
        "source": "<module Net>",
        "kind": "module",
        "sha256": None,
        "parameters": loaded.parameters,
        "arch": None,
        "info": {},
        "preprocess": None,
        "output": None,
    }
    with pytest.raises(ModelLoadError, match="drop --arch"):
        load_model(model, arch=f"{helper.__name__}:factory", device="cpu")


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 7])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_describe_turns_non_json_info_into_text(helper):
    loaded = LoadedModel(helper.Net(), "x", "module", None, 1, None, {"device": torch.device("cpu"), "t": (1, 2)})
    described = loaded.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["info"] == {"device": "device(type='cpu')", "t": [1, 2]}


@pytest.mark.parametrize("name", [None, "auto", " AUTO "])
def test_resolve_device_auto(name):
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device(name) == expected


@pytest.mark.parametrize("name", ["cpu", torch.device("cpu"), "cpu:0"])
def test_resolve_device_cpu(name):
    assert resolve_device(name).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_device_cuda_gets_an_index():
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())


@pytest.mark.parametrize(
    "name",
    ["gpu", "cuda:x", "", "meta", "cuda:999"]
    + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    + ([] if torch.backends.mps.is_available() else ["mps"]),
)
def test_resolve_device_rejects(name):
    with pytest.raises(DeviceError) as excinfo:
        resolve_device(name)
    assert isinstance(excinfo.value, EquiauditError)
    assert repr(name) in _one_line(excinfo)


@pytest.mark.parametrize("device", DEVICES)
def test_model_lands_on_device(tmp_path, reference, helper, device):
    model, x = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=f"{helper.__name__}:factory", device=device)
    assert {p.device.type for p in loaded.module.parameters()} == {device}
    assert {p.dtype for p in loaded.module.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x.to(device)).cpu(), model(x))


@pytest.mark.parametrize(
    ("version", "ok"), [("2.5.1", False), ("2.6.0a0+git1234", False), ("2.6.0", True), ("2.14.1+cu130", True)]
)
def test_check_torch_version(monkeypatch, reference, version, ok):
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion(version))
    if ok:
        check_torch_version()
        return
    with pytest.raises(ModelLoadError) as excinfo:
        check_torch_version()
    message = _one_line(excinfo)
    assert "CVE-2025-32434" in message and "torch>=2.6" in message
    with pytest.raises(ModelLoadError, match="CVE-2025-32434"):
        load_model(reference[0], device="cpu")


# ---------------------------------------------------------------------------------------------------------
# Model sources (schemes)


@pytest.fixture
def fake_source(helper):
    register_source("fake", helper.SOURCE)
    yield helper.SOURCE
    unregister_source("fake")


def test_registered_source_loads(fake_source):
    loaded = load_model("fake:tiny", device="cpu")
    assert loaded.kind == "fake" and loaded.source == "fake:tiny"
    assert loaded.sha256 == "ab" * 32 and loaded.info["name"] == "tiny"
    assert not loaded.module.training
    assert "fake" in model_sources()
    assert json.loads(json.dumps(loaded.describe()))["info"]["device"] == "device(type='cpu')"
    with pytest.raises(ModelLoadError, match="no shipped model 'nope'"):
        load_model("fake:nope", device="cpu")
    with pytest.raises(ModelLoadError, match="drop --arch"):
        load_model("fake:tiny", arch="fake:tiny", device="cpu")


def test_source_builds_arch_for_state_dict(tmp_path, fake_source, reference):
    model, x = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="fake:anything", device="cpu")
    assert loaded.kind == "state_dict" and loaded.arch == "fake:anything"
    _outputs_equal(loaded, model, x)


def test_unknown_source_lists_known_ones(fake_source):
    with pytest.raises(ModelLoadError) as excinfo:
        load_model("hub:org/model", device="cpu")
    message = _one_line(excinfo)
    assert "unknown source 'hub'" in message and "known: fake" in message


def test_existing_path_is_not_a_scheme(tmp_path, monkeypatch, helper, reference):
    model, x = reference
    monkeypatch.chdir(tmp_path)
    Path("weird:name.pt").write_bytes(b"")
    torch.save(model.state_dict(), "weird:name.pt")
    loaded = load_model("weird:name.pt", arch=f"{helper.__name__}:factory", device="cpu")
    _outputs_equal(loaded, model, x)


def test_windows_drive_is_a_path():
    with pytest.raises(ModelLoadError) as excinfo:
        load_model("C:\\models\\net.pt", device="cpu")
    assert "not found" in _one_line(excinfo)


def test_path_objects_are_never_schemes(tmp_path, fake_source):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(Path("fake:tiny"), device="cpu")


def test_source_without_create(tmp_path, reference):
    model, _ = reference
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    register_source("loadonly", type("LoadOnly", (), {"load": lambda self, rest, *, device: None})())
    try:
        with pytest.raises(ModelLoadError) as excinfo:
            load_model(path, arch="loadonly:x", device="cpu")
        assert "cannot build architectures" in _one_line(excinfo)
        with pytest.raises(ModelLoadError, match=r"returned NoneType, not \(module, info\)"):
            load_model("loadonly:x", device="cpu")
    finally:
        unregister_source("loadonly")


@pytest.mark.parametrize("name", ["x", "", "1abc", "a b", "zoo:"])
def test_register_source_rejects_bad_names(name):
    with pytest.raises(ValueError):
        register_source(name, object())


def test_entry_points_are_read_from_the_group_and_loaded_lazily(monkeypatch, helper):
    groups = []
    entry = EntryPoint(name="epsrc", value=f"{helper.__name__}:SOURCE", group=ENTRY_POINT_GROUP)
    broken = EntryPoint(name="epbroken", value="no_such_module_eqa:SOURCE", group=ENTRY_POINT_GROUP)

    def fake_entry_points(*, group):
        groups.append(group)
        return [entry, broken]

    monkeypatch.setattr(loading, "entry_points", fake_entry_points)
    monkeypatch.setattr(loading, "_entry_point_cache", None)
    monkeypatch.setattr(loading, "_registered", {})
    assert model_sources() == ["epbroken", "epsrc", *sorted(loading.BUILTIN_SOURCES)]
    assert groups == [ENTRY_POINT_GROUP]
    assert loading._registered == {}  # listing imports nothing

    loaded = load_model("epsrc:tiny", device="cpu")
    assert loaded.kind == "epsrc" and loading._registered == {"epsrc": helper.SOURCE}
    with pytest.raises(ModelLoadError) as excinfo:
        load_model("epbroken:tiny", device="cpu")
    assert "model source 'epbroken'" in _one_line(excinfo) and "failed to import" in str(excinfo.value)
