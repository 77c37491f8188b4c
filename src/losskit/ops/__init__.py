"""losskit's fused paths as ``torch.library`` custom ops: what ``torch.compile`` and
``torch.export`` see.

Eager calls take the fused paths through their ``autograd.Function`` (``kernels/``), which also
serve ``create_graph=True``, ``retain_graph`` and ``inplace_backward``. A traced call (under
``torch.compile`` or ``torch.export``) takes the same kernels through the ops below instead: to
the compiler each is one opaque node with a fake (meta) implementation giving its outputs'
shapes, and a registered autograd formula, so ``fullgraph=True`` holds, ``dynamic=True`` keeps
the row count symbolic, and the kernels run at run time exactly as in eager mode (same numbers).

The ops (one file each here), their outputs, their backward:

- ``losskit::cross_entropy``: loss, z term, ``d logits`` for grad_output = 1; the backward
  scales the gradient by grad_output (per row for ``'none'``).
- ``losskit::linear_cross_entropy``: loss, z term, ``dX``, ``dW``, ``db``; the backward scales
  them; for ``'none'`` it runs ``losskit::linear_cross_entropy_backward`` (the chunks again,
  each row's gradient times its grad_output).
- ``losskit::distillation``: loss, ``d student``, ``d teacher`` (as the cross-entropy).
- ``losskit::linear_distillation``: loss and the seven heads' gradients ``(xs, ws, bs, xt, wt,
  bt, tl)``; ``'none'``: ``losskit::linear_distillation_backward``.
- ``losskit::linear_preference``: the preference / policy-gradient losses (DPO, ORPO, CPO,
  SimPO, KTO, GRPO; the rule carried as its name and numbers): loss, token log-probabilities,
  ``dX``, ``dW``, ``db``; ``'none'``: ``losskit::linear_preference_backward``.

The ``_backward`` ops have no derivative of their own (a second order raises).

Every op takes validated inputs in the kernels' layout (``kernels/CONTRACT.md``); the public
functions of :mod:`losskit.functional` validate and reshape, then, when tracing, call the
launcher of the loss's module here (``ops.linear_cross_entropy.linear_cross_entropy``: the
keywords of the kernels' launcher, as ``kernels.<backend>.<loss>`` has it). A gradient an op
does not compute comes back as an empty ``(0,)`` tensor (an op returns tensors, never None). The
op bodies read no tensor value on the host: no ``.item()``, no data-dependent branch
(``tests/ops`` runs them on ``FakeTensorMode`` tensors); the CPU row rules keep two host reads
that save a pass over the block (the cross-entropy's list of uncounted rows, whether every
distillation row counts), host code on the host's own memory. Under ``torch.compile``
a second-order gradient (``create_graph=True``) is not available (AOTAutograd's limit);
``inplace_backward=True`` gives the gradient a buffer of its own (a compiled graph may not
overwrite its input).

Importing this module registers the ops (``import losskit`` does not: the functional path
imports it on its first traced call). A program exported with them needs ``import losskit.ops``
where it is loaded.
"""

from __future__ import annotations

from . import cross_entropy, distillation, linear_cross_entropy, linear_preference

__all__ = ["cross_entropy", "distillation", "linear_cross_entropy", "linear_preference"]
