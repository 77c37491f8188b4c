"""Fused linear + cross-entropy, chunked: the ``(N, V)`` logits never exist at once.

The chunked algorithm is written once here in torch ops and runs on any device; a backend only
supplies the *epilogue* (the loss and softmax-gradient of a block of logits, in place). This file
holds the CPU epilogue (:class:`TorchEpilogue`), the planner, the chunk loop and the
``autograd.Function``; ``kernels/triton/linear_cross_entropy.py`` swaps in Triton epilogues on
CUDA.

Algorithm (``x`` the ``(N, D)`` hidden states, ``W`` the ``(V, D)`` head, ``M`` rows per chunk):

1. Per row, once: does it count (``target != ignore_index`` and ``mask``), its class weight and
   the reduction factor ``r`` (``1/D`` for ``'mean'``), all ``(N,)``-sized.
2. For each chunk of ``M`` rows (*whole-row plan*):

   a. ``z = x_c @ W.T (+ b)`` into one reused ``(M, V)`` buffer (GEMM);
   b. the epilogue turns ``z`` into ``g = r * dloss/dz`` in place and writes the row losses;
   c. ``dX_c = g @ W`` (GEMM) straight into the returned ``dX``;
   d. ``dW += g.T @ x_c`` (GEMM; the first chunk writes, later ones add) and ``db += sum_rows g``.

3. When the budget leaves fewer than :data:`MIN_ROWS` rows per chunk (the ``dW`` GEMM would then
   read and write all of ``dW`` once per few rows and become memory-bound), the *tiled plan*
   splits each chunk of rows into vocabulary tiles too: a first sweep over the tiles computes
   the logits tile by tile and merges per-row online-softmax statistics (max, sum of exp, target
   logit, sum of ``w z``), a second sweep recomputes each tile's logits, turns them into the
   gradient and accumulates ``dX_c`` (in float32) and ``dW[tile]``. One more GEMM (four in all)
   buys a small, fixed buffer with few ``dW`` updates.

All gradients are computed in the forward for ``'mean'`` and ``'sum'``; the backward only scales
them by ``grad_output`` (nothing to do when it is 1). For ``'none'`` the forward computes the
losses only and the backward recomputes the chunks with the per-row ``grad_output`` folded into
``r``.

Precision. The epilogue works in float32 and rounds the gradient once to the input dtype, as
torch's cross-entropy on low-precision logits does. ``dX`` rows are single GEMMs, as in torch.
``dW`` is a sum over chunks: for float32 weights it accumulates in float32 in place; for
bfloat16/float16 weights it accumulates in a float32 ``(V, D)`` buffer when that fits the memory
budget (``accumulate="float32"``), else in the weights' dtype (``"input"``: rounded once per
chunk, so its error grows with the number of chunks; the default budget keeps them few).

Memory beyond the returned gradients: one ``(M, V)`` (or ``(M, tile)``) buffer in the input
dtype, the float32 ``dW`` accumulator when chosen, float32 ``(M, D)`` for the tiled plan in low
precision, and ``O(N + V)`` vectors. :func:`plan_chunks` sizes ``M`` from the budget, less,
on the CPU, what the process gains outside those buffers (:func:`cpu_reserve`: MKL's GEMM
scratch, kept small by computing the logits in column panels, and the first call's code pages).
The CPU chunk buffer is a mapping of its own (see :func:`_chunk_buffer`).

Equivalent to::

    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, W, b), target, weight,
                                      ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing)

plus losskit's ``mask``, ``normalizer``, ``z_loss`` and ``softcap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..recompute import Recompute
from .cross_entropy import _HUGE_PAGE, CHUNK_BYTES, _use_hugepages, empty_rows, mapped_empty

__all__ = [
    "BUDGETS",
    "ChunkPlan",
    "LinearCrossEntropyFunction",
    "LossOptions",
    "MIN_ROWS",
    "TorchEpilogue",
    "linear_cross_entropy",
    "plan_chunks",
]

MiB = 1 << 20

#: Bytes one call may hold beyond the gradients it returns, per (device type, setting).
#: CPU: every chunk's GEMMs read (pack) all of ``W``, so chunks must keep a few hundred rows:
#: at 4096 x 1024 x 32000 float32 on 2 cores, 464 rows (64 MiB) ran at 1.01-1.09x the three
#: GEMMs, 256 rows at ~1.04-1.11x, 112 rows (16 MiB) at 1.37-1.40x (``losskit bench lce``).
#: On the CPU the budget is what the user's process shows (peak resident set beyond the
#: gradients, from the first call on): the planner keeps :func:`cpu_reserve` of it out of the
#: chunk buffer (336 rows by default there, 112 lean).
#: CUDA: 1 GiB gives chunks of 2-4K rows at LLM vocabularies (few ``dW`` updates, GEMMs at full
#: speed); ``'lean'`` caps the extra memory at 64 MiB with vocabulary tiles (four GEMMs).
BUDGETS = {
    ("cuda", "default"): 1024 * MiB,
    ("cuda", "lean"): 64 * MiB,
    ("cpu", "default"): 64 * MiB,
    ("cpu", "lean"): 32 * MiB,
}
#: Fewest rows per chunk of the whole-row plan; below it the tiled plan is used. The ``dW``
#: update reads and writes all of ``dW`` per chunk while doing ``2 M`` flops per element: it is
#: memory-bound below roughly (flops per byte of the machine) x (bytes per element) / 2 rows.
MIN_ROWS = {"cuda": 1024, "cpu": 64}
#: Rows per chunk of the tiled plan.
TILE_ROWS = {"cuda": 2048, "cpu": 256}
#: Vocabulary tiles are a multiple of this many columns.
TILE_ALIGN = 128
#: MKL's GEMM scratch on the CPU, ``(bytes, bytes per thread)``, that the planner keeps out of
#: the chunk buffer: at 4096 x 1024 x 32000 float32 on 2 threads the logits GEMMs (in panels,
#: see :data:`LOGITS_PANEL`) took 5 MiB whatever the threads, the ``dX`` GEMM 3 MiB per thread
#: at 464 rows per chunk (less with fewer rows), the ``dW`` GEMM 0-3 MiB, partly reused.
CPU_GEMM_SCRATCH = (4 * MiB, 2 * MiB)
#: Bytes a fresh process gains on its first call besides buffers: code pages of the kernels
#: (8 MiB resident file pages) and lazily built state (3 MiB), measured as above. Counted so
#: that a budget holds from the first call on, as a user measures it.
CPU_FIRST_CALL = 11 * MiB
#: Columns per logits GEMM on the CPU. MKL's sgemm packs its operands into scratch that grows
#: with the columns of one call: ``x_c @ W.T`` over all 32000 columns of a ``(32000, 1024)``
#: head took 31 MiB of scratch on 2 threads, in 2048-column panels 5 MiB, at the same speed.
LOGITS_PANEL = 2048

_F32 = torch.float32


@dataclass(frozen=True)
class LossOptions:
    """The loss options the epilogues need (hashable, validated upstream)."""

    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    reduction: str


@dataclass(frozen=True)
class ChunkPlan:
    """How one call is chunked.

    ``rows``: rows per chunk; ``tile``: vocabulary columns per tile (``>= V``: whole rows, the
    single-sweep plan); ``accumulate``: ``'float32'`` or ``'input'``, the dtype ``dW`` and the
    tiled ``dX`` accumulate in (always float32 for float32 inputs).
    """

    rows: int
    tile: int
    accumulate: str

    def whole_rows(self, v: int) -> bool:
        return self.tile >= v


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan_chunks(
    n: int,
    d: int,
    v: int,
    dtype: torch.dtype,
    device_type: str,
    *,
    budget: int,
    chunk_size: int | None = None,
    accumulate: str = "auto",
) -> ChunkPlan:
    """Choose rows per chunk, the vocabulary tile and the ``dW`` accumulation for a budget.

    The budget is what the call may hold beyond the gradients it returns. With ``accumulate=
    'auto'``, low-precision weights get a float32 ``dW`` accumulator when it takes at most half
    the budget. ``chunk_size`` forces the rows per chunk (whole rows). A budget too small for
    the smallest plan gives the smallest plan (best effort).
    """
    dev = "cuda" if device_type == "cuda" else "cpu"
    s = _itemsize(dtype)
    low = dtype != _F32
    if not low:
        acc = "float32"
    elif accumulate == "auto":
        acc = "float32" if 2 * v * d * 4 <= budget else "input"
    else:
        acc = accumulate
    f32_acc = low and acc == "float32"
    # Off-GEMM temporaries of the float32 accumulation of low-precision products, where the
    # device has no mixed-precision GEMM (CPU): the chunk's gradient as float32.
    upcast = f32_acc and dev == "cpu"
    # what is not the chunk: the float32 dW accumulator, O(N + V) vectors, 1/32 of the budget
    # kept for the epilogue's small temporaries and the allocator's rounding, and on the CPU
    # what the process gains outside our buffers (at most half the budget; a budget smaller
    # than that reserve cannot hold from outside and is taken as the buffers' alone)
    fixed = (v * d * 4 if f32_acc else 0) + 8 * v + 32 * n + budget // 32
    reserve = cpu_reserve() if dev == "cpu" else 0
    if reserve <= budget:
        fixed += min(reserve, budget // 2)
    avail = max(budget - fixed, 0)
    per_row = v * s + (v * 4 + d * 4 if upcast else 0)
    if chunk_size is not None:
        return ChunkPlan(max(1, min(int(chunk_size), n)), v, acc)
    m_max = avail // per_row
    if m_max >= min(n, MIN_ROWS[dev]) or n == 0:
        return ChunkPlan(_balanced(n, max(m_max, 1)), v, acc)
    # Tiled plan: rows fixed, the tile takes what is left after the float32 dX accumulator
    # (and, without a mixed-precision GEMM, the (rows, D) partial product added to it).
    rows = min(n, TILE_ROWS[dev])
    while True:
        dx_acc = rows * d * (4 if dev == "cuda" else 6) if low else 0
        per_col = rows * (s + (4 if upcast else 0))
        tile = (avail - dx_acc) // per_col if avail > dx_acc else 0
        if tile >= 2 * TILE_ALIGN or rows <= 16:
            break
        rows //= 2
    tile = max(TILE_ALIGN, tile // TILE_ALIGN * TILE_ALIGN)
    if tile >= v:
        return ChunkPlan(rows, v, acc)
    return ChunkPlan(_balanced(n, rows), tile, acc)


def cpu_reserve(threads: int | None = None) -> int:
    """Bytes a CPU call adds to the process beyond its own buffers, as measured from outside.

    MKL's GEMM scratch (:data:`CPU_GEMM_SCRATCH`, part of it per thread; MKL keeps it pooled
    for the next call) and, on a process's first call, :data:`CPU_FIRST_CALL`: the code pages
    and lazily built state of the kernels it runs for the first time.
    """
    t = torch.get_num_threads() if threads is None else threads
    fixed, per_thread = CPU_GEMM_SCRATCH
    return CPU_FIRST_CALL + fixed + per_thread * max(t, 1)


def _balanced(n: int, m_max: int) -> int:
    """Rows per chunk: at most ``m_max``, near-equal chunks, a multiple of 16 if possible."""
    if n <= m_max:
        return max(n, 1)
    chunks = -(-n // m_max)
    rows = -(-n // chunks)
    if m_max >= 16:
        rows = min(m_max // 16 * 16, -(-rows // 16) * 16)
    return max(rows, 1)


# --------------------------------------------------------------------------------------------
# Per-row bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass
class RowInfo:
    """Per-row quantities of one call (all ``(N,)``) and the reduction's scalars."""

    target: Tensor  # int64, as given (ignore_index where ignored)
    mask: Tensor | None  # bool, or None
    counted: Tensor  # bool
    y: Tensor  # int64, 0 where the row does not count
    w_y: Tensor  # float32 weight of the target class, 0 where the row does not count
    scale: Tensor | None  # (1,) float32 factor of every gradient row (1/D for 'mean')
    denom: Tensor | None  # (,) float32 denominator of 'mean'
    has_normalizer: bool


@dataclass
class Chunk:
    """Rows ``[i, j)`` of a :class:`RowInfo`, plus the per-row factor ``r`` of the gradient."""

    target: Tensor
    mask: Tensor | None
    counted: Tensor
    y: Tensor
    w_y: Tensor
    r: Tensor  # float32: counted * scale * row_scale
    scale: Tensor | None
    row_scale: Tensor | None


def row_info(
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opts: LossOptions,
) -> RowInfo:
    counted = target != opts.ignore_index
    if mask is not None:
        counted = counted & mask
    y = torch.where(counted, target, 0)
    if weight is None:
        w_y = counted.to(_F32)
    else:
        w_y = torch.where(counted, weight.index_select(0, y), 0.0)
    scale = denom = None
    if opts.reduction == "mean":
        if normalizer is not None:
            denom = normalizer.to(_F32).reshape(())
            scale = torch.where(denom != 0, 1.0 / denom, torch.zeros_like(denom))
        else:
            denom = w_y.sum()
            scale = 1.0 / denom
        scale = scale.reshape(1)
    return RowInfo(target, mask, counted, y, w_y, scale, denom, normalizer is not None)


def _chunk(info: RowInfo, i: int, j: int, row_scale: Tensor | None) -> Chunk:
    counted = info.counted[i:j]
    r = counted.to(_F32)
    if info.scale is not None:  # where, not a product: 1/D is inf when no row counts
        r = torch.where(counted, info.scale, 0.0)
    rs = None
    if row_scale is not None:
        rs = row_scale[i:j]
        r = r * rs
    return Chunk(
        info.target[i:j], None if info.mask is None else info.mask[i:j], counted, info.y[i:j],
        info.w_y[i:j], r, info.scale, rs,
    )  # fmt: skip


def _reduce(rows: Tensor, info: RowInfo, reduction: str, dtype: torch.dtype) -> Tensor:
    if reduction == "none":
        return rows.to(dtype)
    total = rows.sum()
    if reduction == "sum":
        return total.to(dtype)
    if info.has_normalizer:  # D == 0 gives 0
        return torch.where(info.denom != 0, total / info.denom, torch.zeros_like(total)).to(dtype)
    return (total / info.denom).to(dtype)  # D == 0 gives NaN, as torch does


# --------------------------------------------------------------------------------------------
# The epilogue in torch ops (CPU)
# --------------------------------------------------------------------------------------------


class TorchEpilogue:
    """Loss and softmax-gradient of a block of logits, in place, in torch ops.

    Per row (``z' = s tanh(z / s)`` under a softcap, ``lse = logsumexp z'``, ``eps`` the label
    smoothing, ``w`` the class weights, ``c`` the z-loss coefficient)::

        loss = (1-eps) w_y (lse - z'_y) + (eps/V) sum_k w_k (lse - z'_k) + c lse^2
        g_k  = r (a softmax(z')_k - (1-eps) w_y [k == y] - (eps/V) w_k) (1 - tanh^2)
        a    = (1-eps) w_y + (eps/V) sum_k w_k + 2 c lse

    Rows are processed in blocks of about :data:`CHUNK_BYTES` of float32 so that every pass
    after the first finds the block in cache. Low-precision logits are copied a block at a time
    into a float32 scratch block and the gradient is rounded once.
    """

    def __init__(self, weight: Tensor | None, v: int, opts: LossOptions) -> None:
        self.w = None if weight is None else weight.to(_F32).contiguous()
        self.wsum: float | Tensor = float(v) if self.w is None else self.w.sum()
        self.v = v
        self.eps = opts.label_smoothing
        self.zc = opts.z_loss
        self.cap = opts.softcap

    # -- helpers -------------------------------------------------------------------------------

    def _blocks(self, c: int, width: int) -> int:
        return max(1, min(c, CHUNK_BYTES // (4 * max(width, 1))))

    def _load(self, zb: Tensor, out: Tensor, th: Tensor | None) -> None:
        """``out = z'`` (float32) of the block ``zb``; ``th = tanh(z / s)`` under a softcap."""
        if self.cap is None:
            if out.data_ptr() != zb.data_ptr():
                out.copy_(zb)
            return
        if th.dtype == zb.dtype:
            torch.div(zb, self.cap, out=th)
        else:
            th.copy_(zb)
            th.div_(self.cap)
        th.tanh_()
        torch.mul(th, self.cap, out=out)

    def _smooth_sum(self, zp: Tensor) -> Tensor:
        return zp.sum(1) if self.w is None else torch.mv(zp, self.w)

    def _scratch(self, rows: int, width: int, low: bool) -> tuple[Tensor | None, Tensor | None]:
        out = torch.empty((rows, width), dtype=_F32) if low else None
        th = torch.empty((rows, width), dtype=_F32) if self.cap is not None else None
        return out, th

    def row_loss(self, lse: Tensor, zy: Tensor, swz: Tensor | None, ck: Chunk) -> Tensor:
        loss = (1.0 - self.eps) * ck.w_y * (lse - zy)
        if swz is not None:
            loss = loss + (self.eps / self.v) * (self.wsum * lse - swz)
        if self.zc > 0.0:
            loss = loss + self.zc * lse * lse
        return torch.where(ck.counted, loss, 0.0)

    def grad_coefficients(self, lse: Tensor, ck: Chunk) -> tuple[Tensor, Tensor]:
        """``r a`` and ``r (1-eps) w_y`` per row."""
        a = (1.0 - self.eps) * ck.w_y + (self.eps / self.v) * self.wsum
        if self.zc > 0.0:
            a = a + (2.0 * self.zc) * torch.where(ck.counted, lse, 0.0)
        return ck.r * a, ck.r * ((1.0 - self.eps) * ck.w_y)

    # -- whole rows ----------------------------------------------------------------------------

    def rows(self, z: Tensor, ck: Chunk, loss_out: Tensor, want_grad: bool) -> None:
        """Row losses into ``loss_out`` and, with ``want_grad``, the gradient into ``z``."""
        c, v = z.shape
        if c == 0:
            return
        low = z.dtype != _F32
        step = self._blocks(c, v)
        scratch, th_buf = self._scratch(step, v, low)
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            zb = z[s0:s1]
            out = scratch[: s1 - s0] if low else zb
            th = None if th_buf is None else th_buf[: s1 - s0]
            sub = _slice_chunk(ck, s0, s1)
            # (1) z' (float32), its target logit, max and smoothing sum: the one read from memory.
            self._load(zb, out, th)
            y2 = sub.y.unsqueeze(1)
            zy = out.gather(1, y2).squeeze(1)
            m = out.amax(1, keepdim=True)
            swz = self._smooth_sum(out) if self.eps > 0.0 else None
            # (2) e = exp(z' - m) in place, S = sum e, lse = m + log S.
            out.sub_(m).exp_()
            s = out.sum(1)
            lse = m.squeeze(1) + s.log()
            loss_out[s0:s1] = self.row_loss(lse, zy, swz, sub)
            if not want_grad:
                continue
            # (3) g = r (a e / S - b onehot - (eps/V) w) (1 - tanh^2), in place.
            ra, rb = self.grad_coefficients(lse, sub)
            out.mul_((ra / s).unsqueeze(1))
            if self.eps > 0.0:
                reps = sub.r * (-self.eps / self.v)
                if self.w is None:
                    out.add_(reps.unsqueeze(1))
                else:
                    out.addr_(reps, self.w)
            out.scatter_add_(1, y2, (-rb).unsqueeze(1))
            if th is not None:
                th.square_()
                out.addcmul_(out, th, value=-1.0)
            if low:
                zb.copy_(out)

    # -- vocabulary tiles ----------------------------------------------------------------------

    def new_stats(self, c: int, device: torch.device) -> Tensor:
        """Running (max, sum of exp, target logit, sum w z') per row, ``(4, c)`` float32."""
        st = torch.zeros((4, c), dtype=_F32, device=device)
        st[0].fill_(-3.0e38)
        return st

    def tile_stats(self, z: Tensor, c0: int, ck: Chunk, st: Tensor) -> None:
        """Merge the tile's columns ``[c0, c0 + width)`` into the row statistics ``st``."""
        c, width = z.shape
        low = z.dtype != _F32
        step = self._blocks(c, width)
        scratch, th_buf = self._scratch(step, width, low)
        w = None if self.w is None else self.w[c0 : c0 + width]
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            out = scratch[: s1 - s0] if low else z[s0:s1]
            th = None if th_buf is None else th_buf[: s1 - s0]
            self._load(z[s0:s1], out, th)
            y = ck.y[s0:s1] - c0
            inside = (y >= 0) & (y < width)
            zy = out.gather(1, y.clamp(0, width - 1).unsqueeze(1)).squeeze(1)
            st[2, s0:s1] += torch.where(inside, zy, 0.0)
            if self.eps > 0.0:
                st[3, s0:s1] += out.sum(1) if w is None else torch.mv(out, w)
            m_t = out.amax(1)
            s_t = out.sub_(m_t.unsqueeze(1)).exp_().sum(1)
            m_old = st[0, s0:s1]
            m_new = torch.maximum(m_old, m_t)
            st[1, s0:s1] = st[1, s0:s1] * (m_old - m_new).exp() + s_t * (m_t - m_new).exp()
            st[0, s0:s1] = m_new

    def finish_stats(self, st: Tensor, ck: Chunk) -> tuple[Tensor, Tensor]:
        """Row losses and ``lse`` from merged statistics (``lse = +inf`` where a row is out)."""
        lse = st[0] + st[1].log()
        swz = st[3] if self.eps > 0.0 else None
        loss = self.row_loss(lse, st[2], swz, ck)
        return loss, torch.where(ck.counted, lse, torch.inf)

    def tile_grad(self, z: Tensor, c0: int, ck: Chunk, lse: Tensor) -> None:
        """The gradient of the tile's columns ``[c0, c0 + width)`` into ``z``, given ``lse``."""
        c, width = z.shape
        low = z.dtype != _F32
        ra, rb = self.grad_coefficients(torch.where(ck.counted, lse, 0.0), ck)
        step = self._blocks(c, width)
        scratch, th_buf = self._scratch(step, width, low)
        w = None if self.w is None else self.w[c0 : c0 + width]
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            zb = z[s0:s1]
            out = scratch[: s1 - s0] if low else zb
            th = None if th_buf is None else th_buf[: s1 - s0]
            self._load(zb, out, th)
            out.sub_(lse[s0:s1].unsqueeze(1)).exp_().mul_(ra[s0:s1].unsqueeze(1))
            if self.eps > 0.0:
                reps = ck.r[s0:s1] * (-self.eps / self.v)
                if w is None:
                    out.add_(reps.unsqueeze(1))
                else:
                    out.addr_(reps, w)
            y = ck.y[s0:s1] - c0
            inside = (y >= 0) & (y < width)
            out.scatter_add_(
                1, y.clamp(0, width - 1).unsqueeze(1),
                torch.where(inside, -rb[s0:s1], 0.0).unsqueeze(1),
            )  # fmt: skip
            if th is not None:
                th.square_()
                out.addcmul_(out, th, value=-1.0)
            if low:
                zb.copy_(out)

    # -- backward ------------------------------------------------------------------------------

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` (a one-element tensor), skipped when it is exactly 1."""
        go = float(grad_output.reshape(-1)[0])
        if go != 1.0:
            t.mul_(go)


def _slice_chunk(ck: Chunk, s0: int, s1: int) -> Chunk:
    return Chunk(
        ck.target[s0:s1], None if ck.mask is None else ck.mask[s0:s1], ck.counted[s0:s1],
        ck.y[s0:s1], ck.w_y[s0:s1], ck.r[s0:s1], ck.scale,
        None if ck.row_scale is None else ck.row_scale[s0:s1],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# GEMMs
# --------------------------------------------------------------------------------------------

_MIXED_MM = {"ok": True}


def _mm_acc(out: Tensor, a: Tensor, b: Tensor, first: bool, *, exact: bool = True) -> None:
    """``out = a @ b`` (``first``) or ``out += a @ b``; ``out`` may be float32 with half ``a, b``.

    Mixed precision uses the GEMM's float32 output (``out_dtype``, CUDA) where torch has it.
    Elsewhere: float32 copies of the operands (``exact``: the ``dW`` accumulator, whose
    temporaries the planner counts), or the product in the operands' dtype added to ``out`` (one
    extra rounding of each partial product: the tiled ``dX``, whose operands are large and
    product small).
    """
    if out.dtype == a.dtype:
        if first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
        return
    if out.is_cuda and _MIXED_MM["ok"]:
        try:
            if first:
                torch.mm(a, b, out_dtype=out.dtype, out=out)
            else:
                torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
            return
        except (RuntimeError, TypeError):  # this torch has no mixed-precision GEMM
            _MIXED_MM["ok"] = False
    if exact:
        a32, b32 = a.to(out.dtype), b.to(out.dtype)
        if first:
            torch.mm(a32, b32, out=out)
        else:
            out.addmm_(a32, b32)
    elif first:
        out.copy_(torch.mm(a, b))
    else:
        out.add_(torch.mm(a, b))


def _empty(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A gradient buffer; huge-page backed on the CPU when large (one page fault per 2 MiB)."""
    if device.type == "cpu":
        return empty_rows(n, d, dtype)
    return torch.empty((n, d), dtype=dtype, device=device)


def _chunk_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The chunk's ``(M, V)`` buffer; on the CPU a mapping of its own, unmapped when freed.

    Not from ``malloc``: glibc raises its mmap threshold to the size of each mmapped block it
    frees (up to 32 MiB), after which blocks below that size (a 16 MiB ``dX``, the next call's
    buffer) come from the heap, which keeps freed pages: one call with a 29 MiB buffer left the
    process 16 MiB larger from its third call on. Huge-page advised where available (a fault
    per 2 MiB: the buffer is fresh memory on every call).
    """
    nbytes = numel * _itemsize(dtype)
    if device.type != "cpu" or nbytes < _HUGE_PAGE:
        return torch.empty(numel, dtype=dtype, device=device)
    mapped = mapped_empty(nbytes, dtype, hugepages=_use_hugepages())
    return torch.empty(numel, dtype=dtype) if mapped is None else mapped


def _logits(z: Tensor, x: Tensor, w: Tensor, bias: Tensor | None) -> None:
    """``z = x @ w.T (+ bias)``; on the CPU in panels of :data:`LOGITS_PANEL` columns.

    Each panel is written in place into its column slice of ``z`` (a BLAS leading dimension of
    ``z.shape[1]``: no copy), so the panels change the GEMM's scratch, not the result.
    """
    v = z.shape[1]
    step = LOGITS_PANEL if z.device.type == "cpu" else v
    for c0 in range(0, v, step):
        c1 = min(c0 + step, v)
        zp = z if c1 - c0 == v else z[:, c0:c1]
        wp = w if c1 - c0 == v else w[c0:c1]
        if bias is None:
            torch.mm(x, wp.t(), out=zp)
        else:
            torch.addmm(bias[c0:c1], x, wp.t(), out=zp)


# --------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------


def run_chunks(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    info: RowInfo,
    plan: ChunkPlan,
    epi,
    want: tuple[bool, bool, bool],
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Row losses (float32, unscaled) and ``(dX, dW, db)`` for ``r`` (see the module docstring).

    ``want`` says which of ``dX, dW, db`` to compute; ``row_scale`` multiplies each row's
    gradient (the ``'none'`` backward).
    """
    n, d = x.shape
    v = w.shape[0]
    dev, dtype = x.device, x.dtype
    want_x, want_w, want_b = want
    any_grad = want_x or want_w or want_b
    loss_rows = torch.empty(n, dtype=_F32, device=dev)
    acc_dtype = _F32 if plan.accumulate == "float32" else dtype
    dx = _empty(n, d, dtype, dev) if want_x else None
    dw = None
    if want_w:
        if n == 0:
            dw = torch.zeros((v, d), dtype=acc_dtype, device=dev)
        else:
            dw = _empty(v, d, acc_dtype, dev)
    db = torch.zeros(v, dtype=_F32, device=dev) if want_b else None
    m_rows, tile = plan.rows, min(plan.tile, v)
    buf = _chunk_buffer(min(m_rows, n) * tile, dtype, dev)

    for i in range(0, n, m_rows):
        j = min(i + m_rows, n)
        c = j - i
        xc = x[i:j]
        ck = _chunk(info, i, j, row_scale)
        if tile >= v:
            # Whole rows: logits, epilogue in place, then the gradient GEMMs.
            z = buf[: c * v].view(c, v)
            _logits(z, xc, w, bias)
            epi.rows(z, ck, loss_rows[i:j], any_grad)
            if want_x:
                torch.mm(z, w, out=dx[i:j])
            if want_w:
                _mm_acc(dw, z.t(), xc, i == 0)
            if want_b:
                db.add_(z.sum(0, dtype=_F32))
            continue
        # Vocabulary tiles: sweep 1 for the row statistics, sweep 2 for the gradient.
        st = epi.new_stats(c, dev)
        for c0 in range(0, v, tile):
            c1 = min(c0 + tile, v)
            z = buf[: c * (c1 - c0)].view(c, c1 - c0)
            _logits(z, xc, w[c0:c1], None if bias is None else bias[c0:c1])
            epi.tile_stats(z, c0, ck, st)
        loss, lse = epi.finish_stats(st, ck)
        loss_rows[i:j] = loss
        if not any_grad:
            continue
        dx_acc = None
        if want_x:
            dx_acc = dx[i:j] if dtype == _F32 else torch.empty((c, d), dtype=_F32, device=dev)
        for c0 in range(0, v, tile):
            c1 = min(c0 + tile, v)
            z = buf[: c * (c1 - c0)].view(c, c1 - c0)
            _logits(z, xc, w[c0:c1], None if bias is None else bias[c0:c1])
            epi.tile_grad(z, c0, ck, lse)
            if want_x:
                _mm_acc(dx_acc, z, w[c0:c1], c0 == 0, exact=False)
            if want_w:
                _mm_acc(dw[c0:c1], z.t(), xc, i == 0)
            if want_b:
                db[c0:c1].add_(z.sum(0, dtype=_F32))
        if want_x and dx_acc is not dx[i:j]:
            dx[i:j].copy_(dx_acc)

    buf = z = None  # free the chunk buffer before the float32 dW accumulator is converted
    if dw is not None and dw.dtype != w.dtype:
        dw = dw.to(w.dtype)
    if db is not None:
        db = db.to(bias.dtype)
    return loss_rows, dx, dw, db


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Autograd node of the chunked linear + cross-entropy (any backend's epilogue).

    ``'mean'``/``'sum'``: the forward computes every gradient; the backward scales them by
    ``grad_output`` and hands them over once (a second backward raises). ``'none'``: the forward
    computes the losses; the backward recomputes the chunks with the per-row ``grad_output``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        w: Tensor,
        bias: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        mask: Tensor | None,
        normalizer: Tensor | None,
        opts: LossOptions,
        plan: ChunkPlan,
        epi,
        retain_graph: bool,
        recompute: Recompute | None,
    ) -> Tensor:
        want = tuple(bool(f) for f in ctx.needs_input_grad[:3])
        ctx.recompute = recompute or Recompute("linear_cross_entropy")  # no rule: raises
        if bias is None:
            want = (want[0], want[1], False)
        info = row_info(target, weight, mask, normalizer, opts)
        ctx.opts, ctx.plan, ctx.epi, ctx.retain = opts, plan, epi, retain_graph
        ctx.deferred = opts.reduction == "none"
        if ctx.deferred:
            loss_rows, *_ = run_chunks(x, w, bias, info, plan, epi, (False, False, False))
            ctx.info = info
            ctx.save_for_backward(x, w, bias)
            ctx.want = want
            return loss_rows.to(x.dtype)
        loss_rows, dx, dw, db = run_chunks(x, w, bias, info, plan, epi, want)
        ctx.grads = [dx, dw, db]
        return _reduce(loss_rows, info, opts.reduction, x.dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        tail = (None,) * 9
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            if not ctx.retain:
                ctx.grads = None
            return ctx.recompute.gradients(grad_loss, ctx.needs_input_grad)
        if ctx.deferred:
            x, w, bias = ctx.saved_tensors
            _, dx, dw, db = run_chunks(
                x, w, bias, ctx.info, ctx.plan, ctx.epi, ctx.want,
                row_scale=grad_loss.to(_F32).reshape(-1),
            )  # fmt: skip
            return (dx, dw, db, *tail)
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "losskit's fused linear_cross_entropy computes its gradients once, in the "
                "forward, and hands them to the first backward; a second backward through the "
                "same graph (retain_graph=True) needs options=torch.nn.LinearCrossEntropyOptions("
                "allow_retain_graph=True) (one more copy of the gradients); or recompute the "
                "loss, or use impl='reference'"
            )
        if ctx.retain:  # allow_retain_graph: scale copies, keep the originals for the next one
            grads = [None if t is None else t.clone() for t in grads]
        else:
            ctx.grads = None
            ctx.recompute.release()
        for t in grads:
            if t is not None and t.numel():
                epi_scale(ctx.epi, t, grad_loss)
        return (*grads, *tail)


def epi_scale(epi, t: Tensor, grad_output: Tensor) -> None:
    epi.scale_(t if t.dim() == 2 else t.unsqueeze(0), grad_output)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    plan: ChunkPlan,
    epilogue=None,
    retain_graph: bool = False,
    recompute: Recompute | None = None,
) -> Tensor:
    r"""Chunked ``cross_entropy(x @ w.T + bias, target)`` of validated 2-D inputs.

    .. math::
        \ell_i = (1-\epsilon) w_{y_i} (\mathrm{lse}_i - z'_{i,y_i})
                 + \frac{\epsilon}{V} \sum_c w_c (\mathrm{lse}_i - z'_{i,c}) + c\,\mathrm{lse}_i^2,
        \qquad z_i = x_i W^\top + b

    Args:
        x: ``(N, D)`` float32 / bfloat16 / float16, contiguous.
        w: ``(V, D)`` head weight, ``x``'s dtype and device, contiguous.
        target: ``(N,)`` int64 in ``[0, V)`` or equal to ``ignore_index``.
        bias: ``(V,)`` or None. weight: ``(V,)`` class weights or None.
        ignore_index, label_smoothing, z_loss, softcap, reduction: as ``cross_entropy``.
        normalizer: 0-dim float32 denominator for ``'mean'`` (0 gives 0), or None.
        mask: ``(N,)`` bool (True = counts), or None.
        plan: from :func:`plan_chunks`.
        epilogue: the backend's epilogue (default :class:`TorchEpilogue`, the CPU one).
        retain_graph: keep the gradients for a second backward through the same graph (one more
            copy of them; torch's ``allow_retain_graph``). Default: the first backward takes them.
        recompute: how a ``create_graph=True`` backward recomputes differentiable gradients
            (:class:`~losskit.kernels.recompute.Recompute`); None: such a backward raises.

    Shape:
        Output ``(N,)`` for ``'none'``, else ``()``; dtype of ``x``.

    Example:
        >>> x, w = torch.randn(6, 8, requires_grad=True), torch.randn(10, 8)
        >>> y = torch.tensor([1, 2, 3, 4, 5, 6])
        >>> plan = plan_chunks(6, 8, 10, x.dtype, "cpu", budget=1 << 20, chunk_size=4)
        >>> loss = linear_cross_entropy(x, w, y, bias=None, weight=None, ignore_index=-100,
        ...     label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
        ...     normalizer=None, mask=None, plan=plan)
        >>> ref = torch.nn.functional.cross_entropy(x @ w.T, y)
        >>> bool(torch.allclose(loss, ref))
        True
    """
    opts = LossOptions(
        int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), reduction,
    )  # fmt: skip
    if epilogue is None:
        epilogue = TorchEpilogue(weight, w.shape[0], opts)
    wf = None if weight is None else weight.to(_F32)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias)):
        return LinearCrossEntropyFunction.apply(
            x, w, bias, target, wf, mask, normalizer, opts, plan, epilogue, retain_graph, recompute
        )
    info = row_info(target, wf, mask, normalizer, opts)
    loss_rows, *_ = run_chunks(x, w, bias, info, plan, epilogue, (False, False, False))
    return _reduce(loss_rows, info, reduction, x.dtype)
