"""``torch.library.opcheck`` on every losskit op, on a grid of inputs.

opcheck runs torch's own checks of a custom op: the schema (no undeclared mutation or aliasing),
the fake implementation against the real outputs (shapes, dtypes, strides), the autograd
registration, and AOT dispatch (static and dynamic shapes: the path ``torch.compile`` takes).
"""

from __future__ import annotations

import pytest
import torch
from ops_cases import (
    CE_GRID,
    DISTILL_GRID,
    LCE_GRID,
    PREFERENCE_GRID,
    distill_opts,
    gen,
    labels,
    lce_args,
    linear_distill_args,
    preference_args,
)  # fmt: skip

import losskit.ops  # noqa: F401  (registers the ops)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

OPS = torch.ops.losskit


@pytest.mark.parametrize("case", CE_GRID, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[-1]}")
def test_cross_entropy_op(case):
    n, v, dtype, weight, mask, norm, eps, zl, cap, reduction = case
    z = torch.randn(n, v, generator=gen(1)).to(dtype).requires_grad_()
    args = (
        z, labels(n, v, 2), torch.rand(v, generator=gen(3)) + 0.5 if weight else None,
        torch.arange(n) % 4 != 1 if mask else None,
        torch.tensor(5.0) if norm else None, -100, eps, zl, cap, reduction, True, True,
    )  # fmt: skip
    torch.library.opcheck(OPS.cross_entropy.default, args)


@pytest.mark.parametrize("case", LCE_GRID, ids=lambda c: f"{c[0]}x{c[2]}-{c[3]}-{c[9]}")
def test_linear_cross_entropy_op(case):
    torch.library.opcheck(OPS.linear_cross_entropy.default, lce_args(case))


def test_linear_cross_entropy_backward_op():
    args = lce_args(LCE_GRID[2])
    grad_rows = torch.rand(args[0].shape[0], generator=gen(9))
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.linear_cross_entropy_backward.default, (*detached, grad_rows))


@pytest.mark.parametrize("case", DISTILL_GRID, ids=lambda c: f"{c[0]}-{c[4]}")
def test_distillation_op(case):
    *_, target, mask = case
    n, v = 12, 45
    s = torch.randn(n, v, generator=gen(1)).requires_grad_()
    t = torch.randn(n, v, generator=gen(2)).requires_grad_()
    args = (
        s, t, labels(n, v, 3) if target else None, torch.arange(n) % 4 != 0 if mask else None,
        None, *distill_opts(case), [True, True], True,
    )  # fmt: skip
    torch.library.opcheck(OPS.distillation.default, args)


@pytest.mark.parametrize("teacher", ["head", "logprobs"])
@pytest.mark.parametrize("case", DISTILL_GRID, ids=lambda c: f"{c[0]}-{c[4]}")
def test_linear_distillation_op(case, teacher):
    torch.library.opcheck(OPS.linear_distillation.default, linear_distill_args(case, teacher))


def test_linear_distillation_backward_op():
    args = linear_distill_args(DISTILL_GRID[2], "head")
    grad_rows = torch.rand(args[0].shape[0], generator=gen(9))
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.linear_distillation_backward.default, (*detached, grad_rows))


@pytest.mark.parametrize("case", PREFERENCE_GRID, ids=lambda c: f"{c[0]}-{c[1]}")
def test_linear_preference_op(case):
    torch.library.opcheck(OPS.linear_preference.default, preference_args(case))


def test_linear_preference_backward_op():
    args = preference_args(PREFERENCE_GRID[1])
    grad_groups = torch.rand(2, generator=gen(9))
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.linear_preference_backward.default, (*detached, grad_groups))


def test_rules_travel_as_op_arguments():
    """Every rule is built again from its encoding, with the same arguments."""
    from ops_cases import _rules

    from losskit.ops.linear_preference import decode, encode

    for rule in _rules().values():
        again = decode(*encode(rule))
        assert type(again) is type(rule) and again.args() == rule.args()


def test_linear_preference_op_under_a_dispatch_mode():
    """The body differentiates the rule under a TorchDispatchMode too (the compiled runtime
    checks its first call's custom ops under one; FlopCounterMode, a profiler's), where the
    dispatcher skips the autograd and functorch keys: the same numbers as without."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        ops: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    args = preference_args(PREFERENCE_GRID[0])
    plain = OPS.linear_preference.default(*args)
    with Seen() as seen:
        moded = OPS.linear_preference.default(*args)
    assert "losskit.linear_preference.default" in seen.ops
    for p, m in zip(plain, moded, strict=True):
        torch.testing.assert_close(m, p, rtol=0, atol=0)
