"""The ops' bodies read no tensor value on the host: run on ``FakeTensorMode`` tensors (which
have shapes but no values) they complete, where an ``.item()``, a ``.tolist()``, a branch on a
value or an op whose output shape depends on values would raise. That is what keeps them free of
host synchronization on CUDA (safe to capture in a CUDA graph). The bodies are the CPU backend's
here; the chunked engines, the row rules and the reductions are the CUDA bodies' too.
"""

from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import pytest
import torch
from ops_cases import (
    CE_GRID,
    DISTILL_GRID,
    LCE_GRID,
    PREFERENCE_GRID,
    distill_opts,
    gen,
    lce_args,
    linear_distill_args,
    preference_args,
)
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)

import losskit.ops  # noqa: F401  (registers the ops)


def _body(module: str, name: str = "_op"):
    """The Python body of an op (what runs at run time), not its fake implementation."""
    return getattr(importlib.import_module(f"losskit.ops.{module}"), name)._init_fn


def _fake(args, mode):
    return tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)


def _shapes(out):
    return [tuple(t.shape) for t in out]


@pytest.fixture
def mode():
    with FakeTensorMode() as m:
        yield m


@pytest.mark.parametrize("case", LCE_GRID, ids=lambda c: f"{c[0]}x{c[2]}-{c[3]}-{c[9]}")
def test_linear_cross_entropy_body_runs_on_fake_tensors(case, mode):
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in lce_args(case))
    args = args[:-1] + (False,)  # validate=False: the index check is a host read by design
    out = _body("linear_cross_entropy")(*_fake(args, mode))
    n, d, v = case[0], case[1], case[2]
    assert _shapes(out)[:4] == [() if case[9] != "none" else (n,)] * 2 + [
        (n, d) if case[9] != "none" else (0,),
        (v, d) if case[9] != "none" else (0,),
    ]
    grad_rows = mode.from_tensor(torch.rand(n))
    back = _body("linear_cross_entropy", "_backward_op")(*_fake(args, mode), grad_rows)
    assert _shapes(back)[:2] == [(n, d), (v, d)]


_CPU_HOST_READS = (
    "a CPU row rule keeps a host read that saves a pass over the block (the cross-entropy lists "
    "the rows that do not count, to zero their gradient where their logits are not finite; the "
    "distillation rules ask whether every row counts): host code on host memory, no device to "
    "wait for; the CUDA bodies (Triton launches) have no such read: see the *_on_cuda tests"
)


@pytest.mark.xfail(raises=DataDependentOutputException, strict=True, reason=_CPU_HOST_READS)
@pytest.mark.parametrize("teacher", ["head", "logprobs"])
def test_cpu_linear_distillation_body_reads_one_value(teacher, mode):
    args = tuple(
        a.detach() if isinstance(a, torch.Tensor) else a
        for a in linear_distill_args(DISTILL_GRID[0], teacher)
    )
    _body("distillation", "_linear_op")(*_fake(args[:-1] + (False,), mode))


@pytest.mark.xfail(raises=DataDependentOutputException, strict=True, reason=_CPU_HOST_READS)
def test_cpu_distillation_body_reads_one_value(mode):
    s, t = torch.randn(12, 45, generator=gen(1)), torch.randn(12, 45, generator=gen(2))
    args = (s, t, None, None, None, "jsd", 0.3, 2.0, 0.0, 1.0, "mean", -100, [True, True], False)
    _body("distillation")(*_fake(args, mode))


@pytest.mark.xfail(raises=DynamicOutputShapeException, strict=True, reason=_CPU_HOST_READS)
def test_cpu_cross_entropy_body_reads_its_uncounted_rows(mode):
    n, v, *_ = CE_GRID[0]
    args = (torch.randn(n, v), torch.randint(0, v, (n,)), None, None, None, -100, 0.0, 0.0,
            None, "mean", True, False)  # fmt: skip
    _body("cross_entropy")(*_fake(args, mode))


# --------------------------------------------------------------------------------------------
# the CUDA bodies, on fake CUDA tensors (no GPU needed): the Triton launches are stubbed out
# (a launch is queued device work, not a host read); everything around them runs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cuda_mode():
    pytest.importorskip("triton")
    from losskit.kernels.triton import cross_entropy as tce

    launched: list[str] = []

    def launcher(kernel, grid):
        return lambda *args, **kwargs: launched.append(kernel.__name__)

    kernel_type = type(tce._ce_chunk_kernel)
    guard = contextlib.nullcontext
    with mock.patch.object(kernel_type, "__getitem__", launcher), mock.patch(
        "torch.cuda.device", lambda device: guard()
    ), FakeTensorMode() as m:  # fmt: skip
        m.launched = launched
        yield m


def _cuda(shape, *, high=None):
    if high is not None:
        return torch.randint(0, high, shape, device="cuda")
    return torch.randn(shape, device="cuda")


@pytest.mark.parametrize("case", CE_GRID[:5], ids=lambda c: f"{c[0]}x{c[1]}-{c[-1]}")
def test_cross_entropy_body_on_cuda(case, cuda_mode):
    n, v, dtype, weight, mask, norm, eps, zl, cap, reduction = case
    args = (
        _cuda((n, v)).to(dtype), _cuda((n,), high=v), _cuda((v,)).abs() if weight else None,
        _cuda((n,), high=2).bool() if mask else None, _cuda(()) if norm else None, -100, eps,
        zl, cap, reduction, True, False,
    )  # fmt: skip
    loss, zterm, grad = _body("cross_entropy")(*args)
    assert grad.shape == (n, v) and grad.device.type == "cuda"
    assert cuda_mode.launched  # the kernel was launched, not skipped


@pytest.mark.parametrize("case", DISTILL_GRID, ids=lambda c: f"{c[0]}-{c[4]}")
def test_distillation_body_on_cuda(case, cuda_mode):
    y = _cuda((12,), high=45) if case[5] else None
    args = (_cuda((12, 45)), _cuda((12, 45)), y, None, None, *distill_opts(case), [True, True],
            False)  # fmt: skip
    loss, gs, gt = _body("distillation")(*args)
    assert gs.shape == gt.shape == (12, 45)
    assert cuda_mode.launched


@pytest.mark.parametrize("case", PREFERENCE_GRID, ids=lambda c: f"{c[0]}-{c[1]}")
def test_linear_preference_body_runs_on_fake_tensors(case, mode):
    """The preference engine: the rule's factor (autograd on a chunk's few numbers), the gathers
    of a pair's rows, the two sweeps of a small budget: no host read. (On fake CUDA tensors a
    CPU build of torch cannot take a view, which the engine's chunks are: the CPU body here.)"""
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in preference_args(case))
    args = _fake(args[:-1] + (False,), mode)
    loss, logp, dx, dw, db = _body("linear_preference")(*args)
    assert logp.shape == (20,) and loss.shape == ((2,) if case[1] == "none" else ())
    assert dx.shape == ((20, 6) if case[1] != "none" else (0,))
    if case[1] == "none":
        back = _body("linear_preference", "_backward_op")(*args, mode.from_tensor(torch.rand(2)))
        assert _shapes(back)[:2] == [(20, 6), (30, 6)]
