"""The chunk loop, its ``autograd.Function`` and the backend-neutral launcher (see the package
docstring for the algorithm)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..._reduction import Rows, count_rows
from ..._validate import CrossEntropyOptions
from ..cpu.memory import empty_rows, own_mapping
from ..recompute import Recompute, hand_over, second_order
from .epilogue import Chunk, Epilogue
from .plan import LOGITS_PANEL, ChunkPlan

__all__ = [
    "Head",
    "LinearCrossEntropyFunction",
    "backward_rows",
    "forward",
    "linear_cross_entropy",
    "run_chunks",
]

_F32 = torch.float32


# --------------------------------------------------------------------------------------------
# GEMMs
# --------------------------------------------------------------------------------------------

_MIXED_MM = {"ok": True}


def _mm_acc(out: Tensor, a: Tensor, b: Tensor, first: bool, *, exact: bool = True) -> None:
    """``out = a @ b`` (``first``) or ``out += a @ b``; ``out`` may be float32 with half ``a, b``.

    Mixed precision uses the GEMM's float32 output (``out_dtype``, CUDA) where torch has it.
    Elsewhere: float32 copies of the operands (``exact``: the ``dW`` accumulator, whose
    temporaries the planner counts), or the product in the operands' dtype added to ``out`` (one
    extra rounding of each partial product: the tiled ``dX``, whose operands are large and
    product small).
    """
    if out.dtype == a.dtype:
        if first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
        return
    if out.is_cuda and _MIXED_MM["ok"]:
        try:
            if first:
                torch.mm(a, b, out_dtype=out.dtype, out=out)
            else:
                torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
            return
        except (RuntimeError, TypeError):  # this torch has no mixed-precision GEMM
            _MIXED_MM["ok"] = False
    if exact:
        a32, b32 = a.to(out.dtype), b.to(out.dtype)
        if first:
            torch.mm(a32, b32, out=out)
        else:
            out.addmm_(a32, b32)
    elif first:
        out.copy_(torch.mm(a, b))
    else:
        out.add_(torch.mm(a, b))


def _empty(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A gradient buffer; huge-page backed on the CPU when large (one page fault per 2 MiB)."""
    if device.type == "cpu":
        return empty_rows(n, d, dtype)
    return torch.empty((n, d), dtype=dtype, device=device)


def _chunk_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The chunk's ``(M, V)`` buffer; on the CPU a mapping of its own, unmapped when freed."""
    if device.type == "cpu":
        return own_mapping(numel, dtype)
    return torch.empty(numel, dtype=dtype, device=device)


def _logits(z: Tensor, x: Tensor, w: Tensor, bias: Tensor | None) -> None:
    """``z = x @ w.T (+ bias)``; on the CPU in panels of :data:`LOGITS_PANEL` columns.

    Each panel is written in place into its column slice of ``z`` (a BLAS leading dimension of
    ``z.shape[1]``: no copy), so the panels change the GEMM's scratch, not the result.
    """
    v = z.shape[1]
    step = LOGITS_PANEL if z.device.type == "cpu" else v
    for c0 in range(0, v, step):
        c1 = min(c0 + step, v)
        zp = z if c1 - c0 == v else z[:, c0:c1]
        wp = w if c1 - c0 == v else w[c0:c1]
        if bias is None:
            torch.mm(x, wp.t(), out=zp)
        else:
            torch.addmm(bias[c0:c1], x, wp.t(), out=zp)


class Head:
    """One linear head ``x @ w.T (+ bias)`` of a chunked loss: the logits of a chunk of rows,
    and the gradients ``(dX, dW, db)`` that its chunks' logit gradients add up to.

    ``want`` says which of ``dX, dW, db`` to compute (``db`` only with a bias); ``dW``
    accumulates in float32 or in the weights' dtype, as ``plan.accumulate`` says.
    """

    def __init__(
        self, x: Tensor, w: Tensor, bias: Tensor | None, want: tuple[bool, ...], plan: ChunkPlan
    ) -> None:
        n, d = x.shape
        v, dev = w.shape[0], x.device
        self.x, self.w, self.bias = x, w, bias
        want_x, want_w, want_b = (bool(f) for f in want)
        self.want = (want_x, want_w, want_b and bias is not None)
        self.any = any(self.want)
        acc_dtype = _F32 if plan.accumulate == "float32" else x.dtype
        self.dx = _empty(n, d, x.dtype, dev) if want_x else None
        self.dw = None
        if want_w:
            self.dw = (
                torch.zeros((v, d), dtype=acc_dtype, device=dev) if n == 0
                else _empty(v, d, acc_dtype, dev)
            )  # fmt: skip
        self.db = torch.zeros(v, dtype=_F32, device=dev) if self.want[2] else None

    def logits(self, z: Tensor, i: int, j: int) -> None:
        """``z = x[i:j] @ w.T (+ bias)`` (whole rows)."""
        _logits(z, self.x[i:j], self.w, self.bias)

    def backprop(self, g: Tensor, i: int, j: int) -> None:
        """Rows ``[i, j)``' logit gradient ``g``: ``dX[i:j] = g @ w``, ``dW += g.T @ x[i:j]``
        (the first chunk writes), ``db += sum_rows g``."""
        if self.dx is not None:
            torch.mm(g, self.w, out=self.dx[i:j])
        if self.dw is not None:
            _mm_acc(self.dw, g.t(), self.x[i:j], i == 0)
        if self.db is not None:
            self.db.add_(g.sum(0, dtype=_F32))

    def backprop_ranges(self, g: Tensor, xc: Tensor, ranges: list[tuple[int, int]]) -> None:
        """:meth:`backprop` of a chunk made of several row ranges (in order), whose rows of
        ``x`` are gathered in ``xc``: ``dX`` per range, ``dW`` in one GEMM (the first range
        starting at row 0 writes)."""
        o = 0
        if self.dx is not None:
            for a, b in ranges:
                torch.mm(g[o : o + b - a], self.w, out=self.dx[a:b])
                o += b - a
        if self.dw is not None:
            _mm_acc(self.dw, g.t(), xc, ranges[0][0] == 0)
        if self.db is not None:
            self.db.add_(g.sum(0, dtype=_F32))

    def grads(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(dX, dW, db)`` in the dtypes of ``x``, ``w`` and ``bias``."""
        dw, db = self.dw, self.db
        if dw is not None and dw.dtype != self.w.dtype:
            dw = dw.to(self.w.dtype)
        if db is not None:
            db = db.to(self.bias.dtype)
        return self.dx, dw, db


# --------------------------------------------------------------------------------------------
# The chunk loop
# --------------------------------------------------------------------------------------------


def run_chunks(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    mask: Tensor | None,
    rows: Rows,
    plan: ChunkPlan,
    epi: Epilogue,
    want: tuple[bool, bool, bool],
    row_scale: Tensor | None = None,
    z_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Row losses (float32, unscaled) and ``(dX, dW, db)`` for ``r`` (see the module docstring).

    ``rows`` is :func:`~losskit._reduction.count_rows` of ``target`` and ``mask``; ``want`` says
    which of ``dX, dW, db`` to compute; ``row_scale`` multiplies each row's gradient (the
    ``'none'`` backward); ``z_rows``, a float32 ``(N,)`` buffer or None, receives each row's z
    term ``c lse^2`` (``return_z_loss``; any value where the row does not count).
    """
    n, d = x.shape
    v = w.shape[0]
    dev, dtype = x.device, x.dtype
    head = Head(x, w, bias, want, plan)
    want_x, want_w, want_b = head.want
    dx, dw, db = head.dx, head.dw, head.db
    loss_rows = torch.empty(n, dtype=_F32, device=dev)
    m_rows, tile = plan.rows, min(plan.tile, v)
    buf = _chunk_buffer(min(m_rows, n) * tile, dtype, dev)

    for i in range(0, n, m_rows):
        j = min(i + m_rows, n)
        c = j - i
        xc = x[i:j]
        ck = Chunk.of(target, mask, rows, i, j, row_scale)
        if tile >= v:
            # Whole rows: logits, epilogue in place, then the gradient GEMMs.
            z = buf[: c * v].view(c, v)
            head.logits(z, i, j)
            epi.rows(z, ck, loss_rows[i:j], head.any, None if z_rows is None else z_rows[i:j])
            head.backprop(z, i, j)
            continue
        # Vocabulary tiles: sweep 1 for the row statistics, sweep 2 for the gradient.
        st = epi.new_stats(c, dev)
        for c0 in range(0, v, tile):
            c1 = min(c0 + tile, v)
            z = buf[: c * (c1 - c0)].view(c, c1 - c0)
            _logits(z, xc, w[c0:c1], None if bias is None else bias[c0:c1])
            epi.tile_stats(z, c0, ck, st)
        loss, lse = epi.finish_stats(st, ck)
        loss_rows[i:j] = loss
        if z_rows is not None:
            z_rows[i:j] = epi.z_term(lse)
        if not head.any:
            continue
        dx_acc = None
        if want_x:
            dx_acc = dx[i:j] if dtype == _F32 else torch.empty((c, d), dtype=_F32, device=dev)
        for c0 in range(0, v, tile):
            c1 = min(c0 + tile, v)
            z = buf[: c * (c1 - c0)].view(c, c1 - c0)
            _logits(z, xc, w[c0:c1], None if bias is None else bias[c0:c1])
            epi.tile_grad(z, c0, ck, lse)
            if want_x:
                _mm_acc(dx_acc, z, w[c0:c1], c0 == 0, exact=False)
            if want_w:
                _mm_acc(dw[c0:c1], z.t(), xc, i == 0)
            if want_b:
                db[c0:c1].add_(z.sum(0, dtype=_F32))
        if want_x and dx_acc is not dx[i:j]:
            dx[i:j].copy_(dx_acc)

    buf = z = None  # free the chunk buffer before the float32 dW accumulator is converted
    return (loss_rows, *head.grads())


def forward(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opts: CrossEntropyOptions,
    plan: ChunkPlan,
    epi: Epilogue,
    want: tuple[bool, bool, bool],
    return_z_loss: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The reduced loss, the reduced z term (None without ``return_z_loss``) and ``(dX, dW, db)``
    for grad_output = 1 (None where ``want`` says no), without autograd: what
    :class:`LinearCrossEntropyFunction` and the custom op ``losskit::linear_cross_entropy`` run.
    ``weight`` is float32 or None."""
    rows = _count_rows(target, weight, mask, normalizer, opts)
    z_rows = _z_buffer(x, return_z_loss)
    loss_rows, dx, dw, db = run_chunks(
        x, w, bias, target, mask, rows, plan, epi, want, z_rows=z_rows
    )
    zterm = None if z_rows is None else rows.reduce(z_rows, x.dtype)
    return rows.reduce(loss_rows, x.dtype), zterm, dx, dw, db


def backward_rows(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opts: CrossEntropyOptions,
    plan: ChunkPlan,
    epi: Epilogue,
    want: tuple[bool, bool, bool],
    grad_rows: Tensor,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dX, dW, db)`` of ``reduction='none'`` for the rows' ``grad_output`` ``grad_rows``
    ``(N,)``: the chunks again, each row's gradient scaled by its ``grad_output``."""
    rows = _count_rows(target, weight, mask, normalizer, opts)
    _, dx, dw, db = run_chunks(
        x, w, bias, target, mask, rows, plan, epi, want, row_scale=grad_rows.to(_F32).reshape(-1)
    )
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Autograd node of the chunked linear + cross-entropy (any backend's epilogue).

    ``'mean'``/``'sum'``: the forward computes every gradient; the backward scales them by
    ``grad_output`` and hands them over once (a second backward raises). ``'none'``: the forward
    computes the losses; the backward recomputes the chunks with the per-row ``grad_output``.
    With ``return_z_loss`` the forward also returns the reduced z term, non-differentiable (it is
    part of the loss, whose gradient already holds its share).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        w: Tensor,
        bias: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        mask: Tensor | None,
        normalizer: Tensor | None,
        opts: CrossEntropyOptions,
        plan: ChunkPlan,
        epi: Epilogue,
        retain_graph: bool,
        recompute: Recompute | None,
        return_z_loss: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        want = tuple(bool(f) for f in ctx.needs_input_grad[:3])
        ctx.recompute = recompute or Recompute("linear_cross_entropy")  # no rule: raises
        if bias is None:
            want = (want[0], want[1], False)
        ctx.plan, ctx.epi, ctx.retain = plan, epi, retain_graph
        ctx.deferred = opts.reduction == "none"
        loss, zterm, dx, dw, db = forward(
            x, w, bias, target, weight, mask, normalizer, opts, plan, epi,
            (False, False, False) if ctx.deferred else want, return_z_loss,
        )  # fmt: skip
        if ctx.deferred:
            ctx.opts, ctx.target, ctx.weight = opts, target, weight
            ctx.mask, ctx.normalizer = mask, normalizer
            ctx.save_for_backward(x, w, bias)
            ctx.want = want
        else:
            ctx.grads = [dx, dw, db]
        if zterm is None:
            return loss
        ctx.mark_non_differentiable(zterm)
        return loss, zterm

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *unused: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            return second_order(ctx, grad_loss, keep=ctx.retain)
        if ctx.deferred:
            x, w, bias = ctx.saved_tensors
            dx, dw, db = backward_rows(
                x, w, bias, ctx.target, ctx.weight, ctx.mask, ctx.normalizer, ctx.opts,
                ctx.plan, ctx.epi, ctx.want, grad_loss,
            )  # fmt: skip
            return (dx, dw, db, *(None,) * 10)
        return hand_over(
            ctx, grad_loss, functools.partial(scale_gradient, ctx.epi), loss="linear_cross_entropy",
            again="options=torch.nn.LinearCrossEntropyOptions(allow_retain_graph=True) (one more "
            "copy of the gradients); or the loss computed again, or impl='reference'",
            keep=ctx.retain,
        )  # fmt: skip


def scale_gradient(epi: Epilogue, t: Tensor, grad_output: Tensor) -> None:
    """A gradient (a matrix, or a bias vector) times grad_output, by the epilogue's rule."""
    epi.scale_(t if t.dim() == 2 else t.unsqueeze(0), grad_output)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------


def _z_buffer(x: Tensor, return_z_loss: bool) -> Tensor | None:
    """The float32 ``(N,)`` buffer of the rows' z terms, or None without ``return_z_loss``."""
    return torch.empty(x.shape[0], dtype=_F32, device=x.device) if return_z_loss else None


def _count_rows(
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    normalizer: Tensor | None,
    opts: CrossEntropyOptions,
) -> Rows:
    return count_rows(
        target, ignore_index=opts.kernel_ignore_index, reduction=opts.reduction, weight=weight,
        mask=mask, normalizer=normalizer,
    )  # fmt: skip


def linear_cross_entropy(
    x: Tensor,
    w: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    normalizer: Tensor | None,
    mask: Tensor | None,
    plan: ChunkPlan,
    epilogue: Epilogue | Callable[[Tensor | None, int, CrossEntropyOptions], Epilogue],
    retain_graph: bool = False,
    recompute: Recompute | None = None,
    return_z_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Chunked ``cross_entropy(x @ w.T + bias, target)`` of validated 2-D inputs, with a
    backend's epilogue (the backends' launchers call this).

    .. math::
        \ell_i = (1-\epsilon) w_{y_i} (\mathrm{lse}_i - z'_{i,y_i})
                 + \frac{\epsilon}{V} \sum_c w_c (\mathrm{lse}_i - z'_{i,c}) + c\,\mathrm{lse}_i^2,
        \qquad z_i = x_i W^\top + b

    Args:
        x: ``(N, D)`` float32 / bfloat16 / float16, contiguous.
        w: ``(V, D)`` head weight, ``x``'s dtype and device, contiguous.
        target: ``(N,)`` int64 in ``[0, V)`` or equal to ``ignore_index``.
        bias: ``(V,)`` or None. weight: ``(V,)`` class weights or None.
        ignore_index, label_smoothing, z_loss, softcap, reduction: as ``cross_entropy``.
        normalizer: 0-dim float32 denominator for ``'mean'`` (0 gives 0), or None.
        mask: ``(N,)`` bool (True = counts), or None.
        plan: from :func:`~losskit.kernels.chunked.plan_chunks`.
        epilogue: the backend's :class:`~losskit.kernels.chunked.Epilogue`, built with the
            same options; or what builds it from ``(weight, V, options)`` (its class).
        retain_graph: keep the gradients for a second backward through the same graph (one more
            copy of them; torch's ``allow_retain_graph``). Default: the first backward takes them.
        recompute: how a ``create_graph=True`` backward recomputes differentiable gradients
            (:class:`~losskit.kernels.recompute.Recompute`); None: such a backward raises.
        return_z_loss: also return the z term ``c lse^2`` alone, reduced as the loss is (its
            ``'mean'`` divides by the same ``D``), without a gradient of its own.

    Shape:
        Output ``(N,)`` for ``'none'``, else ``()``; dtype of ``x`` (both outputs with
        ``return_z_loss``).

    Example:
        >>> from losskit.kernels.chunked import plan_chunks
        >>> from losskit.kernels.cpu.linear_cross_entropy import CpuEpilogue
        >>> x, w = torch.randn(6, 8, requires_grad=True), torch.randn(10, 8)
        >>> y = torch.tensor([1, 2, 3, 4, 5, 6])
        >>> plan = plan_chunks(6, 8, 10, x.dtype, "cpu", budget=1 << 20, chunk_size=4)
        >>> loss = linear_cross_entropy(x, w, y, bias=None, weight=None, ignore_index=-100,
        ...     label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
        ...     normalizer=None, mask=None, plan=plan, epilogue=CpuEpilogue)
        >>> ref = torch.nn.functional.cross_entropy(x @ w.T, y)
        >>> bool(torch.allclose(loss, ref))
        True
    """
    opts = CrossEntropyOptions(
        reduction, int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap),
    )  # fmt: skip
    if not isinstance(epilogue, Epilogue):
        epilogue = epilogue(weight, w.shape[0], opts)
    wf = None if weight is None else weight.to(_F32)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias)):
        return LinearCrossEntropyFunction.apply(
            x, w, bias, target, wf, mask, normalizer, opts, plan, epilogue, retain_graph,
            recompute, bool(return_z_loss),
        )  # fmt: skip
    loss, zterm, *_ = forward(
        x, w, bias, target, wf, mask, normalizer, opts, plan, epilogue, (False, False, False),
        return_z_loss,
    )  # fmt: skip
    return loss if zterm is None else (loss, zterm)
