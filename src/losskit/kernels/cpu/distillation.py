"""Fused distillation losses on the CPU: both gradients written in the forward, a block at a time.

Plain torch ops (``kernels/divergence.py``'s row rule) on blocks of rows of about
:data:`BLOCK_BYTES` of float32 each, so that the passes after
the first (the two log-softmaxes, the divergence, its row sums, the gradients) find the block
in cache: the student's and the teacher's logits are read from memory once, and each gradient
written once. Low-precision logits are widened a block at a time into float32 scratch and the
gradients rounded once. The backward multiplies the stored gradients by ``grad_output``
(nothing to do when it is exactly 1).

Equivalent to :func:`losskit.functional.distillation.reference_distillation` (the student's
gradient, and the teacher's when its logits require one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._validate.distillation import DistillationOptions
from .. import divergence
from ..divergence import rows_, run_distillation
from ..recompute import Recompute
from .memory import empty_rows

__all__ = ["blocks_", "distillation", "distillation_forward", "scale_"]

_F32 = torch.float32

#: float32 bytes of student logits per block of rows. The rule makes 6-8 block-sized
#: temporaries (both rows' log-probabilities and probabilities, the mixture, the gradient), so
#: the block must be smaller than the cross-entropy's: on a 2-core EPYC (1 MiB L2 per core,
#: 32 MiB L3), the JSD of 256 x 32000 float32 rows took 79 ms in 512 KiB blocks, 84 ms in
#: 1 MiB, 122 ms in 256 KiB and 1460 ms in the cross-entropy's 4 MiB (out of cache).
BLOCK_BYTES = 512 << 10


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

    ``zs``, ``zt``: ``(R, V)`` logits (any float dtype, rows contiguous), read only; ``gs``,
    ``gt``: ``(R, V)`` outputs or None (not wanted); each may be its logits' own storage (the
    chunked engine's buffers), then overwritten in place. ``y``: int64 targets, 0 where a row
    does not count, or None; ``r``: float32 ``(R,)`` gradient factors (0 where a row does not
    count).
    """
    c, v = zs.shape
    if c == 0:
        return
    step = max(1, min(c, BLOCK_BYTES // (4 * max(v, 1))))
    # float32 gradients are computed in their own storage; other dtypes in float32 scratch
    s_direct = gs is not None and gs.dtype == _F32
    t_direct = gt is not None and gt.dtype == _F32
    s_buf = None if s_direct else torch.empty((step, v), dtype=_F32)
    t_buf = None
    if not t_direct and (gt is not None or zt.dtype != _F32):
        t_buf = torch.empty((step, v), dtype=_F32)
    for s0 in range(0, c, step):
        s1 = min(s0 + step, c)
        s32 = gs[s0:s1] if s_direct else s_buf[: s1 - s0]
        _load(s32, zs[s0:s1])
        if t_direct:
            t32 = gt[s0:s1]
            _load(t32, zt[s0:s1])
        elif t_buf is not None:
            t32 = t_buf[: s1 - s0]
            t32.copy_(zt[s0:s1])
        else:
            t32 = zt[s0:s1]  # float32, read only
        rows_(
            s32, t32, None if y is None else y[s0:s1], r[s0:s1], opts, loss_out[s0:s1],
            grad_s=gs is not None, grad_t=gt is not None,
        )  # fmt: skip
        if gs is not None and not s_direct:
            gs[s0:s1].copy_(s32)
        if gt is not None and not t_direct:
            gt[s0:s1].copy_(t32)


def _load(out: Tensor, src: Tensor) -> None:
    """``out = src``, skipped when ``out`` is ``src`` (the engine's buffers, in place)."""
    if out.data_ptr() != src.data_ptr():
        out.copy_(src)


def scale_(t: Tensor, grad_output: Tensor) -> None:
    """``t *= grad_output`` (a one-element tensor), skipped when it is exactly 1."""
    go = float(grad_output.reshape(-1)[0])
    if go != 1.0:
        t.mul_(go)


def _empty(n: int, v: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return empty_rows(n, v, dtype)


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
    """The fused distillation loss of validated ``(N, V)`` CPU logits (rows contiguous).

    ``target``: ``(N,)`` int64 hard labels or None; ``mask``: ``(N,)`` bool or None;
    ``normalizer``: 0-dim float32 or None. Gradients flow to whichever of ``student`` and
    ``teacher`` requires one. Output ``(N,)`` for ``'none'``, else ``()``, in the logits' dtype.
    """
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
