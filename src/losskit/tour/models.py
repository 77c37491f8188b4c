"""The tutorial's CNN, written twice: with Modules (:class:`TutorialCNN`) and with
``torch.nn.functional`` (:class:`FunctionalCNN`, the tutorial's version corrected)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
