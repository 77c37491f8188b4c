r"""Fused distillation losses in Triton: each row's loss and both logits' gradients in one launch.

The row rule is ``kernels/divergence.py``'s (its module docstring gives the math; :func:`rows_`
there is the same rule in torch ops, which the CPU backend runs): with temperature ``T``,
``s = z_s / T``, ``t = z_t / T``, ``q = softmax(s)``, ``p = softmax(t)``, ``ls = log q``,
``lt = log p``, the divergence ``K`` and, for ``c = (1 - alpha) k / T`` (``k`` the soft scale)
and ``r`` the row's gradient factor::

    loss = (1 - alpha) k K + alpha (lse(z_s) - z_{s,y})
    g_s  = r (alpha (softmax(z_s) - onehot(y)) + c dK/ds)
    g_t  = r c dK/dt

One program per row (:func:`_distill_kernel`) loops over the row in column blocks of
:data:`ROW_BLOCK` three times:

1. the online softmax of ``s`` and of ``t`` (running max and sum of exp, rescaled as the max
   grows), and of the untempered ``z_s`` for the hard cross-entropy when ``alpha > 0`` and
   ``T != 1``: each row's log-sum-exps;
2. the divergence and the row sums its gradient needs: ``K`` (forward and reverse KL), ``K_p``
   and ``K_q`` (JSD, with ``lm = log(beta p + (1 - beta) q)`` as a log-add-exp of ``lt + log
   beta`` and ``ls + log(1 - beta)``, finite where both probabilities underflow), ``K``,
   ``sum q g`` and ``sum p g`` with ``g = sign(q - p) / 2`` (total variation);
3. the gradients, block by block: each element read (student and teacher logits) before it is
   written in the same program, so ``g_s`` may be the student's logits' own storage and ``g_t``
   the teacher's (the chunked engine's buffers). Rows with ``r == 0`` get zeros without this
   pass reading their logits (they may hold anything, NaN included: their loss is left out by
   the reduction).

The divergence, whether each gradient is wanted and the hard term are ``tl.constexpr``
switches. All arithmetic is in float32 whatever the logits' dtype (float32, bfloat16, float16);
each gradient element is rounded once to its output's dtype. Row offsets are 64-bit (``N * V``
may exceed ``2**31``). Nothing here syncs with the host: the backward scales the stored
gradients with :func:`~.common.scale_grad`, which skips a ``grad_output`` of exactly 1 on the
device.

Equivalent to :func:`losskit.functional.distillation.reference_distillation` (the student's
gradient, and the teacher's when its logits require one).
"""

# No `from __future__ import annotations` here: triton 3.0 reads `tl.constexpr` from the
# kernels' annotations as objects, and string annotations make it treat them as runtime values.
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._validate.distillation import DistillationOptions
from .. import divergence
from ..divergence import run_distillation, soft_factor
from ..recompute import Recompute
from .common import check_device, device_guard, load_logits, online_block, scale_grad

__all__ = ["ROW_BLOCK", "blocks_", "distillation", "distillation_forward", "scale_"]

#: Columns per loop step of the row kernel (a power of two; shorter rows take the next power of
#: two of ``V``), spread over :func:`_warps` warps.
ROW_BLOCK = 2048

#: The kernel's ``KIND`` for each :attr:`DistillationOptions.kind`.
KINDS = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2, "tvd": 3}

_F32 = torch.float32


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------


@triton.jit
def _log1p(x):
    """``log(1 + x)`` for ``x >= 0`` without losing ``x`` to the rounding of ``1 + x``: the
    rounding error of ``u = 1 + x`` cancels in ``log(u) * x / (u - 1)`` (``u - 1`` is exact)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _log_mix(ls, lt, log_beta, log_1mb):
    """``lm = log(beta p + (1 - beta) q)`` from the log-probabilities, as a log-add-exp."""
    a = lt + log_beta
    b = ls + log_1mb
    hi = tl.maximum(a, b)
    return hi + _log1p(tl.exp(tl.minimum(a, b) - hi))


@triton.jit
def _log_probs(zs_ptrs, zt_ptrs, ok, inv_t, m_s, l_s, m_t, l_t, TEMPERED: tl.constexpr):
    """A block of both rows: the raw student logits as float32 and the log-probabilities
    ``ls = (s - m_s) - l_s``, ``lt = (t - m_t) - l_t`` at temperature ``1 / inv_t`` (``m`` the
    row's max, ``l`` the log of its sum of ``exp(. - m)``: ``s - m`` is exact near the max, where
    ``s - lse`` would round ``lse`` first), all finite outside ``ok``: every use either masks
    them out of its sums or leaves them unstored."""
    zs = tl.load(zs_ptrs, mask=ok, other=0.0).to(tl.float32)
    zt = tl.load(zt_ptrs, mask=ok, other=0.0).to(tl.float32)
    if TEMPERED:
        ls = (zs * inv_t - m_s) - l_s
        lt = (zt * inv_t - m_t) - l_t
    else:
        ls = (zs - m_s) - l_s
        lt = (zt - m_t) - l_t
    return zs, ls, lt


@triton.jit
def _distill_kernel(
    ZS, stride_zs, ZT, stride_zt, GS, stride_gs, GT, stride_gt, Y, R, LOSS,
    V, inv_t, alpha, soft_coef, c, beta, log_beta, log_1mb,
    BLOCK: tl.constexpr,
    KIND: tl.constexpr,  # 0 forward KL, 1 reverse KL, 2 JSD (0 < beta < 1), 3 total variation
    TEMPERED: tl.constexpr,  # T != 1
    HARD: tl.constexpr,  # alpha > 0: the hard cross-entropy on the untempered student logits
    STORE_S: tl.constexpr, STORE_T: tl.constexpr,  # write g_s into GS, g_t into GT
):  # fmt: skip
    """One program per row: its loss into ``LOSS`` and its gradients (module docstring)."""
    row = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    zs_row = ZS + row * stride_zs
    zt_row = ZT + row * stride_zt

    # Step 1. Online softmax of s, t (and of the untempered z_s for the hard term when T != 1).
    # The running max starts finite, so that a block of -inf logits (a teacher's log-probs of
    # impossible tokens) leaves the sums at 0 instead of making them NaN.
    m_s = -3.0e38
    se_s = 0.0
    m_t = -3.0e38
    se_t = 0.0
    m_0 = -3.0e38
    se_0 = 0.0
    for start in range(0, V, BLOCK):
        cols = start + lane
        ok = cols < V
        zs, _dz = load_logits(zs_row + cols, ok, 1.0, 1.0, False, False)
        zt, _dz = load_logits(zt_row + cols, ok, 1.0, 1.0, False, False)
        if TEMPERED:
            if HARD:
                m_0, se_0, _sw = online_block(m_0, se_0, 0.0, zs, ok, ZS, False, False)
            zs = zs * inv_t
            zt = zt * inv_t
        m_s, se_s, _sw = online_block(m_s, se_s, 0.0, zs, ok, ZS, False, False)
        m_t, se_t, _sw = online_block(m_t, se_t, 0.0, zt, ok, ZT, False, False)
    l_s = tl.log(se_s)  # lse = m + l, kept apart (see _log_probs)
    l_t = tl.log(se_t)
    if HARD:
        if TEMPERED:
            l_0 = tl.log(se_0)
        else:
            m_0 = m_s
            l_0 = l_s
        y = tl.load(Y + row)  # 0 where the row does not count: safe to read
        hard = (m_0 - tl.load(zs_row + y).to(tl.float32)) + l_0

    # Step 2. The divergence and the row sums of its gradient (second read).
    acc0 = 0.0  # K (KL), K_p (JSD), sum |q - p| (TVD)
    acc1 = 0.0  # K_q (JSD), sum q g (TVD)
    acc2 = 0.0  # sum p g (TVD)
    for start in range(0, V, BLOCK):
        cols = start + lane
        ok = cols < V
        zs, ls, lt = _log_probs(
            zs_row + cols, zt_row + cols, ok, inv_t, m_s, l_s, m_t, l_t, TEMPERED
        )
        q = tl.exp(ls)
        p = tl.exp(lt)
        if KIND == 0:
            acc0 += tl.sum(tl.where(ok, p * (lt - ls), 0.0), 0)
        elif KIND == 1:
            acc0 += tl.sum(tl.where(ok, q * (ls - lt), 0.0), 0)
        elif KIND == 2:
            lm = _log_mix(ls, lt, log_beta, log_1mb)
            acc0 += tl.sum(tl.where(ok, p * (lt - lm), 0.0), 0)
            acc1 += tl.sum(tl.where(ok, q * (ls - lm), 0.0), 0)
        else:
            d = tl.where(ok, q - p, 0.0)
            g = tl.where(d > 0.0, 0.5, tl.where(d < 0.0, -0.5, 0.0))  # sign(q - p) / 2
            acc0 += tl.sum(tl.abs(d), 0)
            acc1 += tl.sum(tl.where(ok, q * g, 0.0), 0)
            acc2 += tl.sum(tl.where(ok, p * g, 0.0), 0)
    if KIND == 2:
        k = beta * acc0 + (1.0 - beta) * acc1
    elif KIND == 3:
        k = 0.5 * acc0
    else:
        k = acc0
    loss = soft_coef * k
    if HARD:
        loss += alpha * hard
    tl.store(LOSS + row, loss)

    # Step 3. The gradients, block by block (third read; each element read before written).
    if STORE_S or STORE_T:
        r = tl.load(R + row)
        gs_row = GS + row * stride_gs
        gt_row = GT + row * stride_gt
        if r != 0.0:
            cr = c * r
            if HARD:
                y_lane = y.to(tl.int32)  # the target's column, compared with 32-bit columns
            for start in range(0, V, BLOCK):
                cols = start + lane
                ok = cols < V
                zs, ls, lt = _log_probs(
                    zs_row + cols, zt_row + cols, ok, inv_t, m_s, l_s, m_t, l_t, TEMPERED
                )
                q = tl.exp(ls)
                p = tl.exp(lt)
                if KIND == 2:
                    lm = _log_mix(ls, lt, log_beta, log_1mb)
                if KIND == 3:
                    d = q - p
                    g = tl.where(d > 0.0, 0.5, tl.where(d < 0.0, -0.5, 0.0))
                if STORE_S:
                    if KIND == 0:
                        ds = q - p
                    elif KIND == 1:
                        ds = q * (ls - lt - k)
                    elif KIND == 2:
                        ds = (1.0 - beta) * q * (ls - lm - acc1)
                    else:
                        ds = q * (g - acc1)
                    gs = ds * c
                    if HARD:
                        if TEMPERED:
                            soft_0 = tl.exp((zs - m_0) - l_0)
                        else:
                            soft_0 = q
                        gs += alpha * soft_0 - tl.where(cols == y_lane, alpha, 0.0)
                    gs = gs * r
                    tl.store(gs_row + cols, gs.to(GS.dtype.element_ty), mask=ok)
                if STORE_T:
                    if KIND == 0:
                        dt = p * (lt - ls - k)
                    elif KIND == 1:
                        dt = p - q
                    elif KIND == 2:
                        dt = beta * p * (lt - lm - acc0)
                    else:
                        dt = p * (acc2 - g)
                    gt = dt * cr
                    tl.store(gt_row + cols, gt.to(GT.dtype.element_ty), mask=ok)
        else:
            # A row that does not count: zero gradients, its logits unread.
            for start in range(0, V, BLOCK):
                cols = start + lane
                ok = cols < V
                if STORE_S:
                    tl.store(gs_row + cols, tl.zeros([BLOCK], dtype=GS.dtype.element_ty), mask=ok)
                if STORE_T:
                    tl.store(gt_row + cols, tl.zeros([BLOCK], dtype=GT.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _warps(block: int) -> int:
    """8 float32 values per thread and block: the third pass holds several blocks at once (both
    logits, log-probabilities and probabilities, the gradients), so :func:`~.common.warps`'s 32
    per thread (the cross-entropy's one block) would not fit. Compiled for sm_90 (triton 3.9),
    every variant takes at most 80 registers at 2048 columns and 8 warps, without spills (3
    programs per SM); 4096 columns and 4 warps take up to 255."""
    return max(1, min(8, block // 256))


def blocks_(
    zs: Tensor,
    zt: Tensor,
    y: Tensor | None,
    r: Tensor,
    opts: DistillationOptions,
    loss_out: Tensor,
    gs: Tensor | None,
    gt: Tensor | None,
) -> None:
    """Row losses into ``loss_out`` and the gradients ``r dloss/dz`` into ``gs`` and ``gt``.

    The contract of :func:`losskit.kernels.cpu.distillation.blocks_`: ``zs``, ``zt``: ``(R, V)``
    logits (float32 / bfloat16 / float16, rows contiguous, any row stride), read only; ``gs``,
    ``gt``: ``(R, V)`` outputs or None (not wanted); each may be its logits' own storage (the
    chunked engine's buffers), then overwritten in place. ``y``: int64 targets, 0 where a row
    does not count, or None (read with ``alpha > 0``); ``r``: float32 ``(R,)`` gradient factors
    (0 where a row does not count: its gradients are 0). ``loss_out``: float32 ``(R,)``, each
    row's unreduced loss. One launch, no host sync.
    """
    n, v = zs.shape
    if n == 0:
        return
    check_device(zs.device, "student logits")
    if v == 0:
        loss_out.zero_()  # no classes: both distributions empty, K = 0
        return
    kind = opts.kind
    beta = opts.beta if kind == "jsd" else 0.5  # read by the JSD only, where 0 < beta < 1
    hard = opts.alpha > 0.0
    r = r.contiguous()
    y_arg = y.contiguous() if hard else r
    g_s = zs if gs is None else gs
    g_t = zt if gt is None else gt
    block = min(ROW_BLOCK, triton.next_power_of_2(v))
    with device_guard(zs.device):
        _distill_kernel[(n,)](
            zs, zs.stride(0), zt, zt.stride(0), g_s, g_s.stride(0), g_t, g_t.stride(0),
            y_arg, r, loss_out, v, 1.0 / opts.temperature, opts.alpha,
            (1.0 - opts.alpha) * opts.soft_scale, soft_factor(opts), beta, math.log(beta),
            math.log1p(-beta),
            BLOCK=block, KIND=KINDS[kind], TEMPERED=opts.temperature != 1.0, HARD=hard,
            STORE_S=gs is not None, STORE_T=gt is not None, num_warps=_warps(block),
        )  # fmt: skip


def scale_(t: Tensor, grad_output: Tensor) -> None:
    """``t *= grad_output`` (a one-element tensor) for a 2-D ``t``, on the device: skipped there
    when it is exactly 1 (no host sync)."""
    scale_grad(t, grad_output.reshape(1).to(_F32), False)


def _empty(n: int, v: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty((n, v), dtype=dtype, device=device)


def distillation(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    recompute: Recompute | None = None,
) -> Tensor:
    r"""The fused distillation loss of validated ``(N, V)`` CUDA logits (rows contiguous).

    .. math::
        \ell_i = \alpha\, \mathrm{CE}(z_{s,i}, y_i) + (1 - \alpha)\, k\, K(p_i, q_i)

    Args:
        student: ``(N, V)`` float32/bfloat16/float16 student logits.
        teacher: the teacher's logits, the same shape, dtype and device.
        target: ``(N,)`` int64 hard labels or None (``ignore_index`` where a row does not
            count).
        opts: the checked options. mask: ``(N,)`` bool or None. normalizer: 0-dim float32 or
            None.
        recompute: the ``create_graph=True`` rule, or None (such a backward raises).

    Gradients flow to whichever of ``student`` and ``teacher`` requires one; both are computed
    in the forward and scaled by ``grad_output`` in the backward.

    Shape:
        Output ``(N,)`` for ``'none'``, else ``()``, in the logits' dtype.

    Equivalent to :func:`losskit.functional.distillation.reference_distillation`.
    """
    check_device(student.device, "student logits")
    return run_distillation(
        student, teacher, target, opts=opts, mask=mask, normalizer=normalizer,
        recompute=recompute, blocks=blocks_, scale=scale_, empty=_empty,
    )  # fmt: skip


def distillation_forward(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    want: tuple[bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`distillation` without autograd, for ``losskit.ops``: the loss and the wanted
    gradients of ``(student, teacher)`` for grad_output = 1 (``kernels/CONTRACT.md`` §6)."""
    return divergence.distillation_forward(
        student, teacher, target, opts=opts, mask=mask, normalizer=normalizer, want=want,
        blocks=blocks_, empty=_empty,
    )  # fmt: skip
