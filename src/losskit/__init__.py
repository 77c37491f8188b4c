"""losskit: PyTorch loss functions, exact to torch where torch has them, with clear errors where
torch is silent, and fused kernels for large vocabularies.

    import losskit
    import losskit.functional as LF
"""

from . import functional
from ._validate import LossError, LossIndexError, LossTypeError, LossValueError
from .functional import count_targets
from .nn import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)

__version__ = "0.1.0"

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "LossError",
    "LossIndexError",
    "LossTypeError",
    "LossValueError",
    "MSELoss",
    "NLLLoss",
    "SmoothL1Loss",
    "count_targets",
    "functional",
]
