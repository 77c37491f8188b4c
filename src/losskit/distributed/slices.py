"""The math of a vocabulary slice: its row statistics, their combination over the group, and
the slice's gradient.

Each rank holds the logits of classes ``[start, start + V_local)`` for the same rows. The forward
is an online softmax over the ranks (:func:`partials` on each slice, then :func:`combine`: one
``all_reduce(MAX)`` and one ``all_reduce(SUM)``); the row loss and the gradient are those of
:mod:`losskit.kernels.rows`, the one home of both formulas, with the group-wide log-sum-exp. The
gradient needs no communication: each rank's is its slice of the single-device gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V
from ..kernels.rows import (
    Smoothing,
    gradient_,
    gradient_coefficients,
    local_target,
)

__all__ = ["Spec", "capped", "combine", "partials", "refuse_create_graph", "slice_gradient"]


@dataclass(frozen=True)
class Spec:
    """Everything the forward and backward share besides tensors."""

    start: int  #: the first class of this rank's slice
    k: Smoothing  #: label smoothing, V (the whole vocabulary), the weights' sum, z-loss
    softcap: float | None
    group: dist.ProcessGroup | None


def capped(z: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """``s * tanh(z / s)`` and the ``tanh`` (for the chain rule), or ``z`` and None."""
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def partials(z: Tensor, y: Tensor, w_local: Tensor | None, spec: Spec) -> Tensor:
    """Step 1 of the online softmax on a (rows, V_local) slice: (4, rows) local statistics.

    Rows: local max, sum of exp(z - local max), target logit (0 unless this slice holds the
    target), the weighted logit sum for label smoothing (0 without it).
    """
    rows, size = z.shape
    out = z.new_zeros(4, rows)
    if size == 0:
        out[0] = -math.inf
        return out
    m = z.amax(1)
    out[0] = m
    # a row whose slice is all -inf (e.g. padded classes) has sum 0 here, not exp(-inf + inf)
    finite_m = torch.where(m == -math.inf, torch.zeros_like(m), m)
    out[1] = torch.exp(z - finite_m.unsqueeze(1)).sum(1)
    col, inside = local_target(y, spec.start, size)
    out[2] = torch.where(inside, z.gather(1, col.unsqueeze(1)).squeeze(1), 0.0)
    if spec.k.eps > 0.0:
        out[3] = (z * w_local).sum(1) if w_local is not None else z.sum(1)
    return out


def combine(local: Tensor, spec: Spec) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 2-3: the group-wide max, then one SUM of the rescaled partials.

    Returns (lse, target logit, weighted logit sum), each (rows,).
    """
    m_local = local[0]
    if local.shape[1] == 0:
        return m_local, local[2], local[3]
    smoothing = spec.k.eps > 0.0
    m = m_local.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=spec.group)
    # rescale to the group-wide max; exp(-inf - m) = 0 for an empty slice (V >= 1 somewhere)
    sums = local[1 : 4 if smoothing else 3].clone()
    sums[0] *= torch.exp(m_local - m)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=spec.group)
    zsum = sums[2] if smoothing else local[3]
    return m + torch.log(sums[0]), sums[1], zsum


def slice_gradient(
    z: Tensor,
    tanh: Tensor | None,
    g: Tensor,
    y: Tensor,
    lse: Tensor,
    w_y: Tensor,
    w_local: Tensor | None,
    spec: Spec,
) -> Tensor:
    """d(sum_i g_i loss_i)/d(logit slice) for a (rows, V_local) slice: no communication.

    :func:`losskit.kernels.rows.gradient_` with ``r = g`` (each row's factor in the reduced
    loss, as autograd hands it), ``p = exp(z' - lse)`` over the whole vocabulary and the
    target's column in this slice; ``tanh`` (under a softcap) is overwritten.
    """
    grad = torch.exp(z - lse.unsqueeze(1))
    size = z.shape[1]
    if size == 0:
        return grad
    col, inside = local_target(y, spec.start, size)
    coef = gradient_coefficients(g, w_y, spec.k, lse)
    coef = coef.within(inside)
    return gradient_(grad, coef.ra, coef, col, weight=w_local, tanh=tanh)


def refuse_create_graph(op: str) -> None:
    """A backward under ``create_graph=True`` (grad mode on) raises instead of a wrong answer.

    The slice gradient treats the group-wide log-sum-exp as a constant (it came through
    collectives that autograd does not see), so a graph recorded from it would give a wrong
    second derivative.
    """
    if torch.is_grad_enabled():
        raise V.LossValueError(
            f"create_graph=True through {op}: higher-order gradients of the vocabulary-parallel "
            "losses are not supported (their backward uses collectives autograd does not "
            "record); all-gather the logits and use losskit.functional.cross_entropy(..., "
            "impl='reference') to differentiate twice"
        )
