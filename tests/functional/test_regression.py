"""Regression losses (mse, l1, smooth_l1, huber) against torch.nn.functional."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    DTYPES,
    REDUCTIONS,
    assert_close_to_torch,
    assert_torch_signature,
    check_against_torch,
    check_mixed_dtypes,
    torch_has_parameter,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit.functional as LF

NAMES = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
SHAPES = ((), (7,), (3, 5), (2, 3, 4), (0,), (3, 0, 2))


def _pair(shape, dtype):
    x = torch.randn(shape, dtype=torch.float64) * 2
    y = torch.randn(shape, dtype=torch.float64) * 2
    return x.to(dtype), y.to(dtype)


def _torch_computes(name: str, dtype: torch.dtype) -> bool:
    """Whether the installed torch has ``name`` for ``dtype`` on the CPU (2.4: no bf16 mse)."""
    try:
        getattr(F, name)(torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype))
    except RuntimeError:
        return False
    return True


def _options(name: str) -> list[dict]:
    """The argument combinations torch accepts for ``name`` (beyond reduction)."""
    weighted = torch_has_parameter(getattr(F, name), "weight")
    if name in ("mse_loss", "l1_loss"):
        return [{}] + ([{"weight": True}] if weighted else [])
    if name == "smooth_l1_loss":
        return [{"beta": b} for b in (0.0, 0.5, 1.0, 2.5)]
    deltas = [{"delta": d} for d in (0.5, 1.0, 2.5)]
    return deltas + ([{"delta": 0.5, "weight": True}] if weighted else [])


GRID = [
    pytest.param(
        name, opts, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'plain'}"
    )
    for name in NAMES
    for opts in _options(name)
]


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_torch(name):
    # torch added `weight` as the last positional parameter of mse/l1/huber after 2.4
    lacks_weight = name != "smooth_l1_loss" and not torch_has_parameter(getattr(F, name), "weight")
    assert_torch_signature(getattr(LF, name), getattr(F, name), ("weight",) if lacks_weight else ())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("name", "opts"), GRID)
def test_parity_with_torch(name, opts, shape, reduction, dtype):
    if not _torch_computes(name, dtype):
        pytest.skip(f"this torch has no {dtype} {name} on the CPU (the oracle)")
    x, y = _pair(shape, dtype)
    kwargs = dict(opts, reduction=reduction)
    if kwargs.get("weight"):
        kwargs["weight"] = (torch.rand(shape, dtype=torch.float64) + 0.25).to(dtype)
    # gradients of input and target (torch differentiates both)
    check_against_torch(getattr(LF, name), getattr(F, name), (x, y), kwargs, wrt=(0, 1))


def _every_reduction_matches_torch(name, x, y, kwargs):
    """``name`` on (x, y) equals torch's, value and both gradients, under every reduction."""
    for reduction in REDUCTIONS:
        kw = dict(kwargs, reduction=reduction)
        check_against_torch(getattr(LF, name), getattr(F, name), (x, y), kw, wrt=(0, 1))


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_kinks_match_torch(name, dtype):
    """Differences of exactly 0 and exactly +-beta/delta: torch's branch choice and sign(0) = 0."""
    knot = 1.0 if name != "smooth_l1_loss" else 0.5
    diffs = torch.tensor([0.0, knot, -knot, knot / 2, 3 * knot, -0.0], dtype=dtype)
    x = torch.linspace(-1, 1, 6, dtype=dtype)
    y = x - diffs
    kwargs = {"beta": knot} if name == "smooth_l1_loss" else {}
    _every_reduction_matches_torch(name, x, y, kwargs)


def test_smooth_l1_beta_zero_is_l1():
    x, y = _pair((4, 6), torch.float64)
    for reduction in REDUCTIONS:
        a = LF.smooth_l1_loss(x, y, reduction=reduction, beta=0.0)
        assert_close_to_torch(a, LF.l1_loss(x, y, reduction=reduction))
        assert_close_to_torch(a, F.smooth_l1_loss(x, y, reduction=reduction, beta=0.0))


def test_huber_is_delta_times_smooth_l1():
    x, y = _pair((5, 3), torch.float64)
    for delta in (0.3, 2.0):
        huber = LF.huber_loss(x, y, reduction="none", delta=delta)
        smooth = LF.smooth_l1_loss(x, y, reduction="none", beta=delta)
        torch.testing.assert_close(huber, delta * smooth, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("input_dtype", "target_dtype"),
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
    ids=str,
)
@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_promote_like_torch(name, input_dtype, target_dtype):
    """Torch promotes input and target (huber_loss returns the input's dtype); so does losskit."""
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.randn(3, 4, dtype=torch.float64)
    x, y = x.to(input_dtype), y.to(target_dtype)
    ours = getattr(LF, name)(x, y, reduction="none")
    theirs = getattr(F, name)(x, y, reduction="none")
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "smooth_l1_loss"))
def test_legacy_size_average_and_reduce(name, size_average, reduce):
    """Mapped as torch maps them, with a FutureWarning that points at the caller."""
    x, y = _pair((3, 4), torch.float64)
    with pytest.warns(FutureWarning, match="reduction=") as record:
        ours = getattr(LF, name)(x, y, size_average, reduce)
    assert any(w.filename == __file__ for w in record), [w.filename for w in record]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(F, name)(x, y, size_average, reduce)
    assert_close_to_torch(ours, theirs)
    # the legacy arguments override reduction, as in torch
    with pytest.warns(FutureWarning):
        overridden = getattr(LF, name)(x, y, size_average, reduce, "none")
    assert_close_to_torch(overridden, theirs)


@pytest.mark.parametrize("name", NAMES)
def test_elementwise_mean_is_mean_with_warning(name):
    x, y = _pair((3, 4), torch.float64)
    with pytest.warns(FutureWarning, match="elementwise_mean") as record:
        ours = getattr(LF, name)(x, y, reduction="elementwise_mean")
    assert any(w.filename == __file__ for w in record)
    assert_close_to_torch(ours, getattr(F, name)(x, y, reduction="mean"))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    x = torch.randn(3, 4, dtype=torch.float64)
    # differences kept away from the kinks at 0 and +-1 (beta = delta = 1)
    magnitude = torch.rand(3, 4, dtype=torch.float64) * 0.6 + 0.2
    magnitude[0] += 1.5
    sign = torch.where(torch.rand(3, 4) < 0.5, -1.0, 1.0).double()
    y = x - sign * magnitude
    x.requires_grad_()
    y.requires_grad_()
    fn = getattr(LF, name)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda a, b, r=reduction: fn(a, b, reduction=r), (x, y))
    if name != "smooth_l1_loss":
        w = (torch.rand(3, 4, dtype=torch.float64) + 0.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, weight=c), (x, y, w))


def test_weighted_mean_divides_like_torch():
    """mse/l1 divide a weighted mean by the weight sum; huber by the element count."""
    if not torch_has_parameter(F.mse_loss, "weight"):
        pytest.skip("this torch has no weight argument on the regression losses")
    x, y = _pair((4, 5), torch.float64)
    w = torch.rand(4, 5, dtype=torch.float64) + 0.1
    for name in ("mse_loss", "l1_loss"):
        ours = getattr(LF, name)(x, y, weight=w)
        summed = getattr(LF, name)(x, y, weight=w, reduction="sum")
        assert_close_to_torch(ours, getattr(F, name)(x, y, weight=w))
        torch.testing.assert_close(ours, summed / w.sum(), rtol=1e-12, atol=0)
    ours = LF.huber_loss(x, y, weight=w)
    assert_close_to_torch(ours, F.huber_loss(x, y, weight=w))
    torch.testing.assert_close(ours, LF.huber_loss(x, y, weight=w, reduction="sum") / 20)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(NAMES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    reduction=st.sampled_from(REDUCTIONS),
    knot=st.floats(0.05, 3.0),
    dtype=st.sampled_from((torch.float64, torch.float32)),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_arguments(name, shape, reduction, knot, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    y = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    kwargs = {"reduction": reduction}
    if name == "smooth_l1_loss":
        kwargs["beta"] = knot
    if name == "huber_loss":
        kwargs["delta"] = knot
    check_against_torch(getattr(LF, name), getattr(F, name), (x, y), kwargs, wrt=(0, 1))


# --------------------------------------------------------------------------------------------
# the torch 2.13 audit: integer targets, weight dtypes, infinite differences
# --------------------------------------------------------------------------------------------


def _torch_takes(name: str, x: torch.Tensor, y: torch.Tensor, grad: bool) -> bool:
    """Whether torch 2.13 computes ``name`` (and, with ``grad``, its input gradient) for x, y."""
    try:
        leaf = x.clone().requires_grad_(grad and x.is_floating_point())
        out = getattr(F, name)(leaf, y)
        if grad:
            out.backward()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    "target_dtype", (torch.int64, torch.int32, torch.uint8, torch.bool), ids=str
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_integer_and_bool_targets_are_promoted_like_torch(name, reduction, dtype, target_dtype):
    """torch promotes an integer or bool target to the input's dtype; losskit does the same.

    Where torch computes (mse, smooth_l1; l1 except bool), value and gradient equal its; where
    torch fails (huber's kernel, l1 on bool), losskit equals torch's answer for the target
    promoted by hand (a float target of the input's dtype takes torch's own kernel, the promoted
    one losskit's reference: equal within the parity tolerance, not bit for bit).
    """
    x = (torch.randn(3, 4, dtype=torch.float64) * 2).to(dtype)
    y = torch.randint(0, 3 if target_dtype != torch.bool else 2, (3, 4)).to(target_dtype)
    kwargs = {"reduction": reduction}
    ours = getattr(LF, name)
    if _torch_takes(name, x, y, grad=True) and name != "huber_loss":
        out = check_against_torch(ours, getattr(F, name), (x, y), kwargs)
    else:
        promoted = getattr(F, name)

        def theirs(x, y, **kw):
            return promoted(x, y.to(x.dtype), **kw)

        out = check_against_torch(ours, theirs, (x, y), kwargs)
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "smooth_l1_loss"))
def test_integer_input_with_floating_target_like_torch(name, dtype):
    """An integer input (say, quantised predictions) with a floating target: torch's numbers."""
    x = torch.randint(-3, 4, (3, 4))
    y = (torch.randn(3, 4, dtype=torch.float64) * 2).to(dtype)
    for reduction in REDUCTIONS:
        out = check_against_torch(
            getattr(LF, name), getattr(F, name), (x, y), {"reduction": reduction}, wrt=(1,)
        )
        assert out.dtype == dtype


_WEIGHT_DTYPES = [
    (torch.float32, torch.float64),
    (torch.float64, torch.float32),
    (torch.float32, torch.int64),
    (torch.float64, torch.bool),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.float64),
    (torch.float32, torch.bfloat16),
    (torch.float64, torch.bfloat16),
]


@pytest.mark.parametrize(("dtype", "weight_dtype"), _WEIGHT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "huber_loss"))
def test_weight_of_another_dtype_promotes_like_torch(name, reduction, dtype, weight_dtype):
    """torch multiplies the unweighted loss by the weight: the result has their promoted dtype
    (a float64 weight on float32 inputs gives a float64 loss), and the weighted mse/l1 mean
    divides by the weight's sum taken in the weight's own dtype. Integer and bool weights work.
    """
    if not torch_has_parameter(F.mse_loss, "weight"):
        pytest.skip("this torch has no weight argument on the regression losses")
    x, y = _pair((3, 5), dtype)
    if weight_dtype.is_floating_point:
        w = (torch.rand(3, 5, dtype=torch.float64) * 2 + 0.1).to(weight_dtype)
    else:
        w = torch.randint(0, 3, (3, 5)).to(weight_dtype)
        w[0, 0] = 1  # a nonzero weight sum
    fn = lambda a, b, c, **k: getattr(LF, name)(a, b, weight=c, **k)  # noqa: E731
    ref = lambda a, b, c, **k: getattr(F, name)(a, b, weight=c, **k)  # noqa: E731
    kwargs = {"reduction": reduction}
    wrt = (0, 1) + ((2,) if weight_dtype.is_floating_point else ())
    narrowed = {dtype, weight_dtype} & {torch.bfloat16}
    if narrowed and torch.promote_types(dtype, weight_dtype) != torch.bfloat16:
        # torch rounds a bfloat16 intermediate before promoting; losskit rounds only once
        check_mixed_dtypes(fn, ref, (x, y, w), kwargs, wrt=wrt)
    else:
        out = check_against_torch(fn, ref, (x, y, w), kwargs, wrt=wrt)
        assert out.dtype == torch.promote_types(dtype, weight_dtype)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_infinite_and_nan_differences_match_torch(name, dtype):
    """An infinite difference has torch's finite gradient (+-1, +-delta; 2*inf for mse), not NaN;
    a NaN difference keeps a NaN gradient, as in torch."""
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([inf, 1.0, -inf, nan, 0.5, 2.0], dtype=dtype)
    y = torch.tensor([1.0, inf, 0.0, 0.0, nan, 0.0], dtype=dtype)
    kwargs = {"beta": 0.5} if name == "smooth_l1_loss" else {}
    _every_reduction_matches_torch(name, x, y, kwargs)
