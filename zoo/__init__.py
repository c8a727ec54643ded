"""The equiaudit model zoo: reference architectures with known symmetries, by name.

>>> from equiaudit import zoo
>>> model = zoo.create("gcnn-c4", tiny=True)
"""

from . import models  # noqa: F401  (registers the models)
from .registry import ModelInfo, create, list_models, model_info, register_model

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model"]
