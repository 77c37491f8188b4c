"""Section 1: mean squared error and its three reductions.

    python examples/01_regression.py

``reduction='none'`` keeps one loss per element, ``'mean'`` averages them and ``'sum'`` adds
them up, so on a (3, 2) input the sum is the mean times 6. The tutorial spells the mean
``'elementwise_mean'``, the old name, which losskit still accepts with a FutureWarning.
"""

import torch

import losskit

torch.manual_seed(0)
input = torch.randn(3, 2, requires_grad=True)
target = torch.randn(3, 2)

losses = {}
for reduction in ("none", "mean", "sum"):
    losses[reduction] = losskit.MSELoss(reduction=reduction)(input, target)
    print(f"reduction={reduction!r:<7} shape {tuple(losses[reduction].shape)}")
    print(losses[reduction].detach())

print(f"sum {losses['sum'].item():.4f} == mean x 6 {6 * losses['mean'].item():.4f}")
assert torch.allclose(losses["sum"], 6 * losses["mean"])

losses["mean"].backward()  # d mean / d input = 2 (input - target) / 6
print("gradient of the mean:", input.grad)
assert torch.allclose(input.grad, (input - target).detach() / 3)
