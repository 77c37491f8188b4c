"""Fused linear + cross-entropy on the CPU: the chunked engine with an epilogue in torch ops.

The chunk loop, the planner and the ``autograd.Function`` are the backend-neutral ones of
``kernels/chunked/`` (MKL's GEMMs through torch); this file supplies the CPU epilogue
(:class:`CpuEpilogue`) that runs on the logits of a chunk in place, and the CPU launcher.

Per row of logits (the formulas of ``kernels/rows.py``): ``z'`` (softcapped), ``m = max z'``,
``e = exp(z' - m)``, ``S = sum e``, ``lse = m + log S``, the row's loss, and the gradient
``gradient_(e, ra / S, ...)`` in place. Rows are processed in blocks of about
:data:`~losskit.kernels.cpu.cross_entropy.CHUNK_BYTES` of float32 so that every pass after the
first finds the block in cache. Low-precision logits are copied a block at a time into a float32
scratch block and the gradient is rounded once.

Equivalent to::

    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, W, b), target, weight,
                                      ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing)

plus losskit's ``mask``, ``normalizer``, ``z_loss`` and ``softcap``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..chunked import engine
from ..chunked.epilogue import Chunk, Epilogue
from ..rows import gradient_, local_target, row_loss
from .cross_entropy import CHUNK_BYTES

# (The engine's own buffers come from kernels/cpu/memory.py, so importing the engine imports this
# package: the names above are taken from the engine's submodules, which are complete by then.)

__all__ = ["EPILOGUE", "CpuEpilogue", "linear_cross_entropy"]

_F32 = torch.float32


class CpuEpilogue(Epilogue):
    """Loss and softmax-gradient of a block of logits, in place, in torch ops (the CPU's)."""

    # -- helpers -------------------------------------------------------------------------------

    def _blocks(self, c: int, width: int) -> int:
        return max(1, min(c, CHUNK_BYTES // (4 * max(width, 1))))

    def _load(self, zb: Tensor, out: Tensor, th: Tensor | None) -> None:
        """``out = z'`` (float32) of the block ``zb``; ``th = tanh(z / s)`` under a softcap."""
        if self.cap is None:
            if out.dtype != zb.dtype:  # a float32 scratch block (else ``out`` is the block)
                out.copy_(zb)
            return
        if th.dtype == zb.dtype:
            torch.div(zb, self.cap, out=th)
        else:
            th.copy_(zb)
            th.div_(self.cap)
        th.tanh_()
        torch.mul(th, self.cap, out=out)

    def _scratch(self, rows: int, width: int, low: bool) -> tuple[Tensor | None, Tensor | None]:
        out = torch.empty((rows, width), dtype=_F32) if low else None
        th = torch.empty((rows, width), dtype=_F32) if self.cap is not None else None
        return out, th

    # -- whole rows ----------------------------------------------------------------------------

    def rows(
        self, z: Tensor, ck: Chunk, loss_out: Tensor, want_grad: bool, z_out: Tensor | None = None
    ) -> None:
        """Row losses into ``loss_out`` (their z terms into ``z_out`` when given) and, with
        ``want_grad``, the gradient into ``z``."""
        c, v = z.shape
        if c == 0:
            return
        low = z.dtype != _F32
        step = self._blocks(c, v)
        scratch, th_buf = self._scratch(step, v, low)
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            zb = z[s0:s1]
            out = scratch[: s1 - s0] if low else zb
            th = None if th_buf is None else th_buf[: s1 - s0]
            sub = ck.rows(s0, s1)
            # (1) z' (float32), its target logit, max and smoothing sum: the one read from memory.
            self._load(zb, out, th)
            zy = out.gather(1, sub.y.unsqueeze(1)).squeeze(1)
            m = out.amax(1, keepdim=True)
            swz = None
            if self.eps > 0.0:
                swz = out.sum(1) if self.w is None else torch.mv(out, self.w)
            # (2) e = exp(z' - m) in place, S = sum e, lse = m + log S.
            out.sub_(m).exp_()
            s = out.sum(1)
            lse = m.squeeze(1) + s.log()
            loss_out[s0:s1] = row_loss(lse, zy, swz, sub.w_y, self.k)
            if z_out is not None:
                z_out[s0:s1] = self.z_term(lse)
            if not want_grad:
                continue
            # (3) the gradient in place (kernels/rows.py), e * ra / S = p * ra.
            coef = self.coefficients(lse, sub)
            gradient_(out, coef.ra / s, coef, sub.y, weight=self.w, tanh=th)
            if low:
                zb.copy_(out)

    # -- vocabulary tiles ----------------------------------------------------------------------

    def tile_stats(self, z: Tensor, c0: int, ck: Chunk, st: Tensor) -> None:
        """Merge the tile's columns ``[c0, c0 + width)`` into the row statistics ``st``."""
        c, width = z.shape
        low = z.dtype != _F32
        step = self._blocks(c, width)
        scratch, th_buf = self._scratch(step, width, low)
        w = None if self.w is None else self.w[c0 : c0 + width]
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            out = scratch[: s1 - s0] if low else z[s0:s1]
            th = None if th_buf is None else th_buf[: s1 - s0]
            self._load(z[s0:s1], out, th)
            y, inside = local_target(ck.y[s0:s1], c0, width)
            zy = out.gather(1, y.unsqueeze(1)).squeeze(1)
            st[2, s0:s1] += torch.where(inside, zy, 0.0)
            if self.eps > 0.0:
                st[3, s0:s1] += out.sum(1) if w is None else torch.mv(out, w)
            m_t = out.amax(1)
            s_t = out.sub_(m_t.unsqueeze(1)).exp_().sum(1)
            m_old = st[0, s0:s1]
            m_new = torch.maximum(m_old, m_t)
            st[1, s0:s1] = st[1, s0:s1] * (m_old - m_new).exp() + s_t * (m_t - m_new).exp()
            st[0, s0:s1] = m_new

    def tile_grad(self, z: Tensor, c0: int, ck: Chunk, lse: Tensor) -> None:
        """The gradient of the tile's columns ``[c0, c0 + width)`` into ``z``, given ``lse``."""
        c, width = z.shape
        low = z.dtype != _F32
        coef = self.coefficients(lse, ck)
        y, inside = local_target(ck.y, c0, width)
        coef = coef.within(inside)
        step = self._blocks(c, width)
        scratch, th_buf = self._scratch(step, width, low)
        w = None if self.w is None else self.w[c0 : c0 + width]
        for s0 in range(0, c, step):
            s1 = min(s0 + step, c)
            zb = z[s0:s1]
            out = scratch[: s1 - s0] if low else zb
            th = None if th_buf is None else th_buf[: s1 - s0]
            self._load(zb, out, th)
            out.sub_(lse[s0:s1].unsqueeze(1)).exp_()  # m = lse: e = p
            sub = coef.rows(s0, s1)
            gradient_(out, sub.ra, sub, y[s0:s1], weight=w, tanh=th)
            if low:
                zb.copy_(out)

    # -- backward ------------------------------------------------------------------------------

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` (a one-element tensor), skipped when it is exactly 1."""
        go = float(grad_output.reshape(-1)[0])
        if go != 1.0:
            t.mul_(go)


def linear_cross_entropy(
    x: Tensor, w: Tensor, target: Tensor, **options: Any
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Chunked ``cross_entropy(x @ w.T + bias, target)`` of validated 2-D CPU inputs.

    .. math::
        \ell_i = \mathrm{CE}(x_i W^\top + b,\ y_i)

    The keyword arguments and result of :func:`losskit.kernels.chunked.linear_cross_entropy`
    (``bias, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, normalizer,
    mask, plan``, and optionally ``retain_graph, recompute, return_z_loss``), whose ``epilogue``
    is here :class:`CpuEpilogue` unless given.

    Example:
        >>> from losskit.kernels.chunked import plan_chunks
        >>> x, w = torch.randn(6, 8, requires_grad=True), torch.randn(10, 8)
        >>> y = torch.tensor([1, 2, 3, 4, 5, 6])
        >>> plan = plan_chunks(6, 8, 10, x.dtype, "cpu", budget=1 << 20, chunk_size=4)
        >>> loss = linear_cross_entropy(x, w, y, bias=None, weight=None, ignore_index=-100,
        ...     label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
        ...     normalizer=None, mask=None, plan=plan)
        >>> ref = torch.nn.functional.cross_entropy(x @ w.T, y)
        >>> bool(torch.allclose(loss, ref))
        True
    """
    options.setdefault("epilogue", CpuEpilogue)
    return engine.linear_cross_entropy(x, w, target, **options)


#: This backend's epilogue, as ``losskit.ops`` builds it for the engine's pure entries
EPILOGUE = CpuEpilogue
