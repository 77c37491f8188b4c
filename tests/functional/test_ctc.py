"""Connectionist temporal classification against torch.nn.functional.ctc_loss and
torch.nn.CTCLoss (function and Module).

Without ``mask`` and ``normalizer`` torch's kernel computes the numbers, so values and gradients
are torch's bit for bit; the masked path (torch's per-sample loss, reduced by losskit) is held to
slicing the batch, and checked by gradcheck through ``log_softmax``.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REDUCTIONS, assert_torch_signature, forward_backward

from losskit._validate.errors import LossError, LossIndexError, LossTypeError, LossValueError
from losskit.functional import sequence as LS
from losskit.nn import sequence as NS

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}
NAN = float("nan")


def _log_probs(T, N, C, dtype=F64, *, batched=True):
    shape = (T, N, C) if batched else (T, C)
    return torch.randn(shape, dtype=F64).log_softmax(-1).to(dtype)


def _labels(shape, C, blank):
    """Labels in [0, C) other than the blank."""
    y = torch.randint(0, C - 1, shape)
    return y + (y >= blank).long()


def _batch(*, T=12, C=5, blank=0, dtype=F64, lengths=(4, 0, 2, 3, 1), input_lengths=None):
    """(log_probs, padded targets, input lengths, target lengths) of a batch whose padding holds
    the blank and out-of-range labels (which must be ignored), each input long enough."""
    N, S = len(lengths), max(lengths)
    targets = _labels((N, S), C, blank)
    for n, length in enumerate(lengths):
        targets[n, length:] = torch.tensor([blank, C, -1] * S)[: S - length]
    if input_lengths is None:
        input_lengths = [T - (n % 3) for n in range(N)]
    return _log_probs(T, N, C, dtype), targets, list(input_lengths), list(lengths)


def _concatenated(targets, lengths):
    return torch.cat([targets[n, :length] for n, length in enumerate(lengths)])


def _same_bits(ours_out, theirs_out):
    (out, grads), (ref, ref_grads) = ours_out, theirs_out
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0, equal_nan=True)


def _raises(kind, fragments, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``kind`` with each of the ``|``-separated fragments."""
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    for fragment in fragments.split("|"):
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def _grads(fn, log_probs, *args, **kwargs):
    leaf = log_probs.clone().requires_grad_()
    out = fn(leaf, *args, **kwargs)
    (grad,) = torch.autograd.grad(out.sum(), [leaf])
    return out.detach(), grad


def test_signature_matches_torch():
    assert_torch_signature(LS.ctc_loss, F.ctc_loss)


def test_module_signature_matches_torch():
    assert_torch_signature(NS.CTCLoss, nn.CTCLoss)
    assert NS.CTCLoss.function is LS.ctc_loss


# --------------------------------------------------------------------------------------------
# parity with torch
# --------------------------------------------------------------------------------------------


def _lengths_as(kind, input_lengths, target_lengths):
    """The lengths as torch takes them: both tensors (int64 or int32) or both lists."""
    if kind == "list":
        return list(input_lengths), list(target_lengths)
    dtype = torch.int32 if kind == "int32" else torch.int64
    return torch.tensor(input_lengths, dtype=dtype), torch.tensor(target_lengths, dtype=dtype)


@pytest.mark.parametrize("zero_infinity", (False, True))
@pytest.mark.parametrize("form", ("padded", "concatenated"))
@pytest.mark.parametrize("blank", (0, 2, 4))
@pytest.mark.parametrize("dtype", (F64, torch.float32), ids=str)
def test_parity(dtype, blank, form, zero_infinity):
    """Every reduction, padded and concatenated targets, tensor/int32/list lengths, any blank:
    torch's value and gradient, bit for bit."""
    lp, targets, il, tl = _batch(blank=blank, dtype=dtype)
    if zero_infinity:  # one sample that cannot be aligned: torch's inf becomes 0
        lp, targets, il, tl = _batch(blank=blank, dtype=dtype, input_lengths=(12, 11, 1, 12, 11))
    if form == "concatenated":
        targets = _concatenated(targets, tl)
    for kind in ("tensor", "int32", "list"):
        lengths = _lengths_as(kind, il, tl)
        for target_dtype in (torch.int64, torch.int32):
            args = (lp, targets.to(target_dtype), *lengths)
            for reduction in REDUCTIONS:
                kwargs = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
                ours = forward_backward(LS.ctc_loss, args, kwargs)
                _same_bits(ours, forward_backward(F.ctc_loss, args, kwargs))
                assert bool(ours[0].isfinite().all()) and bool(ours[1][0].isfinite().all())
                if zero_infinity and reduction == "none":
                    assert ours[0][2] == 0 and not ours[1][0][:, 2].any()


def test_mixed_tensor_and_list_lengths():
    """torch takes both lengths as tensors or both as lists; losskit takes either for each."""
    lp, targets, il, tl = _batch()
    expected = F.ctc_loss(lp, targets, il, tl, reduction="none")
    for lengths in ((torch.tensor(il), tl), (il, torch.tensor(tl)), (tuple(il), tuple(tl))):
        assert torch.equal(LS.ctc_loss(lp, targets, *lengths, reduction="none"), expected)
    with pytest.raises(TypeError):
        F.ctc_loss(lp, targets, torch.tensor(il), tl)


def test_unbatched_input():
    """``(T, C)`` log-probabilities: one sample, lengths as ints, 0-dim or (1,) tensors, one-int
    lists; targets ``(S,)`` or ``(1, S)``."""
    lp = _log_probs(9, 1, 6, batched=False)
    targets = torch.tensor([3, 3, 1, 5])
    for reduction in REDUCTIONS:
        for kwargs in ({"reduction": reduction}, {"reduction": reduction, "blank": 2}):
            expected = forward_backward(F.ctc_loss, (lp, targets, [9], [4]), kwargs)
            assert expected[0].shape == ()
            for lengths in ((9, 4), ([9], [4]), (torch.tensor(9), torch.tensor(4))):
                for t in (targets, targets[None]):
                    _same_bits(forward_backward(LS.ctc_loss, (lp, t, *lengths), kwargs), expected)
            _same_bits(
                forward_backward(LS.ctc_loss, (lp, targets, [9], [4]), kwargs),
                forward_backward(
                    F.ctc_loss, (lp, targets, torch.tensor([9]), torch.tensor([4])), kwargs
                ),
            )


def test_unbatched_targets_longer_than_their_length_are_padded():
    """torch reads unbatched ``(S,)`` targets as concatenated, so a target length below S fails
    in its kernel; losskit reads them as one padded row, as it does ``(1, S)``."""
    lp = _log_probs(9, 1, 6, batched=False)
    targets = torch.tensor([3, 1, 0, 7])  # padding: the blank and an out-of-range label
    with pytest.raises(RuntimeError, match="Expected tensor to have size 2"):
        F.ctc_loss(lp, targets, torch.tensor(9), torch.tensor(2))
    for reduction in REDUCTIONS:
        ours = forward_backward(LS.ctc_loss, (lp, targets, 9, 2), {"reduction": reduction})
        expected = forward_backward(
            F.ctc_loss, (lp, targets[:2], [9], [2]), {"reduction": reduction}
        )
        _same_bits(ours, expected)


def test_infinite_loss_without_zero_infinity_is_torch_s():
    """With validate=False a sample that cannot be aligned gets torch's inf (and torch's
    gradient); zero_infinity turns it to 0 without any check."""
    lp, targets, il, tl = _batch(input_lengths=(12, 11, 1, 12, 11))
    for reduction in REDUCTIONS:
        args, kwargs = (lp, targets, il, tl), {"reduction": reduction}
        ours = forward_backward(LS.ctc_loss, args, dict(kwargs, validate=False))
        _same_bits(ours, forward_backward(F.ctc_loss, args, kwargs))
        assert ours[0].isinf().any()


@pytest.mark.parametrize("zero_infinity", (False, True))
def test_empty_batch_and_empty_input(zero_infinity):
    """torch's kernel refuses N == 0 and T == 0; losskit gives what the definition does: no
    samples ('mean' of none is NaN), and an empty input aligns only an empty target."""
    kwargs = {"zero_infinity": zero_infinity}
    lp = _log_probs(5, 0, 4).requires_grad_()
    targets = torch.zeros(0, 3, dtype=torch.long)
    with pytest.raises(RuntimeError):
        F.ctc_loss(lp, targets, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert LS.ctc_loss(lp, targets, [], [], reduction="none", **kwargs).shape == (0,)
    assert LS.ctc_loss(lp, targets, [], [], **kwargs).isnan()
    total = LS.ctc_loss(lp, targets[:, :0].reshape(0), [], [], reduction="sum", **kwargs)
    total.backward()
    assert total.item() == 0.0 and lp.grad.shape == (5, 0, 4)
    lp = _log_probs(0, 3, 4).requires_grad_()
    with pytest.raises(RuntimeError):
        F.ctc_loss(lp, torch.ones(3, 2, dtype=torch.long), [0, 0, 0], [0, 2, 1])
    out = LS.ctc_loss(lp, torch.ones(3, 2, dtype=torch.long), [0, 0, 0], [0, 2, 1],
                      reduction="none", validate=False, **kwargs)  # fmt: skip
    expected = torch.tensor([0.0, 0.0, 0.0] if zero_infinity else [0.0, torch.inf, torch.inf])
    assert torch.equal(out.detach(), expected.double())
    out.sum().backward()
    assert lp.grad.shape == (0, 3, 4)
    empty = LS.ctc_loss(lp, torch.ones(3, 2, dtype=torch.long), [0, 0, 0], [0, 0, 0], **kwargs)
    assert empty.item() == 0.0
    one = LS.ctc_loss(_log_probs(0, 1, 4, batched=False), torch.ones(0, dtype=torch.long), 0, 0)
    assert one.shape == () and one.item() == 0.0


# --------------------------------------------------------------------------------------------
# mask and normalizer
# --------------------------------------------------------------------------------------------

MASK = torch.tensor([True, False, True, False, True])


def _sliced(lp, targets, il, tl, mask, padded):
    kept = [n for n in range(len(tl)) if mask[n]]
    kept_tl = [tl[n] for n in kept]
    if padded:
        kept_targets = targets[mask]
    else:
        offsets = [sum(tl[:n]) for n in range(len(tl))]
        kept_targets = torch.cat([targets[offsets[n] : offsets[n] + tl[n]] for n in kept])
    return lp[:, mask], kept_targets, [il[n] for n in kept], kept_tl


@pytest.mark.parametrize("zero_infinity", (False, True))
@pytest.mark.parametrize("form", ("padded", "concatenated"))
@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_mask_equals_slicing(reduction, form, zero_infinity):
    """'mean' follows torch's rule on the kept samples: each over its target length (at least
    1), averaged over the kept samples."""
    lp, targets, il, tl = _batch(lengths=(4, 2, 0, 3, 1))
    if form == "concatenated":
        targets = _concatenated(targets, tl)
    kwargs = {"reduction": reduction, "zero_infinity": zero_infinity}
    masked = _grads(LS.ctc_loss, lp, targets, il, tl, mask=MASK, **kwargs)
    sliced = _sliced(lp, targets, il, tl, MASK, form == "padded")
    expected = _grads(F.ctc_loss, *sliced, **kwargs)
    torch.testing.assert_close(masked[0], expected[0], **TIGHT)
    torch.testing.assert_close(masked[1][:, MASK], expected[1], **TIGHT)
    assert not masked[1][:, ~MASK].any()
    assert not torch.allclose(masked[0], LS.ctc_loss(lp, targets, il, tl, **kwargs))
    for lengths in (_lengths_as("tensor", il, tl), _lengths_as("int32", il, tl)):
        again = LS.ctc_loss(lp, targets, *lengths, mask=MASK, **kwargs)
        assert torch.equal(again, masked[0])


def test_mask_none_and_bad_samples_do_not_leak():
    """'none' is 0 at masked samples; NaN/inf scores, the blank or out-of-range labels and
    inputs too short for their targets there raise nothing and reach neither the value nor the
    gradient."""
    lp, targets, il, tl = _batch(lengths=(4, 2, 0, 3, 1))
    out = LS.ctc_loss(lp, targets, il, tl, reduction="none", mask=MASK)
    full = LS.ctc_loss(lp, targets, il, tl, reduction="none")
    assert not out[~MASK].any() and torch.equal(out[MASK], full[MASK])
    dirty_lp, dirty_targets, dirty_il = lp.clone(), targets.clone(), list(il)
    dirty_lp[0, 1, 0], dirty_lp[3, 1, 2], dirty_lp[:, 3, 0] = NAN, torch.inf, -torch.inf
    dirty_targets[1, :2] = torch.tensor([0, 99])  # the blank, and no class
    dirty_targets[3, :3] = torch.tensor([-1, 2, 2])
    dirty_il[1], dirty_il[3] = 1, 3  # too short for targets of 2 and of 3 with a repeat
    for form in ("padded", "concatenated"):
        clean_t, dirty_t = targets, dirty_targets
        if form == "concatenated":
            clean_t, dirty_t = _concatenated(targets, tl), _concatenated(dirty_targets, tl)
        for reduction in REDUCTIONS:
            value, grad = _grads(
                LS.ctc_loss, dirty_lp, dirty_t, dirty_il, tl, reduction=reduction, mask=MASK
            )
            clean_value, clean_grad = _grads(
                LS.ctc_loss, lp, clean_t, il, tl, reduction=reduction, mask=MASK
            )
            assert bool(value.isfinite().all()) and bool(grad.isfinite().all())
            torch.testing.assert_close(value, clean_value, **TIGHT)
            torch.testing.assert_close(grad, clean_grad, **TIGHT)


def test_mask_of_one_sample_and_broadcast_masks():
    lp, targets, il, tl = _batch()
    unbatched = (lp[:, 0], targets[0], il[0], tl[0])
    expected = F.ctc_loss(*unbatched[:2], [il[0]], [tl[0]], reduction="sum")
    assert torch.equal(LS.ctc_loss(*unbatched, reduction="sum", mask=torch.tensor(True)), expected)
    dropped = LS.ctc_loss(*unbatched, reduction="none", mask=torch.tensor(False))
    assert dropped.shape == () and dropped.item() == 0.0
    bad = (lp[:, 0], torch.tensor([0, 0, 9]), 2, 3)  # would fail every check
    assert LS.ctc_loss(*bad, reduction="sum", mask=torch.tensor(False)).item() == 0.0
    everything = LS.ctc_loss(lp, targets, il, tl)
    for mask in (torch.tensor(True), torch.tensor([True])):
        torch.testing.assert_close(LS.ctc_loss(lp, targets, il, tl, mask=mask), everything, **TIGHT)
    assert LS.ctc_loss(lp, targets, il, tl, mask=torch.tensor([False])).isnan()  # nothing kept


def test_masked_path_gradient_through_log_softmax():
    """torch's CTC gradient is that of the logits under log_softmax; the masked path (torch's
    per-sample loss, reduced by losskit) keeps it right: gradcheck on the logits."""
    logits = torch.randn(6, 3, 4, dtype=F64, requires_grad=True)
    targets = torch.tensor([[1, 1, 2], [3, 0, 0], [2, 3, 0]])
    mask = torch.tensor([True, False, True])

    def loss(z):
        return LS.ctc_loss(
            z.log_softmax(-1), targets, [6, 5, 4], [3, 1, 2], mask=mask, normalizer=1.5
        )

    assert torch.autograd.gradcheck(loss, (logits,))


def test_normalizer_divides_the_length_normalized_sum():
    """'mean' is ``sum_n (loss_n / max(L_n, 1)) / N``; a normalizer replaces ``N`` (of the kept
    samples with a mask); 0 gives 0 with a zero gradient."""
    lp, targets, il, tl = _batch()
    per_sample = F.ctc_loss(lp, targets, il, tl, reduction="none")
    divided = per_sample / torch.tensor(tl, dtype=F64).clamp_min(1)
    mean, mean_grad = _grads(LS.ctc_loss, lp, targets, il, tl)
    torch.testing.assert_close(mean, divided.mean(), **TIGHT)
    for normalizer in (2.5, 3, torch.tensor(4.0)):
        out, grad = _grads(LS.ctc_loss, lp, targets, il, tl, normalizer=normalizer)
        torch.testing.assert_close(out, divided.sum() / normalizer, **TIGHT)
        torch.testing.assert_close(grad, mean_grad * 5 / normalizer, **TIGHT)
    out = LS.ctc_loss(lp, targets, il, tl, mask=MASK, normalizer=2.0)
    torch.testing.assert_close(out, divided[MASK].sum() / 2.0, **TIGHT)
    zero, zero_grad = _grads(LS.ctc_loss, lp, targets, il, tl, normalizer=0)
    assert zero.item() == 0.0 and not zero_grad.any()
    for reduction in ("sum", "none"):
        _raises(LossValueError, "only applies with reduction='mean'|got reduction=", LS.ctc_loss,
                lp, targets, il, tl, reduction=reduction, normalizer=2.0)  # fmt: skip


# --------------------------------------------------------------------------------------------
# errors where torch is silent or cryptic
# --------------------------------------------------------------------------------------------

LP = torch.randn(8, 3, 5).log_softmax(-1)
TARGETS = torch.tensor([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
IL, TL = [8, 6, 5], [3, 2, 1]


def test_errors_of_labels():
    ctc, I = LS.ctc_loss, LossIndexError
    blank = TARGETS.clone()
    blank[0, 1] = 0
    _raises(
        I, "targets hold 1 bad label within the target lengths: targets[0, 1] = 0 is the blank "
        "(blank=0)|Labels must be classes other than the blank (padding past a sample's target "
        "length may hold anything)", ctc, LP, blank, IL, TL,
    )  # fmt: skip
    _raises(I, "targets[0, 0] = 1 is the blank (blank=1)", ctc, LP, TARGETS, IL, TL, blank=1)
    wide = TARGETS.clone()
    wide[1, 1], wide[2, 0] = 5, -1
    _raises(
        I, "targets hold 2 bad labels within the target lengths; the first, targets[1, 1] = 5, is "
        "outside [0, 5), the classes of log_probs (dim 2)", ctc, LP, wide, IL, TL,
    )  # fmt: skip
    cat = _concatenated(wide, TL)
    message = _raises(
        I, "targets[4] (sample 1, label 1) = 5, is outside [0, 5)", ctc, LP, cat, IL, TL
    )
    assert "padding" not in message
    _raises(I, "targets[0] = 0 is the blank", ctc, LP[:, 0], torch.tensor([0, 1]), 8, 2)
    _raises(
        I,
        "outside [0, 5), the classes of log_probs (dim 1)",
        ctc,
        LP[:, 0],
        torch.tensor([7]),
        8,
        1,
    )


def test_errors_of_lengths():
    ctc, V, T = LS.ctc_loss, LossValueError, LossTypeError
    _raises(
        V, "target_lengths[1] is 4, but the padded targets hold 3 labels per sample (shape (3, 3), "
        "dim -1)", ctc, LP, TARGETS, IL, [3, 4, 1],
    )  # fmt: skip
    _raises(
        V, "target_lengths[2] is -1; target lengths must be >= 0", ctc, LP, TARGETS, IL, [3, 2, -1]
    )
    _raises(
        V, "target_lengths sum to 7, but the concatenated targets hold 6 labels (shape (6,)); they "
        "must be equal (for padded targets pass shape (3, S))",
        ctc, LP, _concatenated(TARGETS, TL), IL, [3, 2, 2],
    )  # fmt: skip
    _raises(
        V, "input_lengths[0] is 9, but log_probs has 8 time steps (dim 0); input lengths must be "
        "in [0, 8]", ctc, LP, TARGETS, [9, 6, 5], TL,
    )  # fmt: skip
    _raises(V, "input_lengths[2] is -1", ctc, LP, TARGETS, [8, 6, -1], TL)
    _raises(
        V, "input_lengths must be one length per sample, shape (3,) (log_probs has 3 samples, dim "
        "1), got 2 lengths", ctc, LP, TARGETS, [8, 6], TL,
    )  # fmt: skip
    _raises(
        V,
        "target_lengths must be one length per sample|got shape (4,)",
        ctc,
        LP,
        TARGETS,
        IL,
        torch.tensor([3, 2, 1, 1]),
    )
    _raises(
        V, "input_lengths must be the one sample's length (log_probs of shape (T, C) holds one "
        "sample): an int, or a tensor of shape () or (1,), got 2 lengths",
        ctc, LP[:, 0], TARGETS[0], [8, 8], 3,
    )  # fmt: skip
    _raises(
        T,
        "input_lengths must hold integer lengths (int64 or int32), got dtype torch.float32",
        ctc,
        LP,
        TARGETS,
        torch.tensor(IL).float(),
        TL,
    )
    _raises(
        T,
        "target_lengths must hold integer lengths|torch.bool",
        ctc,
        LP,
        TARGETS,
        IL,
        torch.ones(3, dtype=torch.bool),
    )
    _raises(
        T, "input_lengths[1] must be an int, got 6.0 (float)", ctc, LP, TARGETS, [8, 6.0, 5], TL
    )
    _raises(
        T, "target_lengths[0] must be an int, got True (bool)", ctc, LP, TARGETS, IL, [True, 2, 1]
    )
    _raises(
        T,
        "input_lengths must be a tensor or a sequence of ints, got str",
        ctc,
        LP,
        TARGETS,
        "865",
        TL,
    )
    _raises(T, "got bool", ctc, LP[:, 0], TARGETS[0], True, 3)


def test_errors_of_targets_too_long_for_their_inputs():
    """A target of L labels, r of which repeat the label before, needs L + r time steps."""
    ctc, V = LS.ctc_loss, LossValueError
    lp = _log_probs(6, 2, 4)
    repeat = torch.tensor([[1, 1], [2, 3]])
    message = _raises(
        V, "sample 0 cannot be aligned: its target of target_lengths[0] = 2 labels has 1 repeat (a "
        "label equal to the one before it, which needs a blank between the two), so it needs 2 + "
        "1 = 3 time steps, but input_lengths[0] = 2; torch would return an infinite loss (0 with "
        "zero_infinity=True)", ctc, lp, repeat, [2, 6], [2, 2],
    )  # fmt: skip
    assert message.endswith(
        "Lengthen the input, leave the sample out with mask=, or pass zero_infinity=True"
    )
    assert F.ctc_loss(lp, repeat, [2, 6], [2, 2], reduction="none")[0].isinf()
    for il in ([3, 2], [6, 2]):  # [1, 1] fits in 3 steps; [2, 3] (no repeat) in 2
        assert torch.equal(
            ctc(lp, repeat, il, [2, 2], reduction="none"),
            F.ctc_loss(lp, repeat, il, [2, 2], reduction="none"),
        )
    _raises(
        V,
        "sample 1 cannot be aligned: its target of target_lengths[1] = 2 labels needs 2 time "
        "steps, but input_lengths[1] = 1",
        ctc,
        lp,
        repeat,
        [6, 1],
        [2, 2],
    )
    _raises(
        V,
        "4 labels has 3 repeats|needs 4 + 3 = 7 time steps, but input_lengths[1] = 6",
        ctc,
        lp,
        torch.tensor([[1, 2, 0, 0], [3, 3, 3, 3]]),
        [6, 6],
        [2, 4],
    )
    _raises(
        V,
        "the sample cannot be aligned: its target of target_lengths = 3 labels has 1 "
        "repeat|input_lengths = 3",
        ctc,
        lp[:, 0],
        torch.tensor([2, 1, 1]),
        3,
        3,
    )
    # concatenated: a label equal to the last one of the sample before is no repeat
    cat = torch.tensor([1, 1, 1, 2, 2])
    _raises(
        V,
        "sample 0 cannot be aligned|target_lengths[0] = 2 labels has 1 repeat",
        ctc,
        lp,
        cat,
        [2, 3],
        [2, 3],
    )
    _raises(
        V,
        "sample 1 cannot be aligned|target_lengths[1] = 3 labels has 1 repeat|input_lengths[1] = 3",
        ctc,
        lp,
        cat,
        [3, 3],
        [2, 3],
    )
    assert torch.equal(ctc(lp, cat, [3, 4], [2, 3]), F.ctc_loss(lp, cat, [3, 4], [2, 3]))
    assert ctc(lp, repeat, [2, 1], [2, 2], zero_infinity=True, reduction="sum").item() == 0.0


def test_errors_of_dtypes_shapes_and_blank():
    ctc, V, T, I = LS.ctc_loss, LossValueError, LossTypeError, LossIndexError
    for dtype in (torch.float16, torch.bfloat16):
        _raises(
            T,
            f"log_probs has dtype {dtype}, but torch's CTC kernels compute in float32 or float64 "
            "only: pass log_probs.float()",
            ctc,
            LP.to(dtype),
            TARGETS,
            IL,
            TL,
        )
    _raises(
        T,
        "log_probs must be a floating-point tensor of log-probabilities|got dtype torch.int64",
        ctc,
        LP.long(),
        TARGETS,
        IL,
        TL,
    )
    assert torch.equal(
        F.ctc_loss(LP, TARGETS.float(), IL, TL), F.ctc_loss(LP, TARGETS, IL, TL)
    )  # torch: silent
    _raises(
        T,
        "targets must hold integer class indices (int64 or int32), got dtype torch.float32: "
        "use targets.long()",
        ctc,
        LP,
        TARGETS.float(),
        IL,
        TL,
    )
    _raises(T, "targets must hold integer class indices|torch.bool", ctc, LP, TARGETS > 0, IL, TL)
    _raises(T, "log_probs must be a torch.Tensor, got list", ctc, LP.tolist(), TARGETS, IL, TL)
    _raises(
        V,
        "log_probs must have shape (T, N, C) (time, batch, classes) or (T, C) for one sample, "
        "got shape (8,)",
        ctc,
        LP[:, 0, 0],
        TARGETS,
        IL,
        TL,
    )
    _raises(V, "got shape (8, 3, 5, 1)", ctc, LP[..., None], TARGETS, IL, TL)
    _raises(
        V,
        "targets must have shape (S,) or (1, S), got shape (1, 3, 1)",
        ctc,
        LP[:, 0],
        TARGETS[:1, :, None],
        8,
        3,
    )
    _raises(
        V,
        "targets must have shape (3, S) (padded, one row per sample), got shape (2, 3)",
        ctc,
        LP,
        TARGETS[:2],
        IL,
        TL,
    )
    _raises(
        V, "targets must have shape (S,) or (1, S)|got shape (3, 3)", ctc, LP[:, 0], TARGETS, 8, 3
    )
    _raises(
        V,
        "targets must have shape (N, S) (padded) or (sum(target_lengths),) (concatenated), got "
        "shape (3, 3, 1)",
        ctc,
        LP,
        TARGETS[..., None],
        IL,
        TL,
    )
    for blank in (5, -1):
        _raises(
            I,
            f"blank must be a class index in [0, 5) (log_probs has 5 classes, dim 2), got {blank}",
            ctc,
            LP,
            TARGETS,
            IL,
            TL,
            blank=blank,
        )
    for blank in (1.0, True, "0"):
        _raises(
            T, "blank must be an int (a class index), got", ctc, LP, TARGETS, IL, TL, blank=blank
        )
    _raises(T, "mask must be a bool tensor", ctc, LP, TARGETS, IL, TL, mask=torch.ones(3))
    _raises(
        V,
        "mask has shape (3, 1), which does not broadcast to the per-sample loss's positions of "
        "shape (3,)",
        ctc,
        LP,
        TARGETS,
        IL,
        TL,
        mask=torch.ones(3, 1, dtype=torch.bool),
    )
    _raises(
        V, "mask has shape (2,)", ctc, LP, TARGETS, IL, TL, mask=torch.ones(2, dtype=torch.bool)
    )
    _raises(V, "reduction must be one of", ctc, LP, TARGETS, IL, TL, reduction="batchmean")


def test_autocast_runs_the_half_types_in_float32():
    """Under autocast torch's CTC runs any floating log_probs in float32; losskit lets them
    through there."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = LS.ctc_loss(LP.bfloat16(), TARGETS, IL, TL)
        theirs = F.ctc_loss(LP.bfloat16(), TARGETS, IL, TL)
    assert ours.dtype == theirs.dtype == torch.float32 and torch.equal(ours, theirs)


def test_validate_false_skips_the_value_checks():
    """The labels and the alignment checks only: torch's numbers come through; shape, length
    and dtype checks still run."""
    blank = TARGETS.clone()
    blank[0, 1] = 0
    for targets, il in ((blank, IL), (TARGETS, [2, 6, 5])):
        ours = LS.ctc_loss(LP, targets, il, TL, reduction="none", validate=False)
        torch.testing.assert_close(
            ours, F.ctc_loss(LP, targets, il, TL, reduction="none"), rtol=0, atol=0
        )
    with pytest.raises(LossValueError, match="input_lengths"):
        LS.ctc_loss(LP, TARGETS, [9, 6, 5], TL, validate=False)
    with pytest.raises(LossIndexError, match="blank"):
        LS.ctc_loss(LP, TARGETS, IL, TL, blank=5, validate=False)
    with pytest.raises(LossTypeError):
        LS.ctc_loss(LP.half(), TARGETS, IL, TL, validate=False)


def test_errors_come_before_torch_s_kernel(monkeypatch):
    """Every check runs at the entry: torch's function is never reached with a bad call (on
    CUDA an out-of-range label reads out of bounds)."""

    def unreachable(*args, **kwargs):
        raise AssertionError("torch's function was called")

    monkeypatch.setattr(F, "ctc_loss", unreachable)
    wide = TARGETS.clone()
    wide[2, 0] = 7
    bad_calls = [
        (LP, wide, IL, TL, {}),
        (LP, TARGETS, IL, TL, {"blank": 1}),
        (LP, TARGETS, [2, 6, 5], TL, {}),
        (LP, TARGETS, [9, 6, 5], TL, {}),
        (LP, TARGETS, IL, [4, 2, 1], {}),
        (LP, wide, IL, TL, {"mask": torch.tensor([True, False, True])}),
        (LP.half(), TARGETS, IL, TL, {}),
    ]
    for *args, kwargs in bad_calls:
        with pytest.raises(LossError):
            LS.ctc_loss(*args, **kwargs)


def test_no_double_backward_as_in_torch():
    """torch's CTC backward has no derivative; losskit's the same (check skips the property)."""
    for fn in (F.ctc_loss, LS.ctc_loss):
        lp = LP.double().requires_grad_()
        (grad,) = torch.autograd.grad(fn(lp, TARGETS, IL, TL), [lp], create_graph=True)
        with pytest.raises(RuntimeError, match="_ctc_loss_backward is not implemented"):
            grad.sum().backward()


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------

SETUPS = {
    "default": ((), {}),
    "blank-sum": ((4, "sum"), {"blank": 4, "reduction": "sum"}),
    "none-zero-infinity": ((0, "none", True), {"reduction": "none", "zero_infinity": True}),
}


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_equals_functional_and_torch(key):
    options, kwargs = SETUPS[key]
    ours, theirs = NS.CTCLoss(*options), nn.CTCLoss(*options)
    lp, targets, il, tl = _batch(blank=kwargs.get("blank", 0))
    args = (lp, targets, il, tl)
    assert torch.equal(ours(*args), LS.ctc_loss(*args, **kwargs))
    _same_bits(forward_backward(ours, args), forward_backward(theirs, args))
    normalizer = 2.0 if ours.reduction == "mean" else None
    masked = ours(*args, mask=MASK, normalizer=normalizer)
    assert torch.equal(masked, LS.ctc_loss(*args, **kwargs, mask=MASK, normalizer=normalizer))
    restored = pickle.loads(pickle.dumps(ours))
    assert repr(restored) == repr(ours) and torch.equal(restored(*args), ours(*args))
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(*args), ours(*args))
    assert ours.state_dict() == theirs.state_dict() == {}


def test_module_repr_options_and_validate():
    assert repr(NS.CTCLoss()) == "CTCLoss(blank=0, reduction='mean', zero_infinity=False)"
    assert (
        repr(NS.CTCLoss(3, "sum", True)) == "CTCLoss(blank=3, reduction='sum', zero_infinity=True)"
    )
    with pytest.raises(LossIndexError, match="blank must be a class index >= 0, got -1"):
        NS.CTCLoss(blank=-1)
    with pytest.raises(LossTypeError, match="blank must be an int"):
        NS.CTCLoss(blank=0.0)
    with pytest.raises(LossValueError, match="reduction"):
        NS.CTCLoss(reduction="avg")
    with pytest.raises(LossIndexError, match="in \\[0, 5\\)"):  # the upper bound: at the call
        NS.CTCLoss(blank=5)(LP, TARGETS, IL, TL)
    blank = TARGETS.clone()
    blank[0, 1] = 0
    ours = NS.CTCLoss(reduction="none", validate=False)(LP, blank, IL, TL)
    assert torch.equal(ours, nn.CTCLoss(reduction="none")(LP, blank, IL, TL))
    with pytest.raises(LossIndexError):
        NS.CTCLoss()(LP, blank, IL, TL)
