"""Losses over ``torch.distributed``: vocabulary-parallel cross-entropy and one global token mean.

Two problems, two tools:

- **Tensor (vocabulary) parallelism.** Each rank of a group holds a contiguous slice of the class
  dimension: ``logits[..., start:start + V_local]`` (or the head rows ``W[start:start + V_local]``)
  for the *same* tokens. :func:`vocab_parallel_cross_entropy` and
  :func:`vocab_parallel_linear_cross_entropy` return the loss of the full vocabulary while only
  per-row statistics cross the network, never logits:

  1. one ``all_gather`` of 10 integers per rank (shard sizes, row count, target range and
     checksum, a "my input is bad" flag) before anything else, so that a rank with bad input
     makes *every* rank raise instead of leaving the others waiting in a collective;
  2. one ``all_reduce(MAX)`` of the row maxima (N values);
  3. one ``all_reduce(SUM)`` of the rows' sum of exponentials, target logit and (with label
     smoothing) weighted logit sum (2 or 3 x N values).

  Everything else (the log-sum-exp, the z-loss term, the reduction) is computed redundantly on
  every rank from those N-vectors; the backward of the cross-entropy needs no communication (each
  rank's gradient is its slice of the single-device gradient). The linear form adds one
  ``all_reduce(SUM)`` of the input gradient (N x D) in the backward. Both also take DTensors
  laid out as torch's ``loss_parallel()`` takes them (logits ``Shard(-1)``, the head
  ``Shard(0)``, on a 1-D mesh) and then return a ``Replicate()`` DTensor (:mod:`.dtensor`).

- **Data parallelism.** :func:`global_count` all-reduces :func:`losskit.count_targets` so that
  ``normalizer=global_count(...)`` turns every rank's (and every micro-batch's) ``'mean'`` into a
  share of the single-process mean over the whole global batch. DDP and FSDP *average* gradients
  over the ranks, so multiply the loss by the world size before ``backward`` (or register
  :func:`sum_allreduce_hook`); see ``docs/distributed.md`` for the recipe.

The checks that concern one tensor live with the other input checks in :mod:`losskit._validate`;
the ones here need the whole group (every rank's shard size and targets) and exist only here.

One file per concern: ``group`` (the group's facts and the one exchange every call starts with),
``call`` (what both vocabulary-parallel losses share: their checks, the rows, the reduction),
``slices`` (the math of a vocabulary slice: row statistics, their combination, the gradient),
``cross_entropy`` and ``linear_cross_entropy`` (the two losses and their ``autograd.Function``),
``dtensor`` (DTensor inputs: placements checked, turned into local shards, the loss wrapped back),
``data_parallel`` (:func:`global_count`, :func:`sum_allreduce_hook`).
"""

from .cross_entropy import vocab_parallel_cross_entropy
from .data_parallel import global_count, sum_allreduce_hook
from .linear_cross_entropy import vocab_parallel_linear_cross_entropy

__all__ = [
    "global_count",
    "sum_allreduce_hook",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
