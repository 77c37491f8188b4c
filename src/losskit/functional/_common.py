"""Helpers shared by the functional loss families."""

from __future__ import annotations

import torch
from torch import Tensor

from .._reduction import reduce as reduce_loss

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: the promoted dtype, with half types raised to float32.

    Low-precision inputs are computed in float32 and rounded once at the end, which keeps
    losskit's bfloat16/float16 results at least as close to a float64 truth as torch's.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def result_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype torch would return: the promotion of the floating inputs."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def keep(tensor: Tensor, mask: Tensor | None) -> Tensor:
    """``tensor`` with 0 where ``mask`` (bool, broadcastable to it) is False.

    Applied to a loss's inputs before any math, so inf or NaN at a masked position reaches
    neither the loss nor its gradient: a ``where`` after the math keeps the value clean, but its
    backward then multiplies the zero gradient by the NaN local derivative (0 * NaN = NaN), and
    one NaN row poisons every weight gradient of the model upstream.
    """
    if mask is None:
        return tensor
    return torch.where(mask, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))


def flatten_classes(x: Tensor) -> Tensor:
    """Rows of class scores: ``(N, C, d1..dK) -> (N * d1..dK, C)``; ``(C,) -> (1, C)``;
    ``(N, C)`` unchanged."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def finish(
    loss: Tensor,
    reduction: str,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Reduce torch's ``reduction='none'`` loss with ``mask`` and ``normalizer``; half types are
    reduced in float32 and rounded once, to ``dtype`` (default: the loss's)."""
    dtype = loss.dtype if dtype is None else dtype
    if loss.dtype in _LOW_PRECISION:
        loss = loss.float()
    return reduce_loss(loss, reduction, mask=mask, normalizer=normalizer).to(dtype)
