"""The custom-loss toolkit: the ``losskit.Loss`` base and the ``@losskit.loss_function``."""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch

import losskit

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class My_loss(losskit.Loss):  # the tutorial's mean squared error, from tensor math
    def elementwise(self, x, y):
        return (x - y) ** 2


@losskit.loss_function
def log_cosh(input, target, *, scale=1.0):
    """log(cosh(s (x - y))) / s: quadratic near 0, linear far away."""
    return torch.log(torch.cosh(scale * (input - target))) / scale


@losskit.loss_function(same_shape=False)
def multiclass_hinge(input, target, *, margin=1.0):
    """Per row: sum over wrong classes of max(0, margin - x_y + x_c) (Crammer-Singer style)."""
    x_y = input.gather(1, target.unsqueeze(1))
    hinge = (margin - x_y + input).clamp_min(0)
    return hinge.sum(1) - margin  # remove the c == y term, which is exactly `margin`


def _xy(seed=0, shape=(5, 3)):
    g = _gen(seed)
    return (
        torch.randn(shape, generator=g, dtype=F64).requires_grad_(),
        torch.randn(shape, generator=g, dtype=F64),
    )


def _value_and_grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x, retain_graph=True)
    return loss.detach(), g


# --------------------------------------------------------------------------------------------
# the Loss base
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_my_loss_equals_mse_loss(reduction):
    x, y = _xy()
    mine = _value_and_grad(My_loss(reduction=reduction)(x, y), x)
    assert torch.equal(mine[0], losskit.MSELoss(reduction=reduction)(x, y).detach())
    torch.testing.assert_close(
        mine, _value_and_grad(torch.nn.MSELoss(reduction=reduction)(x, y), x), **TIGHT
    )
    if reduction != "none":
        assert mine[0].dim() == 0


def test_my_loss_legacy_reductions_warn_like_torch():
    x, y = _xy(1)
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        legacy = My_loss(reduction="elementwise_mean")
    assert legacy.reduction == "mean"
    torch.testing.assert_close(legacy(x, y), torch.nn.MSELoss()(x, y), **TIGHT)
    for size_average, reduce, expected in (
        (False, None, "sum"),
        (None, False, "none"),
        (True, True, "mean"),
    ):
        with pytest.warns(FutureWarning, match="size_average and reduce"):
            module = My_loss(size_average=size_average, reduce=reduce)
        assert module.reduction == expected
        torch.testing.assert_close(
            module(x, y), torch.nn.MSELoss(reduction=expected)(x, y), **TIGHT
        )


def test_loss_weight_is_an_elementwise_buffer():
    x, y = _xy(2)
    w = torch.rand(3, dtype=F64)  # broadcast over the rows
    module = My_loss(w, reduction="mean")
    assert "weight" in dict(module.named_buffers())
    assert torch.equal(module.state_dict()["weight"], w)
    torch.testing.assert_close(module(x, y), (w * (x - y) ** 2).mean(), **TIGHT)
    torch.testing.assert_close(My_loss(w, reduction="sum")(x, y), (w * (x - y) ** 2).sum(), **TIGHT)
    # a weighted average is one normalizer away
    full = w.expand(5, 3)
    torch.testing.assert_close(
        module(x, y, normalizer=full.sum()), (full * (x - y) ** 2).sum() / full.sum(), **TIGHT
    )
    assert module.float().weight.dtype == torch.float32
    with pytest.raises(losskit.LossValueError, match="weight has shape"):
        My_loss(torch.ones(4))(x, y)


def test_loss_mask_and_normalizer():
    x, y = _xy(3)
    rows = torch.tensor([True, False, True, True, False])
    module = My_loss()
    masked = _value_and_grad(module(x, y, mask=rows[:, None]), x)
    torch.testing.assert_close(masked, _value_and_grad(module(x[rows], y[rows]), x), **TIGHT)
    y_dirty = y.clone()
    y_dirty[~rows] = float("nan")
    torch.testing.assert_close(
        _value_and_grad(module(x, y_dirty, mask=rows[:, None]), x), masked, **TIGHT
    )
    torch.testing.assert_close(module(x, y, normalizer=4), ((x - y) ** 2).sum() / 4, **TIGHT)
    assert module(x, y, mask=torch.zeros(5, 1, dtype=torch.bool), normalizer=0).item() == 0.0
    with pytest.raises(losskit.LossValueError, match="only applies with reduction='mean'"):
        My_loss(reduction="sum")(x, y, normalizer=3)


def test_loss_shape_checks():
    x, y = _xy(4)
    with pytest.raises(losskit.LossValueError, match=r"target has shape \(5, 1\) but input has"):
        My_loss()(x, y[:, :1])

    class Reduces(losskit.Loss):
        def elementwise(self, x, y):
            return ((x - y) ** 2).mean()

    with pytest.raises(
        losskit.LossValueError, match=r"Reduces.elementwise returned shape \(\) but input has shape"
    ):
        Reduces()(x, y)

    class Number(losskit.Loss):
        def elementwise(self, x, y):
            return float(((x - y) ** 2).sum().detach())

    with pytest.raises(losskit.LossTypeError, match="got float"):
        Number()(x, y)
    with pytest.raises(NotImplementedError, match="must define elementwise"):
        losskit.Loss()(x, y)
    with pytest.raises(losskit.LossValueError, match="reduction must be one of"):
        My_loss(reduction="avg")


def test_loss_with_another_target_shape():
    class RowHinge(losskit.Loss):
        same_shape = False

        def elementwise(self, x, y):
            return multiclass_hinge.elementwise(x, y)

    g = _gen(5)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randint(0, 4, (6,), generator=g)
    rows = torch.tensor([True, True, False, True, False, True])
    torch.testing.assert_close(RowHinge()(x, y, mask=rows), RowHinge()(x[rows], y[rows]), **TIGHT)
    assert RowHinge(reduction="none")(x, y).shape == (6,)


# --------------------------------------------------------------------------------------------
# the decorator
# --------------------------------------------------------------------------------------------


def test_decorated_function_matches_its_formula_in_every_reduction():
    x, y = _xy(6)
    w = torch.rand(5, 3, dtype=F64)
    for scale in (1.0, 2.5):
        per = torch.log(torch.cosh(scale * (x - y))) / scale
        for reduction, expected in (("none", per), ("mean", per.mean()), ("sum", per.sum())):
            got = log_cosh(x, y, reduction, scale=scale)
            torch.testing.assert_close(
                _value_and_grad(got, x), _value_and_grad(expected, x), **TIGHT
            )
        torch.testing.assert_close(log_cosh(x, y, "sum", w, scale=scale), (w * per).sum(), **TIGHT)
    assert log_cosh(x, y).dim() == 0


def test_decorated_function_signature_and_attributes():
    params = inspect.signature(log_cosh).parameters
    assert list(params) == ["input", "target", "reduction", "weight", "mask", "normalizer", "scale"]
    assert params["reduction"].default == "mean"
    assert params["scale"].kind is inspect.Parameter.KEYWORD_ONLY
    assert log_cosh.__name__ == "log_cosh"
    assert "log(cosh" in log_cosh.__doc__
    assert log_cosh.elementwise(torch.zeros(1), torch.zeros(1)).item() == 0.0
    assert issubclass(log_cosh.Module, losskit.Loss)
    assert log_cosh.Module.__name__ == "LogCoshLoss"
    assert log_cosh.Module.functional is log_cosh


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_decorated_module_equals_function(reduction):
    x, y = _xy(7)
    w = torch.rand(5, 3, dtype=F64)
    rows = torch.tensor([True, False, True, True, True])
    module = log_cosh.Module(w, reduction=reduction, scale=3.0)
    for kwargs in ({}, {"mask": rows[:, None]}):
        a = _value_and_grad(module(x, y, **kwargs), x)
        b = _value_and_grad(log_cosh(x, y, reduction, w, scale=3.0, **kwargs), x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert repr(module) == f"LogCoshLoss(reduction={reduction!r}, scale=3.0)"


def test_decorated_module_pickles_and_round_trips_state_dict():
    x, y = _xy(8)
    w = torch.rand(5, 3, dtype=F64)
    module = log_cosh.Module(w, reduction="sum", scale=2.0)
    clone = pickle.loads(pickle.dumps(module))
    assert type(clone) is log_cosh.Module
    assert torch.equal(clone(x, y), module(x, y))
    fresh = log_cosh.Module(torch.zeros(5, 3, dtype=F64), reduction="sum", scale=2.0)
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh(x, y), module(x, y))


def test_decorator_with_another_target_shape():
    g = _gen(9)
    x = torch.randn(6, 4, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    # independent: loop over rows and classes
    expected = torch.stack(
        [
            sum(torch.clamp(1.0 - x[i, y[i]] + x[i, c], min=0) for c in range(4) if c != y[i])
            for i in range(6)
        ]
    )
    torch.testing.assert_close(
        _value_and_grad(multiclass_hinge(x, y, "none"), x), _value_and_grad(expected, x), **TIGHT
    )
    module = multiclass_hinge.Module(reduction="sum", margin=1.0)
    torch.testing.assert_close(module(x, y), expected.sum(), **TIGHT)
    assert multiclass_hinge.Module.__name__ == "MulticlassHingeLoss"


def test_decorator_errors():
    x, y = _xy(10)
    with pytest.raises(losskit.LossTypeError, match="unexpected keyword argument 'scal'.*scale"):
        log_cosh(x, y, scal=2.0)
    with pytest.raises(losskit.LossTypeError, match="unexpected keyword argument 'beta'"):
        log_cosh.Module(beta=1.0)
    with pytest.raises(losskit.LossValueError, match="hyper-parameter named 'weight'"):

        @losskit.loss_function
        def bad(input, target, weight=1.0):
            return input * weight

    with pytest.raises(losskit.LossValueError, match=r"\(input, target\)"):
        losskit.loss_function(lambda input: input)

    @losskit.loss_function
    def needs(input, target, *, k):
        return k * (input - target) ** 2

    with pytest.raises(losskit.LossTypeError, match="missing the hyper-parameter 'k'"):
        needs.Module()
    torch.testing.assert_close(needs.Module(k=2.0)(x, y), needs(x, y, k=2.0), **TIGHT)
    with pytest.raises(losskit.LossValueError, match=r"target has shape \(5, 1\)"):
        log_cosh(x, y[:, :1])
