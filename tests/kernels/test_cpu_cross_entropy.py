"""The fused CPU cross-entropy (``losskit.kernels.cpu.cross_entropy``) against torch.

Where torch has the feature (weight, ignore_index, label_smoothing, reductions) the launcher is
compared with ``torch.nn.functional.cross_entropy``; for the losskit-only arguments (z_loss,
softcap, mask, normalizer, return_z_loss) with :func:`reference`, losskit's reference
cross-entropy (``impl='reference'``) run in float64. Results keep the error budget of
``conftest.check_against_torch(..., budget=True)``: no further from the float64 truth than the
same computation by torch in the same dtype, plus rounding steps of that dtype (float32: at the
tensor's scale, since torch's own float32 rounding changes with the SIMD width it picks). Blocks
are made small (a few rows) so that every shape spans several of them and ends on a partial one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FUSED_F32_BUDGET,
    KERNEL_DEFAULTS,
    assert_within_budget,
    check_against_torch,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import losskit.functional as LF
import losskit.kernels.cpu.cross_entropy as ce


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three rows of 1000 classes per block: every test runs several blocks and a partial one."""
    monkeypatch.setattr(ce, "CHUNK_BYTES", 4 * 3 * 1000)


def fused(logits, target, **kw):
    """The launcher under test, every contract argument defaulted."""
    return ce.cross_entropy(logits, target, **{**KERNEL_DEFAULTS, **kw})


def fused_loss(logits, target, **kw):
    """:func:`fused` with ``return_z_loss`` folded: the loss only."""
    out = fused(logits, target, **kw)
    return out[0] if isinstance(out, tuple) else out


def reference(logits, target, *, terms=False, **kw):
    """losskit's reference cross-entropy on the same arguments; ``terms=True`` returns (loss, z
    term). Called on float64 logits it is the truth (its class weights and normalizer follow the
    logits' dtype)."""
    a = {**KERNEL_DEFAULTS, **kw}
    del a["inplace_backward"]
    for key in ("weight", "normalizer"):
        if isinstance(a[key], torch.Tensor):
            a[key] = a[key].to(logits.dtype)
    a["return_z_loss"] = terms
    return LF.cross_entropy(logits, target, impl="reference", **a)


def make(n, v, dtype=torch.float32, *, ignore_every=5, scale=3.0):
    """Logits (n, v) with a spread that makes the softmax non-trivial, and targets with ignores."""
    x = (torch.randn(n, v, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, v, (n,))
    if ignore_every:
        y[::ignore_every] = -100
    return x, y


# --------------------------------------------------------------------------------------------
# parity with torch.nn.functional.cross_entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_torch(dtype, reduction, smoothing, weighted):
    x, y = make(11, 1000, dtype)
    w = (torch.rand(1000) + 0.5).to(dtype) if weighted else None  # torch wants the logits' dtype
    kw = dict(reduction=reduction, label_smoothing=smoothing, weight=w)
    check_against_torch(fused, F.cross_entropy, [x, y], kw, budget=True)


@pytest.mark.parametrize("n, v", [(7, 3), (5, 4097), (3, 32003), (10, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_odd_shapes(n, v, dtype):
    x, y = make(n, v, dtype, ignore_every=3)
    kw = dict(reduction="sum", label_smoothing=0.05)
    check_against_torch(fused, F.cross_entropy, [x, y], kw, budget=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_class(dtype):
    """V = 1: loss and gradient are exactly 0 in torch; ours are 0 up to float32 rounding.

    (exp2 of the max element's rounding residual is 1 only to within 1 ulp, so the error budget
    against an exact 0, which allows no absolute slack, does not apply.)
    """
    x, y = make(4, 1, dtype, ignore_every=3)
    leaf = x.requires_grad_()
    loss = fused(leaf, y, reduction="sum", label_smoothing=0.05, z_loss=0.0)
    loss.backward()
    assert loss.dtype == dtype and abs(loss.item()) < 1e-6
    assert leaf.grad.abs().max().item() < 1e-6


def test_ignore_index_inside_the_class_range():
    x, y = make(9, 50, ignore_every=0)
    y[::2] = 7
    kw = dict(ignore_index=7, label_smoothing=0.2)
    check_against_torch(fused, F.cross_entropy, [x, y], kw, budget=True)


@pytest.mark.parametrize("inplace", [False, True])
def test_strided_rows(inplace):
    """Rows of a wider buffer: the loss, the gradient, and the padding left untouched."""
    big = torch.randn(10, 1000 + 24, dtype=torch.float64).float() * 3
    y = torch.randint(0, 1000, (10,))
    ref_x = big[:, :1000].clone().requires_grad_()
    ref = F.cross_entropy(ref_x, y, reduction="sum", label_smoothing=0.1)
    ref.backward()
    true_x = big[:, :1000].double().requires_grad_()
    truth = F.cross_entropy(true_x, y, reduction="sum", label_smoothing=0.1)
    truth.backward()

    leaf = big.clone().requires_grad_()
    with torch.no_grad():
        buf = leaf.clone()
    x = buf[:, :1000]
    assert x.stride() == (1024, 1)
    x.requires_grad_()
    loss = fused(x, y, reduction="sum", label_smoothing=0.1, inplace_backward=inplace)
    loss.backward()
    assert_within_budget(loss.detach(), ref.detach(), truth.detach(), **FUSED_F32_BUDGET)
    assert_within_budget(x.grad, ref_x.grad, true_x.grad, **FUSED_F32_BUDGET)
    assert torch.equal(buf[:, 1000:], big[:, 1000:])  # the padding is never written
    if inplace:  # written into the logits' storage (autograd copies it: a strided leaf)
        assert torch.equal(buf[:, :1000], x.grad)
    else:
        assert torch.equal(x.detach(), big[:, :1000])


# --------------------------------------------------------------------------------------------
# the losskit-only arguments, against the float64 formula
# --------------------------------------------------------------------------------------------

EXTRAS = [
    dict(z_loss=1e-3),
    dict(softcap=2.0),
    dict(softcap=30.0, label_smoothing=0.1),
    dict(mask="half"),
    dict(normalizer=7.5),
    dict(normalizer=0.0),
    dict(z_loss=1e-2, softcap=5.0, label_smoothing=0.1, weight="rand", mask="half"),
]


def _resolve(extra, n, v):
    kw = dict(extra)
    if kw.get("mask") == "half":
        kw["mask"] = torch.arange(n) % 2 == 0
    if kw.get("weight") == "rand":
        kw["weight"] = torch.rand(v) + 0.5
    if "normalizer" in kw:
        kw["normalizer"] = torch.tensor(kw["normalizer"], dtype=torch.float32)
    return kw


# a normalizer comes only with reduction='mean'
EXTRA_CASES = [
    pytest.param(reduction, extra, id=f"{reduction}-{','.join(sorted(extra))}")
    for reduction in ("none", "mean", "sum")
    for extra in EXTRAS
    if "normalizer" not in extra or reduction == "mean"
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("reduction", "extra"), EXTRA_CASES)
def test_extras_match_the_formula(dtype, reduction, extra):
    x, y = make(10, 1000, dtype)
    kw = dict(_resolve(extra, 10, 1000), reduction=reduction)
    if dtype == torch.float32:
        out, grads = _run(fused, x, y, kw)
        ref, ref_grads = _run(reference, x.double(), y, kw)
        torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(grads.double(), ref_grads, rtol=2e-5, atol=2e-7)
    else:
        if isinstance(kw.get("weight"), torch.Tensor):
            kw["weight"] = kw["weight"].to(dtype)
        check_against_torch(fused, reference, [x, y], kw)


def _run(fn, x, y, kw):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf, y, **kw)
    out.backward(torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape))
    return out.detach(), leaf.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_return_z_loss(reduction):
    x, y = make(10, 1000)
    kw = dict(z_loss=1e-2, reduction=reduction, label_smoothing=0.1)
    loss, zterm = fused(x.clone().requires_grad_(), y, return_z_loss=True, **kw)
    ref_loss, ref_z = reference(x.double(), y, terms=True, **kw)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(zterm.double(), ref_z, rtol=2e-6, atol=1e-9)
    assert not zterm.requires_grad and loss.requires_grad
    # the z term is part of the loss: turning it off changes the loss by exactly that much
    plain = fused(x, y, **dict(kw, z_loss=0.0))
    torch.testing.assert_close(loss - zterm, plain, rtol=1e-6, atol=1e-6)


@settings(  # derandomize: the same examples every run, on every machine
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(0, 9),
    v=st.integers(1, 40),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    smoothing=st.sampled_from([0.0, 0.3, 1.0]),
    z_loss=st.sampled_from([0.0, 0.1]),
    softcap=st.sampled_from([None, 0.5, 4.0]),
    masked=st.booleans(),
    weighted=st.booleans(),
)
def test_random_calls_match_the_formula(
    n, v, reduction, smoothing, z_loss, softcap, masked, weighted
):
    ce.CHUNK_BYTES = 4 * 2 * v  # two rows per block (the fixture restores it)
    gen = torch.Generator().manual_seed(n * 1000 + v)
    x = torch.randn(n, v, generator=gen, dtype=torch.float64) * 4
    y = torch.randint(0, v, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.2] = -100
    kw = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    if masked:
        kw["mask"] = torch.rand(n, generator=gen) < 0.7
    if weighted:
        kw["weight"] = torch.rand(v, generator=gen, dtype=torch.float64).float() + 0.1
    out, grads = _run(fused, x.float(), y, kw)
    ref, ref_grads = _run(reference, x.float().double(), y, kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(grads.double(), ref_grads, rtol=1e-5, atol=1e-6, equal_nan=True)


# --------------------------------------------------------------------------------------------
# edge cases and the backward's upstream gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_batch(reduction):
    x = torch.randn(0, 5, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    out = fused(x, y, reduction=reduction)
    ref = F.cross_entropy(x, y, reduction=reduction)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, equal_nan=True)
    out.sum().backward()
    assert x.grad.shape == (0, 5)
    with_norm = fused(x.detach(), y, normalizer=torch.tensor(0.0))
    assert with_norm.item() == 0.0


def test_all_rows_ignored_gives_nan_and_zero_gradient_like_torch():
    x = torch.randn(4, 6, requires_grad=True)
    y = torch.full((4,), -100)
    loss = fused(x, y)
    loss.backward()
    assert loss.isnan()
    assert torch.equal(x.grad, torch.zeros(4, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_that_do_not_count_get_zero_gradient_whatever_their_logits(dtype):
    x, y = make(10, 1000, dtype, ignore_every=0)
    x[2] = float("nan")  # masked out
    x[5, :7] = float("inf")  # ignored
    x[8] = -float("inf")  # masked out
    y[5] = -100
    mask = torch.ones(10, dtype=torch.bool)
    mask[[2, 8]] = False
    leaf = x.requires_grad_()
    loss = fused(leaf, y, mask=mask, label_smoothing=0.1, z_loss=1e-3)
    loss.backward()
    assert loss.isfinite()
    assert torch.equal(leaf.grad[[2, 5, 8]], torch.zeros(3, 1000, dtype=dtype))
    assert leaf.grad.isfinite().all()


@pytest.mark.parametrize("upstream", ["backward()", "sum()", "scaled", "zero"], ids=str)
def test_upstream_gradient(upstream):
    x, y = make(10, 1000)
    reduction = "none" if upstream == "sum()" else "mean"
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    c = x.double().requires_grad_()  # the truth
    losses = fused(a, y, reduction=reduction), F.cross_entropy(b, y, reduction=reduction)
    truth = F.cross_entropy(c, y, reduction=reduction)
    for loss in (*losses, truth):
        if upstream == "backward()":
            loss.backward()
        elif upstream == "sum()":  # an expanded upstream gradient (stride 0)
            loss.sum().backward()
        else:
            loss.backward(torch.tensor(2.5 if upstream == "scaled" else 0.0, dtype=loss.dtype))
    assert_within_budget(a.grad, b.grad, c.grad, **FUSED_F32_BUDGET)


def test_second_backward_raises_a_clear_error():
    x, y = make(4, 30)
    loss = fused(x.requires_grad_(), y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="computes its gradients once.*second backward"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
def test_worker_threads_match_one_thread_and_restore_torch_threads(dtype, inplace):
    """With 2 torch threads the blocks go to 2 worker threads: same numbers, settings intact."""
    x, y = make(40, 1000, dtype)  # 14 blocks of 3 rows
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0, reduction="sum")
    one = x.clone().requires_grad_()
    expected = fused(one, y, **kw)
    expected.backward()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = x.clone().requires_grad_()
        loss = fused(two, y, inplace_backward=inplace, **kw)
        loss.backward()
        assert torch.get_num_threads() == 2
        seen = []
        fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        assert seen == [2]  # the process-wide default a worker changed is back
        with torch.inference_mode():  # the workers follow the caller's mode
            in_inference = fused(x, y, **kw)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(in_inference, expected.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(two.grad, one.grad, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------
# in-place semantics and memory
# --------------------------------------------------------------------------------------------


def test_out_of_place_leaves_the_logits_alone():
    x, y = make(10, 1000, torch.bfloat16)
    before = x.clone()
    leaf = x.requires_grad_()
    fused(leaf, y, label_smoothing=0.1, z_loss=1e-3).backward()
    assert torch.equal(leaf.detach(), before)
    assert leaf.grad.data_ptr() != leaf.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_no_gradient_wanted_computes_the_loss_only_and_never_writes_the_logits(dtype, reduction):
    x, y = make(10, 1000, dtype)
    y[3] = -100
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0, reduction=reduction)
    with_grad = fused(x.clone().requires_grad_(), y, return_z_loss=True, **kw)
    before = x.clone()
    with torch.no_grad():  # evaluation with an in-place loss Module
        in_eval = fused(x, y, inplace_backward=True, return_z_loss=True, **kw)
    plain = fused(x, y, inplace_backward=True, return_z_loss=True, **kw)  # no requires_grad
    assert torch.equal(x, before) and x._version == before._version
    for got in (in_eval, plain):
        assert not got[0].requires_grad
        torch.testing.assert_close(got[0], with_grad[0].detach(), rtol=0, atol=0)
        torch.testing.assert_close(got[1], with_grad[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_same_gradient_into_the_logits(dtype):
    x, y = make(10, 1000, dtype)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0)
    a = x.clone().requires_grad_()
    fused(a, y, **kw).backward()
    b = x.clone().requires_grad_()
    version = b._version
    loss = fused(b, y, inplace_backward=True, **kw)
    assert b._version > version
    loss.backward()
    assert b.grad.data_ptr() == b.data_ptr()
    assert torch.equal(b.grad, a.grad)


def test_inplace_backward_raises_when_another_node_saved_the_logits():
    x = torch.randn(6, 40, requires_grad=True)
    y = torch.randint(0, 40, (6,))
    h = x.tanh()  # tanh's backward saves its output h
    total = fused(h, y, inplace_backward=True) + (h * h).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()


def test_inplace_backward_behind_a_matmul_gives_torch_gradients():
    x0 = torch.randn(12, 16, dtype=torch.float64).float()
    w0 = torch.randn(1000, 16, dtype=torch.float64).float()
    y = torch.randint(0, 1000, (12,))
    grads = []
    for inplace in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        logits = x @ w.T  # the matmul saves x and w, not the logits
        if inplace:
            fused(logits, y, inplace_backward=True, label_smoothing=0.1).backward()
        else:
            F.cross_entropy(logits, y, label_smoothing=0.1).backward()
        grads.append((x.grad, w.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.nn.functional as F
    from losskit.kernels.cpu.cross_entropy import cross_entropy

    def status_bytes(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    n, v, which = 1024, 32000, sys.argv[1]
    x = torch.randn(n, v).requires_grad_()
    y = torch.randint(0, v, (n,))

    def step():
        if which == "fused":
            loss = cross_entropy(x, y, weight=None, ignore_index=-100, label_smoothing=0.1,
                                 z_loss=0.0, softcap=None, reduction="mean", normalizer=None,
                                 mask=None, inplace_backward=False, return_z_loss=False)
        else:
            loss = F.cross_entropy(x, y, label_smoothing=0.1)
        loss.backward()

    step()  # warm-up: lazy initialisation, allocator caches
    x.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident size (VmHWM) restarts from the current one
    base = status_bytes("VmRSS")
    step()
    print((status_bytes("VmHWM") - base) / (n * v * 4))
    """
)


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _can_reset_peak_rss(),
    reason="needs Linux's /proc/self/clear_refs to reset the peak resident size",
)
def test_peak_memory_is_one_gradient():
    """Peak resident growth of one fwd+bwd (inputs allocated), in units of one gradient."""

    def growth(which):
        env = dict(os.environ, OMP_NUM_THREADS="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, which],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        return float(run.stdout.split()[-1])

    fused_growth, torch_growth = growth("fused"), growth("torch")
    assert torch_growth > 1.8, f"torch eager grew by {torch_growth:.2f} gradients"
    assert 0.9 < fused_growth < 1.15, f"fused peak growth {fused_growth:.2f} gradients"


SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")
