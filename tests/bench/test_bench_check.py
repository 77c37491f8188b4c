"""``losskit bench <subcommand> --check``: exit 1 when a goal the run prints is missed.

One rule for every subcommand (:func:`losskit.bench._command.goals_status`); each bench's goals
are checked here by forcing them to be missed or met (a threshold no time can meet, fake rows),
never by timing anything.
"""

from __future__ import annotations

import argparse

import pytest

from losskit import bench
from losskit.bench import _command as cmd
from losskit.bench import ce, lce
from losskit.bench import vocab_parallel as VP

MET = cmd.Goal("a (N=1): <= 2x floor", "1.500x floor", True)
MISSED = cmd.Goal("b (N=2): <= 2x floor", "2.500x floor", False)


@pytest.mark.parametrize("name", list(bench.COMMANDS))
def test_every_subcommand_takes_check(name) -> None:
    parser = argparse.ArgumentParser()
    bench._load(name).add_arguments(parser)
    assert parser.parse_args(["--check"]).check is True
    assert parser.parse_args([]).check is False


def test_goal_line() -> None:
    assert str(MET) == "goal a (N=1): <= 2x floor: 1.500x floor -> met"
    assert str(MISSED) == "goal b (N=2): <= 2x floor: 2.500x floor -> MISSED"


def test_without_check_a_missed_goal_is_reported_and_exits_0(capsys) -> None:
    assert cmd.goals_status("ce", [MET, MISSED], check=False) == 0
    assert capsys.readouterr().out == f"{MET}\n{MISSED}\n"


def test_with_check_a_missed_goal_exits_1_and_is_named(capsys) -> None:
    assert cmd.goals_status("ce", [MET, MISSED], check=True) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "losskit bench ce --check: 1 of 2 goals MISSED: b (N=2): <= 2x floor"


def test_with_check_all_met_exits_0(capsys) -> None:
    assert cmd.goals_status("ce", [MET, MET], check=True) == 0
    assert capsys.readouterr().out.endswith("losskit bench ce --check: all 2 goals met\n")


def test_with_check_and_no_goals_says_so_and_exits_0(capsys) -> None:
    assert cmd.goals_status("ce", [], check=True, none_because="none on cpu") == 0
    assert capsys.readouterr().out == (
        "losskit bench ce --check: this run prints no goals (none on cpu); nothing to miss\n"
    )


def test_many_goals_print_a_count_and_only_the_missed(capsys) -> None:
    assert cmd.goals_status("overhead", [MET, MISSED, MET], check=False, print_met=False) == 0
    assert capsys.readouterr().out == f"goals: 2 of 3 met\n{MISSED}\n"


# --------------------------------------------------------------------------------------------
# each bench's goals
# --------------------------------------------------------------------------------------------

CE_QUICK = ["ce", "--quick", "--shape", "24,700", "--repeats", "1", "--warmup", "0",
            "--memory", "off", "--impls", "fused,torch"]  # fmt: skip


def test_ce_goal_missed_exits_1_under_check(monkeypatch, capsys) -> None:
    monkeypatch.setattr(ce, "GOALS", {("cpu", "float32", 24, 700): 1e-9})
    assert bench.main([*CE_QUICK, "--check"]) == 1
    out = capsys.readouterr().out
    assert "goal losskit fused (N=24 V=700 float32 cpu): <= 1e-09x floor: " in out
    assert out.rstrip().endswith("1 of 1 goals MISSED: losskit fused (N=24 V=700 float32 cpu): "
                                 "<= 1e-09x floor")  # fmt: skip
    assert bench.main(CE_QUICK) == 0  # the same miss, without --check
    assert "-> MISSED" in capsys.readouterr().out


def test_ce_goals_apply_at_their_shapes_only() -> None:
    settings = cmd.Settings(
        device=ce.torch.device("cpu"), dtype_name="float32", shapes=[(24, 700)], repeats=1,
        warmup=0, keys=["fused"], memory="off",
    )  # fmt: skip
    row = {"group": "N=24 V=700 float32 cpu", "impl": "losskit fused", "x_floor": 3.0, "note": ""}
    assert ce.goals([row], settings) == []  # no goal on the CPU
    settings.device, settings.dtype_name = ce.torch.device("cuda"), "bfloat16"
    settings.shapes = [(16384, 32000)]
    row["group"] = "N=16384 V=32000 bfloat16 cuda"
    assert [(g.met, g.measured) for g in ce.goals([row], settings)] == [(False, "3.000x floor")]
    row["x_floor"] = 1.1
    assert [g.met for g in ce.goals([row], settings)] == [True]
    row["x_floor"], row["note"] = None, "failed: RuntimeError: boom"
    assert [(g.met, g.measured) for g in ce.goals([row], settings)] == [
        (False, "not timed: failed: RuntimeError: boom")
    ]


def test_lce_goals_count_time_and_memory() -> None:
    def row(ratio, mib):
        return {"impl": "losskit default", "group": "N=8 D=4 V=16 float32 cpu",
                "x_floor": ratio, "extra_mib": mib}  # fmt: skip

    assert [g.met for g in lce.goals([row(1.10, 60.0)], "cpu")] == [True]
    assert [g.met for g in lce.goals([row(1.20, 60.0)], "cpu")] == [False]  # time
    assert [g.met for g in lce.goals([row(1.10, 65.0)], "cpu")] == [False]  # memory
    (goal,) = lce.goals([row(1.10, None)], "cpu")
    assert goal.met and "memory not measured" in goal.measured
    assert lce.goals([{**row(1.0, 1.0), "impl": "torch eager"}], "cpu") == []


def test_lce_goal_missed_exits_1_under_check(monkeypatch, capsys) -> None:
    monkeypatch.setitem(lce.GOALS, ("cpu", "default"), (1e-9, 64.0))
    argv = ["lce", "--shape", "64,32,500", "--repeats", "1", "--warmup", "0", "--memory", "off",
            "--impls", "default"]  # fmt: skip
    assert bench.main([*argv, "--check"]) == 1
    assert "--check: 1 of 1 goals MISSED: losskit default" in capsys.readouterr().out


def test_vocab_parallel_goals_are_the_analytic_bytes() -> None:
    rows = [
        {"impl": VP.VOCAB_PARALLEL, "handed_bytes_per_row": 13.25, "analytic_bytes_per_row": 13.25},
        {"impl": VP.GATHER, "handed_bytes_per_row": 2004.0, "analytic_bytes_per_row": 2000.0},
    ]
    goals = VP.goals(rows)
    assert [g.met for g in goals] == [True, False]
    assert str(goals[1]) == (
        f"goal {VP.GATHER} hands 2000.00 B/row (docs/distributed.md): 2004.00 B/row -> MISSED"
    )
