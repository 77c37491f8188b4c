"""Fused cross-entropy on the CPU: the gradient is written in the forward, one block at a time.

Plain torch ops (no compiled extension), arranged so that the logits are read from memory once
and the gradient is written once. Per block of rows (:data:`CHUNK_BYTES` of float32, small enough
to stay in cache between the passes), with ``z' = s * tanh(z / s)`` under a softcap, else ``z``:

1. ``C = fl(log2(e) * max_c z')`` per row, and with label smoothing ``sum_c w_c z'_c``
   (the only pass that reads the logits from memory).
2. ``e = 2 ** (log2(e) * z' - C)`` written straight into the gradient rows: one fused
   multiply-add and torch's ``exp2`` (about 3x faster than its ``exp`` on AVX-512), equal to
   ``exp(z' - max z')`` up to a per-row factor that cancels. ``S = sum_c e`` and
   ``lse = C ln 2 + ln S``.
3. The gradient in place, with ``r`` the row's reduction factor (``1/D`` for ``'mean'``, 0 for
   rows that do not count)::

       g = r * (a * e / S - b * onehot(y) - (eps / V) * w)
       a = (1 - eps) w_y + (eps / V) sum(w) + 2 z_loss lse,      b = (1 - eps) w_y

   then times ``1 - tanh(z / s)^2`` under a softcap.

The loss comes from ``lse`` and one gathered logit per row. Low-precision logits are widened into
a float32 scratch block, computed there and rounded once into the gradient. The backward
multiplies the stored gradient by ``grad_output`` in place (nothing to do when that is exactly 1,
as for ``loss.backward()``) and hands the buffer to autograd, so a leaf's ``.grad`` is that
buffer.

Threads: with more than one torch thread the blocks go to worker threads of one op each
(``kernels/cpu/threads.py``: faster than per-op parallelism when other processes compete for the
cores).

Memory: on Linux, gradients of 64 MiB and more come from a private mapping advised as huge pages
(``kernels/cpu/memory.py``; ``LOSSKIT_CPU_HUGEPAGES=0`` uses ``torch.empty`` instead).

Equivalent to (for ``mask=None``, ``z_loss=0``, ``softcap=None``, no normalizer)::

    torch.nn.functional.cross_entropy(logits, target, weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..._reduction import count_rows
from ..._validate import CrossEntropyOptions
from ..recompute import Recompute, hand_over, second_order
from ..rows import Smoothing, gradient_, gradient_coefficients, row_loss
from .memory import empty_rows
from .threads import Claim, share_blocks

__all__ = ["CHUNK_BYTES", "CrossEntropyFunction", "cross_entropy", "cross_entropy_forward"]

#: float32 bytes per block of rows. On a 2-core EPYC (1 MiB L2 per core, 32 MiB L3) 4-8 MiB was
#: fastest: smaller blocks pay more per-op overhead, larger ones fall out of the caches.
CHUNK_BYTES = 4 << 20

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


def _rows_per_block(v: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(v, 1)))


class _Blocks:
    """Steps 1-3 of the module docstring over the blocks of one call, run by one or more threads.

    Reads ``logits`` and the rows' bookkeeping; fills, per row, ``neg_c`` (``-C``, ``(N, 1)``),
    ``row_sum`` (``S``, ``(N, 1)``) and, with label smoothing, ``zw`` (``sum_c w_c z'_c``,
    ``(N,)``); writes the gradient into ``grad`` (None: steps 1-2 only, in a scratch block).
    """

    def __init__(
        self,
        logits: Tensor,
        grad: Tensor | None,
        r: Tensor,
        w_y: Tensor,
        y: Tensor,
        skipped: Tensor,
        k: Smoothing,
        w: Tensor | None,
        softcap: float | None,
    ) -> None:
        n, v = logits.shape
        f32 = torch.float32
        self.logits, self.grad, self.r, self.w_y, self.y = logits, grad, r, w_y, y
        self.skipped, self.k, self.w, self.softcap = skipped, k, w, softcap
        # Without a z-loss the gradient's coefficients do not depend on lse: computed once.
        self.coef = gradient_coefficients(r, w_y, k) if k.z_loss == 0.0 else None
        self.neg_c = torch.empty((n, 1), dtype=f32)
        self.row_sum = torch.empty((n, 1), dtype=f32)
        self.zw = torch.empty((n,), dtype=f32) if k.eps > 0.0 else None
        self.step = min(_rows_per_block(v), max(n, 1))

    def run(self) -> None:
        """Every block, on worker threads when torch has several (``kernels/cpu/threads.py``)."""
        share_blocks(self.work, -(-self.logits.shape[0] // self.step))

    def work(self, claim: Claim) -> None:
        """Process blocks ``k`` (rows ``[k * step, (k + 1) * step)``) taken from ``claim``."""
        logits, grad, softcap, w, zw, step = (
            self.logits, self.grad, self.softcap, self.w, self.zw, self.step,
        )  # fmt: skip
        n, v = logits.shape
        f32 = torch.float32
        low = logits.dtype != f32
        in_scratch = low or grad is None
        scratch = torch.empty((step, v), dtype=f32) if in_scratch else None
        tanh_buf = torch.empty((step, v), dtype=f32) if softcap is not None else None
        t = None

        while (i := next(claim) * step) < n:
            j = min(i + step, n)
            xc = logits[i:j]
            nc = self.neg_c[i:j]
            s = self.row_sum[i:j]
            # The float32 block the gradient is computed in: the gradient rows themselves for
            # float32 logits, else the scratch block, rounded into them at the end.
            out = scratch[: j - i] if in_scratch else grad[i:j]
            # (1) -C and the smoothing sum; (2) e into `out`, S.
            if softcap is None:
                src = xc
                if low:  # widen first: torch's mixed-dtype kernels are several times slower
                    out.copy_(xc)
                    src = out
                if zw is not None:
                    if w is None:
                        torch.sum(src, 1, out=zw[i:j])
                    else:
                        torch.mv(src, w, out=zw[i:j])
                torch.mul(torch.amax(src, 1, keepdim=True), -_LOG2E, out=nc)
                torch.add(nc, src, alpha=_LOG2E, out=out)
            else:
                t = tanh_buf[: j - i]
                if low:
                    t.copy_(xc)
                    t.div_(softcap)
                else:
                    torch.div(xc, softcap, out=t)
                t.tanh_()  # z' = s * t
                scale = _LOG2E * softcap
                torch.mul(torch.amax(t, 1, keepdim=True), -scale, out=nc)
                if zw is not None:
                    zc = zw[i:j]
                    if w is None:
                        torch.sum(t, 1, out=zc)
                    else:
                        torch.mv(t, w, out=zc)
                    zc.mul_(softcap)
                torch.add(nc, t, alpha=scale, out=out)
            out.exp2_()
            torch.sum(out, 1, keepdim=True, out=s)
            if grad is None:
                continue
            # (3) the gradient in place (kernels/rows.py), with e * ra / S = p * ra.
            s = s.squeeze(1)
            if self.coef is not None:
                coef = self.coef.rows(i, j)
            else:  # lse = C ln 2 + ln S
                lse = s.log() - nc.squeeze(1) * _LN2
                coef = gradient_coefficients(self.r[i:j], self.w_y[i:j], self.k, lse)
            gradient_(out, coef.ra / s, coef, self.y[i:j], weight=w, tanh=t)
            if self.skipped.numel():
                # Rows that do not count are 0 so far (times r = 0) unless their logits are not
                # finite: make them 0 whatever the logits, as the reference does.
                lo, hi = torch.searchsorted(self.skipped, torch.tensor([i, j])).tolist()
                if hi > lo:
                    out.index_fill_(0, self.skipped[lo:hi] - i, 0.0)
            if low:
                grad[i:j].copy_(out)


@dataclass(frozen=True)
class _Call:
    """One call's arguments besides the logits (validated upstream; see :func:`cross_entropy`)."""

    target: Tensor
    weight: Tensor | None
    normalizer: Tensor | None
    mask: Tensor | None
    opts: CrossEntropyOptions
    inplace: bool  #: inplace_backward
    want_z: bool  #: return_z_loss


def _forward(
    logits: Tensor, call: _Call, *, want_grad: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The reduced loss, the reduced z term (or None) and the gradient for grad_output = 1.

    ``want_grad=False`` computes no gradient (None) and leaves the logits alone, in place or not.
    """
    n, v = logits.shape
    f32 = torch.float32
    opts, weight = call.opts, call.weight
    eps, z_loss, softcap = opts.label_smoothing, opts.z_loss, opts.softcap

    # Per-row bookkeeping (losskit._reduction: which rows count, r, the 'mean' rule).
    rows = count_rows(
        call.target, ignore_index=opts.ignore_index, reduction=opts.reduction, weight=weight,
        mask=call.mask, normalizer=call.normalizer,
    )  # fmt: skip
    w = None if weight is None else weight.to(f32)
    k = Smoothing.of(eps, v, w, z_loss)
    skipped = (~rows.counted).nonzero().squeeze(1)
    # The target logit of each row, read before an in-place run overwrites the logits.
    z_y = logits.gather(1, rows.y.unsqueeze(1)).squeeze(1)

    if not want_grad:
        grad = None
    elif call.inplace:
        grad = logits
    else:
        grad = empty_rows(n, v, logits.dtype)
    blocks = _Blocks(logits, grad, rows.factor(), rows.w_y, rows.y, skipped, k, w, softcap)
    blocks.run()
    if grad is logits:
        torch.autograd.graph.increment_version(logits)

    # The loss per row from lse and the target logit, in float64 (N values: cheap).
    f64 = torch.float64
    lse = (blocks.neg_c.to(f64) * -_LN2 + blocks.row_sum.to(f64).log()).squeeze(1)
    z_y = z_y.to(f64)
    if softcap is not None:
        z_y = torch.tanh(z_y.to(f32) / softcap).to(f64) * softcap  # as the reference rounds it
    swz = None if blocks.zw is None else blocks.zw.to(f64)
    loss = row_loss(lse, z_y, swz, rows.w_y.to(f64), k)
    zterm = None
    if call.want_z:
        zterm = rows.reduce(z_loss * lse * lse, logits.dtype)
    return rows.reduce(loss, logits.dtype), zterm, grad


class CrossEntropyFunction(torch.autograd.Function):
    """Autograd node of :func:`cross_entropy`; the gradient is computed in the forward.

    The backward runs once: it hands its stored gradient to autograd (so that a leaf's ``.grad``
    takes that buffer without a copy) and raises if called again (``retain_graph=True``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        call: _Call,
        recompute: Recompute | None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        loss, zterm, grad = _forward(logits, call)
        # In the in-place case a new alias, so that autograd may adopt it as the leaf's .grad.
        ctx.grads = [grad.detach() if call.inplace else grad]
        ctx.recompute = recompute or Recompute("cross_entropy")  # no rule: create_graph raises
        if zterm is not None:
            ctx.mark_non_differentiable(zterm)
            return loss, zterm
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *unused: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return second_order(ctx, grad_loss)
        return hand_over(ctx, grad_loss, _scale, loss="CPU cross_entropy")


def _scale(grad: Tensor, grad_loss: Tensor) -> None:
    """The gradient times grad_output: one factor for every row (a reduced loss, or
    ``loss.sum()`` of the ``'none'`` vector: 1 skips the pass), or each row's own."""
    if grad_loss.dim() == 0 or grad_loss.numel() <= 1 or grad_loss.stride(0) == 0:
        scale = grad_loss.reshape(-1)[0].item() if grad_loss.numel() else 1.0
        if scale != 1.0:
            grad.mul_(scale)
    else:
        grad.mul_(grad_loss.unsqueeze(1))


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    inplace_backward: bool,
    return_z_loss: bool,
    recompute: Recompute | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy of ``(N, V)`` CPU logits and class indices, the gradient made in the forward.

    Implements ``losskit/kernels/CONTRACT.md``; the inputs arrive validated. Per row ``i`` that
    counts (``target[i] != ignore_index`` and ``mask[i]``), with ``z' = s tanh(z / s)`` under a
    softcap:

    .. math::
        \ell_i = (1-\epsilon) w_{y_i} (\mathrm{lse}_i - z'_{i,y_i})
                 + \frac{\epsilon}{V} \sum_c w_c (\mathrm{lse}_i - z'_{i,c})
                 + c\, \mathrm{lse}_i^2

    Args:
        logits: ``(N, V)`` float32 / bfloat16 / float16, unit column stride, any row stride.
        target: ``(N,)`` int64, each in ``[0, V)`` or equal to ``ignore_index``.
        weight: ``(V,)`` class weights, or None for ones.
        ignore_index: target value of rows that do not count.
        label_smoothing: ``eps`` in [0, 1].
        z_loss: coefficient ``c >= 0`` of ``lse^2``.
        softcap: ``s > 0`` or None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        normalizer: 0-dim float32 denominator for ``'mean'`` (0 gives 0), or None for the sum of
            the counted rows' target weights.
        mask: ``(N,)`` bool, True where the row counts; or None.
        inplace_backward: write the gradient into the logits' storage instead of a new buffer
            (the logits are overwritten; their version counter is bumped). Only when a gradient
            is wanted: under ``torch.no_grad`` or for logits that do not require grad, the loss
            alone is computed and the logits are left as they are.
        return_z_loss: also return the z term alone, reduced the same way (detached).
        recompute: how a ``create_graph=True`` backward recomputes a differentiable gradient
            (:class:`~losskit.kernels.recompute.Recompute`); None: such a backward raises.

    Shape:
        - logits: ``(N, V)``; target, mask: ``(N,)``.
        - Output: ``(N,)`` for ``'none'``, else ``()``.

    Returns:
        The loss in the logits' dtype, or ``(loss, z_term)`` with ``return_z_loss``.

    Example:
        >>> import torch
        >>> x, y = torch.randn(4, 10, requires_grad=True), torch.tensor([1, 2, 3, 4])
        >>> loss = cross_entropy(x, y, weight=None, ignore_index=-100, label_smoothing=0.0,
        ...                      z_loss=0.0, softcap=None, reduction="mean", normalizer=None,
        ...                      mask=None, inplace_backward=False, return_z_loss=False)
        >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(x, y)))
        True

    Equivalent to ``torch.nn.functional.cross_entropy(logits, target, weight,
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)`` when there
    is no mask, normalizer, z-loss or softcap.
    """
    opts = CrossEntropyOptions(
        reduction, ignore_index, float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap),
    )  # fmt: skip
    call = _Call(
        target, weight, normalizer, mask, opts, bool(inplace_backward), bool(return_z_loss)
    )
    if torch.is_grad_enabled() and logits.requires_grad:
        return CrossEntropyFunction.apply(logits, call, recompute)
    # No gradient wanted (evaluation): the loss alone, no gradient buffer, logits untouched.
    loss, zterm, _ = _forward(logits, call, want_grad=False)
    return (loss, zterm) if return_z_loss else loss


def cross_entropy_forward(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`cross_entropy` without autograd, for ``losskit.ops``: ``(loss, z term, gradient
    for grad_output = 1 or None)``, the logits left as they are (``kernels/CONTRACT.md`` §6)."""
    opts = CrossEntropyOptions(
        reduction, ignore_index, float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap),
    )  # fmt: skip
    call = _Call(target, weight, normalizer, mask, opts, False, True)
    return _forward(logits, call, want_grad=want_grad)
