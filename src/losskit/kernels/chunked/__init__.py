"""The chunked engine of a fused linear + loss: the ``(N, V)`` logits never exist at once.

Backend-neutral: the planner, the budgets, the chunk loop and the ``autograd.Function`` are written
once here in torch ops (the GEMMs are torch's: MKL on the CPU, cuBLAS on CUDA), and a backend
supplies only the *epilogue* (:class:`Epilogue`): the loss and softmax-gradient of a block of
logits, in place. ``kernels/cpu/linear_cross_entropy.py`` holds the CPU epilogue and
``kernels/triton/linear_cross_entropy.py`` the Triton one; ``kernels/CONTRACT.md`` states what an
epilogue receives and must do.

Algorithm (``x`` the ``(N, D)`` hidden states, ``W`` the ``(V, D)`` head, ``M`` rows per chunk):

1. Per row, once (:func:`losskit._reduction.count_rows`): does it count (``target !=
   ignore_index`` and ``mask``), its class weight and the reduction factor ``r`` (``1/D`` for
   ``'mean'``), all ``(N,)``-sized.
2. For each chunk of ``M`` rows (*whole-row plan*):

   a. ``z = x_c @ W.T (+ b)`` into one reused ``(M, V)`` buffer (GEMM);
   b. the epilogue turns ``z`` into ``g = r * dloss/dz`` in place and writes the row losses;
   c. ``dX_c = g @ W`` (GEMM) straight into the returned ``dX``;
   d. ``dW += g.T @ x_c`` (GEMM; the first chunk writes, later ones add) and ``db += sum_rows g``.

3. When the budget leaves fewer than :data:`MIN_ROWS` rows per chunk (the ``dW`` GEMM would then
   read and write all of ``dW`` once per few rows and become memory-bound), the *tiled plan*
   splits each chunk of rows into vocabulary tiles too: a first sweep over the tiles computes
   the logits tile by tile and merges per-row online-softmax statistics (max, sum of exp, target
   logit, sum of ``w z``), a second sweep recomputes each tile's logits, turns them into the
   gradient and accumulates ``dX_c`` (in float32) and ``dW[tile]``. One more GEMM (four in all)
   buys a small, fixed buffer with few ``dW`` updates.

All gradients are computed in the forward for ``'mean'`` and ``'sum'``; the backward only scales
them by ``grad_output`` (nothing to do when it is 1). For ``'none'`` the forward computes the
losses only and the backward recomputes the chunks with the per-row ``grad_output`` folded into
``r``.

Precision. The epilogue works in float32 and rounds the gradient once to the input dtype, as
torch's cross-entropy on low-precision logits does. ``dX`` rows are single GEMMs, as in torch.
``dW`` is a sum over chunks: for float32 weights it accumulates in float32 in place; for
bfloat16/float16 weights it accumulates in a float32 ``(V, D)`` buffer when that fits the memory
budget (``accumulate="float32"``), else in the weights' dtype (``"input"``: rounded once per
chunk, so its error grows with the number of chunks; the default budget keeps them few).

Memory beyond the returned gradients: one ``(M, V)`` (or ``(M, tile)``) buffer in the input
dtype, the float32 ``dW`` accumulator when chosen, float32 ``(M, D)`` for the tiled plan in low
precision, and ``O(N + V)`` vectors. :func:`plan_chunks` sizes ``M`` from the budget, less,
on the CPU, what the process gains outside those buffers (:func:`cpu_reserve`: MKL's GEMM
scratch, kept small by computing the logits in column panels, and the first call's code pages).
The CPU chunk buffer is a mapping of its own (:func:`losskit.kernels.cpu.memory.own_mapping`).

Equivalent to::

    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, W, b), target, weight,
                                      ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=label_smoothing)

plus losskit's ``mask``, ``normalizer``, ``z_loss`` and ``softcap``.
"""

from .engine import LinearCrossEntropyFunction, linear_cross_entropy, run_chunks
from .epilogue import Chunk, Epilogue, PairEpilogue
from .pairs import LinearDistillationFunction, linear_distillation
from .plan import (
    BUDGETS,
    MIN_ROWS,
    SEQUENCE_BUDGETS,
    TILE_ALIGN,
    TILE_ROWS,
    ChunkPlan,
    budget_bytes,
    cpu_reserve,
    plan_chunks,
    plan_pairs,
    plan_sequences,
)
from .sequences import LinearSequenceFunction, Sequences, linear_sequences

__all__ = [
    "BUDGETS",
    "Chunk",
    "ChunkPlan",
    "Epilogue",
    "LinearCrossEntropyFunction",
    "LinearDistillationFunction",
    "LinearSequenceFunction",
    "MIN_ROWS",
    "PairEpilogue",
    "SEQUENCE_BUDGETS",
    "Sequences",
    "TILE_ALIGN",
    "TILE_ROWS",
    "budget_bytes",
    "cpu_reserve",
    "linear_cross_entropy",
    "linear_distillation",
    "linear_sequences",
    "plan_chunks",
    "plan_pairs",
    "plan_sequences",
    "run_chunks",
]
