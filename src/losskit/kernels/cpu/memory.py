"""Large CPU buffers from private mappings of their own: huge pages, and memory given back.

A fresh ``torch.empty`` buffer costs a page fault per 4 KiB at its first write, which at
N=4096, V=32000 took longer than all the arithmetic of a fused cross-entropy. The buffers here are
private anonymous mappings aligned to 2 MiB and advised as huge pages (one fault per 2 MiB),
unmapped as soon as the tensor's storage is freed. Set ``LOSSKIT_CPU_HUGEPAGES=0`` to use
``torch.empty`` instead.
"""

from __future__ import annotations

import mmap
import os

import torch
from torch import Tensor

__all__ = [
    "HUGE_PAGE",
    "HUGE_PAGE_MIN_BYTES",
    "empty_rows",
    "mapped_empty",
    "own_mapping",
    "use_hugepages",
]

#: Bytes of one huge page, the alignment of every mapping.
HUGE_PAGE = 2 << 20
#: Gradient buffers from this size on come from a huge-page mapping (:func:`empty_rows`).
HUGE_PAGE_MIN_BYTES = 64 << 20


def use_hugepages() -> bool:
    """Whether to advise huge pages: the OS offers it and ``LOSSKIT_CPU_HUGEPAGES`` is not 0."""
    return os.environ.get("LOSSKIT_CPU_HUGEPAGES", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE")


def empty_rows(n: int, v: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised contiguous ``(n, v)`` CPU tensor, huge-page backed when it is large.

    The memory is a private anonymous mapping, aligned to 2 MiB and advised as huge pages, so the
    first writes fault once per 2 MiB instead of once per 4 KiB; it is unmapped when the tensor's
    storage is freed. Falls back to ``torch.empty`` where that is not available.
    """
    nbytes = n * v * torch.empty((), dtype=dtype).element_size()
    if nbytes >= HUGE_PAGE_MIN_BYTES and use_hugepages():
        mapped = mapped_empty(nbytes, dtype, hugepages=True)
        if mapped is not None:
            return mapped.view(n, v)
    return torch.empty((n, v), dtype=dtype)


def own_mapping(numel: int, dtype: torch.dtype) -> Tensor:
    """A flat uninitialised CPU tensor in a mapping of its own (from one huge page on).

    Not from ``malloc``: glibc raises its mmap threshold to the size of each mmapped block it
    frees (up to 32 MiB), after which blocks below that size (a 16 MiB ``dX``, the next call's
    buffer) come from the heap, which keeps freed pages: one call of the chunked linear
    cross-entropy with a 29 MiB buffer left the process 16 MiB larger from its third call on.
    Huge-page advised where available (a fault per 2 MiB: the buffer is fresh memory on every
    call).
    """
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes < HUGE_PAGE:
        return torch.empty(numel, dtype=dtype)
    mapped = mapped_empty(nbytes, dtype, hugepages=use_hugepages())
    return torch.empty(numel, dtype=dtype) if mapped is None else mapped


def mapped_empty(nbytes: int, dtype: torch.dtype, *, hugepages: bool) -> Tensor | None:
    """A flat uninitialised CPU tensor of ``nbytes`` in a private anonymous mapping of its own.

    Aligned to 2 MiB (and advised as huge pages with ``hugepages``); unmapped when the tensor's
    storage is freed. None where such a mapping cannot be made.
    """
    try:
        area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hugepages:
            area.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return None
    raw = torch.frombuffer(area, dtype=torch.uint8)  # the tensor keeps `area` alive
    start = (-raw.data_ptr()) % HUGE_PAGE
    return raw[start : start + nbytes].view(dtype)
