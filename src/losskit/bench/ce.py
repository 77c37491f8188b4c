"""``losskit bench ce``: cross-entropy on ``N x V`` logits, forward+backward, side by side.

Implementations, all in one run on the same inputs (peers only when importable, never vendored):

- ``losskit reference``: ``losskit.functional.cross_entropy(..., impl="reference")``;
- ``losskit fused``: ``impl="fused"`` (Triton on CUDA, the chunked CPU path on the CPU);
- ``losskit fused, in-place``: ``impl="fused", inplace_backward=True`` (the gradient overwrites
  the logits; each call gets a fresh non-leaf copy of them, untimed, as a model's logits are);
- ``torch eager``: ``torch.nn.functional.cross_entropy``;
- ``torch eager on .float()``: the same on ``logits.float()`` (low-precision logits only);
- ``torch.compile, fp32 form``: ``torch.compile`` of the previous line; its first call
  (compilation) is timed apart and reported in the note;
- ``liger cross_entropy`` (CUDA, when ``liger-kernel`` is installed): it writes the gradient into
  its input, so like the in-place row it gets a fresh copy of the logits each call.

Columns: median and min ms, extra MiB (peak above the inputs, including the gradient), the ratio
to the floor (one read of the logits and one write of their gradient at the device copy speed
measured in the same run) and to torch eager.

Goals printed at the end (:data:`GOALS`, those of ``benchmarks/gpu_ce_kernel.py``): on CUDA in
bfloat16, losskit fused <= 1.25x the floor at 8192 x 128256 and 4096 x 256000, <= 1.15x at
16384 x 32000. Other devices and shapes have none; ``--check`` exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _command as cmd
from . import _common as C

IMPLS = {
    "reference": "losskit reference",
    "fused": "losskit fused",
    "fused-inplace": "losskit fused, in-place",
    "torch": "torch eager",
    "torch-float": "torch eager on .float()",
    "compile": "torch.compile, fp32 form",
    "liger": "liger cross_entropy",
}
BASELINE = IMPLS["torch"]
#: (device, dtype, N, V) -> the most ``losskit fused`` may take, as a multiple of the floor
GOALS = {
    ("cuda", "bfloat16", 8192, 128256): 1.25,
    ("cuda", "bfloat16", 4096, 256000): 1.25,
    ("cuda", "bfloat16", 16384, 32000): 1.15,
}
SPEC = cmd.Spec(
    name="ce",
    impls=IMPLS,
    shapes={"cpu": [(4096, 32000)], "cuda": [(8192, 128256), (4096, 256000), (16384, 32000)]},
    quick_shapes={"cpu": [(256, 4096)], "cuda": [(1024, 32000)]},
    repeats={"cpu": 10, "cuda": 20, "quick": 3},
    warmup=(2, 1),
    quick_leaves_out=("compile",),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench ce``."""
    cmd.add_options(
        parser,
        SPEC,
        parse_shape=C.parse_shape,
        metavar="N,V",
        dtype_help="logits dtype (default: float32 on cpu, bfloat16 on cuda)",
        shape_help="tokens and classes; repeat for several (default: cpu 4096,32000; cuda "
        "8192,128256 4096,256000 16384,32000; --quick: cpu 256,4096, cuda 1024,32000)",
        impls_default="default: all that apply; --quick leaves out compile",
        memory_help="CPU peak memory: a fresh process per implementation (default), this process "
        "(--quick's default), or not at all; CUDA always measures in this process",
        quick_help="small default shape, 3 repeats, no torch.compile",
    )


# --------------------------------------------------------------------------------------------
# the implementations
# --------------------------------------------------------------------------------------------


def _losskit(impl: str, inplace: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    import losskit.functional as LF

    def fn(x: Tensor, y: Tensor) -> Tensor:
        if inplace:
            return LF.cross_entropy(x, y, impl=impl, inplace_backward=True)
        return LF.cross_entropy(x, y, impl=impl)

    return fn


def _torch_float(x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(x.float(), y)


def _liger() -> Callable[[Tensor, Tensor], Tensor]:
    from liger_kernel.transformers.functional import liger_cross_entropy

    return liger_cross_entropy


def applies(key: str, device: str, dtype: torch.dtype) -> str:
    """'' when implementation ``key`` applies to this device and dtype, else why not."""
    if key == "torch-float" and dtype == torch.float32:
        return "the logits are float32 already: same as torch eager"
    if key == "liger":
        if device != "cuda":
            return "liger-kernel runs on CUDA only"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel is not installed"
    return ""


def inputs(params: dict) -> tuple[Tensor, Tensor]:
    """Logits (N, V) in the dtype, N(0, 2^2) entries, and uniform targets, seeded."""
    device = torch.device(params["device"])
    gen = torch.Generator(device=device).manual_seed(params.get("seed", 0))
    n, v, dtype = params["n"], params["v"], cmd.DTYPES[params["dtype"]]
    logits = torch.randn(n, v, generator=gen, device=device, dtype=dtype)
    logits.mul_(2.0)
    target = torch.randint(0, v, (n,), generator=gen, device=device)
    return logits, target


def build(key: str, logits: Tensor, target: Tensor, shared: dict[str, Tensor]) -> C.Case:
    """The :class:`Case` of implementation ``key`` on these inputs.

    ``shared`` caches a work copy of the logits for the implementations that overwrite them.
    """
    name = IMPLS[key]
    overwrites = key in ("fused-inplace", "liger")
    fn = {
        "reference": lambda: _losskit("reference"),
        "fused": lambda: _losskit("fused"),
        "fused-inplace": lambda: _losskit("fused", inplace=True),
        "torch": lambda: F.cross_entropy,
        "torch-float": lambda: _torch_float,
        "compile": lambda: torch.compile(_torch_float),
        "liger": _liger,
    }[key]()
    if key == "fused-inplace":
        # As a model's logits: a non-leaf (here a clone of a leaf, made untimed) that the
        # gradient may overwrite; losskit refuses to overwrite a leaf that requires grad. The
        # clone's backward passes the gradient through, and the leaf's .grad adopts that buffer.
        src = logits.detach().requires_grad_()
        held: dict[str, Tensor] = {}

        def prepare() -> None:
            src.grad = None
            held.pop("x", None)
            held["x"] = src.clone()

        def step() -> None:
            fn(held.pop("x"), target).backward()

    elif overwrites:
        if "work" not in shared:
            shared["work"] = torch.empty_like(logits)
        x = shared["work"].detach().requires_grad_()

        def prepare() -> None:
            x.grad = None
            with torch.no_grad():
                x.copy_(logits)

        def step() -> None:
            fn(x, target).backward()

    else:
        x = logits.detach().requires_grad_()

        def prepare() -> None:
            x.grad = None

        def step() -> None:
            fn(x, target).backward()

    note = ""
    if key == "liger":
        note = "writes the gradient into its input"
    elif key == "fused-inplace":
        note = "gradient written into the logits"
    case = C.Case(name, step, prepare, note)
    if key == "compile":
        prepare()
        start = time.perf_counter()
        step()
        C.synchronize(logits.device)
        case.first_call_s = time.perf_counter() - start
        case.note = f"first call {case.first_call_s:.1f} s (compilation included)"
    return case


def make_case(key: str, params: dict) -> C.Case:
    """For the memory child process: implementation ``key`` on fresh inputs from ``params``."""
    logits, target = inputs(params)
    return build(key, logits, target, {})


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _peers_line() -> str:
    parts = []
    for module, label in (
        ("liger_kernel", "liger-kernel"),
        ("cut_cross_entropy", "cut-cross-entropy"),
    ):
        found = importlib.util.find_spec(module) is not None
        parts.append(f"{label} {'installed' if found else 'not installed'}")
    line = "peers: " + ", ".join(parts)
    if importlib.util.find_spec("cut_cross_entropy") is not None:
        line += (
            " (cut-cross-entropy fuses the classifier matmul: its linear_cross_entropy needs the "
            "embeddings and the classifier, so it has no CE-only form here; see "
            "'losskit bench lce')"
        )
    return line


def _measure_memory(
    result: C.Result, case: C.Case, key: str, *, params: dict, cfg: cmd.Settings
) -> None:
    """``result.extra_bytes``: the peak above the inputs, the returned gradient included."""
    if cfg.device.type == "cpu" and cfg.memory == "subprocess":
        result.extra_bytes, err = C.peak_extra_bytes_in_subprocess(__name__, key, params)
        if err:
            result.error = err
    else:
        try:
            result.extra_bytes = C.peak_extra_bytes(case, cfg.device)
        except Exception as exc:
            result.error = C.describe_error(exc)


def goals(rows: list[dict[str, object]], cfg: cmd.Settings) -> list[cmd.Goal]:
    """The :data:`GOALS` of the shapes this run timed ``losskit fused`` on."""
    out = []
    for n, v in cfg.shapes:
        limit = GOALS.get((cfg.device.type, cfg.dtype_name, n, v))
        group = f"N={n} V={v} {cfg.dtype_name} {cfg.device.type}"
        row = next((r for r in rows if r["group"] == group and r["impl"] == IMPLS["fused"]), None)
        if limit is None or row is None:
            continue
        ratio = row["x_floor"]
        measured = "not timed: " + str(row["note"]) if ratio is None else f"{ratio:.3f}x floor"
        what = f"{row['impl']} ({group}): <= {limit}x floor"
        out.append(cmd.Goal(what, measured, ratio is not None and ratio <= limit))
    return out


def run(args: argparse.Namespace) -> int:
    cfg = cmd.settings(args, SPEC)
    if cfg is None:
        return 2
    print(cmd.device_line(cfg.device))
    print(_peers_line())
    cmd.drop_skipped(cfg, SPEC, applies)
    if args.quick and not args.impls:
        print(
            "skipped torch.compile in --quick (its first call compiles for many seconds); "
            "name it with --impls to include it"
        )

    results: list[C.Result] = []
    floors: dict[str, float] = {}
    logit_bytes: dict[str, int] = {}
    with cfg.progress(SPEC) as progress:
        for n, v in cfg.shapes:
            params = {"n": n, "v": v, "dtype": cfg.dtype_name, "device": args.device, "seed": 0}
            group = f"N={n} V={v} {cfg.dtype_name} {cfg.device.type}"
            logits, target = inputs(params)
            logit_bytes[group] = logits.numel() * logits.element_size()
            floors[group] = C.copy_floor(logit_bytes[group], cfg.device)
            shared: dict[str, Tensor] = {}
            make = functools.partial(build, logits=logits, target=target, shared=shared)
            cases, by_name = cmd.time_group(SPEC, cfg, group, make, progress, catch=True)
            results += by_name.values()
            measure = functools.partial(_measure_memory, params=params, cfg=cfg)
            cmd.measure_each(SPEC, cfg, cases, by_name, progress, measure)
            del cases, shared, logits, target, make

    for group, floor in floors.items():
        speed = 2 * logit_bytes[group] / floor / 1e9
        print(
            f"floor for {group}: {1e3 * floor:.2f} ms (read logits + write gradient at the "
            f"measured copy speed, {speed:.1f} GB/s)"
        )
    rows = C.report(results, floors, BASELINE)
    C.print_table(rows, baseline=BASELINE)
    if cfg.device.type == "cpu" and cfg.measure_memory:
        how = "a fresh process per implementation" if cfg.memory == "subprocess" else "this process"
        print(
            f"\nextra MiB: growth of peak resident memory over one call, in {how}; includes the "
            "gradient"
        )
    cmd.write_outputs(rows, args.out, SPEC, cfg, floors)
    return cmd.goals_status(
        SPEC.name,
        goals(rows, cfg),
        check=args.check,
        none_because="goals are set for losskit fused on cuda, bfloat16, at "
        + ", ".join(f"{n}x{v}" for _, _, n, v in GOALS),
    )
