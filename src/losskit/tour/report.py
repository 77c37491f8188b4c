"""The tour's bookkeeping: claims, the :class:`Tour` that prints and records them, the step
registry, and how numbers are shown."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

import torch
from torch import Tensor

DEMO_EXTRA = "pip install 'losskit[demo]'"
DIGITS_EPOCHS = 12  # ~1 s per model on one core; each loss reaches > 94% held-out accuracy


@dataclass(frozen=True)
class Claim:
    """One verified statement: what was claimed, whether it held, and the measured evidence."""

    text: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"  [{'PASS' if self.ok else 'FAIL'}] {self.text}{detail}"


@dataclass
class Tour:
    """Options and output of one tour; the steps print through it and record their claims."""

    seed: int = 0
    quiet: bool = False
    epochs: int = DIGITS_EPOCHS
    out: TextIO | None = None
    claims: list[Claim] = field(default_factory=list)
    results: dict = field(default_factory=dict)  # what step 7 trained, for the pictures

    def say(self, text: str = "") -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def claim(self, text: str, ok: bool, detail: str = "") -> Claim:
        """Record and print a claim."""
        result = Claim(text, bool(ok), detail)
        self.claims.append(result)
        self.say(str(result))
        return result

    def same(self, text: str, a: Tensor | float, b: Tensor | float, *, tol: float = 0.0) -> Claim:
        """Claim that ``a`` and ``b`` agree elementwise to ``tol`` (0: bitwise equal values)."""
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        ok = a.shape == b.shape
        diff = (a.double() - b.double()).abs().max().item() if ok and a.numel() else 0.0
        detail = f"|diff| = {diff:.1e}" if ok else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        return self.claim(text, ok and diff <= tol, detail)


Step = Callable[..., list[Claim]]
STEPS: dict[int, tuple[str, Step]] = {}


def tour_step(number: int, title: str) -> Callable[[Callable[[Tour], None]], Step]:
    """Register a step: the wrapper prints its heading, seeds it, and returns its claims."""

    def register(body: Callable[[Tour], None]) -> Step:
        @functools.wraps(body)
        def run(tour: Tour | None = None) -> list[Claim]:
            tour = tour if tour is not None else Tour()
            tour.say(f"\n{number}. {title}")
            torch.manual_seed(tour.seed + number)  # each step repeats on its own (--section)
            start = len(tour.claims)
            body(tour)
            return tour.claims[start:]

        STEPS[number] = (title, run)
        return run

    return register


def fmt(t: Tensor) -> str:
    """A tensor's values rounded to 4 decimals: a list, or one number for a 0-dim tensor."""
    return str([round(v, 4) for v in t.flatten().tolist()]) if t.dim() else f"{t.item():.4f}"


def fmt_shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def missing_demo_modules(names: Iterable[str] = ("sklearn", "matplotlib")) -> list[str]:
    """The optional ``losskit[demo]`` modules that are not installed (found without importing)."""
    return [name for name in names if importlib.util.find_spec(name) is None]
