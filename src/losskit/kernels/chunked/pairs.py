"""The chunked engine of a two-head loss (distillation): a student's and a teacher's logits.

The same chunk loop as the cross-entropy's (``engine.py``), on two :class:`~.engine.Head`\\ s:
per chunk of ``M`` rows,

1. ``z_s = x_s[c] @ W_s.T (+ b_s)`` and ``z_t = x_t[c] @ W_t.T (+ b_t)`` into two reused
   ``(M, V)`` buffers (or the chunk's rows of the teacher's given log-probabilities, read in
   place);
2. the backend's :class:`PairEpilogue` writes the rows' losses and overwrites ``z_s`` (and
   ``z_t`` when the teacher wants a gradient) with ``r * dloss/dz`` (``kernels/divergence.py``);
3. each head's gradient GEMMs (:meth:`~.engine.Head.backprop`): ``dX[c] = g @ W``, ``dW += g.T
   @ x[c]``, ``db += sum g``.

Chunks hold whole rows (:func:`~.plan.plan_pairs`): the divergence's gradient needs each row's
sums over both whole rows. As for the cross-entropy, ``'mean'`` and ``'sum'`` compute every
gradient in the forward and the backward scales them by ``grad_output``; ``'none'`` computes the
losses in the forward and the backward runs the chunks again with the per-row ``grad_output``.
A teacher without gradient costs one GEMM per chunk (its logits).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..._reduction import Rows, count_positions
from ..._validate.distillation import DistillationOptions
from ..recompute import Recompute, hand_over, second_order
from . import engine  # a module: the CPU backend imports this file while engine is loading
from .epilogue import Chunk, PairEpilogue
from .plan import ChunkPlan

__all__ = [
    "LinearDistillationFunction",
    "linear_distillation",
    "pairs_forward",
    "pairs_rows",
    "run_pairs",
]

_F32 = torch.float32


def run_pairs(
    heads: tuple[Tensor | None, ...],
    target: Tensor,
    mask: Tensor | None,
    rows: Rows,
    plan: ChunkPlan,
    epi: PairEpilogue,
    want: tuple[bool, ...],
    row_scale: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """Row losses (float32, unreduced) and the gradients of ``heads`` (see the module docstring).

    ``heads`` is ``(xs, ws, bs, xt, wt, bt, tl)`` (the teacher as hidden states and head, or as
    log-probabilities ``tl``); ``want`` says which of them get a gradient; ``target`` the flat
    ``(N,)`` targets (zeros without labels); ``row_scale`` multiplies each row's gradient.
    """
    xs, ws, bs, xt, wt, bt, tl = heads
    n, v = xs.shape[0], ws.shape[0]
    student = engine.Head(xs, ws, bs, want[0:3], plan)
    teacher = None if xt is None else engine.Head(xt, wt, bt, want[3:6], plan)
    want_tl = tl is not None and want[6]
    grad_t = want_tl or (teacher is not None and teacher.any)
    m_rows = plan.rows
    loss_rows = torch.empty(n, dtype=_F32, device=xs.device)
    dtl = torch.empty_like(tl) if want_tl else None
    buf_s = engine._chunk_buffer(min(m_rows, n) * v, xs.dtype, xs.device)
    buf_t = None
    if teacher is not None or want_tl:
        buf_t = engine._chunk_buffer(min(m_rows, n) * v, xs.dtype, xs.device)
    for i in range(0, n, m_rows):
        j = min(i + m_rows, n)
        c = j - i
        ck = Chunk.of(target, mask, rows, i, j, row_scale)
        zs = buf_s[: c * v].view(c, v)
        student.logits(zs, i, j)
        if teacher is not None:
            zt = buf_t[: c * v].view(c, v)
            teacher.logits(zt, i, j)
        elif want_tl:
            zt = buf_t[: c * v].view(c, v)
            zt.copy_(tl[i:j])
        else:
            zt = tl[i:j]
        epi.rows(zs, zt, ck, loss_rows[i:j], student.any, grad_t)
        student.backprop(zs, i, j)
        if teacher is not None:
            teacher.backprop(zt, i, j)
        elif want_tl:
            dtl[i:j].copy_(zt)
    buf_s = buf_t = zs = zt = None  # free the chunk buffers before dW is converted
    grads = student.grads() + (teacher.grads() if teacher is not None else (None,) * 3)
    return loss_rows, (*grads, dtl)


def pairs_rows(
    target: Tensor | None,
    n: int,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opts: DistillationOptions,
    device: torch.device,
) -> tuple[Tensor, Rows]:
    """The flat ``(N,)`` targets the chunks read (zeros without labels) and the call's rows."""
    rows = count_positions(
        target, n, device, ignore_index=opts.ignore_index, reduction=opts.reduction,
        mask=mask, normalizer=normalizer,
    )  # fmt: skip
    return (rows.y if target is None else target), rows


def pairs_forward(
    heads: tuple[Tensor | None, ...],
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    plan: ChunkPlan,
    epi: PairEpilogue,
    want: tuple[bool, ...],
    row_scale: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """The reduced loss and the gradients of ``heads`` that ``want`` asks for, without
    autograd: what the custom ops ``losskit::linear_distillation`` (and its ``_backward``, with
    the rows' grad_output as ``row_scale``) run."""
    flat, rows = pairs_rows(target, heads[0].shape[0], mask, normalizer, opts, heads[0].device)
    loss_rows, grads = run_pairs(heads, flat, mask, rows, plan, epi, want, row_scale)
    return rows.reduce(loss_rows, heads[0].dtype), grads


class LinearDistillationFunction(torch.autograd.Function):
    """Autograd node of the chunked linear distillation (any backend's :class:`PairEpilogue`).

    Its differentiable inputs are ``(xs, ws, bs, xt, wt, bt, tl)``; the gradients are
    computed in the forward (``'mean'``/``'sum'``) and handed to the one backward, or
    recomputed there with the per-row ``grad_output`` (``'none'``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        xs: Tensor,
        ws: Tensor,
        bs: Tensor | None,
        xt: Tensor | None,
        wt: Tensor | None,
        bt: Tensor | None,
        tl: Tensor | None,
        target: Tensor,
        rows: Rows,
        mask: Tensor | None,
        plan: ChunkPlan,
        epi: PairEpilogue,
        recompute: Recompute | None,
    ) -> Tensor:
        heads = (xs, ws, bs, xt, wt, bt, tl)
        want = tuple(
            bool(f) and t is not None for f, t in zip(ctx.needs_input_grad[:7], heads, strict=True)
        )
        ctx.recompute = recompute or Recompute("linear_distillation_loss")
        ctx.epi = epi
        ctx.deferred = rows.reduction == "none"
        if ctx.deferred:
            loss_rows, _ = run_pairs(heads, target, mask, rows, plan, epi, (False,) * 7)
            ctx.save_for_backward(*heads)
            ctx.rest = (target, mask, rows, plan, want)
        else:
            loss_rows, ctx.grads = run_pairs(heads, target, mask, rows, plan, epi, want)
        return rows.reduce(loss_rows, xs.dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            return second_order(ctx, grad_loss)
        if ctx.deferred:
            target, mask, rows, plan, want = ctx.rest
            _, grads = run_pairs(
                tuple(ctx.saved_tensors), target, mask, rows, plan, ctx.epi, want,
                row_scale=grad_loss.to(_F32).reshape(-1),
            )  # fmt: skip
            return (*grads, *(None,) * 6)
        scale = functools.partial(engine.scale_gradient, ctx.epi)
        return hand_over(ctx, grad_loss, scale, loss="linear_distillation_loss")


def linear_distillation(
    xs: Tensor,
    ws: Tensor,
    bs: Tensor | None,
    xt: Tensor | None,
    wt: Tensor | None,
    bt: Tensor | None,
    tl: Tensor | None,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    plan: ChunkPlan,
    epilogue: PairEpilogue | Callable[[DistillationOptions], PairEpilogue],
    recompute: Recompute | None = None,
) -> Tensor:
    """The chunked distillation loss of validated 2-D inputs (the backends' launchers call this).

    Args:
        xs, ws, bs: the student's hidden states ``(N, Ds)``, head ``(V, Ds)``, bias or None.
        xt, wt, bt: the teacher's, or None with ``tl``. tl: the teacher's log-probabilities
            ``(N, V)``, or None. All contiguous, one dtype and device.
        target: ``(N,)`` int64 hard labels, or None. opts: the checked options.
        mask: ``(N,)`` bool or None. normalizer: 0-dim float32 or None.
        plan: from :func:`~losskit.kernels.chunked.plan_pairs`.
        epilogue: the backend's :class:`PairEpilogue`, or its class (built with ``opts``).
        recompute: the ``create_graph=True`` rule, or None (such a backward raises).

    Shape:
        Output ``(N,)`` for ``'none'``, else ``()``; dtype of ``xs``.
    """
    if not isinstance(epilogue, PairEpilogue):
        epilogue = epilogue(opts)
    flat, rows = pairs_rows(target, xs.shape[0], mask, normalizer, opts, xs.device)
    heads = (xs, ws, bs, xt, wt, bt, tl)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in heads):
        return LinearDistillationFunction.apply(*heads, flat, rows, mask, plan, epilogue, recompute)
    loss_rows, _ = run_pairs(heads, flat, mask, rows, plan, epilogue, (False,) * 7)
    return rows.reduce(loss_rows, xs.dtype)
