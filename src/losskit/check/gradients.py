"""The properties about gradients: the autograd graph reaches the input, and
``torch.autograd.gradcheck`` passes in float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .culprits import explain_graph
from .report import PropertyResult
from .subject import Subject, clone


def _as_float64(args: Sequence, grad_index: Sequence[int]) -> list:
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            a = a.detach().clone()
            if a.is_floating_point():
                a = a.double().requires_grad_(i in grad_index)
        out.append(a)
    return out


def prop_graph(subject: Subject, args: Sequence, grad_index: Sequence[int]) -> PropertyResult:
    name = "autograd graph"
    inputs = clone(args, grad_index)
    try:
        out = subject.call(inputs)
    except Exception as exc:  # e.g. .numpy() on a tensor that requires grad
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return PropertyResult(
            name,
            False,
            detail=f"with an input that requires grad, the loss "
            f"raised {type(exc).__name__}: {msg}; {explain_graph(subject)}",
        )
    if not isinstance(out, Tensor):
        return PropertyResult(
            name,
            False,
            detail=f"the result is a {type(out).__name__}, not a tensor; {explain_graph(subject)}",
        )
    if out.grad_fn is None or not out.requires_grad:
        return PropertyResult(
            name,
            False,
            detail="the result has no autograd graph (grad_fn is "
            f"None), so backward() cannot reach the input; "
            f"{explain_graph(subject)}",
        )
    leaves = [
        inputs[i] for i in grad_index if isinstance(inputs[i], Tensor) and inputs[i].requires_grad
    ]
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    for i, g in zip(grad_index, grads, strict=False):
        label = ["input", "target"][i] if i < 2 else f"arg{i}"
        if g is None:
            return PropertyResult(
                name,
                False,
                detail=f"the gradient of the {label} is None: the "
                f"result does not depend on it through autograd; "
                f"{explain_graph(subject)}",
            )
        if not bool(g.ne(0).any()):
            return PropertyResult(
                name,
                False,
                0.0,
                detail=f"the gradient of the {label} is zero everywhere; {explain_graph(subject)}",
            )
    norm = max(float(g.double().norm()) for g in grads)
    return PropertyResult(
        name, True, detail=f"grad_fn {type(out.grad_fn).__name__}; input gradient norm {norm:.3g}"
    )


def prop_gradcheck(
    subject: Subject, args: Sequence, grad_index: Sequence[int], seed: int
) -> PropertyResult:
    name = "gradcheck (float64)"
    reduction = "sum" if subject.takes_reduction else None
    base = _as_float64(args, grad_index)
    leaves = [i for i in grad_index if isinstance(base[i], Tensor) and base[i].requires_grad]
    module = subject.module_with(reduction, torch.float64) if subject.is_module else None

    def f(*xs):
        full = list(base)
        for i, x in zip(leaves, xs, strict=True):
            full[i] = x
        if module is not None:
            return module(*full, **subject.kwargs)
        return subject.call(full, reduction)

    xs = tuple(base[i] for i in leaves)
    # a discrepancy to report: one random directional derivative against central differences
    gen = torch.Generator().manual_seed(seed + 1)
    vs = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device) for x in xs]
    out = f(*xs)
    if isinstance(out, Tensor) and out.requires_grad:
        grads = torch.autograd.grad(out.sum(), xs, allow_unused=True)
        analytic = sum(
            float((g * v).sum()) for g, v in zip(grads, vs, strict=True) if g is not None
        )
    else:
        analytic = 0.0
    h = 1e-6
    with torch.no_grad():
        hi = f(*[x + h * v for x, v in zip(xs, vs, strict=True)])
        lo = f(*[x - h * v for x, v in zip(xs, vs, strict=True)])
        numeric = float(
            (torch.as_tensor(hi).double() - torch.as_tensor(lo).double()).sum() / (2 * h)
        )
    disc = abs(analytic - numeric) / max(1.0, abs(numeric))
    try:
        torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PropertyResult(name, False, disc, f"torch.autograd.gradcheck failed: {first}")
    return PropertyResult(
        name,
        True,
        disc,
        f"analytic and numerical Jacobians agree (reduction={reduction!r})"
        if reduction
        else "analytic and numerical Jacobians agree",
    )
