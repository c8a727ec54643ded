"""The model registry of the zoo: ``@register_model`` on a factory, ``create(name)``, ``list_models(pattern)``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from equiaudit.errors import ModelLoadError

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model"]

TASKS = ("classify", "segment")

_REGISTRY: dict[str, ModelInfo] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about a model, next to the factory that builds it.

    ``groups`` are the group specs the model is equivariant (segmentation) or invariant (classification) to
    by construction; ``exact_groups`` is the subset that holds exactly on the pixel grid at ``input_shape``
    (float32 error ~1e-6), the rest only approximately.
    """

    name: str
    family: str
    description: str
    task: str
    groups: tuple[str, ...]
    exact_groups: tuple[str, ...]
    input_shape: tuple[int, int, int]
    num_classes: int | None
    default_dataset: str
    reference: str
    cpu_trainable: bool
    factory: Callable[..., nn.Module]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (everything but the factory)."""
        d = asdict(self)
        del d["factory"]
        return d


def register_model(
    name: str | None = None,
    *,
    family: str,
    description: str,
    task: str,
    groups: tuple[str, ...],
    exact_groups: tuple[str, ...],
    input_shape: tuple[int, int, int],
    num_classes: int | None,
    default_dataset: str,
    reference: str,
    cpu_trainable: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory ``fn(*, tiny=False, **kwargs) -> nn.Module`` under ``name`` (default: the function
    name with ``_`` -> ``-``). Returns the factory unchanged."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__.replace("_", "-")
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        if task not in TASKS:
            raise ValueError(f"model {key!r}: task must be one of {TASKS}, got {task!r}")
        if not set(exact_groups) <= set(groups):
            raise ValueError(f"model {key!r}: exact_groups {exact_groups} must be a subset of groups {groups}")
        if "tiny" not in inspect.signature(factory).parameters:
            raise ValueError(f"model {key!r}: the factory must accept a `tiny` keyword")
        _REGISTRY[key] = ModelInfo(
            name=key,
            family=family,
            description=description,
            task=task,
            groups=tuple(groups),
            exact_groups=tuple(exact_groups),
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            default_dataset=default_dataset,
            reference=reference,
            cpu_trainable=cpu_trainable,
            factory=factory,
        )
        return factory

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern`` (case-insensitive), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n.lower(), pattern.lower()))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; an unknown name raises ``ModelLoadError`` with close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(list_models())}"
        raise ModelLoadError(f"unknown zoo model {name!r}; {hint}") from None


def _check_kwargs(info: ModelInfo, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(info.factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = ", ".join(sorted(set(params) - {"tiny"}))
        raise ModelLoadError(f"zoo model {info.name!r} takes no argument {unknown[0]!r}; it accepts: {accepted}")


def _load_pretrained(name: str, model: nn.Module) -> None:
    """Load the shipped checkpoint of ``name`` into ``model`` (``weights_only``, SHA-256 checked against its card)."""
    from .checkpoints import load_pretrained

    load_pretrained(name, model)


def create(name: str, *, tiny: bool = False, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` (``tiny``: a very small variant for fast tests), optionally with its shipped
    weights. Extra keyword arguments go to the factory (``in_channels``, ``num_classes``, widths, ...)."""
    info = model_info(name)
    _check_kwargs(info, kwargs)
    model = info.factory(tiny=tiny, **kwargs)
    if pretrained:
        _load_pretrained(name, model)
    return model
