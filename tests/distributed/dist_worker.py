"""One rank of a gloo group on loopback, for ``test_distributed.py``.

Run as ``python dist_worker.py RANK WORLD STORE_DIR OUT_FILE``: joins the group through a file
store in ``STORE_DIR``, runs every distributed check (vocab-parallel cross-entropy and linear
cross-entropy cases, the DDP recipes, the bad-input cases) and writes what it computed to
``OUT_FILE`` with ``torch.save``. It asserts nothing: the test process builds the same inputs
with the builders below, computes the single-process reference, and compares.

One process group per world size serves every case, so process start-up is paid once.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
import traceback
import zlib

import torch

# --------------------------------------------------------------------------------------------
# cases (shared with the test process: pure functions of their name)
# --------------------------------------------------------------------------------------------

F64 = torch.float64

#: vocab-parallel cross-entropy: V classes, the target's shape, which extras, the loss options
CE_CASES: dict[str, dict] = {
    "plain": dict(V=11, shape=(7,)),
    "ignore_index": dict(V=11, shape=(9,), ignore=True),
    "ignore_index_in_range": dict(V=11, shape=(9,), ignore=True, opts=dict(ignore_index=3)),
    "weight": dict(V=11, shape=(8,), ignore=True, weight=True),
    "label_smoothing": dict(V=11, shape=(8,), ignore=True, opts=dict(label_smoothing=0.15)),
    "smoothing_weight": dict(
        V=11, shape=(8,), ignore=True, weight=True, opts=dict(label_smoothing=0.3)
    ),
    "z_loss": dict(V=11, shape=(8,), ignore=True, opts=dict(z_loss=0.02)),
    "softcap": dict(V=11, shape=(8,), opts=dict(softcap=1.5)),
    "mask": dict(V=11, shape=(9,), ignore=True, mask=True),
    "sum": dict(V=11, shape=(8,), ignore=True, weight=True, opts=dict(reduction="sum")),
    "none": dict(
        V=11,
        shape=(8,),
        ignore=True,
        weight=True,
        mask=True,
        opts=dict(reduction="none", label_smoothing=0.1),
    ),
    "normalizer_float": dict(V=11, shape=(8,), ignore=True, opts=dict(normalizer=5.0)),
    "normalizer_tensor": dict(V=11, shape=(8,), ignore=True, weight=True, normalizer=True),
    "everything": dict(
        V=13,
        shape=(10,),
        ignore=True,
        weight=True,
        mask=True,
        normalizer=True,
        opts=dict(label_smoothing=0.2, z_loss=0.05, softcap=2.0),
    ),
    "batch_time_3d": dict(
        V=11,
        shape=(2, 4),
        ignore=True,
        weight=True,
        mask=True,
        opts=dict(label_smoothing=0.1, z_loss=0.01, reduction="none"),
    ),
    "return_z_loss": dict(
        V=11, shape=(8,), ignore=True, mask=True, opts=dict(z_loss=0.1, return_z_loss=True)
    ),
    "vocab_start_reversed": dict(
        V=11,
        shape=(8,),
        ignore=True,
        weight=True,
        layout="reversed",
        opts=dict(label_smoothing=0.1),
    ),
    "empty_slice": dict(
        V=2,
        shape=(6,),
        layout="empty_last",
        weight=True,
        opts=dict(label_smoothing=0.2, z_loss=0.01),
    ),
    "large_logits": dict(V=11, shape=(6,), scale=300.0, opts=dict(z_loss=1e-4)),
    "masked_nan_row": dict(V=11, shape=(6,), mask=True, nan_masked=True),
    "masked_padding_index": dict(V=11, shape=(6,), mask=True, pad_masked=True),
    "minus_inf_last_classes": dict(
        V=11, shape=(7,), ignore=True, weight=True, neg_inf_tail=4, opts=dict(z_loss=0.01)
    ),
    "no_rows": dict(V=11, shape=(0,), opts=dict(reduction="sum")),
    "float32": dict(
        V=37,
        shape=(12,),
        ignore=True,
        weight=True,
        dtype="float32",
        opts=dict(label_smoothing=0.1, z_loss=0.01),
    ),
}

#: vocab-parallel linear cross-entropy: hidden size D too, and the chunk size
LCE_CASES: dict[str, dict] = {
    "plain_bias": dict(V=11, D=5, shape=(9,), bias=True, opts=dict(chunk_size=4)),
    "no_bias_default_chunk": dict(V=11, D=4, shape=(9,), ignore=True),
    "everything": dict(
        V=13,
        D=6,
        shape=(10,),
        bias=True,
        ignore=True,
        weight=True,
        mask=True,
        normalizer=True,
        opts=dict(label_smoothing=0.2, z_loss=0.05, softcap=2.0, chunk_size=3),
    ),
    "none_3d": dict(
        V=11, D=5, shape=(2, 5), bias=True, ignore=True, opts=dict(reduction="none", chunk_size=2)
    ),
    "sum_one_row_chunks": dict(
        V=11,
        D=3,
        shape=(5,),
        bias=True,
        weight=True,
        opts=dict(reduction="sum", chunk_size=1, label_smoothing=0.1),
    ),
}

#: DTensor inputs (``dtensor.py``), each compared with torch's ``loss_parallel()`` on the same
#: DTensor logits and with the single-process loss. ``lp``: how far loss_parallel (torch 2.13)
#: takes the call: True (loss and gradient), ``'forward'`` (its backward with class weights
#: gathers the weight at the raw target, so an ignored -100 raises IndexError) or False (label
#: smoothing is "currently not supported" there; an empty shard, V = 2 over 3 ranks, fails in
#: its gather). ``dt_inputs``: target and class weights as ``Replicate()`` DTensors too.
DT_CE_CASES: dict[str, dict] = {
    "mean": dict(V=11, shape=(9,), ignore=True),
    "mean_float32": dict(V=37, shape=(12,), ignore=True, dtype="float32"),
    "sum_weight": dict(V=11, shape=(8,), weight=True, opts=dict(reduction="sum")),
    "none_weight_float32": dict(
        V=13, shape=(8,), weight=True, dtype="float32", opts=dict(reduction="none")
    ),
    "weight_ignored_targets": dict(V=11, shape=(9,), ignore=True, weight=True, lp="forward"),
    "ignore_index_in_range": dict(
        V=11, shape=(9,), ignore=True, weight=True, dt_inputs=True, opts=dict(ignore_index=3)
    ),
    "batch_time_3d": dict(V=11, shape=(2, 4), weight=True),
    "none_3d": dict(V=5, shape=(2, 3), ignore=True, opts=dict(reduction="none")),
    "label_smoothing": dict(
        V=11, shape=(8,), ignore=True, mask=True, lp=False, opts=dict(label_smoothing=0.1)
    ),
    "empty_shard": dict(V=2, shape=(6,), weight=True, lp=False, opts=dict(z_loss=0.01)),
    # the mesh lists the ranks backwards: rank r holds the slice of mesh coordinate world-1-r
    "reversed_mesh": dict(
        V=11, shape=(7,), ignore=True, mesh="reversed", opts=dict(reduction="sum")
    ),
}

#: the DTensor head (``Shard(0)``); ``plain_input``: the hidden states as a plain tensor
DT_LCE_CASES: dict[str, dict] = {
    "bias_mean": dict(V=11, D=5, shape=(9,), bias=True, ignore=True, opts=dict(chunk_size=4)),
    "plain_input_weight_sum": dict(
        V=13, D=4, shape=(8,), weight=True, plain_input=True, opts=dict(reduction="sum")
    ),
    "bias_none_float32": dict(
        V=37, D=6, shape=(10,), bias=True, ignore=True, dtype="float32", opts=dict(reduction="none")
    ),
}

#: the DDP recipes: hidden sizes and each rank's two micro-batch sizes (uneven on purpose). DDP
#: pulls in torch._dynamo (seconds of import per process), so only the 3-process group runs it.
DDP_SHAPE = dict(D=5, H=6, C=7, micro_batches=2)
DDP_WORLDS = (3,)
DDP_RECIPES = ("scale_by_world", "sum_hook", "naive_local_mean")


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def split(num_classes: int, world: int, layout: str = "rank_order") -> list[tuple[int, int]]:
    """(start, size) of each rank's slice: near-even in rank order, reversed, or one empty."""
    if layout == "empty_last":
        sizes = [
            num_classes // (world - 1) + (r < num_classes % (world - 1)) for r in range(world - 1)
        ] + [0]
    else:
        sizes = [num_classes // world + (r < num_classes % world) for r in range(world)]
    order = list(range(world))[::-1] if layout == "reversed" else list(range(world))
    starts, edge = [0] * world, 0
    for r in order:
        starts[r], edge = edge, edge + sizes[r]
    return list(zip(starts, sizes, strict=True))


def _targets(spec: dict, gen: torch.Generator, ignore_index: int) -> torch.Tensor:
    shape, v = spec["shape"], spec["V"]
    target = torch.randint(0, v, shape, generator=gen)
    if spec.get("ignore"):
        drop = torch.rand(shape, generator=gen) < 0.3
        target = torch.where(drop, torch.full_like(target, ignore_index), target)
    return target


def _extras(spec: dict, gen: torch.Generator, dtype: torch.dtype) -> dict:
    """The tensor-valued loss options a case asks for (weight, mask, normalizer) plus opts."""
    kwargs = dict(spec.get("opts", {}))
    if spec.get("weight"):
        kwargs["weight"] = (torch.rand(spec["V"], generator=gen, dtype=F64) + 0.5).to(dtype)
    if spec.get("mask"):
        mask = torch.rand(spec["shape"], generator=gen) < 0.75
        if mask.numel():
            mask.view(-1)[0] = False
        kwargs["mask"] = mask
    if spec.get("normalizer"):
        kwargs["normalizer"] = torch.tensor(6)
    return kwargs


def build_ce(name: str, table: str = "") -> dict:
    """Full logits (``(*shape, V)``), target, loss kwargs and upstream gradient of a CE case
    (of ``CE_CASES``, or of ``DT_CE_CASES`` with ``table='dt'``)."""
    spec = DT_CE_CASES[name] if table == "dt" else CE_CASES[name]
    gen = _gen(table + name)
    dtype = getattr(torch, spec.get("dtype", "float64"))
    logits = torch.randn(*spec["shape"], spec["V"], generator=gen, dtype=F64)
    logits = (logits * spec.get("scale", 2.0)).to(dtype)
    kwargs = _extras(spec, gen, dtype)
    target = _targets(spec, gen, kwargs.get("ignore_index", -100))
    if spec.get("nan_masked"):
        logits[0] = float("nan")  # row 0 is masked out (see _extras)
    if spec.get("neg_inf_tail"):  # padded classes: the last rank's slice is all -inf
        logits[..., -spec["neg_inf_tail"] :] = -math.inf
        target = torch.where(target >= 0, target % (spec["V"] - spec["neg_inf_tail"]), target)
    if spec.get("pad_masked"):
        target[0] = spec["V"] + 5  # padding at a masked position: not an error
    reduced = kwargs.get("reduction", "mean") != "none"
    upstream = torch.rand(() if reduced else spec["shape"], generator=gen, dtype=F64) + 0.5
    return dict(logits=logits, target=target, kwargs=kwargs, upstream=upstream.to(dtype))


def build_lce(name: str, table: str = "") -> dict:
    """Full hidden states, head weight/bias, target, kwargs, upstream of a linear CE case
    (of ``LCE_CASES``, or of ``DT_LCE_CASES`` with ``table='dt'``)."""
    spec = DT_LCE_CASES[name] if table == "dt" else LCE_CASES[name]
    gen = _gen(table + "lce-" + name)
    dtype = getattr(torch, spec.get("dtype", "float64"))
    x = torch.randn(*spec["shape"], spec["D"], generator=gen, dtype=F64).to(dtype)
    head = torch.randn(spec["V"], spec["D"], generator=gen, dtype=F64).to(dtype)
    bias = torch.randn(spec["V"], generator=gen, dtype=F64).to(dtype) if spec.get("bias") else None
    kwargs = _extras(spec, gen, dtype)
    target = _targets(spec, gen, -100)
    reduced = kwargs.get("reduction", "mean") != "none"
    upstream = torch.rand(() if reduced else spec["shape"], generator=gen, dtype=F64) + 0.5
    return dict(
        input=x, head=head, bias=bias, target=target, kwargs=kwargs, upstream=upstream.to(dtype)
    )


def build_ddp(world: int) -> dict:
    """A small MLP's initial parameters and each rank's micro-batches (uneven sizes, ignores)."""
    gen = _gen(f"ddp-{world}")
    d, h, c, k = (DDP_SHAPE[key] for key in ("D", "H", "C", "micro_batches"))
    params = {
        "0.weight": torch.randn(h, d, generator=gen, dtype=F64),
        "0.bias": torch.randn(h, generator=gen, dtype=F64),
        "2.weight": torch.randn(c, h, generator=gen, dtype=F64),
        "2.bias": torch.randn(c, generator=gen, dtype=F64),
    }
    batches = []
    for r in range(world):
        mine = []
        for j in range(k):
            n = 2 + 3 * r + 2 * j
            x = torch.randn(n, d, generator=gen, dtype=F64)
            y = torch.randint(0, c, (n,), generator=gen)
            y[torch.rand(n, generator=gen) < 0.25] = -100
            mine.append((x, y))
        batches.append(mine)
    return dict(params=params, batches=batches)


def make_mlp(params: dict) -> torch.nn.Module:
    d, h, c = (DDP_SHAPE[key] for key in ("D", "H", "C"))
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, c))
    model = model.to(F64)
    model.load_state_dict(params)
    return model


def dtensor_split(num_classes: int, world: int) -> list[tuple[int, int]]:
    """(start, size) of each rank's part under DTensor's ``Shard``: ``torch.chunk``'s split."""
    chunk = -(-num_classes // world)
    starts = [min(r * chunk, num_classes) for r in range(world)]
    return [(a, min(num_classes, a + chunk) - a) for a in starts]


#: FSDP2 (``fully_shard``) on 2 processes: token ids -> embedding -> tanh(linear) -> the head,
#: whose loss is ``LF.linear_cross_entropy(hidden, head.weight, target)``; uneven per-rank token
#: counts, ``normalizer=global_count(...)`` and the FSDP recipe of docs/distributed.md.
FSDP_SHAPE = dict(ids=9, D=4, H=6, V=11)
FSDP_WORLDS = (2,)
#: where the loss runs and how FSDP2 is set up:
#: ``root``: one fully_shard unit, the loss in the model's forward, ``loss * world``;
#: ``root_divide_1``: the same with ``set_gradient_divide_factor(1.0)`` and no factor;
#: ``head_unit``: the head is a fully_shard unit of its own, the loss in the head's forward;
#: ``head_unit_outside``: that head, but the loss in the model's forward (``head.weight`` is then
#: a ``Shard(0)`` DTensor: linear_cross_entropy must raise, naming the fix);
#: ``head_unit_compiled``: ``head_unit`` in float32, the head compiled with ``fullgraph=True``
#: before ``fully_shard`` (as torchtitan compiles its blocks), the loss through the fused op
#: (``losskit::linear_cross_entropy``).
FSDP_VARIANTS = ("root", "root_divide_1", "head_unit", "head_unit_outside", "head_unit_compiled")


def build_fsdp(world: int) -> dict:
    """The tiny model's parameters and each rank's (ids, target) batch (uneven sizes)."""
    gen = _gen(f"fsdp-{world}")
    n_ids, d, h, v = (FSDP_SHAPE[k] for k in ("ids", "D", "H", "V"))
    params = {
        "emb.weight": torch.randn(n_ids, d, generator=gen, dtype=F64),
        "proj.weight": torch.randn(h, d, generator=gen, dtype=F64),
        "proj.bias": torch.randn(h, generator=gen, dtype=F64),
        "head.weight": torch.randn(v, h, generator=gen, dtype=F64),
    }
    batches = []
    for r in range(world):
        n = 5 + 3 * r
        ids = torch.randint(0, n_ids, (n,), generator=gen)
        y = torch.randint(0, v, (n,), generator=gen)
        y[torch.rand(n, generator=gen) < 0.25] = -100
        batches.append((ids, y))
    return dict(params=params, batches=batches)


class LossHead(torch.nn.Linear):
    """A head whose forward is the loss, so that FSDP2 all-gathers its weight for it."""

    impl = "auto"

    def forward(self, hidden, target, normalizer=None):
        import losskit.functional as LF

        return LF.linear_cross_entropy(
            hidden, self.weight, target, normalizer=normalizer, impl=self.impl
        )


class TinyLM(torch.nn.Module):
    def __init__(self, params: dict, loss_in_head: bool) -> None:
        super().__init__()
        n_ids, d, h, v = (FSDP_SHAPE[k] for k in ("ids", "D", "H", "V"))
        self.emb = torch.nn.Embedding(n_ids, d)
        self.proj = torch.nn.Linear(d, h)
        self.head = LossHead(h, v, bias=False)
        self.loss_in_head = loss_in_head
        self.to(F64)
        self.load_state_dict(params)

    def forward(self, ids, target, normalizer=None):
        import losskit.functional as LF

        hidden = torch.tanh(self.proj(self.emb(ids)))
        if self.loss_in_head:
            return self.head(hidden, target, normalizer)
        return LF.linear_cross_entropy(hidden, self.head.weight, target, normalizer=normalizer)


# --------------------------------------------------------------------------------------------
# what each rank runs
# --------------------------------------------------------------------------------------------


def _call_kwargs(kwargs: dict) -> tuple[dict, bool]:
    kwargs = dict(kwargs)
    return kwargs, bool(kwargs.get("return_z_loss"))


def run_ce(rank: int, world: int) -> dict:
    from losskit.distributed import vocab_parallel_cross_entropy

    out = {}
    for name, spec in CE_CASES.items():
        data = build_ce(name)
        layout = spec.get("layout", "rank_order")
        start, size = split(spec["V"], world, layout)[rank]
        shard = data["logits"][..., start : start + size].clone().requires_grad_(True)
        kwargs, with_z = _call_kwargs(data["kwargs"])
        if layout == "reversed":
            kwargs["vocab_start"] = start
        res = vocab_parallel_cross_entropy(shard, data["target"], **kwargs)
        loss, z = res if with_z else (res, None)
        (loss * data["upstream"]).sum().backward()
        out[name] = dict(loss=loss.detach(), z=z, grad=shard.grad, start=start, size=size)
    return out


def run_compiled(rank: int, world: int) -> dict:
    """The vocab-parallel cross-entropy under ``torch.compile`` (a graph break at the cross-rank
    check, whose exchange is read on the host) and eagerly, on one case."""
    from losskit.distributed import vocab_parallel_cross_entropy

    data = build_ce("everything")
    start, size = split(CE_CASES["everything"]["V"], world)[rank]
    kwargs, with_z = _call_kwargs(data["kwargs"])
    out = {}
    for name, fn in (("eager", vocab_parallel_cross_entropy),
                     ("compiled", torch.compile(vocab_parallel_cross_entropy))):  # fmt: skip
        shard = data["logits"][..., start : start + size].clone().requires_grad_(True)
        res = fn(shard, data["target"], **kwargs)
        loss = res[0] if with_z else res
        (loss * data["upstream"]).sum().backward()
        out[name] = dict(loss=loss.detach(), grad=shard.grad)
    return out


def run_lce(rank: int, world: int) -> dict:
    from losskit.distributed import vocab_parallel_linear_cross_entropy

    out = {}
    for name, spec in LCE_CASES.items():
        data = build_lce(name)
        start, size = split(spec["V"], world)[rank]
        x = data["input"].clone().requires_grad_(True)
        w = data["head"][start : start + size].clone().requires_grad_(True)
        b = data["bias"]
        b = b[start : start + size].clone().requires_grad_(True) if b is not None else None
        loss = vocab_parallel_linear_cross_entropy(
            x, w, data["target"], bias_shard=b, **data["kwargs"]
        )
        (loss * data["upstream"]).sum().backward()
        out[name] = dict(
            loss=loss.detach(),
            grad_input=x.grad,
            grad_weight=w.grad,
            grad_bias=b.grad if b is not None else None,
            start=start,
            size=size,
        )
    return out


def run_ddp(rank: int, world: int) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import losskit.functional as LF
    from losskit.distributed import global_count, sum_allreduce_hook

    data = build_ddp(world)
    mine = data["batches"][rank]
    out = {}
    for recipe in DDP_RECIPES:
        ddp = DDP(make_mlp(data["params"]))
        if recipe == "sum_hook":
            ddp.register_comm_hook(None, sum_allreduce_hook)
        count = global_count([y for _, y in mine])
        logged = torch.zeros((), dtype=F64)
        for j, (x, y) in enumerate(mine):
            last = j == len(mine) - 1
            with contextlib.nullcontext() if last else ddp.no_sync():
                if recipe == "naive_local_mean":  # what not to do: a mean of per-rank means
                    loss = LF.cross_entropy(ddp(x), y) / len(mine)
                    loss.backward()
                else:
                    loss = LF.cross_entropy(ddp(x), y, normalizer=count)
                    (loss * world if recipe == "scale_by_world" else loss).backward()
            logged += loss.detach()
        dist.all_reduce(logged)  # the global mean, for logging
        out[recipe] = dict(
            count=count,
            loss=logged,
            grads={k: p.grad.clone() for k, p in ddp.module.named_parameters()},
        )
    return out


def _attempt(fn) -> dict:
    start = time.monotonic()
    try:
        fn()
        rec = dict(type="none", msg="")
    except Exception as exc:  # recorded, compared by the test
        rec = dict(type=type(exc).__name__, msg=str(exc))
    rec["seconds"] = time.monotonic() - start
    return rec


def run_errors(rank: int, world: int) -> dict:
    from losskit.distributed import (
        global_count,
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    data = build_ce("plain")
    start, size = split(11, world)[rank]
    shard = data["logits"][..., start : start + size]
    last = world - 1
    out = {}

    def bad_index_last_rank():
        target = data["target"].clone()
        if rank == last:
            target[3] = 11
        vocab_parallel_cross_entropy(shard, target)

    def bad_index_everywhere():
        target = data["target"].clone()
        target[2] = -5
        vocab_parallel_cross_entropy(shard, target)

    def bad_shape_rank0():
        target = data["target"][:-1] if rank == 0 else data["target"]
        vocab_parallel_cross_entropy(shard, target)

    def rows_differ():
        n = 7 - (rank == last)
        vocab_parallel_cross_entropy(shard[:n], data["target"][:n])

    def weight_slice_not_full():
        vocab_parallel_cross_entropy(shard, data["target"], weight=torch.ones(size, dtype=F64))

    def linear_bad_index_last_rank():
        lce = build_lce("plain_bias")
        s, n = split(11, world)[rank]
        target = lce["target"].clone()
        if rank == last:
            target[0] = 99
        vocab_parallel_linear_cross_entropy(lce["input"], lce["head"][s : s + n], target)

    def count_bad_mask_rank0():
        mask = torch.ones(7, dtype=torch.int64) if rank == 0 else torch.ones(7, dtype=torch.bool)
        global_count(data["target"], mask=mask)

    for fn in (
        bad_index_last_rank,
        bad_index_everywhere,
        bad_shape_rank0,
        rows_differ,
        weight_slice_not_full,
        linear_bad_index_last_rank,
        count_bad_mask_rank0,
    ):
        out[fn.__name__] = _attempt(fn)
    # the group is still in step after every rank raised: a good call works and is exact
    res = vocab_parallel_cross_entropy(shard.clone().requires_grad_(True), data["target"])
    out["after_errors"] = dict(loss=res.detach())
    return out


class CollectiveCount:
    """Counts the ``torch.distributed`` collectives issued while active (losskit's go through
    ``dist.all_gather`` / ``dist.all_reduce``)."""

    NAMES = ("all_gather", "all_reduce", "broadcast", "all_gather_into_tensor")

    def __enter__(self) -> CollectiveCount:
        import torch.distributed as dist

        self.count, self._saved = 0, {n: getattr(dist, n) for n in self.NAMES}
        for name, original in self._saved.items():
            setattr(dist, name, self._counted(original))
        return self

    def _counted(self, original):
        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        return counted

    def __exit__(self, *exc: object) -> None:
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)


def run_dtensor(rank: int, world: int) -> dict:
    """The DTensor path against torch's loss_parallel() on the same DTensors; the bad
    placements (each must raise before any collective)."""
    import torch.nn.functional as F
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    from losskit.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    mesh = init_device_mesh("cpu", (world,))
    backwards = DeviceMesh("cpu", torch.arange(world).flip(0))

    def dt(t: torch.Tensor, *placements, grad: bool = False, on=None):
        out = distribute_tensor(t, on or mesh, list(placements), src_data_rank=None)
        return out.requires_grad_(True) if grad else out

    def rep(t):
        return None if t is None else dt(t, Replicate())

    def torch_kwargs(kwargs: dict) -> dict:  # what F.cross_entropy takes of a case's options
        keys = ("weight", "ignore_index", "reduction")
        return {k: kwargs[k] for k in keys if k in kwargs}

    out: dict = {"ce": {}, "lce": {}, "errors": {}}
    for name, spec in DT_CE_CASES.items():
        data = build_ce(name, "dt")
        kwargs, target = dict(data["kwargs"]), data["target"]
        if spec.get("dt_inputs"):
            target, kwargs["weight"] = rep(target), rep(kwargs.get("weight"))
        on = backwards if spec.get("mesh") == "reversed" else mesh
        up = dt(data["upstream"], Replicate(), on=on)
        x = dt(data["logits"], Shard(-1), grad=True, on=on)
        loss = vocab_parallel_cross_entropy(x, target, **kwargs)
        (loss * up).sum().backward()
        rec = dict(
            loss=loss.to_local().detach(),
            loss_type=type(loss).__name__,
            loss_placements=repr(loss.placements),
            grad=x.grad.to_local(),
            grad_placements=repr(x.grad.placements),
            size=x.to_local().shape[-1],
        )
        # what torch itself makes of a gradient through to_local() on the same DTensor: 2.13
        # keeps Shard(-1); 2.11 gathers an unevenly sharded leaf's gradient to Replicate()
        probe = dt(data["logits"], Shard(-1), grad=True, on=on)
        probe.to_local().sum().backward()
        rec["to_local_grad_placements"] = repr(probe.grad.placements)
        if spec.get("lp", True):
            x2 = dt(data["logits"], Shard(-1), grad=True, on=on)
            with loss_parallel():
                z = x2.transpose(1, 2) if x2.dim() == 3 else x2  # torch's classes: dim 1
                ref = F.cross_entropy(z, target, **torch_kwargs(kwargs))
                backward = _attempt(lambda r=ref, u=up: (r * u).sum().backward())
            rec["torch"] = dict(
                loss=ref.to_local().detach(),
                loss_placements=repr(ref.placements),
                backward=backward,
                grad=None if x2.grad is None else x2.grad.to_local(),
                grad_placements=None if x2.grad is None else repr(x2.grad.placements),
            )
        out["ce"][name] = rec

    for name, spec in DT_LCE_CASES.items():
        data = build_lce(name, "dt")
        kwargs, target, up = dict(data["kwargs"]), data["target"], rep(data["upstream"])
        results = {}
        for who in ("losskit", "torch"):
            w = dt(data["head"], Shard(0), grad=True)
            b = None if data["bias"] is None else dt(data["bias"], Shard(0), grad=True)
            plain = who == "losskit" and spec.get("plain_input")
            x = data["input"].clone().requires_grad_(True) if plain else None
            x = x if plain else dt(data["input"], Replicate(), grad=True)
            if who == "losskit":
                loss = vocab_parallel_linear_cross_entropy(x, w, target, bias_shard=b, **kwargs)
                (loss * up).sum().backward()
            else:
                with loss_parallel():
                    loss = F.cross_entropy(F.linear(x, w, b), target, **torch_kwargs(kwargs))
                    (loss * up).sum().backward()
            results[who] = dict(
                loss=loss.to_local().detach(),
                loss_placements=repr(loss.placements),
                grad_weight=w.grad.to_local(),
                grad_weight_placements=repr(w.grad.placements),
                grad_bias=None if b is None else b.grad.to_local(),
                grad_input=x.grad if plain else x.grad.full_tensor(),
                grad_input_placements="plain" if plain else repr(x.grad.placements),
            )
        out["lce"][name] = results

    # bad placements: every rank raises the same error before any collective
    data = build_ce("mean", "dt")
    full, target = data["logits"], data["target"]
    lce = build_lce("bias_mean", "dt")
    mesh_2d = init_device_mesh("cpu", (1, world))
    w_good, b_good = dt(lce["head"], Shard(0)), dt(lce["bias"], Shard(0))
    cases = {
        "logits_shard0": lambda: vocab_parallel_cross_entropy(dt(full, Shard(0)), target),
        "logits_partial": lambda: vocab_parallel_cross_entropy(
            DTensor.from_local(full, mesh, [Partial()], run_check=False), target
        ),
        "logits_replicate": lambda: vocab_parallel_cross_entropy(dt(full, Replicate()), target),
        "mesh_2d": lambda: vocab_parallel_cross_entropy(
            distribute_tensor(full, mesh_2d, [Replicate(), Shard(1)], src_data_rank=None), target
        ),
        "target_sharded": lambda: vocab_parallel_cross_entropy(
            dt(full, Shard(1)), dt(target, Shard(0))
        ),
        "plain_logits_dtensor_target": lambda: vocab_parallel_cross_entropy(full, rep(target)),
        "vocab_start_given": lambda: vocab_parallel_cross_entropy(
            dt(full, Shard(1)), target, vocab_start=0
        ),
        "head_shard1": lambda: vocab_parallel_linear_cross_entropy(
            lce["input"], dt(lce["head"], Shard(1)), lce["target"]
        ),
        "bias_plain": lambda: vocab_parallel_linear_cross_entropy(
            lce["input"], w_good, lce["target"], bias_shard=lce["bias"]
        ),
        "plain_head_dtensor_bias": lambda: vocab_parallel_linear_cross_entropy(
            lce["input"], w_good.to_local(), lce["target"], bias_shard=b_good
        ),
        "input_sharded": lambda: vocab_parallel_linear_cross_entropy(
            dt(lce["input"], Shard(0)), w_good, lce["target"], bias_shard=b_good
        ),
    }
    for case, fn in cases.items():
        with CollectiveCount() as counted:
            rec = _attempt(fn)
        out["errors"][case] = {**rec, "collectives": counted.count}
    # the group is still in step: a good DTensor call works
    good = vocab_parallel_cross_entropy(dt(full, Shard(-1)), target)
    out["errors"]["after_errors"] = dict(loss=good.to_local().detach())
    return out


def run_fsdp(rank: int, world: int) -> dict:
    """FSDP2 on gloo: each variant's loss and every parameter's full gradient after one step."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from losskit.distributed import global_count
    from losskit.distributed.dtensor import refuse_dtensor_head

    mesh = init_device_mesh("cpu", (world,))
    data = build_fsdp(world)
    ids, y = data["batches"][rank]
    count = global_count(y)
    out: dict = {}
    for variant in FSDP_VARIANTS:
        model = TinyLM(data["params"], loss_in_head=variant in ("head_unit", "head_unit_compiled"))
        if variant == "head_unit_compiled":  # compiled, then sharded: as torchtitan's blocks
            model.float()
            model.head.impl = "fused"
            torch._dynamo.reset()
            model.head = torch.compile(model.head, fullgraph=True)
        if variant.startswith("head_unit"):
            fully_shard(model.head, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if variant == "head_unit_outside":
            rec = _attempt(lambda m=model: m(ids, y, count))
            placements = repr(model.head.weight.placements)
            hidden = torch.zeros(len(y), FSDP_SHAPE["H"], dtype=F64)
            helper = _attempt(lambda m=model, h=hidden: refuse_dtensor_head(h, m.head.weight, None))
            out[variant] = dict(error=rec, helper=helper, placements=placements)
            continue
        if variant == "root_divide_1":
            model.set_gradient_divide_factor(1.0)
        loss = model(ids, y, count)  # this rank's sum / the global count
        (loss if variant == "root_divide_1" else loss * world).backward()
        logged = loss.detach().clone()
        dist.all_reduce(logged)  # the global mean, for logging
        params = {k.replace("_orig_mod.", ""): p for k, p in model.named_parameters()}
        out[variant] = dict(
            count=count,
            loss=logged.to(F64),
            grads={k: p.grad.full_tensor().to(F64) for k, p in params.items()},
            grad_types={k: type(p.grad).__name__ for k, p in params.items()},
        )
    # what head.weight is, outside the forward: after the root's forward (not resharded) and
    # after the backward (resharded)
    model = TinyLM(data["params"], loss_in_head=False)
    fully_shard(model, mesh=mesh)
    loss = model(ids, y, count)
    after_forward = type(model.head.weight).__name__
    loss.backward()
    out["head_weight_type"] = dict(
        after_forward=after_forward,
        after_backward=type(model.head.weight).__name__,
        after_backward_placements=repr(model.head.weight.placements),
    )
    return out


_DTENSOR = "torch.distributed.tensor"


def main() -> int:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store, out_file = sys.argv[3], sys.argv[4]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=20),
    )
    import losskit.distributed  # noqa: F401

    # a plain-tensor call must not import DTensor (``losskit.distributed.dtensor`` looks it up)
    results: dict = {"dtensor_imported": {"after_import": _DTENSOR in sys.modules}}
    try:
        suites = [("ce", run_ce), ("lce", run_lce), ("errors", run_errors)]
        suites.append(("dtensor", run_dtensor))
        if world in DDP_WORLDS:
            suites.append(("ddp", run_ddp))
        if world in FSDP_WORLDS:
            suites.append(("fsdp", run_fsdp))
            suites.append(("compiled", run_compiled))
        for suite, fn in suites:
            if suite == "dtensor":
                results["dtensor_imported"]["after_plain_calls"] = _DTENSOR in sys.modules
            t0 = time.monotonic()
            results[suite] = fn(rank, world)
            results.setdefault("seconds", {})[suite] = time.monotonic() - t0
    except Exception:
        results["crash"] = traceback.format_exc()
        torch.save(results, out_file)
        raise
    torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
