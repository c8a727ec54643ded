"""The models people already use, built locally with random weights (nothing is downloaded): torchvision (a
10-class resnet18 from a state dict, DeepLabV3 with its dict output), timm and Hugging Face (when installed), the
``?key=value`` constructor keywords, and the preprocessing each source declares."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from equiaudit.cli import app
from typer.testing import CliRunner

from equiaudit import audit, load_model
from equiaudit.errors import ModelLoadError
from equiaudit.loading import BUILTIN_SOURCES, model_sources, parse_keywords
from equiaudit.preprocess import Preprocess, merge

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (extra [timm])")
needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed (extra [hf])"
)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    ("text", "name", "kwargs"),
    [
        ("resnet18", "resnet18", {}),
        ("resnet18?num_classes=10", "resnet18", {"num_classes": 10}),
        ("m:f?weights=None,drop=0.5,norm=batch", "m:f", {"weights": None, "drop": 0.5, "norm": "batch"}),
        ("f?size=(3, 4),name='a,b',flag=True", "f", {"size": (3, 4), "name": "a,b", "flag": True}),
    ],
)
def test_keywords_are_literals_after_a_question_mark(text: str, name: str, kwargs: dict) -> None:
    assert parse_keywords(text) == (name, kwargs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resnet18?", "no keywords"),
        ("resnet18?10", "key=value pairs"),
        ("resnet18?a=", "cannot read"),
        ("resnet18?a=open('x')", "not a literal"),
        ("resnet18?**k", "key=value pairs"),
    ],
)
def test_bad_keywords_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as excinfo:
        parse_keywords(text)
    _one_line(excinfo)


def test_builtin_sources_are_listed_without_importing_their_libraries() -> None:
    assert set(BUILTIN_SOURCES) == {"torchvision", "timm", "hf"}
    assert set(BUILTIN_SOURCES) <= set(model_sources())


# ---------------------------------------------------------------------------------------------- torchvision


def test_resnet18_with_10_classes_from_a_state_dict(tmp_path) -> None:
    """The issue's case: a 10-class state dict needs num_classes=10, now given after '?', for --arch as well."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18_sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"fc.weight: file \[10, 512\] vs model \[1000, 512\]"):
        load_model(path, arch="torchvision:resnet18", device="cpu")
    loaded = load_model(path, arch="torchvision:resnet18?num_classes=10", device="cpu")
    assert (loaded.kind, loaded.info["arch_kwargs"]) == ("state_dict", {"num_classes": 10})
    assert loaded.preprocess is None  # a state dict's training pipeline is the user's
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x))
    images = (np.random.default_rng(0).random((4, 32, 32, 3)) * 255).astype(np.uint8)  # NumPy, channels last
    res = audit(path, (images, np.arange(4)), "c4", arch="torchvision:resnet18?num_classes=10", samples=0)
    assert (res.task, res.run.output_shape, res.data.input_shape) == ("classify", [10], [3, 32, 32])
    assert res.model.arch == "torchvision:resnet18?num_classes=10" and res.summary["floor_max"] == 0.0


def test_resnet18_state_dict_on_the_command_line(tmp_path) -> None:
    import torchvision

    path = tmp_path / "sd.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).random((3, 3, 32, 32)).astype(np.float32), y=np.array([1, 2, 3]))
    args = ["scan", str(path), "--arch", "torchvision:resnet18?num_classes=10", "--data", str(data), "-g", "flip"]
    result = CliRunner().invoke(app, [*args, "--json", "--samples", "0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["info"]["arch_kwargs"] == {"num_classes": 10} and doc["run"]["output_shape"] == [10]


def test_torchvision_source_declares_its_weights_preprocessing() -> None:
    """A scan of a torchvision model on a folder of photos needs no other option: resize 256, crop 224, the
    ImageNet mean / std (applied in the model, after the group acts), RGB."""
    notes: list[str] = []
    source = "torchvision:mobilenet_v3_small?weights=None"
    res = audit(source, "photos", "flip", limit=2, samples=0, on_note=notes.append)
    assert res.model.info["weights"] is None and res.model.kind == "torchvision"
    assert res.model.preprocess["source"] == "torchvision weights MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert (res.model.preprocess["resize"], res.model.preprocess["crop"]) == (256, [224, 224])
    pre = res.data.preprocess
    assert res.data.input_shape == [3, 224, 224] and pre["normalise"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert pre["from"].startswith("torchvision weights") and pre["fill"] == [0.0, 0.0, 0.0]
    assert res.data.normalisation is None  # the audited values are the image itself (black padding)
    assert res.run.output_shape == [1000] and res.model.output is None and notes == []


def test_torchvision_options_given_by_the_user_win() -> None:
    res = audit("torchvision:mobilenet_v3_small?weights=None", "photos", "flip", limit=1, input_size=48, samples=0)
    assert res.data.input_shape == [3, 48, 48]
    assert res.data.preprocess["overridden"] == ["resize", "crop"] and "mean" in res.data.preprocess["taken"]


def test_torchvision_cached_weights_load_safely(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"not in torch's cache .*weights=None") as excinfo:
        load_model("torchvision:resnet18", device="cpu")
    _one_line(excinfo)
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")  # where torchvision would have put it
    loaded = load_model("torchvision:resnet18", device="cpu")
    assert loaded.info["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert loaded.preprocess is not None and loaded.preprocess.crop == (224, 224)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    (cache / "resnet18-f37072fd.pth").write_bytes(_pickled_callable())
    with pytest.raises(ModelLoadError, match=r"loading .* failed"):  # weights_only: no code runs
        load_model("torchvision:resnet18", device="cpu")


def _pickled_callable() -> bytes:
    import io
    import os

    buf = io.BytesIO()
    torch.save({"fc.weight": os.getcwd}, buf)  # a global weights_only refuses
    return buf.getvalue()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("torchvision:resnet81", "no model 'resnet81' .*resnet18"),
        ("torchvision:resnet18?weights=IMAGENET9", "no weights 'IMAGENET9'"),
        ("torchvision:resnet18?weights=None,bogus=1", "building the model failed"),
    ],
)
def test_torchvision_mistakes_are_one_line(source: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as excinfo:
        load_model(source, device="cpu")
    _one_line(excinfo)


def test_deeplabv3_dict_output_audited_as_segmentation() -> None:
    """{'out': ..., 'aux': ...}: auto takes 'out' and says so; --output aux takes the other."""
    source = "torchvision:deeplabv3_mobilenet_v3_large?weights=None,num_classes=2,aux_loss=True"
    notes: list[str] = []
    res = audit(source, "shapes-seg", "c4", limit=2, input_size=64, samples=0, on_note=notes.append)
    assert (res.task, res.run.output_shape, res.model.output) == ("segment", [2, 64, 64], "['out']")
    assert any("output: ['out']" in n and "--output" in n for n in notes)
    assert res.model.preprocess["resize"] == 520 and res.data.input_shape == [3, 64, 64]  # input_size=64 wins
    assert "iou_consistency" in res.elements and res.summary["floor_max"] == 0.0
    aux = audit(source, "shapes-seg", "flip", limit=1, input_size=32, samples=0, output="aux")
    assert aux.model.output == "['aux']" and aux.run.spec["output"] == "aux"


def test_deeplabv3_on_the_command_line_says_which_output() -> None:
    source = "torchvision:deeplabv3_mobilenet_v3_large?weights=None,num_classes=2"
    args = ["scan", source, "--data", "shapes-seg", "--limit", "1", "--input-size", "48", "-g", "flip"]
    result = CliRunner().invoke(app, [*args, "--samples", "0"])
    assert result.exit_code == 0, result.output
    assert "note: output: ['out'] of the model's OrderedDict" in result.stderr


# ---------------------------------------------------------------------------------------------------- timm


@needs_timm
def test_timm_model_with_its_pretrained_config() -> None:
    notes: list[str] = []
    res = audit("timm:test_resnet?pretrained=False", "photos", "flip", limit=2, samples=0, on_note=notes.append)
    pre = res.model.preprocess
    assert pre["source"].startswith("timm pretrained config of test_resnet")
    assert (pre["resize"], pre["crop"], pre["mean"]) == (168, [160, 160], [0.5] * 3)  # floor(160 / 0.95)
    assert res.data.input_shape == [3, 160, 160] and res.data.preprocess["normalise"]["std"] == [0.5] * 3
    assert res.model.info["weights"] is None and res.task == "classify"


@needs_timm
def test_timm_architecture_for_a_state_dict_and_missing_weights(tmp_path, monkeypatch) -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=10).eval()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="timm:test_resnet?num_classes=10", device="cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x))
    import huggingface_hub.constants
    from safetensors.torch import save_file

    hub = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelLoadError, match=r"no pretrained weights in the .* cache.*pretrained=False") as excinfo:
        load_model("timm:test_resnet", device="cpu")
    _one_line(excinfo)
    # the Hugging Face cache layout timm would have left: refs/main names the snapshot that holds the file
    repo = hub / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    pretrained = timm.create_model("test_resnet").eval()
    save_file(pretrained.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    loaded = load_model("timm:test_resnet", device="cpu")
    assert loaded.info["weights_file"].endswith("model.safetensors") and loaded.info["weights"] == "r160_in1k"
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), pretrained(x))
    with pytest.raises(ModelLoadError, match="no model 'test_resnett'"):
        load_model("timm:test_resnett", device="cpu")


def test_missing_optional_library_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'equiaudit\[timm\]'"):
        load_model("timm:resnet18", device="cpu")
    with pytest.raises(ModelLoadError, match=r"pip install 'equiaudit\[hf\]'"):
        load_model("hf:some/folder", device="cpu")


# -------------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra [hf])")
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3).save_pretrained(folder)
    return folder


@needs_hf
def test_hugging_face_classifier_from_a_local_folder(hf_folder) -> None:
    notes: list[str] = []
    res = audit(f"hf:{hf_folder}", "photos", "c4", limit=2, samples=0, on_note=notes.append)
    assert res.model.output == ".logits" and res.run.output_shape == [10]
    assert any("output: .logits of the model's ImageClassifierOutput" in n for n in notes)
    assert res.model.info["class"] == "ViTForImageClassification" and len(res.model.info["classes"]) == 10
    assert res.data.input_shape == [3, 32, 32] and res.data.preprocess["resample"] == "bicubic"
    assert res.data.preprocess["normalise"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert res.summary["floor_max"] == 0.0


@needs_hf
def test_hugging_face_on_the_command_line(hf_folder) -> None:
    args = ["scan", f"hf:{hf_folder}", "--data", "photos", "--limit", "1", "-g", "flip", "--json", "--samples", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # nothing but the document on stdout (no progress bars from transformers)
    assert doc["model"]["output"] == ".logits" and doc["model"]["preprocess"]["input_size"] == [32, 32]


@needs_hf
def test_hugging_face_refusals_are_one_line(tmp_path, hf_folder) -> None:
    with pytest.raises(ModelLoadError, match=r"neither a folder with a config\.json nor a model") as excinfo:
        load_model(f"hf:{tmp_path / 'nowhere'}", device="cpu")
    _one_line(excinfo)
    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((hf_folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling.Net"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="needs code from the model's folder"):
        load_model(f"hf:{remote}", device="cpu")


# -------------------------------------------------------------------------------------------- preprocessing


def test_the_models_preprocessing_fills_only_what_the_user_left_unset() -> None:
    pre = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels=3, source="weights")
    options, record = merge(pre, {"limit": 3, "input_size": None, "mean": None, "std": None})
    assert options == {"limit": 3, "input_size": None, "resize": 256, "crop": (224, 224), "mean": tuple(IMAGENET_MEAN),
                       "std": tuple(IMAGENET_STD), "resample": "bilinear", "channels": 3}  # fmt: skip
    options, record = merge(pre, {"input_size": 64, "std": [0.5]})
    assert "resize" not in options and options["std"] == [0.5] and "mean" not in options
    assert record["overridden"] == ["resize", "crop", "mean", "std"]


def test_trusted_pickle_imports_the_users_module_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """A pickled module names its class by module; like --arch, the working directory is searched too."""
    name = f"mymodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = torch.nn.Linear(4, 2)

                def forward(self, x):
                    return self.fc(x.flatten(1)[:, :4])
            """
        )
    )
    with pytest.MonkeyPatch.context() as saving:
        saving.syspath_prepend(str(tmp_path))
        torch.save(__import__(name).Net(), tmp_path / "net.pt")
    sys.modules.pop(name)
    # as under the `equiaudit` script: neither the folder nor the working directory is on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    try:
        loaded = load_model("net.pt", trust=True, device="cpu")
        assert type(loaded.module).__name__ == "Net" and loaded.info["imported_from"] == str(tmp_path)
    finally:
        sys.modules.pop(name, None)
