"""Sequence Modules: connectionist temporal classification (CTC)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._validate import likelihood as VL
from ..functional import sequence as LFS
from ._base import Mask, Normalizer, _Loss, settings


class CTCLoss(_Loss):
    """Connectionist temporal classification; see :func:`losskit.functional.ctc_loss`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.CTCLoss(reduction="sum")
        >>> log_probs = torch.full((3, 1, 2), 0.5).log()  # T=3, N=1, C=2 (blank 0)
        >>> loss(log_probs, torch.tensor([[1]]), [3], [1])  # 6 of the 8 alignments give [1]
        tensor(0.2877)
    """

    function = staticmethod(LFS.ctc_loss)

    def __init__(
        self,
        blank: int = 0,
        reduction: str = "mean",
        zero_infinity: bool = False,
        *,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        self.blank = VL.check_blank(blank)
        self.zero_infinity = zero_infinity
        self.validate = validate

    shown = ("blank", "reduction", "zero_infinity")

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor,
        input_lengths: Tensor | Sequence[int],
        target_lengths: Tensor | Sequence[int],
        *,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(
            log_probs, targets, input_lengths, target_lengths, **settings(self),
            mask=mask, normalizer=normalizer,
        )  # fmt: skip
