"""``losskit bench dpo`` at tiny shapes on the CPU: its rows, its plans, its goals, and that the
plain torch form it times is the loss losskit computes.

Speed is not checked (performance figures belong to ``benchmarks/``, never to tests).
"""

from __future__ import annotations

import csv
import re

import torch

import losskit.functional as LF
from losskit import bench
from losskit.bench import dpo

QUICK = ["dpo", "--quick", "--shape", "2,16,32,257", "--repeats", "2"]


def test_quick_run_reports_every_row_with_numbers(tmp_path, capsys):
    assert bench.main([*QUICK, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "loss: DPO (sigmoid, beta=0.1), TRL's layout (chosen first)" in printed
    assert re.search(r"P=2 T=16 D=32 V=257: losskit plans: default: 2 pair\(s\) per chunk, one "
                     r"sweep; lean: ", printed), printed  # fmt: skip
    with open(tmp_path / "dpo.csv", newline="") as f:
        rows = {r["impl"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["three GEMMs", "torch eager", "losskit default", "losskit lean"]
    for name, row in rows.items():
        assert name in printed
        assert (row["bench"], row["device"], row["dtype"]) == ("dpo", "cpu", "float32")
        assert row["group"] == "P=2 T=16 D=32 V=257 float32 cpu"
        for column in ("median_ms", "min_ms", "x_floor", "x_baseline"):
            assert float(row[column]) > 0, (name, column)
    assert float(rows["three GEMMs"]["x_floor"]) == 1.0
    ratio = float(rows["losskit default"]["x_floor"])
    goal = re.search(
        r"^goal losskit default \(P=2 T=16 D=32 V=257 float32 cpu\): <= 1\.3x GEMMs and <= 10% "
        r"of torch eager's memory: (\d+\.\d{3})x, .* -> (met|MISSED)$",
        printed,
        re.M,
    )
    assert goal and abs(float(goal[1]) - ratio) < 1e-3, printed


def test_memory_in_fresh_processes_sees_the_plain_forms_logits(capsys):
    """At 2 x 64 tokens x V = 20000 the plain form holds (256, 20000) float32 logits several
    times over (20 MiB each); losskit holds one pair's chunk."""
    args = ["dpo", "--shape", "2,64,64,20000", "--repeats", "1", "--memory", "subprocess",
            "--impls", "gemms,torch,default"]  # fmt: skip
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    mib = {
        m[1]: float(m[2])
        for m in re.finditer(r"^(torch eager|losskit default)\s+\S+\s+\S+\s+(\d+)", printed, re.M)
    }
    assert mib["torch eager"] >= 2 * 19.5, printed
    assert mib["losskit default"] < mib["torch eager"] / 2, printed


def test_the_torch_form_is_the_loss_losskit_computes():
    params = {"p": 3, "t": 9, "d": 16, "v": 300, "dtype": "float32", "device": "cpu", "seed": 1}
    x0, w0, y, ref = dpo.inputs(params)
    out = {}
    for key in ("torch", "default", "lean"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = dpo._loss_fn(key)(x, w, y, ref)
        loss.backward()
        out[key] = (loss.detach(), x.grad, w.grad)
    x, w = x0.double().requires_grad_(), w0.double().requires_grad_()
    truth = LF.linear_dpo_loss(x, w, y, reference_logps=ref.double(), beta=dpo.BETA)
    truth.backward()
    for key, (loss, dx, dw) in out.items():
        torch.testing.assert_close(loss.double(), truth.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dx.double(), x.grad, rtol=1e-4, atol=1e-6, msg=key)
        torch.testing.assert_close(dw.double(), w.grad, rtol=1e-4, atol=1e-6, msg=key)
    # the inputs make a loss that moves: neither saturated nor at log 2 exactly
    value = float(truth.detach())
    assert 0.05 < value < 5.0 and abs(value - 0.6931) > 1e-4
