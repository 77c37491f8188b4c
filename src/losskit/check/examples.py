"""Seeded random example inputs, as the command line makes them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_examples(
    shape: Sequence[int] | Sequence[Sequence[int]] = (4, 3),
    *,
    target: str = "float",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Seeded random ``(input, target)`` examples, as the command line makes them.

    Args:
        shape: the shape of both tensors, or ``(input_shape, target_shape)``.
        target: ``'float'`` (uniform in [0, 1)) or ``'index'`` (class indices in [0, C), with
            ``C`` the input's dimension 1, or dimension 0 for a 1-dim input; the target shape
            defaults to the input's without that dimension).
        seed: the generator's seed.
        dtype: the floating dtype. Default float32.

    Returns:
        ``input`` uniform in [0.1, 0.9) (valid as logits and as probabilities) and ``target``.

    Example:
        >>> from losskit.check import make_examples
        >>> x, y = make_examples((8, 5), target="index")
        >>> tuple(x.shape), tuple(y.shape), y.dtype
        ((8, 5), (8,), torch.int64)
    """
    if len(shape) and not isinstance(shape[0], int):
        input_shape, target_shape = tuple(shape[0]), tuple(shape[1])
    else:
        input_shape, target_shape = tuple(shape), None
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.8 * torch.rand(input_shape, generator=gen, dtype=dtype)
    if target == "float":
        y = torch.rand(target_shape or input_shape, generator=gen, dtype=dtype)
    elif target == "index":
        class_dim = 0 if len(input_shape) == 1 else 1
        classes = input_shape[class_dim]
        if target_shape is None:
            target_shape = input_shape[:class_dim] + input_shape[class_dim + 1 :]
        y = torch.randint(0, classes, target_shape, generator=gen)
    else:
        raise ValueError(f"target must be 'float' or 'index', got {target!r}")
    return x, y
