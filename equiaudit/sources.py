"""Built-in model sources for the models people already use: ``torchvision:NAME``, ``timm:NAME`` and ``hf:PATH``
(see :mod:`equiaudit.loading`). Each imports its library on first use (timm and transformers are optional
extras), downloads nothing, and declares the input pipeline the model expects
(:class:`~equiaudit.preprocess.Preprocess`), so that an audit on a folder of photos needs no other option.

* ``torchvision:NAME[?key=value,...]``: a ``torchvision.models`` builder. Weights: the builder's ``DEFAULT`` (or
  ``weights=NAME``) from torch's hub cache when they are there, else a one-line error; ``weights=None`` builds
  random weights. Preprocessing: the weights' own transforms (``resize_size``, ``crop_size``, mean / std,
  interpolation); with ``weights=None``, those of the default weights.
* ``timm:NAME[?key=value,...]``: ``timm.create_model``; pretrained weights from the Hugging Face or torch hub
  cache when they are there (``pretrained=False`` for random weights). Preprocessing: the model's pretrained
  config (``input_size``, ``crop_pct``, ``interpolation``, mean / std), as ``timm.data.resolve_data_config``.
* ``hf:PATH``: a Hugging Face vision model from a folder written by ``save_pretrained`` (or a model id already
  in the Hugging Face cache), as the class its ``config.json`` names; never code from the folder
  (``auto_map``). Preprocessing: its ``preprocessor_config.json``.

``--arch torchvision:NAME?num_classes=10`` / ``--arch timm:NAME`` build the architecture (random weights) for a
state dict; a state dict brings no preprocessing (its training pipeline is the user's).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import ModelLoadError
from .preprocess import Preprocess

__all__ = ["hf", "timm", "torchvision"]

# PIL resampling filters as Hugging Face processors store them
_PIL_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def _require(package: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(
            f"{what} needs the {package} package; install it with: pip install 'equiaudit[{extra}]'"
        ) from None


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside loads with ``weights_only=True`` (a library that passes ``False`` included)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- torchvision


class TorchvisionSource:
    """``torchvision:NAME`` (see the module docstring)."""

    name = "torchvision"

    def _builder(self, name: str) -> Any:
        from torchvision import models

        known = models.list_models()
        if name not in known:
            raise ModelLoadError(f"torchvision has no model {name!r}{_close(name, known)}; see torchvision.models")
        return models.get_model_builder(name)

    def _weights(self, name: str, choice: Any) -> Any:
        from torchvision import models

        try:
            enum = models.get_model_weights(name)
        except (ValueError, KeyError):
            if choice in (None, "DEFAULT"):
                return None
            raise ModelLoadError(f"torchvision:{name} has no pretrained weights; use weights=None") from None
        key = "DEFAULT" if choice is None else str(choice).split(".")[-1]
        if key not in enum.__members__:
            raise ModelLoadError(
                f"torchvision:{name} has no weights {choice!r}; known: {', '.join(enum.__members__)} or None"
            )
        return enum[key]

    def _build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        import inspect

        builder = self._builder(name)
        params = inspect.signature(builder).parameters
        if "weights_backbone" in params and "weights_backbone" not in kwargs:
            kwargs = {**kwargs, "weights_backbone": None}  # its default would download backbone weights
        try:
            return builder(**{"weights": None, **kwargs})
        except Exception as err:
            raise ModelLoadError(f"torchvision:{name}: building the model failed: {_one_line(err)}") from err

    def load(self, rest: str, *, device: torch.device, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        name = rest.strip()
        self._builder(name)
        choice = kwargs.pop("weights", "DEFAULT")
        info: dict[str, Any] = {"library": "torchvision", "builder": name}
        if choice is None:
            model = self._build(name, kwargs)
            info["weights"] = None  # random, as asked
            weights = self._weights(name, None)
        else:
            weights = self._weights(name, choice)
            if weights is None:
                raise ModelLoadError(f"torchvision:{name} has no pretrained weights; add ?weights=None")
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
            if not path.is_file():
                raise ModelLoadError(
                    f"torchvision:{name}: the weights {weights} are not in torch's cache ({path}); equiaudit "
                    f"downloads nothing: fetch them once with torchvision.models.get_model({name!r}, "
                    f"weights={str(weights)!r}), or add ?weights=None for random weights"
                )
            builder = self._builder(name)
            try:
                with _weights_only_loads():
                    model = builder(weights=weights, progress=False, **kwargs)
            except Exception as err:
                raise ModelLoadError(f"torchvision:{name}: loading {path} failed: {_one_line(err)}") from err
            info.update(weights=str(weights), weights_file=str(path))
        info["preprocess"] = self._preprocess(weights)
        return model.to(device).eval(), info

    def create(self, rest: str, **kwargs: Any) -> nn.Module:
        """The architecture with random weights, for a state dict (``weights`` other than None would load some)."""
        if kwargs.get("weights") is not None:
            raise ModelLoadError("--arch torchvision:NAME builds random weights for your state dict; drop weights=")
        return self._build(rest.strip(), {k: v for k, v in kwargs.items() if k != "weights"})

    @staticmethod
    def _preprocess(weights: Any) -> Preprocess | None:
        if weights is None:
            return None
        try:
            preset = weights.transforms()
        except Exception:
            return None
        resize = getattr(preset, "resize_size", None)
        crop = getattr(preset, "crop_size", None)
        interpolation = getattr(getattr(preset, "interpolation", None), "value", "bilinear")
        mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
        return Preprocess(
            resize=resize[0] if resize and len(resize) == 1 else None,
            input_size=tuple(resize) if resize and len(resize) == 2 else None,
            crop=crop,
            resample=interpolation,
            channels=3 if mean is not None and len(mean) == 3 else None,
            mean=mean,
            std=std,
            source=f"torchvision weights {weights}",
        )


# ---------------------------------------------------------------------------------------------------- timm


def _timm_cached(cfg: Any) -> str | None:
    """The local file of a timm pretrained config's weights, when a hub cache holds it."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            filenames = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
            for filename in filter(None, filenames):
                found = try_to_load_from_cache(hub_id.split("@")[0], filename)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = getattr(cfg, "url", None)
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            return str(path)
    return None


class TimmSource:
    """``timm:NAME`` (see the module docstring)."""

    name = "timm"

    def _check(self, name: str) -> Any:
        timm = _require("timm", "timm", f"timm:{name}")
        if not timm.is_model(name):
            known = timm.list_models(f"*{name.split('.')[0][:6]}*")[:200]
            raise ModelLoadError(f"timm has no model {name!r}{_close(name, known)}; see timm.list_models()")
        return timm

    def load(self, rest: str, *, device: torch.device, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        name = rest.strip()
        timm = self._check(name)
        pretrained = kwargs.pop("pretrained", True)
        info: dict[str, Any] = {"library": "timm", "model": name}
        try:
            if not pretrained:
                model = timm.create_model(name, pretrained=False, **kwargs)
                info["weights"] = None
            else:
                from timm.models import get_pretrained_cfg

                cfg = get_pretrained_cfg(name)
                file = _timm_cached(cfg) if cfg is not None else None
                if file is None:
                    raise ModelLoadError(
                        f"timm:{name}: no pretrained weights in the Hugging Face or torch hub cache; equiaudit "
                        f"downloads nothing: fetch them once with timm.create_model({name!r}, pretrained=True), "
                        f"or add ?pretrained=False for random weights"
                    )
                with _weights_only_loads():
                    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file}, **kwargs)
                info.update(weights=getattr(model, "pretrained_cfg", {}).get("tag") or "pretrained", weights_file=file)
        except ModelLoadError:
            raise
        except Exception as err:
            raise ModelLoadError(f"timm:{name}: creating the model failed: {_one_line(err)}") from err
        info["preprocess"] = self._preprocess(timm, model, name)
        return model.to(device).eval(), info

    def create(self, rest: str, **kwargs: Any) -> nn.Module:
        name = rest.strip()
        timm = self._check(name)
        if kwargs.get("pretrained"):
            raise ModelLoadError("--arch timm:NAME builds random weights for your state dict; drop pretrained=")
        try:
            return timm.create_model(name, **{**kwargs, "pretrained": False})
        except Exception as err:
            raise ModelLoadError(f"timm:{name}: creating the model failed: {_one_line(err)}") from err

    @staticmethod
    def _preprocess(timm: Any, model: nn.Module, name: str) -> Preprocess | None:
        try:
            from timm.data import resolve_data_config

            cfg = resolve_data_config({}, model=model)
        except Exception:
            return None
        channels, h, w = cfg["input_size"]
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        mode = cfg.get("crop_mode", "center")
        tag = getattr(model, "pretrained_cfg", {}).get("tag")
        source = f"timm pretrained config of {name}{'.' + tag if tag and '.' not in name else ''}"
        if mode == "squash" or h != w:  # timm resizes both sides (squash) or keeps the ratio to a non-square size
            size = (math.floor(h / crop_pct), math.floor(w / crop_pct))
            geometry: dict[str, Any] = {"input_size": (h, w)} if crop_pct == 1.0 else {"input_size": size}
            if crop_pct != 1.0:
                geometry["crop"] = (h, w)
        else:
            geometry = {"resize": math.floor(h / crop_pct), "crop": (h, w)}
        return Preprocess(
            **geometry,
            resample=str(cfg.get("interpolation", "bilinear")),
            channels=channels,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            source=source,
        )


# ------------------------------------------------------------------------------------------- Hugging Face


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars or info logging on stderr while loading (the CLI's stdout / stderr stay clean)."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class HfSource:
    """``hf:PATH`` (see the module docstring)."""

    name = "hf"

    def load(self, rest: str, *, device: torch.device, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        path = rest.strip()
        if not path:
            raise ModelLoadError("hf: names no folder; use hf:PATH (a folder written by save_pretrained)")
        transformers = _require("transformers", "hf", f"hf:{path}")
        local = Path(path).expanduser()
        where = str(local) if local.is_dir() else path
        with _quiet_transformers(transformers):
            try:
                config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
            except Exception as err:
                why = f": {_one_line(err)}" if (local / "config.json").is_file() else ""
                raise ModelLoadError(
                    f"hf:{path} is neither a folder with a config.json nor a model in the Hugging Face cache{why}"
                ) from None
            if getattr(config, "auto_map", None):
                raise ModelLoadError(
                    f"hf:{path} needs code from the model's folder (auto_map in config.json); equiaudit runs no "
                    f"code from model files: load it yourself and pass the module to equiaudit.audit()"
                )
            arch = (getattr(config, "architectures", None) or [None])[0]
            cls = getattr(transformers, arch, None) if arch else None
            cls = cls if cls is not None and hasattr(cls, "from_pretrained") else None
            cls = cls or transformers.AutoModelForImageClassification
            try:
                model = cls.from_pretrained(where, local_files_only=True, **kwargs)
            except Exception as err:
                raise ModelLoadError(f"hf:{path}: loading {cls.__name__} failed: {_one_line(err)}") from err
        info: dict[str, Any] = {"library": "transformers", "class": type(model).__name__, "path": where}
        labels = getattr(config, "id2label", None)
        if isinstance(labels, dict) and labels:
            info["classes"] = [str(labels[k]) for k in sorted(labels, key=int)]
        info["preprocess"] = self._preprocess(where, local.is_dir(), config)
        return model.to(device).eval(), info

    @staticmethod
    def _processor_config(where: str, is_dir: bool) -> dict[str, Any] | None:
        if is_dir:
            file: str | None = str(Path(where) / "preprocessor_config.json")
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(where, "preprocessor_config.json")
                file = found if isinstance(found, str) else None
            except ImportError:
                file = None
        if file is None or not os.path.isfile(file):
            return None
        try:
            with open(file, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _preprocess(self, where: str, is_dir: bool, config: Any) -> Preprocess | None:
        channels = getattr(config, "num_channels", None)
        doc = self._processor_config(where, is_dir)
        if doc is None:
            size = getattr(config, "image_size", None)
            if size is None:
                return None
            return Preprocess(input_size=size, channels=channels, source=f"{where}/config.json (no image processor)")
        geometry: dict[str, Any] = {}
        size = doc.get("size") if doc.get("do_resize", True) else None
        crop = doc.get("crop_size") if doc.get("do_center_crop", False) else None
        if isinstance(size, dict):
            if "shortest_edge" in size:
                short = int(size["shortest_edge"])
                pct = doc.get("crop_pct")
                # ConvNeXt: resize to shortest_edge / crop_pct, then crop shortest_edge
                geometry = {"resize": int(short / float(pct)), "crop": short} if pct and not crop else {"resize": short}
            elif "height" in size and "width" in size:
                geometry = {"input_size": (int(size["height"]), int(size["width"]))}
        elif isinstance(size, int):
            geometry = {"resize": size}
        if isinstance(crop, dict) and "height" in crop and "width" in crop:
            geometry["crop"] = (int(crop["height"]), int(crop["width"]))
        elif isinstance(crop, int):
            geometry["crop"] = crop
        normalise = doc.get("do_normalize", False)
        return Preprocess(
            **geometry,
            resample=_PIL_RESAMPLE.get(doc.get("resample"), "bilinear"),
            channels=channels,
            mean=doc.get("image_mean") if normalise else None,
            std=doc.get("image_std") if normalise else None,
            source=f"{doc.get('image_processor_type', 'image processor')} in {where}",
        )


torchvision = TorchvisionSource()
timm = TimmSource()
hf = HfSource()
