"""``losskit bench lce``'s memory measurement, as a user's process sees it, at a tiny shape.

Each implementation runs in a fresh process: four training steps from the first call, the peak
resident set above the size once the inputs exist, minus the returned ``dX`` and ``dW``. The
figures are checked for sense, not for speed: torch eager holds the ``(N, V)`` logits (and their
gradient), so it must show at least their size and more than losskit's chunked default, which
must stay within its 64 MiB CPU budget.
"""

from __future__ import annotations

import mmap
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from losskit.bench import _common as C
from losskit.bench import lce

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status and clear_refs"
)

N, D, V = 512, 256, 8000
PARAMS = {"n": N, "d": D, "v": V, "dtype": "float32", "device": "cpu", "seed": 0}
MIB = 1 << 20


def test_user_peak_sees_the_logits_of_torch_eager_and_not_of_losskit():
    keys = ("torch", "default")
    with ThreadPoolExecutor(len(keys)) as pool:  # two fresh processes at once: < 10 s
        runs = dict(
            zip(keys, pool.map(lambda k: C.user_peak_bytes_in_subprocess(lce.__name__, k, PARAMS),
                               keys), strict=True)
        )  # fmt: skip
    grads = (N * D + V * D) * 4
    beyond = {}
    for key, (figures, err) in runs.items():
        assert err == "" and figures is not None, (key, err)
        assert set(figures) == {"peak", "warm"}
        assert figures["peak"] >= grads, (key, figures)  # the gradients exist at the peak
        beyond[key] = figures["peak"] - grads
    logits = N * V * 4
    assert beyond["torch"] >= logits, beyond["torch"] / MIB
    assert 0 < beyond["default"] < beyond["torch"], {k: b / MIB for k, b in beyond.items()}
    assert beyond["default"] <= 64 * MIB, beyond["default"] / MIB


def test_user_peak_counts_every_step_from_the_first():
    held = []

    def step():  # grows by 8 MiB of fresh pages per step (a mapping: no heap pages reused)
        area = mmap.mmap(-1, 8 * MIB)
        for offset in range(0, 8 * MIB, mmap.PAGESIZE):
            area[offset] = 1
        held.append(area)

    case = C.Case("grows", step, None)
    figures = C.user_peak_bytes(case, steps=4)
    if figures is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert 4 * 8 * MIB <= figures["peak"] <= 4 * 8 * MIB + 8 * MIB, figures["peak"] / MIB
