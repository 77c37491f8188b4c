"""The chunked engine of a sequence-level loss: preference and policy-gradient losses on a head.

A loss such as DPO is a function of each sequence's token log-probabilities ``log p(y_t)``
(``S`` sequences of ``T`` positions, hidden states ``(S * T, D)``, head ``(V, D)``). Its
gradient with respect to the logits of position ``t`` is ``g_t (onehot(y_t) - softmax(z_t))``
with ``g_t = dL / d log p(y_t)``, and ``g_t`` depends on the whole *group* of sequences the loss
compares (a chosen answer and its rejected one; a single sequence for KTO and GRPO). So the
chunks hold whole groups: per chunk,

1. ``z = x[rows] @ W.T (+ b)`` for the rows of its groups, into one reused buffer (GEMM);
2. the cross-entropy epilogue (the backend's :class:`~.epilogue.Epilogue`, whole rows, every
   counted row with factor 1) writes each row's ``lse - z_y = -log p(y_t)`` and overwrites ``z``
   with ``softmax(z) - onehot(y)``;
3. ``g`` of the chunk's positions by autograd on the loss's own formula (the *objective*, a
   function of the chunk's ``(S', T)`` log-probabilities: a few thousand numbers), and ``z``'s
   rows scaled by ``-g``;
4. the head's gradient GEMMs (:meth:`~.engine.Head.backprop_ranges`): ``dX[rows] = z @ W``,
   ``dW += z.T @ x[rows]``, ``db += sum z``. (A pair's two sequences are apart in the batch:
   their rows of ``x`` are gathered once, so the logits and ``dW`` are one GEMM each.)

Three GEMMs in all, the gradients computed in the forward (the backward scales them by
``grad_output``). A group whose rows exceed the plan's rows (long sequences, a small budget) is
run in two sweeps of blocks of at most that many rows: the first computes the log-probabilities
(step 2 without the gradient), the second the logits again with the gradient factor ``-g``
handed to the epilogue (four GEMMs, bounded memory). ``reduction='none'`` returns each group's
term; its gradient needs the per-group ``grad_output``, so the forward computes the
log-probabilities only and the backward runs the chunks with ``grad_output`` as the groups'
weights.

The loss's value and its metrics are not made here: the engine returns the token
log-probabilities (float32, 0 where a position does not count) and the caller applies the same
formula to them once, on the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..recompute import Recompute, hand_over, second_order
from . import engine
from .epilogue import Chunk, Epilogue
from .plan import ChunkPlan

__all__ = [
    "LinearSequenceFunction",
    "Sequences",
    "linear_sequences",
    "make_epilogue",
    "run_sequences",
]

_F32 = torch.float32

#: ``objective(logp, seqs) -> terms``: the loss's terms ``(G',)`` of the groups whose
#: sequences ``seqs`` (``(S',)`` int64, the groups' sequences in the order of ``logp``'s rows)
#: have the token log-probabilities ``logp`` (``(S', T)`` float32, differentiable).
Objective = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Sequences:
    """How the ``S * T`` rows form sequences and groups.

    ``pairs``: groups are (sequence ``g``, sequence ``G + g``), ``G = S / 2`` (chosen answers
    first, then the rejected ones in the same order, as TRL concatenates them); else each
    sequence is its own group.
    """

    s: int
    t: int
    pairs: bool

    @property
    def groups(self) -> int:
        return self.s // 2 if self.pairs else self.s

    def members(self, g0: int, g1: int) -> list[tuple[int, int]]:
        """Sequence ranges ``[a, b)`` of groups ``[g0, g1)``, in the objective's row order."""
        if self.pairs:
            half = self.groups
            return [(g0, g1), (half + g0, half + g1)]
        return [(g0, g1)]


def _chunk(
    target: Tensor, counted: Tensor, ranges: list[tuple[int, int]], r: Tensor | None = None
) -> Chunk:
    """The epilogue's :class:`Chunk` of the rows ``ranges`` (row ranges, in order): every
    counted row has gradient factor ``r`` (1 when None), the others 0.

    ``counted`` goes in as the mask and ``r`` as the row scale too: an epilogue may decide
    which rows count from ``target`` and ``mask`` and apply ``scale`` / ``row_scale`` itself
    instead of reading ``r`` (``kernels/CONTRACT.md``; the Triton one does).
    """
    tgt = torch.cat([target[a:b] for a, b in ranges])
    cnt = torch.cat([counted[a:b] for a, b in ranges])
    w_y = cnt.to(_F32)
    rs = None if r is None else r * w_y
    return Chunk(tgt, cnt, cnt, torch.where(cnt, tgt, 0), w_y, w_y if rs is None else rs, None, rs)


def _gather(x: Tensor, ranges: list[tuple[int, int]]) -> Tensor:
    """The rows ``ranges`` of ``x``, contiguous (one GEMM for the chunk's logits and ``dW``)."""
    return torch.cat([x[a:b] for a, b in ranges])


def _factor(lp: Tensor, seqs: Tensor, t: int, objective: Objective, weights: Tensor) -> Tensor:
    """``r = -dL/dlogp`` of the rows of the sequences ``seqs`` (``lp`` their flat
    log-probabilities, in order), ``L = sum_g weights[g] terms[g]``: the factor the epilogue's
    ``softmax - onehot`` is multiplied by."""
    with _autograd_on(), torch.enable_grad():
        leaf = lp.detach().view(-1, t).requires_grad_()
        terms = objective(leaf, seqs)
        (grad,) = torch.autograd.grad((terms * weights).sum(), leaf, allow_unused=True)
    if grad is None:
        return torch.zeros(lp.numel(), dtype=_F32, device=lp.device)
    return grad.reshape(-1).neg().to(_F32)


_AUTOCAST = tuple(
    getattr(torch._C.DispatchKey, k) for k in dir(torch._C.DispatchKey) if k.startswith("Autocast")
)


def _autograd_on():
    """The dispatcher's state of a plain eager call, autocast's as it is, for the rule's small
    autograd.

    A custom op's body (``ops/linear_preference.py``) runs below the autograd dispatch key (a
    tensor's ``requires_grad`` records nothing there) and, under a ``TorchDispatchMode`` (the
    ``torch.compile`` runtime's first call checks its custom ops under one; FlopCounterMode),
    below the Python and functorch keys too: the keys the thread excludes are reset to the
    autocast keys alone while the factor is taken (torch's own wrappers use the same guard).
    """
    exclude = torch._C._dispatch_tls_local_exclude_set()
    keep = torch._C.DispatchKeySet(torch._C.DispatchKey.Undefined)
    for k in _AUTOCAST:
        if exclude.has(k):
            keep = keep.add(k)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), keep)


def run_sequences(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    counted: Tensor,
    seq: Sequences,
    plan: ChunkPlan,
    epi: Epilogue,
    objective: Objective,
    weights: Tensor | None,
    want: tuple[bool, bool, bool],
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """Token log-probabilities ``(S * T,)`` float32 (0 where a row does not count) and the
    gradients ``(dX, dW, db)`` of ``sum_g weights[g] * terms[g]`` (see the module docstring).

    ``target`` ``(S * T,)`` int64 (any value where the row does not count), ``counted`` bool;
    ``weights`` ``(G,)`` float32, or None for no gradient; ``want`` which of ``dX, dW, db``.
    """
    n, v, dev = x.shape[0], w.shape[0], x.device
    head = engine.Head(x, w, bias, want if weights is not None else (False,) * 3, plan)
    grad = head.any
    logp = torch.zeros(n, dtype=_F32, device=dev)
    per_group = (2 if seq.pairs else 1) * seq.t
    m = max(plan.rows, 1)
    k = max(1, m // max(per_group, 1))
    one_sweep = k * per_group <= m
    buf = engine._chunk_buffer(min(k * per_group if one_sweep else m, n) * v, x.dtype, dev)
    for g0 in range(0, seq.groups, k):
        g1 = min(g0 + k, seq.groups)
        members = seq.members(g0, g1)
        ranges = [(a * seq.t, b * seq.t) for a, b in members]
        seqs = torch.cat([torch.arange(a, b, device=dev) for a, b in members])
        wg = None if weights is None else weights[g0:g1]
        if one_sweep:
            # The chunk's rows at once: logits, -log p and softmax - onehot, r, the GEMMs.
            c = sum(b - a for a, b in ranges)
            z = buf[: c * v].view(c, v)
            xc = x[ranges[0][0] : ranges[0][1]] if len(ranges) == 1 else _gather(x, ranges)
            engine._logits(z, xc, w, bias)
            ck = _chunk(target, counted, ranges)
            nll = torch.empty(c, dtype=_F32, device=dev)
            epi.rows(z, ck, nll, grad)
            lp = torch.where(ck.counted, -nll, 0.0)
            o = 0
            for a, b in ranges:
                logp[a:b] = lp[o : o + b - a]
                o += b - a
            if not grad:
                continue
            z.mul_(_factor(lp, seqs, seq.t, objective, wg).unsqueeze(1))
            head.backprop_ranges(z, xc, ranges)
            continue
        # Two sweeps over blocks of at most m rows: the log-probabilities, then the gradient.
        for a, b in ranges:
            for i in range(a, b, m):
                j = min(i + m, b)
                z = buf[: (j - i) * v].view(j - i, v)
                head.logits(z, i, j)
                ck = _chunk(target, counted, [(i, j)])
                nll = torch.empty(j - i, dtype=_F32, device=dev)
                epi.rows(z, ck, nll, False)
                logp[i:j] = torch.where(ck.counted, -nll, 0.0)
        if not grad:
            continue
        r = _factor(torch.cat([logp[a:b] for a, b in ranges]), seqs, seq.t, objective, wg)
        o = 0
        for a, b in ranges:
            for i in range(a, b, m):
                j = min(i + m, b)
                z = buf[: (j - i) * v].view(j - i, v)
                head.logits(z, i, j)
                ck = _chunk(target, counted, [(i, j)], r[o + i - a : o + j - a])
                epi.rows(z, ck, torch.empty(j - i, dtype=_F32, device=dev), True)
                head.backprop(z, i, j)
            o += b - a
    buf = z = None  # free the chunk buffer before the float32 dW accumulator is converted
    return logp, head.grads()


class LinearSequenceFunction(torch.autograd.Function):
    """Autograd node of the chunked sequence-level loss (any backend's :class:`Epilogue`).

    Outputs the loss (``finish`` of the token log-probabilities: reduced, or each group's term
    for ``'none'``) and the token log-probabilities themselves (non-differentiable, for the
    caller's metrics). With ``weights`` the gradients are computed in the forward and scaled by
    ``grad_output`` in the one backward; without (``'none'``) the backward runs the chunks with
    ``grad_output`` as the groups' weights.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        w: Tensor,
        bias: Tensor | None,
        target: Tensor,
        counted: Tensor,
        seq: Sequences,
        plan: ChunkPlan,
        epi: Epilogue,
        objective: Objective,
        finish: Callable[[Tensor], Tensor],
        weights: Tensor | None,
        recompute: Recompute | None,
    ) -> tuple[Tensor, Tensor]:
        want = tuple(bool(f) for f in ctx.needs_input_grad[:3])
        want = (want[0], want[1], want[2] and bias is not None)
        ctx.recompute = recompute or Recompute("linear preference loss")
        ctx.epi = epi
        ctx.deferred = weights is None
        if ctx.deferred:
            logp, _ = run_sequences(
                x, w, bias, target, counted, seq, plan, epi, objective, None, (False,) * 3
            )
            ctx.save_for_backward(x, w, bias)
            ctx.rest = (target, counted, seq, plan, objective, want)
        else:
            logp, ctx.grads = run_sequences(
                x, w, bias, target, counted, seq, plan, epi, objective, weights, want
            )
        ctx.mark_non_differentiable(logp)
        return finish(logp), logp

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_logp: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            return second_order(ctx, grad_loss)
        if ctx.deferred:
            target, counted, seq, plan, objective, want = ctx.rest
            x, w, bias = ctx.saved_tensors
            _, grads = run_sequences(
                x, w, bias, target, counted, seq, plan, ctx.epi, objective,
                grad_loss.to(_F32).reshape(-1), want,
            )  # fmt: skip
            return (*grads, *(None,) * 9)
        scale = functools.partial(engine.scale_gradient, ctx.epi)
        return hand_over(ctx, grad_loss, scale, loss="preference losses")


def make_epilogue(epilogue: Epilogue | type[Epilogue], v: int) -> Epilogue:
    """The engine's epilogue over ``v`` classes: every counted row with factor 1, no option of
    the cross-entropy's (the engine scales the rows itself)."""
    if isinstance(epilogue, Epilogue):
        return epilogue
    from ..._validate import CrossEntropyOptions

    return epilogue(None, v, CrossEntropyOptions("sum", -100, 0.0, 0.0, None))


def linear_sequences(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    counted: Tensor,
    *,
    seq: Sequences,
    objective: Objective,
    finish: Callable[[Tensor], Tensor],
    weights: Tensor | None,
    plan: ChunkPlan,
    epilogue: Epilogue | type[Epilogue],
    recompute: Recompute | None = None,
) -> tuple[Tensor, Tensor]:
    """The chunked sequence-level loss of validated 2-D inputs (the backends' launchers call
    this): ``(finish(logp), logp)``, ``logp`` the ``(S * T,)`` float32 token log-probabilities.

    Args:
        x, w, bias: hidden states ``(S * T, D)``, head ``(V, D)``, bias or None; contiguous, one
            dtype and device.
        target: ``(S * T,)`` int64 (in ``[0, V)`` where counted); counted: ``(S * T,)`` bool.
        seq: the sequences and groups. objective: the loss's terms of a chunk's groups (see
            :data:`Objective`). finish: the output from the whole batch's ``logp``.
        weights: ``(G,)`` float32 factor of each group's term in the loss (``1/G`` for
            ``'mean'``), or None for ``'none'`` (the backward's ``grad_output`` is then the
            weights).
        plan: from :func:`~losskit.kernels.chunked.plan_chunks` (its ``rows``; whole rows).
        epilogue: the backend's cross-entropy :class:`Epilogue`, or its class.
        recompute: the ``create_graph=True`` rule, or None (such a backward raises).
    """
    epilogue = make_epilogue(epilogue, w.shape[0])
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias)):
        return LinearSequenceFunction.apply(
            x, w, bias, target, counted, seq, plan, epilogue, objective, finish, weights, recompute
        )
    logp, _ = run_sequences(
        x, w, bias, target, counted, seq, plan, epilogue, objective, None, (False,) * 3
    )
    return finish(logp), logp
