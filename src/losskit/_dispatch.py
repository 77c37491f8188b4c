"""Choose between the plain-torch reference and a fused kernel, for every fused loss.

``impl`` means one thing everywhere: ``'reference'`` (the plain-torch source of truth),
``'fused'`` (the kernel; raises where it cannot take the call, naming why) or ``'auto'`` (the
kernel wherever it supports the call, else the reference). The kernels live one folder per
backend, one file per loss: :func:`kernels_for` picks the folder for the device
(``kernels/triton`` on CUDA, ``kernels/cpu`` on the CPU) and a loss takes its own module from it
by name (``kernels.cross_entropy``, ``kernels.linear_cross_entropy``).

The fused paths take class-index targets and float32, bfloat16 or float16 inputs. On the CPU,
``impl='auto'`` keeps small cross-entropy inputs (fewer than :data:`CPU_FUSED_MIN_ELEMENTS`
logits) on the reference: there the fused path's fixed cost (thread start-up, scratch set-up)
outweighs what it saves, measured 1.4-2.3x slower below 128k logits and 0.16-0.3x of the
reference's time from 256k up (2 cores, float32).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import CrossEntropyOptions, LossValueError, check_inplace_allowed
from .functional._common import flatten_classes
from .functional.categorical import reference_cross_entropy
from .kernels.recompute import Recompute

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
    if not reason:
        kernels, reason = kernels_for(input.device)
    if reason:
        if required:
            raise LossValueError(f"impl='fused' cannot run this call: {reason}")
        return None, reason
    return getattr(kernels, loss), ""


def eager(fn):
    """``fn``, wrapped in ``torch.compiler.disable`` while ``torch.compile`` traces.

    Under ``torch.compile`` a chunked fused call runs eagerly (a graph break) instead of being
    traced (its Python chunk loop and autograd.Function would be unrolled into the graph). The
    wrapper is made on first use: decorating at import would import ``torch._dynamo`` (and
    Triton) with every ``import losskit``.
    """
    if not torch.compiler.is_compiling():
        return fn
    wrapped = _EAGER.get(fn)
    if wrapped is None:
        wrapped = _EAGER[fn] = torch.compiler.disable(fn)
    return wrapped


_EAGER: dict = {}


# --------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------


def _rows(input: Tensor) -> Tensor:
    """The kernels' ``(N, V)`` rows of logits ``(C,)``, ``(N, C)`` or ``(N, C, d1..dK)``, unit
    column stride (``(N, C, d1..dK)`` becomes a copy with the classes last)."""
    logits = flatten_classes(input)
    return logits if logits.stride(1) == 1 else logits.contiguous()


def _ce_recompute(
    input: Tensor, rows: Tensor, opts: CrossEntropyOptions, **extras: Tensor | float | None
) -> Recompute:
    """A create_graph=True backward: the reference's gradient of the kernel's ``(N, V)`` rows
    (``extras``: the call's ``weight``, ``mask`` and ``normalizer``)."""

    def build(input: Tensor) -> tuple[tuple[Tensor], Tensor]:
        logits = _rows(input)
        return (logits,), reference_cross_entropy(logits, rows, opts, probabilities=False, **extras)

    return Recompute("cross_entropy", {"input": input}, build)


def _normalizer(normalizer: float | Tensor | None, device: torch.device) -> Tensor | None:
    """The kernels' normalizer: a 0-dim float32 tensor on the device, or None."""
    if normalizer is None:
        return None
    return torch.as_tensor(normalizer, dtype=torch.float32, device=device).reshape(())


def _kernel_options(opts: CrossEntropyOptions) -> dict:
    """The options as the kernel launchers take them (``kernels/CONTRACT.md``)."""
    return dict(
        ignore_index=opts.kernel_ignore_index, label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap, reduction=opts.reduction,
    )  # fmt: skip


def fused_cross_entropy(
    input: Tensor,
    target: Tensor,
    opts: CrossEntropyOptions,
    *,
    probabilities: bool,
    required: bool,
    inplace_backward: bool,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    return_z_loss: bool,
) -> Tensor | tuple[Tensor, Tensor] | None:
    """Run the fused kernel, or return None (``required=False``) when it does not apply."""
    if not required and input.device.type == "cpu" and input.numel() < CPU_FUSED_MIN_ELEMENTS:
        return None
    kernel, _ = select(
        "cross_entropy", input, required=required, reason=unsupported_reason(input, probabilities)
    )
    if kernel is None:
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
            input, rows, opts, weight=weight, mask=mask, normalizer=normalizer
        )
    result = kernel.cross_entropy(
        logits,
        rows,
        recompute=recompute,
        weight=None if weight is None else weight.to(torch.float32),
        normalizer=_normalizer(normalizer, input.device),
        mask=mask,
        inplace_backward=inplace_backward,
        return_z_loss=return_z_loss,
        **_kernel_options(opts),
    )
    if opts.reduction != "none":
        return result
    if return_z_loss:
        return result[0].reshape(out_shape), result[1].reshape(out_shape)
    return result.reshape(out_shape)


# --------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------


def _lce_recompute(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    rows: Tensor,
    opts: CrossEntropyOptions,
    **extras: Tensor | float | None,
) -> Recompute:
    """A create_graph=True backward: the reference's gradients of the chunked op's inputs."""

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


def _budget_bytes(memory_budget: int | str, device: torch.device) -> int:
    from .kernels.chunked import BUDGETS

    if not isinstance(memory_budget, str):
        return int(memory_budget)
    return BUDGETS[("cuda" if device.type == "cuda" else "cpu", memory_budget)]


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
) -> Tensor:
    """The chunked launcher on 2-D inputs, its plan sized by the memory budget."""
    from .kernels.chunked import plan_chunks

    n, d = x.shape
    plan = plan_chunks(
        n, d, w.shape[0], x.dtype, x.device.type, budget=_budget_bytes(memory_budget, x.device),
        chunk_size=chunk_size, accumulate=accumulate,
    )  # fmt: skip
    return kernel.linear_cross_entropy(
        x.contiguous(), w.contiguous(), target, plan=plan,
        normalizer=_normalizer(normalizer, x.device), **options,
    )  # fmt: skip


def fused_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    opts: CrossEntropyOptions,
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
) -> tuple[Tensor | None, str]:
    """Run the chunked kernel on ``(*, D)`` inputs with flat ``(N,)`` targets and mask, or
    return None and why not (``required=False``) when it does not apply."""
    kernel, reason = select("linear_cross_entropy", input, required=required, reason=reason)
    if kernel is None:
        return None, reason
    recompute = _lce_recompute(
        input, linear_weight, linear_bias, target, opts, weight=weight, mask=mask,
        normalizer=normalizer,
    )  # fmt: skip
    loss = eager(_chunked)(
        kernel, input.reshape(-1, input.shape[-1]), linear_weight, target, bias=linear_bias,
        weight=weight, mask=mask, normalizer=normalizer, chunk_size=chunk_size,
        memory_budget=memory_budget, accumulate=accumulate, retain_graph=retain_graph,
        recompute=recompute, **_kernel_options(opts),
    )  # fmt: skip
    return loss, ""
