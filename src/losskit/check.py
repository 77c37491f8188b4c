"""Verify a loss: ``losskit.check(loss, input, target)`` or ``python -m losskit check mod:attr``.

:func:`check` runs any loss (a function or a Module, losskit's or yours) on example inputs and
tests the properties every loss should have, each with a measured discrepancy:

================== ===================================================================
call               it runs and returns a tensor
inputs unchanged   it does not modify its inputs in place
reductions         ``'mean'``/``'sum'`` give a 0-dim tensor, ``'none'`` one value per position
sum = mean x count ``'sum'`` equals ``'mean'`` times the count, and the sum of ``'none'``
autograd graph     the result keeps its graph and the input gets a nonzero gradient; when not,
                   the culprit is named (``.item()``/``float()``, a NumPy round trip,
                   ``.detach()``/``.data``, ``torch.no_grad``), with its line
gradcheck (f64)    ``torch.autograd.gradcheck`` in float64 at the example point
module = function  a Module and its functional twin agree (losskit's, or ``f.Module`` of a
                   :func:`losskit.loss_function`), in every reduction
deterministic      two calls on the same inputs agree bitwise (random noise is named)
torch.compile      the compiled loss gives the same value (``compile=False`` skips it)
================== ===================================================================

Properties about ``reduction`` run when the loss takes one: a function with a ``reduction``
parameter, or a Module with a ``reduction`` attribute (set on a copy).

The command line generates seeded random examples from ``--shape``::

    python -m losskit check losskit.nn:MSELoss --shape 8,5
    python -m losskit check my_losses.py:My_loss --no-compile
    python -m losskit check losskit.functional:cross_entropy --shape 8,5 --target index

``LOSS`` is ``module.path:attr`` or ``path/to/file.py:attr``; a class is instantiated with no
arguments. With ``--target float`` (the default) the input and the target both have the shape
(input uniform in [0.1, 0.9): valid as logits and as probabilities; target uniform in [0, 1));
with ``--target index`` the target holds class indices in [0, C) over the shape without its
dimension 1 (``C``). Give ``--shape`` twice for different input and target shapes. The exit
status is 0 when every property passes, 1 when one fails, 2 for a usage or import error.

``losskit.check`` is the function; import the rest from the module:
``from losskit.check import CheckReport, make_examples, main``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import importlib.util
import inspect
import math
import os
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["CheckReport", "PropertyResult", "check", "main", "make_examples"]


@dataclass
class PropertyResult:
    """One verified property: ``discrepancy`` is NaN where nothing is measured."""

    name: str
    passed: bool
    discrepancy: float = math.nan
    detail: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.passed else "FAIL")


@dataclass
class CheckReport:
    """What :func:`check` found: one :class:`PropertyResult` per property, in order."""

    loss: str
    inputs: str
    results: list[PropertyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no property failed (skipped ones do not count)."""
        return all(r.passed or r.skipped for r in self.results)

    @property
    def failed(self) -> list[PropertyResult]:
        return [r for r in self.results if not (r.passed or r.skipped)]

    def __getitem__(self, name: str) -> PropertyResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no property {name!r}; properties: {[r.name for r in self.results]}")

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.results] + [8])
        lines = [
            f"losskit.check: {self.loss} on {self.inputs}",
            f"  {'property':<{width}}  result  discrepancy  detail",
        ]
        for r in self.results:
            disc = "-" if math.isnan(r.discrepancy) else f"{r.discrepancy:.2e}"
            detail = textwrap.wrap(r.detail, 100) or [""]
            lines.append(f"  {r.name:<{width}}  {r.status:<6}  {disc:<11}  {detail[0]}")
            pad = " " * (width + 23)
            lines += [f"  {pad}{more}" for more in detail[1:]]
        n_pass = sum(r.passed and not r.skipped for r in self.results)
        n_skip = sum(r.skipped for r in self.results)
        verdict = "OK" if self.ok else "FAILED"
        failed = f", {len(self.failed)} failed ({', '.join(r.name for r in self.failed)})"
        lines.append(
            f"{verdict}: {n_pass} passed{failed if self.failed else ''}"
            f"{f', {n_skip} skipped' if n_skip else ''}"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the loss under test
# --------------------------------------------------------------------------------------------

_CLASSIFICATION = ("cross_entropy", "focal_loss", "nll_loss")
_CLASSIFICATION_MODULES = ("CrossEntropyLoss", "FocalLoss", "NLLLoss")


def _module_twins() -> dict[type, Callable]:
    """losskit's Modules and the function each ``forward`` calls."""
    from . import functional as LF
    from . import nn as lnn

    return {
        lnn.MSELoss: LF.mse_loss,
        lnn.L1Loss: LF.l1_loss,
        lnn.SmoothL1Loss: LF.smooth_l1_loss,
        lnn.HuberLoss: LF.huber_loss,
        lnn.BCELoss: LF.binary_cross_entropy,
        lnn.BCEWithLogitsLoss: LF.binary_cross_entropy_with_logits,
        lnn.CrossEntropyLoss: LF.cross_entropy,
        lnn.NLLLoss: LF.nll_loss,
        lnn.KLDivLoss: LF.kl_div,
        lnn.SigmoidFocalLoss: LF.sigmoid_focal_loss,
        lnn.FocalLoss: LF.focal_loss,
    }


class _Subject:
    """Calls the loss under test with a chosen reduction, dtype and extra keyword arguments."""

    def __init__(self, loss: Callable, kwargs: dict, functional: Callable | None) -> None:
        if isinstance(loss, type) and issubclass(loss, nn.Module):
            loss = loss()
        if not callable(loss):
            raise TypeError(f"loss must be a function or an nn.Module, got {type(loss).__name__}")
        self.loss = loss
        self.kwargs = kwargs
        self.is_module = isinstance(loss, nn.Module)
        if self.is_module:
            reduction = getattr(loss, "reduction", None)
            self.default_reduction = reduction if isinstance(reduction, str) else None
        else:
            self.default_reduction = None
            try:
                param = inspect.signature(loss).parameters.get("reduction")
            except (TypeError, ValueError):
                param = None
            if param is not None:
                has_default = param.default is not param.empty
                self.default_reduction = param.default if has_default else "mean"
        self.takes_reduction = self.default_reduction is not None
        self.twin = self._find_twin(functional)

    @property
    def name(self) -> str:
        if self.is_module:
            return repr(self.loss).replace("\n", " ")
        module = getattr(self.loss, "__module__", None) or ""
        qual = getattr(self.loss, "__qualname__", type(self.loss).__name__)
        return f"{module}.{qual}" if module else qual

    @property
    def function_name(self) -> str:
        fn = self.loss if not self.is_module else self.twin
        return getattr(fn, "__name__", "")

    def _find_twin(self, functional: Callable | None) -> Callable | type | None:
        """The functional twin of a Module, or the Module class twin of a function."""
        if self.is_module:
            if functional is not None:
                return functional
            own = getattr(type(self.loss), "functional", None)
            if callable(own):
                return own
            return _module_twins().get(type(self.loss))
        module_cls = getattr(self.loss, "Module", None)
        if isinstance(module_cls, type) and issubclass(module_cls, nn.Module):
            return module_cls
        for cls, fn in _module_twins().items():
            if fn is self.loss:
                return cls
        return None

    def module_with(self, reduction: str | None, dtype: torch.dtype | None = None) -> nn.Module:
        m = copy.deepcopy(self.loss)
        if reduction is not None:
            m.reduction = reduction
        if dtype is not None:
            m = m.to(dtype)
        return m

    def call(self, args: Sequence, reduction: str | None = None, dtype: torch.dtype | None = None):
        if self.is_module:
            if reduction is None and dtype is None:
                return self.loss(*args, **self.kwargs)
            return self.module_with(reduction, dtype)(*args, **self.kwargs)
        if reduction is None:
            return self.loss(*args, **self.kwargs)
        return self.loss(*args, reduction=reduction, **self.kwargs)

    def source_functions(self) -> list[Callable]:
        """The code to scan for culprits: forward, elementwise, the decorated function."""
        found: list[Callable] = []
        if self.is_module:
            cls = type(self.loss)
            found.append(cls.forward)
            elementwise = getattr(cls, "elementwise", None)
            if elementwise is not None:
                found.append(elementwise)
        else:
            found.append(self.loss)
        for fn in list(found) + ([self.twin] if callable(self.twin) else []):
            inner = getattr(fn, "elementwise", None)
            if callable(inner):
                found.append(inner)
        return found


# --------------------------------------------------------------------------------------------
# naming the culprit: a scan of the loss's source (AST, so comments and docstrings are ignored)
# --------------------------------------------------------------------------------------------

_GRAPH_CULPRITS = {
    "item": ".item() turns the loss into a Python number that autograd cannot follow",
    "tolist": ".tolist() turns tensors into Python numbers that autograd cannot follow",
    "float": "float() turns the loss into a Python number that autograd cannot follow",
    "numpy": "a NumPy round trip (.numpy()) leaves autograd",
    "np": "NumPy math (np.*) runs outside autograd",
    "detach": ".detach() cuts the autograd graph",
    "data": ".data reads the tensor outside autograd",
    "no_grad": "torch.no_grad() turns graph recording off",
    "requires_grad_": "requires_grad_() changes what autograd tracks",
}
_RANDOM_CULPRITS = (
    "rand",
    "randn",
    "randint",
    "rand_like",
    "randn_like",
    "randint_like",
    "normal",
    "normal_",
    "uniform_",
    "bernoulli",
    "bernoulli_",
    "dropout",
    "multinomial",
    "randperm",
    "random",
    "shuffle",
)


def _scan(functions: list[Callable], names: Sequence[str]) -> list[str]:
    """``"<what> (file.py:line)"`` for each use of ``names`` in the functions' source."""
    hits: list[str] = []
    for fn in functions:
        fn = inspect.unwrap(getattr(fn, "__func__", fn))
        try:
            lines, start = inspect.getsourcelines(fn)
            where = os.path.basename(inspect.getsourcefile(fn) or "?")
        except (OSError, TypeError):
            continue
        try:
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in names:
                    key = func.attr
                elif isinstance(func, ast.Name) and func.id in names:
                    key = func.id
            elif isinstance(node, ast.Attribute) and node.attr == "data" and "data" in names:
                key = "data"
            elif isinstance(node, ast.Name) and node.id == "np" and "np" in names:
                key = "np"
            if key is not None:
                hit = f"{key} ({where}:{start + node.lineno - 1})"
                if hit not in hits:
                    hits.append(hit)
    return hits


def _explain_graph(subject: _Subject) -> str:
    hits = _scan(subject.source_functions(), tuple(_GRAPH_CULPRITS))
    if not hits:
        return (
            "something in the loss leaves autograd: .item()/float() re-wrapped in "
            "torch.tensor(), a NumPy round trip, or .detach()"
        )
    reasons = []
    for hit in hits:
        key = hit.split(" ", 1)[0]
        reasons.append(f"{_GRAPH_CULPRITS[key]} [{hit.split(' ', 1)[1].strip('()')}]")
    return "likely cause: " + "; ".join(reasons)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _describe(args: Sequence) -> str:
    names = ["input", "target"] + [f"arg{i}" for i in range(2, len(args))]
    parts = []
    for name, a in zip(names, args, strict=False):
        if isinstance(a, Tensor):
            parts.append(f"{name} {tuple(a.shape)} {str(a.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{name} {type(a).__name__}")
    return ", ".join(parts)


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


def _as_float64(args: Sequence, grad_index: Sequence[int]) -> list:
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            a = a.detach().clone()
            if a.is_floating_point():
                a = a.double().requires_grad_(i in grad_index)
        out.append(a)
    return out


def _clone(args: Sequence, grad_index: Sequence[int] = ()) -> list:
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            a = a.detach().clone()
            if i in grad_index and a.is_floating_point():
                a.requires_grad_(True)
        out.append(a)
    return out


def _none_shape(subject: _Subject, args: Sequence, none_shape) -> tuple[int, ...]:
    if none_shape is not None:
        return tuple(none_shape)
    input, target = args[0], args[1] if len(args) > 1 else None
    if isinstance(target, Tensor) and not target.is_floating_point():  # class indices
        return tuple(target.shape)
    classification = (
        subject.function_name in _CLASSIFICATION
        or type(subject.loss).__name__ in _CLASSIFICATION_MODULES
    )
    if classification:
        return () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    return tuple(torch.broadcast_shapes(*[a.shape for a in args if isinstance(a, Tensor)]))


def _count(subject: _Subject, args: Sequence, shape: tuple[int, ...]) -> Tensor:
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


@contextlib.contextmanager
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _guard(name: str, fn: Callable[[], PropertyResult]) -> PropertyResult:
    try:
        return fn()
    except Exception as exc:  # a property that raises fails, and says why
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return PropertyResult(name, False, detail=f"raised {type(exc).__name__}: {msg}")


# --------------------------------------------------------------------------------------------
# the properties
# --------------------------------------------------------------------------------------------


def _prop_call(subject: _Subject, args: Sequence) -> PropertyResult:
    out = subject.call(_clone(args))
    if not isinstance(out, Tensor):
        return PropertyResult(
            "call",
            False,
            detail=f"returns {type(out).__name__}, expected a torch.Tensor; "
            + _explain_graph(subject),
        )
    what = "a 0-dim tensor" if out.dim() == 0 else f"shape {_shape(out.shape)}"
    return PropertyResult("call", True, detail=f"returns {what}, {out.dtype}")


def _prop_untouched(subject: _Subject, args: Sequence) -> PropertyResult:
    copies = _clone(args)
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


def _prop_reductions(subject: _Subject, args: Sequence, none_shape) -> PropertyResult:
    name = "reductions"
    if not subject.takes_reduction:
        return PropertyResult(name, True, skipped=True, detail="the loss takes no reduction")
    want = _none_shape(subject, args, none_shape)
    got, bad = [], []
    for r, expected in (("mean", ()), ("sum", ()), ("none", want)):
        out = subject.call(_clone(args), r)
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


def _prop_sum_mean(
    subject: _Subject, args: Sequence, none_shape, count, atol: float, rtol: float
) -> PropertyResult:
    name = "sum = mean x count"
    if not subject.takes_reduction:
        return PropertyResult(name, True, skipped=True, detail="the loss takes no reduction")
    with torch.no_grad():
        s = subject.call(_clone(args), "sum")
        m = subject.call(_clone(args), "mean")
        none = subject.call(_clone(args), "none")
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


def _prop_graph(subject: _Subject, args: Sequence, grad_index: Sequence[int]) -> PropertyResult:
    name = "autograd graph"
    inputs = _clone(args, grad_index)
    try:
        out = subject.call(inputs)
    except Exception as exc:  # e.g. .numpy() on a tensor that requires grad
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return PropertyResult(
            name,
            False,
            detail=f"with an input that requires grad, the loss "
            f"raised {type(exc).__name__}: {msg}; {_explain_graph(subject)}",
        )
    if not isinstance(out, Tensor):
        return PropertyResult(
            name,
            False,
            detail=f"the result is a {type(out).__name__}, not a tensor; {_explain_graph(subject)}",
        )
    if out.grad_fn is None or not out.requires_grad:
        return PropertyResult(
            name,
            False,
            detail="the result has no autograd graph (grad_fn is "
            f"None), so backward() cannot reach the input; "
            f"{_explain_graph(subject)}",
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
                f"{_explain_graph(subject)}",
            )
        if not bool(g.ne(0).any()):
            return PropertyResult(
                name,
                False,
                0.0,
                detail=f"the gradient of the {label} is zero everywhere; {_explain_graph(subject)}",
            )
    norm = max(float(g.double().norm()) for g in grads)
    return PropertyResult(
        name, True, detail=f"grad_fn {type(out.grad_fn).__name__}; input gradient norm {norm:.3g}"
    )


def _prop_gradcheck(
    subject: _Subject, args: Sequence, grad_index: Sequence[int], seed: int
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


def _function_options(fn: Callable, module: nn.Module) -> dict:
    """The Module's settings, as keyword arguments of its functional twin."""
    params = list(inspect.signature(fn).parameters.values())[2:]
    skip = {"size_average", "reduce", "mask", "normalizer"}
    return {
        p.name: getattr(module, p.name)
        for p in params
        if p.name not in skip and p.kind is not p.VAR_KEYWORD and hasattr(module, p.name)
    }


def _split_options(module_cls: type, kwargs: dict) -> tuple[dict, dict]:
    """Split a function's keyword arguments into the Module's constructor and forward ones."""
    forward = inspect.signature(module_cls.forward).parameters
    init = inspect.signature(module_cls.__init__).parameters
    init_any = any(p.kind is p.VAR_KEYWORD for p in init.values())
    to_init = {k: v for k, v in kwargs.items() if k not in forward and (k in init or init_any)}
    return to_init, {k: v for k, v in kwargs.items() if k not in to_init}


def _prop_twin(subject: _Subject, args: Sequence, atol: float, rtol: float) -> PropertyResult:
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
        init_kwargs, forward_kwargs = _split_options(subject.twin, subject.kwargs)
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
        a = module(*_clone(args), **forward_kwargs)
        b = fn(*_clone(args), **{**_function_options(fn, module), **subject.kwargs})
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


def _prop_deterministic(subject: _Subject, args: Sequence) -> PropertyResult:
    name = "deterministic"
    with torch.no_grad():
        a = subject.call(_clone(args))
        b = subject.call(_clone(args))
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return PropertyResult(name, False, detail="the loss did not return tensors")
    if torch.equal(a, b) or (a.shape == b.shape and _max_diff(a, b) == 0.0):
        return PropertyResult(name, True, 0.0, "two calls on the same inputs agree bitwise")
    diff = _max_diff(a, b) if a.shape == b.shape else math.inf
    hits = _scan(subject.source_functions(), _RANDOM_CULPRITS)
    cause = (
        f"likely cause: random numbers drawn inside the loss [{', '.join(hits)}]"
        if hits
        else "the loss draws random numbers (torch.rand/randn, dropout) or runs a "
        "nondeterministic kernel"
    )
    return PropertyResult(
        name, False, diff, f"two calls on the same inputs differ by {diff:.3g}; {cause}"
    )


def _prop_compile(
    subject: _Subject, args: Sequence, compile, atol: float, rtol: float
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
        eager = run(*_clone(args))
        got = compiled(*_clone(args))
    if not (isinstance(eager, Tensor) and isinstance(got, Tensor)):
        return PropertyResult(name, False, detail="the loss did not return tensors")
    diff = _max_diff(eager, got) if eager.shape == got.shape else math.inf
    # compiled kernels may reorder floating-point sums: allow ten times the tolerance
    ok = _close(eager, got, 10 * atol, 10 * rtol)
    detail = f"backend {backend!r}: compiled and eager " + (
        "agree" if ok else f"differ by {diff:.3g}"
    )
    return PropertyResult(name, ok, diff, detail)


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def make_examples(
    shape: Sequence[int] | Sequence[Sequence[int]] = (4, 3),
    *,
    target: str = "float",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Seeded random ``(input, target)`` examples, as the command line makes them.

    Args:
        shape: the shape of both tensors, or ``(input_shape, target_shape)``.
        target: ``'float'`` (uniform in [0, 1)) or ``'index'`` (class indices in [0, C), with
            ``C`` the input's dimension 1, or dimension 0 for a 1-dim input; the target shape
            defaults to the input's without that dimension).
        seed: the generator's seed.
        dtype: the floating dtype. Default float32.

    Returns:
        ``input`` uniform in [0.1, 0.9) (valid as logits and as probabilities) and ``target``.

    Example:
        >>> from losskit.check import make_examples
        >>> x, y = make_examples((8, 5), target="index")
        >>> tuple(x.shape), tuple(y.shape), y.dtype
        ((8, 5), (8,), torch.int64)
    """
    if len(shape) and not isinstance(shape[0], int):
        input_shape, target_shape = tuple(shape[0]), tuple(shape[1])
    else:
        input_shape, target_shape = tuple(shape), None
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.8 * torch.rand(input_shape, generator=gen, dtype=dtype)
    if target == "float":
        y = torch.rand(target_shape or input_shape, generator=gen, dtype=dtype)
    elif target == "index":
        class_dim = 0 if len(input_shape) == 1 else 1
        classes = input_shape[class_dim]
        if target_shape is None:
            target_shape = input_shape[:class_dim] + input_shape[class_dim + 1 :]
        y = torch.randint(0, classes, target_shape, generator=gen)
    else:
        raise ValueError(f"target must be 'float' or 'index', got {target!r}")
    return x, y


def check(
    loss: Callable | nn.Module | type,
    *example_inputs: Tensor,
    loss_kwargs: dict | None = None,
    functional: Callable | None = None,
    compile: bool | str = True,
    count: int | Tensor | None = None,
    none_shape: Sequence[int] | None = None,
    grad_inputs: Sequence[int] = (0,),
    seed: int = 0,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    quiet: bool = False,
) -> CheckReport:
    """Verify that ``loss`` behaves like a loss should, property by property.

    Args:
        loss: a loss function, a loss Module, or a Module class (instantiated with no arguments).
        *example_inputs: the arguments to call it with, usually ``(input, target)``. Default:
            :func:`make_examples` with shape ``(4, 3)``.
        loss_kwargs: keyword-only; extra keyword arguments for every call (e.g. ``mask``).
        functional: the functional twin of a Module, to compare with (found automatically for
            losskit's Modules and for :func:`losskit.loss_function` losses).
        compile: ``True`` (the default ``'inductor'`` backend), a backend name (``'aot_eager'``
            is quick), or ``False`` to skip the ``torch.compile`` property.
        count: the number ``'mean'`` divides by, when it is not the number of positions (a
            weighted mean). Default: positions counted by the target (``ignore_index``) and
            ``loss_kwargs['mask']``.
        none_shape: the expected shape of the ``'none'`` result. Default: the target's shape
            for index targets, the positions' shape for losskit's classification losses, else
            the broadcast shape of the examples.
        grad_inputs: the indices of the examples to differentiate. Default ``(0,)``, the input.
        seed: seeds the examples and the gradcheck direction.
        atol, rtol: tolerances of the equalities (``torch.compile`` gets ten times these).
        quiet: do not print the report.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when no property failed, ``report[name]``
        is one property's :class:`PropertyResult`, and ``str(report)`` is a table.

    Example:
        >>> import torch, losskit
        >>> report = losskit.check(losskit.MSELoss(), compile=False, quiet=True)
        >>> report.ok, report["sum = mean x count"].passed
        (True, True)
    """
    subject = _Subject(loss, dict(loss_kwargs or {}), functional)
    args = list(example_inputs) if example_inputs else list(make_examples(seed=seed))
    grad_inputs = tuple(grad_inputs)
    report = CheckReport(subject.name, _describe(args))
    with _quiet_warnings():
        first = _guard("call", lambda: _prop_call(subject, args))
        report.results.append(first)
        properties: list[tuple[str, Callable[[], PropertyResult]]] = [
            ("inputs unchanged", lambda: _prop_untouched(subject, args)),
            ("reductions", lambda: _prop_reductions(subject, args, none_shape)),
            (
                "sum = mean x count",
                lambda: _prop_sum_mean(subject, args, none_shape, count, atol, rtol),
            ),
            ("autograd graph", lambda: _prop_graph(subject, args, grad_inputs)),
            ("gradcheck (float64)", lambda: _prop_gradcheck(subject, args, grad_inputs, seed)),
            ("module = function", lambda: _prop_twin(subject, args, atol, rtol)),
            ("deterministic", lambda: _prop_deterministic(subject, args)),
            ("torch.compile", lambda: _prop_compile(subject, args, compile, atol, rtol)),
        ]
        for name, run in properties:
            if not first.passed and first.detail.startswith("raised"):
                report.results.append(
                    PropertyResult(name, True, skipped=True, detail="not run: the call raised")
                )
            else:
                report.results.append(_guard(name, run))
    if not quiet:
        print(report)
    return report


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _load(spec: str):
    if ":" not in spec:
        raise ValueError(f"expected module.path:attr or file.py:attr, got {spec!r}")
    where, attr = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.exists(path):
            raise ValueError(f"no such file: {where}")
        name = os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules:  # never shadow an imported module (a file named torch.py)
            name = f"losskit_check_{name}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(where)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 4,3, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 4,3, got {text!r}")
    return dims


def main(argv: list[str] | None = None) -> int:
    """``losskit check LOSS [--shape 4,3] [--target float|index] [--no-compile]``."""
    parser = argparse.ArgumentParser(
        prog="losskit check",
        description="Verify a loss function or Module on seeded random examples: reductions, "
        "sum = mean x count, autograd graph, gradcheck, Module = function, "
        "determinism, torch.compile. Exit status 1 when a property fails.",
    )
    parser.add_argument(
        "loss",
        help="module.path:attr or path/to/file.py:attr (a class is instantiated with no arguments)",
    )
    parser.add_argument(
        "--shape",
        type=_parse_shape,
        action="append",
        help="example shape, e.g. 4,3 (default); give twice for separate input and target shapes",
    )
    parser.add_argument(
        "--target",
        choices=("float", "index"),
        default="float",
        help="float targets in [0, 1) of the input's shape (default), or class "
        "indices in [0, C) over the shape without dimension 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples (default 0)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default inductor; aot_eager is quick)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only failures")
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        loss = _load(ns.loss)
    except Exception as exc:
        print(
            f"losskit check: cannot load {ns.loss!r}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 2
    shapes = ns.shape or [(4, 3)]
    if len(shapes) > 2:
        print("losskit check: give --shape once, or twice (input, target)", file=sys.stderr)
        return 2
    shape = shapes[0] if len(shapes) == 1 else (shapes[0], shapes[1])
    examples = make_examples(shape, target=ns.target, seed=ns.seed)
    if isinstance(loss, type):
        try:
            loss = loss()
        except Exception as exc:
            print(
                f"losskit check: cannot instantiate {ns.loss} with no arguments: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return 2
    report = check(
        loss,
        *examples,
        compile=False if ns.no_compile else ns.compile_backend,
        seed=ns.seed,
        quiet=True,
    )
    if not ns.quiet or not report.ok:
        print(report)
    return 0 if report.ok else 1
