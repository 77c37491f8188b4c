"""Fused paths on a real GPU against torch and the float64 reference (skipped without CUDA).

CI has no GPU; these run in the prepared GPU session (benchmarks/gpu_session.sh).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import losskit.functional as LF

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device and compiled (not interpreted) Triton",
)

DEV = "cuda"


def _truth(x, t, **kw):
    """Loss and gradient of the float64 reference."""
    x64 = x.detach().double().requires_grad_()
    loss = LF.cross_entropy(x64, t, impl="reference", **kw)
    loss.backward()
    return loss.detach(), x64.grad


def _run(x, t, impl, **kw):
    xx = x.detach().clone().requires_grad_()
    if impl == "torch":
        loss = F.cross_entropy(xx, t, **kw)
    else:
        loss = LF.cross_entropy(xx, t, impl=impl, **kw)
    loss.backward()
    return loss.detach(), xx.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(7, 3), (33, 4097), (16, 32003), (8, 128256), (3, 256000)])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"label_smoothing": 0.1},
        {"reduction": "sum"},
        {"z_loss": 1e-4, "softcap": 30.0},
        {"weight": "w", "ignore_index": 1, "label_smoothing": 0.05},
    ],
    ids=["plain", "smooth", "sum", "z+softcap", "weight+ignore+smooth"],
)
def test_fused_within_error_budget(dtype, shape, kw):
    torch.manual_seed(0)
    n, v = shape
    x = (torch.randn(n, v, device=DEV) * 3).to(dtype)
    t = torch.randint(0, v, (n,), device=DEV)
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = torch.rand(v, device=DEV)
        t[::3] = 1
    true_loss, true_grad = _truth(x, t, **kw)
    loss, grad = _run(x, t, "fused", **kw)
    # the error budget: torch's own low-precision result where torch has the options,
    # else losskit's reference at the input dtype
    budget_impl = "reference" if ("z_loss" in kw or "softcap" in kw) else "torch"
    ref_loss, ref_grad = _run(x, t, budget_impl, **kw)
    slack = 1e-6 if dtype == torch.float32 else 2e-3
    assert (loss.double() - true_loss).abs() <= (ref_loss.double() - true_loss).abs() + slack * (
        1 + true_loss.abs()
    )
    gerr = (grad.double() - true_grad).abs().max()
    rerr = (ref_grad.double() - true_grad).abs().max()
    assert gerr <= rerr * 1.5 + slack * true_grad.abs().max()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_fused_matches_torch_float32(reduction):
    torch.manual_seed(1)
    x = torch.randn(257, 50257, device=DEV, requires_grad=True)
    t = torch.randint(0, 50257, (257,), device=DEV)
    t[::7] = -100
    ours = LF.cross_entropy(x, t, reduction=reduction, impl="fused")
    g_out = torch.randn_like(ours) if reduction == "none" else torch.tensor(1.7, device=DEV)
    (gx,) = torch.autograd.grad(ours, x, g_out)
    theirs = F.cross_entropy(x, t, reduction=reduction)
    (tx,) = torch.autograd.grad(theirs, x, g_out)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, tx, rtol=1e-5, atol=1e-6)


def test_fused_leaves_logits_intact_and_inplace_matches():
    torch.manual_seed(2)
    x = torch.randn(64, 32003, device=DEV, dtype=torch.bfloat16)
    t = torch.randint(0, 32003, (64,), device=DEV)
    a = x.clone().requires_grad_()
    before = a.detach().clone()
    LF.cross_entropy(a, t, impl="fused").backward()
    assert torch.equal(a.detach(), before)
    w = torch.randn(128, 32003 // 1, device=DEV, dtype=torch.bfloat16)
    h = torch.randn(64, 128, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = {}
    for inplace in (False, True):
        h.grad = None
        LF.cross_entropy(h @ w, t, impl="fused", inplace_backward=inplace).backward()
        g[inplace] = h.grad.clone()
    torch.testing.assert_close(g[True], g[False])


def test_more_than_2_to_the_31_logits_use_64_bit_offsets():
    # 16448 x 131072 bf16 = 2^31 + 2^23 logits (4 GiB; 8 GiB with the gradient): the last rows
    # lie beyond 2^31 elements, where 32-bit offsets would wrap to the first rows
    n, v = 16448, 131072
    if torch.cuda.mem_get_info()[0] < 10 * 2**30:
        pytest.skip("needs 10 GiB of free GPU memory")
    torch.manual_seed(5)
    x = torch.randn(n, v, device=DEV, dtype=torch.bfloat16).requires_grad_()
    t = torch.randint(0, v, (n,), device=DEV)
    loss = LF.cross_entropy(x, t, impl="fused", reduction="none")
    loss.sum().backward()
    for rows in (slice(0, 4), slice(n - 4, n)):
        tail = x.detach()[rows].double().requires_grad_()
        want = F.cross_entropy(tail, t[rows], reduction="none")
        want.sum().backward()
        torch.testing.assert_close(loss[rows].double(), want, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(x.grad[rows].double(), tail.grad, rtol=2e-2, atol=1e-4)
    del x, loss
    torch.cuda.empty_cache()


def test_out_of_range_index_raises_before_kernel():
    x = torch.randn(4, 10, device=DEV)
    t = torch.tensor([1, 2, 10, 3], device=DEV)
    with pytest.raises(IndexError, match="class index 10"):
        LF.cross_entropy(x, t, impl="fused")
    torch.cuda.synchronize()  # no device-side assert was left behind


@pytest.mark.skipif(not hasattr(LF, "linear_cross_entropy"), reason="linear CE not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_error_budget(dtype):
    torch.manual_seed(3)
    n, d, v = 1000, 520, 32003
    x = (torch.randn(n, d, device=DEV) / d**0.25).to(dtype)
    w = (torch.randn(v, d, device=DEV) / d**0.25).to(dtype)
    t = torch.randint(0, v, (n,), device=DEV)
    t[::11] = -100

    def grads(impl, xx, ww):
        xx = xx.detach().clone().requires_grad_()
        ww = ww.detach().clone().requires_grad_()
        if impl == "truth":
            loss = LF.cross_entropy(xx @ ww.T, t, impl="reference")
        else:
            loss = LF.linear_cross_entropy(xx, ww, t, impl=impl)
        loss.backward()
        return loss.detach().double(), xx.grad.double(), ww.grad.double()

    truth = grads("truth", x.double(), w.double())
    torch_like = grads("truth", x, w)  # torch at the input dtype: low-precision matmul
    fused = grads("fused", x, w)
    slack = 1e-6 if dtype == torch.float32 else 1e-3
    for f, r, tr in zip(fused, torch_like, truth, strict=True):
        assert (f - tr).abs().max() <= (r - tr).abs().max() * 1.5 + slack * tr.abs().max()


def test_second_order_gradients_through_the_fused_paths():
    """create_graph=True through the Triton CE and the chunked linear CE: torch's numbers."""
    torch.manual_seed(6)
    x = torch.randn(64, 32, device=DEV, requires_grad=True)
    w = (torch.randn(8192, 32, device=DEV) * 0.2).requires_grad_()
    t = torch.randint(0, 8192, (64,), device=DEV)

    def penalty(fn):
        x.grad = w.grad = None
        (g,) = torch.autograd.grad(fn(), x, create_graph=True)
        g.pow(2).sum().backward()
        return x.grad.clone(), w.grad.clone()

    want = penalty(lambda: F.cross_entropy(x @ w.T, t))
    for got in (
        penalty(lambda: LF.cross_entropy(x @ w.T, t, impl="fused")),
        penalty(lambda: LF.linear_cross_entropy(x, w, t, impl="fused")),
    ):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_distillation_fused_on_cuda(dtype, divergence):
    """The Triton distillation kernels (logits and linear) against the float64 reference."""
    torch.manual_seed(0)
    s = (2 * torch.randn(64, 32003, device=DEV)).to(dtype)
    t = (2 * torch.randn(64, 32003, device=DEV)).to(dtype)
    y = torch.randint(0, 32003, (64,), device=DEV)
    y[::5] = -100
    kw = dict(alpha=0.3, divergence=divergence, temperature=1.5)
    runs = {}
    for impl, dt in (("fused", dtype), ("reference", torch.float64)):
        ss = s.to(dt).requires_grad_()
        loss = LF.distillation_loss(ss, t.to(dt), y, impl=impl, **kw)
        loss.backward()
        runs[impl] = (loss.double(), ss.grad.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    (a, ga), (b, gb) = runs["fused"], runs["reference"]
    assert abs(float(a - b)) <= tol * max(1.0, abs(float(b)))
    assert float((ga - gb).abs().max()) <= tol * float(gb.abs().max())
    xs = torch.randn(2048, 512, device=DEV, dtype=dtype, requires_grad=True)
    ws = (torch.randn(32000, 512, device=DEV) / 512**0.5 * 3).to(dtype).requires_grad_()
    xt = torch.randn(2048, 256, device=DEV, dtype=dtype)
    wt = (torch.randn(32000, 256, device=DEV) / 256**0.5 * 3).to(dtype)
    out = {}
    for impl in ("fused", "reference"):
        xs.grad = ws.grad = None
        loss = LF.linear_distillation_loss(xs, ws, xt, wt, impl=impl, divergence=divergence)
        loss.backward()
        out[impl] = (loss.double(), xs.grad.double(), ws.grad.double())
    for a, b in zip(out["fused"], out["reference"], strict=True):
        assert float((a - b).abs().max()) <= 4 * tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 700])  # one sweep; two sweeps of 700-row blocks
def test_preference_fused_on_cuda(dtype, chunk_size):
    """linear_dpo_loss and linear_grpo_loss on the Triton epilogue against the float64
    reference (8 pairs x 512 tokens, V = 32000)."""
    torch.manual_seed(0)
    x0 = torch.randn(16, 512, 512, device=DEV)
    w0 = torch.randn(32000, 512, device=DEV) / 512**0.5 * 3
    y = torch.randint(0, 32000, (16, 512), device=DEV)
    y[:, :100] = -100
    ref = torch.randn(16, device=DEV) - 4000
    adv = torch.randn(16, device=DEV)
    calls = {
        "dpo": lambda x, w, impl: LF.linear_dpo_loss(
            x, w, y, reference_logps=ref.to(x.dtype), impl=impl, chunk_size=chunk_size
        ),
        "grpo": lambda x, w, impl: LF.linear_grpo_loss(
            x, w, y, adv.to(x.dtype), impl=impl, chunk_size=chunk_size
        ),
    }
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for call in calls.values():
        out = {}
        for impl, dt in (("fused", dtype), ("reference", torch.float64)):
            x = x0.to(dt).requires_grad_()
            w = w0.to(dt).requires_grad_()
            loss = call(x, w, impl)
            loss.backward()
            out[impl] = (loss.double(), x.grad.double(), w.grad.double())
        for a, b in zip(out["fused"], out["reference"], strict=True):
            assert float((a - b).abs().max()) <= 4 * tol * max(1.0, float(b.abs().max()))


def _compiled_matches_eager(fn, tensors):
    outs = []
    for f in (fn, torch.compile(fn, fullgraph=True, dynamic=True)):
        for t in tensors:
            t.grad = None
        loss = f(*tensors)
        loss.backward()
        outs.append([loss.detach()] + [t.grad.clone() for t in tensors])
    for e, c in zip(*outs, strict=True):
        torch.testing.assert_close(c, e, rtol=0, atol=0)


def test_compiled_fused_losses_on_cuda():
    """fullgraph=True, dynamic=True on CUDA: the ops' Triton bodies give eager's numbers."""
    torch.manual_seed(0)
    x = torch.randn(2, 300, 256, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(32000, 256, device=DEV) / 16).bfloat16().requires_grad_()
    y = torch.randint(0, 32000, (2, 300), device=DEV)
    y[:, :50] = -100
    z = torch.randn(600, 32000, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    ref = torch.randn(2, device=DEV) - 3000
    _compiled_matches_eager(lambda x, w: LF.linear_cross_entropy(x, w, y, impl="fused"), [x, w])
    _compiled_matches_eager(lambda z: LF.cross_entropy(z, y.reshape(-1), impl="fused"), [z])
    _compiled_matches_eager(
        lambda x, w: LF.linear_dpo_loss(x, w, y, reference_logps=ref, impl="fused"), [x, w]
    )


def test_cuda_graph_captures_a_training_step():
    """One step (block, fused linear cross-entropy, backward) captured with torch.cuda.graph and
    replayed on new data gives the eager step's loss and gradients: no host synchronization in
    the fused path (validate=False: the token-id check reads two values on the host)."""
    torch.manual_seed(0)
    block = torch.nn.Linear(256, 256, device=DEV)
    head = torch.randn(32000, 256, device=DEV, requires_grad=True)
    x = torch.randn(1024, 256, device=DEV)
    y = torch.randint(0, 32000, (1024,), device=DEV)

    def step():
        h = torch.tanh(block(x))
        loss = LF.linear_cross_entropy(h, head, y, impl="fused", validate=False)
        loss.backward()
        return loss

    params = [*block.parameters(), head]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, caches fill
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    x.copy_(torch.randn_like(x))
    y.copy_(torch.randint_like(y, 0, 32000))
    for p in params:
        p.grad.zero_()
    graph.replay()
    got = [static_loss.clone()] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    want = [step().detach()] + [p.grad for p in params]
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
