"""Checks of a linear + cross-entropy call: torch 2.13's ``F.linear_cross_entropy`` contract.

``linear_weight`` is ``(C, in_features)`` or ``(C, d1..dK, in_features)``; the logits are
``(*lead, C, d1..dK)`` for ``input`` of shape ``(*lead, in_features)``; a target of the logits'
shape holds probabilities. The fused path's own options (``chunk_size``, ``memory_budget``,
``accumulate``) are checked here too, for the function and its Module alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import tensors
from .errors import LossTypeError, LossValueError
from .options import check_ignore_index, check_impl, check_positive_int
from .tensors import (
    check_class_weight,
    require_floating,
    require_index_dtype,
    require_same_device,
    require_same_dtype,
    require_tensor,
    shape_str,
)

__all__ = ["ACCUMULATE", "BUDGETS", "LinearCall", "check_linear_call", "check_linear_options"]

#: ``memory_budget`` names (a number of bytes is accepted too).
BUDGETS = ("default", "lean")
#: ``accumulate`` choices: the dtype of the ``dW`` accumulation.
ACCUMULATE = ("auto", "float32", "input")


@dataclass(frozen=True)
class LinearCall:
    """What a validated call's shapes say (torch 2.13's contract)."""

    probabilities: bool  # the target holds probabilities (it has the logits' shape)
    out_features: tuple[int, ...]  # (d1..dK) of a K-dimensional head; () for a plain one
    index_shape: torch.Size  # the class-index target's (and the 'none' output's) shape
    logits_shape: torch.Size  # (*lead, C, d1..dK)


def check_linear_call(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int | None,
    validate: bool,
) -> LinearCall:
    """Check a call against torch 2.13's ``F.linear_cross_entropy`` contract, plus lead dims.

    ``linear_weight`` is ``(C, in_features)`` or ``(C, d1..dK, in_features)``; the logits are
    ``(*lead, C, d1..dK)`` for ``input`` of shape ``(*lead, in_features)`` (a K-dimensional head
    needs ``(N, in_features)``, as in torch); a target of the logits' shape holds probabilities.
    """
    require_floating("input", input, what="hidden states")
    require_floating("linear_weight", linear_weight, what="the head's weight")
    require_tensor("target", target)
    if input.dim() == 0:
        raise LossValueError(
            "input must have a feature dimension: expected shape (D,), (N, D) or (B, T, D), got "
            "a 0-dim tensor"
        )
    d = input.shape[-1]
    if linear_weight.dim() < 2:
        raise LossValueError(
            f"linear_weight must have shape (num_classes, in_features) or (num_classes, d1, ..., "
            f"dK, in_features), got shape {shape_str(linear_weight.shape)}"
        )
    num_classes, in_features = linear_weight.shape[0], linear_weight.shape[-1]
    out_features = tuple(linear_weight.shape[1:-1])
    if in_features != d:
        raise LossValueError(
            f"linear_weight has shape {shape_str(linear_weight.shape)}: {in_features} input "
            f"features (dim {linear_weight.dim() - 1}), but input of shape "
            f"{shape_str(input.shape)} has {d} (last dim)"
        )
    if out_features and input.dim() != 2:
        raise LossValueError(
            f"linear_weight of shape {shape_str(linear_weight.shape)} makes a K-dimensional loss "
            f"(logits (N, {num_classes}, {', '.join(map(str, out_features))})), which needs input "
            f"of shape (N, {d}), got {shape_str(input.shape)}"
            + (": use input.unsqueeze(0)" if input.dim() == 1 else f": use input.reshape(-1, {d})")
        )
    require_same_device("linear_weight", linear_weight, "input", input)
    require_same_dtype("linear_weight", linear_weight, "input", input)
    if linear_bias is not None:
        require_floating("linear_bias", linear_bias)
        bias_shape = (num_classes, *out_features)
        if tuple(linear_bias.shape) != bias_shape:
            raise LossValueError(
                f"linear_bias must have shape {shape_str(bias_shape)}, one value per logit of "
                f"a position, got shape {shape_str(linear_bias.shape)}"
            )
        require_same_device("linear_bias", linear_bias, "input", input)
        require_same_dtype("linear_bias", linear_bias, "input", input)
    check_class_weight(weight, num_classes, input)
    require_same_device("target", target, "input", input)
    check_ignore_index(ignore_index, allow_none=True)

    lead = tuple(input.shape[:-1])
    logits_shape = torch.Size([*lead, num_classes, *out_features])
    index_shape = torch.Size([*lead, *out_features])
    call = LinearCall(target.shape == logits_shape, out_features, index_shape, logits_shape)
    if call.probabilities:
        if not target.is_floating_point():
            raise LossTypeError(
                f"target has the logits' shape {shape_str(logits_shape)}, the shape of class "
                f"probabilities, but dtype {target.dtype}; probabilities (one-hot included) must "
                f"be floating: use target.float(), or pass class indices of shape "
                f"{shape_str(index_shape)}"
            )
        if ignore_index is not None:
            raise LossValueError(
                f"ignore_index={ignore_index} applies to class-index targets only (torch raises "
                "too); to leave out positions of a probability target, pass mask= (True where "
                "the position counts)"
            )
        if validate:
            tensors.check_unit_interval("target", target, what="class probabilities")
        return call
    if target.is_floating_point():
        raise LossValueError(
            f"target has shape {shape_str(target.shape)} and dtype {target.dtype}; expected "
            f"integer class indices of shape {shape_str(index_shape)} or probabilities of "
            f"shape {shape_str(logits_shape)}"
            + (
                " (class indices must be integers: use target.long())"
                if target.shape == index_shape
                else ""
            )
        )
    require_index_dtype(target)
    if target.shape != index_shape:
        hint = ""
        if not out_features and target.shape == torch.Size([*index_shape, 1]):
            hint = ": drop the size-1 dimension with target.squeeze(-1)"
        elif target.numel() == index_shape.numel() and input.dim() > 1:
            hint = f": reshape it with target.reshape({tuple(index_shape)})"
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, but input of shape "
            f"{shape_str(input.shape)} and linear_weight of shape "
            f"{shape_str(linear_weight.shape)} need one class index per position, shape "
            f"{shape_str(index_shape)}{hint}"
        )
    if validate:
        tensors.check_class_indices(
            target, num_classes, -100 if ignore_index is None else ignore_index, 0,
            classes_of="linear_weight",
        )  # fmt: skip
    return call


def check_linear_options(
    impl: str, chunk_size: int | None, memory_budget: object, accumulate: str
) -> None:
    check_impl(impl)
    check_positive_int("chunk_size", chunk_size)
    if isinstance(memory_budget, str):
        if memory_budget not in BUDGETS:
            raise LossValueError(
                f"memory_budget must be 'default', 'lean' or a number of bytes, got "
                f"{memory_budget!r}"
            )
    elif isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise LossValueError(
            f"memory_budget must be 'default', 'lean' or a number of bytes >= 0, got "
            f"{memory_budget!r}"
        )
    if accumulate not in ACCUMULATE:
        raise LossValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
