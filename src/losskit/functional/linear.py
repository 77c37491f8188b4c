"""Linear + cross-entropy: the loss of a classification head without holding its logits.

``linear_cross_entropy(x, W, y)`` is ``cross_entropy(linear(x, W), y)``. The plain form
materialises the ``(N, V)`` logits (and torch keeps them, or their float32 copy, for the backward:
gigabytes at LLM vocabularies). The fused path (``impl='fused'``, the default where it applies)
processes the rows in chunks and computes the loss and every gradient in the forward, so only one
chunk of logits exists at a time; it is exact (no gradient is skipped or filtered).
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _validate as V
from .._dispatch import unsupported_reason
from .._reduction import resolve
from ..kernels.recompute import Recompute
from .categorical import _reference_cross_entropy, cross_entropy

__all__ = ["linear_cross_entropy"]

IMPLS = ("auto", "reference", "fused")
BUDGETS = ("default", "lean")
ACCUMULATE = ("auto", "float32", "input")


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """What a validated call's shapes say (torch 2.13's contract)."""

    probabilities: bool  # the target holds probabilities (it has the logits' shape)
    out_features: tuple[int, ...]  # (d1..dK) of a K-dimensional head; () for a plain one
    index_shape: torch.Size  # the class-index target's (and the 'none' output's) shape
    logits_shape: torch.Size  # (*lead, C, d1..dK)


def _check(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int | None,
    validate: bool,
) -> _Call:
    """Check a call against torch 2.13's ``F.linear_cross_entropy`` contract, plus lead dims.

    ``linear_weight`` is ``(C, in_features)`` or ``(C, d1..dK, in_features)``; the logits are
    ``(*lead, C, d1..dK)`` for ``input`` of shape ``(*lead, in_features)`` (a K-dimensional head
    needs ``(N, in_features)``, as in torch); a target of the logits' shape holds probabilities.
    """
    V.require_floating("input", input, what="hidden states")
    V.require_floating("linear_weight", linear_weight, what="the head's weight")
    V.require_tensor("target", target)
    if input.dim() == 0:
        raise V.LossValueError(
            "input must have a feature dimension: expected shape (D,), (N, D) or (B, T, D), got "
            "a 0-dim tensor"
        )
    d = input.shape[-1]
    if linear_weight.dim() < 2:
        raise V.LossValueError(
            f"linear_weight must have shape (num_classes, in_features) or (num_classes, d1, ..., "
            f"dK, in_features), got shape {V.shape_str(linear_weight.shape)}"
        )
    num_classes, in_features = linear_weight.shape[0], linear_weight.shape[-1]
    out_features = tuple(linear_weight.shape[1:-1])
    if in_features != d:
        raise V.LossValueError(
            f"linear_weight has shape {V.shape_str(linear_weight.shape)}: {in_features} input "
            f"features (dim {linear_weight.dim() - 1}), but input of shape "
            f"{V.shape_str(input.shape)} has {d} (last dim)"
        )
    if out_features and input.dim() != 2:
        raise V.LossValueError(
            f"linear_weight of shape {V.shape_str(linear_weight.shape)} makes a K-dimensional loss "
            f"(logits (N, {num_classes}, {', '.join(map(str, out_features))})), which needs input "
            f"of shape (N, {d}), got {V.shape_str(input.shape)}"
            + (": use input.unsqueeze(0)" if input.dim() == 1 else f": use input.reshape(-1, {d})")
        )
    V.require_same_device("linear_weight", linear_weight, "input", input)
    V.require_same_dtype("linear_weight", linear_weight, "input", input)
    if linear_bias is not None:
        V.require_floating("linear_bias", linear_bias)
        bias_shape = (num_classes, *out_features)
        if tuple(linear_bias.shape) != bias_shape:
            raise V.LossValueError(
                f"linear_bias must have shape {V.shape_str(bias_shape)}, one value per logit of "
                f"a position, got shape {V.shape_str(linear_bias.shape)}"
            )
        V.require_same_device("linear_bias", linear_bias, "input", input)
        V.require_same_dtype("linear_bias", linear_bias, "input", input)
    V.check_class_weight(weight, num_classes, input)
    V.require_same_device("target", target, "input", input)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise V.LossTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")

    lead = tuple(input.shape[:-1])
    logits_shape = torch.Size([*lead, num_classes, *out_features])
    index_shape = torch.Size([*lead, *out_features])
    call = _Call(target.shape == logits_shape, out_features, index_shape, logits_shape)
    if call.probabilities:
        if not target.is_floating_point():
            raise V.LossTypeError(
                f"target has the logits' shape {V.shape_str(logits_shape)}, the shape of class "
                f"probabilities, but dtype {target.dtype}; probabilities (one-hot included) must "
                f"be floating: use target.float(), or pass class indices of shape "
                f"{V.shape_str(index_shape)}"
            )
        if ignore_index is not None:
            raise V.LossValueError(
                f"ignore_index={ignore_index} applies to class-index targets only (torch raises "
                "too); to leave out positions of a probability target, pass mask= (True where "
                "the position counts)"
            )
        if validate:
            V.check_unit_interval("target", target, what="class probabilities")
        return call
    if target.is_floating_point():
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)} and dtype {target.dtype}; expected "
            f"integer class indices of shape {V.shape_str(index_shape)} or probabilities of "
            f"shape {V.shape_str(logits_shape)}"
            + (
                " (class indices must be integers: use target.long())"
                if target.shape == index_shape
                else ""
            )
        )
    if target.dtype == torch.bool or target.is_complex():
        raise V.LossTypeError(
            f"target must hold integer class indices (int64) or floating probabilities, got "
            f"dtype {target.dtype}"
        )
    if target.shape != index_shape:
        hint = ""
        if not out_features and target.shape == torch.Size([*index_shape, 1]):
            hint = ": drop the size-1 dimension with target.squeeze(-1)"
        elif target.numel() == index_shape.numel() and input.dim() > 1:
            hint = f": reshape it with target.reshape({tuple(index_shape)})"
        raise V.LossValueError(
            f"target has shape {V.shape_str(target.shape)}, but input of shape "
            f"{V.shape_str(input.shape)} and linear_weight of shape "
            f"{V.shape_str(linear_weight.shape)} need one class index per position, shape "
            f"{V.shape_str(index_shape)}{hint}"
        )
    if validate:
        V.check_class_indices(
            target, num_classes, -100 if ignore_index is None else ignore_index, 0,
            classes_of="linear_weight",
        )  # fmt: skip
    return call


def _check_options(
    impl: str, chunk_size: int | None, memory_budget: object, accumulate: str
) -> None:
    if impl not in IMPLS:
        raise V.LossValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise V.LossValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if isinstance(memory_budget, str):
        if memory_budget not in BUDGETS:
            raise V.LossValueError(
                f"memory_budget must be 'default', 'lean' or a number of bytes, got "
                f"{memory_budget!r}"
            )
    elif isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
        raise V.LossValueError(
            f"memory_budget must be 'default', 'lean' or a number of bytes >= 0, got "
            f"{memory_budget!r}"
        )
    if accumulate not in ACCUMULATE:
        raise V.LossValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _backend(device: torch.device) -> tuple[ModuleType | None, str]:
    """The fused launcher module for ``device``, or None and the reason there is none."""
    if device.type == "cuda":
        try:
            return importlib.import_module("losskit.kernels.triton.linear_cross_entropy"), ""
        except ImportError as exc:
            return None, f"the Triton kernels could not be loaded ({exc}); pip install triton"
    if device.type == "cpu":
        return importlib.import_module("losskit.kernels.cpu.linear_cross_entropy"), ""
    return None, f"there is no fused kernel for device type {device.type!r}"


def _budget_bytes(memory_budget: int | str, device: torch.device) -> int:
    if not isinstance(memory_budget, str):
        return int(memory_budget)
    from ..kernels.cpu.linear_cross_entropy import BUDGETS as TABLE

    kind = "cuda" if device.type == "cuda" else "cpu"
    return TABLE[(kind, memory_budget)]


def _fused(
    backend: ModuleType,
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: float | Tensor | None,
    mask: Tensor | None,
    chunk_size: int | None,
    memory_budget: int | str,
    accumulate: str,
    retain_graph: bool,
    recompute: Recompute,
) -> Tensor:
    """The chunked path on 2-D inputs."""
    from ..kernels.cpu.linear_cross_entropy import plan_chunks

    n, d = x.shape
    v = w.shape[0]
    plan = plan_chunks(
        n, d, v, x.dtype, x.device.type, budget=_budget_bytes(memory_budget, x.device),
        chunk_size=chunk_size, accumulate=accumulate,
    )  # fmt: skip
    if normalizer is not None:
        normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=x.device).reshape(())
    return backend.linear_cross_entropy(
        x.contiguous(), w.contiguous(), target, bias=bias, weight=weight,
        ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, reduction=reduction, normalizer=normalizer, mask=mask, plan=plan,
        retain_graph=retain_graph, recompute=recompute,
    )  # fmt: skip


_FUSED_EAGER = None


def _fused_for_this_call():
    """:func:`_fused`, wrapped in ``torch.compiler.disable`` while ``torch.compile`` traces.

    Under ``torch.compile`` the chunked call runs eagerly (a graph break) instead of being traced
    (its Python chunk loop and autograd.Function would be unrolled into the graph). The wrapper
    is made on first use: decorating at import would import ``torch._dynamo`` (and Triton) with
    every ``import losskit``.
    """
    global _FUSED_EAGER
    if not torch.compiler.is_compiling():
        return _fused
    if _FUSED_EAGER is None:
        _FUSED_EAGER = torch.compiler.disable(_fused)
    return _FUSED_EAGER


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
    normalizer: float | Tensor | None = None,
    mask: Tensor | None = None,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    accumulate: Literal["auto", "float32", "input"] = "auto",
    validate: bool = True,
) -> Tensor:
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
        z_loss: keyword-only coefficient of the ``lse^2`` term. Default 0.
        softcap: keyword-only ``s``: logits become ``s * tanh(z / s)``. Default None.
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
        - Output: scalar; with ``'none'`` the class-index shape.

    Returns:
        The loss, in the input's dtype.

    Notes:
        The fused path computes its gradients once: a second backward through the same graph
        (``retain_graph=True``) raises for ``'mean'``/``'sum'`` unless ``options`` allows it.
        Under ``create_graph=True`` its backward recomputes the gradients with the reference's
        differentiable ops (torch's second derivative), from the inputs; an input over 16 MiB
        is held only weakly, and if it was freed by then the backward raises (keep a reference
        to it, or use ``impl='reference'``). Under ``torch.compile`` the fused call runs
        eagerly (a graph break, ``torch.compiler.disable``); the code around it compiles.

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
    reduction = resolve(reduction)
    label_smoothing = V.check_float_option("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = V.check_float_option("z_loss", z_loss, low=0.0)
    if softcap is not None:
        softcap = V.check_float_option("softcap", softcap, low=0.0, low_open=True)
    _check_options(impl, chunk_size, memory_budget, accumulate)
    chunk_size, accumulate, retain = _apply_options(options, chunk_size, accumulate)
    call = _check(input, linear_weight, target, linear_bias, weight, ignore_index, validate)
    ignore_index = -100 if ignore_index is None else ignore_index
    V.check_mask(mask, call.index_shape)
    V.check_normalizer(normalizer, reduction)
    options_ = dict(
        weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, normalizer=normalizer,
    )  # fmt: skip

    if impl != "reference":
        reason = _unfused_reason(input, call)
        backend = None
        if not reason:
            backend, reason = _backend(input.device)
        if not reason:
            d = input.shape[-1]
            flat_mask = None if mask is None else mask.expand(call.index_shape).reshape(-1)
            rows = target.reshape(-1).long()
            recompute = _recompute(input, linear_weight, linear_bias, rows, flat_mask, options_)
            loss = _fused_for_this_call()(
                backend, input.reshape(-1, d), linear_weight, rows, bias=linear_bias,
                chunk_size=chunk_size, memory_budget=memory_budget, accumulate=accumulate,
                retain_graph=retain, recompute=recompute, mask=flat_mask, **options_,
            )  # fmt: skip
            return loss.reshape(call.index_shape) if reduction == "none" else loss
        if impl == "fused":
            raise V.LossValueError(f"impl='fused' cannot run this call: {reason}")
        if options is not None:
            warnings.warn(
                f"linear_cross_entropy: options ignored, this call takes the reference path "
                f"({reason})",
                UserWarning,
                stacklevel=2,
            )
    logits, target, mask = _reference_layout(input, linear_weight, linear_bias, target, mask, call)
    loss = cross_entropy(logits, target, impl="reference", validate=False, mask=mask, **options_)
    return loss.reshape(call.index_shape) if reduction == "none" else loss


def _unfused_reason(input: Tensor, call: _Call) -> str:
    """Why the chunked path does not take this call ('' when it does)."""
    if call.out_features and not call.probabilities:
        return "the fused path takes 2-D heads (num_classes, in_features) only"
    return unsupported_reason(input, call.probabilities)


def _reference_layout(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    mask: Tensor | None,
    call: _Call,
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


def _recompute(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    rows: Tensor,
    mask: Tensor | None,
    options: dict,
) -> Recompute:
    """A create_graph=True backward: the reference's gradients of the chunked op's inputs."""

    def build(
        input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None
    ) -> tuple[tuple[Tensor, Tensor, Tensor | None], Tensor]:
        x = input.reshape(-1, input.shape[-1]).contiguous()
        w = linear_weight.contiguous()
        logits = F.linear(x, w, linear_bias)
        loss = _reference_cross_entropy(
            logits, rows, probabilities=False, mask=mask, return_z_loss=False, **options
        )
        return (x, w, linear_bias), loss

    sources = {"input": input, "linear_weight": linear_weight, "linear_bias": linear_bias}
    return Recompute("linear_cross_entropy", sources, build)
