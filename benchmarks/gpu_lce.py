"""GPU check and benchmark of losskit's fused linear + cross-entropy (H100, bf16).

Run from the repository root on a CUDA machine::

    PYTHONPATH=src python benchmarks/gpu_lce.py            # check + both goal shapes (< 3 min)
    PYTHONPATH=src python benchmarks/gpu_lce.py --quick    # check + the first shape, fewer reps

Each phase runs in its own subprocess with a timeout, so a failure, crash or hang in one cannot
take the others down:

1. ``check``: the fused CUDA path (cuBLAS GEMMs + Triton epilogues) against a float64 truth on
   the GPU at small shapes: float32 against the reference to a tolerance; bfloat16/float16 to the
   error budget (every element of the loss, ``dX``, ``dW`` and ``db`` no further from the float64
   truth than the plain result in that dtype, plus ``eps * max|truth|``). Cases cover the whole-row
   plan with the float32 ``dW`` accumulator (mixed-precision GEMM), with ``dW`` accumulated in
   bf16 over several chunks, the vocabulary-tiled ``'lean'`` plan, every loss feature, a 128K
   vocabulary (the cross-entropy kernel's cooperative plan) and a second backward.
2. ``bench-<i>``: forward + backward medians (CUDA events) in bfloat16 at the goal shapes:
   the three GEMMs alone (logits, dX, dW: the floor), torch eager with bf16 and fp32 logits,
   losskit default and lean (and torch's ``F.linear_cross_entropy`` chunked path, Liger and Cut
   Cross-Entropy where importable); time, ratio to the GEMMs and peak memory beyond the inputs
   and the returned gradients. Goals: default <= 1.10x with <= 1 GiB; lean <= 1.40x with
   <= 64 MiB.

Results are printed compactly and written to ``$OUT/gpu_lce.csv`` (``bench-out/`` without
``$OUT``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

SHAPES = [(8192, 4096, 128256), (8192, 2304, 256000)]
#: for a smoke test of this script without a GPU: GPU_LCE_DEVICE=cpu GPU_LCE_SHAPES=64,32,1000
DEV = os.environ.get("GPU_LCE_DEVICE", "cuda")
if os.environ.get("GPU_LCE_SHAPES"):
    SHAPES = [tuple(int(a) for a in s.split(",")) for s in os.environ["GPU_LCE_SHAPES"].split(";")]
GOALS = {"losskit-default": (1.10, 1024.0), "losskit-lean": (1.40, 64.0)}
MiB = float(1 << 20)


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------


def _case(
    torch,
    n,
    d,
    v,
    dtype,
    *,
    scale=3.0,
    weight=False,
    ignore=False,
    mask=False,
    bias=False,
    seed=0,
    **options,
):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(n, d, device=DEV, generator=gen).to(dtype)
    w = (torch.randn(v, d, device=DEV, generator=gen) * (scale / d**0.5)).to(dtype)
    y = torch.randint(0, v, (n,), device=DEV, generator=gen)
    if ignore:
        y[::5] = -100
    kw = dict(options)
    if weight:
        kw["weight"] = torch.rand(v, device=DEV, generator=gen) + 0.5
    if mask:
        kw["mask"] = torch.rand(n, device=DEV, generator=gen) > 0.25
    if bias:
        kw["linear_bias"] = torch.randn(v, device=DEV, generator=gen).to(dtype)
    return x, w, y, kw


def _run(torch, fn, x, w, y, kw, upstream=1.0, twice=False):
    leaves = [x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
    kw = dict(kw)
    if kw.get("linear_bias") is not None:
        leaves.append(kw["linear_bias"].detach().clone().requires_grad_())
        kw["linear_bias"] = leaves[2]
    out = fn(leaves[0], leaves[1], y, **kw)
    out.backward(torch.full_like(out, upstream))
    return [out.detach()] + [leaf.grad for leaf in leaves]


def phase_check(quick: bool) -> list[dict]:
    import torch

    import losskit.functional as LF
    from losskit.kernels.chunked import engine as chunked

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    everything = dict(
        weight=True,
        ignore=True,
        mask=True,
        label_smoothing=0.05,
        z_loss=1e-3,
        softcap=20.0,
        bias=True,
    )
    cases = [
        ("f32 rows, 5 chunks", 1061, 520, 32003, f32, dict(chunk_size=256)),
        ("f32 tiled", 1061, 520, 32003, f32, dict(memory_budget=8 << 20)),
        ("bf16 default (fp32 dW acc)", 1061, 520, 32003, bf16, {}),
        (
            "bf16 dW in bf16, 5 chunks",
            1061,
            520,
            32003,
            bf16,
            dict(accumulate="input", chunk_size=256),
        ),
        (
            "bf16 dW in bf16, scale 1",
            1061,
            520,
            32003,
            bf16,
            dict(accumulate="input", chunk_size=256, scale=1.0),
        ),
        ("bf16 lean (tiled)", 1061, 520, 32003, bf16, dict(memory_budget=8 << 20)),
        ("bf16 everything, rows", 1061, 520, 32003, bf16, dict(chunk_size=256, **everything)),
        (
            "bf16 everything, tiled",
            1061,
            520,
            32003,
            bf16,
            dict(memory_budget=8 << 20, **everything),
        ),
        (
            "bf16 V=128256 (coop CE)",
            512,
            256,
            128256,
            bf16,
            dict(accumulate="input", chunk_size=192),
        ),
        ("fp16 rows", 777, 264, 50000, f16, dict(chunk_size=256, ignore=True)),
    ]
    if quick:
        cases = cases[:1] + cases[2:6]
    rows = []
    for name, n, d, v, dtype, opts in cases:
        row = {"phase": "check", "case": name}
        try:
            t0 = time.perf_counter()
            build = {
                k: opts.pop(k)
                for k in list(opts)
                if k in ("scale", "weight", "ignore", "mask", "bias")
            }
            x, w, y, kw = _case(torch, n, d, v, dtype, **build)
            for k in ("label_smoothing", "z_loss", "softcap"):
                if k in opts:
                    kw[k] = opts.pop(k)
            ours = _run(
                torch,
                lambda *a, **k: LF.linear_cross_entropy(*a, impl="fused", **k),
                x,
                w,
                y,
                {**kw, **opts},
            )
            ref = _run(
                torch,
                lambda *a, **k: LF.linear_cross_entropy(*a, impl="reference", **k),
                x,
                w,
                y,
                kw,
            )
            if dtype == f32:
                worst = max(
                    float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                    for a, b in zip(ours, ref, strict=True)
                )
                row.update(metric="max rel err vs reference", value=worst, ok=worst <= 1e-4)
            else:
                wide = {
                    k: (t.double() if torch.is_tensor(t) and t.is_floating_point() else t)
                    for k, t in kw.items()
                }
                truth = _run(
                    torch,
                    lambda *a, **k: LF.linear_cross_entropy(*a, impl="reference", **k),
                    x.double(),
                    w.double(),
                    y,
                    wide,
                )
                eps = torch.finfo(dtype).eps
                excess = []
                for a, lo, t in zip(ours, ref, truth, strict=True):
                    e = ((a.double() - t).abs() - (lo.double() - t).abs()).max()
                    excess.append(float(e / (eps * t.abs().max())))
                row.update(
                    metric="excess over plain / (eps*max), loss,dX,dW[,db]",
                    value=[round(e, 3) for e in excess],
                    ok=max(excess) <= 1.0,
                )
            row["mixed_gemm"] = chunked._MIXED_MM["ok"]
            row["s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:  # noqa: BLE001 - report and go on
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
        print("RESULT " + json.dumps(row), flush=True)
    # a second backward through the same graph must raise, not return scaled-twice gradients
    try:
        x, w, y, _ = _case(torch, 64, 32, 1000, bf16)
        x.requires_grad_()
        loss = LF.linear_cross_entropy(x, w, y)
        loss.backward(retain_graph=True)
        try:
            loss.backward()
            ok = False
        except RuntimeError:
            ok = True
        row = {"phase": "check", "case": "second backward raises", "ok": ok}
    except Exception as exc:  # noqa: BLE001
        row = {
            "phase": "check",
            "case": "second backward raises",
            "ok": False,
            "error": str(exc)[:300],
        }
    rows.append(row)
    print("RESULT " + json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------


def _variants(torch, F, LF):
    def gemms(x, w, y):
        with torch.no_grad():
            z = x @ w.t()
            x_grad = z @ w
            w_grad = z.t() @ x
        return x_grad, w_grad

    def eager(dtype):
        def fn(x, w, y):
            F.cross_entropy(F.linear(x, w).to(dtype), y).backward()

        return fn

    def losskit(**kw):
        def fn(x, w, y):
            LF.linear_cross_entropy(x, w, y, **kw).backward()

        return fn

    out = {
        "gemms": gemms,
        "torch-bf16": eager(torch.bfloat16),
        "torch-fp32": eager(torch.float32),
        "losskit-default": losskit(),
        "losskit-lean": losskit(memory_budget="lean"),
        "losskit-fp32acc": losskit(accumulate="float32"),
    }
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()
        out["torch-lce"] = lambda x, w, y: F.linear_cross_entropy(x, w, y, options=opts).backward()
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        out["liger"] = lambda x, w, y: liger_fused_linear_cross_entropy(x, w, y).backward()
    except Exception:  # noqa: BLE001 - optional peer
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        out["cce"] = lambda x, w, y: cce(x, w, y).backward()
        out["cce-exact"] = lambda x, w, y: cce(x, w, y, filter_eps=None).backward()
    except Exception:  # noqa: BLE001 - optional peer
        pass
    return out


def _timed(torch, call) -> float:
    """Milliseconds of ``call()`` (CUDA events; wall clock on the CPU smoke test)."""
    if DEV != "cuda":
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _peak(torch, call) -> int:
    """Peak bytes allocated by ``call()`` above what was allocated before (0 off CUDA)."""
    if DEV != "cuda":
        call()
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    del result
    return torch.cuda.max_memory_allocated() - base


def phase_bench(index: int, quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    import losskit.functional as LF
    from losskit.kernels.chunked import BUDGETS, plan_chunks

    n, d, v = SHAPES[index]
    dev = DEV
    torch.manual_seed(0)
    x = torch.randn(n, d, device=dev, dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(v, d, device=dev) * d**-0.5 * 3).to(torch.bfloat16).requires_grad_()
    y = torch.randint(0, v, (n,), device=dev)
    grad_bytes = (x.numel() + w.numel()) * 2
    reps = 4 if quick else 8
    rows = []
    plans = {
        k: str(plan_chunks(n, d, v, torch.bfloat16, DEV, budget=BUDGETS[(DEV, k)]))
        for k in ("default", "lean")
    }
    print("PLANS " + json.dumps(plans), flush=True)
    t_gemms = None
    for name, fn in _variants(torch, F, LF).items():
        row = {"phase": f"bench-{index}", "shape": f"{n}x{d}x{v}", "variant": name}
        try:
            for _ in range(2):  # warm up (compiles kernels, allocates workspaces)
                x.grad = w.grad = None
                fn(x, w, y)
            times = []
            for _ in range(reps):
                x.grad = w.grad = None
                times.append(_timed(torch, lambda fn=fn: fn(x, w, y)))
            x.grad = w.grad = None
            peak = _peak(torch, lambda fn=fn: fn(x, w, y))
            ms = sorted(times)[len(times) // 2]
            if name == "gemms":
                t_gemms = ms
            row["extra_mib"] = round((peak - grad_bytes) / MiB, 1)
            row["ms"] = round(ms, 2)
            row["ratio"] = round(ms / t_gemms, 3) if t_gemms else None
            if name in GOALS and t_gemms:
                goal_t, goal_m = GOALS[name]
                row["goal"] = f"<= {goal_t}x, <= {goal_m:g} MiB"
                row["ok"] = row["ratio"] <= goal_t and row["extra_mib"] <= goal_m
        except Exception as exc:  # noqa: BLE001 - report and go on
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            if DEV == "cuda":
                torch.cuda.empty_cache()
        x.grad = w.grad = None
        rows.append(row)
        print("RESULT " + json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def _child(phase: str, quick: bool, timeout: float) -> list[dict]:
    cmd = [sys.executable, __file__, "--phase", phase] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, rc = f"timed out after {timeout:.0f} s", "timeout"
    rows = []
    for line in out.splitlines():
        if line.startswith("RESULT "):
            rows.append(json.loads(line[7:]))
        elif line.startswith("PLANS "):
            print(f"  plans: {line[6:]}")
    if rc != 0:
        rows.append({"phase": phase, "error": f"exit {rc}: {err.strip()[-600:]}"})
    print(f"  [{phase}: {time.perf_counter() - t0:.0f} s]", flush=True)
    return rows


def _show(row: dict) -> str:
    if "error" in row:
        return f"{row.get('case', row.get('variant', row['phase']))}: ERROR {row['error']}"
    if row["phase"] == "check":
        value = row.get("value", "")
        return f"{'ok  ' if row['ok'] else 'FAIL'} {row['case']}: {row.get('metric', '')} {value}"
    goal = f"  goal {row['goal']}: {'ok' if row['ok'] else 'MISSED'}" if "goal" in row else ""
    ratio = f"{row['ratio']:.3f}x" if row.get("ratio") else "  -   "
    return f"{row['variant']:16s} {row['ms']:8.2f} ms  {ratio}  {row['extra_mib']:9.1f} MiB{goal}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="check subset, first shape, fewer reps")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "check":
        phase_check(args.quick)
        return 0
    if args.phase and args.phase.startswith("bench-"):
        phase_bench(int(args.phase.split("-")[1]), args.quick)
        return 0

    all_rows = []
    print("== check: fused CUDA path vs float64 truth")
    rows = _child("check", args.quick, 80)
    for row in rows:
        print("  " + _show(row))
    all_rows += rows
    for i, (n, d, v) in enumerate(SHAPES[:1] if args.quick else SHAPES):
        print(
            f"== bench bf16 N={n} D={d} V={v} (fwd+bwd median; ratio to the three GEMMs; "
            "extra = peak beyond inputs and gradients)"
        )
        rows = _child(f"bench-{i}", args.quick, 60)
        for row in rows:
            print("  " + _show(row))
        all_rows += rows
    out_dir = os.environ.get("OUT") or "bench-out"
    os.makedirs(out_dir, exist_ok=True)
    keys = sorted({k for row in all_rows for k in row})
    with open(os.path.join(out_dir, "gpu_lce.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in all_rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )
    failed = [r for r in all_rows if "error" in r or r.get("ok") is False]
    print(f"== {len(all_rows)} rows, {len(failed)} failed or missed; CSV in {out_dir}/gpu_lce.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
