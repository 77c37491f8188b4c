"""losskit.distributed on real process groups: gloo on loopback, 2 and 3 processes.

One group per world size runs every case (``dist_worker.py``), so process start-up is paid once;
this file builds the same inputs, computes the single-process result with
:func:`losskit.functional.cross_entropy`, and compares the loss and every gradient:

- vocab-parallel cross-entropy: each rank's loss equals the full-vocabulary loss, and each rank's
  gradient equals its slice of the single-device gradient, for every option;
- vocab-parallel linear cross-entropy: the input's gradient (all-reduced) and each rank's head
  and bias shard gradients;
- the DDP recipes (``normalizer=global_count(...)`` and ``loss * world_size``, or the sum hook)
  with uneven per-rank token counts and 2 micro-batches equal the single-process full-batch mean
  (3 processes);
- bad input on one rank raises on every rank, promptly (the group timeout is 20 s; a deadlock
  would show as a timeout error after it), and the group stays usable afterwards;
- DTensor inputs (logits ``Shard(-1)``, the head ``Shard(0)``, uneven as DTensor splits them):
  the loss and every gradient equal torch's ``loss_parallel()`` + ``F.cross_entropy`` on the
  same DTensors and the single-process loss, with the same placements; bad placements raise on
  every rank before any collective;
- FSDP2 (``fully_shard``, 2 processes): ``LF.linear_cross_entropy(hidden, head.weight, y)``
  inside the forward gives every parameter the single-process gradient; the head's ``Shard(0)``
  DTensor weight outside the forward raises, naming the fix.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import losskit.functional as LF
from losskit import LossValueError

WORKER = Path(__file__).with_name("dist_worker.py")
WORLDS = (2, 3)
LAUNCH_TIMEOUT_S = 150.0  # all groups together; each collective also times out after 20 s


def _load_worker():
    spec = importlib.util.spec_from_file_location("losskit_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


W = _load_worker()


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> dict[int, list[dict]]:
    """Run one gloo group per world size (concurrently) and return each rank's results."""
    root = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs: list[tuple[int, int, subprocess.Popen, Path]] = []
    try:
        for world in WORLDS:
            for rank in range(world):
                log = root / f"w{world}r{rank}.log"
                with open(log, "w") as fh:
                    cmd = [
                        sys.executable,
                        str(WORKER),
                        str(rank),
                        str(world),
                        str(root / f"store{world}"),
                        str(root / f"w{world}r{rank}.pt"),
                    ]
                    procs.append(
                        (
                            world,
                            rank,
                            subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env),
                            log,
                        )
                    )
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for world, rank, proc, log in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"world {world} rank {rank} still running after {LAUNCH_TIMEOUT_S} s:"
                    f"\n{log.read_text()[-4000:]}"
                )
    finally:
        for _, _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for world, rank, proc, log in procs:
        if proc.returncode != 0:
            pytest.fail(
                f"world {world} rank {rank} exited with {proc.returncode}:\n"
                f"{log.read_text()[-4000:]}"
            )
    return {
        world: [torch.load(root / f"w{world}r{r}.pt", weights_only=True) for r in range(world)]
        for world in WORLDS
    }


def _close(actual, expected, what: str, dtype: torch.dtype = torch.float64) -> None:
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 2e-6}
    torch.testing.assert_close(
        actual, expected, equal_nan=True, **tol, msg=lambda m: f"{what}: {m}"
    )


# --------------------------------------------------------------------------------------------
# vocab-parallel cross-entropy
# --------------------------------------------------------------------------------------------


def _reference_ce(data: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Single-process loss, z term and logits gradient on the full logits."""
    kwargs = dict(data["kwargs"])
    with_z = kwargs.get("return_z_loss", False)
    logits = data["logits"].clone().requires_grad_(True)
    target = data["target"]
    v = logits.shape[-1]
    if kwargs.get("mask") is not None:
        kwargs["mask"] = kwargs["mask"].reshape(-1)
    res = LF.cross_entropy(logits.reshape(-1, v), target.reshape(-1), impl="reference", **kwargs)
    loss, z = res if with_z else (res, None)
    if kwargs.get("reduction") == "none":
        loss = loss.reshape(target.shape)
        z = z.reshape(target.shape) if z is not None else None
    (loss * data["upstream"]).sum().backward()
    return loss.detach(), z, logits.grad


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(W.CE_CASES))
def test_vocab_parallel_cross_entropy(groups, world: int, case: str) -> None:
    data = W.build_ce(case)
    loss, z, grad = _reference_ce(data)
    dtype = data["logits"].dtype
    layout = W.split(W.CE_CASES[case]["V"], world, W.CE_CASES[case].get("layout", "rank_order"))
    assert sum(size for _, size in layout) == data["logits"].shape[-1]
    for rank, res in enumerate(groups[world]):
        got = res["ce"][case]
        start, size = layout[rank]
        assert (got["start"], got["size"]) == (start, size)
        assert got["loss"].dtype == dtype
        _close(got["loss"], loss, f"rank {rank} loss", dtype)
        if z is not None:
            _close(got["z"], z, f"rank {rank} z term", dtype)
        _close(got["grad"], grad[..., start : start + size], f"rank {rank} gradient", dtype)
    if case == "masked_nan_row":  # the masked row's NaN reaches neither loss nor gradient
        assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())


# --------------------------------------------------------------------------------------------
# vocab-parallel linear cross-entropy
# --------------------------------------------------------------------------------------------


def test_vocab_parallel_cross_entropy_under_compile(groups) -> None:
    """torch.compile (not fullgraph: the cross-rank input check reads its exchange on the host)
    gives eager's loss and gradients (float64; inductor fuses the slice's backward, rounding
    its own way)."""
    for rank, res in enumerate(groups[W.FSDP_WORLDS[0]]):
        got, eager = res["compiled"]["compiled"], res["compiled"]["eager"]
        _close(got["loss"], eager["loss"], f"rank {rank} loss")
        _close(got["grad"], eager["grad"], f"rank {rank} gradient")


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(W.LCE_CASES))
def test_vocab_parallel_linear_cross_entropy(groups, world: int, case: str) -> None:
    data = W.build_lce(case)
    x = data["input"].clone().requires_grad_(True)
    head = data["head"].clone().requires_grad_(True)
    bias = data["bias"].clone().requires_grad_(True) if data["bias"] is not None else None
    kwargs = dict(data["kwargs"])
    kwargs.pop("chunk_size", None)
    if kwargs.get("mask") is not None:
        kwargs["mask"] = kwargs["mask"].reshape(-1)
    logits = x @ head.T + (bias if bias is not None else 0)
    v = head.shape[0]
    loss = LF.cross_entropy(
        logits.reshape(-1, v), data["target"].reshape(-1), impl="reference", **kwargs
    )
    if kwargs.get("reduction") == "none":
        loss = loss.reshape(data["target"].shape)
    (loss * data["upstream"]).sum().backward()
    for rank, res in enumerate(groups[world]):
        got = res["lce"][case]
        start, size = W.split(v, world)[rank]
        _close(got["loss"], loss.detach(), f"rank {rank} loss")
        _close(got["grad_input"], x.grad, f"rank {rank} input gradient")
        _close(got["grad_weight"], head.grad[start : start + size], f"rank {rank} head gradient")
        if bias is not None:
            _close(got["grad_bias"], bias.grad[start : start + size], f"rank {rank} bias gradient")


# --------------------------------------------------------------------------------------------
# one global token mean under DDP with gradient accumulation
# --------------------------------------------------------------------------------------------


def _reference_ddp(world: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    data = W.build_ddp(world)
    model = W.make_mlp(data["params"])
    xs = torch.cat([x for mine in data["batches"] for x, _ in mine])
    ys = torch.cat([y for mine in data["batches"] for _, y in mine])
    loss = LF.cross_entropy(model(xs), ys)  # the mean over the whole global batch
    loss.backward()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(model(xs), ys))
    return (ys != -100).sum(), loss.detach(), {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("world", W.DDP_WORLDS)
@pytest.mark.parametrize("recipe", ["scale_by_world", "sum_hook"])
def test_ddp_recipe_equals_single_process_mean(groups, world: int, recipe: str) -> None:
    count, loss, grads = _reference_ddp(world)
    sizes = [sum(len(y) for _, y in mine) for mine in W.build_ddp(world)["batches"]]
    assert len(set(sizes)) == world  # uneven per-rank token counts
    for rank, res in enumerate(groups[world]):
        got = res["ddp"][recipe]
        assert int(got["count"]) == int(count)
        _close(got["loss"], loss, f"rank {rank} logged loss")
        for name, g in grads.items():
            _close(got["grads"][name], g, f"rank {rank} gradient of {name}")


@pytest.mark.parametrize("world", W.DDP_WORLDS)
def test_ddp_naive_local_mean_differs(groups, world: int) -> None:
    """The check above has teeth: a mean of per-rank means gives other gradients."""
    _, _, grads = _reference_ddp(world)
    got = groups[world][0]["ddp"]["naive_local_mean"]["grads"]
    assert max(float((got[k] - g).abs().max()) for k, g in grads.items()) > 1e-4


# --------------------------------------------------------------------------------------------
# bad input on some rank: every rank raises, none deadlocks
# --------------------------------------------------------------------------------------------


def _expected_errors(world: int) -> dict[str, list[tuple[str, str]]]:
    last = world - 1
    others = [r for r in range(world)]

    def one_bad(bad: int, kind: str, detail: str, other_detail: str) -> list[tuple[str, str]]:
        return [(kind, detail) if r == bad else ("LossValueError", other_detail) for r in others]

    return {
        "bad_index_last_rank": one_bad(
            last,
            "LossIndexError",
            "class index 11 at position (3,)",
            f"rank {last} of {world} has target class index 11",
        ),
        "bad_index_everywhere": [("LossIndexError", "class index -5 at position (2,)")] * world,
        "bad_shape_rank0": one_bad(0, "LossValueError", "target has shape (6,)", "rank 0 of"),
        "rows_differ": [("LossValueError", "the number of rows (tokens) is 7 on rank 0")] * world,
        "weight_slice_not_full": [("LossValueError", "full class weights of shape (11,)")] * world,
        "linear_bad_index_last_rank": one_bad(
            last, "LossIndexError", "class index 99 at position (0,)", f"rank {last} of {world}"
        ),
        "count_bad_mask_rank0": one_bad(
            0, "LossTypeError", "mask must be a bool tensor", f"1 of the {world} ranks failed"
        ),
    }


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(_expected_errors(2)))
def test_bad_input_raises_on_every_rank(groups, world: int, case: str) -> None:
    expected = _expected_errors(world)[case]
    for rank, res in enumerate(groups[world]):
        got = res["errors"][case]
        kind, detail = expected[rank]
        assert got["type"] == kind, f"rank {rank}: {got['type']}: {got['msg']}"
        assert detail in got["msg"], f"rank {rank}: {got['msg']!r} lacks {detail!r}"
        assert got["seconds"] < 10.0, f"rank {rank} took {got['seconds']:.1f} s to raise"


@pytest.mark.parametrize("world", WORLDS)
def test_group_usable_after_errors(groups, world: int) -> None:
    loss, _, _ = _reference_ce(W.build_ce("plain"))
    for rank, res in enumerate(groups[world]):
        _close(res["errors"]["after_errors"]["loss"], loss, f"rank {rank} loss after errors")


# --------------------------------------------------------------------------------------------
# DTensor inputs, against torch's loss_parallel()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", WORLDS)
def test_plain_calls_do_not_import_dtensor(groups, world: int) -> None:
    for rank, res in enumerate(groups[world]):
        imported = res["dtensor_imported"]
        assert imported == {"after_import": False, "after_plain_calls": False}, f"rank {rank}"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(W.DT_CE_CASES))
def test_dtensor_cross_entropy_equals_loss_parallel(groups, world: int, case: str) -> None:
    spec = W.DT_CE_CASES[case]
    data = W.build_ce(case, "dt")
    loss, _, grad = _reference_ce(data)
    dtype, ndim = data["logits"].dtype, data["logits"].dim()
    compared = 0
    for rank, res in enumerate(groups[world]):
        got = res["dtensor"]["ce"][case]
        coordinate = world - 1 - rank if spec.get("mesh") == "reversed" else rank
        start, size = W.dtensor_split(spec["V"], world)[coordinate]
        assert got["size"] == size
        assert (got["loss_type"], got["loss_placements"]) == ("DTensor", "(Replicate(),)")
        # the logits' placement, as torch gives a gradient through to_local() (torch 2.11: a
        # Replicate() gradient for uneven shards, the whole one on every rank)
        assert got["grad_placements"] == got["to_local_grad_placements"]
        mine = got["grad"]
        if got["grad_placements"] == "(Replicate(),)":
            mine = mine[..., start : start + size]
        else:
            assert got["grad_placements"] == f"(Shard(dim={ndim - 1}),)"
        assert got["loss"].dtype == dtype
        _close(got["loss"], loss, f"rank {rank} loss", dtype)
        # torch 2.11 gathers such a gradient out of order on a reversed mesh, losskit's or not
        # (x.to_local() ** 2 summed gives [12, .., 20, 0, 0, 2, .., 8] for 2 * arange(11))
        misgathered = got["grad_placements"] == "(Replicate(),)" and spec.get("mesh") == "reversed"
        if not misgathered:
            _close(mine, grad[..., start : start + size], f"rank {rank} gradient", dtype)
        ref = got.get("torch")
        if ref is None:
            assert spec.get("lp", True) is False
            continue
        # loss_parallel returns a Replicate() DTensor on a 1-D mesh for every reduction
        assert ref["loss_placements"] == got["loss_placements"]
        _close(got["loss"], ref["loss"], f"rank {rank} loss vs loss_parallel", dtype)
        if ref["backward"]["type"] != "none":  # torch 2.13: class weights with ignored targets
            assert spec.get("lp") == "forward", ref["backward"]
            continue
        theirs = ref["grad"]
        if ref["grad_placements"] == "(Replicate(),)":
            theirs = theirs[..., start : start + size]
        if not misgathered:
            _close(mine, theirs, f"rank {rank} gradient vs loss_parallel", dtype)
        compared += 1
    assert compared == (world if spec.get("lp", True) is True else 0)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(W.DT_LCE_CASES))
def test_dtensor_linear_cross_entropy_equals_loss_parallel(groups, world: int, case: str) -> None:
    spec = W.DT_LCE_CASES[case]
    data = W.build_lce(case, "dt")
    dtype = data["input"].dtype
    x = data["input"].clone().requires_grad_(True)
    head = data["head"].clone().requires_grad_(True)
    bias = data["bias"].clone().requires_grad_(True) if data["bias"] is not None else None
    kwargs = {k: v for k, v in data["kwargs"].items() if k != "chunk_size"}
    loss = LF.cross_entropy(
        torch.nn.functional.linear(x, head, bias), data["target"], impl="reference", **kwargs
    )
    (loss * data["upstream"]).sum().backward()
    for rank, res in enumerate(groups[world]):
        start, size = W.dtensor_split(spec["V"], world)[rank]
        for who, got in res["dtensor"]["lce"][case].items():
            what = f"rank {rank} {who}"
            assert got["loss_placements"] == "(Replicate(),)", what
            assert got["grad_weight_placements"] == "(Shard(dim=0),)", what
            # losskit all-reduces the input's gradient; loss_parallel leaves it Partial(sum)
            expected = {"torch": "(Partial(sum),)", "losskit": "(Replicate(),)"}[who]
            if who == "losskit" and spec.get("plain_input"):
                expected = "plain"
            assert got["grad_input_placements"] == expected, what
            _close(got["loss"], loss.detach(), f"{what} loss", dtype)
            _close(got["grad_input"], x.grad, f"{what} input gradient", dtype)
            _close(got["grad_weight"], head.grad[start : start + size], f"{what} head grad", dtype)
            if bias is not None:
                _close(got["grad_bias"], bias.grad[start : start + size], f"{what} bias", dtype)


_DT_ERRORS = {
    "logits_shard0": ("LossValueError", "logits_shard is a DTensor of shape (9, 11) with "
                      "placements (Shard(dim=0),)"),
    "logits_partial": ("LossValueError", "placements (Partial(sum),)"),
    "logits_replicate": ("LossValueError", "expected placements (Shard(1),)"),
    "mesh_2d": ("LossValueError", "on a 2-D DeviceMesh of shape (1, {world})"),
    "target_sharded": ("LossValueError", "target is a DTensor of shape (9,) with placements "
                       "(Shard(dim=0),)"),
    "plain_logits_dtensor_target": ("LossTypeError", "target is a DTensor but logits_shard is "
                                    "a plain Tensor"),
    "vocab_start_given": ("LossValueError", "vocab_start=0 was given"),
    "head_shard1": ("LossValueError", "weight_shard is a DTensor of shape (11, 5) with "
                    "placements (Shard(dim=1),)"),
    "bias_plain": ("LossTypeError", "bias_shard is a plain tensor, but weight_shard is a DTensor"),
    "plain_head_dtensor_bias": ("LossTypeError", "bias_shard is a DTensor but weight_shard is "
                                "a plain Tensor"),
    "input_sharded": ("LossValueError", "input is a DTensor of shape (9, 5) with placements "
                      "(Shard(dim=0),)"),
}  # fmt: skip


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(_DT_ERRORS))
def test_dtensor_bad_placement_raises_before_any_collective(groups, world: int, case: str) -> None:
    kind, detail = _DT_ERRORS[case]
    detail = detail.format(world=world)
    for rank, res in enumerate(groups[world]):
        got = res["dtensor"]["errors"][case]
        assert got["type"] == kind, f"rank {rank}: {got['type']}: {got['msg']}"
        assert detail in got["msg"], f"rank {rank}: {got['msg']!r} lacks {detail!r}"
        assert got["collectives"] == 0, f"rank {rank} issued {got['collectives']} collectives"
        assert got["msg"] == groups[world][0]["dtensor"]["errors"][case]["msg"]


@pytest.mark.parametrize("world", WORLDS)
def test_dtensor_group_usable_after_errors(groups, world: int) -> None:
    loss, _, _ = _reference_ce(W.build_ce("mean", "dt"))
    for rank, res in enumerate(groups[world]):
        _close(res["dtensor"]["errors"]["after_errors"]["loss"], loss, f"rank {rank} loss")


# --------------------------------------------------------------------------------------------
# FSDP2: linear_cross_entropy on the head's weight
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", W.FSDP_WORLDS)
@pytest.mark.parametrize("variant", ["root", "root_divide_1", "head_unit", "head_unit_compiled"])
def test_fsdp2_gradients_equal_single_process(groups, world: int, variant: str) -> None:
    """float64 to 1e-12; compiled (float32, the fused op in a fullgraph=True graph) to float32's
    rounding."""
    data = W.build_fsdp(world)
    model = W.TinyLM(data["params"], loss_in_head=variant.startswith("head_unit"))
    ids = torch.cat([i for i, _ in data["batches"]])
    ys = torch.cat([y for _, y in data["batches"]])
    loss = model(ids, ys)  # the mean over the whole global batch
    loss.backward()
    hidden = torch.tanh(model.proj(model.emb(ids)))
    logits = torch.nn.functional.linear(hidden, model.head.weight)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, ys))
    sizes = [len(y) for _, y in data["batches"]]
    assert len(set(sizes)) == world  # uneven per-rank token counts
    for rank, res in enumerate(groups[world]):
        got = res["fsdp"][variant]
        assert int(got["count"]) == int((ys != -100).sum())
        assert set(got["grad_types"].values()) == {"DTensor"}  # FSDP2's sharded gradients
        dtype = torch.float32 if variant == "head_unit_compiled" else torch.float64
        _close(got["loss"], loss.detach(), f"rank {rank} logged loss", dtype)
        for name, p in model.named_parameters():
            _close(got["grads"][name], p.grad, f"rank {rank} gradient of {name}", dtype)


@pytest.mark.parametrize("world", W.FSDP_WORLDS)
def test_fsdp2_head_weight_is_sharded_outside_forward(groups, world: int) -> None:
    """What the recipe rests on: the root unit leaves head.weight gathered after its forward
    and sharded (Shard(0)) after the backward; a head unit of its own is sharded in the root's
    forward."""
    for res in groups[world]:
        seen = res["fsdp"]["head_weight_type"]
        assert seen == dict(
            after_forward="Parameter",
            after_backward="DTensor",
            after_backward_placements="(Shard(dim=0),)",
        )
        assert res["fsdp"]["head_unit_outside"]["placements"] == "(Shard(dim=0),)"


@pytest.mark.parametrize("world", W.FSDP_WORLDS)
def test_refuse_dtensor_head_names_the_fix(groups, world: int) -> None:
    for rank, res in enumerate(groups[world]):
        got = res["fsdp"]["head_unit_outside"]["helper"]
        assert got["type"] == "LossTypeError", f"rank {rank}: {got}"
        assert (
            "linear_weight is a DTensor of shape (11, 6) with placements (Shard(dim=0),)"
            in (got["msg"])
        )
        assert "inside the forward of the module that fully_shard wraps" in got["msg"]


@pytest.mark.parametrize("world", W.FSDP_WORLDS)
def test_linear_cross_entropy_refuses_fsdp2_sharded_head(groups, world: int) -> None:
    """Needs ``refuse_dtensor_head`` called at the top of ``LF.linear_cross_entropy``."""
    for rank, res in enumerate(groups[world]):
        got = res["fsdp"]["head_unit_outside"]["error"]
        assert got["type"] == "LossTypeError", f"rank {rank}: {got['type']}: {got['msg']}"
        assert got["msg"] == res["fsdp"]["head_unit_outside"]["helper"]["msg"]


# --------------------------------------------------------------------------------------------
# in this process (no group)
# --------------------------------------------------------------------------------------------


def test_needs_an_initialized_group() -> None:
    from losskit.distributed import global_count, vocab_parallel_cross_entropy

    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(LossValueError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(LossValueError, match="init_process_group"):
        global_count(torch.tensor([0, 1]))


def test_is_dtensor_on_plain_values() -> None:
    from losskit.distributed.dtensor import is_dtensor, refuse_dtensor_head, unwrap

    t = torch.zeros(2, 3)
    assert not any(is_dtensor(v) for v in (t, torch.nn.Parameter(t), None, 3, [t]))
    assert unwrap({"logits_shard": (t, -1, "")}, {"target": t}, group=None, vocab_start=2) is None
    refuse_dtensor_head(t, t, None)  # plain tensors pass


def test_split_layouts() -> None:
    assert W.dtensor_split(11, 3) == [(0, 4), (4, 4), (8, 3)]
    assert W.dtensor_split(2, 3) == [(0, 1), (1, 1), (2, 0)]
    assert W.dtensor_split(5, 4) == [(0, 2), (2, 2), (4, 1), (5, 0)]
    assert W.split(11, 3) == [(0, 4), (4, 4), (8, 3)]
    assert W.split(11, 3, "reversed") == [(7, 4), (3, 4), (0, 3)]
    assert W.split(2, 3, "empty_last") == [(0, 1), (1, 1), (2, 0)]
