"""Fused cross-entropy in Triton: loss and gradient in one pass over the logits.

The forward reads the logits, computes the per-row loss *and* the gradient of the reduced loss
(scaled by the ``'mean'`` denominator ``1/D``, computed on the device before the launch), and
keeps the gradient for the backward, which only multiplies it by ``grad_output`` in place: per
row for ``'none'``, and for a scalar loss not at all when ``grad_output`` is exactly 1 (decided on
the device by a small persistent kernel: no host sync, no pass over the gradient). A
``grad_output`` other than 1 rescales the already-rounded gradient, a second rounding in
bfloat16/float16 (within two rounding steps of the float32 result).

Per row ``i`` (it *counts* when ``target[i] != ignore_index`` and ``mask[i]``), with
``z' = s * tanh(z / s)`` under a softcap (else ``z``), ``lse = logsumexp(z')``, ``p = softmax(z')``,
``w`` the class weights (ones if None), ``eps`` the label smoothing and ``y = target[i]``::

    loss_i = (1 - eps) w_y (lse - z'_y) + (eps / V) sum_c w_c (lse - z'_c) + z_loss lse^2
    dloss_i / dz'_c = p_c a - (1 - eps) w_y [c == y] - (eps / V) w_c,
        a = (1 - eps) w_y + (eps / V) sum_c w_c + 2 z_loss lse
    dz'_c / dz_c = 1 - tanh^2(z_c / s)

(the device functions that compute these lines, shared with the linear cross-entropy's kernels,
are in ``common.py``; which rows count and what ``'mean'`` divides by come from
:func:`losskit._reduction.count_rows`.)

Four launch plans compute exactly these numbers, one program per row or ``S`` cooperating
programs per row (``plans.py`` describes them and :func:`~.plans.make_plan` chooses one):
``_ce_chunk_kernel`` runs ``single``, ``coop`` and ``split``, ``_ce_rowloop_kernel`` runs
``rowloop``.

All arithmetic is in float32 whatever the logits dtype; the gradient is rounded once, to the
logits dtype. Row offsets are 64-bit (``N * V`` may exceed ``2**31``).

Equivalent to (for ``mask=None``, ``z_loss=0``, ``softcap=None``, no normalizer)::

    torch.nn.functional.cross_entropy(logits, target, weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing)
"""

# No `from __future__ import annotations` here: triton 3.0 reads `tl.constexpr` from the
# kernels' annotations as objects, and string annotations make it treat them as runtime values.
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._reduction import count_rows
from ..._validate import CrossEntropyOptions
from ..recompute import Recompute, hand_over, second_order
from .common import (
    INTERPRETED,
    check_device,
    device_guard,
    grad_block,
    increment_version,
    load_logits,
    online_block,
    row_terms,
    scale_grad,
    softcap_args,
)
from .plans import DEFAULT_PLAN, Plan, make_plan

__all__ = [
    "CrossEntropyFunction",
    "INTERPRETED",
    "cross_entropy",
    "cross_entropy_forward",
    "cross_entropy_with_plan",
    "launch",
]

# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _ce_chunk_kernel(
    X, stride_x, G, stride_g, T, W, MASK, LOSS, ZROW, SCALE, WSUM, PART, SYNC,
    V, CW, ignore_index, one_minus_eps, eps_over_v, z_coef, softcap, inv_softcap,
    S: tl.constexpr,  # chunks (programs) per row; 1 = the whole row in one program
    SP2: tl.constexpr,  # next power of two >= S
    BLOCK: tl.constexpr,  # elements held per program (power of two >= CW)
    MODE: tl.constexpr,  # 0: fused (spin when S > 1), 1: partials only, 2: merge + gradient
    HAS_WEIGHT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_SMOOTH: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr,
    STORE_GRAD: tl.constexpr, STORE_Z: tl.constexpr,
):  # fmt: skip
    """Chunk ``j`` of row ``i`` held in registers (plans single/coop/split: module docstring)."""
    # Step 0. Which (row, chunk): a ticket in start order for the cooperative spin, else the pid.
    if MODE == 0 and S > 1:
        ticket = tl.atomic_add(SYNC, 1, sem="relaxed")
    else:
        ticket = tl.program_id(0)
    row = (ticket // S).to(tl.int64)
    j = ticket % S
    y = tl.load(T + row)
    counted = y != ignore_index
    if HAS_MASK:
        counted = counted & (tl.load(MASK + row) != 0)
    # Lanes are 32-bit offsets from the chunk's first column c0; the bound is one scalar (a
    # per-lane column index or an `if` on j around the stores cost ~40 registers per thread).
    c0 = j * CW
    lane = tl.arange(0, BLOCK)
    ok = lane < tl.minimum(CW, V - c0)
    x_chunk = X + row * stride_x + c0

    if counted:
        y_lane = (y - c0).to(tl.int32)  # the target's lane in this chunk (may be outside)
        # Step 1. Read this chunk of the row once, into registers, as float32 z'.
        z, dz = load_logits(x_chunk + lane, ok, softcap, inv_softcap, HAS_SOFTCAP, MODE == 0)
        if HAS_WEIGHT and HAS_SMOOTH:
            w = tl.load(W + c0 + lane, mask=ok, other=0.0)
        else:
            w = 1.0

        # Step 2. Online-softmax partials of the chunk: max, sum of exp, target logit, sum w z'.
        if MODE != 2:
            m_j = tl.maximum(tl.max(z, 0), -3.0e38)  # finite even for an all -inf chunk
            se_j = tl.sum(tl.exp(z - m_j), 0)
            # the target logit, read directly by the chunk that owns it (a where-sum over the
            # held block would cost ~20 more registers per thread)
            owns_y = (y_lane >= 0) & (y_lane < CW)
            zy_j, _dzy = load_logits(
                x_chunk + y_lane, owns_y, softcap, inv_softcap, HAS_SOFTCAP, False
            )
            zy_j = tl.where(owns_y, zy_j, 0.0)
            if HAS_SMOOTH:
                swz_j = tl.sum(tl.where(ok, z, 0.0) * w, 0)
            else:
                swz_j = 0.0

        # Step 3. Merge the chunks of the row into lse (exchange through PART when S > 1).
        if S == 1:
            lse = m_j + tl.log(se_j)
            zy = zy_j
            swz = swz_j
        else:
            part = PART + row * (4 * S)
            if MODE != 2:
                tl.store(part + j, m_j)
                tl.store(part + S + j, se_j)
                tl.store(part + 2 * S + j, zy_j)
                if HAS_SMOOTH:
                    tl.store(part + 3 * S + j, swz_j)
            if MODE == 0:
                # Publish (release: the stores above become visible before the count does),
                # then wait for the row's other S - 1 chunks (acquire: their stores are visible
                # to the loads below once their counts are).
                tl.debug_barrier()
                arrived = tl.atomic_add(SYNC + 1 + row, 1, sem="acq_rel") + 1
                while arrived < S:
                    arrived = tl.atomic_add(SYNC + 1 + row, 0, sem="acquire")
            if MODE != 1:
                js = tl.arange(0, SP2)
                jok = js < S
                # .cg: read at L2, where the other programs' stores went, never a stale L1 line
                m_all = tl.load(part + js, mask=jok, other=-3.0e38, cache_modifier=".cg")
                se_all = tl.load(part + S + js, mask=jok, other=0.0, cache_modifier=".cg")
                zy_all = tl.load(part + 2 * S + js, mask=jok, other=0.0, cache_modifier=".cg")
                m = tl.max(m_all, 0)
                lse = m + tl.log(tl.sum(se_all * tl.exp(m_all - m), 0))
                zy = tl.sum(zy_all, 0)
                if HAS_SMOOTH:
                    swz_all = tl.load(part + 3 * S + js, mask=jok, other=0.0, cache_modifier=".cg")
                    swz = tl.sum(swz_all, 0)
                else:
                    swz = 0.0

        # Step 4. Row loss (chunk 0 writes it) and the gradient chunk from the held registers.
        if MODE != 1:
            loss, zterm, a, b = row_terms(
                lse, zy, swz, W, WSUM, y, V, one_minus_eps, eps_over_v, z_coef,
                HAS_WEIGHT, HAS_SMOOTH, HAS_Z,
            )  # fmt: skip
            tl.store(LOSS + row, loss, mask=j == 0)
            if STORE_Z:
                tl.store(ZROW + row, zterm, mask=j == 0)
            if STORE_GRAD:
                if HAS_SCALE:
                    scale = tl.load(SCALE)
                else:
                    scale = 1.0
                g = grad_block(
                    z, dz, lane, y_lane, lse, a, b, w, eps_over_v, scale, HAS_SMOOTH, HAS_SOFTCAP
                )
                tl.store(G + row * stride_g + c0 + lane, g.to(G.dtype.element_ty), mask=ok)
    else:
        # A row that does not count: zero loss, zero gradient, no read of the logits.
        if MODE != 1:
            if STORE_GRAD:
                zero = tl.zeros([BLOCK], dtype=G.dtype.element_ty)
                tl.store(G + row * stride_g + c0 + lane, zero, mask=ok)
            tl.store(LOSS + row, 0.0, mask=j == 0)
            if STORE_Z:
                tl.store(ZROW + row, 0.0, mask=j == 0)


@triton.jit
def _ce_rowloop_kernel(
    X, stride_x, G, stride_g, T, W, MASK, LOSS, ZROW, SCALE, WSUM,
    V, ignore_index, one_minus_eps, eps_over_v, z_coef, softcap, inv_softcap,
    BLOCK: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_SMOOTH: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr,
    STORE_GRAD: tl.constexpr, STORE_Z: tl.constexpr,
):  # fmt: skip
    """One program per row, two reads of the row: online softmax, then the gradient."""
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(T + row)
    counted = y != ignore_index
    if HAS_MASK:
        counted = counted & (tl.load(MASK + row) != 0)
    lane = tl.arange(0, BLOCK)
    x_row = X + row * stride_x
    g_row = G + row * stride_g

    if counted:
        # Step 1. Online softmax over the row, block by block (first read): running max m and
        # sum of exp(z' - m), rescaled whenever m grows; plus sum w z' for label smoothing.
        m = float("-inf")
        se = 0.0
        swz = 0.0
        for start in range(0, V, BLOCK):
            cols = start + lane
            ok = cols < V
            z, dz = load_logits(x_row + cols, ok, softcap, inv_softcap, HAS_SOFTCAP, False)
            m, se, swz = online_block(m, se, swz, z, ok, W + cols, HAS_WEIGHT, HAS_SMOOTH)
        lse = m + tl.log(se)

        # Step 2. Row loss from lse and the target logit.
        zy, _dzy = load_logits(x_row + y, True, softcap, inv_softcap, HAS_SOFTCAP, False)
        loss, zterm, a, b = row_terms(
            lse, zy, swz, W, WSUM, y, V, one_minus_eps, eps_over_v, z_coef,
            HAS_WEIGHT, HAS_SMOOTH, HAS_Z,
        )  # fmt: skip
        tl.store(LOSS + row, loss)
        if STORE_Z:
            tl.store(ZROW + row, zterm)

        # Step 3. Gradient, block by block (second read).
        if STORE_GRAD:
            if HAS_SCALE:
                scale = tl.load(SCALE)
            else:
                scale = 1.0
            for start in range(0, V, BLOCK):
                cols = start + lane
                ok = cols < V
                z, dz = load_logits(x_row + cols, ok, softcap, inv_softcap, HAS_SOFTCAP, True)
                if HAS_WEIGHT and HAS_SMOOTH:
                    w = tl.load(W + cols, mask=ok, other=0.0)
                else:
                    w = 1.0
                g = grad_block(
                    z, dz, lane, (y - start).to(tl.int32), lse, a, b, w, eps_over_v, scale,
                    HAS_SMOOTH, HAS_SOFTCAP,
                )  # fmt: skip
                tl.store(g_row + cols, g.to(G.dtype.element_ty), mask=ok)
    else:
        if STORE_GRAD:
            zero = tl.zeros([BLOCK], dtype=G.dtype.element_ty)
            for start in range(0, V, BLOCK):
                cols = start + lane
                tl.store(g_row + cols, zero, mask=cols < V)
        tl.store(LOSS + row, 0.0)
        if STORE_Z:
            tl.store(ZROW + row, 0.0)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def launch(
    plan: Plan,
    opts: CrossEntropyOptions,
    logits: Tensor,
    grad: Tensor | None,
    target: Tensor,
    *,
    weight: Tensor | None,
    mask: Tensor | None,
    loss: Tensor,
    zterm: Tensor | None = None,
    scale: Tensor | None = None,
    weight_sum: Tensor | None = None,
) -> None:
    """Run ``plan`` over the ``N > 0`` rows of the ``(N, V)`` ``logits``.

    Writes each row's loss (float32, 0 where the row does not count) into ``loss``, its z term
    into ``zterm`` when given, and, when ``grad`` is given (``logits`` itself, to overwrite
    them), the gradient of the row's loss times ``scale`` (a ``(1,)`` float32 tensor, else 1).
    ``weight`` is float32 and contiguous, or None; ``weight_sum`` its sum as a ``(1,)`` tensor
    (computed here when None; read with label smoothing only); ``mask`` is bool, or None.

    ``rowloop`` is one launch of the row-loop kernel; ``single``/``coop`` one launch of the chunk
    kernel (``S`` programs per row, with the scratch for their partials and the arrival counters
    allocated here); ``split`` the same chunk code in two launches, no spin.
    """
    n, v = logits.shape
    device = logits.device
    eps, zc = opts.label_smoothing, opts.z_loss
    has_smooth = eps > 0.0
    m8 = None if mask is None else mask.contiguous().view(torch.uint8)
    if weight is not None and has_smooth and weight_sum is None:
        weight_sum = weight.sum().reshape(1)
    dummy = loss
    g = logits if grad is None else grad
    common = (
        logits, logits.stride(0), g, g.stride(0), target.contiguous(),
        dummy if weight is None else weight, dummy if m8 is None else m8,
        loss, dummy if zterm is None else zterm,
        dummy if scale is None else scale,
        weight_sum if (weight is not None and has_smooth) else dummy,
    )  # fmt: skip
    scalars = (1.0 - eps, eps / v, zc, *softcap_args(opts.softcap))
    flags = dict(
        HAS_WEIGHT=weight is not None,
        HAS_MASK=m8 is not None,
        HAS_SMOOTH=has_smooth,
        HAS_Z=zc > 0.0,
        HAS_SOFTCAP=opts.softcap is not None,
        HAS_SCALE=scale is not None,
        STORE_GRAD=grad is not None,
        STORE_Z=zterm is not None,
    )
    ignore_index = opts.kernel_ignore_index
    options = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    with device_guard(device):
        if plan.kind == "rowloop":
            _ce_rowloop_kernel[(n,)](
                *common, v, ignore_index, *scalars, BLOCK=plan.block, **flags, **options
            )
            return
        s = plan.chunks
        part = torch.empty(n * 4 * s, dtype=torch.float32, device=device) if s > 1 else loss
        sync = torch.zeros(n + 1, dtype=torch.int32, device=device) if s > 1 else common[4]
        args = (*common, part, sync, v, plan.chunk_width, ignore_index, *scalars)
        const = dict(S=s, SP2=triton.next_power_of_2(s), BLOCK=plan.block, **flags)
        if plan.kind in ("single", "coop") or s == 1:
            _ce_chunk_kernel[(n * s,)](*args, MODE=0, **const, **options)
        else:
            _ce_chunk_kernel[(n * s,)](*args, MODE=1, **const, **options)
            _ce_chunk_kernel[(n * s,)](*args, MODE=2, **const, **options)


@dataclass(frozen=True)
class _Call:
    """One call's options: the loss's, the launcher's own, and the launch plan."""

    loss: CrossEntropyOptions
    inplace: bool
    return_z_loss: bool
    plan: Plan


def _forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    call: _Call,
    store_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Launch the forward. Returns (loss, z term or None, gradient or None)."""
    check_device(logits.device, "logits")
    n, v = logits.shape
    device, dtype = logits.device, logits.dtype
    f32 = torch.float32
    opts = call.loss
    target = target.contiguous()
    w = None if weight is None else weight.to(f32).contiguous()
    # Which rows count, and the 'mean' denominator D and gradient scale 1/D, on the device.
    rows = count_rows(
        target, ignore_index=opts.ignore_index, reduction=opts.reduction, weight=w, mask=mask,
        normalizer=normalizer,
    )  # fmt: skip
    loss_rows = torch.empty(n, dtype=f32, device=device)
    z_rows = torch.empty(n, dtype=f32, device=device) if call.return_z_loss else None
    grad = None
    if store_grad:
        grad = logits.detach() if call.inplace else torch.empty((n, v), dtype=dtype, device=device)
    if n > 0:
        launch(
            call.plan, opts, logits, grad, target, weight=w, mask=mask, loss=loss_rows,
            zterm=z_rows, scale=rows.scale,
        )  # fmt: skip
    zterm = None if z_rows is None else rows.reduce(z_rows, dtype)
    return rows.reduce(loss_rows, dtype), zterm, grad


class CrossEntropyFunction(torch.autograd.Function):
    """Forward computes loss and gradient; backward scales the stored gradient by grad_output."""

    @staticmethod
    def forward(ctx, logits, target, weight, mask, normalizer, call, recompute):  # type: ignore[override]
        loss, zterm, grad = _forward(logits, target, weight, mask, normalizer, call, True)
        if call.inplace:
            # The gradient now lives in the logits' storage: make any other node that saved
            # these logits fail loudly at its backward instead of reading gradient values.
            increment_version(logits)
        ctx.grads = [grad]
        ctx.recompute = recompute or Recompute("cross_entropy")  # no rule: create_graph raises
        ctx.rowwise = call.loss.reduction == "none"
        if call.return_z_loss:
            ctx.mark_non_differentiable(zterm)
            return loss, zterm
        return loss

    @staticmethod
    def backward(ctx, grad_loss, *unused):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return second_order(ctx, grad_loss)
        rowwise = ctx.rowwise
        return hand_over(
            ctx, grad_loss, lambda g, go: scale_grad(g, go, rowwise), loss="Triton cross_entropy"
        )


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
    plan: Plan | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused cross-entropy on ``(N, V)`` logits with class-index targets (see CONTRACT.md).

    Inputs arrive validated (``losskit._validate``); nothing here syncs with the host.

    .. math::
        \\ell_i = (1-\\varepsilon) w_{y_i} (\\mathrm{lse}_i - z'_{i,y_i})
                 + \\frac{\\varepsilon}{V} \\sum_c w_c (\\mathrm{lse}_i - z'_{i,c})
                 + c_z \\mathrm{lse}_i^2

    Args:
        logits: ``(N, V)`` float32/bfloat16/float16, ``stride(1) == 1``.
        target: ``(N,)`` int64 class indices or ``ignore_index``.
        weight: ``(V,)`` class weights, or None.
        ignore_index: target value of rows that do not count.
        label_smoothing: ``eps`` in [0, 1].
        z_loss: coefficient ``c_z`` of ``lse**2``.
        softcap: ``s`` in ``z' = s * tanh(z / s)``, or None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        normalizer: 0-dim float32 denominator for ``'mean'`` (0 gives 0), or None.
        mask: ``(N,)`` bool, False drops the row, or None.
        inplace_backward: write the gradient into the logits' storage (bumps their version).
        return_z_loss: also return the z term alone, reduced the same way (detached).
        recompute: how a ``create_graph=True`` backward recomputes a differentiable gradient
            (:class:`~losskit.kernels.recompute.Recompute`); None: such a backward raises.
        plan: the launch plan (:func:`make_plan`); None: the one :data:`DEFAULT_PLAN` names for
            rows of this length on this device.

    Shape:
        - logits: ``(N, V)``; target, mask: ``(N,)``.
        - Output: ``(N,)`` for ``'none'``, else ``()``; dtype of ``logits``.

    Returns:
        The loss, or ``(loss, z_term)`` with ``return_z_loss``.

    Example::

        >>> logits = torch.randn(8, 32000, device="cuda", requires_grad=True)
        >>> target = torch.randint(0, 32000, (8,), device="cuda")
        >>> loss = cross_entropy(logits, target, weight=None, ignore_index=-100,
        ...     label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
        ...     normalizer=None, mask=None, inplace_backward=False, return_z_loss=False)
        >>> loss.backward()

    Equivalent to ``torch.nn.functional.cross_entropy(logits, target, weight,
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)`` when the
    losskit-only arguments are off.
    """
    if plan is None:
        plan = make_plan(logits.shape[1], logits.device, DEFAULT_PLAN)
    options = CrossEntropyOptions(
        reduction=reduction,
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        softcap=None if softcap is None else float(softcap),
    )
    call = _Call(options, bool(inplace_backward), bool(return_z_loss), plan)
    if torch.is_grad_enabled() and logits.requires_grad:
        return CrossEntropyFunction.apply(logits, target, weight, mask, normalizer, call, recompute)
    # No gradient wanted: compute the loss only (no gradient buffer, logits untouched).
    loss, zterm, _ = _forward(logits, target, weight, mask, normalizer, call, False)
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
    options = CrossEntropyOptions(
        reduction=reduction, ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing), z_loss=float(z_loss),
        softcap=None if softcap is None else float(softcap),
    )  # fmt: skip
    call = _Call(options, False, True, make_plan(logits.shape[1], logits.device, DEFAULT_PLAN))
    return _forward(logits, target, weight, mask, normalizer, call, want_grad)


def cross_entropy_with_plan(
    logits: Tensor,
    target: Tensor,
    *,
    plan: str = "auto",
    chunk_max: int | None = None,
    num_warps: int | None = None,
    rowloop_block: int | None = None,
    num_stages: int | None = None,
    **options: object,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`cross_entropy` (``options``: its keyword arguments) with the launch plan named
    ``plan`` and its tile overrides (see :func:`make_plan`), for benchmarks and tests."""
    chosen = make_plan(
        logits.shape[1], logits.device, plan, chunk_max=chunk_max, num_warps=num_warps,
        rowloop_block=rowloop_block, num_stages=num_stages,
    )  # fmt: skip
    return cross_entropy(logits, target, plan=chosen, **options)
