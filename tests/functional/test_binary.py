"""Binary cross-entropy on probabilities and on logits, against torch.nn.functional."""

from __future__ import annotations

import itertools
import math
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
)
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit.functional as LF

SHAPES = ((), (7,), (3, 5), (2, 3, 4), (0,))


def _targets(shape, dtype):
    """Soft targets in [0, 1] with some exact 0s and 1s."""
    y = torch.rand(shape, dtype=torch.float64)
    flat = y.view(-1)
    flat[::3] = flat[::3].round()
    return y.to(dtype)


def _weight(kind: str, shape, dtype):
    """A weight broadcastable to ``shape``: full, last dimension only, or a single number."""
    if kind == "none":
        return None
    wshape = {"full": shape, "last": shape[-1:], "scalar": (1,) if shape else ()}[kind]
    return (torch.rand(wshape, dtype=torch.float64) * 2 + 0.1).to(dtype)


@pytest.mark.parametrize("name", ("binary_cross_entropy", "binary_cross_entropy_with_logits"))
def test_signature_matches_torch(name):
    assert_torch_signature(getattr(LF, name), getattr(F, name))


# --------------------------------------------------------------------------------------------
# binary_cross_entropy (probabilities)
# --------------------------------------------------------------------------------------------


def _probabilities(shape, dtype, *, endpoints: bool):
    x = torch.sigmoid(torch.randn(shape, dtype=torch.float64) * 2)
    if endpoints and x.numel() >= 4:
        flat = x.view(-1)
        flat[0], flat[1], flat[2], flat[3] = 0.0, 1.0, 1.0, 0.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", ("none", "full", "last", "scalar"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_parity_with_torch(shape, weight, reduction, dtype):
    # exact 0 and 1 (clamped logs, floored gradient) in float32/float64; bfloat16 stays inside
    x = _probabilities(shape, dtype, endpoints=dtype != torch.bfloat16)
    y = _targets(shape, dtype)
    w = _weight(weight, shape, dtype)
    check_against_torch(
        LF.binary_cross_entropy, F.binary_cross_entropy, (x, y, w), {"reduction": reduction}
    )


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_bce_inputs_exactly_zero_and_one(dtype):
    """torch clamps the logs at -100 and floors x (1 - x) at 1e-12: same loss and gradient."""
    x = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 1e-30], dtype=dtype)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.7], dtype=dtype)
    for reduction in REDUCTIONS:
        out = check_against_torch(
            LF.binary_cross_entropy, F.binary_cross_entropy, (x, y), {"reduction": reduction}
        )
        assert bool(out.isfinite().all())
    loss = LF.binary_cross_entropy(x, y, reduction="none")
    assert loss[1].item() == 100.0 and loss[2].item() == 100.0
    assert loss[0].item() == 0.0 and loss[3].item() == 0.0
    leaf = x.clone().requires_grad_()
    LF.binary_cross_entropy(leaf, y, reduction="sum").backward()
    assert bool(leaf.grad.isfinite().all())


@pytest.mark.parametrize("eps", (0.1, 1.0))
@pytest.mark.parametrize("name", ("binary_cross_entropy", "binary_cross_entropy_with_logits"))
def test_label_smoothing_is_smoothed_targets(name, eps):
    """losskit's label_smoothing equals torch on targets y (1 - eps) + eps / 2."""
    x = torch.randn(4, 3, dtype=torch.float64)
    if name == "binary_cross_entropy":
        x = torch.sigmoid(x)
    y = _targets((4, 3), torch.float64)
    smoothed = y * (1 - eps) + eps / 2
    for reduction in REDUCTIONS:
        check_against_torch(
            lambda a, b, **k: getattr(LF, name)(a, b, label_smoothing=eps, **k),
            lambda a, b, **k: getattr(F, name)(a, smoothed, **k),
            (x, y),
            {"reduction": reduction},
        )


# --------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", ("none", "last", "full"))
@pytest.mark.parametrize("weight", ("none", "full", "last"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_with_logits_parity_with_torch(shape, weight, pos_weight, reduction, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype)
    y = _targets(shape, dtype)
    w = _weight(weight, shape, dtype)
    pw = _weight(pos_weight, shape, dtype)
    check_against_torch(
        LF.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (x, y, w),
        {"reduction": reduction, "pos_weight": pw},
    )


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_bce_with_logits_stable_at_1e4(dtype):
    x = torch.tensor([[1e4, -1e4, 3e4], [-3e4, 0.0, 1e4]], dtype=dtype)
    y = torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.5, 1.0]], dtype=dtype)
    pw = torch.tensor([0.5, 2.0, 3.0], dtype=dtype)
    for reduction in REDUCTIONS:
        for kwargs in ({}, {"pos_weight": pw}):
            out = check_against_torch(
                LF.binary_cross_entropy_with_logits,
                F.binary_cross_entropy_with_logits,
                (x, y),
                dict(kwargs, reduction=reduction),
            )
            assert bool(out.isfinite().all())
    # exact value: max(x, 0) - x y + log(1 + exp(-|x|)) is 1e4 for x = 1e4, y = 0
    assert LF.binary_cross_entropy_with_logits(x, y, reduction="none")[0, 0].item() == 1e4


@pytest.mark.parametrize(
    ("input_dtype", "target_dtype"),
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32)],
)
def test_bce_with_logits_mixed_dtypes_promote(input_dtype, target_dtype):
    x = torch.randn(3, 4).to(input_dtype)
    y = torch.rand(3, 4).to(target_dtype)
    ours = LF.binary_cross_entropy_with_logits(x, y, reduction="none")
    theirs = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert ours.dtype == theirs.dtype
    # torch computes part of a bfloat16-input call in bfloat16: no further from the truth
    truth = F.binary_cross_entropy_with_logits(x.double(), y.double(), reduction="none")
    err_ours = (ours.double() - truth).abs()
    err_theirs = (theirs.double() - truth).abs()
    assert bool((err_ours <= err_theirs + 1e-6 * truth.abs()).all())


def test_bce_with_logits_float64_logits_keep_float64_where_torch_narrows():
    # a deliberate difference (README): torch returns float32 for float64 logits and float32
    # targets; losskit keeps the promoted float64, and its value is the float64 truth
    x = torch.randn(3, 4, dtype=torch.float64) * 5
    y = torch.rand(3, 4)
    ours = LF.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert ours.dtype == torch.float64
    truth = F.binary_cross_entropy_with_logits(x, y.double(), reduction="none")
    torch.testing.assert_close(ours, truth, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# both
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
@pytest.mark.parametrize("name", ("binary_cross_entropy", "binary_cross_entropy_with_logits"))
def test_legacy_size_average_and_reduce(name, size_average, reduce):
    x = torch.rand(3, 4, dtype=torch.float64)
    y = _targets((3, 4), torch.float64)
    w = torch.rand(4, dtype=torch.float64)
    with pytest.warns(FutureWarning, match="reduction=") as record:
        ours = getattr(LF, name)(x, y, w, size_average, reduce)
    assert any(r.filename == __file__ for r in record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(F, name)(x, y, w, size_average, reduce)
    assert_close_to_torch(ours, theirs)


def test_bce_target_gradient_at_saturated_predictions_is_the_clamped_derivative():
    # a deliberate difference (README): torch gives +-inf here; losskit differentiates the
    # clamped loss it computes, -(max(log x, -100) - max(log(1 - x), -100))
    x = torch.tensor([0.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    y = torch.full((4,), 0.3, dtype=torch.float64, requires_grad=True)
    LF.binary_cross_entropy(x, y, reduction="sum").backward()
    want = torch.tensor([100.0, -100.0, 0.0, -(math.log(0.25) - math.log(0.75))], dtype=x.dtype)
    torch.testing.assert_close(y.grad, want, rtol=1e-12, atol=1e-12)
    # away from 0 and 1 it is torch's
    y2 = y.detach().clone().requires_grad_()
    F.binary_cross_entropy(x[2:], y2[2:], reduction="sum").backward()
    torch.testing.assert_close(y.grad[2:], y2.grad[2:], rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x = torch.rand(3, 4, dtype=torch.float64) * 0.8 + 0.1
    y = torch.rand(3, 4, dtype=torch.float64)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    pw = torch.rand(4, dtype=torch.float64) + 0.5
    for t in (x, y, w, pw):
        t.requires_grad_()
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda a, b, c, r=reduction: LF.binary_cross_entropy(a, b, c, reduction=r), (x, y, w)
        )
        assert torch.autograd.gradcheck(
            lambda a, b, c, d, r=reduction: LF.binary_cross_entropy_with_logits(
                a, b, c, reduction=r, pos_weight=d
            ),
            (x * 6 - 3, y, w, pw),
        )
    # second order through the logits form (plain autograd)
    assert torch.autograd.gradgradcheck(
        lambda a: LF.binary_cross_entropy_with_logits(a, y.detach(), pos_weight=pw.detach()),
        (x.detach().requires_grad_(),),
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    weight=st.sampled_from(("none", "full", "last", "scalar")),
    pos_weight=st.sampled_from(("none", "full", "last")),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from((torch.float64, torch.float32)),
    scale=st.sampled_from((1.0, 30.0)),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_arguments(shape, weight, pos_weight, reduction, dtype, scale, seed):
    torch.manual_seed(seed)
    x = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
    y = _targets(shape, dtype)
    w = _weight(weight, shape, dtype)
    pw = _weight(pos_weight, shape, dtype)
    check_against_torch(
        LF.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (x, y, w),
        {"reduction": reduction, "pos_weight": pw},
    )
    p = torch.sigmoid(x.double()).to(dtype)
    check_against_torch(
        LF.binary_cross_entropy, F.binary_cross_entropy, (p, y, w), {"reduction": reduction}
    )


# --------------------------------------------------------------------------------------------
# the torch 2.13 audit: integer weights, weight gradients, weight dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", (torch.int64, torch.bool), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ("binary_cross_entropy", "binary_cross_entropy_with_logits"))
def test_integer_and_bool_weights_like_torch(name, reduction, dtype, weight_dtype):
    """torch takes an integer or bool weight (and pos_weight) and promotes it; so does losskit."""
    logits = name.endswith("logits")
    x = torch.randn(3, 4, dtype=torch.float64)
    x = (x if logits else torch.sigmoid(x)).to(dtype)
    y = _targets((3, 4), dtype)
    w = torch.tensor([0, 1, 2, 3]).to(weight_dtype)
    kwargs = {"reduction": reduction, "weight": w}
    if logits and weight_dtype != torch.bool:  # torch fails on a bool pos_weight (pos_weight - 1)
        kwargs["pos_weight"] = torch.tensor([1, 3, 0, 2])
    out = check_against_torch(getattr(LF, name), getattr(F, name), (x, y), kwargs, wrt=(0, 1))
    assert out.dtype == dtype


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("name", ("binary_cross_entropy", "binary_cross_entropy_with_logits"))
def test_weight_and_pos_weight_have_gradients_where_torch_refuses(name, reduction):
    """torch raises when weight or pos_weight requires grad; the loss is linear in the weight,
    so losskit gives its gradient: the unweighted elementwise loss, summed over broadcasting."""
    logits = name.endswith("logits")
    x = torch.randn(3, 4, dtype=torch.float64)
    x = x if logits else torch.sigmoid(x)
    y = _targets((3, 4), torch.float64)
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable"):
        getattr(F, name)(x, y, w, reduction=reduction)
    getattr(LF, name)(x, y, w, reduction=reduction).backward()
    scale = 1 / x.numel() if reduction == "mean" else 1.0
    unweighted = getattr(F, name)(x, y, reduction="none")
    assert_close_to_torch(w.grad, unweighted.sum(0) * scale)
    if logits:
        p = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
        LF.binary_cross_entropy_with_logits(x, y, pos_weight=p, reduction=reduction).backward()
        # d/dp of -(p y log s(x) + (1 - y) log(1 - s(x))) is -y log s(x)
        expected = (-y * F.logsigmoid(x)).sum(0) * scale
        assert_close_to_torch(p.grad, expected)


@pytest.mark.parametrize("kind", ("weight", "pos_weight"))
def test_bce_with_logits_weight_of_another_dtype_promotes(kind):
    """A deliberate difference (README): torch returns the target's dtype whatever the weight's
    (float32 for a float64 weight on float32 logits); losskit the promoted float64, exact."""
    x = torch.randn(3, 4) * 3
    y = torch.rand(3, 4)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    theirs = F.binary_cross_entropy_with_logits(x, y, reduction="none", **{kind: w})
    ours = LF.binary_cross_entropy_with_logits(x, y, reduction="none", **{kind: w})
    assert theirs.dtype == torch.float32
    assert ours.dtype == torch.float64
    truth = F.binary_cross_entropy_with_logits(
        x.double(), y.double(), reduction="none", **{kind: w}
    )
    assert_close_to_torch(ours, truth)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=1e-6)
