"""``losskit::cross_entropy``: the fused cross-entropy of ``(N, V)`` logits as one custom op.

The body is the backend's ``cross_entropy_forward`` (``kernels/<backend>/cross_entropy.py``):
the loss, its z term and, when a gradient is wanted, ``d logits`` for grad_output = 1, computed
in the forward as in eager mode. The backward multiplies that gradient by grad_output (per row
for ``'none'``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernels_for
from .._validate import check_class_indices
from ._common import EMPTY, empty, loss_shape, nonempty

__all__ = ["cross_entropy"]

_SCHEMA = (
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? mask, Tensor? normalizer, "
    "int ignore_index, float label_smoothing, float z_loss, float? softcap, str reduction, "
    "bool want_grad, bool validate) -> (Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("losskit::cross_entropy", mutates_args=(), schema=_SCHEMA)
def _op(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    want_grad: bool,
    validate: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    kernels, reason = kernels_for(logits.device)
    if kernels is None:
        raise RuntimeError(f"losskit::cross_entropy: {reason}")
    if validate:  # deferred from the traced call (no values there): see _validate.tensors
        check_class_indices(target, logits.shape[1], ignore_index, 1)
    loss, zterm, grad = kernels.cross_entropy.cross_entropy_forward(
        logits, target, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, reduction=reduction,
        normalizer=normalizer, mask=mask, want_grad=want_grad,
    )  # fmt: skip
    return loss, zterm, nonempty(grad, logits)


@_op.register_fake
def _fake(logits, target, weight, mask, normalizer, ignore_index, label_smoothing, z_loss,
          softcap, reduction, want_grad, validate):  # fmt: skip
    shape = loss_shape(logits.shape[0], reduction)
    grad = logits.new_empty(logits.shape) if want_grad else empty(logits)
    return logits.new_empty(shape), logits.new_empty(shape), grad


def _setup(ctx, inputs, output) -> None:
    ctx.rowwise = inputs[9] == "none"
    ctx.save_for_backward(output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_loss, grad_zterm, grad_grad):
    (grad,) = ctx.saved_tensors
    scale = grad_loss.unsqueeze(1) if ctx.rowwise else grad_loss
    return (grad * scale).to(grad.dtype), *EMPTY[:11]


_op.register_autograd(_backward, setup_context=_setup)


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
    recompute: object = None,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """The kernels' ``cross_entropy`` launcher (``kernels/CONTRACT.md`` §1) through the op.

    ``inplace_backward`` is not honoured (a traced graph does not overwrite its input: the
    gradient gets a buffer of its own) and ``recompute`` is unused (no second order here).
    ``validate`` checks the class indices in the op's body, at run time.
    """
    del inplace_backward, recompute
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, zterm, _ = _op(
        logits, target, weight, mask, normalizer, int(ignore_index), float(label_smoothing),
        float(z_loss), None if softcap is None else float(softcap), reduction, want_grad,
        bool(validate),
    )  # fmt: skip
    return (loss, zterm) if return_z_loss else loss
