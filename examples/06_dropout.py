"""Section 6: nn.Dropout follows train()/eval(); F.dropout needs training=self.training.

python examples/06_dropout.py
"""

import torch
import torch.nn.functional as F
from torch import nn


class Model1(nn.Module):  # nn.Dropout: switched off by model.eval()
    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)

    def forward(self, inputs):
        return self.dropout(inputs)


class Model2(nn.Module):  # F.dropout, told the mode
    def forward(self, inputs):
        return F.dropout(inputs, training=self.training)


class Model3(nn.Module):  # F.dropout, not told: its default training=True always drops
    def forward(self, inputs):
        return F.dropout(inputs)


torch.manual_seed(0)
inputs = torch.ones(10)
for model in (Model1(), Model2(), Model3()):
    model.train()
    print(f"{type(model).__name__} train(): {model(inputs).tolist()}")
    model.eval()
    print(f"{type(model).__name__} eval():  {model(inputs).tolist()}")

assert torch.equal(Model1().eval()(inputs), inputs)
assert torch.equal(Model2().eval()(inputs), inputs)
assert not torch.equal(Model3().eval()(inputs), inputs)
