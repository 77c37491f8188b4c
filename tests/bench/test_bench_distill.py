"""``losskit bench distill`` at tiny shapes on the CPU: its rows, its loss, its goals, its memory.

Speed is not checked (performance figures belong to ``benchmarks/``, never to tests): the quick
run shows that the command reports every row with numbers and prints its plans and goals; the
torch form it times must be the loss losskit computes (value and gradients), so that the
ratios compare the same work; and the memory measurement, in fresh processes, must see the two
``(N, V)`` logits that torch eager holds and not losskit's chunks.
"""

from __future__ import annotations

import csv
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import losskit.functional as LF
from losskit import bench
from losskit.bench import _common as C
from losskit.bench import distill

MIB = 1 << 20
QUICK = ["distill", "--quick", "--shape", "64,32,500", "--repeats", "2"]


def test_quick_run_reports_every_row_with_numbers(tmp_path, capsys):
    assert bench.main([*QUICK, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "skipped liger fused linear JSD: liger_kernel runs on CUDA only" in printed
    assert "loss: generalized JSD, beta=0.5 (Liger's LigerFusedLinearJSD default)" in printed
    plans = re.search(
        r"N=64 D=32 V=500: losskit plans: default: chunks of (\d+) rows of both heads, .*; "
        r"lean: chunks of (\d+) rows",
        printed,
    )
    assert plans and 1 <= int(plans[2]) <= int(plans[1]) <= 64, printed

    with open(tmp_path / "distill.csv", newline="") as f:
        rows = {r["impl"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["four GEMMs", "torch eager", "losskit default", "losskit lean"]
    for name, row in rows.items():
        assert name in printed
        assert (row["bench"], row["device"], row["dtype"]) == ("distill", "cpu", "float32")
        assert (row["divergence"], float(row["beta"])) == ("jsd", 0.5)
        assert row["group"] == "N=64 D=32 V=500 float32 cpu"
        for column in ("median_ms", "min_ms", "x_floor", "x_baseline"):
            assert float(row[column]) > 0, (name, column)
        assert float(row["min_ms"]) <= float(row["median_ms"])
    assert float(rows["four GEMMs"]["x_floor"]) == 1.0
    assert rows["four GEMMs"]["extra_mib"] == ""  # preallocated outputs: no figure
    assert float(rows["torch eager"]["x_baseline"]) == 1.0
    ratio = float(rows["losskit default"]["x_floor"])
    line = (
        r"^goal losskit default \(N=64 D=32 V=500 float32 cpu\): <= 1\.3x GEMMs and <= 128 MiB: "
        r"(\d+\.\d{3})x, .* -> (met|MISSED)$"
    )
    goal = re.search(line, printed, re.M)
    assert goal and abs(float(goal[1]) - ratio) < 1e-3, printed
    assert (goal[2] == "met") == (ratio <= 1.3)


@pytest.mark.parametrize(
    "divergence,beta",
    [("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0), ("forward_kl", 0.5),
     ("reverse_kl", 0.5), ("tvd", 0.5)],
)  # fmt: skip
def test_the_torch_form_is_the_loss_losskit_computes(divergence, beta):
    params = {"n": 24, "d": 16, "v": 300, "dtype": "float32", "device": "cpu", "seed": 1}
    xs0, ws0, xt, wt = distill.inputs(params)
    out = {}
    for key in ("torch", "default", "lean"):
        xs, ws = xs0.clone().requires_grad_(), ws0.clone().requires_grad_()
        loss = distill._loss_fn(key, divergence, beta)(xs, ws, xt, wt)
        loss.backward()
        out[key] = (loss.detach(), xs.grad, ws.grad)
    truth = LF.linear_distillation_loss(
        xs0.double(), ws0.double(), xt.double(), wt.double(), divergence=divergence, beta=beta,
        soft_scale=1.0, impl="reference",
    )  # fmt: skip
    assert out["torch"][0].item() == pytest.approx(truth.item(), rel=1e-5, abs=1e-6)
    for key in ("default", "lean"):
        for got, want in zip(out[key], out["torch"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_floor_is_four_gemms_into_its_outputs(monkeypatch):
    params = {"n": 8, "d": 4, "v": 16, "dtype": "float32", "device": "cpu", "seed": 0}
    xs, ws, xt, wt = distill.inputs(params)
    case = distill.build("gemms", xs, ws, xt, wt)
    calls = []
    real_mm = torch.mm

    def counting_mm(a, b, *, out):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real_mm(a, b, out=out)

    monkeypatch.setattr(torch, "mm", counting_mm)
    case.step()
    assert calls == [((8, 4), (4, 16)), ((8, 4), (4, 16)), ((8, 16), (16, 4)), ((16, 8), (8, 4))]


def test_goals_count_time_and_memory():
    def row(ratio, mib, impl="losskit default"):
        return {"impl": impl, "group": "N=8 D=4 V=16 float32 cpu", "x_floor": ratio,
                "extra_mib": mib}  # fmt: skip

    assert [g.met for g in distill.goals([row(1.25, 120.0)], "cpu")] == [True]
    assert [g.met for g in distill.goals([row(1.35, 120.0)], "cpu")] == [False]  # time
    assert [g.met for g in distill.goals([row(1.25, 130.0)], "cpu")] == [False]  # memory
    (goal,) = distill.goals([row(1.25, None)], "cpu")
    assert goal.met and "memory not measured" in goal.measured
    assert distill.goals([row(1.0, 1.0, "losskit lean")], "cpu") == []  # lean: CUDA only
    cuda = distill.goals([row(1.5, 60.0, "losskit lean"), row(1.5, 60.0)], "cuda")
    assert [(g.met, g.what.split(":")[-1]) for g in cuda] == [
        (True, " <= 1.6x GEMMs and <= 64 MiB"), (False, " <= 1.3x GEMMs and <= 1024 MiB")
    ]  # fmt: skip
    assert distill.goals([row(1.0, 1.0, "torch eager")], "cpu") == []


def test_goal_missed_exits_1_under_check(monkeypatch, capsys):
    monkeypatch.setitem(distill.GOALS, ("cpu", "default"), (1e-9, 128.0))
    argv = ["distill", "--shape", "64,32,500", "--repeats", "1", "--warmup", "0", "--memory",
            "off", "--impls", "default"]  # fmt: skip
    assert bench.main([*argv, "--check"]) == 1
    assert "--check: 1 of 1 goals MISSED: losskit default" in capsys.readouterr().out


def test_liger_applies_to_the_jsd_on_cuda_only():
    assert distill.applies("liger", "cpu", torch.float32) == "liger_kernel runs on CUDA only"
    assert distill.applies("default", "cpu", torch.float32) == ""
    if distill.importlib.util.find_spec("liger_kernel") is not None:
        why = distill.applies("liger", "cuda", torch.bfloat16, divergence="tvd")
        assert why == "it computes the JSD only, not tvd"


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status and clear_refs"
)
def test_user_peak_sees_both_logits_of_torch_eager_and_not_of_losskit():
    n, d, v = 256, 32, 4000
    params = {"n": n, "d": d, "v": v, "dtype": "float32", "device": "cpu", "seed": 0}
    keys = ("torch", "default")

    def measure(key):
        return C.user_peak_bytes_in_subprocess(distill.__name__, key, params, steps=2)

    with ThreadPoolExecutor(len(keys)) as pool:  # two fresh processes at once
        runs = dict(zip(keys, pool.map(measure, keys), strict=True))
    grads = (n * d + v * d) * 4
    beyond = {}
    for key, (figures, err) in runs.items():
        assert err == "" and figures is not None, (key, err)
        assert figures["peak"] >= grads, (key, figures)  # the gradients exist at the peak
        beyond[key] = figures["peak"] - grads
    logits = n * v * 4
    assert beyond["torch"] >= 2 * logits, beyond["torch"] / MIB  # the student's and the teacher's
    assert 0 < beyond["default"] < beyond["torch"], {k: b / MIB for k, b in beyond.items()}
    assert beyond["default"] <= distill.GOALS[("cpu", "default")][1] * MIB, beyond["default"] / MIB
