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
  would show as a timeout error after it), and the group stays usable afterwards.
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


def test_split_layouts() -> None:
    assert W.split(11, 3) == [(0, 4), (4, 4), (8, 3)]
    assert W.split(11, 3, "reversed") == [(7, 4), (3, 4), (0, 3)]
    assert W.split(2, 3, "empty_last") == [(0, 1), (1, 1), (2, 0)]
