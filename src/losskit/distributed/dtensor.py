"""DTensor inputs: the layout torch's ``loss_parallel()`` takes, turned into per-rank shards.

:func:`~losskit.distributed.vocab_parallel_cross_entropy` and
:func:`~losskit.distributed.vocab_parallel_linear_cross_entropy` also take
:class:`~torch.distributed.tensor.DTensor` inputs, as ``torch.distributed.tensor.parallel.
loss_parallel()`` does: the logits sharded on their class (last) dimension over a 1-D
``DeviceMesh`` (``Shard(-1)``), or the head's weight (and bias) sharded on its rows
(``Shard(0)``) with replicated hidden states; the target, class weights, mask and normalizer
plain or ``Replicate()``. :func:`unwrap` checks those placements (every rank holds the same
DTensor metadata, so a bad placement raises on every rank, before any collective), takes the
process group from the mesh and each rank's first class from the placement (``torch.chunk``'s
split, uneven where the vocabulary does not divide by the mesh size), and hands the loss the
local tensors through the differentiable ``to_local()``, so that the gradients reach the DTensor
inputs with their placements. :meth:`Unwrapped.wrap` returns the loss as a ``Replicate()``
DTensor on the mesh, as ``loss_parallel()`` does on a 1-D mesh for every reduction.

``torch.distributed.tensor`` is never imported here: a DTensor exists only once that module has
been imported, so :func:`is_dtensor` looks it up in ``sys.modules``, and plain-tensor calls pay
one dictionary lookup.

:func:`refuse_dtensor_head` is the check for :func:`losskit.functional.linear_cross_entropy`,
which takes the whole head: FSDP2 (``fully_shard``) keeps a parameter as a ``Shard(0)`` DTensor
outside the forward of the module it wraps.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import Tensor

from .. import _validate as V

__all__ = ["Unwrapped", "is_dtensor", "refuse_dtensor_head", "unwrap"]

_MODULE = "torch.distributed.tensor"


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a DTensor, without importing ``torch.distributed.tensor``."""
    module = sys.modules.get(_MODULE)
    return module is not None and isinstance(value, module.DTensor)


def _describe(name: str, x: Any) -> str:
    mesh = x.device_mesh
    return (
        f"{name} is a DTensor of shape {V.shape_str(x.shape)} with placements "
        f"{tuple(x.placements)} on a {mesh.ndim}-D DeviceMesh of shape {tuple(mesh.shape)}"
    )


@dataclass(frozen=True)
class Unwrapped:
    """A call's DTensors as local tensors, and what the mesh tells the loss."""

    mesh: Any  #: the 1-D DeviceMesh
    group: dist.ProcessGroup  #: the mesh's process group
    vocab_start: int  #: this rank's first class
    sharded: dict[str, Tensor | None]  #: the class-sharded inputs, local (differentiable)
    replicated: dict[str, Any]  #: the other inputs, local where they were DTensors

    def wrap(self, out: Tensor | tuple[Tensor, Tensor]) -> Any:
        """The loss (and z term) as ``Replicate()`` DTensors on the mesh, as ``loss_parallel``
        returns them; the backward of ``from_local`` hands the local gradient back."""
        from torch.distributed.tensor import DTensor, Replicate

        def one(t: Tensor) -> Any:
            return DTensor.from_local(t, self.mesh, [Replicate()], run_check=False)

        return tuple(one(t) for t in out) if isinstance(out, tuple) else one(out)


def _shard_start(name: str, x: Any, dim: int) -> int:
    """The first index of this rank's part of ``x``'s dimension ``dim`` (``torch.chunk``'s
    split, as DTensor's ``Shard`` makes it: ``ceil(V / world)`` each, the last parts smaller
    or empty)."""
    coordinate = x.device_mesh.get_coordinate()
    if coordinate is None:
        raise V.LossValueError(f"{_describe(name, x)}, and this rank is not in that mesh")
    size, world = x.shape[dim], x.device_mesh.size()
    return min(coordinate[0] * -(-size // world), size)


def _check_sharded(name: str, x: Any, dim: int, what: str) -> None:
    """``x`` is a DTensor on a 1-D mesh with placements ``(Shard(dim),)``."""
    from torch.distributed.tensor import Shard

    expected = f"placements (Shard({dim}),) ({what}) on a 1-D DeviceMesh"
    if x.device_mesh.ndim != 1:
        raise V.LossValueError(
            f"{_describe(name, x)}; expected {expected}: pass the tensor-parallel dimension's "
            "1-D submesh (e.g. mesh['tp'])"
        )
    (p,) = x.placements
    if type(p) is not Shard or p.dim % max(x.ndim, 1) != dim:
        hint = ""
        if type(p) is Shard and name == "logits_shard":
            hint = (
                "; a split of the tokens is data parallelism: give each rank's local logits to "
                "losskit.functional.cross_entropy with normalizer=global_count(...)"
            )
        elif p.is_partial():
            hint = "; a Partial tensor holds summands, not a slice: redistribute it first"
        raise V.LossValueError(f"{_describe(name, x)}; expected {expected}{hint}")


def _local_replicated(name: str, x: object, lead: str, mesh: Any) -> object:
    """``x`` itself, or the local tensor of a ``Replicate()`` DTensor on ``mesh``."""
    if not is_dtensor(x):
        return x
    if x.device_mesh != mesh or not all(p.is_replicate() for p in x.placements):
        raise V.LossValueError(
            f"{_describe(name, x)}; expected a plain tensor (the same on every rank) or a "
            f"DTensor with placements (Replicate(),) on {lead}'s mesh"
        )
    return x.to_local()


def unwrap(
    sharded: Mapping[str, tuple[object, int, str]],
    replicated: Mapping[str, object],
    *,
    group: dist.ProcessGroup | None,
    vocab_start: int | None,
) -> Unwrapped | None:
    """The local tensors of a call with DTensor inputs (None when it has none).

    ``sharded`` maps each class-sharded argument's name to ``(value, dim, what)``: the first one
    (the logits, or the head's weight) must be a DTensor if any argument is; the others (the
    head's bias) may be None. ``replicated`` maps the other arguments (plain or ``Replicate()``).
    Every check here reads DTensor metadata, the same on every rank, so every rank raises alike
    before any collective.
    """
    values = [v for v, _, _ in sharded.values()] + list(replicated.values())
    if not any(is_dtensor(v) for v in values):
        return None
    (lead, (x, dim, what)), *rest = sharded.items()
    if not is_dtensor(x):
        named = {**{n: v for n, (v, _, _) in sharded.items()}, **replicated}
        given = next(n for n, v in named.items() if is_dtensor(v))
        raise V.LossTypeError(
            f"{given} is a DTensor but {lead} is a plain {type(x).__name__}: give {lead} as a "
            f"DTensor with placements (Shard({dim}),) ({what}), or plain per-rank tensors "
            "everywhere"
        )
    dim = dim % x.ndim if x.ndim else dim
    _check_sharded(lead, x, dim, what)
    mesh = x.device_mesh
    local: dict[str, Tensor | None] = {lead: x.to_local()}
    for name, (value, vdim, vwhat) in rest:
        if value is None:
            local[name] = None
            continue
        if not is_dtensor(value) or value.device_mesh != mesh:
            got = "a plain tensor" if not is_dtensor(value) else "a DTensor on another mesh"
            raise V.LossTypeError(
                f"{name} is {got}, but {lead} is a DTensor: give {name} as a DTensor with "
                f"placements (Shard({vdim}),) ({vwhat}) on {lead}'s mesh, or None"
            )
        _check_sharded(name, value, vdim, vwhat)
        local[name] = value.to_local()
    mesh_group = mesh.get_group(0)
    if group is not None and group is not mesh_group:
        raise V.LossValueError(
            f"group was given, but {lead} is a DTensor: its mesh names the group; leave group None"
        )
    if vocab_start is not None:
        raise V.LossValueError(
            f"vocab_start={vocab_start} was given, but {lead} is a DTensor: its placement places "
            "the slice; leave vocab_start None"
        )
    others = {name: _local_replicated(name, v, lead, mesh) for name, v in replicated.items()}
    return Unwrapped(mesh, mesh_group, _shard_start(lead, x, dim), local, others)


def refuse_dtensor_head(input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None) -> None:
    """Raise for DTensor inputs of :func:`losskit.functional.linear_cross_entropy`.

    It takes the whole head. FSDP2 (``fully_shard``) all-gathers a module's parameters for
    that module's forward only: outside it (or inside a parent's forward, when the head is a
    ``fully_shard`` unit of its own) ``head.weight`` is a ``Shard(0)`` DTensor, and a gradient
    computed from it by hand would bypass FSDP2's reduce-scatter and its divide factor.
    """
    for name, x in (
        ("input", input),
        ("linear_weight", linear_weight),
        ("linear_bias", linear_bias),
    ):
        if not is_dtensor(x):
            continue
        fix = (
            "linear_cross_entropy takes plain tensors (the whole head). Under FSDP2 "
            "(fully_shard), call it inside the forward of the module that fully_shard wraps "
            "and whose parameter this is: there the weight is all-gathered into a plain tensor "
            "and FSDP2 reduce-scatters its gradient (a head that is its own fully_shard unit "
            "needs the loss in the head module's own forward). For a head split by classes over "
            "a tensor-parallel mesh with the same hidden states on every rank, use "
            "losskit.distributed.vocab_parallel_linear_cross_entropy, which takes DTensors"
        )
        raise V.LossTypeError(f"{_describe(name, x)}; {fix}")
