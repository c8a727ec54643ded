"""Checkpoints of zoo models: ``NAME.pt`` (a plain state dict) with its model card ``NAME.json`` beside it.

The shipped checkpoints live in the package folder ``checkpoints/`` (:func:`checkpoint_dir`). A ``.pt`` file
holds only tensors, so it loads with ``torch.load(weights_only=True)``; its SHA-256 is recorded in the card
and checked on every load. A card is a JSON document::

    {"card_version": 1, "name", "model": {name, family, groups, exact_groups, input_shape, parameters, tiny,
     create_kwargs}, "data": {dataset, options, train_images, test_images, source}, "training": {epochs, lr,
     batch_size, seed, augment_rotation, seconds, losses, device, ...}, "metrics": {DATASET: {accuracy | iou,
     loss, images}}, "audit": {group, data, images, summary} | null, "recipe": {...}, "versions": {...},
     "git_commit": str | null, "created": ISO time, "file": "NAME.pt", "sha256", "size_bytes"}
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from equiaudit.errors import ModelLoadError
from equiaudit.loading import sha256_file
from equiaudit.result import atomic_write_bytes, atomic_write_text

__all__ = [
    "CARD_VERSION", "available", "checkpoint_dir", "checkpoint_paths", "git_commit", "has_checkpoint",
    "load_card", "load_pretrained", "load_state", "save_checkpoint", "versions",
]  # fmt: skip

CARD_VERSION = 1


def checkpoint_dir() -> Path:
    """The folder of the shipped checkpoints (inside the installed package)."""
    return Path(__file__).resolve().parent / "checkpoints"


def checkpoint_paths(name: str, directory: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(NAME.pt, NAME.json)`` in ``directory`` (default: the shipped checkpoints)."""
    folder = Path(directory) if directory is not None else checkpoint_dir()
    return folder / f"{name}.pt", folder / f"{name}.json"


def has_checkpoint(name: str, directory: str | os.PathLike | None = None) -> bool:
    """Whether ``directory`` holds both the weights and the card of ``name``."""
    pt, card = checkpoint_paths(name, directory)
    return pt.is_file() and card.is_file()


def available(directory: str | os.PathLike | None = None) -> list[str]:
    """Names with a checkpoint and a card in ``directory`` (default: the shipped ones), sorted."""
    folder = Path(directory) if directory is not None else checkpoint_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


COMMIT_ENV = "EQUIAUDIT_COMMIT"


def git_commit() -> str | None:
    """The commit of the git checkout this package runs from (``-dirty`` if it has changes), else None.

    ``$EQUIAUDIT_COMMIT`` overrides it, for a copy of a checkout whose ``.git`` does not know the code it holds
    (a tree copied to another machine)."""
    given = os.environ.get(COMMIT_ENV, "").strip()
    if given:
        return given
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    """Versions of what shaped the weights: equiaudit, torch, Python, e2cnn when imported, the platform."""
    from equiaudit import __version__

    out = {
        "equiaudit": __version__,
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if "e2cnn" in sys.modules:
        out["e2cnn"] = getattr(sys.modules["e2cnn"], "__version__", "0.2.3")
    return out


def save_checkpoint(
    name: str, model: nn.Module, card: dict[str, Any], directory: str | os.PathLike | None = None
) -> Path:
    """Write ``model``'s state dict to ``NAME.pt`` and ``card`` (completed with the file's name, size,
    SHA-256, versions, commit and time when missing) to ``NAME.json``; returns the ``.pt`` path.

    Both files are written atomically (temporary file, then rename).
    """
    pt, card_path = checkpoint_paths(name, directory)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(pt, buffer.getvalue())
    doc = {"card_version": CARD_VERSION, "name": name, **card}
    doc.setdefault("versions", versions())
    doc.setdefault("git_commit", git_commit())
    doc.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    doc.update(file=pt.name, sha256=sha256_file(pt), size_bytes=pt.stat().st_size)
    atomic_write_text(card_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return pt


def load_card(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card of ``name``; ``ModelLoadError`` when there is none or it is not a card."""
    _, path = checkpoint_paths(name, directory)
    if not path.is_file():
        where = "shipped" if directory is None else f"in {path.parent}"
        raise ModelLoadError(
            f"no {where} checkpoint for zoo model {name!r}; train one with: equiaudit zoo train {name}"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the model card {path}: {exc}") from None
    if not isinstance(card, dict) or card.get("card_version") != CARD_VERSION or card.get("name") != name:
        raise ModelLoadError(f"{path} is not a version-{CARD_VERSION} model card of {name!r}")
    return card


def load_state(name: str, directory: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict of ``name`` (checked against its card's SHA-256, loaded with ``weights_only=True``)
    and its card."""
    card = load_card(name, directory)
    pt, _ = checkpoint_paths(name, directory)
    if not pt.is_file():
        raise ModelLoadError(f"the model card of {name!r} is there but its weights {pt} are missing")
    digest = sha256_file(pt)
    if card.get("sha256") != digest:
        raise ModelLoadError(
            f"{pt} does not match its model card (SHA-256 {digest[:12]}..., card says "
            f"{str(card.get('sha256'))[:12]}...); the file was changed or damaged, retrain it"
        )
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{pt} is refused by torch.load(weights_only=True) ({str(exc).splitlines()[0]}); "
            f"a zoo checkpoint holds only tensors, retrain it"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelLoadError(f"cannot read {pt}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{pt} does not hold a state dict (names -> tensors)")
    return state, card


def load_pretrained(name: str, model: nn.Module, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load the checkpoint of ``name`` (default: the shipped one) into ``model``; returns the model card.

    The model must be built as the card says (``model.create_kwargs``, ``model.tiny``); anything else is a
    ``ModelLoadError`` naming the first keys or shapes that do not fit.
    """
    state, card = load_state(name, directory)
    built = card.get("model", {})
    how = ", ".join(
        f"{k}={v!r}" for k, v in {"tiny": built.get("tiny", False), **built.get("create_kwargs", {})}.items()
    )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).splitlines()[0])
        raise ModelLoadError(
            f"the checkpoint of {name!r} does not fit this model ({detail.rstrip('.')}); "
            f"it was trained for create({name!r}, {how})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        keys = (result.missing_keys or result.unexpected_keys)[:3]
        raise ModelLoadError(
            f"the checkpoint of {name!r} does not fit this model ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {', '.join(keys)}); it was trained for "
            f"create({name!r}, {how})"
        )
    model.eval()
    return card
