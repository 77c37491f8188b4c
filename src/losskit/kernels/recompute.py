"""Second-order gradients through a fused path: recompute the gradient with differentiable ops.

A fused loss computes its gradient in the forward (the backward only scales it), and keeps no
input alive that it does not need: the logits of ``cross_entropy``, the hidden states of
``linear_cross_entropy`` are freed as soon as nothing else holds them. That gradient is a plain
tensor with no graph behind it, so under ``create_graph=True`` (gradient penalties, MAML,
Hessian-vector products, ``torch.func``-free double backward) handing it back would give a
silently wrong second derivative.

Instead, the backward of every fused ``autograd.Function`` starts with::

    if torch.is_grad_enabled():          # the engine runs backward in grad mode iff create_graph
        return second_order(ctx, grad_output)

and, where its forward computed the gradients, ends with :func:`hand_over`: the one rule by
which those gradients are scaled by ``grad_output`` and given to autograd once.

:class:`Recompute` holds the public entry's inputs (strongly when small, see
:data:`KEEP_BYTES`, else by weak reference) and a ``build`` function that rebuilds, from them and
with differentiable plain-torch ops, the tensors the kernel received and the loss the reference
path computes. Its gradients are then ``torch.autograd.grad(loss, inputs, grad_output,
create_graph=True)``: the reference's gradient, itself differentiable, so the second derivative is
torch's. Where the inputs are gone (freed, overwritten by ``inplace_backward``, changed in place)
it raises :class:`~losskit.LossValueError` naming the input and the fix, never a wrong number.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .._validate import LossValueError, shape_str

__all__ = ["KEEP_BYTES", "Recompute", "hand_over", "second_order"]

#: Inputs up to this size are kept alive for a possible second-order backward (what small models,
#: the ones that differentiate twice, pass); larger ones are held by weak reference only, so a
#: language model's logits are still freed after the forward.
KEEP_BYTES = 16 << 20

Build = Callable[..., tuple[Sequence[Tensor | None], Tensor]]


class Recompute:
    """How a fused call's backward differentiates twice (see the module docstring).

    Args:
        op: the public function's name, for messages (``"cross_entropy"``).
        sources: the public entry's differentiable inputs by argument name (None allowed).
        build: ``build(**sources) -> (inputs, loss)``: the kernel's differentiable inputs, in the
            order of the ``autograd.Function``'s arguments, and the loss (the Function's output
            shape), both made from ``sources`` with differentiable ops.
        unavailable: when set, the call cannot be differentiated twice; ``gradients`` raises
            with this reason.
    """

    def __init__(
        self,
        op: str,
        sources: Mapping[str, Tensor | None] | None = None,
        build: Build | None = None,
        *,
        unavailable: str = "",
    ) -> None:
        self.op = op
        self.build = build
        self.unavailable = unavailable
        # name -> (the tensor if kept, a weak reference if not, its version, its shape)
        self._held: dict[str, tuple[Tensor | None, weakref.ref | None, int, torch.Size]] = {}
        for name, t in (sources or {}).items():
            if t is None:
                self._held[name] = (None, None, 0, torch.Size())
            elif t.numel() * t.element_size() <= KEEP_BYTES:
                self._held[name] = (t, None, t._version, t.shape)
            else:
                self._held[name] = (None, weakref.ref(t), t._version, t.shape)

    @classmethod
    def unsupported(cls, op: str, reason: str) -> Recompute:
        """A Recompute that raises ``reason`` under ``create_graph=True``."""
        return cls(op, unavailable=reason)

    def _sources(self) -> dict[str, Tensor | None]:
        out: dict[str, Tensor | None] = {}
        for name, (strong, ref, version, shape) in self._held.items():
            t = strong if ref is None else ref()
            if t is None and ref is not None:
                raise LossValueError(
                    f"create_graph=True through the fused {self.op}: its gradient was computed in "
                    f"the forward without a graph, so a second-order gradient recomputes it from "
                    f"{name}, but {name} (shape {shape_str(shape)}) has been freed since the "
                    f"forward (nothing else held it). Keep a reference to {name} until the "
                    "backward, or pass impl='reference'"
                )
            if t is not None and t._version != version:
                raise LossValueError(
                    f"create_graph=True through the fused {self.op}: a second-order gradient "
                    f"recomputes from {name}, but {name} was modified in place after the forward; "
                    "pass impl='reference'"
                )
            out[name] = t
        return out

    def gradients(
        self, grad_output: Tensor, needs_input_grad: Sequence[bool]
    ) -> tuple[Tensor | None, ...]:
        """The gradients of the Function's inputs, differentiable (``create_graph=True``).

        Returns one entry per argument of the ``autograd.Function`` (None past the inputs that
        ``build`` returns and where no gradient is needed).
        """
        if self.unavailable or self.build is None:
            raise LossValueError(
                f"create_graph=True through the fused {self.op} is not supported here: "
                f"{self.unavailable or 'the kernel was called without a recompute rule'}; "
                "pass impl='reference' to differentiate twice"
            )
        sources = self._sources()
        with torch.enable_grad():
            inputs, loss = self.build(**sources)
        wanted = [
            i
            for i, t in enumerate(inputs)
            if t is not None
            and t.requires_grad
            and i < len(needs_input_grad)
            and needs_input_grad[i]
        ]
        grads = torch.autograd.grad(
            loss,
            [inputs[i] for i in wanted],
            grad_output.to(loss.dtype),
            create_graph=True,
            allow_unused=True,
        )
        out: list[Tensor | None] = [None] * len(needs_input_grad)
        for i, g in zip(wanted, grads, strict=True):
            out[i] = g if g is not None else torch.zeros_like(inputs[i])
        return tuple(out)

    def release(self) -> None:
        """Drop the inputs (after the one backward that needs no second order)."""
        self._held = {}
        self.build = None
        self.unavailable = "the graph was already differentiated once"


def second_order(ctx, grad_output: Tensor, *, keep: bool = False) -> tuple[Tensor | None, ...]:
    """The backward under ``create_graph=True``: ``ctx.recompute``'s differentiable gradients,
    the forward's own (``ctx.grads``) dropped unless ``keep`` (a retained graph's later
    backward may still want them)."""
    if not keep:
        ctx.grads = None
    return ctx.recompute.gradients(grad_output, ctx.needs_input_grad)


def hand_over(
    ctx,
    grad_output: Tensor,
    scale: Callable[[Tensor, Tensor], None],
    *,
    loss: str,
    again: str = "the loss computed again, or impl='reference'",
    keep: bool = False,
) -> tuple[Tensor | None, ...]:
    """The backward of a fused ``autograd.Function`` whose forward computed the gradients for
    ``grad_output = 1`` (``ctx.grads``, in the order of its inputs): each scaled in place by
    ``scale(t, grad_output)`` and given to autograd, which takes the buffer as ``.grad`` without
    a copy; one entry per input of the Function (None past the gradients).

    They are handed over once: ``ctx.grads`` and the recompute rule's inputs are dropped, and a
    second backward through the same graph raises, saying it needs ``again``; with ``keep``
    (``allow_retain_graph``) scaled copies go out and the originals stay for the next one.
    """
    grads = ctx.grads
    if grads is None:
        raise RuntimeError(
            f"losskit's fused {loss} computes its gradients once, in the forward, and hands them "
            f"to the first backward; a second backward through the same graph "
            f"(retain_graph=True) needs {again}"
        )
    if keep:
        grads = [None if t is None else t.clone() for t in grads]
    else:
        ctx.grads = None
        ctx.recompute.release()
    for t in grads:
        if t is not None and t.numel():
            scale(t, grad_output)
    return (*grads, *(None,) * (len(ctx.needs_input_grad) - len(grads)))
