"""The losses of ``losskit bench overhead``: one :class:`Loss` per loss with a torch twin.

Each names the loss in ``losskit.functional`` and ``torch.nn.functional`` and gives a function
making its inputs for a size ``N x C`` (or the loss's own equivalent: CTC's ``T x N x C``, a
ranking loss's ``N * C`` pairs) in a dtype. A new loss is one line of :data:`LOSSES`; one that
``losskit.functional`` does not have (yet) is left out of the run, not an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Maker = Callable[[int, int, torch.dtype, torch.Generator], tuple[tuple, dict]]


def _randn(shape, dtype, gen, grad: bool = True) -> Tensor:
    return torch.randn(shape, generator=gen).to(dtype).requires_grad_(grad)


def _signs(shape, dtype, gen) -> Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype)


def _log_probs(shape, dtype, gen) -> Tensor:
    return torch.randn(shape, generator=gen).log_softmax(-1).to(dtype).requires_grad_()


def _probs(shape, dtype, gen) -> Tensor:
    return torch.randn(shape, generator=gen).softmax(-1).to(dtype)


def _pair(n, c, dtype, gen, **kwargs) -> tuple[tuple, dict]:
    """An input requiring grad and a real target, both ``N x C``."""
    return (_randn((n, c), dtype, gen), _randn((n, c), dtype, gen, grad=False)), kwargs


def _signed(n, c, dtype, gen) -> tuple[tuple, dict]:
    """Scores ``N x C`` and targets of +1 / -1 (hinge embedding, soft margin)."""
    return (_randn((n, c), dtype, gen), _signs((n, c), dtype, gen)), {}


def _bce(n, c, dtype, gen) -> tuple[tuple, dict]:
    p = torch.rand((n, c), generator=gen).mul(0.98).add(0.01).to(dtype).requires_grad_()
    return (p, torch.rand((n, c), generator=gen).to(dtype)), {}


def _bce_logits(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_randn((n, c), dtype, gen), torch.rand((n, c), generator=gen).to(dtype)), {}


def _classes(n, c, dtype, gen) -> tuple[tuple, dict]:
    """Logits ``N x C`` and class indices."""
    return (_randn((n, c), dtype, gen), torch.randint(0, c, (n,), generator=gen)), {}


def _class_probs(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_randn((n, c), dtype, gen), _probs((n, c), dtype, gen)), {}


def _nll(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_log_probs((n, c), dtype, gen), torch.randint(0, c, (n,), generator=gen)), {}


def _kl(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_log_probs((n, c), dtype, gen), _probs((n, c), dtype, gen)), {"reduction": "batchmean"}


def _poisson(n, c, dtype, gen) -> tuple[tuple, dict]:
    counts = torch.randint(0, 6, (n, c), generator=gen).to(dtype)
    return (_randn((n, c), dtype, gen), counts), {}


def _gaussian(n, c, dtype, gen) -> tuple[tuple, dict]:
    var = torch.rand((n, c), generator=gen).add(0.1).to(dtype).requires_grad_()
    return (_randn((n, c), dtype, gen), _randn((n, c), dtype, gen, grad=False), var), {}


def _ranking(n, c, dtype, gen) -> tuple[tuple, dict]:
    """Two score vectors of ``N * C`` entries and +1 / -1 labels."""
    m = n * c
    return (_randn((m,), dtype, gen), _randn((m,), dtype, gen), _signs((m,), dtype, gen)), {}


def _cosine(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_randn((n, c), dtype, gen), _randn((n, c), dtype, gen), _signs((n,), dtype, gen)), {}


def _triplet(n, c, dtype, gen) -> tuple[tuple, dict]:
    return tuple(_randn((n, c), dtype, gen) for _ in range(3)), {}


def _multilabel(n, c, dtype, gen) -> tuple[tuple, dict]:
    """Scores ``N x C``; each row's target lists up to 3 distinct classes, then -1."""
    target = torch.rand((n, c), generator=gen).argsort(dim=1)
    target[:, min(3, c) :] = -1
    return (_randn((n, c), dtype, gen), target), {}


def _multilabel_soft(n, c, dtype, gen) -> tuple[tuple, dict]:
    return (_randn((n, c), dtype, gen), torch.randint(0, 2, (n, c), generator=gen).to(dtype)), {}


def _ctc(n, c, dtype, gen) -> tuple[tuple, dict]:
    """``T = 50`` frames of ``N / 16`` sequences (at least 4) over ``C`` classes, 10 labels each."""
    t, batch, s = 50, max(4, n // 16), 10
    log_probs = _log_probs((t, batch, c), dtype, gen)
    targets = torch.randint(1, c, (batch, s), generator=gen)
    lengths = torch.full((batch,), t, dtype=torch.long), torch.full((batch,), s, dtype=torch.long)
    return (log_probs, targets, *lengths), {}


@dataclass(frozen=True)
class Loss:
    """One row of the bench: a loss that ``losskit.functional`` and torch both have.

    ``fn`` names it in both modules; ``make(N, C, dtype, generator)`` gives its ``(args,
    kwargs)``, the inputs that take a gradient requiring it. Whether it takes ``validate=`` is
    read from losskit's signature.
    """

    label: str
    fn: str
    make: Maker

    @property
    def losskit(self) -> Callable[..., Tensor] | None:
        import losskit.functional as LF

        return getattr(LF, self.fn, None)

    @property
    def torch(self) -> Callable[..., Tensor]:
        return getattr(F, self.fn)

    @property
    def has_validate(self) -> bool:
        return "validate" in inspect.signature(self.losskit).parameters


#: Every loss with a torch twin; those ``losskit.functional`` does not have yet are left out.
LOSSES = [
    Loss("mse_loss", "mse_loss", _pair),
    Loss("l1_loss", "l1_loss", _pair),
    Loss("smooth_l1_loss", "smooth_l1_loss", _pair),
    Loss("huber_loss", "huber_loss", _pair),
    Loss("binary_cross_entropy", "binary_cross_entropy", _bce),
    Loss("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits", _bce_logits),
    Loss("cross_entropy", "cross_entropy", _classes),
    Loss("cross_entropy (probabilities)", "cross_entropy", _class_probs),
    Loss("nll_loss", "nll_loss", _nll),
    Loss("kl_div (batchmean)", "kl_div", _kl),
    Loss("poisson_nll_loss", "poisson_nll_loss", _poisson),
    Loss("gaussian_nll_loss", "gaussian_nll_loss", _gaussian),
    Loss("margin_ranking_loss", "margin_ranking_loss", _ranking),
    Loss("hinge_embedding_loss", "hinge_embedding_loss", _signed),
    Loss("soft_margin_loss", "soft_margin_loss", _signed),
    Loss("cosine_embedding_loss", "cosine_embedding_loss", _cosine),
    Loss("triplet_margin_loss", "triplet_margin_loss", _triplet),
    Loss("multi_margin_loss", "multi_margin_loss", _classes),
    Loss("multilabel_margin_loss", "multilabel_margin_loss", _multilabel),
    Loss("multilabel_soft_margin_loss", "multilabel_soft_margin_loss", _multilabel_soft),
    Loss("triplet_margin_with_distance_loss", "triplet_margin_with_distance_loss", _triplet),
    Loss("ctc_loss", "ctc_loss", _ctc),
]


def available() -> list[Loss]:
    """The rows of :data:`LOSSES` whose loss ``losskit.functional`` has."""
    return [loss for loss in LOSSES if loss.losskit is not None]
