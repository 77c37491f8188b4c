"""Every losskit loss as a function: ``import losskit.functional as LF``.

Where torch has the loss, the signature and defaults are torch's (positional order included), so
``import losskit.functional as F`` is a drop-in for the losses; losskit's additions are
keyword-only.
"""

from . import binary, categorical, focal, linear, regression
from .binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .categorical import count_targets, cross_entropy, kl_div, nll_loss
from .focal import focal_loss, sigmoid_focal_loss
from .linear import linear_cross_entropy
from .regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss

__all__ = [
    "binary",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical",
    "count_targets",
    "cross_entropy",
    "focal",
    "focal_loss",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "linear",
    "linear_cross_entropy",
    "mse_loss",
    "nll_loss",
    "regression",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
