"""Step 7: real training on the data sets that ship inside scikit-learn, and its loops.

The tutorial's CNN learns scikit-learn's 8x8 digits with three losses; a linear model learns the
diabetes scores with MSE and with Huber, on clean and on partly corrupted targets.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import losskit.functional as LF

from .models import TutorialCNN
from .report import DEMO_EXTRA, Tour, missing_demo_modules, tour_step

DIGITS_ACCURACY_CLAIM = 0.90
DIABETES_STEPS = 300
CORRUPTED_FRACTION = 0.10  # of the diabetes training targets, shifted by 6 standard deviations


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


@tour_step(7, "Real training: the tutorial's CNN on digits, MSE vs Huber on diabetes")
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
    fit = functools.partial(
        train_linear_regression, steps=DIABETES_STEPS, seed=tour.seed, scale=(mean, std)
    )
    regression = {}
    with _one_thread():
        for data, y in (("clean", standardized), ("corrupted", corrupted)):
            for name, loss_fn in losses.items():
                regression[name, data] = fit(loss_fn, features, y, train, test)
        again = fit(LF.mse_loss, features, standardized, train, test)
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
