"""Data parallelism: one global token count, and a DDP hook that sums gradients.

:func:`global_count` all-reduces :func:`losskit.count_targets` so that
``normalizer=global_count(...)`` turns every rank's (and every micro-batch's) ``'mean'`` into a
share of the single-process mean over the whole global batch. DDP and FSDP *average* gradients
over the ranks, so multiply the loss by the world size before ``backward`` (or register
:func:`sum_allreduce_hook`); see ``docs/distributed.md`` for the recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V
from ..functional.categorical import count_targets
from .group import comm_device, group_rank

__all__ = ["global_count", "sum_allreduce_hook"]


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
    _, world = group_rank(group)
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
    device = comm_device(group, count)
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
