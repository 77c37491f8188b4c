"""Loss Modules: thin wrappers that hold configuration and buffers, like ``nn.Conv2d``.

Each constructor has torch's signature (losskit's additions keyword-only); each ``forward`` is one
call of the matching function in :mod:`losskit.functional`. Class ``weight`` and ``pos_weight``
are registered buffers, so they follow ``.to(device)`` and land in ``state_dict``. ``mask`` and
``normalizer`` change from batch to batch, so ``forward`` takes them as keyword arguments.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from . import _validate as V
from . import functional as LF
from ._reduction import resolve

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "LinearCrossEntropyLoss",
    "MSELoss",
    "NLLLoss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
]


class _Loss(nn.Module):
    """Holds ``reduction`` (legacy ``size_average``/``reduce`` mapped once, at construction)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = resolve(reduction, size_average, reduce)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())

    def _options(self) -> dict:
        return {"reduction": self.reduction}


class _WeightedLoss(_Loss):
    def __init__(
        self, weight: Tensor | None = None, size_average=None, reduce=None, reduction: str = "mean"
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        if weight is not None:
            V.require_tensor("weight", weight)
        self.register_buffer("weight", weight)
        self.weight: Tensor | None


class MSELoss(_Loss):
    """Mean squared error; see :func:`losskit.functional.mse_loss`.

    Example:
        >>> import torch, losskit
        >>> losskit.MSELoss(reduction="sum")(torch.ones(3), torch.zeros(3))
        tensor(3.)
    """

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.mse_loss(
            input, target, reduction=self.reduction, mask=mask, normalizer=normalizer
        )


class L1Loss(_Loss):
    """Mean absolute error; see :func:`losskit.functional.l1_loss`."""

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.l1_loss(input, target, reduction=self.reduction, mask=mask, normalizer=normalizer)


class SmoothL1Loss(_Loss):
    """Smooth L1; see :func:`losskit.functional.smooth_l1_loss`."""

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = V.check_float_option("beta", beta, low=0.0)

    def _options(self) -> dict:
        return {"reduction": self.reduction, "beta": self.beta}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.smooth_l1_loss(
            input,
            target,
            reduction=self.reduction,
            beta=self.beta,
            mask=mask,
            normalizer=normalizer,
        )


class HuberLoss(_Loss):
    """Huber loss; see :func:`losskit.functional.huber_loss`."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = V.check_float_option("delta", delta, low=0.0, low_open=True)

    def _options(self) -> dict:
        return {"reduction": self.reduction, "delta": self.delta}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.huber_loss(
            input,
            target,
            reduction=self.reduction,
            delta=self.delta,
            mask=mask,
            normalizer=normalizer,
        )


class BCELoss(_WeightedLoss):
    """Binary cross-entropy on probabilities; see :func:`losskit.functional.binary_cross_entropy`.

    Prefer :class:`BCEWithLogitsLoss` on logits: it needs no clamping.
    """

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

    def _options(self) -> dict:
        return {"reduction": self.reduction, "label_smoothing": self.label_smoothing}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.binary_cross_entropy(
            input,
            target,
            weight=self.weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            mask=mask,
            normalizer=normalizer,
        )


class BCEWithLogitsLoss(_WeightedLoss):
    """Binary cross-entropy on logits; see
    :func:`losskit.functional.binary_cross_entropy_with_logits`."""

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

    def _options(self) -> dict:
        return {"reduction": self.reduction, "label_smoothing": self.label_smoothing}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.binary_cross_entropy_with_logits(
            input,
            target,
            weight=self.weight,
            reduction=self.reduction,
            pos_weight=self.pos_weight,
            label_smoothing=self.label_smoothing,
            mask=mask,
            normalizer=normalizer,
        )


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy on logits; see :func:`losskit.functional.cross_entropy`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss(torch.zeros(2, 4), torch.tensor([0, 3])).shape
        torch.Size([])
    """

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
        self.ignore_index = ignore_index
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )
        self.z_loss = V.check_float_option("z_loss", z_loss, low=0.0)
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        if impl not in LF.categorical.IMPLS:
            raise V.LossValueError(f"impl must be one of {LF.categorical.IMPLS}, got {impl!r}")
        self.impl = impl
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

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ):
        return LF.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            mask=mask,
            normalizer=normalizer,
            z_loss=self.z_loss,
            softcap=self.softcap,
            return_z_loss=self.return_z_loss,
            impl=self.impl,
            inplace_backward=self.inplace_backward,
            validate=self.validate,
        )


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood; see :func:`losskit.functional.nll_loss`."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def _options(self) -> dict:
        return {"reduction": self.reduction, "ignore_index": self.ignore_index}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.nll_loss(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            mask=mask,
            normalizer=normalizer,
        )


class KLDivLoss(nn.Module):
    """KL divergence; see :func:`losskit.functional.kl_div` (``'batchmean'`` is the true KL)."""

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

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.kl_div(
            input,
            target,
            reduction=self.reduction,
            log_target=self.log_target,
            mask=mask,
            normalizer=normalizer,
        )


class SigmoidFocalLoss(_Loss):
    """Sigmoid focal loss (RetinaNet); see :func:`losskit.functional.sigmoid_focal_loss`.

    The defaults are torchvision's, including ``reduction='none'``.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.SigmoidFocalLoss(reduction="sum")
        >>> loss(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 0.0]))
        tensor(0.0170)
    """

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
        self.alpha = LF.focal.check_alpha(alpha)
        self.gamma = V.check_float_option("gamma", gamma, low=0.0)
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )
        self.validate = validate

    def _options(self) -> dict:
        return {
            "alpha": self.alpha,
            "gamma": self.gamma,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
        }

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.sigmoid_focal_loss(
            inputs,
            targets,
            alpha=self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            mask=mask,
            normalizer=normalizer,
            validate=self.validate,
        )


class FocalLoss(_WeightedLoss):
    """Softmax focal loss for multi-class logits; see :func:`losskit.functional.focal_loss`.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.FocalLoss(gamma=2.0)
        >>> loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor(0.0109)
    """

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
        self.ignore_index = ignore_index
        self.gamma = V.check_float_option("gamma", gamma, low=0.0)
        self.validate = validate

    def _options(self) -> dict:
        return {"reduction": self.reduction, "ignore_index": self.ignore_index, "gamma": self.gamma}

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return LF.focal_loss(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            gamma=self.gamma,
            mask=mask,
            normalizer=normalizer,
            validate=self.validate,
        )


class LinearCrossEntropyLoss(_Loss):
    """A linear head and cross-entropy in one, never holding the logits; see
    :func:`losskit.functional.linear_cross_entropy`.

    Holds the head as ``self.linear`` (an ``nn.Linear(in_features, num_classes)``) and the class
    ``weight`` as a buffer, as ``torch.nn.LinearCrossEntropyLoss`` does. To put the loss on a head
    that already exists (a language model's ``lm_head``), use :meth:`from_linear`: it shares the
    head's Parameters instead of copying them.

    Example:
        >>> import torch, losskit
        >>> loss = losskit.LinearCrossEntropyLoss(16, 100)
        >>> x, y = torch.randn(2, 5, 16), torch.randint(0, 100, (2, 5))
        >>> loss(x, y).shape
        torch.Size([])
        >>> head = torch.nn.Linear(16, 100, bias=False)
        >>> shared = losskit.LinearCrossEntropyLoss.from_linear(head, memory_budget="lean")
        >>> shared.linear.weight is head.weight
        True
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options: object | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
        chunk_size: int | None = None,
        memory_budget: int | str = "default",
        accumulate: str = "auto",
        validate: bool = True,
    ) -> None:
        out_features = tuple(out_features)
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in out_features):
            raise V.LossValueError(
                f"out_features must be a tuple of positive ints (d1, ..., dK), got {out_features!r}"
            )
        # As torch does: one nn.Linear of C * d1..dK outputs, reshaped to (C, d1..dK, D) per call.
        linear = nn.Linear(
            in_features, math.prod(out_features, start=num_classes), bias=bias, device=device,
            dtype=dtype,
        )  # fmt: skip
        self._setup(
            linear,
            num_classes=num_classes,
            out_features=out_features,
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            options=options,
            z_loss=z_loss,
            softcap=softcap,
            impl=impl,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            accumulate=accumulate,
            validate=validate,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
        chunk_size: int | None = None,
        memory_budget: int | str = "default",
        accumulate: str = "auto",
        validate: bool = True,
    ) -> LinearCrossEntropyLoss:
        """The loss on an existing ``nn.Linear`` head, sharing (not copying) its Parameters."""
        if not isinstance(linear, nn.Linear):
            raise V.LossTypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        obj = cls.__new__(cls)
        obj._setup(
            linear,
            num_classes=linear.out_features,
            out_features=(),
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            options=None,
            z_loss=z_loss,
            softcap=softcap,
            impl=impl,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            accumulate=accumulate,
            validate=validate,
        )
        return obj

    def _setup(
        self,
        linear: nn.Linear,
        *,
        num_classes: int,
        out_features: tuple[int, ...],
        reduction: str,
        weight: Tensor | None,
        ignore_index: int | None,
        label_smoothing: float,
        options: object | None,
        z_loss: float,
        softcap: float | None,
        impl: str,
        chunk_size: int | None,
        memory_budget: int | str,
        accumulate: str,
        validate: bool,
    ) -> None:
        _Loss.__init__(self, reduction=reduction)
        LF.linear._check_options(impl, chunk_size, memory_budget, accumulate)
        if weight is not None:
            V.require_tensor("weight", weight)
        self.linear = linear
        self.num_classes = num_classes
        self.out_features = out_features
        self.register_buffer("weight", weight)
        self.weight: Tensor | None
        self.ignore_index = ignore_index
        self.label_smoothing = V.check_float_option(
            "label_smoothing", label_smoothing, low=0.0, high=1.0
        )
        self.z_loss = V.check_float_option("z_loss", z_loss, low=0.0)
        if softcap is not None:
            softcap = V.check_float_option("softcap", softcap, low=0.0, low_open=True)
        self.softcap = softcap
        self.options = options
        self.impl = impl
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.accumulate = accumulate
        self.validate = validate

    def _options(self) -> dict:
        opts = {
            "in_features": self.linear.in_features,
            "num_classes": self.num_classes,
            **({"out_features": self.out_features} if self.out_features else {}),
            "bias": self.linear.bias is not None,
            "reduction": self.reduction,
        }
        if self.ignore_index is not None:
            opts["ignore_index"] = self.ignore_index
        if self.label_smoothing:
            opts["label_smoothing"] = self.label_smoothing
        if self.z_loss:
            opts["z_loss"] = self.z_loss
        if self.softcap is not None:
            opts["softcap"] = self.softcap
        for name, default in (
            ("impl", "auto"),
            ("chunk_size", None),
            ("memory_budget", "default"),
            ("accumulate", "auto"),
        ):
            if getattr(self, name) != default:
                opts[name] = getattr(self, name)
        return opts

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        if self.out_features:  # the (C * d1..dK, D) Linear as the (C, d1..dK, D) head
            weight = weight.reshape(self.num_classes, *self.out_features, weight.shape[-1])
            bias = None if bias is None else bias.reshape(self.num_classes, *self.out_features)
        return LF.linear_cross_entropy(
            input,
            weight,
            target,
            linear_bias=bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            options=self.options,
            z_loss=self.z_loss,
            softcap=self.softcap,
            normalizer=normalizer,
            mask=mask,
            impl=self.impl,
            chunk_size=self.chunk_size,
            memory_budget=self.memory_budget,
            accumulate=self.accumulate,
            validate=self.validate,
        )
