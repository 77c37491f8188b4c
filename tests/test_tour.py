"""``losskit tour``: every step's claims hold, and the command reports, plots and degrades."""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile

import pytest
import torch

import losskit
import losskit.functional as LF
from losskit import cli, tour
from losskit.tour.module_vs_functional import _forward_with_tutorial_bug
from losskit.tour.training import _progress

QUICK_STEPS = (1, 2, 3, 4, 5, 6)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quiet_tour(**options) -> tour.Tour:
    return tour.Tour(out=io.StringIO(), quiet=True, **options)


def run_main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        code = tour.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def trained() -> tour.Tour:
    """Step 7 once, at the tour's real length (a few seconds on one thread)."""
    pytest.importorskip("sklearn")
    t = quiet_tour()
    t.results["claims"] = tour.step_training(t)
    return t


def test_steps_are_the_tutorials_seven_in_order() -> None:
    assert sorted(tour.STEPS) == list(range(1, 8))
    assert [tour.STEPS[n][1] for n in (1, 7)] == [tour.step_regression, tour.step_training]


@pytest.mark.parametrize("number", QUICK_STEPS)
def test_each_step_returns_its_claims_and_they_pass(number: int) -> None:
    t = quiet_tour()
    claims = tour.STEPS[number][1](t)
    assert len(claims) >= 3
    assert all(isinstance(c, tour.Claim) for c in claims)
    assert [c for c in claims if not c.ok] == []
    printed = t.out.getvalue()
    assert printed.startswith(f"\n{number}. ")
    assert all(str(c) in printed for c in claims)


def test_claims_name_what_the_tutorial_says() -> None:
    texts = {n: " | ".join(c.text for c in tour.STEPS[n][1](quiet_tour())) for n in QUICK_STEPS}
    assert "sum == mean x 6" in texts[1]
    assert "BCEWithLogitsLoss" in texts[2]
    assert "same in every form" in texts[3] and "K-dimensional" in texts[3]
    assert "losskit.check passes My_loss" in texts[4]
    assert "losskit.check passes SoftTargetCrossEntropy" in texts[4]
    assert "once the weights are shared" in texts[5]
    assert "without training= still drops" in texts[6]


def test_claim_line_format() -> None:
    t = quiet_tour()
    ok = t.same("sum == mean x 6", torch.tensor(6.0), torch.tensor(6.0))
    bad = t.same("a == b", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), tol=0.1)
    assert str(ok) == "  [PASS] sum == mean x 6 (|diff| = 0.0e+00)"
    assert str(bad) == "  [FAIL] a == b (|diff| = 5.0e-01)"
    assert not t.same("shapes", torch.zeros(2), torch.zeros(3)).ok


def test_steps_repeat_with_the_same_seed() -> None:
    outputs = []
    for _ in range(2):
        t = quiet_tour(seed=3)
        tour.step_regression(t)
        tour.step_dropout(t)
        outputs.append(t.out.getvalue())
    assert outputs[0] == outputs[1]


def test_the_two_cnns_agree_and_each_tutorial_bug_breaks_the_functional_one() -> None:
    images = torch.randn(2, 1, 8, 8)
    cnn = tour.TutorialCNN(image_size=8, kernel_size=3, padding=1)
    functional = tour.FunctionalCNN(image_size=8, kernel_size=3, padding=1).copy_from(cnn)
    assert torch.equal(cnn(images), functional(images))
    for bug in tour.TUTORIAL_BUGS:
        with pytest.raises((RuntimeError, TypeError)):
            _forward_with_tutorial_bug(functional, images, bug)


def test_training_claims_pass_and_clear_their_thresholds(trained: tour.Tour) -> None:
    claims = trained.results["claims"]
    assert len(claims) == 6 and all(c.ok for c in claims), [str(c) for c in claims]
    accuracies = [run["accuracy"][-1] for run in trained.results["digits"].values()]
    assert len(accuracies) == 3 and min(accuracies) > tour.DIGITS_ACCURACY_CLAIM + 0.03
    regression = trained.results["regression"]
    assert regression["Huber", "corrupted"]["mae"][-1] < regression["MSE", "corrupted"]["mae"][-1]
    confusion = trained.results["confusion"]
    assert confusion.shape == (10, 10) and confusion.sum() == round(0.25 * 1797)


def test_plot_writes_the_three_pngs(trained: tour.Tour, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    paths = tour.draw_pictures(trained, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["confusion_matrix.png", "loss_shapes.png", "training_curves.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000


def test_plot_option_through_main(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    code, out = run_main(["--section", "2", "--plot", str(tmp_path), "--quiet"])
    assert code == 0
    assert (tmp_path / "loss_shapes.png").read_bytes().startswith(PNG_SIGNATURE)
    assert f"wrote {tmp_path / 'loss_shapes.png'}" in out


def _refused(argv: list[str], capsys) -> str:
    """The one stderr line of a ``--plot`` the tour refuses, having printed nothing else."""
    code, out = run_main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert out == ""  # refused before the first step (and before the header)
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err
    return err.rstrip("\n")


def test_plot_into_a_read_only_folder_is_one_line_before_the_steps(tmp_path, capsys) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop this user")
        err = _refused(["--section", "1", "--plot", str(folder / "plots")], capsys)
        assert err == f"losskit tour: cannot write plots to {folder / 'plots'}: Permission denied"
    finally:
        folder.chmod(stat.S_IRWXU)


def test_plot_refused_by_the_file_system_names_its_reason(tmp_path, capsys, monkeypatch) -> None:
    """As the read-only folder, for any user: the probe's own error is the reason given."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    err = _refused(["--plot", str(tmp_path)], capsys)
    assert err == f"losskit tour: cannot write plots to {tmp_path}: Permission denied"


@pytest.mark.parametrize("below", ["", "plots", "a/b"])
def test_plot_under_a_regular_file_is_one_line(tmp_path, capsys, below: str) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    target = blocker / below if below else blocker
    err = _refused(["--section", "1", "--plot", str(target)], capsys)
    assert err == f"losskit tour: cannot write plots to {target}: {blocker} is not a folder"
    assert blocker.read_text() == "a file, not a folder"


def test_the_writability_probe_leaves_nothing_behind(tmp_path) -> None:
    target = tmp_path / "new" / "plots"
    assert tour.plots.unwritable_reason(target) == ""
    assert list(tmp_path.iterdir()) == []  # the folders are made when the pictures are drawn
    target.mkdir(parents=True)
    assert tour.plots.unwritable_reason(target) == ""
    assert list(target.iterdir()) == []


def test_plot_folder_failing_while_drawing_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    def full(tour_, directory):
        raise OSError(28, "No space left on device", str(directory / "loss_shapes.png"))

    monkeypatch.setattr(tour.command, "draw_pictures", full)
    code, out = run_main(["--section", "1", "--plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "[PASS] sum == mean x 6" in out
    assert err == f"losskit tour: cannot write plots to {tmp_path}: No space left on device\n"


def test_section_runs_one_step() -> None:
    code, out = run_main(["--section", "3"])
    assert code == 0
    assert "\n3. Cross-entropy" in out and "\n1. " not in out and "\n4. " not in out
    assert "All 7 claims passed" in out


def test_quick_training_through_main_with_epochs() -> None:
    pytest.importorskip("sklearn")
    code, out = run_main(["--section", "7", "--epochs", "1", "--quiet", "--seed", "1"])
    assert "Adam, 1 epochs" in out and "[PASS] seeded" in out
    assert code in (0, 1)  # one epoch may or may not clear the accuracy bar


def test_a_failing_claim_makes_the_exit_status_nonzero(monkeypatch) -> None:
    mse = LF.mse_loss

    def wrong_sum(input, target, *args, reduction="mean", **kwargs):
        loss = mse(input, target, *args, reduction=reduction, **kwargs)
        return loss * 1.01 if reduction == "sum" else loss

    monkeypatch.setattr(LF, "mse_loss", wrong_sum)
    monkeypatch.setattr(losskit.MSELoss, "function", staticmethod(wrong_sum))  # what it calls
    code, out = run_main(["--section", "1"])
    assert code == 1
    assert "  [FAIL] sum == mean x 6" in out
    assert "claims FAILED" in out and "All " not in out


def test_cli_routes_tour() -> None:
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        assert cli.main(["tour", "--section", "6", "--quiet"]) == 0
    assert "\n6. Dropout" in out.getvalue()


def test_without_the_demo_extra_step_7_and_pictures_say_how_to_enable(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert tour.missing_demo_modules() == ["sklearn", "matplotlib"]
    assert tour.step_training(quiet_tour()) == []
    code, out = run_main(["--section", "7", "--plot", str(tmp_path / "plots")])
    assert code == 0
    assert out.count("pip install 'losskit[demo]'") == 3  # the note, step 7, the pictures
    assert "skipped: needs scikit-learn" in out and "skipped: needs matplotlib" in out
    assert not (tmp_path / "plots").exists()
    code, out = run_main(["--section", "1"])  # the other steps run as usual
    assert code == 0 and "[PASS] sum == mean x 6" in out


def test_progress_bar_falls_back_without_tqdm_and_is_off_when_quiet(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert list(_progress(range(4), total=4, desc="(a)", enabled=True)) == [0, 1, 2, 3]
    assert "(a) [#####" in capsys.readouterr().err
    assert list(_progress(range(4), total=4, desc="(a)", enabled=False)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""
