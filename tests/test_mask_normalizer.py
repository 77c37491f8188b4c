"""``mask`` and ``normalizer`` for every loss and target form: equivalences, not magic numbers.

- Masking equals slicing: ``loss(x, t, mask=m)`` is the loss of ``x[m], t[m]`` with ``'mean'``
  and ``'sum'``, gradients included; ``'none'`` is the unmasked loss with zeros where ``m`` is
  False. inf/NaN (and out-of-range class indices) at masked positions reach neither the value
  nor the gradient.
- Normalizer: summing ``loss(micro_batch, normalizer=total)`` over uneven micro-batches gives the
  full-batch ``'mean'`` and its gradient (float64, tight tolerance); nothing to count gives 0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losskit
import losskit.functional as LF

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(g, shape):
    return torch.randn(shape, generator=g, dtype=F64)


def _unit(g, shape):
    return 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=F64)


def _log_unit(g, shape):
    return _unit(g, shape).log()


@losskit.loss_function
def log_cosh(input, target, *, scale=1.0):
    return torch.log(torch.cosh(scale * (input - target))) / scale


#: same-shape losses: (function, make input, make target)
ELEMENTWISE = {
    "mse_loss": (LF.mse_loss, _normal, _normal),
    "l1_loss": (LF.l1_loss, _normal, _normal),
    "smooth_l1_loss": (LF.smooth_l1_loss, _normal, _normal),
    "huber_loss": (LF.huber_loss, _normal, _normal),
    "binary_cross_entropy": (LF.binary_cross_entropy, _unit, _unit),
    "binary_cross_entropy_with_logits": (LF.binary_cross_entropy_with_logits, _normal, _unit),
    "kl_div": (LF.kl_div, _log_unit, _unit),
    "sigmoid_focal_loss": (LF.sigmoid_focal_loss, _normal, _unit),
    "custom log_cosh": (log_cosh, _normal, _normal),
}

kl_mean_warning = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")


def _value_and_grad(loss: torch.Tensor, x: torch.Tensor):
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _row_mask(n: int) -> torch.Tensor:
    m = torch.ones(n, dtype=torch.bool)
    m[1] = m[n - 2] = False
    return m


# --------------------------------------------------------------------------------------------
# mask == slicing: same-shape losses
# --------------------------------------------------------------------------------------------


@kl_mean_warning
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["rows", "elements"])
def test_mask_equals_slicing(name, reduction, kind):
    fn, make_x, make_t = ELEMENTWISE[name]
    g = _gen(1)
    x = make_x(g, (6, 4)).requires_grad_()
    t = make_t(g, (6, 4))
    if kind == "rows":  # (N, 1), broadcast over the features
        rows = _row_mask(6)
        mask, keep = rows[:, None], rows
    else:  # one flag per element
        mask = keep = torch.rand((6, 4), generator=g) > 0.4
    masked = _value_and_grad(fn(x, t, reduction=reduction, mask=mask), x)
    sliced = _value_and_grad(fn(x[keep], t[keep], reduction=reduction), x)
    torch.testing.assert_close(masked, sliced, **TIGHT)
    # and the masked loss is not simply the unmasked one
    assert not torch.allclose(masked[0], fn(x, t, reduction=reduction).detach())


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_mask_none_is_zero_at_masked_positions(name):
    fn, make_x, make_t = ELEMENTWISE[name]
    g = _gen(2)
    x, t = make_x(g, (5, 3)), make_t(g, (5, 3))
    mask = torch.rand((5, 3), generator=g) > 0.5
    out = fn(x, t, reduction="none", mask=mask)
    full = fn(x, t, reduction="none")
    assert out.shape == full.shape == (5, 3)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    assert torch.equal(out[mask], full[mask])


@kl_mean_warning
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_nonfinite_at_masked_positions_does_not_leak(name):
    fn, make_x, make_t = ELEMENTWISE[name]
    g = _gen(3)
    x_clean, t = make_x(g, (6, 3)), make_t(g, (6, 3))
    rows = _row_mask(6)
    x_dirty, t_dirty = x_clean.clone(), t.clone()
    x_dirty[1], x_dirty[4] = float("nan"), float("inf")
    t_dirty[1], t_dirty[4] = float("inf"), float("nan")
    x = x_dirty.requires_grad_()
    for reduction in ("mean", "sum"):
        value, grad = _value_and_grad(fn(x, t_dirty, reduction=reduction, mask=rows[:, None]), x)
        clean = x_clean.clone().requires_grad_()
        expected = _value_and_grad(fn(clean[rows], t[rows], reduction=reduction), clean)
        torch.testing.assert_close((value, grad), expected, **TIGHT)
        assert torch.isfinite(grad).all()  # zero, not NaN, at the masked rows
    none = fn(x, t_dirty, reduction="none", mask=rows[:, None])
    assert torch.equal(none[~rows], torch.zeros_like(none[~rows]))


# --------------------------------------------------------------------------------------------
# mask == slicing: classification, every target form
# --------------------------------------------------------------------------------------------


def _classification_case(form: str, g: torch.Generator):
    """``(logits, target, mask, sliced_logits_fn, sliced_target)`` for one target form."""
    n, c = 7, 5
    if form in ("index", "one-hot", "soft"):
        x = _normal(g, (n, c))
        mask = _row_mask(n)
        idx = torch.randint(0, c, (n,), generator=g)
        idx[3] = -100  # an ignored target too (index form only)
        if form == "index":
            t = idx
        elif form == "one-hot":
            t = F.one_hot(idx.clamp_min(0), c).to(F64)
        else:
            t = torch.softmax(_normal(g, (n, c)), dim=1)
        return x, t, mask, (lambda z: z[mask]), t[mask]
    if form == "K-dim index":
        x = _normal(g, (3, c, 4, 2))
        t = torch.randint(0, c, (3, 4, 2), generator=g)
        t[0, 1, 1] = -100
        mask = torch.rand((3, 4, 2), generator=g) > 0.3
        return x, t, mask, (lambda z: z.movedim(1, -1)[mask]), t[mask]
    if form == "K-dim soft":  # a broadcast mask: whole sequences left out
        x = _normal(g, (4, c, 3))
        t = torch.softmax(_normal(g, (4, c, 3)), dim=1)
        mask = torch.tensor([True, False, True, True])[:, None]
        full = mask.expand(4, 3)
        return x, t, mask, (lambda z: z.movedim(1, -1)[full]), t.movedim(1, -1)[full]
    raise AssertionError(form)


FORMS = ["index", "one-hot", "soft", "K-dim index", "K-dim soft"]


def _nll(x, t, **kw):
    return LF.nll_loss(torch.log_softmax(x, dim=1), t, **kw)


CLASSIFICATION = {
    "cross_entropy": LF.cross_entropy,
    "focal_loss": LF.focal_loss,
    "nll_loss(log_softmax)": _nll,
}


def _cases(forms):
    """(loss, form) pairs; nll_loss takes class indices only."""
    return [
        (name, form)
        for name in CLASSIFICATION
        for form in forms
        if not (name.startswith("nll") and "index" not in form)
    ]


@pytest.mark.parametrize("name, form", _cases(FORMS))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_classification_mask_equals_slicing(name, form, weighted):
    fn = CLASSIFICATION[name]
    g = _gen(4)
    x, t, mask, slice_x, t_sliced = _classification_case(form, g)
    x.requires_grad_()
    weight = (0.5 + torch.rand(5, generator=g, dtype=F64)) if weighted else None
    for reduction in ("mean", "sum"):
        masked = _value_and_grad(fn(x, t, weight=weight, reduction=reduction, mask=mask), x)
        sliced = _value_and_grad(fn(slice_x(x), t_sliced, weight=weight, reduction=reduction), x)
        torch.testing.assert_close(masked, sliced, **TIGHT)
    none = fn(x, t, weight=weight, reduction="none", mask=mask)
    full = fn(x, t, weight=weight, reduction="none")
    kept = mask.expand(none.shape)
    assert torch.equal(none[~kept], torch.zeros_like(none[~kept]))
    # without a mask the call is torch's own kernel, with one losskit's reference
    torch.testing.assert_close(none[kept], full[kept], **TIGHT)


@pytest.mark.parametrize("name, form", _cases(["index", "soft", "K-dim index"]))
def test_classification_nonfinite_and_bad_indices_at_masked_positions(name, form):
    """Padding may hold anything: NaN/inf logits, NaN probabilities, out-of-range indices."""
    # nll_loss gets the dirty log-probabilities themselves (a log_softmax in front would make
    # the NaN gradient upstream of the loss, where no loss can remove it)
    fn = LF.nll_loss if name.startswith("nll") else CLASSIFICATION[name]
    g = _gen(5)
    x, t, mask, slice_x, t_sliced = _classification_case(form, g)
    dirty_x, dirty_t = x.clone(), t.clone()
    masked_positions = (~mask).nonzero()
    first, last = tuple(masked_positions[0]), tuple(masked_positions[-1])
    if form == "K-dim index":  # a position is (n, d1, d2): its logits are x[n, :, d1, d2]
        dirty_x[first[0], :, first[1], first[2]] = float("nan")
        dirty_x[last[0], :, last[1], last[2]] = float("inf")
    else:
        dirty_x[first], dirty_x[last] = float("nan"), float("inf")
    if form == "soft":
        dirty_t[first] = float("nan")
    else:
        dirty_t[first], dirty_t[last] = 999, -7  # invalid indices, validated only where counted
    dirty_x.requires_grad_()
    clean = x.clone().requires_grad_()
    for reduction in ("mean", "sum"):
        value, grad = _value_and_grad(fn(dirty_x, dirty_t, reduction=reduction, mask=mask), dirty_x)
        expected = _value_and_grad(fn(slice_x(clean), t_sliced, reduction=reduction), clean)
        torch.testing.assert_close((value, grad), expected, **TIGHT)
        assert torch.isfinite(grad).all()


def test_class_index_out_of_range_at_a_counted_position_still_raises():
    x = torch.zeros(3, 4, dtype=F64)
    t = torch.tensor([0, 9, 7])
    mask = torch.tensor([True, False, True])
    with pytest.raises(losskit.LossIndexError, match=r"class index 7 at position \(2,\)"):
        LF.cross_entropy(x, t, mask=mask)


def test_fused_path_masked_padding_indices():
    """float32 logits take the fused CPU kernel: masked out-of-range indices are never read."""
    g = _gen(8)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    t = torch.tensor([1, 999, 3, -7, 0, 4])
    rows = torch.tensor([True, False, True, False, True, True])
    for reduction in ("mean", "sum"):
        got = _value_and_grad(LF.cross_entropy(x, t, reduction=reduction, mask=rows), x)
        want = _value_and_grad(F.cross_entropy(x[rows], t[rows], reduction=reduction), x)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


def test_fused_path_nonfinite_logits_at_masked_rows_give_zero_gradient():
    x = torch.randn(4, 6)
    x[2] = float("nan")
    x.requires_grad_()
    t = torch.tensor([1, 2, 3, 4])
    mask = torch.tensor([True, True, False, True])
    LF.cross_entropy(x, t, mask=mask, impl="fused").backward()
    assert torch.isfinite(x.grad).all()


def test_soft_targets_torch_ignore_index_cannot_leave_rows_out_mask_can():
    g = _gen(6)
    x = _normal(g, (6, 4)).requires_grad_()
    soft = torch.softmax(_normal(g, (6, 4)), dim=1)
    rows = _row_mask(6)
    # torch has no way to leave probability rows out: older releases ignore ignore_index for
    # them silently (the same loss), newer ones refuse it
    plain = F.cross_entropy(x, soft)
    for ignore in (0, 1, 3):
        try:
            got = F.cross_entropy(x, soft, ignore_index=ignore)
        except RuntimeError as exc:
            assert "ignore_index" in str(exc)
        else:
            assert torch.equal(got, plain)
    # losskit refuses the no-op and offers mask, which leaves the rows out (gradient too)
    with pytest.raises(losskit.LossValueError, match="pass mask="):
        LF.cross_entropy(x, soft, ignore_index=1)
    masked = _value_and_grad(LF.cross_entropy(x, soft, mask=rows), x)
    expected = _value_and_grad(F.cross_entropy(x[rows], soft[rows]), x)
    torch.testing.assert_close(masked, expected, **TIGHT)
    assert not torch.allclose(masked[0], plain.detach())
    assert torch.equal(masked[1][~rows], torch.zeros_like(masked[1][~rows]))


def test_module_forward_takes_mask():
    g = _gen(7)
    x, t = _normal(g, (6, 3)), torch.randint(0, 3, (6,), generator=g)
    rows = _row_mask(6)
    for module, fn in (
        (losskit.CrossEntropyLoss(), LF.cross_entropy),
        (losskit.FocalLoss(gamma=1.5), lambda a, b: LF.focal_loss(a, b, gamma=1.5)),
    ):
        torch.testing.assert_close(module(x, t, mask=rows), fn(x[rows], t[rows]), **TIGHT)


# --------------------------------------------------------------------------------------------
# normalizer: exact gradient accumulation over uneven micro-batches
# --------------------------------------------------------------------------------------------

SPLITS = (3, 6, 1, 4)  # uneven micro-batches of a batch of 14


def _accumulate(fn, x, t, total, **kw):
    """Sum of ``fn(micro_batch, normalizer=total)`` and the accumulated gradient."""
    x = x.detach().clone().requires_grad_()
    value = torch.zeros((), dtype=x.dtype)
    for xs, ts in zip(x.split(SPLITS), t.split(SPLITS), strict=True):
        loss = fn(xs, ts, normalizer=total, **kw)
        loss.backward()  # gradients accumulate in x.grad, as over optimizer micro-steps
        value = value + loss.detach()
    return value, x.grad


def _full(fn, x, t, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t, **kw)
    loss.backward()
    return loss.detach(), x.grad


def _index_target(g, shape, c):
    t = torch.randint(0, c, shape, generator=g)
    t.view(-1)[::5] = -100  # ignored positions, unevenly spread over the micro-batches
    return t


def test_normalizer_accumulation_cross_entropy_with_ignore_index():
    g = _gen(10)
    x, t = _normal(g, (14, 7)), _index_target(g, (14,), 7)
    total = losskit.count_targets(t)
    assert int(total) == int((t != -100).sum())
    got = _accumulate(LF.cross_entropy, x, t, total)
    torch.testing.assert_close(got, _full(LF.cross_entropy, x, t), **TIGHT)
    torch.testing.assert_close(got, _full(F.cross_entropy, x, t), **TIGHT)  # torch's own mean


def test_normalizer_accumulation_cross_entropy_sequences():
    g = _gen(11)
    x, t = _normal(g, (14, 6, 5)), _index_target(g, (14, 5), 6)  # (N, C, L) tokens
    total = losskit.count_targets(t)
    got = _accumulate(LF.cross_entropy, x, t, total)
    torch.testing.assert_close(got, _full(F.cross_entropy, x, t), **TIGHT)


def test_normalizer_accumulation_weighted_cross_entropy():
    """A weighted 'mean' divides by the counted targets' weights: pass that sum."""
    g = _gen(12)
    x, t = _normal(g, (14, 4)), _index_target(g, (14,), 4)
    w = 0.5 + torch.rand(4, generator=g, dtype=F64)
    total = (w[t.clamp_min(0)] * (t != -100)).sum()
    got = _accumulate(LF.cross_entropy, x, t, total, weight=w)
    torch.testing.assert_close(got, _full(F.cross_entropy, x, t, weight=w), **TIGHT)


def test_normalizer_accumulation_float32_fused_path():
    g = _gen(13)
    x, t = _normal(g, (14, 9)).float(), _index_target(g, (14,), 9)
    got = _accumulate(LF.cross_entropy, x, t, losskit.count_targets(t))
    torch.testing.assert_close(got, _full(F.cross_entropy, x, t), rtol=2e-6, atol=2e-6)


def test_normalizer_accumulation_nll():
    g = _gen(14)
    logp = torch.log_softmax(_normal(g, (14, 5)), dim=1)
    t = _index_target(g, (14,), 5)
    got = _accumulate(LF.nll_loss, logp, t, losskit.count_targets(t))
    torch.testing.assert_close(got, _full(F.nll_loss, logp, t), **TIGHT)


@pytest.mark.parametrize(
    "fn, torch_fn, make_x",
    [
        (LF.mse_loss, F.mse_loss, _normal),
        (LF.binary_cross_entropy, F.binary_cross_entropy, _unit),
        (LF.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, _normal),
    ],
    ids=["mse", "bce", "bce_with_logits"],
)
def test_normalizer_accumulation_elementwise(fn, torch_fn, make_x):
    g = _gen(15)
    x, t = make_x(g, (14, 3)), _unit(g, (14, 3))
    total = losskit.count_targets(t)
    assert int(total) == t.numel()
    got = _accumulate(fn, x, t, total)
    torch.testing.assert_close(got, _full(torch_fn, x, t), **TIGHT)


def test_normalizer_accumulation_with_mask():
    """Masked positions leave the count: count_targets(target, mask=...) is the normalizer."""
    g = _gen(16)
    x, t = _normal(g, (14, 3)), _normal(g, (14, 3))
    mask = torch.rand((14, 3), generator=g) > 0.3
    total = losskit.count_targets(t, mask=mask)
    assert int(total) == int(mask.sum())
    xg = x.detach().clone().requires_grad_()
    value = torch.zeros((), dtype=F64)
    for xs, ts, ms in zip(xg.split(SPLITS), t.split(SPLITS), mask.split(SPLITS), strict=True):
        loss = LF.mse_loss(xs, ts, mask=ms, normalizer=total)
        loss.backward()
        value = value + loss.detach()
    clean = x.detach().clone().requires_grad_()
    expected = _value_and_grad(F.mse_loss(clean[mask], t[mask]), clean)  # torch on the slice
    torch.testing.assert_close((value, xg.grad), expected, **TIGHT)


def test_normalizer_with_nothing_to_count_gives_zero_not_nan():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    ignored = torch.full((3,), -100)
    # without a normalizer, torch's answer for an all-ignored batch is NaN (0 / 0) ...
    assert torch.isnan(F.cross_entropy(x, ignored))
    assert torch.isnan(LF.cross_entropy(x, ignored))
    # ... with one (this micro-batch's share of a count that may be zero), it is 0
    for fn in (LF.cross_entropy, LF.focal_loss):
        loss = fn(x, ignored, normalizer=losskit.count_targets(ignored))
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    mask = torch.zeros(3, 4, dtype=torch.bool)
    t = torch.randn(3, 4, dtype=F64)
    for fn in (LF.mse_loss, LF.binary_cross_entropy_with_logits, log_cosh):
        loss = fn(x, t.sigmoid(), mask=mask, normalizer=0)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    empty = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    assert LF.cross_entropy(empty, torch.zeros(0, dtype=torch.long), normalizer=0).item() == 0.0


def test_normalizer_divides_the_sum():
    g = _gen(17)
    x, t = _normal(g, (5, 3)), _normal(g, (5, 3))
    for n in (7, 2.5, torch.tensor(4.0), torch.tensor([3])):
        expected = LF.mse_loss(x, t, reduction="sum") / float(n)
        torch.testing.assert_close(LF.mse_loss(x, t, normalizer=n), expected, **TIGHT)


NORMALIZER_LOSSES = {
    "mse_loss": lambda **kw: LF.mse_loss(torch.zeros(3), torch.ones(3), **kw),
    "binary_cross_entropy": lambda **kw: LF.binary_cross_entropy(
        torch.full((3,), 0.5), torch.ones(3), **kw
    ),
    "cross_entropy": lambda **kw: LF.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), **kw),
    "nll_loss": lambda **kw: LF.nll_loss(torch.zeros(2, 3), torch.tensor([0, 1]), **kw),
    "focal_loss": lambda **kw: LF.focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), **kw),
    "sigmoid_focal_loss": lambda **kw: LF.sigmoid_focal_loss(torch.zeros(3), torch.ones(3), **kw),
    "custom": lambda **kw: log_cosh(torch.zeros(3), torch.ones(3), **kw),
}


@pytest.mark.parametrize("name", list(NORMALIZER_LOSSES))
def test_normalizer_errors(name):
    call = NORMALIZER_LOSSES[name]
    for reduction in ("sum", "none"):
        with pytest.raises(
            losskit.LossValueError,
            match=f"only applies with reduction='mean', got reduction='{reduction}'",
        ):
            call(reduction=reduction, normalizer=4)
    with pytest.raises(losskit.LossValueError, match="normalizer must be >= 0, got -1"):
        call(reduction="mean", normalizer=-1)
    with pytest.raises(losskit.LossValueError, match="one-element tensor, got shape"):
        call(reduction="mean", normalizer=torch.tensor([1.0, 2.0]))
    with pytest.raises(losskit.LossTypeError, match="normalizer must be a number or a tensor"):
        call(reduction="mean", normalizer="4")


def test_count_targets():
    t = torch.tensor([[3, -100, 1], [-100, 0, 2]])
    assert losskit.count_targets(t).dtype == torch.int64
    assert losskit.count_targets(t).shape == ()
    assert int(losskit.count_targets(t)) == 4
    assert int(losskit.count_targets(t, ignore_index=0)) == 5
    mask = torch.tensor([[True], [False]])
    assert int(losskit.count_targets(t, mask=mask)) == 2
    assert int(losskit.count_targets(torch.rand(4, 5))) == 20
    soft = torch.softmax(torch.randn(4, 6, 3), dim=1)  # (N, C, L): count the positions (N, L)
    assert int(losskit.count_targets(soft[:, 0])) == 12
