"""The optional parts: the zoo (``equiaudit[zoo]``: e2cnn, kornia) and the reports (``equiaudit[reports]``: plotly,
jinja2). With the core alone, asking for one of them is a one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util

from equiaudit.errors import EquiauditError

EXTRAS = {"reports": ("plotly", "jinja2"), "zoo": ("e2cnn", "kornia")}


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, needs: str) -> None:
    """Raise a one-line error (``needs``: what needs it, e.g. "HTML reports need") when ``extra`` is missing."""
    absent = missing(extra)
    if absent:
        raise EquiauditError(
            f"{needs} the '{extra}' extra ({', '.join(absent)} not installed): pip install 'equiaudit[{extra}]'"
        )


def require_reports() -> None:
    require("reports", "HTML reports need")
