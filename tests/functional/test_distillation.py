"""Distillation losses: the references against plain torch formulas, the fused paths against the
references.

The references (``impl='reference'``) are held in float64 to formulas written here with torch's
own ``kl_div``, ``log_softmax`` and ``cross_entropy`` (not losskit's), and to gradcheck. The fused
paths (the CPU kernel on logits, the chunked linear form) are held to the reference: in float32 to
the error budget at the tensor's scale, in bfloat16 no further from the float64 truth than the
reference in bfloat16 is, plus one unit of rounding.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FUSED_F32_BUDGET, REDUCTIONS, assert_within_budget

import losskit
import losskit.functional as LF
from losskit.kernels.chunked import plan_pairs

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")
#: float32's error budget: a divergence's gradient element ``q (a - K)`` cancels terms ``a`` of
#: the size of a log-probability (``|log q|``, 10-20 nats at these vocabularies) where the
#: cross-entropy's cancels terms of size 1, so its rounding reaches ``eps * q * |log q|``: 16
#: units at the tensor's scale instead of the cross-entropy's 4
F32_BUDGET = dict(FUSED_F32_BUDGET, ulps=16.0)


# --------------------------------------------------------------------------------------------
# independent formulas (torch's ops, per position)
# --------------------------------------------------------------------------------------------


def torch_divergence(s, t, kind, beta=0.5, temperature=1.0):
    """Per-position divergence from torch's kl_div (the student ``s``, the teacher ``t``)."""
    ls, lt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = functools.partial(F.kl_div, reduction="none", log_target=True)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return kl(ls, lt).sum(-1)  # KL(p || q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return kl(lt, ls).sum(-1)
    if kind == "jsd":
        m = beta * lt.exp() + (1 - beta) * ls.exp()
        return beta * kl(m.log(), lt).sum(-1) + (1 - beta) * kl(m.log(), ls).sum(-1)
    return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)


def torch_reduce(rows, counted, reduction):
    rows = torch.where(counted, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / counted.sum()


def divergence_fn(kind):
    """losskit's function for a divergence kind, with the kind's own keyword."""
    return {
        "forward_kl": functools.partial(LF.kl_divergence, direction="forward"),
        "reverse_kl": functools.partial(LF.kl_divergence, direction="reverse"),
        "jsd": functools.partial(LF.jensen_shannon, beta=0.3),
        "tvd": LF.total_variation,
    }[kind]


def logits(*shape, dtype=torch.float64, scale=2.0):
    return (scale * torch.randn(*shape, dtype=torch.float64)).to(dtype)


# --------------------------------------------------------------------------------------------
# the references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_reference_matches_torch_formula(kind, reduction, temperature):
    s, t = logits(2, 5, 11), logits(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    y[0, 1] = y[1, 4] = -100
    beta = 0.3
    ours = divergence_fn(kind)(s, t, y, temperature=temperature, reduction=reduction)
    want = torch_reduce(torch_divergence(s, t, kind, beta, temperature), y != -100, reduction)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_ends_are_the_kls(beta):
    s, t = logits(6, 9), logits(6, 9)
    direction = "forward" if beta == 0.0 else "reverse"
    torch.testing.assert_close(
        LF.jensen_shannon(s, t, beta=beta), LF.kl_divergence(s, t, direction=direction)
    )
    # inside (0, 1) the formula itself: symmetric at 1/2, bounded by log 2
    js = LF.jensen_shannon(s, t, reduction="none")
    torch.testing.assert_close(js, LF.jensen_shannon(t, s, reduction="none"))
    assert bool((js <= math.log(2) + 1e-12).all() and (js >= 0).all())


def test_kl_divergence_is_torch_batchmean():
    s, t = logits(7, 13), logits(7, 13)
    want = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
                    log_target=True)  # fmt: skip
    torch.testing.assert_close(LF.kl_divergence(s, t), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_matches_recipe(kind, alpha):
    s, t = logits(3, 4, 10), logits(3, 4, 10)
    y = torch.randint(0, 10, (3, 4))
    y[2, 0] = -100
    temp = 2.0
    ours = LF.distillation_loss(s, t, y, alpha=alpha, divergence=kind, beta=0.3, temperature=temp)
    hard = F.cross_entropy(s.reshape(-1, 10), y.reshape(-1), reduction="none")
    soft = torch_divergence(s, t, kind, 0.3, temp).reshape(-1)
    rows = alpha * hard + (1 - alpha) * temp**2 * soft
    want = torch_reduce(rows, y.reshape(-1) != -100, "mean")
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    unscaled = LF.distillation_loss(s, t, y, alpha=0.0, divergence=kind, beta=0.3,
                                    temperature=temp, soft_scale=1.0)  # fmt: skip
    soft_only = divergence_fn(kind)(s, t, y, temperature=temp) if kind != "jsd" else (
        LF.jensen_shannon(s, t, y, beta=0.3, temperature=temp)
    )  # fmt: skip
    torch.testing.assert_close(unscaled, soft_only)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    s = logits(3, 7, scale=1.0).requires_grad_()
    t = logits(3, 7, scale=1.0).requires_grad_()
    y = torch.tensor([1, -100, 6])

    def fn(s, t):
        return LF.distillation_loss(s, t, y, alpha=0.3, divergence=kind, beta=0.4,
                                    temperature=1.7, teacher_grad=True)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (s, t))
    assert torch.autograd.gradgradcheck(fn, (s, t))


def test_teacher_is_detached_unless_asked():
    s, t = logits(4, 6).requires_grad_(), logits(4, 6).requires_grad_()
    LF.kl_divergence(s, t).backward()
    assert s.grad is not None and t.grad is None
    LF.kl_divergence(s, t, teacher_grad=True).backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0


def test_mask_equals_slicing_and_normalizer_divides():
    s, t = logits(8, 12), logits(8, 12)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    s[1] = float("nan")  # a masked position's NaN reaches neither the loss nor the gradient
    s.requires_grad_()
    for kind in KINDS:
        fn = divergence_fn(kind)
        out = fn(s, t, mask=mask)
        torch.testing.assert_close(out, fn(s[mask], t[mask]))
        (g,) = torch.autograd.grad(out, s)
        assert bool(g.isfinite().all()) and bool((g[~mask] == 0).all())
        total = fn(s, t, mask=mask, reduction="sum")
        torch.testing.assert_close(fn(s, t, mask=mask, normalizer=17.0), total / 17.0)
        assert float(fn(s, t, mask=mask, normalizer=0.0)) == 0.0
    every = torch.full((8,), -100)
    assert math.isnan(float(LF.kl_divergence(s, t, every)))  # nothing counts: NaN, as torch


# --------------------------------------------------------------------------------------------
# the fused kernel on logits
# --------------------------------------------------------------------------------------------


def _grads(out, inputs):
    weights = torch.randn(out.shape, dtype=torch.float64).to(out.dtype) if out.dim() else None
    return torch.autograd.grad(out, inputs, weights)


def compare_fused(fused, reference, args, dtype, *, grad_of):
    """``fused(*args)`` in ``dtype`` against ``reference`` in ``dtype`` and in float64 (the truth):
    loss and the gradients of the arguments at ``grad_of``, within the error budget."""
    torch.manual_seed(1)
    runs = {}
    for name, fn, dt in (("fused", fused, dtype), ("ref", reference, dtype),
                         ("truth", reference, torch.float64)):  # fmt: skip
        inputs = [a.to(dt) if a.is_floating_point() else a for a in args]
        for i in grad_of:
            inputs[i].requires_grad_()
        out = fn(*inputs)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                              dtype=torch.float64)  # fmt: skip
        grads = torch.autograd.grad(out, [inputs[i] for i in grad_of], weights.to(out.dtype))
        runs[name] = (out.detach(), grads)
    (out, grads), (ref, ref_grads), (truth, truth_grads) = runs["fused"], runs["ref"], runs["truth"]
    budget = F32_BUDGET if dtype == torch.float32 else dict(ulps=2.0, scale="tensor")
    loss_budget = dict(budget, scale="element") if out.dim() == 0 else budget
    assert_within_budget(out, ref, truth, what="loss", **loss_budget)
    for i, g, rg, tg in zip(grad_of, grads, ref_grads, truth_grads, strict=True):
        assert_within_budget(g, rg, tg, what=f"gradient of argument {i}", **budget)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_logits_within_budget(dtype, kind, reduction):
    s, t = logits(3, 7, 1031), logits(3, 7, 1031)
    y = torch.randint(0, 1031, (3, 7))
    y[1, 2:5] = -100
    mask = torch.rand(3, 7) > 0.2
    options = dict(alpha=0.25, divergence=kind, beta=0.3, temperature=1.5, reduction=reduction,
                   mask=mask, teacher_grad=True)  # fmt: skip
    fused = functools.partial(LF.distillation_loss, impl="fused", **options)
    reference = functools.partial(LF.distillation_loss, impl="reference", **options)
    compare_fused(fused, reference, (s, t, y), dtype, grad_of=(0, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_logits_pure_divergences(kind):
    s, t = logits(40, 3001), logits(40, 3001)
    fn = divergence_fn(kind)
    compare_fused(functools.partial(fn, impl="fused"), functools.partial(fn, impl="reference"),
                  (s, t), torch.float32, grad_of=(0,))  # fmt: skip


def test_fused_logits_leaves_inputs_and_ignores_bad_rows():
    s, t = logits(300, 500, dtype=torch.float32), logits(300, 500, dtype=torch.float32)
    y = torch.randint(0, 500, (300,))
    y[7] = -100
    s[7], t[7] = float("nan"), float("inf")
    s0, t0 = s.clone(), t.clone()
    s.requires_grad_()
    out = LF.distillation_loss(s, t, y, impl="fused")  # 150k logits: 'auto' would pick it too
    (g,) = torch.autograd.grad(out, s)
    assert bool(out.isfinite()) and bool(g.isfinite().all()) and bool((g[7] == 0).all())
    torch.testing.assert_close(s.detach(), s0, rtol=0, atol=0, equal_nan=True)  # untouched
    torch.testing.assert_close(t, t0, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out, LF.distillation_loss(s, t, y, impl="reference"))


def test_fused_logits_second_order_recomputes():
    s = logits(4, 50, dtype=torch.float32, scale=1.0).requires_grad_()
    t = logits(4, 50, dtype=torch.float32, scale=1.0)
    for impl in ("fused", "reference"):
        out = LF.jensen_shannon(s, t, impl=impl)
        (g,) = torch.autograd.grad(out, s, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), s)
        if impl == "fused":
            fused_g, fused_h = g.detach(), h
    torch.testing.assert_close(fused_g, g.detach())
    torch.testing.assert_close(fused_h, h)


def test_auto_picks_reference_for_small_and_float64():
    s, t = logits(4, 10), logits(4, 10)
    with pytest.raises(losskit.LossValueError, match="float32, bfloat16 or float16"):
        LF.kl_divergence(s, t, impl="fused")
    s32 = s.float().requires_grad_()
    out = LF.kl_divergence(s32, t.float())  # 40 logits: the reference (autograd's own node)
    assert "DistillationFunction" not in type(out.grad_fn).__name__


# --------------------------------------------------------------------------------------------
# the fused linear form
# --------------------------------------------------------------------------------------------


def heads(n=(2, 19), ds=24, dt=40, v=1031, *, bias=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    xs, ws = r(*n, ds), r(v, ds, scale=ds**-0.5 * 2)
    xt, wt = r(*n, dt), r(v, dt, scale=dt**-0.5 * 2)
    bs, bt = (r(v), r(v)) if bias else (None, None)
    return xs, ws, bs, xt, wt, bt


def linear(impl, **options):
    def fn(xs, ws, bs, xt, wt, bt, y):
        return LF.linear_distillation_loss(
            xs, ws, xt, wt, y, student_bias=bs, teacher_bias=bt, impl=impl, **options
        )

    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_linear_within_budget(dtype, kind, reduction):
    xs, ws, bs, xt, wt, bt = heads()
    y = torch.randint(0, 1031, (2, 19))
    y[0, :3] = -100
    options = dict(alpha=0.3, divergence=kind, beta=0.3, temperature=1.5, reduction=reduction,
                   teacher_grad=True, chunk_size=8)  # fmt: skip
    compare_fused(linear("fused", **options), linear("reference", **options),
                  (xs, ws, bs, xt, wt, bt, y), dtype, grad_of=(0, 1, 2, 3, 4, 5))  # fmt: skip


@pytest.mark.parametrize("teacher_grad", [False, True])
def test_fused_linear_teacher_logprobs(teacher_grad):
    xs, ws, bs, *_ = heads(n=(37,), dtype=torch.float32)
    tl = torch.randn(37, 1031).log_softmax(-1)
    mask = torch.rand(37) > 0.3
    wrt = (xs, ws, tl) if teacher_grad else (xs, ws)
    for t in wrt:
        t.requires_grad_()
    out = {}
    for impl in ("fused", "reference"):
        loss = LF.linear_distillation_loss(
            xs, ws, teacher_logprobs=tl, divergence="jsd", mask=mask, impl=impl,
            teacher_grad=teacher_grad, chunk_size=10, reduction="sum",
        )  # fmt: skip
        out[impl] = (loss, torch.autograd.grad(loss, wrt))
    torch.testing.assert_close(out["fused"][0], out["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(out["fused"][1], out["reference"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert tl.grad is None


def test_fused_linear_memory_plan_and_no_grad():
    xs, ws, bs, xt, wt, bt = heads(n=(300,), v=2000, dtype=torch.float32)
    plan = plan_pairs(300, 40, 2000, torch.float32, "cpu", budget=2 << 20)
    assert plan.rows < 300 and plan.tile == 2000  # whole rows, several chunks
    with torch.no_grad():
        a = linear("fused", memory_budget=2 << 20)(xs, ws, bs, xt, wt, bt, None)
        b = linear("reference")(xs, ws, bs, xt, wt, bt, None)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    xs.requires_grad_()
    loss = linear("fused", chunk_size=64)(xs, ws, bs, xt, wt, bt, None)
    loss.backward()
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_fused_linear_second_order_recomputes():
    xs, ws, bs, xt, wt, bt = heads(n=(5,), v=60, dtype=torch.float32)
    xs.requires_grad_()
    hvp = {}
    for impl in ("fused", "reference"):
        out = linear(impl, divergence="tvd", chunk_size=2)(xs, ws, bs, xt, wt, bt, None)
        (g,) = torch.autograd.grad(out, xs, create_graph=True)
        hvp[impl] = torch.autograd.grad(g.sum(), xs)[0]
    torch.testing.assert_close(hvp["fused"], hvp["reference"], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# errors, before any kernel runs
# --------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    s, t = logits(4, 6), logits(4, 6)
    cases = [
        (lambda: LF.kl_divergence(s, t[:, :5]), ValueError, "teacher_logits has shape"),
        (lambda: LF.kl_divergence(s, t.float()), TypeError, "teacher_logits has dtype"),
        (lambda: LF.kl_divergence(s, t, torch.tensor([0, 1, 6, 2])), IndexError,
         "class index 6"),
        (lambda: LF.kl_divergence(s, t, torch.zeros(3, dtype=torch.long)), ValueError,
         "target has shape"),
        (lambda: LF.kl_divergence(s, t, torch.zeros(4)), TypeError, "integer class indices"),
        (lambda: LF.kl_divergence(s, t, direction="both"), ValueError, "direction"),
        (lambda: LF.kl_divergence(s, t, temperature=0.0), ValueError, "temperature"),
        (lambda: LF.jensen_shannon(s, t, beta=1.5), ValueError, "beta"),
        (lambda: LF.distillation_loss(s, t, None), ValueError, "needs target"),
        (lambda: LF.distillation_loss(s, t, None, divergence="l2"), ValueError, "divergence"),
        (lambda: LF.total_variation(s, t, reduction="sum", normalizer=2.0), ValueError,
         "normalizer"),
        (lambda: LF.total_variation(s, t, mask=torch.ones(4)), TypeError, "mask"),
        (lambda: LF.kl_divergence(s[0, 0], t[0, 0]), ValueError, "vocabulary dimension"),
    ]  # fmt: skip
    xs, ws, bs, xt, wt, bt = heads(n=(4,), v=6)
    cases += [
        (lambda: LF.linear_distillation_loss(xs, ws), ValueError, "teacher is missing"),
        (lambda: LF.linear_distillation_loss(xs, ws, xt, wt, teacher_logprobs=s), ValueError,
         "not both"),
        (lambda: LF.linear_distillation_loss(xs, ws, xt, wt[:5]), ValueError,
         "share the vocabulary"),
        (lambda: LF.linear_distillation_loss(xs, ws, xt[:3], wt), ValueError, "positions"),
        (lambda: LF.linear_distillation_loss(xs, ws.T, xt, wt), ValueError, "input features"),
        (lambda: LF.linear_distillation_loss(xs, ws, teacher_logprobs=s[:, :5]), ValueError,
         "teacher_logprobs must have shape"),
        (lambda: LF.linear_distillation_loss(xs, ws, xt, wt, student_bias=bs[:5]), ValueError,
         "student_bias"),
        (lambda: LF.linear_distillation_loss(xs, ws, xt, wt, memory_budget="big"), ValueError,
         "memory_budget"),
    ]  # fmt: skip
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()
        with pytest.raises(losskit.LossError):
            call()


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, function, options",
    [
        (losskit.KLDivergenceLoss, LF.kl_divergence, dict(direction="reverse", temperature=2.0)),
        (losskit.JensenShannonLoss, LF.jensen_shannon, dict(beta=0.2, reduction="sum")),
        (losskit.TotalVariationLoss, LF.total_variation, dict(reduction="none")),
        (losskit.DistillationLoss, LF.distillation_loss,
         dict(alpha=0.3, divergence="jsd", temperature=3.0)),
    ],
)  # fmt: skip
def test_module_equals_function(module, function, options):
    s, t = logits(2, 3, 9), logits(2, 3, 9)
    y = torch.randint(0, 9, (2, 3))
    mask = torch.tensor([[True, False, True], [True, True, True]])
    loss = module(**options)
    torch.testing.assert_close(
        loss(s, t, y, mask=mask), function(s, t, y, mask=mask, **options), rtol=0, atol=0
    )
    loss.eval()  # no train/eval behaviour
    torch.testing.assert_close(loss(s, t, y), function(s, t, y, **options), rtol=0, atol=0)
    assert module.function is function
    assert module(**options).state_dict() == {}


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="beta"):
        losskit.JensenShannonLoss(beta=2.0)
    with pytest.raises(ValueError, match="direction"):
        losskit.KLDivergenceLoss(direction="sideways")
    with pytest.raises(ValueError, match="divergence"):
        losskit.DistillationLoss(divergence="hellinger")
    with pytest.raises(ValueError, match="chunk_size"):
        losskit.LinearDistillationLoss(chunk_size=0)
    assert "beta=0.2" in repr(losskit.JensenShannonLoss(beta=0.2))


def test_linear_module_equals_function():
    xs, ws, bs, xt, wt, bt = heads(n=(2, 5), v=50, dtype=torch.float32)
    loss = losskit.LinearDistillationLoss(divergence="reverse_kl", temperature=2.0, chunk_size=3)
    a = loss(xs, ws, xt, wt, student_bias=bs, teacher_bias=bt)
    b = LF.linear_distillation_loss(
        xs,
        ws,
        xt,
        wt,
        student_bias=bs,
        teacher_bias=bt,
        divergence="reverse_kl",
        temperature=2.0,
        chunk_size=3,
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = LF.distillation_loss(F.linear(xs, ws, bs), F.linear(xt, wt, bt), None, alpha=0.0,
                             divergence="reverse_kl", temperature=2.0)  # fmt: skip
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
