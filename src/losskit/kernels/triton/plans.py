"""Launch plans of the row kernels: how the rows of ``V`` classes are spread over programs.

A row kernel (``cross_entropy.py``) reduces each row of logits to its online-softmax statistics
and writes its gradient. Four plans compute exactly the same numbers (:func:`make_plan`
chooses one; ``plan`` is the word for them, ``impl`` only ever names reference / fused / auto):

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

The environment variable ``LOSSKIT_TRITON_CE_PLAN`` names the plan the launchers use by default
(:data:`DEFAULT_PLAN`: ``auto`` unless set; the older name ``LOSSKIT_TRITON_CE_IMPL`` is still
read when it is unset), and ``LOSSKIT_TRITON_CE_COOP=0`` keeps ``auto`` off ``coop``.
"""

import os
from dataclasses import dataclass, replace

import torch
import triton

from .common import INTERPRETED, sm_count, warps

__all__ = [
    "CHUNK_MAX",
    "DEFAULT_PLAN",
    "PLANS",
    "Plan",
    "ROWLOOP_BLOCK",
    "SINGLE_LIMIT",
    "SINGLE_MAX",
    "chunking",
    "coop_safe",
    "make_plan",
]

#: Launch plans accepted by :func:`make_plan` (``"auto"`` picks one of the others).
PLANS = ("auto", "single", "coop", "split", "rowloop")

# Tile sizes. `python tests/kernels/sm90.py` compiles the kernels for sm_90 without a GPU and
# prints registers and spills. With triton 3.9, the plain bf16 chunk kernel holding 32 values
# per thread needs 93-108 registers (16384 values with 16 warps, 8192 with 8): one program of
# 16 warps per SM, or two of 8; holding 16 per thread needs 55-60 (8192 with 16 warps: two
# programs of 16 warps per SM); 32768 with 32 warps spills. Which is fastest is measured, not
# inferred: benchmarks/gpu_ce_kernel.py times each of these plans side by side.

#: Longest row that ``plan="auto"`` holds in one program (elements, a power of two).
SINGLE_MAX = 16384
#: Largest row ``plan="single"`` accepts when asked for explicitly.
SINGLE_LIMIT = 65536
#: Widest chunk one ``coop``/``split`` program holds (elements).
CHUNK_MAX = 16384
#: Columns per loop step of ``rowloop``.
ROWLOOP_BLOCK = 16384

#: The plan the launchers use unless told: ``LOSSKIT_TRITON_CE_PLAN``, else the older
#: ``LOSSKIT_TRITON_CE_IMPL``, else ``"auto"``.
DEFAULT_PLAN = os.environ.get("LOSSKIT_TRITON_CE_PLAN") or os.environ.get(
    "LOSSKIT_TRITON_CE_IMPL", "auto"
)


@dataclass(frozen=True)
class Plan:
    """How one call is launched: which kernel, tile size and warps (see the module docstring)."""

    kind: str  # "single" | "coop" | "split" | "rowloop"
    block: int  # elements per program (per loop step for rowloop); a power of two
    num_warps: int
    chunks: int = 1  # S: programs per row (coop, split)
    chunk_width: int = 0  # CW: columns per chunk (coop, split, single: V)
    num_stages: int = 1


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
    return major >= 7 and 2 <= chunks <= sm_count(index)


def chunking(V: int, chunk_max: int) -> tuple[int, int, int]:
    """(S, CW, BLOCK): S near-equal chunks of at most ``chunk_max`` columns, none empty."""
    s = triton.cdiv(V, chunk_max)
    cw = triton.cdiv(V, s)
    s = triton.cdiv(V, cw)
    return s, cw, triton.next_power_of_2(cw)


def make_plan(
    V: int,
    device: torch.device,
    plan: str = "auto",
    *,
    chunk_max: int | None = None,
    num_warps: int | None = None,
    rowloop_block: int | None = None,
    num_stages: int | None = None,
) -> Plan:
    """Choose the launch plan for rows of ``V`` classes on ``device``.

    ``plan="auto"``: ``single`` for ``V <= SINGLE_MAX``; else ``coop`` where :func:`coop_safe`
    holds; else ``rowloop``. ``chunk_max`` (coop/split chunk width, default :data:`CHUNK_MAX`),
    ``num_warps`` (default :func:`~.common.warps` of the block) and ``rowloop_block`` override
    the defaults, for benchmarks.
    """
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    chunk_max = CHUNK_MAX if chunk_max is None else chunk_max
    if plan == "auto":
        if V <= SINGLE_MAX:
            plan = "single"
        elif coop_safe(device, chunking(V, chunk_max)[0]):
            plan = "coop"
        else:
            plan = "rowloop"
    if plan == "single":
        if V > SINGLE_LIMIT:
            raise ValueError(f"plan='single' holds rows of at most {SINGLE_LIMIT} classes, got {V}")
        block = triton.next_power_of_2(V)
        chosen = Plan("single", block, warps(block), 1, V)
    elif plan in ("coop", "split"):
        s, cw, block = chunking(V, chunk_max)
        if plan == "coop" and s > 1 and not coop_safe(device, s):
            raise ValueError(
                f"plan='coop' is not safe here ({device}, {s} chunks per row; the interpreter "
                "runs programs one at a time): use 'split' or 'rowloop'"
            )
        chosen = Plan(plan if s > 1 else "single", block, warps(block), s, cw)
    else:
        block = min(triton.next_power_of_2(V), rowloop_block or ROWLOOP_BLOCK)
        chosen = Plan("rowloop", block, warps(block))
    if num_warps is not None:
        chosen = replace(chosen, num_warps=num_warps)
    if num_stages is not None:
        chosen = replace(chosen, num_stages=num_stages)
    return chosen
