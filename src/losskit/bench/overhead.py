"""``losskit bench overhead``: each losskit loss against its torch twin on small inputs.

A loss on a small model's batch costs microseconds, so what losskit adds around the arithmetic
(argument checks, the ``validate`` value checks, dtype handling, keyword plumbing) is a visible
share of the step. For every loss of :data:`LOSSES` that ``losskit.functional`` has, at each size
of :data:`SIZES` (``N x C``, or the loss's own equivalent, e.g. CTC's ``T x N x C``), one run
times, side by side:

- ``torch``: ``torch.nn.functional.<name>`` on the inputs;
- ``losskit``: ``losskit.functional.<name>`` on the same inputs, ``validate=True`` (the default);
- ``losskit validate=False``: the same with ``validate=False``, for the losses that take it (for
  the others the row says so and the figures are the ``validate=True`` ones: there is nothing to
  switch off);

each twice: forward+backward (a training step's loss cost: the inputs require grad, the loss's
``.backward()`` runs) and forward only (the call alone, graph built). The implementations take
turns call by call (torch, losskit, losskit validate=False, torch, ...) so that a change of load
hits them alike. Each measurement (one loss, one size, one pass, its implementations together)
runs after warm-up rounds until it has taken ``--budget`` seconds (half of that for forward only),
and for at least :data:`GOAL_MIN_REPEATS` rounds at the goal sizes, :data:`MIN_REPEATS` at the
others. Printed: median microseconds and the ratios losskit / torch. On one thread by default
(``--threads``), as a small model's training loop often runs (one worker per core).

Goals (:data:`GOALS`), at the ``tiny`` and ``small`` sizes, forward+backward: losskit <= 1.3x
torch with ``validate=True`` and <= 1.1x with ``validate=False``. ``medium`` is informational.
``--check`` exits 1 when one is missed. ``--out DIR`` writes ``overhead.csv`` (one row per loss,
size, pass and implementation) and ``overhead.png`` (the ratios) when matplotlib is installed.

A new loss is one line of :data:`LOSSES` (in :mod:`losskit.bench._overhead_losses`): its label,
its name in both ``functional`` modules and a function making its ``(args, kwargs)`` for ``N x C``
in a dtype.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import _command as cmd
from . import _common as C
from ._overhead_losses import LOSSES, Loss, available

__all__ = ["GOALS", "LOSSES", "SIZES", "Loss", "Row", "available", "measure", "run"]

#: size name -> (N, C)
SIZES = {"tiny": (64, 10), "small": (1024, 100), "medium": (2048, 1000)}
#: the sizes the goals are set at; the others are informational
GOAL_SIZES = ("tiny", "small")
#: validate -> the most losskit's forward+backward may take, as a multiple of torch's
GOALS = {True: 1.3, False: 1.1}
#: the fewest timed rounds; at the goal sizes, where a verdict rests on the medians, more
MIN_REPEATS, GOAL_MIN_REPEATS = 3, 15
MAX_REPEATS = 20000
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
TORCH, LOSSKIT, NO_VALIDATE = "torch", "losskit", "losskit validate=False"
PASSES = ("fwd+bwd", "forward")

# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One loss at one size: median and fastest microseconds by (pass, implementation)."""

    loss: str
    size: str
    n: int
    c: int
    has_validate: bool
    median_us: dict[tuple[str, str], float] = field(default_factory=dict)
    min_us: dict[tuple[str, str], float] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)
    note: str = ""
    error: str = ""

    def us(self, pass_: str, impl: str) -> float | None:
        """The median; ``validate=False`` of a loss without the keyword is its default's."""
        if impl == NO_VALIDATE and not self.has_validate:
            impl = LOSSKIT
        return self.median_us.get((pass_, impl))

    def ratio(self, pass_: str, impl: str) -> float | None:
        mine, base = self.us(pass_, impl), self.us(pass_, TORCH)
        return mine / base if mine is not None and base else None


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    prepare: Callable[[], None],
    *,
    budget_s: float,
    warmup: int,
    min_repeats: int = MIN_REPEATS,
) -> tuple[dict[str, list[float]], int]:
    """Seconds per call of each of ``calls``, taking turns call by call; and the rounds timed.

    ``prepare`` runs before each call, untimed (it frees the last gradients). Warm-up: up to
    ``warmup`` rounds, ending early once they have taken a quarter of ``budget_s`` (at least
    one). Then rounds until they have taken ``budget_s``, at least ``min_repeats`` and at most
    :data:`MAX_REPEATS`.
    """

    def one(call: Callable[[], object]) -> float:
        prepare()
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        for call in calls.values():
            one(call)
        if time.perf_counter() - start >= budget_s / 4:
            break
    samples: dict[str, list[float]] = {name: [] for name in calls}
    rounds = 0
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside one call would land on whichever ran then
    try:
        start = time.perf_counter()
        while rounds < min_repeats or (
            rounds < MAX_REPEATS and time.perf_counter() - start < budget_s
        ):
            for name, call in calls.items():
                samples[name].append(one(call))
            rounds += 1
    finally:
        if enabled:
            gc.enable()
        prepare()
    return samples, rounds


def _agreement(loss: Loss, args: tuple, kwargs: dict) -> str:
    """'' when losskit's value equals torch's to float tolerance, else what differs."""
    with torch.no_grad():
        mine, theirs = loss.losskit(*args, **kwargs), loss.torch(*args, **kwargs)
    diff = (mine.double() - theirs.double()).abs().max().item()
    scale = max(1.0, theirs.double().abs().max().item())
    tol = 1e-2 if mine.dtype == torch.bfloat16 else 1e-4
    return "" if diff <= tol * scale else f"value differs from torch's by {diff:.2e}"


def _call(fn: Callable[..., Tensor], args: tuple, kwargs: dict, backward: bool):
    """One call of ``fn``, and of ``.backward()`` on its result when ``backward``."""
    if backward:
        return lambda: fn(*args, **kwargs).backward()
    return lambda: fn(*args, **kwargs)


def measure(
    loss: Loss, size: str, n: int, c: int, dtype: torch.dtype, *, budget_s: float, warmup: int
) -> Row:
    """Time ``loss`` at ``N x C``: both passes, torch and losskit side by side."""
    gen = torch.Generator().manual_seed(0)
    args, kwargs = loss.make(n, c, dtype, gen)
    row = Row(loss.label, size, n, c, loss.has_validate)
    leaves = [a for a in args if isinstance(a, Tensor) and a.requires_grad]

    def prepare() -> None:
        for leaf in leaves:
            leaf.grad = None

    least = GOAL_MIN_REPEATS if size in GOAL_SIZES else MIN_REPEATS
    fns = {TORCH: (loss.torch, kwargs), LOSSKIT: (loss.losskit, kwargs)}
    if row.has_validate:
        fns[NO_VALIDATE] = (loss.losskit, {**kwargs, "validate": False})
    else:
        row.note = "no validate keyword: val=False = default"
    try:
        row.note = "; ".join(filter(None, [_agreement(loss, args, kwargs), row.note]))
        for pass_, share in zip(PASSES, (1.0, 0.5), strict=True):
            backward = pass_ == "fwd+bwd"
            calls = {name: _call(fn, args, kw, backward) for name, (fn, kw) in fns.items()}
            samples, row.repeats[pass_] = time_interleaved(
                calls, prepare, budget_s=share * budget_s, warmup=warmup, min_repeats=least
            )
            for name, s in samples.items():
                row.median_us[pass_, name] = 1e6 * statistics.median(s)
                row.min_us[pass_, name] = 1e6 * min(s)
    except Exception as exc:  # a loss that raises is reported, the others go on
        row.error = C.describe_error(exc, 120)
    return row


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench overhead``."""
    names = ", ".join(SIZES)
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="time only this loss (its functional name, e.g. mse_loss); repeat for several",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated subset of {names} (default: all; --quick: tiny,small)",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads for the run (default 1)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds each forward+backward measurement runs for, at least (forward only: half;"
        " default 0.2, --quick 0.01)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 20)")
    parser.add_argument("--out", type=Path, default=None, help="folder for overhead.csv/.png")
    parser.add_argument(
        "--quick", action="store_true", help="tiny and small only, a short budget (for tests)"
    )
    cmd.add_check_option(parser)


def goals(rows: list[Row]) -> list[cmd.Goal]:
    """The :data:`GOALS` of every row at a size of :data:`GOAL_SIZES`."""
    out = []
    for row in rows:
        if row.size not in GOAL_SIZES:
            continue
        for validate, limit in GOALS.items():
            impl = LOSSKIT if validate else NO_VALIDATE
            what = f"{row.loss} {row.size} fwd+bwd validate={validate}: <= {limit}x torch"
            ratio = row.ratio("fwd+bwd", impl)
            if ratio is None:
                out.append(cmd.Goal(what, row.error or "not timed", False))
                continue
            measured = f"{ratio:.3f}x"
            if not validate and not row.has_validate:
                measured += " (no validate keyword: the default's time)"
            out.append(cmd.Goal(what, measured, ratio <= limit))
    return out


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row], dtype: str, threads: int) -> None:
    """One table per size: medians in microseconds and the ratios to torch, both passes."""
    impls = (TORCH, LOSSKIT, NO_VALIDATE)
    head = ["loss"]
    for pass_ in PASSES:
        head += [f"{pass_} torch", "losskit", "x", "val=False", "x"]
    head += ["goals", "note"]
    for size in dict.fromkeys(r.size for r in rows):
        members = [r for r in rows if r.size == size]
        table = []
        for r in members:
            cells = [r.loss]
            for pass_ in PASSES:
                cells.append(_cell(r.us(pass_, TORCH), 1))
                for impl in impls[1:]:
                    cells += [_cell(r.us(pass_, impl), 1), _cell(r.ratio(pass_, impl), 2)]
            mine = goals([r])
            cells.append(("met" if all(g.met for g in mine) else "MISSED") if mine else "-")
            cells.append("; ".join(filter(None, [r.note, r.error])))
            table.append(cells)
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
        n, c = members[0].n, members[0].c
        print(f"\n{size} ({n} x {c}), {dtype}, {threads} thread(s): median us, x = losskit / torch")
        print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        last = len(head) - 2
        for t in table:
            cells = [
                v.rjust(w) if 0 < i < last else v.ljust(w)
                for i, (v, w) in enumerate(zip(t, widths, strict=True))
            ]
            print("  ".join(cells).rstrip())


def csv_rows(rows: list[Row]) -> list[dict[str, object]]:
    """One CSV row per loss, size, pass and implementation (the shared columns first)."""
    out = []
    for r in rows:
        for pass_ in PASSES:
            for impl in (TORCH, LOSSKIT, NO_VALIDATE):
                us = r.us(pass_, impl)
                fastest = r.min_us.get((pass_, impl if r.has_validate else LOSSKIT))
                out.append({
                    "group": f"{r.size} {r.n}x{r.c}", "impl": impl,
                    "median_ms": None if us is None else us / 1e3,
                    "min_ms": None if fastest is None else fastest / 1e3,
                    "x_baseline": r.ratio(pass_, impl),
                    "note": "; ".join(filter(None, [r.note, r.error])),
                    "loss": r.loss, "size": r.size, "n": r.n, "c": r.c, "pass": pass_,
                    "median_us": us, "repeats": r.repeats.get(pass_),
                    "has_validate": r.has_validate,
                })  # fmt: skip
    return out


def write_png(rows: list[Row], path: Path) -> str:
    """Bars of the forward+backward ratios per loss, a panel per size, the goals dashed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    sizes = list(dict.fromkeys(r.size for r in rows))
    losses = list(dict.fromkeys(r.loss for r in rows))
    fig = Figure(figsize=(4.2 * len(sizes), 1.2 + 0.32 * len(losses)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(sizes), squeeze=False, sharey=True)[0]
    for ax, size in zip(axes, sizes, strict=True):
        by_loss = {r.loss: r for r in rows if r.size == size}
        ys = range(len(losses))
        for offset, impl, color in ((-0.2, LOSSKIT, "#4c72b0"), (0.2, NO_VALIDATE, "#dd8452")):
            values = [(by_loss[name].ratio("fwd+bwd", impl) or 0) if name in by_loss else 0
                      for name in losses]  # fmt: skip
            ax.barh([y + offset for y in ys], values, height=0.4, color=color, label=impl)
        ax.axvline(1.0, color="k", linewidth=1)
        if size in GOAL_SIZES:
            for limit in GOALS.values():
                ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{size}: fwd+bwd, x torch", yticks=list(ys), yticklabels=losses)
    axes[0].invert_yaxis()  # the y axis is shared: once, the first loss on top
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, ["losskit (validate=True)", labels[1]], loc="outside lower center",
               ncols=2, fontsize=8)  # fmt: skip
    fig.suptitle("losskit bench overhead: losskit / torch, forward+backward (dashed: the goals)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def run(args: argparse.Namespace) -> int:
    known = {loss.fn for loss in LOSSES}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        print(f"losskit bench overhead: unknown --only {unknown}; choose from {sorted(known)}")
        return 2
    sizes = (args.sizes or ("tiny,small" if args.quick else ",".join(SIZES))).split(",")
    sizes = [s.strip() for s in sizes if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        print(f"losskit bench overhead: --sizes {args.sizes!r}; choose from {list(SIZES)}")
        return 2
    if args.threads < 1:
        print("losskit bench overhead: --threads must be >= 1")
        return 2
    chosen = [loss for loss in available() if not args.only or loss.fn in args.only]
    missing = [loss.fn for loss in LOSSES if loss.losskit is None]
    budget = args.budget if args.budget is not None else (0.01 if args.quick else 0.2)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 20)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    gc.collect()
    gc.freeze()  # torch's own objects: out of every collection (each would walk them all)
    try:
        print(cmd.device_line(torch.device("cpu")))
        missing = [m for m in missing if not args.only or m in args.only]
        if missing:
            print(f"not in losskit.functional yet (no row): {', '.join(missing)}")
        rows = []
        with C.Progress(len(chosen) * len(sizes), "bench overhead") as progress:
            for size in sizes:
                n, c = SIZES[size]
                for loss in chosen:
                    rows.append(measure(loss, size, n, c, DTYPES[args.dtype], budget_s=budget,
                                        warmup=warmup))  # fmt: skip
                    progress.update(loss.label)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)

    print_table(rows, args.dtype, args.threads)
    print(
        f"\nforward+backward: the call and .backward(), inputs requiring grad; forward: the call "
        f"alone. Each measurement ran >= {budget:g} s (forward {budget / 2:g} s), the "
        "implementations taking turns call by call."
    )
    if args.out is not None:
        meta = {"bench": "overhead", "device": "cpu", "dtype": args.dtype, "threads": args.threads}
        C.write_csv(csv_rows(rows), args.out / "overhead.csv", meta)
        print(f"wrote {args.out / 'overhead.csv'}")
        print(write_png(rows, args.out / "overhead.png"))
    return cmd.goals_status(
        "overhead",
        goals(rows),
        check=args.check,
        print_met=False,
        none_because=f"goals are set at the {' and '.join(GOAL_SIZES)} sizes only",
    )
