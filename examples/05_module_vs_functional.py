"""Section 5: layers as Modules (nn.Conv2d) or as functions (F.conv2d).

    python examples/05_module_vs_functional.py

A Module holds its weights; a function takes them as arguments. The tutorial's CNN written both
ways gives identical outputs once the weights are shared. (The tutorial's functional version
needed four fixes, marked below.)
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
images = torch.randn(4, 1, 28, 28)  # MNIST-sized, as in the tutorial

conv = nn.Conv2d(1, 16, kernel_size=5)
assert torch.equal(conv(images), F.conv2d(images, conv.weight, conv.bias))
print("nn.Conv2d == F.conv2d with the same weights:", tuple(conv(images).shape))


class CNN(nn.Module):  # with Modules
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(4 * 4 * 32, 10)

    def forward(self, x):
        return self.fc1(self.block2(self.block1(x)).flatten(1))


class FunctionalCNN(nn.Module):  # with F.*: the Module only holds the weights
    def __init__(self, cnn):
        super().__init__()
        self.cnn1_weight = nn.Parameter(cnn.block1[0].weight.detach().clone())
        self.bias1_weight = nn.Parameter(cnn.block1[0].bias.detach().clone())
        self.cnn2_weight = nn.Parameter(cnn.block2[0].weight.detach().clone())
        self.bias2_weight = nn.Parameter(cnn.block2[0].bias.detach().clone())
        # fix 4: F.linear wants (out_features, in_features) = (10, 512), not (512, 10)
        self.linear1_weight = nn.Parameter(cnn.fc1.weight.detach().clone())
        self.bias3_weight = nn.Parameter(cnn.fc1.bias.detach().clone())

    def forward(self, x):
        # fix 1: no x.view(x.size(0), -1) here: conv2d needs (N, C, H, W)
        out = F.conv2d(x, self.cnn1_weight, self.bias1_weight)
        out = F.max_pool2d(F.relu(out), kernel_size=2)  # fix 2: max_pool2d needs a kernel size
        out = F.conv2d(out, self.cnn2_weight, self.bias2_weight)  # fix 3: `out`, not `x`
        out = F.max_pool2d(F.relu(out), kernel_size=2)
        return F.linear(out.flatten(1), self.linear1_weight, self.bias3_weight)


cnn = CNN()
functional = FunctionalCNN(cnn)
print("CNN with Modules:", tuple(cnn(images).shape), " with F.*:", tuple(functional(images).shape))
assert torch.equal(cnn(images), functional(images))
print("identical outputs once the weights are shared")
