"""Real image pipelines: resize / crop as torchvision does, folders read by worker processes, class folders checked
against the model's outputs (or mapped by --classes), segmentation folders, the ImageNet layouts, NumPy arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from equiaudit.cli import app
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from equiaudit import audit, load_data
from equiaudit.errors import DataError, InputMismatchError

LEVELS = [k / 10 + 0.05 for k in range(10)]  # class k: a flat grey image of this level


class Oracle(nn.Module):
    """Classifies flat grey images by their level: always right, exactly invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.levels = nn.Parameter(torch.tensor(LEVELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -1000 * (x.mean((1, 2, 3))[:, None] - self.levels) ** 2


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _grey_classes(root: Path, skip: tuple[int, ...] = (), per_class: int = 2) -> Path:
    for k, level in enumerate(LEVELS):
        if k in skip:
            continue
        for i in range(per_class):
            _save(root / str(k) / f"{i}.png", np.full((8, 8), round(255 * level), np.uint8))
    return root


def test_a_missing_class_folder_is_an_error_not_a_shift(tmp_path: Path) -> None:
    """Folder '3' missing: sorted folders would label 4..9 as 3..8 and accuracy drop silently (1.0 -> 0.2)."""
    full = audit(Oracle(), str(_grey_classes(tmp_path / "full")), "c4", samples=0)
    assert full.summary["accuracy_reference"] == 1.0 and full.data.classes_from == "folders"
    gap = _grey_classes(tmp_path / "gap", skip=(3,))
    with pytest.raises(InputMismatchError) as excinfo:
        audit(Oracle(), str(gap), "c4", samples=0)
    message = str(excinfo.value)
    assert "\n" not in message and "has 9 class folders (0, 1, 2, 4, ...) but the model has 10 outputs" in message
    assert "--classes" in message
    mapped = audit(Oracle(), str(gap), "c4", samples=0, classes=[str(k) for k in range(10)])
    assert mapped.summary["accuracy_reference"] == 1.0 and mapped.data.classes_from == "classes"
    assert mapped.data.num_classes == 10 and mapped.per_class["classes"] == [str(k) for k in range(10)]


def test_classes_from_a_file_and_folders_outside_it(tmp_path: Path) -> None:
    root = _grey_classes(tmp_path / "data", skip=(0, 1, 2, 3, 4, 5, 6, 7))
    listing = tmp_path / "classes.txt"
    listing.write_text("# model order\n" + "".join(f"{k} level {LEVELS[k]:.2f}\n" for k in range(10)))
    data = load_data(str(root), classes=str(listing))
    assert data.read(0, len(data)).y.tolist() == [8, 8, 9, 9] and data.class_names == [str(k) for k in range(10)]
    with pytest.raises(DataError, match=r"class folder\(s\) 9 in .* are not among the 3 classes given"):
        load_data(str(root), classes="7,8,x")
    with pytest.raises(DataError, match="classes lists '8' twice"):
        load_data(str(root), classes="8,8")


def test_resize_and_crop_match_torchvision() -> None:
    from torchvision.transforms.v2 import functional as TF

    from equiaudit.data import centre_crop, resize_image, shorter_side_size

    x = torch.rand(3, 40, 61)
    assert shorter_side_size(40, 61, 32) == (32, 48)  # the longer side truncated, as torchvision
    for resample, mode in (("bilinear", TF.InterpolationMode.BILINEAR), ("bicubic", TF.InterpolationMode.BICUBIC)):
        ours = centre_crop(resize_image(x, shorter_side_size(40, 61, 32), resample), (28, 28))
        theirs = TF.center_crop(TF.resize(x, 32, interpolation=mode, antialias=True), [28, 28])
        if resample == "bicubic":  # as PIL's 8-bit result: no overshoot beyond the input's range
            theirs = theirs.clamp(float(x.min()), float(x.max()))
        assert ours.shape == (3, 28, 28)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_folders_of_any_size_read_by_workers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(11):
        h, w = rng.integers(20, 40, size=2)
        _save(tmp_path / "imgs" / f"{i:02d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    folder = str(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"differ in size .* --resize with --crop"):
        load_data(folder)
    serial = load_data(folder, resize=20, crop=16, workers=0)
    parallel = load_data(folder, resize=20, crop=16, workers=2)
    assert (serial.workers, parallel.workers, parallel.input_shape) == (0, 2, (3, 16, 16))
    every = serial.read(0, 11).x
    for start, stop in ((0, 2), (0, 4), (4, 9), (9, 11), (3, 5)):  # in order, then a range read again
        torch.testing.assert_close(parallel.read(start, stop).x, every[start:stop], rtol=0, atol=0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(4))
    model(every[:1])
    a = audit(model, serial, "so2:4", samples=0)
    b = audit(model, parallel, "so2:4", samples=0)
    assert a.elements["invariance_error"].tolist() == b.elements["invariance_error"].tolist()


def test_segmentation_folders_are_image_mask_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        _save(tmp_path / "seg" / "images" / f"{name}.jpg", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
        mask = np.zeros((24, 24), np.uint8)
        mask[6:18, 4:20] = 255
        _save(tmp_path / "seg" / "masks" / f"{name}.png", mask)
    data = load_data(str(tmp_path / "seg"), input_size=16)
    batch = data.read(0, 3)
    assert data.has_masks and not data.has_labels and batch.mask.shape == (3, 1, 16, 16)
    seg = nn.Conv2d(3, 2, 3, padding=1)
    res = audit(seg, str(tmp_path / "seg"), "c4", samples=0)
    assert res.task == "segment" and "iou_truth" in res.elements
    (tmp_path / "seg" / "masks" / "c.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) in .* have no mask of the same name .*\(c.jpg\)"):
        load_data(str(tmp_path / "seg"))


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]


def _mapping(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)))


def test_imagenet_validation_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folders = tmp_path / "folders"
    for wnid in (WNIDS[1], WNIDS[3]):
        _save(folders / "val" / wnid / "x.JPEG", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"has 2 of the 1000 ImageNet class folders, so .* --classes"):
        load_data(f"imagenet:{folders}", resize=16, crop=16)
    _mapping(folders)
    data = load_data(f"imagenet:{folders}", resize=16, crop=16)
    assert data.read(0, 2).y.tolist() == [1, 3] and data.num_classes == 5 and data.split == "val"

    kaggle = tmp_path / "kaggle"
    _mapping(kaggle)
    val = kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate((WNIDS[4], WNIDS[0], WNIDS[2])):
        _save(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
        rows.append(f"ILSVRC2012_val_{i + 1:08d},{wnid} 1 2 3 4")
    (kaggle / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    data = load_data(f"imagenet:{kaggle}", resize=16, crop=16)
    assert data.read(0, 3).y.tolist() == [4, 0, 2] and data.class_names == WNIDS
    with pytest.raises(DataError, match="ImageNet train images not found"):
        load_data(f"imagenet:{kaggle}", split="train")


def test_numpy_arrays_are_accepted_where_tensors_are() -> None:
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(1, 3, 16, 16))
    channels_last = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)  # as PIL / OpenCV give images
    res = audit(model, (channels_last, np.array([0, 1, 2, 3])), "c4", samples=0)
    as_tensor = torch.from_numpy(channels_last).permute(0, 3, 1, 2).float() / 255
    ref = audit(model, (as_tensor, torch.arange(4)), "c4", samples=0)
    assert res.data.input_shape == [3, 16, 16] and res.data.has_labels
    assert res.elements["invariance_error"].tolist() == pytest.approx(ref.elements["invariance_error"].tolist())
    assert audit(model, channels_last.transpose(0, 3, 1, 2).astype(np.float32) / 255, "c4", samples=0).task


def test_scan_with_resize_crop_and_workers_on_the_command_line(tmp_path: Path) -> None:
    root = _grey_classes(tmp_path / "grey")
    (tmp_path / "net.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.levels = torch.nn.Parameter(torch.tensor([k / 10 + 0.05 for k in range(10)]))\n\n"
        "    def forward(self, x):\n"
        "        return -1000 * (x.mean((1, 2, 3))[:, None] - self.levels) ** 2\n"
    )
    torch.save(Oracle().state_dict(), tmp_path / "sd.pt")
    args = ["scan", str(tmp_path / "sd.pt"), "--arch", f"{tmp_path / 'net.py'}:Net", "--data", str(root), "-g", "c4"]
    result = CliRunner().invoke(
        app, [*args, "--resize", "6", "--crop", "4", "--workers", "1", "--json", "--samples", "0"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["data"]["input_shape"] == [1, 4, 4] and doc["data"]["preprocess"]["crop"] == [4, 4]
    assert doc["summary"]["accuracy_reference"] == 1.0
