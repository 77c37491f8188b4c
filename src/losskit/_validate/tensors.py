"""Checks of tensor arguments: type, dtype, device, shape, and the values of targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import LossIndexError, LossTypeError, LossValueError

#: the floating dtypes a loss computes in
FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(shape: Sequence[int] | torch.Size) -> str:
    """``(2, 3)`` for a shape, ``()`` for a scalar."""
    dims = tuple(shape)
    if len(dims) == 1:
        return f"({dims[0]},)"
    return "(" + ", ".join(str(d) for d in dims) + ")"


def position(flat_index: int, shape: torch.Size) -> str:
    """The multi-index of ``flat_index`` in ``shape``, as text."""
    if len(shape) == 0:
        return "()"
    coords = []
    for size in reversed(shape):
        coords.append(flat_index % size)
        flat_index //= size
    return shape_str(list(reversed(coords)))


def require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise LossTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(name: str, tensor: Tensor, *, what: str = "") -> None:
    require_tensor(name, tensor)
    if tensor.dtype not in FLOATING:
        hint = f" ({what})" if what else ""
        raise LossTypeError(
            f"{name} must be a floating-point tensor{hint} (float16, bfloat16, float32 or "
            f"float64), got dtype {tensor.dtype}"
        )


def require_real(name: str, tensor: Tensor, *, what: str = "") -> None:
    """A real tensor: floating, integer or bool (torch promotes these in elementwise losses)."""
    require_tensor(name, tensor)
    if tensor.is_complex():
        hint = f" ({what})" if what else ""
        raise LossTypeError(
            f"{name} must be a real tensor{hint} (floating, integer or bool), got dtype "
            f"{tensor.dtype}"
        )


def require_one_floating(input: Tensor, target: Tensor) -> None:
    """Elementwise losses: integer or bool on one side is promoted, but one side must float."""
    if not (input.is_floating_point() or target.is_floating_point()):
        raise LossTypeError(
            f"input has dtype {input.dtype} and target has dtype {target.dtype}; at least one "
            "must be floating-point (the loss is computed in the promoted dtype): use "
            "input.float()"
        )


def require_index_dtype(target: Tensor) -> None:
    """A non-floating target holds class indices: an integer dtype (not bool or complex)."""
    if target.dtype == torch.bool or target.is_complex():
        raise LossTypeError(
            f"target must hold integer class indices (int64) or floating probabilities, got "
            f"dtype {target.dtype}"
        )


def require_same_dtype(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    if tensor.dtype != ref.dtype:
        raise LossTypeError(
            f"{name} has dtype {tensor.dtype} but {ref_name} has dtype {ref.dtype}; "
            f"they must match (use {name}.to({ref_name}.dtype))"
        )


def require_same_device(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    if tensor.device != ref.device:
        raise LossValueError(
            f"{name} is on device {tensor.device} but {ref_name} is on {ref.device}; "
            "they must be on the same device"
        )


def require_same_shape(
    input: Tensor, target: Tensor, *, input_name: str = "input", target_name: str = "target"
) -> None:
    """Regression and binary losses: no silent broadcasting (torch only warns)."""
    if input.shape != target.shape:
        raise LossValueError(
            f"{target_name} has shape {shape_str(target.shape)} but {input_name} has shape "
            f"{shape_str(input.shape)}; they must be equal (torch would broadcast them "
            "silently, which is almost always a bug: check for a stray dimension of size 1)"
        )


def require_broadcastable_to(name: str, tensor: Tensor, shape: torch.Size, what: str) -> None:
    try:
        out = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise LossValueError(
            f"{name} has shape {shape_str(tensor.shape)}, which does not broadcast to {what} "
            f"of shape {shape_str(shape)}"
        )


def value_range(tensor: Tensor) -> tuple[float, float]:
    """The smallest and largest value of a non-empty tensor: one min/max pass and one host read
    (one device sync; on the CPU two reads, cheaper than a stack). NaN anywhere makes both NaN.
    Comparing the two on the host is what keeps a value check cheap: on a small tensor each
    further tensor op (a comparison, ``.any()``) costs as much as the pass itself."""
    low, high = torch.aminmax(tensor.detach() if tensor.requires_grad else tensor)
    if tensor.is_cpu:
        return low.item(), high.item()
    return torch.stack((low, high)).tolist()


def check_unit_interval(name: str, tensor: Tensor, *, what: str) -> None:
    """Values in [0, 1] (see :func:`value_range`; the position is looked for only when a value
    is out). NaN fails too."""
    if tensor.numel() == 0:
        return
    low, high = value_range(tensor)
    if low >= 0 and high <= 1:  # a NaN makes both comparisons False
        return
    bad = ~((tensor >= 0) & (tensor <= 1))
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    value = tensor.reshape(-1)[flat].item()
    raise LossValueError(
        f"{name} must hold {what} in [0, 1], got {value:g} at position "
        f"{position(flat, tensor.shape)}"
    )


def check_mask(mask: Tensor | None, shape: torch.Size, *, what: str = "the target") -> None:
    """``mask`` is a bool tensor broadcastable to ``shape`` (the target's positions)."""
    if mask is None:
        return
    require_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise LossTypeError(
            f"mask must be a bool tensor (True where the position counts), got dtype {mask.dtype}"
        )
    require_broadcastable_to("mask", mask, shape, f"{what}'s positions")


def check_normalizer(normalizer: float | Tensor | None, reduction: str) -> None:
    if normalizer is None:
        return
    if reduction != "mean":
        raise LossValueError(
            f"normalizer divides the summed loss and only applies with reduction='mean', "
            f"got reduction={reduction!r}"
        )
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise LossValueError(
                f"normalizer must be a number or a one-element tensor, got shape "
                f"{shape_str(normalizer.shape)}"
            )
        if normalizer.dtype == torch.bool or normalizer.is_complex():
            raise LossTypeError(f"normalizer must be real, got dtype {normalizer.dtype}")
        return
    if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)):
        raise LossTypeError(
            f"normalizer must be a number or a tensor, got {type(normalizer).__name__}"
        )
    if normalizer != normalizer or normalizer < 0:  # NaN (also for a traced SymFloat)
        raise LossValueError(f"normalizer must be >= 0, got {normalizer}")


def check_class_weight(weight: Tensor | None, num_classes: int, input: Tensor) -> None:
    if weight is None:
        return
    require_tensor("weight", weight)
    require_floating("weight", weight, what="one weight per class")
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise LossValueError(
            f"weight must have shape ({num_classes},), one weight per class, got shape "
            f"{shape_str(weight.shape)}"
        )
    require_same_device("weight", weight, "input", input)


def _batched(t: Tensor) -> bool:
    """A tensor that ``torch.func.vmap`` maps over (at any level of functorch's wrappers: under
    ``vmap(grad(f))`` a grad wrapper holds the batched tensor): its values cannot be read."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


def check_class_indices(
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    class_dim: int,
    *,
    classes_of: str = "input",
) -> None:
    """Every index is in [0, num_classes) or equals ignore_index (one min/max pass).

    ``classes_of`` names the tensor whose dim ``class_dim`` holds the classes (in the message).
    While ``torch.compile`` or ``torch.export`` traces, a value is not known: the fused ops
    (:mod:`losskit.ops`) run this check in their bodies at run time instead, and the reference
    path's ``gather`` raises on an index out of range (as it does for a target that
    ``torch.func.vmap`` maps over, whose values cannot be read here).
    """
    if target.numel() == 0 or torch.compiler.is_compiling() or _batched(target):
        return
    low, high = value_range(target)
    if low >= 0 and high < num_classes:
        return
    if low <= ignore_index <= high:  # the range of the indices that are not ignored
        kept = target[target != ignore_index]
        if kept.numel() == 0:
            return
        low, high = value_range(kept)
        if low >= 0 and high < num_classes:
            return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    value = int(target.reshape(-1)[flat])
    raise LossIndexError(
        f"target has class index {value} at position {position(flat, target.shape)}, but "
        f"{classes_of} has {num_classes} classes (dim {class_dim}); valid indices are 0.."
        f"{num_classes - 1}, or ignore_index={ignore_index}"
    )


def check_inplace_allowed(name: str, tensor: Tensor, storage_of: Tensor) -> None:
    """``inplace_backward=True``: refuse to overwrite a leaf that requires grad.

    ``storage_of`` is what the kernel will write into; when it aliases ``tensor`` and ``tensor`` is
    (a view of) a leaf that requires grad, torch itself would refuse the in-place write.
    """
    if not (torch.is_grad_enabled() and tensor.requires_grad):
        return
    base = tensor._base if tensor._base is not None else tensor
    if not base.is_leaf:
        return
    if storage_of.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
        return  # the kernel writes into a copy
    view = "a view of " if tensor._base is not None else ""
    raise LossValueError(
        f"inplace_backward=True would overwrite {name} with its gradient, but {name} is {view}a "
        "leaf tensor that requires grad (a Parameter, or made with requires_grad=True), which "
        "torch forbids changing in place; pass logits computed from it (the output of the layer "
        "that makes them), or leave inplace_backward=False"
    )


def check_elementwise(
    input: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    reduction: str,
) -> None:
    """An elementwise loss's pairing of input and target (same device, equal shapes: no silent
    broadcasting), and its ``mask`` and ``normalizer``.

    Each cheap test calls its helper (which words the error) only when it fails: on a tiny
    input every call and attribute read here is a visible part of the loss's cost."""
    if target.device != input.device:
        require_same_device("target", target, "input", input)
    shape = target.shape
    if shape != input.shape:
        require_same_shape(input, target)
    if mask is not None:
        check_mask(mask, shape)
    if normalizer is not None:
        check_normalizer(normalizer, reduction)


def check_elementwise_weight(
    name: str, weight: Tensor | None, input: Tensor, *, exact: bool, what: str = ""
) -> None:
    """An elementwise weight: real, on the input's device, and of the input's shape (``exact``)
    or broadcastable to it."""
    if weight is None:
        return
    require_real(name, weight, what=what)
    require_same_device(name, weight, "input", input)
    if not exact:
        require_broadcastable_to(name, weight, input.shape, "the target")
    elif weight.shape != input.shape:
        raise LossValueError(
            f"{name} has shape {shape_str(weight.shape)} but input has shape "
            f"{shape_str(input.shape)}; an elementwise {name} must match the input"
        )
