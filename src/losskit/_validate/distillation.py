"""Checks of a distillation call: the options, the student/teacher logits, the linear form's heads.

A distillation loss compares a student's token distribution with a teacher's over the same
vocabulary: logits ``(*, V)`` (the vocabulary last, as a language model's head gives them), an
optional hard-label target ``(*)`` (class indices, ``ignore_index`` where a position does not
count) and an optional mask ``(*)``. The linear form takes hidden states and heads instead of
logits. What comes out of the option check is a frozen :class:`DistillationOptions` that the
reference, the kernels and the Modules read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._reduction import resolve
from .errors import LossTypeError, LossValueError
from .options import check_float_option, check_ignore_index, is_finite
from .tensors import (
    check_class_indices,
    check_mask,
    check_normalizer,
    require_floating,
    require_same_device,
    require_same_dtype,
    require_tensor,
    shape_str,
)

__all__ = [
    "DIVERGENCES",
    "DistillationCall",
    "DistillationOptions",
    "check_distillation_call",
    "check_linear_distillation_call",
    "distillation_options",
]

#: What ``divergence=`` may name.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


@dataclass(frozen=True)
class DistillationOptions:
    """The checked options of a distillation loss (logits-level, fused, linear).

    Each counted position's loss is ``alpha * CE(student, y) + (1 - alpha) * soft_scale *
    divergence(student / T, teacher / T)``; the pure divergences have ``alpha = 0`` and
    ``soft_scale = 1``.
    """

    divergence: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 0.0
    soft_scale: float = 1.0
    reduction: str = "mean"
    ignore_index: int = -100

    @property
    def kind(self) -> str:
        """The divergence the rows compute: ``'jsd'`` at ``beta`` 0 and 1 is the forward and
        the reverse KL."""
        if self.divergence == "jsd" and self.beta == 0.0:
            return "forward_kl"
        if self.divergence == "jsd" and self.beta == 1.0:
            return "reverse_kl"
        return self.divergence


def distillation_options(
    *,
    divergence: object = "forward_kl",
    beta: object = 0.5,
    temperature: object = 1.0,
    alpha: object = 0.0,
    soft_scale: object = 1.0,
    reduction: object = "mean",
    ignore_index: object = -100,
) -> DistillationOptions:
    """Check a distillation loss's options; ``soft_scale=None`` means ``temperature ** 2``."""
    if divergence not in DIVERGENCES:
        raise LossValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    beta = check_float_option("beta", beta, low=0.0, high=1.0)
    temperature = check_float_option("temperature", temperature, low=0.0, low_open=True)
    if not is_finite(temperature):
        raise LossValueError(f"temperature must be finite, got {temperature:g}")
    alpha = check_float_option("alpha", alpha, low=0.0, high=1.0)
    if soft_scale is None:
        soft_scale = temperature * temperature
    soft_scale = check_float_option("soft_scale", soft_scale, low=0.0)
    if not is_finite(soft_scale):
        raise LossValueError(f"soft_scale must be finite, got {soft_scale:g}")
    reduction = resolve(reduction, depth=1)  # type: ignore[arg-type]
    ignore_index = check_ignore_index(ignore_index)
    return DistillationOptions(
        divergence, beta, temperature, alpha, soft_scale, reduction, ignore_index
    )


def check_direction(direction: object) -> str:
    """``kl_divergence``'s ``direction``: the divergence it names."""
    if direction not in ("forward", "reverse"):
        raise LossValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return f"{direction}_kl"


@dataclass(frozen=True)
class DistillationCall:
    """What a validated call's shapes say."""

    index_shape: torch.Size  #: the positions: the logits' shape without V (the 'none' output)
    vocab: int  #: V


def _check_target(
    target: Tensor | None,
    index_shape: torch.Size,
    vocab: int,
    opts: DistillationOptions,
    logits_name: str,
    class_dim: int,
    validate: bool,
) -> None:
    if target is None:
        if opts.alpha > 0.0:
            raise LossValueError(
                f"alpha={opts.alpha:g} weighs a hard-label cross-entropy, which needs target "
                "(class indices of shape (*)); pass target, or alpha=0 for the divergence alone"
            )
        return
    require_tensor("target", target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise LossTypeError(
            f"target must hold integer class indices (int64), ignore_index where a position "
            f"does not count, got dtype {target.dtype}"
        )
    if target.shape != index_shape:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)} but {logits_name} has positions of "
            f"shape {shape_str(index_shape)} (its shape without the vocabulary, the last dim); "
            "they must be equal"
        )
    if validate:
        check_class_indices(target, vocab, opts.ignore_index, class_dim, classes_of=logits_name)


def _positions(name: str, logits: Tensor, what: str) -> torch.Size:
    require_floating(name, logits, what=what)
    if logits.dim() == 0:
        raise LossValueError(
            f"{name} must have a vocabulary dimension (the last): expected shape (*, V), got a "
            "0-dim tensor"
        )
    return logits.shape[:-1]


def check_distillation_call(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    opts: DistillationOptions,
    validate: bool,
) -> DistillationCall:
    """Student and teacher logits of one shape ``(*, V)``, dtype and device; target and mask
    over the positions ``(*)``."""
    index_shape = _positions("student_logits", student_logits, "the student's logits")
    require_floating("teacher_logits", teacher_logits, what="the teacher's logits")
    if teacher_logits.shape != student_logits.shape:
        raise LossValueError(
            f"teacher_logits has shape {shape_str(teacher_logits.shape)} but student_logits has "
            f"shape {shape_str(student_logits.shape)}; they must be equal (one row of V "
            "logits per position, the same vocabulary)"
        )
    require_same_dtype("teacher_logits", teacher_logits, "student_logits", student_logits)
    require_same_device("teacher_logits", teacher_logits, "student_logits", student_logits)
    vocab = student_logits.shape[-1]
    _check_target(target, index_shape, vocab, opts, "student_logits", len(index_shape), validate)
    if target is not None:
        require_same_device("target", target, "student_logits", student_logits)
    check_mask(mask, index_shape, what="the logits")
    check_normalizer(normalizer, opts.reduction)
    return DistillationCall(index_shape, vocab)


def _check_head(
    input_name: str,
    input: Tensor,
    weight_name: str,
    weight: Tensor,
    bias_name: str,
    bias: Tensor | None,
    vocab: int | None,
) -> int:
    require_floating(weight_name, weight, what="the head's weight")
    if weight.dim() != 2:
        raise LossValueError(
            f"{weight_name} must have shape (V, D), got shape {shape_str(weight.shape)}"
        )
    if weight.shape[1] != input.shape[-1]:
        raise LossValueError(
            f"{weight_name} has shape {shape_str(weight.shape)}: {weight.shape[1]} input "
            f"features, but {input_name} has {input.shape[-1]} (its last dim)"
        )
    if vocab is not None and weight.shape[0] != vocab:
        raise LossValueError(
            f"{weight_name} has {weight.shape[0]} classes (dim 0) but the student's head has "
            f"{vocab}; teacher and student must share the vocabulary"
        )
    require_same_dtype(weight_name, weight, input_name, input)
    require_same_device(weight_name, weight, input_name, input)
    if bias is not None:
        require_floating(bias_name, bias, what="the head's bias")
        if bias.shape != (weight.shape[0],):
            raise LossValueError(
                f"{bias_name} must have shape ({weight.shape[0]},), one per class, got shape "
                f"{shape_str(bias.shape)}"
            )
        require_same_dtype(bias_name, bias, input_name, input)
        require_same_device(bias_name, bias, input_name, input)
    return int(weight.shape[0])


def check_linear_distillation_call(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_input: Tensor | None,
    teacher_weight: Tensor | None,
    teacher_logprobs: Tensor | None,
    target: Tensor | None,
    student_bias: Tensor | None,
    teacher_bias: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    opts: DistillationOptions,
    validate: bool,
) -> DistillationCall:
    """The student's hidden states ``(*, Ds)`` and head ``(V, Ds)``; the teacher's hidden states
    ``(*, Dt)`` and head ``(V, Dt)``, or its log-probabilities ``(*, V)``; target and mask over
    ``(*)``."""
    index_shape = _positions("student_input", student_input, "the student's hidden states")
    vocab = _check_head(
        "student_input", student_input, "student_weight", student_weight, "student_bias",
        student_bias, None,
    )  # fmt: skip
    if teacher_logprobs is not None:
        if teacher_input is not None or teacher_weight is not None or teacher_bias is not None:
            raise LossValueError(
                "pass the teacher either as teacher_input and teacher_weight (its hidden states "
                "and head) or as teacher_logprobs, not both"
            )
        require_floating("teacher_logprobs", teacher_logprobs, what="the teacher's log-probs")
        want = (*index_shape, vocab)
        if teacher_logprobs.shape != want:
            raise LossValueError(
                f"teacher_logprobs must have shape {shape_str(want)} (the student's positions, "
                f"then V = {vocab}), got shape {shape_str(teacher_logprobs.shape)}"
            )
        require_same_dtype("teacher_logprobs", teacher_logprobs, "student_input", student_input)
        require_same_device("teacher_logprobs", teacher_logprobs, "student_input", student_input)
    else:
        if teacher_input is None or teacher_weight is None:
            raise LossValueError(
                "the teacher is missing: pass teacher_input and teacher_weight (its hidden "
                "states and head), or teacher_logprobs"
            )
        require_floating("teacher_input", teacher_input, what="the teacher's hidden states")
        if teacher_input.shape[:-1] != index_shape:
            raise LossValueError(
                f"teacher_input has shape {shape_str(teacher_input.shape)} but student_input has "
                f"{shape_str(student_input.shape)}; their positions (all dims but the last) must "
                "be equal"
            )
        require_same_dtype("teacher_input", teacher_input, "student_input", student_input)
        require_same_device("teacher_input", teacher_input, "student_input", student_input)
        _check_head(
            "teacher_input", teacher_input, "teacher_weight", teacher_weight, "teacher_bias",
            teacher_bias, vocab,
        )  # fmt: skip
    _check_target(target, index_shape, vocab, opts, "student_weight", 0, validate)
    if target is not None:
        require_same_device("target", target, "student_input", student_input)
    check_mask(mask, index_shape, what="the hidden states")
    check_normalizer(normalizer, opts.reduction)
    return DistillationCall(index_shape, vocab)
