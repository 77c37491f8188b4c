"""Linear + cross-entropy: the loss of a classification head without holding its logits.

``linear_cross_entropy(x, W, y)`` is ``cross_entropy(linear(x, W), y)``. The plain form
materialises the ``(N, V)`` logits (and torch keeps them, or their float32 copy, for the backward:
gigabytes at LLM vocabularies). The fused path (``impl='fused'``, the default where it applies)
processes the rows in chunks and computes the loss and every gradient in the forward, so only one
chunk of logits exists at a time; it is exact (no gradient is skipped or filtered).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch as D
from .. import _validate as V
from ..kernels.recompute import Recompute
from .categorical import cross_entropy, reference_cross_entropy

__all__ = ["linear_cross_entropy"]

# --------------------------------------------------------------------------------------------
# the function
# --------------------------------------------------------------------------------------------


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
    normalizer: float | Tensor | None = None,
    mask: Tensor | None = None,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    accumulate: Literal["auto", "float32", "input"] = "auto",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy of the logits ``input @ linear_weight.T + linear_bias``, never holding them.

    With ``z = x W^\top + b`` (``V`` classes, ``p = softmax(z')``, ``z' = s \tanh(z / s)`` under
    a softcap, else ``z``):

    .. math::
        \ell_n = (1 - \epsilon)\, w_{y_n} (-\log p_{n,y_n})
                 + \frac{\epsilon}{V} \sum_c w_c (-\log p_{n,c}) + c_z\, \mathrm{lse}(z'_n)^2

    reduced as :func:`losskit.functional.cross_entropy` reduces it (``'mean'`` divides by the
    sum of the counted targets' weights, or by ``normalizer``).

    The fused path (CPU; CUDA with Triton) splits the rows into chunks: per chunk, one GEMM gives
    the chunk's logits, the loss and softmax-gradient overwrite them in place, two more GEMMs
    give the chunk's ``dX`` and add its part of ``dW`` (and ``db``). All gradients are computed in
    the forward; the backward scales them by ``grad_output``. Only one chunk of logits exists
    at a time; how many rows a chunk holds follows ``memory_budget``:

    - ``'default'``: 1 GiB on CUDA (chunks of 2-4K rows at LLM vocabularies: close to the time
      of the three GEMMs), 64 MiB on the CPU;
    - ``'lean'``: 64 MiB on CUDA, 32 MiB on the CPU. Where that leaves too few rows per chunk,
      chunks are also split over the vocabulary and the logits are computed twice (four GEMMs
      instead of three);
    - a number of bytes.

    The budget counts what the call holds beyond the gradients it returns. ``dW`` of bfloat16 /
    float16 weights accumulates over the chunks in float32 when a float32 copy of ``dW`` fits
    half the budget (``accumulate='auto'``), else in the weights' dtype, rounded once per chunk
    (like torch's own chunked ``'compact'`` policy): its error then grows slowly with the number
    of chunks. ``accumulate='float32'`` forces the float32 accumulator (``V * D * 4`` more bytes).

    Args:
        input: hidden states ``(N, D)``, ``(B, T, D)`` (any leading dims) or ``(D,)``; a
            K-dimensional head needs ``(N, D)``, as in torch.
        linear_weight: the head's weight ``(V, D)``, or ``(V, d1..dK, D)`` for a K-dimensional
            loss (logits ``(N, V, d1..dK)``, softmax over ``V`` per position), same dtype and
            device as ``input``.
        target: class indices (any integer dtype) of the logits' shape without ``V``, or
            probabilities of the logits' shape (those take the reference path).
        linear_bias: optional bias of shape ``(V,)`` (``(V, d1..dK)`` for a K-dimensional head).
        weight: optional ``(V,)`` class weights.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        ignore_index: class index that is skipped; None (torch's default) means -100 for class
            indices and must stay None for probabilities (torch raises otherwise).
        label_smoothing: in [0, 1]. Default 0.
        options: a ``torch.nn.LinearCrossEntropyOptions``, torch's switch to its chunked path
            (losskit's ``'auto'`` takes the chunked path without it): ``batch_chunk_size`` sets
            ``chunk_size``, ``acc_dtype=torch.float32`` sets ``accumulate='float32'``,
            ``allow_retain_graph=True`` allows a second backward (one more copy of the
            gradients); ``chunking_method`` and ``acc_policy`` are left to losskit's planner. A
            call the chunked path cannot take warns, as torch's does, and runs the reference.
        z_loss: keyword-only coefficient ``c_z`` of the ``lse^2`` term. Default 0.
        softcap: keyword-only ``s``: logits become ``s * tanh(z / s)``. Default None.
        return_z_loss: keyword-only; also return the z term alone, reduced as the loss is
            (detached: the loss's gradient holds its share; 0 with ``z_loss=0``), as
            :func:`~losskit.functional.cross_entropy` does. Each counted position's z term is
            :math:`c_z \mathrm{lse}_n^2`, unweighted. With class weights and ``'mean'`` losskit
            divides it by the loss's denominator, the counted targets' summed weights:
            :math:`z = \sum_n c_z \mathrm{lse}_n^2 / \sum_n w_{y_n}`; Liger-Kernel
            (``LigerFusedLinearCrossEntropyLoss`` with ``ce_weight``) divides the same sum by
            the number of non-ignored tokens, :math:`\sum_n c_z \mathrm{lse}_n^2 / N_{kept}`,
            while dividing the cross-entropy by the summed weights as losskit does. They agree
            without class weights, and a ``normalizer`` replaces both denominators.
        normalizer: keyword-only; with ``'mean'``, divide the summed loss by this instead.
        mask: keyword-only bool over the target's positions; False positions do not count.
        impl: ``'auto'`` (fused where supported: float32/bfloat16/float16 class-index calls on
            the CPU, or CUDA with Triton), ``'reference'`` (``F.linear`` then losskit's
            reference :func:`~losskit.functional.cross_entropy`) or ``'fused'`` (raises where
            it does not apply).
        chunk_size: keyword-only rows per chunk (overrides the budget's choice).
        memory_budget: keyword-only ``'default'``, ``'lean'`` or bytes, see above.
        accumulate: keyword-only dtype of the ``dW`` accumulation: ``'auto'``, ``'float32'``
            or ``'input'``.
        validate: keyword-only; False skips the class-index range check (a host sync on CUDA).

    Shape:
        - Input: ``(*, D)``; linear_weight ``(V, D)``; linear_bias, weight ``(V,)``.
        - Or: input ``(N, D)``; linear_weight ``(V, d1..dK, D)``; linear_bias ``(V, d1..dK)``.
        - Target: class indices ``(*)`` / ``(N, d1..dK)``, or probabilities of the logits'
          shape ``(*, V)`` / ``(N, V, d1..dK)``.
        - Output: scalar; with ``'none'`` the class-index shape (the z term too).

    Returns:
        The loss, in the input's dtype; with ``return_z_loss``, ``(loss, z_term)``.

    Notes:
        The fused path computes its gradients once: a second backward through the same graph
        (``retain_graph=True``) raises for ``'mean'``/``'sum'`` unless ``options`` allows it.
        Under ``create_graph=True`` its backward recomputes the gradients with the reference's
        differentiable ops (torch's second derivative), from the inputs; an input over 16 MiB
        is held only weakly, and if it was freed by then the backward raises (keep a reference
        to it, or use ``impl='reference'``). Under ``torch.compile`` and ``torch.export`` the
        fused call is the custom op ``losskit::linear_cross_entropy`` (:mod:`losskit.ops`):
        no graph break, the eager numbers; no second order there.

    Example:
        >>> import torch, losskit.functional as LF
        >>> x = torch.randn(6, 16, requires_grad=True)
        >>> head = torch.randn(100, 16, requires_grad=True)
        >>> y = torch.randint(0, 100, (6,))
        >>> loss = LF.linear_cross_entropy(x, head, y, chunk_size=4)
        >>> ref = torch.nn.functional.cross_entropy(x @ head.T, y)
        >>> bool(torch.allclose(loss, ref, atol=1e-6))
        True

    Equivalent to ``torch.nn.functional.cross_entropy(torch.nn.functional.linear(input,
    linear_weight, linear_bias), target, weight, ignore_index=ignore_index,
    reduction=reduction, label_smoothing=label_smoothing)`` for 2-D inputs, plus the mask,
    normalizer, z-loss and softcap terms.
    """
    from ..distributed.dtensor import refuse_dtensor_head  # lazy: losskit.distributed imports us

    refuse_dtensor_head(input, linear_weight, linear_bias)
    opts = V.cross_entropy_options(
        reduction, ignore_index, label_smoothing, z_loss, softcap, allow_none_ignore=True
    )
    V.check_linear_options(impl, chunk_size, memory_budget, accumulate)
    chunk_size, accumulate, retain = _apply_options(options, chunk_size, accumulate)
    call = V.check_linear_call(
        input, linear_weight, target, linear_bias, weight, ignore_index, validate
    )
    V.check_mask(mask, call.index_shape)
    V.check_normalizer(normalizer, opts.reduction)
    return_z_loss = bool(return_z_loss)
    if impl != "reference":
        flat_mask = None if mask is None else mask.expand(call.index_shape).reshape(-1)
        out, reason = _fused(
            input, linear_weight, target.reshape(-1).long(), opts, required=impl == "fused",
            reason=_unfused_reason(input, call), linear_bias=linear_bias, weight=weight,
            mask=flat_mask, normalizer=normalizer, chunk_size=chunk_size,
            memory_budget=memory_budget, accumulate=accumulate, retain_graph=retain,
            return_z_loss=return_z_loss, validate=validate,
        )  # fmt: skip
        if out is not None:
            return _shaped(out, opts.reduction, call)
        if options is not None:
            warnings.warn(
                f"linear_cross_entropy: options ignored, this call takes the reference path "
                f"({reason})",
                UserWarning,
                stacklevel=2,
            )
    logits, target, mask = _reference_layout(input, linear_weight, linear_bias, target, mask, call)
    out = cross_entropy(
        logits, target, weight, ignore_index=opts.kernel_ignore_index, reduction=opts.reduction,
        label_smoothing=opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap,
        return_z_loss=return_z_loss, mask=mask, normalizer=normalizer, impl="reference",
        validate=False,
    )  # fmt: skip
    return _shaped(out, opts.reduction, call)


def _shaped(
    out: Tensor | tuple[Tensor, Tensor], reduction: str, call: V.LinearCall
) -> Tensor | tuple[Tensor, Tensor]:
    """The loss (and z term) in the call's class-index shape for ``'none'``."""
    if reduction != "none":
        return out
    if isinstance(out, tuple):
        return tuple(t.reshape(call.index_shape) for t in out)
    return out.reshape(call.index_shape)


def _unfused_reason(input: Tensor, call: V.LinearCall) -> str:
    """Why the chunked path does not take this call ('' when it does)."""
    if call.out_features and not call.probabilities:
        return "the fused path takes 2-D heads (num_classes, in_features) only"
    return D.unsupported_reason(input, call.probabilities)


def _reference_layout(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    mask: Tensor | None,
    call: V.LinearCall,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Logits, target and mask in ``cross_entropy``'s layout, the logits made by one GEMM.

    A K-dimensional head (input ``(N, D)``) gives ``(N, C, d1..dK)``; a plain head gives
    ``(C,)`` or ``(N, C)``, with any further lead dims of the input flattened into the rows.
    """
    num_classes = linear_weight.shape[0]
    if call.out_features:
        flat = math.prod(call.out_features, start=num_classes)
        w = linear_weight.reshape(flat, linear_weight.shape[-1])
        b = None if linear_bias is None else linear_bias.reshape(flat)
        return F.linear(input, w, b).reshape(call.logits_shape), target, mask
    logits = F.linear(input, linear_weight, linear_bias)
    if input.dim() <= 2:
        return logits, target, mask
    logits = logits.reshape(-1, num_classes)
    target = target.reshape(-1, num_classes) if call.probabilities else target.reshape(-1)
    if mask is not None:
        mask = mask.expand(call.index_shape).reshape(-1)
    return logits, target, mask


def _apply_options(
    options: object | None, chunk_size: int | None, accumulate: str
) -> tuple[int | None, str, bool]:
    """What a torch ``LinearCrossEntropyOptions`` means here: (chunk_size, accumulate, retain).

    ``batch_chunk_size`` sets the rows per chunk (unless ``chunk_size`` does), ``acc_dtype=
    torch.float32`` forces the float32 ``dW`` accumulator (unless ``accumulate`` is set), and
    ``allow_retain_graph=True`` lets a second backward run through the same graph. Its other
    fields (``chunking_method``, ``acc_policy``) are torch's own heuristics: losskit's planner
    and ``memory_budget`` choose instead.
    """
    if options is None:
        return chunk_size, accumulate, False
    size = getattr(options, "batch_chunk_size", None)
    if chunk_size is None and isinstance(size, int) and size > 0:
        chunk_size = size
    if accumulate == "auto" and getattr(options, "acc_dtype", None) == torch.float32:
        accumulate = "float32"
    return chunk_size, accumulate, bool(getattr(options, "allow_retain_graph", False))


# --------------------------------------------------------------------------------------------
# the fused path
# --------------------------------------------------------------------------------------------


def _lce_recompute(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    rows: Tensor,
    opts: V.CrossEntropyOptions,
    **extras: Tensor | float | None,
) -> Recompute:
    """A create_graph=True backward: the reference's gradients of the chunked op's inputs.

    The reference counts rows by ``opts.kernel_ignore_index`` as the kernels do
    (``ignore_index=None`` is -100 for class indices).
    """
    opts = dataclasses.replace(opts, ignore_index=opts.kernel_ignore_index)

    def build(
        input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None
    ) -> tuple[tuple[Tensor, Tensor, Tensor | None], Tensor]:
        x = input.reshape(-1, input.shape[-1]).contiguous()
        w = linear_weight.contiguous()
        logits = F.linear(x, w, linear_bias)
        return (x, w, linear_bias), reference_cross_entropy(
            logits, rows, opts, probabilities=False, **extras
        )

    sources = {"input": input, "linear_weight": linear_weight, "linear_bias": linear_bias}
    return Recompute("linear_cross_entropy", sources, build)


def _chunked(
    kernel: ModuleType,
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    chunk_size: int | None,
    memory_budget: int | str,
    accumulate: str,
    normalizer: float | Tensor | None,
    **options: object,
) -> Tensor | tuple[Tensor, Tensor]:
    """The chunked launcher on 2-D inputs, its plan sized by the memory budget."""
    from ..kernels.chunked import budget_bytes, plan_chunks

    n, d = x.shape
    plan = plan_chunks(
        n, d, w.shape[0], x.dtype, x.device.type, budget=budget_bytes(memory_budget, x.device.type),
        chunk_size=chunk_size, accumulate=accumulate,
    )  # fmt: skip
    return kernel.linear_cross_entropy(
        x.contiguous(), w.contiguous(), target, plan=plan,
        normalizer=D.kernel_normalizer(normalizer, x.device), **options,
    )  # fmt: skip


def _fused(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    opts: V.CrossEntropyOptions,
    *,
    required: bool,
    reason: str,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    chunk_size: int | None,
    memory_budget: int | str,
    accumulate: str,
    retain_graph: bool,
    return_z_loss: bool,
    validate: bool = True,
) -> tuple[Tensor | tuple[Tensor, Tensor] | None, str]:
    """Run the chunked kernel on ``(*, D)`` inputs with flat ``(N,)`` targets and mask (the
    loss, or ``(loss, z_term)``), or return None and why not (``required=False``) when it does
    not apply."""
    kernel, reason = D.select("linear_cross_entropy", input, required=required, reason=reason)
    if kernel is None:
        return None, reason
    if D.tracing():  # torch.compile / torch.export: the custom op (losskit.ops)
        from .. import ops

        loss = ops.linear_cross_entropy.linear_cross_entropy(
            input.reshape(-1, input.shape[-1]).contiguous(), linear_weight.contiguous(), target,
            bias=linear_bias, weight=weight, mask=mask,
            normalizer=D.kernel_normalizer(normalizer, input.device), chunk_size=chunk_size,
            memory_budget=memory_budget, accumulate=accumulate, return_z_loss=return_z_loss,
            validate=validate, **D.kernel_options(opts),
        )  # fmt: skip
        return loss, ""
    recompute = _lce_recompute(
        input, linear_weight, linear_bias, target, opts, weight=weight, mask=mask,
        normalizer=normalizer,
    )  # fmt: skip
    loss = D.eager(_chunked)(
        kernel, input.reshape(-1, input.shape[-1]), linear_weight, target, bias=linear_bias,
        weight=weight, mask=mask, normalizer=normalizer, chunk_size=chunk_size,
        memory_budget=memory_budget, accumulate=accumulate, retain_graph=retain_graph,
        recompute=recompute, return_z_loss=return_z_loss, **D.kernel_options(opts),
    )  # fmt: skip
    return loss, ""
