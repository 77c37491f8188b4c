"""Each script in examples/ runs on its own and prints what its tutorial section shows."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> lines (or parts of lines) its output must contain
EXPECTED = {
    "01_regression.py": [
        "reduction='none'  shape (3, 2)",
        "reduction='sum'   shape ()",
        "== mean x 6",
    ],
    "02_binary.py": [
        "BCEWithLogitsLoss(x, y) =",
        "logit 30, target 0: BCELoss 100.0, BCEWithLogitsLoss 30.0",
    ],
    "03_multiclass.py": ["the three gradients agree", "-> per-pixel loss (2, 8, 8)"],
    "04_custom_loss.py": ["MyLoss == MSELoss in every reduction", "OK: "],
    "05_module_vs_functional.py": ["identical outputs once the weights are shared"],
    "06_dropout.py": ["Model1 eval():  [1.0, 1.0", "Model3 eval():"],
    "07_training.py": ["epoch 8: training loss", "held-out accuracy 9"],
    "08_transformers.py": [
        "OK: LlamaForCausalLM: loss",
        "max |difference| over 30 steps: ",
        "patched model called without labels: its own forward",
    ],
    "09_dpo.py": [
        "OK: fused DPO == plain DPO (|difference| < 1e-05 at every step)",
        "max |difference| over 10 steps: ",
        "fused form holds neither: one pair's chunk of logits at a time, (30, 1000)",
    ],
}
# script -> (the module it needs, the extra that installs it): skipped without it
NEEDS = {
    "07_training.py": ("sklearn", "losskit[demo]"),
    "08_transformers.py": ("transformers", "losskit[transformers]"),
    "09_dpo.py": ("transformers", "losskit[transformers]"),
}


#: arguments of a script's run here: 08's step time and memory (two more processes importing
#: transformers, ~30 s) are measured by tests/integrations instead
ARGS = {"08_transformers.py": ("--quick",)}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    module, extra = NEEDS.get(script, ("", ""))
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} ({extra})")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *ARGS.get(script, ())],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", **_env()},
    )
    assert done.returncode == 0, done.stderr
    for expected in EXPECTED[script]:
        assert expected in done.stdout, done.stdout


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
