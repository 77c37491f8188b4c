"""Choose between the plain-torch reference and a fused kernel for a validated call.

``impl='auto'`` takes the fused path wherever it supports the call (class-index targets, float32,
bfloat16 or float16 logits, on CUDA with Triton installed or on the CPU) and otherwise returns
``None`` so the caller runs the reference. On the CPU, ``'auto'`` also keeps small inputs (fewer
than :data:`CPU_FUSED_MIN_ELEMENTS` logits) on the reference: there the fused path's fixed cost
(thread start-up, scratch set-up) outweighs what it saves, measured 1.4-2.3x slower below 128k
logits and 0.16-0.3x of the reference's time from 256k up (2 cores, float32).
``impl='fused'`` raises instead of falling back, naming what the fused path does not support.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from ._validate import LossValueError, check_inplace_allowed
from .functional.categorical import _flatten_classes, _reference_cross_entropy
from .kernels.recompute import Recompute

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: ``impl='auto'`` on the CPU runs the reference below this many logits (see the module docstring)
CPU_FUSED_MIN_ELEMENTS = 1 << 17


def _backend(device: torch.device) -> tuple[ModuleType | None, str]:
    """The kernel module for ``device``, or None and the reason there is none."""
    if device.type == "cuda":
        try:
            return importlib.import_module("losskit.kernels.triton.cross_entropy"), ""
        except ImportError as exc:  # triton missing or too old
            return None, f"the Triton kernels could not be loaded ({exc}); pip install triton"
    if device.type == "cpu":
        return importlib.import_module("losskit.kernels.cpu.cross_entropy"), ""
    return None, f"there is no fused kernel for device type {device.type!r}"


def unsupported_reason(input: Tensor, probabilities: bool) -> str:
    """Why the fused path cannot take this call ('' when it can)."""
    if probabilities:
        return (
            "the fused path takes class-index targets only (probability targets use the reference)"
        )
    if input.dtype not in FUSED_DTYPES:
        return f"the fused path takes float32, bfloat16 or float16 logits, got {input.dtype}"
    return ""


def _rows(input: Tensor) -> Tensor:
    """The kernels' ``(N, V)`` rows of logits ``(C,)``, ``(N, C)`` or ``(N, C, d1..dK)``, unit
    column stride (``(N, C, d1..dK)`` becomes a copy with the classes last)."""
    logits = _flatten_classes(input)
    return logits if logits.stride(1) == 1 else logits.contiguous()


def _ce_recompute(input: Tensor, rows: Tensor, **options: object) -> Recompute:
    """A create_graph=True backward: the reference's gradient of the kernel's ``(N, V)`` rows."""

    def build(input: Tensor) -> tuple[tuple[Tensor], Tensor]:
        logits = _rows(input)
        loss = _reference_cross_entropy(
            logits, rows, probabilities=False, return_z_loss=False, **options
        )
        return (logits,), loss

    return Recompute("cross_entropy", {"input": input}, build)


def fused_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    probabilities: bool,
    required: bool,
    inplace_backward: bool,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    z_loss: float,
    softcap: float | None,
    return_z_loss: bool,
) -> Tensor | tuple[Tensor, Tensor] | None:
    """Run the fused kernel, or return None (``required=False``) when it does not apply."""
    if not required and input.device.type == "cpu" and input.numel() < CPU_FUSED_MIN_ELEMENTS:
        return None
    reason = unsupported_reason(input, probabilities)
    backend = None
    if not reason:
        backend, reason = _backend(input.device)
    if reason:
        if required:
            raise LossValueError(f"impl='fused' cannot run this call: {reason}")
        return None

    out_shape = target.shape
    logits = _rows(input)
    rows = target.reshape(-1).long()
    if mask is not None:
        mask = mask.expand(out_shape).reshape(-1)
    if inplace_backward:
        check_inplace_allowed("input", input, logits)
        recompute = Recompute.unsupported(
            "cross_entropy", "inplace_backward=True overwrote the logits with their gradient"
        )
    else:
        recompute = _ce_recompute(
            input, rows, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, mask=mask, normalizer=normalizer, z_loss=z_loss,
            softcap=softcap,
        )  # fmt: skip
    if normalizer is not None:
        normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=input.device)
        normalizer = normalizer.reshape(())
    result = backend.cross_entropy(
        logits,
        rows,
        recompute=recompute,
        weight=None if weight is None else weight.to(torch.float32),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        normalizer=normalizer,
        mask=mask,
        inplace_backward=inplace_backward,
        return_z_loss=return_z_loss,
    )
    if reduction != "none":
        return result
    if return_z_loss:
        return result[0].reshape(out_shape), result[1].reshape(out_shape)
    return result.reshape(out_shape)
