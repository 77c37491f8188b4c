"""Write your own loss once, per element, and get the rest of a torch loss for free.

Two ways in, with the same options and the same numbers:

- :class:`Loss`, a Module base: a subclass writes only ``elementwise(self, input, target)``.
- :func:`loss_function`, a decorator: it turns ``f(input, target, **hyper)`` into a functional
  loss and gives it a Module twin, ``f.Module``.

Both supply what every loss needs and custom losses usually get wrong: ``reduction``
(``'none'`` | ``'mean'`` | ``'sum'``, the deprecated ``'elementwise_mean'`` and the legacy
``size_average``/``reduce`` flags, mapped as torch maps them), an elementwise ``weight``, a
``mask`` and a ``normalizer`` (see :func:`losskit.count_targets`), a shape check that refuses the
silent broadcasting torch only warns about, and a 0-dim result for ``'mean'``/``'sum'``.
Verify the result with :func:`losskit.check`.

The unreduced loss is ``l_i = w_i f(x_i, y_i)``. ``'sum'`` adds the counted positions, ``'mean'``
divides that sum by their count (or by ``normalizer``). The weight rescales, as ``BCELoss``'s
does: for a weighted *average* pass ``normalizer=weight.sum()`` (the masked weights' sum with a
mask).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from torch import Tensor, nn

from . import _validate as V
from ._reduction import reduce as reduce_loss
from ._reduction import resolve
from .functional._common import keep

__all__ = ["Loss", "loss_function"]

#: names the options take; a per-element function cannot use them for its hyper-parameters
RESERVED = (
    "input",
    "target",
    "reduction",
    "weight",
    "mask",
    "normalizer",
    "size_average",
    "reduce",
)


def apply_elementwise(
    elementwise: Callable[[Tensor, Tensor], Tensor],
    input: Tensor,
    target: Tensor,
    *,
    reduction: str,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    same_shape: bool = True,
    name: str = "the loss",
) -> Tensor:
    """Check the call, run ``elementwise(input, target)``, weight, mask and reduce it.

    ``reduction`` must already be resolved (``'none'``, ``'mean'`` or ``'sum'``).
    """
    V.require_tensor("input", input)
    V.require_tensor("target", target)
    V.require_same_device("target", target, "input", input)
    if same_shape:
        V.require_same_shape(input, target)
        V.check_mask(mask, target.shape)
        # masked positions are zeroed before f runs: inf/NaN there reaches no value or gradient
        input, target = keep(input, mask), keep(target, mask)
    V.check_normalizer(normalizer, reduction)

    loss = elementwise(input, target)
    if not isinstance(loss, Tensor):
        raise V.LossTypeError(
            f"{name} must return a tensor with one loss per element, got "
            f"{type(loss).__name__} (a Python number has left autograd: drop .item()/float())"
        )
    if same_shape and loss.shape != input.shape:
        raise V.LossValueError(
            f"{name} returned shape {V.shape_str(loss.shape)} but input has shape "
            f"{V.shape_str(input.shape)}; it must return one loss per element and leave the "
            "reduction to the 'reduction' option"
        )
    if weight is not None:
        V.require_broadcastable_to("weight", weight, loss.shape, "the elementwise loss")
        V.require_same_device("weight", weight, "input", input)
        loss = loss * weight
    V.check_mask(mask, loss.shape, what="the elementwise loss")
    return reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)


def _check_weight(weight: Tensor | None) -> None:
    if weight is not None:
        V.require_floating("weight", weight, what="one weight per element, or broadcastable")


class Loss(nn.Module):
    r"""Base for a custom loss Module: write ``elementwise(self, input, target)``, nothing else.

    .. math:: \ell_i = w_i\, f(x_i, y_i)

    where ``f`` is :meth:`elementwise`. The base checks the call, applies ``weight`` and
    ``mask``, and reduces; ``forward`` is that and nothing more.

    Args:
        weight: optional elementwise rescaling weight, broadcastable to the elementwise loss; a
            registered buffer (follows ``.to(device)``, lands in ``state_dict``).
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them (with
            torch's warning).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (``'elementwise_mean'``, the old name of
            ``'mean'``, with a warning). Default ``'mean'``.

    Forward keyword arguments:
        mask: bool tensor broadcastable to the elementwise loss (True = the position counts);
            False positions give 0 with ``'none'`` and leave the sum and the ``'mean'`` count.
            Inf or NaN at masked positions does not leak.
        normalizer: with ``'mean'``, divide the summed loss by this instead of the count (0 gives
            0, not NaN).

    Class attribute:
        same_shape: ``True`` (default) requires input and target of equal shapes and an
            elementwise loss of the input's shape. Set ``False`` for a loss whose target has
            another shape; the mask then refers to the shape ``elementwise`` returns.

    Shape:
        - Input: ``(*)``. Target: ``(*)``, same shape.
        - Output: scalar, or ``(*)`` with ``reduction='none'``.

    Example:
        The tutorial's mean squared error, as a subclass; it equals ``MSELoss`` in every
        reduction:

        >>> import torch, losskit
        >>> class My_loss(losskit.Loss):
        ...     def elementwise(self, x, y):
        ...         return (x - y) ** 2
        >>> x, y = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
        >>> My_loss()(x, y), My_loss(reduction="none")(x, y)
        (tensor(2.), tensor([0., 4.]))
    """

    same_shape: bool = True

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = resolve(reduction, size_average, reduce)
        _check_weight(weight)
        self.register_buffer("weight", weight)
        self.weight: Tensor | None

    def elementwise(self, input: Tensor, target: Tensor) -> Tensor:
        """The unreduced, unweighted loss: one value per element, the input's shape."""
        raise NotImplementedError(
            f"{type(self).__name__} must define elementwise(self, input, target), returning one "
            "loss per element"
        )

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        return apply_elementwise(
            self.elementwise,
            input,
            target,
            reduction=self.reduction,
            weight=self.weight,
            mask=mask,
            normalizer=normalizer,
            same_shape=self.same_shape,
            name=f"{type(self).__name__}.elementwise",
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def loss_function(
    elementwise: Callable[..., Tensor] | None = None, *, same_shape: bool = True
) -> Callable:
    r"""Decorator: a per-element function becomes a functional loss with a Module twin.

    The decorated ``f(input, target, **hyper)`` returns one loss per element. The result is

    - a function ``f(input, target, reduction='mean', weight=None, *, mask=None,
      normalizer=None, **hyper)`` computing :math:`\ell_i = w_i f(x_i, y_i)` reduced as asked
      (the options are those of :class:`Loss`);
    - with ``f.Module``, an :class:`Loss` subclass taking ``(weight=None, size_average=None,
      reduce=None, reduction='mean', **hyper)``, whose forward takes ``mask`` and
      ``normalizer``; its ``functional`` attribute is ``f`` (so :func:`losskit.check` compares
      the two);
    - and ``f.elementwise``, the undecorated function.

    ``f.Module`` pickles (and its ``state_dict`` loads) when ``f`` is defined at module level.

    Args:
        elementwise: the per-element function. Parameters after ``input`` and ``target`` are its
            hyper-parameters (give them defaults; make them keyword-only); they may not be named
            like an option (``reduction``, ``weight``, ``mask``, ``normalizer``, ...).
        same_shape: keyword-only; as :attr:`Loss.same_shape`. Use ``@loss_function(
            same_shape=False)`` for a target of another shape.

    Returns:
        The functional loss (with ``.Module`` and ``.elementwise``).

    Example:
        >>> import torch, losskit
        >>> @losskit.loss_function
        ... def log_cosh(input, target, *, scale=1.0):
        ...     return torch.log(torch.cosh(scale * (input - target))) / scale
        >>> x, y = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
        >>> log_cosh(x, y, "sum")
        tensor(0.4338)
        >>> log_cosh.Module(reduction="sum", scale=1.0)(x, y)
        tensor(0.4338)
    """
    if elementwise is None:
        return functools.partial(loss_function, same_shape=same_shape)
    if not callable(elementwise):
        raise V.LossTypeError(
            f"loss_function decorates a function f(input, target, ...), got "
            f"{type(elementwise).__name__}"
        )

    params = list(inspect.signature(elementwise).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < 2 or any(p.kind not in positional for p in params[:2]):
        raise V.LossValueError(
            f"{elementwise.__name__} must take (input, target) as its first two positional "
            "parameters"
        )
    hyper_params = params[2:]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in hyper_params)
    hyper_params = [p for p in hyper_params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in hyper_params):
        raise V.LossValueError(f"{elementwise.__name__} may not take *args")
    hyper_names = [p.name for p in hyper_params]
    clash = [n for n in hyper_names if n in RESERVED]
    if clash:
        raise V.LossValueError(
            f"{elementwise.__name__} has a hyper-parameter named {clash[0]!r}, which is the name "
            f"of a loss option; rename it (reserved: {', '.join(RESERVED)})"
        )
    defaults = {p.name: p.default for p in hyper_params if p.default is not p.empty}
    fn_name = elementwise.__name__

    def check_hyper(hyper: dict, where: str) -> None:
        if accepts_any:
            return
        unknown = [k for k in hyper if k not in hyper_names]
        if unknown:
            known = ", ".join(hyper_names) or "none"
            raise V.LossTypeError(
                f"{where} got an unexpected keyword argument {unknown[0]!r}; the "
                f"hyper-parameters of {fn_name} are: {known}"
            )

    @functools.wraps(elementwise)
    def loss(
        input: Tensor,
        target: Tensor,
        reduction: str = "mean",
        weight: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        normalizer: float | Tensor | None = None,
        **hyper,
    ) -> Tensor:
        reduction = resolve(reduction)
        check_hyper(hyper, f"{fn_name}()")
        _check_weight(weight)
        return apply_elementwise(
            functools.partial(elementwise, **hyper) if hyper else elementwise,
            input,
            target,
            reduction=reduction,
            weight=weight,
            mask=mask,
            normalizer=normalizer,
            same_shape=same_shape,
            name=fn_name,
        )

    P = inspect.Parameter
    loss.__signature__ = inspect.Signature(
        [
            P("input", P.POSITIONAL_OR_KEYWORD, annotation=Tensor),
            P("target", P.POSITIONAL_OR_KEYWORD, annotation=Tensor),
            P("reduction", P.POSITIONAL_OR_KEYWORD, default="mean", annotation=str),
            P("weight", P.POSITIONAL_OR_KEYWORD, default=None),
            P("mask", P.KEYWORD_ONLY, default=None),
            P("normalizer", P.KEYWORD_ONLY, default=None),
            *[p.replace(kind=P.KEYWORD_ONLY) for p in hyper_params],
        ],
        return_annotation=Tensor,
    )

    class Module(Loss):
        # Loss's options, with Loss's defaults and annotations, then the hyper-parameters
        def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean", **hyper):
            super().__init__(weight, size_average, reduce, reduction)
            check_hyper(hyper, f"{type(self).__name__}()")
            missing = [n for n in hyper_names if n not in hyper and n not in defaults]
            if missing:
                raise V.LossTypeError(
                    f"{type(self).__name__}() is missing the hyper-parameter {missing[0]!r} "
                    f"(it has no default in {fn_name})"
                )
            self._hyper = {**defaults, **hyper}
            for key, value in self._hyper.items():
                setattr(self, key, value)

        def elementwise(self, input: Tensor, target: Tensor) -> Tensor:
            hyper = {key: getattr(self, key) for key in self._hyper}
            return elementwise(input, target, **hyper)

        def extra_repr(self) -> str:
            extra = "".join(f", {k}={getattr(self, k)!r}" for k in self._hyper)
            return f"reduction={self.reduction!r}{extra}"

    Module.same_shape = same_shape
    Module.functional = staticmethod(loss)
    Module.__name__ = _camel(fn_name) + ("" if fn_name.lower().endswith("loss") else "Loss")
    Module.__qualname__ = f"{elementwise.__qualname__}.Module"
    Module.__module__ = elementwise.__module__
    Module.__doc__ = (
        f"Module form of :func:`{fn_name}`: ``{Module.__name__}(weight=None, "
        f"reduction='mean', **hyper)(input, target, *, mask=None, normalizer=None)``."
    )
    loss.Module = Module
    loss.elementwise = elementwise
    return loss
