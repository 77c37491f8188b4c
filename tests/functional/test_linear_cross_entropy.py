"""linear_cross_entropy: the chunked (fused) path against the reference and torch.

The reference is ``F.linear`` followed by losskit's reference ``cross_entropy``; torch 2.13's
``F.linear_cross_entropy`` is a second oracle where it exists. float32 must agree to a tight
tolerance; bfloat16/float16 keep the error budget: every gradient element is no further from the
float64 truth than the plain low-precision result is (bf16 GEMMs, float32 loss), plus one unit of
rounding at the tensor's scale (``eps * max|truth|``), and the same for the loss.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import REDUCTIONS, assert_torch_signature
from hypothesis import given, settings
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
from losskit.kernels.chunked import ChunkPlan, plan_chunks

reference = functools.partial(LF.linear_cross_entropy, impl="reference")
fused = functools.partial(LF.linear_cross_entropy, impl="fused")
HAS_TORCH_LCE = hasattr(F, "linear_cross_entropy")
needs_torch_lce = pytest.mark.skipif(
    not HAS_TORCH_LCE, reason="this torch has no F.linear_cross_entropy"
)

#: (N, D, V, options) of the float32 parity grid: whole rows (37 = 4 chunks of 8 + 5, D not a
#: multiple of 16) and the vocabulary-tiled plan (a budget that leaves < 64 rows per chunk).
PLANS = {
    "rows": (37, 19, 301, {"chunk_size": 8}),
    "tiled": (300, 19, 301, {"memory_budget": 85_000}),
}
FEATURES = {
    "plain": {},
    "weight": {"weight": True},
    "ignore+mask": {"ignore": True, "mask": True},
    "smoothing+weight": {"label_smoothing": 0.1, "weight": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.0},
    "bias": {"bias": True},
    "normalizer": {"normalizer": 17.0},
    "everything": {
        "weight": True,
        "ignore": True,
        "mask": True,
        "label_smoothing": 0.05,
        "z_loss": 1e-3,
        "softcap": 3.0,
        "bias": True,
    },
}


def make_case(
    n,
    d,
    v,
    dtype=torch.float32,
    *,
    scale=2.0,
    weight=False,
    ignore=False,
    mask=False,
    bias=False,
    seed=0,
    lead=None,
    **options,
):
    """Inputs and options of one call; ``scale`` is the logits' standard deviation."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else lead
    x = torch.randn(*shape, d, generator=gen).to(dtype)
    w = (torch.randn(v, d, generator=gen) * (scale / d**0.5)).to(dtype)
    y = torch.randint(0, v, shape, generator=gen)
    if ignore:
        y.view(-1)[::5] = -100
    kw = dict(options)
    if weight:
        kw["weight"] = torch.rand(v, generator=gen) + 0.5
    if mask:
        kw["mask"] = torch.rand(shape, generator=gen) > 0.25
    if bias:
        kw["linear_bias"] = torch.randn(v, generator=gen).to(dtype)
    return x, w, y, kw


def run(fn, x, w, y, kw, upstream=None):
    """Loss and gradients of input, linear_weight (and linear_bias) for ``upstream``."""
    leaves = [x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
    kw = dict(kw)
    if kw.get("linear_bias") is not None:
        leaves.append(kw["linear_bias"].detach().clone().requires_grad_())
        kw["linear_bias"] = leaves[2]
    out = fn(leaves[0], leaves[1], y, **kw)
    if upstream is None:
        upstream = torch.ones_like(out)
    out.backward(upstream.to(out.dtype))
    return [out.detach()] + [leaf.grad for leaf in leaves]


def run_z(fn, x, w, y, kw, upstream=None):
    """``run`` with ``return_z_loss=True``: ``[loss, z_term, *grads]`` (the z term detached)."""
    box = {}

    def loss_only(*args, **kwargs):
        loss, box["z"] = fn(*args, **kwargs, return_z_loss=True)
        return loss

    out = run(loss_only, x, w, y, kw, upstream)
    z = box["z"]
    assert not z.requires_grad and z.grad_fn is None, "the z term carries no gradient"
    assert z.shape == out[0].shape and z.dtype == out[0].dtype
    return [out[0], z, *out[1:]]


def widen(kw):
    return {
        k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in kw.items()
    }


def assert_close_f32(ours, ref, what):
    # The absolute floor is the suite's float32 tolerance: where the true gradient is 0 by
    # cancellation (V = 1 with label smoothing: p - (1-eps) - eps/V), float32 leaves ~1e-7.
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        scale = float(b.abs().nan_to_num(0.0).max()) if b.numel() else 0.0
        torch.testing.assert_close(
            a,
            b,
            rtol=1e-5,
            atol=2e-6 * scale + 1e-6,
            equal_nan=True,
            msg=lambda m, i=i: f"{what}, output {i}: {m}",
        )


def assert_budget(ours, lowp, truth, what, slack=1.0):
    """Elementwise: |ours - truth| <= |lowp - truth| + slack * eps * max|truth|."""
    for i, (a, b, t) in enumerate(zip(ours, lowp, truth, strict=True)):
        assert a.dtype == b.dtype, (what, i)
        eps = torch.finfo(a.dtype).eps
        tol = slack * eps * float(t.abs().max())
        excess = float(((a.double() - t).abs() - (b.double() - t).abs()).max())
        assert excess <= tol, (
            f"{what}, output {i}: error exceeds the plain {a.dtype} result's by {excess:.3g} "
            f"> {tol:.3g} ({excess / (eps * float(t.abs().max())):.2f} eps*max)"
        )


# --------------------------------------------------------------------------------------------
# signature and plans
# --------------------------------------------------------------------------------------------


@needs_torch_lce
def test_signature_is_torchs():
    assert_torch_signature(LF.linear_cross_entropy, F.linear_cross_entropy)


@needs_torch_lce
def test_module_signature_is_torchs():
    assert_torch_signature(
        losskit.LinearCrossEntropyLoss.__init__, torch.nn.LinearCrossEntropyLoss.__init__
    )


def test_plans_respect_the_budget():
    mib = 1 << 20
    # CPU default at the benchmark shape: whole rows, chunk buffer within 64 MiB
    p = plan_chunks(4096, 1024, 32000, torch.float32, "cpu", budget=64 * mib)
    assert p.whole_rows(32000) and p.rows * 32000 * 4 <= 64 * mib and p.rows >= 256
    # CUDA default at the goal shapes: few chunks, bf16 dW accumulation (fp32 would be 2 GiB)
    p = plan_chunks(8192, 4096, 128256, torch.bfloat16, "cuda", budget=1024 * mib)
    assert p.accumulate == "input" and p.whole_rows(128256)
    assert 2048 <= p.rows and p.rows * 128256 * 2 <= 1024 * mib
    # CUDA lean: vocabulary tiles, the tile and the float32 dX accumulator within 64 MiB
    for d, v in ((4096, 128256), (2304, 256000)):
        p = plan_chunks(8192, d, v, torch.bfloat16, "cuda", budget=64 * mib)
        assert not p.whole_rows(v) and p.rows >= 1024
        assert p.rows * p.tile * 2 + p.rows * d * 4 + 8 * v + 32 * 8192 <= 64 * mib
    # small heads in low precision get the float32 dW accumulator
    assert plan_chunks(512, 64, 2048, torch.bfloat16, "cpu", budget=64 * mib).accumulate == (
        "float32"
    )
    assert plan_chunks(37, 19, 301, torch.float32, "cpu", budget=1, chunk_size=8) == ChunkPlan(
        8, 301, "float32"
    )
    assert not plan_chunks(300, 19, 301, torch.float32, "cpu", budget=85_000).whole_rows(301)


# --------------------------------------------------------------------------------------------
# float32 parity with the reference, every feature, reduction and plan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("plan", list(PLANS))
def test_fused_matches_reference_float32(plan, feature, reduction):
    n, d, v, plan_kw = PLANS[plan]
    opts = dict(FEATURES[feature])
    if reduction != "mean":
        opts.pop("normalizer", None)
    x, w, y, kw = make_case(n, d, v, reduction=reduction, **opts)
    up = None if reduction != "none" else torch.rand(n) + 0.5
    # the fused call also returns its z term: that changes neither the loss nor its gradients
    ours = run_z(fused, x, w, y, {**kw, **plan_kw}, up)
    ref = run(reference, x, w, y, kw, up)
    with torch.no_grad():
        ref_z = reference(x, w, y, **kw, return_z_loss=True)[1]
    assert_close_f32(ours, [ref[0], ref_z, *ref[1:]], f"{plan}/{feature}/{reduction}")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 12),
    v=st.integers(1, 300),
    chunk=st.integers(1, 50),
    tile=st.sampled_from([None, 128, 256]),
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.3]),
    softcap=st.sampled_from([None, 1.5]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_plans(n, d, v, chunk, tile, reduction, smoothing, softcap, seed):
    x, w, y, kw = make_case(
        n,
        d,
        v,
        seed=seed,
        ignore=True,
        bias=True,
        reduction=reduction,
        label_smoothing=smoothing,
        softcap=softcap,
    )
    from losskit.kernels.cpu import linear_cross_entropy as K

    def chunked(x, w, y, *, linear_bias, reduction, label_smoothing, softcap):
        plan = ChunkPlan(chunk, tile or v, "float32")
        return K.linear_cross_entropy(
            x, w, y, bias=linear_bias, weight=None, ignore_index=-100,
            label_smoothing=label_smoothing, z_loss=0.0, softcap=softcap, reduction=reduction,
            normalizer=None, mask=None, plan=plan,
        )  # fmt: skip

    up = None if reduction != "none" else torch.rand(n, generator=torch.Generator().manual_seed(1))
    ours = run(chunked, x, w, y, kw, up)
    ref = run(reference, x, w, y, kw, up)
    assert_close_f32(ours, ref, f"n={n} d={d} v={v} chunk={chunk} tile={tile}")


def test_batched_input_and_non_unit_upstream():
    x, w, y, kw = make_case(0, 24, 97, lead=(3, 5), ignore=True, bias=True)
    for reduction, up in (("mean", torch.tensor(0.3)), ("none", torch.rand(3, 5))):
        ours = run(fused, x, w, y, {**kw, "reduction": reduction, "chunk_size": 4}, up)
        ref = run(reference, x, w, y, {**kw, "reduction": reduction}, up)
        assert ours[0].shape == y.shape if reduction == "none" else ours[0].shape == ()
        assert ours[1].shape == x.shape
        assert_close_f32(ours, ref, reduction)


def test_odd_shape_3x423x32003():
    x, w, y, kw = make_case(0, 24, 32003, lead=(3, 423), ignore=True, scale=3.0)
    ours = run(fused, x, w, y, {**kw, "chunk_size": 128})
    ref = run(reference, x, w, y, kw)
    assert_close_f32(ours, ref, "3x423x32003")


@needs_torch_lce
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "feature",
    [
        {},
        {"weight": True},
        {"ignore": True},
        {"label_smoothing": 0.2},
        {"bias": True},
        {"weight": True, "ignore": True, "label_smoothing": 0.1, "bias": True},
    ],
)
def test_fused_matches_torch_linear_cross_entropy(feature, reduction):
    x, w, y, kw = make_case(37, 19, 301, reduction=reduction, **feature)
    up = None if reduction != "none" else torch.rand(37) + 0.5
    ours = run(fused, x, w, y, {**kw, "chunk_size": 16}, up)
    theirs = run(F.linear_cross_entropy, x, w, y, kw, up)
    assert_close_f32(ours, theirs, f"torch {feature} {reduction}")


# --------------------------------------------------------------------------------------------
# low precision: the error budget
# --------------------------------------------------------------------------------------------

LOWP_PLANS = {
    "default": {},  # a small head: float32 dW accumulation
    "input-acc-4-chunks": {"accumulate": "input", "chunk_size": 128},
    "tiled": {"memory_budget": 260_000},
}


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("plan", list(LOWP_PLANS))
@pytest.mark.parametrize("feature", ["plain", "everything"])
def test_bfloat16_error_budget(plan, feature, scale):
    # scale 1: near-uniform softmax, where dW rounding dominates; 4: peaked, where the bf16
    # logits dominate torch's own error
    x, w, y, kw = make_case(512, 64, 2048, torch.bfloat16, scale=scale, **FEATURES[feature])
    ours = run(fused, x, w, y, {**kw, **LOWP_PLANS[plan]})
    lowp = run(reference, x, w, y, kw)
    truth = run(reference, x.double(), w.double(), y, widen(kw))
    assert_budget(ours, lowp, truth, f"bf16 {plan}/{feature}")


def test_float16_error_budget_and_power_of_two_upstream():
    x, w, y, kw = make_case(256, 48, 1000, torch.float16, scale=3.0, ignore=True, bias=True)
    up = torch.tensor(1024.0)  # a loss scale: scaling the stored gradients is exact
    ours = run(fused, x, w, y, {**kw, "chunk_size": 64, "accumulate": "input"}, up)
    lowp = run(reference, x, w, y, kw, up)
    truth = run(reference, x.double(), w.double(), y, widen(kw), up.double())
    assert_budget(ours, lowp, truth, "fp16")


# --------------------------------------------------------------------------------------------
# return_z_loss, and the rule of its 'mean' under class weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("plan", ["default", "tiled"])
def test_z_term_bfloat16_error_budget(plan, reduction):
    x, w, y, kw = make_case(
        512, 64, 2048, torch.bfloat16, scale=4.0, **FEATURES["everything"], reduction=reduction
    )
    up = None if reduction == "mean" else torch.rand(512) + 0.5
    ours = run_z(fused, x, w, y, {**kw, **LOWP_PLANS[plan]}, up)
    lowp = run_z(reference, x, w, y, kw, up)
    truth = run_z(
        reference, x.double(), w.double(), y, widen(kw), None if up is None else up.double()
    )
    assert_budget(ours, lowp, truth, f"bf16 z term {plan}/{reduction}")


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_z_term_mean_divides_by_the_summed_weights_not_the_token_count(impl):
    # losskit: z = sum_n c lse_n^2 / sum_n w_{y_n}; Liger-Kernel: the same sum / (kept tokens)
    x, w, y, kw = make_case(40, 8, 60, weight=True, ignore=True, mask=True, scale=3.0)
    c = 0.05
    cw = kw["weight"] * 2.0  # summed weights about twice the token count: the rules differ
    x64, w64 = x.double(), w.double()
    logits = x64 @ w64.T
    kept = (y != -100) & kw["mask"]
    lse2 = torch.logsumexp(logits, 1)[kept].square()
    w_y = cw.double()[y[kept]]
    ours_z = c * lse2.sum() / w_y.sum()
    liger_z = c * lse2.sum() / kept.sum()
    ce = F.cross_entropy(logits[kept], y[kept], cw.double())  # the weighted mean, both agree
    expected_gap = c * lse2.sum() * (1 / w_y.sum() - 1 / kept.sum())
    assert float(expected_gap.abs()) > 0.3 * float(ours_z)

    def total(rule):  # the whole loss as a plain-torch expression of (x, W), for its gradients
        xl = x64.clone().requires_grad_()
        z = xl @ w64.T
        lse = torch.logsumexp(z[kept], 1)
        loss = F.cross_entropy(z[kept], y[kept], cw.double()) + c * lse.square().sum() / rule
        (grad,) = torch.autograd.grad(loss, xl)
        return loss.detach(), grad

    call = dict(weight=cw, mask=kw["mask"], z_loss=c, impl=impl)
    lin = run_z(LF.linear_cross_entropy, x, w, y, {**call, "chunk_size": 16})
    logits32 = (x @ w.T).requires_grad_()
    ce_loss, ce_z = LF.cross_entropy(logits32, y, **call, return_z_loss=True)
    for what, z, loss in (("linear", lin[1], lin[0]), ("cross_entropy", ce_z, ce_loss.detach())):
        torch.testing.assert_close(z.double(), ours_z, rtol=2e-6, atol=0, msg=what)
        torch.testing.assert_close((z.double() - liger_z), expected_gap, rtol=2e-5, atol=0)
        torch.testing.assert_close(loss.double() - ce, ours_z, rtol=2e-5, atol=1e-6, msg=what)
    # the loss's gradient is that of losskit's rule, and measurably not of Liger's
    ours_total, ours_grad = total(w_y.sum())
    _, liger_grad = total(kept.sum())
    torch.testing.assert_close(lin[0].double(), ours_total, rtol=2e-6, atol=0)
    torch.testing.assert_close(lin[2].double(), ours_grad, rtol=1e-4, atol=1e-6)
    assert float((lin[2].double() - liger_grad).abs().max()) > 100 * float(
        (lin[2].double() - ours_grad).abs().max()
    )


def test_z_term_without_z_loss_all_ignored_and_zero_normalizer():
    x, w, y, _ = make_case(12, 8, 40, ignore=True)
    for impl in ("reference", "fused"):
        loss, z = LF.linear_cross_entropy(x, w, y, impl=impl, return_z_loss=True)
        assert z.item() == 0.0 and loss.item() > 0.0  # z_loss=0: a zero z term
        rows = LF.linear_cross_entropy(x, w, y, impl=impl, reduction="none", return_z_loss=True)
        assert rows[1].shape == y.shape and not rows[1].any()
        ignored = torch.full((12,), -100)
        _, z = LF.linear_cross_entropy(x, w, ignored, impl=impl, z_loss=0.1, return_z_loss=True)
        assert torch.isnan(z)  # the loss's own 0/0, as torch's all-ignored mean
        _, z = LF.linear_cross_entropy(
            x, w, y, impl=impl, z_loss=0.1, normalizer=0.0, return_z_loss=True
        )
        assert z.item() == 0.0
    x, w, y, _ = make_case(0, 8, 30)
    for impl in ("reference", "fused"):
        kw = dict(impl=impl, z_loss=0.1, reduction="sum", return_z_loss=True)
        loss, z = LF.linear_cross_entropy(x, w, y, **kw)
        assert loss.item() == 0.0 and z.item() == 0.0


def test_z_term_output_keeps_second_order_gradients():
    # ignored rows under the default ignore_index=None (-100 for class indices): the
    # create_graph recompute counts them out as the kernels do
    x, w, y, kw = make_case(10, 6, 30, weight=True, ignore=True)
    got = {}
    for impl in ("fused", "reference"):
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss, z = LF.linear_cross_entropy(
            xl, wl, y, **kw, z_loss=0.1, impl=impl, chunk_size=4, return_z_loss=True
        )
        (gx,) = torch.autograd.grad(loss, xl, create_graph=True)
        got[impl] = [loss.detach(), z, *torch.autograd.grad(gx.square().sum(), (xl, wl))]
    assert_close_f32(got["fused"], got["reference"], "create_graph with return_z_loss")


def test_module_returns_the_z_term():
    x, _, y, kw = make_case(30, 16, 70, lead=(2, 15), ignore=True, weight=True)
    loss = losskit.LinearCrossEntropyLoss(
        16, 70, weight=kw["weight"], z_loss=1e-2, return_z_loss=True, chunk_size=8
    )
    assert "return_z_loss=True" in repr(loss)
    got, z = loss(x, y)
    want, want_z = reference(
        x, loss.linear.weight, y, weight=kw["weight"], z_loss=1e-2, return_z_loss=True
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z, want_z)
    clone = pickle.loads(pickle.dumps(loss))
    torch.testing.assert_close(clone(x, y)[1], z)


# --------------------------------------------------------------------------------------------
# behaviour
# --------------------------------------------------------------------------------------------


def test_second_backward_raises_for_reduced_and_works_for_none():
    x, w, y, _ = make_case(20, 8, 50)
    xl, wl = x.requires_grad_(), w.requires_grad_()
    loss = fused(xl, wl, y, chunk_size=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    xl.grad = None
    rows = fused(xl, wl, y, chunk_size=8, reduction="none")
    rows.sum().backward(retain_graph=True)
    first = xl.grad.clone()
    rows.sum().backward()
    torch.testing.assert_close(xl.grad, 2 * first)


def test_frozen_head_and_no_grad():
    x, w, y, _ = make_case(30, 8, 50, ignore=True)
    xl = x.clone().requires_grad_()
    loss = fused(xl, w, y, chunk_size=8)
    loss.backward()
    ref = run(reference, x, w, y, {})
    torch.testing.assert_close(loss.detach(), ref[0])
    torch.testing.assert_close(xl.grad, ref[1], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, w, y, chunk_size=8), ref[0])


def test_all_ignored_and_zero_normalizer():
    x, w, _, _ = make_case(12, 8, 40)
    y = torch.full((12,), -100)
    out = run(fused, x, w, y, {"chunk_size": 5})
    ref = run(reference, x, w, y, {})
    assert torch.isnan(out[0]) and torch.isnan(ref[0])  # torch's 0/0
    assert not out[1].any() and not out[2].any()
    y = torch.randint(0, 40, (12,))
    out = run(fused, x, w, y, {"chunk_size": 5, "normalizer": 0.0})
    assert out[0].item() == 0.0 and not out[1].any() and not out[2].any()


def test_mask_equals_slicing():
    x, w, y, _ = make_case(40, 8, 60)
    keep = torch.rand(40) > 0.4
    masked = run(fused, x, w, y, {"mask": keep, "chunk_size": 7})
    sliced = run(fused, x[keep], w, y[keep], {"chunk_size": 7})
    torch.testing.assert_close(masked[0], sliced[0])
    torch.testing.assert_close(masked[1][keep], sliced[1], rtol=1e-5, atol=1e-7)
    assert not masked[1][~keep].any()
    torch.testing.assert_close(masked[2], sliced[2], rtol=1e-5, atol=1e-7)


def test_empty_batch_and_unbatched_input():
    x, w, y, _ = make_case(0, 8, 30)
    out = run(fused, x, w, y, {"reduction": "sum"})
    assert out[0].item() == 0.0 and out[1].shape == (0, 8) and not out[2].any()
    x, w, y, _ = make_case(1, 8, 30)
    ours = run(fused, x[0], w, y[0], {})
    ref = run(reference, x, w, y, {})
    assert ours[0].shape == ()
    assert_close_f32([ours[0], ours[1], ours[2]], [ref[0], ref[1][0], ref[2]], "unbatched")


def test_torch_compile_with_aot_eager_takes_the_op():
    """Compiled (AOTAutograd without inductor) the call is losskit's custom op in the graph,
    the code around it compiled too; tests/ops holds the fullgraph and inductor cases."""
    x, w, y, _ = make_case(24, 8, 50, ignore=True)

    def step(h, head, t):
        h = torch.tanh(h) * 1.5
        return LF.linear_cross_entropy(h, head, t, chunk_size=8) + 0.1 * h.pow(2).mean()

    compiled = torch.compile(step, backend="aot_eager")
    eager = run(step, x, w, y, {})
    comp = run(compiled, x, w, y, {})
    assert_close_f32(comp, eager, "compiled")


def test_module_matches_function_and_from_linear_shares_the_head():
    x, _, y, kw = make_case(30, 16, 70, ignore=True, weight=True)
    loss = losskit.LinearCrossEntropyLoss(
        16, 70, bias=True, weight=kw["weight"], label_smoothing=0.1, chunk_size=8
    )
    got = loss(x, y)
    want = reference(
        x,
        loss.linear.weight,
        y,
        linear_bias=loss.linear.bias,
        weight=kw["weight"],
        label_smoothing=0.1,
    )
    torch.testing.assert_close(got, want)
    state = loss.state_dict()
    assert set(state) == {"weight", "linear.weight", "linear.bias"}
    clone = pickle.loads(pickle.dumps(loss))
    torch.testing.assert_close(clone(x, y), got)

    head = torch.nn.Linear(16, 70, bias=False)
    shared = losskit.LinearCrossEntropyLoss.from_linear(head, memory_budget="lean")
    assert shared.linear.weight is head.weight
    shared(x, y).backward()
    expected = run(reference, x, head.weight, y, {})[2]
    torch.testing.assert_close(head.weight.grad, expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        (
            lambda a: {**a, "linear_weight": a["linear_weight"][:, :5]},
            losskit.LossValueError,
            r"5 input features \(dim 1\), but input .* has 8",
        ),
        (
            lambda a: {**a, "linear_weight": a["linear_weight"].double()},
            losskit.LossTypeError,
            "linear_weight has dtype torch.float64 but input has dtype torch.float32",
        ),
        (lambda a: {**a, "target": a["target"][:, None]}, losskit.LossValueError, r"squeeze\(-1\)"),
        (lambda a: {**a, "target": a["target"].float()}, losskit.LossValueError, "long()"),
        (
            lambda a: {**a, "target": torch.tensor([0, 1, 2, 50, 3, 4])},
            losskit.LossIndexError,
            r"class index 50 at position \(3,\), but linear_weight has 50 classes \(dim 0\)",
        ),
        (
            lambda a: {**a, "linear_bias": torch.zeros(49)},
            losskit.LossValueError,
            r"linear_bias must have shape \(50,\)",
        ),
        (lambda a: {**a, "mask": torch.ones(6)}, losskit.LossTypeError, "mask must be a bool"),
        (lambda a: {**a, "memory_budget": "small"}, losskit.LossValueError, "memory_budget"),
        (lambda a: {**a, "chunk_size": 0}, losskit.LossValueError, "chunk_size"),
        (
            lambda a: {
                **a,
                "input": a["input"].double(),
                "linear_weight": a["linear_weight"].double(),
                "impl": "fused",
            },
            losskit.LossValueError,
            "float32, bfloat16 or float16",
        ),
    ],
)
def test_errors_name_the_argument(change, error, pattern):
    args = {
        "input": torch.randn(6, 8),
        "linear_weight": torch.randn(50, 8),
        "target": torch.tensor([0, 1, 2, 3, 4, 5]),
    }
    args = change(args)
    with pytest.raises(error, match=pattern):
        LF.linear_cross_entropy(
            args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args
        )


# --------------------------------------------------------------------------------------------
# memory: peak RSS does not grow with V beyond the chunk budget
# --------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    import losskit.functional as LF
    torch.set_num_threads(1)
    n, d, v, impl, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], \\
        int(sys.argv[5])
    def call(n, v):
        x = torch.randn(n, d, requires_grad=True)
        w = (torch.randn(v, d) * 0.1).requires_grad_()
        y = torch.randint(0, v, (n,))
        return x, w, y
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
    x, w, y = call(64, 256)  # warm up the libraries at a tiny size
    LF.linear_cross_entropy(x, w, y, impl=impl, memory_budget=budget).backward()
    x, w, y = call(n, v)
    # The high-water mark of this process's resident set from here on. getrusage's ru_maxrss
    # would do, but Linux carries the parent's resident size into it across fork + exec; VmHWM
    # (reset by writing 5 to clear_refs) is this process's alone.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: status("VmHWM:")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = status("VmRSS:")
    LF.linear_cross_entropy(x, w, y, impl=impl, memory_budget=budget).backward()
    grads = (x.numel() + w.numel()) * 4
    print(json.dumps({"extra": peak() - before - grads}))
    """
)


def _extra_bytes(n, d, v, impl, budget):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(n), str(d), str(v), impl, str(budget)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


def test_peak_memory_does_not_grow_with_vocabulary():
    mib = 1 << 20
    budget = 8 * mib
    small = _extra_bytes(1024, 64, 8192, "fused", budget)
    large = _extra_bytes(1024, 64, 32768, "fused", budget)
    plain = _extra_bytes(1024, 64, 32768, "reference", budget)
    assert large <= budget + 4 * mib, f"fused used {large / mib:.1f} MiB beyond its gradients"
    assert abs(large - small) <= 4 * mib, (small / mib, large / mib)
    # the measurement sees the logits when they exist: (N, V) float32 is 128 MiB here
    assert plain >= 128 * mib, plain / mib
