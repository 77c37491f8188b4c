"""The properties about values: call, inputs unchanged, reductions, sum = mean x count,
module = function, deterministic, torch.compile (the autograd ones are in ``gradients``)."""

from __future__ import annotations

import copy
import inspect
import math
import types
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .culprits import RANDOM_CULPRITS, explain_graph, scan
from .report import PropertyResult
from .subject import Subject, clone

_CLASSIFICATION = ("cross_entropy", "focal_loss", "nll_loss")
_CLASSIFICATION_MODULES = ("CrossEntropyLoss", "FocalLoss", "NLLLoss")
#: losses whose 'none' holds one value per row (per sample): () for an unbatched input
_PER_ROW = (
    "cosine_embedding_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
)

#: losses whose 'none' holds one value per position, the vocabulary last (distillation)
_PER_POSITION = (
    "distillation_loss",
    "jensen_shannon",
    "kl_divergence",
    "linear_distillation_loss",
    "total_variation",
)

#: losses whose 'none' holds one value per pair of sequences (hidden states ``(2B, T, D)``) or
#: per sequence (``(S, T, D)``): the preference losses on a head
_PER_PAIR = ("linear_cpo_loss", "linear_dpo_loss", "linear_orpo_loss", "linear_simpo_loss")
_PER_SEQUENCE = ("linear_kto_loss",)


def _shape(shape: Sequence[int]) -> str:
    dims = tuple(shape)
    return f"({dims[0]},)" if len(dims) == 1 else str(dims)


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    same = (a == b) | (a.isnan() & b.isnan())
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    return float(diff.max())


def _close(a: Tensor, b: Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(
        torch.allclose(
            a.detach().double(), b.detach().double(), rtol=rtol, atol=atol, equal_nan=True
        )
    )


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The broadcast shape (``torch.broadcast_shapes`` would import sympy: a second or more)."""
    ndim = max(len(shape) for shape in shapes)
    out = []
    for dims in zip(*[(1,) * (ndim - len(shape)) + shape for shape in shapes], strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ValueError(f"the examples' shapes {shapes} do not broadcast (pass none_shape=)")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _none_shape(subject: Subject, args: Sequence, none_shape) -> tuple[int, ...]:
    if none_shape is not None:
        return tuple(none_shape)
    input, target = args[0], args[1] if len(args) > 1 else None
    if subject.function_name in _PER_ROW:
        return () if input.dim() == 1 else (input.shape[0],)
    if subject.function_name in _PER_POSITION:
        return tuple(input.shape[:-1])
    if subject.function_name in _PER_PAIR:
        return (input.shape[0] // 2,)
    if subject.function_name in _PER_SEQUENCE:
        return (input.shape[0],)
    if subject.function_name == "ctc_loss":  # log_probs (T, N, C) or unbatched (T, C)
        return () if input.dim() == 2 else (input.shape[1],)
    if isinstance(target, Tensor) and not target.is_floating_point():  # class indices
        return tuple(target.shape)
    classification = (
        subject.function_name in _CLASSIFICATION
        or type(subject.loss).__name__ in _CLASSIFICATION_MODULES
    )
    if classification:
        return () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    return _broadcast([tuple(a.shape) for a in args if isinstance(a, Tensor)])


def _count(subject: Subject, args: Sequence, shape: tuple[int, ...]) -> Tensor:
    """What 'mean' divides by, as torch's and losskit's losses count: the counted positions
    (not ``ignore_index``, within ``mask``), or their class weights' sum for a class-weighted
    loss with class-index targets."""
    counted = torch.ones(shape, dtype=torch.bool)
    target = args[1] if len(args) > 1 else None
    indices = isinstance(target, Tensor) and not target.is_floating_point()
    if indices:
        ignore = getattr(subject.loss, "ignore_index", None)
        if ignore is None and not subject.is_module:
            param = inspect.signature(subject.loss).parameters.get("ignore_index")
            ignore = param.default if param is not None else None
        if ignore is not None and tuple(target.shape) == shape:
            counted = counted & (target.cpu() != ignore)
    mask = subject.kwargs.get("mask")
    if isinstance(mask, Tensor):
        counted = counted & mask.cpu().expand(shape)
    weight = getattr(subject.loss, "weight", None) if subject.is_module else None
    weight = subject.kwargs.get("weight", weight)
    if indices and isinstance(weight, Tensor) and weight.dim() == 1 and weight.numel():
        w_y = weight.detach().cpu().double()[target.cpu().clamp(0, weight.numel() - 1)]
        return torch.where(counted, w_y, torch.zeros((), dtype=torch.float64)).sum()
    return counted.sum()


def prop_call(subject: Subject, args: Sequence) -> PropertyResult:
    out = subject.call(clone(args))
    if not isinstance(out, Tensor):
        return PropertyResult(
            "call",
            False,
            detail=f"returns {type(out).__name__}, expected a torch.Tensor; "
            + explain_graph(subject),
        )
    if out.dim() == 0:
        return PropertyResult("call", True, detail=f"returns a 0-dim tensor, {out.dtype}")
    shape = _shape(out.shape)
    if subject.call_reduction == "none":  # asked for: one loss per position
        return PropertyResult(
            "call", True, detail=f"returns shape {shape}, {out.dtype} (reduction='none')"
        )
    if out.numel() == 1:
        why = "as torch's losses do: drop keepdim=True, or .squeeze() the result"
    else:
        why = (
            "loss.backward() on it fails (grad can be implicitly created only for scalar "
            "outputs); reduce it, e.g. with .mean(), or take a reduction argument"
        )
    return PropertyResult(
        "call",
        False,
        detail=f"returns shape {shape}, but a loss's default call must return a 0-dim scalar: "
        + why,
    )


def prop_untouched(subject: Subject, args: Sequence) -> PropertyResult:
    copies = clone(args)
    subject.call(copies)
    worst, changed = 0.0, []
    for i, (a, b) in enumerate(zip(args, copies, strict=True)):
        if isinstance(a, Tensor) and not torch.equal(a, b):
            changed.append(["input", "target"][i] if i < 2 else f"arg{i}")
            worst = max(worst, _max_diff(a, b))
    if changed:
        return PropertyResult(
            "inputs unchanged", False, worst, f"the loss modified {', '.join(changed)} in place"
        )
    return PropertyResult("inputs unchanged", True, 0.0, "no argument modified in place")


def prop_reductions(subject: Subject, args: Sequence, none_shape) -> PropertyResult:
    name = "reductions"
    if not subject.takes_reduction:
        return PropertyResult(name, True, skipped=True, detail="the loss takes no reduction")
    want = _none_shape(subject, args, none_shape)
    got, bad = [], []
    for r, expected in (("mean", ()), ("sum", ()), ("none", want)):
        out = subject.call(clone(args), r)
        shape = tuple(out.shape) if isinstance(out, Tensor) else None
        got.append(f"{r} {_shape(shape) if shape is not None else type(out).__name__}")
        if shape != tuple(expected):
            what = "a 0-dim tensor" if expected == () else "one value per position"
            bad.append(
                f"reduction={r!r} returned "
                f"{_shape(shape) if shape is not None else type(out).__name__}, expected "
                f"{_shape(expected)} ({what})"
            )
    if bad:
        return PropertyResult(name, False, detail="; ".join(bad))
    return PropertyResult(name, True, detail=", ".join(got))


def prop_sum_mean(
    subject: Subject, args: Sequence, none_shape, count, atol: float, rtol: float
) -> PropertyResult:
    name = "sum = mean x count"
    if not subject.takes_reduction:
        return PropertyResult(name, True, skipped=True, detail="the loss takes no reduction")
    with torch.no_grad():
        s = subject.call(clone(args), "sum")
        m = subject.call(clone(args), "mean")
        none = subject.call(clone(args), "none")
    if not all(isinstance(t, Tensor) for t in (s, m, none)):
        return PropertyResult(name, False, detail="a reduction did not return a tensor")
    if s.dim() or m.dim():
        return PropertyResult(
            name, False, detail="'mean' and 'sum' must be 0-dim tensors (see reductions)"
        )
    shape = _none_shape(subject, args, none_shape)
    n = torch.as_tensor(count) if count is not None else _count(subject, args, shape)
    s64, m64, n64 = s.double().cpu(), m.double().cpu(), n.double()
    none_sum = none.double().sum().cpu()
    scale = max(float(s64.abs()), 1e-12)
    disc = max(float((s64 - m64 * n64).abs()), float((s64 - none_sum).abs())) / scale
    ok = _close(s64, m64 * n64, atol, rtol) and _close(s64, none_sum, atol, rtol)
    detail = (
        f"sum {float(s64):.6g}, mean {float(m64):.6g} x count {float(n64):g} = "
        f"{float(m64 * n64):.6g}, sum of 'none' {float(none_sum):.6g}"
    )
    if not ok:
        detail += (
            " (if 'mean' is a weighted mean or counts differently, pass count=)"
            if _close(s64, none_sum, atol, rtol)
            else ""
        )
    return PropertyResult(name, ok, disc, detail)


def _function_options(fn: Callable, module: nn.Module) -> dict:
    """The Module's settings, as keyword arguments of its functional twin."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    skip = {"size_average", "reduce", "mask", "normalizer"}
    return {
        p.name: getattr(module, p.name)
        for p in params
        if p.name not in skip and p.kind is not p.VAR_KEYWORD and hasattr(module, p.name)
    }


def _split_options(module_cls: type, kwargs: dict, n_inputs: int) -> tuple[dict, dict]:
    """Split a function's keyword arguments into the Module's constructor and forward ones;
    the forward's first ``n_inputs`` parameters are the inputs (``PoissonNLLLoss.forward``
    calls its input ``log_input``, also the name of an option)."""
    forward = list(inspect.signature(module_cls.forward).parameters)[1 + n_inputs :]
    init = inspect.signature(module_cls.__init__).parameters
    init_any = any(p.kind is p.VAR_KEYWORD for p in init.values())
    to_init = {k: v for k, v in kwargs.items() if k not in forward and (k in init or init_any)}
    return to_init, {k: v for k, v in kwargs.items() if k not in to_init}


def prop_twin(subject: Subject, args: Sequence, atol: float, rtol: float) -> PropertyResult:
    name = "module = function"
    if subject.twin is None:
        return PropertyResult(
            name, True, skipped=True, detail="no functional twin known (pass functional=)"
        )
    reductions = ["mean", "sum", "none"] if subject.takes_reduction else [None]
    forward_kwargs = subject.kwargs
    if subject.is_module:
        module_of = subject.module_with
        fn = subject.twin
    else:
        # the function's options configure the Module; what its forward takes goes there
        init_kwargs, forward_kwargs = _split_options(subject.twin, subject.kwargs, len(args))
        default = subject.twin(**init_kwargs)

        def module_of(r):
            m = copy.deepcopy(default)
            if r is not None:
                m.reduction = r
            return m

        fn = subject.loss
    worst, bad = 0.0, []
    for r in reductions:
        module = module_of(r)
        a = module(*clone(args), **forward_kwargs)
        b = fn(*clone(args), **{**_function_options(fn, module), **subject.kwargs})
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            bad.append(f"{r}: not a tensor")
            continue
        diff = _max_diff(a, b) if a.shape == b.shape else math.inf
        worst = max(worst, diff)
        if not _close(a, b, atol, rtol):
            bad.append(
                f"{r}: differ by {diff:.3g}"
                if a.shape == b.shape
                else f"{r}: shapes {_shape(a.shape)} and {_shape(b.shape)}"
            )
    pair = f"{type(module).__name__} vs {getattr(fn, '__name__', fn)}"
    if bad:
        return PropertyResult(name, False, worst, f"{pair}: " + "; ".join(bad))
    where = ", ".join(r for r in reductions if r) or "default"
    return PropertyResult(name, True, worst, f"{pair} ({where})")


def prop_deterministic(subject: Subject, args: Sequence) -> PropertyResult:
    name = "deterministic"
    with torch.no_grad():
        a = subject.call(clone(args))
        b = subject.call(clone(args))
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return PropertyResult(name, False, detail="the loss did not return tensors")
    if torch.equal(a, b) or (a.shape == b.shape and _max_diff(a, b) == 0.0):
        return PropertyResult(name, True, 0.0, "two calls on the same inputs agree bitwise")
    diff = _max_diff(a, b) if a.shape == b.shape else math.inf
    hits = scan(subject.source_functions(), RANDOM_CULPRITS)
    cause = (
        f"likely cause: random numbers drawn inside the loss [{', '.join(hits)}]"
        if hits
        else "the loss draws random numbers (torch.rand/randn, dropout) or runs a "
        "nondeterministic kernel"
    )
    return PropertyResult(
        name, False, diff, f"two calls on the same inputs differ by {diff:.3g}; {cause}"
    )


def prop_compile(
    subject: Subject, args: Sequence, compile, atol: float, rtol: float
) -> PropertyResult:
    name = "torch.compile"
    if compile is False or compile is None:
        return PropertyResult(name, True, skipped=True, detail="compile=False")
    backend = "inductor" if compile is True else str(compile)
    target = subject.module_with(None) if subject.is_module else subject.loss
    kwargs = subject.kwargs

    def run(*xs):
        return target(*xs, **kwargs)

    # a fresh code object: torch.compile caches per code object, and a shared one would reach
    # its recompile limit after a few checks and then silently run eager
    fresh = types.FunctionType(
        run.__code__.replace(), run.__globals__, run.__name__, run.__defaults__, run.__closure__
    )
    compiled = torch.compile(fresh, backend=backend, dynamic=False)
    with torch.no_grad():
        eager = run(*clone(args))
        got = compiled(*clone(args))
    if not (isinstance(eager, Tensor) and isinstance(got, Tensor)):
        return PropertyResult(name, False, detail="the loss did not return tensors")
    diff = _max_diff(eager, got) if eager.shape == got.shape else math.inf
    # compiled kernels may reorder floating-point sums: allow ten times the tolerance
    ok = _close(eager, got, 10 * atol, 10 * rtol)
    detail = f"backend {backend!r}: compiled and eager " + (
        "agree" if ok else f"differ by {diff:.3g}"
    )
    return PropertyResult(name, ok, diff, detail)
