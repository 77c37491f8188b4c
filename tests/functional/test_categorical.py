"""Cross-entropy, nll_loss and kl_div against torch.nn.functional.

cross_entropy parity uses ``impl="reference"`` (the plain-torch source of truth); the fused paths
have their own tests. One test checks ``impl="auto"`` on the CPU once the CPU kernel exists.
"""

from __future__ import annotations

import functools
import importlib
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
)
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit.functional as LF

C = 5
#: input shapes: unbatched (C,), (N, C), (N, C, d1), (N, C, d1, d2), empty batch
SHAPES = ((C,), (4, C), (3, C, 2), (2, C, 3, 2), (0, C))

reference_ce = functools.partial(LF.cross_entropy, impl="reference")


def _index_shape(shape):
    return () if len(shape) == 1 else (shape[0], *shape[2:])


def _indices(shape, ignore_index=-100, num_classes=C):
    """Class indices for an input of ``shape``, with every third position set to ignore_index."""
    t = torch.randint(0, num_classes, _index_shape(shape))
    if t.dim() > 0 and t.numel() > 0:
        t.view(-1)[1::3] = ignore_index
    return t


def _probabilities(shape, dtype, one_hot=False):
    class_dim = 0 if len(shape) == 1 else 1
    if one_hot:
        t = torch.randint(0, shape[class_dim], _index_shape(shape))
        return F.one_hot(t, shape[class_dim]).movedim(-1, class_dim).to(dtype)
    return torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, class_dim).to(dtype)


def _class_weight(dtype, num_classes=C):
    return (torch.rand(num_classes, dtype=torch.float64) * 2 + 0.1).to(dtype)


@pytest.mark.parametrize("name", ("cross_entropy", "nll_loss", "kl_div"))
def test_signature_matches_torch(name):
    assert_torch_signature(getattr(LF, name), getattr(F, name))


# --------------------------------------------------------------------------------------------
# cross_entropy, class-index targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3, 1.0))
@pytest.mark.parametrize("ignore_index", (-100, 1))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_indices_parity(
    shape, weighted, ignore_index, label_smoothing, reduction, dtype
):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    t = _indices(shape, ignore_index)
    w = _class_weight(dtype) if weighted else None
    kwargs = {
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "reduction": reduction,
    }
    check_against_torch(reference_ce, F.cross_entropy, (x, t, w), kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", (-1, 0, 4))
def test_cross_entropy_other_ignore_indices(ignore_index, reduction):
    """A negative ignore_index, and ones at the ends of the class range."""
    x = torch.randn(6, C, 3, dtype=torch.float64)
    t = _indices((6, C, 3), ignore_index)
    for w, ls in itertools.product((None, _class_weight(torch.float64)), (0.0, 0.2)):
        kwargs = {"ignore_index": ignore_index, "label_smoothing": ls, "reduction": reduction}
        check_against_torch(reference_ce, F.cross_entropy, (x, t, w), kwargs)


@pytest.mark.parametrize("num_classes", (1, 2, 37))
def test_cross_entropy_class_counts(num_classes):
    x = torch.randn(9, num_classes, dtype=torch.float64)
    t = torch.randint(0, num_classes, (9,))
    w = _class_weight(torch.float64, num_classes)
    for reduction, ls in itertools.product(REDUCTIONS, (0.0, 0.1)):
        kwargs = {"label_smoothing": ls, "reduction": reduction}
        check_against_torch(reference_ce, F.cross_entropy, (x, t, w), kwargs)


@pytest.mark.parametrize("dtype", (torch.int32, torch.int16, torch.int8, torch.uint8), ids=str)
def test_small_integer_indices_give_the_int64_answer(dtype):
    x = torch.randn(7, C, 2, dtype=torch.float64)
    t = torch.randint(0, C, (7, 2))
    w = _class_weight(torch.float64)
    for reduction in REDUCTIONS:
        kw = {"reduction": reduction, "label_smoothing": 0.1}
        expected = F.cross_entropy(x, t, w, **kw)
        out64 = reference_ce(x, t, w, **kw)
        out = reference_ce(x, t.to(dtype), w, **kw)
        assert torch.equal(out, out64)
        assert_close_to_torch(out, expected)
        nll = LF.nll_loss(x, t.to(dtype), w, reduction=reduction)
        assert torch.equal(nll, LF.nll_loss(x, t, w, reduction=reduction))
        assert_close_to_torch(nll, F.nll_loss(x, t, w, reduction=reduction))


@pytest.mark.parametrize("label_smoothing", (0.0, 0.4))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
def test_cross_entropy_all_ignored_and_empty(weighted, label_smoothing):
    """What torch gives: NaN for 'mean', 0 for 'sum', zero gradients."""
    w = _class_weight(torch.float64) if weighted else None
    cases = [
        (torch.randn(4, C, dtype=torch.float64), torch.full((4,), -100)),
        (torch.randn(2, C, 3, dtype=torch.float64), torch.full((2, 3), 2)),  # ignore_index=2
        (torch.randn(0, C, dtype=torch.float64), torch.zeros(0, dtype=torch.long)),
        (torch.randn(0, C, 4, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.long)),
    ]
    for (x, t), reduction in itertools.product(cases, REDUCTIONS):
        ignore_index = 2 if x.dim() == 3 and x.shape[0] else -100
        kwargs = {
            "ignore_index": ignore_index,
            "label_smoothing": label_smoothing,
            "reduction": reduction,
        }
        out = check_against_torch(reference_ce, F.cross_entropy, (x, t, w), kwargs)
        if reduction == "mean":
            assert out.isnan()
        _, (grad,) = _grad(reference_ce, x, t, w, **kwargs)
        assert not bool(grad.any())


def _grad(fn, x, *args, **kwargs):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf, *args, **kwargs)
    out.sum().backward()
    return out.detach(), (leaf.grad,)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
def test_cross_entropy_stable_at_1e4(dtype):
    x = (torch.randn(6, C, dtype=torch.float64) * 1e4).to(dtype)
    t = torch.randint(0, C, (6,))
    w = _class_weight(dtype)
    for reduction, ls, weight in itertools.product(REDUCTIONS, (0.0, 0.2), (None, w)):
        kwargs = {"label_smoothing": ls, "reduction": reduction}
        out = check_against_torch(reference_ce, F.cross_entropy, (x, t, weight), kwargs)
        assert bool(out.isfinite().all())
        _, (grad,) = _grad(reference_ce, x, t, weight, **kwargs)
        assert bool(grad.isfinite().all())


# --------------------------------------------------------------------------------------------
# cross_entropy, probability targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_probabilities_parity(shape, weighted, label_smoothing, reduction, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    p = _probabilities(shape, dtype)
    w = _class_weight(dtype) if weighted else None
    kwargs = {"label_smoothing": label_smoothing, "reduction": reduction}
    # torch differentiates the probability target too
    check_against_torch(reference_ce, F.cross_entropy, (x, p, w), kwargs, wrt=(0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.25, 1.0))
@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_one_hot_equals_index_form(shape, label_smoothing, reduction):
    """Unweighted: the same loss and the same input gradient."""
    x = torch.randn(shape, dtype=torch.float64)
    t = torch.randint(0, C, _index_shape(shape))
    one_hot = F.one_hot(t, C).movedim(-1, 0 if len(shape) == 1 else 1).double()
    kwargs = {"label_smoothing": label_smoothing, "reduction": reduction}
    by_index, (g_index,) = _grad(reference_ce, x, t, **kwargs)
    by_prob, (g_prob,) = _grad(reference_ce, x, one_hot, **kwargs)
    torch.testing.assert_close(by_prob, by_index, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_prob, g_index, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", (0.0, 0.25))
def test_one_hot_with_weights_follows_torch(label_smoothing):
    """With class weights, 'none' and 'sum' agree between the two forms; for 'mean' torch divides
    the index form by the targets' weight sum and the probability form by N (documented)."""
    x = torch.randn(6, C, dtype=torch.float64)
    t = torch.randint(0, C, (6,))
    one_hot = F.one_hot(t, C).double()
    w = _class_weight(torch.float64)
    ls = {"label_smoothing": label_smoothing}
    for reduction in ("none", "sum"):
        torch.testing.assert_close(
            reference_ce(x, one_hot, w, reduction=reduction, **ls),
            reference_ce(x, t, w, reduction=reduction, **ls),
            rtol=1e-12,
            atol=1e-12,
        )
    by_index = check_against_torch(reference_ce, F.cross_entropy, (x, t, w), ls)
    by_prob = check_against_torch(reference_ce, F.cross_entropy, (x, one_hot, w), ls)
    torch.testing.assert_close(by_prob * 6, by_index * w[t].sum(), rtol=1e-12, atol=1e-12)


def test_probability_targets_mean_is_over_positions():
    x = torch.randn(2, C, 3, dtype=torch.float64)
    p = _probabilities((2, C, 3), torch.float64)
    total = reference_ce(x, p, reduction="sum")
    torch.testing.assert_close(reference_ce(x, p), total / 6, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# impl="auto" on the CPU
# --------------------------------------------------------------------------------------------


def test_auto_on_cpu_equals_torch():
    try:
        importlib.import_module("losskit.kernels.cpu.cross_entropy")
    except ImportError:
        pytest.skip("losskit.kernels.cpu.cross_entropy is not importable yet")
    auto = functools.partial(LF.cross_entropy, impl="auto")
    x = torch.randn(37, 11) * 3
    t = torch.randint(0, 11, (37,))
    t[::5] = -100
    w = _class_weight(torch.float32, 11)
    for reduction, ls, weight in itertools.product(REDUCTIONS, (0.0, 0.1), (None, w)):
        kwargs = {"label_smoothing": ls, "reduction": reduction}
        check_against_torch(auto, F.cross_entropy, (x, t, weight), kwargs)
    x3 = torch.randn(3, 11, 4)
    t3 = torch.randint(0, 11, (3, 4))
    check_against_torch(auto, F.cross_entropy, (x3, t3), {"reduction": "none"})


def test_auto_on_cpu_takes_the_fused_path_from_the_size_threshold_up(monkeypatch):
    from losskit import _dispatch
    from losskit.kernels.cpu import cross_entropy as cpu_kernel

    calls = []
    real = cpu_kernel.cross_entropy

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_kernel, "cross_entropy", counting)
    v = 300
    small_n = _dispatch.CPU_FUSED_MIN_ELEMENTS // v  # just below the threshold
    big_n = small_n + 1
    for n, fused in ((small_n, False), (big_n, True)):
        calls.clear()
        x = torch.randn(n, v) * 3
        t = torch.randint(0, v, (n,))
        t[::7] = -100
        check_against_torch(
            functools.partial(LF.cross_entropy, impl="auto"), F.cross_entropy, (x, t),
            {"label_smoothing": 0.1},
        )  # fmt: skip
        assert bool(calls) == fused, (n * v, calls)
    # impl='fused' runs the kernel whatever the size
    calls.clear()
    LF.cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 4]), impl="fused")
    assert calls == [torch.Size([3, 5])]


# --------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", (-100, 1))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nll_loss_parity(shape, weighted, ignore_index, reduction, dtype):
    class_dim = 0 if len(shape) == 1 else 1
    x = torch.log_softmax(torch.randn(shape, dtype=torch.float64) * 2, class_dim).to(dtype)
    t = _indices(shape, ignore_index)
    w = _class_weight(dtype) if weighted else None
    kwargs = {"ignore_index": ignore_index, "reduction": reduction}
    check_against_torch(LF.nll_loss, F.nll_loss, (x, t, w), kwargs)


def test_cross_entropy_is_nll_of_log_softmax():
    x = torch.randn(5, C, 2, dtype=torch.float64)
    t = _indices((5, C, 2))
    w = _class_weight(torch.float64)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(
            reference_ce(x, t, w, reduction=reduction),
            LF.nll_loss(torch.log_softmax(x, 1), t, w, reduction=reduction),
            rtol=1e-12,
            atol=1e-12,
        )


# --------------------------------------------------------------------------------------------
# kl_div
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("log_target", (False, True))
@pytest.mark.parametrize("reduction", (*REDUCTIONS, "batchmean"))
@pytest.mark.parametrize("shape", ((), (7,), (3, 5), (2, 3, 4), (0, 3)), ids=str)
def test_kl_div_parity(shape, reduction, log_target, dtype):
    x = torch.log_softmax(torch.randn(shape, dtype=torch.float64), -1) if shape else torch.randn(())
    y = torch.rand(shape, dtype=torch.float64)
    if y.numel() >= 2:
        y.view(-1)[0] = 0.0  # 0 log 0 = 0
    if log_target:
        y = torch.log(y + 1e-3)
    # the target gradient too (NaN where a probability target is 0, as in torch)
    check_against_torch(
        LF.kl_div,
        F.kl_div,
        (x.to(dtype), y.to(dtype)),
        {"reduction": reduction, "log_target": log_target},
        wrt=(0, 1),
    )


def test_kl_div_mean_warns_like_torch():
    x = torch.log_softmax(torch.randn(3, 4), 1)
    y = torch.softmax(torch.randn(3, 4), 1)
    with pytest.warns(UserWarning, match="batchmean"):
        LF.kl_div(x, y)


# --------------------------------------------------------------------------------------------
# all three
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
def test_legacy_size_average_and_reduce(size_average, reduce):
    x = torch.randn(4, C, dtype=torch.float64)
    t = _indices((4, C))
    w = _class_weight(torch.float64)
    p = torch.softmax(torch.randn(4, C, dtype=torch.float64), 1)
    calls = [
        (reference_ce, F.cross_entropy, (x, t, w, size_average, -100, reduce)),
        (LF.nll_loss, F.nll_loss, (x, t, w, size_average, -100, reduce)),
        (LF.kl_div, F.kl_div, (x, p, size_average, reduce)),
    ]
    for ours, theirs, args in calls:
        with pytest.warns(FutureWarning, match="reduction=") as record:
            out = ours(*args)
        assert any(r.filename == __file__ for r in record)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_close_to_torch(out, theirs(*args))


def test_elementwise_mean_is_mean_with_warning():
    x = torch.randn(4, C, dtype=torch.float64)
    t = _indices((4, C))
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        out = reference_ce(x, t, reduction="elementwise_mean")
    assert_close_to_torch(out, F.cross_entropy(x, t))
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        out = LF.nll_loss(x, t, reduction="elementwise_mean")
    assert_close_to_torch(out, F.nll_loss(x, t))


def test_gradcheck():
    x = torch.randn(4, C, 2, dtype=torch.float64, requires_grad=True)
    t = _indices((4, C, 2), ignore_index=3)
    w = _class_weight(torch.float64)
    p = _probabilities((4, C, 2), torch.float64).requires_grad_()
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda a, r=reduction: reference_ce(
                a, t, w, ignore_index=3, label_smoothing=0.2, reduction=r
            ),
            (x,),
        )
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: reference_ce(a, b, w, label_smoothing=0.1, reduction=r),
            (x, p),
        )
        assert torch.autograd.gradcheck(
            lambda a, r=reduction: LF.nll_loss(a, t, w, ignore_index=3, reduction=r), (x,)
        )
    q = torch.rand(4, C, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(torch.randn(4, C, dtype=torch.float64), 1).requires_grad_()
    for log_target in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, lt=log_target: LF.kl_div(a, b, reduction="batchmean", log_target=lt),
            (logp, q),
        )


@st.composite
def _ce_case(draw):
    n = draw(st.integers(0, 6))
    c = draw(st.integers(1, 7))
    spatial = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    unbatched = draw(st.booleans()) and not spatial
    shape = (c,) if unbatched else (n, c, *spatial)
    return {
        "shape": shape,
        "weighted": draw(st.booleans()),
        "ignore_index": draw(st.sampled_from((-100, -1, 0, c - 1))),
        "label_smoothing": draw(st.sampled_from((0.0, 0.05, 0.5, 1.0))),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "dtype": draw(st.sampled_from((torch.float64, torch.float32))),
        "probabilities": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=_ce_case())
def test_random_cross_entropy_calls(case):
    torch.manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    num_classes = shape[0 if len(shape) == 1 else 1]
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype)
    w = _class_weight(dtype, num_classes) if case["weighted"] else None
    kwargs = {"reduction": case["reduction"], "label_smoothing": case["label_smoothing"]}
    if case["probabilities"]:
        target = _probabilities(shape, dtype)
        wrt = (0, 1)
    else:
        target = _indices(shape, case["ignore_index"], num_classes)
        kwargs["ignore_index"] = case["ignore_index"]
        wrt = (0,)
    check_against_torch(reference_ce, F.cross_entropy, (x, target, w), kwargs, wrt=wrt)


# --------------------------------------------------------------------------------------------
# the torch 2.13 audit: class-weight dtypes and gradients, mixed dtypes
# --------------------------------------------------------------------------------------------

_MIXED = [
    (torch.float32, torch.float64),
    (torch.float64, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float64),
]


@pytest.mark.parametrize(("dtype", "other"), _MIXED, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ("target", "weight", "both"))
def test_probability_target_and_weight_dtypes_promote_like_torch(form, reduction, dtype, other):
    """Probability targets: torch's result has the promoted dtype of input, target and class
    weight (a float64 weight on float32 logits gives float64); losskit's too, computed in that
    dtype, so no further from a float64 truth than torch's, which rounds the log-softmax to the
    input's dtype first."""
    x = (torch.randn(3, C, 2, dtype=torch.float64) * 2).to(dtype)
    p = _probabilities((3, C, 2), other if form != "weight" else dtype)
    kwargs = {"reduction": reduction, "label_smoothing": 0.1}
    if form != "target":
        kwargs["weight"] = _class_weight(other)
    check_mixed_dtypes(reference_ce, F.cross_entropy, (x, p), kwargs, wrt=(0, 1))


@pytest.mark.parametrize(("dtype", "other"), _MIXED, ids=str)
@pytest.mark.parametrize("reduction", (*REDUCTIONS, "batchmean"))
@pytest.mark.parametrize("log_target", (False, True))
def test_kl_div_mixed_dtypes_promote_like_torch(log_target, reduction, dtype, other):
    """kl_div of mixed dtypes: torch's promoted dtype, no further from the truth than torch."""
    x = torch.log_softmax(torch.randn(4, C, dtype=torch.float64), 1).to(dtype)
    y = torch.softmax(torch.randn(4, C, dtype=torch.float64), 1)
    y = (y.log() if log_target else y).to(other)
    kwargs = {"reduction": reduction, "log_target": log_target}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'mean' warns, in both
        check_mixed_dtypes(LF.kl_div, F.kl_div, (x, y), kwargs, wrt=(0, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", ("cross_entropy", "nll_loss"))
def test_index_target_class_weight_of_another_dtype_is_cast(name, weight_dtype, dtype):
    """Class indices with a class weight of another dtype: torch raises ("expected scalar type");
    losskit casts the weight to the input's dtype, which gives torch's numbers for that cast."""
    x = (torch.randn(4, C, 3, dtype=torch.float64) * 2).to(dtype)
    t = _indices((4, C, 3))
    w = _class_weight(weight_dtype)
    ours = reference_ce if name == "cross_entropy" else LF.nll_loss
    theirs = getattr(F, name)
    if weight_dtype != dtype:
        with pytest.raises(RuntimeError, match="expected scalar type"):
            theirs(x, t, weight=w)
    for reduction in REDUCTIONS:
        out = check_against_torch(
            lambda a, b, **k: ours(a, b, weight=w, **k),
            lambda a, b, **k: theirs(a, b, weight=w.to(a.dtype), **k),
            (x, t),
            {"reduction": reduction},
        )
        assert out.dtype == dtype


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("name", ("cross_entropy", "nll_loss"))
def test_class_weight_gradient_where_torch_refuses(name, reduction):
    """torch raises when the class weight requires grad; losskit differentiates it.

    With ``'sum'`` the loss is ``sum_n w[t_n] l_n``, so d/dw_c is the sum of ``l_n`` over the rows
    of class c; with ``'mean'`` it is ``(S_c - loss * count_c) / W`` (``W`` the weight sum).
    """
    x = torch.randn(6, C, 2, dtype=torch.float64)
    t = _indices((6, C, 2))
    w = _class_weight(torch.float64).requires_grad_()
    ours = reference_ce if name == "cross_entropy" else LF.nll_loss
    with pytest.raises(RuntimeError, match="not differentiable"):
        getattr(F, name)(x, t, weight=w)
    loss = ours(x, t, weight=w, reduction=reduction)
    loss.backward()
    rows = getattr(F, name)(x, t, reduction="none").reshape(-1)
    flat = t.reshape(-1)
    kept = flat != -100
    per_class = torch.zeros(C, dtype=torch.float64).index_add_(0, flat[kept], rows[kept])
    if reduction == "sum":
        expected = per_class
    else:
        count = torch.bincount(flat[kept], minlength=C).double()
        expected = (per_class - loss.detach() * count) / w.detach()[flat[kept]].sum()
    assert_close_to_torch(w.grad, expected)
    # and with label smoothing, against finite differences
    w2 = w.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v: reference_ce(x, t, weight=v, label_smoothing=0.3, reduction=reduction), (w2,)
    )
