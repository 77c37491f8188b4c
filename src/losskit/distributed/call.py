"""One call of a vocabulary-parallel loss, from its arguments to the reduced loss.

Both losses (:mod:`.cross_entropy`, :mod:`.linear_cross_entropy`) go the same way:

1. their checks run on every rank inside :func:`begin`, which catches a failure instead of
   raising it at once, so that the group exchange (:func:`losskit.distributed.group.exchange`)
   still runs and every rank raises together;
2. :func:`begin` then counts the rows (:func:`losskit._reduction.count_rows`: which rows count,
   each row's target weight, what ``'mean'`` divides by) and returns a :class:`Call`;
3. the loss's ``autograd.Function`` computes each row's loss and log-sum-exp, and
   :meth:`Call.finish` reduces them (and the z term, detached) through the same
   :class:`~losskit._reduction.Rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _validate as V
from .._reduction import Rows, count_rows
from ..functional._common import compute_dtype, keep
from ..kernels.rows import Smoothing
from .group import NONE, Layout, comm_device, exchange, group_rank
from .slices import Spec

__all__ = ["Call", "Checked", "begin", "check_options", "class_targets"]


def check_options(
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    normalizer: float | Tensor | None,
    vocab_start: int | None,
) -> V.CrossEntropyOptions:
    """The options both losses take, checked; ``normalizer`` and ``vocab_start`` too."""
    opts = V.cross_entropy_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    V.check_normalizer(normalizer, opts.reduction)
    if vocab_start is not None and (
        isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0
    ):
        raise V.LossValueError(f"vocab_start must be an int >= 0 or None, got {vocab_start!r}")
    return opts


def _check_target(target: Tensor, rows_shape: torch.Size, name: str, ref: Tensor) -> None:
    V.require_tensor("target", target)
    V.require_same_device("target", target, name, ref)
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise V.LossTypeError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}; the "
            "vocabulary-parallel losses take class indices only"
        )
    if target.shape != rows_shape:
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)}, but {name} of shape "
            f"{V.shape_str(ref.shape)} needs class indices of shape {V.shape_str(rows_shape)} "
            "(the classes are the last dimension)"
        )


def _check_class_weight(weight: Tensor | None, ref: Tensor) -> None:
    if weight is None:
        return
    V.require_floating("weight", weight, what="one weight per class of the whole vocabulary")
    V.require_same_device("weight", weight, "the logits", ref)
    if weight.dim() != 1:
        raise V.LossValueError(
            f"weight must be 1-D, the full class weights (V,), got shape "
            f"{V.shape_str(weight.shape)}"
        )


def class_targets(
    target: Tensor,
    ref: Tensor,
    name: str,
    weight: Tensor | None,
    mask: Tensor | None,
    opts: V.CrossEntropyOptions,
) -> Tensor:
    """Check ``target`` (class indices of ``ref``'s shape without its last dimension), the
    class ``weight`` and ``mask``; return the target with the positions ``mask`` leaves out set
    to ``ignore_index``, as in the reference: padding may hold any index, and it is neither
    validated nor gathered."""
    _check_target(target, ref.shape[:-1], name, ref)
    _check_class_weight(weight, ref)
    V.check_mask(mask, target.shape)
    if mask is None:
        return target
    return torch.where(mask.expand(target.shape), target.long(), opts.ignore_index)


@dataclass(frozen=True)
class Checked:
    """What a loss's checks return to :func:`begin`."""

    opts: V.CrossEntropyOptions
    normalizer: float | Tensor | None
    vocab_start: int | None
    target: Tensor  #: from :func:`class_targets`
    v_local: int  #: the number of classes this rank holds
    width: int | None = None  #: the hidden size D, for the linear loss


@dataclass(frozen=True)
class Call:
    """A checked call, the group's layout and the rows: what the loss's Function takes."""

    layout: Layout
    spec: Spec
    rows: Rows  #: ``y`` (0 where a row does not count) and ``w_y``, in the compute dtype
    w_local: Tensor | None  #: this slice's class weights (detached), in the compute dtype
    kept: Tensor | None  #: the mask as ``(N, 1)``, to zero left-out rows of the input first
    out_shape: torch.Size  #: the target's shape, of the ``'none'`` output
    dtype: torch.dtype  #: the compute dtype

    def inputs(self, x: Tensor, width: int) -> Tensor:
        """``x`` as ``(N, width)`` rows, 0 on the rows ``mask`` leaves out (before any math, so
        that inf or NaN there reaches neither the loss nor the gradient)."""
        return keep(x.reshape(self.rows.y.shape[0], width), self.kept)

    def finish(
        self, loss: Tensor, lse: Tensor, return_z_loss: bool, out_dtype: torch.dtype
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Reduce the per-row ``loss`` as asked (and the z term ``c lse^2``, detached)."""

        def reduce(values: Tensor) -> Tensor:
            out = self.rows.reduce(values, out_dtype)
            return out.reshape(self.out_shape) if self.rows.reduction == "none" else out

        if not return_z_loss:
            return reduce(loss)
        return reduce(loss), reduce(self.spec.k.z_loss * lse * lse).detach()


def begin(
    check: Callable[[], Checked],
    like: object,
    *,
    group: dist.ProcessGroup | None,
    weight: Tensor | None,
    mask: Tensor | None,
    validate: bool,
) -> Call:
    """Run ``check`` and the group exchange (every rank raises if any rank's check failed);
    count the rows. ``like`` is the loss's first input: its device and dtype rule the call."""
    rank, world = group_rank(group)
    failure: V.LossError | None = None
    ok: Checked | None = None
    try:
        ok = check()
    except V.LossError as exc:
        failure = exc
    layout = exchange(
        group=group,
        rank=rank,
        world=world,
        failure=failure,
        device=comm_device(group, like),
        v_local=ok.v_local if ok else 0,
        vocab_start=ok.vocab_start if ok else None,
        rows=ok.target.numel() if ok else 0,
        width=NONE if ok is None or ok.width is None else ok.width,
        target=ok.target if ok else None,
        ignore_index=ok.opts.ignore_index if ok else 0,
        weight=weight,
        mask=mask,
        validate=validate,
    )
    # here every rank's checks passed (exchange raised otherwise): ok is set, like a tensor
    opts, dtype = ok.opts, compute_dtype(like)
    w = None if weight is None else weight.detach().to(dtype)  # no gradient, as in torch
    rows = count_rows(
        ok.target.reshape(-1).long(),
        ignore_index=opts.ignore_index,
        reduction=opts.reduction,
        weight=w,
        normalizer=ok.normalizer,
        dtype=dtype,
    )
    kept = None if mask is None else mask.expand(ok.target.shape).reshape(-1, 1)
    w_local = None if w is None else w[layout.start : layout.start + layout.size]
    k = Smoothing.of(opts.label_smoothing, layout.num_classes, w, opts.z_loss)
    spec = Spec(layout.start, k, opts.softcap, group)
    return Call(layout, spec, rows, w_local, kept, ok.target.shape, dtype)
