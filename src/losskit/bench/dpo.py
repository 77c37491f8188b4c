"""``losskit bench dpo``: a DPO step from the policy's hidden states and head, side by side.

Forward+backward of TRL's DPO loss (``loss_type='sigmoid'``, ``beta = 0.1``) of ``P`` pairs of
``T``-token sequences laid out as TRL lays them out (``2P`` sequences, the chosen answers
first), the first quarter of each sequence a prompt (``-100``, not counted), the reference
model's sequence log-probabilities precomputed (TRL's ``precompute_ref_log_probs``). The hidden
states ``(2P, T, D)`` and the head ``(V, D)`` require grad. All implementations run in one
process on the same inputs:

- ``three GEMMs``: the logits ``x @ W.T``, ``dX = G @ W`` and ``dW = G.T @ x`` of the
  ``N = 2 P T`` rows into preallocated outputs (``6 N D V`` flops): the floor of any exact
  implementation; the ratios are to its median in the same run;
- ``torch eager``: the plain form a TRL user runs: the full logits (float32), ``log_softmax``,
  the targets' log-probabilities gathered, masked and summed per sequence, the DPO loss;
- ``torch.compile``: the same under ``torch.compile`` (first call untimed, reported);
- ``losskit default`` / ``losskit lean``: :func:`losskit.functional.linear_dpo_loss` with
  ``memory_budget='default'`` / ``'lean'``.

Liger-Kernel's ``LigerFusedLinearDPOLoss`` is not an anchor here: it takes the reference
model's hidden states and head, not precomputed log-probabilities, so it would time a second
head's GEMM that these do not.

Columns and memory as ``losskit bench lce``. Goals (:data:`GOALS`): losskit default <= 1.3x the
three GEMMs and <= 10% of torch eager's peak beyond the gradients.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _command as cmd
from . import _common as C

IMPLS = {
    "gemms": "three GEMMs",
    "torch": "torch eager",
    "compile": "torch.compile",
    "default": "losskit default",
    "lean": "losskit lean",
}
FLOOR = IMPLS["gemms"]
BASELINE = IMPLS["torch"]
BETA = 0.1
#: (device, implementation key) -> (max ratio to the three GEMMs, max share of torch eager's
#: memory beyond the gradients)
GOALS = {("cpu", "default"): (1.3, 0.10), ("cuda", "default"): (1.3, 0.10)}
#: Training steps of the CPU memory measurement.
MEMORY_STEPS = 3


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"P,T,D,V"`` -> ``(pairs, tokens, hidden, classes)`` for argparse."""
    try:
        p, t, d, v = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected P,T,D,V (four integers), got {text!r}"
        ) from None
    if min(p, t, d, v) < 1 or t < 2:
        raise argparse.ArgumentTypeError(f"expected P, D, V >= 1 and T >= 2, got {text!r}")
    return p, t, d, v


SPEC = cmd.Spec(
    name="dpo",
    impls=IMPLS,
    shapes={"cpu": [(8, 512, 1024, 32000)], "cuda": [(8, 512, 4096, 128256)]},
    quick_shapes={"cpu": [(2, 64, 128, 4000)], "cuda": [(8, 512, 1024, 32000)]},
    repeats={"cpu": 3, "cuda": 10, "quick": 2},
    warmup=(1, 1),
    quick_leaves_out=("compile",),
    floor_key="gemms",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench dpo``."""
    cmd.add_options(
        parser,
        SPEC,
        parse_shape=parse_shape,
        metavar="P,T,D,V",
        dtype_help="dtype of the hidden states and the head (default: float32 on cpu, "
        "bfloat16 on cuda)",
        shape_help="pairs, tokens per sequence, hidden size, classes; repeat for several "
        "(default: cpu 8,512,1024,32000; cuda 8,512,4096,128256; --quick: cpu 2,64,128,4000)",
        impls_default="default: all; --quick leaves out compile",
        memory_help="CPU peak memory: a fresh process per implementation, from its first call "
        f"over {MEMORY_STEPS} steps (default); one warm call in this process (--quick's "
        "default); or not at all. CUDA always measures in this process",
        quick_help="small default shape, 2 repeats, no torch.compile",
    )


# --------------------------------------------------------------------------------------------
# the implementations
# --------------------------------------------------------------------------------------------


def inputs(params: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """hidden ``(2P, T, D)`` N(0, 1), head ``(V, D)`` (logits of std 3), targets with a prompt
    quarter of -100, the reference's sequence log-probabilities near the policy's; seeded."""
    device = torch.device(params["device"])
    dtype = cmd.DTYPES[params["dtype"]]
    gen = torch.Generator(device=device).manual_seed(params.get("seed", 0))
    p, t, d, v = params["p"], params["t"], params["d"], params["v"]
    x = torch.randn(2 * p, t, d, generator=gen, device=device).to(dtype)
    w = (torch.randn(v, d, generator=gen, device=device) * (3.0 / d**0.5)).to(dtype)
    y = torch.randint(0, v, (2 * p, t), generator=gen, device=device)
    y[:, : t // 4] = -100
    counted = (y != -100).sum(-1).to(torch.float32)
    # about what the policy gives (E log p = -log V - 4.5 at logits of std 3), give or take
    ref = -counted * (math.log(v) + 4.5) + torch.randn(2 * p, generator=gen, device=device)
    return x, w, y, ref.to(dtype)


def torch_dpo(x: Tensor, w: Tensor, y: Tensor, ref: Tensor) -> Tensor:
    """TRL's DPO in plain torch ops: full logits, float32 log-probabilities, sequence sums."""
    logits = F.linear(x, w).float()
    counted = y != -100
    lp = logits.log_softmax(-1).gather(-1, torch.where(counted, y, 0).unsqueeze(-1)).squeeze(-1)
    seq = torch.where(counted, lp, 0.0).sum(-1)
    half = seq.shape[0] // 2
    u = (seq[:half] - ref[:half].float()) - (seq[half:] - ref[half:].float())
    return (-F.logsigmoid(BETA * u)).mean().to(x.dtype)


def _loss_fn(key: str):
    import losskit.functional as LF

    if key in ("torch", "compile"):
        return torch_dpo if key == "torch" else torch.compile(torch_dpo, dynamic=False)
    if key in ("default", "lean"):
        return lambda x, w, y, ref: LF.linear_dpo_loss(
            x, w, y, reference_logps=ref, beta=BETA, memory_budget=key
        )
    raise KeyError(key)


def build(key: str, x0: Tensor, w0: Tensor, y: Tensor, ref: Tensor) -> C.Case:
    """The :class:`Case` of implementation ``key`` on these inputs."""
    name = IMPLS[key]
    if key == "gemms":
        return cmd.gemm_floor(name, x0.reshape(-1, x0.shape[-1]), w0)
    x = x0.detach().requires_grad_()
    w = w0.detach().requires_grad_()
    fn = _loss_fn(key)

    def prepare() -> None:
        x.grad = w.grad = None

    def step() -> None:
        fn(x, w, y, ref).backward()

    case = C.Case(name, step, prepare)
    if key == "compile":  # the compilation: in the set-up, untimed
        prepare()
        start = time.perf_counter()
        step()
        C.synchronize(x.device)
        case.first_call_s = time.perf_counter() - start
        case.note = f"first call {case.first_call_s:.1f} s (compilation included)"
        prepare()
    return case


def make_case(key: str, params: dict) -> C.Case:
    """For the memory child process: implementation ``key`` on fresh inputs from ``params``."""
    return build(key, *inputs(params))


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _plans_line(p: int, t: int, d: int, v: int, dtype: torch.dtype, device: torch.device) -> str:
    from ..kernels.chunked import budget_bytes, plan_sequences

    parts = []
    for setting in ("default", "lean"):
        budget = budget_bytes(setting, device.type, sequences=True)
        plan = plan_sequences(2 * p * t, d, v, dtype, device.type, budget=budget)
        pairs = plan.rows // (2 * t)
        how = f"{pairs} pair(s) per chunk, one sweep" if pairs else (
            f"blocks of {plan.rows} rows, two sweeps (a pair has {2 * t} rows)"
        )  # fmt: skip
        parts.append(f"{setting}: {how}")
    return "losskit plans: " + "; ".join(parts)


def goals(rows: list[dict[str, object]], device: str) -> list[cmd.Goal]:
    """The :data:`GOALS` of the implementations in ``rows`` timed on ``device``: time against
    the GEMMs, memory against torch eager's in the same group."""
    eager = {r["group"]: r["extra_mib"] for r in rows if r["impl"] == BASELINE}
    out = []
    for row in rows:
        key = next((k for k, name in IMPLS.items() if name == row["impl"]), None)
        goal = GOALS.get((device, key))
        ratio = row["x_floor"]
        if goal is None or ratio is None:
            continue
        beyond, plain = row["extra_mib"], eager.get(row["group"])
        share = None if beyond is None or not plain else beyond / plain
        ok = ratio <= goal[0] and (share is None or share <= goal[1])
        mem = "memory not measured" if share is None else (
            f"{beyond:.0f} MiB beyond gradients, {100 * share:.1f}% of torch eager's {plain:.0f}"
        )  # fmt: skip
        out.append(
            cmd.Goal(
                f"{row['impl']} ({row['group']}): <= {goal[0]}x GEMMs and <= "
                f"{100 * goal[1]:.0f}% of torch eager's memory",
                f"{ratio:.3f}x, {mem}",
                ok,
            )
        )
    return out


def run(args: argparse.Namespace) -> int:
    cfg = cmd.settings(args, SPEC)
    if cfg is None:
        return 2
    print(cmd.device_line(cfg.device))
    print(
        f"loss: DPO (sigmoid, beta={BETA:g}), TRL's layout (chosen first), a quarter of each "
        "sequence a prompt (-100), the reference's sequence log-probabilities given"
    )
    cmd.drop_skipped(cfg, SPEC, lambda key, device, dtype: "")
    if args.quick and not args.impls:
        print(
            "skipped torch.compile in --quick (its first call compiles for many seconds); "
            "name it with --impls to include it"
        )
    for p, t, d, v in cfg.shapes:
        print(f"P={p} T={t} D={d} V={v}: " + _plans_line(p, t, d, v, cfg.dtype, cfg.device))

    def load(params: dict) -> tuple[int, Callable[[str], C.Case]]:
        x, w, y, ref = inputs(params)
        return cmd.grad_bytes(x, w), functools.partial(build, x0=x, w0=w, y=y, ref=ref)

    groups = [
        (f"P={p} T={t} D={d} V={v} {cfg.dtype_name} {cfg.device.type}",
         dict(p=p, t=t, d=d, v=v, dtype=cfg.dtype_name, device=args.device, seed=0))
        for p, t, d, v in cfg.shapes
    ]  # fmt: skip
    return cmd.run_head_groups(
        SPEC, cfg, args, groups, load, module=__name__, floor=FLOOR, baseline=BASELINE,
        steps=MEMORY_STEPS, grads="d hidden and dW", catch=True, goals=goals,
        none_because="goals are set for losskit default only",
    )  # fmt: skip
