"""Fused linear + cross-entropy on CUDA: cuBLAS GEMMs and Triton epilogues, chunk by chunk.

The chunk loop, the planner and the ``autograd.Function`` are the backend-neutral engine of
``kernels/chunked/`` (written once, in torch ops, with the GEMMs done by torch, i.e. cuBLAS
here); this file supplies the epilogue (:class:`TritonEpilogue`, a
:class:`~losskit.kernels.chunked.Epilogue`) that runs on the logits of a chunk in place:

``rows`` (whole-row plan)
    The fused cross-entropy kernel of ``kernels/triton/cross_entropy.py`` (its launch plans,
    ``plans.py``: one program per row up to ``SINGLE_MAX`` (16K) classes, cooperative chunks of
    a row beyond, one read of the logits and one write of the gradient), launched on the chunk
    with the gradient written over the logits, the per-row losses kept in float32 and the
    reduction's ``1/D`` folded in.
``tile_stats`` / ``tile_grad`` (tiled plan, ``memory_budget='lean'``)
    Two small kernels for vocabulary tiles: (1) per row, the tile's online-softmax statistics
    (max, sum of exp, target logit, sum of ``w z'``) merged into the row's running ones;
    (2) per (row, block), the gradient ``r (a exp(z' - lse) - b [c == y] - (eps/V) w_c)`` times
    ``1 - tanh^2`` under a softcap, in place (``common.grad_block``, the CE kernels' formula),
    from the per-row coefficients of the engine (``kernels.rows.Coefficients``).

All arithmetic in float32; each gradient element is rounded once to the logits' dtype.

Equivalent to::

    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, W, b), target, weight,
                                      ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing)
"""

# No `from __future__ import annotations` here: triton 3.0 reads `tl.constexpr` from the
# kernels' annotations as objects, and string annotations make it treat them as runtime values.
import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._validate import CrossEntropyOptions
from ..chunked import Chunk, Epilogue, engine
from . import cross_entropy as ce
from .common import (
    INTERPRETED,
    check_device,
    device_guard,
    grad_block,
    load_logits,
    online_block,
    scale_grad,
    softcap_args,
    warps,
)
from .plans import DEFAULT_PLAN, Plan, make_plan

__all__ = ["EPILOGUE", "TritonEpilogue", "linear_cross_entropy", "INTERPRETED"]

#: Columns per program step of the tile kernels.
TILE_BLOCK = 4096

_F32 = torch.float32


# --------------------------------------------------------------------------------------------
# Kernels (tiled plan)
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile_stats_kernel(
    Z, stride_z, Y, W, ST, stride_st, width, c0, softcap, inv_softcap,
    BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTH: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
):  # fmt: skip
    """One program per row: merge the tile's statistics into ``ST[:, row]`` (online softmax)."""
    row = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    y_lane = (tl.load(Y + row) - c0).to(tl.int32)  # the target's column in this tile (or not)
    z_row = Z + row * stride_z
    # Step 1. The tile's max and sum of exp, rescaled as the max grows; target logit; sum w z'.
    m = -3.0e38
    se = 0.0
    zy = 0.0
    swz = 0.0
    for start in range(0, width, BLOCK):
        cols = start + lane
        ok = cols < width
        z, dz = load_logits(z_row + cols, ok, softcap, inv_softcap, HAS_SOFTCAP, True)
        zy += tl.sum(tl.where(cols == y_lane, z, 0.0), 0)
        m, se, swz = online_block(m, se, swz, z, ok, W + c0 + cols, HAS_WEIGHT, HAS_SMOOTH)
    # Step 2. Merge with the row's running statistics (earlier tiles).
    m_old = tl.load(ST + row)
    se_old = tl.load(ST + stride_st + row)
    m_all = tl.maximum(m_old, m)
    tl.store(ST + row, m_all)
    tl.store(ST + stride_st + row, se_old * tl.exp(m_old - m_all) + se * tl.exp(m - m_all))
    tl.store(ST + 2 * stride_st + row, tl.load(ST + 2 * stride_st + row) + zy)
    if HAS_SMOOTH:
        tl.store(ST + 3 * stride_st + row, tl.load(ST + 3 * stride_st + row) + swz)


@triton.jit
def _tile_grad_kernel(
    Z, stride_z, Y, W, LSE, RA, RB, RE, width, c0, softcap, inv_softcap,
    BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTH: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
):  # fmt: skip
    """Program (row, block): the gradient of one block of a tile, written over its logits.

    ``RA``, ``RB``, ``RE``: per row ``r a``, ``r (1-eps) w_y`` and ``r eps/V`` (the engine's
    ``kernels.rows.Coefficients``, the last two negated back). Rows that do not count come with
    ``lse = +inf`` and zero coefficients: their gradient is 0.
    """
    row = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + lane
    ok = cols < width
    y_lane = (tl.load(Y + row) - c0).to(tl.int32)
    ptrs = Z + row * stride_z + cols
    z, dz = load_logits(ptrs, ok, softcap, inv_softcap, HAS_SOFTCAP, True)
    if HAS_WEIGHT and HAS_SMOOTH:
        w = tl.load(W + c0 + cols, mask=ok, other=0.0)
    else:
        w = 1.0
    ra = tl.load(RA + row)
    rb = tl.load(RB + row)
    re = tl.load(RE + row)
    # grad_block computes scale * (exp(z - lse) a - b [c == y] - e w) (1 - tanh^2); with the
    # factor r already in ra, rb, re, pass a = ra, b = rb, e = re and scale 1.
    g = grad_block(
        z, dz, cols, y_lane, tl.load(LSE + row), ra, rb, w, re, 1.0, HAS_SMOOTH, HAS_SOFTCAP
    )
    tl.store(ptrs, g.to(Z.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------
# The epilogue
# --------------------------------------------------------------------------------------------


class TritonEpilogue(Epilogue):
    """The epilogues of the chunk loop as Triton launches (the row bookkeeping stays in torch)."""

    def __init__(
        self,
        weight: Tensor | None,
        v: int,
        opts: CrossEntropyOptions,
        ce_plan: Plan | None = None,
    ) -> None:
        """``ce_plan``: the cross-entropy kernel's launch plan for whole rows (default: the one
        :data:`~.plans.DEFAULT_PLAN` names for ``V``, see :func:`~.plans.make_plan`)."""
        super().__init__(weight, v, opts)
        self.opts = opts
        self.weight_sum = None if self.w is None else self.k.weight_sum.reshape(1)
        self._plan = ce_plan

    def _flags(self) -> dict:
        return dict(
            HAS_WEIGHT=self.w is not None,
            HAS_SMOOTH=self.eps > 0.0,
            HAS_SOFTCAP=self.cap is not None,
        )

    def rows(
        self, z: Tensor, ck: Chunk, loss_out: Tensor, want_grad: bool, z_out: Tensor | None = None
    ) -> None:
        """The fused cross-entropy kernel on the chunk, gradient over the logits (and the rows'
        z terms into ``z_out`` when given)."""
        c, v = z.shape
        if c == 0:
            return
        if self._plan is None:
            self._plan = make_plan(v, z.device, DEFAULT_PLAN)
        ce.launch(
            self._plan, self.opts, z, z if want_grad else None, ck.target, weight=self.w,
            mask=ck.mask, loss=loss_out, zterm=z_out, scale=ck.scale, weight_sum=self.weight_sum,
        )  # fmt: skip
        if want_grad and ck.row_scale is not None:
            z.mul_(ck.row_scale.unsqueeze(1))  # computed in float32, rounded once

    def tile_stats(self, z: Tensor, c0: int, ck: Chunk, st: Tensor) -> None:
        c, width = z.shape
        if c == 0:
            return
        block = min(TILE_BLOCK, triton.next_power_of_2(width))
        with device_guard(z.device):
            _tile_stats_kernel[(c,)](
                z, z.stride(0), ck.y, st if self.w is None else self.w, st, st.stride(0),
                width, c0, *softcap_args(self.cap), BLOCK=block, **self._flags(),
                num_warps=warps(block),
            )  # fmt: skip

    def tile_grad(self, z: Tensor, c0: int, ck: Chunk, lse: Tensor) -> None:
        c, width = z.shape
        if c == 0:
            return
        coef = self.coefficients(lse, ck)
        ra, rb = coef.ra.contiguous(), coef.neg_rb.neg()
        re = ra if coef.neg_re is None else coef.neg_re.neg()  # read with label smoothing only
        block = min(TILE_BLOCK, triton.next_power_of_2(width))
        with device_guard(z.device):
            _tile_grad_kernel[(c, triton.cdiv(width, block))](
                z, z.stride(0), ck.y, lse if self.w is None else self.w, lse.contiguous(),
                ra, rb, re, width, c0,
                *softcap_args(self.cap), BLOCK=block, **self._flags(), num_warps=warps(block),
            )  # fmt: skip

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` on the device, skipped there when it is 1 (no host sync)."""
        scale_grad(t, grad_output.reshape(1).to(_F32), False)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    x: Tensor, w: Tensor, target: Tensor, **options: object
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Chunked ``cross_entropy(x @ w.T + bias, target)`` on CUDA (or Triton's interpreter).

    .. math::
        \ell_i = \mathrm{CE}(x_i W^\top + b,\ y_i)

    The keyword arguments and result of :func:`losskit.kernels.chunked.linear_cross_entropy`
    (``bias, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, normalizer,
    mask, plan``, and optionally ``retain_graph, recompute, return_z_loss``: validated 2-D
    inputs, a :class:`~losskit.kernels.chunked.ChunkPlan`), whose ``epilogue`` is here
    :class:`TritonEpilogue` unless given: the Triton kernels of this module and of
    ``cross_entropy.py``.

    Example::

        >>> from losskit.kernels.chunked import plan_chunks
        >>> x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        >>> w = torch.randn(32000, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        >>> y = torch.randint(0, 32000, (4096,), device="cuda")
        >>> plan = plan_chunks(4096, 1024, 32000, x.dtype, "cuda", budget=1 << 30)
        >>> loss = linear_cross_entropy(x, w, y, bias=None, weight=None, ignore_index=-100,
        ...     label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
        ...     normalizer=None, mask=None, plan=plan)
        >>> loss.backward()
    """
    check_device(x.device, "input")
    options.setdefault("epilogue", TritonEpilogue)
    return engine.linear_cross_entropy(x, w, target, **options)


#: This backend's epilogue, as ``losskit.ops`` builds it for the engine's pure entries
EPILOGUE = TritonEpilogue
