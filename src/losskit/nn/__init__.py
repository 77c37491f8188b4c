"""Loss Modules: thin wrappers that hold configuration and buffers, like ``nn.Conv2d``.

Each constructor has torch's signature (losskit's additions keyword-only); each ``forward`` is one
call of the matching function in :mod:`losskit.functional`, which the class names as its
``function`` attribute (``losskit.MSELoss.function is losskit.functional.mse_loss``). Class
``weight`` and ``pos_weight`` are registered buffers, so they follow ``.to(device)`` and land in
``state_dict``. ``mask`` and ``normalizer`` change from batch to batch, so ``forward`` takes them
as keyword arguments.

One file per family, as in :mod:`losskit.functional`: ``regression``, ``binary``,
``categorical``, ``distillation``, ``margin``, ``embedding``, ``likelihood``, ``sequence``,
``focal``, ``linear``, ``preference``; ``_base`` holds what they share.
"""

from .binary import BCELoss, BCEWithLogitsLoss
from .categorical import CrossEntropyLoss, KLDivLoss, NLLLoss, NLLLoss2d
from .distillation import (
    DistillationLoss,
    JensenShannonLoss,
    KLDivergenceLoss,
    LinearDistillationLoss,
    TotalVariationLoss,
)
from .embedding import CosineEmbeddingLoss, TripletMarginLoss, TripletMarginWithDistanceLoss
from .focal import FocalLoss, SigmoidFocalLoss
from .likelihood import GaussianNLLLoss, PoissonNLLLoss
from .linear import LinearCrossEntropyLoss
from .margin import (
    HingeEmbeddingLoss,
    MarginRankingLoss,
    MultiLabelMarginLoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    SoftMarginLoss,
)
from .preference import (
    CPOLoss,
    DPOLoss,
    GRPOLoss,
    KTOLoss,
    LinearCPOLoss,
    LinearDPOLoss,
    LinearGRPOLoss,
    LinearKTOLoss,
    LinearORPOLoss,
    LinearSimPOLoss,
    ORPOLoss,
    SimPOLoss,
)
from .regression import HuberLoss, L1Loss, MSELoss, SmoothL1Loss
from .sequence import CTCLoss

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CPOLoss",
    "CTCLoss",
    "CosineEmbeddingLoss",
    "CrossEntropyLoss",
    "DPOLoss",
    "DistillationLoss",
    "FocalLoss",
    "GRPOLoss",
    "GaussianNLLLoss",
    "HingeEmbeddingLoss",
    "HuberLoss",
    "JensenShannonLoss",
    "KLDivLoss",
    "KLDivergenceLoss",
    "KTOLoss",
    "L1Loss",
    "LinearCPOLoss",
    "LinearCrossEntropyLoss",
    "LinearDPOLoss",
    "LinearDistillationLoss",
    "LinearGRPOLoss",
    "LinearKTOLoss",
    "LinearORPOLoss",
    "LinearSimPOLoss",
    "MSELoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss",
    "MultiMarginLoss",
    "NLLLoss",
    "NLLLoss2d",
    "ORPOLoss",
    "PoissonNLLLoss",
    "SigmoidFocalLoss",
    "SimPOLoss",
    "SmoothL1Loss",
    "SoftMarginLoss",
    "TotalVariationLoss",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
]
