"""Section 4: write your own loss, and verify it with losskit.check.

    python examples/04_custom_loss.py

Any tensor math is differentiable, so a loss is an ``nn.Module`` whose ``forward`` returns a
0-dim tensor. ``losskit.Loss`` goes one step further: write the per-element loss and get the
reductions, ``weight`` and ``mask`` for free.
"""

import torch
import torch.nn.functional as F
from torch import nn

import losskit
import losskit.functional as LF


class My_loss(nn.Module):  # the tutorial's: mean squared error from tensor math
    def forward(self, x, y):
        return torch.mean(torch.pow((x - y), 2))


class MyLoss(losskit.Loss):  # the same on losskit's base class: every reduction included
    def elementwise(self, input, target):
        return (input - target) ** 2


class SoftTargetCrossEntropy(nn.Module):  # the tutorial's cross-entropy for soft labels
    def forward(self, input, target):
        return torch.sum(-target * F.log_softmax(input, dim=1), dim=1).mean()


torch.manual_seed(0)
x, y = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
print(f"My_loss {My_loss()(x, y).item():.6f}  MSELoss {losskit.MSELoss()(x, y).item():.6f}")
assert torch.allclose(My_loss()(x, y), losskit.MSELoss()(x, y))
for reduction in ("none", "mean", "sum"):
    assert torch.allclose(
        MyLoss(reduction=reduction)(x, y), losskit.MSELoss(reduction=reduction)(x, y)
    )
print("MyLoss == MSELoss in every reduction")

logits, soft = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), dim=1)
print(
    f"soft-target cross-entropy {SoftTargetCrossEntropy()(logits, soft).item():.6f}  "
    f"losskit {LF.cross_entropy(logits, soft).item():.6f}"
)

report = losskit.check(My_loss(), x, y, compile=False)  # prints a table, one line per property
assert report.ok
