"""``losskit tour``: the tutorial, run for real, every claim verified, with pictures.

    python -m losskit tour [--section N] [--seed S] [--plot DIR] [--quiet]

Seven steps, in the tutorial's order. Each prints its numbers and one ``[PASS]``/``[FAIL]`` line per
claim it verifies; the command exits 1 if any claim fails. Step 7 trains real models on the data
sets that ship inside scikit-learn and ``--plot`` draws PNGs with matplotlib: both are the optional
extra ``losskit[demo]``; without it the tour runs every other step and says how to enable them.

Each step function takes a :class:`Tour` (or none: a default one prints to stdout) and returns the
:class:`Claim` objects it checked, so the steps can be run and tested one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import losskit
import losskit.functional as LF

DEMO_EXTRA = "pip install 'losskit[demo]'"
DIGITS_EPOCHS = 12  # ~1 s per model on one core; each loss reaches > 94% held-out accuracy
DIGITS_ACCURACY_CLAIM = 0.90
DIABETES_STEPS = 300
CORRUPTED_FRACTION = 0.10  # of the diabetes training targets, shifted by 6 standard deviations


# --------------------------------------------------------------------------------------------
# claims and the tour's state
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One verified statement: what was claimed, whether it held, and the measured evidence."""

    text: str
    ok: bool
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"  [{'PASS' if self.ok else 'FAIL'}] {self.text}{detail}"


@dataclass
class Tour:
    """Options and output of one tour; the steps print through it and record their claims."""

    seed: int = 0
    quiet: bool = False
    epochs: int = DIGITS_EPOCHS
    out: TextIO | None = None
    claims: list[Claim] = field(default_factory=list)
    results: dict = field(default_factory=dict)  # what step 7 trained, for the pictures

    def say(self, text: str = "") -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def claim(self, text: str, ok: bool, detail: str = "") -> Claim:
        """Record and print a claim."""
        result = Claim(text, bool(ok), detail)
        self.claims.append(result)
        self.say(str(result))
        return result

    def same(self, text: str, a: Tensor | float, b: Tensor | float, *, tol: float = 0.0) -> Claim:
        """Claim that ``a`` and ``b`` agree elementwise to ``tol`` (0: bitwise equal values)."""
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        ok = a.shape == b.shape
        diff = (a.double() - b.double()).abs().max().item() if ok and a.numel() else 0.0
        detail = f"|diff| = {diff:.1e}" if ok else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        return self.claim(text, ok and diff <= tol, detail)


Step = Callable[..., list[Claim]]
STEPS: dict[int, tuple[str, Step]] = {}


def _step(number: int, title: str) -> Callable[[Callable[[Tour], None]], Step]:
    """Register a step: the wrapper prints its heading, seeds it, and returns its claims."""

    def register(body: Callable[[Tour], None]) -> Step:
        @functools.wraps(body)
        def run(tour: Tour | None = None) -> list[Claim]:
            tour = tour if tour is not None else Tour()
            tour.say(f"\n{number}. {title}")
            torch.manual_seed(tour.seed + number)  # each step repeats on its own (--section)
            start = len(tour.claims)
            body(tour)
            return tour.claims[start:]

        STEPS[number] = (title, run)
        return run

    return register


def _fmt(t: Tensor) -> str:
    return str([round(v, 4) for v in t.flatten().tolist()]) if t.dim() else f"{t.item():.4f}"


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def missing_demo_modules(names: Iterable[str] = ("sklearn", "matplotlib")) -> list[str]:
    """The optional ``losskit[demo]`` modules that are not installed (found without importing)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


# --------------------------------------------------------------------------------------------
# the tutorial's models, corrected
# --------------------------------------------------------------------------------------------


def _pooled_side(side: int, kernel_size: int, padding: int) -> int:
    """Side length after a conv (stride 1) and a 2x2 max-pool."""
    return (side + 2 * padding - kernel_size + 1) // 2


class TutorialCNN(nn.Module):
    """The tutorial's CNN written with Modules: two conv-ReLU-pool blocks and a linear layer.

    The defaults are the tutorial's (28x28 MNIST images, 5x5 kernels); ``image_size=8,
    kernel_size=3, padding=1`` adapts it to scikit-learn's 8x8 digits.
    """

    def __init__(
        self, image_size: int = 28, kernel_size: int = 5, padding: int = 0, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.cnn1 = nn.Conv2d(1, 16, kernel_size=kernel_size, padding=padding)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(kernel_size=2)
        self.cnn2 = nn.Conv2d(16, 32, kernel_size=kernel_size, padding=padding)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(kernel_size=2)
        side = _pooled_side(_pooled_side(image_size, kernel_size, padding), kernel_size, padding)
        self.fc1 = nn.Linear(side * side * 32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool1(self.relu1(self.cnn1(x)))
        out = self.maxpool2(self.relu2(self.cnn2(out)))
        return self.fc1(out.flatten(1))


class FunctionalCNN(nn.Module):
    """The same CNN written with ``torch.nn.functional``: the Module holds only the weights.

    The tutorial's version, corrected: the image is not reshaped before the first convolution,
    ``max_pool2d`` gets its kernel size, each layer is fed ``out`` (not ``x``), and the linear
    weight is stored ``(out_features, in_features)`` as ``F.linear`` expects.
    """

    def __init__(
        self, image_size: int = 28, kernel_size: int = 5, padding: int = 0, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.padding = padding
        side = _pooled_side(_pooled_side(image_size, kernel_size, padding), kernel_size, padding)
        k = kernel_size
        self.cnn1_weight = nn.Parameter(_uniform_fan_in((16, 1, k, k)))
        self.bias1_weight = nn.Parameter(_uniform_fan_in((16,), fan_in=k * k))
        self.cnn2_weight = nn.Parameter(_uniform_fan_in((32, 16, k, k)))
        self.bias2_weight = nn.Parameter(_uniform_fan_in((32,), fan_in=16 * k * k))
        self.linear1_weight = nn.Parameter(_uniform_fan_in((num_classes, side * side * 32)))
        self.bias3_weight = nn.Parameter(_uniform_fan_in((num_classes,), fan_in=side * side * 32))

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x, self.cnn1_weight, self.bias1_weight, padding=self.padding)
        out = F.max_pool2d(F.relu(out), kernel_size=2)
        out = F.conv2d(out, self.cnn2_weight, self.bias2_weight, padding=self.padding)
        out = F.max_pool2d(F.relu(out), kernel_size=2)
        return F.linear(out.flatten(1), self.linear1_weight, self.bias3_weight)

    @torch.no_grad()
    def copy_from(self, cnn: TutorialCNN) -> FunctionalCNN:
        """Take the weights of a :class:`TutorialCNN` of the same geometry."""
        for mine, theirs in zip(self.parameters(), cnn.parameters(), strict=True):
            mine.copy_(theirs)
        return self


def _uniform_fan_in(shape: tuple[int, ...], fan_in: int | None = None) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the scale nn.Conv2d and nn.Linear start from."""
    fan_in = fan_in if fan_in is not None else math.prod(shape[1:])
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


def _forward_with_tutorial_bug(cnn: FunctionalCNN, x: Tensor, bug: str) -> Tensor:
    """:meth:`FunctionalCNN.forward` with one of the tutorial's four bugs put back."""
    if bug == "reshape":
        x = x.view(x.size(0), -1)
    out = F.conv2d(x, cnn.cnn1_weight, cnn.bias1_weight, padding=cnn.padding)
    out = F.max_pool2d(F.relu(out)) if bug == "pool" else F.max_pool2d(F.relu(out), 2)
    out = F.conv2d(x if bug == "x" else out, cnn.cnn2_weight, cnn.bias2_weight, padding=cnn.padding)
    out = F.max_pool2d(F.relu(out), 2)
    weight = cnn.linear1_weight.T if bug == "transposed" else cnn.linear1_weight
    return F.linear(out.flatten(1), weight, cnn.bias3_weight)


TUTORIAL_BUGS = {
    "reshape": "no x.view(x.size(0), -1) before the first conv: conv2d needs (N, C, H, W)",
    "pool": "max_pool2d gets its kernel size, 2: it has no default",
    "x": "each later layer is fed the previous output `out`, not the image `x`",
    "transposed": "the linear weight is (10, 512), F.linear's (out, in), not (512, 10)",
}


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


# --------------------------------------------------------------------------------------------
# steps 1-6: the tutorial's claims
# --------------------------------------------------------------------------------------------


@_step(1, "Mean squared error: reductions 'none', 'elementwise_mean', 'sum'")
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
            f"  reduction={reduction!r:<19} shape {_shape(losses[reduction]):<7} "
            f"{_fmt(losses[reduction].detach())}{note}"
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


@_step(2, "Binary cross-entropy: on sigmoid outputs and on logits")
def step_binary(tour: Tour) -> None:
    logits = torch.randn(3, requires_grad=True)
    target = torch.empty(3).random_(2)
    on_probs = losskit.BCELoss()(torch.sigmoid(logits), target)
    on_logits = losskit.BCEWithLogitsLoss()(logits, target)
    (g_probs,) = torch.autograd.grad(on_probs, logits)
    (g_logits,) = torch.autograd.grad(on_logits, logits)
    tour.say(f"  logits {_fmt(logits.detach())}, target {_fmt(target)}")
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


@_step(3, "Cross-entropy: class indices, one-hot, log_softmax; then K dimensions")
def step_multiclass(tour: Tour) -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    index = torch.randint(5, (3,))
    one_hot = F.one_hot(index, 5).float()
    decoded = one_hot.argmax(dim=1)
    tour.say(f"  logits (3, 5); targets: class indices {index.tolist()}, one-hot {_shape(one_hot)}")
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
        f"  segmentation: logits {_shape(seg)}, target {_shape(labels)} -> 'none' "
        f"{_shape(per_pixel)}, mean {per_pixel.mean().item():.6f}"
    )
    tour.claim(
        "K-dimensional cross-entropy gives one loss per pixel",
        per_pixel.shape == labels.shape,
        f"shape {_shape(per_pixel)}",
    )
    tour.same(
        "... equal to flattening the pixels into rows", per_pixel, rows.view(2, 8, 8), tol=1e-6
    )
    tour.same(
        "... and to torch", LF.cross_entropy(seg, labels), F.cross_entropy(seg, labels), tol=1e-6
    )


@_step(4, "Custom losses: tensor math in an nn.Module")
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


@_step(5, "Module vs functional: nn.Conv2d and F.conv2d, nn.Sequential, the CNN both ways")
def step_module_vs_functional(tour: Tour) -> None:
    images = torch.randn(4, 1, 28, 28)
    conv = nn.Conv2d(1, 16, kernel_size=5)
    as_module = conv(images)
    as_function = F.conv2d(images, conv.weight, conv.bias)
    tour.say(
        f"  nn.Conv2d(1, 16, 5) and F.conv2d with its weight: {_shape(images)} -> "
        f"{_shape(as_module)}"
    )
    tour.same("nn.Conv2d == F.conv2d with the same weights", as_module, as_function)
    block = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    tour.same(
        "nn.Sequential(conv, ReLU, MaxPool2d) == the layers called in turn",
        block(images),
        F.max_pool2d(F.relu(conv(images)), 2),
    )

    cnn = TutorialCNN()
    functional = FunctionalCNN().copy_from(cnn)
    tour.say(
        f"  the tutorial's CNN: {_shape(images)} -> {_shape(cnn(images))}, "
        f"{sum(p.numel() for p in cnn.parameters())} weights"
    )
    tour.same(
        "the CNN with Modules == the CNN with F.* once the weights are shared",
        cnn(images),
        functional(images),
    )
    tour.say("  the tutorial's functional CNN, corrected:")
    raised = {}
    for bug, fix in TUTORIAL_BUGS.items():
        try:
            _forward_with_tutorial_bug(functional, images, bug)
        except (RuntimeError, TypeError) as exc:
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            raised[bug] = message if len(message) <= 76 else message[:75] + "…"
        tour.say(f"    fixed: {fix}")
        tour.say(f"           as written: {raised.get(bug, 'ran without an error')}")
    tour.claim(
        "each of the four bugs, put back alone, makes the forward fail",
        len(raised) == len(TUTORIAL_BUGS),
        f"{len(raised)} of {len(TUTORIAL_BUGS)} raise",
    )


class DropoutModule(nn.Module):
    """The tutorial's Model1: ``nn.Dropout`` follows ``train()`` / ``eval()`` by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.dropout(inputs)


class DropoutFunctional(nn.Module):
    """The tutorial's Model2/Model3: ``F.dropout`` needs ``training=self.training`` passed."""

    def __init__(self, pass_training: bool) -> None:
        super().__init__()
        self.pass_training = pass_training

    def forward(self, inputs: Tensor) -> Tensor:
        if self.pass_training:
            return F.dropout(inputs, p=0.5, training=self.training)
        return F.dropout(inputs, p=0.5)


@_step(6, "Dropout: nn.Dropout vs F.dropout, in train() and eval()")
def step_dropout(tour: Tour) -> None:
    inputs = torch.ones(16)
    models = {
        "nn.Dropout(0.5)": DropoutModule(),
        "F.dropout(training=self.training)": DropoutFunctional(pass_training=True),
        "F.dropout (no training=)": DropoutFunctional(pass_training=False),
    }
    outputs = {}
    for mode in ("train", "eval"):
        for name, model in models.items():
            model.train(mode == "train")
            out = model(inputs)
            outputs[name, mode] = out
            zeros = int((out == 0).sum())
            tour.say(
                f"  {mode + '()':<8} {name:<34} zeroed {zeros:>2} of 16, kept values "
                f"{sorted(set(out[out != 0].tolist()))}"
            )
    trained = [outputs[name, "train"] for name in models]
    tour.claim(
        "in train() all three drop, and scale the kept values by 1/(1-p) = 2",
        all(bool((o == 0).any()) and set(o[o != 0].tolist()) == {2.0} for o in trained),
        f"zeroed {[int((o == 0).sum()) for o in trained]}",
    )
    tour.claim(
        "after eval(), nn.Dropout passes its input through",
        torch.equal(outputs["nn.Dropout(0.5)", "eval"], inputs),
    )
    tour.claim(
        "after eval(), F.dropout(training=self.training) passes it through",
        torch.equal(outputs["F.dropout(training=self.training)", "eval"], inputs),
    )
    still = outputs["F.dropout (no training=)", "eval"]
    tour.claim(
        "after eval(), F.dropout without training= still drops",
        bool((still == 0).any()),
        f"zeroed {int((still == 0).sum())} of 16",
    )


# --------------------------------------------------------------------------------------------
# step 7: real training
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Models this small train fastest on one thread (no cross-core sync), and the numbers
    then repeat on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _progress(items: Iterable, *, total: int, desc: str, enabled: bool) -> Iterator:
    """tqdm when installed, else a one-line bar on stderr; nothing when ``enabled`` is False."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=f"  {desc}", leave=False, ncols=80)
        return
    for done, item in enumerate(items, 1):
        bar = "#" * (20 * done // total)
        sys.stderr.write(f"\r  {desc} [{bar:<20}] {done}/{total}")
        sys.stderr.flush()
        yield item
    sys.stderr.write("\r" + " " * (len(desc) + 34) + "\r")


def _split(n: int, held_out: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random train / held-out indices."""
    perm = torch.randperm(n, generator=generator)
    cut = round(n * held_out)
    return perm[cut:], perm[:cut]


DigitsLoss = Callable[[Tensor, Tensor], Tensor]

DIGITS_LOSSES: dict[str, DigitsLoss] = {
    "(a) cross-entropy, class indices": lambda out, y: LF.cross_entropy(out, y),
    "(b) MSE on one-hot targets": lambda out, y: LF.mse_loss(out, F.one_hot(y, 10).float()),
    "(c) cross-entropy, label_smoothing=0.1": lambda out, y: LF.cross_entropy(
        out, y, label_smoothing=0.1
    ),
}


def train_digits(
    loss_fn: DigitsLoss,
    images: Tensor,
    labels: Tensor,
    train: Tensor,
    test: Tensor,
    *,
    epochs: int,
    seed: int,
    desc: str = "",
    progress: bool = False,
) -> dict:
    """Train the 8x8 :class:`TutorialCNN` with Adam; per epoch: training loss, held-out accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = TutorialCNN(image_size=8, kernel_size=3, padding=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history: dict = {"loss": [], "accuracy": []}
    for _ in _progress(range(epochs), total=epochs, desc=desc, enabled=progress):
        model.train()
        order = train[torch.randperm(len(train), generator=generator)]
        total = 0.0
        for batch in order.split(64):
            loss = loss_fn(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        history["loss"].append(total / len(train))
        model.eval()
        with torch.no_grad():
            predicted = model(images[test]).argmax(dim=1)
        history["accuracy"].append((predicted == labels[test]).float().mean().item())
    history["predicted"] = predicted
    history["model"] = model
    return history


def train_linear_regression(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    features: Tensor,
    target: Tensor,
    train: Tensor,
    test: Tensor,
    *,
    steps: int,
    seed: int,
    scale: tuple[float, float],
) -> dict:
    """Full-batch Adam on a linear model; ``target`` is standardized, errors are reported in the
    original units (``scale`` = (mean, std)). Held-out MAE every 10 steps."""
    torch.manual_seed(seed)
    model = nn.Linear(features.shape[1], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    mean, std = scale
    history: dict = {"step": [], "mae": []}
    for step in range(1, steps + 1):
        loss = loss_fn(model(features[train]).squeeze(1), target[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps:
            with torch.no_grad():
                error = (model(features[test]).squeeze(1) - target[test]) * std
            history["step"].append(step)
            history["mae"].append(error.abs().mean().item())
    history["rmse"] = error.pow(2).mean().sqrt().item()
    history["weight"] = model.weight.detach().clone()
    return history


@_step(7, "Real training: the tutorial's CNN on digits, MSE vs Huber on diabetes")
def step_training(tour: Tour) -> None:
    missing = missing_demo_modules(("sklearn",))
    if missing:
        tour.say(f"  skipped: needs scikit-learn (not installed). Enable with: {DEMO_EXTRA}")
        return
    from sklearn.datasets import load_diabetes, load_digits

    progress = not tour.quiet
    generator = torch.Generator().manual_seed(tour.seed)
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(digits.target)
    train, test = _split(len(labels), 0.25, generator)
    tour.say(
        f"  digits: {len(labels)} 8x8 images bundled with scikit-learn, {len(train)} to train, "
        f"{len(test)} held out"
    )
    tour.say(f"  the tutorial's CNN with 3x3 kernels and padding 1; Adam, {tour.epochs} epochs")
    digits_runs = {}
    with _one_thread():
        for name, loss_fn in DIGITS_LOSSES.items():
            start = time.perf_counter()
            run = train_digits(
                loss_fn,
                images,
                labels,
                train,
                test,
                epochs=tour.epochs,
                seed=tour.seed,
                desc=name[:3],
                progress=progress,
            )
            digits_runs[name] = run
            tour.say(
                f"  {name:<40} held-out accuracy {run['accuracy'][-1]:6.1%} "
                f"({time.perf_counter() - start:.1f} s)"
            )
    for name, run in digits_runs.items():
        tour.claim(
            f"{name[:3]} beats {DIGITS_ACCURACY_CLAIM:.0%} held-out accuracy",
            run["accuracy"][-1] > DIGITS_ACCURACY_CLAIM,
            f"{run['accuracy'][-1]:.1%}",
        )
    predicted = digits_runs[next(iter(DIGITS_LOSSES))]["predicted"]
    confusion = torch.bincount(labels[test] * 10 + predicted, minlength=100).view(10, 10)
    off = confusion - torch.diag(torch.diag(confusion))
    worst = int(off.argmax())
    tour.say(
        f"  (a)'s most frequent mistake: a {worst // 10} read as {worst % 10} "
        f"({int(off.max())} of {int(confusion[worst // 10].sum())})"
    )

    diabetes = load_diabetes()
    features = torch.tensor(diabetes.data, dtype=torch.float32)
    target = torch.tensor(diabetes.target, dtype=torch.float32)
    train, test = _split(len(target), 0.25, generator)
    features = (features - features[train].mean(0)) / features[train].std(0)
    mean, std = target[train].mean().item(), target[train].std().item()
    standardized = (target - mean) / std
    corrupted = standardized.clone()
    bad = train[
        torch.randperm(len(train), generator=generator)[: round(CORRUPTED_FRACTION * len(train))]
    ]
    corrupted[bad] += 6.0
    baseline = (target[test] - mean).abs().mean().item()
    tour.say(
        f"  diabetes: {len(target)} patients, 10 features, {len(train)} to train, "
        f"{len(test)} held out"
    )
    tour.say(f"  a linear model; full-batch Adam, {DIABETES_STEPS} steps, with MSE and with Huber")
    losses = {"MSE": LF.mse_loss, "Huber": functools.partial(LF.huber_loss, delta=1.0)}
    regression = {}
    with _one_thread():
        for data, y in (("clean", standardized), ("corrupted", corrupted)):
            for name, loss_fn in losses.items():
                regression[name, data] = train_linear_regression(
                    loss_fn,
                    features,
                    y,
                    train,
                    test,
                    steps=DIABETES_STEPS,
                    seed=tour.seed,
                    scale=(mean, std),
                )
        again = train_linear_regression(
            LF.mse_loss,
            features,
            standardized,
            train,
            test,
            steps=DIABETES_STEPS,
            seed=tour.seed,
            scale=(mean, std),
        )
    tour.say(
        f"  held-out error       clean targets          {CORRUPTED_FRACTION:.0%} of "
        f"training targets +6 sd"
    )
    for name in losses:
        cells = [
            f"MAE {regression[name, d]['mae'][-1]:5.1f}  RMSE {regression[name, d]['rmse']:5.1f}"
            for d in ("clean", "corrupted")
        ]
        tour.say(f"  {name:<6}               {cells[0]}     {cells[1]}")
    tour.say(f"  (predicting the training mean: MAE {baseline:.1f})")
    clean = [regression[name, "clean"]["mae"][-1] for name in losses]
    tour.claim(
        "clean targets: MSE and Huber both beat predicting the mean by > 20%",
        max(clean) < 0.8 * baseline,
        f"MAE {clean[0]:.1f}, {clean[1]:.1f} vs {baseline:.1f}",
    )
    mse_bad, huber_bad = (regression[name, "corrupted"]["mae"][-1] for name in losses)
    tour.claim(
        "with corrupted training targets, Huber's held-out MAE beats MSE's",
        huber_bad < mse_bad,
        f"{huber_bad:.1f} vs {mse_bad:.1f}",
    )
    tour.claim(
        "seeded: training again gives the same weights, bitwise",
        torch.equal(again["weight"], regression["MSE", "clean"]["weight"]),
    )
    tour.results.update(
        digits=digits_runs, confusion=confusion, regression=regression, baseline=baseline
    )


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def plot_loss_shapes(path: Path) -> Path:
    """The losses as functions of the prediction: regression and binary."""
    fig, (left, right) = _figure(11, 4.2, ncols=2)
    residual = torch.linspace(-3, 3, 301)
    zero = torch.zeros_like(residual)
    for label, values in (
        ("MSE: $r^2$", LF.mse_loss(residual, zero, reduction="none")),
        ("L1: $|r|$", LF.l1_loss(residual, zero, reduction="none")),
        ("Huber, $\\delta$ = 1", LF.huber_loss(residual, zero, reduction="none", delta=1.0)),
    ):
        left.plot(residual.numpy(), values.numpy(), label=label, lw=2)
    left.set(
        title="Regression losses",
        xlabel="prediction - target",
        ylabel="loss per element",
        ylim=(0, 4.5),
    )
    left.legend()
    logits = torch.linspace(-5, 5, 301)
    ones = torch.ones_like(logits)
    probability = torch.sigmoid(logits)
    for label, values in (
        ("BCE", LF.binary_cross_entropy_with_logits(logits, ones, reduction="none")),
        (
            "focal, $\\gamma$ = 2",
            LF.sigmoid_focal_loss(logits, ones, alpha=-1, gamma=2.0, reduction="none"),
        ),
        (
            "BCE, label_smoothing = 0.1",
            LF.binary_cross_entropy_with_logits(
                logits, ones, reduction="none", label_smoothing=0.1
            ),
        ),
    ):
        right.plot(probability.numpy(), values.numpy(), label=label, lw=2)
    right.set(
        title="Binary losses (target = 1)",
        xlabel="predicted probability of the target",
        ylabel="loss per element",
        ylim=(0, 5),
    )
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
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


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losskit tour",
        description="Walk the tutorial: run each step, verify each claim, train real models.",
        epilog=f"Step 7 and --plot need scikit-learn and matplotlib: {DEMO_EXTRA}",
    )
    parser.add_argument(
        "--section", type=int, choices=sorted(STEPS), metavar="N", help="run only step N (1-7)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG pictures to DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--epochs",
        type=int,
        default=DIGITS_EPOCHS,
        help=f"digits training epochs (default {DIGITS_EPOCHS}); fewer is faster, "
        "but the accuracy claims may then fail",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tour = Tour(seed=args.seed, quiet=args.quiet, epochs=args.epochs)
    start = time.perf_counter()
    tour.say(
        f"losskit {losskit.__version__} tour: the tutorial, run and verified "
        f"(torch {torch.__version__}, seed {args.seed})"
    )
    missing = missing_demo_modules()
    if missing:
        tour.say(
            f"  note: {', '.join(missing)} not installed, so step 7 and the pictures are "
            f"skipped. Enable them with: {DEMO_EXTRA}"
        )
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for number in [args.section] if args.section else sorted(STEPS):
            STEPS[number][1](tour)
        if args.plot is not None:
            draw_pictures(tour, args.plot)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    failed = [c for c in tour.claims if not c.ok]
    elapsed = time.perf_counter() - start
    if failed:
        tour.say(f"\n{len(failed)} of {len(tour.claims)} claims FAILED ({elapsed:.1f} s):")
        for claim in failed:
            tour.say(str(claim))
        return 1
    tour.say(f"\nAll {len(tour.claims)} claims passed ({elapsed:.1f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
