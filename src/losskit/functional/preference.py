r"""Preference and policy-gradient losses on a language model's head: DPO, ORPO, SimPO, CPO,
KTO, GRPO, and the token log-probabilities they are made of.

Every loss here is a function of the policy's log-probabilities of given tokens,
``log p(y_t | y_<t)`` at each counted position ``t`` of ``S`` sequences (a position counts
where ``target != ignore_index`` and ``mask`` is True: the answer, not the prompt or the padding):

- :func:`token_logprobs` ``(S, T)`` and :func:`sequence_logprobs` (their sum, or mean, per
  sequence), from hidden states and a head, never holding the ``(S T, V)`` logits;
- the losses on per-sequence log-probabilities, as TRL's trainers compute them
  (:func:`dpo_loss`, :func:`orpo_loss`, :func:`simpo_loss`, :func:`cpo_loss`, :func:`kto_loss`)
  and on per-token ones (:func:`grpo_loss`);
- their fused linear forms (:func:`linear_dpo_loss`, ... :func:`linear_grpo_loss`): hidden
  states and head in, the loss out, through the chunked engine
  (``kernels/chunked/sequences.py``: three GEMMs, every gradient computed in the forward, one
  chunk of logits at a time).

Pairs are batched as TRL batches them: ``2B`` sequences, the ``B`` chosen answers first, then
the ``B`` rejected ones in the same order. Every loss's formula is written once, below, as a
:class:`Rule`; the reference path (plain torch: ``log_softmax`` of the full logits), the fused
path (the same rule on each chunk's pairs, differentiated by autograd on a few thousand numbers)
and the metrics all apply that one rule. With ``return_metrics=True`` a loss also returns the
metrics TRL logs (``'rewards/chosen'``, ``'rewards/margins'``, ...), detached.

``reduction`` (pair and example losses): ``'mean'`` (TRL's: over pairs, or examples for KTO),
``'sum'``, or ``'none'`` (each pair's term; their mean is the ``'mean'`` loss). GRPO normalizes
as its ``loss_type`` says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _dispatch as D
from .._validate import check_linear_options
from .._validate import preference as VP
from ..kernels.recompute import Recompute
from .linear import linear_cross_entropy

__all__ = [
    "Rule",
    "cpo_loss",
    "dpo_loss",
    "grpo_loss",
    "kto_loss",
    "linear_cpo_loss",
    "linear_dpo_loss",
    "linear_grpo_loss",
    "linear_kto_loss",
    "linear_orpo_loss",
    "linear_simpo_loss",
    "orpo_loss",
    "sequence_logprobs",
    "simpo_loss",
    "token_logprobs",
]

_F32 = torch.float32
Metrics = dict[str, Tensor]

# --------------------------------------------------------------------------------------------
# the building block
# --------------------------------------------------------------------------------------------


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor:
    r"""Log-probability of each target token under a linear head, never holding the logits.

    .. math::
        \ell_t = \log \mathrm{softmax}(z_t / \tau)_{y_t}, \qquad z_t = h_t W^\top + b

    and 0 where the position does not count (``target == ignore_index`` or ``mask`` False).

    The fused path is :func:`~losskit.functional.linear_cross_entropy` with ``reduction='none'``
    (negated): the forward computes the values chunk by chunk, the backward computes the logits
    again with each position's ``grad_output`` (four GEMMs in all, since the gradient of an
    arbitrary downstream loss is only known then). The named losses below
    (:func:`linear_dpo_loss`, ...) know their downstream formula and need three.

    Args:
        hidden: hidden states ``(*, D)`` (any leading dims).
        weight: the head ``(V, D)``, the same dtype and device.
        target: token ids ``(*)`` (the positions' next tokens; shift them first, as for a
            causal LM's loss).
        bias: optional ``(V,)``.
        temperature: ``tau > 0``: the logits are divided by it (as TRL's GRPO samples). Default 1.
        mask: bool ``(*)``; False positions do not count.
        ignore_index: target value of positions that do not count. Default -100.
        impl: ``'auto'`` | ``'reference'`` (full logits, ``log_softmax``) | ``'fused'``.
        chunk_size, memory_budget: as :func:`~losskit.functional.linear_cross_entropy`.
        validate: False skips the token-id range check.

    Shape:
        hidden ``(*, D)``, weight ``(V, D)``, target and mask ``(*)``. Output ``(*)``.

    Returns:
        The log-probabilities in the hidden states' dtype, 0 where a position does not count.

    Example:
        >>> import torch, losskit.functional as LF
        >>> h, w = torch.randn(2, 5, 8), torch.randn(11, 8)
        >>> y = torch.randint(0, 11, (2, 5))
        >>> lp = LF.token_logprobs(h, w, y)
        >>> ref = (h @ w.T).log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        >>> bool(torch.allclose(lp, ref, atol=1e-6))
        True
    """
    tau = _check_temperature(temperature)
    VP.check_sequence_call(
        hidden, weight, target, bias, mask, ignore_index, pairs=False, validate=validate,
        batched=False,
    )  # fmt: skip
    x, b = _tempered(hidden, bias, tau)
    out = linear_cross_entropy(
        x, weight, target, linear_bias=b, reduction="none", ignore_index=ignore_index, mask=mask,
        impl=impl, chunk_size=chunk_size, memory_budget=memory_budget, validate=False,
    )  # fmt: skip
    return -out


def sequence_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    average: bool = False,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor:
    r"""Each sequence's log-probability: :func:`token_logprobs` summed over its counted
    positions (the last dim), or averaged with ``average=True`` (TRL's ``average_log_prob``;
    NaN for a sequence with no counted position).

    .. math::
        \log \pi(y \mid x) = \sum_{t \in \text{counted}} \log p(y_t \mid y_{<t}, x)

    Args:
        hidden: ``(*, T, D)``; weight ``(V, D)``; target ``(*, T)``.
        average: divide by the number of counted positions. Default False.
        bias, temperature, mask, ignore_index, impl, chunk_size, memory_budget, validate: as
            :func:`token_logprobs`.

    Shape:
        Output ``(*)``: one value per sequence.

    Example:
        >>> import torch, losskit.functional as LF
        >>> h, w = torch.randn(4, 6, 8), torch.randn(11, 8)
        >>> y = torch.randint(0, 11, (4, 6))
        >>> y[:, :2] = -100  # the prompt does not count
        >>> LF.sequence_logprobs(h, w, y).shape
        torch.Size([4])
    """
    if target.dim() < 1:
        raise VP.LossValueError("target must have at least one dim (the positions, last)")
    lp = token_logprobs(
        hidden, weight, target, bias=bias, temperature=temperature, mask=mask,
        ignore_index=ignore_index, impl=impl, chunk_size=chunk_size, memory_budget=memory_budget,
        validate=validate,
    )  # fmt: skip
    return _sequence(lp, _counted(target, mask, ignore_index), average)


def _check_temperature(temperature: object) -> float:
    return VP.check_beta(temperature, "temperature")


def _tempered(hidden: Tensor, bias: Tensor | None, tau: float) -> tuple[Tensor, Tensor | None]:
    """``hidden / tau`` and ``bias / tau``: the logits divided by the temperature."""
    if tau == 1.0:
        return hidden, bias
    return hidden / tau, None if bias is None else bias / tau


def _counted(target: Tensor, mask: Tensor | None, ignore_index: int) -> Tensor:
    counted = target != ignore_index
    return counted if mask is None else counted & mask


def _sequence(logp: Tensor, counted: Tensor, average: bool) -> Tensor:
    """Per-sequence sum (or mean) of the token log-probabilities over the counted positions."""
    total = torch.where(counted, logp, 0.0).sum(-1)
    return total / counted.sum(-1) if average else total


# --------------------------------------------------------------------------------------------
# the rules: each loss's formula, once
# --------------------------------------------------------------------------------------------


class Rule:
    """One sequence-level loss: its terms from the token log-probabilities of whole groups.

    ``terms(logp, counted, side, totals)`` gives the loss's term of each group in ``logp``
    (``(S', T)``, any subset of the batch's groups, in group order: for pairs the chosen halves
    first) and the parts its metrics are made of; ``side`` holds the per-sequence inputs of the
    same sequences (``(S',)`` or ``(S', T)``) and ``totals`` the batch-wide constants
    (:meth:`totals`), so that the whole batch's loss is the sum of its chunks'. The reference,
    the fused engine and the metrics call it.
    """

    #: groups are (chosen, rejected) pairs
    pairs = True
    #: sequence log-probabilities are token means (else sums)
    average = False
    #: the reference model's sequence log-probabilities are an input
    reference = "required"
    #: the reference's log-probabilities may be per token only (GRPO)
    token_level = False

    def args(self) -> tuple:
        """The constructor's arguments, in order (floats, ints, strings, None, at most one
        tensor): how the custom op (``ops/linear_preference.py``) carries the rule."""
        raise NotImplementedError

    def totals(self, counted: Tensor, side: dict[str, Tensor]) -> dict[str, Tensor | float]:
        return {}

    def terms(
        self, logp: Tensor, counted: Tensor, side: dict[str, Tensor], totals: dict
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def metrics(self, parts: dict[str, Tensor]) -> Metrics:
        return {}

    def __call__(self, logp: Tensor, counted: Tensor, side: dict, totals: dict) -> Tensor:
        return self.terms(logp, counted, side, totals)[0]


#: The rules by name: how the custom op (``ops/linear_preference.py``) finds a rule's class
RULES: dict[str, type[Rule]] = {}

#: The per-sequence inputs a rule may read (``side``): the custom op's optional tensors
SIDE = ("reference", "desirable", "advantages", "old")


def _sigmoid_loss(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """``-(1 - eps) log sigmoid(beta u) - eps log sigmoid(-beta u)``: the logistic preference loss
    with conservative label smoothing (cDPO)."""
    loss = -F.logsigmoid(beta * logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-beta * logits)
    return loss


def _reward_metrics(chosen: Tensor, rejected: Tensor, pc: Tensor, pr: Tensor) -> Metrics:
    """TRL's reward metrics of a batch of pairs (means over the pairs)."""
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype).mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }


class _PairRule(Rule):
    """A loss of each pair's sequence log-probabilities ``(pc, pr)`` (and the reference's),
    plus ``nll`` times the chosen answers' mean token NLL (ORPO, CPO)."""

    nll = 0.0

    def totals(self, counted: Tensor, side: dict[str, Tensor]) -> dict:
        half = counted.shape[0] // 2
        return {"pairs": float(half), "chosen_tokens": counted[:half].sum()}

    def pair(self, pc, pr, rc, rr) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def terms(self, logp, counted, side, totals):
        half = logp.shape[0] // 2
        seq = _sequence(logp, counted, self.average)
        pc, pr = seq[:half], seq[half:]
        ref = side.get("reference")
        rc, rr = (None, None) if ref is None else (ref[:half], ref[half:])
        terms, parts = self.pair(pc, pr, rc, rr)
        parts.update(pc=pc, pr=pr)
        if self.nll:
            nll = -torch.where(counted[:half], logp[:half], 0.0).sum(-1)
            # each pair's share of the batch's mean token NLL, times the number of pairs: the
            # mean over pairs of the terms is then TRL's loss + nll * NLL
            share = nll * (totals["pairs"] / totals["chosen_tokens"].to(nll.dtype))
            terms = terms + self.nll * share
            parts["nll"] = share
        return terms, parts

    def metrics(self, parts):
        out = _reward_metrics(parts["chosen"], parts["rejected"], parts["pc"], parts["pr"])
        if "nll" in parts:
            out["nll_loss"] = parts["nll"].mean()
        return out


class DPO(_PairRule):
    """Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290); its IPO
    (Azar et al., 2023, arXiv:2310.12036) and hinge (SLiC, Zhao et al., 2023,
    arXiv:2305.10425) variants. TRL's ``DPOTrainer.dpo_loss``."""

    def __init__(self, beta: float, loss_type: str, label_smoothing: float) -> None:
        self.beta, self.loss_type, self.eps = beta, loss_type, label_smoothing
        self.average = loss_type == "ipo"

    def args(self):
        return (self.beta, self.loss_type, self.eps)

    def pair(self, pc, pr, rc, rr):
        u = (pc - rc) - (pr - rr)
        if self.loss_type == "sigmoid":
            loss = _sigmoid_loss(u, self.beta, self.eps)
        elif self.loss_type == "ipo":
            loss = (u - 1.0 / (2.0 * self.beta)) ** 2
        else:  # hinge
            loss = torch.relu(1.0 - self.beta * u)
        chosen = self.beta * (pc - rc).detach()
        rejected = self.beta * (pr - rr).detach()
        return loss, {"chosen": chosen, "rejected": rejected}


class ORPO(_PairRule):
    """Odds Ratio Preference Optimization (Hong et al., 2024, arXiv:2403.07691); TRL's
    ``ORPOTrainer.odds_ratio_loss``: the token-mean log-probabilities' log odds ratio, no
    reference model, plus the chosen answers' NLL."""

    average = True
    reference = "none"
    nll = 1.0

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def args(self):
        return (self.beta,)

    def pair(self, pc, pr, rc, rr):
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        ratio = F.logsigmoid(log_odds)
        parts = {
            "chosen": self.beta * pc.detach(), "rejected": self.beta * pr.detach(),
            "log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach(),
        }  # fmt: skip
        return -self.beta * ratio, parts

    def metrics(self, parts):
        out = super().metrics(parts)
        out["log_odds_ratio"] = parts["log_odds_ratio"].mean()
        out["log_odds_chosen"] = parts["log_odds_chosen"].mean()
        return out


class CPO(_PairRule):
    """Contrastive Preference Optimization (Xu et al., 2024, arXiv:2401.08417) and, with a
    margin ``gamma`` on token-mean log-probabilities, SimPO (Meng et al., 2024,
    arXiv:2405.14734); TRL's ``CPOTrainer.cpo_loss`` (``loss_type='sigmoid'`` / ``'simpo'``)."""

    reference = "none"

    def __init__(self, beta: float, label_smoothing: float, nll: float, gamma: float | None):
        self.beta, self.eps, self.nll, self.gamma = beta, label_smoothing, nll, gamma
        self.average = gamma is not None

    def args(self):
        return (self.beta, self.eps, self.nll, self.gamma)

    def pair(self, pc, pr, rc, rr):
        u = pc - pr
        if self.gamma is not None:
            u = u - self.gamma / self.beta
        loss = _sigmoid_loss(u, self.beta, self.eps)
        return loss, {"chosen": self.beta * pc.detach(), "rejected": self.beta * pr.detach()}


class KTO(Rule):
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024, arXiv:2402.01306); TRL's
    ``KTOTrainer.kto_loss``: each example is desirable or not, and its reward is compared with
    a reference point ``kl`` (an estimate of the policy's KL to the reference, not
    differentiated)."""

    pairs = False

    def __init__(self, beta: float, kl: Tensor | float, wd: float, wu: float) -> None:
        self.beta, self.kl, self.wd, self.wu = beta, kl, wd, wu

    def args(self):
        return (self.beta, self.kl, self.wd, self.wu)

    def terms(self, logp, counted, side, totals):
        seq = _sequence(logp, counted, False)
        ratio = seq - side["reference"]
        good = side["desirable"]
        kl = torch.as_tensor(self.kl, dtype=ratio.dtype, device=ratio.device).detach()
        chosen = self.wd * (1.0 - torch.sigmoid(self.beta * (ratio - kl)))
        rejected = self.wu * (1.0 - torch.sigmoid(self.beta * (kl - ratio)))
        parts = {"reward": self.beta * ratio.detach(), "good": good, "logps": seq.detach(),
                 "kl": kl}  # fmt: skip
        return torch.where(good, chosen, rejected), parts

    def metrics(self, parts):
        good, r, lp = parts["good"], parts["reward"], parts["logps"]

        def mean(v: Tensor, where: Tensor) -> Tensor:
            # v[where].mean() (NaN where none) without boolean indexing: a traced graph keeps
            # static shapes
            return torch.where(where, v, 0.0).sum() / where.sum()

        chosen, rejected = mean(r, good), mean(r, ~good)
        return {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "logps/chosen": mean(lp, good),
            "logps/rejected": mean(lp, ~good),
            "kl": parts["kl"].reshape(()),
        }


class GRPO(Rule):
    """Group Relative Policy Optimization's clipped policy-gradient loss (Shao et al., 2024,
    arXiv:2402.03300) with a k3 KL penalty to a reference model, and the normalizations of
    DAPO (Yu et al., 2025, arXiv:2503.14476) and Dr. GRPO (Liu et al., 2025,
    arXiv:2503.20783); TRL's ``GRPOTrainer._compute_loss``."""

    pairs = False
    reference = "optional"
    token_level = True

    def __init__(self, beta: float, eps_low: float, eps_high: float, loss_type: str,
                 max_len: int | None, normalizer: Tensor | float | None) -> None:  # fmt: skip
        self.beta, self.lo, self.hi, self.loss_type = beta, eps_low, eps_high, loss_type
        self.max_len, self.normalizer = max_len, normalizer

    def args(self):
        return (self.beta, self.lo, self.hi, self.loss_type, self.max_len, self.normalizer)

    def totals(self, counted, side):
        s, t = counted.shape
        tokens = counted.sum()
        if self.normalizer is not None:
            tokens = torch.as_tensor(self.normalizer, dtype=torch.float64, device=counted.device)
        return {"sequences": float(s), "tokens": tokens, "length": float(self.max_len or t)}

    def terms(self, logp, counted, side, totals):
        adv = side["advantages"].unsqueeze(-1)
        old = side.get("old")
        old = logp.detach() if old is None else old
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1.0 - self.lo, 1.0 + self.hi)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        parts: dict[str, Tensor] = {
            "counted": counted,
            "low": (ratio < 1.0 - self.lo) & (adv < 0), "high": (ratio > 1.0 + self.hi) & (adv > 0),
        }  # fmt: skip
        ref = side.get("reference")
        if ref is not None:
            delta = ref - logp
            kl = torch.exp(delta) - delta - 1.0
            parts["kl"] = kl.detach()
            if self.beta:
                per_token = per_token + self.beta * kl
        total = torch.where(counted, per_token, 0.0).sum(-1)
        if self.loss_type == "grpo":
            terms = total / counted.sum(-1).clamp(min=1)
        elif self.loss_type == "dr_grpo":
            terms = total / totals["length"]
        else:  # bnpo, dapo: over the batch's tokens (dapo: or the given normalizer)
            terms = total * (totals["sequences"] / totals["tokens"].to(total.dtype).clamp(min=1))
        return terms, parts

    def metrics(self, parts):
        c = parts["counted"]
        n = c.sum().clamp(min=1)

        def frac(b: Tensor) -> Tensor:
            return (b & c).sum().to(_F32) / n

        out = {
            "clip_ratio/low_mean": frac(parts["low"]),
            "clip_ratio/high_mean": frac(parts["high"]),
            "clip_ratio/region_mean": frac(parts["low"] | parts["high"]),
        }
        if "kl" in parts:
            out["kl"] = torch.where(c, parts["kl"], 0.0).sum() / n
        return out


RULES.update((c.__name__, c) for c in (DPO, ORPO, CPO, KTO, GRPO))


# --------------------------------------------------------------------------------------------
# reductions and outputs
# --------------------------------------------------------------------------------------------


def _reduce(terms: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return terms
    return terms.sum() if reduction == "sum" else terms.mean()


def _weights(groups: int, reduction: str, device: torch.device) -> Tensor | None:
    """Each group's factor in the reduced loss (None for ``'none'``: the backward's)."""
    if reduction == "none":
        return None
    value = 1.0 if reduction == "sum" else 1.0 / groups if groups else math.nan
    return torch.full((groups,), value, dtype=_F32, device=device)


def _output(loss: Tensor, metrics: Callable[[], Metrics], return_metrics: bool):
    if not return_metrics:
        return loss
    with torch.no_grad():
        values = {k: v.detach().to(_F32) for k, v in metrics().items()}
    return loss, values


def _on_logps(
    rule: Rule, pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None,
    reduction: str, return_metrics: bool,
):  # fmt: skip
    """A pair rule on per-sequence log-probabilities (the logps-level losses)."""
    terms, parts = rule.pair(pc, pr, rc, rr)
    parts.update(pc=pc.detach(), pr=pr.detach())
    return _output(_reduce(terms, reduction), lambda: rule.metrics(parts), return_metrics)


# --------------------------------------------------------------------------------------------
# the losses on log-probabilities
# --------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid",
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""Direct Preference Optimization on sequence log-probabilities (TRL's ``dpo_loss``).

    With the implicit reward margin
    :math:`u = (\log\pi(y_w) - \log\pi_{ref}(y_w)) - (\log\pi(y_l) - \log\pi_{ref}(y_l))`:

    - ``'sigmoid'`` (Rafailov et al., 2023, arXiv:2305.18290, eq. 7):
      :math:`-(1-\epsilon)\log\sigma(\beta u) - \epsilon\log\sigma(-\beta u)` (``epsilon =
      label_smoothing``: conservative DPO; 0 is the paper's loss);
    - ``'ipo'`` (Azar et al., 2023, arXiv:2310.12036, eq. 17): :math:`(u - 1/(2\beta))^2`. TRL
      (and :func:`linear_dpo_loss`) take *token-mean* log-probabilities for IPO; here the
      caller passes whichever it means;
    - ``'hinge'`` (SLiC, arXiv:2305.10425): :math:`\max(0, 1 - \beta u)`.

    Rewards (metrics only, detached): :math:`\beta(\log\pi(y) - \log\pi_{ref}(y))`.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` the policy's log-probabilities
            of the chosen and rejected answers.
        reference_chosen_logps, reference_rejected_logps: ``(B,)`` the reference model's.
        beta: the KL strength. Default 0.1 (TRL's).
        loss_type: ``'sigmoid'`` | ``'ipo'`` | ``'hinge'``. Default ``'sigmoid'``.
        label_smoothing: in [0, 0.5], the assumed share of flipped labels (``'sigmoid'``).
        reduction: ``'mean'`` (TRL's) | ``'sum'`` | ``'none'``.
        return_metrics: also return TRL's metrics: ``rewards/chosen``, ``rewards/rejected``,
            ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.

    Shape:
        Inputs ``(B,)``. Output scalar, ``(B,)`` with ``'none'``.

    Example:
        >>> import torch, losskit.functional as LF
        >>> pc, pr = torch.tensor([-5.0, -6.0]), torch.tensor([-7.0, -6.5])
        >>> rc, rr = torch.tensor([-5.5, -6.0]), torch.tensor([-6.5, -6.0])
        >>> loss, m = LF.dpo_loss(pc, pr, rc, rr, return_metrics=True)
        >>> round(float(loss), 4), round(float(m["rewards/margins"]), 3)
        (0.6564, 0.075)
    """
    rule = DPO(*_dpo_options(beta, loss_type, label_smoothing))
    reduction = VP.check_reduction(reduction)
    VP.check_logps(
        ("policy_chosen_logps", policy_chosen_logps),
        ("policy_rejected_logps", policy_rejected_logps),
        ("reference_chosen_logps", reference_chosen_logps),
        ("reference_rejected_logps", reference_rejected_logps),
    )
    return _on_logps(
        rule, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, reduction, return_metrics,
    )  # fmt: skip


def _dpo_options(beta, loss_type, label_smoothing) -> tuple[float, str, float]:
    return (
        VP.check_beta(beta),
        VP.check_choice("loss_type", loss_type, VP.DPO_TYPES),
        VP.check_nonnegative_float("label_smoothing", label_smoothing, at_most=0.5),
    )


def _cpo_rule(beta, label_smoothing, alpha, gamma=None) -> CPO:
    """CPO's rule (SimPO's with a ``gamma``), its options checked."""
    return CPO(
        VP.check_beta(beta),
        VP.check_nonnegative_float("label_smoothing", label_smoothing, at_most=0.5),
        VP.check_nonnegative_float("alpha", alpha),
        None if gamma is None else VP.check_number("gamma", gamma),
    )


def orpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    reduction: str = "mean",
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""ORPO's odds-ratio term on token-mean log-probabilities (TRL's ``odds_ratio_loss``).

    .. math::
        -\beta \log\sigma\Big(\log\frac{p_w}{1 - p_w} - \log\frac{p_l}{1 - p_l}\Big),
        \qquad \log p = \tfrac{1}{|y|}\sum_t \log p(y_t)

    (Hong et al., 2024, arXiv:2403.07691, eq. 6-7, ``beta`` their ``lambda``). The full ORPO
    loss adds the chosen answers' token NLL: :func:`linear_orpo_loss` does.

    Args:
        chosen_logps, rejected_logps: ``(B,)`` token-mean log-probabilities (< 0).
        beta: ``lambda``. Default 0.1 (TRL's).
        reduction, return_metrics: as :func:`dpo_loss`; the metrics add ``log_odds_ratio`` and
            ``log_odds_chosen``, and the rewards are ``beta * logps``.

    Shape:
        Inputs ``(B,)``. Output scalar, ``(B,)`` with ``'none'``.
    """
    rule = ORPO(VP.check_beta(beta))
    reduction = VP.check_reduction(reduction)
    VP.check_logps(("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps))
    return _on_logps(rule, chosen_logps, rejected_logps, None, None, reduction, return_metrics)


def cpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""CPO's preference term, without a reference model (TRL's ``cpo_loss``,
    ``loss_type='sigmoid'``).

    .. math::
        -(1-\epsilon)\log\sigma(\beta(\log\pi(y_w) - \log\pi(y_l)))
        - \epsilon\log\sigma(-\beta(\log\pi(y_w) - \log\pi(y_l)))

    (Xu et al., 2024, arXiv:2401.08417, eq. 3). The full CPO loss adds ``alpha`` times the
    chosen answers' token NLL: :func:`linear_cpo_loss` does.

    Args:
        chosen_logps, rejected_logps: ``(B,)`` sequence log-probabilities (sums).
        beta: Default 0.1 (TRL's). label_smoothing: in [0, 0.5].
        reduction, return_metrics: as :func:`dpo_loss`; rewards ``beta * logps``.

    Shape:
        Inputs ``(B,)``. Output scalar, ``(B,)`` with ``'none'``.
    """
    rule = _cpo_rule(beta, label_smoothing, 0.0)
    reduction = VP.check_reduction(reduction)
    VP.check_logps(("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps))
    return _on_logps(rule, chosen_logps, rejected_logps, None, None, reduction, return_metrics)


def simpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""SimPO on token-mean log-probabilities: a reference-free margin loss.

    .. math::
        -\log\sigma\Big(\beta\big(\log p_w - \log p_l\big) - \gamma\Big),
        \qquad \log p = \tfrac{1}{|y|}\sum_t \log p(y_t)

    (Meng et al., 2024, arXiv:2405.14734, eq. 6; with ``label_smoothing`` the cDPO form). TRL
    writes the same as ``CPOTrainer`` with ``loss_type='simpo'``, ``simpo_gamma`` the margin
    ``gamma`` (it subtracts ``gamma / beta`` inside ``beta (...)``). ``beta`` defaults to 2, the
    paper's choice (TRL's ``CPOConfig`` keeps its CPO default 0.1 for SimPO too); ``gamma`` to
    TRL's 0.5.

    Args:
        chosen_logps, rejected_logps: ``(B,)`` token-mean log-probabilities.
        beta: Default 2.0. gamma: the target reward margin. Default 0.5.
        label_smoothing, reduction, return_metrics: as :func:`cpo_loss`.

    Shape:
        Inputs ``(B,)``. Output scalar, ``(B,)`` with ``'none'``.
    """
    rule = _cpo_rule(beta, label_smoothing, 0.0, gamma)
    reduction = VP.check_reduction(reduction)
    VP.check_logps(("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps))
    return _on_logps(rule, chosen_logps, rejected_logps, None, None, reduction, return_metrics)


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    desirable: Tensor,
    *,
    kl: float | Tensor = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reduction: str = "mean",
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""Kahneman-Tversky Optimization on sequence log-probabilities (TRL's ``kto_loss``).

    With :math:`r = \log\pi(y) - \log\pi_{ref}(y)` and the reference point :math:`z_0 =`
    ``kl`` (not differentiated):

    .. math::
        \ell = \begin{cases} \lambda_D (1 - \sigma(\beta (r - z_0))) & y \text{ desirable} \\
        \lambda_U (1 - \sigma(\beta (z_0 - r))) & \text{otherwise} \end{cases}

    (Ethayarajh et al., 2024, arXiv:2402.01306, eq. 8). TRL estimates ``z_0`` from the policy's
    and the reference's log-probabilities of mismatched (prompt, answer) pairs,
    ``(policy_KL_logps - reference_KL_logps).mean().clamp(min=0)``, detached; compute it with
    :func:`sequence_logprobs` under ``torch.no_grad()`` and pass it here (0, TRL's value
    without a KL batch, by default).

    Args:
        policy_logps, reference_logps: ``(N,)`` sequence log-probabilities.
        desirable: ``(N,)`` bool, True where the answer is desirable.
        kl: the reference point ``z_0``, a number or a 0-dim tensor. Default 0.
        beta: Default 0.1. desirable_weight, undesirable_weight: ``lambda_D``, ``lambda_U``
            (default 1, TRL's).
        reduction: ``'mean'`` (over all examples, TRL's) | ``'sum'`` | ``'none'``.
        return_metrics: also return ``rewards/chosen`` (mean over the desirable examples),
            ``rewards/rejected``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``,
            ``kl``.

    Shape:
        Inputs ``(N,)``. Output scalar, ``(N,)`` with ``'none'``.
    """
    rule = _kto_rule(kl, beta, desirable_weight, undesirable_weight)
    reduction = VP.check_reduction(reduction)
    VP.check_logps(("policy_logps", policy_logps), ("reference_logps", reference_logps))
    VP.check_sequence_side(
        "desirable", desirable, tuple(policy_logps.shape), policy_logps,
        what="True where the answer is desirable", boolean=True,
    )  # fmt: skip
    counted = torch.ones_like(policy_logps, dtype=torch.bool).unsqueeze(-1)
    side = {"reference": reference_logps, "desirable": desirable}
    terms, parts = rule.terms(policy_logps.unsqueeze(-1), counted, side, {})
    return _output(_reduce(terms, reduction), lambda: rule.metrics(parts), return_metrics)


def _kto_rule(kl, beta, desirable_weight, undesirable_weight) -> KTO:
    if not isinstance(kl, Tensor):
        kl = VP.check_number("kl", kl)
    elif kl.numel() != 1:
        raise VP.LossValueError(f"kl must be a number or a one-element tensor, got shape "
                                f"{VP.shape_str(kl.shape)}")  # fmt: skip
    return KTO(
        VP.check_beta(beta), kl, VP.check_nonnegative_float("desirable_weight", desirable_weight),
        VP.check_nonnegative_float("undesirable_weight", undesirable_weight),
    )  # fmt: skip


def grpo_loss(
    logps: Tensor,
    advantages: Tensor,
    *,
    mask: Tensor | None = None,
    old_logps: Tensor | None = None,
    reference_logps: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo",
    max_completion_length: int | None = None,
    normalizer: float | Tensor | None = None,
    return_metrics: bool = False,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""GRPO's clipped policy-gradient loss on per-token log-probabilities (TRL's
    ``GRPOTrainer``).

    Per counted token, with the importance ratio :math:`\rho_t = \exp(\log\pi - \log\pi_{old})`
    (1, with the gradient of :math:`\log\pi`, when ``old_logps`` is None: on-policy) and the
    sequence's advantage :math:`A`:

    .. math::
        \ell_t = -\min\big(\rho_t A,\ \mathrm{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon_h) A\big)
                 + \beta\,\big(e^{\log\pi_{ref} - \log\pi} - (\log\pi_{ref} - \log\pi) - 1\big)

    (Shao et al., 2024, arXiv:2402.03300, eq. 3-4: the k3 estimator of the KL to the
    reference). ``loss_type`` normalizes the sum of :math:`\ell_t` over counted tokens:
    ``'grpo'``: each sequence's mean, then the mean over sequences (the paper's);
    ``'bnpo'``: over the batch's counted tokens; ``'dapo'`` (TRL's default; DAPO,
    arXiv:2503.14476): over ``normalizer`` (the counted tokens of the whole accumulated batch,
    TRL's ``num_items_in_batch``), the batch's own tokens when None; ``'dr_grpo'`` (Dr. GRPO,
    arXiv:2503.20783): over ``S * max_completion_length``.

    Args:
        logps: ``(S, T)`` the policy's token log-probabilities (0 or anything where ``mask``
            is False).
        advantages: ``(S,)`` each sequence's advantage.
        mask: ``(S, T)`` bool, the completion's tokens; None: all count.
        old_logps: ``(S, T)`` the sampling policy's, or None (on-policy).
        reference_logps: ``(S, T)`` the reference model's, needed when ``beta > 0``.
        beta: the KL coefficient. Default 0 (TRL's).
        epsilon, epsilon_high: the clip range ``[1 - epsilon, 1 + epsilon_high]``;
            ``epsilon_high`` defaults to ``epsilon`` (DAPO's clip-higher sets it apart).
        loss_type: ``'grpo'`` | ``'bnpo'`` | ``'dr_grpo'`` | ``'dapo'``. Default ``'dapo'``.
        max_completion_length: ``'dr_grpo'``'s constant; default ``T``.
        normalizer: ``'dapo'``'s token count; default the counted tokens.
        return_metrics: also return ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
            ``clip_ratio/region_mean`` (shares of counted tokens) and, with a reference,
            ``kl`` (its mean over counted tokens).

    Shape:
        logps, mask, old_logps, reference_logps ``(S, T)``; advantages ``(S,)``. Output scalar.
    """
    rule = _grpo_rule(beta, epsilon, epsilon_high, loss_type, max_completion_length, normalizer)
    require = VP.require_tensor("logps", logps)
    VP.require_floating("logps", require, what="log-probabilities")
    if logps.dim() != 2:
        raise VP.LossValueError(
            f"logps must have shape (S, T), per token, got shape {VP.shape_str(logps.shape)}"
        )
    s, t = logps.shape
    VP.check_sequence_side("advantages", advantages, (s,), logps, what="one per sequence")
    for name, value in (("old_logps", old_logps), ("reference_logps", reference_logps)):
        VP.check_sequence_side(name, value, (s, t), logps, what="per token")
    VP.check_sequence_side("mask", mask, (s, t), logps, what="the counted tokens", boolean=True)
    if rule.beta and reference_logps is None:
        raise VP.LossValueError("beta > 0 adds the KL to the reference: pass reference_logps")
    counted = torch.ones_like(logps, dtype=torch.bool) if mask is None else mask
    side = {"advantages": advantages}
    if old_logps is not None:
        side["old"] = old_logps
    if reference_logps is not None:
        side["reference"] = reference_logps
    terms, parts = rule.terms(logps, counted, side, rule.totals(counted, side))
    return _output(terms.mean(), lambda: rule.metrics(parts), return_metrics)


def _grpo_rule(beta, epsilon, epsilon_high, loss_type, max_completion_length, normalizer) -> GRPO:
    lo = VP.check_nonnegative_float("epsilon", epsilon, at_most=1.0)
    hi = lo if epsilon_high is None else VP.check_nonnegative_float("epsilon_high", epsilon_high)
    loss_type = VP.check_choice("loss_type", loss_type, VP.GRPO_TYPES)
    if max_completion_length is not None:
        if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int) \
                or max_completion_length < 1:  # fmt: skip
            raise VP.LossValueError(
                f"max_completion_length must be a positive int, got {max_completion_length!r}"
            )
    if normalizer is not None and loss_type != "dapo":
        raise VP.LossValueError(
            f"normalizer is 'dapo''s token count; loss_type={loss_type!r} does not take one"
        )
    return GRPO(
        VP.check_nonnegative_float("beta", beta), lo, hi, loss_type, max_completion_length,
        normalizer,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the fused linear forms
# --------------------------------------------------------------------------------------------


def _linear(
    rule: Rule,
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None,
    reference_logps: Tensor | None = None,
    reference_input: Tensor | None = None,
    reference_weight: Tensor | None = None,
    reference_bias: Tensor | None = None,
    side: dict[str, Tensor] | None = None,
    temperature: float,
    mask: Tensor | None,
    ignore_index: int,
    reduction: str,
    return_metrics: bool,
    impl: str,
    chunk_size: int | None,
    memory_budget: int | str,
    validate: bool,
):
    """The fused (or reference) linear form of ``rule`` (see the module docstring)."""
    tau = _check_temperature(temperature)
    check_linear_options(impl, chunk_size, memory_budget, "auto")
    call = VP.check_sequence_call(
        hidden, weight, target, bias, mask, ignore_index, pairs=rule.pairs, validate=validate
    )
    if isinstance(reference_logps, (tuple, list)) and rule.pairs:
        reference_logps = VP.check_reference_pair(reference_logps)
    VP.check_reference(
        call, hidden, reference_logps, reference_input, reference_weight, reference_bias,
        required=rule.reference == "required", token_level=rule.token_level,
    )  # fmt: skip
    s, t, d = call.s, call.t, hidden.shape[-1]
    counted = _counted(target, None if mask is None else mask.expand(s, t), ignore_index)
    side = dict(side or {})
    ref = _reference(
        reference_logps, reference_input, reference_weight, reference_bias, target, tau, mask,
        ignore_index, impl, chunk_size, memory_budget,
    )  # fmt: skip
    if ref is not None:
        if ref.dim() == 2 and not rule.token_level:
            ref = _sequence(ref, counted, rule.average)
        side["reference"] = ref.detach()
    totals = rule.totals(counted, side)
    groups = s // 2 if rule.pairs else s
    if isinstance(rule, GRPO):
        reduction = "mean"
    x, b = _tempered(hidden, bias, tau)
    x = x.reshape(s * t, d)
    y = target.reshape(-1).long()
    flat = counted.reshape(-1)
    out = None
    if impl != "reference":
        out = _fused(rule, x, weight, b, y, flat, (s, t), side, totals, groups, reduction,
                     required=impl == "fused", chunk_size=chunk_size,
                     memory_budget=memory_budget, ignore_index=ignore_index,
                     validate=validate)  # fmt: skip
    if out is None:
        logp = _reference_logps(x, weight, b, y, flat).reshape(s, t)
        terms, _ = rule.terms(logp, counted, side, totals)
        out = (_reduce(terms, reduction).to(hidden.dtype), logp.detach())
    loss, logp = out

    def metrics() -> Metrics:
        lp = logp.to(_F32).reshape(s, t)
        side32 = {k: (v.to(_F32) if v.is_floating_point() else v) for k, v in side.items()}
        return rule.metrics(rule.terms(lp, counted, side32, totals)[1])

    return _output(loss, metrics, return_metrics)


def _reference_logps(x: Tensor, w: Tensor, b: Tensor | None, y: Tensor, counted: Tensor) -> Tensor:
    """Plain torch: the full logits' ``log_softmax`` (float32 for half types) at the targets."""
    z = F.linear(x, w, b)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    lp = z.log_softmax(-1).gather(-1, torch.where(counted, y, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, lp, 0.0)


def _reference(logps, input, weight, bias, target, tau, mask, ignore_index, impl, chunk_size,
               memory_budget) -> Tensor | None:  # fmt: skip
    """The reference model's log-probabilities: given, or from its hidden states and head
    (:func:`token_logprobs`, without a gradient)."""
    if logps is not None:
        return logps
    if input is None:
        return None
    with torch.no_grad():
        return token_logprobs(
            input, weight, target, bias=bias, temperature=tau, mask=mask,
            ignore_index=ignore_index, impl=impl, chunk_size=chunk_size,
            memory_budget=memory_budget, validate=False,
        )  # fmt: skip


def engine_parts(rule: Rule, counted: Tensor, side: dict[str, Tensor], reduction: str,
                 dtype: torch.dtype) -> tuple[Callable, Callable]:  # fmt: skip
    """The chunked engine's ``objective`` and ``finish`` of ``rule`` on a batch whose counted
    positions are ``counted`` ``(S, T)`` (``kernels/chunked/sequences.py``): one definition for
    the eager call and the custom op's body."""
    s, t = counted.shape
    side32 = {k: (v.to(_F32) if v.is_floating_point() else v) for k, v in side.items()}
    totals = rule.totals(counted, side)

    def objective(lp: Tensor, seqs: Tensor) -> Tensor:
        sub = {k: v.index_select(0, seqs) for k, v in side32.items()}
        return rule(lp, counted.index_select(0, seqs), sub, totals)

    def finish(logp: Tensor) -> Tensor:
        terms, _ = rule.terms(logp.reshape(s, t), counted, side32, totals)
        return _reduce(terms, reduction).to(dtype)

    return objective, finish


def engine_plan(x: Tensor, w: Tensor, chunk_size: int | None, memory_budget: int | str):
    """The chunk plan of the sequences' rows ``x`` ``(S T, D)`` on the head ``w``."""
    from ..kernels.chunked import budget_bytes, plan_sequences

    budget = budget_bytes(memory_budget, x.device.type, sequences=True)
    return plan_sequences(x.shape[0], x.shape[1], w.shape[0], x.dtype, x.device.type,
                          budget=budget, chunk_size=chunk_size)  # fmt: skip


def _fused(rule, x, w, b, y, counted, shape, side, totals, groups, reduction, *, required,
           chunk_size, memory_budget, ignore_index,
           validate) -> tuple[Tensor, Tensor] | None:  # fmt: skip
    """The chunked kernel's ``(loss, logp)``, or None where it does not apply (``'auto'``)."""
    kernel, _ = D.select(
        "linear_preference", x, required=required,
        reason=D.unsupported_reason(x, probabilities=False),
    )  # fmt: skip
    if kernel is None:
        return None
    s, t = shape
    counted2 = counted.reshape(s, t)
    contiguous = tuple(None if v is None else v.contiguous() for v in (x, w, b))
    if D.tracing():
        from ..ops.linear_preference import linear_preference

        return linear_preference(
            *contiguous, y, counted2, rule=rule, side=side, reduction=reduction,
            ignore_index=ignore_index, chunk_size=chunk_size, memory_budget=memory_budget,
            validate=validate,
        )  # fmt: skip
    from ..kernels.chunked import Sequences

    objective, finish = engine_parts(rule, counted2, side, reduction, x.dtype)

    def build(x: Tensor, w: Tensor, b: Tensor | None) -> tuple[tuple, Tensor]:
        logp = _reference_logps(x, w, b, y, counted).reshape(s, t)
        terms, _ = rule.terms(logp, counted2, side, totals)
        return (x, w, b), _reduce(terms, reduction)

    recompute = Recompute("preference loss", {"x": x, "w": w, "b": b}, build)
    return kernel.linear_preference(
        *contiguous, y, counted, seq=Sequences(s, t, rule.pairs), objective=objective,
        finish=finish, weights=_weights(groups, reduction, x.device),
        plan=engine_plan(x, w, chunk_size, memory_budget), recompute=recompute,
    )  # fmt: skip


_LINEAR_ARGS = """
    The fused path (``impl='fused'``, the default where it applies: float32/bfloat16/float16 on
    the CPU, or CUDA with Triton) never holds the ``(S T, V)`` logits: chunks of whole pairs
    (sequences, for KTO and GRPO) go through the head one at a time, and per chunk one GEMM
    gives the logits, the cross-entropy epilogue their log-probabilities and
    ``softmax - onehot``, autograd on this loss's formula the factor ``dL/dlog p`` of each
    position, and two GEMMs the chunk's ``d hidden`` and its part of ``d weight``. Every
    gradient is computed in the forward (three GEMMs; the backward scales them), and the loss
    equals the reference path's: the formula is the same code. ``memory_budget``: ``'default'``
    (192 MiB on the CPU: one pair of 512-token answers at V = 32000 in float32; 1 GiB on CUDA),
    ``'lean'`` (64 MiB), or bytes; a pair larger than the budget's rows is run in two sweeps
    (four GEMMs).

    Common args:
        hidden: the policy's hidden states ``(S, T, D)`` at each position (already shifted:
            position ``t`` predicts ``target[:, t]``).
        weight: its head ``(V, D)``; bias: optional ``(V,)``.
        target: ``(S, T)`` token ids, ``ignore_index`` where a position does not count (the
            prompt, the padding), as TRL's labels.
        reference_logps: the reference model's log-probabilities, ``(S,)`` per sequence (as the
            loss aggregates them: sums, or token means where the loss averages) or ``(S, T)``
            per token (aggregated here), or for pairs the tuple ``(chosen, rejected)`` of
            ``(B,)`` or ``(B, T)`` tensors (as TRL precomputes ``ref_chosen_logps`` and
            ``ref_rejected_logps``); or
        reference_input, reference_weight, reference_bias: its hidden states ``(S, T, D')`` and
            head (the same vocabulary), run through :func:`token_logprobs` without a gradient.
        temperature: the logits are divided by it (policy and reference). Default 1.
        mask: bool ``(S, T)``, False positions do not count. ignore_index: Default -100.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` (each pair's term).
        return_metrics: also return TRL's metrics (a dict of detached 0-dim tensors).
        impl: ``'auto'`` | ``'reference'`` (the full logits in plain torch) | ``'fused'``.
        chunk_size: sequences' rows per chunk (rounded to whole pairs); memory_budget: see above.
        validate: False skips the token-id range check.

    Returns:
        The loss (hidden's dtype), or ``(loss, metrics)``.
"""


def _with_linear_args(fn):
    fn.__doc__ = fn.__doc__.replace("    {linear}\n", _LINEAR_ARGS)
    return fn


@_with_linear_args
def linear_dpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    reference_logps: Tensor | tuple[Tensor, Tensor] | None = None,
    reference_input: Tensor | None = None,
    reference_weight: Tensor | None = None,
    reference_bias: Tensor | None = None,
    bias: Tensor | None = None,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid",
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r""":func:`dpo_loss` from the policy's hidden states and head: TRL's DPO step, fused.

    The policy's sequence log-probabilities are :func:`sequence_logprobs` of the chosen
    (sequences ``0..B-1``) and rejected (``B..2B-1``) answers, token means for ``'ipo'`` (as
    TRL computes them), sums otherwise.
    {linear}
    Example:
        >>> import torch, losskit.functional as LF
        >>> h, w = torch.randn(4, 6, 8, requires_grad=True), torch.randn(50, 8)
        >>> y = torch.randint(0, 50, (4, 6))
        >>> ref = torch.randn(4) - 20
        >>> loss = LF.linear_dpo_loss(h, w, y, reference_logps=ref)
        >>> pol = LF.sequence_logprobs(h, w, y)
        >>> same = LF.dpo_loss(pol[:2], pol[2:], ref[:2], ref[2:])
        >>> bool(torch.allclose(loss, same, atol=1e-6))
        True
    """
    rule = DPO(*_dpo_options(beta, loss_type, label_smoothing))
    return _linear(
        rule, hidden, weight, target, bias=bias, reference_logps=reference_logps,
        reference_input=reference_input, reference_weight=reference_weight,
        reference_bias=reference_bias, side={}, temperature=temperature, mask=mask,
        ignore_index=ignore_index, reduction=VP.check_reduction(reduction),
        return_metrics=return_metrics, impl=impl, chunk_size=chunk_size,
        memory_budget=memory_budget, validate=validate,
    )  # fmt: skip


@_with_linear_args
def linear_orpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    beta: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""The whole ORPO loss from the policy's hidden states and head (no reference model):

    .. math::
        \mathcal{L} = \frac{1}{N_w}\sum_{t \in y_w} -\log p(y_t)
                      + \frac{1}{B}\sum_{\text{pairs}} \mathrm{orpo\_loss}(\log p_w, \log p_l)

    the chosen answers' token NLL (mean over all their counted tokens, TRL's) plus
    :func:`orpo_loss` of the token-mean log-probabilities. ``reduction='none'`` gives each
    pair its odds-ratio term plus its chosen tokens' NLL over the batch's mean count of chosen
    tokens per pair (their mean is the loss). Metrics add ``nll_loss``.
    {linear}"""
    rule = ORPO(VP.check_beta(beta))
    return _linear(
        rule, hidden, weight, target, bias=bias, temperature=temperature, mask=mask,
        ignore_index=ignore_index, reduction=VP.check_reduction(reduction),
        return_metrics=return_metrics, impl=impl, chunk_size=chunk_size,
        memory_budget=memory_budget, validate=validate,
    )  # fmt: skip


@_with_linear_args
def linear_cpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r"""The whole CPO loss: :func:`cpo_loss` of the sequence log-probabilities (sums) plus
    ``alpha`` times the chosen answers' token NLL (TRL's ``cpo_alpha``, default 1; the paper's
    behaviour-cloning term), from the policy's hidden states and head.
    {linear}"""
    rule = _cpo_rule(beta, label_smoothing, alpha)
    return _linear(
        rule, hidden, weight, target, bias=bias, temperature=temperature, mask=mask,
        ignore_index=ignore_index, reduction=VP.check_reduction(reduction),
        return_metrics=return_metrics, impl=impl, chunk_size=chunk_size,
        memory_budget=memory_budget, validate=validate,
    )  # fmt: skip


@_with_linear_args
def linear_simpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    beta: float = 2.0,
    gamma: float = 0.5,
    alpha: float = 0.0,
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r""":func:`simpo_loss` of the token-mean log-probabilities from the policy's hidden states
    and head; ``alpha > 0`` adds the chosen answers' token NLL as CPO does (TRL's
    ``CPOTrainer(loss_type='simpo', cpo_alpha=...)``; SimPO itself has none: default 0).
    {linear}"""
    rule = _cpo_rule(beta, label_smoothing, alpha, gamma)
    return _linear(
        rule, hidden, weight, target, bias=bias, temperature=temperature, mask=mask,
        ignore_index=ignore_index, reduction=VP.check_reduction(reduction),
        return_metrics=return_metrics, impl=impl, chunk_size=chunk_size,
        memory_budget=memory_budget, validate=validate,
    )  # fmt: skip


@_with_linear_args
def linear_kto_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    desirable: Tensor,
    *,
    reference_logps: Tensor | None = None,
    reference_input: Tensor | None = None,
    reference_weight: Tensor | None = None,
    reference_bias: Tensor | None = None,
    bias: Tensor | None = None,
    kl: float | Tensor = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r""":func:`kto_loss` from the policy's hidden states and head: ``S`` examples (not pairs),
    ``desirable`` ``(S,)`` bool saying which answers are good; ``kl`` the detached reference
    point (see :func:`kto_loss`).
    {linear}"""
    rule = _kto_rule(kl, beta, desirable_weight, undesirable_weight)
    if isinstance(hidden, Tensor) and hidden.dim() == 3:
        VP.check_sequence_side(
            "desirable", desirable, (hidden.shape[0],), hidden,
            what="True where the answer is desirable", boolean=True,
        )  # fmt: skip
    return _linear(
        rule, hidden, weight, target, bias=bias, reference_logps=reference_logps,
        reference_input=reference_input, reference_weight=reference_weight,
        reference_bias=reference_bias, side={"desirable": desirable}, temperature=temperature,
        mask=mask, ignore_index=ignore_index, reduction=VP.check_reduction(reduction),
        return_metrics=return_metrics, impl=impl, chunk_size=chunk_size,
        memory_budget=memory_budget, validate=validate,
    )  # fmt: skip


@_with_linear_args
def linear_grpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    advantages: Tensor,
    *,
    old_logps: Tensor | None = None,
    reference_logps: Tensor | None = None,
    reference_input: Tensor | None = None,
    reference_weight: Tensor | None = None,
    reference_bias: Tensor | None = None,
    bias: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo",
    max_completion_length: int | None = None,
    normalizer: float | Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    return_metrics: bool = False,
    impl: Literal["auto", "reference", "fused"] = "auto",
    chunk_size: int | None = None,
    memory_budget: int | Literal["default", "lean"] = "default",
    validate: bool = True,
) -> Tensor | tuple[Tensor, Metrics]:
    r""":func:`grpo_loss` from the policy's hidden states and head: ``S`` sampled completions,
    ``advantages`` ``(S,)``, ``old_logps`` / ``reference_logps`` per token ``(S, T)`` (or the
    reference's hidden states and head); the options of :func:`grpo_loss`. It normalizes as
    ``loss_type`` says and takes no ``reduction``.
    {linear}"""
    rule = _grpo_rule(beta, epsilon, epsilon_high, loss_type, max_completion_length, normalizer)
    side = {}
    if isinstance(hidden, Tensor) and hidden.dim() == 3:
        s, t = hidden.shape[:2]
        VP.check_sequence_side("advantages", advantages, (s,), hidden, what="one per sequence")
        VP.check_sequence_side("old_logps", old_logps, (s, t), hidden, what="per token")
        side["advantages"] = advantages.detach()
        if old_logps is not None:
            side["old"] = old_logps.detach()
    if rule.beta and reference_logps is None and reference_input is None:
        raise VP.LossValueError(
            "beta > 0 adds the KL to the reference model: pass reference_logps, or "
            "reference_input and reference_weight"
        )
    return _linear(
        rule, hidden, weight, target, bias=bias, reference_logps=reference_logps,
        reference_input=reference_input, reference_weight=reference_weight,
        reference_bias=reference_bias, side=side, temperature=temperature, mask=mask,
        ignore_index=ignore_index, reduction="mean", return_metrics=return_metrics, impl=impl,
        chunk_size=chunk_size, memory_budget=memory_budget, validate=validate,
    )  # fmt: skip
