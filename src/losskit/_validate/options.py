"""Checks of option arguments, and the frozen option objects they return.

A loss's options are checked once, where they enter: by the function at call time, and by the
Module at construction (with the same checks and messages, so a bad option fails where it is
written, not at the first ``forward``). What comes out is a frozen dataclass that the function,
the Module, the fused kernels and ``losskit.distributed`` all read; nothing downstream checks
again.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .._reduction import VALID_REDUCTIONS, resolve
from .errors import LossTypeError, LossValueError

__all__ = [
    "IMPLS",
    "CrossEntropyOptions",
    "check_alpha",
    "check_float_option",
    "check_ignore_index",
    "check_impl",
    "check_positive_int",
    "cross_entropy_options",
]

#: What ``impl=`` may name, for every loss that has a fused path.
IMPLS = ("auto", "reference", "fused")


def is_finite(value: float) -> bool:
    """``math.isfinite`` in comparisons, which ``torch.compile`` also traces on a symbolic float
    (``dynamic=True`` makes a Python float argument one)."""
    return value == value and abs(value) != math.inf


def check_float_option(
    name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    """A Python number inside [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    below = value <= low if low_open else value < low
    if value != value or below or value > high:  # NaN (also for a traced SymFloat)
        left = "(" if low_open else "["
        right = "]" if is_finite(high) else ")"
        raise LossValueError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value:g}")
    return value


def check_alpha(alpha: object) -> float:
    """The focal ``alpha``: in [0, 1], or negative to turn the class balancing off."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise LossTypeError(f"alpha must be a float, got {type(alpha).__name__}")
    alpha = float(alpha)
    if alpha != alpha or alpha > 1.0:
        raise LossValueError(
            f"alpha must be in [0, 1] (or negative to turn the class balancing off), got {alpha:g}"
        )
    return alpha


def check_impl(impl: object) -> str:
    """``impl`` is one of :data:`IMPLS`."""
    if impl not in IMPLS:
        raise LossValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl  # type: ignore[return-value]


def check_ignore_index(ignore_index: object, *, allow_none: bool = False) -> int | None:
    """``ignore_index`` is an int (or None, where the loss allows it)."""
    if ignore_index is None and allow_none:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise LossTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return ignore_index


def check_positive_int(name: str, value: object, *, allow_none: bool = True) -> int | None:
    """A positive int (or None)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LossValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


@dataclass(frozen=True)
class CrossEntropyOptions:
    """The checked options of a cross-entropy (plain, linear, vocabulary-parallel, fused).

    ``ignore_index`` is None only for the linear cross-entropy, where torch 2.13 takes None for
    "no index is ignored" (the kernels then use -100, which no class index equals).
    """

    reduction: str = "mean"
    ignore_index: int | None = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None

    @property
    def kernel_ignore_index(self) -> int:
        """The ignore index the kernels compare with (-100 for None)."""
        return -100 if self.ignore_index is None else self.ignore_index


def cross_entropy_options(
    reduction: str = "mean",
    ignore_index: object = -100,
    label_smoothing: object = 0.0,
    z_loss: object = 0.0,
    softcap: object = None,
    *,
    size_average: bool | None = None,
    reduce: bool | None = None,
    allow_none_ignore: bool = False,
) -> CrossEntropyOptions:
    """Check a cross-entropy's options (legacy ``size_average``/``reduce`` mapped as torch maps
    them) and return them frozen.

    A call without legacy flags or the deprecated spelling (nothing to warn about) is answered
    from a cache of checked options (keyed by type too, so ``label_smoothing=False`` still
    fails): on a tiny input, building the options is a visible part of a loss's cost.
    """
    traced = torch.compiler.is_compiling()  # the cache is host bookkeeping, not traced
    if not traced and size_average is None and reduce is None and reduction in VALID_REDUCTIONS:
        try:
            return _checked_options(
                reduction, ignore_index, label_smoothing, z_loss, softcap, allow_none_ignore
            )
        except TypeError:  # an unhashable option: checked below, and refused there
            pass
    return _check_options(
        reduction, ignore_index, label_smoothing, z_loss, softcap,
        size_average=size_average, reduce=reduce, allow_none_ignore=allow_none_ignore,
    )  # fmt: skip


def _check_options(
    reduction: str,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    *,
    size_average: bool | None = None,
    reduce: bool | None = None,
    allow_none_ignore: bool = False,
) -> CrossEntropyOptions:
    reduction = resolve(reduction, size_average, reduce, depth=2)
    label_smoothing = check_float_option("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = check_float_option("z_loss", z_loss, low=0.0)
    if softcap is not None:
        softcap = check_float_option("softcap", softcap, low=0.0, low_open=True)
    ignore_index = check_ignore_index(ignore_index, allow_none=allow_none_ignore)
    return CrossEntropyOptions(reduction, ignore_index, label_smoothing, z_loss, softcap)


@functools.lru_cache(maxsize=256, typed=True)
def _checked_options(
    reduction: str,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    allow_none_ignore: bool,
) -> CrossEntropyOptions:
    return _check_options(
        reduction, ignore_index, label_smoothing, z_loss, softcap,
        allow_none_ignore=allow_none_ignore, reduce=None, size_average=None,
    )  # fmt: skip
