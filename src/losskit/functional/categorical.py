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

from .. import _validate as V
from .._reduction import as_normalizer, resolve, safe_divide
from .._reduction import reduce as reduce_loss
from ._common import compute_dtype, keep, result_dtype

__all__ = ["count_targets", "cross_entropy", "kl_div", "nll_loss"]

IMPLS = ("auto", "reference", "fused")


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _index_target_shape(input: Tensor) -> torch.Size:
    if input.dim() == 1:
        return torch.Size([])
    return torch.Size([input.shape[0], *input.shape[2:]])


def check_classification(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    validate: bool,
    allow_probabilities: bool,
    input_name: str = "input",
    mask: Tensor | None = None,
) -> bool:
    """Check a classification call; return True for probability targets, False for indices.

    Values at positions ``mask`` leaves out are not checked (padding may hold anything). A
    non-default ``ignore_index`` with probability targets is refused (it could only be a no-op).
    """
    V.require_tensor(input_name, input)
    V.require_tensor("target", target)
    V.require_floating(input_name, input, what="logits or log-probabilities")
    V.require_same_device("target", target, input_name, input)
    if input.dim() == 0:
        raise V.LossValueError(
            f"{input_name} must have a class dimension: expected shape (C,), (N, C) or "
            f"(N, C, d1, ...), got a 0-dim tensor"
        )
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    index_shape = _index_target_shape(input)
    V.check_class_weight(weight, num_classes, input)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise V.LossTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")

    if target.is_floating_point():
        if target.shape == input.shape and allow_probabilities:
            if ignore_index != -100:
                raise V.LossValueError(
                    f"ignore_index={ignore_index} applies to class-index targets only; to leave "
                    "out positions of a probability target, pass mask= (True where the position "
                    "counts)"
                )
            if validate:
                kept = None
                if mask is not None:
                    V.check_mask(mask, index_shape)
                    kept = mask.expand(index_shape).unsqueeze(class_dim)
                V.check_unit_interval("target", keep(target, kept), what="class probabilities")
            return True
        if target.shape == index_shape:
            raise V.LossTypeError(
                f"target has shape {V.shape_str(target.shape)} (the class-index shape) but "
                f"dtype {target.dtype}; class indices must be integers: use target.long()"
                + (
                    f" (or pass probabilities of the {input_name}'s shape "
                    f"{V.shape_str(input.shape)})"
                    if allow_probabilities
                    else ""
                )
            )
        if allow_probabilities and target.dim() == input.dim():
            other = [d for d in range(input.dim()) if d != class_dim]
            if all(target.shape[d] == input.shape[d] for d in other):
                raise V.LossValueError(
                    f"target holds probabilities over {target.shape[class_dim]} classes (dim "
                    f"{class_dim}) but {input_name} has {num_classes} classes; a probability "
                    f"target must have the {input_name}'s shape {V.shape_str(input.shape)}"
                )
        expected = (
            f"{V.shape_str(input.shape)} (probabilities)" if allow_probabilities else "nothing"
        )
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)} and dtype {target.dtype}; expected "
            f"integer class indices of shape {V.shape_str(index_shape)} or floating targets of "
            f"shape {expected}"
        )

    if target.dtype == torch.bool or target.is_complex():
        raise V.LossTypeError(
            f"target must hold integer class indices (int64) or floating probabilities, got "
            f"dtype {target.dtype}"
        )
    if target.shape != index_shape:
        _explain_index_shape(input, target, index_shape, input_name, allow_probabilities)
    if validate:
        if mask is not None:
            V.check_mask(mask, index_shape)
            target = torch.where(mask, target, ignore_index)
        V.check_class_indices(target, num_classes, ignore_index, class_dim)
    return False


def _explain_index_shape(
    input: Tensor,
    target: Tensor,
    index_shape: torch.Size,
    name: str,
    allow_probabilities: bool,
) -> None:
    """Raise the error for an integer target whose shape is not the class-index shape."""
    got, want = V.shape_str(target.shape), V.shape_str(index_shape)
    if input.dim() >= 2 and target.shape == input.shape:
        # an integer one-hot target: torch 2.13 refuses it too (probabilities must float)
        if allow_probabilities:
            raise V.LossTypeError(
                f"target has the {name}'s shape {got} but dtype {target.dtype}; a one-hot or "
                f"probability target must be floating-point: use target.float() (or pass class "
                f"indices of shape {want}: target.argmax(1))"
            )
        raise V.LossValueError(
            f"target has the {name}'s shape {got} (dtype {target.dtype}), but class indices "
            f"need shape {want}; for a one-hot target use target.argmax(1)"
        )
    if input.dim() >= 2 and target.shape == torch.Size([input.shape[0], 1, *input.shape[2:]]):
        raise V.LossValueError(
            f"target has shape {got} but class indices need shape {want}: drop the size-1 "
            f"dimension with target.squeeze(1)"
        )
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] == input.shape[0]:
        raise V.LossValueError(
            f"{name} has shape {V.shape_str(input.shape)} and target {got}: the class dimension "
            f"seems to be missing; {name} should be (N, C) with a score per class, or use "
            f"binary_cross_entropy_with_logits for one score per example"
            + (
                f" (if target is a one-hot or probability vector over the {input.shape[0]} "
                f"classes, it must be floating-point: use target.float())"
                if allow_probabilities
                else ""
            )
        )
    if input.dim() >= 3 and target.shape == input.shape[:-1]:
        raise V.LossValueError(
            f"{name} has shape {V.shape_str(input.shape)} and target {got}: it looks "
            f"channels-last; the class dimension must be dim 1: use {name}.movedim(-1, 1)"
        )
    raise V.LossValueError(
        f"target has shape {got}, but {name} of shape {V.shape_str(input.shape)} needs class "
        f"indices of shape {want}"
        + (f" (or floating probabilities of the {name}'s shape)" if allow_probabilities else "")
    )


def _check_extras(
    input: Tensor,
    index_shape: torch.Size,
    *,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    reduction: str,
) -> None:
    V.check_mask(mask, index_shape)
    V.check_normalizer(normalizer, reduction)


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


def _flatten_classes(x: Tensor) -> Tensor:
    """(N, C, d1..dK) -> (N * d1..dK, C); (C,) -> (1, C); (N, C) unchanged."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _index_rows(
    logp: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row (N,) loss before masking, the weight of each row's target, and the valid rows."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    w_y = weight[safe] if weight is not None else torch.ones_like(nll)
    loss = w_y * nll
    if label_smoothing > 0.0:
        smooth = -(logp * weight).sum(1) if weight is not None else -logp.sum(1)
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / logp.shape[1]) * smooth
    return loss, w_y, valid


def _reference_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    probabilities: bool,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    z_loss: float,
    softcap: float | None,
    return_z_loss: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    num_classes = input.shape[0 if input.dim() == 1 else 1]
    out_shape = target.shape if not probabilities else _index_target_shape(input)
    # torch promotes a probability target and its class weight with the input; an index-form
    # class weight of another dtype (which torch refuses) is cast to the input's
    tensors = [input] + ([target] if probabilities else [])
    if probabilities and weight is not None:
        tensors.append(weight)
    dtype = compute_dtype(*tensors)
    x = _flatten_classes(input).to(dtype)
    # rows left out by the mask are zeroed first, so inf/NaN there reaches no gradient
    kept = mask.expand(out_shape).reshape(-1, 1) if mask is not None else None
    x = keep(x, kept)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    logp = torch.log_softmax(x, dim=1)
    w = weight.to(dtype) if weight is not None else None

    if probabilities:
        t = keep(_flatten_classes(target).to(dtype), kept)
        if label_smoothing > 0.0:
            t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
        tw = t * w if w is not None else t
        rows = -(tw * logp).sum(1)
        counted = None
        denominator = None  # torch divides the probability form by the number of positions
    else:
        rows, w_y, counted = _index_rows(
            logp, target.reshape(-1).long(), w, ignore_index, label_smoothing
        )
        denominator = w_y
    zrows = None
    if z_loss > 0.0 or return_z_loss:
        lse = torch.logsumexp(x, dim=1)
        zrows = z_loss * lse * lse
        rows = rows + zrows

    if mask is not None:
        m = mask.expand(out_shape).reshape(-1)
        counted = m if counted is None else counted & m
    zero = torch.zeros((), dtype=dtype, device=x.device)

    def finish(values: Tensor) -> Tensor:
        if counted is not None:
            values = torch.where(counted, values, zero)
        if reduction == "none":
            return values.reshape(out_shape)
        total = values.sum()
        if reduction == "sum":
            return total
        if normalizer is not None:
            return safe_divide(total, as_normalizer(normalizer, total))
        if denominator is not None:
            return total / (torch.where(counted, denominator, zero).sum())
        if counted is not None:
            return total / counted.sum().to(dtype)
        return total / values.numel()

    out_dtype = result_dtype(*tensors)
    loss = finish(rows).to(out_dtype)
    if return_z_loss:
        return loss, finish(zrows).detach().to(out_dtype)
    return loss


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
        return_z_loss: keyword-only; also return the z term alone, reduced the same way.
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
    reduction = resolve(reduction, size_average, reduce)
    label_smoothing = V.check_float_option("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = V.check_float_option("z_loss", z_loss, low=0.0)
    if softcap is not None:
        softcap = V.check_float_option("softcap", softcap, low=0.0, low_open=True)
    if impl not in IMPLS:
        raise V.LossValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    probabilities = check_classification(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        validate=validate,
        allow_probabilities=True,
        mask=mask,
    )
    _check_extras(
        input, _index_target_shape(input), mask=mask, normalizer=normalizer, reduction=reduction
    )
    if inplace_backward and impl == "reference":
        raise V.LossValueError("inplace_backward=True needs impl='fused' or 'auto'")
    if mask is not None and not probabilities:
        # masked positions may hold any index (padding): make them ignore_index for the gathers
        target = torch.where(mask.expand(target.shape), target.long(), ignore_index)

    options = dict(
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        mask=mask,
        normalizer=normalizer,
        z_loss=z_loss,
        softcap=softcap,
        return_z_loss=return_z_loss,
    )
    if impl != "reference":
        from .._dispatch import fused_cross_entropy

        out = fused_cross_entropy(
            input,
            target,
            probabilities=probabilities,
            required=impl == "fused",
            inplace_backward=inplace_backward,
            **options,
        )
        if out is not None:
            return out
    return _reference_cross_entropy(input, target, probabilities=probabilities, **options)


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
    reduction = resolve(reduction, size_average, reduce)
    check_classification(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        validate=validate,
        allow_probabilities=False,
        mask=mask,
    )
    _check_extras(input, target.shape, mask=mask, normalizer=normalizer, reduction=reduction)
    if mask is not None:
        # masked positions may hold any index (padding): make them ignore_index for the gather
        target = torch.where(mask.expand(target.shape), target.long(), ignore_index)
    dtype = compute_dtype(input)
    x = _flatten_classes(input).to(dtype)
    x = keep(x, mask.expand(target.shape).reshape(-1, 1) if mask is not None else None)
    w = weight.to(dtype) if weight is not None else None
    rows, w_y, counted = _index_rows(x, target.reshape(-1).long(), w, ignore_index, 0.0)
    if mask is not None:
        counted = counted & mask.expand(target.shape).reshape(-1)
    zero = torch.zeros((), dtype=dtype, device=x.device)
    rows = torch.where(counted, rows, zero)
    if reduction == "none":
        out = rows.reshape(target.shape)
    elif reduction == "sum":
        out = rows.sum()
    elif normalizer is not None:
        out = safe_divide(rows.sum(), as_normalizer(normalizer, rows))
    else:
        out = rows.sum() / torch.where(counted, w_y, zero).sum()
    return out.to(input.dtype)


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
