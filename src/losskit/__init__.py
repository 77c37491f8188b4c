"""losskit: PyTorch loss functions, exact to torch where torch has them, with clear errors where
torch is silent, and fused kernels for large vocabularies.

    import losskit
    import losskit.functional as LF
"""

from . import functional, nn
from ._validate import LossError, LossIndexError, LossTypeError, LossValueError
from .check import CheckReport, PropertyResult, check
from .custom import Loss, loss_function
from .functional import count_targets
from .nn import *  # noqa: F403  (every loss Module: losskit.nn.__all__)

__version__ = "0.1.0"

__all__ = [
    *nn.__all__,
    "CheckReport",
    "Loss",
    "LossError",
    "LossIndexError",
    "LossTypeError",
    "LossValueError",
    "PropertyResult",
    "check",
    "count_targets",
    "functional",
    "loss_function",
]
