"""Focal losses against independent float64 formulas, their cross-entropy limits, and extremes.

The sigmoid form is checked against torchvision's published definition
(``torchvision.ops.sigmoid_focal_loss``), written out here from the paper's formula in float64:
torchvision is not a dependency.
"""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F

import losskit
import losskit.functional as LF

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
F32 = {"rtol": 2e-6, "atol": 1e-7}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# independent definitions, float64
# --------------------------------------------------------------------------------------------


def sigmoid_focal_reference(x, t, alpha=0.25, gamma=2.0, reduction="none"):
    """Lin et al. 2017, as torchvision defines it: BCE * (1 - p_t)^gamma * alpha_t."""
    x, t = x.double(), t.double()
    p = 1.0 / (1.0 + torch.exp(-x))
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def softmax_focal_reference(x, t, weight=None, ignore_index=-100, reduction="mean", gamma=2.0):
    """-w_y (1 - p_y)^g log p_y per position, or -sum_c w_c t_c (1 - p_c)^g log p_c, by loops."""
    x = x.double()
    classes = x.shape[1]
    rows = x.movedim(1, -1).reshape(-1, classes)
    w = weight.double() if weight is not None else torch.ones(classes, dtype=F64)
    losses, denominator = [], 0.0
    if t.is_floating_point():
        soft = t.double().movedim(1, -1).reshape(-1, classes)
        for z, q in zip(rows, soft, strict=True):
            p = torch.exp(z - torch.logsumexp(z, 0))
            losses.append(
                -sum(w[c] * q[c] * (1 - p[c]) ** gamma * torch.log(p[c]) for c in range(classes))
            )
            denominator += 1.0
    else:
        for z, y in zip(rows, t.reshape(-1).tolist(), strict=True):
            if y == ignore_index:
                losses.append(torch.zeros((), dtype=F64))
                continue
            p = torch.exp(z - torch.logsumexp(z, 0))
            losses.append(-w[y] * (1 - p[y]) ** gamma * torch.log(p[y]))
            denominator += float(w[y])
    out = torch.stack(losses)
    if reduction == "none":
        return out.reshape(x.shape[:1] + x.shape[2:])
    if reduction == "sum":
        return out.sum()
    return out.sum() / denominator


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


# --------------------------------------------------------------------------------------------
# sigmoid focal loss
# --------------------------------------------------------------------------------------------


def test_sigmoid_focal_signature_and_defaults_are_torchvisions():
    params = inspect.signature(LF.sigmoid_focal_loss).parameters
    positional = [(p.name, p.default) for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [
        ("inputs", inspect.Parameter.empty),
        ("targets", inspect.Parameter.empty),
        ("alpha", 0.25),
        ("gamma", 2),
        ("reduction", "none"),
    ]
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[5:])
    x, t = torch.randn(4, 3), torch.rand(4, 3).round()
    assert LF.sigmoid_focal_loss(x, t).shape == (4, 3)  # default reduction: 'none'


@pytest.mark.parametrize("alpha", [0.25, 0.0, 0.9, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_definition(alpha, gamma, reduction):
    g = _gen(1)
    x = (3 * torch.randn(6, 5, generator=g, dtype=F64)).requires_grad_()
    hard = torch.rand(6, 5, generator=g, dtype=F64).round()
    soft = torch.rand(6, 5, generator=g, dtype=F64)
    for t in (hard, soft):
        got = LF.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
        want = sigmoid_focal_reference(x, t, alpha, gamma, reduction)
        torch.testing.assert_close(got, want, **TIGHT)
        torch.testing.assert_close(_grad(got, x), _grad(want, x), **TIGHT)


def test_sigmoid_focal_float32_is_close_to_float64_definition():
    g = _gen(2)
    x = 4 * torch.randn(64, generator=g)
    t = torch.rand(64, generator=g).round()
    got = LF.sigmoid_focal_loss(x, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), sigmoid_focal_reference(x, t), rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_gamma0_no_alpha_is_bce_with_logits():
    g = _gen(3)
    x = (3 * torch.randn(5, 7, generator=g, dtype=F64)).requires_grad_()
    t = torch.rand(5, 7, generator=g, dtype=F64)
    for reduction in ("none", "mean", "sum"):
        focal = LF.sigmoid_focal_loss(x, t, alpha=-1, gamma=0, reduction=reduction)
        bce = LF.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        ref = F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        g_focal, g_bce, g_ref = _grad(focal, x), _grad(bce, x), _grad(ref, x)
        # bce takes torch's own kernel, focal its formula: equal up to rounding
        torch.testing.assert_close((focal, g_focal), (bce, g_bce), **TIGHT)
        torch.testing.assert_close((focal, g_focal), (ref, g_ref), **TIGHT)


def test_sigmoid_focal_label_smoothing():
    g = _gen(4)
    x = torch.randn(8, generator=g, dtype=F64)
    t = torch.rand(8, generator=g, dtype=F64).round()
    eps = 0.2
    got = LF.sigmoid_focal_loss(x, t, label_smoothing=eps)
    torch.testing.assert_close(got, sigmoid_focal_reference(x, t * (1 - eps) + eps / 2), **TIGHT)


def test_sigmoid_focal_retinanet_normalizer():
    """RetinaNet divides the summed loss by the number of positive anchors."""
    g = _gen(5)
    x = torch.randn(20, 4, generator=g, dtype=F64)
    t = (torch.rand(20, 4, generator=g) > 0.9).to(F64)
    positives = t.sum()
    got = LF.sigmoid_focal_loss(x, t, reduction="mean", normalizer=positives)
    torch.testing.assert_close(got, sigmoid_focal_reference(x, t).sum() / positives, **TIGHT)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_sigmoid_focal_stable_at_huge_logits(gamma, dtype):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 3e4], dtype=dtype, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=dtype)
    loss = LF.sigmoid_focal_loss(x, t, alpha=0.25, gamma=gamma)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    # right and confident: no loss, no gradient; wrong and confident: alpha_t |x|, slope alpha_t
    expected = torch.tensor([0.0, 0.0, 0.75e4, 0.25e4, 0.0], dtype=dtype)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 0.75, -0.25, 0.0], dtype=dtype))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sigmoid_focal_gradcheck(gamma):
    g = _gen(6)
    x = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    t = torch.rand(3, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: LF.sigmoid_focal_loss(a, b, gamma=gamma, reduction="sum"), (x, t)
    )


def test_sigmoid_focal_errors():
    x, t = torch.zeros(3), torch.ones(3)
    with pytest.raises(losskit.LossValueError, match="gamma must be in"):
        LF.sigmoid_focal_loss(x, t, gamma=-1)
    with pytest.raises(losskit.LossValueError, match="alpha must be in"):
        LF.sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(losskit.LossValueError, match=r"targets must hold .* in \[0, 1\], got 2"):
        LF.sigmoid_focal_loss(x, torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(losskit.LossValueError, match=r"targets has shape \(3, 1\)"):
        LF.sigmoid_focal_loss(x, t[:, None])
    with pytest.raises(losskit.LossValueError, match="reduction must be one of"):
        LF.sigmoid_focal_loss(x, t, reduction="avg")


# --------------------------------------------------------------------------------------------
# softmax focal loss
# --------------------------------------------------------------------------------------------


def _targets(g, form):
    if form == "index":
        x = 2 * torch.randn(6, 5, generator=g, dtype=F64)
        t = torch.randint(0, 5, (6,), generator=g)
        t[2] = -100
    elif form == "soft":
        x = 2 * torch.randn(6, 5, generator=g, dtype=F64)
        t = torch.softmax(torch.randn(6, 5, generator=g, dtype=F64), dim=1)
    elif form == "K-dim index":
        x = 2 * torch.randn(2, 5, 3, 2, generator=g, dtype=F64)
        t = torch.randint(0, 5, (2, 3, 2), generator=g)
        t[1, 0, 1] = -100
    else:  # K-dim soft
        x = 2 * torch.randn(2, 5, 3, generator=g, dtype=F64)
        t = torch.softmax(torch.randn(2, 5, 3, generator=g, dtype=F64), dim=1)
    return x.requires_grad_(), t


FORMS = ["index", "soft", "K-dim index", "K-dim soft"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_focal_matches_definition(form, gamma, weighted):
    g = _gen(7)
    x, t = _targets(g, form)
    w = 0.5 + torch.rand(5, generator=g, dtype=F64) if weighted else None
    for reduction in ("none", "mean", "sum"):
        got = LF.focal_loss(x, t, w, reduction=reduction, gamma=gamma)
        want = softmax_focal_reference(x, t, w, reduction=reduction, gamma=gamma)
        torch.testing.assert_close(got, want, **TIGHT)
        torch.testing.assert_close(_grad(got, x), _grad(want, x), **TIGHT)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_focal_gamma0_is_cross_entropy(form, weighted):
    g = _gen(8)
    x, t = _targets(g, form)
    w = 0.5 + torch.rand(5, generator=g, dtype=F64) if weighted else None
    for reduction in ("none", "mean", "sum"):
        focal = LF.focal_loss(x, t, w, reduction=reduction, gamma=0.0)
        # the focal loss is built on cross-entropy's reference: the same bits
        ce = LF.cross_entropy(x, t, w, reduction=reduction, impl="reference")
        ref = F.cross_entropy(x, t, w, reduction=reduction)
        g_focal, g_ce, g_ref = _grad(focal, x), _grad(ce, x), _grad(ref, x)
        assert torch.equal(focal, ce) and torch.equal(g_focal, g_ce)
        torch.testing.assert_close((focal, g_focal), (ref, g_ref), **TIGHT)


def test_focal_gamma0_is_cross_entropy_float32():
    g = _gen(9)
    x = torch.randn(16, 10, generator=g, requires_grad=True)
    t = torch.randint(0, 10, (16,), generator=g)
    focal, ref = LF.focal_loss(x, t, gamma=0), F.cross_entropy(x, t)
    assert focal.dtype == torch.float32
    torch.testing.assert_close((focal, _grad(focal, x)), (ref, _grad(ref, x)), **F32)


def test_focal_down_weights_easy_examples():
    x = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]], dtype=F64)
    t = torch.tensor([0, 0])  # the first is easy (right), the second hard (wrong)
    ce = LF.cross_entropy(x, t, reduction="none")
    focal = LF.focal_loss(x, t, reduction="none", gamma=2.0)
    p = torch.softmax(x, 1)[:, 0]
    torch.testing.assert_close(focal / ce, (1 - p) ** 2, **TIGHT)
    assert focal[0] / ce[0] < 1e-2 < 0.9 < focal[1] / ce[1]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_focal_stable_at_huge_logits(gamma, dtype):
    x = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]], dtype=dtype, requires_grad=True)
    for t, value, grad in (
        (torch.tensor([0, 1]), [0.0, 2e4], [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]),
        (
            torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype),
            [0.0, 2e4],
            [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]],
        ),
    ):
        loss = LF.focal_loss(x, t, reduction="none", gamma=gamma)
        (g,) = torch.autograd.grad(loss.sum(), x)
        torch.testing.assert_close(loss.detach(), torch.tensor(value, dtype=dtype))
        torch.testing.assert_close(g, torch.tensor(grad, dtype=dtype))


@pytest.mark.parametrize("form", ["index", "soft"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradcheck(form, gamma):
    g = _gen(10)
    x, t = _targets(g, form)
    x = x.detach()[:3].requires_grad_()
    t = t[:3]
    assert torch.autograd.gradcheck(lambda a: LF.focal_loss(a, t, gamma=gamma), (x,))


def test_focal_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(losskit.LossValueError, match="gamma must be in"):
        LF.focal_loss(x, torch.tensor([0, 1]), gamma=-0.5)
    with pytest.raises(losskit.LossIndexError, match="class index 3 at position"):
        LF.focal_loss(x, torch.tensor([0, 3]))
    with pytest.raises(losskit.LossValueError, match="pass mask="):
        LF.focal_loss(x, torch.full((2, 3), 1 / 3), ignore_index=0)
    with pytest.raises(losskit.LossValueError, match="squeeze"):
        LF.focal_loss(x, torch.tensor([[0], [1]]))


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def test_sigmoid_focal_module_equals_function():
    g = _gen(11)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    t = torch.rand(4, 3, generator=g, dtype=F64).round()
    assert losskit.SigmoidFocalLoss().reduction == "none"
    for kwargs in (
        {},
        {"alpha": -1, "gamma": 0.5, "reduction": "sum"},
        {"alpha": 0.5, "reduction": "mean", "label_smoothing": 0.1},
    ):
        module = losskit.SigmoidFocalLoss(**kwargs)
        assert torch.equal(module(x, t), LF.sigmoid_focal_loss(x, t, **kwargs))


def test_focal_module_equals_function_and_holds_its_weight():
    g = _gen(12)
    x = torch.randn(5, 4, generator=g, dtype=F64)
    t = torch.randint(0, 4, (5,), generator=g)
    w = torch.rand(4, generator=g, dtype=F64)
    module = losskit.FocalLoss(w, gamma=1.5, reduction="sum")
    assert torch.equal(module(x, t), LF.focal_loss(x, t, w, reduction="sum", gamma=1.5))
    assert torch.equal(module.state_dict()["weight"], w)
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(clone(x, t), module(x, t))
    assert "gamma=1.5" in repr(module)
