"""Reduction names, torch's legacy ``size_average``/``reduce`` flags, and masked reductions.

One place decides how an elementwise loss becomes what the caller asked for:

- ``'none'``: the elementwise loss, with positions left out by ``mask`` set to 0.
- ``'sum'``: the sum over counted positions.
- ``'mean'``: that sum divided by the count of counted positions (or by the sum of their
  weights, for losses whose torch definition says so), or by ``normalizer`` when one is given
  (:func:`divide_mean` states the rule, 0 and NaN cases included).

A categorical loss reduces its rows through :class:`Rows` (built by :func:`count_rows`), which
decides which rows count, what each weighs and what ``'mean'`` divides by.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._validate.errors import LossValueError

Reduction = Literal["none", "mean", "sum"]

VALID_REDUCTIONS = ("none", "mean", "sum")


def resolve(
    reduction: str,
    size_average: bool | None = None,
    reduce: bool | None = None,
    *,
    depth: int = 0,
) -> str:
    """Return ``'none'``, ``'mean'`` or ``'sum'``, mapping legacy arguments as torch does.

    ``size_average``/``reduce``, when either is given, override ``reduction`` (with torch's
    deprecation warning). ``'elementwise_mean'`` is the old name of ``'mean'``. The warnings
    point at the caller of the public function that called this one, ``depth`` frames further
    out when that function reached here through helpers.
    """
    if reduction in VALID_REDUCTIONS and size_average is None and reduce is None:
        return reduction  # the common call
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce, stacklevel=4 + depth)
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated, please use reduction='mean' instead.",
            FutureWarning,
            stacklevel=3 + depth,
        )
        return "mean"
    if reduction not in VALID_REDUCTIONS:
        raise LossValueError(
            f"reduction must be one of 'none', 'mean', 'sum' (or the deprecated "
            f"'elementwise_mean'), got {reduction!r}"
        )
    return reduction


def legacy_get_string(
    size_average: bool | None,
    reduce: bool | None,
    emit_warning: bool = True,
    *,
    stacklevel: int = 4,
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
            stacklevel=stacklevel,
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


# --------------------------------------------------------------------------------------------
# The 'mean' rule
# --------------------------------------------------------------------------------------------


def divide_mean(total: Tensor, denominator: Tensor, *, normalized: bool) -> Tensor:
    """``'mean'``: the summed loss over its denominator ``D``.

    The rule, for every loss: ``D`` is the caller's ``normalizer`` when one is given
    (``normalized``), and then ``D == 0`` gives 0 (a rank or micro-batch with nothing to count);
    else it is the count of counted positions, or the sum of their weights for losses whose
    torch definition says so, and ``D == 0`` gives NaN, as torch does for an all-ignored batch.
    """
    if normalized:
        return safe_divide(total, denominator)
    return total / denominator


def mean_scale(denominator: Tensor, *, normalized: bool) -> Tensor:
    """``1 / D``, the factor of every gradient row of a ``'mean'`` (see :func:`divide_mean`):
    0 where a normalizer is 0, inf where nothing counts (the rows are then all left out)."""
    if normalized:
        return torch.where(denominator != 0, 1.0 / denominator, torch.zeros_like(denominator))
    return 1.0 / denominator


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
        return divide_mean(loss.sum(), as_normalizer(normalizer, loss), normalized=True)
    if mean_denominator is not None:
        return divide_mean(loss.sum(), mean_denominator, normalized=False)
    if mask is not None:
        return divide_mean(loss.sum(), mask.sum().to(loss.dtype), normalized=False)
    return loss.mean()


# --------------------------------------------------------------------------------------------
# Rows of a categorical loss
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Per-row bookkeeping of a categorical loss over ``N`` rows (one row per target position).

    A row *counts* when its target is not ``ignore_index`` and ``mask`` keeps it. Built once per
    call by :func:`count_rows` and shared by the reference losses, both fused backends, the
    chunked loop and the vocabulary-parallel losses, so that they cannot disagree on which rows
    count, what a row weighs, or what ``'mean'`` divides by.
    """

    counted: Tensor  #: (N,) bool
    y: Tensor  #: (N,) int64 target, 0 where the row does not count (safe to gather with)
    w_y: Tensor  #: (N,) weight of the row's target class (1 unweighted), 0 where it does not count
    reduction: str
    denominator: Tensor | None  #: 0-dim ``D`` of ``'mean'`` (see :func:`divide_mean`), else None
    normalized: bool  #: whether ``D`` is the caller's normalizer

    @functools.cached_property
    def scale(self) -> Tensor | None:
        """``1/D`` as a ``(1,)`` tensor for ``'mean'``, else None (computed once per call)."""
        if self.denominator is None:
            return None
        return mean_scale(self.denominator, normalized=self.normalized).reshape(1)

    def factor(self, i: int = 0, j: int | None = None) -> Tensor:
        """``r`` of rows ``[i, j)``: the factor of each row's gradient in the reduced loss
        (``1/D`` for ``'mean'``, 1 otherwise; 0 where the row does not count)."""
        counted = self.counted if i == 0 and j is None else self.counted[i:j]
        if self.denominator is None:
            return counted.to(self.w_y.dtype)
        # where, not a product: 1/D is inf when no row counts
        return torch.where(counted, self.scale, torch.zeros((), dtype=self.w_y.dtype))

    def reduce(self, values: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Per-row ``values`` (N,) reduced as asked: 0 where a row does not count; the (N,)
        vector for ``'none'``, its sum, or the sum over ``D``; cast to ``dtype``."""
        values = torch.where(self.counted, values, torch.zeros((), dtype=values.dtype))
        if self.reduction != "none":
            values = values.sum()
            if self.denominator is not None:
                denominator = self.denominator.to(values.dtype)
                values = divide_mean(values, denominator, normalized=self.normalized)
        return values if dtype is None else values.to(dtype)


def count_rows(
    target: Tensor,
    *,
    ignore_index: int | None,
    reduction: str,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Rows:
    """The :class:`Rows` of flat ``(N,)`` integer targets.

    Args:
        target: ``(N,)`` class indices (any value where the row does not count).
        ignore_index: target value of rows that do not count, or None (every row counts).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        weight: ``(C,)`` class weights, or None; differentiable (the reference losses
            differentiate the weights, the ``'mean'`` denominator included).
        mask: ``(N,)`` bool, True where the row counts, or None.
        normalizer: ``'mean'``'s denominator instead of the sum of the target weights.
        dtype: of ``w_y`` and ``D`` (the computation's dtype).
    """
    if ignore_index is None:
        counted = torch.ones(target.shape, dtype=torch.bool, device=target.device)
    else:
        counted = target != ignore_index
    if mask is not None:
        counted = counted & mask
    y = torch.where(counted, target, torch.zeros((), dtype=target.dtype, device=target.device))
    zero = torch.zeros((), dtype=dtype, device=target.device)
    if weight is None:
        w_y = counted.to(dtype)
    else:
        w_y = torch.where(counted, weight.to(dtype).index_select(0, y), zero)
    denominator = None
    if reduction == "mean":
        if normalizer is not None:
            denominator = as_normalizer(normalizer, zero)
        else:
            denominator = w_y.sum()
    return Rows(counted, y, w_y, reduction, denominator, normalizer is not None)


def count_positions(
    target: Tensor | None,
    n: int,
    device: torch.device,
    *,
    ignore_index: int,
    reduction: str,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Rows:
    """The :class:`Rows` of ``n`` unweighted positions whose hard-label ``target`` is optional
    (the distillation losses): without one, every position that ``mask`` keeps counts."""
    if target is None:
        return count_rows(
            torch.zeros(n, dtype=torch.long, device=device), ignore_index=None,
            reduction=reduction, mask=mask, normalizer=normalizer, dtype=dtype,
        )  # fmt: skip
    return count_rows(
        target, ignore_index=ignore_index, reduction=reduction, mask=mask, normalizer=normalizer,
        dtype=dtype,
    )  # fmt: skip
