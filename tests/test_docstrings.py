"""Every docstring example in losskit runs and prints what it shows (doctest).

The Triton kernels' examples need a CUDA device and are left to the GPU session.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import losskit

CUDA_ONLY = ("losskit.kernels.triton",)
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(losskit.__path__, "losskit.")
    if not m.name.startswith(CUDA_ONLY) and m.name != "losskit.__main__"
)


def test_the_walk_finds_the_documented_modules():
    for name in (
        "losskit.functional.categorical",
        "losskit.nn",
        "losskit.kernels.cpu.cross_entropy",
    ):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
