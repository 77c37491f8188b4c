"""``losskit tour``: the tutorial, run for real, every claim verified, with pictures.

    python -m losskit tour [--section N] [--seed S] [--plot DIR] [--quiet]

Seven steps, in the tutorial's order. Each prints its numbers and one ``[PASS]``/``[FAIL]`` line per
claim it verifies; the command exits 1 if any claim fails. Step 7 trains real models on the data
sets that ship inside scikit-learn and ``--plot`` draws PNGs with matplotlib: both are the optional
extra ``losskit[demo]``; without it the tour runs every other step and says how to enable them.

Each step function takes a :class:`Tour` (or none: a default one prints to stdout) and returns the
:class:`Claim` objects it checked, so the steps can be run and tested one by one.

Where things live: ``report`` (claims, :class:`Tour`, the step registry), ``losses`` (steps 1-3:
regression, binary, multi-class), ``custom`` (step 4: custom losses), ``module_vs_functional``
(steps 5-6: layers as Modules and functions, dropout), ``models`` (the tutorial's CNNs),
``training`` (step 7 and its training loops), ``plots`` (the pictures), ``command`` (the CLI).
"""

from __future__ import annotations

from .command import main
from .custom import My_loss, MyLoss, SoftTargetCrossEntropy, step_custom
from .losses import step_binary, step_multiclass, step_regression
from .models import FunctionalCNN, TutorialCNN
from .module_vs_functional import (
    TUTORIAL_BUGS,
    DropoutFunctional,
    DropoutModule,
    step_dropout,
    step_module_vs_functional,
)
from .plots import draw_pictures, plot_confusion, plot_loss_shapes, plot_training_curves
from .report import (
    DEMO_EXTRA,
    DIGITS_EPOCHS,
    STEPS,
    Claim,
    Step,
    Tour,
    missing_demo_modules,
)
from .training import (
    CORRUPTED_FRACTION,
    DIABETES_STEPS,
    DIGITS_ACCURACY_CLAIM,
    DIGITS_LOSSES,
    DigitsLoss,
    step_training,
    train_digits,
    train_linear_regression,
)

__all__ = [
    "CORRUPTED_FRACTION",
    "DEMO_EXTRA",
    "DIABETES_STEPS",
    "DIGITS_ACCURACY_CLAIM",
    "DIGITS_EPOCHS",
    "DIGITS_LOSSES",
    "STEPS",
    "TUTORIAL_BUGS",
    "Claim",
    "DigitsLoss",
    "DropoutFunctional",
    "DropoutModule",
    "FunctionalCNN",
    "MyLoss",
    "My_loss",
    "SoftTargetCrossEntropy",
    "Step",
    "Tour",
    "TutorialCNN",
    "draw_pictures",
    "main",
    "missing_demo_modules",
    "plot_confusion",
    "plot_loss_shapes",
    "plot_training_curves",
    "step_binary",
    "step_custom",
    "step_dropout",
    "step_module_vs_functional",
    "step_multiclass",
    "step_regression",
    "step_training",
    "train_digits",
    "train_linear_regression",
]
