"""The error family every losskit input check raises: one base, three standard kinds."""

from __future__ import annotations

__all__ = ["LossError", "LossIndexError", "LossTypeError", "LossValueError"]


class LossError(Exception):
    """Base of every error losskit raises for bad input."""


class LossValueError(LossError, ValueError):
    """A shape, value or option is wrong."""


class LossTypeError(LossError, TypeError):
    """A dtype or argument type is wrong."""


class LossIndexError(LossError, IndexError):
    """A class index is out of range."""
