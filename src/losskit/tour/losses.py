"""Steps 1-3: the built-in losses, for regression, binary and multi-class targets."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import losskit
import losskit.functional as LF

from .custom import SoftTargetCrossEntropy
from .report import Tour, fmt, fmt_shape, tour_step


@tour_step(1, "Mean squared error: reductions 'none', 'elementwise_mean', 'sum'")
def step_regression(tour: Tour) -> None:
    input = torch.randn(3, 2, requires_grad=True)
    target = torch.randn(3, 2)
    losses = {}
    for reduction in ("none", "elementwise_mean", "sum"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses[reduction] = losskit.MSELoss(reduction=reduction)(input, target)
        note = "  (old name of 'mean': FutureWarning)" if caught else ""
        tour.say(
            f"  reduction={reduction!r:<19} shape {fmt_shape(losses[reduction]):<7} "
            f"{fmt(losses[reduction].detach())}{note}"
        )
    shapes = [tuple(losses[r].shape) for r in losses]
    tour.claim(
        "'none' keeps the input's shape, the others are 0-dim",
        shapes == [(3, 2), (), ()],
        f"shapes {shapes}",
    )
    tour.same("sum == mean x 6", losses["sum"], losses["elementwise_mean"] * 6, tol=1e-5)
    tour.same(
        "'none', averaged, is the mean", losses["none"].mean(), losses["elementwise_mean"], tol=1e-6
    )
    torch_losses = [nn.MSELoss(reduction=r)(input, target) for r in ("none", "mean", "sum")]
    tour.claim(
        "losskit.MSELoss == torch.nn.MSELoss in every reduction",
        all(torch.equal(a, b) for a, b in zip(losses.values(), torch_losses, strict=True)),
        "bitwise",
    )


@tour_step(2, "Binary cross-entropy: on sigmoid outputs and on logits")
def step_binary(tour: Tour) -> None:
    logits = torch.randn(3, requires_grad=True)
    target = torch.empty(3).random_(2)
    on_probs = losskit.BCELoss()(torch.sigmoid(logits), target)
    on_logits = losskit.BCEWithLogitsLoss()(logits, target)
    (g_probs,) = torch.autograd.grad(on_probs, logits)
    (g_logits,) = torch.autograd.grad(on_logits, logits)
    tour.say(f"  logits {fmt(logits.detach())}, target {fmt(target)}")
    tour.say(
        f"  BCELoss(sigmoid(x), y) = {on_probs.item():.6f}   "
        f"BCEWithLogitsLoss(x, y) = {on_logits.item():.6f}"
    )
    tour.same(
        "BCELoss on sigmoid outputs == BCEWithLogitsLoss on the logits",
        on_probs,
        on_logits,
        tol=1e-6,
    )
    tour.same("... and so are their gradients", g_probs, g_logits, tol=1e-6)
    # Where the sigmoid rounds to 1.0, log(1 - p) = -inf: the probability form clamps it at -100.
    far = torch.tensor([30.0])
    clamped = losskit.BCELoss()(torch.sigmoid(far), torch.zeros(1))
    exact = losskit.BCEWithLogitsLoss()(far, torch.zeros(1))
    tour.say(
        f"  logit 30, target 0: on sigmoid outputs {clamped.item():.1f} (log clamped at "
        f"-100), on logits {exact.item():.1f}"
    )
    tour.claim(
        "the logits form stays exact where the sigmoid saturates",
        abs(exact.item() - 30.0) < 1e-4 and clamped.item() == 100.0,
        f"{exact.item():.4f} vs {clamped.item():.1f}",
    )


@tour_step(3, "Cross-entropy: class indices, one-hot, log_softmax; then K dimensions")
def step_multiclass(tour: Tour) -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    index = torch.randint(5, (3,))
    one_hot = F.one_hot(index, 5).float()
    decoded = one_hot.argmax(dim=1)
    tour.say(
        f"  logits (3, 5); targets: class indices {index.tolist()}, one-hot {fmt_shape(one_hot)}"
    )
    forms = {
        "class indices": LF.cross_entropy(logits, index),
        "one-hot, as given": LF.cross_entropy(logits, one_hot),
        "one-hot, argmax-decoded": LF.cross_entropy(logits, decoded),
        "log_softmax by hand": SoftTargetCrossEntropy()(logits, one_hot),
    }
    grads = {name: torch.autograd.grad(loss, logits)[0] for name, loss in forms.items()}
    for name, loss in forms.items():
        tour.say(f"  {name:<24} loss {loss.item():.6f}")
    tour.claim(
        "argmax decodes the one-hot rows to the class indices",
        torch.equal(decoded, index),
        f"{decoded.tolist()}",
    )
    values = torch.stack(list(forms.values()))
    tour.same("the loss is the same in every form", values, values[0].expand(4), tol=1e-6)
    reference = grads["class indices"]
    tour.same(
        "so is the gradient", torch.stack(list(grads.values())), reference.expand(4, 3, 5), tol=1e-6
    )
    tour.same(
        "losskit == torch.nn.functional.cross_entropy",
        forms["class indices"],
        F.cross_entropy(logits, index),
        tol=1e-6,
    )

    seg = torch.randn(2, 4, 8, 8)  # a batch of 2 images, 4 classes, 8x8 pixels
    labels = torch.randint(4, (2, 8, 8))
    per_pixel = LF.cross_entropy(seg, labels, reduction="none")
    rows = LF.cross_entropy(seg.movedim(1, -1).reshape(-1, 4), labels.reshape(-1), reduction="none")
    tour.say(
        f"  segmentation: logits {fmt_shape(seg)}, target {fmt_shape(labels)} -> 'none' "
        f"{fmt_shape(per_pixel)}, mean {per_pixel.mean().item():.6f}"
    )
    tour.claim(
        "K-dimensional cross-entropy gives one loss per pixel",
        per_pixel.shape == labels.shape,
        f"shape {fmt_shape(per_pixel)}",
    )
    tour.same(
        "... equal to flattening the pixels into rows", per_pixel, rows.view(2, 8, 8), tol=1e-6
    )
    tour.same(
        "... and to torch", LF.cross_entropy(seg, labels), F.cross_entropy(seg, labels), tol=1e-6
    )
