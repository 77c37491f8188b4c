"""The plain path: a call that uses nothing torch lacks is torch's own kernel, bit for bit.

``losskit.functional._torch`` calls the ATen kernel that ``torch.nn.functional`` ends in, once
losskit's checks have passed. These tests hold it to torch's exact bits (value and gradients),
and check that every call the plain path does not take (a mask, a normalizer, half dtypes,
mixed dtypes, a weight that needs a gradient, losskit's options) still gives torch's numbers
through the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REDUCTIONS, check_against_torch, forward_backward

import losskit.functional as LF

N, C = 6, 5

# kl_div's 'mean' warns (in torch and in losskit) that it is not the KL divergence
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")


def _case(name: str, dtype: torch.dtype, weighted: bool):
    """(args, kwargs, wrt) of a call of ``name`` on small inputs of ``dtype``."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.rand(N, C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    index = torch.randint(0, C, (N,), generator=g)
    index[1] = -100
    class_w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    kw = {}
    if name in ("mse_loss", "l1_loss", "huber_loss"):
        args, wrt = (x, y), (0, 1)
        if weighted:
            kw["weight"] = w
    elif name == "smooth_l1_loss":
        args, wrt, kw = (x, y), (0, 1), {"beta": 0.5 if weighted else 0.0}
    elif name == "binary_cross_entropy":
        args, wrt = (x.sigmoid(), y.sigmoid()), (0,)
        if weighted:
            kw["weight"] = w[0]
    elif name == "binary_cross_entropy_with_logits":
        args, wrt = (x, y.sigmoid()), (0,)
        if weighted:
            kw.update(weight=w, pos_weight=class_w)
    elif name == "cross_entropy":
        args, wrt = (x, index), (0,)
        if weighted:
            kw.update(weight=class_w, label_smoothing=0.1)
    elif name == "cross_entropy_probabilities":
        args, wrt = (x, y.softmax(1)), (0,)
        if weighted:
            kw.update(weight=class_w, label_smoothing=0.2)
    elif name == "nll_loss":
        args, wrt = (x.log_softmax(1), index), (0,)
        if weighted:
            kw["weight"] = class_w
    else:  # kl_div
        args, wrt = (x.log_softmax(1), y.softmax(1)), (0,)
        kw["log_target"] = weighted
    return args, kw, wrt


NAMES = (
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_probabilities",
    "nll_loss",
    "kl_div",
)


def _fns(name):
    base = "cross_entropy" if name == "cross_entropy_probabilities" else name
    return getattr(LF, base), getattr(F, base)


def _reductions(name):
    return REDUCTIONS + (("batchmean",) if name == "kl_div" else ())


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "options"])
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_plain_calls_are_torch_bit_for_bit(name, dtype, weighted):
    ours, theirs = _fns(name)
    args, kw, wrt = _case(name, dtype, weighted)
    for reduction in _reductions(name):
        kwargs = dict(kw, reduction=reduction)
        out, grads = forward_backward(ours, args, kwargs, wrt=wrt)
        ref, ref_grads = forward_backward(theirs, args, kwargs, wrt=wrt)
        assert out.dtype == ref.dtype and torch.equal(out, ref), (reduction, out, ref)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.equal(g, r), reduction


@pytest.mark.parametrize("name", NAMES)
def test_calls_off_the_plain_path_still_give_torch_numbers(name):
    """An all-True mask takes the reference (losskit's own ops), bfloat16 too: torch's numbers
    within the parity tolerance and the error budget, not its bits."""
    ours, theirs = _fns(name)
    args, kw, wrt = _case(name, torch.float64, True)
    for reduction in REDUCTIONS:
        if name == "kl_div" and reduction == "mean":
            continue  # torch warns there; covered by the kl_div tests
        kwargs = dict(kw, reduction=reduction)
        shape = args[1].shape if name not in ("cross_entropy_probabilities", "kl_div") else None
        if shape is None:
            shape = args[0].shape[:1] if name == "cross_entropy_probabilities" else args[0].shape
        mask = torch.ones(shape, dtype=torch.bool)
        check_against_torch(
            ours, theirs, args, dict(kwargs, mask=mask), torch_kwargs=kwargs, wrt=wrt
        )
    low, low_kw, wrt = _case(name, torch.bfloat16, False)
    check_against_torch(ours, theirs, low, low_kw, wrt=wrt)


def test_a_weight_that_needs_a_gradient_gets_one():
    """torch's kernels give a class or elementwise weight no gradient: such a call takes the
    reference, which does."""
    x = torch.randn(N, C, dtype=torch.float64)
    t = torch.randint(0, C, (N,))
    w = (torch.rand(C, dtype=torch.float64) + 0.5).requires_grad_()
    LF.cross_entropy(x, t, w).backward()
    assert w.grad is not None and bool(w.grad.abs().sum() > 0)
