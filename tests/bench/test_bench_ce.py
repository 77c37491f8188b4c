"""``losskit bench ce --quick`` at a tiny shape on the CPU: every row is there, with numbers.

The numbers themselves are not checked (performance figures belong to ``benchmarks/``, never to
tests): this only shows the command runs end to end and reports what it claims to.
"""

from __future__ import annotations

import csv
import importlib.util

import pytest

from losskit import bench

EXPECTED = {
    "float32": ["losskit reference", "losskit fused", "losskit fused, in-place", "torch eager"],
    "bfloat16": [
        "losskit reference",
        "losskit fused",
        "losskit fused, in-place",
        "torch eager",
        "torch eager on .float()",
    ],
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quick_run_reports_every_implementation(dtype, tmp_path, capsys):
    argv = ["ce", "--quick", "--shape", "24,700", "--dtype", dtype, "--repeats", "2"]
    assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "floor for N=24 V=700" in printed

    with open(tmp_path / "ce.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["impl"] for r in rows] == EXPECTED[dtype]
    for row in rows:
        assert row["impl"] in printed
        assert row["dtype"] == dtype and row["device"] == "cpu"
        for column in ("median_ms", "min_ms", "x_floor", "x_baseline"):
            assert float(row[column]) > 0, (row["impl"], column)
        assert float(row["extra_mib"]) >= 0  # tiny shapes may fit in memory already held
    baseline = next(r for r in rows if r["impl"] == "torch eager")
    assert float(baseline["x_baseline"]) == 1.0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "ce.png").stat().st_size > 0


def test_a_missing_subcommand_module_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(bench.COMMANDS, "lce", ("losskit.bench._not_there", "linear CE"))
    assert bench.main(["lce"]) == 2
    assert "losskit.bench._not_there" in capsys.readouterr().err


def test_unknown_implementation_is_refused(capsys):
    assert bench.main(["ce", "--quick", "--impls", "fused,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().out
