"""Reduction names, torch's legacy ``size_average``/``reduce`` flags, and masked reductions.

One place decides how an elementwise loss becomes what the caller asked for:

- ``'none'``: the elementwise loss, with positions left out by ``mask`` set to 0.
- ``'sum'``: the sum over counted positions.
- ``'mean'``: that sum divided by the count of counted positions (or by the sum of their
  weights, for losses whose torch definition says so), or by ``normalizer`` when one is given.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from ._validate import LossValueError

Reduction = Literal["none", "mean", "sum"]

VALID_REDUCTIONS = ("none", "mean", "sum")


def resolve(reduction: str, size_average: bool | None = None, reduce: bool | None = None) -> str:
    """Return ``'none'``, ``'mean'`` or ``'sum'``, mapping legacy arguments as torch does.

    ``size_average``/``reduce``, when either is given, override ``reduction`` (with torch's
    deprecation warning). ``'elementwise_mean'`` is the old name of ``'mean'``.
    """
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce)
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated, please use reduction='mean' instead.",
            FutureWarning,
            stacklevel=3,
        )
        return "mean"
    if reduction not in VALID_REDUCTIONS:
        raise LossValueError(
            f"reduction must be one of 'none', 'mean', 'sum' (or the deprecated "
            f"'elementwise_mean'), got {reduction!r}"
        )
    return reduction


def legacy_get_string(
    size_average: bool | None, reduce: bool | None, emit_warning: bool = True
) -> str:
    """torch's mapping of the legacy flags: both default to True."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        ret = "mean"
    elif reduce:
        ret = "sum"
    else:
        ret = "none"
    if emit_warning:
        warnings.warn(
            f"size_average and reduce args will be deprecated, please use reduction='{ret}' "
            "instead.",
            FutureWarning,
            stacklevel=4,
        )
    return ret


def as_normalizer(normalizer: float | Tensor, like: Tensor) -> Tensor:
    """The normalizer as a 0-dim tensor of ``like``'s dtype and device."""
    if isinstance(normalizer, Tensor):
        return normalizer.reshape(()).to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(normalizer), dtype=like.dtype, device=like.device)


def safe_divide(total: Tensor, denominator: Tensor) -> Tensor:
    """``total / denominator``, and 0 (with zero gradient, never NaN) where the denominator is 0."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(total), total / torch.where(zero, 1, denominator))


def reduce(
    loss: Tensor,
    reduction: str,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    mean_denominator: Tensor | None = None,
) -> Tensor:
    """Reduce an elementwise ``loss``.

    Args:
        loss: the elementwise loss, already weighted.
        reduction: ``'none'``, ``'mean'`` or ``'sum'`` (already resolved).
        mask: bool, broadcastable to ``loss``; False positions contribute 0 and leave the count.
        normalizer: with ``'mean'``, the number the sum is divided by instead of the count.
        mean_denominator: with ``'mean'`` and no normalizer, the denominator to use instead of
            the count (e.g. the sum of class weights); it must already honour ``mask``.
    """
    if mask is not None:
        mask = mask.expand(loss.shape)
        # where, not multiply: a masked position holding inf or NaN must not leak into the sum
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if normalizer is not None:
        return safe_divide(loss.sum(), as_normalizer(normalizer, loss))
    if mean_denominator is not None:
        return loss.sum() / mean_denominator
    if mask is not None:
        return loss.sum() / mask.sum().to(loss.dtype)
    return loss.mean()
