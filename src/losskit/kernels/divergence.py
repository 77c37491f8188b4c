r"""The distillation row rule in torch ops: each row's loss and its gradients, written once.

The CPU kernels (``kernels/cpu/distillation.py``, the linear form's CPU epilogue) call
:func:`rows_` on blocks of float32 rows; ``kernels/triton/distillation.py`` is the same rule in
Triton. The plain-torch reference (``functional/distillation.py``) differentiates its own formulas
with autograd, and the kernel tests hold these gradients to it.

Notation per row, with temperature ``T``: ``q = softmax(z_s / T)`` (student), ``p = softmax(z_t /
T)`` (teacher), ``ls = log q``, ``lt = log p``. The divergence ``K`` and its gradients with
respect to the tempered logits ``s = z_s / T`` and ``t = z_t / T`` (softmax's Jacobian applied:
for ``K(q)`` with ``dK/dq = g``, ``dK/ds = q * (g - sum(q * g))``):

- forward KL ``KL(p || q) = sum p (lt - ls)``: ``dK/ds = q - p``, ``dK/dt = p (lt - ls - K)``.
- reverse KL ``KL(q || p) = sum q (ls - lt)``: ``dK/ds = q (ls - lt - K)``, ``dK/dt = p - q``.
- generalized JSD, ``0 < beta < 1``: ``m = beta p + (1 - beta) q``, ``lm = log m``,
  ``K = beta KL(p || m) + (1 - beta) KL(q || m) = beta K_p + (1 - beta) K_q`` with ``K_p = sum p
  (lt - lm)``, ``K_q = sum q (ls - lm)``. The terms through ``m`` cancel
  (``d/dq_j = (1 - beta)(ls_j - lm_j)``), so ``dK/ds = (1 - beta) q (ls - lm - K_q)`` and
  ``dK/dt = beta p (lt - lm - K_p)``. ``beta = 0`` and ``1`` are the forward and reverse KL
  (:attr:`~losskit._validate.distillation.DistillationOptions.kind`).
- total variation ``K = sum |p - q| / 2``: with ``g = sign(q - p) / 2``, ``dK/ds = q (g - sum q
  g)``, ``dK/dt = p (sum p g - g)`` (``sign(0) = 0``, as autograd's ``abs`` gives).

The row loss is ``alpha * CE(z_s, y) + (1 - alpha) * k * K`` (``k`` the soft scale); the hard
cross-entropy is on the untempered logits: ``lse(z_s) - z_{s,y}``, gradient ``softmax(z_s) -
onehot(y)``. The gradients with respect to the logits are ``r * (alpha (softmax(z_s) - onehot(y))
+ c dK/ds)`` and ``r c dK/dt`` with ``c = (1 - alpha) k / T`` and ``r`` the row's reduction factor
(0 where the row does not count: its gradient is 0 whatever its logits).

:class:`DistillationFunction` is the logits-level fused node of every backend: it runs the
backend's block function (the rule above, in torch ops on the CPU, in Triton on CUDA) once in the
forward, which writes both gradients, and scales them by ``grad_output`` in the backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._reduction import count_positions
from .._validate.distillation import DistillationOptions
from .recompute import Recompute, hand_over, second_order

__all__ = [
    "DistillationFunction",
    "distillation_forward",
    "rows_",
    "run_distillation",
    "soft_factor",
]

_F32 = torch.float32


def soft_factor(opts: DistillationOptions) -> float:
    """``c = (1 - alpha) k / T``: the divergence's share of the gradient of the raw logits."""
    return (1.0 - opts.alpha) * opts.soft_scale / opts.temperature


def _log_softmax(x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(lse, log_softmax(x), softmax(x))`` of float32 rows: 6 passes.

    The log-probabilities go into ``out`` (``x`` itself when it may be overwritten), and the
    probabilities are their ``exp``, as torch's ``log_softmax(x).exp()`` (not ``exp(x - m) /
    S``): the two then round consistently, which the divergences' gradients need (they
    multiply ``q`` by differences of log-probabilities).
    """
    m = x.amax(1, keepdim=True)
    e = torch.sub(x, m).exp_()
    lse = m + e.sum(1, keepdim=True).log_()
    logp = torch.sub(x, lse, out=out) if out is not None else torch.sub(x, lse)
    return lse, logp, torch.exp(logp, out=e)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_v a[:, v] b[:, v]`` per row as a column; one multiply and one pairwise sum."""
    return (a * b).sum(1, keepdim=True)


def _divergence(
    s: Tensor, t: Tensor, kind: str, beta: float, grad_s: bool, grad_t: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor]:
    """``K`` per row (a column) and, when asked, ``dK/ds`` and ``dK/dt`` (see the module
    docstring), from the tempered logits ``s`` (overwritten) and ``t`` (read only); also ``q``
    and ``lse(s)``. About 10 to 20 passes over the rows, each in cache."""
    lse_s, ls, q = _log_softmax(s, out=s)
    _, lt, p = _log_softmax(t)
    if kind == "forward_kl":
        d = lt.sub_(ls)  # lt - ls, in lt's buffer
        k = _rowdot(p, d)
        ds = torch.sub(q, p) if grad_s else None
        return k, ds, d.sub_(k).mul_(p) if grad_t else None, q, lse_s
    if kind == "reverse_kl":
        d = ls.sub_(lt)  # ls - lt, in s
        k = _rowdot(q, d)
        dt = torch.sub(p, q) if grad_t else None
        return k, d.sub_(k).mul_(q) if grad_s else None, dt, q, lse_s
    if kind == "jsd":
        # lm = log(beta p + (1 - beta) q), stable where both underflow
        lm = torch.logaddexp(ls + math.log1p(-beta), lt + math.log(beta))
        aq, ap = ls.sub_(lm), lt.sub_(lm)  # ls - lm, lt - lm (in place)
        kq, kp = _rowdot(q, aq), _rowdot(p, ap)
        k = beta * kp + (1.0 - beta) * kq
        # (1 - beta) and beta are folded into the caller's scaling of ds and dt
        ds = aq.sub_(kq).mul_(q) if grad_s else None
        dt = ap.sub_(kp).mul_(p) if grad_t else None
        return k, ds, dt, q, lse_s
    # total variation: g = sign(q - p) / 2
    g = torch.sub(q, p)
    k = 0.5 * g.abs().sum(1, keepdim=True)
    if not (grad_s or grad_t):
        return k, None, None, q, lse_s
    g.sign_().mul_(0.5)
    dt = torch.sub(_rowdot(p, g), g).mul_(p) if grad_t else None
    ds = torch.sub(g, _rowdot(q, g)).mul_(q) if grad_s else None
    return k, ds, dt, q, lse_s


def rows_(
    zs: Tensor,
    zt: Tensor,
    y: Tensor | None,
    r: Tensor,
    opts: DistillationOptions,
    loss_out: Tensor,
    *,
    grad_s: bool,
    grad_t: bool,
) -> None:
    """Row losses into ``loss_out`` and, when asked, the gradients in place.

    Args:
        zs: ``(R, V)`` float32 student logits; overwritten (with ``r dloss/dz_s`` when
            ``grad_s``, else with scratch values).
        zt: ``(R, V)`` float32 teacher logits (or log-probabilities); read only, unless
            ``grad_t``: then overwritten with ``r dloss/dz_t``.
        y: ``(R,)`` int64 targets, 0 where the row does not count (read with ``alpha > 0``).
        r: ``(R,)`` float32 reduction factor of each row's gradient (0: the row does not count).
        opts: the call's options. loss_out: ``(R,)`` float32, each row's loss (unreduced; any
            value where the row does not count).
    """
    if zs.shape[0] == 0:
        return
    inv_t = 1.0 / opts.temperature
    alpha = opts.alpha
    c = soft_factor(opts)
    hard = soft0 = zy = None
    if alpha > 0.0:
        # the hard cross-entropy, on the untempered logits (at T = 1, q and lse_s are theirs)
        zy = zs.gather(1, y.unsqueeze(1))
        if inv_t != 1.0:
            lse0, _, soft0 = _log_softmax(zs)
            hard = lse0 - zy
            soft0 = soft0 if grad_s else None
    if inv_t != 1.0:
        zs.mul_(inv_t)
    t = zt * inv_t if inv_t != 1.0 else zt
    k, ds, dt, q, lse_s = _divergence(zs, t, opts.kind, opts.beta, grad_s, grad_t)
    # the JSD's gradients leave their factors (1 - beta) and beta to the scaling below
    c_s, c_t = c, c
    if opts.kind == "jsd":
        c_s, c_t = c * (1.0 - opts.beta), c * opts.beta
    if alpha > 0.0 and hard is None:
        hard = lse_s - zy
    loss = k.mul_((1.0 - alpha) * opts.soft_scale)
    if hard is not None:
        loss.add_(hard, alpha=alpha)
    loss_out.copy_(loss.view(-1))
    r2 = r.unsqueeze(1)
    keep = r2 != 0
    everywhere = bool(keep.all())  # (a CPU function: this host read is free)
    if grad_t:
        torch.mul(dt, c_t * r2, out=zt)
        if not everywhere:
            zt.masked_fill_(~keep, 0.0)
    if not grad_s:
        return
    torch.mul(ds, c_s * r2, out=zs)
    if alpha > 0.0:
        zs.addcmul_(q if soft0 is None else soft0, alpha * r2)
        zs.scatter_add_(1, y.unsqueeze(1), -alpha * r2)
    if not everywhere:
        zs.masked_fill_(~keep, 0.0)


# --------------------------------------------------------------------------------------------
# the logits-level fused node, for every backend
# --------------------------------------------------------------------------------------------

#: ``blocks(zs, zt, y, r, opts, loss_out, gs, gt)``: a backend's row rule on ``(N, V)`` logits
#: (``kernels/cpu/distillation.py``'s :func:`blocks_` states the contract)
Blocks = Callable[..., None]


def distillation_forward(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    want: tuple[bool, bool],
    blocks: Blocks,
    empty: Callable[..., Tensor],
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The reduced loss and the gradients of ``(student, teacher)`` that ``want`` asks for (None
    otherwise), for grad_output = 1 (each row unscaled for ``'none'``: its grad_output comes
    later), without autograd: what :class:`DistillationFunction` and the custom op
    ``losskit::distillation`` run. ``blocks`` and ``empty(n, v, dtype, device)`` are the
    backend's row rule and gradient buffers."""
    rows = count_positions(
        target, student.shape[0], student.device, ignore_index=opts.ignore_index,
        reduction=opts.reduction, mask=mask, normalizer=normalizer,
    )  # fmt: skip
    y = None if opts.alpha == 0.0 else rows.y
    gs = empty(*student.shape, student.dtype, student.device) if want[0] else None
    gt = empty(*teacher.shape, teacher.dtype, teacher.device) if want[1] else None
    loss_rows = torch.empty(student.shape[0], dtype=_F32, device=student.device)
    blocks(student, teacher, y, rows.factor(), opts, loss_rows, gs, gt)
    return rows.reduce(loss_rows, student.dtype), gs, gt


def _scale_rows(g: Tensor, grad_rows: Tensor) -> None:
    """``'none'``: each row's gradient times its own grad_output."""
    g.mul_(grad_rows.reshape(-1, 1).to(g.dtype))


class DistillationFunction(torch.autograd.Function):
    """Autograd node of the fused logits-level distillation: the gradients are computed in the
    forward (unscaled per row for ``'none'``) and scaled by ``grad_output`` in the backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None,
        mask: Tensor | None,
        normalizer: Tensor | None,
        opts: DistillationOptions,
        recompute: Recompute | None,
        backend: tuple[Blocks, Callable, Callable],
    ) -> Tensor:
        blocks, scale, empty = backend
        want = tuple(bool(f) for f in ctx.needs_input_grad[:2])
        loss, gs, gt = distillation_forward(
            student, teacher, target, opts=opts, mask=mask, normalizer=normalizer, want=want,
            blocks=blocks, empty=empty,
        )  # fmt: skip
        ctx.grads = [gs, gt]
        ctx.scale = _scale_rows if opts.reduction == "none" else scale
        ctx.recompute = recompute or Recompute("distillation")
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            return second_order(ctx, grad_loss)
        return hand_over(ctx, grad_loss, ctx.scale, loss="distillation loss")


def run_distillation(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    opts: DistillationOptions,
    mask: Tensor | None,
    normalizer: Tensor | None,
    recompute: Recompute | None,
    blocks: Blocks,
    scale: Callable[[Tensor, Tensor], None],
    empty: Callable[..., Tensor],
) -> Tensor:
    """A backend's fused logits-level loss: its ``blocks`` and ``scale_`` (``t *= grad_output``)
    and ``empty(n, v, dtype, device)`` (its gradient buffers), on the rows of the call."""
    if torch.is_grad_enabled() and (student.requires_grad or teacher.requires_grad):
        return DistillationFunction.apply(
            student, teacher, target, mask, normalizer, opts, recompute, (blocks, scale, empty)
        )
    loss, _, _ = distillation_forward(
        student, teacher, target, opts=opts, mask=mask, normalizer=normalizer,
        want=(False, False), blocks=blocks, empty=empty,
    )  # fmt: skip
    return loss
