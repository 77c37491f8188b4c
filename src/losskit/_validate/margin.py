"""Checks of the margin and embedding losses: +1/-1 labels, index ranges, paired shapes, options.

Shared by :mod:`losskit.functional.margin` and :mod:`losskit.functional.embedding`. Each value
check is one min/max pass and one host read (the position of a bad value is looked for only
once one is known to be there), and runs only on non-empty tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import LossIndexError, LossTypeError, LossValueError
from .options import check_float_option
from .tensors import (
    check_mask,
    position,
    require_same_device,
    require_tensor,
    shape_str,
)
from .tensors import value_range as _range

__all__ = [
    "check_class_scores",
    "check_label_lists",
    "check_multi_margin_call",
    "check_multilabel_call",
    "check_distance",
    "check_distance_function",
    "check_index_range",
    "check_margin_p",
    "check_number",
    "check_positive",
    "check_sample_mask",
    "check_signs",
    "check_unit_range",
    "require_index_target",
    "require_numeric",
    "require_paired",
    "require_scores",
    "require_sign_dtype",
]


def _first_bad(bad: Tensor, tensor: Tensor) -> tuple[int, str, object]:
    """How many positions ``bad`` marks, the first one's position (as text) and its value."""
    count = int(bad.sum())
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    value = tensor.reshape(-1)[flat].item()
    return count, position(flat, tensor.shape), value


def _of(count: int, total: int, noun: str) -> str:
    return f"{count} of {total} {noun}{'' if total == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def check_number(name: str, value: object) -> float:
    """A real Python number (not bool, not NaN), as a float."""
    if type(value) is float and value == value:  # the common case first (NaN != NaN)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value:  # NaN (also for a traced SymFloat)
        raise LossValueError(f"{name} must be a number, got nan")
    return value


def check_margin_p(p: object) -> int:
    """``multi_margin_loss``'s exponent: 1 or 2 (torch supports no other)."""
    if type(p) is int and (p == 1 or p == 2):
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p not in (1, 2):
        shown = repr(p) if isinstance(p, (int, float)) else type(p).__name__
        raise LossValueError(
            f"p must be 1 (the hinge) or 2 (the squared hinge), got {shown}; torch's "
            "multi_margin_loss supports no other exponent"
        )
    return int(p)


def check_positive(name: str, value: object) -> float:
    """A Python number > 0 (not NaN, inf allowed), as a float."""
    if type(value) is float and value > 0:  # NaN > 0 is False
        return value
    return check_float_option(name, value, low=0.0, low_open=True)


def check_distance_function(distance_function: object) -> None:
    """None (``torch.pairwise_distance``) or a callable of two tensors."""
    if distance_function is not None and not callable(distance_function):
        raise LossTypeError(
            f"distance_function must be a callable of two tensors (or None for "
            f"torch.pairwise_distance), got {type(distance_function).__name__}"
        )


def check_distance(distance: object, shape: torch.Size, anchor: Tensor) -> None:
    """What a ``distance_function`` returned: a tensor with one distance per sample."""
    if not isinstance(distance, Tensor):
        raise LossTypeError(
            f"distance_function must return a tensor of distances, got {type(distance).__name__}"
        )
    if distance.shape != shape:
        hint = ""
        if distance.shape == anchor.shape:
            hint = " (it returned one value per element: sum or take a norm over the last dim)"
        elif distance.dim() == 0:
            hint = " (it returned one number: do not reduce over the batch)"
        raise LossValueError(
            f"distance_function returned shape {shape_str(distance.shape)} for inputs of shape "
            f"{shape_str(anchor.shape)}; it must return one distance per sample, shape "
            f"{shape_str(shape)}{hint}"
        )


# --------------------------------------------------------------------------------------------
# dtypes and shapes
# --------------------------------------------------------------------------------------------


#: the dtypes torch's margin kernels compute in
FLOATING = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
#: integer class indices (cast to int64 for the kernels)
INTEGER = frozenset((torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))
#: real dtypes other than bool: torch promotes integer scores, embeddings and labels
NUMERIC = FLOATING | INTEGER


def require_scores(name: str, tensor: Tensor, *, what: str) -> None:
    """A floating tensor (torch's kernels have no integer version)."""
    if isinstance(tensor, Tensor) and tensor.dtype in FLOATING:
        return
    require_tensor(name, tensor)
    raise LossTypeError(
        f"{name} must be a floating-point tensor of {what} (float16, bfloat16, float32 or "
        f"float64), got dtype {tensor.dtype}: use {name}.float()"
    )


def require_numeric(name: str, tensor: Tensor) -> None:
    """A real, non-bool tensor (integer scores or embeddings are promoted, as torch does)."""
    if isinstance(tensor, Tensor) and tensor.dtype in NUMERIC:
        return
    require_tensor(name, tensor)
    raise LossTypeError(
        f"{name} must be a real tensor (floating or integer), got dtype {tensor.dtype}: use "
        f"{name}.float()"
    )


def require_sign_dtype(name: str, tensor: Tensor) -> None:
    """Labels 1 / -1 of a numeric dtype: a bool tensor cannot hold -1."""
    if isinstance(tensor, Tensor) and tensor.dtype in NUMERIC:
        return
    require_tensor(name, tensor)
    if tensor.dtype == torch.bool:
        raise LossTypeError(
            f"{name} must hold the labels 1 and -1, got a bool tensor (which cannot hold -1): "
            f"use {name}.float() * 2 - 1"
        )
    raise LossTypeError(f"{name} must hold the labels 1 and -1, got dtype {tensor.dtype}")


def require_index_target(tensor: Tensor, *, what: str, hint: str = "target.long()") -> None:
    """Integer class indices (any width: the loss casts them to int64)."""
    if isinstance(tensor, Tensor) and tensor.dtype in INTEGER:
        return
    require_tensor("target", tensor)
    raise LossTypeError(f"target must hold integer {what}, got dtype {tensor.dtype}: use {hint}")


def require_paired(ref_name: str, ref: Tensor, **others: Tensor) -> None:
    """Each of ``others`` is a tensor on ``ref``'s device with ``ref``'s shape (torch would
    broadcast a mismatch silently, or fail with a message naming neither tensor)."""
    shape, device = ref.shape, ref.device
    for name, tensor in others.items():
        if not isinstance(tensor, Tensor):
            require_tensor(name, tensor)
        if tensor.shape != shape:
            raise LossValueError(
                f"{name} has shape {shape_str(tensor.shape)} but {ref_name} has shape "
                f"{shape_str(shape)}; they must be equal (torch would broadcast them or fail "
                "with a size error: check for a missing or stray dimension)"
            )
        if tensor.device != device:
            raise LossValueError(
                f"{name} is on device {tensor.device} but {ref_name} is on {device}; "
                "they must be on the same device"
            )


def check_sample_mask(mask: Tensor | None, shape: torch.Size) -> None:
    """A bool mask broadcastable to the per-sample loss (``reduction='none'``'s shape)."""
    if mask is not None:
        check_mask(mask, shape, what="the per-sample loss")


# --------------------------------------------------------------------------------------------
# values (validate=True)
# --------------------------------------------------------------------------------------------


def check_signs(name: str, tensor: Tensor, *, loss: str) -> None:
    """Every value is 1 or -1: the smallest and largest square (or ``|value|``, for integers,
    whose squares may wrap around) are both 1. Of a float only 1 and -1 square to exactly 1."""
    if tensor.numel() == 0:
        return
    low, high = _range(tensor * tensor if tensor.is_floating_point() else tensor.abs())
    if low == 1 and high == 1:  # NaN makes both comparisons False
        return
    bad = tensor.abs() != 1
    count, where, value = _first_bad(bad, tensor)
    hint = ""
    if bool(((tensor == 0) | (tensor == 1)).all()):
        hint = f"; for 0/1 labels use 2 * {name} - 1"
    raise LossValueError(
        f"{name} has value {value:g} at position {where}, but {loss} needs the labels 1 or -1 "
        f"({_of(count, tensor.numel(), 'value')} {'is' if count == 1 else 'are'} neither){hint}"
    )


def check_unit_range(name: str, tensor: Tensor, *, what: str) -> None:
    """Every value is in [0, 1] (one pass). NaN fails too."""
    if tensor.numel() == 0:
        return
    low, high = _range(tensor)
    if low >= 0 and high <= 1:
        return
    bad = ~((tensor >= 0) & (tensor <= 1))
    count, where, value = _first_bad(bad, tensor)
    raise LossValueError(
        f"{name} has value {value:g} at position {where}, but must hold {what} in [0, 1] "
        f"({_of(count, tensor.numel(), 'value')} outside)"
    )


def check_index_range(
    target: Tensor, num_classes: int, *, low: int = 0, class_dim: int, extra: str = ""
) -> None:
    """Every class index is in [low, num_classes) (one pass).

    ``extra`` says what the values below 0 mean, when ``low`` is below 0 (in the message).
    """
    if target.numel() == 0:
        return
    smallest, largest = _range(target)
    if smallest >= low and largest < num_classes:
        return
    bad = (target < low) | (target >= num_classes)
    count, where, value = _first_bad(bad, target)
    raise LossIndexError(
        f"target has class index {value} at position {where}, but input has {num_classes} "
        f"class{'' if num_classes == 1 else 'es'} (dim {class_dim}); valid indices are 0.."
        f"{num_classes - 1}{extra} ({_of(count, target.numel(), 'value')} out of range)"
    )


# --------------------------------------------------------------------------------------------
# multi-class and multi-label calls (what is wrong, when a call is not the common case)
# --------------------------------------------------------------------------------------------


def check_class_scores(input: Tensor, *, any_batch_dims: bool = False) -> None:
    """``input`` holds class scores on its last dim: ``(N, C)`` or ``(C,)`` (``any_batch_dims``:
    ``(*, C)``), a floating tensor with at least one class."""
    require_scores("input", input, what="class scores")
    if input.dim() == 0 or (input.dim() > 2 and not any_batch_dims):
        hint = ""
        if input.dim() > 2:
            hint = (
                "; for scores at every position of (N, C, d1, ...), put the classes last and "
                "flatten: input.movedim(1, -1).flatten(0, -2)"
            )
        raise LossValueError(
            f"input must hold class scores of shape (N, C) or (C,), got shape "
            f"{shape_str(input.shape)}{hint}"
        )
    if input.shape[-1] == 0:
        raise LossValueError(
            f"input has shape {shape_str(input.shape)}: 0 classes (dim {input.dim() - 1}); "
            "the loss needs at least one class score per sample"
        )


def check_multi_margin_call(input: Tensor, target: Tensor) -> torch.Size:
    """``multi_margin_loss``'s scores and class indices; return the per-sample loss's shape."""
    check_class_scores(input)
    require_index_target(target, what="class indices")
    require_same_device("target", target, "input", input)
    if input.dim() == 1:  # unbatched: one index, 0-dim (torch also takes shape (1,))
        if target.dim() <= 1 and target.numel() == 1:
            return target.shape
        raise LossValueError(
            f"target has shape {shape_str(target.shape)}, but the unbatched input of shape "
            f"{shape_str(input.shape)} needs one class index, a 0-dim target"
        )
    n = input.shape[0]
    if target.shape == (n,):
        return target.shape
    hint = ""
    if target.shape == (n, 1):
        hint = ": drop the size-1 dimension with target.squeeze(1)"
    elif target.shape == input.shape:
        hint = ": for a one-hot target use target.argmax(1)"
    raise LossValueError(
        f"target has shape {shape_str(target.shape)}, but input of shape "
        f"{shape_str(input.shape)} needs one class index per sample, shape ({n},){hint}"
    )


def check_multilabel_call(input: Tensor, target: Tensor) -> None:
    """``multilabel_margin_loss``'s scores and label lists (integer, of the input's shape)."""
    check_class_scores(input)
    require_index_target(target, what="class indices (-1 ends a row's list)")
    require_same_device("target", target, "input", input)
    if target.shape != input.shape:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)} but input has shape "
            f"{shape_str(input.shape)}; multilabel_margin_loss needs a target of the input's "
            "shape: each row's class indices, then -1 (pad the rest with -1)"
        )


def check_label_lists(target: Tensor, num_classes: int) -> None:
    """``multilabel_margin_loss``'s values: in [-1, C) everywhere, as torch requires."""
    check_index_range(
        target, num_classes, low=-1, class_dim=target.dim() - 1,
        extra=", or -1 to end a row's list",
    )  # fmt: skip
