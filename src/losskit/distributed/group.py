"""The group's facts, exchanged once per call: who this rank is, and what every rank holds.

Before any math, :func:`exchange` gathers a few integers from every rank (shard size, row
count, hidden size, target range and checksum, a "my input is bad" flag) in one ``all_gather``,
so that a rank with bad input makes *every* rank raise instead of leaving the others waiting in
a collective, and so that each rank learns where its classes sit in the whole vocabulary
(:class:`Layout`). These checks need the whole group and exist only here; the ones that concern
one tensor are in :mod:`losskit._validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V

__all__ = ["NONE", "Layout", "comm_device", "exchange", "group_rank"]

# Fields of the one small all_gather every call starts with (int64, one row per rank).
_FAILED, _V_LOCAL, _START, _ROWS, _WIDTH, _TMIN, _TMAX, _TSUM, _WLEN, _MSUM = range(10)
_NFIELDS = 10
NONE = -1  # "not given" in the _START, _WIDTH, _WLEN and _MSUM fields


@dataclass(frozen=True)
class Layout:
    """Where this rank's classes sit in the full vocabulary."""

    rank: int
    world: int
    start: int  # first class this rank holds
    size: int  # V_local
    num_classes: int  # V, the whole vocabulary
    sizes: tuple[int, ...]


def group_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise V.LossValueError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group(...) "
            "on every rank first"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise V.LossValueError("this process is not a member of group; pass a group it belongs to")
    return rank, dist.get_world_size(group)


def comm_device(group: dist.ProcessGroup | None, like: object) -> torch.device:
    """The device the group's collectives take: ``like``'s, or CUDA for NCCL, else the CPU."""
    if isinstance(like, Tensor):
        return like.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def target_summary(
    target: Tensor, ignore_index: int, mask: Tensor | None
) -> tuple[int, int, int, int]:
    """(min, max, sum) of the non-ignored class indices and the mask's True count (one sync).

    (big, -1, 0) when no index counts; the count is -1 without a mask.
    """
    big = torch.iinfo(torch.int64).max
    t = target.reshape(-1).long()
    valid = t != ignore_index
    none = torch.tensor(NONE, device=t.device)
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


def exchange(
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
) -> Layout:
    """Gather every rank's shape facts once; raise the same way on every rank if any is bad."""
    row = [0] * _NFIELDS
    row[_TMIN], row[_TMAX] = torch.iinfo(torch.int64).max, -1
    row[_START] = row[_WIDTH] = row[_WLEN] = row[_MSUM] = NONE
    if failure is None:
        row[_V_LOCAL], row[_ROWS], row[_WIDTH] = v_local, rows, width
        row[_START] = NONE if vocab_start is None else vocab_start
        row[_WLEN] = NONE if weight is None else weight.shape[0]
        if validate and target is not None:
            row[_TMIN], row[_TMAX], row[_TSUM], row[_MSUM] = target_summary(
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
    if all(s == NONE for s in starts):
        start = sum(sizes[:rank])
    elif any(s == NONE for s in starts):
        given = [r for r in range(world) if starts[r] != NONE]
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
    if any(w not in (NONE, num_classes) for w in wlens) or len(set(wlens)) > 1:
        bad = next(r for r in range(world) if wlens[r] != num_classes)
        got = "no weight" if wlens[bad] == NONE else f"shape ({wlens[bad]},)"
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
    return Layout(rank, world, start, v_local, num_classes, sizes)
