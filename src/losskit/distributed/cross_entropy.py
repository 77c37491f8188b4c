"""Vocabulary-parallel cross-entropy: each rank holds a slice of the logits' class dimension.

:func:`vocab_parallel_cross_entropy` returns the loss of the full vocabulary while only per-row
statistics cross the network, never logits (:mod:`.slices` has the math, :mod:`.call` the checks
and the reduction both vocabulary-parallel losses share).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V
from ..functional._common import result_dtype
from ..kernels.rows import row_loss
from .call import Checked, begin, check_options, class_targets
from .dtensor import unwrap
from .slices import Spec, capped, combine, partials, refuse_create_graph, slice_gradient

__all__ = ["vocab_parallel_cross_entropy"]


class VocabParallelCrossEntropyFunction(torch.autograd.Function):
    """Per-row loss of a vocabulary slice; the backward is local to the slice."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        y: Tensor,
        w_local: Tensor | None,
        w_y: Tensor,
        spec: Spec,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        z, _ = capped(logits.to(dtype), spec.softcap)
        lse, z_y, zsum = combine(partials(z, y, w_local, spec), spec)
        loss = row_loss(lse, z_y, zsum, w_y, spec.k)
        ctx.save_for_backward(logits, y, w_local, w_y, lse)
        ctx.spec, ctx.dtype = spec, dtype
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        refuse_create_graph("vocab_parallel_cross_entropy")
        logits, y, w_local, w_y, lse = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            z, tanh = capped(logits.to(ctx.dtype), ctx.spec.softcap)
            grad = slice_gradient(z, tanh, g.to(ctx.dtype), y, lse, w_y, w_local, ctx.spec)
            grad = grad.to(logits.dtype)
        return grad, None, None, None, None, None


def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Literal["none", "mean", "sum"] = "mean",
    normalizer: float | Tensor | None = None,
    mask: Tensor | None = None,
    return_z_loss: bool = False,
    vocab_start: int | None = None,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy over a vocabulary split across the ranks of ``group``.

    Rank ``r`` holds the logits of classes ``[start_r, start_r + V_r)`` for the same ``N`` tokens;
    together the slices tile the vocabulary ``0..V-1`` (slices may be uneven, even empty). The
    result equals :func:`losskit.functional.cross_entropy` on the concatenated logits (class
    dimension last), with :math:`p = \mathrm{softmax}(z')`, :math:`z' = s \tanh(z / s)` with
    ``softcap`` (else :math:`z`), ``w`` the class weights, :math:`\epsilon` the smoothing:

    .. math::
        \ell_n = (1 - \epsilon)\, w_{y_n} (-\log p_{n,y_n})
                 + \frac{\epsilon}{V} \sum_c w_c (-\log p_{n,c}) + z \cdot \mathrm{lse}(z'_n)^2

    Only row statistics cross the network (see the module docstring): one ``all_gather`` of 10
    integers per rank, then ``all_reduce(MAX)`` of N maxima and ``all_reduce(SUM)`` of 2 x N
    values (3 x N with label smoothing). The backward needs no communication: each rank's
    gradient is its slice of the single-device gradient. The returned loss is the same on every
    rank. Every rank must call this (it is a collective), with the same target, mask and options.

    **DTensor inputs** (the layout torch's ``loss_parallel()`` takes, :mod:`.dtensor`): the
    logits may be a DTensor sharded on the classes, its last dimension, over a 1-D
    ``DeviceMesh`` (``Shard(-1)``; uneven as DTensor splits them), with the target, ``weight``,
    ``mask`` and ``normalizer`` plain or ``Replicate()``. The group and each rank's slice then
    come from the mesh and the placement (leave ``group`` and ``vocab_start`` None), the logits'
    gradient is a DTensor with the logits' placement, and the loss is a ``Replicate()`` DTensor
    on the mesh, as ``loss_parallel()`` returns it, for every reduction. Other placements
    (``Shard(0)``, ``Partial``, ``Replicate`` logits, a 2-D mesh) raise on every rank before any
    collective.

    Args:
        logits_shard: this rank's slice of the logits, ``(*, V_local)``, e.g. ``(N, V_local)`` or
            ``(B, T, V_local)``; the classes are the *last* dimension. Or the whole logits as a
            DTensor with placements ``(Shard(-1),)``.
        target: class indices of the whole vocabulary, ``(*)`` (the logits' shape without the
            last dimension), identical on every rank.
        group: the process group that splits the vocabulary. Default: the world.
        weight: the *full* class weights ``(V,)``, the same on every rank (each rank slices its
            part; every rank needs the target's weight, which may live on another rank's slice).
            Default None.
        ignore_index: class index that is skipped. Default -100.
        label_smoothing: in [0, 1]. Default 0.
        z_loss: coefficient of the ``lse^2`` term. Default 0.
        softcap: ``s``: logits become ``s * tanh(z / s)`` first. Default None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. ``'mean'`` divides by the sum of the
            counted targets' weights (their count without ``weight``). Default ``'mean'``.
        normalizer: with ``'mean'``, divide the sum by this instead (e.g. :func:`global_count`).
        mask: bool over the target's positions, True where the position counts.
        return_z_loss: also return the z term alone, reduced the same way (detached).
        vocab_start: the first class this rank holds. Default None: the slices follow the rank
            order, their sizes read from every rank (uneven slices allowed). Give it on every
            rank or on none; the given slices must tile ``0..V-1``.
        validate: ``False`` skips the value checks (target range and agreement across ranks);
            the shape facts are still exchanged.

    Shape:
        - Input: ``(*, V_local)``.
        - Target: ``(*)``, class indices in ``[0, V)`` or ``ignore_index``.
        - Output: scalar; with ``'none'``, ``(*)``.

    Returns:
        The loss in the logits' dtype (and the z term with ``return_z_loss``); ``Replicate()``
        DTensors for DTensor logits.

    Raises:
        LossIndexError: on a rank whose target holds an index outside ``[0, V)``; every other
            rank raises :class:`~losskit.LossValueError` naming that rank (no rank deadlocks).

    Example:
        >>> # on each of 2 ranks, after init_process_group("gloo", ...):
        >>> # full = torch.randn(8, 10); y = torch.randint(0, 10, (8,))
        >>> # shard = full[:, 5 * rank:5 * rank + 5].requires_grad_()
        >>> # loss = vocab_parallel_cross_entropy(shard, y)  # == LF.cross_entropy(full, y)
        >>> # or, with mesh = init_device_mesh("cpu", (2,)):
        >>> # dt = distribute_tensor(full, mesh, [Shard(-1)]).requires_grad_()
        >>> # loss = vocab_parallel_cross_entropy(dt, y)  # Replicate() DTensor; dt.grad Shard(1)

    Equivalent to (but without ever gathering the logits)::

        full = torch.cat(all_gather(logits_shard), dim=-1)
        LF.cross_entropy(full.reshape(-1, V), target.reshape(-1), weight, ...)
    """

    dt = unwrap(
        {"logits_shard": (logits_shard, -1, "the classes: the last dimension")},
        {"target": target, "weight": weight, "mask": mask, "normalizer": normalizer},
        group=group,
        vocab_start=vocab_start,
    )
    if dt is not None:
        logits_shard, group, vocab_start = dt.sharded["logits_shard"], dt.group, dt.vocab_start
        target, weight, mask, normalizer = dt.replicated.values()

    def check() -> Checked:
        opts = check_options(
            reduction, ignore_index, label_smoothing, z_loss, softcap, normalizer, vocab_start
        )
        V.require_tensor("logits_shard", logits_shard)
        V.require_floating("logits_shard", logits_shard, what="this rank's slice of the logits")
        if logits_shard.dim() == 0:
            raise V.LossValueError(
                "logits_shard must have a class dimension (the last): expected shape (N, V_local)"
                " or (B, T, V_local), got a 0-dim tensor"
            )
        t = class_targets(target, logits_shard, "logits_shard", weight, mask, opts)
        return Checked(opts, normalizer, vocab_start, t, logits_shard.shape[-1])

    call = begin(check, logits_shard, group=group, weight=weight, mask=mask, validate=validate)
    logits = call.inputs(logits_shard, call.layout.size)
    rows = call.rows
    loss, lse = VocabParallelCrossEntropyFunction.apply(
        logits, rows.y, call.w_local, rows.w_y, call.spec, call.dtype
    )
    out = call.finish(loss, lse, return_z_loss, result_dtype(logits_shard))
    return out if dt is None else dt.wrap(out)
