"""The properties about gradients: the autograd graph reaches the input,
``torch.autograd.gradcheck`` passes in float64, and so does the gradient of the gradient
(``torch.autograd.gradgradcheck``), unless the loss declares itself once-differentiable."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .culprits import custom_functions, explain_double_backward, explain_graph
from .report import PropertyResult, whole_sentences
from .subject import Subject, clone

#: above this many input elements, gradcheck runs in fast mode (random projections)
FAST_MODE_ELEMENTS = 512
#: the same for gradgradcheck, whose slow mode takes a double backward per input element
FAST_MODE_ELEMENTS_SECOND = 32


def _declared_once_differentiable(message: str) -> bool:
    """torch's words for a second derivative declared absent (not wrong): a backward marked
    ``@once_differentiable``, or an op whose backward has no derivative in torch."""
    if "marked with @once_differentiable" in message:
        return True
    return message.startswith("derivative for ") and message.endswith("is not implemented")


def _as_float64(args: Sequence, grad_index: Sequence[int]) -> list:
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            a = a.detach().clone()
            if a.is_floating_point():
                a = a.double().requires_grad_(i in grad_index)
        out.append(a)
    return out


def _float64_loss(
    subject: Subject, args: Sequence, grad_index: Sequence[int]
) -> tuple[Callable, tuple[Tensor, ...], str | None]:
    """The loss in float64 (``'sum'`` where it takes a reduction) as a function of the inputs
    to differentiate, those inputs, and the reduction."""
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

    return f, tuple(base[i] for i in leaves), reduction


def _directions(xs: Sequence[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device) for x in xs]


def _short_tensors():
    """torch prints the Jacobians in a gradcheck message summarized, each on one line."""
    options = getattr(torch._tensor_str, "printoptions", None)
    if options is None:
        return contextlib.nullcontext()
    return options(threshold=12, edgeitems=2, linewidth=100_000, precision=4)


def _how(reduction: str | None, fast: bool) -> str:
    parts = [f"reduction={reduction!r}"] if reduction else []
    parts += ["fast mode"] if fast else []
    return f" ({', '.join(parts)})" if parts else ""


def _failure(tool: str, exc: Exception) -> str:
    text = whole_sentences(str(exc)) or type(exc).__name__
    return f"torch.autograd.{tool} failed: {text}"


def prop_graph(subject: Subject, args: Sequence, grad_index: Sequence[int]) -> PropertyResult:
    name = "autograd graph"
    inputs = clone(args, grad_index)
    try:
        out = subject.call(inputs)
    except Exception as exc:  # e.g. .numpy() on a tensor that requires grad
        msg = whole_sentences(str(exc))
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
    f, xs, reduction = _float64_loss(subject, args, grad_index)
    # a discrepancy to report: one random directional derivative against central differences
    vs = _directions(xs, seed)
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
    fast = sum(x.numel() for x in xs) > FAST_MODE_ELEMENTS
    try:
        with _short_tensors():
            torch.autograd.gradcheck(
                f, xs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, fast_mode=fast
            )
    except Exception as exc:
        return PropertyResult(name, False, disc, _failure("gradcheck", exc))
    return PropertyResult(
        name, True, disc, "analytic and numerical Jacobians agree" + _how(reduction, fast)
    )


def _first_gradient(f: Callable, xs: Sequence[Tensor]) -> list[Tensor]:
    """The gradient of ``f(xs).sum()``, zeros where an input is unused (no graph kept)."""
    xs = [x.detach().requires_grad_(True) for x in xs]
    out = f(*xs)
    if not (isinstance(out, Tensor) and out.requires_grad):
        return [torch.zeros_like(x) for x in xs]
    grads = torch.autograd.grad(out.sum(), xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, xs, strict=True)]


def prop_double_backward(
    subject: Subject, args: Sequence, grad_index: Sequence[int], seed: int
) -> PropertyResult:
    """The gradient of the gradient, in float64: a Hessian-vector product through autograd
    (``create_graph=True``) against central differences of the first gradient, and
    ``torch.autograd.gradgradcheck``; skipped when the loss declares it has none."""
    name = "double backward (float64)"
    f, xs, reduction = _float64_loss(subject, args, grad_index)
    out = f(*xs)
    if not xs or not (isinstance(out, Tensor) and out.requires_grad):
        return PropertyResult(
            name,
            True,
            skipped=True,
            detail="not run: the loss has no gradient (see autograd graph)",
        )
    vs = _directions(xs, seed)
    # H v through autograd: backward of <grad, v>. The output's weight requires grad, as in
    # gradgradcheck, so a once-differentiable backward leaves its error node in the graph;
    # backward() without inputs runs every node, and so reaches that error
    weight = torch.ones_like(out, requires_grad=True)
    grads = torch.autograd.grad(out, xs, weight, create_graph=True, allow_unused=True)
    inner = sum((g * v).sum() for g, v in zip(grads, vs, strict=True) if g is not None)
    try:
        if isinstance(inner, Tensor) and inner.requires_grad:
            torch.autograd.backward(inner)
    except RuntimeError as exc:
        text = whole_sentences(str(exc))
        if _declared_once_differentiable(text):
            return PropertyResult(name, True, skipped=True, detail=f"once-differentiable: {text}")
        raise
    # a copy: a zero second derivative may come as torch's efficient zero tensor, whose
    # arithmetic would import torch._dynamo (seconds)
    hvp = [torch.zeros_like(x) if x.grad is None else x.grad.detach().clone() for x in xs]
    h = 1e-6
    hi = _first_gradient(f, [x + h * v for x, v in zip(xs, vs, strict=True)])
    lo = _first_gradient(f, [x - h * v for x, v in zip(xs, vs, strict=True)])
    numeric = [(a - b) / (2 * h) for a, b in zip(hi, lo, strict=True)]
    scale = max([1.0] + [float(n.abs().max()) for n in numeric if n.numel()])
    worst = [float((a - n).abs().max()) for a, n in zip(hvp, numeric, strict=True) if n.numel()]
    disc = max([0.0] + worst) / scale
    fast = sum(x.numel() for x in xs) > FAST_MODE_ELEMENTS_SECOND
    try:
        with _short_tensors():
            torch.autograd.gradgradcheck(
                f, xs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, fast_mode=fast
            )
    except Exception as exc:
        why = explain_double_backward(custom_functions(out))
        detail = _failure("gradgradcheck", exc) + (f"; {why}" if why else "")
        return PropertyResult(name, False, disc, detail)
    return PropertyResult(
        name,
        True,
        disc,
        "the Hessian-vector product matches central differences of the gradient"
        + _how(reduction, fast),
    )
