"""The entry point, :func:`check`: every property in order, each guarded, in one report."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .examples import make_examples
from .gradients import prop_double_backward, prop_gradcheck, prop_graph
from .properties import (
    prop_call,
    prop_compile,
    prop_deterministic,
    prop_reductions,
    prop_sum_mean,
    prop_twin,
    prop_untouched,
)
from .report import CheckReport, PropertyResult, error_text
from .subject import Subject, describe

#: the properties :func:`check` verifies, in the order of its report
PROPERTIES = (
    "call",
    "inputs unchanged",
    "reductions",
    "sum = mean x count",
    "autograd graph",
    "gradcheck (float64)",
    "double backward (float64)",
    "module = function",
    "deterministic",
    "torch.compile",
)


@contextlib.contextmanager
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


#: added to a call that refused check's own examples ((input, target), floats in [0, 1)): a
#: loss taking other inputs (a variance, lengths, a third tensor, class indices) fails there
#: whatever its quality, and the fix is to pass its inputs
_MADE_EXAMPLES_HINT = (
    " (on the (input, target) examples check made itself: pass the loss's own inputs, "
    "check(loss, *inputs), or on the command line --shape/--target)"
)


def _guard(name: str, fn: Callable[[], PropertyResult], hint: str = "") -> PropertyResult:
    """Run one property; one that raises fails, and says why (with ``hint`` when the error is
    about the arguments: a TypeError, ValueError or IndexError)."""
    try:
        return fn()
    except Exception as exc:
        detail = error_text(exc)
        if hint and isinstance(exc, (TypeError, ValueError, IndexError)):
            detail += hint
        return PropertyResult(name, False, detail=detail)


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
            losskit's Modules, for torch's ``torch.nn`` loss Modules and their
            ``torch.nn.functional`` functions, and for :func:`losskit.loss_function` losses).
        compile: ``True`` (the default ``'inductor'`` backend), a backend name (``'aot_eager'``
            is quick), or ``False`` to skip the ``torch.compile`` property.
        count: the number ``'mean'`` divides by, when it is not the number of positions (a
            weighted mean). Default: positions counted by the target (``ignore_index``) and
            ``loss_kwargs['mask']``.
        none_shape: the expected shape of the ``'none'`` result. Default: one value per row
            for per-sample losses (triplet, cosine embedding, multilabel margins), the target's
            shape for index targets, the positions' shape for classification losses, else the
            broadcast shape of the examples.
        grad_inputs: the indices of the examples to differentiate. Default ``(0,)``, the input.
        seed: seeds the examples and the directions of the gradient checks.
        atol, rtol: tolerances of the equalities (``torch.compile`` gets ten times these).
        quiet: do not print the report.

    The default call (no ``reduction`` given) must return a 0-dim tensor, as ``backward()``
    needs, unless ``reduction='none'`` was asked for. The double-backward property is skipped
    when the loss declares itself once-differentiable (a backward marked
    ``@once_differentiable``, or an op torch gives no second derivative); a wrong second
    derivative fails it.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when no property failed, ``report[name]``
        is one property's :class:`PropertyResult`, and ``str(report)`` is a table.

    Example:
        >>> import torch, losskit
        >>> report = losskit.check(losskit.MSELoss(), compile=False, quiet=True)
        >>> report.ok, report["sum = mean x count"].passed
        (True, True)
    """
    subject = Subject(loss, dict(loss_kwargs or {}), functional)
    args = list(example_inputs) if example_inputs else list(make_examples(seed=seed))
    grad_inputs = tuple(grad_inputs)
    report = CheckReport(subject.name, describe(args))
    with _quiet_warnings():
        hint = "" if example_inputs else _MADE_EXAMPLES_HINT
        first = _guard("call", lambda: prop_call(subject, args), hint)
        report.results.append(first)
        runs: dict[str, Callable[[], PropertyResult]] = {
            "inputs unchanged": lambda: prop_untouched(subject, args),
            "reductions": lambda: prop_reductions(subject, args, none_shape),
            "sum = mean x count": lambda: prop_sum_mean(
                subject, args, none_shape, count, atol, rtol
            ),
            "autograd graph": lambda: prop_graph(subject, args, grad_inputs),
            "gradcheck (float64)": lambda: prop_gradcheck(subject, args, grad_inputs, seed),
            "double backward (float64)": lambda: prop_double_backward(
                subject, args, grad_inputs, seed
            ),
            "module = function": lambda: prop_twin(subject, args, atol, rtol),
            "deterministic": lambda: prop_deterministic(subject, args),
            "torch.compile": lambda: prop_compile(subject, args, compile, atol, rtol),
        }
        for name in PROPERTIES[1:]:
            run = runs[name]
            if not first.passed and first.detail.startswith("raised"):
                report.results.append(
                    PropertyResult(name, True, skipped=True, detail="not run: the call raised")
                )
            else:
                report.results.append(_guard(name, run))
    if not quiet:
        print(report)
    return report
