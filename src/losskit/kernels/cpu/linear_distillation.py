"""Fused linear distillation on the CPU: the two-head chunked engine with a torch-ops epilogue.

The chunk loop, the planner and the ``autograd.Function`` are the backend-neutral ones of
``kernels/chunked/pairs.py`` (MKL's GEMMs through torch); this file supplies the CPU epilogue
(:class:`CpuPairEpilogue`: ``kernels/cpu/distillation.py``'s blocks, in place on the chunk's
logits) and the CPU launcher.

Equivalent to :func:`losskit.functional.distillation_loss` of ``F.linear(xs, Ws, bs)`` and
``F.linear(xt, Wt, bt)`` (or the teacher's log-probabilities).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..chunked import pairs
from ..chunked.epilogue import Chunk, PairEpilogue
from .distillation import blocks_, scale_

__all__ = ["EPILOGUE", "CpuPairEpilogue", "linear_distillation"]


class CpuPairEpilogue(PairEpilogue):
    """Losses and both logits' gradients of a chunk, in place, in torch ops."""

    def rows(
        self, zs: Tensor, zt: Tensor, ck: Chunk, loss_out: Tensor, grad_s: bool, grad_t: bool
    ) -> None:
        y = ck.y if self.opts.alpha > 0.0 else None
        blocks_(
            zs, zt, y, ck.r, self.opts, loss_out, zs if grad_s else None, zt if grad_t else None
        )

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        scale_(t, grad_output)


def linear_distillation(*heads: Tensor | None, **options: Any) -> Tensor:
    """The chunked distillation loss of validated 2-D CPU inputs: the arguments and result of
    :func:`losskit.kernels.chunked.linear_distillation`, whose ``epilogue`` is here
    :class:`CpuPairEpilogue` unless given."""
    options.setdefault("epilogue", CpuPairEpilogue)
    return pairs.linear_distillation(*heads, **options)


#: This backend's pair epilogue, as ``losskit.ops`` builds it for the engine's pure entry
EPILOGUE = CpuPairEpilogue
