r"""Distillation: a student learns a teacher's token distribution.

Every loss here compares two rows of logits per position (the student's ``z_s`` and the teacher's
``z_t``, vocabulary last) at a temperature ``T``: ``q = softmax(z_s / T)``, ``p = softmax(z_t /
T)``. Per counted position:

- :func:`kl_divergence`: ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` (``direction=
  'forward'``, Hinton et al.'s distillation loss) or ``KL(q || p)`` (``'reverse'``, mode-seeking,
  as in MiniLLM);
- :func:`jensen_shannon`: the generalized JSD of Liger-Kernel and of Agarwal et al. (GKD):
  ``beta KL(p || m) + (1 - beta) KL(q || m)`` with ``m = beta p + (1 - beta) q``; ``beta = 0.5``
  is the symmetric JSD; ``beta = 0`` and ``1`` are *defined* as the forward and the reverse KL
  (Liger's convention: the formula itself tends to 0 there);
- :func:`total_variation`: ``sum_v |p_v - q_v| / 2``;
- :func:`distillation_loss`: ``alpha * CE(z_s, y) + (1 - alpha) * soft_scale * K(p, q)``, the
  usual recipe (the hard cross-entropy on the untempered student logits; ``soft_scale``
  defaults to ``T ** 2``, Hinton et al.'s factor that keeps the soft gradient's scale as ``T``
  changes);
- :func:`linear_distillation_loss`: the same from hidden states and heads, never holding either
  ``(N, V)`` logits tensor (the chunked engine).

Reduction is per position (torch's ``kl_div(reduction='batchmean')`` for 2-D logits, and what
Liger-Kernel's losses do): ``'mean'`` divides the summed row losses by the number of counted
positions (those with ``target != ignore_index`` and ``mask`` True), or by ``normalizer``.
torch's ``kl_div(reduction='mean')`` would divide by the number of *elements*, ``N * V``.

The teacher is a fixed target: its logits are detached unless ``teacher_grad=True``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch as D
from .._reduction import count_positions
from .._validate import check_impl, check_linear_options
from .._validate import distillation as VD
from ..kernels.recompute import Recompute
from ._common import compute_dtype, keep
from .categorical import cross_entropy

__all__ = [
    "distillation_loss",
    "jensen_shannon",
    "kl_divergence",
    "linear_distillation_loss",
    "reference_distillation",
    "total_variation",
]

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tvd"]

# --------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------


def _divergence(ls: Tensor, lt: Tensor, kind: str, beta: float) -> Tensor:
    """``K`` per row from the log-probabilities ``ls`` (student) and ``lt`` (teacher)."""
    if kind == "forward_kl":
        return (lt.exp() * (lt - ls)).sum(-1)
    if kind == "reverse_kl":
        return (ls.exp() * (ls - lt)).sum(-1)
    if kind == "jsd":
        lm = torch.logaddexp(ls + math.log1p(-beta), lt + math.log(beta))
        return beta * (lt.exp() * (lt - lm)).sum(-1) + (1.0 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)


def reference_distillation(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    opts: VD.DistillationOptions,
    *,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
) -> Tensor:
    """The plain-torch loss of validated ``(N, V)`` rows (the source of truth); flat ``(N,)``
    target and mask. Differentiable in both logits (detach the teacher's to stop its gradient).
    Low-precision inputs are computed in float32 and the result rounded once."""
    dtype = compute_dtype(student)
    rows = count_positions(
        target, student.shape[0], student.device, ignore_index=opts.ignore_index,
        reduction=opts.reduction, mask=mask, normalizer=normalizer, dtype=dtype,
    )  # fmt: skip
    counted = rows.counted.unsqueeze(1)
    # masked rows are zeroed before any math, so that inf/NaN there reaches no gradient
    s = keep(student.to(dtype), counted)
    t = keep(teacher.to(dtype), counted)
    temp = opts.temperature
    ls = torch.log_softmax(s / temp, dim=-1)
    lt = torch.log_softmax(t / temp, dim=-1)
    loss = (1.0 - opts.alpha) * opts.soft_scale * _divergence(ls, lt, opts.kind, opts.beta)
    if opts.alpha > 0.0:
        hard = cross_entropy(s, rows.y, reduction="none", impl="reference", validate=False)
        loss = loss + opts.alpha * hard
    return rows.reduce(loss, student.dtype)


# --------------------------------------------------------------------------------------------
# the logits-level entry
# --------------------------------------------------------------------------------------------


def _distill(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    opts: VD.DistillationOptions,
    *,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    teacher_grad: bool,
    impl: str,
    validate: bool,
) -> Tensor:
    """Check the call once, then run the fused kernel or the reference on flat rows."""
    check_impl(impl)
    call = VD.check_distillation_call(student, teacher, target, mask, normalizer, opts, validate)
    if not teacher_grad:
        teacher = teacher.detach()
    v = call.vocab
    s_rows, t_rows = student.reshape(-1, v), teacher.reshape(-1, v)
    y = None if target is None else target.reshape(-1).long()
    flat_mask = None if mask is None else mask.expand(call.index_shape).reshape(-1)
    out = None
    if impl != "reference":
        out = _fused(
            student, s_rows, t_rows, y, opts, required=impl == "fused", mask=flat_mask,
            normalizer=normalizer, validate=validate,
        )  # fmt: skip
    if out is None:
        out = reference_distillation(s_rows, t_rows, y, opts, mask=flat_mask, normalizer=normalizer)
    return out.reshape(call.index_shape) if opts.reduction == "none" else out


def _fused(
    student: Tensor,
    s_rows: Tensor,
    t_rows: Tensor,
    y: Tensor | None,
    opts: VD.DistillationOptions,
    *,
    required: bool,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    validate: bool = True,
) -> Tensor | None:
    """The fused kernel's loss, or None (``impl='auto'``) where it does not apply: float64
    logits, no kernel for the device, or (on the CPU) fewer than
    :data:`losskit._dispatch.CPU_FUSED_MIN_ELEMENTS` logits, where the reference is faster."""
    if not required and student.is_cpu and student.numel() < D.CPU_FUSED_MIN_ELEMENTS:
        return None
    kernel, _ = D.select(
        "distillation", student, required=required,
        reason=D.unsupported_reason(student, probabilities=False),
    )  # fmt: skip
    if kernel is None:
        return None
    if D.tracing():  # torch.compile / torch.export: the custom op (losskit.ops)
        from .. import ops

        return ops.distillation.distillation(
            s_rows.contiguous(), t_rows.contiguous(), y, opts=opts, mask=mask,
            normalizer=D.kernel_normalizer(normalizer, student.device), validate=validate,
        )  # fmt: skip

    def build(student: Tensor, teacher: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        return (student, teacher), reference_distillation(
            student, teacher, y, opts, mask=mask, normalizer=normalizer
        )

    recompute = Recompute("distillation", {"student": s_rows, "teacher": t_rows}, build)
    return D.eager(kernel.distillation)(
        s_rows.contiguous(), t_rows.contiguous(), y, opts=opts, mask=mask,
        normalizer=D.kernel_normalizer(normalizer, student.device), recompute=recompute,
    )  # fmt: skip


_ARGS = """
    Args:
        student_logits: the student's logits ``(*, V)``, float (the vocabulary last).
        teacher_logits: the teacher's logits, the same shape, dtype and device.
        target: optional hard labels ``(*)`` (int): positions where it equals ``ignore_index``
            do not count (a language model's shifted labels); the divergence itself does not
            read the labels."""

_COMMON = """
        temperature: ``T > 0``: both logits are divided by it before the softmax. Default 1.
        reduction: ``'none'`` (one loss per position, 0 where it does not count) | ``'mean'``
            (over the counted positions) | ``'sum'``. Default ``'mean'``.
        ignore_index: the target value of positions that do not count. Default -100.
        mask: bool ``(*)`` (broadcastable): False positions do not count.
        normalizer: with ``'mean'``, divide the summed loss by this instead of the count
            (gradient accumulation: the tokens of the whole step); 0 gives 0.
        teacher_grad: keep the teacher's gradient (default False: its logits are detached).
        impl: ``'auto'`` (the fused kernel where it applies: float32/bfloat16/float16 on CUDA
            with Triton, or on the CPU from 128k logits), ``'reference'`` (plain torch) or
            ``'fused'`` (raises where it cannot run).
        validate: False skips the target's class-index range check (a host sync on CUDA).

    Shape:
        - student_logits, teacher_logits: ``(*, V)``.
        - target, mask: ``(*)``.
        - Output: scalar; ``(*)`` with ``'none'``.

    Returns:
        The loss, in the logits' dtype (computed in float32 for bfloat16/float16)."""


def _doc(fn):
    fn.__doc__ = fn.__doc__.replace("    {args}", _ARGS.strip("\n")).replace(
        "    {common}", _COMMON.strip("\n")
    )
    return fn


@_doc
def kl_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    direction: Literal["forward", "reverse"] = "forward",
    temperature: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    teacher_grad: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    validate: bool = True,
) -> Tensor:
    r"""Kullback-Leibler divergence between the teacher's and the student's distributions.

    With :math:`q = \mathrm{softmax}(z_s / T)` and :math:`p = \mathrm{softmax}(z_t / T)` per
    position:

    .. math::
        \ell_n = \mathrm{KL}(p_n \,\|\, q_n) = \sum_v p_{n,v} (\log p_{n,v} - \log q_{n,v})
        \quad\text{(forward)}, \qquad
        \ell_n = \mathrm{KL}(q_n \,\|\, p_n) \quad\text{(reverse)}

    {args}
        direction: ``'forward'`` (``KL(teacher || student)``, mean-seeking: Hinton et al.'s
            knowledge distillation) or ``'reverse'`` (``KL(student || teacher)``,
            mode-seeking). Default ``'forward'``.
    {common}

    Example:
        >>> import torch, losskit.functional as LF
        >>> s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
        >>> loss = LF.kl_divergence(s, t)
        >>> ref = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1),
        ...                                  reduction="batchmean", log_target=True)
        >>> bool(torch.allclose(loss, ref))
        True

    Equivalent to ``torch.nn.functional.kl_div(log_softmax(z_s / T), log_softmax(z_t / T),
    reduction='batchmean', log_target=True)`` for 2-D logits (forward), plus the masking.
    """
    kind = VD.check_direction(direction)
    opts = VD.distillation_options(
        divergence=kind, temperature=temperature, reduction=reduction, ignore_index=ignore_index
    )
    return _distill(
        student_logits, teacher_logits, target, opts, mask=mask, normalizer=normalizer,
        teacher_grad=teacher_grad, impl=impl, validate=validate,
    )  # fmt: skip


@_doc
def jensen_shannon(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    teacher_grad: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    validate: bool = True,
) -> Tensor:
    r"""The generalized Jensen-Shannon divergence between teacher and student.

    With :math:`q`, :math:`p` the student's and the teacher's softmax at temperature ``T`` and
    :math:`m = \beta p + (1 - \beta) q`:

    .. math::
        \ell_n = \beta\, \mathrm{KL}(p_n \,\|\, m_n) + (1 - \beta)\, \mathrm{KL}(q_n \,\|\, m_n)
        \qquad (0 < \beta < 1)

    and, by definition (Liger-Kernel's convention), :math:`\mathrm{KL}(p \| q)` at
    :math:`\beta = 0` and :math:`\mathrm{KL}(q \| p)` at :math:`\beta = 1` (the formula itself
    tends to 0 at both ends). ``beta = 0.5`` is the symmetric JSD, at most ``log 2``. This is the
    generalized JSD of Agarwal et al., "On-Policy Distillation of Language Models" (GKD, 2024),
    and Liger-Kernel's ``LigerJSD`` (whose ``beta`` weighs the teacher, ``P``, as here).

    {args}
        beta: the mixture's teacher weight, in [0, 1]. Default 0.5.
    {common}

    Example:
        >>> import torch, losskit.functional as LF
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> q, p = s.softmax(-1), t.softmax(-1)
        >>> m = (p + q) / 2
        >>> ref = ((p * (p / m).log()).sum(-1) + (q * (q / m).log()).sum(-1)).mean() / 2
        >>> bool(torch.allclose(LF.jensen_shannon(s, t), ref))
        True
    """
    opts = VD.distillation_options(
        divergence="jsd", beta=beta, temperature=temperature, reduction=reduction,
        ignore_index=ignore_index,
    )  # fmt: skip
    return _distill(
        student_logits, teacher_logits, target, opts, mask=mask, normalizer=normalizer,
        teacher_grad=teacher_grad, impl=impl, validate=validate,
    )  # fmt: skip


@_doc
def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    teacher_grad: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    validate: bool = True,
) -> Tensor:
    r"""Total variation distance between teacher and student: half the L1 distance.

    .. math::
        \ell_n = \tfrac12 \sum_v |p_{n,v} - q_{n,v}|, \qquad 0 \le \ell_n \le 1

    with :math:`q`, :math:`p` the student's and the teacher's softmax at temperature ``T``.
    Liger-Kernel's ``LigerTVDLoss`` takes probabilities; this takes logits, like the other
    divergences here. Its gradient uses ``sign(0) = 0`` where the two probabilities are equal.

    {args}
    {common}

    Example:
        >>> import torch, losskit.functional as LF
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> ref = 0.5 * (s.softmax(-1) - t.softmax(-1)).abs().sum(-1).mean()
        >>> bool(torch.allclose(LF.total_variation(s, t), ref))
        True
    """
    opts = VD.distillation_options(
        divergence="tvd", temperature=temperature, reduction=reduction, ignore_index=ignore_index
    )
    return _distill(
        student_logits, teacher_logits, target, opts, mask=mask, normalizer=normalizer,
        teacher_grad=teacher_grad, impl=impl, validate=validate,
    )  # fmt: skip


@_doc
def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    soft_scale: float | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    teacher_grad: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    validate: bool = True,
) -> Tensor:
    r"""Knowledge distillation: a hard-label cross-entropy plus a soft divergence to the teacher.

    .. math::
        \ell_n = \alpha\, \mathrm{CE}(z_{s,n}, y_n)
                 + (1 - \alpha)\, k\, K(p_n, q_n), \qquad k = T^2 \text{ by default}

    with :math:`K` the divergence named by ``divergence`` between :math:`p =
    \mathrm{softmax}(z_t / T)` and :math:`q = \mathrm{softmax}(z_s / T)` (see
    :func:`kl_divergence`, :func:`jensen_shannon`, :func:`total_variation`), and the hard
    cross-entropy :math:`\mathrm{lse}(z_s) - z_{s,y}` on the *untempered* student logits
    (:func:`~losskit.functional.cross_entropy`). The factor :math:`T^2` (Hinton et al., 2015,
    and PyTorch's knowledge-distillation tutorial) keeps the soft term's gradient at the same
    scale as ``T`` changes; ``soft_scale=1`` gives the unscaled divergence (Liger-Kernel's
    distillation losses do not scale it).

    {args}
            Here required: the hard labels of the cross-entropy.
        alpha: the hard loss's weight, in [0, 1]; ``1 - alpha`` weighs the soft one. Default 0.5.
        divergence: ``'forward_kl'`` | ``'reverse_kl'`` | ``'jsd'`` (with ``beta``) |
            ``'tvd'``. Default ``'forward_kl'``.
        beta: the JSD's teacher weight (``divergence='jsd'`` only). Default 0.5.
        soft_scale: ``k``; None (default) means ``temperature ** 2``.
    {common}

    Example:
        >>> import torch, losskit.functional as LF
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> y = torch.tensor([1, 2, -100, 4])
        >>> loss = LF.distillation_loss(s, t, y, alpha=0.3, temperature=2.0)
        >>> keep = y != -100
        >>> soft = LF.kl_divergence(s[keep], t[keep], temperature=2.0)
        >>> hard = torch.nn.functional.cross_entropy(s, y)
        >>> bool(torch.allclose(loss, 0.3 * hard + 0.7 * 4.0 * soft))
        True
    """
    opts = VD.distillation_options(
        divergence=divergence, beta=beta, temperature=temperature, alpha=alpha,
        soft_scale=soft_scale, reduction=reduction, ignore_index=ignore_index,
    )  # fmt: skip
    return _distill(
        student_logits, teacher_logits, target, opts, mask=mask, normalizer=normalizer,
        teacher_grad=teacher_grad, impl=impl, validate=validate,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the linear form
# --------------------------------------------------------------------------------------------


def linear_distillation_loss(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_input: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    target: Tensor | None = None,
    *,
    teacher_logprobs: Tensor | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    alpha: float = 0.0,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    soft_scale: float | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    teacher_grad: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor:
    r""":func:`distillation_loss` of two linear heads' logits, never holding either of them.

    The student's logits are ``z_s = student_input @ student_weight.T + student_bias``; the
    teacher's ``z_t = teacher_input @ teacher_weight.T + teacher_bias``, or given as
    ``teacher_logprobs`` (log-probabilities from a cached teacher run; raw logits give the same
    loss, the softmax being shift-invariant). Per position, as :func:`distillation_loss`:

    .. math::
        \ell_n = \alpha\, \mathrm{CE}(z_{s,n}, y_n) + (1 - \alpha)\, k\, K(p_n, q_n)

    ``alpha`` defaults to 0 here (the divergence alone; ``target`` then only marks ignored
    positions, as Liger-Kernel's ``LigerFusedLinearJSD`` takes ``shift_labels``), and ``k`` to
    ``T ** 2``: pass ``divergence='jsd', soft_scale=1`` for Liger's fused linear JSD.

    The fused path (``impl='fused'``, the default where it applies: float32/bfloat16/float16 on
    the CPU, or CUDA with Triton) runs the rows in chunks: per chunk, one GEMM per head gives
    the chunk's logits, the loss and the gradients of both logits overwrite them in place, and
    the gradient GEMMs give the chunk's rows of ``d student_input`` and add its part of
    ``d student_weight`` (and the teacher's, with ``teacher_grad=True``). All gradients are
    computed in the forward (the backward scales them by ``grad_output``); only a chunk of
    each head's logits exists at a time, sized by ``memory_budget``: ``'default'`` (1 GiB on
    CUDA, 112 MiB on the CPU: about twice
    :func:`~losskit.functional.linear_cross_entropy`'s there, as a chunk holds a row of each
    head per position), ``'lean'`` (64 MiB on both) or bytes. A
    chunk holds whole rows of both heads, so at a small budget chunks get few rows and the
    GEMMs slow down, rather than the memory growing.

    Args:
        student_input: the student's hidden states ``(*, Ds)``.
        student_weight: its head ``(V, Ds)``, the same dtype and device.
        teacher_input: the teacher's hidden states ``(*, Dt)`` (the same positions), or None
            with ``teacher_logprobs``.
        teacher_weight: its head ``(V, Dt)`` (the same vocabulary), or None.
        target: hard labels ``(*)``, required with ``alpha > 0``; ``ignore_index`` positions do
            not count.
        teacher_logprobs: keyword-only; the teacher's log-probabilities ``(*, V)`` instead of
            its hidden states and head.
        student_bias, teacher_bias: optional ``(V,)`` biases.
        alpha, divergence, beta, temperature, soft_scale, reduction, ignore_index, mask,
            normalizer, teacher_grad: as :func:`distillation_loss` (``alpha`` defaults to 0).
            ``teacher_grad=True`` gives gradients to the teacher's hidden states, head and bias
            (or ``teacher_logprobs``).
        impl: ``'auto'`` | ``'reference'`` (both heads' logits in plain torch, then
            :func:`reference_distillation`) | ``'fused'``.
        chunk_size: rows per chunk (overrides the budget's choice).
        memory_budget: ``'default'``, ``'lean'`` or bytes beyond the returned gradients.
        validate: False skips the target's class-index range check.

    Shape:
        - student_input ``(*, Ds)``, student_weight ``(V, Ds)``; teacher_input ``(*, Dt)``,
          teacher_weight ``(V, Dt)``; or teacher_logprobs ``(*, V)``.
        - target, mask ``(*)``. Output: scalar; ``(*)`` with ``'none'``.

    Returns:
        The loss, in the inputs' dtype.

    Example:
        >>> import torch, losskit.functional as LF
        >>> xs, ws = torch.randn(6, 8, requires_grad=True), torch.randn(50, 8)
        >>> xt, wt = torch.randn(6, 16), torch.randn(50, 16)
        >>> loss = LF.linear_distillation_loss(xs, ws, xt, wt, divergence="jsd", chunk_size=4)
        >>> ref = LF.jensen_shannon(xs @ ws.T, xt @ wt.T)
        >>> bool(torch.allclose(loss, ref, atol=1e-6))
        True

    Equivalent to ``distillation_loss(F.linear(student_input, student_weight, student_bias),
    F.linear(teacher_input, teacher_weight, teacher_bias), target, ...)`` with the same options.
    """
    opts = VD.distillation_options(
        divergence=divergence, beta=beta, temperature=temperature, alpha=alpha,
        soft_scale=soft_scale, reduction=reduction, ignore_index=ignore_index,
    )  # fmt: skip
    check_linear_options(impl, chunk_size, memory_budget, "auto")
    call = VD.check_linear_distillation_call(
        student_input, student_weight, teacher_input, teacher_weight, teacher_logprobs, target,
        student_bias, teacher_bias, mask, normalizer, opts, validate,
    )  # fmt: skip
    if not teacher_grad:
        teacher_input, teacher_weight, teacher_bias, teacher_logprobs = (
            None if t is None else t.detach()
            for t in (teacher_input, teacher_weight, teacher_bias, teacher_logprobs)
        )
    ds = student_input.shape[-1]
    xs = student_input.reshape(-1, ds)
    xt = None if teacher_input is None else teacher_input.reshape(-1, teacher_input.shape[-1])
    tl = None if teacher_logprobs is None else teacher_logprobs.reshape(-1, call.vocab)
    y = None if target is None else target.reshape(-1).long()
    flat_mask = None if mask is None else mask.expand(call.index_shape).reshape(-1)
    heads = (xs, student_weight, student_bias, xt, teacher_weight, teacher_bias, tl)
    out = None
    if impl != "reference":
        out = _fused_linear(
            heads, y, opts, required=impl == "fused", mask=flat_mask, normalizer=normalizer,
            chunk_size=chunk_size, memory_budget=memory_budget, validate=validate,
        )  # fmt: skip
    if out is None:
        out = _reference_linear(heads, y, opts, mask=flat_mask, normalizer=normalizer)
    return out.reshape(call.index_shape) if opts.reduction == "none" else out


def _reference_linear(
    heads: tuple, y: Tensor | None, opts: VD.DistillationOptions, **extras
) -> Tensor:
    xs, ws, bs, xt, wt, bt, tl = heads
    zt = F.linear(xt, wt, bt) if tl is None else tl
    return reference_distillation(F.linear(xs, ws, bs), zt, y, opts, **extras)


def _fused_linear(
    heads: tuple,
    y: Tensor | None,
    opts: VD.DistillationOptions,
    *,
    required: bool,
    mask: Tensor | None,
    normalizer: float | Tensor | None,
    chunk_size: int | None,
    memory_budget: int | str,
    validate: bool = True,
) -> Tensor | None:
    """The chunked kernel's loss, or None where it does not apply (``impl='auto'``)."""
    xs = heads[0]
    kernel, _ = D.select(
        "linear_distillation", xs, required=required,
        reason=D.unsupported_reason(xs, probabilities=False),
    )  # fmt: skip
    if kernel is None:
        return None
    if D.tracing():  # torch.compile / torch.export: the custom op (losskit.ops)
        from .. import ops

        contiguous = tuple(None if t is None else t.contiguous() for t in heads)
        return ops.distillation.linear_distillation(
            *contiguous, y, opts=opts, mask=mask,
            normalizer=D.kernel_normalizer(normalizer, xs.device), chunk_size=chunk_size,
            memory_budget=memory_budget, validate=validate,
        )  # fmt: skip
    from ..kernels.chunked import budget_bytes, plan_pairs

    names = ("xs", "ws", "bs", "xt", "wt", "bt", "tl")

    def build(**src: Tensor | None) -> tuple[tuple, Tensor]:
        inputs = tuple(src[k] for k in names)
        return inputs, _reference_linear(inputs, y, opts, mask=mask, normalizer=normalizer)

    recompute = Recompute("linear_distillation_loss", dict(zip(names, heads, strict=True)), build)
    xs, ws, bs, xt, wt, bt, tl = heads
    v, d = ws.shape
    budget = budget_bytes(memory_budget, xs.device.type, pairs=True)
    d_max = max(d, 0 if xt is None else xt.shape[1])
    plan = plan_pairs(
        xs.shape[0], d_max, v, xs.dtype, xs.device.type, budget=budget, chunk_size=chunk_size
    )
    contiguous = tuple(None if t is None else t.contiguous() for t in heads)
    return D.eager(kernel.linear_distillation)(
        *contiguous, y, opts=opts, mask=mask,
        normalizer=D.kernel_normalizer(normalizer, xs.device), plan=plan, recompute=recompute,
    )  # fmt: skip
