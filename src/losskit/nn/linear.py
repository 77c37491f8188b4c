"""The linear cross-entropy Module: a linear head and cross-entropy in one."""

from __future__ import annotations

import math

from torch import Tensor, nn

from .. import _validate as V
from .. import functional as LF
from ._base import Mask, Normalizer, _Loss, settings


class LinearCrossEntropyLoss(_Loss):
    """A linear head and cross-entropy in one, never holding the logits; see
    :func:`losskit.functional.linear_cross_entropy`.

    Holds the head as ``self.linear`` (an ``nn.Linear(in_features, num_classes)``) and the class
    ``weight`` as a buffer, as ``torch.nn.LinearCrossEntropyLoss`` does. To put the loss on a head
    that already exists (a language model's ``lm_head``), use :meth:`from_linear`: it shares the
    head's Parameters instead of copying them. With ``return_z_loss=True`` a call returns
    ``(loss, z_term)``, as :class:`losskit.CrossEntropyLoss` does.

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

    function = staticmethod(LF.linear_cross_entropy)

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
        return_z_loss: bool = False,
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
        super().__init__(reduction=reduction)
        # the function's checks, at construction
        opts = V.cross_entropy_options(
            self.reduction, ignore_index, label_smoothing, z_loss, softcap, allow_none_ignore=True
        )
        V.check_linear_options(impl, chunk_size, memory_budget, accumulate)
        if weight is not None:
            V.require_tensor("weight", weight)
        self.linear = linear
        self.num_classes = num_classes
        self.out_features = out_features
        self.register_buffer("weight", weight)
        self.weight: Tensor | None
        self.ignore_index = opts.ignore_index
        self.label_smoothing = opts.label_smoothing
        self.z_loss = opts.z_loss
        self.softcap = opts.softcap
        self.return_z_loss = return_z_loss
        self.options = options
        self.impl = impl
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.accumulate = accumulate
        self.validate = validate

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
        return_z_loss: bool = False,
        impl: str = "auto",
        chunk_size: int | None = None,
        memory_budget: int | str = "default",
        accumulate: str = "auto",
        validate: bool = True,
    ) -> LinearCrossEntropyLoss:
        """The loss on an existing ``nn.Linear`` head, sharing (not copying) its Parameters."""
        if not isinstance(linear, nn.Linear):
            raise V.LossTypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        # built around a stand-in head on the meta device (it takes no memory), then given `linear`
        obj = cls(
            linear.in_features,
            linear.out_features,
            device="meta",
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            return_z_loss=return_z_loss,
            impl=impl,
            chunk_size=chunk_size,
            memory_budget=memory_budget,
            accumulate=accumulate,
            validate=validate,
        )
        obj.linear = linear
        return obj

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
        if self.return_z_loss:
            opts["return_z_loss"] = True
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
        self, input: Tensor, target: Tensor, *, mask: Mask = None, normalizer: Normalizer = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        weight, bias = self.linear.weight, self.linear.bias
        if self.out_features:  # the (C * d1..dK, D) Linear as the (C, d1..dK, D) head
            weight = weight.reshape(self.num_classes, *self.out_features, weight.shape[-1])
            bias = None if bias is None else bias.reshape(self.num_classes, *self.out_features)
        return LF.linear_cross_entropy(
            input,
            weight,
            target,
            linear_bias=bias,
            **settings(self),
            mask=mask,
            normalizer=normalizer,
        )
