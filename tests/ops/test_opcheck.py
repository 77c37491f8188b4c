"""``torch.library.opcheck`` on every losskit op, on a grid of inputs.

opcheck runs torch's own checks of a custom op: the schema (no undeclared mutation or aliasing),
the fake implementation against the real outputs (shapes, dtypes, strides), the autograd
registration, and AOT dispatch (static and dynamic shapes: the path ``torch.compile`` takes).
"""

from __future__ import annotations

import pytest
import torch

import losskit.ops  # noqa: F401  (registers the ops)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OPS = torch.ops.losskit


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _target(n: int, v: int, seed: int) -> torch.Tensor:
    y = torch.randint(0, v, (n,), generator=_gen(seed))
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


@pytest.mark.parametrize("case", CE_GRID, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[-1]}")
def test_cross_entropy_op(case):
    n, v, dtype, weight, mask, norm, eps, zl, cap, reduction = case
    z = torch.randn(n, v, generator=_gen(1)).to(dtype).requires_grad_()
    args = (
        z, _target(n, v, 2), torch.rand(v, generator=_gen(3)) + 0.5 if weight else None,
        torch.arange(n) % 4 != 1 if mask else None,
        torch.tensor(5.0) if norm else None, -100, eps, zl, cap, reduction, True, True,
    )  # fmt: skip
    torch.library.opcheck(OPS.cross_entropy.default, args)


LCE_GRID = [
    # (n, d, v, dtype, bias, weight, mask, z_loss, softcap, reduction, chunk_size)
    (19, 8, 40, torch.float32, False, False, False, 0.0, None, "mean", 5),
    (19, 8, 40, torch.float32, True, True, True, 1e-3, None, "sum", 7),
    (11, 6, 30, torch.float32, True, False, True, 0.0, 3.0, "none", 4),
    (11, 6, 30, torch.bfloat16, False, False, False, 0.0, None, "mean", None),
]


def _lce_args(case, seed=0):
    n, d, v, dtype, bias, weight, mask, zl, cap, reduction, chunk = case
    x = torch.randn(n, d, generator=_gen(seed)).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=_gen(seed + 1)) / 3).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=_gen(seed + 2)) / 3).to(dtype).requires_grad_() if bias else None
    want = [True, True, bias]
    return (
        x, w, b, _target(n, v, seed + 3),
        torch.rand(v, generator=_gen(seed + 4)) + 0.5 if weight else None,
        torch.arange(n) % 3 != 2 if mask else None, None, -100, 0.05, zl, cap, reduction, chunk,
        "default", "auto", want, True,
    )  # fmt: skip


@pytest.mark.parametrize("case", LCE_GRID, ids=lambda c: f"{c[0]}x{c[2]}-{c[3]}-{c[9]}")
def test_linear_cross_entropy_op(case):
    torch.library.opcheck(OPS.linear_cross_entropy.default, _lce_args(case))


def test_linear_cross_entropy_backward_op():
    args = _lce_args(LCE_GRID[2])
    grad_rows = torch.rand(args[0].shape[0], generator=_gen(9))
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.linear_cross_entropy_backward.default, (*detached, grad_rows))


DISTILL_GRID = [
    # (divergence, beta, temperature, alpha, reduction, target, mask)
    ("forward_kl", 0.5, 1.0, 0.0, "mean", False, False),
    ("jsd", 0.3, 2.0, 0.0, "sum", False, True),
    ("reverse_kl", 0.5, 1.0, 0.5, "none", True, False),
    ("tv", 0.5, 1.0, 0.0, "mean", False, False),
]


def _opts(case):
    div, beta, temp, alpha, reduction, *_ = case
    return (div, beta, temp, alpha, 1.0, reduction, -100)


@pytest.mark.parametrize("case", DISTILL_GRID, ids=lambda c: f"{c[0]}-{c[4]}")
def test_distillation_op(case):
    *_, target, mask = case
    n, v = 12, 45
    s = torch.randn(n, v, generator=_gen(1)).requires_grad_()
    t = torch.randn(n, v, generator=_gen(2)).requires_grad_()
    args = (
        s, t, _target(n, v, 3) if target else None, torch.arange(n) % 4 != 0 if mask else None,
        None, *_opts(case), [True, True], True,
    )  # fmt: skip
    torch.library.opcheck(OPS.distillation.default, args)


def _linear_distill_args(case, teacher: str):
    *_, target, mask = case
    n, d, v = 14, 8, 40
    xs = torch.randn(n, d, generator=_gen(1)).requires_grad_()
    ws = (torch.randn(v, d, generator=_gen(2)) / 3).requires_grad_()
    if teacher == "head":
        xt, wt, tl = torch.randn(n, 5, generator=_gen(3)), torch.randn(v, 5, generator=_gen(4)), None
    else:
        xt = wt = None
        tl = torch.randn(n, v, generator=_gen(5)).log_softmax(-1)
    want = [True, True, False, False, False, False, False]
    return (
        xs, ws, None, xt, wt, None, tl, _target(n, v, 6) if target else None,
        torch.arange(n) % 3 != 0 if mask else None, None, *_opts(case), 4, "default", want, True,
    )  # fmt: skip


@pytest.mark.parametrize("teacher", ["head", "logprobs"])
@pytest.mark.parametrize("case", DISTILL_GRID, ids=lambda c: f"{c[0]}-{c[4]}")
def test_linear_distillation_op(case, teacher):
    torch.library.opcheck(OPS.linear_distillation.default, _linear_distill_args(case, teacher))


def test_linear_distillation_backward_op():
    args = _linear_distill_args(DISTILL_GRID[2], "head")
    grad_rows = torch.rand(args[0].shape[0], generator=_gen(9))
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.linear_distillation_backward.default, (*detached, grad_rows))
