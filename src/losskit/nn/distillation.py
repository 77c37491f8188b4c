"""The distillation Modules: a student's logits against a teacher's (or two heads' hidden states).

Each Module holds its options (checked at construction) and its ``forward`` is one call of its
function in :mod:`losskit.functional.distillation` with them. None has train/eval behaviour.
"""

from __future__ import annotations

from torch import Tensor

from .. import _validate as V
from .. import functional as LF
from .._validate import distillation as VD
from ._base import Mask, Normalizer, _Loss, settings

__all__ = [
    "DistillationLoss",
    "JensenShannonLoss",
    "KLDivergenceLoss",
    "LinearDistillationLoss",
    "TotalVariationLoss",
]


class _Divergence(_Loss):
    """The options every distillation Module holds; ``forward(student_logits, teacher_logits,
    target=None, *, mask=None, normalizer=None)``."""

    shown = ("temperature", "reduction", "ignore_index")

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        teacher_grad: bool = False,
        impl: str = "auto",
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.teacher_grad = bool(teacher_grad)
        self.impl = V.check_impl(impl)
        self.validate = bool(validate)
        self._check()

    def _check(self) -> None:
        """The options, checked as the function checks them (a bad one fails here)."""
        kwargs = {
            k: getattr(self, k)
            for k in ("divergence", "beta", "temperature", "alpha", "soft_scale", "ignore_index")
            if hasattr(self, k)
        }
        VD.distillation_options(reduction=self.reduction, **kwargs)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor | None = None,
        *,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(
            student_logits, teacher_logits, target, **settings(self), mask=mask,
            normalizer=normalizer,
        )  # fmt: skip


class KLDivergenceLoss(_Divergence):
    """KL divergence between the teacher's and the student's softmax; see
    :func:`losskit.functional.kl_divergence`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.KLDivergenceLoss(direction="reverse", temperature=2.0)
        >>> s, t = torch.randn(2, 5, 100, requires_grad=True), torch.randn(2, 5, 100)
        >>> loss(s, t).backward()
    """

    function = staticmethod(LF.kl_divergence)
    shown = ("direction", "temperature", "reduction", "ignore_index")

    def __init__(self, direction: str = "forward", **options) -> None:
        self.direction = direction
        VD.check_direction(direction)
        super().__init__(**options)


class JensenShannonLoss(_Divergence):
    """The generalized Jensen-Shannon divergence; see :func:`losskit.functional.jensen_shannon`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.JensenShannonLoss(beta=0.5)
        >>> s, t = torch.randn(8, 100, requires_grad=True), torch.randn(8, 100)
        >>> bool(loss(s, t) <= torch.log(torch.tensor(2.0)))
        True
    """

    function = staticmethod(LF.jensen_shannon)
    shown = ("beta", "temperature", "reduction", "ignore_index")

    def __init__(self, beta: float = 0.5, **options) -> None:
        self.beta = beta
        super().__init__(**options)


class TotalVariationLoss(_Divergence):
    """Total variation distance between teacher and student; see
    :func:`losskit.functional.total_variation`.

    Example:
        >>> import torch, losskit
        >>> s, t = torch.randn(8, 100, requires_grad=True), torch.randn(8, 100)
        >>> 0 <= float(losskit.TotalVariationLoss()(s, t)) <= 1
        True
    """

    function = staticmethod(LF.total_variation)


class DistillationLoss(_Divergence):
    """Hard cross-entropy plus soft divergence, ``alpha * CE + (1 - alpha) * T^2 * K``; see
    :func:`losskit.functional.distillation_loss`. ``forward(student_logits, teacher_logits,
    target)``.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.DistillationLoss(alpha=0.1, temperature=2.0)
        >>> s, t = torch.randn(4, 7, 100, requires_grad=True), torch.randn(4, 7, 100)
        >>> y = torch.randint(0, 100, (4, 7))
        >>> loss(s, t, y).backward()
    """

    function = staticmethod(LF.distillation_loss)
    shown = ("alpha", "divergence", "beta", "temperature", "soft_scale", "reduction")

    def __init__(
        self,
        alpha: float = 0.5,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        soft_scale: float | None = None,
        **options,
    ) -> None:
        self.alpha, self.divergence, self.beta, self.soft_scale = (
            alpha,
            divergence,
            beta,
            soft_scale,
        )
        super().__init__(**options)


class LinearDistillationLoss(DistillationLoss):
    """:func:`losskit.functional.linear_distillation_loss` as a Module: the distillation loss of
    two heads' logits, never holding them. The heads stay in their models: ``forward`` takes
    them, ``(student_input, student_weight, teacher_input, teacher_weight, target=None)`` or
    ``teacher_logprobs=``, as Liger-Kernel's ``LigerFusedLinearJSD`` does.

    Example:
        >>> import torch, losskit
        >>> student, teacher = torch.nn.Linear(16, 1000), torch.nn.Linear(32, 1000)
        >>> loss = losskit.LinearDistillationLoss(divergence="jsd", memory_budget="lean")
        >>> xs, xt = torch.randn(2, 9, 16, requires_grad=True), torch.randn(2, 9, 32)
        >>> out = loss(xs, student.weight, xt, teacher.weight,
        ...            student_bias=student.bias, teacher_bias=teacher.bias)
        >>> out.backward()
    """

    function = staticmethod(LF.linear_distillation_loss)

    def __init__(
        self,
        alpha: float = 0.0,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        soft_scale: float | None = None,
        *,
        chunk_size: int | None = None,
        memory_budget: int | str = "default",
        **options,
    ) -> None:
        super().__init__(alpha, divergence, beta, soft_scale, **options)
        V.check_linear_options(self.impl, chunk_size, memory_budget, "auto")
        self.chunk_size, self.memory_budget = chunk_size, memory_budget

    def forward(  # type: ignore[override]
        self,
        student_input: Tensor,
        student_weight: Tensor,
        teacher_input: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        target: Tensor | None = None,
        *,
        teacher_logprobs: Tensor | None = None,
        student_bias: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        mask: Mask = None,
        normalizer: Normalizer = None,
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(
            student_input, student_weight, teacher_input, teacher_weight, target,
            teacher_logprobs=teacher_logprobs, student_bias=student_bias,
            teacher_bias=teacher_bias, **settings(self), mask=mask, normalizer=normalizer,
        )  # fmt: skip
