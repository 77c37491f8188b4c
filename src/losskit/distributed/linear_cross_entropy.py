"""Vocabulary-parallel linear cross-entropy: each rank holds a row slice of the head ``W``.

:func:`vocab_parallel_linear_cross_entropy` is :func:`.vocab_parallel_cross_entropy` on the
logits ``input @ W_shard.T + b_shard``, computed a chunk of rows at a time and never stored; the
backward recomputes each chunk and all-reduces the input's gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V
from ..functional._common import result_dtype
from ..kernels.rows import row_loss
from .call import Checked, begin, check_options, class_targets
from .dtensor import unwrap
from .slices import Spec, capped, combine, partials, refuse_create_graph, slice_gradient

__all__ = ["vocab_parallel_linear_cross_entropy"]


def chunks(rows: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, rows)) for a in range(0, rows, chunk)]


def chunk_logits(
    x: Tensor, w: Tensor, b: Tensor | None, a: int, e: int, softcap: float | None
) -> tuple[Tensor, Tensor | None]:
    """Rows ``[a, e)`` of this slice's (capped) logits ``x @ w.T + b``, and the ``tanh``."""
    z = x[a:e] @ w.T
    if b is not None:
        z += b
    return capped(z, softcap)


class VocabParallelLinearCrossEntropyFunction(torch.autograd.Function):
    """Per-row loss of ``x @ W_shard.T + b_shard``, computed ``chunk`` rows at a time.

    Forward keeps only (rows,)-vectors; backward recomputes each chunk's logits, turns them into
    the slice gradient, accumulates dW/db, and all-reduces dX (each rank's part covers only its
    classes).
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        y: Tensor,
        w_local: Tensor | None,
        w_y: Tensor,
        spec: Spec,
        dtype: torch.dtype,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        rows = x.shape[0]
        xc, wc = x.to(dtype), w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        local = xc.new_zeros(4, rows)
        for a, e in chunks(rows, chunk):
            z, _ = chunk_logits(xc, wc, bc, a, e, spec.softcap)
            local[:, a:e] = partials(z, y[a:e], w_local, spec)
        lse, z_y, zsum = combine(local, spec)
        loss = row_loss(lse, z_y, zsum, w_y, spec.k)
        ctx.save_for_backward(x, w, b, y, w_local, w_y, lse)
        ctx.spec, ctx.dtype, ctx.chunk = spec, dtype, chunk
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        refuse_create_graph("vocab_parallel_linear_cross_entropy")
        x, w, b, y, w_local, w_y, lse = ctx.saved_tensors
        spec, dtype = ctx.spec, ctx.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        xc, wc = x.to(dtype), w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        g = g.to(dtype)
        dx = torch.zeros_like(xc) if need_x else None
        dw = torch.zeros_like(wc) if need_w else None
        db = torch.zeros_like(bc) if need_b else None
        for a, e in chunks(x.shape[0], ctx.chunk):
            z, tanh = chunk_logits(xc, wc, bc, a, e, spec.softcap)
            grad = slice_gradient(z, tanh, g[a:e], y[a:e], lse[a:e], w_y[a:e], w_local, spec)
            if dx is not None:
                dx[a:e] = grad @ wc
            if dw is not None:
                dw.addmm_(grad.T, xc[a:e])
            if db is not None:
                db += grad.sum(0)
        if dx is not None and dx.numel() > 0:
            # each rank's dX covers its classes only: the input's gradient is their sum
            dist.all_reduce(dx, op=dist.ReduceOp.SUM, group=spec.group)
        if dx is not None:
            dx = dx.to(x.dtype)
        return (
            dx,
            dw.to(w.dtype) if dw is not None else None,
            db.to(b.dtype) if db is not None else None,
            *([None] * 6),
        )


def default_chunk(rows: int, v_local: int, hidden: int) -> int:
    """Rows per chunk so that a chunk of logits is about the size of the input (Liger's rule)."""
    if rows == 0:
        return 1
    blocks = max(1, math.ceil(v_local / max(hidden, 1)))
    return max(1, math.ceil(rows / blocks))


def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    weight_shard: Tensor,
    target: Tensor,
    *,
    bias_shard: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Literal["none", "mean", "sum"] = "mean",
    normalizer: float | Tensor | None = None,
    mask: Tensor | None = None,
    return_z_loss: bool = False,
    vocab_start: int | None = None,
    chunk_size: int | None = None,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy of ``input @ W.T + b`` where each rank holds a row slice of the head ``W``.

    The loss is that of :func:`vocab_parallel_cross_entropy` on the logits
    ``input @ weight_shard.T + bias_shard``, which are computed ``chunk_size`` rows at a time and
    never stored: neither the ``N x V`` logits nor this rank's ``N x V_local`` part exist at once
    (the backward recomputes each chunk). Network traffic: the same row statistics as the
    cross-entropy in the forward, and one ``all_reduce(SUM)`` of the input's gradient
    (``N x D``) in the backward; the head's gradient stays on its rank.

    ``input`` must be the same on every rank (replicated hidden states); its gradient is the full
    gradient (every rank's classes summed) on every rank. bfloat16/float16 inputs are computed
    in float32 (a float32 copy of ``weight_shard`` and its gradient accumulator live for the
    call) and rounded once; the class ``weight`` gets no gradient, as in torch.

    **DTensor inputs** (as :func:`.vocab_parallel_cross_entropy` takes them): the head's
    weight may be a DTensor sharded on its rows over a 1-D ``DeviceMesh`` (``Shard(0)``, as
    ``ColwiseParallel`` shards an ``nn.Linear`` head), the bias then a ``Shard(0)`` DTensor on
    the same mesh (or None), and ``input`` plain or ``Replicate()``. The group and the slice come
    from the mesh; the head's (and bias') gradient is a ``Shard(0)`` DTensor, the input's is the
    full gradient (a ``Replicate()`` DTensor for a DTensor input; ``loss_parallel()`` on
    ``F.linear`` leaves it ``Partial(sum)``, the same values once summed), and the loss is a
    ``Replicate()`` DTensor.

    Args:
        input: hidden states ``(*, D)``, identical on every rank.
        weight_shard: this rank's rows of the head, ``(V_local, D)``, the input's dtype; or
            the whole head as a DTensor with placements ``(Shard(0),)``.
        target: class indices of the whole vocabulary ``(*)``, identical on every rank.
        bias_shard: this rank's slice of the head's bias ``(V_local,)``. Default None.
        group, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, normalizer,
            mask, return_z_loss, vocab_start, validate: as :func:`vocab_parallel_cross_entropy`
            (``weight`` is the full ``(V,)`` *class* weights, as in torch's
            ``linear_cross_entropy``).
        chunk_size: rows of logits computed at once. Default None: about ``N / ceil(V_local /
            D)`` rows, so that a chunk of logits is about the size of the input.

    Shape:
        - Input: ``(*, D)``; weight_shard ``(V_local, D)``; bias_shard ``(V_local,)``.
        - Target: ``(*)``.
        - Output: scalar; with ``'none'``, ``(*)``.

    Returns:
        The loss in the input's dtype (and the z term with ``return_z_loss``); ``Replicate()``
        DTensors for a DTensor head.

    Example:
        >>> # on each rank: W_shard = head.weight[start:start + V_local]
        >>> # loss = vocab_parallel_linear_cross_entropy(h, W_shard, y, chunk_size=1024)

    Equivalent to::

        vocab_parallel_cross_entropy(input @ weight_shard.T + bias_shard, target, ...)

    with the input's gradient all-reduced over ``group``.
    """

    dt = unwrap(
        {
            "weight_shard": (weight_shard, 0, "the head's rows, its classes"),
            "bias_shard": (bias_shard, 0, "the bias, as the head's rows"),
        },
        {
            "input": input,
            "target": target,
            "weight": weight,
            "mask": mask,
            "normalizer": normalizer,
        },
        group=group,
        vocab_start=vocab_start,
    )
    if dt is not None:
        weight_shard, bias_shard = dt.sharded.values()
        input, target, weight, mask, normalizer = dt.replicated.values()
        group, vocab_start = dt.group, dt.vocab_start

    def check() -> Checked:
        opts = check_options(
            reduction, ignore_index, label_smoothing, z_loss, softcap, normalizer, vocab_start
        )
        V.require_floating("input", input, what="hidden states")
        V.require_floating("weight_shard", weight_shard, what="this rank's rows of the head")
        if input.dim() == 0 or weight_shard.dim() != 2:
            raise V.LossValueError(
                f"input must be (*, D) and weight_shard (V_local, D), got shapes "
                f"{V.shape_str(input.shape)} and {V.shape_str(weight_shard.shape)}"
            )
        if weight_shard.shape[1] != input.shape[-1]:
            raise V.LossValueError(
                f"weight_shard has shape {V.shape_str(weight_shard.shape)} but input has "
                f"{input.shape[-1]} features (last dim); weight_shard must be (V_local, "
                f"{input.shape[-1]})"
            )
        V.require_same_dtype("weight_shard", weight_shard, "input", input)
        V.require_same_device("weight_shard", weight_shard, "input", input)
        if bias_shard is not None:
            V.require_floating("bias_shard", bias_shard)
            V.require_same_dtype("bias_shard", bias_shard, "input", input)
            V.require_same_device("bias_shard", bias_shard, "input", input)
            if bias_shard.shape != weight_shard.shape[:1]:
                raise V.LossValueError(
                    f"bias_shard must have shape ({weight_shard.shape[0]},), one per row of "
                    f"weight_shard, got {V.shape_str(bias_shard.shape)}"
                )
        t = class_targets(target, input, "input", weight, mask, opts)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise V.LossValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
        return Checked(opts, normalizer, vocab_start, t, weight_shard.shape[0], input.shape[-1])

    call = begin(check, input, group=group, weight=weight, mask=mask, validate=validate)
    x = call.inputs(input, input.shape[-1])
    chunk = chunk_size or default_chunk(x.shape[0], call.layout.size, x.shape[1])
    rows = call.rows
    loss, lse = VocabParallelLinearCrossEntropyFunction.apply(
        x, weight_shard, bias_shard, rows.y, call.w_local, rows.w_y, call.spec, call.dtype, chunk
    )
    out = call.finish(loss, lse, return_z_loss, result_dtype(input))
    return out if dt is None else dt.wrap(out)
