"""Image files on disk: a folder (class sub-folders, image / mask pairs, or flat), split folders, ImageNet,
Leeds butterflies, photos.

Images are decoded with PIL when an item is read, so a large folder costs only its file list. The
folder is checked up front from the image headers: readable, one size unless the caller resizes to one, and
grayscale or colour (to pick the default channel count). When sizes may differ, only the first
:data:`HEADER_SCAN` headers are read (a folder of any size opens at once); an unreadable file further on is
reported when it is read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError
from .core import Item, Source, check_split, no_mask, one_line, splitless

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
HEADER_SCAN = 2048  # headers read up front when the images need not share one size
MASK_DIRS = ("masks", "mask", "labels", "annotations")  # beside images/: segmentation pairs
IMAGENET_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")
BUTTERFLY_SPECIES = [
    "Danaus plexippus", "Heliconius charitonius", "Heliconius erato", "Junonia coenia", "Lycaena phlaeas",
    "Nymphalis antiopa", "Papilio cresphontes", "Pieris rapae", "Vanessa atalanta", "Vanessa cardui",
]  # fmt: skip


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int = -1
    mask_path: Path | None = None


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1)))


def read_image(path: Path, mode: str) -> torch.Tensor:
    """Decode ``path`` with PIL, convert to ``mode`` ('RGB' or 'L'): a (C, H, W) float tensor in [0, 1].

    16-bit grayscale is divided by 65535 (PIL's own conversion to 8 bits would clip it); float images
    ('F') are taken as they are.
    """
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I") or img.mode == "F":
                scale = 1.0 if img.mode == "F" else 65535.0
                gray = torch.from_numpy(np.asarray(img, dtype=np.float32) / scale)[None]
                return gray if mode == "L" else gray.expand(3, -1, -1).clone()
            return _pil_to_tensor(img.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {one_line(exc)}") from exc


def read_mask(path: Path) -> torch.Tensor:
    """A mask image as (1, H, W) float {0, 1}: any non-zero pixel is foreground."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {one_line(exc)}") from exc
    return torch.from_numpy((arr > 0).astype(np.float32))[None]


class ImageFileDataset(Dataset):
    """Items read from image files (and mask files) when accessed."""

    def __init__(self, records: Sequence[ImageRecord], mode: str) -> None:
        self.records, self.mode = list(records), mode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Item:
        rec = self.records[i]
        x = read_image(rec.path, self.mode)
        mask = no_mask() if rec.mask_path is None else read_mask(rec.mask_path)
        if mask.numel() and mask.shape[-2:] != x.shape[-2:]:
            raise DataError(f"mask {rec.mask_path} is {tuple(mask.shape[-2:])} but its image is {tuple(x.shape[-2:])}")
        return x, rec.label, mask


def scan_headers(paths: Sequence[Path], need_one_size: bool, what: str) -> bool:
    """Check every image opens; if ``need_one_size``, that all share a size. True if all are grayscale.

    Without ``need_one_size`` only the first :data:`HEADER_SCAN` are read."""
    if not need_one_size:
        paths = paths[:HEADER_SCAN]
    sizes: dict[tuple[int, int], Path] = {}
    gray = True
    for path in paths:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {one_line(exc)}") from exc
        gray &= mode in _GRAY_MODES
        sizes.setdefault(size, path)
        if need_one_size and len(sizes) > 1:
            (w0, h0), (w1, h1) = list(sizes)[:2]
            first, other = sizes[(w0, h0)], sizes[(w1, h1)]
            raise DataError(
                f"images in {what} differ in size ({first.name} is {h0}x{w0}, {other.name} is "
                f"{h1}x{w1}); pass --input-size (input_size=), or --resize with --crop, to bring them to one size"
            )
    return gray


def _mode(channels: int | None, all_gray: bool) -> str:
    if channels is None:
        return "L" if all_gray else "RGB"
    return "L" if channels == 1 else "RGB"


def read_class_list(path: Path) -> list[str]:
    """Class names in order from a text file: the first word of every non-empty line that is not a ``#``
    comment (``n01440764 tench, Tinca tinca`` gives ``n01440764``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the class list {path}: {one_line(exc)}") from exc
    return [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _labels_for(names_found: Sequence[str], class_names: list[str], where: Path) -> dict[str, int]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in names_found if n not in index]
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise DataError(
            f"class folder(s) {shown} in {where} are not among the {len(class_names)} classes given "
            f"({', '.join(class_names[:3])}, ...); fix the folder names or the class list"
        )
    return index


def folder_records(folder: Path, class_names: list[str] | None = None) -> tuple[list[ImageRecord], list[str] | None]:
    """ImageFolder semantics: sorted class sub-folders (searched recursively) give labels; a flat folder
    has none. Sub-folders without images are not classes.

    With ``class_names`` given (shared by several split folders, or the model's classes), labels index into
    that list, and a folder that is not in it is an error.
    """
    per_class = {d.name: _images_under(d, recursive=True) for d in _subdirs(folder)}
    per_class = {name: paths for name, paths in per_class.items() if paths}
    top = _images_under(folder, recursive=False)
    if per_class and top:
        raise DataError(
            f"{folder} has both images at its top level ({top[0].name}, ...) and class "
            f"sub-folders ({next(iter(per_class))}, ...); put every image in a class sub-folder or none"
        )
    if not per_class:
        return [ImageRecord(p) for p in top], None
    names = class_names if class_names is not None else list(per_class)
    index = _labels_for(list(per_class), names, folder)
    return [ImageRecord(p, index[name]) for name, paths in per_class.items() for p in paths], names


def pair_records(folder: Path) -> list[ImageRecord] | None:
    """Segmentation pairs: ``folder/images/*`` with a mask of the same relative name (any image extension) in
    ``folder/masks/`` (or ``mask``, ``labels``, ``annotations``); None when the folder is not laid out so."""
    images = folder / "images"
    masks = next((folder / d for d in MASK_DIRS if (folder / d).is_dir()), None)
    if not images.is_dir() or masks is None:
        return None
    by_stem = {p.relative_to(masks).with_suffix("").as_posix(): p for p in _images_under(masks, recursive=True)}
    records, missing = [], []
    for path in _images_under(images, recursive=True):
        mask = by_stem.get(path.relative_to(images).with_suffix("").as_posix())
        if mask is None:
            missing.append(path.name)
        records.append(ImageRecord(path, -1, mask))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) in {images} have no mask of the same name in {masks} ({', '.join(missing[:3])})"
        )
    return records


def _source_from_records(
    records: list[ImageRecord],
    class_names: list[str] | None,
    *,
    what: str,
    desc: str,
    split: str,
    channels: int | None,
    need_one_size: bool,
    has_masks: bool = False,
    class_source: str | None = None,
) -> Source:
    if not records:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {what}")
    gray = scan_headers([r.path for r in records], need_one_size, what)
    return Source(
        ImageFileDataset(records, _mode(channels, gray)),
        desc,
        split,
        has_labels=class_names is not None,
        has_masks=has_masks,
        class_names=class_names,
        num_classes=None if class_names is None else len(class_names),
        class_source=None if class_names is None else class_source,
    )


def load_folder(
    folder: Path, split: str, channels: int | None, resize: bool, limit: int | None, classes: list[str] | None = None
) -> Source:
    """A folder of images: class sub-folders (labels), ``images/`` + ``masks/`` pairs, or flat (no labels)."""
    split = splitless(split, f"folder {folder}")
    pairs = pair_records(folder)
    if pairs is not None:
        return _source_from_records(
            pairs[:limit],
            None,
            what=str(folder / "images"),
            desc=f"image folder {folder} (images/ with masks)",
            split=split,
            channels=channels,
            need_one_size=not resize,
            has_masks=True,
        )
    records, names = folder_records(folder, classes)
    if names is None and classes is not None:
        raise DataError(f"classes were given but {folder} has no class sub-folders (its images have no labels)")
    kind = f"{len(names)} classes, by {'the class list' if classes else 'sub-folder'}" if names else "flat, no labels"
    return _source_from_records(
        records[:limit],
        names,
        what=str(folder),
        desc=f"image folder {folder} ({kind})",
        split=split,
        channels=channels,
        need_one_size=not resize,
        class_source="classes" if classes else "folders",
    )


def load_photos(split: str, channels: int | None, resize: bool) -> Source:
    """The shipped public-domain / CC0 photographs (128x128, from scikit-image's sample data)."""
    split = splitless(split, "photos")
    folder = Path(str(resources.files("equiaudit.shipped_data").joinpath("photos")))
    records, _ = folder_records(folder)
    return _source_from_records(
        records,
        None,
        what="shipped photos",
        split=split,
        channels=channels,
        need_one_size=not resize,
        desc="public-domain / CC0 photographs from scikit-image's sample data (shipped), 128x128",
    )


def load_split_folders(
    root: Path,
    name: str,
    split: str,
    channels: int | None,
    resize: bool,
    limit: int | None,
    hint: str,
    classes: list[str] | None = None,
) -> Source:
    """``<root>/{train,val,test}/<class>/*`` (MNIST-scale, Petals to the Metal); ``all`` joins them."""
    if not root.is_dir():
        raise DataError(f"{name} not found: no folder {root}; {hint}")
    found = {s: root / d for s, dirs in SPLIT_DIRS.items() for d in dirs if (root / d).is_dir()}
    if not found:
        raise DataError(f"{name} not found in {root}: expected {root}/{{train,val,test}}/<class>/<image>; {hint}")
    check_split(split, [*found, "all"], f"{name} in {root}")
    parts = list(found) if split == "all" else [split]
    # One class list for all splits, so a label means the same class in each of them.
    names = classes or sorted({d.name for f in found.values() for d in _subdirs(f) if _images_under(d, recursive=True)})
    records: list[ImageRecord] = []
    labelled = True
    for part in parts:
        recs, part_names = folder_records(found[part], names or None)
        labelled &= part_names is not None
        records += recs
    if not labelled:
        records = [ImageRecord(r.path) for r in records]
    records = records[:limit]
    desc = f"{name} ({root}), {split} split"
    return _source_from_records(
        records,
        names if labelled else None,
        what=f"{root} ({split})",
        desc=desc,
        split=split,
        channels=channels,
        need_one_size=not resize,
        class_source="classes" if classes else "folders",
    )


def _imagenet_val(root: Path, split: str) -> Path:
    for candidate in (root / split, root / "ILSVRC" / "Data" / "CLS-LOC" / split, root / "Data" / "CLS-LOC" / split):
        if candidate.is_dir():
            return candidate
    if split == "val" and any(_WNID.fullmatch(d.name) for d in _subdirs(root)):
        return root  # the folder of <wnid> folders itself
    raise DataError(
        f"ImageNet {split} images not found in {root}: expected {root}/{split}/<wnid>/*, "
        f"{root}/ILSVRC/Data/CLS-LOC/{split}/ (Kaggle), or {root} holding the <wnid> folders"
    )


def _find_up(folder: Path, root: Path, name: str) -> Path | None:
    """``name`` in ``folder`` or a folder above it, up to ``root``."""
    for d in (folder, *folder.parents):
        if (d / name).is_file():
            return d / name
        if d == root:
            break
    return None


def load_imagenet(
    root: Path, split: str, channels: int | None, resize: bool, limit: int | None, classes: list[str] | None = None
) -> Source:
    """ImageNet (ILSVRC-2012) validation or train images, labelled in the 1,000-class order of the models."""
    if not root.is_dir():
        raise DataError(
            f"ImageNet not found: no folder {root}; no download: put the validation images there (e.g. "
            f"{root}/val/<wnid>/*.JPEG) or pass imagenet:PATH"
        )
    check_split(split, ("val", "test", "train"), f"imagenet in {root}")
    part = "train" if split == "train" else "val"  # the test labels are not public: test means val
    folder = _imagenet_val(root, part)
    mapping = _find_up(folder, root, "LOC_synset_mapping.txt")
    names = classes or (read_class_list(mapping) if mapping is not None else None)
    wnids = sorted(d.name for d in _subdirs(folder) if _images_under(d, recursive=False))
    how = "the class list" if classes else f"{mapping.name}" if mapping is not None else "the sorted folder names"
    if names is None:
        if len(wnids) != IMAGENET_CLASSES:
            raise DataError(
                f"{folder} has {len(wnids)} of the {IMAGENET_CLASSES} ImageNet class folders, so their model indices "
                f"are unknown; pass --classes with the full list in model order (e.g. LOC_synset_mapping.txt)"
            )
        names = wnids
    if wnids:
        records, _ = folder_records(folder, names)
    else:  # Kaggle's flat validation folder: labels from LOC_val_solution.csv
        solution = _find_up(folder, root, f"LOC_{part}_solution.csv")
        if solution is None:
            raise DataError(f"{folder} holds no <wnid> folders and no LOC_{part}_solution.csv was found for its labels")
        index = {n: i for i, n in enumerate(names)}
        records = []
        with solution.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                wnid = (row.get("PredictionString") or "").split()[:1]
                if not wnid or wnid[0] not in index:
                    raise DataError(f"{solution}: image {row.get('ImageId')} has class {wnid} not in {how}")
                records.append((row["ImageId"], index[wnid[0]]))
        records = [ImageRecord(folder / f"{image}.JPEG", label) for image, label in sorted(records)]
    return _source_from_records(
        records[:limit],
        names,
        what=str(folder),
        desc=f"ImageNet {part} images in {folder} ({len(names)} classes in the order of {how})",
        split=part,
        channels=channels,
        need_one_size=not resize,
        class_source="classes",
    )


def load_butterflies(root: Path, split: str, channels: int | None, resize: bool, limit: int | None) -> Source:
    """Leeds butterflies: ``<root>/images/NNNxxxx.png`` and masks ``<root>/segmentations/<stem>_seg0.png``.

    The label is the species number in the first three digits of the file name (001..010 -> 0..9).
    """
    split = splitless(split, "butterflies")
    hint = (
        "no download: get the Leeds Butterfly Dataset and put images/ and segmentations/ there, "
        "or pass butterflies:PATH"
    )
    if not (root / "images").is_dir():
        raise DataError(f"Leeds butterflies not found: no folder {root / 'images'}; {hint}")
    records = []
    for path in _images_under(root / "images", recursive=False)[:limit]:
        digits = path.stem[:3]
        if not (digits.isdigit() and 1 <= int(digits) <= len(BUTTERFLY_SPECIES)):
            raise DataError(f"butterfly image {path.name} does not start with a species number 001..010")
        mask_path = root / "segmentations" / f"{path.stem}_seg0.png"
        if not mask_path.is_file():
            raise DataError(f"butterfly image {path.name} has no mask {mask_path}")
        records.append(ImageRecord(path, int(digits) - 1, mask_path))
    return _source_from_records(
        records,
        list(BUTTERFLY_SPECIES),
        what=str(root / "images"),
        split=split,
        channels=channels,
        need_one_size=not resize,
        has_masks=True,
        desc=f"Leeds butterflies (Wang, Markert & Everingham 2009) in {root}",
    )
