"""``torch.export`` of a step that calls a fused loss: the graph holds losskit's op, the exported
program gives eager's numbers at other lengths (a dynamic dimension) and still trains."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

import losskit.functional as LF

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Step(torch.nn.Module):
    def __init__(self, loss: str):
        super().__init__()
        self.loss = loss
        self.block = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 300, bias=False)

    def forward(self, x, y):
        h = self.block(x)
        if self.loss == "linear_cross_entropy":
            return LF.linear_cross_entropy(h, self.head.weight, y, chunk_size=8, impl="fused")
        return LF.cross_entropy(self.head(h), y, label_smoothing=0.1, impl="fused")


def _inputs(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 300, (n,), generator=gen)
    y[::4] = -100
    return torch.randn(n, 16, generator=gen), y


@pytest.mark.parametrize("loss", ["linear_cross_entropy", "cross_entropy"])
def test_export_a_step_with_a_dynamic_row_count(loss):
    torch.manual_seed(0)
    model = _Step(loss)
    n = Dim("n", min=2)
    program = export(model, _inputs(37, 1), dynamic_shapes=({0: n}, {0: n}))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert f"losskit.{loss}.default" in called, called
    exported = program.module()
    for rows, seed in ((37, 1), (50, 2), (9, 3)):
        x, y = _inputs(rows, seed)
        results = []
        for m in (model, exported):
            m.zero_grad(set_to_none=True)
            loss_value = m(x, y)
            loss_value.backward()
            results.append([loss_value.detach()] + [p.grad for p in m.parameters()])
        for e, c in zip(*results, strict=True):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)
