"""Naming the culprit: a scan of the loss's source (AST, so comments and docstrings are ignored)
for what cuts the autograd graph or draws random numbers."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from collections.abc import Callable, Sequence

from .subject import Subject

GRAPH_CULPRITS = {
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
RANDOM_CULPRITS = (
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


def scan(functions: list[Callable], names: Sequence[str]) -> list[str]:
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


def explain_graph(subject: Subject) -> str:
    hits = scan(subject.source_functions(), tuple(GRAPH_CULPRITS))
    if not hits:
        return (
            "something in the loss leaves autograd: .item()/float() re-wrapped in "
            "torch.tensor(), a NumPy round trip, or .detach()"
        )
    reasons = []
    for hit in hits:
        key = hit.split(" ", 1)[0]
        reasons.append(f"{GRAPH_CULPRITS[key]} [{hit.split(' ', 1)[1].strip('()')}]")
    return "likely cause: " + "; ".join(reasons)


def custom_functions(out, limit: int = 100_000) -> list[type]:
    """The ``torch.autograd.Function`` classes in the graph of ``out``, in the order met."""
    found: list[type] = []
    seen: set[int] = set()
    stack = [getattr(out, "grad_fn", None)]
    keep = []  # the nodes visited, alive while their ids are in ``seen``
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        cls = getattr(node, "_forward_cls", None)
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
        stack.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))
    return found


def _where(fn: Callable) -> str:
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    try:
        _, start = inspect.getsourcelines(fn)
        return f"{os.path.basename(inspect.getsourcefile(fn) or '?')}:{start}"
    except (OSError, TypeError):
        return "source not found"


def explain_double_backward(functions: Sequence[type]) -> str:
    """Why a gradient has a wrong gradient: the backward of a custom ``autograd.Function``
    that leaves autograd (named, with its line), or that is not differentiable."""
    if not functions:
        return ""
    backwards = [cls.backward for cls in functions]
    hits = scan(backwards, tuple(GRAPH_CULPRITS))
    if hits:
        reasons = []
        for hit in hits:
            key, where = hit.split(" ", 1)
            reasons.append(f"{GRAPH_CULPRITS[key]} [{where.strip('()')}]")
        return "likely cause, in a custom autograd.Function's backward: " + "; ".join(reasons)
    named = ", ".join(f"{cls.__name__}.backward [{_where(cls.backward)}]" for cls in functions)
    return (
        f"the loss's custom autograd.Function ({named}) must build its gradient from "
        "differentiable torch ops, or declare it with @once_differentiable"
    )
