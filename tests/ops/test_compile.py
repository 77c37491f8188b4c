"""``torch.compile(..., fullgraph=True)`` through every fused loss: no graph break, eager's numbers.

Under tracing the fused paths are the custom ops of :mod:`losskit.ops`, whose bodies are the
kernels eager mode runs, so the compiled loss and every gradient must equal eager's exactly (the
same kernels on the same inputs); ``fullgraph=True`` turns any graph break into an error.
``dynamic=True`` keeps the row count symbolic: a second length runs without recompiling.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import losskit
import losskit.functional as LF
from losskit import LossIndexError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(fn, tensors: list[torch.Tensor], extra: tuple = ()):
    """The loss (and z term) and the gradients of the tensors that require grad."""
    leaves = [t for t in tensors if t.requires_grad]
    for t in leaves:
        t.grad = None
    out = fn(*tensors, *extra)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(7)
    upstream = torch.rand(outs[0].shape, generator=gen, dtype=outs[0].dtype)
    (outs[0] * upstream).sum().backward()
    return [o.detach() for o in outs] + [t.grad for t in leaves]


def _assert_compiled_equals_eager(fn, tensors, *, dynamic=False, extra=()):
    eager = _run(fn, tensors, extra)
    compiled = _run(torch.compile(fn, fullgraph=True, dynamic=dynamic), tensors, extra)
    assert len(eager) == len(compiled)
    assert [e is None for e in eager] == [c is None for c in compiled]
    for e, c in zip(eager, compiled, strict=True):
        if e is not None:
            assert c.dtype == e.dtype and c.shape == e.shape
            torch.testing.assert_close(c, e, rtol=0, atol=0)


def _logits(n, v, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, v, generator=gen) * 3).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)
    y[::5] = -100
    return z, y


CE_CASES = {
    "plain": {},
    "weight+smoothing": {"label_smoothing": 0.1, "weight": "w"},
    "mask+normalizer": {"mask": "m", "normalizer": 11.0},
    "zloss+softcap": {"z_loss": 1e-3, "softcap": 7.0, "return_z_loss": True},
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy(case, reduction):
    z, y = _logits(37, 301)
    options = dict(CE_CASES[case])
    if options.get("weight") == "w":
        options["weight"] = torch.rand(301, generator=torch.Generator().manual_seed(1)) + 0.5
    if options.get("mask") == "m":
        options["mask"] = torch.arange(37) % 3 != 0
    if reduction != "mean" and "normalizer" in options:
        del options["normalizer"]

    def fn(z, y):
        return LF.cross_entropy(z, y, reduction=reduction, impl="fused", **options)

    _assert_compiled_equals_eager(fn, [z, y])


def test_cross_entropy_bfloat16_k_dimensional_and_auto():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 33, 5, 7, generator=gen).bfloat16().requires_grad_()
    y = torch.randint(0, 33, (4, 5, 7), generator=gen)
    _assert_compiled_equals_eager(lambda z, y: LF.cross_entropy(z, y, impl="fused"), [z, y])
    big, yb = _logits(64, 4096)  # >= CPU_FUSED_MIN_ELEMENTS: 'auto' takes the fused op
    _assert_compiled_equals_eager(lambda z, y: losskit.CrossEntropyLoss()(z, y), [big, yb])


def _head(n=37, d=16, v=300, dtype=torch.float32, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen) / 4).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=gen) / 4).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=gen)
    y[::4] = -100
    return x, w, b, y


LCE_CASES = {
    "plain": {},
    "bias+weight": {"bias": True, "weight": True, "label_smoothing": 0.05},
    "mask+zloss": {"mask": True, "z_loss": 1e-3, "return_z_loss": True},
    "softcap+lean": {"softcap": 5.0, "memory_budget": "lean"},
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(LCE_CASES))
def test_linear_cross_entropy(case, reduction):
    options = dict(LCE_CASES[case])
    x, w, b, y = _head(bias=options.pop("bias", False))
    if options.pop("weight", False):
        options["weight"] = torch.rand(300, generator=torch.Generator().manual_seed(2)) + 0.5
    if options.pop("mask", False):
        options["mask"] = torch.arange(37) % 3 != 1
    tensors = [x, w, y] + ([b] if b is not None else [])

    def fn(x, w, y, b=None):
        return LF.linear_cross_entropy(
            x, w, y, linear_bias=b, reduction=reduction, chunk_size=8, impl="fused", **options
        )

    _assert_compiled_equals_eager(fn, tensors)


def test_linear_cross_entropy_bfloat16_and_3d_input():
    x, w, _, y = _head(n=24, dtype=torch.bfloat16)
    x3 = x.detach().reshape(2, 12, 16).requires_grad_()

    def fn(x, w, y):
        return LF.linear_cross_entropy(x, w, y.reshape(2, 12), chunk_size=5, impl="fused")

    _assert_compiled_equals_eager(fn, [x3, w, y])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_dynamic_lengths_share_one_graph(reduction):
    torch._dynamo.utils.counters.clear()

    def fn(x, w, y):
        return LF.linear_cross_entropy(x, w, y, reduction=reduction, chunk_size=8, impl="fused")

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for n in (37, 53, 20):
        x, w, _, y = _head(n=n, seed=n)
        eager = _run(fn, [x, w, y])
        got = _run(compiled, [x, w, y])
        for e, c in zip(eager, got, strict=True):
            torch.testing.assert_close(c, e, rtol=0, atol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


DISTILL_CASES = {
    "forward_kl": (LF.kl_divergence, {}),
    "jsd+temperature": (LF.jensen_shannon, {"beta": 0.3, "temperature": 2.0}),
    "tv": (LF.total_variation, {}),
    "hard labels": (LF.distillation_loss, {"alpha": 0.4, "target": True}),
}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", list(DISTILL_CASES))
def test_distillation(case, reduction):
    loss, options = DISTILL_CASES[case]
    options = dict(options)
    s, y = _logits(29, 257, seed=4)
    t = torch.randn(29, 257, generator=torch.Generator().manual_seed(5), requires_grad=True)
    extra = (y,) if options.pop("target", False) else ()

    def fn(s, t, *target):
        return loss(s, t, *target, reduction=reduction, impl="fused", **options)

    _assert_compiled_equals_eager(fn, [s, t], extra=extra)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("teacher", ["head", "logprobs"])
def test_linear_distillation(teacher, reduction):
    xs, ws, _, y = _head(n=31, v=200, seed=6)
    gen = torch.Generator().manual_seed(8)
    if teacher == "head":
        xt = torch.randn(31, 24, generator=gen)
        wt = torch.randn(200, 24, generator=gen) / 4

        def fn(xs, ws, y):
            return LF.linear_distillation_loss(
                xs, ws, xt, wt, y, alpha=0.3, divergence="jsd", reduction=reduction,
                chunk_size=6, impl="fused",
            )  # fmt: skip
    else:
        tl = torch.randn(31, 200, generator=gen).log_softmax(-1)

        def fn(xs, ws, y):
            return LF.linear_distillation_loss(
                xs, ws, teacher_logprobs=tl, reduction=reduction, chunk_size=6, impl="fused"
            )

    _assert_compiled_equals_eager(fn, [xs, ws, y])


class _TinyLM(torch.nn.Module):
    """Embedding, a block and losskit's head + loss Module, as a trainer compiles them."""

    def __init__(self, vocab=500, dim=32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.block = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU())
        self.head = losskit.LinearCrossEntropyLoss(dim, vocab, bias=False, chunk_size=16)

    def forward(self, ids, labels):
        h = self.block(self.embed(ids))
        return self.head(h[:, :-1], labels[:, 1:])


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_model_and_its_loss_compile_whole(dynamic):
    """The loss Module inside a compiled model: one graph, two sequence lengths."""
    torch.manual_seed(0)
    model = _TinyLM()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    for t in (17, 25):
        ids = torch.randint(0, 500, (3, t))
        labels = ids.clone()
        labels[:, :4] = -100
        eager = []
        for m in (model, compiled):
            model.zero_grad(set_to_none=True)
            loss = m(ids, labels)
            loss.backward()
            eager.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
        # inductor fuses the block's own ops (GELU) with other roundings: float32 closeness
        for e, c in zip(*eager, strict=True):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_bad_class_index_raises_from_the_compiled_call():
    x, w, _, y = _head()
    y[5] = 300

    def fn(x, w, y):
        return LF.linear_cross_entropy(x, w, y, impl="fused")

    with pytest.raises(LossIndexError, match=r"class index 300 .* linear_weight has 300 classes"):
        torch.compile(fn, fullgraph=True)(x, w, y)
    z, yz = _logits(8, 50)
    yz[2] = -3
    with pytest.raises(LossIndexError, match=r"class index -3"):
        torch.compile(lambda z, y: LF.cross_entropy(z, y, impl="fused"), fullgraph=True)(z, yz)


def _pairs(s=4, t=9, d=12, v=120, seed=9):
    """Hidden states and head of ``s`` sequences (the first half chosen), prompts not counted."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(s, t, d, generator=gen).requires_grad_()
    w = (torch.randn(v, d, generator=gen) / 4).requires_grad_()
    y = torch.randint(0, v, (s, t), generator=gen)
    y[:, :3] = -100
    return h, w, y, gen


PREFERENCE_CASES = {
    "dpo": (LF.linear_dpo_loss, {"reference_logps": "pairs", "label_smoothing": 0.1}),
    "ipo+bias": (LF.linear_dpo_loss, {"reference_logps": "seq", "loss_type": "ipo", "bias": 1}),
    "orpo": (LF.linear_orpo_loss, {}),
    "simpo+lean": (LF.linear_simpo_loss, {"memory_budget": 1}),  # two sweeps of one row
    "kto": (LF.linear_kto_loss, {"desirable": 1, "reference_logps": "seq", "kl": "tensor"}),
    "grpo": (LF.linear_grpo_loss, {"advantages": 1, "old_logps": 1, "reference_logps": "tok"}),
}


def _preference_call(case, reduction, s=4, t=9):
    loss, spec = PREFERENCE_CASES[case]
    h, w, y, gen = _pairs(s, t)
    options, tensors = {}, [h, w, y]
    for key, value in spec.items():
        if key == "reference_logps":
            seq = -torch.rand(s, generator=gen) * 10
            tok = -torch.rand(s, t, generator=gen)
            options[key] = {"pairs": (seq[: s // 2], seq[s // 2 :]), "seq": seq, "tok": tok}[value]
        elif key == "bias":
            tensors.append((torch.randn(w.shape[0], generator=gen) / 4).requires_grad_())
        elif key == "desirable":
            options[key] = torch.tensor([True, False] * (s // 2))
        elif key == "kl":
            options[key] = torch.tensor(0.3)
        elif key == "advantages":
            options[key] = torch.randn(s, generator=gen)
        elif key == "old_logps":
            options[key] = -torch.rand(s, t, generator=gen)
        else:
            options[key] = value
    if loss is not LF.linear_grpo_loss:
        options["reduction"] = reduction

    def fn(h, w, y, b=None, return_metrics=False):
        return loss(h, w, y, bias=b, chunk_size=6, impl="fused", return_metrics=return_metrics,
                    **options)  # fmt: skip

    return fn, tensors


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", list(PREFERENCE_CASES))
def test_preference_losses(case, reduction):
    if case == "grpo" and reduction == "none":
        pytest.skip("GRPO normalizes as its loss_type says (no reduction argument)")
    fn, tensors = _preference_call(case, reduction)
    _assert_compiled_equals_eager(fn, tensors)


@pytest.mark.parametrize("case", ["kto", "grpo"])
def test_preference_metrics_compile(case):
    """TRL's metrics in the compiled graph (KTO's means over its desirable examples are masked
    sums, not boolean indexing), equal to eager's to float32 rounding: inductor computes them
    (its reductions round their own way; at ATEN_CPU_CAPABILITY=default ATen's differ)."""
    fn, tensors = _preference_call(case, "mean")
    eager = fn(*tensors, return_metrics=True)[1]
    got = torch.compile(fn, fullgraph=True)(*tensors, return_metrics=True)[1]
    assert got.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], rtol=1e-5, atol=1e-5, msg=k)


def test_preference_dynamic_lengths_share_one_graph():
    torch._dynamo.utils.counters.clear()

    def fn(h, w, y, rc, rr):
        return LF.linear_dpo_loss(
            h, w, y, reference_logps=(rc, rr), label_smoothing=0.1, chunk_size=6, impl="fused"
        )

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for t in (9, 14, 11):
        h, w, y, gen = _pairs(t=t, seed=t)
        ref = [-torch.rand(2, generator=gen) * 10 for _ in range(2)]
        eager, got = _run(fn, [h, w, y, *ref]), _run(compiled, [h, w, y, *ref])
        for e, c in zip(eager, got, strict=True):
            torch.testing.assert_close(c, e, rtol=0, atol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_loss_module_compiles_without_warnings():
    """A Module's call passes its settings on through a class attribute, which dynamo traces
    (a functools cache there drew a UserWarning from every compiled call)."""
    import warnings

    h, w, y, gen = _pairs()
    loss = losskit.LinearDPOLoss(beta=0.2)
    ref = -torch.rand(4, generator=gen) * 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(loss, fullgraph=True)(h, w, y, reference_logps=ref).backward()
    assert not [str(c.message) for c in caught if "lru_cache" in str(c.message)]


def test_token_and_sequence_logprobs():
    """The building block of the preference losses: linear_cross_entropy's 'none' op, negated
    (bit for bit); sequence_logprobs sums it over the positions in the graph, which inductor
    computes (its reduction rounds its own way at ATEN_CPU_CAPABILITY=default: to float32's
    rounding)."""
    h, w, y, _ = _pairs()
    _assert_compiled_equals_eager(
        lambda h, w, y: LF.token_logprobs(h, w, y, temperature=0.7, impl="fused"), [h, w, y]
    )

    def fn(h, w, y):
        return LF.sequence_logprobs(h, w, y, average=True, chunk_size=7, impl="fused")

    eager = _run(fn, [h, w, y])
    compiled = _run(torch.compile(fn, fullgraph=True), [h, w, y])
    for e, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)
