"""The ``losskit`` command line: ``--version``, the usage text, and routing to the commands."""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

import losskit
from losskit import cli

EXPECTED = f"losskit {losskit.__version__} (torch {torch.__version__})"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_losskit_and_torch_on_one_line(flag, capsys) -> None:
    assert cli.main([flag]) == 0
    captured = capsys.readouterr()
    assert captured.out == EXPECTED + "\n"
    assert captured.err == ""


def test_version_through_python_dash_m(monkeypatch, capsys) -> None:
    """``python -m losskit --version`` runs losskit/__main__.py, which exits with main's status."""
    monkeypatch.setattr(sys, "argv", ["losskit", "--version"])
    monkeypatch.delitem(sys.modules, "losskit.__main__", raising=False)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("losskit", run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out == EXPECTED + "\n"


def test_version_string_follows_the_package() -> None:
    assert cli.version() == EXPECTED
    assert cli.version().split()[1] == losskit.__version__


def test_usage_lists_version_and_every_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "losskit --version" in out
    for name in cli.COMMANDS:
        assert f"  {name} " in out
    assert "overhead" in out  # the bench subcommands named in bench's line


def test_no_command_prints_usage_and_fails(capsys) -> None:
    assert cli.main([]) == 2
    assert "usage: losskit <command>" in capsys.readouterr().out


def test_unknown_command_is_named_with_the_usage(capsys) -> None:
    assert cli.main(["--versoin"]) == 2
    err = capsys.readouterr().err
    assert "unknown command '--versoin'" in err and "losskit --version" in err
