"""The input grids of the op tests (``test_opcheck``, ``test_fake_bodies``): small shapes that
cover every option of each op, and the op arguments they make."""

from __future__ import annotations

import torch


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels(n: int, v: int, seed: int) -> torch.Tensor:
    y = torch.randint(0, v, (n,), generator=gen(seed))
    y[::3] = -100
    return y


CE_GRID = [
    # (n, v, dtype, weight, mask, normalizer, smoothing, z_loss, softcap, reduction)
    (13, 37, torch.float32, False, False, False, 0.0, 0.0, None, "mean"),
    (13, 37, torch.float32, True, True, False, 0.1, 0.0, None, "sum"),
    (9, 50, torch.float32, False, True, True, 0.0, 1e-3, 4.0, "mean"),
    (9, 50, torch.float32, True, False, False, 0.2, 1e-3, None, "none"),
    (7, 33, torch.bfloat16, False, False, False, 0.0, 0.0, 3.0, "mean"),
    (0, 20, torch.float32, False, False, False, 0.0, 0.0, None, "sum"),
]


LCE_GRID = [
    # (n, d, v, dtype, bias, weight, mask, z_loss, softcap, reduction, chunk_size)
    (19, 8, 40, torch.float32, False, False, False, 0.0, None, "mean", 5),
    (19, 8, 40, torch.float32, True, True, True, 1e-3, None, "sum", 7),
    (11, 6, 30, torch.float32, True, False, True, 0.0, 3.0, "none", 4),
    (11, 6, 30, torch.bfloat16, False, False, False, 0.0, None, "mean", None),
]


def lce_args(case, seed=0):
    n, d, v, dtype, bias, weight, mask, zl, cap, reduction, chunk = case
    x = torch.randn(n, d, generator=gen(seed)).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen(seed + 1)) / 3).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=gen(seed + 2)) / 3).to(dtype).requires_grad_() if bias else None
    want = [True, True, bias]
    return (
        x, w, b, labels(n, v, seed + 3),
        torch.rand(v, generator=gen(seed + 4)) + 0.5 if weight else None,
        torch.arange(n) % 3 != 2 if mask else None, None, -100, 0.05, zl, cap, reduction, chunk,
        "default", "auto", want, True,
    )  # fmt: skip


DISTILL_GRID = [
    # (divergence, beta, temperature, alpha, reduction, target, mask)
    ("forward_kl", 0.5, 1.0, 0.0, "mean", False, False),
    ("jsd", 0.3, 2.0, 0.0, "sum", False, True),
    ("reverse_kl", 0.5, 1.0, 0.5, "none", True, False),
    ("tvd", 0.5, 1.0, 0.0, "mean", False, False),
]


def distill_opts(case):
    div, beta, temp, alpha, reduction, *_ = case
    return (div, beta, temp, alpha, 1.0, reduction, -100)


def linear_distill_args(case, teacher: str):
    *_, target, mask = case
    n, d, v = 14, 8, 40
    xs = torch.randn(n, d, generator=gen(1)).requires_grad_()
    ws = (torch.randn(v, d, generator=gen(2)) / 3).requires_grad_()
    if teacher == "head":
        xt, wt, tl = torch.randn(n, 5, generator=gen(3)), torch.randn(v, 5, generator=gen(4)), None
    else:
        xt = wt = None
        tl = torch.randn(n, v, generator=gen(5)).log_softmax(-1)
    want = [True, True, False, False, False, False, False]
    return (
        xs, ws, None, xt, wt, None, tl, labels(n, v, 6) if target else None,
        torch.arange(n) % 3 != 0 if mask else None, None, *distill_opts(case), 4, "default",
        want, True,
    )  # fmt: skip


def _rules():
    from losskit.functional import preference as P

    return {
        "dpo": P.DPO(0.1, "sigmoid", 0.1),
        "orpo": P.ORPO(0.2),
        "simpo": P.CPO(2.0, 0.0, 0.5, 0.5),
        "kto": P.KTO(0.1, torch.tensor(0.2), 1.0, 1.5),
        "grpo": P.GRPO(0.04, 0.2, 0.28, "dapo", None, None),
    }


PREFERENCE_GRID = [
    # (rule, reduction, chunk_size, memory_budget, bias)
    ("dpo", "mean", 9, "default", True),
    ("orpo", "none", None, "default", False),
    ("simpo", "sum", None, "1", False),  # a budget of one row: two sweeps
    ("kto", "mean", 5, "default", False),
    ("grpo", "mean", 5, "default", True),
]


def preference_args(case, seed=0):
    """The positional arguments of ``losskit::linear_preference`` (4 sequences of 5 tokens)."""
    from losskit.ops.linear_preference import encode

    name, reduction, chunk, budget, bias = case
    s, t, d, v = 4, 5, 6, 30
    x = torch.randn(s * t, d, generator=gen(seed)).requires_grad_()
    w = (torch.randn(v, d, generator=gen(seed + 1)) / 3).requires_grad_()
    b = (torch.randn(v, generator=gen(seed + 2)) / 3).requires_grad_() if bias else None
    y = labels(s * t, v, seed + 3)
    counted = (y != -100).reshape(s, t)
    reference = desirable = advantages = old = None
    if name in ("dpo", "kto"):
        reference = -torch.rand(s, generator=gen(seed + 4)) * 5
    if name == "kto":
        desirable = torch.tensor([True, False, False, True])
    if name == "grpo":
        advantages = torch.randn(s, generator=gen(seed + 5))
        old = -torch.rand(s, t, generator=gen(seed + 6))
        reference = -torch.rand(s, t, generator=gen(seed + 7))
    spec, params, tensor = encode(_rules()[name])
    return (
        x, w, b, y, counted, reference, desirable, advantages, old, tensor, spec, params,
        reduction, -100, chunk, budget, [True, True, bias], True,
    )  # fmt: skip
