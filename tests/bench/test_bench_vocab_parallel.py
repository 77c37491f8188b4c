"""``losskit bench vocab-parallel --quick`` runs end to end on 2 gloo processes.

Not a timing test: it checks the numbers the bench reports that do not depend on the machine (the
bytes counted from the collectives actually issued equal the analytic count, for torch's DTensor
``loss_parallel()`` too, whose functional collectives bypass ``torch.distributed.all_reduce``;
the loss equals the single-process loss) and that the CSV files are written.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

import losskit.functional as LF
from losskit.bench import main as bench_main
from losskit.bench import vocab_parallel as VP

N, V, WORLD = 64, 1001, 2  # uneven slices: 501 + 500 classes


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-vp")
    argv = ["vocab-parallel", "--quick", "--shape", f"{N},{V}", "--world", str(WORLD),
            "--repeats", "2", "--timeout", "120", "--out", str(out), "--check"]  # fmt: skip
    assert bench_main(argv) == 0  # with --check: the bytes goals are met
    return out


def _rows(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["impl"]: row for row in csv.DictReader(f)}


def test_bytes_per_row_match_the_analytic_count(bench_out) -> None:
    rows = _rows(bench_out / "vocab_parallel_bytes.csv")
    vp, gather = rows[VP.VOCAB_PARALLEL], rows[VP.GATHER]
    # one all_gather of 10 int64 (per call), MAX of N float32, SUM of 2 x N float32
    assert int(vp["collectives"]) == 3
    assert float(vp["handed_bytes_per_row"]) == pytest.approx(3 * 4 + 10 * 8 / N, rel=1e-12)
    assert float(vp["analytic_bytes_per_row"]) == pytest.approx(float(vp["handed_bytes_per_row"]))
    # all-gather of this rank's slice padded to the widest (501 classes) in float32
    assert int(gather["collectives"]) == 1
    assert float(gather["handed_bytes_per_row"]) == math.ceil(V / WORLD) * 4
    # ring all-reduce on 2 ranks sends the payload once; the all-gather sends it once too
    assert float(vp["ring_sent_bytes_per_row"]) == pytest.approx(3 * 4 + 10 * 8 / N)
    # the DTensor call issues the same collectives (from_local / to_local move nothing)
    dt = rows[VP.DTENSOR]
    for field in ("collectives", "handed_bytes_per_row", "analytic_bytes_per_row"):
        assert dt[field] == vp[field], field
    # loss_parallel: three funcol all_reduces of (N, 1) float32 (max, sum of exp, target logit),
    # no shape exchange; counted through torch.distributed._functional_collectives
    lp = rows[VP.LOSS_PARALLEL]
    assert int(lp["collectives"]) == 3
    assert float(lp["handed_bytes_per_row"]) == pytest.approx(3 * 4, rel=1e-12)
    assert float(lp["analytic_bytes_per_row"]) == pytest.approx(3 * 4, rel=1e-12)


def test_losses_equal_the_single_process_loss(bench_out) -> None:
    logits, target = VP.inputs(N, V, "float32")
    expected = float(LF.cross_entropy(logits.double(), target))
    for row in _rows(bench_out / "vocab_parallel_bytes.csv").values():
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-5)


def test_times_written(bench_out) -> None:
    rows = _rows(bench_out / "vocab_parallel.csv")
    assert set(rows) == set(VP.METHODS)
    for row in rows.values():
        assert float(row["median_ms"]) > 0 and row["world"] == str(WORLD)
    assert float(rows[VP.GATHER]["x_baseline"]) == 1.0


def test_loss_parallel_row_left_out_with_label_smoothing() -> None:
    assert VP.methods(0.0) == VP.METHODS
    assert VP.LOSS_PARALLEL not in VP.methods(0.1)
    assert set(VP.methods(0.1)) == set(VP.METHODS) - {VP.LOSS_PARALLEL}


def test_split_is_near_even() -> None:
    assert VP.split(V, WORLD) == [(0, 501), (501, 500)]
    assert VP.split(11, 3) == [(0, 4), (4, 4), (8, 3)]
    assert torch.equal(VP.inputs(4, 5, "float32")[0], VP.inputs(4, 5, "float32")[0])
