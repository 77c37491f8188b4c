"""Fused linear distillation on CUDA: the two-head chunked engine with a Triton epilogue.

The chunk loop, the planner and the ``autograd.Function`` are the backend-neutral ones of
``kernels/chunked/pairs.py`` (the GEMMs are torch's, i.e. cuBLAS here); this file supplies the
Triton epilogue (:class:`TritonPairEpilogue`: ``kernels/triton/distillation.py``'s row kernel,
one launch per chunk, writing both gradients over the chunk's logits in place) and the CUDA
launcher.

Equivalent to :func:`losskit.functional.distillation_loss` of ``F.linear(xs, Ws, bs)`` and
``F.linear(xt, Wt, bt)`` (or the teacher's log-probabilities).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..chunked.epilogue import Chunk
from ..chunked.pairs import PairEpilogue
from ..chunked.pairs import linear_distillation as _engine
from .common import check_device
from .distillation import blocks_, scale_

__all__ = ["EPILOGUE", "TritonPairEpilogue", "linear_distillation"]


class TritonPairEpilogue(PairEpilogue):
    """Losses and both logits' gradients of a chunk, in place, in one Triton launch."""

    def rows(
        self, zs: Tensor, zt: Tensor, ck: Chunk, loss_out: Tensor, grad_s: bool, grad_t: bool
    ) -> None:
        y = ck.y if self.opts.alpha > 0.0 else None
        gs, gt = (zs if grad_s else None), (zt if grad_t else None)
        blocks_(zs, zt, y, ck.r, self.opts, loss_out, gs, gt)

    def scale_(self, t: Tensor, grad_output: Tensor) -> None:
        """``t *= grad_output`` on the device, skipped there when it is 1 (no host sync)."""
        scale_(t, grad_output)


def linear_distillation(*heads: Tensor | None, **options: Any) -> Tensor:
    """The chunked distillation loss of validated 2-D CUDA inputs: the arguments and result of
    :func:`losskit.kernels.chunked.linear_distillation`, whose ``epilogue`` is here
    :class:`TritonPairEpilogue` unless given."""
    check_device(heads[0].device, "student_input")
    options.setdefault("epilogue", TritonPairEpilogue)
    return _engine(*heads, **options)


#: This backend's pair epilogue, as ``losskit.ops`` builds it for the engine's pure entry
EPILOGUE = TritonPairEpilogue
