"""``torch.func`` transforms over the fused losses: under ``vmap``, ``grad`` or both (per-sample
gradients), ``impl='auto'`` takes the reference path, which every transform supports, and gives
the numbers plain torch gives; ``impl='fused'`` raises, naming why (its ``autograd.Function``
has no functorch rule)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losskit.functional as LF
from losskit import LossValueError

# big enough that 'auto' takes the fused path outside a transform (CPU_FUSED_MIN_ELEMENTS)
N, V, D = 64, 4096, 24


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(N, V, generator=gen, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=gen)
    y[::7] = -100
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = torch.randn(V, D, generator=gen, dtype=torch.float64) / 5
    return z, y, x, w


def test_grad_of_cross_entropy_equals_torch():
    z, y, _, _ = _data()
    z = z.float()
    got = torch.func.grad(lambda z: LF.cross_entropy(z, y, label_smoothing=0.1))(z)
    want = torch.func.grad(lambda z: F.cross_entropy(z, y, label_smoothing=0.1))(z)
    torch.testing.assert_close(got, want)


def test_vmap_of_cross_entropy_equals_a_loop():
    z, y, _, _ = _data()
    zs, ys = z.view(4, 16, V), y.view(4, 16)
    got = torch.func.vmap(LF.cross_entropy)(zs, ys)
    want = torch.stack([F.cross_entropy(a, b) for a, b in zip(zs, ys, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_per_sample_gradients_of_linear_cross_entropy():
    """vmap(grad(...)) over the examples: each one's head gradient, as a loop of backward()."""
    _, y, x, w = _data(1)
    x, w = x.float(), w.float()

    def loss(w, xi, yi):
        return LF.linear_cross_entropy(xi.unsqueeze(0), w, yi.unsqueeze(0))

    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x[:6], y[:6])
    for i in range(6):
        wi = w.clone().requires_grad_()
        F.cross_entropy(x[i : i + 1] @ wi.T, y[i : i + 1]).backward()
        torch.testing.assert_close(got[i], wi.grad)


def test_grad_of_distillation_and_dpo_equals_their_reference():
    z, _, x, w = _data(2)
    z, x, w = z.float(), x.float(), w.float()
    t = torch.randn(N, V, generator=torch.Generator().manual_seed(3))
    got = torch.func.grad(lambda z: LF.jensen_shannon(z, t, beta=0.3))(z)
    want = torch.func.grad(lambda z: LF.jensen_shannon(z, t, beta=0.3, impl="reference"))(z)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    h, target = x.view(4, 16, D), torch.randint(0, V, (4, 16), generator=torch.Generator())
    ref = -torch.rand(4) * 100

    def dpo(w, impl="auto"):
        return LF.linear_dpo_loss(h, w, target, reference_logps=ref, impl=impl)

    got = torch.func.grad(dpo)(w)
    torch.testing.assert_close(got, torch.func.grad(lambda w: dpo(w, "reference"))(w))


def test_fused_under_a_transform_raises_naming_it():
    z, y, _, _ = _data()
    with pytest.raises(LossValueError, match=r"impl='fused' cannot .* torch\.func transform"):
        torch.func.grad(lambda z: LF.cross_entropy(z.float(), y, impl="fused"))(z)
