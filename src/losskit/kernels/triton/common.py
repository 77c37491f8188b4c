"""What the Triton kernels of several losses share: the row formulas, the backward scaling and
the launch helpers.

The ``@triton.jit`` functions here are the Triton counterpart of ``kernels/rows.py`` (the same
two lines, in the same notation: ``w`` the class weights, ones if None, ``W = sum w``, ``eps``
the label smoothing, ``c`` the z-loss coefficient, ``r`` the row's factor in the reduced loss)::

    loss = (1 - eps) w_y (lse - z'_y) + (eps / V) (W lse - sum_c w_c z'_c) + c lse^2
    g_k  = r (a p_k - (1 - eps) w_y [k == y] - (eps / V) w_k) (1 - tanh^2(z_k / s))
    a    = (1 - eps) w_y + (eps / V) W + 2 c lse,        p = softmax(z')

:func:`row_terms` gives the first line and the row's coefficients, :func:`grad_block` the second
for one block of a row; every kernel that writes a cross-entropy gradient (the launch plans of
``cross_entropy.py``, the tile kernels of ``linear_cross_entropy.py``) calls these two.
:func:`load_logits` reads a block as float32 ``z'`` (softcapped) and :func:`online_block` folds
it into a row's running online-softmax statistics.

A loss's backward multiplies the gradient it computed in the forward by ``grad_output`` with
:func:`scale_grad`, which skips factors of exactly 1 on the device (no host sync).
"""

# No `from __future__ import annotations` here: triton 3.0 reads `tl.constexpr` from the
# kernels' annotations as objects, and string annotations make it treat them as runtime values.
import contextlib
from functools import cache

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "INTERPRETED",
    "SCALE_BLOCK",
    "check_device",
    "device_guard",
    "grad_block",
    "increment_version",
    "load_logits",
    "online_block",
    "row_terms",
    "scale_grad",
    "scale_grad_kernel",
    "sm_count",
    "softcap_args",
    "tanh",
    "warps",
]

#: Elements per tile of the backward scaling kernel.
SCALE_BLOCK = 4096


# --------------------------------------------------------------------------------------------
# Device functions: the row formulas
# --------------------------------------------------------------------------------------------


@triton.jit
def tanh(x):
    """``(tanh(x), 1 - tanh(x)^2)`` in float32, each without cancellation.

    Near 0 an odd Taylor polynomial (``1 - t^2 >= 0.94`` there); else both from
    ``e = exp(-2|x|)``: ``t = (1 - e) / (1 + e)`` and ``1 - t^2 = 4e / (1 + e)^2``. The second
    is the softcap's chain-rule factor: formed as ``1 - t * t`` it would lose a relative
    ``2 eps / (1 - t^2)`` to the rounding of ``t`` (~200 eps at ``|x| = 3``).
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    one_e = 1.0 + e
    far = (1.0 - e) / one_e
    x2 = x * x
    near = ax * (
        1.0
        + x2
        * (
            -0.3333333333333333
            + x2 * (0.13333333333333333 + x2 * (-0.05396825396825397 + x2 * 0.021869488536155203))
        )
    )
    is_near = ax < 0.25
    t = tl.where(is_near, near, far)
    d = tl.where(is_near, 1.0 - near * near, 4.0 * e / (one_e * one_e))
    return tl.where(x < 0.0, -t, t), d


@triton.jit
def load_logits(ptrs, ok, softcap, inv_softcap, HAS_SOFTCAP: tl.constexpr, STREAM: tl.constexpr):
    """Load a block of logits as float32 ``z'`` (softcapped), ``-inf`` outside ``ok``.

    Also returns ``dz = 1 - tanh^2(z / s)``, the softcap's chain-rule factor ``d z' / d z`` for
    :func:`grad_block` (``z`` itself, unused, without a softcap).
    """
    if STREAM:  # read exactly once: do not let these lines push reusable data out of L2
        z = tl.load(ptrs, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
    else:
        z = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    dz = z
    if HAS_SOFTCAP:
        th, dz = tanh(z * inv_softcap)
        z = softcap * th
    z = tl.where(ok, z, float("-inf"))
    return z, dz


@triton.jit
def online_block(m, se, swz, z, ok, w_ptrs, HAS_WEIGHT: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """Fold one block of ``z'`` into a row's running online-softmax statistics.

    ``m`` is the running max, ``se`` the sum of ``exp(z' - m)`` (rescaled as ``m`` grows), ``swz``
    the sum of ``w z'`` over the valid lanes ``ok`` (label smoothing only; ``w`` read from
    ``w_ptrs`` with class weights, else 1). Returns the updated ``(m, se, swz)``.
    """
    m_new = tl.maximum(m, tl.max(z, 0))
    se = se * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
    if HAS_SMOOTH:
        if HAS_WEIGHT:
            w = tl.load(w_ptrs, mask=ok, other=0.0)
            swz += tl.sum(tl.where(ok, z, 0.0) * w, 0)
        else:
            swz += tl.sum(tl.where(ok, z, 0.0), 0)
    return m_new, se, swz


@triton.jit
def row_terms(
    lse, zy, swz, W, WSUM, y, V, one_minus_eps, eps_over_v, z_coef,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTH: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Row loss, z term, and the gradient coefficients ``a`` and ``b = (1-eps) w_y``.

    ``w_y`` is read at ``W + y`` (1 without class weights) and ``W = sum w`` at ``WSUM`` (``V``
    without class weights; read with label smoothing only).
    """
    if HAS_WEIGHT:
        w_y = tl.load(W + y)
    else:
        w_y = 1.0
    if HAS_WEIGHT and HAS_SMOOTH:
        wsum = tl.load(WSUM)
    else:
        wsum = V * 1.0
    b = one_minus_eps * w_y
    a = b
    loss = b * (lse - zy)
    if HAS_SMOOTH:
        loss += eps_over_v * (lse * wsum - swz)
        a += eps_over_v * wsum
    zterm = lse * 0.0
    if HAS_Z:
        zterm = z_coef * lse * lse
        a += 2.0 * z_coef * lse
    return loss + zterm, zterm, a, b


@triton.jit
def grad_block(
    z, dz, lane, y_lane, lse, a, b, w, eps_over_v, scale,
    HAS_SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):  # fmt: skip
    """``scale * (p a - b [c == y] - (eps/V) w_c) * dz`` for one block of a row.

    ``dz = 1 - tanh^2`` is :func:`load_logits`' chain-rule factor under a softcap.

    ``y_lane`` is the target's position in this block as int32 (comparing the 32-bit lane
    indices with a 64-bit target would widen every lane index to 64 bits: twice the registers).
    With the row factor ``r`` already in ``a``, ``b`` and ``eps_over_v``, pass ``scale = 1``.
    """
    p = tl.exp(z - lse)
    g = p * a - tl.where(lane == y_lane, b, 0.0)
    if HAS_SMOOTH:
        g -= eps_over_v * w
    if HAS_SOFTCAP:
        g = g * dz
    return g * scale


# --------------------------------------------------------------------------------------------
# The backward scaling
# --------------------------------------------------------------------------------------------


@triton.jit
def scale_grad_kernel(
    G, stride_g, GO, stride_go, V, n_col_tiles, n_tiles,
    ROWWISE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Backward: ``G *= grad_output`` in place (per row for ``'none'``); skips factors of 1.

    A persistent grid walks the (row, column-tile) tiles. With a scalar ``grad_output`` every
    program reads it first and returns at once when it is 1.0, the usual case after ``'mean'``.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    lane = tl.arange(0, BLOCK)
    if ROWWISE:
        for tile in range(pid, n_tiles, nprog):
            row = (tile // n_col_tiles).to(tl.int64)
            cols = (tile % n_col_tiles) * BLOCK + lane
            go = tl.load(GO + row * stride_go).to(tl.float32)
            if go != 1.0:
                ptrs = G + row * stride_g + cols
                g = tl.load(ptrs, mask=cols < V, other=0.0).to(tl.float32) * go
                tl.store(ptrs, g.to(G.dtype.element_ty), mask=cols < V)
    else:
        go = tl.load(GO).to(tl.float32)
        if go != 1.0:
            for tile in range(pid, n_tiles, nprog):
                row = (tile // n_col_tiles).to(tl.int64)
                cols = (tile % n_col_tiles) * BLOCK + lane
                ptrs = G + row * stride_g + cols
                g = tl.load(ptrs, mask=cols < V, other=0.0).to(tl.float32) * go
                tl.store(ptrs, g.to(G.dtype.element_ty), mask=cols < V)


#: True when the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import).
INTERPRETED = type(scale_grad_kernel).__name__ == "InterpretedFunction"


def scale_grad(grad: Tensor, grad_output: Tensor, rowwise: bool) -> None:
    """``grad *= grad_output`` in place (row-wise for ``'none'``), skipped on the device where 1."""
    n, v = grad.shape
    if n == 0:
        return
    n_col_tiles = triton.cdiv(v, SCALE_BLOCK)
    n_tiles = n * n_col_tiles
    if grad.device.type == "cuda":
        index = grad.device.index
        index = torch.cuda.current_device() if index is None else index
        programs = min(n_tiles, 8 * sm_count(index))
    else:
        programs = min(n_tiles, 4)
    go = grad_output if rowwise else grad_output.reshape(1)
    with device_guard(grad.device):
        scale_grad_kernel[(programs,)](
            grad, grad.stride(0), go, go.stride(0) if rowwise else 0, v, n_col_tiles, n_tiles,
            ROWWISE=rowwise, BLOCK=SCALE_BLOCK, num_warps=4,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------------------------


def check_device(device: torch.device, what: str) -> None:
    """The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter."""
    if device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            "losskit.kernels.triton runs on CUDA tensors, or on the CPU only in Triton's "
            f"interpreter (TRITON_INTERPRET=1 before import); got {what} on {device}"
        )


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current for a launch (a CUDA device; nothing to do on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def warps(block: int) -> int:
    """32 float32 values per thread: 32 warps for a 32K block, 16 for 16K, ..., at least 1."""
    return max(1, min(32, block // 1024))


@cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def softcap_args(softcap: float | None) -> tuple[float, float]:
    """The kernels' ``softcap, inv_softcap`` scalars (1, 1 without a softcap: never read)."""
    cap = float(softcap or 1.0)
    return cap, 1.0 / cap


def increment_version(t: Tensor) -> None:
    """Bump ``t``'s autograd version counter (after a kernel wrote into its storage), so that
    any node that saved ``t`` raises at its backward instead of reading the new values."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)
    else:  # older torch
        torch._C._autograd._increment_version(t)
