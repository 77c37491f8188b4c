"""Choose between the plain-torch reference and a fused kernel, for every fused loss.

``impl`` means one thing everywhere: ``'reference'`` (the plain-torch source of truth),
``'fused'`` (the kernel; raises where it cannot take the call, naming why) or ``'auto'`` (the
kernel wherever it supports the call, else the reference). The kernels live one folder per
backend, one file per loss: :func:`kernels_for` picks the folder for the device
(``kernels/triton`` on CUDA, ``kernels/cpu`` on the CPU) and a loss takes its own module from it
by name (``kernels.cross_entropy``, ``kernels.linear_cross_entropy``) through :func:`select`,
the one fallback-or-raise rule. What is particular to a loss (the layout its kernel takes, its
recompute rule for ``create_graph=True``) stays in its functional file, which calls
:func:`select`: a new fused loss adds no code here.

The fused paths take class-index targets and float32, bfloat16 or float16 inputs. On the CPU,
``impl='auto'`` keeps small cross-entropy inputs (fewer than :data:`CPU_FUSED_MIN_ELEMENTS`
logits) on the reference: there the fused path's fixed cost (thread start-up, scratch set-up)
outweighs what it saves, measured 1.4-2.3x slower below 128k logits and 0.16-0.3x of the
reference's time from 256k up (2 cores, float32).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from ._validate import CrossEntropyOptions, LossValueError

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: ``impl='auto'`` on the CPU runs the reference below this many logits (see the module docstring)
CPU_FUSED_MIN_ELEMENTS = 1 << 17


def kernels_for(device: torch.device) -> tuple[ModuleType | None, str]:
    """The package of fused kernels for ``device``, or None and the reason there is none."""
    if device.type == "cuda":
        try:
            from .kernels import triton as kernels
        except ImportError as exc:  # triton missing or too old
            return None, f"the Triton kernels could not be loaded ({exc}); pip install triton"
        return kernels, ""
    if device.type == "cpu":
        from .kernels import cpu as kernels

        return kernels, ""
    return None, f"there is no fused kernel for device type {device.type!r}"


def unsupported_reason(input: Tensor, probabilities: bool) -> str:
    """Why no fused path can take this call ('' when one can)."""
    if probabilities:
        return (
            "the fused path takes class-index targets only (probability targets use the reference)"
        )
    if input.dtype not in FUSED_DTYPES:
        return f"the fused path takes float32, bfloat16 or float16 logits, got {input.dtype}"
    return ""


def select(
    loss: str, input: Tensor, *, required: bool, reason: str
) -> tuple[ModuleType | None, str]:
    """The kernel module of ``loss`` for this call, or None and why (the reference runs then).

    ``reason`` is why the loss's own rules refuse the call ('' when they do not); ``required``
    (``impl='fused'``) turns a refusal into a :class:`~losskit.LossValueError`.
    """
    kernels = None
    if not reason and transformed():
        reason = (
            "a torch.func transform (vmap, grad, jacrev, ...) is running the call, and the "
            "fused kernels have no functorch rule: the reference (plain torch ops) runs under one"
        )
    if not reason:
        kernels, reason = kernels_for(input.device)
    if reason:
        if required:
            raise LossValueError(f"impl='fused' cannot run this call: {reason}")
        return None, reason
    return getattr(kernels, loss), ""


def tracing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing the call: the fused paths then
    go through their custom ops (:mod:`losskit.ops`) instead of their ``autograd.Function``."""
    return torch.compiler.is_compiling()


def transformed() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...) runs the call
    (eagerly: under ``torch.compile`` the ops take it). The fused paths' ``autograd.Function``
    has no functorch rule, so ``impl='auto'`` takes the reference there, which every transform
    supports (the same numbers as ``impl='reference'``), and ``impl='fused'`` raises."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def eager(fn):
    """``fn``, wrapped in ``torch.compiler.disable`` while ``torch.compile`` traces.

    For the fused paths that have no custom op yet (:mod:`losskit.ops`): under
    ``torch.compile`` such a call runs eagerly (a graph break) instead of being traced (its
    Python chunk loop and autograd.Function would be unrolled into the graph). The wrapper is
    made on first use: decorating at import would import ``torch._dynamo`` (and Triton) with
    every ``import losskit``.
    """
    if not torch.compiler.is_compiling():
        return fn
    wrapped = _EAGER.get(fn)
    if wrapped is None:
        wrapped = _EAGER[fn] = torch.compiler.disable(fn)
    return wrapped


_EAGER: dict = {}


def kernel_normalizer(normalizer: float | Tensor | None, device: torch.device) -> Tensor | None:
    """The kernels' normalizer: a 0-dim float32 tensor on the device, or None."""
    if normalizer is None:
        return None
    return torch.as_tensor(normalizer, dtype=torch.float32, device=device).reshape(())


def kernel_options(opts: CrossEntropyOptions) -> dict:
    """The options as the kernel launchers take them (``kernels/CONTRACT.md``)."""
    return dict(
        ignore_index=opts.kernel_ignore_index, label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap, reduction=opts.reduction,
    )  # fmt: skip
