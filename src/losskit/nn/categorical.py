"""Categorical Modules: cross-entropy and negative log-likelihood over classes, KL divergence."""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from .. import _validate as V
from .. import functional as LF
from .._reduction import resolve
from ._base import _Loss, _WeightedLoss


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy on logits; see :func:`losskit.functional.cross_entropy`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss(torch.zeros(2, 4), torch.tensor([0, 3])).shape
        torch.Size([])
    """

    function = staticmethod(LF.cross_entropy)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_z_loss: bool = False,
        impl: str = "auto",
        inplace_backward: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        # the function's checks, at construction
        opts = V.cross_entropy_options(
            self.reduction, ignore_index, label_smoothing, z_loss, softcap
        )
        self.ignore_index = opts.ignore_index
        self.label_smoothing = opts.label_smoothing
        self.z_loss = opts.z_loss
        self.softcap = opts.softcap
        self.return_z_loss = return_z_loss
        self.impl = V.check_impl(impl)
        self.inplace_backward = inplace_backward
        self.validate = validate

    def _options(self) -> dict:
        opts = {
            "reduction": self.reduction,
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
        }
        if self.z_loss:
            opts["z_loss"] = self.z_loss
        if self.softcap is not None:
            opts["softcap"] = self.softcap
        if self.impl != "auto":
            opts["impl"] = self.impl
        if self.inplace_backward:
            opts["inplace_backward"] = True
        return opts


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood; see :func:`losskit.functional.nll_loss`."""

    function = staticmethod(LF.nll_loss)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = V.check_ignore_index(ignore_index)

    shown = ("reduction", "ignore_index")


class NLLLoss2d(NLLLoss):
    """torch's deprecated name of :class:`NLLLoss` (which takes ``(N, C, H, W)`` inputs as it
    is); constructing one warns, as torch's does."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
    ) -> None:
        warnings.warn(
            "NLLLoss2d has been deprecated: use NLLLoss, a drop-in replacement",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(weight, size_average, ignore_index, reduce, reduction)


class KLDivLoss(nn.Module):
    """KL divergence; see :func:`losskit.functional.kl_div` (``'batchmean'`` is the true KL)."""

    function = staticmethod(LF.kl_div)

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False
    ) -> None:
        super().__init__()
        if reduction == "batchmean" and size_average is None and reduce is None:
            self.reduction = "batchmean"
        else:
            self.reduction = resolve(reduction, size_average, reduce)
        self.log_target = log_target

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, log_target={self.log_target}"

    forward = _Loss.forward  # a Module of its own: 'batchmean' is no reduction of _Loss
