"""``losskit bench overhead``: its registry, its timing loop and its report, never its timings.

The run is ``--quick`` with a tiny budget on two losses (one with ``validate=``, one without):
the test checks the tables and the CSV have every row and column with positive numbers, that a
loss without ``validate=`` reports its default's figures as such, and that the goals and
``--check`` follow the thresholds (forced here to be missed or met).
"""

from __future__ import annotations

import contextlib
import csv
import io

import pytest
import torch

import losskit.functional as LF
from losskit.bench import main as bench_main
from losskit.bench import overhead as O

FAST = ["--quick", "--budget", "0.002", "--warmup", "1"]
ONLY = ["--only", "mse_loss", "--only", "nll_loss"]
TORCH_TWINS = {
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "cross_entropy", "nll_loss", "kl_div",
    "poisson_nll_loss", "gaussian_nll_loss", "margin_ranking_loss", "hinge_embedding_loss",
    "soft_margin_loss", "cosine_embedding_loss", "triplet_margin_loss", "multi_margin_loss",
    "multilabel_margin_loss", "multilabel_soft_margin_loss", "triplet_margin_with_distance_loss",
    "ctc_loss",
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-overhead")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert bench_main(["overhead", *FAST, *ONLY, "--out", str(out)]) == 0
    with open(out / "overhead.csv", newline="") as f:
        return printed.getvalue(), list(csv.DictReader(f))


def test_registry_names_every_torch_twin_once() -> None:
    assert {loss.fn for loss in O.LOSSES} == TORCH_TWINS
    labels = [loss.label for loss in O.LOSSES]
    assert len(labels) == len(set(labels))
    assert [loss.label for loss in O.LOSSES if loss.fn == "cross_entropy"] == [
        "cross_entropy",
        "cross_entropy (probabilities)",
    ]
    assert {loss.fn for loss in O.available()} == {n for n in TORCH_TWINS if hasattr(LF, n)}


@pytest.mark.parametrize("loss", O.LOSSES, ids=lambda loss: loss.label)
def test_every_registered_input_runs_through_torchs_twin(loss) -> None:
    """Each maker gives inputs torch accepts, with a gradient, at tiny size and in float64."""
    gen = torch.Generator().manual_seed(0)
    args, kwargs = loss.make(*O.SIZES["tiny"], torch.float64, gen)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    assert leaves and all(leaf.is_leaf for leaf in leaves)
    value = loss.torch(*args, **kwargs)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)
    if loss.losskit is not None:  # losskit's value is torch's on the bench's inputs
        assert O._agreement(loss, args, kwargs) == ""


def test_quick_run_prints_both_sizes_and_every_column(quick_run) -> None:
    printed, _ = quick_run
    assert "tiny (64 x 10), float32, 1 thread(s)" in printed
    assert "small (1024 x 100), float32, 1 thread(s)" in printed
    assert "medium" not in printed  # --quick: the goal sizes only
    for column in ("fwd+bwd torch", "forward torch", "val=False", "goals"):
        assert column in printed
    assert " of 8 met" in printed  # 2 losses x 2 sizes x validate on and off
    assert "wrote " in printed and "overhead.csv" in printed


def test_quick_run_draws_the_ratios(quick_run, tmp_path_factory) -> None:
    pytest.importorskip("matplotlib")
    printed, rows = quick_run
    path = next(line.split()[-1] for line in printed.splitlines() if line.endswith("overhead.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_quick_run_csv_has_every_loss_size_pass_and_implementation(quick_run) -> None:
    _, rows = quick_run
    keys = {(r["loss"], r["size"], r["pass"], r["impl"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 2 * 2 * 3
    assert {r["loss"] for r in rows} == {"mse_loss", "nll_loss"}
    assert {r["impl"] for r in rows} == {O.TORCH, O.LOSSKIT, O.NO_VALIDATE}
    for r in rows:
        assert r["bench"] == "overhead" and r["threads"] == "1" and r["dtype"] == "float32"
        for column in ("median_us", "median_ms", "min_ms", "x_baseline"):
            assert float(r[column]) > 0, (r["loss"], r["impl"], column)
        assert float(r["min_ms"]) <= float(r["median_ms"])
        assert int(r["repeats"]) >= O.GOAL_MIN_REPEATS  # tiny and small are goal sizes
        if r["impl"] == O.TORCH:
            assert float(r["x_baseline"]) == 1.0
    by = {(r["loss"], r["size"], r["pass"], r["impl"]): r for r in rows}
    for size in ("tiny", "small"):
        for pass_ in O.PASSES:
            # mse_loss has no validate=: its validate=False row is its default's, and says so
            plain, off = by["mse_loss", size, pass_, O.LOSSKIT], by["mse_loss", size, pass_,
                                                                  O.NO_VALIDATE]  # fmt: skip
            assert off["median_us"] == plain["median_us"] and off["has_validate"] == "False"
            assert "no validate keyword" in off["note"]
            # nll_loss has it: timed on its own
            assert by["nll_loss", size, pass_, O.NO_VALIDATE]["has_validate"] == "True"
            assert "no validate keyword" not in by["nll_loss", size, pass_, O.NO_VALIDATE]["note"]


CHECK_CASES = [(1e-9, True, 1), (1e9, True, 0), (1e-9, False, 0)]  # (goal, --check, exit status)


@pytest.mark.parametrize("limit, check, status", CHECK_CASES)
def test_check_follows_the_goals(monkeypatch, capsys, limit, check, status) -> None:
    monkeypatch.setattr(O, "GOALS", {True: limit, False: limit})
    argv = ["overhead", *FAST, "--sizes", "tiny", "--only", "nll_loss"]
    assert bench_main(argv + ["--check"] * check) == status
    out = capsys.readouterr().out
    if limit < 1:
        assert out.count("-> MISSED") == 2  # validate=True and validate=False
        assert "goal nll_loss tiny fwd+bwd validate=False: <= 1e-09x torch" in out
    if check and status:
        assert "losskit bench overhead --check: 2 of 2 goals MISSED: nll_loss tiny" in out
    elif check:
        assert "losskit bench overhead --check: all 2 goals met" in out


def test_medium_has_no_goals(monkeypatch) -> None:
    row = O.Row("mse_loss", "medium", *O.SIZES["medium"], has_validate=False)
    row.median_us = {("fwd+bwd", O.TORCH): 1.0, ("fwd+bwd", O.LOSSKIT): 9.0}
    assert O.goals([row]) == []
    row.size = "small"
    assert [g.met for g in O.goals([row])] == [False, False]
    assert "no validate keyword" in O.goals([row])[1].measured


def test_a_loss_that_raises_is_a_missed_goal_not_a_crash() -> None:
    def mismatched(n, c, dtype, gen):
        return (torch.zeros(n, c, requires_grad=True), torch.zeros(n + 1, c)), {}

    row = O.measure(O.Loss("broken", "mse_loss", mismatched), "tiny", 4, 3, torch.float32,
                    budget_s=0.001, warmup=1)  # fmt: skip
    assert row.error.startswith("failed: ") and row.median_us == {}
    goals = O.goals([row])
    assert len(goals) == 2 and not any(g.met for g in goals)
    assert goals[0].measured == row.error


def test_time_interleaved_takes_turns_and_honours_the_minimum() -> None:
    order: list[str] = []
    prepared = []
    calls = {name: (lambda name=name: order.append(name)) for name in "ABC"}
    samples, rounds = O.time_interleaved(
        calls, lambda: prepared.append(1), budget_s=0.0, warmup=2, min_repeats=4
    )
    assert rounds == 4 and all(len(s) == 4 for s in samples.values())
    # a zero budget: one warm-up round (not the two asked for), then the minimum of four
    assert order == list("ABC") * (1 + 4)
    assert len(prepared) == len(order) + 1  # before each call, and once to free the last
    assert all(t >= 0 for s in samples.values() for t in s)


def test_time_interleaved_runs_for_its_budget() -> None:
    samples, rounds = O.time_interleaved(
        {"A": lambda: None, "B": lambda: None}, lambda: None, budget_s=0.02, warmup=1
    )
    assert rounds > O.MIN_REPEATS  # a no-op call: many rounds fit in 20 ms


def test_bad_options_are_refused(capsys) -> None:
    assert bench_main(["overhead", "--only", "mse"]) == 2
    assert "unknown --only ['mse']" in capsys.readouterr().out
    assert bench_main(["overhead", "--sizes", "huge"]) == 2
    assert "choose from ['tiny', 'small', 'medium']" in capsys.readouterr().out
    assert bench_main(["overhead", "--threads", "0"]) == 2


def test_threads_are_restored(monkeypatch) -> None:
    before = torch.get_num_threads()
    assert bench_main(["overhead", *FAST, "--sizes", "tiny", "--only", "mse_loss",
                       "--threads", "1"]) == 0  # fmt: skip
    assert torch.get_num_threads() == before
