"""How a chunked call is cut: the memory budgets, and the planner that sizes chunks and tiles."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "BUDGETS",
    "CPU_FIRST_CALL",
    "CPU_GEMM_SCRATCH",
    "ChunkPlan",
    "LOGITS_PANEL",
    "MIN_ROWS",
    "PAIR_BUDGETS",
    "PAIR_SCRATCH",
    "SEQUENCE_BUDGETS",
    "TILE_ALIGN",
    "TILE_ROWS",
    "budget_bytes",
    "cpu_reserve",
    "plan_chunks",
    "plan_pairs",
    "plan_sequences",
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
#: Bytes a two-head call (distillation) may hold beyond its gradients, per (device type,
#: setting). A chunk holds two rows of logits per position, so on the CPU the budgets are about
#: twice the cross-entropy's: the chunks keep the row counts at which the GEMMs run at full speed
#: (at 2048 x 1024 x 32000 float32, 64 MiB gave 160-row chunks and 48 with 'lean', 3.7x the
#: GEMMs; 128 MiB, 400 rows at 1.04x but 127 MiB as a user measures it, too close to a 128 MiB
#: goal: 112 MiB keeps a margin).
#: On CUDA 1 GiB already gives 1-2K rows at LLM vocabularies.
PAIR_BUDGETS = {
    ("cuda", "default"): 1024 * MiB,
    ("cuda", "lean"): 64 * MiB,
    ("cpu", "default"): 112 * MiB,
    ("cpu", "lean"): 64 * MiB,
}
#: Bytes a sequence-level loss (preference, policy gradient) may hold beyond its gradients, per
#: (device type, setting). Its chunks hold whole groups of sequences (a chosen answer and its
#: rejected one: 2 x 512 rows in ``losskit bench dpo``) so that the gradient is made in one
#: sweep (three GEMMs); a group larger than the budget's rows takes two sweeps (four GEMMs). On
#: the CPU the default holds one such pair at V = 32000 in float32 (125 MiB of logits); 'lean'
#: gives the cross-entropy's chunks and two sweeps.
SEQUENCE_BUDGETS = {
    ("cuda", "default"): 1024 * MiB,
    ("cuda", "lean"): 64 * MiB,
    ("cpu", "default"): 192 * MiB,
    ("cpu", "lean"): 64 * MiB,
}
#: The CPU pair epilogue's block temporaries (``kernels/cpu/distillation.py``: about 8 blocks of
#: its ``BLOCK_BYTES``), which the pair planner keeps out of the chunk buffers.
PAIR_SCRATCH = {"cuda": 0, "cpu": 4 * MiB}
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


def _whole_rows(
    n: int, d: int, v: int, dtype: torch.dtype, dev: str, budget: int, accumulate: str
) -> tuple[str, int, int]:
    """``(accumulate, bytes for the chunk buffer, bytes per row)`` of a one-head whole-row plan.

    With ``accumulate='auto'``, low-precision weights get a float32 ``dW`` accumulator when it
    takes at most half the budget. Not the chunk: the float32 ``dW`` accumulator, ``O(N + V)``
    vectors, 1/32 of the budget kept for the epilogue's small temporaries and the allocator's
    rounding, and on the CPU what the process gains outside our buffers (at most half the
    budget; a budget smaller than that reserve cannot hold from outside and is taken as the
    buffers' alone). Off-GEMM temporaries of the float32 accumulation of low-precision products
    where the device has no mixed-precision GEMM (CPU): the chunk's gradient as float32.
    """
    low = dtype != _F32
    if not low:
        acc = "float32"
    elif accumulate == "auto":
        acc = "float32" if 2 * v * d * 4 <= budget else "input"
    else:
        acc = accumulate
    f32_acc = low and acc == "float32"
    upcast = f32_acc and dev == "cpu"
    fixed = (v * d * 4 if f32_acc else 0) + 8 * v + 32 * n + budget // 32
    reserve = cpu_reserve() if dev == "cpu" else 0
    if reserve <= budget:
        fixed += min(reserve, budget // 2)
    per_row = v * _itemsize(dtype) + (v * 4 + d * 4 if upcast else 0)
    return acc, max(budget - fixed, 0), per_row


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
    acc, avail, per_row = _whole_rows(n, d, v, dtype, dev, budget, accumulate)
    upcast = low and acc == "float32" and dev == "cpu"
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


def budget_bytes(
    memory_budget: int | str, device_type: str, *, pairs: bool = False, sequences: bool = False
) -> int:
    """A ``memory_budget`` argument in bytes: a name of :data:`BUDGETS` (of
    :data:`PAIR_BUDGETS` for a two-head loss, :data:`SEQUENCE_BUDGETS` for a sequence-level
    one), or a number."""
    if not isinstance(memory_budget, str):
        return int(memory_budget)
    table = SEQUENCE_BUDGETS if sequences else PAIR_BUDGETS if pairs else BUDGETS
    return table[("cuda" if device_type == "cuda" else "cpu", memory_budget)]


def plan_pairs(
    n: int,
    d: int,
    v: int,
    dtype: torch.dtype,
    device_type: str,
    *,
    budget: int,
    chunk_size: int | None = None,
) -> ChunkPlan:
    """The plan of a two-head loss (distillation): whole rows of both heads' logits per chunk.

    Sized as :func:`plan_chunks` sizes a head of ``2 V`` columns (the chunk holds a student and
    a teacher row of ``V`` logits each; ``d`` the wider head's input features), but never tiled
    over the vocabulary: the divergence's gradient needs each row's sums over both whole rows,
    so a budget too small for :data:`MIN_ROWS` rows gives chunks of fewer rows (down to one)
    instead. The returned plan's ``tile`` is ``V``.
    """
    dev = "cuda" if device_type == "cuda" else "cpu"
    s = _itemsize(dtype)
    low = dtype != _F32
    # low-precision heads: float32 dW accumulators (one per head) when they take half the budget
    acc = "float32" if not low or 2 * 2 * v * d * 4 <= budget else "input"
    if chunk_size is not None:
        return ChunkPlan(max(1, min(int(chunk_size), n)), v, acc)
    f32_acc = low and acc == "float32"
    upcast = f32_acc and dev == "cpu"
    fixed = (2 * v * d * 4 if f32_acc else 0) + 16 * v + 48 * n + budget // 32 + PAIR_SCRATCH[dev]
    reserve = cpu_reserve() if dev == "cpu" else 0
    if reserve <= budget:
        fixed += min(reserve, budget // 2)
    avail = max(budget - fixed, 0)
    per_row = 2 * v * s + (2 * v * 4 + 2 * d * 4 if upcast else 0)
    return ChunkPlan(_balanced(n, max(avail // per_row, 1)), v, acc)


def plan_sequences(
    n: int,
    d: int,
    v: int,
    dtype: torch.dtype,
    device_type: str,
    *,
    budget: int,
    chunk_size: int | None = None,
) -> ChunkPlan:
    """The plan of a sequence-level loss (``chunked/sequences.py``): :func:`plan_chunks`'s
    whole-row plan, never tiled over the vocabulary (each row's log-probability and gradient
    need its whole row): a budget too small for :data:`MIN_ROWS` rows gives fewer rows (down
    to one). ``chunk_size`` forces the rows."""
    dev = "cuda" if device_type == "cuda" else "cpu"
    acc, avail, per_row = _whole_rows(n, d, v, dtype, dev, budget, "auto")
    if chunk_size is not None:
        return ChunkPlan(max(1, min(int(chunk_size), n)), v, acc)
    return ChunkPlan(_balanced(n, max(avail // per_row, 1)), v, acc)


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
