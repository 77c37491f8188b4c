"""``losskit::linear_cross_entropy``: the chunked linear + cross-entropy as one custom op.

The body plans the chunks from the shapes (``kernels/chunked/plan.py``: the budget, the chunk
size, the ``dW`` accumulation, as in eager mode) and runs the engine's pure entry
(``kernels.chunked.engine.forward``) with the backend's epilogue: the loss, its z term and, for
``'mean'``/``'sum'``, ``(dX, dW, db)`` for grad_output = 1, all in the forward. The backward
scales them by grad_output. For ``'none'`` the forward computes the row losses only and the
backward runs ``losskit::linear_cross_entropy_backward``: the chunks again, each row's gradient
times its grad_output (``engine.backward_rows``), as the eager ``autograd.Function`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernels_for
from .._validate import CrossEntropyOptions, check_class_indices
from ._common import fake_grads, loss_shape, nonempty, register_chunked_autograd

__all__ = ["linear_cross_entropy"]

_ARGS = (
    "Tensor x, Tensor w, Tensor? bias, Tensor target, Tensor? weight, Tensor? mask, "
    "Tensor? normalizer, int ignore_index, float label_smoothing, float z_loss, float? softcap, "
    "str reduction, int? chunk_size, str memory_budget, str accumulate, bool[] want, bool validate"
)


def _setup(
    x: Tensor, w: Tensor, ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size,
    memory_budget, accumulate,
):  # fmt: skip
    """The backend's kernels, the options, the plan and the epilogue of one call."""
    from ..kernels.chunked import budget_bytes, plan_chunks

    kernels, reason = kernels_for(x.device)
    if kernels is None:
        raise RuntimeError(f"losskit::linear_cross_entropy: {reason}")
    opts = CrossEntropyOptions(reduction, ignore_index, label_smoothing, z_loss, softcap)
    budget = int(memory_budget) if memory_budget.isdigit() else memory_budget
    n, d = x.shape
    plan = plan_chunks(
        n, d, w.shape[0], x.dtype, x.device.type, budget=budget_bytes(budget, x.device.type),
        chunk_size=chunk_size, accumulate=accumulate,
    )  # fmt: skip
    return kernels.linear_cross_entropy, opts, plan


def _f32(weight: Tensor | None) -> Tensor | None:
    return None if weight is None else weight.to(torch.float32)


@torch.library.custom_op(
    "losskit::linear_cross_entropy", mutates_args=(),
    schema=f"({_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)  # fmt: skip
def _op(x, w, bias, target, weight, mask, normalizer, ignore_index, label_smoothing, z_loss,
        softcap, reduction, chunk_size, memory_budget, accumulate, want, validate):  # fmt: skip
    from ..kernels.chunked import engine

    if validate:  # deferred from the traced call (no values there): see _validate.tensors
        check_class_indices(target, w.shape[0], ignore_index, 0, classes_of="linear_weight")
    kernel, opts, plan = _setup(
        x, w, ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size,
        memory_budget, accumulate,
    )  # fmt: skip
    epi = kernel.EPILOGUE(weight, w.shape[0], opts)
    want = tuple(want) if reduction != "none" else (False, False, False)
    loss, zterm, dx, dw, db = engine.forward(
        x, w, bias, target, _f32(weight), mask, normalizer, opts, plan, epi, want, True
    )
    return loss, zterm, nonempty(dx, x), nonempty(dw, x), nonempty(db, x)


@_op.register_fake
def _op_fake(x, w, bias, target, weight, mask, normalizer, ignore_index, label_smoothing,
             z_loss, softcap, reduction, chunk_size, memory_budget, accumulate, want,
             validate):  # fmt: skip
    shape = loss_shape(x.shape[0], reduction)
    grads = fake_grads((x, w, bias), want if reduction != "none" else (False,) * 3)
    return (x.new_empty(shape), x.new_empty(shape), *grads)


@torch.library.custom_op(
    "losskit::linear_cross_entropy_backward", mutates_args=(),
    schema=f"({_ARGS}, Tensor grad_rows) -> (Tensor, Tensor, Tensor)",
)  # fmt: skip
def _backward_op(x, w, bias, target, weight, mask, normalizer, ignore_index, label_smoothing,
                 z_loss, softcap, reduction, chunk_size, memory_budget, accumulate, want,
                 validate, grad_rows):  # fmt: skip
    from ..kernels.chunked import engine

    kernel, opts, plan = _setup(
        x, w, ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size,
        memory_budget, accumulate,
    )  # fmt: skip
    epi = kernel.EPILOGUE(weight, w.shape[0], opts)
    dx, dw, db = engine.backward_rows(
        x, w, bias, target, _f32(weight), mask, normalizer, opts, plan, epi, tuple(want),
        grad_rows,
    )  # fmt: skip
    return nonempty(dx, x), nonempty(dw, x), nonempty(db, x)


@_backward_op.register_fake
def _backward_fake(x, w, bias, target, weight, mask, normalizer, ignore_index, label_smoothing,
                   z_loss, softcap, reduction, chunk_size, memory_budget, accumulate, want,
                   validate, grad_rows):  # fmt: skip
    return fake_grads((x, w, bias), want)


register_chunked_autograd(_op, _backward_op, tensors=7, reduction=11, grads_at=2)


def linear_cross_entropy(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    chunk_size: int | None,
    memory_budget: int | str,
    accumulate: str,
    return_z_loss: bool,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """The chunked loss of validated 2-D inputs (``kernels/CONTRACT.md`` §2) through the op;
    ``weight`` float32 or None, ``normalizer`` a 0-dim float32 tensor or None; ``validate``
    checks the class indices in the op's body, at run time."""
    grad = torch.is_grad_enabled()
    want = [grad and t is not None and t.requires_grad for t in (x, w, bias)]
    loss, zterm, *_ = _op(
        x, w, bias, target, weight, mask, normalizer, int(ignore_index), float(label_smoothing),
        float(z_loss), None if softcap is None else float(softcap), reduction, chunk_size,
        str(memory_budget), accumulate, want, bool(validate),
    )  # fmt: skip
    return (loss, zterm) if return_z_loss else loss
