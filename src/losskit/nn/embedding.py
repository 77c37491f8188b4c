"""Embedding Modules: cosine embedding and triplet margin (with torch's or your own distance)."""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from .._validate import margin as M
from ..functional import embedding as LFE
from ._base import Mask, Normalizer, _Loss, settings


class CosineEmbeddingLoss(_Loss):
    """Cosine embedding loss; see :func:`losskit.functional.cosine_embedding_loss`.

    Example:
        >>> import torch
        >>> from losskit.nn.embedding import CosineEmbeddingLoss
        >>> loss = CosineEmbeddingLoss(margin=0.5)
        >>> loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([-1]))
        tensor(0.2071)
    """

    function = staticmethod(LFE.cosine_embedding_loss)

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


class _TripletLoss(_Loss):
    def forward(
        self,
        anchor: Tensor,
        positive: Tensor,
        negative: Tensor,
        *,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(
            anchor, positive, negative, **settings(self), mask=mask, normalizer=normalizer
        )


class TripletMarginLoss(_TripletLoss):
    """Triplet margin loss; see :func:`losskit.functional.triplet_margin_loss`.

    Example:
        >>> import torch
        >>> from losskit.nn.embedding import TripletMarginLoss
        >>> loss = TripletMarginLoss(margin=6.0, eps=0.0)
        >>> loss(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]]))
        tensor(1.)
    """

    function = staticmethod(LFE.triplet_margin_loss)

    def __init__(
        self,
        margin: float = 1.0,
        p: float = 2.0,
        eps: float = 1e-06,
        swap: bool = False,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.margin = V.check_float_option("margin", margin, low=0.0, low_open=True)
        self.p = V.check_float_option("p", p, low=0.0, low_open=True)
        self.eps = M.check_number("eps", eps)
        self.swap = swap

    shown = ("reduction", "margin", "p", "eps", "swap")


class TripletMarginWithDistanceLoss(_TripletLoss):
    """Triplet margin loss with any distance; see
    :func:`losskit.functional.triplet_margin_with_distance_loss`. ``distance_function`` is held
    as given (None: ``torch.pairwise_distance``); a Module distance becomes a submodule.

    Example:
        >>> import torch
        >>> from losskit.nn.embedding import TripletMarginWithDistanceLoss
        >>> loss = TripletMarginWithDistanceLoss(
        ...     distance_function=torch.nn.PairwiseDistance(p=1.0), margin=2.0)
        >>> loss(torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 1.5))
        tensor(1.)
    """

    function = staticmethod(LFE.triplet_margin_with_distance_loss)

    def __init__(
        self,
        *,
        distance_function=None,
        margin: float = 1.0,
        swap: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        M.check_distance_function(distance_function)
        self.distance_function = distance_function
        self.margin = V.check_float_option("margin", margin, low=0.0, low_open=True)
        self.swap = swap

    shown = ("reduction", "margin", "swap")
