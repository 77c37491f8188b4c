"""``losskit::distillation`` and ``losskit::linear_distillation``: the fused distillation losses
as custom ops.

``losskit::distillation`` runs the backend's ``distillation_forward`` on ``(N, V)`` student and
teacher logits: the loss and the gradients asked for, computed in the forward (each row
unscaled for ``'none'``); the backward scales them by grad_output (per row for ``'none'``).

``losskit::linear_distillation`` plans the pairs' chunks from the shapes and runs
``kernels.chunked.pairs.pairs_forward`` with the backend's pair epilogue on the heads ``(xs, ws,
bs, xt, wt, bt, tl)`` (the teacher as hidden states and head, or as log-probabilities ``tl``);
``'none'`` computes the row losses only and its backward runs
``losskit::linear_distillation_backward`` (the chunks again, each row times its grad_output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernels_for
from .._validate import check_class_indices
from .._validate.distillation import DistillationOptions
from ._common import (
    EMPTY,
    absent,
    empty,
    fake_grads,
    loss_shape,
    nonempty,
    register_chunked_autograd,
)  # fmt: skip

__all__ = ["distillation", "linear_distillation"]

_OPTS = (
    "str divergence, float beta, float temperature, float alpha, float soft_scale, "
    "str reduction, int ignore_index"
)


def _options(opts: DistillationOptions) -> tuple:
    """The options as the ops' scalar arguments (the order of ``_OPTS``)."""
    return (
        opts.divergence, float(opts.beta), float(opts.temperature), float(opts.alpha),
        float(opts.soft_scale), opts.reduction, int(opts.ignore_index),
    )  # fmt: skip


def _kernels(device: torch.device, op: str):
    kernels, reason = kernels_for(device)
    if kernels is None:
        raise RuntimeError(f"losskit::{op}: {reason}")
    return kernels


def _check(target: Tensor | None, vocab: int, ignore_index: int, validate: bool, name: str,
           dim: int) -> None:  # fmt: skip
    """The class-index check a traced call deferred to the op's body (``_validate.tensors``)."""
    if validate and target is not None:
        check_class_indices(target, vocab, ignore_index, dim, classes_of=name)


# --------------------------------------------------------------------------------------------
# logits
# --------------------------------------------------------------------------------------------


@torch.library.custom_op(
    "losskit::distillation", mutates_args=(),
    schema=f"(Tensor student, Tensor teacher, Tensor? target, Tensor? mask, Tensor? normalizer, "
    f"{_OPTS}, bool[] want, bool validate) -> (Tensor, Tensor, Tensor)",
)  # fmt: skip
def _op(student, teacher, target, mask, normalizer, divergence, beta, temperature, alpha,
        soft_scale, reduction, ignore_index, want, validate):  # fmt: skip
    _check(target, student.shape[1], ignore_index, validate, "student_logits", 1)
    opts = DistillationOptions(
        divergence, beta, temperature, alpha, soft_scale, reduction, ignore_index
    )
    loss, gs, gt = _kernels(student.device, "distillation").distillation.distillation_forward(
        student, teacher, target, opts=opts, mask=mask, normalizer=normalizer, want=tuple(want)
    )
    return loss, nonempty(gs, student), nonempty(gt, student)


@_op.register_fake
def _op_fake(student, teacher, target, mask, normalizer, divergence, beta, temperature, alpha,
             soft_scale, reduction, ignore_index, want, validate):  # fmt: skip
    grads = (
        t.new_empty(t.shape) if w else empty(student)
        for t, w in zip((student, teacher), want, strict=True)
    )
    return (student.new_empty(loss_shape(student.shape[0], reduction)), *grads)


def _setup(ctx, inputs, output) -> None:
    ctx.rowwise = inputs[10] == "none"
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_loss, *unused):
    scale = grad_loss.reshape(-1, 1) if ctx.rowwise else grad_loss
    grads = (absent(g) for g in ctx.saved_tensors)
    return (*(None if g is None else (g * scale).to(g.dtype) for g in grads), *EMPTY[:12])


_op.register_autograd(_backward, setup_context=_setup)


def distillation(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    recompute: object = None,
    validate: bool = True,
) -> Tensor:
    """The kernels' ``distillation`` launcher through the op (``recompute`` unused: no second
    order under tracing); ``validate`` checks the hard labels in the op's body, at run time."""
    del recompute
    grad = torch.is_grad_enabled()
    want = [grad and student.requires_grad, grad and teacher.requires_grad]
    loss, _, _ = _op(
        student, teacher, target, mask, normalizer, *_options(opts), want, bool(validate)
    )
    return loss


# --------------------------------------------------------------------------------------------
# the linear form
# --------------------------------------------------------------------------------------------

_HEADS = "Tensor xs, Tensor ws, Tensor? bs, Tensor? xt, Tensor? wt, Tensor? bt, Tensor? tl"
_LINEAR = (
    f"{_HEADS}, Tensor? target, Tensor? mask, Tensor? normalizer, {_OPTS}, int? chunk_size, "
    "str memory_budget, bool[] want, bool validate"
)


def _plan(heads, opts: DistillationOptions, chunk_size, memory_budget):
    from ..kernels.chunked import budget_bytes, plan_pairs

    xs, ws, _, xt, *_ = heads
    v, d = ws.shape
    budget = int(memory_budget) if memory_budget.isdigit() else memory_budget
    d_max = max(d, 0 if xt is None else xt.shape[1])
    return plan_pairs(
        xs.shape[0], d_max, v, xs.dtype, xs.device.type,
        budget=budget_bytes(budget, xs.device.type, pairs=True), chunk_size=chunk_size,
    )  # fmt: skip


def _run(heads, target, mask, normalizer, scalars, chunk_size, memory_budget, want, row_scale):
    from ..kernels.chunked.pairs import pairs_forward

    opts = DistillationOptions(*scalars)
    kernels = _kernels(heads[0].device, "linear_distillation")
    epi = kernels.linear_distillation.EPILOGUE(opts)
    plan = _plan(heads, opts, chunk_size, memory_budget)
    loss, grads = pairs_forward(
        heads, target, opts=opts, mask=mask, normalizer=normalizer, plan=plan, epi=epi,
        want=tuple(want), row_scale=row_scale,
    )  # fmt: skip
    return loss, tuple(nonempty(g, heads[0]) for g in grads)


@torch.library.custom_op(
    "losskit::linear_distillation", mutates_args=(),
    schema=f"({_LINEAR}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)  # fmt: skip
def _linear_op(xs, ws, bs, xt, wt, bt, tl, target, mask, normalizer, divergence, beta,
               temperature, alpha, soft_scale, reduction, ignore_index, chunk_size,
               memory_budget, want, validate):  # fmt: skip
    _check(target, ws.shape[0], ignore_index, validate, "student_weight", 0)
    scalars = (divergence, beta, temperature, alpha, soft_scale, reduction, ignore_index)
    want = want if reduction != "none" else [False] * 7
    loss, grads = _run(
        (xs, ws, bs, xt, wt, bt, tl), target, mask, normalizer, scalars, chunk_size,
        memory_budget, want, None,
    )  # fmt: skip
    return loss, *grads


@_linear_op.register_fake
def _linear_fake(xs, ws, bs, xt, wt, bt, tl, target, mask, normalizer, divergence, beta,
                 temperature, alpha, soft_scale, reduction, ignore_index, chunk_size,
                 memory_budget, want, validate):  # fmt: skip
    want = want if reduction != "none" else [False] * 7
    grads = fake_grads((xs, ws, bs, xt, wt, bt, tl), want)
    return (xs.new_empty(loss_shape(xs.shape[0], reduction)), *grads)


@torch.library.custom_op(
    "losskit::linear_distillation_backward", mutates_args=(),
    schema=f"({_LINEAR}, Tensor grad_rows) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
    "Tensor)",
)  # fmt: skip
def _linear_backward_op(xs, ws, bs, xt, wt, bt, tl, target, mask, normalizer, divergence, beta,
                        temperature, alpha, soft_scale, reduction, ignore_index, chunk_size,
                        memory_budget, want, validate, grad_rows):  # fmt: skip
    scalars = (divergence, beta, temperature, alpha, soft_scale, reduction, ignore_index)
    _, grads = _run(
        (xs, ws, bs, xt, wt, bt, tl), target, mask, normalizer, scalars, chunk_size,
        memory_budget, want, grad_rows.to(torch.float32).reshape(-1),
    )  # fmt: skip
    return grads


@_linear_backward_op.register_fake
def _linear_backward_fake(xs, ws, bs, xt, wt, bt, tl, target, mask, normalizer, divergence, beta,
                          temperature, alpha, soft_scale, reduction, ignore_index, chunk_size,
                          memory_budget, want, validate, grad_rows):  # fmt: skip
    return fake_grads((xs, ws, bs, xt, wt, bt, tl), want)


register_chunked_autograd(_linear_op, _linear_backward_op, tensors=10, reduction=15, grads_at=1)


def linear_distillation(
    *heads: Tensor | None,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    chunk_size: int | None,
    memory_budget: int | str,
    validate: bool = True,
) -> Tensor:
    """The chunked distillation of validated 2-D heads ``(xs, ws, bs, xt, wt, bt, tl)`` and the
    flat target (its eighth positional argument, or None) through the op."""
    *heads, target = heads
    grad = torch.is_grad_enabled()
    want = [grad and t is not None and t.requires_grad for t in heads]
    loss, *_ = _linear_op(
        *heads, target, mask, normalizer, *_options(opts), chunk_size, str(memory_budget), want,
        bool(validate),
    )  # fmt: skip
    return loss
