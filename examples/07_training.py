"""Section 7: train the tutorial's CNN on scikit-learn's bundled 8x8 digits, with losskit.

    pip install 'losskit[demo]'     # scikit-learn (its digits ship inside the package)
    python examples/07_training.py

The CNN is the tutorial's with 3x3 kernels and padding 1, so 8x8 images become 2x2 after two
poolings. Swap the loss line for ``LF.mse_loss(out, F.one_hot(y, 10).float())`` or
``LF.cross_entropy(out, y, label_smoothing=0.1)`` to compare; ``python -m losskit tour``
trains all three and draws the curves.
"""

import sys

import torch
import torch.nn.functional as F  # noqa: F401 - for the one-hot variant above
from torch import nn

import losskit.functional as LF

try:
    from sklearn.datasets import load_digits
except ImportError:
    sys.exit("this example needs scikit-learn: pip install 'losskit[demo]'")

torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small trains fastest on one thread
digits = load_digits()
images = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
labels = torch.tensor(digits.target)
perm = torch.randperm(len(labels))
test, train = perm[:450], perm[450:]

model = nn.Sequential(
    nn.Conv2d(1, 16, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(2 * 2 * 32, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(8):
    model.train()
    total = 0.0
    for batch in train[torch.randperm(len(train))].split(64):
        out = model(images[batch])
        loss = LF.cross_entropy(out, labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    mean_loss = total / len(train)
    print(f"epoch {epoch + 1}: training loss {mean_loss:.3f}, held-out accuracy {accuracy:.1%}")
assert accuracy > 0.9
