"""The preference and policy-gradient Modules (DPO, ORPO, CPO, SimPO, KTO, GRPO).

Each loss has two Modules: ``XxxLoss`` on log-probabilities (what TRL's trainers compute from
full logits) and ``LinearXxxLoss`` on the policy's hidden states and head (the fused path of
:mod:`losskit.functional.preference`; the head stays in its model: ``forward`` takes its weight,
as Liger-Kernel's ``LigerFusedLinearDPOLoss`` does). Each holds its options, checked at
construction by the function's own checks, and its ``forward`` is one call of its function with
them. None has train/eval behaviour.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as V
from .. import functional as LF
from .._validate import preference as VP
from ..functional import preference as P
from ._base import Mask, _Loss, settings

__all__ = [
    "CPOLoss",
    "DPOLoss",
    "GRPOLoss",
    "KTOLoss",
    "LinearCPOLoss",
    "LinearDPOLoss",
    "LinearGRPOLoss",
    "LinearKTOLoss",
    "LinearORPOLoss",
    "LinearSimPOLoss",
    "ORPOLoss",
    "SimPOLoss",
]

_PROBE = torch.zeros(2, dtype=torch.float64)


class _Preference(_Loss):
    """Options every preference Module holds; the loss's own keyword options are attributes
    named as its function's arguments (so :func:`~._base.settings` passes them on)."""

    def __init__(
        self, reduction: str | None = "mean", *, return_metrics: bool = False, **opts
    ) -> None:
        if reduction is None:  # GRPO: normalized as its loss_type says, no reduction
            torch.nn.Module.__init__(self)
            self.reduction = None
        else:
            super().__init__(reduction=reduction)
        self.return_metrics = bool(return_metrics)
        for k, v in opts.items():
            setattr(self, k, v)
        self._check()

    def _check(self) -> None:
        """The options, checked by calling the function on a tiny probe (a bad one fails here)."""
        raise NotImplementedError


class _Linear:
    """The fused path's options (``impl``, ``chunk_size``, ``memory_budget``, ...)."""

    def _linear_options(
        self, impl, chunk_size, memory_budget, validate, temperature, ignore_index
    ) -> None:
        V.check_linear_options(impl, chunk_size, memory_budget, "auto")
        P._check_temperature(temperature)
        V.check_ignore_index(ignore_index)
        self.impl, self.chunk_size, self.memory_budget = impl, chunk_size, memory_budget
        self.validate, self.temperature, self.ignore_index = (
            bool(validate),
            temperature,
            ignore_index,
        )


# --------------------------------------------------------------------------------------------
# on log-probabilities
# --------------------------------------------------------------------------------------------


class DPOLoss(_Preference):
    """:func:`losskit.functional.dpo_loss` as a Module.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.DPOLoss(beta=0.1, loss_type="ipo")
        >>> pc, pr, rc, rr = (torch.randn(4) - 10 for _ in range(4))
        >>> out = loss(pc, pr, rc, rr)
    """

    function = staticmethod(LF.dpo_loss)
    shown = ("beta", "loss_type", "label_smoothing", "reduction")

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        *,
        return_metrics: bool = False,
    ) -> None:
        super().__init__(
            reduction,
            return_metrics=return_metrics,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
        )

    def _check(self) -> None:
        P._dpo_options(self.beta, self.loss_type, self.label_smoothing)
        VP.check_reduction(self.reduction)

    def forward(  # type: ignore[override]
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor,
    ):
        """The loss of a batch of pairs: one call of ``function`` with the Module's settings."""
        return self.function(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            **settings(self),
        )


class _TwoLogps(_Preference):
    def forward(self, chosen_logps: Tensor, rejected_logps: Tensor):  # type: ignore[override]
        """The loss of a batch of pairs: one call of ``function`` with the Module's settings."""
        return self.function(chosen_logps, rejected_logps, **settings(self))

    def _check(self) -> None:
        self.function(_PROBE - 1.0, _PROBE - 2.0, **settings(self))


class ORPOLoss(_TwoLogps):
    """:func:`losskit.functional.orpo_loss` (the odds-ratio term) as a Module."""

    function = staticmethod(LF.orpo_loss)
    shown = ("beta", "reduction")

    def __init__(
        self, beta: float = 0.1, reduction: str = "mean", *, return_metrics: bool = False
    ) -> None:
        super().__init__(reduction, return_metrics=return_metrics, beta=beta)


class CPOLoss(_TwoLogps):
    """:func:`losskit.functional.cpo_loss` (the preference term) as a Module."""

    function = staticmethod(LF.cpo_loss)
    shown = ("beta", "label_smoothing", "reduction")

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        *,
        return_metrics: bool = False,
    ) -> None:
        super().__init__(
            reduction, return_metrics=return_metrics, beta=beta, label_smoothing=label_smoothing
        )


class SimPOLoss(_TwoLogps):
    """:func:`losskit.functional.simpo_loss` as a Module."""

    function = staticmethod(LF.simpo_loss)
    shown = ("beta", "gamma", "label_smoothing", "reduction")

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 0.5,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        *,
        return_metrics: bool = False,
    ) -> None:
        super().__init__(
            reduction,
            return_metrics=return_metrics,
            beta=beta,
            gamma=gamma,
            label_smoothing=label_smoothing,
        )


class KTOLoss(_Preference):
    """:func:`losskit.functional.kto_loss` as a Module; ``forward(policy_logps,
    reference_logps, desirable, *, kl=0.0)`` (the reference point changes with the batch)."""

    function = staticmethod(LF.kto_loss)
    shown = ("beta", "desirable_weight", "undesirable_weight", "reduction")

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reduction: str = "mean",
        *,
        return_metrics: bool = False,
    ) -> None:
        super().__init__(
            reduction,
            return_metrics=return_metrics,
            beta=beta,
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
        )

    def _check(self) -> None:
        P._kto_rule(0.0, self.beta, self.desirable_weight, self.undesirable_weight)
        VP.check_reduction(self.reduction)

    def forward(  # type: ignore[override]
        self,
        policy_logps: Tensor,
        reference_logps: Tensor,
        desirable: Tensor,
        *,
        kl: float | Tensor = 0.0,
    ):
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(policy_logps, reference_logps, desirable, kl=kl, **settings(self))


class GRPOLoss(_Preference):
    """:func:`losskit.functional.grpo_loss` as a Module; ``forward(logps, advantages, *,
    mask=None, old_logps=None, reference_logps=None, normalizer=None)``."""

    function = staticmethod(LF.grpo_loss)
    shown = ("beta", "epsilon", "epsilon_high", "loss_type")

    def __init__(
        self,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: str = "dapo",
        *,
        max_completion_length: int | None = None,
        return_metrics: bool = False,
    ) -> None:
        super().__init__(
            None,
            return_metrics=return_metrics,
            beta=beta,
            epsilon=epsilon,
            epsilon_high=epsilon_high,
            loss_type=loss_type,
            max_completion_length=max_completion_length,
        )

    def _check(self) -> None:
        P._grpo_rule(
            self.beta,
            self.epsilon,
            self.epsilon_high,
            self.loss_type,
            self.max_completion_length,
            None,
        )

    def forward(  # type: ignore[override]
        self,
        logps: Tensor,
        advantages: Tensor,
        *,
        mask: Mask = None,
        old_logps: Tensor | None = None,
        reference_logps: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ):
        """The loss of a batch of completions: one call of ``function``."""
        return self.function(
            logps,
            advantages,
            mask=mask,
            old_logps=old_logps,
            reference_logps=reference_logps,
            normalizer=normalizer,
            **settings(self),
        )


# --------------------------------------------------------------------------------------------
# on hidden states and a head (fused)
# --------------------------------------------------------------------------------------------


class _LinearPreference(_Linear, _Preference):
    """``forward(hidden, weight, target, *, bias=None, mask=None, ...)``; the fused path's
    options are keyword-only constructor arguments."""

    def __init__(
        self,
        reduction: str = "mean",
        *,
        return_metrics: bool = False,
        temperature: float = 1.0,
        ignore_index: int = -100,
        impl: str = "auto",
        chunk_size: int | None = None,
        memory_budget: int | str = "default",
        validate: bool = True,
        **opts,
    ) -> None:
        self._linear_options(impl, chunk_size, memory_budget, validate, temperature, ignore_index)
        _Preference.__init__(self, reduction, return_metrics=return_metrics, **opts)

    def forward(  # type: ignore[override]
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        *,
        bias: Tensor | None = None,
        mask: Mask = None,
    ):
        """The loss of a batch of pairs: one call of ``function`` with the Module's settings."""
        return self.function(hidden, weight, target, bias=bias, mask=mask, **settings(self))


class _WithReference(_LinearPreference):
    def forward(  # type: ignore[override]
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        *,
        bias: Tensor | None = None,
        reference_logps: Tensor | None = None,
        reference_input: Tensor | None = None,
        reference_weight: Tensor | None = None,
        reference_bias: Tensor | None = None,
        mask: Mask = None,
    ):
        """The loss of a batch of pairs: one call of ``function`` with the Module's settings."""
        return self.function(
            hidden,
            weight,
            target,
            bias=bias,
            reference_logps=reference_logps,
            reference_input=reference_input,
            reference_weight=reference_weight,
            reference_bias=reference_bias,
            mask=mask,
            **settings(self),
        )


class LinearDPOLoss(_WithReference, DPOLoss):
    """:func:`losskit.functional.linear_dpo_loss` as a Module: DPO from the policy's hidden
    states and head, never holding the logits.

    Example:
        >>> import torch, losskit
        >>> head = torch.nn.Linear(16, 1000, bias=False)
        >>> loss = losskit.LinearDPOLoss(beta=0.1, return_metrics=True)
        >>> h = torch.randn(4, 9, 16, requires_grad=True)  # 2 chosen, then 2 rejected
        >>> y = torch.randint(0, 1000, (4, 9))
        >>> out, metrics = loss(h, head.weight, y, reference_logps=torch.randn(4) - 60)
        >>> out.backward()
        >>> sorted(metrics)[:2]
        ['logps/chosen', 'logps/rejected']
    """

    function = staticmethod(LF.linear_dpo_loss)

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        **options,
    ) -> None:
        _LinearPreference.__init__(
            self,
            reduction,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            **options,
        )


class LinearORPOLoss(_LinearPreference):
    """:func:`losskit.functional.linear_orpo_loss` (the whole ORPO loss) as a Module."""

    function = staticmethod(LF.linear_orpo_loss)
    shown = ("beta", "reduction")

    def __init__(self, beta: float = 0.1, reduction: str = "mean", **options) -> None:
        super().__init__(reduction, beta=beta, **options)

    def _check(self) -> None:
        VP.check_beta(self.beta)
        VP.check_reduction(self.reduction)


class LinearCPOLoss(_LinearPreference):
    """:func:`losskit.functional.linear_cpo_loss` (the whole CPO loss) as a Module."""

    function = staticmethod(LF.linear_cpo_loss)
    shown = ("beta", "alpha", "label_smoothing", "reduction")

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 1.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        **options,
    ) -> None:
        super().__init__(
            reduction, beta=beta, alpha=alpha, label_smoothing=label_smoothing, **options
        )

    def _check(self) -> None:
        P._cpo_rule(self.beta, self.label_smoothing, self.alpha, getattr(self, "gamma", None))
        VP.check_reduction(self.reduction)


class LinearSimPOLoss(_LinearPreference):
    """:func:`losskit.functional.linear_simpo_loss` as a Module."""

    function = staticmethod(LF.linear_simpo_loss)
    shown = ("beta", "gamma", "alpha", "label_smoothing", "reduction")

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 0.5,
        alpha: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        **options,
    ) -> None:
        super().__init__(
            reduction,
            beta=beta,
            gamma=gamma,
            alpha=alpha,
            label_smoothing=label_smoothing,
            **options,
        )

    _check = LinearCPOLoss._check


class LinearKTOLoss(_WithReference, KTOLoss):
    """:func:`losskit.functional.linear_kto_loss` as a Module; ``forward(hidden, weight,
    target, desirable, *, kl=0.0, ...)``."""

    function = staticmethod(LF.linear_kto_loss)

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reduction: str = "mean",
        **options,
    ) -> None:
        _LinearPreference.__init__(
            self,
            reduction,
            beta=beta,
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
            **options,
        )

    def forward(  # type: ignore[override]
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        desirable: Tensor,
        *,
        kl: float | Tensor = 0.0,
        bias: Tensor | None = None,
        reference_logps: Tensor | None = None,
        reference_input: Tensor | None = None,
        reference_weight: Tensor | None = None,
        reference_bias: Tensor | None = None,
        mask: Mask = None,
    ):
        """The loss of a batch of examples: one call of ``function``."""
        return self.function(
            hidden,
            weight,
            target,
            desirable,
            kl=kl,
            bias=bias,
            reference_logps=reference_logps,
            reference_input=reference_input,
            reference_weight=reference_weight,
            reference_bias=reference_bias,
            mask=mask,
            **settings(self),
        )


class LinearGRPOLoss(_LinearPreference, GRPOLoss):
    """:func:`losskit.functional.linear_grpo_loss` as a Module; ``forward(hidden, weight,
    target, advantages, *, old_logps=None, reference_logps=None, ..., normalizer=None)``."""

    function = staticmethod(LF.linear_grpo_loss)

    def __init__(
        self,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: str = "dapo",
        *,
        max_completion_length: int | None = None,
        **options,
    ) -> None:
        _LinearPreference.__init__(
            self,
            None,
            beta=beta,
            epsilon=epsilon,
            epsilon_high=epsilon_high,
            loss_type=loss_type,
            max_completion_length=max_completion_length,
            **options,
        )

    def forward(  # type: ignore[override]
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        advantages: Tensor,
        *,
        old_logps: Tensor | None = None,
        bias: Tensor | None = None,
        reference_logps: Tensor | None = None,
        reference_input: Tensor | None = None,
        reference_weight: Tensor | None = None,
        reference_bias: Tensor | None = None,
        mask: Mask = None,
        normalizer: float | Tensor | None = None,
    ):
        """The loss of a batch of completions: one call of ``function``."""
        return self.function(
            hidden,
            weight,
            target,
            advantages,
            old_logps=old_logps,
            bias=bias,
            reference_logps=reference_logps,
            reference_input=reference_input,
            reference_weight=reference_weight,
            reference_bias=reference_bias,
            mask=mask,
            normalizer=normalizer,
            **settings(self),
        )
