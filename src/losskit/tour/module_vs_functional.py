"""Steps 5 and 6: a layer as a Module and as a function (convolutions, the CNN both ways, the
tutorial's four bugs), and dropout in ``train()`` and ``eval()``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import FunctionalCNN, TutorialCNN
from .report import Tour, fmt_shape, tour_step


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


@tour_step(5, "Module vs functional: nn.Conv2d and F.conv2d, nn.Sequential, the CNN both ways")
def step_module_vs_functional(tour: Tour) -> None:
    images = torch.randn(4, 1, 28, 28)
    conv = nn.Conv2d(1, 16, kernel_size=5)
    as_module = conv(images)
    as_function = F.conv2d(images, conv.weight, conv.bias)
    tour.say(
        f"  nn.Conv2d(1, 16, 5) and F.conv2d with its weight: {fmt_shape(images)} -> "
        f"{fmt_shape(as_module)}"
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
        f"  the tutorial's CNN: {fmt_shape(images)} -> {fmt_shape(cnn(images))}, "
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


@tour_step(6, "Dropout: nn.Dropout vs F.dropout, in train() and eval()")
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
