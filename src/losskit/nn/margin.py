"""Margin Modules: hinge embedding, soft margin, multi-class and multi-label margins, ranking."""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from .._validate import margin as M
from ..functional import margin as LFM
from ._base import Mask, Normalizer, _Loss, _WeightedLoss, settings


class HingeEmbeddingLoss(_Loss):
    """Hinge embedding loss; see :func:`losskit.functional.hinge_embedding_loss`.

    Example:
        >>> import torch
        >>> from losskit.nn.margin import HingeEmbeddingLoss
        >>> loss = HingeEmbeddingLoss(margin=0.5)
        >>> loss(torch.tensor([0.2, 0.1]), torch.tensor([1.0, -1.0]))
        tensor(0.3000)
    """

    function = staticmethod(LFM.hinge_embedding_loss)

    def __init__(
        self,
        margin: float = 1.0,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.margin = M.check_number("margin", margin)
        self.validate = validate

    shown = ("reduction", "margin")


class SoftMarginLoss(_Loss):
    """Soft margin loss; see :func:`losskit.functional.soft_margin_loss`."""

    function = staticmethod(LFM.soft_margin_loss)

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", *, validate: bool = True
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.validate = validate


class MultiMarginLoss(_WeightedLoss):
    """Multi-class hinge loss; see :func:`losskit.functional.multi_margin_loss`. ``weight`` is a
    registered buffer.

    Example:
        >>> import torch
        >>> from losskit.nn.margin import MultiMarginLoss
        >>> loss = MultiMarginLoss(p=2, weight=torch.tensor([1.0, 2.0, 1.0]))
        >>> loss(torch.tensor([[0.1, 0.9, 0.3]]), torch.tensor([1]))
        tensor(0.1333)
    """

    function = staticmethod(LFM.multi_margin_loss)

    def __init__(
        self,
        p: int = 1,
        margin: float = 1.0,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.p = M.check_margin_p(p)
        self.margin = M.check_number("margin", margin)
        if weight is not None and weight.dim() != 1:
            raise V.LossValueError(
                f"weight must have shape (C,), one weight per class, got shape "
                f"{V.shape_str(weight.shape)}"
            )
        self.validate = validate

    shown = ("reduction", "p", "margin")


class MultiLabelMarginLoss(_Loss):
    """Multi-label hinge loss; see :func:`losskit.functional.multilabel_margin_loss`."""

    function = staticmethod(LFM.multilabel_margin_loss)

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", *, validate: bool = True
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.validate = validate


class MultiLabelSoftMarginLoss(_WeightedLoss):
    """Multi-label logistic loss; see :func:`losskit.functional.multilabel_soft_margin_loss`.
    ``weight`` is a registered buffer."""

    function = staticmethod(LFM.multilabel_soft_margin_loss)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.validate = validate


class MarginRankingLoss(_Loss):
    """Margin ranking loss; see :func:`losskit.functional.margin_ranking_loss`.

    Example:
        >>> import torch
        >>> from losskit.nn.margin import MarginRankingLoss
        >>> loss = MarginRankingLoss(margin=0.5, reduction="sum")
        >>> loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))
        tensor(1.)
    """

    function = staticmethod(LFM.margin_ranking_loss)

    def __init__(
        self,
        margin: float = 0.0,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.margin = M.check_number("margin", margin)
        self.validate = validate

    shown = ("reduction", "margin")

    def forward(
        self,
        input1: Tensor,
        input2: Tensor,
        target: Tensor,
        *,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(
            input1, input2, target, **settings(self), mask=mask, normalizer=normalizer
        )
