"""Any output structure (``output``: auto takes .logits, then 'out', then a single tensor, and says so) and where
the group acts (on the image before normalisation; ``fill`` is the padding colour in image space)."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from _models import SmallCNN
from equiaudit.cli import app
from torch import nn
from typer.testing import CliRunner

from equiaudit import audit, load_data
from equiaudit.adapt import ModelAdapter
from equiaudit.data import AuditData
from equiaudit.errors import EquiauditError, InputMismatchError
from equiaudit.result import AuditResult

Output = namedtuple("Output", ["logits", "hidden"])
DATA = Path(__file__).parent / "data"


class Structured(nn.Module):
    """SmallCNN whose logits come back inside another structure."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.base, self.wrap = SmallCNN(), wrap

    def forward(self, x: torch.Tensor):
        logits = self.base(x)
        return self.wrap(logits, logits.flip(-1) * 2)


WRAPS = {
    "dict": lambda a, b: {"out": a, "aux": b},
    "items": lambda a, b: {"items": a, "keys": b},
    "tuple": lambda a, b: (a, b),
    "single": lambda a, b: (a,),
    "named": lambda a, b: Output(a, b),
    "nested": lambda a, b: {"heads": [b, a]},
    "tensor": lambda a, b: a,
}


@pytest.mark.parametrize(
    ("wrap", "output", "where"),
    [
        ("dict", "auto", "['out']"),
        ("dict", "aux", "['aux']"),
        ("items", "items", "['items']"),  # the key, not dict.items
        ("tuple", "0", "[0]"),
        ("single", "auto", "[0]"),
        ("named", "auto", ".logits"),
        ("named", "1", "[1]"),
        ("nested", "heads.1", "['heads'][1]"),
        ("tensor", "auto", ""),
    ],
)
def test_output_selection(wrap: str, output: str, where: str) -> None:
    model = Structured(WRAPS[wrap])
    chosen: list[tuple[str, bool]] = []
    adapter = ModelAdapter(model, output=output, on_choice=lambda w, _v, auto: chosen.append((w, auto)))
    x = torch.rand(3, 1, 28, 28)
    y = adapter(x)
    expected = model.base(x) if output in ("auto", "0", "items", "heads.1") else model.base(x).flip(-1) * 2
    torch.testing.assert_close(y, expected)
    adapter(x)
    assert chosen == [(where, output == "auto")] and adapter.chosen == where  # chosen once, on the first forward


@pytest.mark.parametrize(
    ("wrap", "output", "message"),
    [
        ("tuple", "auto", r"returned a tuple of 2 \(tensor, tensor\); choose .* --output"),
        ("dict", "logits", r"'logits' is not in the model's output, which is dict with keys out, aux"),
        ("tuple", "5", r"'5' is not in the model's output"),
        ("tensor", "0", r"already a tensor of shape \(3, 10\)"),
        ("nested", "heads", r"\['heads'\] of the model's output is a list of 2"),
    ],
)
def test_output_mistakes_are_one_line(wrap: str, output: str, message: str) -> None:
    with pytest.raises(InputMismatchError, match=message) as excinfo:
        ModelAdapter(Structured(WRAPS[wrap]), output=output)(torch.rand(3, 1, 28, 28))
    assert "\n" not in str(excinfo.value)


def test_audit_records_the_output_taken_and_says_which() -> None:
    torch.manual_seed(0)
    model = Structured(WRAPS["dict"])
    notes: list[str] = []
    x = torch.rand(4, 1, 28, 28)
    res = audit(model, x, "c4", samples=0, on_note=notes.append)
    assert res.model.output == "['out']" and res.run.spec["output"] == "auto"
    assert notes == ["output: ['out'] of the model's dict (chosen automatically; --output picks one)"]
    plain = audit(model.base, x, "c4", samples=0)
    assert plain.model.output is None
    for col in ("agreement", "invariance_error"):
        assert res.elements[col].tolist() == pytest.approx(plain.elements[col].tolist(), abs=1e-6)
    tuple_model = Structured(WRAPS["tuple"])
    tuple_model.base = model.base
    with pytest.raises(InputMismatchError, match="--output"):
        audit(tuple_model, x, "c4", samples=0)
    assert audit(tuple_model, x, "c4", samples=0, output="0").model.output == "[0]"


@pytest.mark.parametrize("value", ["", "a b", 3])
def test_output_option_is_validated(value) -> None:
    with pytest.raises(EquiauditError, match="output must be"):
        audit(SmallCNN(), torch.rand(2, 1, 28, 28), "c4", output=value)


def test_output_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 10, 3, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        y = self.conv(x)\n"
        "        return {'out': y.mean((2, 3)), 'aux': y}\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("eqa_net_cli", tmp_path / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.Net().state_dict(), tmp_path / "sd.pt")
    args = ["scan", str(tmp_path / "sd.pt"), "--arch", f"{tmp_path / 'net.py'}:Net", "--limit", "2", "-g", "c4"]
    result = CliRunner().invoke(app, [*args, "--output", "aux", "--json", "--samples", "0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["run"]["task"], doc["model"]["output"], doc["run"]["spec"]["output"]) == ("dense", "['aux']", "aux")
    result = CliRunner().invoke(app, [*args, "--samples", "0"])
    assert result.exit_code == 0 and "note: output: ['out'] of the model's dict" in result.stderr
    result = CliRunner().invoke(app, [*args, "--output", "nope"])
    assert result.exit_code == 2 and "'nope' is not in the model's output" in result.stderr


# ------------------------------------------------------------------------------------- where the group acts


class Recorder(nn.Module):
    """Records what the model receives; outputs the mean per channel (a classifier of sorts)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean((2, 3)) + self.dummy


MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]


@pytest.mark.parametrize(("fill", "corner"), [("zeros", [-2.0, -2.0, -3.0]), ("mean", [0.0, 0.0, 0.0])])
@pytest.mark.parametrize("input_mask", ["none", "auto"])
def test_padding_brings_in_the_fill_colour_in_image_space(fill: str, corner: list[float], input_mask: str) -> None:
    """Rotated by 45 degrees, a corner of the view lies outside the image: the model sees the fill colour
    normalised as every pixel is ((0 - mean) / std for black, 0 for the mean colour); so do pixels the input
    mask removes."""
    model = Recorder()
    res = audit(
        model, "photos", "rot:0..45:2", limit=2, input_size=32, channels=3, mean=MEAN, std=STD, fill=fill,
        input_mask=input_mask, samples=0,
    )  # fmt: skip
    views = next(v for v in model.seen if len(v) > 2)  # the scan's forward: the images, then their rotated copies
    rotated = views[2:4]
    torch.testing.assert_close(rotated[:, :, 0, 0], torch.tensor([corner, corner]), atol=1e-5, rtol=0)
    if input_mask == "auto":  # masked pixels of the untransformed images are the fill colour too
        torch.testing.assert_close(views[0, :, 0, 0], torch.tensor(corner), atol=1e-5, rtol=0)
    else:
        raw = load_data("photos", limit=1, input_size=32, channels=3, mean=MEAN, std=STD).read(0, 1).x
        torch.testing.assert_close(views[0], raw[0], atol=1e-5, rtol=1e-5)  # the model's input is as normalised
    pre = res.data.preprocess
    assert pre["normalise"] == {"mean": MEAN, "std": STD} and pre["fill"] == ([0.0] * 3 if fill == "zeros" else MEAN)
    assert res.data.normalisation == (None if fill == "zeros" else {"mean": MEAN, "std": [1.0] * 3})
    assert res.run.spec["fill"] == fill


def test_fill_mean_is_what_padding_the_normalised_input_gave() -> None:
    """Resampling is linear and the normalisation affine, so acting on the normalised tensor with zero padding
    (data given already normalised) equals acting on the image with the mean colour as fill."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(1, 3, 32, 32))
    data = load_data("photos", limit=4, input_size=32, channels=3, mean=MEAN, std=STD)
    normalised = AuditData.from_tensors(data.read(0, 4).x)  # in memory: used as given
    kw = {"group": "so2:6", "samples": 0, "input_mask": "none"}
    image = audit(model, "photos", limit=4, input_size=32, channels=3, mean=MEAN, std=STD, fill="mean", **kw)
    given = audit(model, normalised, **kw)
    black = audit(model, "photos", limit=4, input_size=32, channels=3, mean=MEAN, std=STD, **kw)
    for col in ("invariance_error", "floor", "kl"):
        assert image.elements[col].tolist() == pytest.approx(given.elements[col].tolist(), rel=1e-4, abs=1e-6)
    assert black.summary["invariance_error_mean"] != pytest.approx(image.summary["invariance_error_mean"], rel=1e-3)


def test_fill_mean_needs_a_mean() -> None:
    with pytest.raises(EquiauditError, match="fill 'mean' pads with the normalisation mean") as excinfo:
        audit(SmallCNN(), torch.rand(2, 1, 28, 28), "c4", fill="mean")
    assert "\n" not in str(excinfo.value)
    with pytest.raises(EquiauditError, match="unknown fill 'reflect'; valid: zeros, mean"):
        audit(SmallCNN(), torch.rand(2, 1, 28, 28), "c4", fill="reflect")  # reflection is --padding reflection


def test_version_1_results_say_how_they_padded() -> None:
    doc = json.loads((DATA / "result-v1-classify.json").read_text())
    assert AuditResult.from_dict(doc).run.spec["fill"] == "zeros"
    doc["meta"]["data"]["normalisation"] = {"mean": [0.5], "std": [0.2]}
    upgraded = AuditResult.from_dict(doc).run.spec
    assert (upgraded["fill"], upgraded["output"], upgraded["max_elements"], upgraded["force"]) == (
        "mean", "auto", 4096, False,
    )  # fmt: skip
