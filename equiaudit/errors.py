"""Errors that equiaudit reports to users as one line (the CLI exits 2 on them)."""

from __future__ import annotations


class EquiauditError(Exception):
    """Base class: a user-facing problem with input, usage or IO. The message is one line."""


class GroupSpecError(EquiauditError, ValueError):
    """A group spec string that does not parse."""


class ModelLoadError(EquiauditError):
    """A model file that cannot (or may not, without ``--trust``) be loaded."""


class DeviceError(EquiauditError, ValueError):
    """A device name that torch does not know or that is not available on this machine."""


class DataError(EquiauditError):
    """A data spec, file or folder that cannot be read."""


class InputMismatchError(EquiauditError):
    """The model and the data do not fit together (shapes, channels, NaN outputs, unusable output shape)."""


class ResultFormatError(EquiauditError):
    """A results JSON file that is malformed or not an equiaudit result."""


class ScanInterrupted(EquiauditError):
    """A scan stopped part-way (interrupt or a failing batch); ``partial`` holds what was measured until then."""

    def __init__(self, message: str, partial: object | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class OptionError(EquiauditError, TypeError):
    """An option that the audit spec (or the function given it) does not know."""


class EquiauditWarning(UserWarning):
    """A caveat about an audit that still runs (e.g. quarter turns of non-square inputs lose their exact path)."""


def one_line(exc: BaseException) -> str:
    """An exception's first line (its type's name when it has no text), for one-line error messages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
