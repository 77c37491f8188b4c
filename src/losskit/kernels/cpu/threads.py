"""Worker threads for the CPU kernels: blocks of rows shared out to threads of one op each.

With torch's OpenMP backend and ``torch.get_num_threads() == T > 1``, :func:`share_blocks` gives
the blocks of a call to T worker threads (taking blocks in turn), each running its ops on one
thread, instead of running every op on T threads. The results agree up to float rounding and the
speed is the same on an idle machine; but when other processes compete for the cores, per-op
parallelism waits at the end of every op for its slowest thread (several hundred times per call):
on a loaded 2-core machine the fused cross-entropy ran 1.1-2.5x slower than torch eager that way,
with the worker threads about 3x faster than torch eager. A worker sets its own thread count once
with ``torch.set_num_threads(1)``, which also changes torch's process-wide default; the caller
restores that at once.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["Claim", "in_worker", "openmp_backend", "share_blocks", "worker_pool"]


@functools.cache
def openmp_backend() -> bool:
    """Whether torch's intra-op threads are OpenMP's, whose thread count is per calling thread.

    (The worker scheme relies on that; with another backend every op stays parallel instead.)
    """
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class Claim:
    """Hands out 0, 1, 2, ... to any number of threads, each number once."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def __next__(self) -> int:
        with self._lock:
            k = self._next
            self._next += 1
        return k


_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)
_pool_lock = threading.Lock()
_worker_state = threading.local()


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers`` threads (a new one after fork or for another size)."""
    global _pool, _pool_key
    with _pool_lock:
        key = (os.getpid(), workers)
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="losskit-cpu-ce")
            _pool_key = key
        return _pool


def in_worker(inference: bool, work: Callable[[Claim], None], claim: Claim) -> bool:
    """Run ``work(claim)`` in a pool thread; True when this thread was set up just now."""
    first_use = not getattr(_worker_state, "single_threaded", False)
    if first_use:
        # This thread's ops run on it alone. torch.set_num_threads sets the calling thread's
        # OpenMP thread count and a process-wide default, which the caller restores.
        torch.set_num_threads(1)
        _worker_state.single_threaded = True
    with torch.inference_mode(inference), torch.no_grad():
        work(claim)
    return first_use


def share_blocks(work: Callable[[Claim], None], blocks: int) -> None:
    """Run ``work(claim)`` on as many worker threads as torch has threads (at most ``blocks``),
    each taking block numbers from one :class:`Claim` until they run out; or on this thread
    alone (one torch thread, one block, or a backend other than OpenMP)."""
    workers = min(torch.get_num_threads(), blocks) if openmp_backend() else 1
    claim = Claim()  # the workers take blocks in turn
    if workers <= 1:
        work(claim)
        return
    inference = torch.is_inference_mode_enabled()
    pool = worker_pool(workers)
    jobs = [pool.submit(in_worker, inference, work, claim) for _ in range(workers)]
    first_use = [job.result() for job in jobs]
    if any(first_use):  # a new worker set torch's process-wide thread count: restore it
        torch.set_num_threads(torch.get_num_threads())
