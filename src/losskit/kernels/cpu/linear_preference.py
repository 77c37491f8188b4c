"""Fused linear preference and policy-gradient losses on the CPU: the sequence-level chunked
engine (``kernels/chunked/sequences.py``) with the cross-entropy's CPU epilogue.

The epilogue's row losses are ``-log p(y_t)`` and its gradient ``softmax - onehot``
(:class:`~losskit.kernels.cpu.linear_cross_entropy.CpuEpilogue`); the engine scales each row by
the loss's ``dL/dlog p`` and runs MKL's GEMMs through torch.

Equivalent to the loss's formula (``functional/preference.py``) on
``log_softmax(F.linear(x, W, b)).gather(-1, y)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..chunked import sequences
from .linear_cross_entropy import CpuEpilogue

__all__ = ["EPILOGUE", "linear_preference"]

#: The engine's epilogue here (the custom op's body takes it: ``ops/linear_preference.py``)
EPILOGUE = CpuEpilogue


def linear_preference(
    x: Tensor, w: Tensor, bias: Tensor | None, target: Tensor, counted: Tensor, **options: Any
) -> tuple[Tensor, Tensor]:
    """The arguments and result of :func:`losskit.kernels.chunked.linear_sequences`, whose
    ``epilogue`` is here :class:`CpuEpilogue` unless given."""
    options.setdefault("epilogue", EPILOGUE)
    return sequences.linear_sequences(x, w, bias, target, counted, **options)
