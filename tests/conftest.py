"""Shared helpers for the test suite: torch is the oracle.

Every parity test runs a losskit function and its torch counterpart on the same inputs, with the
same upstream gradient, and compares the forward value and the gradients:

- float64 and float32: equal to torch within a per-dtype tolerance (:data:`TOLERANCES`);
- bfloat16 / float16: an *error budget*: losskit may be no further from a float64 truth (torch run
  on the inputs widened to float64) than torch's own low-precision result, plus one unit of
  rounding in the low-precision dtype.

The tolerances are for the reference path (``functional/``, plain torch ops in torch's order). A
fused path (``kernels/``) orders its float32 arithmetic differently, and torch's own float32
result changes with the SIMD width its CPU kernels pick (``ATEN_CPU_CAPABILITY``), so fused
paths hold float32 to the error budget as well (``check_against_torch(..., budget=True)``).
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Literal

import pytest
import torch
from hypothesis import Phase, settings
from torch import Tensor

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before any
# kernel is defined (`make test` exports it too; this covers a bare `pytest`).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Inductor's on-disk cache of compiled CPU kernels, one per ATEN_CPU_CAPABILITY: kernels cached
# by a run at one SIMD width and loaded by a run forced to another gave garbage and a SystemError
# (torch 2.13, tests/ops under avx2 after a default run); a fresh cache per width does not.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"losskit-inductor-{os.getuid()}-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
    ),
)

# Property tests report the first failing example as drawn, without shrinking it: on the
# interpreted kernels one shrink took Hypothesis over 6 minutes (past the suite's 10-minute
# budget), and every property here draws small shapes with a printed seed, so the example as
# drawn reproduces. A test's own @settings override the rest of this profile.
settings.register_profile(
    "losskit", phases=(Phase.explicit, Phase.reuse, Phase.generate), print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "losskit"))

LOW_PRECISION = (torch.bfloat16, torch.float16)

#: rtol/atol for comparing a float32/float64 result with torch's on the same inputs.
TOLERANCES = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
}

#: the keyword arguments of a fused cross-entropy kernel (``losskit/kernels/CONTRACT.md``), off
KERNEL_DEFAULTS = dict(
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    reduction="mean",
    normalizer=None,
    mask=None,
    inplace_backward=False,
    return_z_loss=False,
)

#: the error budget of a fused path's float32 results (see :func:`check_against_torch`)
FUSED_F32_BUDGET = dict(ulps=4.0, scale="tensor")

#: the dtypes every parity grid runs over
DTYPES = (torch.float64, torch.float32, torch.bfloat16)
REDUCTIONS = ("none", "mean", "sum")

# The tests run many tiny ops; on a small shared machine torch's intra-op thread pool makes each
# of them ~50x slower (threads wait on each other). LOSSKIT_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("LOSSKIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------


def assert_close_to_torch(actual: Tensor, expected: Tensor, *, what: str = "value") -> None:
    """``actual`` equals torch's ``expected``: same shape and dtype, values within tolerance."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = TOLERANCES.get(actual.dtype, TOLERANCES[torch.float32])
    torch.testing.assert_close(
        actual, expected, equal_nan=True, msg=lambda m: f"{what} differs from torch: {m}", **tol
    )


def assert_within_budget(
    actual: Tensor,
    torch_lowp: Tensor,
    truth: Tensor,
    *,
    what: str = "value",
    ulps: float = 1.0,
    scale: Literal["element", "tensor"] = "element",
) -> None:
    """``actual`` is elementwise no further from ``truth`` than torch's result in the same dtype.

    ``torch_lowp`` is torch's result in ``actual``'s dtype, ``truth`` the same computation in
    float64. The slack on top of torch's error is ``ulps`` rounding steps of the dtype (``eps``
    times a magnitude), plus the smallest normal number so that an exact 0 may stay 0:

    - ``scale='element'``: at the true value itself. Right for bfloat16 / float16 results that are
      computed in float32 and rounded once (torch may round several times): the final rounding
      dominates.
    - ``scale='tensor'``: at the largest ``|truth|`` of the tensor, for every row (every dim but
      the first: one sample) whose truth is not all zero; a row that does not count (all zero)
      gets none. Right for float32 results of a fused path, where no final rounding dominates: a
      gradient element is a difference of terms at the scale ``r a`` of the upstream, reduction
      factor and class weight (softmax probability times ``a``, minus the one-hot and smoothing
      terms), built from row-wide reductions (max, sum of exponentials, logsumexp) whose order the
      kernel and torch (at the SIMD width it picks) choose differently. Their rounding is ``eps``
      times that scale whatever the element's own size, so an element near 0 cannot be resolved
      more finely by either implementation. Not the row's own largest element: in a confident
      row (``p_y`` near 1) every element is small, yet ``g_y = r (a p_y - b)`` still cancels
      terms of size ``r a``; the tensor's largest element (an unconfident row's ``r a (1 - p_y)``)
      is the observable stand-in for ``r a``, which varies little between rows. A per-sample loss
      (``lse - z_y``) likewise rounds at the scale of its logits, which the batch's largest loss
      stands for.
    """
    assert actual.shape == torch_lowp.shape == truth.shape, what
    assert actual.dtype == torch_lowp.dtype, f"{what}: dtype {actual.dtype} != {torch_lowp.dtype}"
    ours = actual.double()
    theirs = torch_lowp.double()
    finite = truth.isfinite()
    # NaN and inf in the truth must be reproduced exactly
    torch.testing.assert_close(ours[~finite], truth[~finite], equal_nan=True, rtol=0, atol=0)
    if not bool(finite.any()):
        return
    magnitude = truth.abs().where(finite, 0.0)
    if scale == "tensor":
        counts = magnitude.flatten(1).amax(1) if truth.dim() >= 2 else magnitude
        counts = counts.reshape(counts.shape + (1,) * (truth.dim() - counts.dim()))
        magnitude = torch.where(counts > 0, magnitude.amax(), 0.0)
    elif scale != "element":
        raise ValueError(f"scale must be 'element' or 'tensor', got {scale!r}")
    magnitude = magnitude.expand(truth.shape)[finite]
    info = torch.finfo(actual.dtype)
    err_ours = (ours - truth).abs()[finite]
    # where torch overflows (inf) or gives NaN at a finite truth, any error is within budget
    err_theirs = (theirs - truth).abs()[finite].nan_to_num(nan=torch.inf, posinf=torch.inf)
    budget = err_theirs + ulps * info.eps * magnitude + info.tiny
    worst = (err_ours - budget).argmax()
    assert bool((err_ours <= budget).all()), (
        f"{what}: losskit's {actual.dtype} error {err_ours[worst].item():.3g} exceeds torch's "
        f"{err_theirs[worst].item():.3g} (+{ulps:g} ulp at the {scale} scale "
        f"{magnitude[worst].item():.3g}) at flat position {worst.item()} of the finite elements"
    )


# --------------------------------------------------------------------------------------------
# running a loss forward and backward
# --------------------------------------------------------------------------------------------


def upstream_like(out: Tensor) -> Tensor:
    """A fixed upstream gradient for ``out``: values in [0.5, 1.5), rounded to out's dtype."""
    gen = torch.Generator().manual_seed(1234)
    return (torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5).to(out.dtype)


def forward_backward(
    fn: Callable[..., Tensor],
    args: Sequence[object],
    kwargs: dict | None = None,
    *,
    wrt: Sequence[int] = (0,),
    upstream: Tensor | None = None,
) -> tuple[Tensor, list[Tensor | None]]:
    """``fn(*args, **kwargs)`` with fresh leaf copies of ``args[i]`` for ``i`` in ``wrt``.

    Backpropagates ``upstream`` (default :func:`upstream_like`) and returns the detached output
    and the gradient of each ``args[i]``.
    """
    args = list(args)
    leaves = []
    for i in wrt:
        leaf = args[i].detach().clone().requires_grad_(True)
        args[i] = leaf
        leaves.append(leaf)
    out = fn(*args, **(kwargs or {}))
    if upstream is None:
        upstream = upstream_like(out)
    if out.requires_grad:
        out.backward(upstream.to(out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


def _widen(value: object) -> object:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.detach().to(torch.float64)
    return value


def check_against_torch(
    ours: Callable[..., Tensor],
    theirs: Callable[..., Tensor],
    args: Sequence[object],
    kwargs: dict | None = None,
    *,
    torch_kwargs: dict | None = None,
    wrt: Sequence[int] = (0,),
    budget: bool = False,
) -> Tensor:
    """Compare ``ours(*args, **kwargs)`` with ``theirs(*args, **torch_kwargs)``, value and grads.

    ``torch_kwargs`` defaults to ``kwargs``. float32/float64 use :func:`assert_close_to_torch`;
    bfloat16/float16 use :func:`assert_within_budget` against torch run in float64.
    ``budget=True`` (for fused paths) holds float32 to the error budget too, instead of to
    torch's float32 bits: :data:`FUSED_F32_BUDGET`, four rounding steps at the tensor's scale
    (see :func:`assert_within_budget`). The fused gradient
    ``r (a e / S - b onehot(y) - (eps / V) w) (1 - tanh^2)`` rounds up to eight times at that
    scale (exp2, the division, the products by ``a``, ``r`` and the softcap factor, the two
    differences, ``1 - tanh^2``), each by at most half a step, and torch's own error may happen
    to be 0 at that element. Returns losskit's
    output (for further checks).
    """
    kwargs = kwargs or {}
    torch_kwargs = kwargs if torch_kwargs is None else torch_kwargs
    out, grads = forward_backward(ours, args, kwargs, wrt=wrt)
    ref, ref_grads = forward_backward(theirs, args, torch_kwargs, wrt=wrt)
    names = [f"gradient of argument {i}" for i in wrt]
    if out.dtype in LOW_PRECISION or (budget and out.dtype == torch.float32):
        lowp = out.dtype in LOW_PRECISION
        budget = dict(ulps=1.0, scale="element") if lowp else FUSED_F32_BUDGET
        upstream = upstream_like(out).to(torch.float64)
        wide_args = [_widen(a) for a in args]
        wide_kwargs = {k: _widen(v) for k, v in torch_kwargs.items()}
        truth, truth_grads = forward_backward(
            theirs, wide_args, wide_kwargs, wrt=wrt, upstream=upstream
        )
        assert_within_budget(out, ref, truth, what="forward", **budget)
        for g, rg, tg, name in zip(grads, ref_grads, truth_grads, names, strict=True):
            assert_within_budget(g, rg, tg, what=name, **budget)
    else:
        assert_close_to_torch(out, ref, what="forward")
        for g, rg, name in zip(grads, ref_grads, names, strict=True):
            if rg is None:
                assert g is None or not bool(g.any()), name
            else:
                assert_close_to_torch(g, rg, what=name)
    return out


def check_mixed_dtypes(ours, theirs, args, kwargs, *, wrt=(0,)) -> None:
    """Mixed dtypes: torch's result dtype and shape; no further from a float64 truth than torch.

    Torch rounds some intermediates to the narrower dtype (a bfloat16 squared error before a
    float32 weight multiplies it); losskit computes in the promoted dtype and rounds once. So
    each element either equals torch's within :data:`TOLERANCES` or, where torch's rounding put
    it further off, is no further from the truth than torch's.
    """
    wide = [a.detach().double() if a.is_floating_point() else a for a in args]
    truth, truth_grads = forward_backward(theirs, wide, kwargs, wrt=wrt)
    upstream = upstream_like(truth)  # one upstream gradient for all three runs
    out, grads = forward_backward(ours, args, kwargs, wrt=wrt, upstream=upstream)
    ref, ref_grads = forward_backward(theirs, args, kwargs, wrt=wrt, upstream=upstream)
    names = ["forward"] + [f"gradient of argument {i}" for i in wrt]
    outs = zip([out, *grads], [ref, *ref_grads], [truth, *truth_grads], names, strict=True)
    for a, r, t, what in outs:
        assert a.dtype == r.dtype and a.shape == r.shape, (
            f"{what}: {a.dtype} {tuple(a.shape)}, torch's {r.dtype} {tuple(r.shape)}"
        )
        near = torch.zeros(a.shape, dtype=torch.bool)
        if a.dtype in TOLERANCES:
            near = torch.isclose(a, r, equal_nan=True, **TOLERANCES[a.dtype])
        assert_within_budget(a[~near], r[~near], t[~near], what=what)


# --------------------------------------------------------------------------------------------
# signatures
# --------------------------------------------------------------------------------------------


def assert_torch_signature(ours: Callable, theirs: Callable, newer: Sequence[str] = ()) -> None:
    """Torch's parameters appear in the same order, kind and default; extras keyword-only.

    ``newer``: positional parameters that a newer torch appends (e.g. ``weight`` of ``mse_loss``)
    and the installed one lacks; losskit has them where the newer torch does, right after the
    installed torch's parameters.
    """
    ours_params = list(inspect.signature(ours).parameters.values())
    theirs_params = list(inspect.signature(theirs).parameters.values())
    for i, p in enumerate(theirs_params):
        assert i < len(ours_params), f"{ours.__name__} lacks torch's parameter {p.name!r}"
        q = ours_params[i]
        assert q.name == p.name, f"parameter {i} is {q.name!r}, torch has {p.name!r}"
        assert q.kind == p.kind, f"{p.name}: kind {q.kind} != torch's {p.kind}"
        assert q.default == p.default, f"{p.name}: default {q.default!r} != torch's {p.default!r}"
    extras = ours_params[len(theirs_params) :]
    for name, q in zip(newer, extras, strict=False):
        assert q.name == name, f"losskit has {q.name!r} where a newer torch has {name!r}"
        assert q.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{name}: kind {q.kind}"
    for q in extras[len(newer) :]:
        assert q.kind is inspect.Parameter.KEYWORD_ONLY, f"losskit's {q.name!r} not keyword-only"


def torch_has_parameter(fn: Callable, name: str) -> bool:
    """Whether the installed torch's ``fn`` takes ``name`` (e.g. ``weight`` on ``mse_loss``)."""
    return name in inspect.signature(fn).parameters
