"""Negative log-likelihoods of a distribution's parameters: Poisson and Gaussian.

Each keeps torch's signature and defaults, and torch's own function computes the numbers: with
no ``mask`` and no ``normalizer`` the result is torch's, bit for bit. What losskit adds comes
first, at the entry: clear errors where torch is silent (a negative count or variance, a target
or variance of a shape that torch would broadcast into the wrong loss, ``eps <= 0``), and the
keyword-only ``mask``, ``normalizer`` and ``validate``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as V
from .._reduction import resolve
from .._validate import likelihood as VL
from ._common import finish, keep

__all__ = ["gaussian_nll_loss", "poisson_nll_loss"]


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average: bool | None = None,
    eps: float = 1e-8,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Poisson negative log-likelihood of counts ``y`` under rates ``exp(x)`` (or ``x``).

    .. math::
        \ell_i = \begin{cases} e^{x_i} - y_i x_i & \text{log\_input} \\
                 x_i - y_i \log(x_i + \varepsilon) & \text{otherwise} \end{cases}
                 \; + \; [\text{full}]\, [y_i > 1] \left(y_i \log y_i - y_i
                 + \tfrac12 \log(2 \pi y_i)\right)

    The last term is Stirling's approximation of ``log(y!)``, added with ``full=True``.

    Args:
        input: the log-rate ``x`` (``log_input=True``) or the rate (``log_input=False``, then
            >= 0), any shape.
        target: counts ``y`` >= 0, the input's shape (torch broadcasts other shapes silently;
            losskit raises).
        log_input: whether ``input`` is the log of the rate. Default True.
        full: add the Stirling term. Default False.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        eps: > 0, added to the rate inside the log when ``log_input=False``. Default 1e-8.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to the target; False positions contribute 0
            (whatever they hold) and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count (0 gives 0).
        validate: keyword-only; ``False`` skips the value checks (target >= 0, and input >= 0
            when ``log_input=False``: one reduction each).

    Shape:
        Input ``(*)``; target ``(*)``, same shape; output scalar, or ``(*)`` with ``'none'``.

    Returns:
        The loss, in torch's dtype (the promoted dtype of input and target).

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.poisson_nll_loss(torch.zeros(2), torch.tensor([1.0, 3.0]), reduction="none")
        tensor([1., 1.])
    """
    reduction = resolve(reduction, size_average, reduce)
    eps = V.check_float_option("eps", eps, low=0.0, low_open=True)
    V.require_real("input", input)
    V.require_real("target", target, what="counts")
    V.check_elementwise(input, target, mask=mask, normalizer=normalizer, reduction=reduction)
    if mask is not None:
        input, target = keep(input, mask), keep(target, mask)
    if validate:
        VL.check_nonnegative("target", target, what="counts")
        if not log_input:
            VL.check_nonnegative(
                "input", input, what="rates", hint="with log_input=False; for log-rates pass "
                "log_input=True",
            )  # fmt: skip
    if mask is None and normalizer is None:
        return torch.nn.functional.poisson_nll_loss(
            input, target, log_input, full, None, eps, None, reduction
        )
    loss = torch.nn.functional.poisson_nll_loss(
        input, target, log_input, full, None, eps, None, "none"
    )
    return finish(loss, reduction, mask, normalizer)


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Gaussian negative log-likelihood of ``y`` under mean ``x`` and variance ``v``.

    .. math::
        \ell_i = \tfrac12 \left( \log \max(v_i, \varepsilon)
                 + \frac{(x_i - y_i)^2}{\max(v_i, \varepsilon)} \right)
                 \; + \; [\text{full}]\, \tfrac12 \log 2\pi

    As in torch, the clamp at ``eps`` is outside autograd: the gradient with respect to ``v``
    is taken at the clamped value and passed on as if no clamp were there.

    Args:
        input: the mean ``x``, any shape.
        target: ``y``: the input's shape, or that shape with one dimension of size 1 (broadcast
            along it). Other shapes raise (torch broadcasts them silently).
        var: variances >= 0: a tensor of the input's shape (heteroscedastic), of that shape with
            one dimension of size 1, or of the input's shape without its last dimension (one
            variance per row); or a number (one variance for all). These are torch's rules.
        full: add the constant ``log(2 pi) / 2``. Default False.
        eps: > 0, the variance's floor. Default 1e-6.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        mask: keyword-only bool tensor broadcastable to the input; False positions contribute 0
            (whatever input, target and var hold there) and leave the ``'mean'`` count.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead of
            the count (0 gives 0).
        validate: keyword-only; ``False`` skips the check that the variances are >= 0 (one
            reduction; a number is always checked).

    Shape:
        Input ``(*)``; target and var as above; output scalar, or ``(*)`` with ``'none'``.

    Returns:
        The loss, in torch's dtype (the promoted dtype of input, target and var).

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.gaussian_nll_loss(torch.zeros(2), torch.tensor([1.0, 3.0]), 1.0)
        tensor(2.5000)
    """
    reduction = resolve(reduction)
    eps = V.check_float_option("eps", eps, low=0.0, low_open=True)
    V.require_real("input", input)
    V.require_real("target", target)
    V.require_same_device("target", target, "input", input)
    if isinstance(var, Tensor):
        V.require_floating("var", var, what="variances")
        V.require_same_device("var", var, "input", input)
        unsqueeze = VL.check_gaussian_shapes(input, target, var)
    else:
        var = VL.check_number("var", var, what="a variance")
        unsqueeze = VL.check_gaussian_shapes(input, target, None)
    V.check_mask(mask, input.shape, what="the input")
    V.check_normalizer(normalizer, reduction)
    if mask is not None:
        input, target = keep(input, mask), keep(target, mask)
        if isinstance(var, Tensor):
            # 1 where left out: a finite variance, and the loss there is 0
            var = torch.where(mask, var.unsqueeze(-1) if unsqueeze else var, 1)
    if validate and isinstance(var, Tensor):
        VL.check_nonnegative("var", var, what="variances")
    if mask is None and normalizer is None:
        return torch.nn.functional.gaussian_nll_loss(input, target, var, full, eps, reduction)
    loss = torch.nn.functional.gaussian_nll_loss(input, target, var, full, eps, "none")
    return finish(loss, reduction, mask, normalizer)
