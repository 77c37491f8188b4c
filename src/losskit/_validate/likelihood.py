"""Checks of the likelihood losses: Poisson and Gaussian negative log-likelihood, and CTC.

Imported directly (``from .._validate import likelihood as VL``) by
:mod:`losskit.functional.likelihood` and :mod:`losskit.functional.sequence`.

Shape, dtype, length and option checks are Python on shapes and host lists; the value checks
(:func:`check_nonnegative`, :func:`check_ctc_labels`, :func:`check_ctc_feasible`) cost one
reduction each and run only with ``validate=True``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import LossIndexError, LossTypeError, LossValueError
from .tensors import position, require_tensor, shape_str, value_range

__all__ = [
    "CTCCall",
    "check_blank",
    "check_ctc_call",
    "check_ctc_feasible",
    "check_ctc_labels",
    "check_gaussian_shapes",
    "check_nonnegative",
    "check_number",
]

_KERNEL_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# values >= 0, and the shapes of the Gaussian NLL
# --------------------------------------------------------------------------------------------


def check_nonnegative(name: str, tensor: Tensor, *, what: str, hint: str = "") -> None:
    """Every value of ``tensor`` is >= 0 (NaN fails too): the one min/max pass of
    :func:`~losskit._validate.tensors.value_range` (a comparison and ``.all()`` would cost two
    ops where one already costs as much as a small loss).

    The message gives the count of bad values and the first one with its position.
    """
    if tensor.numel() == 0 or tensor.dtype == torch.bool or value_range(tensor)[0] >= 0:
        return
    bad = ~(tensor >= 0)
    count = int(bad.sum())
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    value = tensor.reshape(-1)[flat].item()
    where = f"{value:g} at position {position(flat, tensor.shape)}"
    found = (
        f"1 negative or NaN entry of {tensor.numel()}, {where}"
        if count == 1
        else f"{count} negative or NaN entries of {tensor.numel()}; the first is {where}"
    )
    raise LossValueError(
        f"{name} must hold {what} >= 0, got {found}" + (f" ({hint})" if hint else "")
    )


def check_number(name: str, value: object, *, what: str) -> float:
    """A real Python number (not bool) that is >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossTypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    value = float(value)
    if not value >= 0:
        raise LossValueError(f"{name} must be {what} >= 0, got {value:g}")
    return value


def _one_dim_of_size_1(shape: torch.Size, ref: torch.Size) -> bool:
    """Same number of dims as ``ref``, equal but for exactly one dim where ``shape`` has 1."""
    if len(shape) != len(ref):
        return False
    differ = [(a, b) for a, b in zip(shape, ref, strict=True) if a != b]
    return len(differ) == 1 and differ[0][0] == 1


def check_gaussian_shapes(input: Tensor, target: Tensor, var: Tensor | None) -> bool:
    """The target's and the variance's shapes against the input's (torch's pairing rules).

    ``target``: the input's shape, or that shape with one dim of size 1 (broadcast). ``var``: the
    input's shape; that shape with one dim of size 1; or the input's shape without its last dim
    (one variance per row: homoscedastic over the last dim). Returns whether ``var`` must be
    unsqueezed at the end (the last form).
    """
    shape = input.shape
    if target.shape != shape and not _one_dim_of_size_1(target.shape, shape):
        raise LossValueError(
            f"target has shape {shape_str(target.shape)} but input has shape {shape_str(shape)}; "
            "target must have the input's shape, or that shape with one dimension of size 1 "
            "(torch would broadcast other shapes silently, which is almost always a bug)"
        )
    if var is None or var.shape == shape:
        return False
    if var.shape == shape[:-1]:
        return True
    if _one_dim_of_size_1(var.shape, shape):
        return False
    if not len(shape):
        raise LossValueError(
            f"var has shape {shape_str(var.shape)} but input is 0-dim; var must be 0-dim too, "
            "or a number"
        )
    fewer = shape_str(shape[:-1])
    raise LossValueError(
        f"var has shape {shape_str(var.shape)}, which does not pair with the input's shape "
        f"{shape_str(shape)}: var must have the input's shape (one variance per element), that "
        f"shape with one dimension of size 1 (shared along it), or the input's shape without "
        f"its last dimension, {fewer} (one variance per row); or pass a number"
    )


# --------------------------------------------------------------------------------------------
# CTC
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTCCall:
    """A checked CTC call: its sizes and its lengths on the host."""

    batched: bool  #: log_probs is (T, N, C), not (T, C)
    padded: bool  #: targets are (N, S) (or (S,) unbatched), not concatenated
    T: int
    N: int  #: 1 when unbatched
    C: int
    S: int  #: the padded targets' length, or the number of concatenated labels
    input_lengths: tuple[int, ...]  #: N lengths
    target_lengths: tuple[int, ...]  #: N lengths
    both_tensors: bool  #: both lengths came as tensors (torch's tensor overload takes them)


def _lengths(name: str, value: object, count: int, batched: bool) -> tuple[int, ...]:
    """``value`` (a tensor, a sequence of ints, or an int) as a host tuple of ``count`` ints."""
    what = (
        f"one length per sample, shape ({count},) (log_probs has {count} samples, dim 1)"
        if batched
        else "the one sample's length (log_probs of shape (T, C) holds one sample): an int, "
        "or a tensor of shape () or (1,)"
    )
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise LossTypeError(
                f"{name} must hold integer lengths (int64 or int32), got dtype {value.dtype}"
            )
        if value.numel() != count:
            raise LossValueError(f"{name} must be {what}, got shape {shape_str(value.shape)}")
        return tuple(value.reshape(-1).tolist())
    if isinstance(value, bool):
        raise LossTypeError(f"{name} must be a tensor or a sequence of ints, got bool")
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise LossTypeError(
            f"{name} must be a tensor or a sequence of ints, got {type(value).__name__}"
        )
    out = []
    for i, v in enumerate(value):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            got = (
                f"{v!r} ({type(v).__name__})" if isinstance(v, (bool, float)) else type(v).__name__
            )
            raise LossTypeError(f"{name}[{i}] must be an int, got {got}") from None
    if len(out) != count:
        raise LossValueError(f"{name} must be {what}, got {len(out)} lengths")
    return tuple(out)


def _require_kernel_dtype(log_probs: Tensor) -> None:
    """float32 or float64, the dtypes of torch's CTC kernels (any floating dtype under autocast,
    which runs them in float32)."""
    dtype = log_probs.dtype
    if dtype in _KERNEL_DTYPES:
        return
    if log_probs.is_floating_point():
        if torch.is_autocast_enabled(log_probs.device.type):
            return
        raise LossTypeError(
            f"log_probs has dtype {dtype}, but torch's CTC kernels compute in float32 or float64 "
            "only: pass log_probs.float()"
        )
    raise LossTypeError(
        f"log_probs must be a floating-point tensor of log-probabilities (float32 or float64), "
        f"got dtype {dtype}: apply log_softmax to float scores"
    )


def check_blank(blank: object, num_classes: int | None = None, *, class_dim: int = -1) -> int:
    """CTC's ``blank``: an int class index, in ``[0, num_classes)`` (``>= 0`` when the classes
    are not known yet, as in ``CTCLoss``'s constructor)."""
    if isinstance(blank, bool) or not isinstance(blank, int):
        raise LossTypeError(f"blank must be an int (a class index), got {type(blank).__name__}")
    if num_classes is None:
        if blank < 0:
            raise LossIndexError(f"blank must be a class index >= 0, got {blank}")
    elif not 0 <= blank < num_classes:
        raise LossIndexError(
            f"blank must be a class index in [0, {num_classes}) (log_probs has {num_classes} "
            f"classes, dim {class_dim}), got {blank}"
        )
    return blank


def check_ctc_call(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: object,
    target_lengths: object,
    blank: object,
) -> CTCCall:
    """Check a CTC call's tensors, lengths and blank (cheap: shapes and host lists)."""
    require_tensor("log_probs", log_probs)
    require_tensor("targets", targets)
    if log_probs.dim() not in (2, 3):
        raise LossValueError(
            f"log_probs must have shape (T, N, C) (time, batch, classes) or (T, C) for one "
            f"sample, got shape {shape_str(log_probs.shape)}"
        )
    _require_kernel_dtype(log_probs)
    batched = log_probs.dim() == 3
    T, C = log_probs.shape[0], log_probs.shape[-1]
    N = log_probs.shape[1] if batched else 1
    check_blank(blank, C, class_dim=log_probs.dim() - 1)
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise LossTypeError(
            f"targets must hold integer class indices (int64 or int32), got dtype "
            f"{targets.dtype}: use targets.long()"
        )
    if targets.device != log_probs.device and targets.device.type != "cpu":
        raise LossValueError(
            f"targets is on device {targets.device} but log_probs is on {log_probs.device}; "
            "targets must be on log_probs' device (or on the CPU)"
        )
    both_tensors = isinstance(input_lengths, Tensor) and isinstance(target_lengths, Tensor)
    il = _lengths("input_lengths", input_lengths, N, batched)
    tl = _lengths("target_lengths", target_lengths, N, batched)
    padded = targets.dim() == 2 or not batched
    if targets.dim() == 2 and targets.shape[0] != N:
        expected = f"({N}, S)" if batched else "(S,) or (1, S)"
        raise LossValueError(
            f"targets must have shape {expected} (padded, one row per sample), got shape "
            f"{shape_str(targets.shape)}"
        )
    if targets.dim() not in (1, 2):
        form = (
            "(N, S) (padded) or (sum(target_lengths),) (concatenated)"
            if batched
            else "(S,) or (1, S)"
        )
        raise LossValueError(
            f"targets must have shape {form}, got shape {shape_str(targets.shape)}"
        )
    S = targets.shape[-1]
    for i, n in enumerate(il):
        if not 0 <= n <= T:
            at = f"input_lengths[{i}]" if batched else "input_lengths"
            raise LossValueError(
                f"{at} is {n}, but log_probs has {T} time steps (dim 0); input lengths must be "
                f"in [0, {T}]"
            )
    for i, n in enumerate(tl):
        at = f"target_lengths[{i}]" if batched else "target_lengths"
        if n < 0:
            raise LossValueError(f"{at} is {n}; target lengths must be >= 0")
        if padded and n > S:
            raise LossValueError(
                f"{at} is {n}, but the padded targets hold {S} labels per sample (shape "
                f"{shape_str(targets.shape)}, dim -1)"
            )
    if not padded and sum(tl) != S:
        raise LossValueError(
            f"target_lengths sum to {sum(tl)}, but the concatenated targets hold {S} labels "
            f"(shape {shape_str(targets.shape)}); they must be equal (for padded targets pass "
            f"shape ({N}, S))"
        )
    return CTCCall(batched, padded, T, N, C, S, il, tl, both_tensors)


def _where(call: CTCCall, flat: int, offsets: Sequence[int]) -> tuple[str, int, int]:
    """The name of targets' element ``flat`` as text, its sample and label index."""
    if call.padded:
        n, j = divmod(flat, call.S)
        return (f"targets[{n}, {j}]" if call.batched else f"targets[{j}]"), n, j
    n = max(i for i in range(call.N) if offsets[i] <= flat and call.target_lengths[i] > 0)
    return f"targets[{flat}] (sample {n}, label {flat - offsets[n]})", n, flat - offsets[n]


def _offsets(lengths: Sequence[int]) -> list[int]:
    out, pos = [], 0
    for n in lengths:
        out.append(pos)
        pos += n
    return out


def check_ctc_labels(targets: Tensor, call: CTCCall, blank: int, keep: Sequence[bool]) -> None:
    """Every label of a counted sample (within its target length) is a class of log_probs and
    not the blank: one pass over the targets."""
    lengths = [n if k else 0 for n, k in zip(call.target_lengths, keep, strict=True)]
    if sum(lengths) == 0:
        return
    flat = targets.reshape(-1)
    bad = (flat < 0) | (flat >= call.C) | (flat == blank)
    if call.padded:
        if any(n != call.S for n in lengths):
            valid = torch.arange(call.S, device=targets.device) < torch.tensor(
                lengths, device=targets.device
            ).unsqueeze(1)
            bad = bad & valid.reshape(-1)
    elif not all(keep):
        counted = torch.tensor(keep, device=targets.device)
        length = torch.tensor(call.target_lengths, device=targets.device)
        bad = bad & torch.repeat_interleave(counted, length)
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    first = int(bad.nonzero()[0, 0])
    value = int(flat[first])
    at, _, _ = _where(call, first, _offsets(call.target_lengths))
    why = (
        f"the blank (blank={blank})"
        if value == blank
        else f"outside [0, {call.C}), the classes of log_probs (dim {2 if call.batched else 1})"
    )
    found = (
        f"1 bad label within the target lengths: {at} = {value} is {why}"
        if count == 1
        else f"{count} bad labels within the target lengths; the first, {at} = {value}, is {why}"
    )
    padding = " (padding past a sample's target length may hold anything)" if call.padded else ""
    raise LossIndexError(
        f"targets hold {found}. Labels must be classes other than the blank{padding}"
    )


def _repeats(targets: Tensor, call: CTCCall) -> list[int]:
    """Per sample: how many of its labels repeat the label right before them (one sync)."""
    length = torch.tensor(call.target_lengths, device=targets.device)
    if call.padded:
        rows = targets.reshape(call.N, call.S)
        same = rows[:, 1:] == rows[:, :-1]
        valid = torch.arange(1, call.S, device=targets.device) < length.unsqueeze(1)
        return (same & valid).sum(1).tolist()
    same = torch.cat([targets.new_zeros(1, dtype=torch.bool), targets[1:] == targets[:-1]])
    starts = torch.tensor(_offsets(call.target_lengths), device=targets.device)
    # a label equal to the last one of the sample before is no repeat: count from each start + 1
    csum = torch.cat([same.new_zeros(1, dtype=torch.long), same.long().cumsum(0)])
    ends = starts + length
    first = torch.minimum(starts + 1, ends)
    return (csum[ends] - csum[first]).tolist()


def check_ctc_feasible(targets: Tensor, call: CTCCall, keep: Sequence[bool]) -> None:
    """Every counted sample's input is long enough for its target: ``L + r`` time steps for a
    target of ``L`` labels of which ``r`` repeat the label before (a blank must separate them).

    Host arithmetic on the lengths; the repeats are counted (one pass, one sync) only when some
    sample's input length lies between ``L`` and ``2 L - 1``, where they decide.
    """
    unsure = [
        n
        for n, (i, l_, k) in enumerate(
            zip(call.input_lengths, call.target_lengths, keep, strict=True)
        )
        if k and l_ > 0 and i < 2 * l_ - 1
    ]
    if not unsure:
        return
    repeats = _repeats(targets, call)
    for n in unsure:
        i, l_, r = call.input_lengths[n], call.target_lengths[n], repeats[n]
        if i >= l_ + r:
            continue
        sample = f"sample {n}" if call.batched else "the sample"
        at = f"[{n}]" if call.batched else ""
        repeats = "1 repeat" if r == 1 else f"{r} repeats"
        why = (
            f"has {repeats} (a label equal to the one before it, which needs a blank between "
            f"the two), so it needs {l_} + {r} = {l_ + r} time steps"
            if r
            else f"needs {l_} time steps"
        )
        raise LossValueError(
            f"{sample} cannot be aligned: its target of target_lengths{at} = {l_} labels {why}, "
            f"but input_lengths{at} = {i}; torch would return an infinite loss (0 with "
            "zero_infinity=True). Lengthen the input, leave the sample out with mask=, or pass "
            "zero_infinity=True"
        )
