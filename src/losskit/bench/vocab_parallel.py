"""``losskit bench vocab-parallel``: vocabulary-parallel cross-entropy against gathering the logits.

Spawns ``--world`` gloo processes on loopback (a file store in a temporary folder). Each holds a
near-even slice of the classes of the same ``N x V`` logits and runs, side by side (interleaved
round by round, every call between two barriers):

- ``vocab-parallel``: :func:`losskit.distributed.vocab_parallel_cross_entropy` (row statistics
  cross the network; the backward has no communication);
- ``all-gather + CE``: all-gather the logits (slices padded to one width, as ``all_gather``
  needs), cross-entropy on the full ``N x V`` on every rank, each rank keeps its gradient slice;
- ``loss_parallel (DTensor)``: torch's ``torch.distributed.tensor.parallel.loss_parallel()``
  and ``F.cross_entropy`` on the logits as a DTensor sharded on the classes (``Shard(1)`` on a
  1-D mesh; DTensor's own split of the classes). Not run with ``--label-smoothing`` (torch's
  loss_parallel does not support it);
- ``vocab-parallel (DTensor)``: :func:`~losskit.distributed.vocab_parallel_cross_entropy` on
  that same DTensor.

Reported per method: forward+backward times (each round's slowest rank), and the bytes per row
that one rank hands to the collectives, counted from the collectives actually issued, next to
the bytes a ring algorithm sends for them and the analytic count of ``docs/distributed.md``. The
worker wraps ``torch.distributed``'s functions (losskit's collectives) and those of
``torch.distributed._functional_collectives`` (DTensor's and loss_parallel's: they call the
functional collectives, not ``torch.distributed.all_reduce``). Every method's loss must agree
(exit code 1 if not). Goals printed at the end: each method hands the collectives the bytes per
row of that count (``--check`` exits 1 when one does not). ``--out DIR`` writes
``vocab_parallel.csv`` (times) and ``vocab_parallel_bytes.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import _command as cmd
from . import _common as C

GATHER = "all-gather + CE"
VOCAB_PARALLEL = "vocab-parallel"
LOSS_PARALLEL = "loss_parallel (DTensor)"
DTENSOR = "vocab-parallel (DTensor)"
METHODS = (VOCAB_PARALLEL, DTENSOR, LOSS_PARALLEL, GATHER)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
DEFAULT_SHAPE = (2048, 32000)
QUICK_SHAPE = (256, 4096)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench vocab-parallel``."""
    parser.add_argument(
        "--shape",
        type=C.parse_shape,
        default=None,
        metavar="N,V",
        help=f"tokens and classes (default {DEFAULT_SHAPE[0]},{DEFAULT_SHAPE[1]}; --quick "
        f"{QUICK_SHAPE[0]},{QUICK_SHAPE[1]})",
    )
    parser.add_argument("--world", type=int, default=2, help="gloo processes (default 2)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="> 0 adds the weighted logit sum to the exchanged row statistics",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per method (default 10; --quick 3)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for vocab_parallel.csv and _bytes.csv"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before the processes are killed"
    )
    parser.add_argument("--quick", action="store_true", help="small default shape, 3 repeats")
    cmd.add_check_option(parser)


# --------------------------------------------------------------------------------------------
# inputs and bytes
# --------------------------------------------------------------------------------------------


def inputs(n: int, v: int, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The full logits ``(N, V)`` and targets every rank builds (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, v, generator=gen).to(DTYPES[dtype])
    return logits, torch.randint(0, v, (n,), generator=gen)


def split(v: int, world: int) -> list[tuple[int, int]]:
    """(start, size) of each rank's near-even slice, in rank order."""
    sizes = [v // world + (r < v % world) for r in range(world)]
    return [(sum(sizes[:r]), sizes[r]) for r in range(world)]


def methods(label_smoothing: float) -> tuple[str, ...]:
    """The methods a run compares (torch's loss_parallel takes no label smoothing)."""
    return tuple(m for m in METHODS if not (m == LOSS_PARALLEL and label_smoothing > 0))


def analytic_bytes_per_row(n: int, v: int, world: int, dtype: str, smoothing: bool) -> dict:
    """Bytes one rank hands to collectives per row, from the formulas."""
    stat = 8 if dtype == "float64" else 4  # row statistics: float32, float64 for float64 logits
    # MAX of the row maxima; SUM of (sumexp, target logit[, smoothing sum]); the 10-integer
    # all_gather of every call, amortized over the rows
    losskit = (1 + 2 + int(smoothing)) * stat + 10 * 8 / n
    return {
        VOCAB_PARALLEL: losskit,
        DTENSOR: losskit,  # the same call: from_local / to_local move nothing
        # three all_reduces of (N, 1) in its compute dtype (float32 for bfloat16): the row
        # maxima (MAX), the sum of exponentials and the target's log-probability (SUM)
        LOSS_PARALLEL: 3 * stat,
        # this rank's slice of every row, padded to the widest slice
        GATHER: math.ceil(v / world) * DTYPES[dtype].itemsize,
    }


def ring_bytes(kind: str, nbytes: int, world: int) -> float:
    """Bytes one rank sends for a collective of ``nbytes`` per rank under a ring algorithm."""
    if kind == "all_reduce":
        return 2 * (world - 1) / world * nbytes
    return (world - 1) * nbytes  # all_gather: every other rank's part passes through once


# --------------------------------------------------------------------------------------------
# the worker (one process per rank)
# --------------------------------------------------------------------------------------------


class CollectiveCounter:
    """Wraps the collectives to record what this rank hands them: ``torch.distributed``'s
    all_reduce / all_gather (losskit's), and the functional collectives of
    ``torch.distributed._functional_collectives`` (DTensor's and loss_parallel's, which never
    call ``torch.distributed.all_reduce``; they look the functions up on that module at call
    time, so the wrapping sees them)."""

    #: (module, function, kind, which argument is this rank's tensor)
    WRAPPED = (
        ("dist", "all_reduce", "all_reduce", 0),
        ("dist", "all_gather", "all_gather", 1),
        ("dist", "all_gather_into_tensor", "all_gather", 1),
        ("funcol", "all_reduce", "all_reduce", 0),
        ("funcol", "all_gather_tensor", "all_gather", 0),
        ("funcol", "reduce_scatter_tensor", "reduce_scatter", 0),
        ("funcol", "all_to_all_single", "all_to_all", 0),
        ("funcol", "broadcast", "broadcast", 0),
    )

    def __init__(self, dist) -> None:
        import torch.distributed._functional_collectives as funcol

        self.modules = {"dist": dist, "funcol": funcol}
        self.records: list[tuple[str, int]] = []
        self._originals: list[tuple[object, str, object]] = []

    def __enter__(self) -> CollectiveCounter:
        for module, name, kind, arg in self.WRAPPED:
            owner = self.modules[module]
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._wrap(kind, arg, original))
        return self

    def _wrap(self, kind: str, arg: int, original):
        def wrapped(*args, **kwargs):
            tensor = args[arg]
            self.records.append((kind, tensor.numel() * tensor.element_size()))
            return original(*args, **kwargs)

        return wrapped

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()


def _worker(rank: int, world: int, store: str, out: str, config: dict) -> None:
    import torch.distributed as dist

    import losskit.functional as LF
    from losskit.distributed import vocab_parallel_cross_entropy

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    n, v, eps = config["n"], config["v"], config["label_smoothing"]
    names = methods(eps)
    logits, target = inputs(n, v, config["dtype"])
    layout = split(v, world)
    start, size = layout[rank]
    width = max(s for _, s in layout)
    shard = logits[:, start : start + size].contiguous()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    mesh = init_device_mesh("cpu", (world,))
    sharded = distribute_tensor(logits, mesh, [Shard(1)], src_data_rank=None)  # DTensor's split
    del logits
    state: dict = {}

    def vocab_parallel() -> None:
        x = shard.clone().requires_grad_(True)
        loss = vocab_parallel_cross_entropy(x, target, label_smoothing=eps)
        loss.backward()
        state[VOCAB_PARALLEL] = float(loss)

    def gather_then_ce() -> None:
        x = shard.clone().requires_grad_(True)
        padded = torch.nn.functional.pad(x.detach(), (0, width - size))
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        full = torch.cat([p[:, :s] for p, (_, s) in zip(parts, layout, strict=True)], dim=1)
        full.requires_grad_(True)
        loss = LF.cross_entropy(full, target, label_smoothing=eps, impl="reference")
        loss.backward()
        x.backward(full.grad[:, start : start + size])  # each rank keeps its slice
        state[GATHER] = float(loss)

    def dtensor_vocab_parallel() -> None:
        x = sharded.detach().requires_grad_(True)
        loss = vocab_parallel_cross_entropy(x, target, label_smoothing=eps)
        loss.backward()
        state[DTENSOR] = float(loss.to_local())

    def torch_loss_parallel() -> None:
        x = sharded.detach().requires_grad_(True)
        with loss_parallel():
            loss = torch.nn.functional.cross_entropy(x, target)
            loss.backward()
        state[LOSS_PARALLEL] = float(loss.to_local())

    def step(fn):
        def run_and_wait() -> None:
            fn()
            dist.barrier()  # the round ends when the slowest rank is done

        return run_and_wait

    fns = {VOCAB_PARALLEL: vocab_parallel, DTENSOR: dtensor_vocab_parallel,
           LOSS_PARALLEL: torch_loss_parallel, GATHER: gather_then_ce}  # fmt: skip
    counted = {}
    for name in names:
        with CollectiveCounter(dist) as counter:
            fns[name]()
        counted[name] = counter.records
    cases = [
        C.Case(name, step(fns[name]), prepare=dist.barrier)  # every call starts together
        for name in names
    ]
    times = C.time_cases(cases, device="cpu", repeats=config["repeats"], warmup=config["warmup"])
    dist.barrier()
    dist.destroy_process_group()
    result = {name: {"times": times[name], "loss": state[name], "collectives": counted[name]}
              for name in names}  # fmt: skip
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def measure(
    n: int,
    v: int,
    *,
    world: int = 2,
    dtype: str = "float32",
    repeats: int = 10,
    warmup: int = 1,
    label_smoothing: float = 0.0,
    timeout: float = 600.0,
    progress: C.Progress | None = None,
) -> list[dict]:
    """Run the ranks; return one row per method (each rank's timings, bytes per row, loss)."""
    config = {"n": n, "v": v, "dtype": dtype, "repeats": repeats, "warmup": warmup,
              "label_smoothing": label_smoothing}  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    with tempfile.TemporaryDirectory(prefix="losskit-bench-vp-") as tmp:
        root = Path(tmp)
        procs = []
        try:
            for rank in range(world):
                cmd = [sys.executable, "-m", "losskit.bench.vocab_parallel", "--worker",
                       str(rank), str(world), str(root / "store"), str(root / f"r{rank}.json"),
                       json.dumps(config)]  # fmt: skip
                with open(root / f"r{rank}.log", "w") as log:
                    procs.append(
                        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                    )
            deadline = time.monotonic() + timeout
            for rank, proc in enumerate(procs):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(
                        f"bench rank {rank} of {world} did not finish within {timeout:g} s"
                    ) from None
                if progress is not None:
                    progress.update(f"rank {rank}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        for rank, proc in enumerate(procs):
            if proc.returncode != 0:
                tail = (root / f"r{rank}.log").read_text()[-3000:]
                raise RuntimeError(f"bench rank {rank} exited with {proc.returncode}:\n{tail}")
        ranks = [json.loads((root / f"r{r}.json").read_text()) for r in range(world)]

    analytic = analytic_bytes_per_row(n, v, world, dtype, label_smoothing > 0)
    rows = []
    for name in methods(label_smoothing):
        per_rank = [r[name] for r in ranks]
        mine = per_rank[0]["collectives"]
        rows.append({
            "impl": name,
            "times_s": [max(ts) for ts in zip(*(m["times"] for m in per_rank), strict=True)],
            "collectives": len(mine),
            "handed_bytes_per_row": sum(b for _, b in mine) / n,
            "ring_sent_bytes_per_row": sum(ring_bytes(k, b, world) for k, b in mine) / n,
            "analytic_bytes_per_row": analytic[name],
            "loss": per_rank[0]["loss"],
            "losses_on_ranks": [m["loss"] for m in per_rank],
        })  # fmt: skip
    return rows


def goals(rows: list[dict]) -> list[cmd.Goal]:
    """Each method hands the collectives the bytes per row of docs/distributed.md's count."""
    out = []
    for r in rows:
        handed, analytic = r["handed_bytes_per_row"], r["analytic_bytes_per_row"]
        met = math.isclose(handed, analytic, rel_tol=1e-9)
        what = f"{r['impl']} hands {analytic:.2f} B/row (docs/distributed.md)"
        out.append(cmd.Goal(what, f"{handed:.2f} B/row", met))
    return out


def run(args: argparse.Namespace) -> int:
    """``losskit bench vocab-parallel``: print the comparison tables (and write CSV)."""
    n, v = args.shape or (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else 1
    if args.world < 1:
        print("losskit bench vocab-parallel: --world must be >= 1", file=sys.stderr)
        return 2
    group = f"N={n} V={v} {args.dtype} cpu, {args.world} gloo processes"
    print(f"vocab-parallel cross-entropy, {group}; fwd+bwd, each round's slowest rank")
    with C.Progress(args.world, "bench vocab-parallel") as progress:
        rows = measure(n, v, world=args.world, dtype=args.dtype, repeats=repeats, warmup=warmup,
                       label_smoothing=args.label_smoothing, timeout=args.timeout,
                       progress=progress)  # fmt: skip

    results = [C.Result(group, r["impl"], times_s=r["times_s"]) for r in rows]
    table = C.report(results, {}, GATHER)
    C.print_table(table, baseline=GATHER)

    base = next(r for r in rows if r["impl"] == GATHER)["handed_bytes_per_row"]
    for r in rows:
        r["x_gather_bytes"] = r["handed_bytes_per_row"] / base
    header = ["implementation", "collectives", "B/row handed", "B/row sent (ring)",
              "B/row analytic", "x all-gather bytes"]  # fmt: skip
    cells = [[r["impl"], str(r["collectives"]), f"{r['handed_bytes_per_row']:.2f}",
              f"{r['ring_sent_bytes_per_row']:.2f}", f"{r['analytic_bytes_per_row']:.2f}",
              f"{r['x_gather_bytes']:.5f}"] for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("\nbytes per row (token), one rank, forward+backward:")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))

    losses = [loss for r in rows for loss in r["losses_on_ranks"]]
    agree = max(losses) - min(losses) <= 1e-4 * max(1.0, abs(losses[0]))
    print(
        f"\nlosses agree on every rank and method: {agree} ({min(losses):.6f}..{max(losses):.6f})"
    )

    if args.out is not None:
        meta = {"bench": "vocab-parallel", "device": "cpu", "dtype": args.dtype,
                "world": args.world}  # fmt: skip
        C.write_csv(table, args.out / "vocab_parallel.csv", meta)
        fields = ["impl", "collectives", "handed_bytes_per_row", "ring_sent_bytes_per_row",
                  "analytic_bytes_per_row", "x_gather_bytes", "loss"]  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "vocab_parallel_bytes.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["n", "v", "world", "dtype", *fields])
            writer.writeheader()
            for r in rows:
                writer.writerow({"n": n, "v": v, "world": args.world, "dtype": args.dtype,
                                 **{k: r[k] for k in fields}})  # fmt: skip
        print(f"wrote {args.out / 'vocab_parallel.csv'} and vocab_parallel_bytes.csv")
    status = cmd.goals_status("vocab-parallel", goals(rows), check=args.check)
    return status if agree else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m losskit.bench.vocab_parallel``: the command, or (internal) one worker rank."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        rank, world, store, out, config = argv[1:6]
        _worker(int(rank), int(world), store, out, json.loads(config))
        return 0
    parser = argparse.ArgumentParser(prog="losskit bench vocab-parallel", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
