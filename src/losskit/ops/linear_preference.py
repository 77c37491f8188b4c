"""``losskit::linear_preference``: the chunked preference / policy-gradient loss as one custom op.

The loss's formula is a :class:`~losskit.functional.preference.Rule` (DPO, ORPO, CPO/SimPO,
KTO, GRPO), a Python object an op cannot take: the op carries it as its class name, the kinds of
its constructor's arguments (``spec``), their numbers (``params``) and at most one tensor
(KTO's ``kl``, GRPO's ``normalizer``), and the body builds the same rule again
(:func:`encode` / :func:`decode`). The rule's per-sequence inputs (``side``: the reference's
log-probabilities, KTO's desirable flags, GRPO's advantages and old log-probabilities) are
optional tensor arguments.

The body runs the engine's pure entry (``kernels.chunked.sequences.run_sequences``) with the
backend's epilogue, the objective and finish of
:func:`~losskit.functional.preference.engine_parts` (the eager call's), and the plan from the
shapes: the loss, the token log-probabilities and, for ``'mean'``/``'sum'``, ``(dX, dW, db)``
for grad_output = 1, in the forward; the backward scales them. For ``'none'`` the forward
computes the log-probabilities and each group's term, and the backward runs
``losskit::linear_preference_backward``: the chunks again, the groups' grad_output as their
weights. The rule's factor ``dL/dlog p`` is taken by ``torch.func.grad`` (the body runs below
autograd, see ``kernels/chunked/sequences.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import kernels_for
from .._validate import check_class_indices
from ._common import fake_grads, nonempty, register_chunked_autograd

__all__ = ["decode", "encode", "linear_preference"]

_ARGS = (
    "Tensor x, Tensor w, Tensor? bias, Tensor target, Tensor counted, Tensor? reference, "
    "Tensor? desirable, Tensor? advantages, Tensor? old, Tensor? rule_tensor, str rule, "
    "float[] params, str reduction, int ignore_index, int? chunk_size, str memory_budget, "
    "bool[] want, bool validate"
)
_F32 = torch.float32


def encode(rule) -> tuple[str, list[float], Tensor | None]:
    """``rule`` as op arguments: ``'Name:k,k,...'`` (one kind per constructor argument: ``f``
    float, ``i`` int, ``n`` None, ``t`` the tensor, ``s=value`` a string), the numbers, the
    tensor (or None)."""
    kinds, params, tensor = [], [], None
    for a in rule.args():
        if a is None:
            kinds.append("n")
        elif isinstance(a, Tensor):
            if tensor is not None:
                raise TypeError(f"{type(rule).__name__}: an op carries one tensor argument")
            kinds.append("t")
            tensor = a
        elif isinstance(a, str):
            kinds.append(f"s={a}")
        elif isinstance(a, bool) or not isinstance(a, (int, float)):
            raise TypeError(f"{type(rule).__name__}: cannot carry argument {a!r}")
        else:
            kinds.append("i" if isinstance(a, int) else "f")
            params.append(float(a))
    return f"{type(rule).__name__}:{','.join(kinds)}", params, tensor


def decode(spec: str, params: list[float], tensor: Tensor | None):
    """The rule :func:`encode` gave ``(spec, params, tensor)`` for."""
    from ..functional.preference import RULES

    name, _, kinds = spec.partition(":")
    numbers = iter(params)
    args: list = []
    for k in kinds.split(",") if kinds else ():
        if k == "n":
            args.append(None)
        elif k == "t":
            args.append(tensor)
        elif k.startswith("s="):
            args.append(k[2:])
        else:
            value = next(numbers)
            args.append(int(value) if k == "i" else value)
    return RULES[name](*args)


def _setup(x, w, counted, side, rule, params, rule_tensor, reduction, chunk_size, memory_budget):
    """The rule, the engine's objective and finish, its sequences, plan and epilogue."""
    from ..functional.preference import SIDE, engine_parts, engine_plan
    from ..kernels.chunked.sequences import Sequences, make_epilogue

    kernels, reason = kernels_for(x.device)
    if kernels is None:
        raise RuntimeError(f"losskit::linear_preference: {reason}")
    r = decode(rule, params, rule_tensor)
    present = {k: v for k, v in zip(SIDE, side, strict=True) if v is not None}
    objective, finish = engine_parts(r, counted, present, reduction, x.dtype)
    budget = int(memory_budget) if memory_budget.isdigit() else memory_budget
    plan = engine_plan(x, w, chunk_size, budget)
    epi = make_epilogue(kernels.linear_preference.EPILOGUE, w.shape[0])
    return r, objective, finish, Sequences(*counted.shape, r.pairs), plan, epi


def _groups(counted: Tensor, rule: str) -> int:
    from ..functional.preference import RULES

    s = counted.shape[0]
    return s // 2 if RULES[rule.partition(":")[0]].pairs else s


@torch.library.custom_op(
    "losskit::linear_preference", mutates_args=(),
    schema=f"({_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)  # fmt: skip
def _op(x, w, bias, target, counted, reference, desirable, advantages, old, rule_tensor, rule,
        params, reduction, ignore_index, chunk_size, memory_budget, want,
        validate):  # fmt: skip
    from ..functional.preference import _weights
    from ..kernels.chunked.sequences import run_sequences

    if validate:  # deferred from the traced call (no values there): see _validate.tensors
        check_class_indices(target, w.shape[0], ignore_index, 0, classes_of="weight")
    side = (reference, desirable, advantages, old)
    _, objective, finish, seq, plan, epi = _setup(
        x, w, counted, side, rule, params, rule_tensor, reduction, chunk_size, memory_budget
    )
    weights = _weights(seq.groups, reduction, x.device)
    want = tuple(want) if weights is not None else (False, False, False)
    logp, (dx, dw, db) = run_sequences(
        x, w, bias, target, counted.reshape(-1), seq, plan, epi, objective, weights, want
    )
    return finish(logp), logp, nonempty(dx, x), nonempty(dw, x), nonempty(db, x)


@_op.register_fake
def _op_fake(x, w, bias, target, counted, reference, desirable, advantages, old, rule_tensor,
             rule, params, reduction, ignore_index, chunk_size, memory_budget, want,
             validate):  # fmt: skip
    shape = (_groups(counted, rule),) if reduction == "none" else ()
    grads = fake_grads((x, w, bias), want if reduction != "none" else (False,) * 3)
    return (x.new_empty(shape), x.new_empty(counted.numel(), dtype=_F32), *grads)


@torch.library.custom_op(
    "losskit::linear_preference_backward", mutates_args=(),
    schema=f"({_ARGS}, Tensor grad_groups) -> (Tensor, Tensor, Tensor)",
)  # fmt: skip
def _backward_op(x, w, bias, target, counted, reference, desirable, advantages, old,
                 rule_tensor, rule, params, reduction, ignore_index, chunk_size, memory_budget,
                 want, validate, grad_groups):  # fmt: skip
    from ..kernels.chunked.sequences import run_sequences

    side = (reference, desirable, advantages, old)
    _, objective, _, seq, plan, epi = _setup(
        x, w, counted, side, rule, params, rule_tensor, reduction, chunk_size, memory_budget
    )
    _, (dx, dw, db) = run_sequences(
        x, w, bias, target, counted.reshape(-1), seq, plan, epi, objective,
        grad_groups.to(_F32), tuple(want),
    )  # fmt: skip
    return nonempty(dx, x), nonempty(dw, x), nonempty(db, x)


@_backward_op.register_fake
def _backward_fake(x, w, bias, target, counted, reference, desirable, advantages, old,
                   rule_tensor, rule, params, reduction, ignore_index, chunk_size,
                   memory_budget, want, validate, grad_groups):  # fmt: skip
    return fake_grads((x, w, bias), want)


# the op's tensor arguments are x ... rule_tensor; reduction is its 13th argument
register_chunked_autograd(_op, _backward_op, tensors=10, reduction=12, grads_at=2)


def linear_preference(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    counted: Tensor,
    *,
    rule,
    side: dict[str, Tensor],
    reduction: str,
    ignore_index: int,
    chunk_size: int | None,
    memory_budget: int | str,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(loss, logp)`` of ``rule`` on validated inputs through the op: ``x`` ``(S T, D)``,
    ``target`` ``(S T,)`` int64, ``counted`` ``(S, T)`` bool, ``side`` the rule's per-sequence
    inputs (keys of ``functional.preference.SIDE``); ``logp`` ``(S T,)`` float32, as the eager
    engine gives it. ``validate`` checks the token ids in the op's body, at run time."""
    from ..functional.preference import SIDE

    unknown = set(side) - set(SIDE)
    if unknown:
        raise TypeError(f"linear_preference: unknown side inputs {sorted(unknown)}")
    spec, params, tensor = encode(rule)
    grad = torch.is_grad_enabled()
    want = [grad and t is not None and t.requires_grad for t in (x, w, bias)]
    loss, logp, *_ = _op(
        x, w, bias, target, counted, *(side.get(k) for k in SIDE), tensor, spec, params,
        reduction, int(ignore_index), chunk_size, str(memory_budget), want, bool(validate),
    )  # fmt: skip
    return loss, logp
