"""``losskit check LOSS``: the command line of :func:`losskit.check`."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
import textwrap

import torch

from .examples import make_examples
from .subject import describe
from .verify import PROPERTIES, check

_DESCRIPTION = """\
Verify a loss function or Module on seeded random examples, property by property: its default
call returns a 0-dim tensor; it leaves its inputs unchanged; reductions; sum = mean x count;
autograd graph; gradcheck and double backward in float64 (a once-differentiable loss skips the
latter); Module = function (losskit's pairs, and torch.nn's Modules with torch.nn.functional);
determinism; torch.compile. The header is printed before the loss is imported."""

_EPILOG = """\
examples:
  losskit check losskit.nn:MSELoss --shape 8,5
  losskit check torch.nn:HuberLoss --init 'delta=0.5, reduction="sum"'
  losskit check losskit.nn:CrossEntropyLoss --shape 8,5 --target index --init 'ignore_index=0'
  losskit check my_losses.py:My_loss --kwargs 'mask=tensor([True, True, False, True])' --shape 4

--init and --kwargs take name=value pairs separated by commas; each value is a Python literal
(a number, string, True/False/None, tuple, list or dict), or tensor(<literal>) for a tensor.
Either flag may be given several times.

exit status: 0 when every property passes (skipped ones do not count), 1 when one fails, 2 for
a usage or import error."""


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


def _is_tensor(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "tensor"
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "tensor"
        and isinstance(func.value, ast.Name)
        and func.value.id == "torch"
    )


def _value(node: ast.expr, flag: str, name: str):
    if isinstance(node, ast.Call) and _is_tensor(node.func):
        if len(node.args) != 1 or node.keywords:
            raise ValueError(
                f"{flag}: {name}= takes tensor(<one literal>), got {ast.unparse(node)}"
            )
        return torch.tensor(_value(node.args[0], flag, name))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise ValueError(
            f"{flag}: {name}={ast.unparse(node)} is not a Python literal (a number, string, "
            "True/False/None, tuple, list or dict) nor tensor(<literal>)"
        ) from None


def parse_options(texts: list[str] | None, flag: str) -> dict:
    """``['delta=0.5, reduction="sum"']`` as ``{'delta': 0.5, 'reduction': 'sum'}``.

    Only parsed, never run: each value goes through :func:`ast.literal_eval`, or is
    ``tensor(<literal>)``, made with :func:`torch.tensor`.
    """
    options: dict = {}
    for text in texts or []:
        try:
            call = ast.parse(f"_({text})", mode="eval").body
        except SyntaxError:
            call = None
        plain = (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "_"
            and not call.args
            and all(k.arg is not None for k in call.keywords)
        )
        if not plain:
            raise ValueError(
                f"{flag} expects name=value pairs separated by commas, like "
                f"'delta=0.5, reduction=\"sum\"', got {text!r}"
            )
        for keyword in call.keywords:
            if keyword.arg in options:
                raise ValueError(f"{flag}: {keyword.arg}= is given twice")
            options[keyword.arg] = _value(keyword.value, flag, keyword.arg)
    return options


def _arguments(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _header(ns: argparse.Namespace, init: dict, kwargs: dict, inputs: str) -> str:
    called = f"{ns.loss}({_arguments(init)})" if init else ns.loss
    lines = [f"losskit check: {called} on {inputs}"]
    if kwargs:
        lines.append(f"  called with {_arguments(kwargs)}")
    if ns.no_compile:
        compiled = "torch.compile skipped (--no-compile)"
    else:
        compiled = f"torch.compile (backend {ns.compile_backend!r}: its first compile is slow)"
    checks = ", ".join([*PROPERTIES[:-1], compiled])
    lines += textwrap.wrap(f"checks: {checks}", 98, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"losskit check: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``losskit check LOSS [--shape 4,3] [--target float|index] [--init ...] [--kwargs ...]``.

    The header (the loss, the inputs, the properties) is printed and flushed before the loss
    is imported, so a slow import or compile is never silent.
    """
    parser = argparse.ArgumentParser(
        prog="losskit check",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "loss",
        help="module.path:attr or path/to/file.py:attr; a class is instantiated with the "
        "arguments of --init (none by default)",
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
    parser.add_argument(
        "--init",
        action="append",
        metavar="'NAME=VALUE, ...'",
        help="constructor arguments of a loss class, e.g. 'delta=0.5, reduction=\"sum\"'",
    )
    parser.add_argument(
        "--kwargs",
        action="append",
        metavar="'NAME=VALUE, ...'",
        help="keyword arguments of every call (check's loss_kwargs), e.g. 'ignore_index=0'",
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
        init = parse_options(ns.init, "--init")
        kwargs = parse_options(ns.kwargs, "--kwargs")
    except ValueError as exc:
        return _fail(str(exc))
    shapes = ns.shape or [(4, 3)]
    if len(shapes) > 2:
        return _fail("give --shape once, or twice (input, target)")
    shape = shapes[0] if len(shapes) == 1 else (shapes[0], shapes[1])
    examples = make_examples(shape, target=ns.target, seed=ns.seed)
    if not ns.quiet:
        print(_header(ns, init, kwargs, describe(examples)), flush=True)
    try:
        loss = _load(ns.loss)
    except Exception as exc:
        return _fail(f"cannot load {ns.loss!r}: {type(exc).__name__}: {exc}")
    if isinstance(loss, type):
        try:
            loss = loss(**init)
        except Exception as exc:
            given = f"{ns.loss}({_arguments(init)})" if init else f"{ns.loss} with no arguments"
            return _fail(f"cannot instantiate {given}: {type(exc).__name__}: {exc}")
    elif init:
        return _fail(
            f"--init configures a class, but {ns.loss} is a {type(loss).__name__}: give a "
            "function's options with --kwargs"
        )
    report = check(
        loss,
        *examples,
        loss_kwargs=kwargs,
        compile=False if ns.no_compile else ns.compile_backend,
        seed=ns.seed,
        quiet=True,
    )
    if not ns.quiet or not report.ok:
        print(report)
    return 0 if report.ok else 1
