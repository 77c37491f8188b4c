"""GPU check and benchmark of the fused Triton cross-entropy (every launch plan, side by side).

Run on a CUDA machine from the repository root::

    PYTHONPATH=src python benchmarks/gpu_ce_kernel.py           # all (< 3.5 min on an H100)
    PYTHONPATH=src python benchmarks/gpu_ce_kernel.py --quick   # one shape, fewer plans

It runs each case in its own subprocess with a timeout, so one failure, crash or hang (the
cooperative plan spins on other programs) cannot take the others down:

1. ``check-*``: every feature (weight, ignore_index, label smoothing, reductions, normalizer,
   mask, z_loss, softcap, inplace) of every plan against a float64 plain-torch formula on the GPU,
   float32 to a tolerance and bfloat16 to an error budget (no further from the float64 truth than
   torch's own bfloat16 result, plus a little); the cooperative plan must equal the two-launch
   ``split`` plan bit for bit; and one ``N x V > 2**31`` batch (64-bit row offsets).
2. ``bench-*``: forward + backward medians (``triton.testing.do_bench``) in bfloat16 at the goal
   shapes, against the floor (a device-to-device copy of the logits: one read + one write of
   N*V*2 bytes, measured in the same process) and torch eager ``F.cross_entropy``; prints the
   ratio to the floor and the peak memory above the inputs, and writes a CSV to
   ``$OUT/gpu_ce_kernel.csv`` (``bench-out/`` when ``$OUT`` is unset).

Plans: ``rowloop`` (one program per row, two reads), ``single`` (the row held in one program),
``coop`` (S programs per row holding a chunk each, exchanging online-softmax partials; one read),
``split`` (the coop math in two launches), ``auto`` (what ``losskit`` uses).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

GOAL_SHAPES = [(8192, 128256, 1.25), (4096, 256000, 1.25), (16384, 32000, 1.15)]
DEV = "cuda"
#: (N, V) of the feature checks, and V of the coop == split check
CHECK_SHAPES = [(48, 4097), (64, 32003), (32, 128256)]
BITWISE_VOCABS = (32003, 128256, 256000)

#: (label, plan, plan options) timed at each shape; coop variants run in their own subprocess
#: (registers per thread and programs per SM from `python tests/kernels/sm90.py`, triton 3.9:
#: 8K/w16 and 4K/w8 hold 16 values per thread in ~55-60 registers, two or four programs per SM;
#: 8K/w8 and 16K/w16 hold 32 in ~93-96; 32K/w32 spills, so it is not timed)
BENCH_PLANS = [
    ("rowloop", "rowloop", {}),
    ("single-32K/w32", "single", {"num_warps": 32}),
    ("coop-4K/w8", "coop", {"chunk_max": 4096, "num_warps": 8}),
    ("coop-8K/w8", "coop", {"chunk_max": 8192}),
    ("coop-8K/w16", "coop", {"chunk_max": 8192, "num_warps": 16}),
    ("coop-16K/w16", "coop", {"chunk_max": 16384}),
    ("auto", "auto", {}),
]


# --------------------------------------------------------------------------------------------
# shared helpers (imported lazily: the parent process only spawns and prints)
# --------------------------------------------------------------------------------------------


def _imports():
    global torch, F, ce, launch_plans, triton
    import torch
    import torch.nn.functional as F
    import triton

    import losskit.kernels.triton.cross_entropy as ce
    import losskit.kernels.triton.plans as launch_plans

    return torch, F, ce, triton


DEFAULTS = dict(
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    reduction="mean",
    normalizer=None,
    mask=None,
    inplace_backward=False,
    return_z_loss=False,
)


def reference(logits, target, **kw):
    """The contract's formula in plain torch (float64 in, float64 out)."""
    a = {**DEFAULTS, **kw}
    z = logits
    v = z.shape[1]
    if a["softcap"] is not None:
        z = a["softcap"] * torch.tanh(z / a["softcap"])
    lse = z.logsumexp(1)
    w = torch.ones(v, dtype=z.dtype, device=z.device) if a["weight"] is None else a["weight"]
    w = w.to(z.dtype)
    valid = target != a["ignore_index"]
    if a["mask"] is not None:
        valid = valid & a["mask"]
    t = torch.where(valid, target, 0)
    eps = a["label_smoothing"]
    rows = (1 - eps) * w[t] * (lse - z.gather(1, t[:, None])[:, 0])
    rows = rows + eps / v * ((lse[:, None] - z) * w).sum(1) + a["z_loss"] * lse**2
    rows = torch.where(valid, rows, 0)
    if a["reduction"] == "none":
        return rows
    if a["reduction"] == "sum":
        return rows.sum()
    if a["normalizer"] is not None:
        d = a["normalizer"].to(rows.dtype)
        return torch.where(d != 0, rows.sum() / d, torch.zeros_like(d))
    return rows.sum() / (w[t] * valid).sum()


def lowp(logits, target, **kw):
    """torch in the logits' dtype: F.cross_entropy where it has the arguments, else the formula."""
    a = {**DEFAULTS, **kw}
    w = None if a["weight"] is None else a["weight"].to(logits.dtype)
    if a["z_loss"] == 0 and a["softcap"] is None and a["mask"] is None and a["normalizer"] is None:
        return F.cross_entropy(
            logits, target, weight=w, ignore_index=a["ignore_index"],
            label_smoothing=a["label_smoothing"], reduction=a["reduction"],
        )  # fmt: skip
    return reference(logits, target, **{**kw, "weight": w})


def fwd_bwd(fn, logits, target, upstream=None, **kw):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x, target, **kw)
    up = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (g,) = torch.autograd.grad(out, x, up)
    return out.detach(), g


def feature_cases(n, v, dev):
    gen = torch.Generator(device=dev).manual_seed(1)
    w = torch.rand(v, generator=gen, device=dev) + 0.1
    mask = torch.rand(n, generator=gen, device=dev) > 0.25
    return {
        "plain-mean": dict(),
        "weight+smooth-sum": dict(weight=w, label_smoothing=0.1, reduction="sum"),
        "z+cap+mask-none": dict(z_loss=1e-3, softcap=15.0, mask=mask, reduction="none"),
        "everything-mean": dict(
            weight=w,
            label_smoothing=0.2,
            z_loss=1e-2,
            softcap=10.0,
            mask=mask,
            normalizer=torch.tensor(7.0, device=dev),
            reduction="mean",
        ),  # fmt: skip
    }


def compare(out, grad, logits, target, kw, upstream):
    """Worst error of (loss, grad) relative to its allowance; <= 1 passes."""
    kw64 = {
        k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in kw.items()
    }
    t_out, t_grad = fwd_bwd(reference, logits.double(), target, upstream, **kw64)
    worst = 0.0
    if logits.dtype == torch.float32:
        for a, b in ((out, t_out), (grad, t_grad)):
            if a.numel():
                ratio = (a.double() - b).abs() / (2e-5 + 2e-5 * b.abs())
                worst = max(worst, ratio.max().item())
        return worst
    l_out, l_grad = fwd_bwd(lowp, logits, target, upstream, **kw)
    ulp = torch.finfo(logits.dtype).eps
    for a, b, c in ((out, l_out, t_out), (grad, l_grad, t_grad)):
        if a.numel() == 0:
            continue
        ours = (a.double() - c).abs().max().item()
        theirs = (b.double() - c).abs().max().item()
        allowance = theirs + 2 * ulp * c.abs().max().item() + 1e-30
        worst = max(worst, ours / allowance)
    return worst


# --------------------------------------------------------------------------------------------
# cases (run in a subprocess)
# --------------------------------------------------------------------------------------------


def case_check(coop_only: bool) -> None:
    dev = DEV
    torch.manual_seed(0)
    shapes = CHECK_SHAPES
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        for n, v in shapes:
            logits = (torch.randn(n, v, device=dev) * 4).to(dtype)
            target = torch.randint(0, v, (n,), device=dev)
            target[1] = -100
            # plans that may spin (coop, and auto on long rows) run in their own subprocess
            plans = ["coop", "auto"] if coop_only else ["rowloop", "split"]
            if v <= launch_plans.SINGLE_LIMIT and not coop_only:
                plans.append("single")
            cases = feature_cases(n, v, dev)
            if dtype == torch.float32:  # keep the number of compiled variants down
                cases = {k: cases[k] for k in ("plain-mean", "everything-mean")}
            for kind in plans:
                chunks = launch_plans.make_plan(v, torch.device(dev), "split").chunks
                if kind == "coop" and chunks < 2:
                    continue
                worst_case, worst = "", 0.0
                t0 = time.perf_counter()
                for name, kw in cases.items():
                    up = None
                    if kw.get("reduction") == "none":
                        up = torch.rand(n, device=dev, dtype=torch.float64) + 0.5
                    run = ce.cross_entropy_with_plan
                    out, grad = fwd_bwd(run, logits, target, up, plan=kind, **{**DEFAULTS, **kw})
                    r = compare(out, grad, logits, target, kw, up)
                    r = r if r == r else float("inf")  # NaN fails
                    if r > worst:
                        worst_case, worst = name, r
                ok = worst <= 1.0
                failures += not ok
                print(
                    f"check {str(dtype)[6:]:8s} N={n:<3d} V={v:<6d} {kind:8s} "
                    f"{'PASS' if ok else 'FAIL'} worst err/allowance={worst:.3f} "
                    f"{worst_case} ({time.perf_counter() - t0:.1f}s)",
                    flush=True,
                )
    if coop_only:
        # the cooperative plan must reproduce the two-launch split plan bit for bit
        for v in BITWISE_VOCABS:
            n = 64
            logits = (torch.randn(n, v, device=dev) * 4).to(torch.bfloat16)
            target = torch.randint(0, v, (n,), device=dev)
            kw = {**DEFAULTS, **feature_cases(n, v, dev)["everything-mean"]}
            res = {}
            for kind in ("coop", "split"):
                res[kind] = fwd_bwd(ce.cross_entropy_with_plan, logits, target, plan=kind, **kw)
            same = torch.equal(res["coop"][0], res["split"][0]) and torch.equal(
                res["coop"][1], res["split"][1]
            )
            failures += not same
            print(f"check coop == split bitwise, V={v}: {'PASS' if same else 'FAIL'}", flush=True)
        # inplace: gradient lands in the logits, other users of the logits raise
        logits = (torch.randn(16, 128256, device=dev)).to(torch.bfloat16)
        target = torch.randint(0, 128256, (16,), device=dev)
        _, g_ref = fwd_bwd(ce.cross_entropy_with_plan, logits, target, **DEFAULTS)
        x = logits.clone().requires_grad_(True)
        h = x * 1.0
        loss = ce.cross_entropy_with_plan(h, target, **{**DEFAULTS, "inplace_backward": True})
        (gx,) = torch.autograd.grad(loss, x)
        same = torch.equal(gx, g_ref) and torch.equal(h.detach(), g_ref)
        x = logits.float().clone().requires_grad_(True)
        h = x.tanh()  # tanh saves h for its backward
        loss = ce.cross_entropy_with_plan(h, target, **{**DEFAULTS, "inplace_backward": True})
        try:
            (loss + (h * h).sum()).backward()
            raised = False
        except RuntimeError:
            raised = True
        failures += not (same and raised)
        verdict = "PASS" if same and raised else "FAIL"
        print(f"check inplace (grad in logits, version bump raises): {verdict}", flush=True)
    print(f"check done: {failures} failure(s)", flush=True)


def case_check_big(n: int = 16800, v: int = 128256) -> None:
    """N x V > 2**31 elements (4.3 GB of bf16 logits): 64-bit row offsets."""
    dev = DEV
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(n, v, device=dev, dtype=torch.bfloat16, generator=gen)
    target = torch.randint(0, v, (n,), device=dev, generator=gen)
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1], device=dev)
    x_r = logits[rows].float().requires_grad_(True)
    ref = F.cross_entropy(x_r, target[rows], reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), x_r)
    for kind in ("auto", "rowloop", "split"):
        plan = launch_plans.make_plan(v, torch.device(dev), kind)
        x = logits.requires_grad_(True)
        out = ce.cross_entropy_with_plan(x, target, plan=kind, **{**DEFAULTS, "reduction": "none"})
        (g,) = torch.autograd.grad(out.sum(), x)
        # float32 math rounded once to bfloat16: within one bf16 ulp (2**-7 relative) of torch's
        # float32 result on the same rows
        err_l = ((out[rows].float() - ref).abs().max() / ref.abs().max()).item()
        err_g = ((g[rows].float() - g_ref).abs().max() / g_ref.abs().max()).item()
        ok = err_l <= 2**-7 and err_g <= 2**-7
        print(
            f"check N*V={n * v / 2**31:.2f}*2^31 {kind}({plan.kind}) "
            f"{'PASS' if ok else 'FAIL'} rel. loss err={err_l:.2e} grad err={err_g:.2e}",
            flush=True,
        )
        del out, g, x
        logits.requires_grad_(False)
        torch.cuda.empty_cache()


def _bench(fn, reps_ms=200):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=reps_ms, return_mode="median")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_extra_mib(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def case_bench(n: int, v: int, labels: list[str]) -> None:
    dev = DEV
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(n, v, device=dev, dtype=torch.bfloat16, generator=gen)
    logits.requires_grad_(True)
    target = torch.randint(0, v, (n,), device=dev, generator=gen)
    dst = torch.empty_like(logits)
    floor = _bench(lambda d=dst: d.copy_(logits.detach()))
    del dst
    gbps = 2 * n * v * 2 / floor / 1e6
    print(f"bench N={n} V={v} floor (copy) {floor:.3f} ms = {gbps:.0f} GB/s", flush=True)
    _row(n, v, "floor", floor, floor, float("nan"))

    def timed(label, fn):
        try:
            fn()  # compile / warm up
            _sync()
            ms = _bench(fn)
            mib = _peak_extra_mib(fn)
            print(
                f"bench N={n} V={v} {label:16s} {ms:7.3f} ms  {ms / floor:5.2f}x floor  "
                f"extra {mib:6.0f} MiB",
                flush=True,
            )
            _row(n, v, label, ms, floor, mib)
        except Exception as exc:  # one plan failing must not stop the others
            msg = f"bench N={n} V={v} {label:16s} ERROR {type(exc).__name__}: {exc}"
            print(msg[:300], flush=True)

    for label in labels:
        if label == "torch":

            def eager():
                return torch.autograd.grad(F.cross_entropy(logits, target), logits)

            timed("torch eager", eager)
            continue
        _, kind, opts = next(p for p in BENCH_PLANS if p[0] == label)
        if kind == "single" and v > launch_plans.SINGLE_LIMIT:
            continue
        plan = launch_plans.make_plan(v, torch.device(dev), kind, **opts)
        kw = {**DEFAULTS, **opts}

        def run(kind=kind, kw=kw):
            out = ce.cross_entropy_with_plan(logits, target, plan=kind, **kw)
            return torch.autograd.grad(out, logits)

        timed(f"{label}", run)
        print(
            f"    plan: {plan.kind} S={plan.chunks} block={plan.block} warps={plan.num_warps}",
            flush=True,
        )


_CSV_ROWS: list[list[object]] = []


def _row(n, v, label, ms, floor, mib):
    path = os.path.join(os.environ.get("OUT") or "bench-out", "gpu_ce_kernel.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["N", "V", "impl", "ms", "floor_ms", "ratio", "extra_mib", "gpu"])
        w.writerow([n, v, label, f"{ms:.4f}", f"{floor:.4f}", f"{ms / floor:.3f}", f"{mib:.0f}",
                    _device_name()])  # fmt: skip


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else DEV


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def _cases(quick: bool) -> list[tuple[str, int]]:
    """(case argument, timeout seconds) in run order."""
    out = [("check-coop", 60)]
    shapes = GOAL_SHAPES[:1] if quick else GOAL_SHAPES
    for n, v, _ in shapes:
        # plans that cannot spin, then (in a second subprocess: a hang there loses only those)
        # the cooperative variants and auto, which is coop for rows longer than SINGLE_MAX
        safe = ["torch", "rowloop"] + (["single-32K/w32"] if v <= 32768 else [])
        # auto is coop-16K/w16 at these shapes (its plan is printed), so that one is not repeated
        coops = ["coop-8K/w16", "auto"]
        if not quick:
            coops[:0] = ["coop-4K/w8", "coop-8K/w8"]
        out.append((f"bench:{n}:{v}:{','.join(safe)}", 60))
        out.append((f"bench:{n}:{v}:{','.join(coops)}", 60))
    out.append(("check", 90))
    if not quick:
        out.append(("check-big", 45))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help="run one case in this process (used by the driver)")
    ap.add_argument("--quick", action="store_true", help="one shape, one coop variant")
    ap.add_argument("--budget", type=float, default=210.0, help="seconds for all cases")
    args = ap.parse_args()

    if args.case:
        _imports()
        if not torch.cuda.is_available():
            print(f"{args.case}: SKIP (no CUDA device)")
            return
        if args.case == "check":
            case_check(coop_only=False)
        elif args.case == "check-coop":
            case_check(coop_only=True)
        elif args.case == "check-big":
            case_check_big()
        elif args.case.startswith("bench:"):
            _, n, v, labels = args.case.split(":")
            case_bench(int(n), int(v), labels.split(","))
        else:
            raise SystemExit(f"unknown case {args.case!r}")
        return

    start = time.perf_counter()
    coop_hung = False
    for case, timeout in _cases(args.quick):
        left = args.budget - (time.perf_counter() - start)
        if left < 10:
            print(f"[{case}] SKIPPED: time budget spent")
            continue
        if coop_hung and ("coop" in case or "auto" in case):
            print(f"[{case}] SKIPPED: the cooperative plan timed out in check-coop")
            continue
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--case", case],
                capture_output=True, text=True, timeout=min(timeout, left),
            )  # fmt: skip
            text, status = res.stdout, f"exit {res.returncode}"
            if res.returncode != 0:
                text += "\n".join(res.stderr.strip().splitlines()[-6:])
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            text, status = out, f"TIMEOUT after {timeout:.0f}s (hang?)"
            coop_hung = coop_hung or case == "check-coop"
        print(text.rstrip())
        print(f"[{case}] {status} in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"total {time.perf_counter() - start:.0f}s")
    _summary()


def _summary() -> None:
    """Per goal shape: the fastest plan of the CSV rows, its ratio to the floor, and the goal."""
    path = os.path.join(os.environ.get("OUT") or "bench-out", "gpu_ce_kernel.csv")
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["impl"] not in ("floor", "torch eager")]
    for n, v, goal in GOAL_SHAPES:
        mine = [r for r in rows if (int(r["N"]), int(r["V"])) == (n, v)]
        if not mine:
            print(f"summary N={n} V={v}: not measured (goal <= {goal}x floor)")
            continue
        best = min(mine, key=lambda r: float(r["ratio"]))
        auto = next((r for r in mine if r["impl"] == "auto"), None)
        auto_txt = f", auto {float(auto['ratio']):.2f}x" if auto else ""
        verdict = "meets" if float(best["ratio"]) <= goal else "MISSES"
        print(
            f"summary N={n} V={v}: best {best['impl']} {float(best['ratio']):.2f}x floor"
            f"{auto_txt}; goal <= {goal}x: {verdict}"
        )


if __name__ == "__main__":
    main()
