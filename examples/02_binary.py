"""Section 2: binary cross-entropy on probabilities and on logits.

    python examples/02_binary.py

``BCELoss`` takes probabilities (a sigmoid first); ``BCEWithLogitsLoss`` takes the logits and
fuses the sigmoid in, which gives the same numbers and stays exact where the sigmoid saturates.
"""

import torch

import losskit

torch.manual_seed(0)
logits = torch.randn(3, requires_grad=True)
target = torch.empty(3).random_(2)  # 0. or 1.

on_probabilities = losskit.BCELoss()(torch.sigmoid(logits), target)
on_logits = losskit.BCEWithLogitsLoss()(logits, target)
print(f"BCELoss(sigmoid(x), y)  = {on_probabilities.item():.6f}")
print(f"BCEWithLogitsLoss(x, y) = {on_logits.item():.6f}")
assert torch.allclose(on_probabilities, on_logits)

# A confident wrong answer: logit 30 for target 0. In float32 sigmoid(30) rounds to 1.0, so
# log(1 - p) = -inf, which the probability form clamps at -100. The logits form is exact.
far, zero = torch.tensor([30.0]), torch.zeros(1)
print(
    f"logit 30, target 0: BCELoss {losskit.BCELoss()(torch.sigmoid(far), zero).item():.1f}, "
    f"BCEWithLogitsLoss {losskit.BCEWithLogitsLoss()(far, zero).item():.1f}"
)
