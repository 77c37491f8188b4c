"""What the custom ops share: the loss's shape, the empty stand-in for a gradient not computed."""

from __future__ import annotations

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
