"""The Triton epilogues of the fused linear + cross-entropy, in Triton's CPU interpreter.

The chunk loop is shared with the CPU path; what differs is the epilogue: the fused
cross-entropy kernel on whole rows (its ``single``, ``split`` and ``rowloop`` launch plans) and the
two tile kernels of the vocabulary-tiled plan. Each is run through the full forward and backward
on tiny shapes and compared with the CPU epilogue (float32: to a tight tolerance) and with the
float64 reference (bfloat16: the error budget of the functional tests). With ``return_z_loss``
the z term (a second output, without a gradient) is compared too.
"""

from __future__ import annotations

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
from losskit._reduction import count_rows  # noqa: E402
from losskit._validate import CrossEntropyOptions  # noqa: E402
from losskit.kernels import chunked  # noqa: E402
from losskit.kernels.cpu.linear_cross_entropy import CpuEpilogue  # noqa: E402

DEVICE = "cpu" if common.INTERPRETED else "cuda"
N, D, V = 13, 9, 203

#: (chunk plan, the cross-entropy kernel's plan for whole rows)
PLANS = {
    "rows/single": (chunked.ChunkPlan(5, V, "float32"), None),
    "rows/split": (chunked.ChunkPlan(5, V, "float32"), ("split", {"chunk_max": 64})),
    "rows/rowloop": (chunked.ChunkPlan(8, V, "input"), ("rowloop", {"rowloop_block": 64})),
    "tiled": (chunked.ChunkPlan(8, 128, "float32"), None),
}
FEATURES = {
    "plain": {},
    "everything": dict(
        weight=True,
        mask=True,
        label_smoothing=0.1,
        z_loss=1e-2,
        softcap=2.5,
        bias=True,
        return_z_loss=True,
    ),
}


def make(dtype, *, weight=False, mask=False, bias=False, **options):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(N, D, generator=gen).to(dtype)
    w = (torch.randn(V, D, generator=gen) * 0.8).to(dtype)
    y = torch.randint(0, V, (N,), generator=gen)
    y[4] = -100
    kw = dict(
        ignore_index=-100,
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=None,
        normalizer=None,
        weight=None,
        mask=None,
    )
    kw.update(options)
    if weight:
        kw["weight"] = torch.rand(V, generator=gen) + 0.5
    if mask:
        kw["mask"] = torch.rand(N, generator=gen) > 0.3
    b = torch.randn(V, generator=gen).to(dtype) if bias else None
    return x, w, y, b, kw


def grads(fn, x, w, y, b, kw, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    out = fn(leaves[0], leaves[1], y, leaves[2] if b is not None else None, **kw)
    z = []
    if kw.get("return_z_loss"):
        out, z_term = out
        assert not z_term.requires_grad and z_term.shape == out.shape
        z = [z_term]
    out.backward(upstream.to(out.dtype))
    return [out.detach(), *z] + [leaf.grad for leaf in leaves]


def launcher(plan, ce_plan, epilogue: str):
    def fn(x, w, y, b, *, weight, reduction, **kw):
        opts = CrossEntropyOptions(
            reduction, kw["ignore_index"], kw["label_smoothing"], kw["z_loss"], kw["softcap"]
        )
        if epilogue == "triton":
            p = None if ce_plan is None else plans.make_plan(V, x.device, ce_plan[0], **ce_plan[1])
            epi = tl_lce.TritonEpilogue(weight, V, opts, ce_plan=p)
        else:
            epi = CpuEpilogue(weight, V, opts)
        return chunked.linear_cross_entropy(
            x, w, y, bias=b, weight=weight, reduction=reduction, plan=plan, epilogue=epi, **kw
        )

    return fn


def _upstream(reduction):
    gen = torch.Generator().manual_seed(3)
    return torch.rand(N, generator=gen) + 0.5 if reduction == "none" else torch.tensor(1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("plan", list(PLANS))
def test_triton_epilogue_matches_cpu_float32(plan, feature, reduction):
    chunk_plan, ce_plan = PLANS[plan]
    x, w, y, b, kw = make(torch.float32, **FEATURES[feature])
    up = _upstream(reduction)
    ours = grads(
        launcher(chunk_plan, ce_plan, "triton"), x, w, y, b, {**kw, "reduction": reduction}, up
    )
    cpu = grads(
        launcher(chunk_plan, ce_plan, "cpu"), x, w, y, b, {**kw, "reduction": reduction}, up
    )
    for i, (a, c) in enumerate(zip(ours, cpu, strict=True)):
        torch.testing.assert_close(
            a,
            c,
            rtol=1e-5,
            atol=1e-6 * float(c.abs().max()) + 1e-7,
            msg=lambda m, i=i: f"output {i}: {m}",
        )


@pytest.mark.parametrize("plan", ["rows/single", "tiled"])
def test_triton_epilogue_bfloat16_error_budget(plan):
    chunk_plan, ce_plan = PLANS[plan]
    x, w, y, b, kw = make(torch.bfloat16, **FEATURES["everything"])
    up = torch.tensor(1.0)
    ours = grads(
        launcher(chunk_plan, ce_plan, "triton"), x, w, y, b, {**kw, "reduction": "mean"}, up
    )

    def ref(x, w, y, b, *, weight, mask, **kw):
        kw.pop("reduction")
        return LF.linear_cross_entropy(
            x, w, y, linear_bias=b, weight=weight, mask=mask, impl="reference", **kw
        )

    lowp = grads(ref, x, w, y, b, {**kw, "reduction": "mean"}, up)
    truth = grads(
        ref, x.double(), w.double(), y, b.double(), {**kw, "reduction": "mean"}, up.double()
    )
    for i, (a, lo, t) in enumerate(zip(ours, lowp, truth, strict=True)):
        assert a.dtype == lo.dtype == torch.bfloat16
        tol = torch.finfo(torch.bfloat16).eps * float(t.abs().max())
        excess = float(((a.double() - t).abs() - (lo.double() - t).abs()).max())
        assert excess <= tol, f"output {i}: {excess:.3g} > {tol:.3g}"


@pytest.mark.parametrize("plan", ["rows/single", "tiled"])
def test_triton_z_term_without_z_loss_is_zero_and_with_it_the_reference(plan):
    chunk_plan, ce_plan = PLANS[plan]
    x, w, y, b, kw = make(torch.float32, weight=True, mask=True, return_z_loss=True)
    ref_kw = dict(weight=kw["weight"], mask=kw["mask"], impl="reference", return_z_loss=True)
    for c in (0.0, 0.05):
        loss, z = launcher(chunk_plan, ce_plan, "triton")(
            x, w, y, None, **{**kw, "z_loss": c, "reduction": "mean"}
        )
        want, want_z = LF.linear_cross_entropy(x, w, y, z_loss=c, **ref_kw)
        torch.testing.assert_close(z, want_z, rtol=1e-5, atol=0 if c == 0 else 1e-6)
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        assert (z.item() == 0.0) == (c == 0.0)


def test_tile_kernels_merge_statistics_like_logsumexp():
    # the running (max, sum of exp) merged over three tiles equals logsumexp over the row
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(6, 300, generator=gen) * 4
    y = torch.randint(0, 300, (6,), generator=gen)
    opts = CrossEntropyOptions("sum", -100, 0.1, 0.0, None)
    epi = tl_lce.TritonEpilogue(None, 300, opts)
    st = epi.new_stats(6, z.device)
    rows = count_rows(y, ignore_index=-100, reduction="sum")
    ck = chunked.Chunk.of(y, None, rows, 0, 6, None)
    for c0 in (0, 128, 256):
        epi.tile_stats(z[:, c0 : c0 + 128].contiguous(), c0, ck, st)
    torch.testing.assert_close(st[0] + st[1].log(), torch.logsumexp(z, 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st[2], z.gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(st[3], z.sum(1), rtol=1e-5, atol=1e-4)
