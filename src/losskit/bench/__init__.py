"""``losskit bench``: side-by-side benchmarks (``ce``, ``lce``, ``distill``, ``dpo``,
``vocab-parallel``, ``overhead``).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``,
imported only when asked for. Timing, memory, the floor and the output formats are shared in
:mod:`losskit.bench._common`; the options and the per-input loop of the benches that compare
implementations side by side (``ce``, ``lce``) in :mod:`losskit.bench._command`, which also holds
the one rule of ``--check`` (every subcommand takes it: exit 1 when a goal the run prints is
missed). Performance figures belong here and in ``benchmarks/``, never in the test suite.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "ce": ("losskit.bench.ce", "cross-entropy on N x V logits, forward+backward"),
    "lce": ("losskit.bench.lce", "linear + cross-entropy (hidden states and classifier)"),
    "distill": (
        "losskit.bench.distill",
        "distillation from two linear heads (student and teacher), the JSD by default",
    ),
    "dpo": (
        "losskit.bench.dpo",
        "DPO from the policy's hidden states and head (TRL's layout) against the three GEMMs",
    ),
    "vocab-parallel": (
        "losskit.bench.vocab_parallel",
        "vocabulary-parallel cross-entropy against gathering the logits",
    ),
    "overhead": (
        "losskit.bench.overhead",
        "each loss against torch's on small inputs, validate on and off",
    ),
}


def _load(name: str):
    """The subcommand's module, or None when it is not part of this installation."""
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but one of its imports is missing
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    """Run ``losskit bench <subcommand> [options]``; ``argv`` excludes the word 'bench'."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="losskit bench", description="side-by-side benchmarks")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    parsers = {
        name: sub.add_parser(name, help=h, description=h) for name, (_, h) in COMMANDS.items()
    }
    module = None
    if argv and argv[0] in COMMANDS:  # import only the subcommand that runs
        module = _load(argv[0])
        if module is None:
            print(
                f"losskit bench {argv[0]}: {COMMANDS[argv[0]][0]} is not part of this "
                "installation yet",
                file=sys.stderr,
            )
            return 2
        module.add_arguments(parsers[argv[0]])
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    return int(module.run(args) or 0)
