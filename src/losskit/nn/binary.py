"""Binary cross-entropy Modules, on probabilities and on logits."""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from .. import functional as LF
from ._base import _WeightedLoss


class BCELoss(_WeightedLoss):
    """Binary cross-entropy on probabilities; see :func:`losskit.functional.binary_cross_entropy`.

    Prefer :class:`BCEWithLogitsLoss` on logits: it needs no clamping.
    """

    function = staticmethod(LF.binary_cross_entropy)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        *,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )

    shown = ("reduction", "label_smoothing")


class BCEWithLogitsLoss(_WeightedLoss):
    """Binary cross-entropy on logits; see
    :func:`losskit.functional.binary_cross_entropy_with_logits`."""

    function = staticmethod(LF.binary_cross_entropy_with_logits)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        if pos_weight is not None:
            V.require_tensor("pos_weight", pos_weight)
        self.register_buffer("pos_weight", pos_weight)
        self.pos_weight: Tensor | None
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )

    shown = ("reduction", "label_smoothing")
