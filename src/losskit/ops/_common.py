"""What the custom ops share: the loss's shape, the empty stand-in for a gradient not computed,
the fake gradients, and the autograd of the chunked ops (gradients from the forward, or for
``'none'`` from their ``_backward`` op)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

#: Gradients of the non-tensor (and non-differentiable) arguments of an op
EMPTY = (None,) * 32


def loss_shape(n: int, reduction: str) -> tuple[int, ...]:
    """The shape of a loss over ``n`` rows: ``(n,)`` for ``'none'``, else ``()``."""
    return (n,) if reduction == "none" else ()


def empty(like: Tensor) -> Tensor:
    """The ``(0,)`` tensor an op returns for a gradient it did not compute."""
    return like.new_empty((0,))


def nonempty(t: Tensor | None, like: Tensor) -> Tensor:
    """``t``, or :func:`empty` in its place when it is None."""
    return empty(like) if t is None else t


def absent(t: Tensor) -> Tensor | None:
    """None for an op's empty stand-in (:func:`empty`), else ``t``."""
    return None if t.dim() == 1 and t.shape[0] == 0 else t


def fake_grads(heads: Sequence[Tensor | None], want: Sequence[bool]) -> tuple[Tensor, ...]:
    """Fake gradients of ``heads``: each one's shape where wanted, else the empty stand-in."""
    return tuple(
        t.new_empty(t.shape) if w and t is not None else empty(heads[0])
        for t, w in zip(heads, want, strict=True)
    )


def register_chunked_autograd(op, backward_op, *, tensors: int, reduction: int, grads_at: int):
    """The autograd of a chunked op whose outputs from ``grads_at`` on are its gradients for
    grad_output = 1 (the backward scales them), or, for ``reduction='none'`` (the argument at
    index ``reduction``), empty: the backward then runs ``backward_op`` on the op's first
    ``tensors`` arguments (saved), its other arguments and the rows' grad_output."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.rowwise = inputs[reduction] == "none"
        ctx.inputs = len(inputs)
        ctx.mark_non_differentiable(*output[1:])
        if ctx.rowwise:
            ctx.save_for_backward(*inputs[:tensors])
            ctx.scalars = inputs[tensors:]
        else:
            ctx.save_for_backward(*output[grads_at:])

    def backward(ctx, grad_loss, *unused):
        if ctx.rowwise:
            grads = backward_op(*ctx.saved_tensors, *ctx.scalars, grad_loss.reshape(-1))
        else:
            grads = tuple((g * grad_loss).to(g.dtype) for g in ctx.saved_tensors)
        return (*(absent(g) for g in grads), *EMPTY[: ctx.inputs - len(grads)])

    op.register_autograd(backward, setup_context=setup_context)
