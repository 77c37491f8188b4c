"""The tour's pictures: PNGs drawn with matplotlib on the Agg canvas (``--plot DIR``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

import losskit.functional as LF

from .report import DEMO_EXTRA, Tour, missing_demo_modules


def _figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _curves(ax, x: Tensor, curves: dict[str, Tensor], **labels) -> None:
    """Draw each named curve over ``x`` on ``ax``, with titles and limits from ``labels``."""
    for label, values in curves.items():
        ax.plot(x.numpy(), values.numpy(), label=label, lw=2)
    ax.set(ylabel="loss per element", **labels)
    ax.legend()
    ax.grid(alpha=0.3)


def plot_loss_shapes(path: Path) -> Path:
    """The losses as functions of the prediction: regression and binary."""
    fig, (left, right) = _figure(11, 4.2, ncols=2)
    residual = torch.linspace(-3, 3, 301)
    zero = torch.zeros_like(residual)
    regression = {
        "MSE: $r^2$": LF.mse_loss(residual, zero, reduction="none"),
        "L1: $|r|$": LF.l1_loss(residual, zero, reduction="none"),
        "Huber, $\\delta$ = 1": LF.huber_loss(residual, zero, reduction="none", delta=1.0),
    }
    _curves(
        left,
        residual,
        regression,
        title="Regression losses",
        xlabel="prediction - target",
        ylim=(0, 4.5),
    )
    logits = torch.linspace(-5, 5, 301)
    ones = torch.ones_like(logits)
    binary = {
        "BCE": LF.binary_cross_entropy_with_logits(logits, ones, reduction="none"),
        "focal, $\\gamma$ = 2": LF.sigmoid_focal_loss(
            logits, ones, alpha=-1, gamma=2.0, reduction="none"
        ),
        "BCE, label_smoothing = 0.1": LF.binary_cross_entropy_with_logits(
            logits, ones, reduction="none", label_smoothing=0.1
        ),
    }
    _curves(
        right,
        torch.sigmoid(logits),
        binary,
        title="Binary losses (target = 1)",
        xlabel="predicted probability of the target",
        ylim=(0, 5),
    )
    fig.savefig(path, dpi=110)
    return path


def plot_training_curves(results: dict, path: Path) -> Path:
    """Step 7's curves: digits accuracy and loss per epoch, diabetes held-out MAE per step."""
    fig, (acc, loss, reg) = _figure(15, 4.4, ncols=3)
    for name, run in results["digits"].items():
        epochs = range(1, len(run["accuracy"]) + 1)
        acc.plot(epochs, [100 * a for a in run["accuracy"]], marker="o", ms=3, label=name)
        loss.plot(epochs, run["loss"], marker="o", ms=3, label=name)
    acc.set(title="Digits: held-out accuracy", xlabel="epoch", ylabel="accuracy (%)")
    loss.set(
        title="Digits: training loss (each in its own units)",
        xlabel="epoch",
        ylabel="mean loss per example",
        yscale="log",
    )
    for (name, data), run in results["regression"].items():
        reg.plot(
            run["step"],
            run["mae"],
            label=f"{name}, {data} targets",
            ls="-" if data == "clean" else "--",
            lw=2,
        )
    reg.axhline(results["baseline"], color="gray", ls=":", label="predict the training mean")
    reg.set(
        title="Diabetes: held-out error",
        xlabel="Adam step",
        ylabel="mean absolute error (disease score)",
    )
    for ax in (acc, loss, reg):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(confusion: Tensor, path: Path) -> Path:
    """The confusion matrix of step 7's digits model (a), counts in the cells."""
    fig, ax = _figure(5.6, 5)
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    high = confusion.max().item() / 2
    for (row, col), count in zip(
        torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(),
        confusion.flatten().tolist(),
        strict=True,
    ):
        if count:
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > high else "black",
            )
    accuracy = confusion.diag().sum().item() / confusion.sum().item()
    ax.set(
        title=f"Digits, held out: cross-entropy model ({accuracy:.1%} correct)",
        xlabel="predicted digit",
        ylabel="true digit",
        xticks=range(10),
        yticks=range(10),
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    fig.savefig(path, dpi=110)
    return path


def unwritable_reason(directory: Path) -> str:
    """'' when the PNGs can be written into ``directory``, else why not; leaves no trace.

    Finds the nearest folder of ``directory`` that exists (itself or a parent) and creates, then
    removes, an empty folder in it: the test that also catches a read-only file system, or
    permissions that deny this user, which a look at the mode bits would miss. The folders
    themselves are made only when the pictures are drawn.
    """
    try:
        existing = directory
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".losskit-probe-"))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def draw_pictures(tour: Tour, directory: Path) -> list[Path]:
    """Write the PNGs that the steps run so far can draw; say where they are."""
    tour.say("\nPictures")
    if missing_demo_modules(("matplotlib",)):
        tour.say(f"  skipped: needs matplotlib (not installed). Enable with: {DEMO_EXTRA}")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    paths = [plot_loss_shapes(directory / "loss_shapes.png")]
    if "digits" in tour.results:
        paths.append(plot_training_curves(tour.results, directory / "training_curves.png"))
        paths.append(plot_confusion(tour.results["confusion"], directory / "confusion_matrix.png"))
    for path in paths:
        tour.say(f"  wrote {path}")
    return paths
