"""Losses over ``torch.distributed``: vocabulary-parallel cross-entropy and one global token mean.

Two problems, two tools:

- **Tensor (vocabulary) parallelism.** Each rank of a group holds a contiguous slice of the class
  dimension: ``logits[..., start:start + V_local]`` (or the head rows ``W[start:start + V_local]``)
  for the *same* tokens. :func:`vocab_parallel_cross_entropy` and
  :func:`vocab_parallel_linear_cross_entropy` return the loss of the full vocabulary while only
  per-row statistics cross the network, never logits:

  1. one ``all_gather`` of 10 integers per rank (shard sizes, row count, target range and
     checksum, a "my input is bad" flag) before anything else, so that a rank with bad input
     makes *every* rank raise instead of leaving the others waiting in a collective;
  2. one ``all_reduce(MAX)`` of the row maxima (N values);
  3. one ``all_reduce(SUM)`` of the rows' sum of exponentials, target logit and (with label
     smoothing) weighted logit sum (2 or 3 x N values).

  Everything else (the log-sum-exp, the z-loss term, the reduction) is computed redundantly on
  every rank from those N-vectors; the backward of the cross-entropy needs no communication (each
  rank's gradient is its slice of the single-device gradient). The linear form adds one
  ``all_reduce(SUM)`` of the input gradient (N x D) in the backward.

- **Data parallelism.** :func:`global_count` all-reduces :func:`losskit.count_targets` so that
  ``normalizer=global_count(...)`` turns every rank's (and every micro-batch's) ``'mean'`` into a
  share of the single-process mean over the whole global batch. DDP and FSDP *average* gradients
  over the ranks, so multiply the loss by the world size before ``backward`` (or register
  :func:`sum_allreduce_hook`); see ``docs/distributed.md`` for the recipe.

The checks that concern one tensor live with the other input checks in :mod:`losskit._validate`;
the ones here need the whole group (every rank's shard size and targets) and exist only here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from . import _validate as V
from ._reduction import as_normalizer, resolve, safe_divide
from .functional._common import compute_dtype, keep, result_dtype
from .functional.categorical import count_targets

__all__ = [
    "global_count",
    "sum_allreduce_hook",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

# Fields of the one small all_gather every call starts with (int64, one row per rank).
_FAILED, _V_LOCAL, _START, _ROWS, _WIDTH, _TMIN, _TMAX, _TSUM, _WLEN, _MSUM = range(10)
_NFIELDS = 10
_NONE = -1  # "not given" in the _START, _WIDTH, _WLEN and _MSUM fields


# --------------------------------------------------------------------------------------------
# group checks: one collective that every rank reaches, whatever its input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where this rank's classes sit in the full vocabulary."""

    rank: int
    world: int
    start: int  # first class this rank holds
    size: int  # V_local
    num_classes: int  # V, the whole vocabulary
    sizes: tuple[int, ...]


def _group_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise V.LossValueError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group(...) "
            "on every rank first"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise V.LossValueError("this process is not a member of group; pass a group it belongs to")
    return rank, dist.get_world_size(group)


def _comm_device(group: dist.ProcessGroup | None, like: object) -> torch.device:
    """The device the group's collectives take: ``like``'s, or CUDA for NCCL, else the CPU."""
    if isinstance(like, Tensor):
        return like.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _target_summary(
    target: Tensor, ignore_index: int, mask: Tensor | None
) -> tuple[int, int, int, int]:
    """(min, max, sum) of the non-ignored class indices and the mask's True count (one sync).

    (big, -1, 0) when no index counts; the count is -1 without a mask.
    """
    big = torch.iinfo(torch.int64).max
    t = target.reshape(-1).long()
    valid = t != ignore_index
    none = torch.tensor(_NONE, device=t.device)
    stats = torch.stack(
        [
            torch.where(valid, t, big).amin() if t.numel() else torch.tensor(big, device=t.device),
            torch.where(valid, t, -1).amax() if t.numel() else none,
            torch.where(valid, t, 0).sum(),
            mask.expand(target.shape).sum() if mask is not None else none,
        ]
    )
    low, high, total, masked = stats.tolist()
    return low, high, total, masked


def _exchange(
    *,
    group: dist.ProcessGroup | None,
    rank: int,
    world: int,
    failure: V.LossError | None,
    device: torch.device,
    v_local: int,
    vocab_start: int | None,
    rows: int,
    width: int,
    target: Tensor | None,
    ignore_index: int,
    weight: Tensor | None,
    mask: Tensor | None,
    validate: bool,
) -> _Layout:
    """Gather every rank's shape facts once; raise the same way on every rank if any is bad."""
    row = [0] * _NFIELDS
    row[_TMIN], row[_TMAX] = torch.iinfo(torch.int64).max, -1
    row[_START] = row[_WIDTH] = row[_WLEN] = row[_MSUM] = _NONE
    if failure is None:
        row[_V_LOCAL], row[_ROWS], row[_WIDTH] = v_local, rows, width
        row[_START] = _NONE if vocab_start is None else vocab_start
        row[_WLEN] = _NONE if weight is None else weight.shape[0]
        if validate and target is not None:
            row[_TMIN], row[_TMAX], row[_TSUM], row[_MSUM] = _target_summary(
                target, ignore_index, mask
            )
    else:
        row[_FAILED] = 1
    mine = torch.tensor(row, dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = [p.tolist() for p in parts]
    stop = " Every rank of the group raises, so that none is left waiting in a collective."

    failed = [r for r in range(world) if table[r][_FAILED]]
    if failure is not None:
        raise failure
    if failed:
        raise V.LossValueError(
            f"rank {failed[0]} of {world} failed its input checks (the error raised on that "
            f"rank names the problem); this rank's input was fine.{stop}"
        )

    def column(field: int) -> list[int]:
        return [table[r][field] for r in range(world)]

    def differ(field: int, what: str, fix: str) -> None:
        values = column(field)
        if any(v != values[0] for v in values):
            other = next(r for r in range(world) if values[r] != values[0])
            raise V.LossValueError(
                f"{what} is {values[0]} on rank 0 but {values[other]} on rank {other}; {fix}.{stop}"
            )

    same_rows = "every rank must hold the same tokens and its own slice of the classes"
    differ(_ROWS, "the number of rows (tokens)", same_rows)
    differ(_WIDTH, "the hidden size D of input and weight_shard", "it must match on every rank")

    sizes = tuple(column(_V_LOCAL))
    num_classes = sum(sizes)
    if num_classes == 0:
        raise V.LossValueError(
            f"the vocabulary is empty: every rank holds 0 classes (shard sizes {list(sizes)})"
        )
    starts = column(_START)
    if all(s == _NONE for s in starts):
        start = sum(sizes[:rank])
    elif any(s == _NONE for s in starts):
        given = [r for r in range(world) if starts[r] != _NONE]
        raise V.LossValueError(
            f"vocab_start is given on ranks {given} but not on the others; give it on every rank "
            f"or on none (then the slices follow the rank order).{stop}"
        )
    else:
        spans = sorted((starts[r], sizes[r], r) for r in range(world))
        edge = 0
        for s, n, r in spans:
            if s != edge:
                raise V.LossValueError(
                    f"vocab_start {starts} with shard sizes {list(sizes)} do not tile the "
                    f"vocabulary 0..{num_classes - 1}: rank {r} starts at {s}, expected "
                    f"{edge}.{stop}"
                )
            edge += n
        start = starts[rank]

    wlens = column(_WLEN)
    if any(w not in (_NONE, num_classes) for w in wlens) or len(set(wlens)) > 1:
        bad = next(r for r in range(world) if wlens[r] != num_classes)
        got = "no weight" if wlens[bad] == _NONE else f"shape ({wlens[bad]},)"
        raise V.LossValueError(
            f"weight must be the full class weights of shape ({num_classes},) on every rank (the "
            f"whole vocabulary over {world} ranks), got {got} on rank {bad}.{stop}"
        )

    if validate:
        lows, highs = column(_TMIN), column(_TMAX)
        bad = [r for r in range(world) if lows[r] < 0 or highs[r] >= num_classes]
        if bad:
            ranks = f"{world} rank" + ("s" if world > 1 else "")
            span = (
                f"the vocabulary has {num_classes} classes split over {ranks}; valid indices are "
                f"0..{num_classes - 1}, or ignore_index={ignore_index}"
            )
            if rank in bad and target is not None:
                t = target.reshape(-1).long()
                out = ((t < 0) | (t >= num_classes)) & (t != ignore_index)
                flat = int(out.nonzero()[0, 0])
                raise V.LossIndexError(
                    f"target has class index {int(t[flat])} at position "
                    f"{V.position(flat, target.shape)}, but {span} (this rank, {rank}, holds "
                    f"classes {start}..{start + v_local - 1}).{stop}"
                )
            r = bad[0]
            value = lows[r] if lows[r] < 0 else highs[r]
            raise V.LossValueError(
                f"rank {r} of {world} has target class index {value}, but {span}; that rank "
                f"raises LossIndexError with the position.{stop}"
            )
        differ(_TSUM, "the sum of the target's class indices", same_rows)
        differ(_MSUM, "the number of True positions in mask", "mask must match on every rank")
    return _Layout(rank, world, start, v_local, num_classes, sizes)


def _check_options(
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    ignore_index: int,
    normalizer: float | Tensor | None,
    vocab_start: int | None,
) -> tuple[str, float, float, float | None]:
    reduction = resolve(reduction)
    label_smoothing = V.check_float_option("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = V.check_float_option("z_loss", z_loss, low=0.0)
    if softcap is not None:
        softcap = V.check_float_option("softcap", softcap, low=0.0, low_open=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise V.LossTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    V.check_normalizer(normalizer, reduction)
    if vocab_start is not None and (
        isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0
    ):
        raise V.LossValueError(f"vocab_start must be an int >= 0 or None, got {vocab_start!r}")
    return reduction, label_smoothing, z_loss, softcap


def _check_target(target: Tensor, rows_shape: torch.Size, name: str, ref: Tensor) -> None:
    V.require_tensor("target", target)
    V.require_same_device("target", target, name, ref)
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise V.LossTypeError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}; the "
            "vocabulary-parallel losses take class indices only"
        )
    if target.shape != rows_shape:
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)}, but {name} of shape "
            f"{V.shape_str(ref.shape)} needs class indices of shape {V.shape_str(rows_shape)} "
            "(the classes are the last dimension)"
        )


def _unmasked(target: Tensor, mask: Tensor | None, ignore_index: int) -> Tensor:
    """Check ``mask``; positions it leaves out become ``ignore_index``, as in the reference:
    padding may hold any index, and it is neither validated nor gathered."""
    V.check_mask(mask, target.shape)
    if mask is None:
        return target
    return torch.where(mask.expand(target.shape), target.long(), ignore_index)


def _check_class_weight(weight: Tensor | None, ref: Tensor) -> None:
    if weight is None:
        return
    V.require_floating("weight", weight, what="one weight per class of the whole vocabulary")
    V.require_same_device("weight", weight, "the logits", ref)
    if weight.dim() != 1:
        raise V.LossValueError(
            f"weight must be 1-D, the full class weights (V,), got shape "
            f"{V.shape_str(weight.shape)}"
        )


# --------------------------------------------------------------------------------------------
# the math: row statistics of a local slice of the logits, and its gradient
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Everything the forward and backward share besides tensors."""

    start: int
    num_classes: int
    eps: float
    z_loss: float
    softcap: float | None
    group: dist.ProcessGroup | None


def _capped(z: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """``s * tanh(z / s)`` and the ``tanh`` (for the chain rule), or ``z`` and None."""
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _local_index(target: Tensor, start: int, size: int) -> tuple[Tensor, Tensor]:
    """The target's column in this slice (0 where outside) and whether it is inside."""
    local = target - start
    inside = (local >= 0) & (local < size)
    return torch.where(inside, local, torch.zeros_like(local)), inside


def _partials(z: Tensor, target: Tensor, w_local: Tensor | None, spec: _Spec) -> Tensor:
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
    col, inside = _local_index(target, spec.start, size)
    out[2] = torch.where(inside, z.gather(1, col.unsqueeze(1)).squeeze(1), 0.0)
    if spec.eps > 0.0:
        out[3] = (z * w_local).sum(1) if w_local is not None else z.sum(1)
    return out


def _combine(local: Tensor, spec: _Spec) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 2-3: the group-wide max, then one SUM of the rescaled partials.

    Returns (lse, target logit, weighted logit sum), each (rows,).
    """
    m_local = local[0]
    if local.shape[1] == 0:
        return m_local, local[2], local[3]
    m = m_local.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=spec.group)
    # rescale to the group-wide max; exp(-inf - m) = 0 for an empty slice (V >= 1 somewhere)
    sums = local[1 : 4 if spec.eps > 0.0 else 3].clone()
    sums[0] *= torch.exp(m_local - m)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=spec.group)
    zsum = sums[2] if spec.eps > 0.0 else local[3]
    return m + torch.log(sums[0]), sums[1], zsum


def _row_loss(
    lse: Tensor, z_y: Tensor, zsum: Tensor, w_y: Tensor, wsum: Tensor, spec: _Spec
) -> Tensor:
    """ce_i + z_i of kernels/CONTRACT.md from the combined row statistics."""
    loss = w_y * (lse - z_y)
    if spec.eps > 0.0:
        smooth = wsum * lse - zsum
        loss = (1.0 - spec.eps) * loss + (spec.eps / spec.num_classes) * smooth
    if spec.z_loss > 0.0:
        loss = loss + spec.z_loss * lse * lse
    return loss


def _slice_grad(
    z: Tensor,
    tanh: Tensor | None,
    g: Tensor,
    target: Tensor,
    lse: Tensor,
    w_y: Tensor,
    w_local: Tensor | None,
    wsum: Tensor,
    spec: _Spec,
) -> Tensor:
    """d(sum_i g_i loss_i)/d(logit slice) for a (rows, V_local) slice: no communication.

    d loss_i / d z'_c = p_c [(1 - eps) w_y + eps W / V + 2 c lse] - (1 - eps) w_y [c = y]
    - (eps / V) w_c, with p = softmax over the whole vocabulary (exp(z' - lse)) and W = sum w.
    """
    eps, size = spec.eps, z.shape[1]
    coef = (1.0 - eps) * w_y + (eps / spec.num_classes) * wsum + 2.0 * spec.z_loss * lse
    grad = torch.exp(z - lse.unsqueeze(1))
    grad *= (g * coef).unsqueeze(1)
    if size == 0:
        return grad
    col, inside = _local_index(target, spec.start, size)
    hit = torch.where(inside, g * (1.0 - eps) * w_y, 0.0)
    grad.scatter_add_(1, col.unsqueeze(1), -hit.unsqueeze(1))
    if eps > 0.0:
        w = w_local if w_local is not None else z.new_ones(size)
        grad -= (g * (eps / spec.num_classes)).unsqueeze(1) * w
    if tanh is not None:
        grad *= 1.0 - tanh * tanh
    return grad


def _refuse_create_graph(op: str) -> None:
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


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row loss of a vocabulary slice; the backward is local to the slice."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        target: Tensor,
        w_local: Tensor | None,
        w_y: Tensor,
        wsum: Tensor,
        spec: _Spec,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        z, _ = _capped(logits.to(dtype), spec.softcap)
        lse, z_y, zsum = _combine(_partials(z, target, w_local, spec), spec)
        loss = _row_loss(lse, z_y, zsum, w_y, wsum, spec)
        ctx.save_for_backward(logits, target, w_local, w_y, wsum, lse)
        ctx.spec, ctx.dtype = spec, dtype
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        _refuse_create_graph("vocab_parallel_cross_entropy")
        logits, target, w_local, w_y, wsum, lse = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            z, tanh = _capped(logits.to(ctx.dtype), ctx.spec.softcap)
            grad = _slice_grad(
                z, tanh, g.to(ctx.dtype), target, lse, w_y, w_local, wsum, ctx.spec
            ).to(logits.dtype)
        return grad, None, None, None, None, None, None


def _chunks(rows: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, rows)) for a in range(0, rows, chunk)]


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
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
        target: Tensor,
        w_local: Tensor | None,
        w_y: Tensor,
        wsum: Tensor,
        spec: _Spec,
        dtype: torch.dtype,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        rows = x.shape[0]
        xc, wc = x.to(dtype), w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        local = xc.new_zeros(4, rows)
        for a, e in _chunks(rows, chunk):
            z = xc[a:e] @ wc.T
            if bc is not None:
                z += bc
            z, _ = _capped(z, spec.softcap)
            local[:, a:e] = _partials(z, target[a:e], w_local, spec)
        lse, z_y, zsum = _combine(local, spec)
        loss = _row_loss(lse, z_y, zsum, w_y, wsum, spec)
        ctx.save_for_backward(x, w, b, target, w_local, w_y, wsum, lse)
        ctx.spec, ctx.dtype, ctx.chunk = spec, dtype, chunk
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        _refuse_create_graph("vocab_parallel_linear_cross_entropy")
        x, w, b, target, w_local, w_y, wsum, lse = ctx.saved_tensors
        spec, dtype = ctx.spec, ctx.dtype
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        xc, wc = x.to(dtype), w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        g = g.to(dtype)
        dx = torch.zeros_like(xc) if need_x else None
        dw = torch.zeros_like(wc) if need_w else None
        db = torch.zeros_like(bc) if need_b else None
        for a, e in _chunks(x.shape[0], ctx.chunk):
            z = xc[a:e] @ wc.T
            if bc is not None:
                z += bc
            z, tanh = _capped(z, spec.softcap)
            grad = _slice_grad(
                z, tanh, g[a:e], target[a:e], lse[a:e], w_y[a:e], w_local, wsum, spec
            )
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
            *([None] * 7),
        )


# --------------------------------------------------------------------------------------------
# the public losses
# --------------------------------------------------------------------------------------------


def _weights(
    weight: Tensor | None, target: Tensor, counted: Tensor, layout: _Layout, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor, Tensor]:
    """This slice's class weights, each row's target weight and the sum of all weights."""
    if weight is None:
        ones = torch.ones(target.shape, dtype=dtype, device=target.device)
        return (
            None,
            ones,
            torch.tensor(float(layout.num_classes), dtype=dtype, device=target.device),
        )
    w = weight.detach().to(dtype)
    safe = torch.where(counted, target, torch.zeros_like(target))
    return w[layout.start : layout.start + layout.size], w[safe], w.sum()


def _reduce_rows(
    rows: Tensor,
    zrows: Tensor | None,
    *,
    counted: Tensor,
    w_y: Tensor,
    weighted: bool,
    reduction: str,
    normalizer: float | Tensor | None,
    out_shape: torch.Size,
    out_dtype: torch.dtype,
) -> Tensor | tuple[Tensor, Tensor]:
    zero = torch.zeros((), dtype=rows.dtype, device=rows.device)

    def finish(values: Tensor) -> Tensor:
        values = torch.where(counted, values, zero)
        if reduction == "none":
            return values.reshape(out_shape).to(out_dtype)
        total = values.sum()
        if reduction == "sum":
            return total.to(out_dtype)
        if normalizer is not None:
            return safe_divide(total, as_normalizer(normalizer, total)).to(out_dtype)
        if weighted:
            return (total / torch.where(counted, w_y, zero).sum()).to(out_dtype)
        return (total / counted.sum().to(total.dtype)).to(out_dtype)

    loss = finish(rows)
    if zrows is None:
        return loss
    return loss, finish(zrows).detach()


def _prepare(
    target: Tensor, mask: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Flat int64 targets, the (rows,) bool of rows that count, and the mask as (rows, 1)."""
    t = target.reshape(-1).long()
    counted = t != ignore_index
    kept = None
    if mask is not None:
        kept = mask.expand(target.shape).reshape(-1, 1)
        counted = counted & kept.squeeze(1)
    return t, counted, kept


def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
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
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy over a vocabulary split across the ranks of ``group``.

    Rank ``r`` holds the logits of classes ``[start_r, start_r + V_r)`` for the same ``N`` tokens;
    together the slices tile the vocabulary ``0..V-1`` (slices may be uneven, even empty). The
    result equals :func:`losskit.functional.cross_entropy` on the concatenated logits (class
    dimension last), with :math:`p = \mathrm{softmax}(z')`, :math:`z' = s \tanh(z / s)` with
    ``softcap`` (else :math:`z`), ``w`` the class weights, :math:`\epsilon` the smoothing:

    .. math::
        \ell_n = (1 - \epsilon)\, w_{y_n} (-\log p_{n,y_n})
                 + \frac{\epsilon}{V} \sum_c w_c (-\log p_{n,c}) + z \cdot \mathrm{lse}(z'_n)^2

    Only row statistics cross the network (see the module docstring): one ``all_gather`` of 10
    integers per rank, then ``all_reduce(MAX)`` of N maxima and ``all_reduce(SUM)`` of 2 x N
    values (3 x N with label smoothing). The backward needs no communication: each rank's
    gradient is its slice of the single-device gradient. The returned loss is the same on every
    rank. Every rank must call this (it is a collective), with the same target, mask and options.

    Args:
        logits_shard: this rank's slice of the logits, ``(*, V_local)``, e.g. ``(N, V_local)`` or
            ``(B, T, V_local)``; the classes are the *last* dimension.
        target: class indices of the whole vocabulary, ``(*)`` (the logits' shape without the
            last dimension), identical on every rank.
        group: the process group that splits the vocabulary. Default: the world.
        weight: the *full* class weights ``(V,)``, the same on every rank (each rank slices its
            part; every rank needs the target's weight, which may live on another rank's slice).
            Default None.
        ignore_index: class index that is skipped. Default -100.
        label_smoothing: in [0, 1]. Default 0.
        z_loss: coefficient of the ``lse^2`` term. Default 0.
        softcap: ``s``: logits become ``s * tanh(z / s)`` first. Default None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. ``'mean'`` divides by the sum of the
            counted targets' weights (their count without ``weight``). Default ``'mean'``.
        normalizer: with ``'mean'``, divide the sum by this instead (e.g. :func:`global_count`).
        mask: bool over the target's positions, True where the position counts.
        return_z_loss: also return the z term alone, reduced the same way (detached).
        vocab_start: the first class this rank holds. Default None: the slices follow the rank
            order, their sizes read from every rank (uneven slices allowed). Give it on every
            rank or on none; the given slices must tile ``0..V-1``.
        validate: ``False`` skips the value checks (target range and agreement across ranks);
            the shape facts are still exchanged.

    Shape:
        - Input: ``(*, V_local)``.
        - Target: ``(*)``, class indices in ``[0, V)`` or ``ignore_index``.
        - Output: scalar; with ``'none'``, ``(*)``.

    Returns:
        The loss in the logits' dtype (and the z term with ``return_z_loss``).

    Raises:
        LossIndexError: on a rank whose target holds an index outside ``[0, V)``; every other
            rank raises :class:`~losskit.LossValueError` naming that rank (no rank deadlocks).

    Example:
        >>> # on each of 2 ranks, after init_process_group("gloo", ...):
        >>> # full = torch.randn(8, 10); y = torch.randint(0, 10, (8,))
        >>> # shard = full[:, 5 * rank:5 * rank + 5].requires_grad_()
        >>> # loss = vocab_parallel_cross_entropy(shard, y)  # == LF.cross_entropy(full, y)

    Equivalent to (but without ever gathering the logits)::

        full = torch.cat(all_gather(logits_shard), dim=-1)
        LF.cross_entropy(full.reshape(-1, V), target.reshape(-1), weight, ...)
    """
    rank, world = _group_rank(group)
    failure: V.LossError | None = None
    try:
        reduction, label_smoothing, z_loss, softcap = _check_options(
            reduction, label_smoothing, z_loss, softcap, ignore_index, normalizer, vocab_start
        )
        V.require_tensor("logits_shard", logits_shard)
        V.require_floating("logits_shard", logits_shard, what="this rank's slice of the logits")
        if logits_shard.dim() == 0:
            raise V.LossValueError(
                "logits_shard must have a class dimension (the last): expected shape (N, V_local)"
                " or (B, T, V_local), got a 0-dim tensor"
            )
        _check_target(target, logits_shard.shape[:-1], "logits_shard", logits_shard)
        _check_class_weight(weight, logits_shard)
        target = _unmasked(target, mask, ignore_index)
    except V.LossError as exc:
        failure = exc
    ok = failure is None
    layout = _exchange(
        group=group,
        rank=rank,
        world=world,
        failure=failure,
        device=_comm_device(group, logits_shard),
        v_local=logits_shard.shape[-1] if ok else 0,
        vocab_start=vocab_start,
        rows=target.numel() if ok else 0,
        width=_NONE,
        target=target if ok else None,
        ignore_index=ignore_index,
        weight=weight,
        mask=mask,
        validate=validate,
    )
    dtype = compute_dtype(logits_shard)
    spec = _Spec(layout.start, layout.num_classes, label_smoothing, z_loss, softcap, group)
    t, counted, kept = _prepare(target, mask, ignore_index)
    w_local, w_y, wsum = _weights(weight, t, counted, layout, dtype)
    logits = keep(logits_shard.reshape(t.shape[0], layout.size), kept)
    rows, lse = _VocabParallelCrossEntropy.apply(logits, t, w_local, w_y, wsum, spec, dtype)
    zrows = z_loss * lse * lse if return_z_loss else None
    return _reduce_rows(
        rows,
        zrows,
        counted=counted,
        w_y=w_y,
        weighted=weight is not None,
        reduction=reduction,
        normalizer=normalizer,
        out_shape=target.shape,
        out_dtype=result_dtype(logits_shard),
    )


def _default_chunk(rows: int, v_local: int, hidden: int) -> int:
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

    Args:
        input: hidden states ``(*, D)``, identical on every rank.
        weight_shard: this rank's rows of the head, ``(V_local, D)``, the input's dtype.
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
        The loss in the input's dtype (and the z term with ``return_z_loss``).

    Example:
        >>> # on each rank: W_shard = head.weight[start:start + V_local]
        >>> # loss = vocab_parallel_linear_cross_entropy(h, W_shard, y, chunk_size=1024)

    Equivalent to::

        vocab_parallel_cross_entropy(input @ weight_shard.T + bias_shard, target, ...)

    with the input's gradient all-reduced over ``group``.
    """
    rank, world = _group_rank(group)
    failure: V.LossError | None = None
    try:
        reduction, label_smoothing, z_loss, softcap = _check_options(
            reduction, label_smoothing, z_loss, softcap, ignore_index, normalizer, vocab_start
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
        _check_target(target, input.shape[:-1], "input", input)
        _check_class_weight(weight, input)
        target = _unmasked(target, mask, ignore_index)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise V.LossValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    except V.LossError as exc:
        failure = exc
    ok = failure is None
    layout = _exchange(
        group=group,
        rank=rank,
        world=world,
        failure=failure,
        device=_comm_device(group, input),
        v_local=weight_shard.shape[0] if ok else 0,
        vocab_start=vocab_start,
        rows=target.numel() if ok else 0,
        width=input.shape[-1] if ok else _NONE,
        target=target if ok else None,
        ignore_index=ignore_index,
        weight=weight,
        mask=mask,
        validate=validate,
    )
    dtype = compute_dtype(input)
    spec = _Spec(layout.start, layout.num_classes, label_smoothing, z_loss, softcap, group)
    t, counted, kept = _prepare(target, mask, ignore_index)
    w_local, w_y, wsum = _weights(weight, t, counted, layout, dtype)
    x = keep(input.reshape(-1, input.shape[-1]), kept)
    chunk = chunk_size or _default_chunk(x.shape[0], layout.size, x.shape[1])
    rows, lse = _VocabParallelLinearCrossEntropy.apply(
        x, weight_shard, bias_shard, t, w_local, w_y, wsum, spec, dtype, chunk
    )
    zrows = z_loss * lse * lse if return_z_loss else None
    return _reduce_rows(
        rows,
        zrows,
        counted=counted,
        w_y=w_y,
        weighted=weight is not None,
        reduction=reduction,
        normalizer=normalizer,
        out_shape=target.shape,
        out_dtype=result_dtype(input),
    )


# --------------------------------------------------------------------------------------------
# data parallelism: one global token count
# --------------------------------------------------------------------------------------------


def global_count(
    target: Tensor | Sequence[Tensor],
    *,
    ignore_index: int = -100,
    mask: Tensor | Sequence[Tensor | None] | None = None,
    group: dist.ProcessGroup | None = None,
    validate: bool = True,
) -> Tensor:
    """The number of counted targets over every rank of ``group`` (and every micro-batch).

    One ``all_reduce(SUM)`` of :func:`losskit.count_targets`. Pass the result as ``normalizer``
    so that each rank's ``'mean'`` is its share of the mean over the whole global batch: summed
    over ranks (and micro-batches), the losses give exactly the single-process mean. With DDP or
    FSDP multiply each loss by the world size before ``backward`` (they average gradients), or
    register :func:`sum_allreduce_hook`; see ``docs/distributed.md``.

    Args:
        target: this rank's targets, or a sequence of them (one per gradient-accumulation
            micro-batch), as :func:`losskit.count_targets` takes them.
        ignore_index: class index that does not count (integer targets). Default -100.
        mask: bool, True where the position counts; one per target when ``target`` is a
            sequence (None entries allowed). Default None.
        group: the data-parallel process group. Default: the world.
        validate: True (default) adds a "my input is bad" flag to the same all_reduce and reads
            it on the host (one sync), so that a rank with bad input makes every rank raise;
            False issues the bare all_reduce with no host sync.

    Returns:
        A 0-dim int64 tensor, the same on every rank, on the targets' device.

    Example:
        >>> # n = global_count([mb.y for mb in micro_batches])
        >>> # loss = LF.cross_entropy(logits, y, normalizer=n) * dist.get_world_size()
    """
    _, world = _group_rank(group)
    failure: V.LossError | None = None
    count = None
    try:
        if isinstance(target, Tensor):
            targets, masks = [target], [mask]
        else:
            targets = list(target)
            if not targets:
                raise V.LossValueError("target must be a tensor or a non-empty sequence of them")
            if mask is None:
                masks = [None] * len(targets)
            elif isinstance(mask, Tensor):
                raise V.LossValueError(
                    f"mask must be a sequence of {len(targets)} masks (or None entries), one per "
                    "target, when target is a sequence"
                )
            else:
                masks = list(mask)
                if len(masks) != len(targets):
                    raise V.LossValueError(
                        f"mask has {len(masks)} entries but target has {len(targets)}; give one "
                        "mask (or None) per target"
                    )
        for i, t in enumerate(targets):
            V.require_tensor(f"target[{i}]" if len(targets) > 1 else "target", t)
        pairs = zip(targets, masks, strict=True)
        count = sum(count_targets(t, ignore_index=ignore_index, mask=m) for t, m in pairs)
    except V.LossError as exc:
        failure = exc
    device = _comm_device(group, count)
    if not validate and failure is None:
        out = count.to(device=device, dtype=torch.int64).reshape(())
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out
    both = torch.zeros(2, dtype=torch.int64, device=device)
    if failure is None:
        both[0] = count
    else:
        both[1] = 1
    dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
    if failure is not None:
        raise failure
    bad = int(both[1])
    if bad:
        raise V.LossValueError(
            f"{bad} of the {world} ranks failed their input checks in global_count (the error "
            "raised on each names the problem); every rank raises so that none is left waiting "
            "in a collective"
        )
    return both[0].clone()


def sum_allreduce_hook(
    process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[Tensor]:
    """A DDP communication hook that *sums* gradients over the ranks instead of averaging them.

    With it, ``loss = LF.cross_entropy(..., normalizer=global_count(y))`` needs no world-size
    factor: the summed gradients are those of the global token mean.

    Example:
        >>> # ddp = DistributedDataParallel(model)
        >>> # ddp.register_comm_hook(None, sum_allreduce_hook)
    """
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


if dist.is_available():
    # DDP checks a hook's annotations as objects; postponed (string) annotations fail its check
    sum_allreduce_hook.__annotations__ = {
        "process_group": dist.ProcessGroup | None,
        "bucket": dist.GradBucket,
        "return": torch.futures.Future[torch.Tensor],
    }
