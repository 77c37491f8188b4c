"""``losskit.check``: it passes correct losses and catches (and names) the classic bugs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import losskit
import losskit.functional as LF
import losskit.nn
from losskit.check import CheckReport, main, make_examples

PROPERTIES = [
    "call",
    "inputs unchanged",
    "reductions",
    "sum = mean x count",
    "autograd graph",
    "gradcheck (float64)",
    "module = function",
    "deterministic",
    "torch.compile",
]


def run(loss, *examples, **options) -> CheckReport:
    options.setdefault("compile", False)
    return losskit.check(loss, *examples, quiet=True, **options)


# --------------------------------------------------------------------------------------------
# correct losses pass
# --------------------------------------------------------------------------------------------


class My_loss(losskit.Loss):
    def elementwise(self, x, y):
        return (x - y) ** 2


@losskit.loss_function
def log_cosh(input, target, *, scale=1.0):
    return torch.log(torch.cosh(scale * (input - target))) / scale


CORRECT = {
    "losskit.MSELoss": (losskit.MSELoss(), ()),
    "torch.nn.MSELoss": (torch.nn.MSELoss(), ()),
    "My_loss": (My_loss(), ()),
    "My_loss class": (My_loss, ()),
    "decorated function": (log_cosh, ()),
    "decorated Module": (log_cosh.Module(scale=2.0), ()),
    "cross_entropy, indices": (LF.cross_entropy, make_examples((6, 4), target="index")),
    "CrossEntropyLoss, soft": (losskit.CrossEntropyLoss(), make_examples((6, 4))),
    "FocalLoss, K-dim": (losskit.FocalLoss(gamma=1.5), make_examples((3, 4, 2), target="index")),
    "SigmoidFocalLoss": (losskit.SigmoidFocalLoss(), ()),
    "BCELoss": (losskit.BCELoss(), ()),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_check_passes_correct_losses(name):
    loss, examples = CORRECT[name]
    report = run(loss, *examples)
    assert report.ok, str(report)
    assert [r.name for r in report.results] == PROPERTIES
    assert report["torch.compile"].skipped
    gradcheck = report["gradcheck (float64)"]
    assert gradcheck.passed and gradcheck.discrepancy < 1e-6
    assert report["sum = mean x count"].discrepancy < 1e-6
    assert report["deterministic"].discrepancy == 0.0


def test_check_compares_module_and_function_twins():
    for loss in (
        losskit.MSELoss(),
        LF.mse_loss,
        log_cosh,
        log_cosh.Module(scale=0.5),
        losskit.SigmoidFocalLoss(alpha=0.5, reduction="sum"),
    ):
        twin = run(loss)["module = function"]
        assert twin.passed and not twin.skipped and twin.discrepancy == 0.0, twin
    assert run(My_loss())["module = function"].skipped
    # a user's Module and the function it claims to equal
    twin = run(My_loss(), functional=LF.mse_loss)["module = function"]
    assert twin.passed and not twin.skipped


@pytest.mark.parametrize("name", losskit.nn.__all__)
def test_check_takes_the_twins_from_module_function(name):
    """A Module's twin is its ``function``; a function's twin, the Module naming it. The linear
    loss's function also takes the head, so neither of the two has a twin to compare with."""
    cls = getattr(losskit.nn, name)
    index = name in ("CrossEntropyLoss", "NLLLoss", "FocalLoss", "LinearCrossEntropyLoss")
    examples = make_examples((4, 3), target="index" if index else "float")
    if cls is losskit.LinearCrossEntropyLoss:
        assert run(cls(3, 5), *examples)["module = function"].skipped
        assert run(cls.function, *examples)["module = function"].skipped
        return
    for loss in (cls(), cls.function):
        twin = run(loss, *examples)["module = function"]
        assert twin.passed and not twin.skipped, twin
        assert twin.detail.startswith(f"{name} vs {cls.function.__name__} "), twin


def test_check_counts_ignored_and_masked_targets():
    x, t = make_examples((8, 5), target="index")
    t[2] = -100
    report = run(
        losskit.CrossEntropyLoss(),
        x,
        t,
        loss_kwargs={"mask": torch.tensor([True] * 6 + [False] * 2)},
    )
    assert report.ok, str(report)
    assert "count 5" in report["sum = mean x count"].detail


def test_check_class_weighted_mean_and_function_options():
    """A class-weighted 'mean' divides by the counted targets' weights; options reach the twin."""
    x, t = make_examples((6, 4), target="index")
    w = torch.tensor([0.2, 1.0, 3.0, 0.7])
    for loss, kwargs in (
        (losskit.CrossEntropyLoss(weight=w), {}),
        (LF.cross_entropy, {"weight": w}),
        (LF.focal_loss, {"weight": w, "gamma": 0.5}),
    ):
        report = run(loss, x, t, loss_kwargs=kwargs)
        assert report.ok, str(report)
        count = float(w[t].sum())
        assert f"count {count:g}" in report["sum = mean x count"].detail
        assert not report["module = function"].skipped
    report = run(log_cosh, loss_kwargs={"scale": 3.0})
    assert report.ok and "LogCoshLoss vs log_cosh" in report["module = function"].detail


def test_check_with_torch_compile_once():
    report = losskit.check(log_cosh, compile="aot_eager", quiet=True)
    result = report["torch.compile"]
    assert result.passed and not result.skipped and result.discrepancy == 0.0, str(report)
    assert "aot_eager" in result.detail


# --------------------------------------------------------------------------------------------
# the classic bugs are caught and named
# --------------------------------------------------------------------------------------------


def item_loss(input, target, reduction="mean"):
    loss = ((input - target) ** 2).mean()
    return torch.tensor(loss.item())  # the value leaves autograd


def float_loss(input, target, reduction="mean"):
    return float(((input - target) ** 2).mean())


def numpy_loss(input, target, reduction="mean"):
    d = input.detach().numpy() - target.numpy()
    return torch.tensor(np.mean(d * d))


class DetachLoss(losskit.Loss):
    def elementwise(self, input, target):
        return (input.detach() - target) ** 2


def wrong_reduction_shape(input, target, reduction="mean"):
    loss = (input - target) ** 2
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean(0)  # a mean over the batch only


def none_reduces(input, target, reduction="mean"):
    loss = (input - target) ** 2
    return loss.sum() if reduction == "sum" else loss.mean()  # ignores 'none'


class Noisy(torch.nn.Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        noise = 1e-3 * torch.randn_like(input)
        return LF.mse_loss(input + noise, target, reduction=self.reduction)


def in_place(input, target, reduction="mean"):
    target.clamp_(0.2, 0.8)  # modifies the caller's tensor
    return LF.mse_loss(input, target, reduction=reduction)


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d):
        ctx.save_for_backward(d)
        return d * d

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        return grad * d  # should be 2 d


def wrong_gradient(input, target, reduction="mean"):
    loss = _WrongBackward.apply(input - target)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


class WrongTwin(losskit.Loss):
    functional = staticmethod(LF.l1_loss)  # claims to equal L1, computes squares

    def elementwise(self, input, target):
        return (input - target) ** 2


def _failed(report: CheckReport) -> set[str]:
    return {r.name for r in report.failed}


def test_check_names_item():
    report = run(item_loss)
    assert not report.ok
    graph = report["autograd graph"]
    assert not graph.passed
    assert "no autograd graph" in graph.detail and ".item()" in graph.detail
    assert "test_check.py:" in graph.detail  # with the culprit's line
    assert "gradcheck (float64)" in _failed(report)


def test_check_names_float():
    report = run(float_loss)
    assert not report["call"].passed and "returns float" in report["call"].detail
    assert "float()" in report["autograd graph"].detail


def test_check_names_numpy_round_trip():
    graph = run(numpy_loss)["autograd graph"]
    assert not graph.passed and "NumPy round trip" in graph.detail


def test_check_names_detach():
    report = run(DetachLoss())
    graph = report["autograd graph"]
    assert not graph.passed and ".detach() cuts the autograd graph" in graph.detail
    assert _failed(report) == {"autograd graph", "gradcheck (float64)"}


def test_check_names_wrong_reduction_shape():
    report = run(wrong_reduction_shape)
    result = report["reductions"]
    assert not result.passed
    assert "reduction='mean' returned (3,), expected () (a 0-dim tensor)" in result.detail
    report = run(none_reduces)
    assert "reduction='none' returned (), expected (4, 3)" in report["reductions"].detail


def test_check_names_nondeterminism():
    report = run(Noisy())
    result = report["deterministic"]
    assert not result.passed and result.discrepancy > 0
    assert "random numbers" in result.detail and "randn_like" in result.detail


def test_check_catches_in_place_modification():
    x, t = make_examples()
    before = t.clone()
    report = run(in_place, x, t)
    assert torch.equal(t, before)  # check works on copies
    result = report["inputs unchanged"]
    assert not result.passed and "modified target in place" in result.detail
    assert result.discrepancy > 0


def test_check_catches_a_wrong_backward():
    report = run(wrong_gradient)
    result = report["gradcheck (float64)"]
    assert not result.passed and "gradcheck failed" in result.detail
    assert result.discrepancy > 0.1  # the analytic gradient is half the true one
    assert report["autograd graph"].passed  # the graph is there; its numbers are wrong


def test_check_catches_module_function_mismatch():
    result = run(WrongTwin())["module = function"]
    assert not result.passed and result.discrepancy > 0
    assert "WrongTwin vs l1_loss" in result.detail


def test_check_sum_mean_count_catches_inconsistent_mean():
    def half_mean(input, target, reduction="mean"):
        loss = (input - target) ** 2
        return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / (2 * loss.numel())}[reduction]

    result = run(half_mean)["sum = mean x count"]
    assert not result.passed and math.isclose(result.discrepancy, 0.5, rel_tol=1e-6)


def test_check_reports_a_raising_loss():
    def raises(input, target):
        raise RuntimeError("boom")

    report = run(raises)
    assert not report.ok and report["call"].detail == "raised RuntimeError: boom"
    assert all(r.skipped for r in report.results[1:])


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def test_report_table_and_printing(capsys):
    report = losskit.check(DetachLoss(), compile=False)
    printed = capsys.readouterr().out
    assert printed.strip() == str(report).strip()
    lines = printed.splitlines()
    assert lines[0].startswith("losskit.check: DetachLoss(reduction='mean') on input (4, 3)")
    for name in PROPERTIES:
        assert any(line.lstrip().startswith(name) for line in lines), name
    graph_line = next(line for line in lines if line.lstrip().startswith("autograd graph"))
    assert " FAIL " in graph_line
    mse_line = next(line for line in lines if line.lstrip().startswith("sum = mean x count"))
    assert " pass " in mse_line and "e-" in mse_line  # the measured discrepancy
    assert lines[-1].startswith("FAILED: 5 passed, 2 failed (autograd graph, gradcheck")
    losskit.check(losskit.MSELoss(), compile=False, quiet=True)
    assert capsys.readouterr().out == ""
    with pytest.raises(KeyError, match="no property 'speed'"):
        report["speed"]


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

BROKEN_FILE = textwrap.dedent("""
    import torch

    def item_loss(input, target, reduction="mean"):
        return torch.tensor(((input - target) ** 2).mean().item())

    class Good(torch.nn.Module):
        reduction = "mean"

        def forward(self, input, target):
            loss = (input - target) ** 2
            return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[self.reduction]
""")


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "user_losses.py"
    path.write_text(BROKEN_FILE)
    assert main(["losskit.nn:MSELoss", "--no-compile"]) == 0
    assert "OK: 8 passed, 1 skipped" in capsys.readouterr().out
    assert main([f"{path}:Good", "--shape", "5,2", "--no-compile", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main([f"{path}:item_loss", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert "autograd graph" in out and ".item()" in out and "user_losses.py:5" in out
    assert (
        main(
            [
                "losskit.functional:cross_entropy",
                "--shape",
                "6,4",
                "--target",
                "index",
                "--no-compile",
            ]
        )
        == 0
    )
    assert "target (6,) int64" in capsys.readouterr().out
    assert (
        main(["losskit.nn:FocalLoss", "--shape", "2,3,4", "--target", "index", "--no-compile"]) == 0
    )
    capsys.readouterr()
    assert main(["losskit.nn:NoSuchLoss"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert main(["no_colon"]) == 2
    assert main(["losskit.nn:MSELoss", "--shape", "4,a", "--no-compile"]) == 2
    capsys.readouterr()


def test_make_examples_are_seeded():
    a, b = make_examples((3, 2), seed=5), make_examples((3, 2), seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    x, y = a
    assert x.min() >= 0.1 and x.max() < 0.9 and y.min() >= 0 and y.max() < 1
    x, y = make_examples(((4, 3), (4,)), target="index")
    assert y.shape == (4,) and y.dtype == torch.int64 and 0 <= int(y.min()) <= int(y.max()) < 3


def test_cli_subprocess_exit_status(tmp_path):
    path = tmp_path / "user_losses.py"
    path.write_text(BROKEN_FILE)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "losskit", "check", f"{path}:item_loss", "--no-compile"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "FAILED" in done.stdout and ".item()" in done.stdout
