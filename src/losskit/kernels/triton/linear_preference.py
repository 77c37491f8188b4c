"""Fused linear preference and policy-gradient losses on CUDA: the sequence-level chunked engine
(``kernels/chunked/sequences.py``) with the cross-entropy's Triton epilogue.

The epilogue's row losses are ``-log p(y_t)`` and its gradient ``softmax - onehot``
(:class:`~losskit.kernels.triton.linear_cross_entropy.TritonEpilogue`, one launch per chunk); the
engine scales each row by the loss's ``dL/dlog p`` and runs cuBLAS's GEMMs through torch.

Equivalent to the loss's formula (``functional/preference.py``) on
``log_softmax(F.linear(x, W, b)).gather(-1, y)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..chunked import sequences
from .common import check_device
from .linear_cross_entropy import TritonEpilogue

__all__ = ["EPILOGUE", "linear_preference"]

#: The engine's epilogue here (the custom op's body takes it: ``ops/linear_preference.py``)
EPILOGUE = TritonEpilogue


def linear_preference(
    x: Tensor, w: Tensor, bias: Tensor | None, target: Tensor, counted: Tensor, **options: Any
) -> tuple[Tensor, Tensor]:
    """The arguments and result of :func:`losskit.kernels.chunked.linear_sequences`, whose
    ``epilogue`` is here :class:`TritonEpilogue` unless given."""
    check_device(x.device, "hidden")
    options.setdefault("epilogue", EPILOGUE)
    return sequences.linear_sequences(x, w, bias, target, counted, **options)
