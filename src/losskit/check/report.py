"""What :func:`losskit.check` returns: one :class:`PropertyResult` per property, in a
:class:`CheckReport` that prints as a table."""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def whole_sentences(text: str, limit: int = 400) -> str:
    """``text`` on one line, cut only between sentences: as many whole sentences as fit in
    ``limit`` characters, and always the first one whole, however long."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    sentences = _SENTENCE_END.split(flat)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            break
        kept = f"{kept} {sentence}"
    return kept


def error_text(exc: BaseException) -> str:
    """``"raised RuntimeError: <message>"``, the message in whole sentences."""
    msg = whole_sentences(str(exc))
    return f"raised {type(exc).__name__}: {msg}" if msg else f"raised {type(exc).__name__}"


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
