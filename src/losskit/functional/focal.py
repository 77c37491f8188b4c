"""Focal losses: cross-entropy that down-weights the examples a model already gets right.

- :func:`sigmoid_focal_loss`: the binary (per-element, sigmoid) form of RetinaNet, with the
  signature, defaults and numbers of ``torchvision.ops.sigmoid_focal_loss``.
- :func:`focal_loss`: the multi-class (softmax) form, with class-index or probability targets
  and the options of :func:`losskit.functional.cross_entropy` (``weight``, ``ignore_index``).

With ``gamma = 0`` both are exactly the cross-entropy they modulate (and the gradient too).

The modulating factor ``(1 - p)^gamma`` is computed from the complementary probability directly
(``sigmoid(-x)``, ``-expm1(log p)``), never as ``1 - p``: that keeps it accurate where ``p`` is
close to 1, and its gradient finite (never NaN) where it is exactly 0, for any ``gamma >= 0``.

Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017
(https://arxiv.org/abs/1708.02002).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as V
from .._reduction import reduce as reduce_loss
from .._reduction import resolve
from ._common import compute_dtype, flatten_classes, keep, result_dtype
from .categorical import class_rows

__all__ = ["focal_loss", "sigmoid_focal_loss"]


def _modulate(one_minus_p: Tensor, gamma: float) -> Tensor:
    """``(1 - p)^gamma`` with a finite gradient where ``1 - p`` is exactly 0.

    ``x^gamma`` has an infinite derivative at 0 for ``gamma < 1``; the double ``where`` keeps the
    value (0, or 1 for ``gamma = 0``) and gives those positions a zero gradient instead of NaN.
    """
    if gamma == 0.0:
        return torch.ones_like(one_minus_p)
    zero = one_minus_p == 0
    safe = torch.where(zero, torch.ones_like(one_minus_p), one_minus_p)
    return torch.where(zero, torch.zeros_like(one_minus_p), safe.pow(gamma))


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
    *,
    label_smoothing: float = 0.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Sigmoid focal loss (RetinaNet), a drop-in for ``torchvision.ops.sigmoid_focal_loss``.

    With :math:`p = \sigma(x)`, :math:`p_t = p\,y + (1 - p)(1 - y)` and
    :math:`\alpha_t = \alpha\,y + (1 - \alpha)(1 - y)`:

    .. math::
        \ell_i = \alpha_t\, (1 - p_t)^\gamma\, \mathrm{BCE}(x_i, y_i), \qquad
        \mathrm{BCE}(x, y) = -[y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))]

    A negative ``alpha`` drops :math:`\alpha_t` (torchvision's ``alpha=-1``). With ``gamma = 0``
    and a negative ``alpha`` this is exactly
    ``binary_cross_entropy_with_logits(inputs, targets, reduction=...)``. Note the default
    ``reduction='none'``, as in torchvision; in RetinaNet the summed loss is divided by the number
    of positive anchors, which is ``reduction='mean', normalizer=num_positives``.

    Args:
        inputs: logits ``x``, any shape.
        targets: ``y`` in [0, 1] (0 negative, 1 positive; soft labels allowed), the inputs' shape.
        alpha: weight of the positives in [0, 1], or negative for no weighting. Default 0.25.
        gamma: focusing exponent ``>= 0``. Default 2.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'none'``.
        label_smoothing: keyword-only, in [0, 1]: targets become ``y (1 - eps) + eps / 2``
            (before ``p_t`` and ``alpha_t`` are formed).
        mask: keyword-only bool tensor broadcastable to the targets; False positions contribute 0
            and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of the
            count (0 gives 0).
        validate: keyword-only; ``False`` skips the [0, 1] target check (one min/max pass).

    Shape:
        - Inputs: ``(*)``. Targets: ``(*)``, same shape.
        - Output: scalar, or ``(*)`` with ``reduction='none'``.

    Returns:
        The loss, in the promoted dtype of inputs and targets.

    Example:
        >>> import torch, losskit.functional as LF
        >>> x, y = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 0.0])
        >>> LF.sigmoid_focal_loss(x, y)
        tensor([2.7321e-05, 1.6994e-02])
        >>> bool(torch.allclose(LF.sigmoid_focal_loss(x, y, alpha=-1, gamma=0),
        ...                     LF.binary_cross_entropy_with_logits(x, y, reduction="none")))
        True
    """
    reduction = resolve(reduction)
    alpha = V.check_alpha(alpha)
    gamma = V.check_float_option("gamma", gamma, low=0.0)
    label_smoothing = V.check_float_option("label_smoothing", label_smoothing, low=0.0, high=1.0)
    V.require_floating("inputs", inputs, what="logits")
    V.require_floating("targets", targets)
    V.require_same_device("targets", targets, "inputs", inputs)
    V.require_same_shape(inputs, targets, input_name="inputs", target_name="targets")
    V.check_mask(mask, targets.shape, what="the targets")
    V.check_normalizer(normalizer, reduction)
    if validate:  # positions left out by the mask may hold anything (missing labels)
        V.check_unit_interval("targets", keep(targets, mask), what="binary labels or probabilities")

    dtype = compute_dtype(inputs, targets)
    # masked positions are zeroed before any math: inf/NaN there reaches no value or gradient
    x = keep(inputs.to(dtype), mask)
    y = keep(targets.to(dtype), mask)
    if label_smoothing > 0.0:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    # the BCE-with-logits term, exactly as binary_cross_entropy_with_logits forms it
    loss = (1 - y) * x - torch.nn.functional.logsigmoid(x)
    if gamma != 0.0:
        # 1 - p_t = y (1 - p) + (1 - y) p, with 1 - p = sigmoid(-x) (no cancellation near p = 1)
        one_minus_pt = y * torch.sigmoid(-x) + (1 - y) * torch.sigmoid(x)
        loss = loss * _modulate(one_minus_pt, gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    out = reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)
    return out.to(result_dtype(inputs, targets))


def focal_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    gamma: float = 2.0,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Softmax focal loss for multi-class logits, with class-index or probability targets.

    With :math:`p = \mathrm{softmax}(x)` over the class dimension and ``w`` the class weights,
    for a class index ``y``:

    .. math:: \ell_n = -w_{y_n}\, (1 - p_{n,y_n})^\gamma \log p_{n,y_n}

    and for probabilities (or one-hot rows) ``t``:

    .. math:: \ell_n = -\sum_c w_c\, t_{n,c}\, (1 - p_{n,c})^\gamma \log p_{n,c}

    ``'mean'`` divides as :func:`~losskit.functional.cross_entropy` does: index targets by the
    sum of the counted targets' weights (their count without weights), probability targets by
    the number of counted positions. With ``gamma = 0`` this is exactly ``cross_entropy``.

    Args:
        input: logits, ``(N, C)``, ``(N, C, d1..dK)`` or unbatched ``(C,)``.
        target: class indices ``(N)`` / ``(N, d1..dK)`` / ``()`` (integers), or probabilities of
            the input's shape.
        weight: optional ``(C,)`` class weights.
        ignore_index: class index that is skipped (index targets only; use ``mask`` for
            probability targets). Default -100.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        gamma: focusing exponent ``>= 0``. Default 2.
        mask: keyword-only bool tensor over the target's positions (no class dimension); False
            positions contribute 0 and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead (0 gives
            0).
        validate: keyword-only; ``False`` skips the value checks (index range, probabilities).

    Shape:
        - Input: ``(C)``, ``(N, C)`` or ``(N, C, d1..dK)``.
        - Target: ``()``, ``(N)`` or ``(N, d1..dK)`` of indices; or the input's shape.
        - Output: scalar; with ``'none'`` the positions' shape ``()``, ``(N)`` or
          ``(N, d1..dK)``.

    Returns:
        The loss, in the input's dtype.

    Example:
        >>> import torch, losskit.functional as LF
        >>> logits, y = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
        >>> LF.focal_loss(logits, y)
        tensor(0.0109)
        >>> bool(torch.allclose(LF.focal_loss(logits, y, gamma=0), LF.cross_entropy(logits, y)))
        True
    """
    opts = V.cross_entropy_options(reduction, ignore_index)
    gamma = V.check_float_option("gamma", gamma, low=0.0)
    probabilities = V.check_classification(
        input, target, weight=weight, ignore_index=opts.ignore_index, validate=validate,
        allow_probabilities=True, mask=mask, normalizer=normalizer, reduction=opts.reduction,
    )  # fmt: skip

    tensors = [input] + ([target] if probabilities else [])
    dtype = compute_dtype(*tensors)
    x, rows = class_rows(
        input, target, probabilities=probabilities, weight=weight, ignore_index=ignore_index,
        reduction=opts.reduction, mask=mask, normalizer=normalizer, dtype=dtype,
    )  # fmt: skip
    logp = torch.log_softmax(x, dim=1)
    if probabilities:
        kept = None if mask is None else rows.counted.unsqueeze(1)
        t = keep(flatten_classes(target).to(dtype), kept)
        tw = t * weight.to(dtype) if weight is not None else t
        if gamma != 0.0:
            tw = tw * _modulate(-torch.expm1(logp), gamma)  # 1 - p = -expm1(log p)
        values = -(tw * logp).sum(1)
    else:
        logp_y = logp.gather(1, rows.y.unsqueeze(1)).squeeze(1)
        values = rows.w_y * -logp_y
        if gamma != 0.0:
            values = values * _modulate(-torch.expm1(logp_y), gamma)
    out = rows.reduce(values, result_dtype(*tensors))
    return out.reshape(V.index_target_shape(input)) if opts.reduction == "none" else out
