"""The Triton kernels compile for an H100 (sm_90), without a GPU, and the plain path never spills.

The interpreter tests check the kernels' arithmetic but never compile them; this runs
``tests/kernels/sm90.py`` (Triton's compiler and the ``ptxas``/``cuobjdump`` in its wheel, no
GPU needed) in a subprocess without ``TRITON_INTERPRET``, over the launch plans the launchers use
(see that script), and reads the resource usage of each cubin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("sm90.py")
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

pytestmark = pytest.mark.skipif(
    not (TOOLS / "cuobjdump").exists(), reason="this triton build has no NVIDIA backend tools"
)


def _report(prefix: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton's own default, without its warning
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--only", prefix],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, f"sm_90 compilation failed:\n{res.stderr[-4000:]}"
    return json.loads(res.stdout)


# two groups of about equal compile time, so that pytest-xdist can use both cores
@pytest.mark.parametrize("prefix", ["ce.coop", "ce.single,ce.split,ce.nograd,ce.rowloop,ce.scale"])
def test_cross_entropy_kernels_compile_for_sm90(prefix: str) -> None:
    """Every variant compiles; the plain (training) variants do not spill to local memory."""
    report = _report(prefix)
    rows = report["variants"]
    assert rows, f"no variant named {prefix}*"
    for r in rows:
        assert 0 < r["registers"] <= 255, r
        assert r["programs_per_sm"] >= 1, r
        if ".plain." in r["name"]:
            assert r["spill_bytes"] == 0, f"{r['name']} spills (triton {report['triton']}): {r}"


def test_linear_cross_entropy_tile_kernels_compile_for_sm90() -> None:
    report = _report("lce.")
    names = {r["name"] for r in report["variants"]}
    assert {"lce.tile_stats.plain.bf16", "lce.tile_grad.all.bf16"} <= names
    for r in report["variants"]:
        assert r["spill_bytes"] == 0, r


def test_the_script_refuses_the_interpreter() -> None:
    """Under TRITON_INTERPRET=1 the kernels are not compiled functions: a clear exit 2."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "ce.scale"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert "unset TRITON_INTERPRET" in res.stderr


def test_distillation_kernel_compiles_for_sm90() -> None:
    """Every divergence compiles, plain and with every feature on, and none spills."""
    report = _report("distill.")
    names = {r["name"] for r in report["variants"]}
    assert {"distill.jsd.plain.bf16", "distill.tvd.all.fp32"} <= names
    for r in report["variants"]:
        assert 0 < r["registers"] <= 255 and r["spill_bytes"] == 0, r
