"""Step 4: custom losses, as the tutorial writes them and on :class:`losskit.Loss`, each
verified by :func:`losskit.check`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import losskit
import losskit.functional as LF

from .report import Tour, tour_step


class My_loss(nn.Module):  # noqa: N801 - the tutorial's name
    """The tutorial's custom loss: any tensor math is differentiable, so this is mean squared
    error."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.mean(torch.pow((x - y), 2))


class MyLoss(losskit.Loss):
    """``My_loss`` on :class:`losskit.Loss`: write the per-element loss, get every reduction."""

    def elementwise(self, input: Tensor, target: Tensor) -> Tensor:
        return (input - target) ** 2


class SoftTargetCrossEntropy(nn.Module):
    """The tutorial's cross-entropy for soft (probability) targets, from ``log_softmax``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        loss = torch.sum(-target * F.log_softmax(input, dim=1), dim=1)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


@tour_step(4, "Custom losses: tensor math in an nn.Module")
def step_custom(tour: Tour) -> None:
    input = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3)
    mine, reference = My_loss()(input, target), losskit.MSELoss()(input, target)
    tour.say(f"  My_loss {mine.item():.6f}   losskit.MSELoss {reference.item():.6f}")
    tour.same("My_loss (torch.mean(torch.pow(x - y, 2))) == MSELoss", mine, reference, tol=1e-6)
    tour.claim(
        "... and it has a gradient: autograd differentiates any tensor math",
        mine.requires_grad and mine.grad_fn is not None,
        f"grad_fn {mine.grad_fn.name()}",
    )

    for reduction in ("none", "mean", "sum"):
        ours = MyLoss(reduction=reduction)(input, target)
        tour.same(
            f"losskit.Loss subclass (3 lines) == MSELoss, reduction={reduction!r}",
            ours,
            losskit.MSELoss(reduction=reduction)(input, target),
            tol=1e-6,
        )

    logits = torch.randn(4, 5, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 5), dim=1)  # soft labels, e.g. from a teacher
    for reduction in ("none", "mean", "sum"):
        tour.same(
            f"soft-target cross-entropy from log_softmax == losskit, reduction={reduction!r}",
            SoftTargetCrossEntropy(reduction)(logits, soft),
            LF.cross_entropy(logits, soft, reduction=reduction),
            tol=1e-6,
        )

    # losskit.check compares each with its losskit twin; compile=False keeps the tour quick
    checks = (
        ("My_loss", My_loss(), (input, target), dict(functional=LF.mse_loss)),
        (
            "SoftTargetCrossEntropy",
            SoftTargetCrossEntropy(),
            (logits, soft),
            dict(functional=LF.cross_entropy, none_shape=(4,)),
        ),  # 'none': one loss per row
    )
    for name, loss, inputs, options in checks:
        tour.say(f"  losskit.check({name}(), ...):")
        report = losskit.check(loss, *inputs, compile=False, quiet=True, **options)
        for line in str(report).splitlines()[1:-1]:
            tour.say(f"  {line}")
        skipped = sum(r.skipped for r in report.results)
        tour.claim(
            f"losskit.check passes {name}",
            report.ok,
            f"{len(report.results) - skipped} properties checked, {skipped} skipped",
        )
