"""The fused preference losses with the Triton epilogue, in Triton's CPU interpreter.

``kernels/triton/linear_preference.py`` is the sequence-level chunked engine
(``kernels/chunked/sequences.py``) with the cross-entropy's
:class:`~losskit.kernels.triton.linear_cross_entropy.TritonEpilogue`: the engine is shared with
the CPU backend, only the epilogue differs. Here :func:`losskit.kernels.chunked.linear_sequences`
runs with that epilogue on tiny inputs, DPO and GRPO, in plans of one sweep (several pairs per
chunk, one pair per chunk) and of two sweeps (a pair's rows over several blocks), and its loss and
gradients are compared with the CPU epilogue's (float32, tightly) and with the float64 reference.
Two ways in: the engine called directly with the objective and finish the functional layer
builds, and the public losses with the CPU backend's launcher swapped for one with the Triton
epilogue (on CUDA the public losses pick the Triton backend themselves).
"""

from __future__ import annotations

import functools
import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import losskit.kernels.triton.common as common  # noqa: E402
import losskit.kernels.triton.cross_entropy as ce  # noqa: E402
import losskit.kernels.triton.linear_cross_entropy as tl_lce  # noqa: E402
import losskit.kernels.triton.plans as plans  # noqa: E402

if not common.INTERPRETED and not torch.cuda.is_available():
    # imported earlier in this session without the interpreter: define the kernels again
    common, plans = importlib.reload(common), importlib.reload(plans)
    ce = importlib.reload(ce)
    tl_lce = importlib.reload(tl_lce)
if not common.INTERPRETED and not torch.cuda.is_available():
    pytest.skip("needs Triton's interpreter or a CUDA device", allow_module_level=True)

import losskit.functional as LF  # noqa: E402
import losskit.kernels.cpu as cpu_kernels  # noqa: E402
from losskit.functional import preference as P  # noqa: E402
from losskit.kernels import chunked  # noqa: E402
from losskit.kernels.chunked import sequences  # noqa: E402
from losskit.kernels.cpu.linear_cross_entropy import CpuEpilogue  # noqa: E402

DEVICE = "cpu" if common.INTERPRETED else "cuda"
#: 2 pairs (4 sequences) of 6 positions, V = 300: the interpreter runs one program per row
S, T, D, V = 4, 6, 16, 300
F64 = torch.float64

#: rows per chunk (a group: a pair of 2 T rows for DPO, a sequence of T rows for GRPO): several
#: groups per chunk, one group per chunk, a group's rows in blocks of fewer (two sweeps)
CHUNKS = {
    "several": {"dpo": 4 * T, "grpo": 2 * T},
    "one": {"dpo": 2 * T, "grpo": T},
    "two_sweeps": {"dpo": 5, "grpo": 4},
}


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, T, D, generator=g, dtype=F64)
    weight = torch.randn(V, D, generator=g, dtype=F64) * 0.5
    bias = torch.randn(V, generator=g, dtype=F64) * 0.3
    target = torch.randint(0, V, (S, T), generator=g)
    target[:, :2] = -100  # the prompt
    target[1, -1] = -100  # padding
    mask = torch.ones(S, T, dtype=torch.bool)
    mask[2, 3] = False
    ref = torch.randn(S, T, generator=g, dtype=F64) * 0.5 - 6.0  # per token
    adv = torch.randn(S, generator=g, dtype=F64)
    # the old policy: the policy's own token log-probabilities plus noise (ratios on both sides
    # of the clip range)
    z = torch.nn.functional.linear(hidden, weight, bias) / 1.5
    lp = z.log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    old = lp + torch.randn(S, T, generator=g, dtype=F64) * 0.3
    counted = (target != -100) & mask
    ref_seq = torch.where(counted, ref, 0.0).sum(-1)
    return dict(hidden=hidden, weight=weight, bias=bias, target=target, mask=mask, ref=ref,
                ref_seq=ref_seq, adv=adv, old=old)  # fmt: skip


def rule_and_side(kind, b):
    """The functional layer's rule and side inputs (what ``_linear`` hands the engine)."""
    counted = (b["target"] != -100) & b["mask"]
    if kind == "dpo":
        return P.DPO(0.5, "sigmoid", 0.1), {"reference": b["ref_seq"]}, counted
    rule = P.GRPO(0.04, 0.2, 0.28, "bnpo", None, None)
    return rule, {"advantages": b["adv"], "old": b["old"], "reference": b["ref"]}, counted


def engine_loss(kind, b, epilogue, chunk_size, reduction, device):
    """:func:`linear_sequences` called directly, its objective and finish built as
    ``functional/preference.py::_fused`` builds them."""
    rule, side, counted = rule_and_side(kind, b)
    x = (b["hidden"] / 1.5).reshape(S * T, D)
    bias = b["bias"] / 1.5
    y = b["target"].reshape(-1).clamp(min=0).to(device)
    flat = counted.reshape(-1).to(device)
    c2 = counted.to(device)
    side = {k: v.detach().float().to(device) for k, v in side.items()}
    totals = rule.totals(c2, side)

    def objective(lp, seqs):
        sub = {k: v.index_select(0, seqs) for k, v in side.items()}
        return rule(lp, c2.index_select(0, seqs), sub, totals)

    def finish(logp):
        terms, _ = rule.terms(logp.reshape(S, T), c2, side, totals)
        return P._reduce(terms, reduction)

    groups = S // 2 if rule.pairs else S
    plan = chunked.plan_sequences(S * T, D, V, torch.float32, device, budget=1 << 20,
                                  chunk_size=chunk_size)  # fmt: skip
    assert plan.rows == chunk_size
    weights = P._weights(groups, reduction, torch.device(device))
    loss, logp = chunked.linear_sequences(
        x.contiguous(), b["weight"], bias.contiguous(), y, flat, seq=chunked.Sequences(S, T,
        rule.pairs), objective=objective, finish=finish, weights=weights, plan=plan,
        epilogue=epilogue,
    )  # fmt: skip
    assert logp.shape == (S * T,) and logp.dtype == torch.float32
    return loss


def reference_loss(kind, b, reduction):
    """The public loss's float64 reference path on the same inputs."""
    return public_loss(kind, b, impl="reference", reduction=reduction)


def public_loss(kind, b, *, impl, reduction="mean", chunk_size=None):
    """The public loss (``linear_dpo_loss`` / ``linear_grpo_loss``) on ``b``."""
    kw = dict(bias=b["bias"], temperature=1.5, mask=b["mask"], impl=impl, chunk_size=chunk_size)
    if kind == "dpo":
        return LF.linear_dpo_loss(b["hidden"], b["weight"], b["target"], beta=0.5,
                                  label_smoothing=0.1, reference_logps=b["ref_seq"],
                                  reduction=reduction, **kw)  # fmt: skip
    return LF.linear_grpo_loss(
        b["hidden"],
        b["weight"],
        b["target"],
        b["adv"],
        old_logps=b["old"],
        reference_logps=b["ref"],
        beta=0.04,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="bnpo",
        **kw,
    )


def run(fn, batch, dtype, device, upstream_seed=3):
    """``fn(batch)`` on leaf copies in ``dtype`` on ``device``: (loss, d hidden, d weight,
    d bias), on the CPU in float64 for the comparisons."""
    b = {k: (v.to(dtype) if v.is_floating_point() else v).to(device) for k, v in batch.items()}
    for k in ("hidden", "weight", "bias"):
        b[k].requires_grad_()
    out = fn(b)
    up = torch.rand(out.shape, generator=torch.Generator().manual_seed(upstream_seed),
                    dtype=F64) + 0.5  # fmt: skip
    grads = torch.autograd.grad(out, [b[k] for k in ("hidden", "weight", "bias")],
                                up.to(out.dtype).to(out.device))  # fmt: skip
    return [t.detach().cpu().double() for t in (out, *grads)]


def compare(ours, cpu, truth, what):
    """Triton epilogue == CPU epilogue (float32, tight) and both near the float64 truth."""
    for a, c, t, name in zip(ours, cpu, truth, ("loss", "hidden", "weight", "bias"), strict=True):
        scale = t.abs().max().item()
        torch.testing.assert_close(
            a, c, rtol=1e-5, atol=1e-6 * scale, msg=lambda m, n=name: f"{what}: {n} vs cpu: {m}"
        )
        torch.testing.assert_close(
            a, t, rtol=1e-4, atol=2e-5 * scale, msg=lambda m, n=name: f"{what}: {n} vs float64: {m}"
        )
        assert bool(a.abs().max() > 0), f"{what}: {name} is all zero"


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("kind, reduction", [("dpo", "mean"), ("dpo", "none"), ("grpo", "mean")])
def test_engine_with_triton_epilogue(kind, reduction, chunk):
    batch = make_batch()
    cs = CHUNKS[chunk][kind]
    ours = run(lambda b: engine_loss(kind, b, tl_lce.TritonEpilogue, cs, reduction, DEVICE),
               batch, torch.float32, DEVICE)  # fmt: skip
    cpu = run(lambda b: engine_loss(kind, b, CpuEpilogue, cs, reduction, "cpu"), batch,
              torch.float32, "cpu")  # fmt: skip
    red = "mean" if kind == "grpo" else reduction
    truth = run(lambda b: reference_loss(kind, b, red), batch, F64, "cpu")
    compare(ours, cpu, truth, f"{kind} {reduction} {chunk}")


def _triton_launcher(x, w, bias, target, counted, **options):
    """The CPU backend's launcher with the Triton epilogue (the interpreter runs it on CPU
    tensors)."""
    options["epilogue"] = tl_lce.TritonEpilogue
    return sequences.linear_sequences(x, w, bias, target, counted, **options)


@pytest.fixture
def triton_backend(monkeypatch):
    """The public losses' fused path with the Triton epilogue: on CUDA their own backend, in the
    interpreter the CPU backend's launcher swapped for :func:`_triton_launcher`."""
    if DEVICE == "cpu":
        monkeypatch.setattr(cpu_kernels.linear_preference, "linear_preference", _triton_launcher)


@pytest.mark.parametrize("chunk", ["one", "two_sweeps"])
@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_public_losses_with_triton_epilogue(kind, chunk, triton_backend, monkeypatch):
    """The public losses' fused path with the Triton epilogue: the loss and gradients no further
    from the float64 truth than the float32 reference, plus 16 float32 steps of each tensor's
    scale."""
    batch = make_batch(seed=1)
    epilogues = []
    launcher = sequences.linear_sequences

    def spy(*a, **k):
        epilogues.append(k["epilogue"])
        return launcher(*a, **k)

    monkeypatch.setattr(sequences, "linear_sequences", spy)
    fused = functools.partial(public_loss, kind, impl="fused", chunk_size=CHUNKS[chunk][kind])
    ours = run(fused, batch, torch.float32, DEVICE)
    assert epilogues == [tl_lce.TritonEpilogue]  # the Triton epilogue ran
    reference = functools.partial(public_loss, kind, impl="reference")
    truth = run(reference, batch, F64, "cpu")
    ref32 = run(reference, batch, torch.float32, "cpu")
    for a, r, t, name in zip(ours, ref32, truth, ("loss", "hidden", "weight", "bias"),
                             strict=True):  # fmt: skip
        err, ref_err = (a - t).abs(), (r - t).abs()
        slack = 16 * torch.finfo(torch.float32).eps * t.abs().max()
        assert bool((err <= ref_err + slack).all()), f"{kind} {chunk} {name}: {err.max():.3g}"
