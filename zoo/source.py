"""The ``zoo`` model source of :mod:`equiaudit.loading` (entry point ``equiaudit.model_sources``: ``zoo``).

* ``zoo:NAME`` (``equiaudit scan zoo:gcnn-c4``): the model with its shipped weights; the card comes back as
  the model's info, its SHA-256 as the model's hash. Shipped files are trusted, so no ``--trust`` is needed.
* ``--arch zoo:NAME`` / ``--arch zoo:NAME:tiny``: the untrained architecture (tiny variant), for a state
  dict trained with ``equiaudit zoo train NAME [--tiny]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from equiaudit.errors import ModelLoadError

from .checkpoints import has_checkpoint, load_pretrained
from .registry import create as _create
from .registry import model_info

__all__ = ["create", "load"]


def _parse(rest: str) -> tuple[str, bool]:
    name, sep, variant = rest.strip().partition(":")
    if not name:
        raise ModelLoadError("zoo: names no model; use zoo:NAME (see: equiaudit zoo list)")
    if sep and variant != "tiny":
        raise ModelLoadError(f"zoo:{rest} has an unknown variant {variant!r}; use zoo:NAME or zoo:NAME:tiny")
    model_info(name)  # unknown names raise with close matches
    return name, bool(sep)


def load(rest: str, *, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Zoo model ``rest`` with its shipped weights, in eval mode on ``device``, and its model card."""
    name, tiny = _parse(rest)
    if tiny:
        raise ModelLoadError(
            f"zoo:{rest}: shipped checkpoints are full size; use zoo:{name}, or --arch zoo:{rest} for a tiny state dict"
        )
    if not has_checkpoint(name):
        raise ModelLoadError(
            f"zoo model {name!r} has no shipped checkpoint; train one with `equiaudit zoo train "
            f"{name}` and scan the .pt with --arch zoo:{name}"
        )
    model = _create(name)
    card = load_pretrained(name, model)
    return model.to(device).eval(), card


def create(rest: str, **kwargs: Any) -> nn.Module:
    """The untrained architecture ``zoo:NAME`` or ``zoo:NAME:tiny`` (``kwargs`` go to the factory)."""
    name, tiny = _parse(rest)
    return _create(name, tiny=tiny, **kwargs)
