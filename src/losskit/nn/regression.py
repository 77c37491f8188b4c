"""Regression Modules: mean squared and absolute error, smooth L1, Huber."""

from __future__ import annotations

from .. import _validate as V
from .. import functional as LF
from ._base import _Loss


class MSELoss(_Loss):
    """Mean squared error; see :func:`losskit.functional.mse_loss`.

    Example:
        >>> import torch, losskit
        >>> losskit.MSELoss(reduction="sum")(torch.ones(3), torch.zeros(3))
        tensor(3.)
    """

    function = staticmethod(LF.mse_loss)


class L1Loss(_Loss):
    """Mean absolute error; see :func:`losskit.functional.l1_loss`."""

    function = staticmethod(LF.l1_loss)


class SmoothL1Loss(_Loss):
    """Smooth L1; see :func:`losskit.functional.smooth_l1_loss`."""

    function = staticmethod(LF.smooth_l1_loss)

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = V.check_float_option("beta", beta, low=0.0)

    shown = ("reduction", "beta")


class HuberLoss(_Loss):
    """Huber loss; see :func:`losskit.functional.huber_loss`."""

    function = staticmethod(LF.huber_loss)

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = V.check_float_option("delta", delta, low=0.0, low_open=True)

    shown = ("reduction", "delta")
