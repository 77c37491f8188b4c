"""Embedding losses against torch.nn.functional and torch.nn: cosine embedding, triplet margin,
triplet margin with a distance (functions and Modules)."""

from __future__ import annotations

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
)

from losskit._validate.errors import LossTypeError, LossValueError
from losskit.functional import embedding as LE
from losskit.nn import embedding as NE

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
NAMES = ("cosine_embedding_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss")
MODULES = {
    "CosineEmbeddingLoss": "cosine_embedding_loss",
    "TripletMarginLoss": "triplet_margin_loss",
    "TripletMarginWithDistanceLoss": "triplet_margin_with_distance_loss",
}


def _emb(shape, dtype=F64):
    return torch.randn(shape, dtype=F64).to(dtype)


def _signs(shape, dtype=F64):
    return torch.where(torch.rand(shape) > 0.5, 1.0, -1.0).to(dtype)


def cosine_distance(x, y):
    return 1.0 - F.cosine_similarity(x, y)


def image_distance(x, y):
    """One distance per sample of ``(N, *)`` inputs."""
    return (x - y).flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_torch(name):
    assert_torch_signature(getattr(LE, name), getattr(F, name))


@pytest.mark.parametrize("name", list(MODULES))
def test_module_signature_matches_torch(name):
    assert_torch_signature(getattr(NE, name), getattr(nn, name))
    assert getattr(NE, name).function is getattr(LE, MODULES[name])


# --------------------------------------------------------------------------------------------
# parity with torch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("margin", (0, 0.3, -0.2))
@pytest.mark.parametrize(
    ("shape", "target_shape"), [((5, 4), (5,)), ((4,), ()), ((0, 4), (0,)), ((6, 1), (6,))], ids=str
)
def test_cosine_embedding_parity(shape, target_shape, margin, dtype):
    args = (_emb(shape, dtype), _emb(shape, dtype), _signs(target_shape, dtype))
    for reduction in REDUCTIONS:
        kwargs = {"margin": margin, "reduction": reduction}
        fn, theirs = LE.cosine_embedding_loss, F.cosine_embedding_loss
        check_against_torch(fn, theirs, args, kwargs, wrt=(0, 1))


def test_cosine_embedding_integer_inputs_and_labels_like_torch():
    a, b = torch.randint(-3, 4, (5, 4)), torch.randint(-3, 4, (5, 4))
    y = _signs(5).long()
    assert_close_to_torch(LE.cosine_embedding_loss(a, b, y), F.cosine_embedding_loss(a, b, y))


TRIPLET_OPTIONS = [
    (1.0, 2, 1e-6, False),
    (0.5, 1, 1e-6, True),
    (2.0, 3.5, 0.1, False),
    (1.0, math.inf, 1e-6, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("margin", "p", "eps", "swap"), TRIPLET_OPTIONS)
@pytest.mark.parametrize("shape", ((5, 4), (4,), (2, 3, 4), (0, 4)), ids=str)
def test_triplet_margin_parity(shape, margin, p, eps, swap, dtype):
    args = (_emb(shape, dtype), _emb(shape, dtype), _emb(shape, dtype))
    for reduction in REDUCTIONS:
        kwargs = {"margin": margin, "p": p, "eps": eps, "swap": swap, "reduction": reduction}
        fn, theirs = LE.triplet_margin_loss, F.triplet_margin_loss
        check_against_torch(fn, theirs, args, kwargs, wrt=(0, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("swap", (False, True))
@pytest.mark.parametrize(
    ("distance", "shape"),
    [
        (None, (5, 4)),
        (None, (4,)),
        (None, (2, 3, 4)),
        (cosine_distance, (5, 4)),
        (nn.PairwiseDistance(p=1.0), (5, 4)),
        (image_distance, (3, 2, 2, 2)),
        (None, (0, 4)),
    ],
    ids=("default", "default-unbatched", "default-3d", "cosine", "l1", "image", "empty"),
)
def test_triplet_margin_with_distance_parity(distance, shape, swap, dtype):
    args = (_emb(shape, dtype), _emb(shape, dtype), _emb(shape, dtype))
    for reduction in REDUCTIONS:
        kwargs = {
            "distance_function": distance,
            "margin": 0.8,
            "swap": swap,
            "reduction": reduction,
        }
        fn, theirs = LE.triplet_margin_with_distance_loss, F.triplet_margin_with_distance_loss
        check_against_torch(fn, theirs, args, kwargs, wrt=(0, 1, 2))


def test_triplet_margin_with_distance_takes_any_input_its_distance_does():
    """With a distance_function the inputs need only be tensors: here bool codes and a Hamming
    distance."""
    a, p, n = (torch.rand(6, 8) > 0.5 for _ in range(3))

    def hamming(x, y):
        return (x ^ y).sum(1).double()

    for reduction in REDUCTIONS:
        kwargs = {"distance_function": hamming, "margin": 2.0, "reduction": reduction}
        ours = LE.triplet_margin_with_distance_loss(a, p, n, **kwargs)
        assert_close_to_torch(ours, F.triplet_margin_with_distance_loss(a, p, n, **kwargs))


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
@pytest.mark.parametrize("name", ("cosine_embedding_loss", "triplet_margin_loss"))
def test_legacy_size_average_and_reduce(name, size_average, reduce):
    args = _example(name, 5)[0]
    legacy = {"size_average": size_average, "reduce": reduce}
    with pytest.warns(FutureWarning, match="reduction=") as record:
        ours = getattr(LE, name)(*args, **legacy)
    assert any(r.filename == __file__ for r in record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close_to_torch(ours, getattr(F, name)(*args, **legacy))


def test_elementwise_mean_is_the_old_name_of_mean():
    args = _example("triplet_margin_with_distance_loss", 4)[0]
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        ours = LE.triplet_margin_with_distance_loss(*args, reduction="elementwise_mean")
    assert torch.equal(ours, F.triplet_margin_with_distance_loss(*args))


# --------------------------------------------------------------------------------------------
# mask and normalizer
# --------------------------------------------------------------------------------------------


def _example(name, n, **extra):
    """(args, kwargs) of a call with ``n`` samples."""
    e = (_emb((n, 4)), _emb((n, 4)))
    if name == "cosine_embedding_loss":
        return (*e, _signs(n)), dict({"margin": 0.2}, **extra)
    return (*e, _emb((n, 4))), dict({"margin": 3.0}, **extra)


CASES = [
    ("cosine_embedding_loss", {}),
    ("triplet_margin_loss", {"p": 1.5, "swap": True}),
    ("triplet_margin_with_distance_loss", {}),
    ("triplet_margin_with_distance_loss", {"distance_function": cosine_distance, "swap": True}),
]
IDS = ("cosine", "triplet", "triplet-distance", "triplet-cosine-distance")


def _grads(fn, args, kwargs, wrt=(0, 1)):
    leaves = [a.clone().requires_grad_() if i in wrt else a for i, a in enumerate(args)]
    out = fn(*leaves, **kwargs)
    return out.detach(), torch.autograd.grad(out.sum(), [leaves[i] for i in wrt])


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_mask_equals_slicing(name, options, reduction):
    args, kwargs = _example(name, 7, **options, reduction=reduction)
    mask = torch.tensor([True, False, True, True, False, True, True])
    fn = getattr(LE, name)
    masked = _grads(fn, args, dict(kwargs, mask=mask))
    sliced = _grads(fn, [a[mask] for a in args], kwargs)
    torch.testing.assert_close(masked[0], sliced[0], **TIGHT)
    for g, s in zip(masked[1], sliced[1], strict=True):
        torch.testing.assert_close(g[mask], s, **TIGHT)
        assert not g[~mask].any()
    dropped = fn(*args, **dict(kwargs, reduction="none"))[~mask]
    assert dropped.abs().sum() > 0  # so the mask changes the result
    assert not torch.allclose(masked[0], fn(*args, **kwargs))


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_mask_none_and_nonfinite_padding(name, options):
    """'none' is 0 at masked samples; inf/NaN there (and labels other than 1/-1) reach neither
    the value nor the gradient."""
    args, kwargs = _example(name, 6, **options)
    mask = torch.tensor([True, False, True, True, False, True])
    fn = getattr(LE, name)
    out = fn(*args, **kwargs, reduction="none", mask=mask)
    full = fn(*args, **kwargs, reduction="none")
    assert out.shape == full.shape == (6,)
    assert not out[~mask].any() and torch.equal(out[mask], full[mask])
    dirty = [a.clone() for a in args]
    dirty[0][1], dirty[1][4, 0] = float("nan"), float("inf")
    dirty[2][~mask] = 0.0 if name == "cosine_embedding_loss" else float("-inf")
    for reduction in REDUCTIONS:
        options = dict(kwargs, reduction=reduction, mask=mask)
        value, grads = _grads(fn, dirty, options)
        clean_value, clean_grads = _grads(fn, args, options)
        torch.testing.assert_close(value, clean_value, **TIGHT)
        for g, c in zip(grads, clean_grads, strict=True):
            assert bool(g.isfinite().all())
            torch.testing.assert_close(g, c, **TIGHT)


def test_mask_of_unbatched_and_of_3d_triplets():
    a, p, n = _emb((4,)), _emb((4,)), _emb((4,))
    for keep in (True, False):
        out = LE.triplet_margin_loss(a, p, n, reduction="sum", mask=torch.tensor(keep))
        expected = F.triplet_margin_loss(a, p, n, reduction="sum") if keep else torch.zeros(())
        torch.testing.assert_close(out, expected.double(), **TIGHT)
    a, p, n = _emb((2, 3, 4)), _emb((2, 3, 4)), _emb((2, 3, 4))
    mask = torch.tensor([[True, False, True], [False, True, True]])
    out = LE.triplet_margin_loss(a, p, n, mask=mask)
    torch.testing.assert_close(out, F.triplet_margin_loss(a[mask], p[mask], n[mask]), **TIGHT)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_masked_bfloat16_within_budget(name, options):
    args, kwargs = _example(name, 9, **options)
    mask = torch.rand(9) > 0.3
    ours = getattr(LE, name)(*[a.bfloat16() for a in args], **kwargs, mask=mask)
    theirs = getattr(F, name)(*[a[mask].bfloat16() for a in args], **kwargs)
    truth = getattr(F, name)(*[a[mask].bfloat16().double() for a in args], **kwargs)
    assert ours.dtype == torch.bfloat16
    assert_within_budget(ours, theirs, truth)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_normalizer_divides_the_sum(name, options):
    args, kwargs = _example(name, 6, **options)
    fn = getattr(LE, name)
    total, total_grads = _grads(fn, args, dict(kwargs, reduction="sum"))
    for normalizer in (2.5, torch.tensor(4.0)):
        out, grads = _grads(fn, args, dict(kwargs, normalizer=normalizer))
        torch.testing.assert_close(out, total / normalizer, **TIGHT)
        for g, t in zip(grads, total_grads, strict=True):
            torch.testing.assert_close(g, t / normalizer, **TIGHT)
    zero, zero_grads = _grads(fn, args, dict(kwargs, normalizer=0.0))
    assert zero.item() == 0.0 and not any(g.any() for g in zero_grads)
    with pytest.raises(LossValueError, match="normalizer"):
        fn(*args, **dict(kwargs, reduction="none", normalizer=3.0))


# --------------------------------------------------------------------------------------------
# errors where torch is silent or cryptic
# --------------------------------------------------------------------------------------------

A, B, C = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
Y = torch.tensor([1.0, -1.0, 1.0, 1.0])


def _raises(kind, fragments, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``kind`` with each of the ``|``-separated fragments."""
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    for fragment in fragments.split("|"):
        assert fragment in str(info.value), str(info.value)


def test_errors_of_cosine_embedding():
    cos, V, T = LE.cosine_embedding_loss, LossValueError, LossTypeError
    bad = torch.tensor([1.0, 0.0, 2.0, -1.0])
    _raises(
        V,
        "value 0 at position (1,)|cosine_embedding_loss needs the labels 1 or -1|2 of 4",
        cos,
        A,
        B,
        bad,
    )
    _raises(V, "for 0/1 labels use 2 * target - 1", cos, A, B, torch.tensor([0, 1, 1, 0]))
    _raises(T, "bool tensor", cos, A, B, Y > 0)
    _raises(V, "input2 has shape (1, 3) but input1 has shape (4, 3)", cos, A, B[:1], Y)
    _raises(V, "input2 has shape (4, 2)", cos, A, B[:, :2], Y)
    _raises(V, "target has shape (4, 1)|one label per pair, shape (4,)", cos, A, B, Y[:, None])
    _raises(V, "target has shape (1,)", cos, A, B, Y[:1])
    _raises(V, "target has shape (1,)|shape ()", cos, A[0], B[0], Y[:1])
    _raises(
        V,
        "(N, D) or (D,), got shape (2, 4, 3)|flatten(0, -2)",
        cos,
        A.expand(2, 4, 3),
        B.expand(2, 4, 3),
        Y.expand(2, 4),
    )
    _raises(V, "(N, D) or (D,), got a 0-dim tensor", cos, A[0, 0], B[0, 0], Y[0])
    _raises(T, "input1 must be a real tensor|bool", cos, A > 0, B, Y)
    _raises(T, "margin must be a float", cos, A, B, Y, "0.5")
    _raises(V, "mask has shape (4, 3)|per-sample loss|(4,)", cos, A, B, Y, mask=A > 0)


def test_errors_of_triplet_margin():
    tri, V = LE.triplet_margin_loss, LossValueError
    _raises(V, "positive has shape (1, 3) but anchor has shape (4, 3)", tri, A, B[:1], C)
    _raises(V, "negative has shape (3,)", tri, A, B, C[0])
    _raises(V, "positive has shape (3, 3)", tri, A, B[:3], C)
    for p in (0, -1.0, float("nan")):
        _raises(V, "p must be in (0, inf)", tri, A, B, C, p=p)
    for margin in (0, -0.5, float("nan")):
        _raises(V, "margin must be in (0, inf)", tri, A, B, C, margin=margin)
    _raises(LossTypeError, "p must be a float, got str", tri, A, B, C, p="2")
    _raises(V, "got a 0-dim tensor", tri, A[0, 0], B[0, 0], C[0, 0])
    _raises(LossTypeError, "anchor must be a real tensor|bool", tri, A > 0, B, C)


def _batch_mean(x, y):
    return F.pairwise_distance(x, y).mean()


def test_errors_of_triplet_margin_with_distance():
    tri, V = LE.triplet_margin_with_distance_loss, LossValueError
    _raises(
        LossTypeError,
        "distance_function must be a callable|got int",
        tri,
        A,
        B,
        C,
        distance_function=3,
    )
    for margin in (0.0, -1, float("nan")):
        _raises(V, "margin must be in (0, inf)", tri, A, B, C, margin=margin)
    _raises(V, "positive has shape (1, 3)", tri, A, B[:1], C)
    _raises(V, "positive has shape (1, 3)", tri, A, B[:1], C, distance_function=cosine_distance)
    _raises(
        V,
        "returned shape (4, 3)|one distance per sample, shape (4,)|one value per element",
        tri,
        A,
        B,
        C,
        distance_function=torch.sub,
    )
    _raises(
        V,
        "returned shape ()|do not reduce over the batch",
        tri,
        A,
        B,
        C,
        distance_function=_batch_mean,
    )
    _raises(
        LossTypeError,
        "must return a tensor|got float",
        tri,
        A,
        B,
        C,
        distance_function=lambda x, y: 1.0,
    )
    d3 = torch.randn(2, 4, 3)
    _raises(
        V,
        "returned shape (2, 4)|shape (2,)",
        tri,
        d3,
        d3,
        d3,
        distance_function=F.pairwise_distance,
    )
    _raises(V, "mask has shape (3,)", tri, A, B, C, mask=torch.ones(3, dtype=torch.bool))


def test_validate_false_skips_the_label_check():
    bad = torch.tensor([1.0, 0.0, 2.0, -1.0])
    ours = LE.cosine_embedding_loss(A, B, bad, reduction="none", validate=False)
    assert_close_to_torch(ours, F.cosine_embedding_loss(A, B, bad, reduction="none"))
    with pytest.raises(LossValueError):  # shape checks still run
        LE.cosine_embedding_loss(A, B[:1], bad, validate=False)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

SETUPS = {
    "cosine": (
        NE.CosineEmbeddingLoss(0.3, reduction="sum"),
        nn.CosineEmbeddingLoss(0.3, reduction="sum"),
        "cosine_embedding_loss",
        {"margin": 0.3, "reduction": "sum"},
    ),
    "triplet": (
        NE.TripletMarginLoss(0.5, 1.0, 1e-3, True),
        nn.TripletMarginLoss(0.5, 1.0, 1e-3, True),
        "triplet_margin_loss",
        {"margin": 0.5, "p": 1.0, "eps": 1e-3, "swap": True},
    ),
    "triplet-distance": (
        NE.TripletMarginWithDistanceLoss(margin=0.7, reduction="none"),
        nn.TripletMarginWithDistanceLoss(margin=0.7, reduction="none"),
        "triplet_margin_with_distance_loss",
        {"margin": 0.7, "reduction": "none"},
    ),
    "triplet-module-distance": (
        NE.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(p=1.0), swap=True),
        nn.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(p=1.0), swap=True),
        "triplet_margin_with_distance_loss",
        {"swap": True},
    ),
}


def _inputs(key):
    return _example("cosine_embedding_loss" if key == "cosine" else "triplet_margin_loss", 5)[0]


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_equals_functional_and_torch(key):
    ours, theirs, name, options = SETUPS[key]
    args = _inputs(key)
    distance = getattr(ours, "distance_function", None)
    options = dict(options, distance_function=distance) if distance is not None else options
    assert torch.equal(ours(*args), getattr(LE, name)(*args, **options))
    check_against_torch(ours, theirs, args, wrt=(0, 1) if key == "cosine" else (0, 1, 2))
    mask = torch.tensor([True, False, True, True, False])
    masked = ours(*args, mask=mask)
    assert torch.equal(masked, getattr(LE, name)(*args, **options, mask=mask))


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_pickle_round_trip(key):
    ours = SETUPS[key][0]
    args = _inputs(key)
    restored = pickle.loads(pickle.dumps(ours))
    assert repr(restored) == repr(ours) and torch.equal(restored(*args), ours(*args))


def test_module_repr_options_and_distance_submodule():
    module = NE.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(), margin=2)
    assert dict(module.named_children()) == {"distance_function": module.distance_function}
    assert repr(NE.TripletMarginLoss()).startswith(
        "TripletMarginLoss(reduction='mean', margin=1.0, p=2.0, eps=1e-06, swap=False)"
    )
    assert repr(NE.CosineEmbeddingLoss(0.5)) == "CosineEmbeddingLoss(reduction='mean', margin=0.5)"
    with pytest.raises(LossValueError, match="margin must be in"):
        NE.TripletMarginLoss(margin=0.0)
    with pytest.raises(LossValueError, match="p must be in"):
        NE.TripletMarginLoss(p=-1.0)
    with pytest.raises(LossValueError, match="margin must be in"):
        NE.TripletMarginWithDistanceLoss(margin=-1.0)
    with pytest.raises(LossTypeError, match="distance_function must be a callable"):
        NE.TripletMarginWithDistanceLoss(distance_function="l2")
    bad = torch.tensor([1.0, 0.0, 1.0, -1.0])
    assert_close_to_torch(
        NE.CosineEmbeddingLoss(validate=False)(A, B, bad), F.cosine_embedding_loss(A, B, bad)
    )
