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

Four launch plans compute exactly these numbers (:func:`make_plan` chooses one):

``single``
    One program per row holds the whole row in registers (``auto`` for ``V <= SINGLE_MAX``;
    up to ``SINGLE_LIMIT`` on request): the logits are read once, the gradient written once.
``coop``
    Rows too long for one program are split into ``S`` chunks, each held in registers by one of
    ``S`` cooperating programs. Each program reduces its chunk to online-softmax partials
    ``(max, sum exp, target logit, sum w z')``, publishes them in a small scratch buffer, waits
    until all ``S`` chunks of its row have published (a per-row arrival counter, release/acquire
    atomics), merges the partials into the row's ``lse`` and writes its gradient chunk from the
    registers it still holds: one read, one write.

    *Deadlock freedom.* A program takes its (row, chunk) from a global ticket counter with an
    atomic increment as its first action, so tickets go out in the order programs actually start
    running on the GPU, and a program only ever waits for the other ``S - 1`` programs of its
    own row, whose tickets are adjacent to its own. Every ticket below the highest one handed
    out belongs to a program that is running (or done), so at any time at most one row is
    incomplete for want of programs that have not started, and it needs at most ``S - 1``
    more. As long as the GPU can hold ``S`` programs of this kernel at once (the plan requires
    ``S <= number of SMs``; every launched kernel fits at least one program per SM), waiting
    programs never block the ones they wait for, whatever the grid size and the block
    scheduling order. Under the Triton
    interpreter programs run one after another, so a spin would never end: ``coop`` is refused
    there and ``split`` runs the same chunk code instead.
``split``
    The same chunk code as ``coop`` in two launches (partials, then merge + gradient, reading the
    chunk again); no spin. Used by the tests in the interpreter and available as a fallback.
``rowloop``
    One program per row looping over the row twice (online softmax, then the gradient): two reads
    and one write. The simple, always-safe path.

All arithmetic is in float32 whatever the logits dtype; the gradient is rounded once, to the
logits dtype. Row offsets are 64-bit (``N * V`` may exceed ``2**31``).

Equivalent to (for ``mask=None``, ``z_loss=0``, ``softcap=None``, no normalizer)::

    torch.nn.functional.cross_entropy(logits, target, weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing)
"""

# No `from __future__ import annotations` here: triton 3.0 reads `tl.constexpr` from the
# kernels' annotations as objects, and string annotations make it treat them as runtime values.
import os
from dataclasses import dataclass, replace
from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..recompute import Recompute

__all__ = [
    "cross_entropy",
    "cross_entropy_impl",
    "make_plan",
    "Plan",
    "CrossEntropyFunction",
    "IMPLS",
    "INTERPRETED",
]

#: Launch plans accepted by :func:`cross_entropy_impl` (``"auto"`` picks one of the others).
IMPLS = ("auto", "single", "coop", "split", "rowloop")

# Tile sizes. `python tests/kernels/sm90.py` compiles the kernels for sm_90 without a GPU and
# prints registers and spills. With triton 3.9, the plain bf16 chunk kernel holding 32 values
# per thread needs 93-108 registers (16384 values with 16 warps, 8192 with 8): one program of
# 16 warps per SM, or two of 8; holding 16 per thread needs 55-60 (8192 with 16 warps: two
# programs of 16 warps per SM); 32768 with 32 warps spills. Which is fastest is measured, not
# inferred: benchmarks/gpu_ce_kernel.py times each of these plans side by side.

#: Longest row that ``impl="auto"`` holds in one program (elements, a power of two).
SINGLE_MAX = 16384
#: Largest row ``impl="single"`` accepts when asked for explicitly.
SINGLE_LIMIT = 65536
#: Widest chunk one ``coop``/``split`` program holds (elements).
CHUNK_MAX = 16384
#: Columns per loop step of ``rowloop``.
ROWLOOP_BLOCK = 16384
#: Elements per tile of the backward scaling kernel.
SCALE_BLOCK = 4096

#: The default plan of :func:`cross_entropy`; ``LOSSKIT_TRITON_CE_IMPL`` overrides it.
DEFAULT_IMPL = os.environ.get("LOSSKIT_TRITON_CE_IMPL", "auto")


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _tanh(x):
    """tanh in float32: an odd Taylor polynomial near 0 (no cancellation), else via exp(-2|x|)."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    far = (1.0 - e) / (1.0 + e)
    x2 = x * x
    near = ax * (
        1.0
        + x2
        * (
            -0.3333333333333333
            + x2 * (0.13333333333333333 + x2 * (-0.05396825396825397 + x2 * 0.021869488536155203))
        )
    )
    t = tl.where(ax < 0.25, near, far)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _load_logits(ptrs, ok, softcap, inv_softcap, HAS_SOFTCAP: tl.constexpr, STREAM: tl.constexpr):
    """Load a block of logits as float32 ``z'`` (softcapped), ``-inf`` outside ``ok``.

    Also returns ``tanh(z / s)`` (needed for the softcap's chain rule; ``z`` without a softcap).
    """
    if STREAM:  # read exactly once: do not let these lines push reusable data out of L2
        z = tl.load(ptrs, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        z = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    th = z
    if HAS_SOFTCAP:
        th = _tanh(z * inv_softcap)
        z = softcap * th
    z = tl.where(ok, z, float("-inf"))
    return z, th


@triton.jit
def _online_block(m, se, swz, z, ok, w_ptrs, HAS_WEIGHT: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """Fold one block of ``z'`` into a row's running online-softmax statistics.

    ``m`` is the running max, ``se`` the sum of ``exp(z' - m)`` (rescaled as ``m`` grows), ``swz``
    the sum of ``w z'`` over the valid lanes ``ok`` (label smoothing only; ``w`` read from
    ``w_ptrs`` with class weights, else 1). Returns the updated ``(m, se, swz)``.
    """
    m_new = tl.maximum(m, tl.max(z, 0))
    se = se * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
    if HAS_SMOOTH:
        if HAS_WEIGHT:
            w = tl.load(w_ptrs, mask=ok, other=0.0)
            swz += tl.sum(tl.where(ok, z, 0.0) * w, 0)
        else:
            swz += tl.sum(tl.where(ok, z, 0.0), 0)
    return m_new, se, swz


@triton.jit
def _row_terms(
    lse, zy, swz, w_y, wsum, one_minus_eps, eps_over_v, z_coef,
    HAS_SMOOTH: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Row loss, z term, and the gradient coefficients ``a`` and ``b = (1-eps) w_y``."""
    b = one_minus_eps * w_y
    a = b
    loss = b * (lse - zy)
    if HAS_SMOOTH:
        loss += eps_over_v * (lse * wsum - swz)
        a += eps_over_v * wsum
    zterm = lse * 0.0
    if HAS_Z:
        zterm = z_coef * lse * lse
        a += 2.0 * z_coef * lse
    return loss + zterm, zterm, a, b


@triton.jit
def _grad_block(
    z, th, lane, y_lane, lse, a, b, w, eps_over_v, scale,
    HAS_SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):  # fmt: skip
    """``scale * (p a - b [c == y] - (eps/V) w_c) * (1 - tanh^2)`` for one block of a row.

    ``y_lane`` is the target's position in this block as int32 (comparing the 32-bit lane
    indices with a 64-bit target would widen every lane index to 64 bits: twice the registers).
    """
    p = tl.exp(z - lse)
    g = p * a - tl.where(lane == y_lane, b, 0.0)
    if HAS_SMOOTH:
        g -= eps_over_v * w
    if HAS_SOFTCAP:
        g = g * (1.0 - th * th)
    return g * scale


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
        z, th = _load_logits(x_chunk + lane, ok, softcap, inv_softcap, HAS_SOFTCAP, MODE == 0)
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
            zy_j, thy = _load_logits(
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
            if HAS_WEIGHT:
                w_y = tl.load(W + y)
            else:
                w_y = 1.0
            if HAS_WEIGHT and HAS_SMOOTH:
                wsum = tl.load(WSUM)
            else:
                wsum = V * 1.0
            loss, zterm, a, b = _row_terms(
                lse, zy, swz, w_y, wsum, one_minus_eps, eps_over_v, z_coef, HAS_SMOOTH, HAS_Z
            )
            tl.store(LOSS + row, loss, mask=j == 0)
            if STORE_Z:
                tl.store(ZROW + row, zterm, mask=j == 0)
            if STORE_GRAD:
                if HAS_SCALE:
                    scale = tl.load(SCALE)
                else:
                    scale = 1.0
                g = _grad_block(
                    z, th, lane, y_lane, lse, a, b, w, eps_over_v, scale, HAS_SMOOTH, HAS_SOFTCAP
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
            z, th = _load_logits(x_row + cols, ok, softcap, inv_softcap, HAS_SOFTCAP, False)
            m, se, swz = _online_block(m, se, swz, z, ok, W + cols, HAS_WEIGHT, HAS_SMOOTH)
        lse = m + tl.log(se)

        # Step 2. Row loss from lse and the target logit.
        zy, thy = _load_logits(x_row + y, True, softcap, inv_softcap, HAS_SOFTCAP, False)
        if HAS_WEIGHT:
            w_y = tl.load(W + y)
        else:
            w_y = 1.0
        if HAS_WEIGHT and HAS_SMOOTH:
            wsum = tl.load(WSUM)
        else:
            wsum = V * 1.0
        loss, zterm, a, b = _row_terms(
            lse, zy, swz, w_y, wsum, one_minus_eps, eps_over_v, z_coef, HAS_SMOOTH, HAS_Z
        )
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
                z, th = _load_logits(x_row + cols, ok, softcap, inv_softcap, HAS_SOFTCAP, True)
                if HAS_WEIGHT and HAS_SMOOTH:
                    w = tl.load(W + cols, mask=ok, other=0.0)
                else:
                    w = 1.0
                g = _grad_block(
                    z, th, lane, (y - start).to(tl.int32), lse, a, b, w, eps_over_v, scale,
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


@triton.jit
def _scale_grad_kernel(
    G, stride_g, GO, stride_go, V, n_col_tiles, n_tiles,
    ROWWISE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Backward: ``G *= grad_output`` in place (per row for ``'none'``); skips factors of 1.

    A persistent grid walks the (row, column-tile) tiles. With a scalar ``grad_output`` every
    program reads it first and returns at once when it is 1.0, the usual case after ``'mean'``.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane = tl.arange(0, BLOCK)
    if ROWWISE:
        for tile in range(pid, n_tiles, nprog):
            row = (tile // n_col_tiles).to(tl.int64)
            cols = (tile % n_col_tiles) * BLOCK + lane
            go = tl.load(GO + row * stride_go).to(tl.float32)
            if go != 1.0:
                ptrs = G + row * stride_g + cols
                g = tl.load(ptrs, mask=cols < V, other=0.0).to(tl.float32) * go
                tl.store(ptrs, g.to(G.dtype.element_ty), mask=cols < V)
    else:
        go = tl.load(GO).to(tl.float32)
        if go != 1.0:
            for tile in range(pid, n_tiles, nprog):
                row = (tile // n_col_tiles).to(tl.int64)
                cols = (tile % n_col_tiles) * BLOCK + lane
                ptrs = G + row * stride_g + cols
                g = tl.load(ptrs, mask=cols < V, other=0.0).to(tl.float32) * go
                tl.store(ptrs, g.to(G.dtype.element_ty), mask=cols < V)


#: True when the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import).
INTERPRETED = type(_ce_chunk_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------
# Launch plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How one call is launched: which kernel, tile size and warps (see the module docstring)."""

    impl: str  # "single" | "coop" | "split" | "rowloop"
    block: int  # elements per program (per loop step for rowloop); a power of two
    num_warps: int
    chunks: int = 1  # S: programs per row (coop, split)
    chunk_width: int = 0  # CW: columns per chunk (coop, split, single: V)
    num_stages: int = 1


def _warps(block: int) -> int:
    """32 float32 values per thread: 32 warps for a 32K block, 16 for 16K, ..., at least 1."""
    return max(1, min(32, block // 1024))


@cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def coop_safe(device: torch.device, chunks: int) -> bool:
    """Whether the cooperative spin is expected to be safe for ``chunks`` programs per row.

    Needs a CUDA (not ROCm) GPU with acquire/release atomics (sm_70+), compiled kernels (not the
    interpreter) and at least ``chunks`` SMs (one co-resident program per SM suffices).
    """
    if INTERPRETED or device.type != "cuda" or torch.version.hip is not None:
        return False
    if os.environ.get("LOSSKIT_TRITON_CE_COOP", "1") == "0":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 7 and 2 <= chunks <= _sm_count(index)


def _chunking(V: int, chunk_max: int) -> tuple[int, int, int]:
    """(S, CW, BLOCK): S near-equal chunks of at most ``chunk_max`` columns, none empty."""
    s = triton.cdiv(V, chunk_max)
    cw = triton.cdiv(V, s)
    s = triton.cdiv(V, cw)
    return s, cw, triton.next_power_of_2(cw)


def make_plan(
    V: int,
    device: torch.device,
    impl: str = "auto",
    *,
    chunk_max: int | None = None,
    num_warps: int | None = None,
    rowloop_block: int | None = None,
    num_stages: int | None = None,
) -> Plan:
    """Choose the launch plan for rows of ``V`` classes on ``device``.

    ``impl="auto"``: ``single`` for ``V <= SINGLE_MAX``; else ``coop`` where :func:`coop_safe`
    holds; else ``rowloop``. ``chunk_max`` (coop/split chunk width, default :data:`CHUNK_MAX`),
    ``num_warps`` (default :func:`_warps` of the block) and ``rowloop_block`` override the
    defaults, for benchmarks.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    chunk_max = CHUNK_MAX if chunk_max is None else chunk_max
    if impl == "auto":
        if V <= SINGLE_MAX:
            impl = "single"
        elif coop_safe(device, _chunking(V, chunk_max)[0]):
            impl = "coop"
        else:
            impl = "rowloop"
    if impl == "single":
        if V > SINGLE_LIMIT:
            raise ValueError(f"impl='single' holds rows of at most {SINGLE_LIMIT} classes, got {V}")
        block = triton.next_power_of_2(V)
        plan = Plan("single", block, _warps(block), 1, V)
    elif impl in ("coop", "split"):
        s, cw, block = _chunking(V, chunk_max)
        if impl == "coop" and s > 1 and not coop_safe(device, s):
            raise ValueError(
                f"impl='coop' is not safe here ({device}, {s} chunks per row; the interpreter "
                "runs programs one at a time): use 'split' or 'rowloop'"
            )
        plan = Plan(impl if s > 1 else "single", block, _warps(block), s, cw)
    else:
        block = min(triton.next_power_of_2(V), rowloop_block or ROWLOOP_BLOCK)
        plan = Plan("rowloop", block, _warps(block))
    if num_warps is not None:
        plan = replace(plan, num_warps=num_warps)
    if num_stages is not None:
        plan = replace(plan, num_stages=num_stages)
    return plan


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: str
    inplace: bool
    return_z_loss: bool
    plan: Plan


def _device_guard(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opt: _Options,
    store_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Launch the forward. Returns (loss, z term or None, gradient or None)."""
    if logits.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            "losskit.kernels.triton runs on CUDA tensors, or on the CPU only in Triton's "
            f"interpreter (TRITON_INTERPRET=1 before import); got logits on {logits.device}"
        )
    n, v = logits.shape
    device, dtype = logits.device, logits.dtype
    f32 = torch.float32
    target = target.contiguous()
    w = None if weight is None else weight.to(f32).contiguous()
    m8 = None if mask is None else mask.contiguous().view(torch.uint8)
    eps, zc, cap = float(opt.label_smoothing), float(opt.z_loss), opt.softcap
    has_smooth, has_z, has_cap = eps > 0.0, zc > 0.0, cap is not None
    store_z = opt.return_z_loss

    # The reduction's denominator D and the gradient scale 1/D, on the device (no sync).
    scale = denom = None
    if opt.reduction == "mean":
        if normalizer is not None:
            denom = normalizer.to(f32)
            scale = torch.where(denom != 0, 1.0 / denom, torch.zeros_like(denom))
        else:
            valid = target != opt.ignore_index
            if m8 is not None:
                valid = valid & mask.reshape(-1)
            if w is None:
                denom = valid.sum(dtype=f32)
            else:
                denom = (w[torch.where(valid, target, 0)] * valid).sum()
            scale = 1.0 / denom
        scale = scale.reshape(1)

    loss_rows = torch.empty(n, dtype=f32, device=device)
    z_rows = torch.empty(n, dtype=f32, device=device) if store_z else None
    grad = None
    if store_grad:
        grad = logits.detach() if opt.inplace else torch.empty((n, v), dtype=dtype, device=device)

    if n > 0:
        dummy = loss_rows
        wsum = w.sum().reshape(1) if (w is not None and has_smooth) else dummy
        g = grad if grad is not None else logits
        common = (
            logits, logits.stride(0), g, g.stride(0), target,
            dummy if w is None else w, dummy if m8 is None else m8,
            loss_rows, dummy if z_rows is None else z_rows,
            dummy if scale is None else scale, wsum,
        )  # fmt: skip
        scalars = (
            1.0 - eps, eps / v, zc, float(cap or 1.0), 1.0 / float(cap or 1.0),
        )  # fmt: skip
        flags = dict(
            HAS_WEIGHT=w is not None,
            HAS_MASK=m8 is not None,
            HAS_SMOOTH=has_smooth,
            HAS_Z=has_z,
            HAS_SOFTCAP=has_cap,
            HAS_SCALE=scale is not None,
            STORE_GRAD=store_grad,
            STORE_Z=store_z,
        )
        _launch(opt.plan, common, v, opt.ignore_index, scalars, flags)

    def reduce(rows: Tensor) -> Tensor:
        if opt.reduction == "none":
            return rows.to(dtype)
        total = rows.sum()
        if opt.reduction == "sum":
            return total.to(dtype)
        if normalizer is not None:  # D == 0 gives 0
            return torch.where(denom != 0, total / denom, torch.zeros_like(total)).to(dtype)
        return (total / denom).to(dtype)  # D == 0 gives NaN, as torch does

    return reduce(loss_rows), None if z_rows is None else reduce(z_rows), grad


def _launch(
    plan: Plan,
    common: tuple,
    v: int,
    ignore_index: int,
    scalars: tuple[float, ...],
    flags: dict[str, bool],
) -> None:
    """Run ``plan`` over the rows of ``common`` (the kernels' tensor arguments, ``X`` to ``WSUM``).

    ``rowloop`` is one launch of the row-loop kernel; ``single``/``coop`` one launch of the chunk
    kernel (``S`` programs per row, with the scratch for their partials and the arrival counters
    allocated here); ``split`` the same chunk code in two launches, no spin.
    """
    target, loss = common[4], common[7]
    n, device = loss.shape[0], loss.device
    opts = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    with _device_guard(device):
        if plan.impl == "rowloop":
            _ce_rowloop_kernel[(n,)](
                *common, v, ignore_index, *scalars, BLOCK=plan.block, **flags, **opts
            )
            return
        s = plan.chunks
        part = torch.empty(n * 4 * s, dtype=torch.float32, device=device) if s > 1 else loss
        sync = torch.zeros(n + 1, dtype=torch.int32, device=device) if s > 1 else target
        args = (*common, part, sync, v, plan.chunk_width, ignore_index, *scalars)
        const = dict(S=s, SP2=triton.next_power_of_2(s), BLOCK=plan.block, **flags)
        if plan.impl in ("single", "coop") or s == 1:
            _ce_chunk_kernel[(n * s,)](*args, MODE=0, **const, **opts)
        else:
            _ce_chunk_kernel[(n * s,)](*args, MODE=1, **const, **opts)
            _ce_chunk_kernel[(n * s,)](*args, MODE=2, **const, **opts)


def _scale_grad(grad: Tensor, grad_output: Tensor, rowwise: bool) -> None:
    """``grad *= grad_output`` in place (row-wise for ``'none'``), skipped on the device where 1."""
    n, v = grad.shape
    if n == 0:
        return
    n_col_tiles = triton.cdiv(v, SCALE_BLOCK)
    n_tiles = n * n_col_tiles
    if grad.device.type == "cuda":
        index = grad.device.index
        index = torch.cuda.current_device() if index is None else index
        programs = min(n_tiles, 8 * _sm_count(index))
    else:
        programs = min(n_tiles, 4)
    go = grad_output if rowwise else grad_output.reshape(1)
    with _device_guard(grad.device):
        _scale_grad_kernel[(programs,)](
            grad, grad.stride(0), go, go.stride(0) if rowwise else 0, v, n_col_tiles, n_tiles,
            ROWWISE=rowwise, BLOCK=SCALE_BLOCK, num_warps=4,
        )  # fmt: skip


def _increment_version(t: Tensor) -> None:
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)
    else:  # older torch
        torch._C._autograd._increment_version(t)


class CrossEntropyFunction(torch.autograd.Function):
    """Forward computes loss and gradient; backward scales the stored gradient by grad_output."""

    @staticmethod
    def forward(ctx, logits, target, weight, mask, normalizer, opt, recompute):  # type: ignore[override]
        loss, zterm, grad = _forward(logits, target, weight, mask, normalizer, opt, True)
        if opt.inplace:
            # The gradient now lives in the logits' storage: make any other node that saved
            # these logits fail loudly at its backward instead of reading gradient values.
            _increment_version(logits)
        ctx.grad = grad
        ctx.recompute = recompute or Recompute("cross_entropy")  # no rule: create_graph raises
        ctx.rowwise = opt.reduction == "none"
        if opt.return_z_loss:
            ctx.mark_non_differentiable(zterm)
            return loss, zterm
        return loss

    @staticmethod
    def backward(ctx, grad_loss, *unused):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            ctx.grad = None
            return ctx.recompute.gradients(grad_loss, ctx.needs_input_grad)
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "the fused Triton cross-entropy computes its gradient once, in the forward, and "
                "hands it to the first backward; a second backward through the same graph "
                "(retain_graph=True) is not supported: recompute the loss, or use the reference "
                "path (impl='reference')"
            )
        ctx.grad = None  # hand the buffer over; frees it as soon as autograd is done with it
        ctx.recompute.release()
        _scale_grad(grad, grad_loss, ctx.rowwise)
        return grad, None, None, None, None, None, None


def cross_entropy_impl(
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
    impl: str = "auto",
    **plan_options: int,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`cross_entropy` with an explicit launch plan (``impl``, see :func:`make_plan`).

    ``plan_options`` (``chunk_max``, ``num_warps``, ``rowloop_block``, ``num_stages``) go to
    :func:`make_plan`; they exist for benchmarks and tests.
    """
    plan = make_plan(logits.shape[1], logits.device, impl, **plan_options)
    opt = _Options(
        ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        softcap=None if softcap is None else float(softcap),
        reduction=reduction,
        inplace=bool(inplace_backward),
        return_z_loss=bool(return_z_loss),
        plan=plan,
    )
    if torch.is_grad_enabled() and logits.requires_grad:
        return CrossEntropyFunction.apply(logits, target, weight, mask, normalizer, opt, recompute)
    # No gradient wanted: compute the loss only (no gradient buffer, logits untouched).
    loss, zterm, _ = _forward(logits, target, weight, mask, normalizer, opt, False)
    return (loss, zterm) if return_z_loss else loss


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
    return cross_entropy_impl(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        normalizer=normalizer,
        mask=mask,
        inplace_backward=inplace_backward,
        return_z_loss=return_z_loss,
        recompute=recompute,
        impl=DEFAULT_IMPL,
    )
