"""Embedding losses: cosine embedding and triplet margin (with torch's or your own distance).

Per-sample losses of embeddings ``(N, D)`` (or one unbatched ``(D,)``). Each keeps torch's
signature and defaults; ``mask`` (one flag per sample), ``normalizer`` and, for the cosine loss,
``validate`` are keyword-only. Without ``mask`` and ``normalizer`` a call is, once checked, one
call of torch's own function: torch's numbers bit for bit.

torch broadcasts embeddings of different shapes silently (an anchor of shape ``(1, D)`` against
``(N, D)`` positives); losskit refuses them, as it refuses cosine labels other than 1 / -1 and a
``distance_function`` that does not return one distance per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from .._reduction import resolve
from .._validate import margin as M
from ._common import finish, keep
from .margin import ENUM, fill, rows

__all__ = ["cosine_embedding_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss"]

Distance = Callable[[Tensor, Tensor], Tensor]

_TRIPLET = ("anchor", "positive", "negative")


def _alike(tensors: tuple[Tensor, ...]) -> bool:
    """The common case of three embeddings: real tensors of one shape and device, at least 1-D."""
    a, b, c = tensors
    return (
        isinstance(a, Tensor)
        and isinstance(b, Tensor)
        and isinstance(c, Tensor)
        and a.dtype in M.NUMERIC
        and b.dtype in M.NUMERIC
        and c.dtype in M.NUMERIC
        and a.dim() > 0
        and a.shape == b.shape == c.shape
        and a.device == b.device == c.device
    )


def _check_embeddings(names: tuple[str, ...], tensors: tuple[Tensor, ...], *, numeric: bool):
    """Tensors of one shape and device, at least 1-D (``numeric``: real and not bool, as torch's
    distances need)."""
    first = tensors[0]
    if numeric:
        for name, tensor in zip(names, tensors, strict=True):
            M.require_numeric(name, tensor)
    else:
        V.require_tensor(names[0], first)
    if first.dim() == 0:
        raise V.LossValueError(
            f"{names[0]} must hold embeddings of shape (N, D) or (D,), got a 0-dim tensor"
        )
    M.require_paired(names[0], first, **dict(zip(names[1:], tensors[1:], strict=True)))


def _check_cosine(input1: Tensor, input2: Tensor, target: Tensor) -> None:
    _check_embeddings(("input1", "input2"), (input1, input2), numeric=True)
    if input1.dim() > 2:
        raise V.LossValueError(
            f"input1 must hold embeddings of shape (N, D) or (D,), got shape "
            f"{V.shape_str(input1.shape)}; to treat every position as a pair, flatten the "
            "leading dims: input1.flatten(0, -2) (and the same for input2 and target.flatten())"
        )
    M.require_sign_dtype("target", target)
    V.require_same_device("target", target, "input1", input1)
    shape = input1.shape[:-1]
    if target.shape != shape:
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)}, but input1 and input2 of shape "
            f"{V.shape_str(input1.shape)} need one label per pair, shape {V.shape_str(shape)}"
        )


def cosine_embedding_loss(
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
    r"""Cosine embedding loss: pairs labelled 1 should point the same way, pairs labelled -1 not.

    .. math::
        \ell_n = \begin{cases} 1 - \cos(x^{(1)}_n, x^{(2)}_n) & y_n = 1 \\
                 \max(0, \cos(x^{(1)}_n, x^{(2)}_n) - \Delta) & y_n = -1 \end{cases}

    Args:
        input1, input2: embeddings, ``(N, D)`` or unbatched ``(D,)``, of one shape.
        target: ``y``: 1 or -1 per pair, ``(N,)`` or ``()``. torch gives any other value a loss
            of 0 silently; losskit refuses it (``validate``).
        margin: ``Delta``, usually in [0, 0.5]. Default 0.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to ``(N,)``, one flag per pair; False pairs
            contribute 0 and leave the ``'mean'`` count (their labels are not checked).
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.
        validate: keyword-only; ``False`` skips the check that every label is 1 or -1 (one
            min/max pass).

    Shape:
        Input1, input2 ``(N, D)`` or ``(D,)``; target ``(N,)`` or ``()``; output scalar, or
        ``(N,)`` / ``()`` with ``'none'``.

    Returns:
        The loss, in torch's dtype.

    Example:
        >>> import torch
        >>> from losskit.functional import embedding as LF
        >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
        >>> LF.cosine_embedding_loss(a, b, torch.tensor([1, -1]), reduction="none")
        tensor([1.0000, 0.7071])
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
        and input1.dim() == 2
        and input1.shape == input2.shape
        and target.shape == input1.shape[:1]
        and input1.device == input2.device == target.device
    ):  # one condition for the common (batched) case; the checks below name what is wrong
        _check_cosine(input1, input2, target)
    shape = target.shape
    if mask is not None:
        M.check_sample_mask(mask, shape)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if validate:
        M.check_signs("target", fill(target, mask, 1), loss="cosine_embedding_loss")
    if mask is None and normalizer is None:
        return torch.cosine_embedding_loss(input1, input2, target, margin, ENUM[reduction])
    if mask is not None:
        kept = rows(mask, shape, input1)
        input1, input2, target = keep(input1, kept), keep(input2, kept), fill(target, mask, 1)
    loss = torch.cosine_embedding_loss(input1, input2, target, margin, 0)
    return finish(loss, reduction, mask, normalizer)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-06,
    swap: bool = False,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Triplet margin loss: the anchor should be closer to the positive than to the negative by
    ``margin``, in the p-norm distance.

    .. math::
        \ell_n = \max(0, d(a_n, p_n) - d(a_n, n_n) + \Delta), \qquad
        d(x, y) = \lVert x - y + \epsilon \rVert_p

    With ``swap=True``, ``d(a_n, n_n)`` becomes ``min(d(a_n, n_n), d(p_n, n_n))``.

    Args:
        anchor, positive, negative: embeddings of one shape, ``(N, D)`` or unbatched ``(D,)``
            (more leading dims are batch dims, as in torch; the distance is over the last).
        margin: ``Delta`` > 0 (torch raises for <= 0 too). Default 1.0.
        p: the norm's degree, > 0 (torch computes p <= 0 silently). Default 2.
        eps: ``epsilon``, added to the differences. Default 1e-6.
        swap: use the distance swap of Balntas et al. Default False.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to ``anchor.shape[:-1]``, one flag per
            triplet; False triplets contribute 0 and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.

    Shape:
        Anchor, positive, negative ``(N, D)`` or ``(D,)``; output scalar, or ``(N,)`` / ``()``
        with ``'none'``.

    Returns:
        The loss, in torch's dtype.

    Example:
        >>> import torch
        >>> from losskit.functional import embedding as LF
        >>> a, p, n = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])
        >>> LF.triplet_margin_loss(a, p, n, margin=6.0, eps=0.0)
        tensor(1.)
    """
    reduction = resolve(reduction, size_average, reduce)
    margin = M.check_positive("margin", margin)
    p = M.check_positive("p", p)
    eps = M.check_number("eps", eps)
    tensors = (anchor, positive, negative)
    if not _alike(tensors):
        _check_embeddings(_TRIPLET, tensors, numeric=True)
    if mask is not None:
        M.check_sample_mask(mask, anchor.shape[:-1])
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if mask is None and normalizer is None:
        return torch.triplet_margin_loss(
            anchor, positive, negative, margin, p, eps, swap, ENUM[reduction]
        )
    if mask is not None:
        kept = rows(mask, anchor.shape[:-1], anchor)
        anchor, positive, negative = keep(anchor, kept), keep(positive, kept), keep(negative, kept)
    loss = torch.triplet_margin_loss(anchor, positive, negative, margin, p, eps, swap, 0)
    return finish(loss, reduction, mask, normalizer)


def _checked(distance_function: Distance, shape: torch.Size, anchor: Tensor) -> Distance:
    """``distance_function``, checking that each call returns one distance per sample."""

    def distance(x1: Tensor, x2: Tensor) -> Tensor:
        d = distance_function(x1, x2)
        M.check_distance(d, shape, anchor)
        return d

    return distance


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function: Distance | None = None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Triplet margin loss with any distance.

    .. math:: \ell_n = \max(0, d(a_n, p_n) - d(a_n, n_n) + \Delta)

    With ``swap=True``, ``d(a_n, n_n)`` becomes ``min(d(a_n, n_n), d(p_n, n_n))``.

    Args:
        anchor, positive, negative: inputs of one shape: ``(N, *)`` (or unbatched ``(D,)``) for
            a ``distance_function``; ``(N, D)`` or ``(D,)`` for the default distance.
        distance_function: ``d``, a callable of two tensors that returns one non-negative
            distance per sample, shape ``(N,)`` (``()`` for unbatched inputs); checked at every
            call. Default ``torch.pairwise_distance`` (over the last dim).
        margin: ``Delta`` > 0 (torch raises for <= 0 too). Default 1.0.
        swap: use the distance swap of Balntas et al. Default False.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to the per-sample loss, one flag per
            triplet; False triplets contribute 0 and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count.

    Shape:
        Anchor, positive, negative ``(N, *)`` or ``(D,)``; output scalar, or ``(N,)`` / ``()``
        with ``'none'`` (``anchor.shape[:-1]`` for the default distance).

    Returns:
        The loss, in the distances' dtype.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from losskit.functional import embedding as LF
        >>> a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
        >>> n = torch.tensor([[0.0, 1.0]])
        >>> cosine = lambda x, y: 1.0 - F.cosine_similarity(x, y)
        >>> LF.triplet_margin_with_distance_loss(a, p, n, distance_function=cosine, margin=0.5)
        tensor(0.)
    """
    reduction = resolve(reduction)
    M.check_distance_function(distance_function)
    margin = M.check_positive("margin", margin)
    tensors = (anchor, positive, negative)
    if distance_function is None:  # torch.pairwise_distance, over the last dim
        if not _alike(tensors):
            _check_embeddings(_TRIPLET, tensors, numeric=True)
        shape = anchor.shape[:-1]
    else:
        _check_embeddings(_TRIPLET, tensors, numeric=False)
        shape = anchor.shape[:1] if anchor.dim() >= 2 else torch.Size([])
        distance_function = _checked(distance_function, shape, anchor)
    if mask is not None:
        M.check_sample_mask(mask, shape)
    if normalizer is not None:
        V.check_normalizer(normalizer, reduction)
    if mask is not None:
        kept = rows(mask, shape, anchor)
        anchor, positive, negative = keep(anchor, kept), keep(positive, kept), keep(negative, kept)
    elif normalizer is None:
        return F.triplet_margin_with_distance_loss(
            anchor, positive, negative, distance_function=distance_function, margin=margin,
            swap=swap, reduction=reduction,
        )  # fmt: skip
    loss = F.triplet_margin_with_distance_loss(
        anchor, positive, negative, distance_function=distance_function, margin=margin,
        swap=swap, reduction="none",
    )  # fmt: skip
    return finish(loss, reduction, mask, normalizer)
