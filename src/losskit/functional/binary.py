"""Binary classification: cross-entropy on probabilities and on logits.

Prefer :func:`binary_cross_entropy_with_logits`: it is exact for any logit, while the probability
form has to clamp its logarithms at -100 (as torch does) once a sigmoid has saturated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as V
from .._reduction import reduce as reduce_loss
from .._reduction import resolve
from . import _torch
from ._common import compute_dtype, keep, result_dtype

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits"]

_LOG_FLOOR = -100.0  # torch clamps log(x) and log(1 - x) here
# torch's floor for x (1 - x) in the gradient: a C++ `float` 1e-12, so float64 sees the
# float32-rounded value (9.999999960041972e-13), not the double 1e-12
_GRAD_EPS = float(torch.tensor(1e-12, dtype=torch.float32))


def _check(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    label_smoothing: float,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    validate: bool,
) -> float:
    """Check a binary cross-entropy call (``reduction`` already resolved); return the checked
    label smoothing."""
    # each cheap test calls its helper (which words the error) only when it fails
    if type(label_smoothing) is not float or label_smoothing != 0.0:
        label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )
    if not isinstance(input, Tensor) or input.dtype not in V.FLOATING:
        V.require_floating("input", input)
    if not isinstance(target, Tensor) or target.dtype not in V.FLOATING:
        V.require_floating("target", target)
    V.check_elementwise(input, target, mask=mask, normalizer=normalizer, reduction=reduction)
    if weight is not None:
        V.check_elementwise_weight("weight", weight, input, exact=False)
    if validate:  # positions left out by the mask may hold anything (missing labels)
        V.check_unit_interval("target", keep(target, mask), what="probabilities")
    return label_smoothing


def _plain(
    input: Tensor,
    target: Tensor,
    *others: Tensor | None,
    label_smoothing: float,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
) -> bool:
    """Whether a checked call takes the plain path (torch's own kernel, see
    :mod:`losskit.functional._torch`): nothing losskit adds, and every tensor of the input's
    dtype, float32 or float64. A target that requires grad takes the reference, whose target
    gradient is finite at predictions of exactly 0 or 1 (torch's is inf there), and so does a
    weight that requires grad (torch's kernels give it none)."""
    dtype = input.dtype
    if not (
        label_smoothing == 0.0
        and mask is None
        and normalizer is None
        and dtype in _torch.DTYPES
        and target.dtype == dtype
        and not target.requires_grad
    ):
        return False
    for t in others:
        if t is not None and (t.dtype != dtype or t.requires_grad):
            return False
    return True


def _smooth_labels(target: Tensor, label_smoothing: float) -> Tensor:
    if label_smoothing == 0.0:
        return target
    return target * (1.0 - label_smoothing) + 0.5 * label_smoothing


class _BinaryCrossEntropy(torch.autograd.Function):
    """-(y log x + (1 - y) log(1 - x)) with torch's clamps, and torch's exact gradients.

    Plain autograd through ``clamp(log(x), min=-100)`` gives 0/0 = NaN at x == 0 or 1; torch's
    gradient is (x - y) / max(x (1 - x), 1e-12) instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        log_x = torch.log(x).clamp_min(_LOG_FLOOR)
        log_1mx = torch.log1p(-x).clamp_min(_LOG_FLOOR)
        ctx.save_for_backward(x, y)
        return (y - 1) * log_1mx - y * log_x

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y = ctx.saved_tensors
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * (x - y) / (x * (1 - x)).clamp_min(_GRAD_EPS)
        if ctx.needs_input_grad[1]:
            log_x = torch.log(x).clamp_min(_LOG_FLOOR)
            log_1mx = torch.log1p(-x).clamp_min(_LOG_FLOOR)
            grad_y = grad * (log_1mx - log_x)
        return grad_x, grad_y


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    label_smoothing: float = 0.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Binary cross-entropy on probabilities (after a sigmoid).

    .. math::
        \ell_i = -w_i \left[ y_i \max(\log x_i, -100) + (1 - y_i) \max(\log(1 - x_i), -100) \right]

    The logs are clamped at -100 exactly like torch, so a saturated sigmoid gives a large finite
    loss instead of inf. For logits, use :func:`binary_cross_entropy_with_logits`: it needs no
    clamp and is exact everywhere.

    Args:
        input: probabilities ``x`` in [0, 1], any shape.
        target: ``y`` in [0, 1], the input's shape.
        weight: optional rescaling weight, broadcastable to the target.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        label_smoothing: keyword-only, in [0, 1]: targets become ``y (1 - eps) + eps / 2``.
        mask, normalizer: keyword-only; see :func:`losskit.functional.mse_loss`.
        validate: keyword-only; ``False`` skips the [0, 1] value checks (one min/max pass).

    Shape:
        Input ``(*)``; target ``(*)``, same shape; output scalar, or ``(*)`` with ``'none'``.

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.binary_cross_entropy(torch.tensor([0.5]), torch.tensor([1.0]))
        tensor(0.6931)
    """
    reduction = resolve(reduction, size_average, reduce)
    label_smoothing = _check(
        input, target, weight, reduction, label_smoothing, mask, normalizer, validate
    )
    if validate:
        V.check_unit_interval(
            "input",
            keep(input, mask),
            what="probabilities (apply a sigmoid first, or use binary_cross_entropy_with_logits)",
        )
    V.require_same_dtype("target", target, "input", input)
    if _plain(
        input, target, weight, label_smoothing=label_smoothing, mask=mask, normalizer=normalizer
    ):
        return _torch.binary_cross_entropy(input, target, weight, reduction)
    dtype = compute_dtype(input, target)
    y = _smooth_labels(keep(target.to(dtype), mask), label_smoothing)
    loss = _BinaryCrossEntropy.apply(keep(input.to(dtype), mask), y)
    if weight is not None:
        loss = loss * weight.to(dtype)
    return reduce_loss(loss, reduction, mask=mask, normalizer=normalizer).to(input.dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Binary cross-entropy on logits, computed stably through ``logsigmoid``.

    .. math::
        \ell_i = -w_i \left[ p_c\, y_i \log \sigma(x_i) + (1 - y_i) \log(1 - \sigma(x_i)) \right]

    with ``p_c`` the ``pos_weight`` of the element's class (the last dimension).

    Args:
        input: logits ``x``, any shape.
        target: ``y`` in [0, 1], the input's shape.
        weight, size_average, reduce, reduction: as :func:`binary_cross_entropy`.
        pos_weight: weight of positive examples, broadcastable to the target (usually ``(C,)``).
        label_smoothing, mask, normalizer: keyword-only; as :func:`binary_cross_entropy`.
        validate: keyword-only; ``False`` skips the [0, 1] target check.

    Shape:
        As :func:`binary_cross_entropy`.

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.binary_cross_entropy_with_logits(torch.tensor([0.0]), torch.tensor([1.0]))
        tensor(0.6931)
    """
    reduction = resolve(reduction, size_average, reduce)
    label_smoothing = _check(
        input, target, weight, reduction, label_smoothing, mask, normalizer, validate
    )
    V.check_elementwise_weight("pos_weight", pos_weight, input, exact=False)
    if _plain(
        input, target, weight, pos_weight,
        label_smoothing=label_smoothing, mask=mask, normalizer=normalizer,
    ):  # fmt: skip
        return _torch.binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)
    tensors = [t for t in (input, target, weight, pos_weight) if t is not None]
    dtype = compute_dtype(*tensors)
    x = keep(input.to(dtype), mask)
    y = _smooth_labels(keep(target.to(dtype), mask), label_smoothing)
    log_sig = torch.nn.functional.logsigmoid(x)
    if pos_weight is not None:
        log_weight = (pos_weight.to(dtype) - 1) * y + 1
        loss = (1 - y) * x - log_weight * log_sig
    else:
        loss = (1 - y) * x - log_sig
    if weight is not None:
        loss = loss * weight.to(dtype)
    out = reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)
    return out.to(result_dtype(*tensors))
