"""Importing losskit pulls in no optional library: the integrations load theirs on demand."""

from __future__ import annotations

import subprocess
import sys


def test_importing_losskit_imports_no_optional_library():
    code = (
        "import sys, losskit, losskit.functional, losskit.nn, losskit.integrations\n"
        "loaded = [m for m in ('transformers', 'peft', 'accelerate', 'matplotlib') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing losskit imported {out.stdout.strip()}"
