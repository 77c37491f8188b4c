"""``losskit bench lce``: linear + cross-entropy (hidden states ``x``, head ``W``), side by side.

Forward+backward of ``cross_entropy(x @ W.T, y)`` with ``x`` ``(N, D)``, ``W`` ``(V, D)``, all
implementations in one run on the same inputs (peers only when importable, never vendored):

- ``three GEMMs``: the logits, ``dX`` and ``dW`` GEMMs alone (``6 N D V`` flops): the practical
  floor of any exact implementation; the ratios are to its median in the same run;
- ``torch eager``: ``F.cross_entropy(F.linear(x, W), y)`` (logits in the input dtype) and, for
  low precision, ``torch eager, fp32 logits`` (``.float()`` first, what many scripts do);
- ``torch linear_cross_entropy``: torch's chunked path (``options=LinearCrossEntropyOptions()``),
  where the installed torch has it;
- ``losskit default`` / ``losskit lean``: :func:`losskit.functional.linear_cross_entropy` with
  ``memory_budget='default'`` / ``'lean'``;
- on CUDA, when installed: Liger's fused linear cross-entropy, and Cut Cross-Entropy with its
  default (gradient filtering: approximate) and exact (``filter_eps=None``) settings.

Columns: median and min ms, MiB beyond the gradients, ratio to the three GEMMs and to torch
eager. Memory on the CPU is measured as a user's process sees it (:data:`MEMORY_STEPS` training
steps in a fresh process per implementation, from the first call on: the peak resident set above
the size once the inputs exist, minus the ``dX`` and ``dW`` it returns); the ``warm_mib`` column
of the CSV (and the note) is one more step measured alone, what a warm process still sees.
Goals printed at the end: on the CPU (2 cores, float32, 4096 x 1024 x 32000) losskit default
<= 1.15x the three GEMMs with <= 64 MiB beyond the gradients; on CUDA (bf16) default <= 1.10x
with <= 1 GiB, lean <= 1.40x with <= 64 MiB.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _command as cmd
from . import _common as C

IMPLS = {
    "gemms": "three GEMMs",
    "torch": "torch eager",
    "torch-float": "torch eager, fp32 logits",
    "torch-lce": "torch linear_cross_entropy",
    "default": "losskit default",
    "lean": "losskit lean",
    "liger": "liger fused linear CE",
    "cce": "cut cross-entropy (filtering)",
    "cce-exact": "cut cross-entropy, exact",
}
FLOOR = IMPLS["gemms"]
BASELINE = IMPLS["torch"]
#: (device, implementation key) -> (max ratio to the three GEMMs, max MiB beyond the gradients)
GOALS = {
    ("cpu", "default"): (1.15, 64.0),
    ("cuda", "default"): (1.10, 1024.0),
    ("cuda", "lean"): (1.40, 64.0),
}
#: Training steps (``.grad = None``, forward, backward) of the CPU memory measurement.
MEMORY_STEPS = 4


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"N,D,V"`` -> ``(N, D, V)`` for argparse."""
    try:
        n, d, v = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D,V (three integers), got {text!r}") from None
    if min(n, d, v) < 1:
        raise argparse.ArgumentTypeError(f"expected N, D, V >= 1, got {text!r}")
    return n, d, v


SPEC = cmd.Spec(
    name="lce",
    impls=IMPLS,
    shapes={"cpu": [(4096, 1024, 32000)], "cuda": [(8192, 4096, 128256), (8192, 2304, 256000)]},
    quick_shapes={"cpu": [(512, 256, 8000)], "cuda": [(2048, 1024, 32000)]},
    repeats={"cpu": 3, "cuda": 10, "quick": 2},
    warmup=(1, 1),
    floor_key="gemms",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench lce``."""
    cmd.add_options(
        parser,
        SPEC,
        parse_shape=parse_shape,
        metavar="N,D,V",
        dtype_help="dtype of x and W (default: float32 on cpu, bfloat16 on cuda)",
        shape_help="tokens, hidden size, classes; repeat for several (default: cpu "
        "4096,1024,32000; cuda 8192,4096,128256 and 8192,2304,256000; --quick: cpu 512,256,8000, "
        "cuda 2048,1024,32000)",
        impls_default="default: all that apply",
        memory_help="CPU peak memory: a fresh process per implementation, from its first call "
        f"over {MEMORY_STEPS} steps, as a user's process sees it (default); one warm call in this "
        "process (--quick's default); or not at all. CUDA always measures in this process",
        quick_help="small default shape, 2 repeats",
    )


# --------------------------------------------------------------------------------------------
# the implementations
# --------------------------------------------------------------------------------------------


def applies(key: str, device: str, dtype: torch.dtype) -> str:
    """'' when implementation ``key`` applies to this device and dtype, else why not."""
    if key == "torch-float" and dtype == torch.float32:
        return "x and W are float32 already: same as torch eager"
    if key == "torch-lce" and not (
        hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")
    ):
        return f"torch {torch.__version__} has no F.linear_cross_entropy"
    peer = {"liger": "liger_kernel", "cce": "cut_cross_entropy", "cce-exact": "cut_cross_entropy"}
    if key in peer:
        if device != "cuda":
            return f"{peer[key]} runs on CUDA only"
        if importlib.util.find_spec(peer[key]) is None:
            return f"{peer[key]} is not installed"
    return ""


def inputs(params: dict) -> tuple[Tensor, Tensor, Tensor]:
    """x ``(N, D)`` N(0, 1), W ``(V, D)`` scaled so the logits have std 3, targets; seeded."""
    device = torch.device(params["device"])
    dtype = cmd.DTYPES[params["dtype"]]
    gen = torch.Generator(device=device).manual_seed(params.get("seed", 0))
    n, d, v = params["n"], params["d"], params["v"]
    x = torch.randn(n, d, generator=gen, device=device).to(dtype)
    w = (torch.randn(v, d, generator=gen, device=device) * (3.0 / d**0.5)).to(dtype)
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    return x, w, y


def _loss_fn(key: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    import losskit.functional as LF

    if key == "torch":
        return lambda x, w, y: F.cross_entropy(F.linear(x, w), y)
    if key == "torch-float":
        return lambda x, w, y: F.cross_entropy(F.linear(x, w).float(), y)
    if key == "torch-lce":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, y: F.linear_cross_entropy(x, w, y, options=options)
    if key == "default":
        return lambda x, w, y: LF.linear_cross_entropy(x, w, y)
    if key == "lean":
        return lambda x, w, y: LF.linear_cross_entropy(x, w, y, memory_budget="lean")
    if key == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda x, w, y: liger_fused_linear_cross_entropy(x, w, y)
    if key in ("cce", "cce-exact"):
        from cut_cross_entropy import linear_cross_entropy as cce

        if key == "cce":
            return lambda x, w, y: cce(x, w, y)
        return lambda x, w, y: cce(x, w, y, filter_eps=None)
    raise KeyError(key)


def build(key: str, x0: Tensor, w0: Tensor, y: Tensor) -> C.Case:
    """The :class:`Case` of implementation ``key`` on these inputs."""
    name = IMPLS[key]
    if key == "gemms":
        return cmd.gemm_floor(name, x0, w0)
    x = x0.detach().requires_grad_()
    w = w0.detach().requires_grad_()
    fn = _loss_fn(key)

    def prepare() -> None:
        x.grad = w.grad = None

    def step() -> None:
        fn(x, w, y).backward()

    note = {"cce": "approximate gradients (filtered)", "liger": "", "cce-exact": ""}.get(key, "")
    return C.Case(name, step, prepare, note)


def make_case(key: str, params: dict) -> C.Case:
    """For the memory child process: implementation ``key`` on fresh inputs from ``params``."""
    x, w, y = inputs(params)
    return build(key, x, w, y)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _plans_line(n: int, d: int, v: int, dtype: torch.dtype, device: torch.device) -> str:
    from ..kernels.chunked import BUDGETS, plan_chunks

    parts = []
    for setting in ("default", "lean"):
        budget = BUDGETS[("cuda" if device.type == "cuda" else "cpu", setting)]
        p = plan_chunks(n, d, v, dtype, device.type, budget=budget)
        tiles = "" if p.whole_rows(v) else f", vocabulary tiles of {p.tile}"
        parts.append(f"{setting}: chunks of {p.rows} rows{tiles}, dW accumulated in {p.accumulate}")
    return "losskit plans: " + "; ".join(parts)


def goals(rows: list[dict[str, object]], device: str) -> list[cmd.Goal]:
    """The :data:`GOALS` of the implementations in ``rows`` that were timed on ``device``."""
    out = []
    for row in rows:
        key = next((k for k, name in IMPLS.items() if name == row["impl"]), None)
        goal = GOALS.get((device, key))
        ratio = row["x_floor"]
        if goal is None or ratio is None:
            continue
        beyond = row["extra_mib"]
        ok_t = ratio <= goal[0]
        ok_m = beyond is None or beyond <= goal[1]
        mem = "memory not measured" if beyond is None else f"{beyond:.0f} MiB beyond gradients"
        out.append(
            cmd.Goal(
                f"{row['impl']} ({row['group']}): <= {goal[0]}x GEMMs and <= {goal[1]:g} MiB",
                f"{ratio:.3f}x, {mem}",
                ok_t and ok_m,
            )
        )
    return out


def run(args: argparse.Namespace) -> int:
    cfg = cmd.settings(args, SPEC)
    if cfg is None:
        return 2
    print(cmd.device_line(cfg.device))
    cmd.drop_skipped(cfg, SPEC, applies)
    for n, d, v in cfg.shapes:
        print(f"N={n} D={d} V={v}: " + _plans_line(n, d, v, cfg.dtype, cfg.device))

    def load(params: dict) -> tuple[int, Callable[[str], C.Case]]:
        x, w, y = inputs(params)
        return cmd.grad_bytes(x, w), functools.partial(build, x0=x, w0=w, y=y)

    groups = [
        (f"N={n} D={d} V={v} {cfg.dtype_name} {cfg.device.type}",
         dict(n=n, d=d, v=v, dtype=cfg.dtype_name, device=args.device, seed=0))
        for n, d, v in cfg.shapes
    ]  # fmt: skip
    # a peer that fails to load is reported; a call that fails stops the bench
    return cmd.run_head_groups(
        SPEC, cfg, args, groups, load, module=__name__, floor=FLOOR, baseline=BASELINE,
        steps=MEMORY_STEPS, grads="dX and dW", catch=False, goals=goals,
        none_because="goals are set for "
        + ", ".join(f"{IMPLS[k]} on {d}" for d, k in GOALS) + " only",
    )  # fmt: skip
