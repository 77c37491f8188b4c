"""The rows of one chunk (:class:`Chunk`) and the interface a backend's epilogue implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..._reduction import Rows
from ..._validate import CrossEntropyOptions
from ..._validate.distillation import DistillationOptions
from ..rows import Coefficients, Smoothing, gradient_coefficients, row_loss

__all__ = ["Chunk", "Epilogue", "PairEpilogue"]

_F32 = torch.float32


@dataclass
class Chunk:
    """Rows ``[i, j)`` of a call's :class:`~losskit._reduction.Rows`, plus the per-row factor
    ``r`` of the gradient; what an epilogue reads (all ``(rows,)`` unless noted)."""

    target: Tensor  #: int64, as given (ignore_index where ignored)
    mask: Tensor | None  #: bool, or None
    counted: Tensor  #: bool
    y: Tensor  #: int64, 0 where the row does not count
    w_y: Tensor  #: float32 weight of the target class, 0 where the row does not count
    r: Tensor  #: float32: counted * scale * row_scale
    scale: Tensor | None  #: (1,) float32 factor of every gradient row (1/D for 'mean'), or None
    row_scale: Tensor | None  #: float32 per-row factor (the 'none' backward's grad_output), or None

    @classmethod
    def of(
        cls, target: Tensor, mask: Tensor | None, rows: Rows, i: int, j: int,
        row_scale: Tensor | None,
    ) -> Chunk:  # fmt: skip
        r = rows.factor(i, j)
        rs = None
        if row_scale is not None:
            rs = row_scale[i:j]
            r = r * rs
        return cls(
            target[i:j], None if mask is None else mask[i:j], rows.counted[i:j], rows.y[i:j],
            rows.w_y[i:j], r, rows.scale, rs,
        )  # fmt: skip

    def rows(self, s0: int, s1: int) -> Chunk:
        """Rows ``[s0, s1)`` of this chunk."""
        return Chunk(
            self.target[s0:s1], None if self.mask is None else self.mask[s0:s1],
            self.counted[s0:s1], self.y[s0:s1], self.w_y[s0:s1], self.r[s0:s1], self.scale,
            None if self.row_scale is None else self.row_scale[s0:s1],
        )  # fmt: skip


class Epilogue:
    """What a backend runs on the logits of a chunk: the base every backend's epilogue subclasses.

    The engine calls, per chunk of rows (see the module docstring and ``kernels/CONTRACT.md``):
    whole rows: :meth:`rows`; vocabulary tiles: :meth:`new_stats`, then :meth:`tile_stats` per
    tile, :meth:`finish_stats`, then :meth:`tile_grad` per tile; and :meth:`scale_` on each
    gradient in the backward. This base holds the per-call constants and the backend-neutral
    steps (the row loss, the z term and the gradient's coefficients, from ``kernels/rows.py``);
    a backend implements :meth:`rows`, :meth:`tile_stats`, :meth:`tile_grad` and :meth:`scale_`.
    """

    def __init__(self, weight: Tensor | None, v: int, opts: CrossEntropyOptions) -> None:
        self.w = None if weight is None else weight.to(_F32).contiguous()
        self.v = v
        self.eps = opts.label_smoothing
        self.zc = opts.z_loss
        self.cap = opts.softcap
        self.k = Smoothing.of(self.eps, v, self.w, self.zc)

    # -- backend-neutral -----------------------------------------------------------------------

    def new_stats(self, c: int, device: torch.device) -> Tensor:
        """Running (max, sum of exp, target logit, sum w z') per row, ``(4, c)`` float32."""
        st = torch.zeros((4, c), dtype=_F32, device=device)
        st[0].fill_(-3.0e38)
        return st

    def finish_stats(self, st: Tensor, ck: Chunk) -> tuple[Tensor, Tensor]:
        """Row losses and ``lse`` from merged statistics (``lse = +inf`` where a row is out)."""
        lse = st[0] + st[1].log()
        swz = st[3] if self.eps > 0.0 else None
        loss = row_loss(lse, st[2], swz, ck.w_y, self.k)
        return torch.where(ck.counted, loss, 0.0), torch.where(ck.counted, lse, torch.inf)

    def z_term(self, lse: Tensor) -> Tensor:
        """Each row's z term ``c lse^2`` (``return_z_loss``; 0 times ``lse^2`` without a
        z-loss, as the reference computes it)."""
        return self.zc * lse * lse

    def coefficients(self, lse: Tensor, ck: Chunk) -> Coefficients:
        """The gradient's per-row factors of the chunk (``kernels/rows.py``); ``lse`` is read
        only with a z-loss, and only where the row counts."""
        if self.zc > 0.0:
            lse = torch.where(ck.counted, lse, 0.0)
        return gradient_coefficients(ck.r, ck.w_y, self.k, lse)

    # -- what a backend implements ---------------------------------------------------------

    def rows(
        self, z: Tensor, ck: Chunk, loss_out: Tensor, want_grad: bool, z_out: Tensor | None = None
    ) -> None:
        """Whole rows: each row's loss into ``loss_out`` (float32; any value where the row does
        not count), its z term (:meth:`z_term`) into ``z_out`` when given, and, with
        ``want_grad``, ``z`` overwritten by ``r dloss/dz``."""
        raise NotImplementedError

    def tile_stats(self, z: Tensor, c0: int, ck: Chunk, st: Tensor) -> None:
        """Merge the tile's columns ``[c0, c0 + width)`` into the row statistics ``st``."""
        raise NotImplementedError

    def tile_grad(self, z: Tensor, c0: int, ck: Chunk, lse: Tensor) -> None:
        """The gradient of the tile's columns ``[c0, c0 + width)`` into ``z``, given ``lse``."""
        raise NotImplementedError

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` (a one-element tensor) in place, for a 2-D gradient ``t``."""
        raise NotImplementedError


class PairEpilogue:
    """What a backend runs on a chunk's two blocks of logits (``kernels/CONTRACT.md``, §2b)."""

    def __init__(self, opts: DistillationOptions) -> None:
        self.opts = opts

    def rows(
        self, zs: Tensor, zt: Tensor, ck: Chunk, loss_out: Tensor, grad_s: bool, grad_t: bool
    ) -> None:
        """Each row's loss into ``loss_out`` (float32); with ``grad_s``, ``zs`` overwritten by
        ``r dloss/dz_s``, with ``grad_t``, ``zt`` by ``r dloss/dz_t`` (0 where a row does not
        count). ``zs`` may be overwritten anyway; ``zt`` is read only without ``grad_t``."""
        raise NotImplementedError

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` (a one-element tensor) in place, for a 2-D gradient ``t``."""
        raise NotImplementedError
