"""``losskit check LOSS``: the command line of :func:`losskit.check`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from .examples import make_examples
from .verify import check


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
