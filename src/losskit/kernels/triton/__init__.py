"""Fused Triton paths (CUDA, or the interpreter with ``TRITON_INTERPRET=1``), one loss a file.

One module per loss, named as the loss (``losskit._dispatch`` takes them by that name);
``common.py`` holds what the kernels of several losses share.
"""

from . import (
    cross_entropy,
    distillation,
    linear_cross_entropy,
    linear_distillation,
    linear_preference,
)

__all__ = [
    "cross_entropy",
    "distillation",
    "linear_cross_entropy",
    "linear_distillation",
    "linear_preference",
]
