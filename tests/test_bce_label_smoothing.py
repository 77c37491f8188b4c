"""Label smoothing for binary cross-entropy: targets become y (1 - eps) + eps / 2.

Checked against the explicit float64 formula, against torch on the smoothed targets, and for the
option's [0, 1] range.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losskit
import losskit.functional as LF

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
EPS = [0.0, 0.1, 0.5, 1.0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smoothed_bce_formula(p, y, eps, weight=None, pos_weight=None, reduction="mean"):
    """-w [pw y' log p + (1 - y') log(1 - p)], y' = y (1 - eps) + eps / 2, written out."""
    y = y * (1 - eps) + eps / 2
    pw = 1.0 if pos_weight is None else pos_weight
    loss = -(pw * y * torch.log(p) + (1 - y) * torch.log(1 - p))
    if weight is not None:
        loss = loss * weight
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_with_logits_label_smoothing_formula(eps, reduction):
    g = _gen(1)
    x = (2 * torch.randn(6, 4, generator=g, dtype=F64)).requires_grad_()
    y = torch.rand(6, 4, generator=g, dtype=F64).round()
    w = torch.rand(6, 4, generator=g, dtype=F64)
    pw = 0.5 + torch.rand(4, generator=g, dtype=F64)
    for kwargs in ({}, {"weight": w}, {"pos_weight": pw}, {"weight": w, "pos_weight": pw}):
        got = LF.binary_cross_entropy_with_logits(
            x, y, reduction=reduction, label_smoothing=eps, **kwargs
        )
        want = smoothed_bce_formula(torch.sigmoid(x), y, eps, reduction=reduction, **kwargs)
        torch.testing.assert_close((got, _grad(got, x)), (want, _grad(want, x)), **TIGHT)


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_label_smoothing_formula(eps, reduction):
    g = _gen(2)
    p = (0.02 + 0.96 * torch.rand(5, 3, generator=g, dtype=F64)).requires_grad_()
    y = torch.rand(5, 3, generator=g, dtype=F64).round()
    w = torch.rand(5, 3, generator=g, dtype=F64)
    for kwargs in ({}, {"weight": w}):
        got = LF.binary_cross_entropy(p, y, reduction=reduction, label_smoothing=eps, **kwargs)
        want = smoothed_bce_formula(p, y, eps, reduction=reduction, **kwargs)
        torch.testing.assert_close((got, _grad(got, p)), (want, _grad(want, p)), **TIGHT)


def test_label_smoothing_equals_torch_on_smoothed_targets():
    g = _gen(3)
    x = torch.randn(8, 5, generator=g, dtype=F64)
    y = torch.rand(8, 5, generator=g, dtype=F64)  # soft targets smooth the same way
    eps = 0.3
    smoothed = y * (1 - eps) + eps / 2
    torch.testing.assert_close(
        LF.binary_cross_entropy_with_logits(x, y, label_smoothing=eps),
        F.binary_cross_entropy_with_logits(x, smoothed),
        **TIGHT,
    )
    torch.testing.assert_close(
        LF.binary_cross_entropy(torch.sigmoid(x), y, label_smoothing=eps),
        F.binary_cross_entropy(torch.sigmoid(x), smoothed),
        **TIGHT,
    )


def test_full_smoothing_ignores_the_labels():
    x = torch.randn(4, 3, dtype=F64)
    ones, zeros = torch.ones(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64)
    a = LF.binary_cross_entropy_with_logits(x, ones, label_smoothing=1.0)
    b = LF.binary_cross_entropy_with_logits(x, zeros, label_smoothing=1.0)
    torch.testing.assert_close(a, b, **TIGHT)
    torch.testing.assert_close(a, F.binary_cross_entropy_with_logits(x, 0.5 * ones), **TIGHT)


def test_label_smoothing_modules_equal_functions():
    g = _gen(4)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    y = torch.rand(4, 3, generator=g, dtype=F64).round()
    m = losskit.BCEWithLogitsLoss(label_smoothing=0.2, reduction="sum")
    assert torch.equal(
        m(x, y), LF.binary_cross_entropy_with_logits(x, y, reduction="sum", label_smoothing=0.2)
    )
    m = losskit.BCELoss(label_smoothing=0.2)
    p = torch.sigmoid(x)
    assert torch.equal(m(p, y), LF.binary_cross_entropy(p, y, label_smoothing=0.2))


@pytest.mark.parametrize("fn", [LF.binary_cross_entropy, LF.binary_cross_entropy_with_logits])
def test_label_smoothing_range_and_type(fn):
    p, y = torch.full((3,), 0.5), torch.ones(3)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(losskit.LossValueError, match=r"label_smoothing must be in \[0, 1\]"):
            fn(p, y, label_smoothing=bad)
    with pytest.raises(losskit.LossTypeError, match="label_smoothing must be a float, got str"):
        fn(p, y, label_smoothing="0.1")
    # smoothing does not excuse targets outside [0, 1]
    with pytest.raises(losskit.LossValueError, match=r"target must hold probabilities in \[0, 1\]"):
        fn(p, torch.tensor([0.0, 1.0, 2.0]), label_smoothing=0.1)
    for cls in (losskit.BCELoss, losskit.BCEWithLogitsLoss):
        with pytest.raises(losskit.LossValueError, match="label_smoothing"):
            cls(label_smoothing=2.0)
