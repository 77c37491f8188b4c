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
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHAPES = {"cpu": [(4096, 32000)], "cuda": [(8192, 128256), (4096, 256000), (16384, 32000)]}
QUICK_SHAPES = {"cpu": [(256, 4096)], "cuda": [(1024, 32000)]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``losskit bench ce``."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="logits dtype (default: float32 on cpu, bfloat16 on cuda)",
    )
    parser.add_argument(
        "--shape",
        type=C.parse_shape,
        action="append",
        default=None,
        metavar="N,V",
        help="tokens and classes; repeat for several (default: cpu 4096,32000; cuda "
        "8192,128256 4096,256000 16384,32000; --quick: cpu 256,4096, cuda 1024,32000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per implementation (default 10 on cpu, 20 on cuda; --quick 3)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2)")
    parser.add_argument(
        "--impls",
        default=None,
        help=f"comma-separated subset of {','.join(IMPLS)} (default: all that apply; --quick "
        "leaves out compile)",
    )
    parser.add_argument(
        "--memory",
        choices=("subprocess", "inprocess", "off"),
        default=None,
        help="CPU peak memory: a fresh process per implementation (default), this process "
        "(--quick's default), or not at all; CUDA always measures in this process",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for ce.csv and ce.png")
    parser.add_argument(
        "--quick", action="store_true", help="small default shape, 3 repeats, no torch.compile"
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
    n, v = params["n"], params["v"]
    logits = torch.randn(n, v, generator=gen, device=device, dtype=DTYPES[params["dtype"]])
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


def _device_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"device: CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("losskit bench ce: --device cuda but torch sees no CUDA device")
        return 2
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    shapes = args.shape or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)[device.type]
    repeats = args.repeats or (3 if args.quick else (20 if device.type == "cuda" else 10))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.impls:
        keys = [k.strip() for k in args.impls.split(",") if k.strip()]
        unknown = [k for k in keys if k not in IMPLS]
        if unknown:
            print(f"losskit bench ce: unknown --impls {unknown}; choose from {list(IMPLS)}")
            return 2
    else:
        keys = [k for k in IMPLS if not (args.quick and k == "compile")]
    memory = args.memory or ("inprocess" if args.quick else "subprocess")

    print(_device_line(device))
    print(_peers_line())
    skipped = {k: applies(k, device.type, dtype) for k in keys}
    for k, why in skipped.items():
        if why:
            print(f"skipped {IMPLS[k]}: {why}")
    if args.quick and not args.impls:
        print(
            "skipped torch.compile in --quick (its first call compiles for many seconds); "
            "name it with --impls to include it"
        )
    keys = [k for k in keys if not skipped[k]]

    results: list[C.Result] = []
    floors: dict[str, float] = {}
    logit_bytes: dict[str, int] = {}
    measure_memory = memory != "off"
    total = len(shapes) * len(keys) * (warmup + repeats + int(measure_memory))
    with C.Progress(total, "bench ce") as progress:
        for n, v in shapes:
            params = {"n": n, "v": v, "dtype": dtype_name, "device": args.device, "seed": 0}
            group = f"N={n} V={v} {dtype_name} {device.type}"
            logits, target = inputs(params)
            logit_bytes[group] = logits.numel() * logits.element_size()
            floors[group] = C.copy_floor(logit_bytes[group], device)
            shared: dict[str, Tensor] = {}
            cases, by_name = [], {}
            for key in keys:
                result = C.Result(group, IMPLS[key])
                try:
                    case = build(key, logits, target, shared)
                except Exception as exc:  # e.g. torch.compile without a working compiler
                    result.error = C.describe_error(exc)
                    progress.update(IMPLS[key], warmup + repeats + int(measure_memory))
                else:
                    cases.append(case)
                    result.note = case.note
                by_name[IMPLS[key]] = result
                results.append(result)
            errors: dict[str, str] = {}
            times = C.time_cases(
                cases,
                device=device,
                repeats=repeats,
                warmup=warmup,
                progress=progress,
                errors=errors,
            )
            for name, samples in times.items():
                by_name[name].times_s = samples
            for name, error in errors.items():
                by_name[name].error = error
            if measure_memory:
                key_of = {IMPLS[k]: k for k in keys}
                for case in cases:
                    result = by_name[case.name]
                    if case.name in errors:
                        progress.update(case.name)
                        continue
                    if device.type == "cpu" and memory == "subprocess":
                        result.extra_bytes, err = C.peak_extra_bytes_in_subprocess(
                            __name__, key_of[case.name], params
                        )
                        if err:
                            result.error = err
                    else:
                        try:
                            result.extra_bytes = C.peak_extra_bytes(case, device)
                        except Exception as exc:
                            result.error = C.describe_error(exc)
                    progress.update(case.name)
            del cases, shared, logits, target

    for group, floor in floors.items():
        speed = 2 * logit_bytes[group] / floor / 1e9
        print(
            f"floor for {group}: {1e3 * floor:.2f} ms (read logits + write gradient at the "
            f"measured copy speed, {speed:.1f} GB/s)"
        )
    rows = C.report(results, floors, BASELINE)
    C.print_table(rows, baseline=BASELINE)
    if device.type == "cpu" and memory != "off":
        how = "a fresh process per implementation" if memory == "subprocess" else "this process"
        print(
            f"\nextra MiB: growth of peak resident memory over one call, in {how}; includes the "
            "gradient"
        )
    if args.out is not None:
        meta = {"bench": "ce", "device": device.type, "dtype": dtype_name}
        C.write_outputs(rows, args.out, "ce", meta, floors)
    return 0
