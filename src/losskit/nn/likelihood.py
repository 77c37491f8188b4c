"""Likelihood Modules: Poisson and Gaussian negative log-likelihood."""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from ..functional import likelihood as LFL
from ._base import Mask, Normalizer, _Loss, settings


class PoissonNLLLoss(_Loss):
    """Poisson negative log-likelihood; see :func:`losskit.functional.poisson_nll_loss`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.PoissonNLLLoss(reduction="sum")
        >>> loss(torch.zeros(2), torch.tensor([1.0, 3.0]))
        tensor(2.)
    """

    function = staticmethod(LFL.poisson_nll_loss)

    def __init__(
        self,
        log_input: bool = True,
        full: bool = False,
        size_average=None,
        eps: float = 1e-8,
        reduce=None,
        reduction: str = "mean",
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_input = log_input
        self.full = full
        self.eps = V.check_float_option("eps", eps, low=0.0, low_open=True)
        self.validate = validate

    shown = ("reduction", "log_input", "full", "eps")

    def forward(
        self, log_input: Tensor, target: Tensor, *, mask: Mask = None, normalizer: Normalizer = None
    ) -> Tensor:
        """The loss of a batch (``log_input`` is the input: log-rates, or rates with
        ``log_input=False``): one call of ``function`` with the Module's settings."""
        return self.function(log_input, target, **settings(self), mask=mask, normalizer=normalizer)


class GaussianNLLLoss(_Loss):
    """Gaussian negative log-likelihood; see :func:`losskit.functional.gaussian_nll_loss`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.GaussianNLLLoss()
        >>> loss(torch.zeros(2), torch.tensor([1.0, 3.0]), torch.ones(2))
        tensor(2.5000)
    """

    function = staticmethod(LFL.gaussian_nll_loss)

    def __init__(
        self,
        *,
        full: bool = False,
        eps: float = 1e-6,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        self.full = full
        self.eps = V.check_float_option("eps", eps, low=0.0, low_open=True)
        self.validate = validate

    shown = ("reduction", "full", "eps")

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        var: Tensor | float,
        *,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(input, target, var, **settings(self), mask=mask, normalizer=normalizer)
