"""torch's own loss kernels: the plain path of every loss that torch has.

Once losskit's checks have passed, a call that uses nothing torch lacks (no ``mask``, no
``normalizer``, float32 or float64 tensors of one dtype) is torch's own computation: these
wrappers call the ATen kernel that ``torch.nn.functional`` ends in, with torch's arguments, so the
value and the gradient are torch's bit for bit. They skip what ``torch.nn.functional`` does in
Python before that call (the ``__torch_function__`` dispatch check, the broadcast warning,
re-mapping the reduction), which losskit's checks have already settled: on a tiny input that
Python is most of the cost of a loss.

Every other call takes the loss's reference in plain torch ops (``functional/<family>.py``),
which reproduces torch's numbers and adds what torch lacks.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

#: the dtypes of the plain path. Half types take the reference, which computes in float32 and
#: rounds once (never further from a float64 truth than torch's half kernels, which some torch
#: versions lack on the CPU).
DTYPES = (torch.float32, torch.float64)

#: torch's reduction enum (``torch.nn._reduction.get_enum``)
ENUM = {"none": 0, "mean": 1, "sum": 2}

_nn = torch._C._nn

#: whether the installed torch's regression losses take an elementwise ``weight`` (newer than 2.4)
HAS_ELEMENTWISE_WEIGHT = "weight" in inspect.signature(F.mse_loss).parameters


def mse_loss(input: Tensor, target: Tensor, reduction: str, weight: Tensor | None) -> Tensor:
    if weight is not None:
        return F.mse_loss(input, target, reduction=reduction, weight=weight)
    return _nn.mse_loss(input, target, ENUM[reduction])


def l1_loss(input: Tensor, target: Tensor, reduction: str, weight: Tensor | None) -> Tensor:
    if weight is not None:
        return F.l1_loss(input, target, reduction=reduction, weight=weight)
    return _nn.l1_loss(input, target, ENUM[reduction])


def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str, beta: float) -> Tensor:
    if beta == 0.0:  # torch's own special case: exactly L1
        return _nn.l1_loss(input, target, ENUM[reduction])
    return _nn.smooth_l1_loss(input, target, ENUM[reduction], beta)


def huber_loss(
    input: Tensor, target: Tensor, reduction: str, delta: float, weight: Tensor | None
) -> Tensor:
    if weight is not None:
        return F.huber_loss(input, target, reduction=reduction, delta=delta, weight=weight)
    return _nn.huber_loss(input, target, ENUM[reduction], delta)


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: str
) -> Tensor:
    if weight is not None and weight.shape != target.shape:
        weight = weight.expand(target.shape)  # as torch.nn.functional does
    return _nn.binary_cross_entropy(input, target, weight, ENUM[reduction])


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> Tensor:
    return torch.binary_cross_entropy_with_logits(
        input, target, weight, pos_weight, ENUM[reduction]
    )


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    return _nn.cross_entropy_loss(
        input, target, weight, ENUM[reduction], ignore_index, label_smoothing
    )


def nll_loss(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: str, ignore_index: int
) -> Tensor:
    return _nn.nll_loss_nd(input, target, weight, ENUM[reduction], ignore_index)


def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    """``reduction`` may be ``'batchmean'``: the sum over the batch size, as torch divides it."""
    if reduction == "batchmean":
        out = torch.kl_div(input, target, ENUM["sum"], log_target=log_target)
        return out / input.shape[0] if input.dim() != 0 else out
    return torch.kl_div(input, target, ENUM[reduction], log_target=log_target)
