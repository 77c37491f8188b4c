"""The command shape that ``bench ce`` and ``bench lce`` share.

Both compare named implementations side by side on one input at a time. Each describes itself in
a :class:`Spec` (its implementations and defaults); this module gives it:

- :func:`add_options`: the options (device, dtype, shapes, repeats, warm-up, implementations,
  memory, output folder, --quick), in that order;
- :func:`settings`: what those options leave once the defaults fill the gaps, or None (with the
  message printed) where they cannot run; :func:`drop_skipped` prints and drops the
  implementations that do not apply;
- :func:`device_line`, the first line a run prints;
- per input, :func:`time_group` (build every implementation, time them together) and
  :func:`measure_each` (the memory figure of each one that ran);
- :func:`write_outputs`: the CSV and chart under ``--out``;
- :class:`Goal` and :func:`goals_status`: the goals a run prints and the exit status they give
  under ``--check`` (:func:`add_check_option`), the one rule of every ``losskit bench`` command;
- :func:`run_head_groups`: the whole run of a fused head's bench (``lce``, ``distill``,
  ``dpo``): time every implementation on each input against the GEMM floor, measure its memory
  beyond the returned gradients, print the table and the goals, write the files.

Timing, memory, the table and the files themselves are in :mod:`losskit.bench._common`.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import _common as C

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Spec:
    """One bench: its name, its implementations and what it runs when the options say nothing."""

    name: str  # the subcommand, the CSV and PNG file names, the ``bench`` CSV column
    impls: dict[str, str]  # --impls key -> the row's name
    shapes: dict[str, list[tuple[int, ...]]]  # device type -> default shapes
    quick_shapes: dict[str, list[tuple[int, ...]]]
    repeats: dict[str, int]  # timed calls: "cpu", "cuda", and "quick" on either
    warmup: tuple[int, int]  # untimed calls first: (default, --quick)
    quick_leaves_out: tuple[str, ...] = ()  # keys --quick leaves out unless named in --impls
    floor_key: str | None = None  # the key every ratio refers to: always run


@dataclass
class Settings:
    """What a run does, once the defaults fill what the options left open."""

    device: torch.device
    dtype_name: str
    shapes: list[tuple[int, ...]]
    repeats: int
    warmup: int
    keys: list[str]  # the implementations that run, in order
    memory: str  # "subprocess", "inprocess" or "off"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def measure_memory(self) -> bool:
        return self.memory != "off"

    @property
    def steps_per_case(self) -> int:
        """Progress steps of one implementation on one input: calls, and the memory figure."""
        return self.warmup + self.repeats + int(self.measure_memory)

    def progress(self, spec: Spec) -> C.Progress:
        """The progress bar over every implementation on every input."""
        total = len(self.shapes) * len(self.keys) * self.steps_per_case
        return C.Progress(total, f"bench {spec.name}")


def add_options(
    parser: argparse.ArgumentParser,
    spec: Spec,
    *,
    parse_shape: Callable[[str], tuple[int, ...]],
    metavar: str,
    dtype_help: str,
    shape_help: str,
    impls_default: str,
    memory_help: str,
    quick_help: str,
) -> None:
    """The options of ``losskit bench <spec.name>``; the help texts a bench words itself."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help=dtype_help)
    parser.add_argument(
        "--shape", type=parse_shape, action="append", default=None, metavar=metavar, help=shape_help
    )
    r = spec.repeats
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed calls per implementation (default {r['cpu']} on cpu, {r['cuda']} on cuda; "
        f"--quick {r['quick']})",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"untimed calls first (default {spec.warmup[0]})"
    )
    parser.add_argument(
        "--impls",
        default=None,
        help=f"comma-separated subset of {','.join(spec.impls)} ({impls_default})",
    )
    parser.add_argument(
        "--memory", choices=("subprocess", "inprocess", "off"), default=None, help=memory_help
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"folder for {spec.name}.csv and {spec.name}.png"
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    add_check_option(parser)


def add_check_option(parser: argparse.ArgumentParser) -> None:
    """``--check``: every ``losskit bench`` command takes it (see :func:`goals_status`)."""
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a goal this run prints is missed, naming it (default: print the goals "
        "and exit 0)",
    )


def settings(args: argparse.Namespace, spec: Spec) -> Settings | None:
    """The run ``args`` ask for; None, with the reason printed, where it cannot run."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"losskit bench {spec.name}: --device cuda but torch sees no CUDA device")
        return None
    if args.impls:
        keys = [k.strip() for k in args.impls.split(",") if k.strip()]
        unknown = [k for k in keys if k not in spec.impls]
        if unknown:
            print(
                f"losskit bench {spec.name}: unknown --impls {unknown}; "
                f"choose from {list(spec.impls)}"
            )
            return None
        if spec.floor_key is not None and spec.floor_key not in keys:
            keys.insert(0, spec.floor_key)
    else:
        keys = [k for k in spec.impls if not (args.quick and k in spec.quick_leaves_out)]
    return Settings(
        device=device,
        dtype_name=args.dtype or ("bfloat16" if device.type == "cuda" else "float32"),
        shapes=args.shape or (spec.quick_shapes if args.quick else spec.shapes)[device.type],
        repeats=args.repeats or spec.repeats["quick" if args.quick else device.type],
        warmup=args.warmup if args.warmup is not None else spec.warmup[int(args.quick)],
        keys=keys,
        memory=args.memory or ("inprocess" if args.quick else "subprocess"),
    )


def drop_skipped(
    run: Settings, spec: Spec, applies: Callable[[str, str, torch.dtype], str]
) -> None:
    """Print why each implementation that does not apply here is skipped; keep the others."""
    skipped = {k: applies(k, run.device.type, run.dtype) for k in run.keys}
    for k, why in skipped.items():
        if why:
            print(f"skipped {spec.impls[k]}: {why}")
    run.keys = [k for k in run.keys if not skipped[k]]


def device_line(device: torch.device) -> str:
    """``device: ...``: the GPU, or the CPU and its thread count, and the torch version."""
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"device: CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def time_group(
    spec: Spec,
    run: Settings,
    group: str,
    build: Callable[[str], C.Case],
    progress: C.Progress,
    *,
    catch: bool,
    error_width: int = 160,
) -> tuple[list[C.Case], dict[str, C.Result]]:
    """Build every implementation on one input and time them together, round by round.

    Returns the cases that were built and one :class:`Result` per implementation, by row name,
    in ``run.keys`` order. One that fails to build keeps the error in its result. With
    ``catch``, one whose call raises keeps that error and has no ``times_s``; without, the
    exception propagates.
    """
    cases, by_name = [], {}
    for key in run.keys:
        result = C.Result(group, spec.impls[key])
        try:
            case = build(key)
        except Exception as exc:  # e.g. torch.compile without a working compiler, a peer
            result.error = C.describe_error(exc, error_width)
            progress.update(spec.impls[key], run.steps_per_case)
        else:
            cases.append(case)
            result.note = case.note
        by_name[spec.impls[key]] = result
    failed: dict[str, str] | None = {} if catch else None
    timing = {"device": run.device, "repeats": run.repeats, "warmup": run.warmup}
    times = C.time_cases(cases, **timing, progress=progress, errors=failed)
    for name, samples in times.items():
        by_name[name].times_s = samples
    for name, error in (failed or {}).items():
        by_name[name].error = error
    return cases, by_name


def measure_each(
    spec: Spec,
    run: Settings,
    cases: list[C.Case],
    by_name: dict[str, C.Result],
    progress: C.Progress,
    measure: Callable[[C.Result, C.Case, str], None],
    *,
    skip: Collection[str] = (),
) -> None:
    """``measure(result, case, key)`` of each case that ran and is not named in ``skip``.

    Nothing when memory is off.
    """
    if not run.measure_memory:
        return
    key_of = {spec.impls[k]: k for k in run.keys}
    for case in cases:
        if case.name not in skip and not by_name[case.name].error:
            measure(by_name[case.name], case, key_of[case.name])
        progress.update(case.name)


def write_outputs(
    rows: list[dict[str, object]],
    out: Path | None,
    spec: Spec,
    run: Settings,
    floors_s: dict[str, float],
) -> None:
    """``<out>/<name>.csv`` and ``<out>/<name>.png`` when ``--out`` was given."""
    if out is not None:
        meta = {"bench": spec.name, "device": run.device.type, "dtype": run.dtype_name}
        C.write_outputs(rows, out, spec.name, meta, floors_s)


# --------------------------------------------------------------------------------------------
# goals and --check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One goal a bench prints: what it asks, what this run measured, and whether it was met."""

    what: str  # e.g. "losskit default (N=4096 D=1024 V=32000 float32 cpu): <= 1.15x GEMMs"
    measured: str  # e.g. "1.082x, 59 MiB beyond gradients"
    met: bool

    def __str__(self) -> str:
        return f"goal {self.what}: {self.measured} -> {'met' if self.met else 'MISSED'}"


def goals_status(
    name: str,
    goals: Sequence[Goal],
    *,
    check: bool,
    print_met: bool = True,
    none_because: str = "",
    file=None,
) -> int:
    """Print the goals of a run of ``losskit bench <name>``; return the exit status they give.

    Every goal's line is printed (with ``print_met=False`` only the missed ones, after a count:
    for benches with many goals and their own table). The rule, for every bench: without
    ``check`` the status is 0 whatever was missed (the goals are a report); with ``check`` it is
    1 when any goal was missed, and the missed ones are named again on the last line, else 0.
    ``none_because`` says why a run has no goals at all (a device or shape without one).
    """
    out = file or sys.stdout
    missed = [g for g in goals if not g.met]
    if not print_met and goals:
        print(f"goals: {len(goals) - len(missed)} of {len(goals)} met", file=out)
    for goal in goals if print_met else missed:
        print(goal, file=out)
    if not check:
        return 0
    prefix = f"losskit bench {name} --check"
    if not goals:
        why = f" ({none_because})" if none_because else ""
        print(f"{prefix}: this run prints no goals{why}; nothing to miss", file=out)
        return 0
    if missed:
        names = "; ".join(g.what for g in missed)
        print(f"{prefix}: {len(missed)} of {len(goals)} goals MISSED: {names}", file=out)
        return 1
    print(f"{prefix}: all {len(goals)} goals met", file=out)
    return 0


# --------------------------------------------------------------------------------------------
# memory beyond the returned gradients (the fused linear benches)
# --------------------------------------------------------------------------------------------


def measure_beyond_grads(
    result: C.Result,
    case: C.Case,
    key: str,
    *,
    module: str,
    params: dict,
    cfg: Settings,
    grad_bytes: int,
    warm_mib: dict[tuple[str, str], float],
    steps: int,
) -> None:
    """``result.extra_bytes``: the peak beyond the ``grad_bytes`` of the returned gradients.

    On the CPU (``--memory subprocess``) the peak resident set of a fresh process running
    ``module.make_case(key, params)`` for ``steps`` steps (and one warm step alone, into
    ``warm_mib``); elsewhere one warm call in this process.
    """
    if cfg.device.type == "cpu" and cfg.memory == "subprocess":
        figures, err = C.user_peak_bytes_in_subprocess(module, key, params, steps=steps)
        if err:
            result.error = err
            return
        result.extra_bytes = figures["peak"] - grad_bytes
        warm = (figures["warm"] - grad_bytes) / C.MIB
        warm_mib[(result.group, result.impl)] = warm
        text = f"a warm step alone: {warm:.0f} MiB"
        if warm < 0:  # that step reused pages that the process held already
            text = "a warm step alone: within the pages already held"
    else:
        try:
            extra = C.peak_extra_bytes(case, cfg.device)
        except Exception as exc:  # e.g. out of memory on CUDA
            result.error = C.describe_error(exc, 120)
            return
        if extra is None:
            return
        result.extra_bytes = extra - grad_bytes
        text = ""
        if result.extra_bytes < 0:  # in-process CPU measurement: the allocator reused pages
            result.extra_bytes = None
            text = "peak below the gradients' size (pages reused in-process)"
    result.note = "; ".join(filter(None, [result.note, text]))


def beyond_grads_line(
    device: torch.device, memory: str, grad_bytes: dict[str, int], *, steps: int, grads: str
) -> str:
    """How the "MiB beyond grads" column was measured, less the returned ``grads``."""
    sizes = ", ".join(f"{g}: {b / C.MIB:.0f} MiB" for g, b in grad_bytes.items())
    if device.type == "cuda":
        how = "torch.cuda.max_memory_allocated over one warm call, above the allocation before it"
    elif memory == "subprocess":
        how = (
            f"peak resident set (VmHWM) of a fresh process over {steps} steps from its "
            "first call (.grad = None before each, as zero_grad() does), above its size once "
            "the inputs exist"
        )
    else:
        how = "growth of this process's peak resident set over one warm call"
    return f"MiB beyond grads: {how}, minus the returned {grads} ({sizes})"


def gemm_floor(name: str, x: Tensor, w: Tensor) -> C.Case:
    """The floor of a fused head's step: the logits ``x @ w.T``, ``dX = G @ w`` and
    ``dW = G.T @ x`` of the ``(N, D)`` rows ``x`` into outputs allocated once (the floor is the
    arithmetic, ``6 N D V`` flops, not first-touch page faults)."""
    z = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    dx, dw = torch.empty_like(x), torch.empty_like(w)

    def gemms() -> None:
        with torch.no_grad():
            torch.mm(x, w.t(), out=z)
            torch.mm(z, w, out=dx)
            torch.mm(z.t(), x, out=dw)

    return C.Case(name, gemms, None, "logits, dX, dW into preallocated outputs: the floor")


def grad_bytes(x: Tensor, w: Tensor) -> int:
    """The size of the gradients a head's step returns: ``dX`` and ``dW``."""
    return (x.numel() + w.numel()) * x.element_size()


def run_head_groups(
    spec: Spec,
    cfg: Settings,
    args: argparse.Namespace,
    groups: Sequence[tuple[str, dict]],
    load: Callable[[dict], tuple[int, Callable[[str], C.Case]]],
    *,
    module: str,
    floor: str,
    baseline: str,
    steps: int,
    grads: str,
    catch: bool,
    goals: Callable[[list[dict[str, object]], str], list[Goal]],
    none_because: str,
    row_extra: dict | None = None,
) -> int:
    """The run of a fused head's bench; returns its exit status (:func:`goals_status`).

    ``groups``: each input's row label and the parameters ``module.make_case`` rebuilds it from
    (in a fresh process, for the memory figure); ``load(params) -> (grad_bytes, build)``: the
    input's returned gradients' size and the builder of each implementation on it, made one
    input at a time (the previous one freed first). ``floor`` names the GEMM floor every ratio
    refers to (its outputs preallocated: no memory figure); ``catch`` keeps a call's error in
    its row instead of stopping the run; ``row_extra`` goes into every CSV row.
    """
    results: list[C.Result] = []
    floors: dict[str, float] = {}
    grad_bytes: dict[str, int] = {}
    warm_mib: dict[tuple[str, str], float] = {}
    with cfg.progress(spec) as progress:
        for group, params in groups:
            grad_bytes[group], build = load(params)
            cases, by_name = time_group(
                spec, cfg, group, build, progress, catch=catch, error_width=120
            )
            results += by_name.values()
            floor_ms = by_name[floor].median_ms
            if floor_ms:
                floors[group] = floor_ms / 1e3
            measure = functools.partial(
                measure_beyond_grads, module=module, steps=steps, params=params, cfg=cfg,
                grad_bytes=grad_bytes[group], warm_mib=warm_mib,
            )  # fmt: skip
            measure_each(spec, cfg, cases, by_name, progress, measure, skip=(floor,))
            del cases, build
    rows = C.report(results, floors, baseline)
    for row in rows:
        row["warm_mib"] = warm_mib.get((str(row["group"]), str(row["impl"])))
        row.update(row_extra or {})
    C.print_table(rows, baseline=baseline, floor_label="GEMMs", memory_label="MiB beyond grads")
    print("\n" + beyond_grads_line(cfg.device, cfg.memory, grad_bytes, steps=steps, grads=grads))
    status = goals_status(
        spec.name, goals(rows, cfg.device.type), check=args.check, none_because=none_because
    )
    write_outputs(rows, args.out, spec, cfg, floors)
    return status
