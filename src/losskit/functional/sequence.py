"""Sequence losses: connectionist temporal classification (CTC).

torch's CTC kernel computes the numbers: with no ``mask`` and no ``normalizer`` the result is
``torch.nn.functional.ctc_loss``'s, bit for bit. losskit checks the call first, where torch
reads out of bounds or answers with an infinite loss: labels outside the classes or equal to the
blank, lengths that do not fit the tensors, and targets too long for their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _validate as V
from .._reduction import reduce as reduce_loss
from .._reduction import resolve
from .._validate import likelihood as VL
from ._common import keep

__all__ = ["ctc_loss"]


def _kept(mask: Tensor | None, n: int) -> list[bool]:
    """The mask as one host bool per sample (all True without one)."""
    if mask is None:
        return [True] * n
    return mask.expand(n).tolist() if mask.dim() else [bool(mask)] * n


def _kept_targets(targets: Tensor, call: VL.CTCCall, kept: Sequence[bool]) -> Tensor:
    """Concatenated targets without the labels of the samples left out (whose target length
    becomes 0)."""
    if all(kept):
        return targets
    pieces, pos = [], 0
    for n, k in zip(call.target_lengths, kept, strict=True):
        if k:
            pieces.append(targets[pos : pos + n])
        pos += n
    return torch.cat(pieces) if pieces else targets[:0]


def _per_sample(
    log_probs: Tensor,
    targets: Tensor,
    call: VL.CTCCall,
    kept: Sequence[bool],
    blank: int,
    zero_infinity: bool,
) -> Tensor:
    """torch's ``reduction='none'`` loss, with the samples left out made empty and finite.

    A left-out sample gets target length 0 and zero log-probabilities, so whatever its labels
    and scores held, its loss and gradient are finite (the reduction then gives them weight 0).
    An empty batch or an empty input (``T == 0``), which torch's kernel refuses, gives what the
    definition does: 0 for an empty target, an impossible alignment (inf) otherwise.
    """
    lengths = tuple(n if k else 0 for n, k in zip(call.target_lengths, kept, strict=True))
    if not all(kept):
        sample_mask = torch.tensor(kept, device=log_probs.device)
        log_probs = keep(log_probs, sample_mask.unsqueeze(-1) if call.batched else sample_mask)
        if not call.padded:
            targets = _kept_targets(targets, call, kept)
    if call.T == 0 or call.N == 0:
        total = log_probs.sum((0, 2) if call.batched else (0, 1))  # 0, attached to log_probs
        if zero_infinity:
            return total
        impossible = torch.tensor(lengths, device=log_probs.device).reshape(total.shape) > 0
        return torch.where(impossible, torch.inf, total)
    return torch.nn.functional.ctc_loss(
        log_probs, targets, call.input_lengths, lengths, blank, "none", zero_infinity
    )


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    *,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    r"""Connectionist temporal classification: the negative log-probability of a target
    sequence, summed over its alignments to the input.

    .. math::
        \ell_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(y_n)} \prod_{t=1}^{I_n} p_{t, n, \pi_t}

    where :math:`\mathcal{B}` removes repeated labels and then blanks from an alignment
    :math:`\pi` of length :math:`I_n` (the sample's input length). A target of ``L`` labels, ``r``
    of which repeat the label before, needs ``I_n >= L + r``; otherwise no alignment exists and
    the loss is inf (0 with ``zero_infinity=True``).

    ``'mean'`` divides each sample's loss by its target length (at least 1) and averages those
    over the batch, as torch does; with a ``mask``, over the kept samples; with a
    ``normalizer``, their sum (kept samples only) is divided by it instead (0 gives 0).
    ``'sum'`` adds the undivided losses. An empty batch (``N == 0``) or input (``T == 0``),
    which torch's kernel refuses, gives what the definition does: 0 for an empty target, inf
    otherwise (``'mean'`` of no samples is NaN, as torch's mean of nothing).

    The gradient is torch's: that of the *scores* under ``log_softmax``, which the kernel folds
    in (it assumes each time step's log-probabilities sum to 1). Chained through
    ``log_softmax`` it is the exact gradient; with respect to free log-probabilities it is not
    (``gradcheck`` on ``log_probs`` fails, as it does on torch's), and there is no second
    derivative.

    Args:
        log_probs: log-probabilities (e.g. ``log_softmax(-1)`` of scores), float32 or float64
            (torch's kernels have no other dtype).
        targets: integer class labels, none equal to ``blank``: padded ``(N, S)`` (a sample's
            labels first, then anything), or concatenated ``(sum(target_lengths),)``; for one
            sample ``(S,)`` or ``(1, S)``, padded (torch reads ``(S,)`` as concatenated and
            needs ``target_lengths == S``; losskit passes it on as one row).
        input_lengths: ``(N,)``, each in ``[0, T]``: a tensor or a sequence of ints.
        target_lengths: ``(N,)``, each in ``[0, S]`` for padded targets: a tensor or a
            sequence of ints.
        blank: the blank's class index, in ``[0, C)``. Default 0.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default ``'mean'``.
        zero_infinity: set infinite losses (and their gradients) to 0. Default False.
        mask: keyword-only bool tensor of shape ``(N,)`` (``()`` unbatched): False samples
            contribute 0 whatever they hold (scores, labels, lengths within the tensors) and
            leave the ``'mean'``.
        normalizer: keyword-only; see above.
        validate: keyword-only; ``False`` skips the value checks of the kept samples: labels
            in ``[0, C)`` and not the blank (one pass over the targets), and, unless
            ``zero_infinity``, inputs long enough for their targets (host arithmetic on the
            lengths; the repeats are counted in one pass only where they decide).

    Shape:
        - log_probs: ``(T, N, C)``, or ``(T, C)`` for one sample.
        - targets: ``(N, S)`` or ``(sum(target_lengths),)``; ``(S,)`` for one sample.
        - input_lengths, target_lengths: ``(N,)``, or ``()`` for one sample.
        - Output: scalar, or ``(N,)`` (``()`` for one sample) with ``reduction='none'``.

    Returns:
        The loss, in log_probs' dtype.

    Example:
        >>> import torch, losskit.functional as LF
        >>> log_probs = torch.full((3, 1, 2), 0.5).log()  # T=3, N=1, C=2 (blank 0)
        >>> LF.ctc_loss(log_probs, torch.tensor([[1]]), [3], [1], reduction="sum")  # -log(6/8)
        tensor(0.2877)
    """
    reduction = resolve(reduction)
    call = VL.check_ctc_call(log_probs, targets, input_lengths, target_lengths, blank)
    V.check_mask(mask, torch.Size([call.N] if call.batched else []), what="the per-sample loss")
    V.check_normalizer(normalizer, reduction)
    kept = _kept(mask, call.N)
    if validate:
        VL.check_ctc_labels(targets, call, blank, kept)
        if not zero_infinity:
            VL.check_ctc_feasible(targets, call, kept)
    if not call.batched and targets.dim() == 1:
        # torch reads one sample's (S,) targets as concatenated, so its target length would have
        # to be S; as one padded row they may run past it, as the docs say
        targets = targets.unsqueeze(0)
    if mask is None and normalizer is None and call.T > 0 and call.N > 0:
        if not call.both_tensors:
            input_lengths, target_lengths = call.input_lengths, call.target_lengths
        return torch.nn.functional.ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity
        )
    loss = _per_sample(log_probs, targets, call, kept, blank, zero_infinity)
    if reduction == "mean":
        # torch's rule: each sample over its target length, at least 1
        lengths = torch.tensor(call.target_lengths, dtype=loss.dtype, device=loss.device)
        loss = loss / lengths.clamp_min(1).reshape(loss.shape)
    return reduce_loss(loss, reduction, mask=mask, normalizer=normalizer)
