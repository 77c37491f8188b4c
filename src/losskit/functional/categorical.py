"""Multi-class classification: cross-entropy, negative log-likelihood, KL divergence.

Cross-entropy takes the tutorial's three target forms and gives one answer:

- class indices ``(N)`` / ``(N, d1..dK)`` (integer), with ``weight``, ``ignore_index`` and
  ``label_smoothing`` following torch's exact formulas;
- one-hot or soft probability targets of the input's shape (floating): the same loss *and
  gradient* as the index form for one-hot targets (for a weighted ``'mean'``, torch divides the
  probability form by the number of positions rather than by the targets' weights, and losskit
  keeps torch's numbers).

The input may be ``(N, C)``, ``(N, C, d1..dK)`` or unbatched ``(C,)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import _dispatch as D
from .. import _validate as V
from .._reduction import Rows, count_rows, resolve
from .._reduction import reduce as reduce_loss
from ..kernels.recompute import Recompute
from . import _torch
from ._common import compute_dtype, flatten_classes, keep, result_dtype

__all__ = [
    "class_rows",
    "count_targets",
    "cross_entropy",
    "kl_div",
    "nll_loss",
    "reference_cross_entropy",
]


def _plain(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    *,
    probabilities: bool,
) -> bool:
    """Whether a checked categorical call can be torch's own kernel (see
    :mod:`losskit.functional._torch`): no mask or normalizer, float32 or float64 input, a weight
    of its dtype that needs no gradient (torch's kernels give it none), and probabilities of the
    input's dtype (any integer index dtype: the caller widens it to int64)."""
    return (
        mask is None
        and normalizer is None
        and input.dtype in _torch.DTYPES
        and (weight is None or (weight.dtype == input.dtype and not weight.requires_grad))
        and (not probabilities or target.dtype == input.dtype)
    )


# --------------------------------------------------------------------------------------------
# count_targets
# --------------------------------------------------------------------------------------------


def count_targets(
    target: Tensor, *, ignore_index: int = -100, mask: Tensor | None = None
) -> Tensor:
    """Count the positions a loss's ``'mean'`` would average over.

    Integer targets count positions that are not ``ignore_index``; floating targets (probabilities
    or regression targets) count every position. ``mask`` (True = counts) removes more.
    Pass the sum of this over micro-batches or ranks as ``normalizer`` to get the exact token
    mean under gradient accumulation or data parallelism.

    For probability targets of shape ``(N, C, ...)`` pass the count of the positions ``(N, ...)``:
    ``count_targets(target[:, 0])`` or use ``mask``.

    Returns:
        A 0-dim int64 tensor on the target's device (no host sync).

    Example:
        >>> import torch, losskit
        >>> losskit.count_targets(torch.tensor([3, -100, 1]))
        tensor(2)
    """
    V.require_tensor("target", target)
    if target.is_floating_point():
        counted = torch.ones(target.shape, dtype=torch.bool, device=target.device)
    else:
        counted = target != ignore_index
    if mask is not None:
        V.check_mask(mask, target.shape)
        counted = counted & mask
    return counted.sum()


# --------------------------------------------------------------------------------------------
# the reference math
# --------------------------------------------------------------------------------------------


def _index_rows(logp: Tensor, w: Tensor | None, rows: Rows, label_smoothing: float) -> Tensor:
    """Each row's loss (N,) for class-index targets, before the reduction."""
    loss = rows.w_y * -logp.gather(1, rows.y.unsqueeze(1)).squeeze(1)
    if label_smoothing > 0.0:
        smooth = -(logp * w).sum(1) if w is not None else -logp.sum(1)
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / logp.shape[1]) * smooth
    return loss


def class_rows(
    input: Tensor,
    target: Tensor,
    *,
    probabilities: bool,
    weight: Tensor | None,
    ignore_index: int | None,
    reduction: str,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Rows]:
    """The ``(rows, C)`` logits of a categorical loss in ``dtype`` (zeroed where ``mask`` leaves a
    position out, so inf/NaN there reaches no gradient) and their :class:`Rows`.

    Class-index targets weigh each row by its target's class weight, so ``'mean'`` divides by
    their sum; probability targets count positions (torch divides by their number).
    """
    out_shape = target.shape if not probabilities else V.index_target_shape(input)
    flat_mask = mask.expand(out_shape).reshape(-1) if mask is not None else None
    x = keep(flatten_classes(input).to(dtype), None if mask is None else flat_mask.unsqueeze(1))
    if probabilities:
        positions = torch.zeros(out_shape.numel(), dtype=torch.long, device=input.device)
        rows = count_rows(
            positions, ignore_index=None, reduction=reduction, mask=flat_mask,
            normalizer=normalizer, dtype=dtype,
        )  # fmt: skip
    else:
        rows = count_rows(
            target.reshape(-1).long(), ignore_index=ignore_index, reduction=reduction,
            weight=weight, mask=flat_mask, normalizer=normalizer, dtype=dtype,
        )  # fmt: skip
    return x, rows


def _finish(values: Tensor, rows: Rows, out_shape: torch.Size, dtype: torch.dtype) -> Tensor:
    out = rows.reduce(values, dtype)
    return out.reshape(out_shape) if rows.reduction == "none" else out


def reference_cross_entropy(
    input: Tensor,
    target: Tensor,
    opts: V.CrossEntropyOptions,
    *,
    probabilities: bool,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    return_z_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The plain-torch cross-entropy of validated inputs (the source of truth)."""
    label_smoothing, z_loss, softcap = opts.label_smoothing, opts.z_loss, opts.softcap
    num_classes = input.shape[0 if input.dim() == 1 else 1]
    out_shape = target.shape if not probabilities else V.index_target_shape(input)
    # torch promotes a probability target and its class weight with the input; an index-form
    # class weight of another dtype (which torch refuses) is cast to the input's
    tensors = [input] + ([target] if probabilities else [])
    if probabilities and weight is not None:
        tensors.append(weight)
    dtype = compute_dtype(*tensors)
    x, rows = class_rows(
        input, target, probabilities=probabilities, weight=weight,
        ignore_index=opts.ignore_index, reduction=opts.reduction, mask=mask,
        normalizer=normalizer, dtype=dtype,
    )  # fmt: skip
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    logp = torch.log_softmax(x, dim=1)
    w = weight.to(dtype) if weight is not None else None

    if probabilities:
        kept = None if mask is None else rows.counted.unsqueeze(1)
        t = keep(flatten_classes(target).to(dtype), kept)
        if label_smoothing > 0.0:
            t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
        tw = t * w if w is not None else t
        values = -(tw * logp).sum(1)
    else:
        values = _index_rows(logp, w, rows, label_smoothing)
    zrows = None
    if z_loss > 0.0 or return_z_loss:
        lse = torch.logsumexp(x, dim=1)
        zrows = z_loss * lse * lse
        values = values + zrows

    out_dtype = result_dtype(*tensors)
    loss = _finish(values, rows, out_shape, out_dtype)
    if return_z_loss:
        return loss, _finish(zrows, rows, out_shape, out_dtype).detach()
    return loss


# --------------------------------------------------------------------------------------------
# the fused path
# --------------------------------------------------------------------------------------------


def _rows(input: Tensor) -> Tensor:
    """The kernels' ``(N, V)`` rows of logits ``(C,)``, ``(N, C)`` or ``(N, C, d1..dK)``, unit
    column stride (``(N, C, d1..dK)`` becomes a copy with the classes last)."""
    logits = flatten_classes(input)
    return logits if logits.stride(1) == 1 else logits.contiguous()


def _ce_recompute(
    input: Tensor, rows: Tensor, opts: V.CrossEntropyOptions, **extras: Tensor | float | None
) -> Recompute:
    """A create_graph=True backward: the reference's gradient of the kernel's ``(N, V)`` rows
    (``extras``: the call's ``weight``, ``mask`` and ``normalizer``)."""

    def build(input: Tensor) -> tuple[tuple[Tensor], Tensor]:
        logits = _rows(input)
        return (logits,), reference_cross_entropy(logits, rows, opts, probabilities=False, **extras)

    return Recompute("cross_entropy", {"input": input}, build)


def _fused_applies(input: Tensor) -> bool:
    """Whether ``impl='auto'`` would try the fused kernel for class-index targets: on CUDA, and
    on CPU inputs from :data:`losskit._dispatch.CPU_FUSED_MIN_ELEMENTS` logits up (below that,
    the reference is faster)."""
    return not input.is_cpu or input.numel() >= D.CPU_FUSED_MIN_ELEMENTS


def _fused_cross_entropy(
    input: Tensor,
    target: Tensor,
    opts: V.CrossEntropyOptions,
    *,
    probabilities: bool,
    required: bool,
    inplace_backward: bool,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    return_z_loss: bool,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor] | None:
    """Run the fused kernel, or return None (``required=False``) when it does not apply."""
    if not required and not _fused_applies(input):
        return None
    kernel, _ = D.select(
        "cross_entropy", input, required=required, reason=D.unsupported_reason(input, probabilities)
    )
    if kernel is None:
        return None

    out_shape = target.shape
    logits = _rows(input)
    rows = target.reshape(-1).long()
    if mask is not None:
        mask = mask.expand(out_shape).reshape(-1)
    if D.tracing():  # torch.compile / torch.export: the custom op (losskit.ops)
        from .. import ops

        kernel, recompute, traced = ops.cross_entropy, None, {"validate": validate}
    elif inplace_backward:
        V.check_inplace_allowed("input", input, logits)
        recompute = Recompute.unsupported(
            "cross_entropy", "inplace_backward=True overwrote the logits with their gradient"
        )
        traced = {}
    else:
        recompute = _ce_recompute(
            input, rows, opts, weight=weight, mask=mask, normalizer=normalizer
        )
        traced = {}
    result = kernel.cross_entropy(
        logits,
        rows,
        recompute=recompute,
        weight=None if weight is None else weight.to(torch.float32),
        normalizer=D.kernel_normalizer(normalizer, input.device),
        mask=mask,
        inplace_backward=inplace_backward,
        return_z_loss=return_z_loss,
        **D.kernel_options(opts),
        **traced,
    )
    if opts.reduction != "none":
        return result
    if return_z_loss:
        return result[0].reshape(out_shape), result[1].reshape(out_shape)
    return result.reshape(out_shape)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
    impl: str = "auto",
    inplace_backward: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy between logits and class indices, one-hot or soft targets.

    For a class-index target ``y`` (``p = softmax(x)``, ``w`` the class weights, ``eps`` the
    label smoothing, ``C`` classes):

    .. math::
        \ell_n = (1 - \epsilon)\, w_{y_n} (-\log p_{n,y_n})
                 + \frac{\epsilon}{C} \sum_c w_c (-\log p_{n,c}) + z \cdot \mathrm{lse}(x_n)^2

    and for probabilities ``t``: :math:`\ell_n = -\sum_c w_c\, t'_{n,c} \log p_{n,c}` with
    :math:`t' = t (1 - \epsilon) + \epsilon / C`. ``'mean'`` divides index-form losses by the sum
    of the counted targets' weights (the count without weights), and probability-form losses by
    the number of positions, as torch does.

    Args:
        input: logits, ``(N, C)``, ``(N, C, d1..dK)`` or unbatched ``(C,)``.
        target: class indices ``(N)`` / ``(N, d1..dK)`` / ``()`` (any integer dtype; int64
            answer), or probabilities of the input's shape.
        weight: optional ``(C,)`` class weights.
        size_average, reduce: deprecated; mapped to ``reduction`` as torch maps them.
        ignore_index: class index that is skipped (index targets only; use ``mask`` to skip
            probability-target positions). Default -100.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        label_smoothing: in [0, 1]. Default 0.
        mask: keyword-only bool tensor over the target's positions (no class dimension); False
            positions contribute 0 and leave the ``'mean'`` count. Works for every target form.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead.
        z_loss: keyword-only coefficient ``z`` of the ``lse^2`` auxiliary term (PaLM). Default 0.
        softcap: keyword-only ``s``: logits become ``s * tanh(x / s)`` first. Default None.
        return_z_loss: keyword-only; also return the z term alone, reduced the same way
            (detached: the loss's gradient holds its share; 0 with ``z_loss=0``). Each counted
            position's z term is :math:`z\, \mathrm{lse}(x_n)^2`, unweighted, and ``'mean'``
            divides their sum by the loss's own denominator: with class weights and index
            targets :math:`\sum_n z\, \mathrm{lse}_n^2 / \sum_n w_{y_n}`. Liger-Kernel divides
            the same sum by the number of non-ignored tokens,
            :math:`\sum_n z\, \mathrm{lse}_n^2 / N_{kept}` (while dividing the cross-entropy
            by the summed weights); the two agree without class weights.
        impl: keyword-only ``'auto'`` | ``'reference'`` | ``'fused'``: the plain-torch source of
            truth, or the fused kernel (Triton on CUDA, the fast path on CPU). ``'auto'`` takes
            the fused path wherever it supports the call (class-index targets; float32,
            bfloat16 or float16 logits), except CPU inputs under 2**17 logits, where the
            reference is faster.
        inplace_backward: keyword-only, fused path only: write the gradient into the logits'
            storage (no N x V allocation). The logits are overwritten; autograd raises if another
            operation still needs them, and losskit raises for (a view of) a leaf that requires
            grad (as torch forbids in-place changes to one). No second-order gradient.
        validate: keyword-only; ``False`` skips the value checks (index range, probabilities).

    Shape:
        - Input: ``(C)``, ``(N, C)`` or ``(N, C, d1..dK)``.
        - Target: ``()``, ``(N)`` or ``(N, d1..dK)`` of indices; or the input's shape.
        - Output: scalar; with ``'none'`` the target's shape without the class dimension.

    Returns:
        The loss (and the z term when ``return_z_loss``), in the input's dtype.

    Notes:
        The fused path computes its gradient in the forward. Under ``create_graph=True``
        (gradient penalties, Hessian-vector products) its backward recomputes the gradient with
        the reference's differentiable ops, so second derivatives are torch's; it needs the
        logits then: ones over 16 MiB are held only weakly, and if they were freed (or
        overwritten by ``inplace_backward``) the backward raises ``LossValueError`` instead.

    Example:
        >>> import torch, losskit.functional as LF
        >>> logits = torch.tensor([[2.0, 0.0, 0.0]])
        >>> a = LF.cross_entropy(logits, torch.tensor([0]))
        >>> b = LF.cross_entropy(logits, torch.tensor([[1.0, 0.0, 0.0]]))
        >>> bool(torch.allclose(a, b))
        True
    """
    opts = V.cross_entropy_options(
        reduction, ignore_index, label_smoothing, z_loss, softcap,
        size_average=size_average, reduce=reduce,
    )  # fmt: skip
    V.check_impl(impl)
    probabilities = V.check_classification(
        input, target, weight=weight, ignore_index=opts.ignore_index, validate=validate,
        allow_probabilities=True, mask=mask, normalizer=normalizer, reduction=opts.reduction,
    )  # fmt: skip
    if inplace_backward and impl == "reference":
        raise V.LossValueError("inplace_backward=True needs impl='fused' or 'auto'")
    if (
        impl == "auto"
        and not (inplace_backward or return_z_loss or opts.z_loss or opts.softcap is not None)
        and (probabilities or not _fused_applies(input))
        and _plain(input, target, weight, mask, normalizer, probabilities=probabilities)
    ):
        index = target if probabilities or target.dtype == torch.int64 else target.long()
        return _torch.cross_entropy(
            input, index, weight, opts.reduction, opts.ignore_index, opts.label_smoothing
        )
    if mask is not None and not probabilities:
        # masked positions may hold any index (padding): make them ignore_index for the gathers
        target = torch.where(mask.expand(target.shape), target.long(), ignore_index)

    extras = dict(weight=weight, mask=mask, normalizer=normalizer, return_z_loss=return_z_loss)
    if impl != "reference":
        out = _fused_cross_entropy(
            input,
            target,
            opts,
            probabilities=probabilities,
            required=impl == "fused",
            inplace_backward=inplace_backward,
            validate=validate,
            **extras,
        )
        if out is not None:
            return out
    return reference_cross_entropy(input, target, opts, probabilities=probabilities, **extras)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Negative log-likelihood of log-probabilities (e.g. from ``log_softmax``).

    .. math:: \ell_n = -w_{y_n} x_{n, y_n}

    ``'mean'`` divides by the sum of the counted targets' weights. ``cross_entropy(x, y)`` equals
    ``nll_loss(log_softmax(x, 1), y)``.

    Args:
        input: log-probabilities ``(N, C)``, ``(N, C, d1..dK)`` or ``(C,)``.
        target: class indices ``(N)`` / ``(N, d1..dK)`` / ``()``.
        weight, size_average, ignore_index, reduce, reduction: as :func:`cross_entropy`.
        mask, normalizer, validate: keyword-only; as :func:`cross_entropy`.

    Shape:
        As :func:`cross_entropy` with class-index targets.

    Example:
        >>> import torch, losskit.functional as LF
        >>> LF.nll_loss(torch.tensor([[-0.5, -1.0]]), torch.tensor([1]))
        tensor(1.)
    """
    opts = V.cross_entropy_options(
        reduction, ignore_index, size_average=size_average, reduce=reduce
    )
    V.check_classification(
        input, target, weight=weight, ignore_index=opts.ignore_index, validate=validate,
        allow_probabilities=False, mask=mask, normalizer=normalizer, reduction=opts.reduction,
    )  # fmt: skip
    if _plain(input, target, weight, mask, normalizer, probabilities=False):
        index = target if target.dtype == torch.int64 else target.long()
        return _torch.nll_loss(input, index, weight, opts.reduction, ignore_index)
    dtype = compute_dtype(input)
    x, rows = class_rows(
        input, target, probabilities=False, weight=weight, ignore_index=ignore_index,
        reduction=opts.reduction, mask=mask, normalizer=normalizer, dtype=dtype,
    )  # fmt: skip
    w = weight.to(dtype) if weight is not None else None
    return _finish(_index_rows(x, w, rows, 0.0), rows, target.shape, input.dtype)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Kullback-Leibler divergence of ``target`` from the log-probabilities ``input``.

    .. math::
        \ell_i = y_i (\log y_i - x_i) \quad (0 \text{ where } y_i = 0), \qquad
        \ell_i = e^{y_i} (y_i - x_i) \text{ with } \texttt{log\_target}

    ``'batchmean'`` (sum / batch size) is the mathematically correct KL; ``'mean'`` divides by
    every element, as torch does (with torch's warning).

    Args:
        input: log-probabilities, any shape.
        target: probabilities (or log-probabilities with ``log_target``), the input's shape.
        size_average, reduce: deprecated.
        reduction: ``'none'`` | ``'batchmean'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        log_target: whether ``target`` is given in log space.
        mask, normalizer: keyword-only; as :func:`losskit.functional.mse_loss` (``'batchmean'``
            with a mask divides by the number of batch rows that keep any position).

    Shape:
        Input ``(*)``; target ``(*)``, same shape; output scalar, or ``(*)`` with ``'none'``.

    Example:
        >>> import torch, losskit.functional as LF
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> LF.kl_div(p.log(), p, reduction="batchmean")
        tensor(0.)
    """
    if reduction == "batchmean" and (size_average is not None or reduce is not None):
        raise V.LossValueError(
            f"reduction='batchmean' cannot be combined with the deprecated size_average="
            f"{size_average!r}/reduce={reduce!r} (torch applies both: the legacy reduction, then "
            "a division by the batch size); pass reduction alone"
        )
    batchmean = reduction == "batchmean"
    reduction = "sum" if batchmean else resolve(reduction, size_average, reduce)
    V.require_floating("input", input, what="log-probabilities")
    V.require_floating("target", target)
    V.require_same_device("target", target, "input", input)
    V.require_same_shape(input, target)
    V.check_mask(mask, target.shape)
    if normalizer is not None and batchmean:
        raise V.LossValueError("normalizer replaces the 'batchmean' divisor: use reduction='mean'")
    V.check_normalizer(normalizer, reduction)
    if reduction == "mean" and normalizer is None:
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support "
            "size. 'batchmean' divides only by the batch size, and aligns with the KL div math "
            "definition.",
            UserWarning,
            stacklevel=2,
        )
    if mask is None and normalizer is None and input.dtype in _torch.DTYPES:
        if target.dtype == input.dtype:
            return _torch.kl_div(input, target, "batchmean" if batchmean else reduction, log_target)
    dtype = compute_dtype(input, target)
    x, y = keep(input.to(dtype), mask), keep(target.to(dtype), mask)
    loss = torch.exp(y) * (y - x) if log_target else torch.xlogy(y, y) - y * x
    out = reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)
    if batchmean and input.dim() != 0:
        if mask is not None:
            rows = mask.expand(target.shape).reshape(target.shape[0], -1).any(1).sum()
            out = out / rows.to(dtype)
        else:
            out = out / input.shape[0]
    return out.to(result_dtype(input, target))
