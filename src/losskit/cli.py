"""The ``losskit`` command line: ``python -m losskit <command> ...``.

Commands:
    tour    walk the tutorial, verifying every claim (the main job of ``make demo``)
    check   verify a custom loss: ``losskit check path.to.module:attr``
    bench   side-by-side benchmarks: ``losskit bench ce|lce|vocab-parallel|overhead``

``losskit --version`` prints losskit's version and torch's.

Each command lives in its own module and is imported only when asked for, so ``--help`` is fast
and optional dependencies stay optional.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "tour": ("losskit.tour", "walk the tutorial, verifying every claim"),
    "check": ("losskit.check", "verify a loss function or Module"),
    "bench": ("losskit.bench", "side-by-side benchmarks (ce, lce, vocab-parallel, overhead)"),
}


def _usage() -> str:
    lines = ["usage: losskit <command> [options]", "       losskit --version", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'losskit <command> --help' for a command's options."]
    return "\n".join(lines)


def version() -> str:
    """``losskit 0.1.0 (torch 2.13.0+cpu)``: what ``losskit --version`` prints."""
    import torch

    import losskit

    return f"losskit {losskit.__version__} (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"losskit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
