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

Threads: with torch's OpenMP backend and ``torch.get_num_threads() == T > 1``, the blocks go to
T worker threads (taking blocks in turn), each running its ops on one thread, instead of running
every op on T threads. The results agree up to float rounding and the speed is the same on an
idle machine; but when other processes compete for the cores, per-op parallelism waits at the
end of every op for its slowest thread (several hundred times per call): on a loaded 2-core
machine it ran 1.1-2.5x slower than torch eager, the worker threads about 3x faster than torch
eager. A worker sets its own thread count once with ``torch.set_num_threads(1)``, which also
changes torch's process-wide default; the caller restores that at once.

Memory: on Linux, gradients of 64 MiB and more come from a private mapping advised as huge pages.
A fresh ``torch.empty`` buffer costs a page fault per 4 KiB at its first write, which at
N=4096, V=32000 took longer than all the arithmetic; set ``LOSSKIT_CPU_HUGEPAGES=0`` to use
``torch.empty`` instead.

Equivalent to (for ``mask=None``, ``z_loss=0``, ``softcap=None``, no normalizer)::

    torch.nn.functional.cross_entropy(logits, target, weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing)
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from ..recompute import Recompute

__all__ = ["CHUNK_BYTES", "CrossEntropyFunction", "cross_entropy", "empty_rows", "mapped_empty"]

#: float32 bytes per block of rows. On a 2-core EPYC (1 MiB L2 per core, 32 MiB L3) 4-8 MiB was
#: fastest: smaller blocks pay more per-op overhead, larger ones fall out of the caches.
CHUNK_BYTES = 4 << 20

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
_HUGE_PAGE = 2 << 20
_HUGE_PAGE_MIN_BYTES = 64 << 20


def _use_hugepages() -> bool:
    return os.environ.get("LOSSKIT_CPU_HUGEPAGES", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE")


def empty_rows(n: int, v: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised contiguous ``(n, v)`` CPU tensor, huge-page backed when it is large.

    The memory is a private anonymous mapping, aligned to 2 MiB and advised as huge pages, so the
    first writes fault once per 2 MiB instead of once per 4 KiB; it is unmapped when the tensor's
    storage is freed. Falls back to ``torch.empty`` where that is not available.
    """
    nbytes = n * v * torch.empty((), dtype=dtype).element_size()
    if nbytes >= _HUGE_PAGE_MIN_BYTES and _use_hugepages():
        mapped = mapped_empty(nbytes, dtype, hugepages=True)
        if mapped is not None:
            return mapped.view(n, v)
    return torch.empty((n, v), dtype=dtype)


def mapped_empty(nbytes: int, dtype: torch.dtype, *, hugepages: bool) -> Tensor | None:
    """A flat uninitialised CPU tensor of ``nbytes`` in a private anonymous mapping of its own.

    Aligned to 2 MiB (and advised as huge pages with ``hugepages``); unmapped when the tensor's
    storage is freed. None where such a mapping cannot be made.
    """
    try:
        area = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hugepages:
            area.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return None
    raw = torch.frombuffer(area, dtype=torch.uint8)  # the tensor keeps `area` alive
    start = (-raw.data_ptr()) % _HUGE_PAGE
    return raw[start : start + nbytes].view(dtype)


def _rows_per_block(v: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(v, 1)))


@dataclass
class _Rows:
    """Per-row inputs of the block loop, all float32 ``(N, 1)`` unless noted."""

    ra0: Tensor  # r * ((1 - eps) w_y + (eps / V) sum(w))
    neg_rb: Tensor  # -r * (1 - eps) w_y
    neg_rs: Tensor | None  # -r * eps / V (label smoothing only)
    r2z: Tensor | None  # r * 2 z_loss (z-loss only)
    y: Tensor  # int64 target, 0 where the row does not count
    neg_c: Tensor  # out: -C
    row_sum: Tensor  # out: S
    zw: Tensor | None  # out, (N,): sum_c w_c z'_c (label smoothing only)
    skipped: Tensor  # (K,) int64, ascending: the rows that do not count


def _gradient_blocks(
    logits: Tensor, grad: Tensor | None, rows: _Rows, w: Tensor | None, softcap: float | None
) -> None:
    """Steps 1-3 of the module docstring for every block of rows; fills neg_c, row_sum, zw.

    ``grad=None`` runs steps 1-2 only, in a scratch block: the loss without its gradient.

    With more than one torch thread, the blocks are shared out to as many worker threads, each
    running its ops on one thread (see the module docstring).
    """
    n, v = logits.shape
    step = min(_rows_per_block(v), max(n, 1))
    blocks = -(-n // step)
    workers = min(torch.get_num_threads(), blocks) if _openmp_backend() else 1
    claim = _Claim()  # the workers take blocks in turn
    if workers <= 1:
        _blocks(logits, grad, rows, w, softcap, step, claim)
        return
    inference = torch.is_inference_mode_enabled()
    pool = _worker_pool(workers)
    jobs = [
        pool.submit(_in_worker, inference, logits, grad, rows, w, softcap, step, claim)
        for _ in range(workers)
    ]
    first_use = [job.result() for job in jobs]
    if any(first_use):  # a new worker set torch's process-wide thread count: restore it
        torch.set_num_threads(torch.get_num_threads())


@functools.cache
def _openmp_backend() -> bool:
    """Whether torch's intra-op threads are OpenMP's, whose thread count is per calling thread.

    (The worker scheme relies on that; with another backend every op stays parallel instead.)
    """
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class _Claim:
    """Hands out 0, 1, 2, ... to any number of threads, each number once."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def __next__(self) -> int:
        with self._lock:
            k = self._next
            self._next += 1
        return k


_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)
_pool_lock = threading.Lock()
_worker_state = threading.local()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers`` threads (a new one after fork or for another size)."""
    global _pool, _pool_key
    with _pool_lock:
        key = (os.getpid(), workers)
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="losskit-cpu-ce")
            _pool_key = key
        return _pool


def _in_worker(inference: bool, *args: object) -> bool:
    """Run :func:`_blocks` in a pool thread; True when this thread was set up just now."""
    first_use = not getattr(_worker_state, "single_threaded", False)
    if first_use:
        # This thread's ops run on it alone. torch.set_num_threads sets the calling thread's
        # OpenMP thread count and a process-wide default, which the caller restores.
        torch.set_num_threads(1)
        _worker_state.single_threaded = True
    with torch.inference_mode(inference), torch.no_grad():
        _blocks(*args)  # type: ignore[arg-type]
    return first_use


def _blocks(
    logits: Tensor,
    grad: Tensor | None,
    rows: _Rows,
    w: Tensor | None,
    softcap: float | None,
    step: int,
    claim: _Claim,
) -> None:
    """Process blocks ``k`` (rows ``[k * step, (k + 1) * step)``) taken from ``claim``."""
    n, v = logits.shape
    f32 = torch.float32
    low = logits.dtype != f32
    in_scratch = low or grad is None
    scratch = torch.empty((step, v), dtype=f32) if in_scratch else None
    tanh_buf = torch.empty((step, v), dtype=f32) if softcap is not None else None
    zw = rows.zw

    while (i := next(claim) * step) < n:
        j = min(i + step, n)
        xc = logits[i:j]
        nc = rows.neg_c[i:j]
        s = rows.row_sum[i:j]
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
        # (3) r * (a * e / S - b * onehot(y) - eps/V * w), in place.
        if rows.r2z is None:
            alpha = rows.ra0[i:j] / s
        else:
            alpha = (rows.ra0[i:j] + rows.r2z[i:j] * (s.log() - nc * _LN2)).div_(s)
        if rows.neg_rs is not None and w is None:
            torch.addcmul(rows.neg_rs[i:j], out, alpha, out=out)
        else:
            out.mul_(alpha)
            if rows.neg_rs is not None:
                out.addr_(rows.neg_rs[i:j].squeeze(1), w)
        out.scatter_add_(1, rows.y[i:j], rows.neg_rb[i:j])
        if softcap is not None:
            t.square_()
            out.addcmul_(out, t, value=-1.0)  # times d z'/d z = 1 - tanh^2
        if rows.skipped.numel():
            # Rows that do not count are 0 so far (times r = 0) unless their logits are not
            # finite: make them 0 whatever the logits, as the reference does.
            lo, hi = torch.searchsorted(rows.skipped, torch.tensor([i, j])).tolist()
            if hi > lo:
                out.index_fill_(0, rows.skipped[lo:hi] - i, 0.0)
        if low:
            grad[i:j].copy_(out)


def _forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    inplace: bool,
    want_z: bool,
    want_grad: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The reduced loss, the reduced z term (or None) and the gradient for grad_output = 1.

    ``want_grad=False`` computes no gradient (None) and leaves the logits alone, in place or not.
    """
    n, v = logits.shape
    f32 = torch.float32

    # Per-row bookkeeping.
    counted = target != ignore_index
    if mask is not None:
        counted = counted & mask
    y = torch.where(counted, target, 0)
    if weight is None:
        w = None
        w_y = counted.to(f32)
        w_sum: float | Tensor = float(v)
    else:
        w = weight.to(f32)
        w_y = torch.where(counted, w.index_select(0, y), 0.0)
        w_sum = w.sum()
    if reduction == "mean":
        if normalizer is not None:
            denominator = normalizer.to(f32)
            inv = torch.where(denominator == 0, 0.0, 1.0 / denominator)
        else:
            denominator = w_y.sum()
            inv = 1.0 / denominator
        r = torch.where(counted, inv, 0.0)
    else:
        r = counted.to(f32)
    rows = _Rows(
        ra0=(r * ((1.0 - eps) * w_y + (eps / v) * w_sum)).unsqueeze(1),
        neg_rb=(r * (eps - 1.0) * w_y).unsqueeze(1),
        neg_rs=(r * (-eps / v)).unsqueeze(1) if eps > 0.0 else None,
        r2z=(r * (2.0 * z_loss)).unsqueeze(1) if z_loss > 0.0 else None,
        y=y.unsqueeze(1),
        neg_c=torch.empty((n, 1), dtype=f32),
        row_sum=torch.empty((n, 1), dtype=f32),
        zw=torch.empty((n,), dtype=f32) if eps > 0.0 else None,
        skipped=(~counted).nonzero().squeeze(1),
    )
    # The target logit of each row, read before an in-place run overwrites the logits.
    z_y = logits.gather(1, rows.y).squeeze(1)

    if not want_grad:
        grad = None
    elif inplace:
        grad = logits
    else:
        grad = empty_rows(n, v, logits.dtype)
    _gradient_blocks(logits, grad, rows, w, softcap)
    if grad is logits:
        torch.autograd.graph.increment_version(logits)

    # The loss per row from lse and the target logit, in float64 (N values: cheap).
    f64 = torch.float64
    lse = (rows.neg_c.to(f64) * -_LN2 + rows.row_sum.to(f64).log()).squeeze(1)
    z_y = z_y.to(f64)
    if softcap is not None:
        z_y = torch.tanh(z_y.to(f32) / softcap).to(f64) * softcap  # as the reference rounds it
    loss = (1.0 - eps) * w_y.to(f64) * (lse - z_y)
    if rows.zw is not None:
        loss = loss + (eps / v) * (w_sum * lse - rows.zw.to(f64))
    zrows = None
    if z_loss > 0.0 or want_z:
        zrows = z_loss * lse * lse
        loss = loss + zrows

    def reduce(values: Tensor) -> Tensor:
        values = torch.where(counted, values, 0.0)
        if reduction == "none":
            return values.to(logits.dtype)
        total = values.sum()
        if reduction == "mean":
            total = total * inv if normalizer is not None else total / denominator
        return total.to(logits.dtype)

    return reduce(loss), (reduce(zrows) if want_z else None), grad


class CrossEntropyFunction(torch.autograd.Function):
    """Autograd node of :func:`cross_entropy`; the gradient is computed in the forward.

    The backward runs once: it hands its stored gradient to autograd (so that a leaf's ``.grad``
    takes that buffer without a copy) and raises if called again (``retain_graph=True``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        target: Tensor,
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
        recompute: Recompute | None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        loss, zterm, grad = _forward(
            logits,
            target,
            weight,
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            reduction,
            normalizer,
            mask,
            inplace_backward,
            return_z_loss,
        )
        # In the in-place case a new alias, so that autograd may adopt it as the leaf's .grad.
        ctx.grad = grad.detach() if inplace_backward else grad
        ctx.recompute = recompute or Recompute("cross_entropy")  # no rule: create_graph raises
        if zterm is not None:
            ctx.mark_non_differentiable(zterm)
            return loss, zterm
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *unused: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            ctx.grad = None
            return ctx.recompute.gradients(grad_loss, ctx.needs_input_grad)
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "losskit's fused CPU cross_entropy hands its gradient buffer to autograd, so it "
                "can run backward only once; use impl='reference' to backpropagate twice through "
                "the same graph (retain_graph=True)"
            )
        ctx.grad = None  # our reference would make autograd copy the buffer into .grad
        ctx.recompute.release()
        if grad_loss.dim() == 0 or grad_loss.numel() <= 1 or grad_loss.stride(0) == 0:
            # One value for every row: a reduced loss, or loss.sum() of the 'none' vector.
            scale = grad_loss.reshape(-1)[0].item() if grad_loss.numel() else 1.0
            if scale != 1.0:
                grad.mul_(scale)
        else:
            grad.mul_(grad_loss.unsqueeze(1))
        return (grad,) + (None,) * 12


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
    args = (
        logits,
        target,
        weight,
        ignore_index,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        reduction,
        normalizer,
        mask,
        bool(inplace_backward),
        bool(return_z_loss),
    )
    if torch.is_grad_enabled() and logits.requires_grad:
        return CrossEntropyFunction.apply(*args, recompute)
    # No gradient wanted (evaluation): the loss alone, no gradient buffer, logits untouched.
    loss, zterm, _ = _forward(*args, want_grad=False)
    return (loss, zterm) if return_z_loss else loss
