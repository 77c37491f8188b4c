"""Regression losses: mean squared error, L1, smooth L1, Huber.

Each keeps torch's signature and defaults; losskit's additions (``mask``, ``normalizer``) are
keyword-only. Inputs and targets must have equal shapes: torch broadcasts mismatched shapes with
only a warning, which silently computes the wrong loss, so losskit raises instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from .. import _validate as V
from .._reduction import reduce as reduce_loss
from .._reduction import resolve
from . import _torch
from ._common import compute_dtype, keep, result_dtype

__all__ = ["huber_loss", "l1_loss", "mse_loss", "smooth_l1_loss"]


def _residual(input: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """``input - target`` in the compute dtype, 0 where ``mask`` leaves a position out (zeroed
    before the subtraction, so inf/NaN padding reaches no gradient)."""
    dtype = compute_dtype(input, target)
    return keep(input.to(dtype), mask) - keep(target.to(dtype), mask)


def _check(
    input: Tensor,
    target: Tensor,
    reduction: str,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
) -> bool:
    """Check a regression call; True when it takes the plain path (torch's own kernel: see
    :mod:`losskit.functional._torch`): no mask or normalizer, input and target of one dtype,
    float32 or float64, and no weight or one of that dtype on a torch that takes it."""
    V.require_real("input", input)
    V.require_real("target", target)
    V.require_one_floating(input, target)
    V.check_elementwise(input, target, mask=mask, normalizer=normalizer, reduction=reduction)
    V.check_elementwise_weight("weight", weight, input, exact=True, what="one weight per element")
    return (
        mask is None
        and normalizer is None
        and input.dtype == target.dtype
        and input.dtype in _torch.DTYPES
        and (weight is None or (_torch.HAS_ELEMENTWISE_WEIGHT and weight.dtype == input.dtype))
    )


def _loss(
    input: Tensor,
    target: Tensor,
    pointwise: Callable[[Tensor], Tensor],
    reduction: str,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    *,
    weighted_mean_by_weight_sum: bool,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The reference (the call already checked): apply ``pointwise`` to the residual, weigh
    and reduce it.

    ``out_dtype`` (default: the promoted dtype of input and target) is promoted with the
    weight's; ``weighted_mean_by_weight_sum``: a weighted ``'mean'`` divides by the weights'
    sum (MSE, L1) instead of the count (Huber), as torch does.
    """
    elementwise = pointwise(_residual(input, target, mask))
    if out_dtype is None:
        out_dtype = result_dtype(input, target)
    mean_denominator = None
    if weight is not None:
        # as torch: the unweighted loss times the weight, in their promoted dtype. One widened
        # copy of the weight feeds both uses, so a half weight's gradient is rounded once.
        w = weight.to(compute_dtype(weight))
        dtype = compute_dtype(elementwise, w)
        out_dtype = torch.promote_types(out_dtype, weight.dtype)
        elementwise = elementwise.to(dtype) * w.to(dtype)
        if reduction == "mean" and normalizer is None and weighted_mean_by_weight_sum:
            # torch divides a weighted MSE/L1 mean by the sum of the weights, summed in the
            # weight's own dtype (half types in float32)
            if mask is not None:
                w = w.where(mask.expand(w.shape), 0)
            mean_denominator = w.sum()
    out = reduce_loss(
        elementwise,
        reduction,
        mask=mask,
        normalizer=normalizer,
        mean_denominator=mean_denominator,
    )
    return out.to(out_dtype)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Mean squared error.

    .. math:: \ell_i = w_i (x_i - y_i)^2

    Args:
        input: predictions ``x``, any shape.
        target: ``y``, the input's shape. Either of the two may be an integer or bool tensor
            (as in torch, it is promoted to the other's floating dtype).
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (``'elementwise_mean'`` is the old name of
            ``'mean'``). Default ``'mean'``.
        weight: optional elementwise weight of the input's shape; the weighted ``'mean'`` divides
            by the sum of the weights, as torch does.
        mask: keyword-only bool tensor broadcastable to the target; False positions contribute 0
            and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count (see :func:`losskit.count_targets`).

    Shape:
        - Input: ``(*)``. Target: ``(*)``, same shape.
        - Output: scalar, or ``(*)`` with ``reduction='none'``.

    Returns:
        The loss, in the promoted dtype of input, target and weight.

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
        tensor(2.)
    """
    reduction = resolve(reduction, size_average, reduce)
    if _check(input, target, reduction, weight, mask, normalizer):
        return _torch.mse_loss(input, target, reduction, weight)
    return _loss(
        input, target, lambda d: d * d, reduction, weight, mask, normalizer,
        weighted_mean_by_weight_sum=True,
    )  # fmt: skip


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Mean absolute error.

    .. math:: \ell_i = w_i \lvert x_i - y_i \rvert

    Args and Shape: as :func:`mse_loss` (the weighted ``'mean'`` divides by the sum of weights).

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.l1_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
        tensor(1.)
    """
    reduction = resolve(reduction, size_average, reduce)
    if _check(input, target, reduction, weight, mask, normalizer):
        return _torch.l1_loss(input, target, reduction, weight)
    return _loss(
        input, target, torch.abs, reduction, weight, mask, normalizer,
        weighted_mean_by_weight_sum=True,
    )  # fmt: skip


def _smooth(diff: Tensor, beta: float, slope: float) -> Tensor:
    """``slope`` times the smooth-L1 piecewise: quadratic inside |d| < beta, linear outside.

    Written per branch (not as ``slope * smooth``) so each branch rounds as torch's kernel does.
    """
    absdiff = diff.abs()
    quadratic = ~(absdiff >= beta)  # NaN goes here, as in torch (its gradient stays NaN)
    # the quadratic branch sees only its own differences, so an infinite difference sends it a
    # zero gradient times 0, not times inf (NaN); torch's gradient there is +-slope
    d = torch.where(quadratic, diff, 0)
    inner = 0.5 * d * d if slope == beta else 0.5 * d * d / beta
    return torch.where(quadratic, inner, slope * (absdiff - 0.5 * beta))


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Smooth L1: quadratic near zero, linear beyond ``beta``.

    .. math::
        \ell_i = \begin{cases} 0.5 (x_i - y_i)^2 / \beta & |x_i - y_i| < \beta \\
                 |x_i - y_i| - 0.5 \beta & \text{otherwise} \end{cases}

    ``beta = 0`` is exactly :func:`l1_loss`. ``beta`` must be >= 0.

    Args and Shape: as :func:`mse_loss`, plus ``beta`` (default 1.0).

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="none")
        tensor([0.1250, 2.5000])
    """
    reduction = resolve(reduction, size_average, reduce)
    beta = V.check_float_option("beta", beta, low=0.0)
    if _check(input, target, reduction, None, mask, normalizer):
        return _torch.smooth_l1_loss(input, target, reduction, beta)
    pointwise = torch.abs if beta == 0.0 else functools.partial(_smooth, beta=beta, slope=1.0)
    return _loss(
        input, target, pointwise, reduction, None, mask, normalizer,
        weighted_mean_by_weight_sum=False,
    )  # fmt: skip


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Huber loss: quadratic near zero, linear with slope ``delta`` beyond it.

    .. math::
        \ell_i = w_i \begin{cases} 0.5 (x_i - y_i)^2 & |x_i - y_i| < \delta \\
                 \delta (|x_i - y_i| - 0.5 \delta) & \text{otherwise} \end{cases}

    Equals ``delta * smooth_l1_loss(..., beta=delta)``. ``delta`` must be > 0. As in torch, the
    weighted ``'mean'`` divides by the number of elements (not the weight sum), and the result
    has the input's dtype (promoted with the weight's, when one is given).

    Args and Shape: as :func:`mse_loss`, plus ``delta`` (default 1.0).

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.huber_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="none")
        tensor([0.1250, 2.5000])
    """
    reduction = resolve(reduction)
    delta = V.check_float_option("delta", delta, low=0.0, low_open=True)
    if _check(input, target, reduction, weight, mask, normalizer):
        return _torch.huber_loss(input, target, reduction, delta, weight)
    return _loss(
        input, target, functools.partial(_smooth, beta=delta, slope=delta), reduction, weight,
        mask, normalizer, weighted_mean_by_weight_sum=False,
        out_dtype=input.dtype if input.is_floating_point() else None,
    )  # fmt: skip
