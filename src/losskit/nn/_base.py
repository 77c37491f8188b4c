"""What every loss Module shares: ``reduction``, the class ``weight`` buffer, and the rule by
which ``forward`` passes the Module's settings on to its function."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from .. import _validate as V
from .._reduction import resolve

#: the annotations of ``forward``'s per-batch keyword arguments (a bool mask, or None; the
#: ``'mean'`` denominator, or None)
Mask = Tensor | None
Normalizer = float | Tensor | None

# constructor arguments that are no settings of their own: torch's legacy flags, mapped into
# ``reduction`` at construction
_LEGACY = ("size_average", "reduce")


def _passed_on(cls: type) -> tuple[str, ...]:
    """The constructor arguments of ``cls`` (or of a base class) that ``cls.function`` takes."""
    losses = cls.__mro__[: cls.__mro__.index(nn.Module)]
    takes = {name for c in losses if "__init__" in vars(c) for name in _parameters(c.__init__)}
    return tuple(
        name
        for name in inspect.signature(cls.function).parameters
        if name in takes and name not in _LEGACY
    )


def _parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def settings(module: nn.Module) -> dict:
    """The Module's settings as keyword arguments of its ``function``, read at call time (so a
    changed ``module.reduction`` counts): each constructor argument that the function also takes,
    as the Module holds it now (an attribute, or the ``weight`` buffer)."""
    names = vars(type(module)).get("_passed")
    if names is None:  # a Module class not made through _Loss
        names = _passed_on(type(module))
    return {name: getattr(module, name) for name in names}


class _Loss(nn.Module):
    """Holds ``reduction`` (legacy ``size_average``/``reduce`` mapped once, at construction).

    Class attribute:
        function: the function of :mod:`losskit.functional` that ``forward`` calls (the
            Module's functional twin), e.g. ``losskit.MSELoss.function is
            losskit.functional.mse_loss``. ``forward`` passes it the input, the target, the
            Module's settings (see :func:`settings`) and the per-batch ``mask`` and
            ``normalizer``; :func:`losskit.check` compares the two. A Module whose function
            takes other inputs overrides ``forward``.
        shown: the settings ``repr`` shows.
    """

    #: the settings ``repr`` shows, in order
    shown: tuple[str, ...] = ("reduction",)

    def __init_subclass__(cls, **kwargs) -> None:
        # the settings passed on, found once per class here rather than by a functools cache:
        # torch.compile traces a class attribute but warns on every call through a cache
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "function"):
            cls._passed = _passed_on(cls)

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = resolve(reduction, size_average, reduce)

    def forward(
        self, input: Tensor, target: Tensor, *, mask: Mask = None, normalizer: Normalizer = None
    ) -> Tensor:
        """The loss of a batch: one call of ``function`` with the Module's settings."""
        return self.function(input, target, **settings(self), mask=mask, normalizer=normalizer)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())

    def _options(self) -> dict:
        return {name: getattr(self, name) for name in self.shown}


class _WeightedLoss(_Loss):
    def __init__(
        self, weight: Tensor | None = None, size_average=None, reduce=None, reduction: str = "mean"
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        if weight is not None:
            V.require_tensor("weight", weight)
        self.register_buffer("weight", weight)
        self.weight: Tensor | None
