"""Checks of classification targets: class indices or probabilities, and their shapes.

Shared by every categorical loss (cross-entropy, NLL, focal) and the fused paths, so that each
target mistake gets one message, naming what was expected and what came.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import tensors
from .errors import LossTypeError, LossValueError
from .options import check_ignore_index
from .tensors import (
    check_class_weight,
    check_mask,
    check_normalizer,
    require_floating,
    require_index_dtype,
    require_same_device,
    require_tensor,
    shape_str,
)

__all__ = ["check_classification", "index_target_shape"]


def index_target_shape(input: Tensor) -> torch.Size:
    if input.dim() == 1:
        return torch.Size([])
    return torch.Size([input.shape[0], *input.shape[2:]])


def check_classification(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    validate: bool,
    allow_probabilities: bool,
    input_name: str = "input",
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    reduction: str = "mean",
) -> bool:
    """Check a classification call (and its ``mask`` and ``normalizer``); return True for
    probability targets, False for indices.

    Values at positions ``mask`` leaves out are not checked (padding may hold anything). A
    non-default ``ignore_index`` with probability targets is refused (it could only be a no-op).
    ``reduction`` (resolved) is only read to check the ``normalizer``.
    """
    # the common call costs a handful of attribute reads: each check below only calls its
    # helper (which builds the message) when the cheap test has failed
    if not isinstance(input, Tensor):
        require_tensor(input_name, input)
    if not isinstance(target, Tensor):
        require_tensor("target", target)
    if input.dtype not in tensors.FLOATING:
        require_floating(input_name, input, what="logits or log-probabilities")
    if target.device != input.device:
        require_same_device("target", target, input_name, input)
    shape = input.shape  # read once: each read of .shape builds a torch.Size
    ndim = len(shape)
    if ndim == 0:
        raise LossValueError(
            f"{input_name} must have a class dimension: expected shape (C,), (N, C) or "
            f"(N, C, d1, ...), got a 0-dim tensor"
        )
    class_dim = 0 if ndim == 1 else 1
    num_classes = shape[class_dim]
    if weight is not None:
        check_class_weight(weight, num_classes, input)
    if type(ignore_index) is not int:  # the helper accepts int subclasses, refuses the rest
        check_ignore_index(ignore_index)
    if normalizer is not None:
        check_normalizer(normalizer, reduction)

    if target.dtype not in _INDEX_DTYPES:  # the common call: one lookup decides the form
        if target.is_floating_point():
            return _check_floating_target(
                input, target, class_dim, num_classes, ignore_index=ignore_index,
                validate=validate, allow_probabilities=allow_probabilities,
                input_name=input_name, mask=mask,
            )  # fmt: skip
        require_index_dtype(target)  # bool or complex: refused; other integer dtypes go on
    tshape = target.shape
    if ndim == 2:  # the common input: no torch.Size built for the index shape
        matches = len(tshape) == 1 and tshape[0] == shape[0]
    else:
        matches = tshape == index_target_shape(input)
    if not matches:
        _explain_index_shape(input, target, index_target_shape(input), input_name,
                             allow_probabilities)  # fmt: skip
    if mask is not None:
        check_mask(mask, tshape)
        if validate:
            target = torch.where(mask, target, ignore_index)
    if validate:
        tensors.check_class_indices(target, num_classes, ignore_index, class_dim)
    return False


def _check_floating_target(
    input: Tensor,
    target: Tensor,
    class_dim: int,
    num_classes: int,
    *,
    ignore_index: int,
    validate: bool,
    allow_probabilities: bool,
    input_name: str,
    mask: Tensor | None,
) -> bool:
    """A floating target: probabilities of the input's shape (True), or the error that says
    what it looks like instead."""
    if allow_probabilities and target.shape == input.shape:
        if ignore_index != -100:
            raise LossValueError(
                f"ignore_index={ignore_index} applies to class-index targets only; to leave "
                "out positions of a probability target, pass mask= (True where the position "
                "counts)"
            )
        if mask is not None:
            index_shape = index_target_shape(input)
            check_mask(mask, index_shape)
            if validate:
                kept = mask.expand(index_shape).unsqueeze(class_dim)
                target = torch.where(kept, target, torch.zeros((), dtype=target.dtype))
        if validate:
            tensors.check_unit_interval("target", target, what="class probabilities")
        return True
    index_shape = index_target_shape(input)
    if target.shape == index_shape:
        raise LossTypeError(
            f"target has shape {shape_str(target.shape)} (the class-index shape) but "
            f"dtype {target.dtype}; class indices must be integers: use target.long()"
            + (
                f" (or pass probabilities of the {input_name}'s shape {shape_str(input.shape)})"
                if allow_probabilities
                else ""
            )
        )
    if allow_probabilities and target.dim() == input.dim():
        other = [d for d in range(input.dim()) if d != class_dim]
        if all(target.shape[d] == input.shape[d] for d in other):
            raise LossValueError(
                f"target holds probabilities over {target.shape[class_dim]} classes (dim "
                f"{class_dim}) but {input_name} has {num_classes} classes; a probability "
                f"target must have the {input_name}'s shape {shape_str(input.shape)}"
            )
    expected = f"{shape_str(input.shape)} (probabilities)" if allow_probabilities else "nothing"
    raise LossValueError(
        f"target has shape {shape_str(target.shape)} and dtype {target.dtype}; expected "
        f"integer class indices of shape {shape_str(index_shape)} or floating targets of "
        f"shape {expected}"
    )


#: the integer dtypes class indices may have (any width; the kernels take int64)
_INDEX_DTYPES = frozenset(
    (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
    + tuple(getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n))
)


def _explain_index_shape(
    input: Tensor,
    target: Tensor,
    index_shape: torch.Size,
    name: str,
    allow_probabilities: bool,
) -> None:
    """Raise the error for an integer target whose shape is not the class-index shape."""
    got, want = shape_str(target.shape), shape_str(index_shape)
    if input.dim() >= 2 and target.shape == input.shape:
        # an integer one-hot target: torch 2.13 refuses it too (probabilities must float)
        if allow_probabilities:
            raise LossTypeError(
                f"target has the {name}'s shape {got} but dtype {target.dtype}; a one-hot or "
                f"probability target must be floating-point: use target.float() (or pass class "
                f"indices of shape {want}: target.argmax(1))"
            )
        raise LossValueError(
            f"target has the {name}'s shape {got} (dtype {target.dtype}), but class indices "
            f"need shape {want}; for a one-hot target use target.argmax(1)"
        )
    if input.dim() >= 2 and target.shape == torch.Size([input.shape[0], 1, *input.shape[2:]]):
        raise LossValueError(
            f"target has shape {got} but class indices need shape {want}: drop the size-1 "
            f"dimension with target.squeeze(1)"
        )
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] == input.shape[0]:
        raise LossValueError(
            f"{name} has shape {shape_str(input.shape)} and target {got}: the class dimension "
            f"seems to be missing; {name} should be (N, C) with a score per class, or use "
            f"binary_cross_entropy_with_logits for one score per example"
            + (
                f" (if target is a one-hot or probability vector over the {input.shape[0]} "
                f"classes, it must be floating-point: use target.float())"
                if allow_probabilities
                else ""
            )
        )
    if input.dim() >= 3 and target.shape == input.shape[:-1]:
        raise LossValueError(
            f"{name} has shape {shape_str(input.shape)} and target {got}: it looks "
            f"channels-last; the class dimension must be dim 1: use {name}.movedim(-1, 1)"
        )
    raise LossValueError(
        f"target has shape {got}, but {name} of shape {shape_str(input.shape)} needs class "
        f"indices of shape {want}"
        + (f" (or floating probabilities of the {name}'s shape)" if allow_probabilities else "")
    )
