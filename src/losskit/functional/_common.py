"""Helpers shared by the functional loss families."""

from __future__ import annotations

import torch
from torch import Tensor

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
