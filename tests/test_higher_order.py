"""Second-order gradients through every fused path, and ``inplace_backward`` on a leaf.

A fused path computes its gradient in the forward, without a graph. Under
``create_graph=True`` its backward recomputes the gradient with the reference's differentiable
ops (``losskit.kernels.recompute``), so a gradient penalty or a Hessian-vector product equals
torch's; where it cannot (the inputs were freed or overwritten, the vocabulary-parallel losses),
it raises ``LossValueError`` naming the fix. Never a wrong number.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES

import losskit
import losskit.functional as LF
import losskit.kernels.recompute as recompute
from losskit._dispatch import CPU_FUSED_MIN_ELEMENTS

try:
    import losskit.kernels.triton.cross_entropy as triton_ce
except ImportError:  # no triton
    triton_ce = None


def penalty_grads(loss_fn, model, inp, y, *, hold_logits=True):
    """A gradient penalty: d/d(params, inp) of |d loss / d inp|^2 (torch's WGAN-GP pattern)."""
    model.zero_grad(set_to_none=True)
    inp = inp.detach().clone().requires_grad_()
    logits = model(inp) if hold_logits else None
    loss = loss_fn(logits if hold_logits else model(inp), y)
    (g,) = torch.autograd.grad(loss, inp, create_graph=True)
    g.pow(2).sum().backward()
    return [model.weight.grad, model.bias.grad, inp.grad]


def assert_same(ours, theirs, dtype=torch.float32):
    """Equal within ten times the suite's tolerance at each tensor's scale (two backward passes)."""
    for a, b in zip(ours, theirs, strict=True):
        tol = TOLERANCES[dtype]
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=tol["rtol"] * 10, atol=tol["atol"] * scale * 10)


# --------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [4, 64], ids=["below-threshold", "above-threshold"])
@pytest.mark.parametrize("hold_logits", [True, False], ids=["held", "temporary"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"label_smoothing": 0.1, "weight": True}, {"z_loss": 1e-3, "softcap": 5.0}],
    ids=["plain", "smoothing+weight", "z_loss+softcap"],
)
def test_cross_entropy_gradient_penalty_equals_torchs(rows, hold_logits, kwargs):
    """The issue's case: nn.Linear(32, 8192); above 2**17 logits 'auto' is the fused path."""
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8192)
    inp, y = torch.randn(rows, 32), torch.randint(0, 8192, (rows,))
    y[::5] = -100
    kw = dict(kwargs)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(8192) + 0.5
    assert (rows * 8192 >= CPU_FUSED_MIN_ELEMENTS) == (rows == 64)
    ours = functools.partial(LF.cross_entropy, **kw)
    reference = functools.partial(LF.cross_entropy, impl="reference", **kw)
    got = penalty_grads(ours, model, inp, y, hold_logits=hold_logits)
    want = penalty_grads(reference, model, inp, y)
    assert_same(got, want)
    if not (kw.get("z_loss") or kw.get("softcap")):
        torch_fn = functools.partial(F.cross_entropy, **kw)
        assert_same(got, penalty_grads(torch_fn, model, inp, y))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_hessian_vector_product_equals_torchs(reduction):
    torch.manual_seed(1)
    x = torch.randn(40, 5000, dtype=torch.float32, requires_grad=True)
    y = torch.randint(0, 5000, (40,))
    v = torch.randn_like(x)

    def hvp(fn):
        loss = fn(x, y, reduction=reduction)
        loss = loss.sum() if reduction == "none" else loss
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return [g.detach(), h]

    assert_same(hvp(functools.partial(LF.cross_entropy, impl="fused")), hvp(F.cross_entropy))


@pytest.mark.skipif(triton_ce is None, reason="triton is not installed")
def test_triton_cross_entropy_recomputes_under_create_graph():
    """The Triton launcher (in its interpreter on the CPU) takes the same recompute rule."""
    from losskit._validate import CrossEntropyOptions
    from losskit.functional.categorical import _ce_recompute

    torch.manual_seed(2)
    x = torch.randn(6, 300, requires_grad=True)
    y = torch.randint(0, 300, (6,))
    opts = dict(weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                mask=None, normalizer=None, z_loss=0.0, softcap=None)  # fmt: skip
    rule = _ce_recompute(x, y, CrossEntropyOptions(), weight=None, mask=None, normalizer=None)
    loss = triton_ce.cross_entropy(
        x, y, **opts, inplace_backward=False, return_z_loss=False, recompute=rule
    )
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), x)
    ref = F.cross_entropy(x, y)
    (g_ref,) = torch.autograd.grad(ref, x, create_graph=True)
    (h_ref,) = torch.autograd.grad(g_ref.pow(2).sum(), x)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-9)
    # without a rule (a direct kernel call) the second order raises instead of being wrong
    loss = triton_ce.cross_entropy(x, y, **opts, inplace_backward=False, return_z_loss=False)
    with pytest.raises(losskit.LossValueError, match="create_graph=True .* not supported"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_freed_logits_raise_instead_of_a_wrong_second_derivative(monkeypatch):
    """Large logits are held weakly: once freed, create_graph=True names them and the fix."""
    monkeypatch.setattr(recompute, "KEEP_BYTES", 0)
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8192)
    inp, y = torch.randn(64, 32), torch.randint(0, 8192, (64,))
    with pytest.raises(
        losskit.LossValueError, match=r"input \(shape \(64, 8192\)\) has been freed"
    ):
        penalty_grads(LF.cross_entropy, model, inp, y, hold_logits=False)
    # held by the caller: recomputed, torch's numbers
    got = penalty_grads(LF.cross_entropy, model, inp, y, hold_logits=True)
    assert_same(got, penalty_grads(F.cross_entropy, model, inp, y))


def test_logits_changed_in_place_after_the_forward_raise():
    x = torch.randn(64, 4096).requires_grad_()
    y = torch.randint(0, 4096, (64,))
    z = x * 1.0
    loss = LF.cross_entropy(z, y, impl="fused")
    with torch.no_grad():
        z.add_(1.0)
    with pytest.raises(losskit.LossValueError, match="modified in place after the forward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_inplace_backward_cannot_differentiate_twice():
    x = torch.randn(64, 4096).requires_grad_()
    y = torch.randint(0, 4096, (64,))
    loss = LF.cross_entropy(x * 1.0, y, inplace_backward=True)
    with pytest.raises(losskit.LossValueError, match="inplace_backward=True overwrote the logits"):
        torch.autograd.grad(loss, x, create_graph=True)


# --------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("impl", ["fused", "auto"])
def test_linear_cross_entropy_double_backward_equals_torchs(impl, bias, reduction):
    torch.manual_seed(3)
    x = torch.randn(20, 16, requires_grad=True)
    w = (torch.randn(300, 16) * 0.3).requires_grad_()
    b = torch.randn(300, requires_grad=True) if bias else None
    y = torch.randint(0, 300, (20,))

    def second(fn, **kw):
        loss = fn(x, w, y, linear_bias=b, reduction=reduction, **kw)
        loss = loss.sum() if reduction == "none" else loss
        gx, gw = torch.autograd.grad(loss, (x, w), create_graph=True)
        leaves = (x, w) if b is None else (x, w, b)
        return torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), leaves)

    ours = second(LF.linear_cross_entropy, impl=impl, chunk_size=6)
    theirs = second(LF.linear_cross_entropy, impl="reference")
    assert_same(ours, theirs)
    if hasattr(F, "linear_cross_entropy"):
        assert_same(ours, second(F.linear_cross_entropy))


def test_linear_cross_entropy_freed_input_raises(monkeypatch):
    monkeypatch.setattr(recompute, "KEEP_BYTES", 0)
    x = torch.randn(20, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    y = torch.randint(0, 300, (20,))
    loss = LF.linear_cross_entropy(x * 2.0, w, y, impl="fused")
    with pytest.raises(losskit.LossValueError, match=r"input \(shape \(20, 16\)\) has been freed"):
        torch.autograd.grad(loss, x, create_graph=True)


# --------------------------------------------------------------------------------------------
# vocabulary-parallel losses: raise (one gloo process, its own interpreter)
# --------------------------------------------------------------------------------------------

_VOCAB_PARALLEL = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from losskit import LossValueError
    from losskit.distributed import (
        vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    y = torch.randint(0, 11, (5,))
    for loss in (vocab_parallel_cross_entropy(x @ w.T, y),
                 vocab_parallel_linear_cross_entropy(x, w, y)):
        torch.autograd.grad(loss, x, retain_graph=True)  # the first order works
        try:
            torch.autograd.grad(loss, x, create_graph=True)
        except LossValueError as exc:
            assert "higher-order gradients of the vocabulary-parallel" in str(exc), exc
        else:
            raise SystemExit("create_graph=True did not raise")
    # tear the group down before exit: gloo's threads left running at exit can abort the
    # process ("terminate called without an active exception")
    dist.destroy_process_group()
    print("ok")
    """
)


def test_vocab_parallel_losses_refuse_create_graph():
    out = subprocess.run(
        [sys.executable, "-c", _VOCAB_PARALLEL], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# inplace_backward on a leaf
# --------------------------------------------------------------------------------------------


def test_inplace_backward_refuses_a_leaf_that_requires_grad():
    p = torch.nn.Parameter(torch.randn(64, 4096))
    before = p.detach().clone()
    y = torch.randint(0, 4096, (64,))
    with pytest.raises(losskit.LossValueError, match="is a leaf tensor that requires grad"):
        LF.cross_entropy(p, y, inplace_backward=True)
    with pytest.raises(losskit.LossValueError, match="is a view of a leaf"):
        LF.cross_entropy(p[:32], y[:32], inplace_backward=True)
    with pytest.raises(losskit.LossValueError, match="is a leaf"):
        losskit.CrossEntropyLoss(inplace_backward=True)(p, y)
    assert torch.equal(p.detach(), before)


def test_inplace_backward_on_leaves_it_does_not_overwrite():
    """A non-leaf, a leaf copied by the kernel's layout, or no gradient at all: allowed."""
    p = torch.nn.Parameter(torch.randn(8, 300, 60))  # (N, C, d): the kernel writes a copy
    y = torch.randint(0, 300, (8, 60))
    before = p.detach().clone()
    LF.cross_entropy(p, y, inplace_backward=True).backward()
    assert torch.equal(p.detach(), before)
    torch.testing.assert_close(p.grad, torch.autograd.grad(F.cross_entropy(p, y), p)[0])
    q = torch.randn(64, 4096)  # no grad: the loss alone, the tensor untouched
    LF.cross_entropy(q, torch.randint(0, 4096, (64,)), inplace_backward=True)
    leaf = torch.nn.Parameter(torch.randn(64, 4096))
    with torch.no_grad():
        LF.cross_entropy(leaf, torch.randint(0, 4096, (64,)), inplace_backward=True)
