"""Machinery shared by the ``losskit bench`` commands.

- :func:`time_cases`: forward+backward timings of several implementations, interleaved round by
  round (so that a change in machine load hits them all alike), after warm-up calls, with the
  device synchronised around each call.
- Peak extra memory (:func:`peak_extra_bytes`, :func:`peak_extra_bytes_in_subprocess`): on CUDA
  ``torch.cuda.max_memory_allocated`` above the allocation before the call; on the CPU the growth
  of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above
  its size before the call, best measured in a fresh process per implementation. Both are taken
  after the inputs exist and the previous call's gradients were freed, so they include the
  gradients the call returns. :func:`user_peak_bytes_in_subprocess` measures as a user's own
  process sees it instead: a fresh process, no warm-up, the peak over several training steps
  above the size once the inputs exist (first-call code pages and allocator pools included).
- :func:`copy_floor`: the time of one device copy of the logits (one read and one write of that
  many bytes), measured in the same run: the floor of any cross-entropy that reads the logits and
  writes their gradient.
- :class:`Progress` (tqdm when installed), :func:`report` (ratios), :func:`print_table`,
  :func:`write_csv` and :func:`write_png` (matplotlib when installed).

A bench module provides ``make_case(name, params) -> Case`` so that a child process can build
one implementation's inputs by name for the memory measurement.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

MIB = float(1 << 20)


@dataclass
class Case:
    """One implementation on one input: ``step`` runs forward+backward once.

    ``prepare`` runs before every step, untimed: it frees the previous gradients and restores
    inputs that an in-place implementation overwrote.
    """

    name: str
    step: Callable[[], object]
    prepare: Callable[[], None] | None = None
    note: str = ""
    #: seconds of the first call (compilation), when the implementation compiles
    first_call_s: float | None = None


@dataclass
class Result:
    """Timings and memory of one implementation on one input."""

    group: str  # the input, e.g. "N=4096 V=32000 float32 cpu"
    impl: str
    times_s: list[float] = field(default_factory=list)
    extra_bytes: int | None = None
    note: str = ""
    error: str = ""

    @property
    def median_ms(self) -> float | None:
        return 1e3 * statistics.median(self.times_s) if self.times_s else None

    @property
    def min_ms(self) -> float | None:
        return 1e3 * min(self.times_s) if self.times_s else None


def parse_shape(text: str) -> tuple[int, int]:
    """``"N,V"`` -> ``(N, V)`` for argparse."""
    try:
        n, v = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,V (two integers), got {text!r}") from None
    if n < 1 or v < 1:
        raise argparse.ArgumentTypeError(f"expected N >= 1 and V >= 1, got {text!r}")
    return n, v


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: tqdm when installed, else a plain counter line."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(self, label: str = "", n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(n)
        elif sys.stderr.isatty() or self.done == self.total:
            end = "\n" if self.done >= self.total else ""
            print(f"\r{self.desc}: {self.done}/{self.total} {label:<40}", end=end, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def time_cases(
    cases: Sequence[Case],
    *,
    device: torch.device | str,
    repeats: int,
    warmup: int,
    progress: Progress | None = None,
    errors: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Seconds per forward+backward of each case, round-robin over the cases for each repeat.

    A call that raises propagates, unless ``errors`` is given: then the case's error message goes
    there, the case is dropped and the others go on.
    """
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    live = list(cases)
    for rep in range(warmup + repeats):
        for case in list(live):
            try:
                if case.prepare is not None:
                    case.prepare()
                synchronize(device)
                start = time.perf_counter()
                case.step()
                synchronize(device)
                elapsed = time.perf_counter() - start
            except Exception as exc:
                if errors is None:
                    raise
                errors[case.name] = describe_error(exc)
                live.remove(case)
                if progress is not None:
                    progress.update(case.name, warmup + repeats - rep)
                continue
            if rep >= warmup:
                times[case.name].append(elapsed)
            if progress is not None:
                progress.update(case.name)
    for case in live:  # free the last gradients
        if case.prepare is not None:
            case.prepare()
    return times


def describe_error(exc: BaseException, width: int = 160) -> str:
    """``failed: Type: first line of the message`` (its first ``width`` characters)."""
    first = (str(exc).strip().splitlines() or [""])[0][:width]
    return f"failed: {type(exc).__name__}: {first}"


def copy_floor(nbytes: int, device: torch.device | str, repeats: int = 7) -> float:
    """Median seconds of one copy of ``nbytes`` between two device buffers (read + write)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages of the destination
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set (VmHWM) to the current size; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def peak_extra_bytes(case: Case, device: torch.device | str) -> int | None:
    """Peak memory of one ``case.step()`` above what was allocated before it (None: unknown).

    One warm-up step first (compilation, allocator caches); the gradients of both steps are freed
    by ``case.prepare`` before the next, so the figure includes the returned gradients once.
    """
    device = torch.device(device)
    if case.prepare is not None:
        case.prepare()
    case.step()  # warm-up
    if case.prepare is not None:
        case.prepare()  # frees the warm-up's gradients
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        case.step()
        synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - base
    else:
        if not _reset_peak_rss():
            return None
        base = _proc_status_kib("VmRSS")
        case.step()
        peak = _proc_status_kib("VmHWM")
        if base is None or peak is None:
            return None
        extra = (peak - base) * 1024
    if case.prepare is not None:
        case.prepare()
    return max(int(extra), 0)


def _child_figures(measure: str, spec: dict, timeout: float) -> tuple[object, str]:
    """Run :func:`memory_child` in a fresh process: ``measure`` of ``spec``'s case.

    The child gets this checkout on its path and this process's thread count. Returns (the
    figures the child printed, or None with an error message).
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "from losskit.bench._common import memory_child; raise SystemExit(memory_child())"
    payload = json.dumps({**spec, "measure": measure, "threads": torch.get_num_threads()})
    try:
        run = subprocess.run(
            [sys.executable, "-c", code, payload],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"memory measurement timed out after {timeout:.0f} s"
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"memory child failed: {last}"
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])[measure], ""
    except (ValueError, IndexError, KeyError):
        return None, f"memory child printed {run.stdout[-200:]!r}"


def memory_child() -> int:
    """Entry point of the child process of the ``*_in_subprocess`` measurements.

    ``sys.argv[1]`` is the JSON spec: the bench module and implementation to build with its
    ``make_case``, the params, the thread count and the measurement (``extra_bytes`` for
    :func:`peak_extra_bytes`, ``user`` for :func:`user_peak_bytes`).
    """
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    module = importlib.import_module(spec["module"])
    case = module.make_case(spec["name"], spec["params"])
    if spec["measure"] == "user":
        figures = user_peak_bytes(case, spec["steps"])
    else:
        figures = peak_extra_bytes(case, spec["params"]["device"])
    print(json.dumps({spec["measure"]: figures}))
    return 0


def peak_extra_bytes_in_subprocess(
    module: str, name: str, params: dict, *, timeout: float = 900.0
) -> tuple[int | None, str]:
    """:func:`peak_extra_bytes` of ``module.make_case(name, params)`` in a fresh process.

    Returns (bytes or None, an error message or '').
    """
    spec = {"module": module, "name": name, "params": params}
    return _child_figures("extra_bytes", spec, timeout)


def user_peak_bytes(case: Case, steps: int = 4) -> dict[str, int] | None:
    """Peak resident memory of ``steps`` training steps, as the user's own process sees it.

    No warm-up: measured from the process's size once the inputs exist (VmRSS), the peak over
    all the steps (VmHWM, reset first), ``case.prepare`` before each step (it sets ``.grad`` to
    None, as ``zero_grad()`` does). So it includes what the first call pages in or builds
    lazily, allocator pools kept between calls, and the gradients held at the peak. Then one
    more step, measured alone above the size before it (as :func:`peak_extra_bytes`), shows
    the part that a warm process no longer sees. Returns ``{"peak": bytes, "warm": bytes}``,
    or None where ``/proc/self/clear_refs`` is not available.
    """
    if not _reset_peak_rss():
        return None
    base = _proc_status_kib("VmRSS")
    for _ in range(steps):
        if case.prepare is not None:
            case.prepare()
        case.step()
    peak = _proc_status_kib("VmHWM")
    if case.prepare is not None:
        case.prepare()
    _reset_peak_rss()
    warm_base = _proc_status_kib("VmRSS")
    case.step()
    warm_peak = _proc_status_kib("VmHWM")
    if case.prepare is not None:
        case.prepare()
    if None in (base, peak, warm_base, warm_peak):
        return None
    return {"peak": (peak - base) * 1024, "warm": max(warm_peak - warm_base, 0) * 1024}


def user_peak_bytes_in_subprocess(
    module: str, name: str, params: dict, *, steps: int = 4, timeout: float = 900.0
) -> tuple[dict[str, int] | None, str]:
    """:func:`user_peak_bytes` of ``module.make_case(name, params)`` in a fresh process.

    Returns (the figures or None, an error message or '').
    """
    spec = {"module": module, "name": name, "params": params, "steps": steps}
    figures, error = _child_figures("user", spec, timeout)
    if error:
        return None, error
    if figures is None:
        return None, "peak resident memory is not measurable here (no /proc/self/clear_refs)"
    return figures, ""


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------

COLUMNS = ("group", "impl", "median_ms", "min_ms", "extra_mib", "x_floor", "x_baseline", "note")


def report(
    results: Sequence[Result], floors_s: dict[str, float], baseline: str
) -> list[dict[str, object]]:
    """One row per result: times, MiB, and the ratios to the group's floor and baseline impl."""
    base_ms = {r.group: r.median_ms for r in results if r.impl == baseline}
    rows = []
    for r in results:
        floor = floors_s.get(r.group)
        med = r.median_ms
        ref = base_ms.get(r.group)
        rows.append(
            {
                "group": r.group,
                "impl": r.impl,
                "median_ms": med,
                "min_ms": r.min_ms,
                "extra_mib": None if r.extra_bytes is None else r.extra_bytes / MIB,
                "x_floor": med / (1e3 * floor) if med is not None and floor else None,
                "x_baseline": med / ref if med is not None and ref else None,
                "note": "; ".join(filter(None, [r.note, r.error])),
            }
        )
    return rows


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(
    rows: Sequence[dict[str, object]],
    *,
    baseline: str,
    floor_label: str = "floor",
    memory_label: str = "extra MiB",
    file=None,
) -> None:
    """Print the rows group by group, aligned; ratios are of medians."""
    out = file or sys.stdout
    header = ["implementation", "median ms", "min ms", memory_label, f"x {floor_label}"]
    header += [f"x {baseline}", "note"]
    groups: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(str(row["group"]), []).append(row)
    for group, members in groups.items():
        table = [
            [
                str(r["impl"]),
                _fmt(r["median_ms"]),
                _fmt(r["min_ms"]),
                _fmt(r["extra_mib"], 0),
                _fmt(r["x_floor"]),
                _fmt(r["x_baseline"]),
                str(r["note"]),
            ]
            for r in members
        ]
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        print(f"\n{group}", file=out)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for t in table:
            cells = [
                c.rjust(w) if 0 < i < 6 else c.ljust(w)
                for i, (c, w) in enumerate(zip(t, widths, strict=True))
            ]
            print("  ".join(cells).rstrip(), file=out)


def write_csv(rows: Sequence[dict[str, object]], path: Path, extra: dict[str, object]) -> None:
    """Rows as CSV, each with the ``extra`` columns (bench, device, dtype, ...) in front."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(extra) + list(COLUMNS)
    own = dict.fromkeys(k for row in rows for k in row if k not in fields)
    fields += list(own)  # a bench's own columns, after the shared ones
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**extra, **{k: ("" if v is None else v) for k, v in row.items()}})


def write_png(
    rows: Sequence[dict[str, object]], path: Path, *, title: str, floors_ms: dict[str, float]
) -> str:
    """A bar chart of the median times per group, the floor dashed; returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    groups: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        if row["median_ms"] is not None:
            groups.setdefault(str(row["group"]), []).append(row)
    if not groups:
        return "no timings to chart"
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(9, 1.2 + 0.45 * max(len(m) for m in groups.values()) * len(groups)),
        squeeze=False,
    )
    for ax, (group, members) in zip(axes[:, 0], groups.items(), strict=True):
        names = [str(r["impl"]) for r in members][::-1]
        values = [float(r["median_ms"]) for r in members][::-1]  # type: ignore[arg-type]
        bars = ax.barh(names, values, color="#4c72b0")
        for bar, r in zip(bars, members[::-1], strict=True):
            label = f" {bar.get_width():.1f} ms"
            if r["x_floor"] is not None:
                label += f" ({r['x_floor']:.1f}x floor)"
            ax.text(
                bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8
            )
        floor = floors_ms.get(group)
        if floor:
            ax.axvline(floor, color="k", linestyle="--", linewidth=1, label=f"floor {floor:.1f} ms")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("forward+backward, median ms")
        ax.set_xlim(0, max(values) * 1.45)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def write_outputs(
    rows: Sequence[dict[str, object]],
    out: Path,
    name: str,
    meta: dict[str, object],
    floors_s: dict[str, float],
) -> None:
    """``out/<name>.csv`` and the chart ``out/<name>.png``, saying what was written."""
    write_csv(rows, out / f"{name}.csv", meta)
    print(f"wrote {out / f'{name}.csv'}")
    floors_ms = {group: 1e3 * floor for group, floor in floors_s.items()}
    print(write_png(rows, out / f"{name}.png", title=f"losskit bench {meta['bench']}",
                    floors_ms=floors_ms))  # fmt: skip
