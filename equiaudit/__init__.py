"""equiaudit: equivariance testing and auditing for PyTorch vision models.

Importing the package is cheap (no torch): the public names load on first use, so the pytest plugin
costs nothing in projects that do not use it. The core imports none of the zoo (``equiaudit.zoo``), the reports
(``equiaudit.reports``), plotly, jinja2, e2cnn or kornia; the command line (``equiaudit.cli``) composes them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "audit": "equiaudit.engine",
    "AuditSpec": "equiaudit.spec",
    "AuditResult": "equiaudit.result",
    "Observer": "equiaudit.observers",
    "parse_group": "equiaudit.groups",
    "Group": "equiaudit.groups",
    "GroupElement": "equiaudit.groups",
    "GroupTransform": "equiaudit.transforms",
    "apply_elements": "equiaudit.transforms",
    "load_model": "equiaudit.loading",
    "load_data": "equiaudit.data",
    "EquiauditError": "equiaudit.errors",
}
__all__ = [  # noqa: RUF022 - grouped by concept
    "audit",
    "AuditSpec",
    "AuditResult",
    "Observer",
    "parse_group",
    "Group",
    "GroupElement",
    "GroupTransform",
    "apply_elements",
    "load_model",
    "load_data",
    "EquiauditError",
    "__version__",
]

if TYPE_CHECKING:
    from .data import load_data
    from .engine import audit
    from .errors import EquiauditError
    from .groups import Group, GroupElement, parse_group
    from .loading import load_model
    from .observers import Observer
    from .result import AuditResult
    from .spec import AuditSpec
    from .transforms import GroupTransform, apply_elements


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'equiaudit' has no attribute {name!r}")
