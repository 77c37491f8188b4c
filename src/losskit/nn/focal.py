"""Focal-loss Modules: sigmoid (RetinaNet, per element) and softmax (over classes)."""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from .. import functional as LF
from ._base import Mask, Normalizer, _Loss, _WeightedLoss, settings


class SigmoidFocalLoss(_Loss):
    """Sigmoid focal loss (RetinaNet); see :func:`losskit.functional.sigmoid_focal_loss`.

    The defaults are torchvision's, including ``reduction='none'``.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.SigmoidFocalLoss(reduction="sum")
        >>> loss(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 0.0]))
        tensor(0.0170)
    """

    function = staticmethod(LF.sigmoid_focal_loss)

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2,
        reduction: str = "none",
        *,
        label_smoothing: float = 0.0,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        self.alpha = V.check_alpha(alpha)
        self.gamma = V.check_float_option("gamma", gamma, low=0.0)
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )
        self.validate = validate

    shown = ("alpha", "gamma", "reduction", "label_smoothing")

    def forward(
        self, inputs: Tensor, targets: Tensor, *, mask: Mask = None, normalizer: Normalizer = None
    ) -> Tensor:
        return LF.sigmoid_focal_loss(
            inputs, targets, **settings(self), mask=mask, normalizer=normalizer
        )


class FocalLoss(_WeightedLoss):
    """Softmax focal loss for multi-class logits; see :func:`losskit.functional.focal_loss`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.FocalLoss(gamma=2.0)
        >>> loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor(0.0109)
    """

    function = staticmethod(LF.focal_loss)

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        gamma: float = 2.0,
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, reduction=reduction)
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.gamma = V.check_float_option("gamma", gamma, low=0.0)
        self.validate = validate

    shown = ("reduction", "ignore_index", "gamma")
