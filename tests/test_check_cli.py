"""``losskit check``, the command line: exit codes, ``--init``/``--kwargs``, the header before
the import, and seeded examples."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from losskit.check import main, make_examples
from losskit.check.cli import parse_options
from losskit.check.verify import PROPERTIES as CHECKED

# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

BROKEN_FILE = textwrap.dedent("""
    import torch

    def item_loss(input, target, reduction="mean"):
        return torch.tensor(((input - target) ** 2).mean().item())

    class Good(torch.nn.Module):
        reduction = "mean"

        def forward(self, input, target):
            loss = (input - target) ** 2
            return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[self.reduction]

    class NonScalar(torch.nn.Module):
        def forward(self, input, target):
            return (input - target) ** 2

    class Scaled(torch.nn.Module):
        def __init__(self, scale, reduction="mean"):
            super().__init__()
            self.scale, self.reduction = scale, reduction

        def extra_repr(self):
            return f"scale={self.scale}, reduction={self.reduction!r}"

        def forward(self, input, target):
            loss = self.scale * (input - target) ** 2
            return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[self.reduction]
""")


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "user_losses.py"
    path.write_text(BROKEN_FILE)
    assert main(["losskit.nn:MSELoss", "--no-compile"]) == 0
    assert "OK: 9 passed, 1 skipped" in capsys.readouterr().out
    assert main([f"{path}:Good", "--shape", "5,2", "--no-compile", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main([f"{path}:item_loss", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert "autograd graph" in out and ".item()" in out and "user_losses.py:5" in out
    assert (
        main(
            [
                "losskit.functional:cross_entropy",
                "--shape",
                "6,4",
                "--target",
                "index",
                "--no-compile",
            ]
        )
        == 0
    )
    assert "target (6,) int64" in capsys.readouterr().out
    assert (
        main(["losskit.nn:FocalLoss", "--shape", "2,3,4", "--target", "index", "--no-compile"]) == 0
    )
    capsys.readouterr()
    assert main(["losskit.nn:NoSuchLoss"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert main(["no_colon"]) == 2
    assert main(["losskit.nn:MSELoss", "--shape", "4,a", "--no-compile"]) == 2
    capsys.readouterr()


def test_make_examples_are_seeded():
    a, b = make_examples((3, 2), seed=5), make_examples((3, 2), seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    x, y = a
    assert x.min() >= 0.1 and x.max() < 0.9 and y.min() >= 0 and y.max() < 1
    x, y = make_examples(((4, 3), (4,)), target="index")
    assert y.shape == (4,) and y.dtype == torch.int64 and 0 <= int(y.min()) <= int(y.max()) < 3


def test_cli_init_kwargs_and_twins(tmp_path, capsys):
    path = tmp_path / "user_losses.py"
    path.write_text(BROKEN_FILE)
    assert main([f"{path}:NonScalar", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert "call                       FAIL" in out and "must return a 0-dim scalar" in out
    assert main([f"{path}:Scaled", "--no-compile"]) == 2
    assert "cannot instantiate" in capsys.readouterr().err
    args = [f"{path}:Scaled", "--init", "scale=2.0", "--init", 'reduction="sum"', "--no-compile"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"losskit check: {path}:Scaled(scale=2.0, reduction='sum') on input")
    assert "losskit.check: Scaled(scale=2.0, reduction='sum') on" in out  # the report's line
    assert main(["torch.nn:HuberLoss", "--init", "delta=0.3", "--no-compile"]) == 0
    assert "HuberLoss vs huber_loss (mean, sum, none)" in capsys.readouterr().out
    mask = ["--kwargs", "mask=tensor([True, False, True, True])"]
    assert main(["losskit.nn:MSELoss", "--shape", "4", *mask, "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "called with mask=tensor([ True, False,  True,  True])" in out and "count 3" in out
    assert main(["losskit.functional:mse_loss", "--init", "reduction='sum'"]) == 2
    assert "--init configures a class" in capsys.readouterr().err
    for bad, says in (
        ("scale=__import__('os')", "is not a Python literal"),
        ("2.0", "expects name=value pairs"),
        ("a=1), print(2", "expects name=value pairs"),
    ):
        assert main([f"{path}:Scaled", "--init", bad]) == 2
        assert says in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--init" in out and "--kwargs" in out and "double backward" in out


def test_parse_options():
    got = parse_options(["delta=0.5, reduction='sum'", "p=-1, shape=(2, 3), w=None"], "--init")
    assert got == {"delta": 0.5, "reduction": "sum", "p": -1, "shape": (2, 3), "w": None}
    got = parse_options(["weight=tensor([0.5, 2.0]), mask=torch.tensor([True, False])"], "-k")
    assert got["weight"].dtype == torch.float32 and got["weight"].tolist() == [0.5, 2.0]
    assert got["mask"].dtype == torch.bool
    assert parse_options(None, "--init") == {}
    with pytest.raises(ValueError, match="--init: delta= is given twice"):
        parse_options(["delta=0.5", "delta=1.0"], "--init")
    with pytest.raises(ValueError, match=r"--kwargs: w=os.sep is not a Python literal"):
        parse_options(["w=os.sep"], "--kwargs")
    with pytest.raises(ValueError, match="expects name=value pairs"):
        parse_options(["**opts"], "--kwargs")


def test_cli_prints_its_header_before_the_import(tmp_path, capsys):
    path = tmp_path / "fails_to_import.py"
    path.write_text("raise ImportError('a missing dependency')\n")
    assert main([str(path) + ":loss", "--no-compile"]) == 2
    captured = capsys.readouterr()
    header = captured.out.splitlines()
    assert header[0] == (
        f"losskit check: {path}:loss on input (4, 3) float32, target (4, 3) float32"
    )
    checks = " ".join(line.strip() for line in header[1:])
    assert checks == f"checks: {', '.join(CHECKED[:-1])}, torch.compile skipped (--no-compile)"
    assert "a missing dependency" in captured.err


def test_cli_subprocess_exit_status(tmp_path):
    """The header is flushed before the import: the file writes past Python's buffer."""
    path = tmp_path / "user_losses.py"
    path.write_text("import os\nos.write(1, b'IMPORTED\\n')\n" + BROKEN_FILE)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONUNBUFFERED", None)  # stdout to a pipe is block-buffered, as in real use
    done = subprocess.run(
        [sys.executable, "-m", "losskit", "check", f"{path}:NonScalar", "--no-compile"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert out.index("losskit check: ") < out.index("IMPORTED") < out.index("FAILED")
    assert "must return a 0-dim scalar" in out
