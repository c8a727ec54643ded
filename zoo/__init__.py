"""The equiaudit model zoo: reference architectures with known symmetries, by name.

>>> from equiaudit import zoo
>>> model = zoo.create("gcnn-c4", tiny=True)

Needs the ``zoo`` extra (e2cnn, kornia): importing it without them raises ImportError naming what to install.
"""

import importlib.util

from .registry import ModelInfo, create, list_models, model_info, register_model

_MISSING = [name for name in ("e2cnn", "kornia") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"The model zoo needs the 'zoo' extra ({', '.join(_MISSING)} not installed): pip install 'equiaudit[zoo]'"
    )

from . import models  # noqa: E402, F401  (registers the models; after the check, as it imports e2cnn)

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model"]
