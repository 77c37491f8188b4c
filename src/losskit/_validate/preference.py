"""Checks of the preference and policy-gradient losses (``functional/preference.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import LossTypeError, LossValueError
from .options import check_ignore_index, is_finite
from .tensors import (
    check_class_indices,
    check_mask,
    require_floating,
    require_same_device,
    require_same_dtype,
    require_tensor,
    shape_str,
)

__all__ = [
    "DPO_TYPES",
    "GRPO_TYPES",
    "SequenceCall",
    "check_beta",
    "check_choice",
    "check_logps",
    "check_nonnegative_float",
    "check_number",
    "check_reduction",
    "check_reference",
    "check_reference_pair",
    "check_sequence_call",
    "check_sequence_side",
]

#: DPO's ``loss_type`` values: the paper's logistic loss, IPO's squared loss, SLiC's hinge
DPO_TYPES = ("sigmoid", "ipo", "hinge")
#: GRPO's ``loss_type`` values: how the per-token losses are normalized (TRL's names)
GRPO_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def check_number(name: str, value: object) -> float:
    """A finite real number (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise LossTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not is_finite(value):
        raise LossValueError(f"{name} must be finite, got {value}")
    return value


def check_beta(beta: object, name: str = "beta") -> float:
    """A positive finite ``beta`` (the losses divide by it or scale the rewards with it)."""
    value = check_number(name, beta)
    if value <= 0.0:
        raise LossValueError(f"{name} must be > 0, got {value}")
    return value


def check_nonnegative_float(name: str, value: object, *, at_most: float | None = None) -> float:
    """A finite number ``>= 0`` (``<= at_most`` when given)."""
    v = check_number(name, value)
    if v < 0.0 or (at_most is not None and v > at_most):
        bound = f"in [0, {at_most:g}]" if at_most is not None else ">= 0"
        raise LossValueError(f"{name} must be {bound}, got {v}")
    return v


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise LossValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return str(value)


def check_reduction(reduction: object) -> str:
    """``'none'``, ``'mean'`` or ``'sum'``."""
    return check_choice("reduction", reduction, ("none", "mean", "sum"))


def check_logps(*named: tuple[str, Tensor | None], what: str = "log-probabilities") -> None:
    """Per-sequence (or per-example) log-probabilities: floating tensors of one shape, dtype
    and device (None entries are skipped)."""
    first = None
    for name, t in named:
        if t is None:
            continue
        require_tensor(name, t)
        require_floating(name, t, what=what)
        if first is None:
            first = (name, t)
            if t.dim() != 1:
                raise LossValueError(
                    f"{name} must have shape (B,), one value per sequence, got shape "
                    f"{shape_str(t.shape)}"
                )
            continue
        ref_name, ref = first
        if t.shape != ref.shape:
            raise LossValueError(
                f"{name} has shape {shape_str(t.shape)} but {ref_name} has "
                f"{shape_str(ref.shape)}; they must match (one value per sequence)"
            )
        require_same_dtype(name, t, ref_name, ref)
        require_same_device(name, t, ref_name, ref)


@dataclass(frozen=True)
class SequenceCall:
    """A checked linear sequence-level call: ``S`` sequences of ``T`` positions, ``V`` classes."""

    s: int
    t: int
    vocab: int


def _check_head(input_name: str, input: Tensor, w_name: str, w: Tensor, b_name: str,
                b: Tensor | None, vocab: int | None) -> int:  # fmt: skip
    require_tensor(w_name, w)
    require_floating(w_name, w, what="the head's weight")
    if w.dim() != 2:
        raise LossValueError(f"{w_name} must have shape (V, D), got shape {shape_str(w.shape)}")
    if w.shape[1] != input.shape[-1]:
        raise LossValueError(
            f"{w_name} has shape {shape_str(w.shape)}: {w.shape[1]} input features, but "
            f"{input_name} has {input.shape[-1]} (its last dim)"
        )
    if vocab is not None and w.shape[0] != vocab:
        raise LossValueError(
            f"{w_name} has {w.shape[0]} classes (dim 0) but the policy's head has {vocab}; the "
            "reference model must share the vocabulary"
        )
    require_same_dtype(w_name, w, input_name, input)
    require_same_device(w_name, w, input_name, input)
    if b is not None:
        require_tensor(b_name, b)
        require_floating(b_name, b, what="the head's bias")
        if b.shape != (w.shape[0],):
            raise LossValueError(
                f"{b_name} must have shape ({w.shape[0]},), one per class, got shape "
                f"{shape_str(b.shape)}"
            )
        require_same_dtype(b_name, b, input_name, input)
        require_same_device(b_name, b, input_name, input)
    return int(w.shape[0])


def check_sequence_call(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    ignore_index: object,
    *,
    pairs: bool,
    validate: bool,
    batched: bool = True,
) -> SequenceCall:
    """The policy's hidden states ``(S, T, D)`` (``(*, D)`` with ``batched=False``), head
    ``(V, D)``, targets ``(S, T)`` of class indices (``ignore_index`` where a position does not
    count) and mask; with ``pairs``, ``S`` even (chosen answers first, then the rejected)."""
    require_tensor("hidden", hidden)
    require_floating("hidden", hidden, what="the hidden states")
    require_tensor("target", target)
    if batched and hidden.dim() != 3:
        raise LossValueError(
            f"hidden must have shape (S, T, D): S sequences of T positions, got shape "
            f"{shape_str(hidden.shape)}"
        )
    if hidden.dim() < 1:
        raise LossValueError("hidden must have at least one dim (the features, last)")
    vocab = _check_head("hidden", hidden, "weight", weight, "bias", bias, None)
    if target.shape != hidden.shape[:-1]:
        raise LossValueError(
            f"target has shape {shape_str(target.shape)} but hidden has "
            f"{shape_str(hidden.shape)}; target must be hidden's shape without the last dim "
            f"({shape_str(hidden.shape[:-1])})"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise LossTypeError(
            f"target must hold class indices (an integer dtype), got {target.dtype}"
        )
    require_same_device("target", target, "hidden", hidden)
    ignore = check_ignore_index(ignore_index)
    if validate:
        check_class_indices(target, vocab, ignore, 0, classes_of="weight")
    check_mask(mask, target.shape, what="the target")
    if mask is not None:
        require_same_device("mask", mask, "hidden", hidden)
    if not batched:
        return SequenceCall(0, 0, vocab)
    s, t = target.shape[0], target.shape[1]  # not int(): a traced length stays symbolic
    if pairs and s % 2:
        raise LossValueError(
            f"hidden holds {s} sequences, but a preference loss takes pairs: the chosen "
            "answers first, then the rejected ones in the same order (2B sequences)"
        )
    return SequenceCall(s, t, vocab)


def check_reference(
    call: SequenceCall,
    hidden: Tensor,
    reference_logps: Tensor | None,
    reference_input: Tensor | None,
    reference_weight: Tensor | None,
    reference_bias: Tensor | None,
    *,
    required: bool,
    token_level: bool = False,
) -> None:
    """The reference model: its log-probabilities (``(S,)`` per sequence or ``(S, T)`` per
    token; ``(S, T)`` only with ``token_level``), or its hidden states ``(S, T, D')`` and head
    ``(V, D')``; not both; required or not."""
    given_head = reference_input is not None or reference_weight is not None
    if reference_logps is not None and (given_head or reference_bias is not None):
        raise LossValueError(
            "pass the reference model either as reference_logps or as reference_input and "
            "reference_weight (its hidden states and head), not both"
        )
    if reference_logps is None and not given_head:
        if required:
            raise LossValueError(
                "this loss compares the policy with a reference model: pass reference_logps, or "
                "reference_input and reference_weight"
            )
        return
    if reference_logps is not None:
        require_tensor("reference_logps", reference_logps)
        require_floating("reference_logps", reference_logps, what="log-probabilities")
        shapes = [(call.s, call.t)] if token_level else [(call.s,), (call.s, call.t)]
        if tuple(reference_logps.shape) not in shapes:
            want = " or ".join(shape_str(s) for s in shapes)
            raise LossValueError(
                f"reference_logps must have shape {want} (per sequence, or per token), got "
                f"shape {shape_str(reference_logps.shape)}"
            )
        require_same_device("reference_logps", reference_logps, "hidden", hidden)
        return
    if reference_input is None or reference_weight is None:
        missing = "reference_input" if reference_input is None else "reference_weight"
        raise LossValueError(
            f"{missing} is missing: the reference model's hidden states and head go together"
        )
    require_tensor("reference_input", reference_input)
    require_floating("reference_input", reference_input, what="the hidden states")
    if reference_input.shape[:-1] != hidden.shape[:-1]:
        raise LossValueError(
            f"reference_input has shape {shape_str(reference_input.shape)} but hidden has "
            f"{shape_str(hidden.shape)}; their positions (all dims but the last) must be equal"
        )
    require_same_dtype("reference_input", reference_input, "hidden", hidden)
    require_same_device("reference_input", reference_input, "hidden", hidden)
    _check_head(
        "reference_input", reference_input, "reference_weight", reference_weight,
        "reference_bias", reference_bias, call.vocab,
    )  # fmt: skip


def check_reference_pair(pair: tuple | list) -> Tensor:
    """``(chosen, rejected)`` reference log-probabilities of the same shape, concatenated
    (chosen first, as the policy's sequences are)."""
    if len(pair) != 2:
        raise LossValueError(
            f"reference_logps as a sequence must be (chosen, rejected), got {len(pair)} items"
        )
    for name, t in zip(("reference_logps[0]", "reference_logps[1]"), pair, strict=True):
        require_tensor(name, t)
    if pair[0].shape != pair[1].shape:
        raise LossValueError(
            f"reference_logps holds chosen of shape {shape_str(pair[0].shape)} and rejected of "
            f"shape {shape_str(pair[1].shape)}; they must match"
        )
    return torch.cat([pair[0], pair[1]])


def check_sequence_side(
    name: str, value: Tensor | None, shape: tuple[int, ...], hidden: Tensor, *, what: str,
    boolean: bool = False,
) -> None:  # fmt: skip
    """A per-sequence or per-token side input (advantages, old log-probs, labels)."""
    if value is None:
        return
    require_tensor(name, value)
    if boolean:
        if value.dtype != torch.bool:
            raise LossTypeError(f"{name} must be a bool tensor ({what}), got {value.dtype}")
    else:
        require_floating(name, value, what=what)
    if tuple(value.shape) != shape:
        raise LossValueError(
            f"{name} must have shape {shape_str(shape)} ({what}), got shape "
            f"{shape_str(value.shape)}"
        )
    require_same_device(name, value, "hidden", hidden)
