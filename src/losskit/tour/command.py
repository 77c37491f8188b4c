"""``python -m losskit tour``: parse the options, run the steps, draw, report the claims."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import losskit

from .plots import draw_pictures, unwritable_reason
from .report import DEMO_EXTRA, DIGITS_EPOCHS, STEPS, Tour, missing_demo_modules


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losskit tour",
        description="Walk the tutorial: run each step, verify each claim, train real models.",
        epilog=f"Step 7 and --plot need scikit-learn and matplotlib: {DEMO_EXTRA}",
    )
    parser.add_argument(
        "--section", type=int, choices=sorted(STEPS), metavar="N", help="run only step N (1-7)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG pictures to DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--epochs",
        type=int,
        default=DIGITS_EPOCHS,
        help=f"digits training epochs (default {DIGITS_EPOCHS}); fewer is faster, "
        "but the accuracy claims may then fail",
    )
    return parser


def _cannot_write(directory: Path, reason: str) -> int:
    print(f"losskit tour: cannot write plots to {directory}: {reason}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plot is not None:  # before the steps: not a traceback after the work
        reason = unwritable_reason(args.plot)
        if reason:
            return _cannot_write(args.plot, reason)
    tour = Tour(seed=args.seed, quiet=args.quiet, epochs=args.epochs)
    start = time.perf_counter()
    tour.say(
        f"losskit {losskit.__version__} tour: the tutorial, run and verified "
        f"(torch {torch.__version__}, seed {args.seed})"
    )
    missing = missing_demo_modules()
    if missing:
        tour.say(
            f"  note: {', '.join(missing)} not installed, so step 7 and the pictures are "
            f"skipped. Enable them with: {DEMO_EXTRA}"
        )
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for number in [args.section] if args.section else sorted(STEPS):
            STEPS[number][1](tour)
        if args.plot is not None:
            try:
                draw_pictures(tour, args.plot)
            except OSError as exc:  # the folder went away or filled up while the steps ran
                return _cannot_write(args.plot, exc.strerror or str(exc))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    failed = [c for c in tour.claims if not c.ok]
    elapsed = time.perf_counter() - start
    if failed:
        tour.say(f"\n{len(failed)} of {len(tour.claims)} claims FAILED ({elapsed:.1f} s):")
        for claim in failed:
            tour.say(str(claim))
        return 1
    tour.say(f"\nAll {len(tour.claims)} claims passed ({elapsed:.1f} s).")
    return 0
