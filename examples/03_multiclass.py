"""Section 3: cross-entropy with class indices, one-hot targets, and K dimensions.

    python examples/03_multiclass.py

losskit's ``cross_entropy`` takes class indices, one-hot rows or any probabilities; all give the
loss that ``-(target * log_softmax(logits)).sum(1).mean()`` gives by hand, gradient included.
"""

import torch
import torch.nn.functional as F

import losskit.functional as LF

torch.manual_seed(0)
logits = torch.randn(3, 5, requires_grad=True)
index = torch.randint(5, (3,))  # class indices
one_hot = F.one_hot(index, num_classes=5).float()

by_index = LF.cross_entropy(logits, index)
by_one_hot = LF.cross_entropy(logits, one_hot)
by_argmax = LF.cross_entropy(logits, one_hot.argmax(dim=1))  # decode one-hot to indices
by_hand = torch.sum(-one_hot * F.log_softmax(logits, dim=1), dim=1).mean()
print(
    f"indices {by_index.item():.6f}  one-hot {by_one_hot.item():.6f}  "
    f"argmax {by_argmax.item():.6f}  log_softmax {by_hand.item():.6f}"
)
assert torch.allclose(by_index, by_one_hot) and torch.allclose(by_index, by_hand)

grads = [torch.autograd.grad(loss, logits)[0] for loss in (by_index, by_one_hot, by_hand)]
assert all(torch.allclose(g, grads[0]) for g in grads)
print("the three gradients agree")

# K-dimensional: segmentation logits (N, C, H, W) with a class index per pixel (N, H, W).
seg_logits = torch.randn(2, 4, 8, 8)
seg_labels = torch.randint(4, (2, 8, 8))
per_pixel = LF.cross_entropy(seg_logits, seg_labels, reduction="none")
print("segmentation: logits", tuple(seg_logits.shape), "-> per-pixel loss", tuple(per_pixel.shape))
