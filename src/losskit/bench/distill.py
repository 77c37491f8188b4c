"""``losskit bench distill``: a distillation step from two linear heads, side by side.

Forward+backward of the divergence between a student's logits ``xs @ Ws.T`` and a teacher's
``xt @ Wt.T`` (``xs``, ``xt``: ``(N, D)``; ``Ws``, ``Wt``: ``(V, D)``), the student's hidden
states and head requiring grad, the teacher's not. The loss is, per row, the generalized JSD
``beta KL(p || m) + (1 - beta) KL(q || m)`` (``p`` the teacher's and ``q`` the student's
softmax, ``m = beta p + (1 - beta) q``) at ``beta = 0.5``, temperature 1 and scale 1, averaged
over the rows: Liger-Kernel's ``LigerFusedLinearJSD`` with its defaults. ``--divergence`` and
``--beta`` choose another (``forward_kl``, ``reverse_kl``, ``tvd``). All implementations run in
one process on the same inputs (peers only when importable, never vendored):

- ``four GEMMs``: the student's logits, ``dX`` and ``dW`` GEMMs and the teacher's logits GEMM
  alone, into preallocated outputs (``8 N D V`` flops): the practical floor of any exact
  implementation; the ratios are to its median in the same run;
- ``torch eager``: ``F.linear`` for each head (the teacher's under ``torch.no_grad()``), the
  logits taken to float32 (a no-op for float32 inputs), ``log_softmax`` of both, the mixture's
  log by ``logaddexp``, per-row sums and their mean;
- ``torch.compile``: the same function under ``torch.compile`` (inductor, static shapes); its
  first call, the compilation, runs while the case is built, untimed, and is reported in the
  note (``--quick`` leaves it out unless named in ``--impls``);
- ``losskit default`` / ``losskit lean``: :func:`losskit.functional.linear_distillation_loss`
  with ``soft_scale=1`` and ``memory_budget='default'`` / ``'lean'``;
- on CUDA, when installed: Liger's ``LigerFusedLinearJSD`` (the JSD only).

Columns and memory as ``losskit bench lce``: median and min ms, MiB beyond the gradients (on the
CPU the peak resident set of a fresh process per implementation over :data:`MEMORY_STEPS`
training steps from its first call, above its size once the inputs exist, minus the returned
``dXs`` and ``dWs``; the CSV's ``warm_mib`` is one more step alone), the ratio to the four GEMMs
and to torch eager. Goals printed at the end (:data:`GOALS`): losskit default <= 1.3x the four
GEMMs with <= 128 MiB beyond the gradients on the CPU, <= 1.3x with <= 1 GiB on CUDA; lean on
CUDA <= 1.6x with <= 64 MiB.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _command as cmd
from . import _common as C

IMPLS = {
    "gemms": "four GEMMs",
    "torch": "torch eager",
    "compile": "torch.compile",
    "default": "losskit default",
    "lean": "losskit lean",
    "liger": "liger fused linear JSD",
}
FLOOR = IMPLS["gemms"]
BASELINE = IMPLS["torch"]
DIVERGENCES = ("jsd", "forward_kl", "reverse_kl", "tvd")
#: (device, implementation key) -> (max ratio to the four GEMMs, max MiB beyond the gradients)
GOALS = {
    ("cpu", "default"): (1.3, 128.0),
    ("cuda", "default"): (1.3, 1024.0),
    ("cuda", "lean"): (1.6, 64.0),
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


def parse_beta(text: str) -> float:
    """``--beta``: a number in [0, 1]."""
    try:
        beta = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= beta <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= beta <= 1, got {text!r}")
    return beta


SPEC = cmd.Spec(
    name="distill",
    impls=IMPLS,
    shapes={"cpu": [(2048, 1024, 32000)], "cuda": [(2048, 1024, 32000), (8192, 4096, 128256)]},
    quick_shapes={"cpu": [(256, 128, 4000)], "cuda": [(2048, 1024, 32000)]},
    repeats={"cpu": 3, "cuda": 10, "quick": 2},
    warmup=(1, 1),
    quick_leaves_out=("compile",),
    floor_key="gemms",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench distill``."""
    cmd.add_options(
        parser,
        SPEC,
        parse_shape=parse_shape,
        metavar="N,D,V",
        dtype_help="dtype of both heads' hidden states and weights (default: float32 on cpu, "
        "bfloat16 on cuda)",
        shape_help="tokens, hidden size (of both heads), classes; repeat for several (default: "
        "cpu 2048,1024,32000; cuda 2048,1024,32000 and 8192,4096,128256; --quick: cpu "
        "256,128,4000, cuda 2048,1024,32000)",
        impls_default="default: all that apply; --quick leaves out compile",
        memory_help="CPU peak memory: a fresh process per implementation, from its first call "
        f"over {MEMORY_STEPS} steps, as a user's process sees it (default); one warm call in this "
        "process (--quick's default); or not at all. CUDA always measures in this process",
        quick_help="small default shape, 2 repeats, no torch.compile",
    )
    parser.add_argument(
        "--divergence",
        choices=DIVERGENCES,
        default="jsd",
        help="the divergence (default jsd: Liger's fused linear JSD)",
    )
    parser.add_argument(
        "--beta",
        type=parse_beta,
        default=0.5,
        help="the JSD's beta in [0, 1] (0 and 1: the forward and the reverse KL; default 0.5)",
    )


# --------------------------------------------------------------------------------------------
# the implementations
# --------------------------------------------------------------------------------------------


def applies(key: str, device: str, dtype: torch.dtype, divergence: str = "jsd") -> str:
    """'' when implementation ``key`` applies to this device, dtype and divergence, else why
    not."""
    if key == "liger":
        if device != "cuda":
            return "liger_kernel runs on CUDA only"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger_kernel is not installed"
        if divergence != "jsd":
            return f"it computes the JSD only, not {divergence}"
    return ""


def inputs(params: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xs, xt ``(N, D)`` N(0, 1); Ws, Wt ``(V, D)`` scaled so the logits have std 3; seeded."""
    device = torch.device(params["device"])
    dtype = cmd.DTYPES[params["dtype"]]
    gen = torch.Generator(device=device).manual_seed(params.get("seed", 0))
    n, d, v = params["n"], params["d"], params["v"]

    def draw(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    xs, ws = draw(n, d), draw(v, d, scale=3.0 / d**0.5)
    xt, wt = draw(n, d), draw(v, d, scale=3.0 / d**0.5)
    return xs, ws, xt, wt


def torch_distillation(
    xs: Tensor, ws: Tensor, xt: Tensor, wt: Tensor, *, divergence: str, beta: float
) -> Tensor:
    """The loss in plain torch ops: both heads' logits, float32 log-probabilities, row means."""
    zs = F.linear(xs, ws).float()
    with torch.no_grad():
        zt = F.linear(xt, wt).float()
    ls = torch.log_softmax(zs, dim=-1)
    lt = torch.log_softmax(zt, dim=-1)
    if divergence == "jsd" and beta in (0.0, 1.0):  # the limits, as defined by Liger and losskit
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence == "forward_kl":
        rows = (lt.exp() * (lt - ls)).sum(-1)
    elif divergence == "reverse_kl":
        rows = (ls.exp() * (ls - lt)).sum(-1)
    elif divergence == "jsd":
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))  # log of the mixture
        to_teacher = (lt.exp() * (lt - lm)).sum(-1)
        to_student = (ls.exp() * (ls - lm)).sum(-1)
        rows = beta * to_teacher + (1.0 - beta) * to_student
    else:
        rows = 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)
    return rows.mean().to(xs.dtype)


def _loss_fn(key: str, divergence: str, beta: float) -> Callable[..., Tensor]:
    """``fn(xs, ws, xt, wt) -> loss`` of implementation ``key``."""
    import losskit.functional as LF

    if key in ("torch", "compile"):
        fn = functools.partial(torch_distillation, divergence=divergence, beta=beta)
        return fn if key == "torch" else torch.compile(fn, dynamic=False)
    if key in ("default", "lean"):
        return functools.partial(
            LF.linear_distillation_loss, divergence=divergence, beta=beta, soft_scale=1.0,
            memory_budget=key,
        )  # fmt: skip
    if key == "liger":
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

        liger = LigerFusedLinearJSD(jsd_beta=beta, ignore_index=-100, temperature=1.0)
        return lambda xs, ws, xt, wt: liger(xs, ws, xt, wt, None)
    raise KeyError(key)


def build(
    key: str,
    xs0: Tensor,
    ws0: Tensor,
    xt: Tensor,
    wt: Tensor,
    *,
    divergence: str = "jsd",
    beta: float = 0.5,
) -> C.Case:
    """The :class:`Case` of implementation ``key`` on these inputs."""
    name = IMPLS[key]
    if key == "gemms":
        # outputs allocated once: the floor is the arithmetic, not first-touch page faults
        zs = torch.empty(xs0.shape[0], ws0.shape[0], dtype=xs0.dtype, device=xs0.device)
        zt = torch.empty_like(zs)
        dx, dw = torch.empty_like(xs0), torch.empty_like(ws0)

        def gemms() -> None:
            with torch.no_grad():
                torch.mm(xt, wt.t(), out=zt)
                torch.mm(xs0, ws0.t(), out=zs)
                torch.mm(zs, ws0, out=dx)
                torch.mm(zs.t(), xs0, out=dw)

        note = "both heads' logits, dXs, dWs into preallocated outputs: the floor"
        return C.Case(name, gemms, None, note)
    xs = xs0.detach().requires_grad_()
    ws = ws0.detach().requires_grad_()
    fn = _loss_fn(key, divergence, beta)

    def prepare() -> None:
        xs.grad = ws.grad = None

    def step() -> None:
        fn(xs, ws, xt, wt).backward()

    case = C.Case(name, step, prepare)
    if key == "compile":  # the compilation: in the set-up, untimed
        prepare()
        start = time.perf_counter()
        step()
        C.synchronize(xs.device)
        case.first_call_s = time.perf_counter() - start
        case.note = f"first call {case.first_call_s:.1f} s (compilation included)"
        prepare()
    return case


def make_case(key: str, params: dict) -> C.Case:
    """For the memory child process: implementation ``key`` on fresh inputs from ``params``."""
    xs, ws, xt, wt = inputs(params)
    options = {"divergence": params.get("divergence", "jsd"), "beta": params.get("beta", 0.5)}
    return build(key, xs, ws, xt, wt, **options)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _plans_line(n: int, d: int, v: int, dtype: torch.dtype, device: torch.device) -> str:
    from ..kernels.chunked import budget_bytes, plan_pairs

    parts = []
    for setting in ("default", "lean"):
        budget = budget_bytes(setting, device.type, pairs=True)
        p = plan_pairs(n, d, v, dtype, device.type, budget=budget)
        parts.append(
            f"{setting}: chunks of {p.rows} rows of both heads, dW accumulated in {p.accumulate}"
        )
    return "losskit plans: " + "; ".join(parts)


def _loss_line(divergence: str, beta: float) -> str:
    if divergence == "jsd":
        what = f"generalized JSD, beta={beta:g}"
        if beta == 0.5:
            what += " (Liger's LigerFusedLinearJSD default)"
    else:
        what = divergence
    return f"loss: {what}, temperature 1, scale 1, mean over the rows"


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
    print(_loss_line(args.divergence, args.beta))
    cmd.drop_skipped(cfg, SPEC, functools.partial(applies, divergence=args.divergence))
    if args.quick and not args.impls:
        print(
            "skipped torch.compile in --quick (its first call compiles for many seconds); "
            "name it with --impls to include it"
        )
    for n, d, v in cfg.shapes:
        print(f"N={n} D={d} V={v}: " + _plans_line(n, d, v, cfg.dtype, cfg.device))

    options = {"divergence": args.divergence, "beta": args.beta}

    def load(params: dict) -> tuple[int, Callable[[str], C.Case]]:
        xs, ws, xt, wt = inputs(params)
        make = functools.partial(build, xs0=xs, ws0=ws, xt=xt, wt=wt, **options)
        return cmd.grad_bytes(xs, ws), make

    groups = [
        (f"N={n} D={d} V={v} {cfg.dtype_name} {cfg.device.type}",
         dict(n=n, d=d, v=v, dtype=cfg.dtype_name, device=args.device, seed=0, **options))
        for n, d, v in cfg.shapes
    ]  # fmt: skip
    # a peer (or torch.compile) that fails to build or to run is reported in its row
    return cmd.run_head_groups(
        SPEC, cfg, args, groups, load, module=__name__, floor=FLOOR, baseline=BASELINE,
        steps=MEMORY_STEPS, grads="dXs and dWs", catch=True, goals=goals,
        none_because="goals are set for "
        + ", ".join(f"{IMPLS[k]} on {d}" for d, k in GOALS) + " only",
        row_extra=options,
    )  # fmt: skip
