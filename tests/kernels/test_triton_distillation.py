"""The Triton distillation kernels, run in Triton's CPU interpreter, against the reference.

``kernels/triton/distillation.py``'s :func:`blocks_` (one program per row, three passes over
column blocks) is held to the float64 truth (losskit's reference,
:func:`losskit.functional.distillation.reference_distillation`, differentiated by autograd),
within the error budget of ``conftest.assert_within_budget``: no further from that truth than
the reference itself computed from the same low-precision inputs, plus rounding steps of the
dtype (float32: at the tensor's scale, as for every fused path; bfloat16: one step at each
element, the kernel rounding each gradient element once). It is held to the CPU backend's
:func:`~losskit.kernels.cpu.distillation.blocks_` the same way. Every divergence, with and
without the hard cross-entropy and a temperature, on odd shapes whose rows span several column
blocks (the block is made small here), with rows that do not count (``r == 0``, NaN logits:
their gradients must be exactly 0). The linear form runs through the two-head chunked engine
with several chunks.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

triton = pytest.importorskip("triton")

import losskit.kernels.cpu.distillation as cpu_distillation  # noqa: E402
import losskit.kernels.cpu.linear_distillation as cpu_linear  # noqa: E402
import losskit.kernels.triton.common as common  # noqa: E402
import losskit.kernels.triton.distillation as td  # noqa: E402
import losskit.kernels.triton.linear_distillation as tld  # noqa: E402
from losskit._validate.distillation import DistillationOptions  # noqa: E402
from losskit.functional.distillation import reference_distillation  # noqa: E402
from losskit.kernels.chunked import plan_pairs  # noqa: E402

if not torch.cuda.is_available():
    if type(triton.language.standard.max).__name__ != "InterpretedFunction":
        # Triton's own library was defined before TRITON_INTERPRET=1 was set: the interpreter
        # cannot run (see test_triton_cross_entropy.py). Set it in the environment.
        pytest.skip(
            "triton was imported before TRITON_INTERPRET=1 was set; set it in the environment",
            allow_module_level=True,
        )
    if not common.INTERPRETED:  # only these modules were imported without it: define them again
        common = importlib.reload(common)
        td = importlib.reload(td)
        tld = importlib.reload(tld)

DEVICE = "cpu" if common.INTERPRETED else "cuda"

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")

#: (rows, V, column block; None: the launcher's own): each row spans several blocks, the last
#: one partial
SHAPES = [(4, 1000, 512), (3, 4099, None), (1, 17, 16)]

#: row factors, exact in bfloat16 (the reference's upstream gradient is rounded to its dtype)
FACTORS = (0.5, 0.0, 1.25, 0.75, 1.0)

#: float32 rounding steps of the budget's slack (see :func:`slack`)
ULPS = 4.0

# rows that do not count hold NaN logits: the interpreter's numpy warns while reducing them
pytestmark = pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")


def options(kind: str, alpha: float, temperature: float) -> DistillationOptions:
    return DistillationOptions(
        divergence=kind, beta=0.3, temperature=temperature, alpha=alpha, soft_scale=1.7,
        reduction="none",
    )  # fmt: skip


def make_rows(n: int, v: int, dtype: torch.dtype, seed: int = 0):
    """Student and teacher logits (correlated, as a distillation's are), targets and row factors;
    row 1 (when there is one) does not count (``r = 0``) and holds NaN logits."""
    gen = torch.Generator().manual_seed(seed)
    zs = 2.0 * torch.randn(n, v, generator=gen)
    zt = 0.6 * zs + 1.5 * torch.randn(n, v, generator=gen) + 3.0
    y = torch.randint(0, v, (n,), generator=gen)
    r = torch.tensor([FACTORS[i % len(FACTORS)] for i in range(n)]) if n > 1 else torch.ones(1)
    dead = r == 0
    zs[dead] = float("nan")
    zt[dead] = float("nan")
    y[dead] = 0
    return zs.to(dtype), zt.to(dtype), y, r


def run_blocks(module, zs, zt, y, r, opts, grad_s=True, grad_t=True):
    """``module.blocks_`` with fresh outputs: (row losses, g_s or None, g_t or None)."""
    loss = torch.empty(zs.shape[0], dtype=torch.float32, device=zs.device)
    gs = torch.empty_like(zs) if grad_s else None
    gt = torch.empty_like(zt) if grad_t else None
    module.blocks_(zs, zt, y if opts.alpha > 0 else None, r, opts, loss, gs, gt)
    return loss, gs, gt


def reference_rows(zs, zt, y, r, opts):
    """The reference's row losses and ``r dloss/dz`` of both logits (autograd), in zs's dtype
    (computed in float32 for bfloat16, rounded once)."""
    s = zs.detach().clone().requires_grad_(True)
    t = zt.detach().clone().requires_grad_(True)
    target = torch.where(r != 0, y, -100)
    loss = reference_distillation(s, t, target, opts, mask=None, normalizer=None)
    loss.backward(r.to(loss.dtype))
    return loss.detach(), s.grad, t.grad


def slack(zs, zt, r, opts, truth):
    """The float32 part of the error budget of (row losses, g_s, g_t), from the float64 inputs.

    float32 rounds the log-probabilities ``ls``, ``lt`` (and ``lm``) at the scale of the rows'
    log-partition functions, ``L = 1 + |lse(s)| + |lse(t)| (+ |lse(z_s)|)`` (about ``log V``
    plus the logits' spread), not at the scale of the probabilities or of the loss: the
    divergence carries that rounding once (a KL of 0.2 from log-probabilities near -9), and each
    gradient element carries it times its probability, ``c r (q + p) L``. The reference's own
    float32 error is of that size too, but at other elements (its order of operations differs),
    so the budget grants :data:`ULPS` float32 steps of it on top of the reference's error, and
    as many at each gradient tensor's largest element (the rounding of the hard
    cross-entropy's ``softmax - onehot`` and of the products by ``c`` and ``r``).
    """
    eps = torch.finfo(torch.float32).eps
    t = opts.temperature
    s64, t64 = zs.double().nan_to_num() / t, zt.double().nan_to_num() / t
    big = 1.0 + s64.logsumexp(1).abs() + t64.logsumexp(1).abs()
    if opts.alpha > 0:
        big = big + (s64 * t).logsumexp(1).abs()
    q, p = s64.softmax(1), t64.softmax(1)
    c = (1.0 - opts.alpha) * opts.soft_scale / t
    k = (1.0 - opts.alpha) * opts.soft_scale + opts.alpha
    loss = ULPS * eps * (truth[0].abs() + k * big)
    grads = [
        ULPS * eps * (g.abs().amax() + c * r.double().unsqueeze(1) * (q + p) * big.unsqueeze(1))
        for g in truth[1:]
    ]
    return [loss, *grads]


def check_rows(ours, theirs, truth, extra, r, what):
    """``ours`` (the kernel's outputs) no further from the float64 ``truth`` than ``theirs``
    (another implementation's, from the same inputs) plus the slack ``extra`` (:func:`slack`)
    and, in bfloat16, one rounding step at each element; losses on the rows that count."""
    keep = r != 0
    for name, a, b, c, e in zip(("loss", "g_s", "g_t"), ours, theirs, truth, extra, strict=True):
        if a is None:
            continue
        assert a.shape == c.shape and a.dtype == b.dtype, f"{what}: {name}"
        a, b = a.cpu().double(), b.cpu().double()
        if name == "loss":
            a, b, c, e = a[keep], b[keep], c[keep], e[keep]
        budget = (b - c).abs() + e + torch.finfo(ours[1].dtype).eps * c.abs() * (name != "loss")
        err = (a - c).abs()
        worst = (err - budget).argmax()
        assert bool((err <= budget + torch.finfo(torch.float32).tiny).all()), (
            f"{what}: {name}: error {err.flatten()[worst]:.3g} at flat position {worst.item()}, "
            f"the other's {(b - c).abs().flatten()[worst]:.3g}, "
            f"budget {budget.flatten()[worst]:.3g}"
        )


# --------------------------------------------------------------------------------------------
# the row kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("alpha", [0.0, 0.4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_blocks_against_reference_and_cpu(shape, kind, alpha, temperature, dtype, monkeypatch):
    n, v, block = shape
    if block is not None:
        monkeypatch.setattr(td, "ROW_BLOCK", block)
    assert v > td.ROW_BLOCK
    opts = options(kind, alpha, temperature)
    zs, zt, y, r = make_rows(n, v, dtype, seed=n * v)
    dev = [t.to(DEVICE) for t in (zs, zt, y, r)]
    ours = run_blocks(td, *dev, opts)
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    truth = reference_rows(zs.double(), zt.double(), y, r.double(), opts)
    what = f"{kind} alpha={alpha} T={temperature} {n}x{v} {dtype}"
    # the reference from the same inputs: its loss in float32 (the kernel's loss is float32),
    # its gradients in the inputs' dtype
    ref_loss = reference_rows(zs.float(), zt.float(), y, r, opts)[0]
    _, ref_gs, ref_gt = reference_rows(zs, zt, y, r, opts)
    extra = slack(zs, zt, r, opts, truth)
    check_rows(ours, (ref_loss, ref_gs, ref_gt), truth, extra, r, f"vs reference, {what}")
    cpu = run_blocks(cpu_distillation, zs, zt, y, r, opts)
    check_rows(ours, cpu, truth, extra, r, f"vs cpu, {what}")
    # rows that do not count: exactly 0, whatever their (NaN) logits
    dead = (r == 0).to(DEVICE)
    for g in ours[1:]:
        assert bool((g[dead] == 0).all()) and bool(g[~dead].isfinite().all()), what


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_wanted_gradients_and_in_place(kind, dtype, monkeypatch):
    """Each gradient alone, neither, and written over the logits' own storage: the same numbers
    as both written apart; logits without an output are never written."""
    monkeypatch.setattr(td, "ROW_BLOCK", 128)
    opts = options(kind, 0.4, 2.5)
    zs, zt, y, r = (t.to(DEVICE) for t in make_rows(2, 200, dtype, seed=7))
    loss, gs, gt = run_blocks(td, zs, zt, y, r, opts)
    keep = r != 0

    def same(a, b, what):
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{kind}, {what}: {m}")

    for grad_s, grad_t in ((True, False), (False, True), (False, False)):
        s0, t0 = zs.clone(), zt.clone()
        l1, gs1, gt1 = run_blocks(td, s0, t0, y, r, opts, grad_s, grad_t)
        same(l1[keep], loss[keep], f"loss with grad_s={grad_s} grad_t={grad_t}")
        same(s0, zs, "student logits, read only")
        same(t0, zt, "teacher logits, read only")
        if grad_s:
            same(gs1, gs, "g_s alone")
        if grad_t:
            same(gt1, gt, "g_t alone")
    # in place: g_s over the student's logits (and g_t over the teacher's)
    for grad_t in (False, True):
        s0, t0 = zs.clone(), zt.clone()
        l1 = torch.empty_like(loss)
        td.blocks_(s0, t0, y, r, opts, l1, s0, t0 if grad_t else None)
        same(l1[keep], loss[keep], "loss in place")
        same(s0, gs, "g_s in place")
        same(t0, gt if grad_t else zt, "g_t in place" if grad_t else "teacher logits, read only")


def test_teacher_log_probs_of_impossible_tokens(monkeypatch):
    """A teacher's log-probabilities of -inf (whole column blocks of them, the first included)
    are probabilities of 0, not NaN: the total variation stays finite, as the reference's."""
    monkeypatch.setattr(td, "ROW_BLOCK", 16)
    opts = options("tvd", 0.4, 2.5)
    zs, zt, y, r = make_rows(3, 40, torch.float32, seed=9)
    zt[:, :20] = float("-inf")
    zt[2, 30:] = float("-inf")
    ours = run_blocks(td, *(t.to(DEVICE) for t in (zs, zt, y, r)), opts)
    truth = reference_rows(zs.double(), zt.double(), y, r.double(), opts)
    ref = reference_rows(zs, zt, y, r, opts)
    assert bool(ours[0][r != 0].isfinite().all())
    check_rows(ours, ref, truth, slack(zs, zt, r, opts, truth), r, "-inf")


def test_no_rows_and_no_columns():
    """Nothing to launch: no rows (nothing written), no columns (every loss 0)."""
    opts = options("jsd", 0.0, 2.5)
    empty = torch.empty(0, 5, device=DEVICE)
    none = torch.empty(0, device=DEVICE)
    td.blocks_(empty, empty, None, none, opts, none, empty, empty)  # nothing to do
    loss = torch.full((3,), 7.0, device=DEVICE)
    no_cols = torch.empty(3, 0, device=DEVICE)
    td.blocks_(no_cols, no_cols, None, torch.ones(3, device=DEVICE), opts, loss, no_cols, None)
    assert not loss.any()


# --------------------------------------------------------------------------------------------
# the launchers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction, normalizer, upstream",
    [("mean", None, 1.0), ("mean", 9.0, 2.5), ("sum", None, 0.5), ("none", None, None)],
)
def test_distillation_launcher(reduction, normalizer, upstream):
    """The logits-level launcher (``DistillationFunction``): both gradients computed in the
    forward, scaled by ``grad_output`` in the backward (on the device, 1 skipped)."""
    opts = replace(options("reverse_kl", 0.4, 2.5), reduction=reduction)
    gen = torch.Generator().manual_seed(11)
    zs = torch.randn(6, 70, generator=gen)
    zt = torch.randn(6, 70, generator=gen)
    target = torch.tensor([3, -100, 69, 0, 12, 5])
    mask = torch.tensor([True, True, True, False, True, True])
    norm = None if normalizer is None else torch.tensor(normalizer)
    if upstream is None:
        up = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    else:
        up = torch.tensor(upstream, dtype=torch.float64)

    def run(fn, s, t, **kw):
        s = s.clone().requires_grad_(True)
        t = t.clone().requires_grad_(True)
        out = fn(s, t, target.to(s.device), opts=opts, mask=mask.to(s.device), **kw)
        out.backward(up.to(out.dtype).to(s.device))
        return out.detach().cpu(), s.grad.cpu(), t.grad.cpu()

    ours = run(td.distillation, zs.to(DEVICE), zt.to(DEVICE), normalizer=None if norm is None
               else norm.to(DEVICE))  # fmt: skip

    def ref(s, t, y, *, opts, mask, normalizer=None):
        return reference_distillation(s, t, y, opts, mask=mask, normalizer=normalizer)

    truth = run(ref, zs.double(), zt.double(), normalizer=norm)
    for a, b, what in zip(ours, truth, ("loss", "g_s", "g_t"), strict=True):
        torch.testing.assert_close(
            a.double(), b, rtol=1e-5, atol=1e-7, msg=lambda m, w=what: f"{w}: {m}"
        )


@pytest.mark.parametrize(
    "kind, teacher, reduction",
    [("jsd", "heads", "mean"), ("forward_kl", "logprobs", "none"), ("tvd", "heads", "sum")],
)
def test_linear_distillation_through_the_engine(kind, teacher, reduction):
    """The Triton linear launcher: several chunks of whole rows (``plan_pairs``), the student's
    and the teacher's gradients, against the CPU epilogue and the float64 reference."""
    gen = torch.Generator().manual_seed(5)
    n, ds, dt, v = 21, 16, 24, 200
    xs = torch.randn(n, ds, generator=gen)
    ws = torch.randn(v, ds, generator=gen) * 0.3
    bs = torch.randn(v, generator=gen) * 0.1
    target = torch.randint(0, v, (n,), generator=gen)
    target[::7] = -100
    mask = torch.rand(n, generator=gen) > 0.2
    if teacher == "heads":
        xt = torch.randn(n, dt, generator=gen)
        wt = torch.randn(v, dt, generator=gen) * 0.3
        bt = torch.randn(v, generator=gen) * 0.1
        heads = [xs, ws, bs, xt, wt, bt, None]
    else:
        tl = torch.log_softmax(torch.randn(n, v, generator=gen) * 2.0, -1)
        heads = [xs, ws, bs, None, None, None, tl]
    opts = replace(options(kind, 0.4, 2.5), reduction=reduction)
    plan = plan_pairs(n, max(ds, dt), v, torch.float32, "cpu", budget=1 << 20, chunk_size=6)
    assert plan.rows == 6  # four chunks, the last one partial
    up = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5 if reduction == "none" else None

    def run(launch, tensors, device):
        leaves = [
            None if t is None else t.detach().clone().to(device).requires_grad_(True)
            for t in tensors
        ]
        out = launch(*leaves, target.to(device), mask=mask.to(device), device=device)
        out.backward(torch.ones_like(out) if up is None else up.to(out.dtype).to(device))
        return [out.detach().cpu()] + [None if t is None else t.grad.cpu() for t in leaves]

    def fused(module):
        def launch(*args, mask, device):
            return module.linear_distillation(
                *args, opts=opts, mask=mask, normalizer=None, plan=plan
            )

        return launch

    def reference(xs, ws, bs, xt, wt, bt, tl, y, *, mask, device):
        zt = F.linear(xt, wt, bt) if tl is None else tl
        return reference_distillation(F.linear(xs, ws, bs), zt, y, opts, mask=mask, normalizer=None)

    ours = run(fused(tld), heads, DEVICE)
    cpu = run(fused(cpu_linear), heads, "cpu")
    truth = run(reference, [None if t is None else t.double() for t in heads], "cpu")
    names = ("loss", "xs", "ws", "bs", "xt", "wt", "bt", "tl")
    for a, c, t, what in zip(ours, cpu, truth, names, strict=True):
        if t is None:
            assert a is None and c is None, what
            continue
        scale = t.abs().max().item()
        torch.testing.assert_close(
            a, c, rtol=1e-5, atol=1e-6 * scale, msg=lambda m, w=what: f"{w}: {m}"
        )
        torch.testing.assert_close(
            a.double(), t, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, w=what: f"{w}: {m}"
        )


def test_kernel_annotations_are_objects_for_old_triton():
    """triton 3.0 finds ``tl.constexpr`` parameters by their annotation objects (see
    test_triton_cross_entropy.py): the kernel module keeps them objects."""
    kernels = [
        obj
        for obj in vars(td).values()
        if callable(getattr(obj, "fn", None)) and hasattr(obj, "arg_names")
    ]
    assert "_distill_kernel" in {k.fn.__name__ for k in kernels}
    for k in kernels:
        strings = {n: a for n, a in k.fn.__annotations__.items() if isinstance(a, str)}
        assert not strings, f"{k.fn.__name__} has string annotations {strings}"
