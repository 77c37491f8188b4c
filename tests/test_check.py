"""``losskit.check``: it passes correct losses and catches (and names) the classic bugs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.function import once_differentiable

import losskit
import losskit.functional as LF
import losskit.nn
from losskit.check import CheckReport, make_examples
from losskit.check.report import whole_sentences
from losskit.check.subject import TORCH_TWINS, torch_twins

PROPERTIES = [
    "call",
    "inputs unchanged",
    "reductions",
    "sum = mean x count",
    "autograd graph",
    "gradcheck (float64)",
    "double backward (float64)",
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
    for name in ("gradcheck (float64)", "double backward (float64)"):
        result = report[name]
        assert result.passed and not result.skipped and result.discrepancy < 1e-6, result
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


def inputs_for(name: str) -> tuple:
    """Examples for the loss Module ``name`` (torch's naming), each margin violated so that
    every input gets a gradient."""
    x, y = make_examples((4, 3))
    if name in ("CrossEntropyLoss", "NLLLoss", "NLLLoss2d", "FocalLoss", "MultiMarginLoss"):
        return make_examples((4, 3), target="index")
    if name == "LinearCrossEntropyLoss":
        return make_examples((4, 3), target="index")
    if name == "DistillationLoss":  # student and teacher logits, hard labels
        return x, y, torch.tensor([0, 2, 1, 1])
    sign = torch.where(x > y, -1.0, 1.0)
    if name == "MarginRankingLoss":
        return x[:, 0], y[:, 0], sign[:, 0]  # the wrong order for each pair
    if name in ("HingeEmbeddingLoss", "SoftMarginLoss"):
        return x, sign
    if name == "CosineEmbeddingLoss":
        return x, y, sign[:, 0]
    if name in ("TripletMarginLoss", "TripletMarginWithDistanceLoss"):
        return x, y, 0.5 * y + 0.1
    if name == "GaussianNLLLoss":
        return x, y, 0.5 + y
    if name == "MultiLabelSoftMarginLoss":
        return x, y.round()
    if name == "MultiLabelMarginLoss":
        return x, torch.tensor([[0, 1, -1], [2, -1, 0], [1, 0, 2], [-1, 0, 0]])
    if name == "CTCLoss":
        log_probs = torch.log_softmax(torch.rand(6, 2, 4, generator=torch.Generator()), 2)
        return log_probs, torch.tensor([[1, 2], [3, 3]]), torch.tensor([6, 5]), torch.tensor([2, 2])
    return x, y


PREFERENCE = {name for name in losskit.nn.preference.__all__}


def preference_inputs(name: str) -> tuple[tuple, dict, tuple[int, ...]]:
    """Examples, keyword arguments and the differentiated inputs of a preference loss: log-probs
    of 3 pairs (or 6 examples, or 6 completions of 4 tokens), or hidden states (6, 4, 3) and a
    head of 7 classes, float64 (reference log-probabilities fixed, KL and old log-probs given)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    good = torch.tensor([True, False, True, True, False, False])
    if name == "DPOLoss":
        return tuple(randn(3) - 10 for _ in range(4)), {}, (0, 1)
    if name in ("ORPOLoss", "SimPOLoss", "CPOLoss"):
        return (-0.5 - randn(3).abs(), -0.7 - randn(3).abs()), {}, (0, 1)
    if name == "KTOLoss":
        return (randn(6) - 10, randn(6) - 10, good), {"kl": 0.2}, (0,)
    if name == "GRPOLoss":
        kwargs = {"old_logps": randn(6, 4) * 0.1 - 2, "reference_logps": randn(6, 4) - 2}
        return (randn(6, 4) * 0.1 - 2, randn(6)), kwargs, (0,)
    head = (randn(6, 4, 3), randn(7, 3), torch.randint(0, 7, (6, 4), generator=g))
    if name == "LinearKTOLoss":
        return (*head, good), {"reference_logps": randn(6) - 8, "kl": 0.1}, (0, 1)
    if name == "LinearGRPOLoss":
        kwargs = {"old_logps": randn(6, 4) * 0.1 - 2, "reference_logps": randn(6, 4) - 2}
        return (*head, randn(6)), kwargs, (0, 1)
    kwargs = {"reference_logps": randn(6) - 8} if name == "LinearDPOLoss" else {}
    return head, kwargs, (0, 1)


@pytest.mark.parametrize("name", losskit.nn.__all__)
def test_check_takes_the_twins_from_module_function(name):
    """A Module's twin is its ``function``; a function's twin, the Module naming it. The linear
    loss's function also takes the head, so neither of the two has a twin to compare with.
    Every losskit loss passes every property, the double backward included."""
    cls = getattr(losskit.nn, name)
    examples = inputs_for(name)
    if cls is losskit.LinearDistillationLoss:  # the heads are inputs: its twin takes them too
        g = torch.Generator().manual_seed(0)
        heads = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in
                 ((4, 3), (7, 3), (4, 5), (7, 5))]  # fmt: skip
        for loss in (cls(divergence="jsd"), cls.function):
            report = run(loss, *heads, grad_inputs=(0, 1))
            assert report.ok, str(report)
            assert not report["module = function"].skipped
        return
    if name in PREFERENCE:
        examples, kwargs, grads = preference_inputs(name)
        for loss in (cls(), cls.function):
            report = run(loss, *examples, loss_kwargs=kwargs, grad_inputs=grads)
            assert report.ok, str(report)
            assert not report["module = function"].skipped
        return
    if cls is losskit.LinearCrossEntropyLoss:
        assert run(cls(3, 5), *examples)["module = function"].skipped
        assert run(cls.function, *examples)["module = function"].skipped
        return
    # CTC: as in test_check_knows_torch_twins (its 'mean' divides by the target lengths; its
    # gradient, torch's, is that of the logits under log_softmax)
    count = {"CTCLoss": 4}.get(name)
    for loss in (cls(), cls.function):
        report = run(loss, *examples, count=count)
        failed = {r.name for r in report.failed}
        assert failed == ({"gradcheck (float64)"} if name == "CTCLoss" else set()), str(report)
        twin = report["module = function"]
        module, function = twin.detail.split(" vs ")
        assert not twin.skipped and function.startswith(f"{cls.function.__name__} "), twin
        assert module == name or loss is cls.function  # NLLLoss2d.function names NLLLoss


def test_torch_twins_cover_every_torch_loss():
    losses = {
        name
        for name in dir(torch.nn.modules.loss)
        if name.endswith("Loss") and not name.startswith("_")
    }
    # torch's linear cross-entropy also takes the head's weight; NLLLoss2d is deprecated
    assert set(TORCH_TWINS) == losses - {"LinearCrossEntropyLoss"}
    assert {cls.__name__ for cls in torch_twins()} == set(TORCH_TWINS)


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_check_knows_torch_twins(name):
    """torch's loss Modules are compared with their ``torch.nn.functional`` functions, with the
    Module's settings, and the other way round; their 'none' shapes and counts are known."""
    cls, fn = getattr(torch.nn, name), getattr(torch.nn.functional, TORCH_TWINS[name])
    settings = {
        "HuberLoss": {"delta": 0.3},  # any |x - y| above it: not the default 1.0
        "SmoothL1Loss": {"beta": 0.3},
        "KLDivLoss": {"log_target": True},
        "CrossEntropyLoss": {"label_smoothing": 0.2},
        "PoissonNLLLoss": {"log_input": False},
        "TripletMarginLoss": {"margin": 2.0, "p": 1.0},
    }.get(name, {})
    examples = inputs_for(name)
    # CTC's 'mean' divides by the target lengths (all 2 here); torch's CTC gradient is the
    # gradient of the logits under log_softmax, not of free log-probabilities: gradcheck fails
    count = {"CTCLoss": 4}.get(name)
    for loss, kwargs in ((cls(**settings), {}), (fn, settings)):
        report = run(loss, *examples, loss_kwargs=kwargs, count=count)
        twin = report["module = function"]
        assert not twin.skipped and twin.detail.startswith(f"{name} vs {fn.__name__} "), twin
        failed = {r.name for r in report.failed}
        assert failed == ({"gradcheck (float64)"} if name == "CTCLoss" else set()), str(report)
    if settings:  # the settings reach the function: without them the two differ
        twin = run(cls(**settings), *examples, functional=lambda *a, **k: fn(*a))
        assert not twin["module = function"].passed, str(twin)


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


def test_a_call_refusing_checks_own_examples_says_to_pass_inputs():
    """Check's own (input, target) examples do not fit a loss taking other inputs: the failed
    call says so; with the loss's inputs given, it passes."""
    report = run(losskit.GaussianNLLLoss())
    detail = report["call"].detail
    assert not report.ok and "missing 1 required positional argument: 'var'" in detail
    assert detail.endswith("pass the loss's own inputs, check(loss, *inputs), or on the command "
                           "line --shape/--target)")  # fmt: skip
    assert run(losskit.GaussianNLLLoss(), *inputs_for("GaussianNLLLoss")).ok
    x, y = make_examples((4, 3))
    explicit = run(losskit.GaussianNLLLoss(), x, y)  # inputs given: no hint
    assert "check made itself" not in explicit["call"].detail


class NonScalar(torch.nn.Module):  # forgets to reduce
    def forward(self, input, target):
        return (input - target) ** 2


class KeepDim(torch.nn.Module):
    def forward(self, input, target):
        return ((input - target) ** 2).mean(dim=(0, 1), keepdim=True)


def test_check_fails_a_default_call_that_does_not_reduce():
    x, y = make_examples()
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        NonScalar()(x.requires_grad_(), y).backward()  # what the check guards against
    report = run(NonScalar(), x.detach(), y)
    call = report["call"]
    assert not report.ok and not call.passed
    assert call.detail.startswith(
        "returns shape (4, 3), but a loss's default call must return a 0-dim scalar"
    )
    assert "loss.backward() on it fails" in call.detail and ".mean()" in call.detail
    assert report["autograd graph"].passed  # the other properties still run
    call = run(KeepDim())["call"]
    assert not call.passed and "shape (1, 1)" in call.detail and "keepdim" in call.detail
    # a reduction of 'none' asked for is no failure
    call = run(losskit.MSELoss(reduction="none"))["call"]
    assert call.passed and call.detail == "returns shape (4, 3), torch.float32 (reduction='none')"


class _Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d):
        ctx.save_for_backward(d)
        return d * d

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        return 2 * grad * d


class _CutBackward(torch.autograd.Function):  # right gradient, but not differentiable
    @staticmethod
    def forward(ctx, d):
        ctx.save_for_backward(d)
        return d**3

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        return 3 * grad * d.detach() ** 2


class _SavedSquare(torch.autograd.Function):  # saves d * d, made without a graph
    @staticmethod
    def forward(ctx, d):
        ctx.save_for_backward(d * d)
        return d**3

    @staticmethod
    def backward(ctx, grad):
        (square,) = ctx.saved_tensors
        return 3 * grad * square


class _NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d):
        ctx.save_for_backward(d)
        return d * d

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # asked for a graph of the gradient
            raise RuntimeError("no graph here, by design")
        (d,) = ctx.saved_tensors
        return 2 * grad * d


def _of(function):
    def loss(input, target, reduction="mean"):
        out = function.apply(input - target)
        return {"none": out, "mean": out.mean(), "sum": out.sum()}[reduction]

    loss.__name__ = function.__name__.strip("_").lower()
    return loss


def test_check_double_backward():
    once = run(_of(_Once))
    result = once["double backward (float64)"]
    assert once.ok and result.skipped
    assert result.detail == (
        "once-differentiable: trying to differentiate twice a function that was marked "
        "with @once_differentiable"
    )
    assert once["gradcheck (float64)"].passed  # first order is checked all the same
    x, t = make_examples((4, 3), target="index")
    result = run(torch.nn.MultiMarginLoss(), x, t)["double backward (float64)"]
    assert result.skipped and result.detail == (
        "once-differentiable: derivative for aten::multi_margin_loss_backward is not implemented"
    )
    cut = run(_of(_CutBackward))
    result = cut["double backward (float64)"]
    assert _failed(cut) == {"double backward (float64)"}  # first order is right
    assert result.discrepancy > 0.1 and "gradgradcheck failed: Jacobian mismatch" in result.detail
    assert ".detach() cuts the autograd graph [test_check.py:" in result.detail
    result = run(_of(_NoDoubleBackward))["double backward (float64)"]
    assert not result.passed and not result.skipped  # another error is a failure
    assert result.detail == "raised RuntimeError: no graph here, by design"
    saved = run(_of(_SavedSquare))
    result = saved["double backward (float64)"]
    assert _failed(saved) == {"double backward (float64)"} and result.discrepancy > 0.1
    assert "custom autograd.Function (_SavedSquare.backward [test_check.py:" in result.detail
    # above 32 input elements gradgradcheck takes random projections: it still sees the bug
    big = make_examples((6, 7))
    assert not run(_of(_SavedSquare), *big)["double backward (float64)"].passed
    result = run(losskit.MSELoss(), *big)["double backward (float64)"]
    assert result.passed and result.detail.endswith("(reduction='sum', fast mode)")
    # a wrong gradient, computed with differentiable ops: its own derivative is right
    assert run(wrong_gradient)["double backward (float64)"].passed
    result = run(item_loss)["double backward (float64)"]
    assert result.skipped and "no gradient (see autograd graph)" in result.detail


def test_messages_are_cut_between_sentences_only():
    def raises(input, target):
        raise RuntimeError("the first half of a sentence,\n  its second half. Then more.")

    detail = run(raises)["call"].detail
    assert (
        detail == "raised RuntimeError: the first half of a sentence, its second half. Then more."
    )
    gradcheck = run(wrong_gradient)["gradcheck (float64)"].detail
    assert gradcheck.startswith("torch.autograd.gradcheck failed: Jacobian mismatch for output 0")
    assert "numerical:tensor(" in gradcheck and "analytical:tensor(" in gradcheck
    assert gradcheck.endswith("dtype=torch.float64)")
    text = "One short sentence. " * 30 + "And the last one."
    kept = whole_sentences(text, limit=50)
    assert kept == "One short sentence. One short sentence."
    long = "a clause, " * 60 + "the end."
    assert whole_sentences(long, limit=50) == long.strip()  # one sentence: whole


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
