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


class _PreferenceStep(torch.nn.Module):
    """A DPO step on 2 pairs of sequences: a block, the fused loss on the head."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 300, bias=False)

    def forward(self, x, y, reference):
        h = self.block(x)
        return LF.linear_dpo_loss(
            h, self.head.weight, y, reference_logps=reference, chunk_size=8, impl="fused"
        )


def test_export_a_preference_step_with_a_dynamic_length():
    torch.manual_seed(0)
    model = _PreferenceStep()

    def inputs(t: int, seed: int):
        x, y = _inputs(4 * t, seed)
        y = y.reshape(4, t)
        y[:, :2] = -100
        return x.reshape(4, t, 16), y, -torch.rand(4) * 20

    t = Dim("t", min=3)
    program = export(model, inputs(9, 1), dynamic_shapes=({1: t}, {1: t}, None))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "losskit.linear_preference.default" in called, called
    exported = program.module()
    for length, seed in ((9, 1), (13, 2)):
        args = inputs(length, seed)
        results = []
        for m in (model, exported):
            m.zero_grad(set_to_none=True)
            loss_value = m(*args)
            loss_value.backward()
            results.append([loss_value.detach()] + [p.grad for p in m.parameters()])
        for e, c in zip(*results, strict=True):
            torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7)
