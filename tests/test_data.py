"""Tests of equiaudit.data: every spec, layout and option, written into tmp_path; nothing is downloaded."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from equiaudit.data import (
    SPEC_FORMS,
    AuditData,
    Batch,
    convert_channels,
    default_cache_dir,
    load_data,
    normalise,
    resize_image,
)
from equiaudit.datasets import mnist as mnist_mod
from equiaudit.datasets.core import ArrayDataset, read_range
from equiaudit.datasets.synthetic import DIGITS_TRAIN, digit_canvases, scale_about_centre
from equiaudit.errors import DataError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


# ---------------------------------------------------------------------------------------------- helpers


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rand_uint8(gen: np.random.Generator, *shape: int) -> np.ndarray:
    return gen.integers(0, 256, size=shape, dtype=np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx-ubyte file as MNIST ships it: magic (0x08 = uint8, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 10, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    arrays = {"train": (rand_uint8(gen, n_train, 28, 28), gen.integers(0, 10, n_train, dtype=np.uint8)),
              "t10k": (rand_uint8(gen, n_test, 28, 28), gen.integers(0, 10, n_test, dtype=np.uint8))}  # fmt: skip
    for prefix, (images, labels) in arrays.items():
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return {"train_x": arrays["train"][0], "train_y": arrays["train"][1],
            "test_x": arrays["t10k"][0], "test_y": arrays["t10k"][1]}  # fmt: skip


def asymmetric_digit(label: int) -> np.ndarray:
    """A 28x28 image in MNIST orientation that is not symmetric under transposition or flips."""
    img = np.zeros((28, 28), np.float32)
    img[3:20, 6] = 1.0  # a vertical bar on the left
    img[19, 6:16] = 0.5  # its foot to the right, near the bottom: an "L"
    img[2, 2 + label] = 0.25  # a label-dependent mark in the top rows
    return img


def write_amat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Rot-MNIST .amat rows: the 784 pixels column by column (transposed), then the label as a float."""
    pairs = zip(images, labels, strict=True)
    rows = [" ".join(f"{v:.6g}" for v in img.T.ravel()) + f" {float(lab)}" for img, lab in pairs]
    path.write_text("\n".join(rows) + "\n")


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> None:
    message = str(excinfo.value)
    assert message and "\n" not in message


def highfreq_fraction(x: torch.Tensor, cutoff: float = 0.25) -> float:
    """Fraction of the (mean-removed) power at spatial frequencies above ``cutoff`` cycles/pixel."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x.double()).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).view(1, -1)
    high = (fx**2 + fy**2).sqrt() > cutoff
    return float(power[..., high].sum() / power.sum())


# ----------------------------------------------------------------------------------- shipped digits


def test_digits_default_split_shapes_and_labels() -> None:
    data = load_data()
    assert data.spec == "digits" and data.split == "test" and len(data) == 500
    assert data.input_shape == (1, 28, 28) and data.has_labels and not data.has_masks
    assert data.num_classes == 10 and data.class_names == [str(d) for d in range(10)]
    batches = list(data.batches(128))
    assert [len(b.x) for b in batches] == [128, 128, 128, 116]
    x = torch.cat([b.x for b in batches])
    y = torch.cat([b.y for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and batches[0].mask is None
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert set(y.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_deterministic_and_cover_all() -> None:
    def labelled_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = load_data("digits", split=split)
        b = next(data.batches(2000))
        return b.x, b.y

    train, test, every = (labelled_images(s) for s in ("train", "test", "all"))
    assert len(train[0]) == DIGITS_TRAIN == 1297 and len(test[0]) == 500 and len(every[0]) == 1797
    assert torch.equal(torch.cat([train[0], test[0]]), every[0])
    flat_train, flat_test = train[0].flatten(1), test[0].flatten(1)
    assert not (torch.cdist(flat_test, flat_train).min(dim=1).values == 0).all()  # not the same images
    again = labelled_images("test")
    assert torch.equal(again[0], test[0]) and torch.equal(again[1], test[1])


def test_digits_source_matches_sklearn_statistics() -> None:
    # The shipped file is the UCI digits as scikit-learn bundles them: 1,797 images, 0..16, ~180 per class.
    with np.load(DATA_DIR / "digits.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and counts.max() <= 185


def test_digit_canvas_is_centred_mnist_layout() -> None:
    x, _ = digit_canvases()
    assert x.shape == (1797, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert x[..., :4, :].abs().max() == 0 and x[..., -4:, :].abs().max() == 0  # 4-pixel black border
    assert x[..., :4].abs().max() == 0 and x[..., -4:].abs().max() == 0
    img = x[:, 0]
    grid = torch.arange(28, dtype=torch.float32)
    mass = img.sum(dim=(1, 2))
    cy = (img.sum(dim=2) * grid).sum(dim=1) / mass
    cx = (img.sum(dim=1) * grid).sum(dim=1) / mass
    assert abs(cy.mean() - 13.5) < 0.5 and abs(cx.mean() - 13.5) < 0.5
    assert ((cy - 13.5) ** 2 + (cx - 13.5) ** 2).sqrt().max() < 4.5


def test_digit_canvas_box_matches_pil_bilinear_upsampling() -> None:
    # Independent reference: PIL's bilinear resize of each 8x8 float image (values / 16) to 20x20.
    with np.load(DATA_DIR / "digits.npz") as npz:
        source = npz["images"].astype(np.float32) / 16
    resample = Image.Resampling.BILINEAR
    ref = np.stack([np.asarray(Image.fromarray(a, mode="F").resize((20, 20), resample)) for a in source])
    box = digit_canvases()[0][:, 0, 4:24, 4:24].numpy()
    assert np.allclose(box, ref, rtol=1e-5, atol=1e-6)


def test_rot_digits_keep_labels_and_ink_and_differ_from_digits() -> None:
    plain, rot = load_data("digits"), load_data("rot-digits")
    bp, br = next(plain.batches(500)), next(rot.batches(500))
    assert torch.equal(bp.y, br.y) and br.x.shape == bp.x.shape
    ratio = br.x.sum(dim=(1, 2, 3)) / bp.x.sum(dim=(1, 2, 3))
    assert ((ratio - 1).abs() < 0.1).all()  # a rotation about the centre keeps the ink on the canvas
    assert (br.x - bp.x).abs().amax(dim=(1, 2, 3)).gt(0.1).float().mean() > 0.95
    assert torch.equal(next(load_data("rot-digits").batches(500)).x, br.x)
    assert not torch.equal(next(load_data("rot-digits", seed=1).batches(500)).x, br.x)


def test_scale_about_centre_scales_a_gaussian_blob() -> None:
    grid = torch.arange(56, dtype=torch.float64) - 27.5
    sigma = 8.0
    blob = torch.exp(-(grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) / (2 * sigma**2))
    factors = torch.tensor([1.0, 0.5, 0.3], dtype=torch.float64)
    out = scale_about_centre(blob.expand(3, 1, 56, 56).clone(), factors)
    mass = out.sum(dim=(1, 2, 3))
    second = (out[:, 0] * (grid.view(-1, 1) ** 2)).sum(dim=(1, 2)) / mass
    assert torch.allclose(second.sqrt(), sigma * factors, rtol=0.03)  # width scales by the factor
    assert torch.allclose(mass / mass[0], factors**2, rtol=0.03)  # area by its square


def test_scale_digits_shrink_ink_within_range() -> None:
    plain, scaled = next(load_data("digits").batches(500)), next(load_data("scale-digits").batches(500))
    ratio = scaled.x.sum(dim=(1, 2, 3)) / plain.x.sum(dim=(1, 2, 3))
    assert torch.equal(plain.y, scaled.y)
    assert ratio.min() > 0.3**2 * 0.9 and ratio.max() < 1.05 and ratio.std() > 0.1


# ------------------------------------------------------------------------------------ generated data


def test_noise_is_deterministic_and_seeded() -> None:
    a = next(load_data("noise", limit=8).batches(8)).x
    b = next(load_data("noise", limit=8).batches(8)).x
    c = next(load_data("noise", limit=8, seed=1).batches(8)).x
    assert a.shape == (8, 1, 28, 28) and torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])
    assert torch.allclose(a.mean(dim=(2, 3)), torch.zeros(8, 1), atol=1e-5)
    assert torch.allclose(a.std(dim=(2, 3), unbiased=False), torch.ones(8, 1), atol=1e-4)


def test_noise_is_lazy_per_index() -> None:
    data = load_data("noise", limit=10**7, input_shape=(3, 16, 16))
    assert len(data) == 10**7 and load_data("noise").describe()["count"] == 256
    last = data.dataset[10**7 - 1][0]  # 10^7 images would need 30 GB if they were made up front
    again = load_data("noise", limit=10**7, input_shape=(3, 16, 16)).dataset[10**7 - 1][0]
    assert last.shape == (3, 16, 16) and torch.equal(last, again)
    assert torch.equal(load_data("noise", limit=3).dataset[2][0], load_data("noise", limit=300).dataset[2][0])


def test_noise_is_band_limited() -> None:
    x = next(load_data("noise", limit=16, input_shape=(1, 64, 64)).batches(16)).x
    white = torch.randn(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert highfreq_fraction(white) > 0.7  # 1 - pi/16 of the band for white noise
    assert highfreq_fraction(x) < 1e-4
    assert highfreq_fraction(x, cutoff=0.02) > 0.3  # but not a constant


def test_shapes_seg_images_and_masks() -> None:
    data = load_data("shapes-seg")
    assert len(data) == 128 and len(load_data("shapes-seg", split="train")) == 512
    assert len(load_data("shapes-seg", split="all")) == 640
    assert data.input_shape == (3, 64, 64) and data.has_masks and not data.has_labels
    b = next(data.batches(32))
    assert b.y is None and b.mask is not None and b.mask.shape == (32, 1, 64, 64)
    assert set(b.mask.unique().tolist()) <= {0.0, 1.0}
    frac = b.mask.mean(dim=(1, 2, 3))
    assert (frac > 0.005).all() and (frac < 0.7).all()
    assert b.x.min() >= 0 and b.x.max() <= 1
    # The masked pixels are the shapes: their colours differ from the texture around them.
    fg = (b.x * b.mask).sum(dim=(2, 3)) / b.mask.sum(dim=(2, 3))
    bg = (b.x * (1 - b.mask)).sum(dim=(2, 3)) / (1 - b.mask).sum(dim=(2, 3))
    assert ((fg - bg).norm(dim=1) > 0.1).float().mean() > 0.8
    assert torch.equal(next(load_data("shapes-seg").batches(32)).mask, b.mask)
    assert not torch.equal(next(load_data("shapes-seg", seed=3).batches(32)).x, b.x)


def test_shapes_seg_masks_are_resolution_independent() -> None:
    # The same seed rendered at 64 and 128: each coarse mask agrees with the fine one pooled 2x2.
    coarse = next(load_data("shapes-seg", limit=16).batches(16)).mask
    fine = next(load_data("shapes-seg", limit=16, input_size=128).batches(16)).mask
    assert fine.shape == (16, 1, 128, 128)
    pooled = F.avg_pool2d(fine, 2)
    agree = ((pooled >= 0.5) == (coarse >= 0.5)) | ((pooled - 0.5).abs() < 0.3)
    assert agree.float().mean() > 0.995


def test_photos_are_the_shipped_public_domain_set() -> None:
    data = load_data("photos")
    assert len(data) == 7 and data.input_shape == (3, 128, 128) and not data.has_labels
    x = next(data.batches(8)).x
    assert x.shape == (7, 3, 128, 128) and x.min() >= 0 and x.max() <= 1
    assert (x.flatten(1).std(dim=1) > 0.05).all()
    assert load_data("photos", channels=1).input_shape == (1, 128, 128)


def test_shipped_files_are_documented_and_small() -> None:
    readme = (DATA_DIR / "README.md").read_text()
    shipped = [DATA_DIR / "digits.npz", *sorted((DATA_DIR / "photos").glob("*.png"))]
    assert len(shipped) == 8
    for path in shipped:
        assert path.name in readme, f"{path.name} is not described in data/README.md"
    assert sum(p.stat().st_size for p in shipped) < 1_000_000


# --------------------------------------------------------------------------------------------- MNIST


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    ref = write_mnist(tmp_path)
    test = load_data("mnist", cache_dir=tmp_path)
    b = next(test.batches(100))
    assert len(test) == 6 and test.input_shape == (1, 28, 28) and test.num_classes == 10
    assert torch.allclose(b.x[:, 0], torch.from_numpy(ref["test_x"]).float() / 255)
    assert b.y.tolist() == ref["test_y"].tolist()
    train = load_data(f"mnist:{tmp_path}", split="train", cache_dir=tmp_path / "elsewhere")
    assert next(train.batches(100)).y.tolist() == ref["train_y"].tolist()
    every = load_data("mnist", split="all", limit=12, cache_dir=tmp_path)
    assert next(every.batches(100)).y.tolist() == [*ref["train_y"].tolist(), *ref["test_y"].tolist()][:12]


def test_mnist_missing_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"MNIST not found in .*--download") as excinfo:
        load_data("mnist", cache_dir=tmp_path)
    assert_one_line_error(excinfo)


def test_mnist_damaged_file_is_a_data_error(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="cannot load MNIST") as excinfo:
        load_data("mnist", cache_dir=tmp_path)
    assert_one_line_error(excinfo)


# ----------------------------------------------------------------------------------------- Rot-MNIST


def rot_mnist_reference(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = (np.arange(n) + offset) % 10
    return np.stack([asymmetric_digit(int(k)) for k in labels]), labels


def test_rot_mnist_amat_is_transposed_back_to_mnist_orientation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mnist_mod, "ROT_MNIST_TRAIN", 4)  # the real file has 10,000 train + 2,000 val rows
    trainval, test = rot_mnist_reference(6), rot_mnist_reference(3, offset=6)
    folder = tmp_path / "rot-mnist" / "mnist_rotation_new"
    folder.mkdir(parents=True)
    write_amat(folder / mnist_mod.ROT_MNIST_AMAT["train_valid"], *trainval)
    write_amat(folder / mnist_mod.ROT_MNIST_AMAT["test"], *test)

    data = load_data("rot-mnist", cache_dir=tmp_path)
    b = next(data.batches(10))
    assert len(data) == 3 and data.input_shape == (1, 28, 28) and data.class_names == [str(d) for d in range(10)]
    assert np.allclose(b.x[:, 0].numpy(), test[0], atol=1e-6)  # bar on the left, foot at the bottom
    assert b.y.tolist() == test[1].tolist()
    assert b.x[0, 0, 10, 6] == 1 and b.x[0, 0, 6, 10] == 0
    splits = {s: next(load_data(f"rot-mnist:{folder}", split=s).batches(20)).y.tolist()
              for s in ("train", "val", "all")}  # fmt: skip
    assert splits == {"train": [0, 1, 2, 3], "val": [4, 5], "all": [0, 1, 2, 3, 4, 5, 6, 7, 8]}
    limited = load_data(f"rot-mnist:{folder}", split="all", limit=7)
    assert next(limited.batches(20)).y.tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("names", "keys", "layout"), [
    (("rotated_train.npz", "rotated_valid.npz", "rotated_test.npz"), ("x", "y"), "flat"),
    (("mnist_rot_train.npz", "mnist_rot_valid.npz", "mnist_rot_test.npz"), ("images", "labels"), "square"),
])  # fmt: skip
def test_rot_mnist_npz_layouts(tmp_path: Path, names: tuple[str, ...], keys: tuple[str, str], layout: str) -> None:
    refs = [rot_mnist_reference(n, offset=o) for n, o in ((5, 0), (2, 5), (3, 7))]
    for name, (images, labels) in zip(names, refs, strict=True):
        stored = np.transpose(images, (0, 2, 1))  # the amat pixel order, as the conversions keep it
        stored = stored.reshape(len(stored), 784) if layout == "flat" else stored
        np.savez(tmp_path / name, **{keys[0]: stored, keys[1]: labels.astype(np.float64)})
    for split, (images, labels) in zip(("train", "val", "test"), refs, strict=True):
        b = next(load_data(f"rot-mnist:{tmp_path}", split=split).batches(10))
        assert np.allclose(b.x[:, 0].numpy(), images) and b.y.tolist() == labels.tolist()
    assert len(load_data(f"rot-mnist:{tmp_path}", split="all")) == 10


def test_rot_mnist_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_download(root: Path) -> None:  # stands in for fetching and unzipping the .amat zip
        calls.append(root)
        root.mkdir(parents=True, exist_ok=True)
        for key, n in (("train_valid", 3), ("test", 2)):
            write_amat(root / mnist_mod.ROT_MNIST_AMAT[key], *rot_mnist_reference(n))

    monkeypatch.setattr(mnist_mod, "_download_rot_mnist", fake_download)
    with pytest.raises(DataError, match=r"Rot-MNIST not found.*--download") as excinfo:
        load_data("rot-mnist", cache_dir=tmp_path)
    assert_one_line_error(excinfo)
    assert calls == []
    assert len(load_data("rot-mnist", cache_dir=tmp_path, download=True)) == 2
    assert calls == [tmp_path / "rot-mnist"]


def test_rot_mnist_bad_amat_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / mnist_mod.ROT_MNIST_AMAT["train_valid"]).write_text("0.5 0.5 3\n")
    (tmp_path / mnist_mod.ROT_MNIST_AMAT["test"]).write_text("0.5 0.5 3\n")
    with pytest.raises(DataError, match="784 pixels") as excinfo:
        load_data(f"rot-mnist:{tmp_path}")
    assert_one_line_error(excinfo)


# -------------------------------------------------------------------------------------- image folders


def test_class_folder_gives_sorted_labels(tmp_path: Path) -> None:
    gen = np.random.default_rng(0)
    written = {}
    for cls in ("zebra", "ant", "moth"):
        for k in range(2):
            arr = rand_uint8(gen, 12, 10, 3)
            write_png(tmp_path / cls / f"{k}.png", arr)
            written[(cls, k)] = arr
    (tmp_path / "empty").mkdir()
    data = load_data(str(tmp_path))
    assert data.class_names == ["ant", "moth", "zebra"] and data.num_classes == 3 and data.has_labels
    assert data.input_shape == (3, 12, 10)
    b = next(data.batches(10))
    assert b.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(b.x[4], torch.from_numpy(written[("zebra", 0)]).permute(2, 0, 1).float() / 255)


def test_flat_folder_has_no_labels_and_detects_grayscale(tmp_path: Path) -> None:
    gen = np.random.default_rng(1)
    for k in range(3):
        write_png(tmp_path / f"img{k}.png", rand_uint8(gen, 9, 9))
    data = load_data(str(tmp_path))
    assert not data.has_labels and data.class_names is None and data.input_shape == (1, 9, 9)
    assert next(data.batches(4)).y is None
    assert load_data(str(tmp_path), channels=3).input_shape == (3, 9, 9)
    write_png(tmp_path / "colour.png", rand_uint8(gen, 9, 9, 3))
    assert load_data(str(tmp_path)).input_shape == (3, 9, 9)  # RGB unless every image is grayscale


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.arange(0, 65536, 1024, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    data = load_data(str(tmp_path))
    assert data.input_shape == (1, 8, 8)
    assert torch.allclose(next(data.batches(1)).x[0, 0], torch.from_numpy(arr.astype(np.float32) / 65535))


def test_folder_sizes_must_match_unless_resized(tmp_path: Path) -> None:
    gen = np.random.default_rng(2)
    write_png(tmp_path / "a.png", rand_uint8(gen, 10, 10, 3))
    write_png(tmp_path / "b.png", rand_uint8(gen, 20, 16, 3))
    with pytest.raises(DataError, match=r"differ in size.*--input-size") as excinfo:
        load_data(str(tmp_path))
    assert_one_line_error(excinfo)
    data = load_data(str(tmp_path), input_size=(8, 12))
    assert data.input_shape == (3, 8, 12) and next(data.batches(2)).x.shape == (2, 3, 8, 12)


@pytest.mark.parametrize("bad", ["corrupt", "mixed"])
def test_folder_problems_are_data_errors(tmp_path: Path, bad: str) -> None:
    write_png(tmp_path / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    if bad == "corrupt":
        (tmp_path / "cls" / "b.png").write_bytes(b"not a png")
    else:
        write_png(tmp_path / "loose.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"cannot read image|both images") as excinfo:
        load_data(str(tmp_path))
    assert_one_line_error(excinfo)


@pytest.mark.parametrize("name", ["mnist-scale", "flowers"])
def test_split_folders(tmp_path: Path, name: str) -> None:
    gen = np.random.default_rng(3)
    layout = {"train": {"a": 2, "b": 1, "c": 1}, "val": {"b": 1}, "test": {"a": 1, "c": 2}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            for k in range(n):
                write_png(tmp_path / name / split / cls / f"{k}.png", rand_uint8(gen, 8, 8))
    test = load_data(name, cache_dir=tmp_path)
    assert test.class_names == ["a", "b", "c"] and next(test.batches(9)).y.tolist() == [0, 2, 2]
    assert next(load_data(name, split="val", cache_dir=tmp_path).batches(9)).y.tolist() == [1]
    assert len(load_data(f"{name}:{tmp_path / name}", split="all")) == 8
    with pytest.raises(DataError, match=r"not found.*no download") as excinfo:
        load_data(name, cache_dir=tmp_path / "nothing")
    assert_one_line_error(excinfo)


def test_butterflies_layout(tmp_path: Path) -> None:
    gen = np.random.default_rng(4)
    for stem, (h, w) in {"0010001": (20, 30), "0010002": (24, 24), "0070003": (16, 18)}.items():
        write_png(tmp_path / "images" / f"{stem}.png", rand_uint8(gen, h, w, 3))
        mask = np.zeros((h, w), np.uint8)
        mask[4:12, 5:15] = 255
        write_png(tmp_path / "segmentations" / f"{stem}_seg0.png", mask)
    with pytest.raises(DataError, match="--input-size"):
        load_data(f"butterflies:{tmp_path}")
    data = load_data(f"butterflies:{tmp_path}", input_size=32)
    assert data.has_masks and data.has_labels and data.num_classes == 10
    assert data.class_names is not None and data.class_names[6] == "Papilio cresphontes"
    b = next(data.batches(4))
    assert b.y.tolist() == [0, 0, 6] and b.x.shape == (3, 3, 32, 32) and b.mask.shape == (3, 1, 32, 32)
    assert set(b.mask.unique().tolist()) == {0.0, 1.0}
    (tmp_path / "segmentations" / "0070003_seg0.png").unlink()
    with pytest.raises(DataError, match="has no mask") as excinfo:
        load_data(f"butterflies:{tmp_path}", input_size=32)
    assert_one_line_error(excinfo)


# -------------------------------------------------------------------------------------- array files


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
@pytest.mark.parametrize("with_channel_dims", [False, True])
def test_array_files_with_masks(tmp_path: Path, suffix: str, with_channel_dims: bool) -> None:
    gen = np.random.default_rng(5)
    x = rand_uint8(gen, 4, 6, 5)
    y = np.array([3, 0, 1, 3])
    mask = (gen.random((4, 6, 5)) > 0.5).astype(np.uint8)
    if with_channel_dims:
        x, mask = x[:, None], mask[:, None]
    path = tmp_path / f"arrays{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, y=y, mask=mask)
    else:
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}, path)
    data = load_data(str(path))
    assert data.has_labels and data.has_masks and data.num_classes == 4 and data.input_shape == (1, 6, 5)
    b = next(data.batches(4))
    assert torch.allclose(b.x, torch.from_numpy(x).float().reshape(4, 1, 6, 5) / 255)
    assert b.y.tolist() == y.tolist() and torch.equal(b.mask, torch.from_numpy(mask).float().reshape(4, 1, 6, 5))


def test_float_arrays_are_used_as_they_are(tmp_path: Path) -> None:
    x = np.linspace(-2, 3, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "f.npz", x=x)
    data = load_data(str(tmp_path / "f.npz"))
    assert not data.has_labels and not data.has_masks and data.input_shape == (3, 4, 4)
    assert torch.equal(next(data.batches(2)).x, torch.from_numpy(x))


class _NotATensor:
    pass


@pytest.mark.parametrize(("payload", "match"), [
    ({"images": np.zeros((2, 4, 4), np.uint8)}, "no key 'x'"),
    ({"x": np.zeros((2, 4), np.uint8)}, "expected \\(N, H, W\\)"),
    ({"x": np.zeros((2, 4, 4), np.int32)}, "dtype"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, "one label per image"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.5, 1.0])}, "non-integer"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "mask": np.zeros((2, 4, 5), np.uint8)}, "to match 'x'"),
    ({"x": np.full((2, 4, 4), np.nan, np.float32)}, "NaN"),
])  # fmt: skip
def test_bad_npz_contents(tmp_path: Path, payload: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "bad.npz", **payload)
    with pytest.raises(DataError, match=match) as excinfo:
        load_data(str(tmp_path / "bad.npz"))
    assert_one_line_error(excinfo)


def test_pt_loads_only_with_weights_only(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(2, 4, 4), "extra": _NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(DataError, match="weights_only=True") as excinfo:
        load_data(str(tmp_path / "unsafe.pt"))
    assert_one_line_error(excinfo)
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_data(str(tmp_path / "garbage.npz"))


def test_from_tensors() -> None:
    x = torch.rand(5, 2, 8, 8)
    data = AuditData.from_tensors(x, torch.tensor([0, 1, 2, 1, 0]), class_names=["a", "b", "c", "d"])
    assert data.input_shape == (2, 8, 8) and data.num_classes == 4 and data.class_names == ["a", "b", "c", "d"]
    assert torch.equal(next(data.batches(5)).x, x)
    with pytest.raises(DataError, match="class names"):
        AuditData.from_tensors(x, torch.tensor([0, 1, 2, 1, 5]), class_names=["a"])


# ----------------------------------------------------------------------------------------- options


def test_limit_keeps_the_first_items() -> None:
    full = next(load_data("digits").batches(500))
    part = load_data("digits", limit=37)
    b = next(part.batches(100))
    assert len(part) == 37 and torch.equal(b.x, full.x[:37]) and torch.equal(b.y, full.y[:37])


def test_channels_conversions_match_references() -> None:
    gray = next(load_data("digits", limit=4).batches(4)).x
    rgb = next(load_data("digits", limit=4, channels=3).batches(4)).x
    assert rgb.shape == (4, 3, 28, 28) and all(torch.equal(rgb[:, k], gray[:, 0]) for k in range(3))
    photo = next(load_data("photos", limit=2).batches(2)).x
    luma = next(load_data("shapes-seg", limit=2, channels=1).batches(2)).x
    shapes = next(load_data("shapes-seg", limit=2).batches(2)).x
    expected = 0.299 * shapes[:, 0] + 0.587 * shapes[:, 1] + 0.114 * shapes[:, 2]
    assert torch.allclose(luma[:, 0], expected, atol=1e-6)
    pil = np.asarray(Image.fromarray((photo[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).convert("L"))
    ours = convert_channels(photo[0], 1)[0].numpy() * 255
    assert np.abs(ours - pil).max() <= 1.0  # PIL rounds to uint8


def test_input_size_resizes_with_antialias() -> None:
    small = load_data("photos", input_size=32)
    x = next(small.batches(7)).x
    assert small.input_shape == (3, 32, 32) and x.shape == (7, 3, 32, 32)
    full = next(load_data("photos").batches(7)).x
    # Independent reference: PIL's antialiased bilinear resize, channel by channel in float mode.
    resample = Image.Resampling.BILINEAR
    ref = torch.tensor(np.array([[np.asarray(Image.fromarray(c.numpy(), mode="F").resize((32, 32), resample))
                                  for c in img] for img in full]))  # fmt: skip
    assert torch.allclose(x, ref, rtol=1e-4, atol=1e-5)
    assert resize_image(full, (128, 128)) is full


@pytest.mark.parametrize(("mean", "std"), [([0.5], [0.25]), ([0.1, 0.2, 0.3], [0.5, 1.0, 2.0]), ([0.5], None)])
def test_normalisation_is_applied_last(mean: list[float], std: list[float] | None) -> None:
    raw = next(load_data("digits", limit=8, channels=3, input_size=14).batches(8)).x
    data = load_data("digits", limit=8, channels=3, input_size=14, mean=mean, std=std)
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std or [1.0]).view(-1, 1, 1)
    assert torch.allclose(next(data.batches(8)).x, (raw - m) / s, atol=1e-6)
    assert torch.allclose(normalise(raw, m.flatten(), s.flatten()), (raw - m) / s)
    norm = data.describe()["normalisation"]
    assert norm["mean"] == (mean * 3 if len(mean) == 1 else mean) and len(norm["std"]) == 3


def test_describe_is_json_able_and_complete() -> None:
    import json

    desc = load_data("shapes-seg", limit=5).describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["count"] == 5 and desc["input_shape"] == [3, 64, 64] and desc["split"] == "test"
    assert {"spec", "source", "has_labels", "has_masks", "num_classes", "class_names", "normalisation"} <= set(desc)


@pytest.mark.parametrize(("spec", "kwargs"), [
    ("digits", {"limit": 20}),
    ("rot-digits", {"seed": 3, "split": "train", "limit": 9}),
    ("noise", {"input_shape": (3, 20, 24), "limit": 5, "seed": 2}),
    ("shapes-seg", {"limit": 4, "seed": 1, "input_size": 40}),
    ("photos", {"mean": [0.4, 0.5, 0.6], "std": [0.2], "channels": 3}),
])  # fmt: skip
def test_describe_is_enough_to_reload_the_same_images(spec: str, kwargs: dict) -> None:
    # What a saved result records (describe()) must bring back the same images, as reports do.
    first = load_data(spec, **kwargs)
    desc = first.describe()
    norm = desc["normalisation"] or {}
    c, h, w = desc["input_shape"]
    again = load_data(desc["spec"], split=desc["split"], limit=desc["count"], channels=c, input_size=(h, w),
                      seed=desc["seed"] or 0, mean=norm.get("mean"), std=norm.get("std"))  # fmt: skip
    assert again.describe() == desc
    assert torch.equal(next(again.batches(32)).x, next(first.batches(32)).x)


def test_batches_are_batch_tuples_in_fixed_order() -> None:
    data = load_data("scale-digits", limit=10)
    first, second = list(data.batches(4)), list(data.batches(4))
    assert all(isinstance(b, Batch) for b in first) and [len(b.x) for b in first] == [4, 4, 2]
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(first, second, strict=True))


def test_default_cache_dir_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUIAUDIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("EQUIAUDIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "equiaudit"


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("spec", "kwargs", "match"), [
    ("no-such-thing", {}, "unknown data spec .*valid forms"),
    ("", {}, "non-empty"),
    ("digits:extra", {}, "takes no ':'"),
    ("mnist:", {}, "names no folder"),
    ("digits", {"split": "validation"}, "valid splits: train, val, test, all"),
    ("digits", {"split": "val"}, "valid splits: train, test, all"),
    ("shapes-seg", {"split": "val"}, "valid splits"),
    ("photos", {"split": "train"}, "no train/val/test splits"),
    ("noise", {"split": "val"}, "no train/val/test splits"),
    ("digits", {"limit": 0}, "limit must be a positive integer"),
    ("digits", {"limit": 2.5}, "limit must be a positive integer"),
    ("digits", {"input_size": (0, 4)}, "input_size"),
    ("digits", {"input_size": (4, 4, 4)}, "input_size"),
    ("digits", {"channels": 2}, "only 1 <-> 3"),
    ("digits", {"channels": 0}, "channels must be a positive integer"),
    ("digits", {"mean": [0.1, 0.2]}, "mean has 2 values .* 1 channel"),
    ("digits", {"std": [0.0]}, "std must be finite and positive"),
    ("digits", {"mean": ["a"]}, "list of numbers"),
    ("digits", {"seed": -1}, "seed"),
    ("noise", {"input_shape": (28, 28)}, "input_shape must be"),
    ("rot-mnist:/nonexistent/dir", {}, "Rot-MNIST not found"),
    ("butterflies:/nonexistent/dir", {}, "no download"),
    ("/nonexistent/file.npz", {}, "no such file"),
])  # fmt: skip
def test_bad_inputs_raise_one_line_data_errors(spec: str, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as excinfo:
        load_data(spec, **kwargs)
    assert_one_line_error(excinfo)


def test_non_array_file_and_bad_batch_size(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"not .npz or .pt") as excinfo:
        load_data(str(tmp_path / "notes.txt"))
    assert_one_line_error(excinfo)
    assert SPEC_FORMS in str(excinfo.value)
    with pytest.raises(DataError, match="batch_size"):
        next(load_data("digits").batches(0))
    np.savez(tmp_path / "four.npz", x=np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(DataError, match="only 1 <-> 3"):
        load_data(str(tmp_path / "four.npz"), channels=3)
    assert load_data(str(tmp_path / "four.npz"), channels=4).input_shape == (4, 5, 5)  # as recorded, reloads


@pytest.mark.parametrize("case", ["digits-options", "uint8-masks", "transposed"])
def test_sliced_batches_equal_item_by_item_reading(case: str) -> None:
    # Tensor-backed data is sliced a batch at a time; it must give exactly what reading items one by one gives.
    gen = np.random.default_rng(0)
    if case == "digits-options":
        data = load_data("digits", input_size=32, channels=3, mean=[0.1, 0.2, 0.3], std=[0.5], limit=41)
    elif case == "uint8-masks":
        x = torch.from_numpy(rand_uint8(gen, 23, 1, 12, 10))
        mask = torch.from_numpy(gen.random((23, 1, 12, 10)) > 0.5)
        data = AuditData.from_tensors(x, torch.arange(23) % 3, mask)
    else:
        stored = torch.from_numpy(rand_uint8(gen, 9, 1, 6, 5))
        arr = ArrayDataset(stored, torch.arange(9), scale=1 / 255, transpose=True)
        data = AuditData(spec="t", dataset=arr, input_shape=(1, 5, 6), has_labels=True, has_masks=False,
                         num_classes=9, class_names=None, source="test")  # fmt: skip
    assert read_range(data.dataset, 0, 2) is not None  # the sliced path is taken
    sliced = list(data.batches(7))
    items = [data._collate([data.dataset[i] for i in range(s, min(len(data), s + 7))]) for s in range(0, len(data), 7)]
    assert len(sliced) == len(items)
    for a, b in zip(sliced, items, strict=True):
        assert torch.equal(a.x, b.x) and a.x.dtype == b.x.dtype
        assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)
        assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
