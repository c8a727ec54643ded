"""What a model expects of its input images, as its source declares it: resize / crop, resampling, channels and
normalisation. A model loaded from ``torchvision:``, ``timm:`` or ``hf:`` carries one (see
:mod:`equiaudit.sources`); :func:`equiaudit.audit` turns it into :func:`equiaudit.data.load_data` options for
those the user left unset.

**Convention**: images are ``[0, 1]`` pixel values; the pipeline is resize (the shorter side to ``resize``
pixels, keeping the aspect ratio, or every image to exactly ``input_size``), then a centre ``crop``, then
channels, then ``(x - mean) / std``, as torchvision's and timm's evaluation transforms do. The group acts on
the image after the crop and before the normalisation (see :mod:`equiaudit.adapt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

RESAMPLES = ("bilinear", "bicubic", "nearest")
# The data options a preprocessing sets; geometry is taken as a whole (the user's, or the model's).
GEOMETRY = ("input_size", "resize", "crop")
PREPROCESS_OPTIONS = (*GEOMETRY, "resample", "channels", "mean", "std")


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = [int(v) for v in value]
        return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])
    return int(value), int(value)


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


@dataclass(frozen=True)
class Preprocess:
    """A model's expected input pipeline (see the module docstring); ``source`` says where it came from."""

    resize: int | None = None  # the shorter side, in pixels (aspect ratio kept)
    crop: tuple[int, int] | None = None  # centre crop (H, W) after resizing
    input_size: tuple[int, int] | None = None  # instead of resize + crop: every image to exactly (H, W)
    resample: str = "bilinear"
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", _pair(self.crop))
        object.__setattr__(self, "input_size", _pair(self.input_size))
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        if self.resample not in RESAMPLES:
            object.__setattr__(self, "resample", "bilinear")

    def data_options(self) -> dict[str, Any]:
        """The :func:`~equiaudit.data.load_data` options this preprocessing sets (unset ones left out)."""
        return {name: getattr(self, name) for name in PREPROCESS_OPTIONS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Preprocess:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def merge(preprocess: Preprocess | None, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``options`` (load_data keywords) completed with the model's ``preprocess`` where the user gave none, and a
    record of what came from where.

    The geometry (``input_size``, ``resize``, ``crop``) is taken as a whole: any one of them given by the user
    replaces all of the model's. ``mean`` and ``std`` likewise go together.
    """
    out = dict(options)
    if preprocess is None:
        return out, None
    model = preprocess.data_options()
    taken: list[str] = []

    def given(names: Sequence[str]) -> bool:
        return any(out.get(n) is not None for n in names)

    for group in (GEOMETRY, ("mean", "std"), ("resample",), ("channels",)):
        if not given(group):
            for name in group:
                if name in model:
                    out[name] = model[name]
                    taken.append(name)
    record = {
        "from": preprocess.source,
        "taken": taken,
        "overridden": [n for n in PREPROCESS_OPTIONS if n in model and n not in taken],
    }
    return out, record


def pipeline_record(options: Mapping[str, Any]) -> dict[str, Any]:
    """The resize / crop / resample / channels entries of load_data ``options`` that are set, JSON-able."""
    out: dict[str, Any] = {}
    for name in ("resize", "crop", "input_size", "resample", "channels"):
        value = options.get(name)
        if value is not None:
            out[name] = list(_pair(value) or ()) if name in ("crop", "input_size") else value
    return out
