"""losskit: PyTorch loss functions, exact to torch where torch has them, with clear errors where
torch is silent, and fused kernels for large vocabularies.

    import losskit
    import losskit.functional as LF
"""

from . import functional
from ._validate import LossError, LossIndexError, LossTypeError, LossValueError
from .check import CheckReport, PropertyResult, check
from .custom import Loss, loss_function
from .functional import count_targets
from .nn import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    LinearCrossEntropyLoss,
    MSELoss,
    NLLLoss,
    SigmoidFocalLoss,
    SmoothL1Loss,
)

__version__ = "0.1.0"

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CheckReport",
    "CrossEntropyLoss",
    "FocalLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "LinearCrossEntropyLoss",
    "Loss",
    "LossError",
    "LossIndexError",
    "LossTypeError",
    "LossValueError",
    "MSELoss",
    "NLLLoss",
    "PropertyResult",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "check",
    "count_targets",
    "functional",
    "loss_function",
]
