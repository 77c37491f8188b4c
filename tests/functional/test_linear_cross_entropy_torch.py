"""linear_cross_entropy against torch 2.13's ``F.linear_cross_entropy``: the whole contract.

torch's contract (``torch/nn/functional.py`` and its OpInfo samples): ``linear_weight`` is
``(C, in_features)`` or ``(C, d1..dK, in_features)``, making logits ``(N, C, d1..dK)``; a target
of the logits' shape holds probabilities, any other holds class indices; ``linear_bias`` has
the shape ``(C, d1..dK)``; the input may be unbatched ``(in_features,)`` with a plain head;
``ignore_index=None`` means -100 for class indices and must stay None for probabilities;
``options=`` selects the chunked path. Every shape form x target form x bias x reduction x
option x dtype is compared here, value and the gradients of input, weight and bias, through
whichever path losskit's ``impl='auto'`` takes (the chunked one for 2-D heads and class
indices, the reference elsewhere).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, REDUCTIONS, check_against_torch, forward_backward, upstream_like

import losskit
import losskit.functional as LF

pytestmark = pytest.mark.skipif(
    not hasattr(F, "linear_cross_entropy"), reason="this torch has no F.linear_cross_entropy"
)

C, D = 7, 5
#: name -> (input shape, out_features); the logits are (*input.shape[:-1], C, *out_features)
SHAPES = {
    "batched": ((6, D), ()),
    "unbatched": ((D,), ()),
    "k1": ((4, D), (3,)),
    "k2": ((3, D), (2, 3)),
    "empty": ((0, D), ()),
    "empty-k1": ((0, D), (2,)),
}
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "ignore_index": {"ignore_index": 2},
    "everything": {"weight": True, "label_smoothing": 0.05, "ignore_index": 2},
}


def make(shape, out_features, dtype, *, probabilities, bias, seed=0):
    """(input, linear_weight, target, linear_bias) of one call; targets hit ignore_index=2."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(C, *out_features, D, generator=gen, dtype=torch.float64) * 0.7).to(dtype)
    b = (
        torch.randn(C, *out_features, generator=gen, dtype=torch.float64).to(dtype)
        if bias
        else None
    )
    lead = shape[:-1]
    if probabilities:
        t = torch.randn(*lead, C, *out_features, generator=gen, dtype=torch.float64)
        t = t.softmax(len(lead)).to(dtype)
    else:
        t = torch.randint(0, C, (*lead, *out_features), generator=gen)
    return x, w, t, b


def call(fn):
    """``fn(input, linear_weight, target, linear_bias, **kw)`` with the bias as a keyword."""

    def run(x, w, t, b, **kw):
        return fn(x, w, t, linear_bias=b, **kw)

    return run


def compare(args, kw, wrt, *, fused):
    """losskit against torch: value and the gradients of ``args[i]`` for ``i`` in ``wrt``.

    float64/float32: ``check_against_torch`` (with its float32 error budget where ``fused``: the
    chunked path orders its float32 arithmetic differently from torch, whose own float32 bits
    change with the CPU's SIMD width). bfloat16: the error budget at the tensor's scale.
    Both torch and losskit make the logits and the weight and input gradients with bf16 GEMMs
    (torch computes the softmax in bf16, losskit in float32), so each gradient element sums
    bf16-rounded products and its rounding error scales with the tensor's largest values, not
    its own: every element may be no further from the float64 truth than torch's bf16 result,
    plus one bf16 rounding step at the tensor's scale (``eps * max|truth|``).
    """
    ours_fn, torch_fn = call(LF.linear_cross_entropy), call(F.linear_cross_entropy)
    if args[0].dtype != torch.bfloat16:
        return check_against_torch(ours_fn, torch_fn, args, kw, wrt=wrt, budget=fused)
    out, grads = forward_backward(ours_fn, args, kw, wrt=wrt)
    ref, ref_grads = forward_backward(torch_fn, args, kw, wrt=wrt)
    wide = [
        a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]
    wide_kw = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in kw.items()
    }
    up = upstream_like(out).double()
    truth, truth_grads = forward_backward(torch_fn, wide, wide_kw, wrt=wrt, upstream=up)
    eps = torch.finfo(torch.bfloat16).eps
    for what, a, b, t in zip(
        ["forward", *(f"gradient of argument {i}" for i in wrt)],
        [out, *grads], [ref, *ref_grads], [truth, *truth_grads], strict=True,
    ):  # fmt: skip
        assert a.shape == t.shape and a.dtype == b.dtype == torch.bfloat16, what
        finite = t.isfinite()
        torch.testing.assert_close(a.double()[~finite], t[~finite], equal_nan=True)  # NaN: NaN
        if not bool(finite.any()):
            continue
        a, b, t = a.double()[finite], b.double()[finite], t[finite]
        slack = eps * float(t.abs().max()) + torch.finfo(torch.bfloat16).tiny
        excess = float(((a - t).abs() - (b - t).abs()).max())
        assert excess <= slack, f"{what}: bf16 error exceeds torch's by {excess:.3g} > {slack:.3g}"
    return out


def kwargs_for(option, dtype):
    kw = dict(OPTIONS[option])
    if kw.pop("weight", False):
        kw["weight"] = (torch.arange(C, dtype=torch.float64) / C + 0.5).to(dtype)
    return kw


#: every (shape, option, target form) torch computes (ignore_index with probabilities raises:
#: tested with the errors)
CASES = [
    (shape, option, form)
    for shape in SHAPES
    for option in OPTIONS
    for form in ("indices", "probabilities")
    if not (form == "probabilities" and "ignore_index" in OPTIONS[option])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize(("shape", "option", "target_form"), CASES)
def test_matches_torch(shape, option, target_form, bias, reduction, dtype):
    probabilities = target_form == "probabilities"
    in_shape, out_features = SHAPES[shape]
    x, w, t, b = make(in_shape, out_features, dtype, probabilities=probabilities, bias=bias)
    kw = dict(kwargs_for(option, dtype), reduction=reduction)
    wrt = (0, 1, 3) if bias else (0, 1)
    # 'auto' takes the chunked path for plain heads and class indices, the reference elsewhere
    out = compare([x, w, t, b], kw, wrt, fused=not probabilities and not out_features)
    expected_shape = (*in_shape[:-1], *out_features) if reduction == "none" else ()
    assert out.shape == expected_shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_options_match_torch_chunked(reduction, dtype):
    """``options=`` (torch's chunked path) against torch's own chunked path, with its chunking."""
    x, w, t, b = make((9, D), (), dtype, probabilities=False, bias=True)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    kw = dict(reduction=reduction, options=options, weight=kwargs_for("weight", dtype)["weight"])
    compare([x, w, t, b], kw, (0, 1, 3), fused=True)


def test_allow_retain_graph_lets_a_second_backward_run():
    x, w, t, _ = make((9, D), (), torch.float32, probabilities=False, bias=False)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4, allow_retain_graph=True)
    grads = {}
    for name, fn in (("losskit", LF.linear_cross_entropy), ("torch", F.linear_cross_entropy)):
        xl = x.clone().requires_grad_()
        loss = fn(xl, w, t, options=options)
        loss.backward(retain_graph=True)
        loss.backward()
        grads[name] = xl.grad
    torch.testing.assert_close(grads["losskit"], grads["torch"], rtol=1e-5, atol=1e-6)
    first = LF.linear_cross_entropy(x.clone().requires_grad_(), w, t)
    first.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allow_retain_graph=True"):
        first.backward()


def test_options_on_a_call_the_chunked_path_cannot_take_warn_as_torch_does():
    x, w, t, _ = make((4, D), (3,), torch.float32, probabilities=False, bias=False)
    options = torch.nn.LinearCrossEntropyOptions()
    with pytest.warns(UserWarning, match="options ignored"):
        ours = LF.linear_cross_entropy(x, w, t, options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = F.linear_cross_entropy(x, w, t, options=options)
    torch.testing.assert_close(ours, theirs)


def test_ignore_index_none_is_torchs_minus_100():
    x, w, t, _ = make((6, D), (), torch.float32, probabilities=False, bias=False)
    t[1] = -100
    for ignore_index in (None, -100):
        torch.testing.assert_close(
            LF.linear_cross_entropy(x, w, t, ignore_index=ignore_index),
            F.linear_cross_entropy(x, w, t, ignore_index=ignore_index),
        )


def test_k_dimensional_mask_equals_ignoring_those_positions():
    x, w, t, b = make((4, D), (3,), torch.float64, probabilities=False, bias=True)
    mask = torch.rand(4, 3, generator=torch.Generator().manual_seed(3)) > 0.4
    masked = LF.linear_cross_entropy(x, w, t, linear_bias=b, mask=mask)
    ignored = LF.linear_cross_entropy(x, w, torch.where(mask, t, -100), linear_bias=b)
    torch.testing.assert_close(masked, ignored, rtol=1e-12, atol=1e-12)


def test_k_dimensional_module_matches_torchs_module():
    torch.manual_seed(0)
    ours = losskit.LinearCrossEntropyLoss(D, C, out_features=(2, 3), bias=True)
    theirs = torch.nn.LinearCrossEntropyLoss(D, C, out_features=(2, 3), bias=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, D)
    for target in (torch.randint(0, C, (4, 2, 3)), torch.randn(4, C, 2, 3).softmax(1)):
        torch.testing.assert_close(ours(x, target), theirs(x, target))
    assert "out_features=(2, 3)" in repr(ours)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            dict(input=torch.randn(3), linear_weight=torch.randn(C, 2, 3)),
            losskit.LossValueError,
            r"K-dimensional loss .* needs input of shape \(N, 3\), got \(3,\): use input.unsqueeze",
        ),
        (
            dict(input=torch.randn(2, 4, 3), linear_weight=torch.randn(C, 2, 3)),
            losskit.LossValueError,
            r"needs input of shape \(N, 3\), got \(2, 4, 3\)",
        ),
        (
            dict(linear_weight=torch.randn(3)),
            losskit.LossValueError,
            r"linear_weight must have shape \(num_classes, in_features\)",
        ),
        (
            dict(linear_weight=torch.randn(C, 4)),
            losskit.LossValueError,
            r"4 input features \(dim 1\), but input of shape \(2, 3\) has 3",
        ),
        (
            dict(target=torch.rand(2, C), ignore_index=0),
            losskit.LossValueError,
            "ignore_index=0 applies to class-index targets only",
        ),
        (
            dict(target=torch.rand(2, C), ignore_index=-100),
            losskit.LossValueError,
            "ignore_index=-100 applies to class-index targets only",
        ),
        (
            dict(linear_bias=torch.randn(C + 1)),
            losskit.LossValueError,
            r"linear_bias must have shape \(7,\)",
        ),
        (
            dict(
                linear_weight=torch.randn(C, 2, 3),
                target=torch.zeros(2, 2, dtype=torch.long),
                linear_bias=torch.randn(C),
            ),
            losskit.LossValueError,
            r"linear_bias must have shape \(7, 2\)",
        ),
        (
            dict(target=F.one_hot(torch.tensor([1, 2]), C)),
            losskit.LossTypeError,
            r"the shape of class probabilities, but dtype torch.int64.*target.float\(\)",
        ),
        (
            dict(linear_weight=torch.randn(C, 2, 3), target=torch.zeros(2, dtype=torch.long)),
            losskit.LossValueError,
            r"need one class index per position, shape \(2, 2\)",
        ),
        (
            dict(
                linear_weight=torch.randn(C, 2, 3),
                impl="fused",
                target=torch.zeros(2, 2, dtype=torch.long),
            ),
            losskit.LossValueError,
            r"impl='fused' cannot run this call: the fused path takes 2-D heads",
        ),  # fmt: skip
    ],
)
def test_errors_where_torch_raises(kwargs, error, pattern):
    """Where torch raises (and for a K-dimensional impl='fused'): a clear losskit error."""
    args = dict(
        input=torch.randn(2, 3), linear_weight=torch.randn(C, 3), target=torch.tensor([1, 2])
    )
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        LF.linear_cross_entropy(args.pop("input"), args.pop("linear_weight"), args.pop("target"),
                                **args)  # fmt: skip


@pytest.mark.parametrize("target_form", ["indices", "probabilities"])
def test_losskit_keywords_on_k_dimensional_and_lead_dim_calls(target_form):
    """z_loss, softcap, mask and normalizer keep their meaning on every shape form: the call
    equals cross_entropy of the logits torch's contract defines."""
    probabilities = target_form == "probabilities"
    kw = dict(z_loss=1e-2, softcap=3.0, normalizer=5.0)
    lead_kw = dict(z_loss=1e-2, softcap=3.0)
    # K-dimensional head: logits (N, C, d1, d2)
    x, w, t, b = make((4, D), (2, 3), torch.float64, probabilities=probabilities, bias=True)
    mask = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(5)) > 0.3
    ours = LF.linear_cross_entropy(x, w, t, linear_bias=b, mask=mask, **kw)
    logits = torch.einsum("nd,cijd->ncij", x, w) + b
    torch.testing.assert_close(ours, LF.cross_entropy(logits, t, mask=mask, **kw))
    # plain head with lead dims (B, T, D): logits (B, T, C), one row per (b, t)
    x, w, t, b = make((2, 3, D), (), torch.float64, probabilities=probabilities, bias=True)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    logits = (x @ w.T + b).reshape(-1, C)
    flat_t = t.reshape(-1, C) if probabilities else t.reshape(-1)
    for reduction, extra in (("none", {}), ("mean", {"normalizer": 5.0})):
        kw_ = {**lead_kw, **extra}
        ours = LF.linear_cross_entropy(x, w, t, linear_bias=b, mask=mask, reduction=reduction,
                                       **kw_)  # fmt: skip
        expected = LF.cross_entropy(logits, flat_t, mask=mask.reshape(-1), reduction=reduction,
                                    **kw_)  # fmt: skip
        torch.testing.assert_close(ours, expected.reshape(ours.shape))
