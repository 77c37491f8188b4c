"""Compile losskit's Triton kernels for an H100 (sm_90) on a machine without a GPU.

Triton's interpreter runs the kernels' arithmetic on the CPU but never compiles them, so it
cannot see what only the real compiler rejects (a loop-carried value that changes type, an
unsupported op) nor what decides speed on the GPU: registers per thread and spills to local
memory. Triton's compiler and the ``ptxas``/``cuobjdump`` shipped in its wheel need no GPU, so
this script compiles each kernel, for the launch plans and feature sets the launchers use, to an
sm_90 cubin and reads its resource usage.

Run it without ``TRITON_INTERPRET`` (the kernels must be defined as compiled functions)::

    python tests/kernels/sm90.py            # a table: variant, registers, spills
    python tests/kernels/sm90.py --json     # the same as JSON (tests/kernels/test_sm90.py)
    python tests/kernels/sm90.py --only ce.coop,lce.  # names starting with either
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import losskit.kernels.triton.common as common
import losskit.kernels.triton.cross_entropy as ce
import losskit.kernels.triton.distillation as distill
import losskit.kernels.triton.linear_cross_entropy as lce
import losskit.kernels.triton.plans as plans

TARGET = GPUTarget("cuda", 90, 32)

#: Triton types of the kernels' non-constexpr arguments, by name (pointers by the logits dtype).
_POINTERS_F32 = {
    "LOSS", "ZROW", "SCALE", "WSUM", "PART", "W", "ST", "LSE", "RA", "RB", "RE", "R",
}  # fmt: skip
_POINTERS = {"T": "*i64", "Y": "*i64", "MASK": "*u8", "SYNC": "*i32"}
_INTS = {
    "stride_x", "stride_g", "stride_go", "stride_z", "stride_st", "ignore_index", "c0",
    "stride_zs", "stride_zt", "stride_gs", "stride_gt",
}  # fmt: skip
_INTS32 = {"V", "CW", "width", "n_col_tiles", "n_tiles"}
_FLOATS = {
    "one_minus_eps", "eps_over_v", "z_coef", "softcap", "inv_softcap",
    "inv_t", "alpha", "soft_coef", "c", "beta", "log_beta", "log_1mb",
}  # fmt: skip
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

#: every feature on (the HAS_* / STORE_* flags a kernel takes; absent ones are ignored)
ALL_FEATURES = dict(
    HAS_WEIGHT=True, HAS_MASK=True, HAS_SMOOTH=True, HAS_Z=True, HAS_SOFTCAP=True,
    HAS_SCALE=True, STORE_GRAD=True, STORE_Z=True,
)  # fmt: skip
#: the common training call: class-index targets, 'mean' (a scale), gradient, nothing else
PLAIN = dict(
    HAS_WEIGHT=False, HAS_MASK=False, HAS_SMOOTH=False, HAS_Z=False, HAS_SOFTCAP=False,
    HAS_SCALE=True, STORE_GRAD=True, STORE_Z=False,
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One compilation: a kernel, its constexprs, the logits dtype and the launch options."""

    name: str
    kernel: object  # a triton JITFunction
    constexprs: dict
    dtype: torch.dtype
    num_warps: int
    num_stages: int = 1


def _signature(kernel, constexprs: dict, dtype: torch.dtype) -> dict[str, str]:
    sig = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in ("X", "G", "Z", "GO", "ZS", "ZT", "GS", "GT"):  # logits-dtype pointers
            sig[arg] = "*" + _DTYPES[dtype]
        elif arg in _POINTERS_F32:
            sig[arg] = "*fp32"
        elif arg in _POINTERS:
            sig[arg] = _POINTERS[arg]
        elif arg in _INTS:
            sig[arg] = "i64"
        elif arg in _INTS32:
            sig[arg] = "i32"
        elif arg in _FLOATS:
            sig[arg] = "fp32"
        else:
            raise KeyError(f"sm90.py: no Triton type for argument {arg!r} of {kernel.fn.__name__}")
    return sig


def _flags(kernel, features: dict) -> dict:
    return {k: v for k, v in features.items() if k in kernel.arg_names}


def _ce_chunk(name: str, V: int, kind: str, mode: int, features: dict, dtype) -> Variant:
    """The chunk kernel as ``make_plan`` launches it for rows of ``V`` classes."""
    plan = plans.make_plan(V, torch.device("cpu"), "split" if kind == "coop" else kind)
    consts = dict(
        S=plan.chunks, SP2=triton.next_power_of_2(plan.chunks), BLOCK=plan.block, MODE=mode,
        **_flags(ce._ce_chunk_kernel, features),
    )  # fmt: skip
    return Variant(name, ce._ce_chunk_kernel, consts, dtype, plan.num_warps, plan.num_stages)


def variants() -> list[Variant]:
    """The variants checked: the plans ``plan='auto'`` picks on a GPU for the benchmark shapes
    (single up to ``SINGLE_MAX``, coop beyond), the split and rowloop fallbacks, and the
    linear-CE tile kernels, each plain and with every feature on."""
    out = []
    for fname, feats in (("plain", PLAIN), ("all", ALL_FEATURES)):
        for dtype in (torch.bfloat16, torch.float32):
            d = _DTYPES[dtype]
            out += [
                _ce_chunk(f"ce.single.V16384.{fname}.{d}", 16384, "single", 0, feats, dtype),
                _ce_chunk(f"ce.coop.V32000.{fname}.{d}", 32000, "coop", 0, feats, dtype),
                _ce_chunk(f"ce.coop.V128256.{fname}.{d}", 128256, "coop", 0, feats, dtype),
                _ce_chunk(f"ce.coop.V256000.{fname}.{d}", 256000, "coop", 0, feats, dtype),
            ]
        bf16 = torch.bfloat16
        out += [
            _ce_chunk(f"ce.split1.V128256.{fname}.bf16", 128256, "split", 1, feats, bf16),
            _ce_chunk(f"ce.split2.V128256.{fname}.bf16", 128256, "split", 2, feats, bf16),
            _ce_chunk(f"ce.nograd.V128256.{fname}.bf16", 128256, "coop", 0,
                      {**feats, "STORE_GRAD": False}, bf16),
        ]  # fmt: skip
        rl = plans.make_plan(128256, torch.device("cpu"), "rowloop")
        rowloop = ce._ce_rowloop_kernel
        out.append(
            Variant(
                f"ce.rowloop.V128256.{fname}.bf16", rowloop,
                dict(BLOCK=rl.block, **_flags(rowloop, feats)), bf16, rl.num_warps, rl.num_stages,
            )
        )  # fmt: skip
        tile = lce.TILE_BLOCK
        for kernel, kname in ((lce._tile_stats_kernel, "stats"), (lce._tile_grad_kernel, "grad")):
            consts = dict(BLOCK=tile, **_flags(kernel, feats))
            out.append(
                Variant(f"lce.tile_{kname}.{fname}.bf16", kernel, consts, bf16, common.warps(tile))
            )
    # the distillation row kernel: the training call (student gradient, T = 1, no hard term)
    # and every feature on, per divergence
    block = distill.ROW_BLOCK
    for kind, code in distill.KINDS.items():
        for fname, on in (("plain", False), ("all", True)):
            consts = dict(BLOCK=block, KIND=code, TEMPERED=on, HARD=on, STORE_S=True, STORE_T=on)
            for dtype in (torch.bfloat16, torch.float32):
                name = f"distill.{kind}.{fname}.{_DTYPES[dtype]}"
                out.append(
                    Variant(name, distill._distill_kernel, consts, dtype, distill._warps(block))
                )
    for rowwise in (False, True):
        name = f"ce.scale_grad.{'rowwise' if rowwise else 'scalar'}.bf16"
        consts = dict(ROWWISE=rowwise, BLOCK=common.SCALE_BLOCK)
        out.append(Variant(name, common.scale_grad_kernel, consts, torch.bfloat16, 4))
    return out


def _tools() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_variant(v: Variant) -> dict:
    """Compile ``v`` for sm_90; returns registers per thread, spill bytes and compile seconds."""
    k = v.kernel
    sig = _signature(k, v.constexprs, v.dtype)
    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:  # newer triton (3.6)
        consts = {(k.arg_names.index(n),): val for n, val in v.constexprs.items()}
        src = ASTSource(fn=k, signature=sig, constexprs=consts)
    else:  # older triton (3.0): types of the other arguments by position, constants apart
        types = {i: t for i, t in enumerate(sig.values()) if t != "constexpr"}
        consts = {k.arg_names.index(n): val for n, val in v.constexprs.items()}
        src = ASTSource(fn=k, signature=types, constants=consts)
    t0 = time.perf_counter()
    compiled = triton.compile(
        src, target=TARGET, options=dict(num_warps=v.num_warps, num_stages=v.num_stages)
    )
    seconds = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [os.path.join(_tools(), "cuobjdump"), "-res-usage", f.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage))
    return {
        "name": v.name,
        "num_warps": v.num_warps,
        "registers": int(fields["REG"]),
        "spill_bytes": int(fields["LOCAL"]) + int(fields["STACK"]),
        "shared_bytes": int(fields["SHARED"]),
        "programs_per_sm": programs_per_sm(int(fields["REG"]), v.num_warps),
        "seconds": round(seconds, 2),
    }


def programs_per_sm(registers: int, num_warps: int) -> int:
    """How many programs fit one H100 SM by registers (64K per SM, allocated per warp in 256s)."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(65536 // (per_warp * num_warps), 64 // num_warps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only", default="", help="variants whose name starts with one of these (comma-separated)"
    )
    args = parser.parse_args(argv)
    if type(ce._ce_chunk_kernel).__name__ == "InterpretedFunction":
        print("sm90.py: unset TRITON_INTERPRET (the kernels must be compiled)", file=sys.stderr)
        return 2
    prefixes = tuple(args.only.split(","))
    rows = [compile_variant(v) for v in variants() if v.name.startswith(prefixes)]
    if args.json:
        print(json.dumps({"triton": triton.__version__, "variants": rows}))
        return 0
    print(f"triton {triton.__version__}, sm_90")
    print(f"{'variant':36} {'warps':>5} {'regs':>5} {'spill B':>7} {'prog/SM':>7} {'s':>5}")
    for r in rows:
        print(
            f"{r['name']:36} {r['num_warps']:>5} {r['registers']:>5} {r['spill_bytes']:>7} "
            f"{r['programs_per_sm']:>7} {r['seconds']:>5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
