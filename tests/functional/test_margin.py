"""Margin losses against torch.nn.functional and torch.nn: hinge embedding, soft margin,
multi-class and multi-label margins, margin ranking (functions and Modules)."""

from __future__ import annotations

import copy
import itertools
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

from losskit._validate.errors import LossError, LossIndexError, LossTypeError, LossValueError
from losskit.functional import margin as LM
from losskit.nn import margin as NM

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
LOW = (torch.bfloat16, torch.float16)
#: the Modules and their functions (torch's names for both)
MODULES = {
    "HingeEmbeddingLoss": "hinge_embedding_loss",
    "SoftMarginLoss": "soft_margin_loss",
    "MultiMarginLoss": "multi_margin_loss",
    "MultiLabelMarginLoss": "multilabel_margin_loss",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin_loss",
    "MarginRankingLoss": "margin_ranking_loss",
}
NAMES = tuple(MODULES.values())


def _scores(shape, dtype=F64):
    return (torch.randn(shape, dtype=F64) * 1.5).to(dtype)


def _signs(shape, dtype=F64):
    return torch.where(torch.rand(shape) > 0.5, 1.0, -1.0).to(dtype)


def _multilabel(shape):
    """Rows listing 0..C distinct classes, ended by -1; after the -1, any value in [-1, C)."""
    c = shape[-1]
    n = 1 if len(shape) == 1 else shape[0]
    t = torch.randint(-1, c, (n, c))
    for r in range(n):
        k = r % (c + 1)
        t[r, :k] = torch.randperm(c)[:k]
        if k < c:
            t[r, k] = -1
    return t.reshape(shape)


def _upcast(fn):
    """torch's ``fn``, with half types computed in float32 and rounded once (torch's CPU kernels
    have none): the oracle for losskit's half results."""

    def reference(input, *args, **kwargs):
        if input.dtype not in LOW:
            return fn(input, *args, **kwargs)
        if kwargs.get("weight") is not None:
            kwargs = dict(kwargs, weight=kwargs["weight"].float())
        return fn(input.float(), *args, **kwargs).to(input.dtype)

    return reference


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_torch(name):
    assert_torch_signature(getattr(LM, name), getattr(F, name))


@pytest.mark.parametrize("name", list(MODULES))
def test_module_signature_matches_torch(name):
    assert_torch_signature(getattr(NM, name), getattr(nn, name))
    assert getattr(NM, name).function is getattr(LM, MODULES[name])


# --------------------------------------------------------------------------------------------
# parity with torch
# --------------------------------------------------------------------------------------------


SIGNED = (("hinge_embedding_loss", {}), ("hinge_embedding_loss", {"margin": 0.4}))
SIGNED += (("soft_margin_loss", {}),)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ((), (7,), (3, 5), (2, 3, 4), (0,), (0, 3)), ids=str)
@pytest.mark.parametrize(("name", "options"), SIGNED)
def test_signed_losses_parity(name, options, shape, dtype):
    x, y = _scores(shape, dtype), _signs(shape, dtype)
    for reduction in REDUCTIONS:
        kwargs = dict(options, reduction=reduction)
        check_against_torch(getattr(LM, name), getattr(F, name), (x, y), kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("margin", (0, 0.5))
@pytest.mark.parametrize("shape", ((), (7,), (3, 4), (0,)), ids=str)
def test_margin_ranking_parity(shape, margin, dtype):
    args = (_scores(shape, dtype), _scores(shape, dtype), _signs(shape, dtype))
    for reduction in REDUCTIONS:
        kwargs = {"margin": margin, "reduction": reduction}
        check_against_torch(LM.margin_ranking_loss, F.margin_ranking_loss, args, kwargs, wrt=(0, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weighted", (False, True))
@pytest.mark.parametrize(("p", "margin"), [(1, 1.0), (2, 1.0), (1, 0.3), (2, -0.5)])
@pytest.mark.parametrize(
    ("shape", "target_shape"), [((5, 4), (5,)), ((4,), ()), ((4,), (1,)), ((6, 1), (6,))], ids=str
)
def test_multi_margin_parity(shape, target_shape, p, margin, weighted, dtype):
    x = _scores(shape, dtype)
    y = torch.randint(0, shape[-1], target_shape)
    w = (torch.rand(shape[-1], dtype=F64) + 0.5).to(dtype) if weighted else None
    for reduction in REDUCTIONS:
        kwargs = {"p": p, "margin": margin, "weight": w, "reduction": reduction}
        check_against_torch(LM.multi_margin_loss, _upcast(F.multi_margin_loss), (x, y), kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ((5, 4), (4,), (3, 1), (6, 7)), ids=str)
def test_multilabel_margin_parity(shape, dtype):
    x, y = _scores(shape, dtype), _multilabel(shape)
    reference = _upcast(F.multilabel_margin_loss)
    for reduction in REDUCTIONS:
        check_against_torch(LM.multilabel_margin_loss, reference, (x, y), {"reduction": reduction})


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", ("multi_margin_loss", "multilabel_margin_loss"))
def test_half_types_are_computed_in_float32_and_rounded_once(name, dtype):
    """torch's CPU kernels have no half version; losskit is within one rounding of the truth."""
    x = _scores((6, 5))
    y = torch.randint(0, 5, (6,)) if name == "multi_margin_loss" else _multilabel((6, 5))
    fn = getattr(LM, name)
    out, (grad,) = forward_backward(fn, (x.to(dtype), y), {"reduction": "none"})
    truth, (truth_grad,) = forward_backward(getattr(F, name), (x, y), {"reduction": "none"})
    assert out.dtype == grad.dtype == dtype
    assert_within_budget(out, truth.to(dtype), truth)
    assert_within_budget(grad, truth_grad.to(dtype), truth_grad)


@pytest.mark.parametrize("name", ("multi_margin_loss", "multilabel_margin_loss"))
def test_empty_batch_is_reduced_honestly(name):
    """torch's CPU kernels reduce an empty batch to an uninitialized number; losskit gives the
    mean and sum of torch's (empty) unreduced loss."""
    x = torch.randn(0, 4, dtype=F64, requires_grad=True)
    y = torch.zeros((0,) if name == "multi_margin_loss" else (0, 4), dtype=torch.long)
    none = getattr(F, name)(x, y, reduction="none")
    fn = getattr(LM, name)
    assert fn(x, y, reduction="none").shape == none.shape == (0,)
    assert torch.isnan(fn(x, y)) and torch.isnan(none.mean())
    total = fn(x, y, reduction="sum")
    assert total.item() == 0.0
    total.backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight", ("none", "class", "full"))
@pytest.mark.parametrize(
    ("shape", "labels"),
    [((5, 4), True), ((5, 4), False), ((4,), True), ((2, 3, 4), False), ((0, 4), True)],
    ids=str,
)
def test_multilabel_soft_margin_parity(shape, labels, weight, dtype):
    x = _scores(shape, dtype)
    y = torch.rand(shape, dtype=F64).round() if labels else torch.rand(shape, dtype=F64)
    w = {"none": None, "class": (shape[-1],), "full": shape}[weight]
    w = None if w is None else (torch.rand(w, dtype=F64) + 0.5).to(dtype)
    args, wrt = ((x, y.to(dtype)), (0,)) if w is None else ((x, y.to(dtype), w), (0, 2))
    fn, theirs = LM.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss
    for reduction in REDUCTIONS:
        check_against_torch(fn, theirs, args, {"reduction": reduction}, wrt=wrt)


def test_label_dtypes_torch_promotes_or_refuses():
    """Integer 1/-1 labels are promoted as torch does; where torch refuses int32 (or uint8)
    indices, a weight of another dtype or a bool multi-label target, losskit casts them."""
    x, s, ml = _scores((5, 4)), _signs((5, 4)).long(), _multilabel((5, 4))
    for name, args in (("hinge_embedding_loss", (x, s)), ("soft_margin_loss", (x, s)),
                       ("margin_ranking_loss", (x, x.flip(0), s))):  # fmt: skip
        assert_close_to_torch(getattr(LM, name)(*args), getattr(F, name)(*args))
    y, w = torch.randint(0, 4, (5,)), torch.rand(4) + 0.5  # a float32 weight, float64 scores
    expected = F.multi_margin_loss(x, y, weight=w.double(), reduction="none")
    for target in (y, y.int(), y.to(torch.uint8)):
        assert_close_to_torch(LM.multi_margin_loss(x, target, weight=w, reduction="none"), expected)
    assert_close_to_torch(LM.multilabel_margin_loss(x, ml.int()), F.multilabel_margin_loss(x, ml))
    b = torch.rand(5, 4) > 0.5
    expected = F.multilabel_soft_margin_loss(x, b.double(), reduction="none")
    assert_close_to_torch(LM.multilabel_soft_margin_loss(x, b, reduction="none"), expected)


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
@pytest.mark.parametrize("name", NAMES)
def test_legacy_size_average_and_reduce(name, size_average, reduce):
    args = _example(name, 5)[0]
    legacy = {"size_average": size_average, "reduce": reduce}
    with pytest.warns(FutureWarning, match="reduction=") as record:
        ours = getattr(LM, name)(*args, **legacy)
    assert any(r.filename == __file__ for r in record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close_to_torch(ours, getattr(F, name)(*args, **legacy))


# --------------------------------------------------------------------------------------------
# mask and normalizer
# --------------------------------------------------------------------------------------------


def _example(name, n):
    """(args, kwargs, index of the label argument, bad label) of a call with ``n`` samples."""
    x, w, signs = _scores((n, 4)), torch.rand(4, dtype=F64) + 0.5, _signs((n,))
    return {
        "hinge_embedding_loss": ((x[:, 0], signs), {"margin": 0.7}, 1, 0.0),
        "soft_margin_loss": ((x[:, 0], signs), {}, 1, 2.0),
        "margin_ranking_loss": ((x[:, 0], x[:, 1], signs), {"margin": 2.0}, 2, 0.0),
        "multi_margin_loss": ((x, torch.randint(0, 4, (n,))), {"p": 2, "weight": w}, 1, 9),
        "multilabel_margin_loss": ((x, _multilabel((n, 4))), {}, 1, 9),
        "multilabel_soft_margin_loss": ((x, torch.rand(n, 4, dtype=F64)), {"weight": w}, 1, 3.0),
    }[name]


def _grads(fn, args, kwargs, wrt):
    leaves = [a.clone().requires_grad_() if i in wrt else a for i, a in enumerate(args)]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out.sum(), [leaves[i] for i in wrt])
    return out.detach(), grads


def _wrt(name):
    return (0, 1) if name == "margin_ranking_loss" else (0,)


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("name", NAMES)
def test_mask_equals_slicing(name, reduction):
    args, kwargs, _, _ = _example(name, 7)
    mask = torch.tensor([True, False, True, True, False, True, True])
    fn, wrt = getattr(LM, name), _wrt(name)
    masked = _grads(fn, args, dict(kwargs, reduction=reduction, mask=mask), wrt)
    sliced = _grads(fn, [a[mask] for a in args], dict(kwargs, reduction=reduction), wrt)
    torch.testing.assert_close(masked[0], sliced[0], **TIGHT)
    for g, s in zip(masked[1], sliced[1], strict=True):
        torch.testing.assert_close(g[mask], s, **TIGHT)
        assert not g[~mask].any()
    dropped = fn(*args, **dict(kwargs, reduction="none"))[~mask]
    assert dropped.abs().sum() > 0  # so the mask changes the result
    assert not torch.allclose(masked[0], fn(*args, **dict(kwargs, reduction=reduction)))


@pytest.mark.parametrize("name", NAMES)
def test_mask_none_is_zero_at_masked_samples(name):
    args, kwargs, _, _ = _example(name, 6)
    mask = torch.tensor([True, False, True, False, True, True])
    fn = getattr(LM, name)
    out = fn(*args, **kwargs, reduction="none", mask=mask)
    full = fn(*args, **kwargs, reduction="none")
    assert out.shape == full.shape == (6,)
    assert not out[~mask].any() and torch.equal(out[mask], full[mask])


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_inputs_and_bad_labels_at_masked_samples_do_not_leak(name):
    """inf/NaN scores and invalid labels at masked samples reach neither value nor gradient,
    and are not validated."""
    args, kwargs, label, bad = _example(name, 6)
    mask = torch.tensor([True, False, True, True, False, True])
    dirty = [a.clone() for a in args]
    dirty[0][1] = float("nan")
    dirty[0][4].view(-1)[-1] = float("inf")  # one element of a row: an infinite margin term
    dirty[label][~mask] = bad
    if name == "margin_ranking_loss":
        dirty[1][1] = float("-inf")
    fn, wrt = getattr(LM, name), _wrt(name)
    for reduction in REDUCTIONS:
        options = dict(kwargs, reduction=reduction, mask=mask)
        value, grads = _grads(fn, dirty, options, wrt)
        clean_value, clean_grads = _grads(fn, args, options, wrt)
        assert bool(value.isfinite().all())
        torch.testing.assert_close(value, clean_value, **TIGHT)
        for g, c in zip(grads, clean_grads, strict=True):
            assert bool(g.isfinite().all())
            torch.testing.assert_close(g, c, **TIGHT)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_masked_half_types_within_budget(name, dtype):
    """With a mask, half types are reduced in float32: no further from a float64 truth than
    torch's own result on the kept samples (+1 ulp)."""
    args, kwargs, _, _ = _example(name, 9)
    mask = torch.rand(9) > 0.3
    low = [a.to(dtype) if a.is_floating_point() else a for a in args]
    low_kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ours = getattr(LM, name)(*low, **low_kwargs, mask=mask)
    reference = getattr(F, name)
    if name in ("multi_margin_loss", "multilabel_margin_loss"):  # no half kernel on the CPU
        reference = _upcast(reference)
    theirs = reference(*[a[mask] for a in low], **low_kwargs)
    wide = [a.double() if a.is_floating_point() else a for a in low]  # the inputs as rounded
    wide_kwargs = {
        k: v.double() if isinstance(v, torch.Tensor) else v for k, v in low_kwargs.items()
    }
    truth = getattr(F, name)(*[a[mask] for a in wide], **wide_kwargs)
    assert ours.dtype == dtype
    assert_within_budget(ours, theirs, truth)


@pytest.mark.parametrize("name", NAMES)
def test_normalizer_divides_the_sum(name):
    args, kwargs, _, _ = _example(name, 6)
    fn, wrt = getattr(LM, name), _wrt(name)
    total, total_grads = _grads(fn, args, dict(kwargs, reduction="sum"), wrt)
    for normalizer in (2.5, torch.tensor(4.0, dtype=F64)):
        out, grads = _grads(fn, args, dict(kwargs, normalizer=normalizer), wrt)
        torch.testing.assert_close(out, total / normalizer, **TIGHT)
        for g, t in zip(grads, total_grads, strict=True):
            torch.testing.assert_close(g, t / normalizer, **TIGHT)
    zero, zero_grads = _grads(fn, args, dict(kwargs, normalizer=0), wrt)
    assert zero.item() == 0.0 and not any(g.any() for g in zero_grads)
    with pytest.raises(LossValueError, match="normalizer"):
        fn(*args, **kwargs, reduction="sum", normalizer=3.0)


def test_hinge_elementwise_and_row_masks():
    x, y = _scores((5, 3)), _signs((5, 3))
    rows = torch.tensor([True, False, True, True, False])
    by_rows = LM.hinge_embedding_loss(x, y, reduction="sum", mask=rows[:, None])
    torch.testing.assert_close(by_rows, F.hinge_embedding_loss(x[rows], y[rows], reduction="sum"))
    each = torch.rand(5, 3) > 0.5
    mean = LM.hinge_embedding_loss(x, y, mask=each)
    torch.testing.assert_close(mean, F.hinge_embedding_loss(x[each], y[each]), **TIGHT)


# --------------------------------------------------------------------------------------------
# errors where torch is silent or cryptic
# --------------------------------------------------------------------------------------------

X, S, IDX = torch.randn(4, 3), torch.ones(4, 3), torch.tensor([0, 2, 1, 0])
S0 = S.clone()
S0[1, 2] = S0[3, 0] = 0.0
S0[:, 2] = torch.tensor([1.0, -1.0, 0.0, 1.0])
ML = torch.tensor([[0, 1, -1], [2, -1, 0], [1, 2, 0], [-1, 0, 0]])


def _raises(kind, fragments, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``kind`` with each of the ``|``-separated fragments."""
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    for fragment in fragments.split("|"):
        assert fragment in str(info.value), str(info.value)


def test_errors_of_the_signed_losses():
    hinge, soft, rank = LM.hinge_embedding_loss, LM.soft_margin_loss, LM.margin_ranking_loss
    V, T = LossValueError, LossTypeError
    _raises(V, "value 0 at position (2, 2)|needs the labels 1 or -1 (2 of 12 values", hinge, X, S0)
    _raises(V, "for 0/1 labels use 2 * target - 1", hinge, X, (X > 0).float())
    _raises(T, "bool tensor|target.float() * 2 - 1", hinge, X, S > 0)
    _raises(V, "target has shape (3,) but input has shape (4, 3)", hinge, X, S[0])
    _raises(T, "input must be a floating-point|int64|input.float()", hinge, X.long(), S)
    _raises(V, "margin must be a number, got nan", hinge, X, S, float("nan"))
    _raises(T, "margin must be a float, got str", hinge, X, S, "1")
    _raises(V, "value 2 at position (0, 0)|12 of 12 values are neither", soft, X, S * 2)
    _raises(V, "value nan", soft, X, S.where(X > 0, float("nan")))
    _raises(
        V, "value 0 at position (2,)|1 of 4 values is neither", rank, X[:, 0], X[:, 1], S0[:, 2]
    )
    _raises(V, "input2 has shape (1,) but input1 has shape (4,)", rank, X[:, 0], X[:1, 1], S[:, 0])
    _raises(V, "target has shape (1,) but input1", rank, X[:, 0], X[:, 1], S[:1, 0])
    _raises(T, "input1 must be a real tensor|bool", rank, X[:, 0] > 0, X[:, 1], S[:, 0])
    _raises(T, "mask must be a bool tensor", soft, X, S, mask=torch.ones(4, 3))
    _raises(V, "mask has shape (2,)", soft, X, S, mask=torch.ones(2, dtype=torch.bool))


def test_errors_of_multi_margin():
    mm, V = LM.multi_margin_loss, LossValueError
    _raises(V, "p must be 1 (the hinge) or 2|got 3", mm, X, IDX, p=3)
    _raises(V, "p must be 1", mm, X, IDX, p=True)
    bad = torch.tensor([0, 3, -1, 0])
    _raises(LossIndexError, "index 3 at position (1,)|3 classes (dim 1)|0..2|2 of 4", mm, X, bad)
    _raises(LossIndexError, "index 5 at position ()|(dim 0)", mm, X[0], torch.tensor(5))
    _raises(
        LossTypeError,
        "integer class indices, got dtype torch.float32|target.long()",
        mm,
        X,
        IDX.float(),
    )  # noqa: E501
    _raises(V, "weight must have shape (3,)|got shape (4,)", mm, X, IDX, weight=torch.ones(4))
    _raises(V, "weight must have shape (3,)|(1, 3)", mm, X, IDX, weight=torch.ones(1, 3))
    _raises(LossTypeError, "weight|int64", mm, X, IDX, weight=torch.ones(3).long())
    _raises(V, "(4, 1)|target.squeeze(1)", mm, X, IDX[:, None])
    _raises(V, "target has shape (3,)|needs one class index per sample, shape (4,)", mm, X, IDX[:3])
    _raises(V, "target.argmax(1)", mm, X, S.long())
    _raises(V, "(N, C) or (C,)|(2, 3, 4)|movedim", mm, torch.randn(2, 3, 4), IDX[:2])
    _raises(V, "(N, C) or (C,), got shape ()", mm, torch.tensor(1.0), torch.tensor(0))
    _raises(V, "0 classes", mm, torch.randn(4, 0), IDX)
    _raises(V, "needs one class index, a 0-dim target", mm, X[0], IDX[:2])
    _raises(V, "mask has shape (3,)|per-sample loss|(4,)", mm, X, IDX, mask=torch.ones(3) > 0)


def test_errors_of_the_multilabel_losses():
    mlm, soft, V = LM.multilabel_margin_loss, LM.multilabel_soft_margin_loss, LossValueError
    three = ML.where(ML != 2, 3)
    _raises(
        LossIndexError,
        "index 3 at position (1, 0)|or -1 to end a row's list|2 of 12",
        mlm,
        X,
        three,
    )  # noqa: E501
    _raises(LossIndexError, "index -2|3 of 12", mlm, X, ML - 1)
    _raises(LossTypeError, "integer class indices|target.long()", mlm, X, ML.float())
    _raises(V, "target has shape (4, 2)|pad the rest with -1", mlm, X, ML[:, :2])
    _raises(LossTypeError, "input must be a floating-point|int64", mlm, X.long(), ML)
    _raises(V, "target has shape (3,)", soft, X, S[0])
    w = torch.ones(2, 4, 3)
    _raises(
        V,
        "weight has shape (2, 4, 3), which does not broadcast to the input of shape (4, 3)",
        soft,
        X,
        S,
        weight=w,
    )  # noqa: E501
    _raises(V, "weight has shape (2,)", soft, X, S, weight=torch.ones(2))
    _raises(V, "value 2|[0, 1]|12 of 12", soft, X, S * 2)
    _raises(V, "got shape ()", soft, torch.tensor(1.0), torch.tensor(1.0))


def test_index_errors_before_the_kernel():
    """losskit checks the indices before torch's kernel runs (on CUDA a bad index is a
    device-side assert): a LossIndexError, masked samples not checked, and validate=False
    leaves the indices to torch."""
    bad_mm, bad_mlm = torch.tensor([0, 3, 1, 0]), ML.where(ML != 2, 3)
    for fn, bad in ((LM.multi_margin_loss, bad_mm), (LM.multilabel_margin_loss, bad_mlm)):
        for x in (X, X.bfloat16()):
            _raises(LossIndexError, "class index 3 at position (1", fn, x, bad)
        keep = torch.tensor([True, False, False, True])
        expected = fn(X[keep], bad[keep], reduction="sum")
        assert_close_to_torch(fn(X, bad, reduction="sum", mask=keep), expected)
        with pytest.raises(RuntimeError) as info:  # torch's CPU kernel's own check
            fn(X, bad, validate=False)
        assert not isinstance(info.value, LossError)


def test_validate_false_skips_the_value_checks():
    """Only the value checks: torch's own result (or torch's own error) comes through."""
    cases = [
        (LM.hinge_embedding_loss, F.hinge_embedding_loss, (X, S0)),
        (LM.soft_margin_loss, F.soft_margin_loss, (X, S * 3)),
        (LM.margin_ranking_loss, F.margin_ranking_loss, (X[:, 0], X[:, 1], S0[:, 0])),
        (LM.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, (X, S * 2)),
    ]
    for ours, theirs, args in cases:
        assert_close_to_torch(ours(*args, validate=False), theirs(*args))
    for ours, target in ((LM.multi_margin_loss, IDX + 5), (LM.multilabel_margin_loss, ML + 5)):
        with pytest.raises(RuntimeError) as info:
            ours(X, target, validate=False)
        assert not isinstance(info.value, LossError)
    with pytest.raises(LossValueError):  # shape checks still run
        LM.hinge_embedding_loss(X, S[0], validate=False)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _module_cases():
    """id: (Module name, constructor arguments, inputs); torch's constructor takes the function's
    arguments after the inputs, in the function's order."""
    x, s = _scores((5, 4)), _signs((5, 4))
    w = torch.rand(4, dtype=F64) + 0.5
    return {
        "hinge": ("HingeEmbeddingLoss", (0.5, None, None, "sum"), (x, s)),
        "soft": ("SoftMarginLoss", (None, None, "none"), (x, s)),
        "multi": ("MultiMarginLoss", (2, 0.7, w), (x, torch.randint(0, 4, (5,)))),
        "multilabel": ("MultiLabelMarginLoss", (None, None, "sum"), (x, _multilabel((5, 4)))),
        "soft multilabel": ("MultiLabelSoftMarginLoss", (w,), (x, torch.rand(5, 4, dtype=F64))),
        "ranking": ("MarginRankingLoss", (0.2, None, None, "none"), (x[:, 0], x[:, 1], s[:, 0])),
    }


SETUPS = {
    key: (getattr(NM, name)(*options), getattr(nn, name)(*options), inputs, options)
    for key, (name, options, inputs) in _module_cases().items()
}


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_equals_functional_and_torch(key):
    ours, theirs, args, options = SETUPS[key]
    assert torch.equal(ours(*args), ours.function(*args, *options))
    check_against_torch(ours, theirs, args, wrt=(0, 1) if key == "ranking" else (0,))


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_mask_normalizer_and_pickle(key):
    ours, _, args, options = SETUPS[key]
    mask = torch.tensor([True, False, True, True, False])
    if ours.reduction == "mean":
        masked = ours(*args, mask=mask, normalizer=2.0)
        assert torch.equal(masked, ours.function(*args, *options, mask=mask, normalizer=2.0))
    restored = pickle.loads(pickle.dumps(ours))
    assert repr(restored) == repr(ours) and torch.equal(restored(*args), ours(*args))


@pytest.mark.parametrize("key", ("multi", "soft multilabel"))
def test_weight_is_a_buffer_and_follows_to(key):
    ours, theirs, args, _ = SETUPS[key]
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert dict(ours.named_buffers())["weight"] is ours.weight and not list(ours.parameters())
    moved = copy.deepcopy(ours).to(torch.float32)
    assert moved.weight.dtype == torch.float32
    fresh = copy.deepcopy(ours)
    fresh.weight = fresh.weight + 1.0
    assert not torch.equal(fresh(*args), ours(*args))
    fresh.load_state_dict(ours.state_dict())
    assert torch.equal(fresh(*args), ours(*args))
    assert type(ours)().state_dict() == {}


def test_module_options_are_checked_at_construction():
    with pytest.raises(LossValueError, match="p must be 1"):
        NM.MultiMarginLoss(p=3)
    with pytest.raises(LossValueError, match=r"weight must have shape \(C,\)"):
        NM.MultiMarginLoss(weight=torch.ones(2, 3))
    with pytest.raises(LossTypeError, match="margin must be a float"):
        NM.HingeEmbeddingLoss(margin="1")
    with pytest.raises(LossValueError, match="reduction"):
        NM.SoftMarginLoss(reduction="avg")
    assert repr(NM.MultiMarginLoss(2, 0.5)) == "MultiMarginLoss(reduction='mean', p=2, margin=0.5)"


def test_module_validate_false_is_passed_on():
    assert_close_to_torch(
        NM.HingeEmbeddingLoss(validate=False)(X, S0), F.hinge_embedding_loss(X, S0)
    )
    with pytest.raises(LossValueError):
        NM.HingeEmbeddingLoss()(X, S0)
