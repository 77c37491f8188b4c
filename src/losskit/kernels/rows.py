"""The row statistics of a fused cross-entropy, in torch ops, for every backend that runs them.

A fused path reduces each row of logits ``z`` to a few statistics (with ``z' = s tanh(z / s)``
under a softcap, else ``z``): ``lse = logsumexp(z')``, the target logit ``z'_y`` and, with label
smoothing, ``sum_c w_c z'_c``. From them, with ``w`` the class weights (ones if None),
``W = sum w``, ``eps`` the label smoothing, ``c`` the z-loss coefficient and ``r`` the row's
factor in the reduced loss (:meth:`losskit._reduction.Rows.factor`)::

    loss = (1 - eps) w_y (lse - z'_y) + (eps / V) (W lse - sum_c w_c z'_c) + c lse^2
    g_k  = r (a p_k - (1 - eps) w_y [k == y] - (eps / V) w_k) (1 - tanh^2(z_k / s))
    a    = (1 - eps) w_y + (eps / V) W + 2 c lse,        p = softmax(z')

:func:`row_loss` is the first line and :func:`gradient_` the second, written once here for the
CPU kernels (``kernels/cpu/``), the chunked loop's torch epilogue and the vocabulary-parallel
losses (``losskit.distributed``); the Triton kernels compute the same two lines in
``kernels/triton/common.py``. The tests hold all of them to the reference
(:func:`losskit.functional.cross_entropy` with ``impl='reference'``) in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Smoothing", "gradient_", "gradient_coefficients", "local_target", "row_loss"]


@dataclass(frozen=True)
class Smoothing:
    """The per-call constants of the row formulas: ``eps``, ``V``, ``W = sum w`` and ``c``."""

    eps: float  #: label smoothing
    num_classes: int  #: V, over the whole vocabulary (not a slice or tile of it)
    weight_sum: float | Tensor  #: W: V without class weights
    z_loss: float  #: c

    @classmethod
    def of(cls, eps: float, num_classes: int, weight: Tensor | None, z_loss: float) -> Smoothing:
        w_sum = float(num_classes) if weight is None else weight.sum()
        return cls(float(eps), int(num_classes), w_sum, float(z_loss))


def row_loss(lse: Tensor, z_y: Tensor, swz: Tensor | None, w_y: Tensor, k: Smoothing) -> Tensor:
    """Each row's loss (first line of the module docstring); ``swz`` = ``sum_c w_c z'_c`` (only
    read with label smoothing). Rows that do not count are the caller's to leave out."""
    loss = (1.0 - k.eps) * w_y * (lse - z_y)
    if k.eps > 0.0:
        loss = loss + (k.eps / k.num_classes) * (k.weight_sum * lse - swz)
    if k.z_loss > 0.0:
        loss = loss + k.z_loss * lse * lse
    return loss


@dataclass(frozen=True)
class Coefficients:
    """The per-row factors of :func:`gradient_`, each ``(rows,)``."""

    ra: Tensor  #: r a
    neg_rb: Tensor  #: -r (1 - eps) w_y
    neg_re: Tensor | None  #: -r eps / V (label smoothing only)

    def rows(self, i: int, j: int) -> Coefficients:
        neg_re = None if self.neg_re is None else self.neg_re[i:j]
        return Coefficients(self.ra[i:j], self.neg_rb[i:j], neg_re)

    def within(self, inside: Tensor) -> Coefficients:
        """For a tile or slice of the columns: the target term only in rows whose target falls
        among them (``inside``, from :func:`local_target`)."""
        return Coefficients(self.ra, torch.where(inside, self.neg_rb, 0.0), self.neg_re)


def gradient_coefficients(
    r: Tensor, w_y: Tensor, k: Smoothing, lse: Tensor | None = None
) -> Coefficients:
    """``r a``, ``-r (1 - eps) w_y`` and ``-r eps / V`` per row; ``lse`` is needed (and only
    read) with a z-loss, and must be finite where ``r`` is 0."""
    a = (1.0 - k.eps) * w_y + (k.eps / k.num_classes) * k.weight_sum
    if k.z_loss > 0.0:
        a = a + (2.0 * k.z_loss) * lse
    neg_re = r * (-k.eps / k.num_classes) if k.eps > 0.0 else None
    return Coefficients(r * a, r * ((k.eps - 1.0) * w_y), neg_re)


def local_target(y: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """The target's column within columns ``[start, start + width)`` (0 where outside) and
    whether it is inside: for a tile or a vocabulary slice of the rows."""
    col = y - start
    inside = (col >= 0) & (col < width)
    return torch.where(inside, col, torch.zeros_like(col)), inside


def gradient_(
    e: Tensor,
    scale: Tensor,
    coef: Coefficients,
    y: Tensor,
    *,
    weight: Tensor | None = None,
    tanh: Tensor | None = None,
) -> Tensor:
    """Turn ``e`` into the gradient rows ``g`` (second line of the module docstring), in place.

    Args:
        e: ``(rows, cols)`` float32, ``exp(z' - m)`` per row for any per-row ``m``; the columns
            may be a tile or slice of the vocabulary.
        scale: ``(rows,)`` with ``e * scale = p * a r``: ``ra / sum e`` over the whole row, or
            ``ra`` when ``m = lse``.
        coef: from :func:`gradient_coefficients`, for these rows; ``neg_rb`` must be 0 where the
            target is not among these columns (see :func:`local_target`).
        y: ``(rows,)`` int64 column of the target within these columns.
        weight: the class weights of these columns, or None.
        tanh: ``tanh(z / s)`` of these columns under a softcap (overwritten), or None.

    Returns:
        ``e``, now the gradient.
    """
    alpha = scale.unsqueeze(1)
    if coef.neg_re is not None and weight is None:
        torch.addcmul(coef.neg_re.unsqueeze(1), e, alpha, out=e)
    else:
        e.mul_(alpha)
        if coef.neg_re is not None:
            e.addr_(coef.neg_re, weight)
    e.scatter_add_(1, y.unsqueeze(1), coef.neg_rb.unsqueeze(1))
    if tanh is not None:
        tanh.square_()
        e.addcmul_(e, tanh, value=-1.0)  # times d z'/d z = 1 - tanh^2
    return e
