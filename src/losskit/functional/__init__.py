"""Every losskit loss as a function: ``import losskit.functional as LF``.

Where torch has the loss, the signature and defaults are torch's (positional order included), so
``import losskit.functional as F`` is a drop-in for the losses; losskit's additions are
keyword-only.
"""

from . import (
    binary,
    categorical,
    distillation,
    embedding,
    focal,
    likelihood,
    linear,
    margin,
    preference,
    regression,
    sequence,
)
from .binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .categorical import count_targets, cross_entropy, kl_div, nll_loss
from .distillation import (
    distillation_loss,
    jensen_shannon,
    kl_divergence,
    linear_distillation_loss,
    total_variation,
)
from .embedding import (
    cosine_embedding_loss,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)
from .focal import focal_loss, sigmoid_focal_loss
from .likelihood import gaussian_nll_loss, poisson_nll_loss
from .linear import linear_cross_entropy
from .margin import (
    hinge_embedding_loss,
    margin_ranking_loss,
    multi_margin_loss,
    multilabel_margin_loss,
    multilabel_soft_margin_loss,
    soft_margin_loss,
)
from .preference import (
    cpo_loss,
    dpo_loss,
    grpo_loss,
    kto_loss,
    linear_cpo_loss,
    linear_dpo_loss,
    linear_grpo_loss,
    linear_kto_loss,
    linear_orpo_loss,
    linear_simpo_loss,
    orpo_loss,
    sequence_logprobs,
    simpo_loss,
    token_logprobs,
)
from .regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss
from .sequence import ctc_loss

__all__ = [
    "binary",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical",
    "cosine_embedding_loss",
    "count_targets",
    "cpo_loss",
    "cross_entropy",
    "ctc_loss",
    "distillation",
    "distillation_loss",
    "dpo_loss",
    "embedding",
    "focal",
    "focal_loss",
    "gaussian_nll_loss",
    "grpo_loss",
    "hinge_embedding_loss",
    "huber_loss",
    "jensen_shannon",
    "kl_div",
    "kl_divergence",
    "kto_loss",
    "l1_loss",
    "likelihood",
    "linear",
    "linear_cpo_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_dpo_loss",
    "linear_grpo_loss",
    "linear_kto_loss",
    "linear_orpo_loss",
    "linear_simpo_loss",
    "margin",
    "margin_ranking_loss",
    "mse_loss",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "orpo_loss",
    "poisson_nll_loss",
    "preference",
    "regression",
    "sequence",
    "sequence_logprobs",
    "sigmoid_focal_loss",
    "simpo_loss",
    "smooth_l1_loss",
    "soft_margin_loss",
    "token_logprobs",
    "total_variation",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
]
