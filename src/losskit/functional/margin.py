"""Margin losses: hinge embedding, soft margin, multi-class and multi-label margins, ranking.

Each keeps torch's signature and defaults; ``mask``, ``normalizer`` and ``validate`` are
keyword-only. A call without ``mask`` or ``normalizer`` is, once the checks have passed, one call
of torch's own kernel: torch's numbers bit for bit. With them, torch's ``reduction='none'`` loss
of the inputs zeroed at masked positions is reduced by :func:`losskit._reduction.reduce`.

The checks refuse what torch computes silently or fails on cryptically: labels other than 1 / -1
(``validate=True``, one min/max pass), class indices out of range, targets of another shape than
the input (torch broadcasts them), and integer scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from .._reduction import resolve
from .._validate import margin as M
from ._common import finish, keep

__all__ = [
    "hinge_embedding_loss",
    "margin_ranking_loss",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "soft_margin_loss",
]

#: torch's reduction enum, which its kernels take
ENUM = {"none": 0, "mean": 1, "sum": 2}
_nn = torch._C._nn


# --------------------------------------------------------------------------------------------
# shared by the margin and embedding losses
# --------------------------------------------------------------------------------------------


def rows(mask: Tensor, shape: torch.Size, like: Tensor) -> Tensor:
    """A per-sample ``mask`` (broadcastable to ``shape``) as a mask of ``like``, whose leading
    dims are ``shape``: the mask expanded, then trailing dims of size 1."""
    return mask.expand(shape).reshape(*shape, *(1,) * (like.dim() - len(shape)))


def fill(tensor: Tensor, mask: Tensor | None, value: int) -> Tensor:
    """``tensor`` with ``value`` where ``mask`` is False: a label or index that passes the value
    checks and the kernels, whatever the padding held."""
    if mask is None:
        return tensor
    return torch.where(mask, tensor, value)


def _check_signed(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    reduction: str,
    validate: bool,
    loss: str,
) -> None:
    """An elementwise loss of scores and 1 / -1 labels of the same shape."""
    if not (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and input.dtype in M.FLOATING
        and target.dtype in M.NUMERIC
        and input.shape == target.shape
        and input.device == target.device
    ):  # one condition for the common case; the checks below name what is wrong
        M.require_scores("input", input, what="scores")
        M.require_sign_dtype("target", target)
        M.require_paired("input", input, target=target)
    if mask is not None:
        V.check_mask(mask, input.shape)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if validate:  # positions left out by the mask may hold anything
        M.check_signs("target", fill(target, mask, 1), loss=loss)


def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Hinge embedding loss: the input is a distance, small for similar pairs.

    .. math::
        \ell_i = \begin{cases} x_i & y_i = 1 \\ \max(0, \Delta - x_i) & y_i = -1 \end{cases}

    Args:
        input: ``x`` (usually a distance such as ``(a - b).norm(dim=1)``), any shape.
        target: ``y``: 1 (similar) or -1 (dissimilar), the input's shape. torch treats any other
            value as both at once; losskit refuses it (``validate``).
        margin: ``Delta``. Default 1.0.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to the input; False positions contribute 0
            and leave the ``'mean'`` count (their labels are not checked).
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.
        validate: keyword-only; ``False`` skips the check that every label is 1 or -1 (one
            min/max pass).

    Shape:
        Input ``(*)``; target ``(*)``, same shape; output scalar, or ``(*)`` with ``'none'``.

    Returns:
        The loss, in torch's dtype.

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> x, y = torch.tensor([0.3, 0.4]), torch.tensor([1, -1])
        >>> LF.hinge_embedding_loss(x, y, reduction="none")
        tensor([0.3000, 0.6000])
    """
    reduction = resolve(reduction, size_average, reduce)
    margin = M.check_number("margin", margin)
    _check_signed(input, target, mask, normalizer, reduction, validate, "hinge_embedding_loss")
    if mask is None and normalizer is None:
        return torch.hinge_embedding_loss(input, target, margin, ENUM[reduction])
    loss = torch.hinge_embedding_loss(keep(input, mask), fill(target, mask, 1), margin, 0)
    return finish(loss, reduction, mask, normalizer)


def soft_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Soft margin loss: two-class logistic loss on 1 / -1 labels.

    .. math:: \ell_i = \log(1 + e^{-y_i x_i})

    Args and Shape: as :func:`hinge_embedding_loss`, without ``margin``; ``target`` holds 1 or
    -1 (torch computes any other value silently; ``validate`` refuses it).

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> x, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
        >>> LF.soft_margin_loss(x, y, reduction="sum")
        tensor(2.8201)
    """
    reduction = resolve(reduction, size_average, reduce)
    _check_signed(input, target, mask, normalizer, reduction, validate, "soft_margin_loss")
    if mask is None and normalizer is None:
        return _nn.soft_margin_loss(input, target, ENUM[reduction])
    loss = _nn.soft_margin_loss(keep(input, mask), fill(target, mask, 1), 0)
    return finish(loss, reduction, mask, normalizer)


def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Margin ranking loss: ``input1`` should rank above ``input2`` where ``target`` is 1, below
    where it is -1.

    .. math:: \ell_i = \max(0, -y_i (x^{(1)}_i - x^{(2)}_i) + \Delta)

    Args:
        input1, input2: the two scores ``x1``, ``x2``, of one shape (torch broadcasts other
            shapes silently; losskit refuses them).
        target: ``y``: 1 or -1, the inputs' shape.
        margin: ``Delta``. Default 0.
        size_average, reduce, reduction, mask, normalizer, validate: as
            :func:`hinge_embedding_loss` (the mask is per element of the inputs).

    Shape:
        Input1, input2, target ``(N)`` or ``()`` (any shape, the same for the three); output
        scalar, or their shape with ``'none'``.

    Returns:
        The loss, in torch's dtype.

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> LF.margin_ranking_loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]),
        ...                        torch.tensor([1.0, 1.0]), margin=0.5, reduction="none")
        tensor([0., 1.])
    """
    reduction = resolve(reduction, size_average, reduce)
    margin = M.check_number("margin", margin)
    if not (
        isinstance(input1, Tensor)
        and isinstance(input2, Tensor)
        and isinstance(target, Tensor)
        and input1.dtype in M.NUMERIC
        and input2.dtype in M.NUMERIC
        and target.dtype in M.NUMERIC
        and input1.shape == input2.shape == target.shape
        and input1.device == input2.device == target.device
    ):  # one condition for the common case; the checks below name what is wrong
        M.require_numeric("input1", input1)
        M.require_numeric("input2", input2)
        M.require_sign_dtype("target", target)
        M.require_paired("input1", input1, input2=input2, target=target)
    if mask is not None:
        V.check_mask(mask, input1.shape, what="the inputs")
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if validate:
        M.check_signs("target", fill(target, mask, 1), loss="margin_ranking_loss")
    if mask is None and normalizer is None:
        return torch.margin_ranking_loss(input1, input2, target, margin, ENUM[reduction])
    x1, x2, y = keep(input1, mask), keep(input2, mask), fill(target, mask, 1)
    return finish(torch.margin_ranking_loss(x1, x2, y, margin, 0), reduction, mask, normalizer)


# --------------------------------------------------------------------------------------------
# multi-class and multi-label margins
# --------------------------------------------------------------------------------------------


#: the dtypes of the multi-class / multi-label margin kernels on every device (torch's CPU
#: kernels lack half types, which are computed in float32)
_KERNEL_DTYPES = frozenset((torch.float32, torch.float64))


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Multi-class hinge loss: the target's score should beat every other by ``margin``.

    .. math::
        \ell_n = \frac{1}{C} \sum_{j \ne y_n} w_{y_n} \max(0, \Delta - x_{n,y_n} + x_{n,j})^p

    Args:
        input: class scores ``x``, ``(N, C)`` or unbatched ``(C,)``.
        target: class indices ``y`` in [0, C) (any integer dtype), ``(N,)`` or ``()``.
        p: 1 or 2 (the squared hinge). Default 1.
        margin: ``Delta``. Default 1.0.
        weight: optional ``(C,)`` class weights (a floating dtype; cast to the input's).
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``; ``'mean'`` divides by ``N``.
        mask: keyword-only bool tensor broadcastable to ``(N,)``, one flag per sample; False
            samples contribute 0 and leave the ``'mean'`` count (their indices are not checked).
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.
        validate: keyword-only; ``False`` skips the index range check (one min/max pass).

    Shape:
        Input ``(N, C)`` or ``(C,)``; target ``(N,)`` or ``()``; output scalar, or the target's
        shape with ``'none'``.

    Returns:
        The loss, in the input's dtype. Half types are computed in float32 and rounded once
        (torch's CPU kernel has none), and an empty batch's ``'mean'`` is NaN and ``'sum'`` 0
        (torch's CPU kernel returns an uninitialized number).

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> LF.multi_margin_loss(torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3]))
        tensor(0.3250)
    """
    reduction = resolve(reduction, size_average, reduce)
    p = M.check_margin_p(p)
    margin = M.check_number("margin", margin)
    try:  # the common case in one condition (a non-tensor fails at .dtype)
        scores, shape = input.shape, target.shape
        common = (
            input.dtype in M.FLOATING
            and target.dtype in M.INTEGER
            and len(scores) == 2
            and len(shape) == 1
            and scores[1]
            and shape[0] == scores[0]
            and input.device == target.device
        )
    except AttributeError:
        common = False
    if not common:
        shape = M.check_multi_margin_call(input, target)
        scores = input.shape
    num_classes = scores[-1]
    if weight is not None:
        V.check_class_weight(weight, num_classes, input)
    if mask is not None:
        M.check_sample_mask(mask, shape)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if validate:  # before the kernel: on CUDA a bad index is a device-side assert
        M.check_index_range(fill(target, mask, 0), num_classes, class_dim=input.dim() - 1)
    if target.dtype is not torch.int64:
        target = target.long()
    x = input if input.dtype in _KERNEL_DTYPES else input.float()
    if weight is not None and weight.dtype is not x.dtype:
        weight = weight.to(x.dtype)
    if mask is None and normalizer is None and x is input and scores[0]:  # not empty
        return _nn.multi_margin_loss(input, target, p, margin, weight, ENUM[reduction])
    if mask is not None:
        x, target = keep(x, rows(mask, shape, x)), fill(target, mask, 0)
    loss = _nn.multi_margin_loss(x, target, p, margin, weight, 0)
    return finish(loss, reduction, mask, normalizer, input.dtype)


def multilabel_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Multi-label hinge loss: every target class should beat every other class by 1.

    .. math::
        \ell_n = \frac{1}{C} \sum_{j \in Y_n} \sum_{i \notin Y_n} \max(0, 1 - (x_{n,j} - x_{n,i}))

    Args:
        input: class scores ``x``, ``(N, C)`` or unbatched ``(C,)``.
        target: the input's shape, integer: each row lists its classes ``Y_n`` and ends at the
            first -1 (``[3, 0, -1, 1]`` is the set {3, 0}). Every value must be in [-1, C), as
            torch requires (after the -1 too).
        size_average, reduce, reduction: as :func:`multi_margin_loss`.
        mask, normalizer, validate: as :func:`multi_margin_loss` (a masked row counts as empty).

    Shape:
        Input ``(N, C)`` or ``(C,)``; target the same; output scalar, or ``(N,)`` / ``()``
        with ``'none'``.

    Returns:
        The loss, in the input's dtype (half types and empty batches as
        :func:`multi_margin_loss`).

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> LF.multilabel_margin_loss(torch.tensor([[0.1, 0.2, 0.4, 0.8]]),
        ...                           torch.tensor([[3, 0, -1, 1]]))
        tensor(0.8500)
    """
    reduction = resolve(reduction, size_average, reduce)
    try:  # the common case in one condition (a non-tensor fails at .dtype)
        scores = input.shape
        common = (
            input.dtype in M.FLOATING
            and target.dtype in M.INTEGER
            and 1 <= len(scores) <= 2
            and scores[-1]
            and target.shape == scores
            and input.device == target.device
        )
    except AttributeError:
        common = False
    if not common:
        M.check_multilabel_call(input, target)
    shape, num_classes = scores[:-1], scores[-1]
    if mask is not None:
        M.check_sample_mask(mask, shape)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    kept = None if mask is None else rows(mask, shape, input)
    if validate:  # before the kernel: on CUDA a bad index is a device-side assert
        M.check_label_lists(fill(target, kept, -1), num_classes)
    if target.dtype is not torch.int64:
        target = target.long()
    x = input if input.dtype in _KERNEL_DTYPES else input.float()
    if mask is None and normalizer is None and x is input and scores[0]:  # not empty
        return _nn.multilabel_margin_loss(input, target, ENUM[reduction])
    if kept is not None:
        x, target = keep(x, kept), fill(target, kept, -1)
    loss = _nn.multilabel_margin_loss(x, target, 0)
    return finish(loss, reduction, mask, normalizer, input.dtype)


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Multi-label one-versus-all logistic loss, averaged over the classes.

    .. math::
        \ell_n = -\frac{1}{C} \sum_c w_c \left[ y_{n,c} \log \sigma(x_{n,c})
                 + (1 - y_{n,c}) \log \sigma(-x_{n,c}) \right]

    Args:
        input: logits ``x``, ``(N, C)`` (any leading dims; the classes are the last dim) or
            unbatched ``(C,)``.
        target: ``y`` in [0, 1] (0/1 labels or probabilities), the input's shape; a bool or
            integer target is promoted.
        weight: optional weight broadcastable to the input (usually ``(C,)``, one per class).
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``; ``'mean'`` averages the samples.
        mask: keyword-only bool tensor broadcastable to the per-sample loss ``input.shape[:-1]``;
            False samples contribute 0 and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.
        validate: keyword-only; ``False`` skips the [0, 1] target check (one min/max pass).

    Shape:
        Input ``(N, C)`` or ``(C,)``; target the same; output scalar, or ``(N,)`` / ``()``
        with ``'none'``.

    Returns:
        The loss, in torch's dtype.

    Example:
        >>> import torch
        >>> from losskit.functional import margin as LF
        >>> LF.multilabel_soft_margin_loss(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]]))
        tensor(0.6931)
    """
    reduction = resolve(reduction, size_average, reduce)
    if not (
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and input.dtype in M.FLOATING
        and target.dtype in M.NUMERIC
        and input.dim()
        and input.shape[-1]
        and input.shape == target.shape
        and input.device == target.device
    ):  # one condition for the common case; the checks below name what is wrong
        M.check_class_scores(input, any_batch_dims=True)
        V.require_real("target", target)
        M.require_paired("input", input, target=target)
    if weight is not None:
        V.require_real("weight", weight)
        V.require_same_device("weight", weight, "input", input)
        V.require_broadcastable_to("weight", weight, input.shape, "the input")
    kept = None
    if mask is not None:
        shape = input.shape[:-1]
        M.check_sample_mask(mask, shape)
        kept = rows(mask, shape, input)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if validate and target.dtype != torch.bool:  # a bool target is in [0, 1]
        M.check_unit_range("target", keep(target, kept), what="labels or probabilities")
    if target.dtype == torch.bool:  # torch cannot take 1 - target of a bool tensor
        target = target.to(input.dtype)
    if mask is None and normalizer is None:
        return F.multilabel_soft_margin_loss(input, target, weight, reduction=reduction)
    if kept is not None:
        input, target = keep(input, kept), keep(target, kept)
    loss = F.multilabel_soft_margin_loss(input, target, weight, reduction="none")
    return finish(loss, reduction, mask, normalizer)
