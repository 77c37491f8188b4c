"""Poisson and Gaussian negative log-likelihood against torch.nn.functional and torch.nn
(functions and Modules).

Without ``mask`` and ``normalizer`` torch's own function computes the numbers, so values and
gradients are torch's bit for bit (in every dtype); half types are also held to the error budget
against a float64 truth, as every family's are.
"""

from __future__ import annotations

import io
import itertools
import math
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import (
    DTYPES,
    REDUCTIONS,
    assert_close_to_torch,
    assert_torch_signature,
    assert_within_budget,
    check_against_torch,
    forward_backward,
)

from losskit._validate.errors import LossError, LossTypeError, LossValueError
from losskit.functional import likelihood as LL
from losskit.nn import likelihood as NL

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
ALL_DTYPES = (*DTYPES, torch.float16)
NAN, INF = float("nan"), float("inf")


def _normal(shape, dtype=F64):
    return torch.randn(shape, dtype=F64).to(dtype)


def _rates(shape, dtype=F64):
    """Rates >= 0 for ``log_input=False``, some exactly 0."""
    r = torch.rand(shape, dtype=F64) * 3
    return r.where(r > 0.3, 0.0).to(dtype)


def _counts(shape, dtype=F64):
    """Counts: integers 0..6 (so the Stirling term's ``y > 1`` cut is crossed), a few of them
    fractional (torch takes any target >= 0)."""
    y = torch.randint(0, 7, shape).to(F64)
    return y.where(torch.rand(shape) > 0.2, y + 0.5).to(dtype)


def _positive_counts(shape, dtype=F64):
    """Counts without 0, for the tests that differentiate the target: torch's gradient of the
    target at a count of 0 with ``full=True`` is NaN (its Stirling term's unused branch is
    ``0 * log(0)``), which the parity tests check bit for bit."""
    y = _counts(shape, dtype)
    return y.where(y != 0, 0.25)


def _variances(shape, dtype=F64):
    """Variances > 0, some below the eps of 0.3 used below (so the clamp acts)."""
    return (torch.rand(shape, dtype=F64) * 2 + 1e-3).to(dtype)


def assert_same_bits(ours, theirs, args, kwargs=None, *, torch_kwargs=None, wrt=(0,)):
    """``ours`` is torch's ``theirs``, bit for bit: value and the gradients of ``args[wrt]``
    (NaN where torch has NaN: e.g. torch's gradient of the target at a count of 0 with
    ``full=True``, where its Stirling term's unused branch is ``0 * log(0)``)."""
    kwargs = kwargs or {}
    torch_kwargs = kwargs if torch_kwargs is None else torch_kwargs
    out, grads = forward_backward(ours, args, kwargs, wrt=wrt)
    ref, ref_grads = forward_backward(theirs, args, torch_kwargs, wrt=wrt)
    for a, b in zip([out, *grads], [ref, *ref_grads], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _raises(kind, fragments, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``kind`` with each of the ``|``-separated fragments."""
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    for fragment in fragments.split("|"):
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def _grads(fn, args, kwargs, wrt):
    leaves = [a.clone().requires_grad_() if i in wrt else a for i, a in enumerate(args)]
    out = fn(*leaves, **kwargs)
    return out.detach(), torch.autograd.grad(out.sum(), [leaves[i] for i in wrt])


@pytest.mark.parametrize("name", ("poisson_nll_loss", "gaussian_nll_loss"))
def test_signature_matches_torch(name):
    assert_torch_signature(getattr(LL, name), getattr(F, name))


@pytest.mark.parametrize(
    ("name", "function"),
    [("PoissonNLLLoss", "poisson_nll_loss"), ("GaussianNLLLoss", "gaussian_nll_loss")],
)
def test_module_signature_matches_torch(name, function):
    assert_torch_signature(getattr(NL, name), getattr(nn, name))
    assert getattr(NL, name).function is getattr(LL, function)


# --------------------------------------------------------------------------------------------
# Poisson: parity with torch
# --------------------------------------------------------------------------------------------

POISSON_OPTIONS = [
    {},
    {"full": True},
    {"log_input": False},
    {"log_input": False, "full": True, "eps": 0.5},
    {"eps": 1e-3},  # eps only acts with log_input=False: same numbers as the default
]
SHAPES = ((), (7,), (3, 5), (2, 3, 4), (0,), (0, 3))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("options", POISSON_OPTIONS, ids=str)
def test_poisson_parity(options, shape, dtype):
    """Values and the gradients of input and target: torch's bits; half types also within the
    error budget against torch in float64."""
    make = _normal if options.get("log_input", True) else _rates
    args = (make(shape, dtype), _counts(shape, dtype))
    for reduction in REDUCTIONS:
        kwargs = dict(options, reduction=reduction)
        fn, theirs = LL.poisson_nll_loss, F.poisson_nll_loss
        assert_same_bits(fn, theirs, args, kwargs, wrt=(0, 1))
        check_against_torch(fn, theirs, args, kwargs, wrt=(0, 1))


def test_poisson_integer_and_mixed_dtypes_like_torch():
    x = _normal((4, 3))
    for target in (torch.randint(0, 5, (4, 3)), _counts((4, 3), torch.float32)):
        for reduction in REDUCTIONS:
            kwargs = {"reduction": reduction, "full": True}
            assert_same_bits(LL.poisson_nll_loss, F.poisson_nll_loss, (x, target), kwargs)
    counts = torch.randint(0, 5, (4, 3))
    assert_same_bits(LL.poisson_nll_loss, F.poisson_nll_loss, (counts, counts.float()), wrt=())


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
def test_poisson_legacy_size_average_and_reduce(size_average, reduce):
    args = (_normal((4, 3)), _counts((4, 3)))
    legacy = {"size_average": size_average, "reduce": reduce}
    with pytest.warns(FutureWarning, match="reduction=") as record:
        ours = LL.poisson_nll_loss(*args, **legacy)
    assert any(r.filename == __file__ for r in record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(ours, F.poisson_nll_loss(*args, **legacy))
        module = NL.PoissonNLLLoss(size_average=size_average, reduce=reduce)
        assert module.reduction == nn.PoissonNLLLoss(**legacy).reduction
        assert torch.equal(module(*args), ours)


def test_elementwise_mean_is_the_old_name_of_mean():
    args = (_normal((5,)), _counts((5,)))
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        ours = LL.poisson_nll_loss(*args, reduction="elementwise_mean")
    assert torch.equal(ours, F.poisson_nll_loss(*args))
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        ours = LL.gaussian_nll_loss(*args, 0.5, reduction="elementwise_mean")
    assert torch.equal(ours, F.gaussian_nll_loss(*args, 0.5))


# --------------------------------------------------------------------------------------------
# Gaussian: parity with torch
# --------------------------------------------------------------------------------------------

#: (input shape, var shape or a number, target shape): torch's pairings
GAUSSIAN_SHAPES = [
    ((7,), (7,), (7,)),
    ((7,), (1,), (7,)),  # one dim of size 1
    ((7,), (), (7,)),  # one fewer dim
    ((7,), 0.7, (1,)),  # a number; a broadcast target
    ((3, 5), (3, 5), (3, 5)),
    ((3, 5), (3, 1), (3, 5)),
    ((3, 5), (1, 5), (3, 1)),
    ((3, 5), (3,), (3, 5)),
    ((3, 5), 2, (3, 5)),  # an int: torch needs a float, losskit passes float(var)
    ((2, 3, 4), (2, 3, 4), (2, 1, 4)),
    ((2, 3, 4), (2, 1, 4), (2, 3, 4)),
    ((2, 3, 4), (2, 3), (2, 3, 4)),
    ((2, 3, 4), 0.01, (2, 3, 4)),  # below eps=0.3: clamped (float16 does not overflow)
    ((), (), ()),
    ((), 0.5, ()),
    ((0, 4), (0,), (0, 4)),
    ((0, 4), (0, 4), (0, 1)),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize(("full", "eps"), [(False, 1e-6), (True, 1e-6), (False, 0.3)])
@pytest.mark.parametrize(("shape", "var", "target_shape"), GAUSSIAN_SHAPES, ids=str)
def test_gaussian_parity(shape, var, target_shape, full, eps, dtype):
    """Values and the gradients of input, target and var: torch's bits; half types also within
    the error budget against torch in float64."""
    number = not isinstance(var, tuple)
    v = var if number else _variances(var, dtype)
    args = (_normal(shape, dtype), _normal(target_shape, dtype), v)
    wrt = (0, 1) if number else (0, 1, 2)
    fn, theirs = LL.gaussian_nll_loss, F.gaussian_nll_loss
    torch_args = args[:2] + (float(v),) if number else args
    for reduction in REDUCTIONS:
        kwargs = {"full": full, "eps": eps, "reduction": reduction}
        out, grads = forward_backward(fn, args, kwargs, wrt=wrt)
        ref, ref_grads = forward_backward(theirs, torch_args, kwargs, wrt=wrt)
        assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
        assert torch.equal(out, ref) or (out.isnan().all() and ref.isnan().all())
        assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
        check_against_torch(fn, theirs, torch_args, kwargs, wrt=wrt)


def test_gaussian_mixed_dtypes_like_torch():
    x, y, v = _normal((4, 3)), _normal((4, 3), torch.float32), _variances((4,), torch.float32)
    for args in ((x.float(), y, v.double()), (x, y, v), (x.float(), y, v.bfloat16())):
        assert_same_bits(LL.gaussian_nll_loss, F.gaussian_nll_loss, args, wrt=(0, 1, 2))


# --------------------------------------------------------------------------------------------
# double backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", POISSON_OPTIONS[:4], ids=str)
def test_poisson_double_backward(options):
    make = _normal if options.get("log_input", True) else _rates
    x = (make((3, 2)) + (0 if options.get("log_input", True) else 0.5)).requires_grad_()
    y = _positive_counts((3, 2)).requires_grad_()
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    for extra in ({"reduction": "sum"}, {"mask": mask, "normalizer": 2.5}):

        def loss(a, b, extra=extra):
            return LL.poisson_nll_loss(a, b, **options, **extra)

        assert torch.autograd.gradgradcheck(loss, (x, y))


def test_gaussian_double_backward():
    x, y = _normal((3, 2)).requires_grad_(), _normal((3, 2)).requires_grad_()
    v = (_variances((3, 2)) + 0.2).requires_grad_()
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    for full, extra in ((False, {}), (True, {"mask": mask}), (False, {"normalizer": 4.0})):

        def loss(a, b, c, full=full, extra=extra):
            return LL.gaussian_nll_loss(a, b, c, full=full, **extra)

        assert torch.autograd.gradgradcheck(loss, (x, y, v))
        assert torch.autograd.gradgradcheck(loss, (x, y, v[:, :1]))


# --------------------------------------------------------------------------------------------
# mask and normalizer
# --------------------------------------------------------------------------------------------

MASK = torch.tensor([[True, False, True], [True, True, False], [False, False, True], [True] * 3])


def _poisson_example(log_input=True):
    x = _normal((4, 3)) if log_input else _rates((4, 3)) + 0.1
    return (x, _positive_counts((4, 3))), {"log_input": log_input, "full": True}


def _gaussian_example(var_shape=(4, 3)):
    return (_normal((4, 3)), _normal((4, 3)), _variances(var_shape)), {"full": True, "eps": 0.1}


CASES = {
    "poisson": (LL.poisson_nll_loss, *_poisson_example()),
    "poisson-rates": (LL.poisson_nll_loss, *_poisson_example(False)),
    "gaussian": (LL.gaussian_nll_loss, *_gaussian_example()),
}


def _wrt(args):
    return tuple(range(len(args)))


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("key", list(CASES))
def test_mask_equals_slicing(key, reduction):
    fn, args, kwargs = CASES[key]
    kwargs = dict(kwargs, reduction=reduction)
    masked = _grads(fn, args, dict(kwargs, mask=MASK), _wrt(args))
    sliced = _grads(fn, [a[MASK] for a in args], kwargs, _wrt(args))
    torch.testing.assert_close(masked[0], sliced[0], **TIGHT)
    for g, s in zip(masked[1], sliced[1], strict=True):
        torch.testing.assert_close(g[MASK], s, **TIGHT)
        assert not g[~MASK].any()
    assert not torch.allclose(masked[0], fn(*args, **kwargs))  # the mask changes the result


def test_row_masks_and_shared_variances():
    """A mask that broadcasts (one per row) equals slicing the rows, with a variance per row or
    one shared along a dim."""
    rows = torch.tensor([True, False, True, True])
    for var_shape in ((4,), (4, 1), (1, 3)):
        (x, y, v), kwargs = _gaussian_example(var_shape)
        masked = _grads(LL.gaussian_nll_loss, (x, y, v), dict(kwargs, mask=rows[:, None]), (0, 2))
        kept_v = v if var_shape == (1, 3) else v[rows]
        sliced = _grads(LL.gaussian_nll_loss, (x[rows], y[rows], kept_v), kwargs, (0, 2))
        torch.testing.assert_close(masked[0], sliced[0], **TIGHT)
        torch.testing.assert_close(masked[1][0][rows], sliced[1][0], **TIGHT)
        if var_shape == (1, 3):
            torch.testing.assert_close(masked[1][1], sliced[1][1], **TIGHT)
        else:
            torch.testing.assert_close(masked[1][1][rows], sliced[1][1], **TIGHT)
            assert not masked[1][1][~rows].any()
    (x, y), kwargs = _poisson_example()
    out = LL.poisson_nll_loss(x, y, **kwargs, mask=rows[:, None])
    torch.testing.assert_close(out, LL.poisson_nll_loss(x[rows], y[rows], **kwargs), **TIGHT)
    (x, y, _), kwargs = _gaussian_example()
    out = LL.gaussian_nll_loss(x, y, 0.8, **kwargs, mask=rows[:, None], reduction="sum")
    expected = F.gaussian_nll_loss(x[rows], y[rows], 0.8, **kwargs, reduction="sum")
    torch.testing.assert_close(out, expected, **TIGHT)


@pytest.mark.parametrize("key", list(CASES))
def test_mask_none_and_bad_values_at_masked_positions(key):
    """'none' is 0 where masked; NaN, inf, negative counts, rates and variances there reach
    neither the value nor the gradient, and are not validated."""
    fn, args, kwargs = CASES[key]
    out = fn(*args, **kwargs, reduction="none", mask=MASK)
    full = fn(*args, **kwargs, reduction="none")
    assert out.shape == full.shape == (4, 3)
    assert not out[~MASK].any() and torch.equal(out[MASK], full[MASK])
    dirty = [a.clone() for a in args]
    dirty[0][0, 1], dirty[0][1, 2] = NAN, INF
    dirty[1][2, 0], dirty[1][2, 1] = -3.0, NAN  # a negative count (or any target) and a NaN
    if len(dirty) == 3:
        dirty[2][0, 1], dirty[2][2, 1], dirty[2][1, 2] = -1.0, NAN, 0.0  # variances
    elif not kwargs["log_input"]:
        dirty[0][2, 0] = -2.0  # a negative rate
    for reduction in REDUCTIONS:
        options = dict(kwargs, reduction=reduction, mask=MASK)
        value, grads = _grads(fn, dirty, options, _wrt(args))
        clean_value, clean_grads = _grads(fn, args, options, _wrt(args))
        torch.testing.assert_close(value, clean_value, **TIGHT)
        for g, c in zip(grads, clean_grads, strict=True):
            assert bool(g.isfinite().all())
            torch.testing.assert_close(g, c, **TIGHT)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("key", list(CASES))
def test_masked_half_types_within_budget(key, dtype):
    """With a mask the half-type loss is reduced in float32 and rounded once: no further from a
    float64 truth than torch's own result on the kept positions (+1 ulp)."""
    fn, args, kwargs = CASES[key]
    low = [a.to(dtype) for a in args]
    theirs = getattr(F, fn.__name__)
    for reduction in ("mean", "sum"):
        ours = fn(*low, **kwargs, reduction=reduction, mask=MASK)
        ref = theirs(*[a[MASK] for a in low], **kwargs, reduction=reduction)
        truth = theirs(*[a[MASK].double() for a in low], **kwargs, reduction=reduction)
        assert ours.dtype == dtype
        assert_within_budget(ours, ref, truth)


@pytest.mark.parametrize("key", list(CASES))
def test_normalizer_divides_the_sum(key):
    fn, args, kwargs = CASES[key]
    total, total_grads = _grads(fn, args, dict(kwargs, reduction="sum"), _wrt(args))
    for normalizer in (2.5, 7, torch.tensor(4.0, dtype=F64)):
        out, grads = _grads(fn, args, dict(kwargs, normalizer=normalizer), _wrt(args))
        torch.testing.assert_close(out, total / normalizer, **TIGHT)
        for g, t in zip(grads, total_grads, strict=True):
            torch.testing.assert_close(g, t / normalizer, **TIGHT)
    masked_sum = fn(*args, **kwargs, reduction="sum", mask=MASK)
    out = fn(*args, **kwargs, mask=MASK, normalizer=3.0)
    torch.testing.assert_close(out, masked_sum / 3.0, **TIGHT)
    zero, zero_grads = _grads(fn, args, dict(kwargs, normalizer=0.0), _wrt(args))
    assert zero.item() == 0.0 and not any(g.any() for g in zero_grads)
    for reduction in ("sum", "none"):
        _raises(
            LossValueError,
            "only applies with reduction='mean'",
            fn,
            *args,
            **kwargs,
            reduction=reduction,
            normalizer=3.0,
        )


def test_mask_of_empty_and_zero_dim_inputs():
    x, y = torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64)
    empty = torch.zeros(0, 3, dtype=torch.bool)
    assert LL.poisson_nll_loss(x, y, mask=empty, reduction="sum").item() == 0.0
    assert LL.poisson_nll_loss(x, y, mask=empty).isnan()  # nothing to count, as torch's mean
    assert LL.gaussian_nll_loss(x, y, 1.0, mask=empty, normalizer=0).item() == 0.0
    a, b = _normal(()), _normal(())
    for keep in (True, False):
        out = LL.gaussian_nll_loss(a, b, 0.5, mask=torch.tensor(keep), reduction="sum")
        expected = F.gaussian_nll_loss(a, b, 0.5, reduction="sum") if keep else torch.zeros(())
        torch.testing.assert_close(out, expected.double(), **TIGHT)


# --------------------------------------------------------------------------------------------
# errors where torch is silent or cryptic
# --------------------------------------------------------------------------------------------

X, Y = torch.randn(4, 3), torch.rand(4, 3) * 3


def test_errors_of_poisson():
    pois, V, T = LL.poisson_nll_loss, LossValueError, LossTypeError
    bad = Y.clone()
    bad[1, 2] = -1.0
    message = _raises(
        V, "target must hold counts >= 0, got 1 negative or NaN entry of 12, -1 at position (1, 2)",
        pois, X, bad,
    )  # fmt: skip
    assert message.endswith("(1, 2)")
    bad[3, 0] = NAN
    _raises(
        V, "got 2 negative or NaN entries of 12; the first is -1 at position (1, 2)", pois, X, bad
    )
    _raises(
        V,
        "target must hold counts >= 0|nan at position (0,)",
        pois,
        X[0],
        Y[0].where(Y[0] > 5, NAN),
    )
    _raises(
        V,
        "input must hold rates >= 0|-0.5 at position (0, 0)|with log_input=False; for log-rates "
        "pass log_input=True",
        pois, X.abs().where(X != X[0, 0], -0.5), Y, log_input=False,
    )  # fmt: skip
    assert pois(-X.abs(), Y).isfinite()  # negative log-rates are fine
    for eps in (0, -1e-8, NAN):
        _raises(V, "eps must be in (0, inf), got", pois, X.abs(), Y, log_input=False, eps=eps)
    _raises(T, "eps must be a float, got str", pois, X, Y, eps="1e-8")
    _raises(
        V,
        "target has shape (4, 1) but input has shape (4, 3)|torch would broadcast them silently",
        pois, X, Y[:, :1],
    )  # fmt: skip
    _raises(V, "target has shape (3,) but input has shape (4, 3)", pois, X, Y[0])
    _raises(T, "input must be a real tensor|complex64", pois, X.to(torch.complex64), Y)
    _raises(T, "target must be a real tensor (counts)", pois, X, Y.to(torch.complex64))
    _raises(T, "input must be a torch.Tensor, got list", pois, [1.0], Y)
    _raises(T, "mask must be a bool tensor", pois, X, Y, mask=torch.ones(4, 3))
    _raises(V, "mask has shape (3, 1), which does not broadcast", pois, X, Y, mask=MASK[:3, :1])
    _raises(
        V, "reduction must be one of 'none', 'mean', 'sum'|got 'avg'", pois, X, Y, reduction="avg"
    )


def test_errors_of_gaussian():
    gauss, V, T = LL.gaussian_nll_loss, LossValueError, LossTypeError
    var = torch.rand(4, 3) + 0.1
    neg = var.clone()
    neg[2, 1] = -0.25
    _raises(
        V, "var must hold variances >= 0, got 1 negative or NaN entry of 12, -0.25 at position "
        "(2, 1)", gauss, X, Y, neg,
    )  # fmt: skip
    nan_var = var[:, 0].clone()
    nan_var[1] = NAN
    _raises(
        V, "var must hold variances >= 0, got 1 negative or NaN entry of 4, nan at position (1,)",
        gauss, X, Y, nan_var,
    )  # fmt: skip
    _raises(V, "var must be a variance >= 0, got -1", gauss, X, Y, -1.0)
    _raises(V, "var must be a variance >= 0, got nan", gauss, X, Y, NAN)
    _raises(V, "var must be a variance >= 0, got -2", gauss, X, Y, -2)
    _raises(T, "var must be a tensor or a number, got str", gauss, X, Y, "1")
    _raises(T, "var must be a tensor or a number, got bool", gauss, X, Y, True)
    _raises(T, "var must be a floating-point tensor (variances)|int64", gauss, X, Y, var.long())
    _raises(
        V,
        "target has shape (3,) but input has shape (4, 3)|torch would broadcast other shapes "
        "silently",
        gauss, X, Y[0], var,
    )  # fmt: skip
    _raises(V, "target has shape (4, 1, 3)", gauss, X, Y[:, None], var)
    _raises(V, "target has shape (1, 1)", gauss, X, Y[:1, :1], var)
    _raises(V, "target has shape (4, 6)", gauss, X, Y.repeat(1, 2), var)
    _raises(
        V,
        "var has shape (3,), which does not pair with the input's shape (4, 3)|that shape with one "
        "dimension of size 1 (shared along it)|without its last dimension, (4,)|or pass a number",
        gauss, X, Y, var[0],
    )  # fmt: skip
    _raises(V, "var has shape (1, 1)", gauss, X, Y, var[:1, :1])
    _raises(V, "var has shape ()", gauss, X, Y, var[0, 0])
    _raises(V, "var has shape (4, 3, 1)", gauss, X, Y, var[..., None])
    _raises(
        V,
        "var has shape (3,) but input is 0-dim; var must be 0-dim too, or a number",
        gauss,
        X[0, 0],
        Y[0, 0],
        var[0],
    )
    for eps in (0.0, -1.0, NAN):
        _raises(V, "eps must be in (0, inf), got", gauss, X, Y, var, eps=eps)
    _raises(T, "input must be a real tensor", gauss, X.to(torch.complex64), Y, var)
    _raises(V, "mask has shape (4,)", gauss, X, Y, var, mask=MASK[:, 0])


def test_validate_false_skips_the_value_checks():
    """Only the value checks: torch's own numbers (or torch's own error) come through."""
    bad = Y.where(Y > 1, -1.0)
    for options in ({}, {"full": True}):
        ours = LL.poisson_nll_loss(X, bad, **options, validate=False, reduction="none")
        assert torch.equal(ours, F.poisson_nll_loss(X, bad, **options, reduction="none"))
    rates = X.where(X > 0, -0.5)
    ours = LL.poisson_nll_loss(rates, Y, log_input=False, validate=False, reduction="none")
    theirs = F.poisson_nll_loss(rates, Y, log_input=False, reduction="none")
    assert theirs.isnan().any()  # torch is silent: the log of a negative rate
    torch.testing.assert_close(ours, theirs, equal_nan=True, rtol=0, atol=0)
    nan_var = (torch.rand(4, 3) + 0.1).where(Y > 1, NAN)
    ours = LL.gaussian_nll_loss(X, Y, nan_var, validate=False, reduction="none")
    assert_close_to_torch(ours, F.gaussian_nll_loss(X, Y, nan_var, reduction="none"))
    with pytest.raises(ValueError, match="var has negative entry") as info:  # torch's own check
        LL.gaussian_nll_loss(X, Y, -nan_var.nan_to_num(1.0), validate=False)
    assert not isinstance(info.value, LossError)
    with pytest.raises(LossValueError, match="var must be a variance"):  # a number: always
        LL.gaussian_nll_loss(X, Y, -1.0, validate=False)
    with pytest.raises(LossValueError, match="target has shape"):  # shape checks still run
        LL.poisson_nll_loss(X, Y[0], validate=False)


def test_errors_come_before_torch_s_function(monkeypatch):
    """Every check runs at the entry: torch's function is never reached with a bad call."""

    def unreachable(*args, **kwargs):
        raise AssertionError("torch's function was called")

    monkeypatch.setattr(F, "poisson_nll_loss", unreachable)
    monkeypatch.setattr(F, "gaussian_nll_loss", unreachable)
    var = torch.rand(4, 3)
    bad_calls = [
        (LL.poisson_nll_loss, (X, -Y), {}),
        (LL.poisson_nll_loss, (-X.abs() - 1, Y), {"log_input": False}),
        (LL.poisson_nll_loss, (X, Y[:1]), {}),
        (LL.poisson_nll_loss, (X, Y), {"eps": 0.0}),
        (LL.gaussian_nll_loss, (X, Y, -var), {}),
        (LL.gaussian_nll_loss, (X, Y, -1.0), {}),
        (LL.gaussian_nll_loss, (X, Y[0], var), {}),
        (LL.gaussian_nll_loss, (X, Y, var[0]), {}),
        (LL.gaussian_nll_loss, (X, Y, var), {"eps": -1.0}),
    ]
    for fn, args, kwargs in bad_calls:
        with pytest.raises(LossError):
            fn(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

SETUPS = {
    "poisson": (
        NL.PoissonNLLLoss(reduction="sum"),
        nn.PoissonNLLLoss(reduction="sum"),
        {"reduction": "sum"},
        (_normal((4, 3)), _counts((4, 3))),
    ),
    "poisson-rates": (
        NL.PoissonNLLLoss(False, True, None, 0.1, None, "none"),
        nn.PoissonNLLLoss(False, True, None, 0.1, None, "none"),
        {"log_input": False, "full": True, "eps": 0.1, "reduction": "none"},
        (_rates((4, 3)), _counts((4, 3))),
    ),
    "gaussian": (
        NL.GaussianNLLLoss(),
        nn.GaussianNLLLoss(),
        {},
        (_normal((4, 3)), _normal((4, 3)), _variances((4,))),
    ),
    "gaussian-full": (
        NL.GaussianNLLLoss(full=True, eps=0.3, reduction="sum"),
        nn.GaussianNLLLoss(full=True, eps=0.3, reduction="sum"),
        {"full": True, "eps": 0.3, "reduction": "sum"},
        (_normal((4, 3)), _normal((4, 1)), _variances((4, 3))),
    ),
}


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_equals_functional_and_torch(key):
    ours, theirs, options, args = SETUPS[key]
    assert torch.equal(ours(*args), ours.function(*args, **options))
    assert_same_bits(ours, theirs, args, wrt=_wrt(args))
    check_against_torch(ours, theirs, args, wrt=_wrt(args))
    mask = MASK if ours.reduction != "none" else MASK[:, :1]
    normalizer = 2.0 if ours.reduction == "mean" else None
    masked = ours(*args, mask=mask, normalizer=normalizer)
    expected = ours.function(*args, **options, mask=mask, normalizer=normalizer)
    assert torch.equal(masked, expected)


def test_gaussian_module_takes_a_number():
    x, y = _normal((4, 3)), _normal((4, 3))
    assert torch.equal(NL.GaussianNLLLoss()(x, y, 0.25), nn.GaussianNLLLoss()(x, y, 0.25))


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_state_dict_and_pickle_round_trip(key):
    ours, theirs, _, args = SETUPS[key]
    assert ours.state_dict() == theirs.state_dict() == {}
    assert not list(ours.parameters()) and not list(ours.buffers())
    restored = pickle.loads(pickle.dumps(ours))
    assert repr(restored) == repr(ours) and torch.equal(restored(*args), ours(*args))
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(*args), ours(*args))


def test_module_repr_and_options_checked_at_construction():
    assert repr(NL.PoissonNLLLoss()) == (
        "PoissonNLLLoss(reduction='mean', log_input=True, full=False, eps=1e-08)"
    )
    assert repr(NL.GaussianNLLLoss(full=True, eps=0.5, reduction="none")) == (
        "GaussianNLLLoss(reduction='none', full=True, eps=0.5)"
    )
    for cls in (NL.PoissonNLLLoss, NL.GaussianNLLLoss):
        with pytest.raises(LossValueError, match=r"eps must be in \(0, inf\), got 0"):
            cls(eps=0)
        with pytest.raises(LossValueError, match="reduction"):
            cls(reduction="avg")
    with pytest.raises(TypeError):  # torch's GaussianNLLLoss takes keywords only
        NL.GaussianNLLLoss(True)


def test_module_validate_false_is_passed_on():
    bad = Y.where(Y > 1, -1.0)
    ours = NL.PoissonNLLLoss(validate=False)(X, bad)
    assert torch.equal(ours, nn.PoissonNLLLoss()(X, bad))
    with pytest.raises(LossValueError, match="counts >= 0"):
        NL.PoissonNLLLoss()(X, bad)
    nan_var = torch.full((4,), NAN)
    assert NL.GaussianNLLLoss(validate=False)(X, Y, nan_var).isnan()
    with pytest.raises(LossValueError, match="variances >= 0"):
        NL.GaussianNLLLoss()(X, Y, nan_var)


def test_poisson_module_keeps_torch_s_input_name():
    """torch's PoissonNLLLoss.forward calls its input ``log_input`` (the rates with
    ``log_input=False``): losskit's takes it by that name too."""
    x, y = _normal((5,)), _counts((5,))
    module = NL.PoissonNLLLoss(full=True)
    assert torch.equal(
        module(log_input=x, target=y), nn.PoissonNLLLoss(full=True)(log_input=x, target=y)
    )
    assert math.isclose(
        module(x, y, mask=torch.ones(5, dtype=torch.bool)).item(),
        module(x, y).item(),
        rel_tol=1e-12,
    )
