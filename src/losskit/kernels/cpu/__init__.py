"""Fused CPU paths: plain torch ops arranged to read the logits once (no compiled extension).

One module per loss, named as the loss (``losskit._dispatch`` takes them by that name), plus what
they share: ``memory.py`` (huge-page and own-mapping buffers) and ``threads.py`` (worker threads).
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
