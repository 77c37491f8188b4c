"""Preference and policy-gradient losses: the references against independent formulas, the fused
linear forms against the references.

The references (``impl='reference'``) are held in float64, at 1e-10, to the papers' / TRL's
formulas written again here in plain torch (``F.linear``, ``log_softmax``, ``gather``: none of
losskit's code), on TRL's layout (``2B`` sequences, the chosen answers first; labels -100 on a
prompt prefix and on some padding at the end), and to gradcheck. The fused forms (the chunked
engine, ``kernels/chunked/sequences.py``) are held to the float64 truth: in float32 within an
error budget at the gradient tensor's scale, in bfloat16 no further from the truth than the
reference computed in bfloat16, plus a small slack; for chunks of several pairs, one pair, and
pairs run in two sweeps.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FUSED_F32_BUDGET, REDUCTIONS, assert_within_budget

import losskit.functional as LF
from losskit._validate import LossIndexError, LossTypeError, LossValueError
from losskit.kernels.chunked import engine, sequences

F64 = torch.float64

#: float32's error budget of the fused forms, at the gradient tensor's scale. A logit's gradient
#: is ``g_t (softmax - onehot)`` with ``g_t = dL/dlog p_t``: the cross-entropy epilogue's
#: rounding (the conftest's four steps) times ``g_t``, plus ``g_t``'s own rounding, which
#: carries the float32 error of the sequence log-probabilities it is a function of (sums of
#: ~10 token log-probabilities of ~log V each, amplified by ``beta`` and, for IPO, by the
#: squared loss's ``2 (u - 1/2beta)``). Measured here: at most 8.4 steps beyond the reference's
#: own error (IPO and DPO, ``'sum'``); 24 leaves ~3x for other SIMD widths.
F32_BUDGET = dict(FUSED_F32_BUDGET, ulps=24.0)
#: bfloat16's, at the tensor's scale: the fused gradient is rounded to bfloat16 twice (``softmax -
#: onehot`` into the logits' buffer, then times ``g_t``), the reference's once; measured at most
#: 1.65 steps beyond the reference's error, 3 allowed.
BF16_BUDGET = dict(ulps=3.0, scale="tensor")


# --------------------------------------------------------------------------------------------
# the batch: TRL's layout
# --------------------------------------------------------------------------------------------


def make_batch(s=6, t=13, d=24, v=1031, *, dtype=F64, seed=0):
    """Policy and reference heads and hidden states of ``s`` sequences (pairs: the chosen first),
    targets with a prompt prefix (-100) and trailing padding (-100), a random mask, and the
    sequences' side inputs (advantages, old log-probabilities' noise, desirable flags)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=F64)

    hidden = r(s, t, d)
    weight = r(v, d, scale=2.0 / math.sqrt(d))
    bias = r(v, scale=0.5)
    # the reference model: a perturbed copy, so that the policy's log-ratios are a few nats
    ref_hidden = hidden + r(s, t, d, scale=0.3)
    ref_weight = weight + r(v, d, scale=0.3 / math.sqrt(d))
    ref_bias = bias + r(v, scale=0.1)
    target = torch.randint(0, v, (s, t), generator=g)
    mask = torch.rand(s, t, generator=g) > 0.15
    for i in range(s):
        prompt = min(2 + i % 3, t // 3)
        pad = min(i % 4, t - prompt - 2)
        target[i, :prompt] = -100  # the prompt
        target[i, t - pad :] = -100  # padding (none when pad is 0)
        mask[i, prompt] = True  # every sequence keeps a counted position
    batch = dict(
        hidden=hidden, weight=weight, bias=bias, ref_hidden=ref_hidden, ref_weight=ref_weight,
        ref_bias=ref_bias, target=target, mask=mask,
        advantages=r(s), old_noise=r(s, t, scale=0.25),
        desirable=torch.tensor([i % 3 != 1 for i in range(s)]),
    )  # fmt: skip
    return {k: (x.to(dtype) if x.is_floating_point() else x) for k, x in batch.items()}


# --------------------------------------------------------------------------------------------
# independent formulas (plain torch, float64)
# --------------------------------------------------------------------------------------------


def torch_token_logps(h, w, b, y, counted, tau=1.0):
    """``log_softmax(F.linear(h, w, b) / tau)`` at the targets, 0 where not counted."""
    z = F.linear(h, w, b) / tau
    lp = z.log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, lp, 0.0)


def seq_sum(lp, counted):
    return torch.where(counted, lp, 0.0).sum(-1)


def seq_mean(lp, counted):
    return seq_sum(lp, counted) / counted.sum(-1)


def torch_dpo(pc, pr, rc, rr, beta, loss_type, eps=0.0):
    """TRL's ``DPOTrainer.dpo_loss``: per-pair losses and its metrics."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * logits)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).double().mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }
    return losses, metrics


def torch_orpo_ratio(pc, pr, beta):
    """TRL's ``ORPOTrainer.odds_ratio_loss``: (-beta * log sigmoid(log odds), metrics)."""
    log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
    ratio = F.logsigmoid(log_odds)
    metrics = {
        "rewards/chosen": (beta * pc).mean(),
        "rewards/rejected": (beta * pr).mean(),
        "rewards/accuracies": (pc > pr).double().mean(),
        "rewards/margins": (beta * (pc - pr)).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
        "log_odds_ratio": ratio.mean(),
        "log_odds_chosen": log_odds.mean(),
    }
    return -beta * ratio, metrics


def torch_cpo(pc, pr, beta, eps, gamma=None):
    """TRL's ``CPOTrainer.cpo_loss`` (``'sigmoid'``, or ``'simpo'`` with ``gamma``)."""
    logits = pc - pr
    if gamma is not None:
        logits = logits - gamma / beta
    losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    metrics = {
        "rewards/chosen": (beta * pc).mean(),
        "rewards/rejected": (beta * pr).mean(),
        "rewards/accuracies": (pc > pr).double().mean(),
        "rewards/margins": (beta * (pc - pr)).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }
    return losses, metrics


def torch_kto(pol, ref, good, kl, beta, wd, wu):
    """TRL's ``KTOTrainer.kto_loss``, each example's loss in batch order, and the metrics."""
    r = pol - ref
    chosen = wd * (1 - torch.sigmoid(beta * (r - kl)))
    rejected = wu * (1 - torch.sigmoid(beta * (kl - r)))
    losses = torch.where(good, chosen, rejected)
    metrics = {
        "rewards/chosen": (beta * r[good]).mean(),
        "rewards/rejected": (beta * r[~good]).mean(),
        "rewards/margins": (beta * r[good]).mean() - (beta * r[~good]).mean(),
        "logps/chosen": pol[good].mean(),
        "logps/rejected": pol[~good].mean(),
        "kl": torch.tensor(float(kl), dtype=F64),
    }
    return losses, metrics


def torch_grpo(lp, old, ref, adv, counted, *, beta, eps, eps_high, loss_type, max_len=None,
               normalizer=None):  # fmt: skip
    """TRL's ``GRPOTrainer._compute_loss`` on per-token log-probabilities, and its metrics."""
    old = lp.detach() if old is None else old
    ratio = torch.exp(lp - old)
    a = adv.unsqueeze(1)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps_high) * a)
    m = counted.double()
    if ref is not None:
        kl = torch.exp(ref - lp) - (ref - lp) - 1
        if beta:
            per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (lp.shape[0] * (max_len or lp.shape[1]))
    else:
        loss = (per_token * m).sum() / (m.sum() if normalizer is None else normalizer)
    low = ((ratio < 1 - eps) & (a < 0)).double()
    high = ((ratio > 1 + eps_high) & (a > 0)).double()
    metrics = {
        "clip_ratio/low_mean": (low * m).sum() / m.sum(),
        "clip_ratio/high_mean": (high * m).sum() / m.sum(),
        "clip_ratio/region_mean": (((low + high) > 0).double() * m).sum() / m.sum(),
    }
    if ref is not None:
        metrics["kl"] = (kl * m).sum() / m.sum()
    return loss, metrics


# --------------------------------------------------------------------------------------------
# the losses under test, and their independent values
# --------------------------------------------------------------------------------------------

#: name -> (losskit's linear form, its options, how the reference is aggregated or None)
PAIR_LOSSES = {
    "dpo": (LF.linear_dpo_loss, dict(beta=0.5, label_smoothing=0.1), "sum"),
    "ipo": (LF.linear_dpo_loss, dict(beta=0.5, loss_type="ipo"), "mean"),
    "hinge": (LF.linear_dpo_loss, dict(beta=0.5, loss_type="hinge"), "sum"),
    "orpo": (LF.linear_orpo_loss, dict(beta=0.3), None),
    "cpo": (LF.linear_cpo_loss, dict(beta=0.2, alpha=0.7, label_smoothing=0.1), None),
    "simpo": (LF.linear_simpo_loss, dict(beta=2.0, gamma=0.4, alpha=0.3, label_smoothing=0.05),
              None),
    "kto": (LF.linear_kto_loss, dict(beta=0.2, kl=0.3, desirable_weight=1.2,
                                     undesirable_weight=0.8), "sum"),
}  # fmt: skip
GRPO_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
GRPO_OPTIONS = dict(beta=0.04, epsilon=0.2, epsilon_high=0.28)
#: the reference model's three forms
REF_FORMS = ("sequence", "token", "heads")

SETUPS = {
    "plain": dict(temperature=1.0, bias=False, mask=False),
    "full": dict(temperature=1.7, bias=True, mask=True),
}


def counted_of(batch, setup):
    counted = batch["target"] != -100
    return counted & batch["mask"] if setup["mask"] else counted


def reference_kwargs(batch, setup, form, agg):
    """The reference model in one of its three forms (the per-sequence and per-token values
    computed here, independently, from its hidden states and head)."""
    counted = counted_of(batch, setup)
    b = batch["ref_bias"] if setup["bias"] else None
    tau = setup["temperature"]
    tok = torch_token_logps(batch["ref_hidden"], batch["ref_weight"], b, batch["target"], counted,
                            tau)  # fmt: skip
    if form == "heads":
        return dict(reference_input=batch["ref_hidden"], reference_weight=batch["ref_weight"],
                    reference_bias=b)  # fmt: skip
    if form == "token":
        # garbage where a position does not count: it must be ignored
        return dict(reference_logps=torch.where(counted, tok, 5.0))
    if agg is None:  # GRPO: per token only
        return dict(reference_logps=tok)
    return dict(reference_logps=seq_sum(tok, counted) if agg == "sum" else seq_mean(tok, counted))


def call_kwargs(batch, setup):
    kw = dict(temperature=setup["temperature"])
    if setup["bias"]:
        kw["bias"] = batch["bias"]
    if setup["mask"]:
        kw["mask"] = batch["mask"]
    return kw


def old_logps(batch, setup):
    """The sampling policy's token log-probabilities: the policy's (float64, independent) plus
    noise, so that the ratios fall on both sides of the clip range."""
    counted = counted_of(batch, setup)
    b = batch["bias"] if setup["bias"] else None
    lp = torch_token_logps(batch["hidden"].double(), batch["weight"].double(),
                           None if b is None else b.double(), batch["target"], counted,
                           setup["temperature"])  # fmt: skip
    return (lp + batch["old_noise"].double()).to(batch["hidden"].dtype)


def independent(name, batch, setup, *, grpo_type=None, grpo_extra=None):
    """The loss's terms (per pair / example; GRPO: the loss) and TRL's metrics, from the
    formulas above on float64 log-probabilities computed here."""
    b = batch["bias"] if setup["bias"] else None
    counted = counted_of(batch, setup)
    tau = setup["temperature"]
    y = batch["target"]
    lp = torch_token_logps(batch["hidden"], batch["weight"], b, y, counted, tau)
    ref_tok = torch_token_logps(
        batch["ref_hidden"],
        batch["ref_weight"],
        batch["ref_bias"] if setup["bias"] else None,
        y,
        counted,
        tau,
    )
    if name == "grpo":
        extra = dict(GRPO_OPTIONS, **(grpo_extra or {}))
        ref = extra.pop("ref", ref_tok)
        return torch_grpo(lp, old_logps(batch, setup), ref, batch["advantages"], counted,
                          beta=extra["beta"], eps=extra["epsilon"], eps_high=extra["epsilon_high"],
                          loss_type=grpo_type, max_len=extra.get("max_completion_length"),
                          normalizer=extra.get("normalizer"))  # fmt: skip
    _, opts, _ = PAIR_LOSSES[name]
    half = lp.shape[0] // 2
    sums, means = seq_sum(lp, counted), seq_mean(lp, counted)
    chosen_nll = -seq_sum(lp[:half], counted[:half])  # each pair's chosen tokens' summed NLL
    nll_share = chosen_nll * half / counted[:half].sum()  # its share of TRL's mean NLL
    if name in ("dpo", "ipo", "hinge"):
        pol = means if name == "ipo" else sums
        ref = seq_mean(ref_tok, counted) if name == "ipo" else seq_sum(ref_tok, counted)
        return torch_dpo(
            pol[:half],
            pol[half:],
            ref[:half],
            ref[half:],
            opts["beta"],
            opts.get("loss_type", "sigmoid"),
            opts.get("label_smoothing", 0.0),
        )
    if name == "orpo":
        terms, metrics = torch_orpo_ratio(means[:half], means[half:], opts["beta"])
        metrics["nll_loss"] = nll_share.mean()
        return terms + nll_share, metrics
    if name in ("cpo", "simpo"):
        pol = sums if name == "cpo" else means
        terms, metrics = torch_cpo(pol[:half], pol[half:], opts["beta"], opts["label_smoothing"],
                                   opts.get("gamma"))  # fmt: skip
        metrics["nll_loss"] = nll_share.mean()
        return terms + opts["alpha"] * nll_share, metrics
    return torch_kto(sums, seq_sum(ref_tok, counted), batch["desirable"], opts["kl"], opts["beta"],
                     opts["desirable_weight"], opts["undesirable_weight"])  # fmt: skip


def run_pair(name, batch, setup, form="sequence", **kw):
    """losskit's linear form of a pair (or KTO) loss on ``batch``."""
    fn, opts, agg = PAIR_LOSSES[name]
    args = [batch["hidden"], batch["weight"], batch["target"]]
    if name == "kto":
        args.append(batch["desirable"])
    ref = reference_kwargs(batch, setup, form, agg) if agg is not None else {}
    return fn(*args, **ref, **opts, **call_kwargs(batch, setup), **kw)


def run_grpo(batch, setup, loss_type, form="token", extra=None, **kw):
    extra = dict(GRPO_OPTIONS, **(extra or {}))
    ref = {} if form is None else reference_kwargs(batch, setup, form, None)
    return LF.linear_grpo_loss(
        batch["hidden"], batch["weight"], batch["target"], batch["advantages"],
        old_logps=old_logps(batch, setup), loss_type=loss_type, **ref, **extra,
        **call_kwargs(batch, setup), **kw,
    )  # fmt: skip


def close64(actual, expected, what=""):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-10, atol=1e-10,
                               msg=lambda m: f"{what}: {m}")  # fmt: skip


def check_metrics(metrics, expected):
    """losskit's metrics (float32, from float32 log-probabilities) against TRL's, in float64."""
    assert set(metrics) == set(expected), sorted(set(metrics) ^ set(expected))
    for k, v in metrics.items():
        assert v.dtype == torch.float32 and v.dim() == 0 and not v.requires_grad, k
        torch.testing.assert_close(v.double(), expected[k].double().reshape(()), rtol=1e-5,
                                   atol=1e-5, msg=lambda m, k=k: f"metric {k}: {m}")  # fmt: skip


# --------------------------------------------------------------------------------------------
# 1. the references against the independent formulas, float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_match_trl_formulas(name, setup, reduction):
    batch, setup = make_batch(), SETUPS[setup]
    terms, metrics = independent(name, batch, setup)
    groups = terms.shape[0]
    assert groups == (6 if name == "kto" else 3)
    forms = REF_FORMS if PAIR_LOSSES[name][2] else (None,)
    for form in forms:
        what = f"{name} {form} {reduction}"
        out, got = run_pair(name, batch, setup, form or "sequence", reduction=reduction,
                            return_metrics=True, impl="reference")  # fmt: skip
        assert out.dtype == F64
        if reduction == "none":
            assert out.shape == (groups,), what
            close64(out, terms, what)
        elif reduction == "mean":
            close64(out, terms.mean(), what)
        else:
            close64(out, groups * terms.mean(), what)  # 'sum' = G * mean
        check_metrics(got, metrics)
        # 'auto' on float64: the reference, the same numbers
        close64(run_pair(name, batch, setup, form or "sequence", reduction=reduction), out, what)


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("loss_type", GRPO_TYPES)
def test_grpo_matches_trl_formula(loss_type, setup):
    batch, setup = make_batch(), SETUPS[setup]
    variants = [({}, "token"), ({}, "heads"), (dict(beta=0.0), None), (dict(beta=0.0), "token")]
    if loss_type == "dr_grpo":
        variants.append((dict(max_completion_length=16), "token"))
    if loss_type == "dapo":
        variants.append((dict(normalizer=37.3), "token"))
        variants.append((dict(normalizer=torch.tensor(41.0, dtype=F64)), "token"))
    for extra, form in variants:
        what = f"{loss_type} {extra} {form}"
        expect_extra = dict(extra) if form is not None else dict(extra, ref=None)
        want, metrics = independent("grpo", batch, setup, grpo_type=loss_type,
                                    grpo_extra=expect_extra)  # fmt: skip
        out, got = run_grpo(batch, setup, loss_type, form, extra, return_metrics=True,
                            impl="reference")  # fmt: skip
        close64(out, want, what)
        check_metrics(got, metrics)
    # the clip ranges are exercised on both sides
    assert 0 < float(metrics["clip_ratio/low_mean"]) and 0 < float(metrics["clip_ratio/high_mean"])


def test_grpo_on_policy_ratio_is_one_with_its_gradient():
    """Without old_logps the ratio is 1 with the gradient of log p (TRL's on-policy step):
    the loss is -mean A (+ KL), the gradient that of -A log p."""
    batch, setup = make_batch(), SETUPS["full"]
    counted = counted_of(batch, setup)
    h = batch["hidden"].clone().requires_grad_()
    kw = call_kwargs(batch, setup)
    out = LF.linear_grpo_loss(h, batch["weight"], batch["target"], batch["advantages"],
                              loss_type="bnpo", impl="reference", **kw)  # fmt: skip
    (g,) = torch.autograd.grad(out, h)
    h2 = batch["hidden"].clone().requires_grad_()
    lp = torch_token_logps(h2, batch["weight"], batch["bias"], batch["target"], counted, 1.7)
    adv = batch["advantages"].unsqueeze(1)
    want = -(torch.where(counted, adv * torch.exp(lp - lp.detach()), 0.0)).sum() / counted.sum()
    (g2,) = torch.autograd.grad(want, h2)
    close64(out, want)
    close64(g, g2)


def test_reference_forms_agree():
    """The reference model as (S,) per-sequence, (S, T) per-token values and as hidden states and
    head give the same loss (and the (S, T) form's non-counted entries are ignored)."""
    batch, setup = make_batch(), SETUPS["full"]
    for name in ("dpo", "ipo", "kto"):
        outs = [run_pair(name, batch, setup, f, impl="reference") for f in REF_FORMS]
        for o in outs[1:]:
            close64(o, outs[0], name)


def test_logps_level_losses_match_trl_formulas():
    g = torch.Generator().manual_seed(5)
    pc, pr = (
        -torch.rand(5, generator=g, dtype=F64) * 3 - 0.1,
        -torch.rand(5, generator=g, dtype=F64) * 3 - 0.1,
    )
    rc, rr = (
        pc + torch.randn(5, generator=g, dtype=F64),
        pr + torch.randn(5, generator=g, dtype=F64),
    )
    for loss_type in ("sigmoid", "ipo", "hinge"):
        for red in REDUCTIONS:
            out, m = LF.dpo_loss(pc, pr, rc, rr, beta=0.7, loss_type=loss_type,
                                 label_smoothing=0.2 if loss_type == "sigmoid" else 0.0,
                                 reduction=red, return_metrics=True)  # fmt: skip
            terms, want_m = torch_dpo(pc, pr, rc, rr, 0.7, loss_type,
                                      0.2 if loss_type == "sigmoid" else 0.0)  # fmt: skip
            close64(out, {"none": terms, "mean": terms.mean(), "sum": terms.sum()}[red])
            check_metrics(m, want_m)
    out, m = LF.orpo_loss(pc, pr, beta=0.4, reduction="none", return_metrics=True)
    terms, want_m = torch_orpo_ratio(pc, pr, 0.4)
    close64(out, terms)
    check_metrics(m, want_m)
    out, m = LF.cpo_loss(pc, pr, beta=0.3, label_smoothing=0.1, return_metrics=True)
    terms, want_m = torch_cpo(pc, pr, 0.3, 0.1)
    close64(out, terms.mean())
    check_metrics(m, want_m)
    out, m = LF.simpo_loss(pc, pr, beta=2.5, gamma=0.7, reduction="sum", return_metrics=True)
    terms, want_m = torch_cpo(pc, pr, 2.5, 0.0, 0.7)
    close64(out, terms.sum())
    # SimPO's own form: -log sigmoid(beta (pc - pr) - gamma)
    close64(out, -F.logsigmoid(2.5 * (pc - pr) - 0.7).sum())
    check_metrics(m, want_m)
    good = torch.tensor([True, False, True, True, False])
    for kl in (0.0, 0.25, torch.tensor(0.4, dtype=F64)):
        out, m = LF.kto_loss(pc, rc, good, kl=kl, beta=0.3, desirable_weight=1.5,
                             undesirable_weight=0.6, return_metrics=True)  # fmt: skip
        terms, want_m = torch_kto(pc, rc, good, float(kl), 0.3, 1.5, 0.6)
        close64(out, terms.mean())
        check_metrics(m, want_m)
    lp = -torch.rand(4, 7, generator=g, dtype=F64) * 4
    old = lp + 0.3 * torch.randn(4, 7, generator=g, dtype=F64)
    ref = lp + 0.5 * torch.randn(4, 7, generator=g, dtype=F64)
    adv = torch.randn(4, generator=g, dtype=F64)
    mask = torch.rand(4, 7, generator=g) > 0.3
    for lt in GRPO_TYPES:
        out, m = LF.grpo_loss(lp, adv, mask=mask, old_logps=old, reference_logps=ref, beta=0.1,
                              epsilon=0.2, epsilon_high=0.3, loss_type=lt,
                              max_completion_length=9 if lt == "dr_grpo" else None,
                              return_metrics=True)  # fmt: skip
        want, want_m = torch_grpo(
            lp,
            old,
            ref,
            adv,
            mask,
            beta=0.1,
            eps=0.2,
            eps_high=0.3,
            loss_type=lt,
            max_len=9 if lt == "dr_grpo" else None,
        )
        close64(out, want, lt)
        check_metrics(m, want_m)


def test_token_and_sequence_logprobs():
    batch, setup = make_batch(s=4, t=9, v=301), SETUPS["full"]
    counted = counted_of(batch, setup)
    h, w, b, y, mask = (batch[k] for k in ("hidden", "weight", "bias", "target", "mask"))
    want = torch_token_logps(h, w, b, y, counted, 1.7)
    for impl in ("reference", "auto"):
        lp = LF.token_logprobs(h, w, y, bias=b, temperature=1.7, mask=mask, impl=impl)
        close64(lp, want)
        assert bool((lp[~counted] == 0).all())
        close64(LF.sequence_logprobs(h, w, y, bias=b, temperature=1.7, mask=mask, impl=impl),
                seq_sum(want, counted))  # fmt: skip
        close64(LF.sequence_logprobs(h, w, y, bias=b, temperature=1.7, mask=mask, average=True,
                                     impl=impl), seq_mean(want, counted))  # fmt: skip
    # any leading dims; float32 fused against the float64 values
    lp32 = LF.token_logprobs(h[0].float(), w.float(), y[0], bias=b.float(), temperature=1.7,
                             mask=mask[0], impl="fused", chunk_size=4)  # fmt: skip
    torch.testing.assert_close(lp32.double(), want[0], rtol=1e-5, atol=1e-5)
    # the fused gradient of an arbitrary downstream function equals the reference's
    hs = [h.float().clone().requires_grad_() for _ in range(2)]
    up = torch.randn(4, generator=torch.Generator().manual_seed(3))
    grads = []
    for x, impl in zip(hs, ("fused", "reference"), strict=True):
        s = LF.sequence_logprobs(x, w.float(), y, bias=b.float(), temperature=1.7, mask=mask,
                                 average=True, impl=impl, chunk_size=5)  # fmt: skip
        grads.append(torch.autograd.grad((s * up).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_linear_dpo_equals_dpo_of_sequence_logprobs():
    batch, setup = make_batch(), SETUPS["full"]
    h, w, b, y, mask = (batch[k] for k in ("hidden", "weight", "bias", "target", "mask"))
    ref = reference_kwargs(batch, setup, "sequence", "sum")["reference_logps"]
    for loss_type, average in (("sigmoid", False), ("ipo", True), ("hinge", False)):
        rl = ref if not average else reference_kwargs(batch, setup, "sequence", "mean")[
            "reference_logps"]  # fmt: skip
        out = LF.linear_dpo_loss(h, w, y, bias=b, reference_logps=rl, loss_type=loss_type,
                                 beta=0.3, temperature=1.7, mask=mask)  # fmt: skip
        pol = LF.sequence_logprobs(h, w, y, bias=b, temperature=1.7, mask=mask, average=average)
        close64(out, LF.dpo_loss(pol[:3], pol[3:], rl[:3], rl[3:], beta=0.3, loss_type=loss_type))


# --------------------------------------------------------------------------------------------
# 2. gradcheck on the reference path
# --------------------------------------------------------------------------------------------


def small_batch():
    return make_batch(s=4, t=5, d=3, v=11, seed=2)


@pytest.mark.parametrize("name", [*PAIR_LOSSES, *(f"grpo-{t}" for t in GRPO_TYPES)])
def test_gradcheck_reference_linear_forms(name):
    batch, setup = small_batch(), SETUPS["full"]
    if name.startswith("grpo"):
        loss_type = name.split("-")[1]
        old = old_logps(batch, setup)

        def fn(h, w, b):
            return LF.linear_grpo_loss(
                h,
                w,
                batch["target"],
                batch["advantages"],
                old_logps=old,
                reference_input=batch["ref_hidden"],
                reference_weight=batch["ref_weight"],
                loss_type=loss_type,
                bias=b,
                temperature=1.7,
                mask=batch["mask"],
                impl="reference",
                **GRPO_OPTIONS,
            )
    else:
        reduction = "none" if name in ("orpo", "kto") else "mean"

        def fn(h, w, b):
            sub = dict(batch, hidden=h, weight=w, bias=b)
            return run_pair(name, sub, setup, "heads", impl="reference", reduction=reduction)

    inputs = [batch[k].clone().requires_grad_() for k in ("hidden", "weight", "bias")]
    assert torch.autograd.gradcheck(fn, inputs)
    if name in ("dpo", "grpo-dapo"):
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradcheck_logps_level_losses():
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return (-torch.rand(*shape, generator=g, dtype=F64) * 3 - 0.2).requires_grad_()

    pc, pr, rc, rr = r(4), r(4), r(4), r(4)
    good = torch.tensor([True, False, True, False])
    for loss_type in ("sigmoid", "ipo", "hinge"):
        fn = functools.partial(LF.dpo_loss, beta=0.4, loss_type=loss_type, reduction="none")
        assert torch.autograd.gradcheck(fn, (pc, pr, rc, rr))
    assert torch.autograd.gradgradcheck(functools.partial(LF.dpo_loss, label_smoothing=0.1),
                                        (pc, pr, rc, rr))  # fmt: skip
    assert torch.autograd.gradcheck(functools.partial(LF.orpo_loss, beta=0.5), (pc, pr))
    assert torch.autograd.gradcheck(functools.partial(LF.cpo_loss, label_smoothing=0.1), (pc, pr))
    assert torch.autograd.gradcheck(functools.partial(LF.simpo_loss, gamma=0.3), (pc, pr))
    assert torch.autograd.gradcheck(
        lambda p, q: LF.kto_loss(p, q, good, kl=0.2, reduction="none"), (pc, rc)
    )
    lp = r(3, 6)
    old = (lp + 0.3 * torch.randn(3, 6, generator=g, dtype=F64)).detach()
    ref = (lp + 0.3 * torch.randn(3, 6, generator=g, dtype=F64)).detach()
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = torch.rand(3, 6, generator=g) > 0.3

    def grpo(x):
        return LF.grpo_loss(x, adv, mask=mask, old_logps=old, reference_logps=ref, beta=0.1,
                            loss_type="grpo")  # fmt: skip

    assert torch.autograd.gradcheck(grpo, (lp,))
    assert torch.autograd.gradgradcheck(grpo, (lp,))


# --------------------------------------------------------------------------------------------
# 3. the fused forms against the references
# --------------------------------------------------------------------------------------------

#: chunk_size per plan, in units of a group's rows (2 T for pairs, T for KTO and GRPO): several
#: groups per chunk (the last chunk shorter), one group per chunk, each group in two sweeps
CHUNKS = {"several": lambda per: 2 * per, "one": lambda per: per, "two_sweeps": lambda per: 5}


def fused_vs_truth(run, batch, dtype, *, grad_of=("hidden", "weight", "bias")):
    """``run(batch, impl)`` fused in ``dtype`` against the reference in ``dtype`` and in float64:
    loss and the gradients of ``grad_of``, the upstream gradient random for ``'none'``."""
    runs = {}
    for key, impl, dt in (("fused", "fused", dtype), ("ref", "reference", dtype),
                          ("truth", "reference", F64)):  # fmt: skip
        b = {k: (v.to(dt) if v.is_floating_point() else v) for k, v in batch.items()}
        for k in grad_of:
            b[k] = b[k].clone().requires_grad_()
        out = run(b, impl)
        if key == "fused":
            assert "LinearSequenceFunction" in type(out.grad_fn).__name__
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        grads = torch.autograd.grad(out, [b[k] for k in grad_of], up.to(out.dtype))
        runs[key] = (out.detach(), grads)
    (out, grads), (ref, ref_grads), (truth, truth_grads) = runs["fused"], runs["ref"], runs["truth"]
    budget = F32_BUDGET if dtype == torch.float32 else BF16_BUDGET
    assert out.dtype == dtype
    assert_within_budget(
        out,
        ref,
        truth,
        what="loss",
        **(dict(budget, scale="element") if out.dim() == 0 else budget),
    )
    for k, g, rg, tg in zip(grad_of, grads, ref_grads, truth_grads, strict=True):
        assert g.dtype == dtype
        assert_within_budget(g, rg, tg, what=f"gradient of {k}", **budget)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_fused_pair_losses_within_budget(name, reduction, chunk, dtype):
    batch, setup = make_batch(), SETUPS["full"]
    per = batch["target"].shape[1] * (1 if name == "kto" else 2)
    cs = CHUNKS[chunk](per)

    def run(b, impl):
        return run_pair(name, b, setup, "token", reduction=reduction, impl=impl, chunk_size=cs)

    fused_vs_truth(run, batch, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("loss_type", GRPO_TYPES)
def test_fused_grpo_within_budget(loss_type, chunk, dtype):
    batch, setup = make_batch(), SETUPS["full"]
    cs = CHUNKS[chunk](batch["target"].shape[1])

    def run(b, impl):
        return run_grpo(b, setup, loss_type, "heads", impl=impl, chunk_size=cs)

    fused_vs_truth(run, batch, dtype)


@pytest.mark.parametrize("name", [*PAIR_LOSSES, "grpo"])
def test_fused_metrics_match_trl(name):
    """The fused path's metrics (from its float32 log-probabilities) are TRL's, and its loss the
    same with and without them."""
    batch64, setup = make_batch(), SETUPS["full"]
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch64.items()}
    if name == "grpo":
        _, want = independent("grpo", batch64, setup, grpo_type="dapo")
        loss, got = run_grpo(batch, setup, "dapo", "heads", return_metrics=True, impl="fused",
                             chunk_size=13)  # fmt: skip
        plain = run_grpo(batch, setup, "dapo", "heads", impl="fused", chunk_size=13)
    else:
        _, want = independent(name, batch64, setup)
        loss, got = run_pair(name, batch, setup, "heads", return_metrics=True, impl="fused",
                             chunk_size=26)  # fmt: skip
        plain = run_pair(name, batch, setup, "heads", impl="fused", chunk_size=26)
    check_metrics(got, want)
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)


def test_fused_without_bias_or_temperature_and_with_reference_heads():
    batch, setup = make_batch(), SETUPS["plain"]
    for name in ("dpo", "orpo"):

        def run(b, impl, name=name):
            return run_pair(name, b, setup, "heads" if name == "dpo" else "sequence", impl=impl,
                            chunk_size=26)  # fmt: skip

        fused_vs_truth(run, batch, torch.float32, grad_of=("hidden", "weight"))


def test_plans_run_as_chosen(monkeypatch):
    """The chunk sizes of :data:`CHUNKS` give the sweeps they are named after: one call of the
    objective's gradient per chunk, and the second sweep's logits only in two-sweep plans."""
    calls = {"factor": 0, "sweep": 0}
    factor, logits = sequences._factor, engine.Head.logits

    def count_factor(*a, **k):
        calls["factor"] += 1
        return factor(*a, **k)

    def count_logits(self, *a, **k):
        calls["sweep"] += 1
        return logits(self, *a, **k)

    monkeypatch.setattr(sequences, "_factor", count_factor)
    monkeypatch.setattr(engine.Head, "logits", count_logits)
    batch = make_batch(dtype=torch.float32)
    setup = SETUPS["full"]
    h = batch["hidden"].requires_grad_()
    # 3 pairs of 2 x 13 rows: (chunk_size, chunks, blocks of the two sweeps)
    for cs, chunks, blocks in ((52, 2, 0), (78, 1, 0), (26, 3, 0), (5, 3, 2 * 6 * 3)):
        calls.update(factor=0, sweep=0)
        run_pair("dpo", dict(batch, hidden=h), setup, "token", impl="fused", chunk_size=cs)
        assert calls == {"factor": chunks, "sweep": blocks}, cs


# --------------------------------------------------------------------------------------------
# 4. behaviour
# --------------------------------------------------------------------------------------------


def test_no_grad_gives_the_same_loss():
    batch, setup = make_batch(dtype=torch.float32), SETUPS["full"]
    for name in ("dpo", "kto", "simpo"):
        for cs in (26, 5):
            with_grad = run_pair(name, dict(batch, hidden=batch["hidden"].requires_grad_()),
                                 setup, impl="fused", chunk_size=cs)  # fmt: skip
            with torch.no_grad():
                without = run_pair(name, batch, setup, impl="fused", chunk_size=cs)
            assert without.grad_fn is None
            torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    with torch.no_grad():
        a = run_grpo(batch, setup, "dapo", impl="fused", chunk_size=13)
    b = run_grpo(batch, setup, "dapo", impl="reference")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["dpo", "orpo", "grpo"])
def test_second_order_through_fused_equals_reference(name):
    batch, setup = make_batch(s=4, t=6, d=8, v=37, dtype=torch.float32), SETUPS["full"]
    res = {}
    for impl in ("fused", "reference"):
        h = batch["hidden"].clone().requires_grad_()
        w = batch["weight"].clone().requires_grad_()
        b = dict(batch, hidden=h, weight=w)
        if name == "grpo":
            out = run_grpo(b, setup, "grpo", impl=impl, chunk_size=6)
        else:
            out = run_pair(name, b, setup, impl=impl, chunk_size=12)
        gh, gw = torch.autograd.grad(out, (h, w), create_graph=True)
        hvp = torch.autograd.grad((gh * gh).sum() + gw.sum(), (h, w))
        res[impl] = (gh.detach(), gw.detach(), *hvp)
    for a, b in zip(res["fused"], res["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_second_backward_through_fused_graph_raises():
    batch, setup = make_batch(dtype=torch.float32), SETUPS["full"]
    h = batch["hidden"].requires_grad_()
    loss = run_pair("dpo", dict(batch, hidden=h), setup, impl="fused", chunk_size=26)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


@pytest.mark.parametrize("name", ["dpo", "cpo", "kto"])
def test_reduction_none_backward_with_random_upstream(name):
    batch, setup = make_batch(dtype=torch.float32), SETUPS["full"]
    res = {}
    for impl in ("fused", "reference"):
        h = batch["hidden"].clone().requires_grad_()
        w = batch["weight"].clone().requires_grad_()
        bb = batch["bias"].clone().requires_grad_()
        out = run_pair(name, dict(batch, hidden=h, weight=w, bias=bb), setup, impl=impl,
                       reduction="none", chunk_size=5 if name == "kto" else 26)  # fmt: skip
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
        out.backward(up)
        res[impl] = (out.detach(), h.grad, w.grad, bb.grad)
    for a, b in zip(res["fused"], res["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_mask_equals_ignore_index_and_slicing():
    """A masked position counts nowhere: the loss and gradients equal those with its target set to
    ignore_index, and, for trailing positions, those of the sequences cut before them; whatever
    its (finite) hidden state, its own hidden gradient is exactly 0."""
    batch, setup = make_batch(dtype=torch.float32), dict(SETUPS["full"], mask=True)
    counted = counted_of(batch, setup)
    mask = batch["mask"].clone()
    mask[:, 10:] = False  # the last 3 positions of every sequence
    garbage = batch["hidden"].clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), garbage.shape[-1])
    ignored = torch.where(mask, batch["target"], -100)
    kw = dict(temperature=1.7, bias=batch["bias"])
    for impl in ("fused", "reference"):
        ref = reference_kwargs(batch, setup, "token", "sum")["reference_logps"]
        res = []
        for h, y, m, r in (
            (garbage, batch["target"], mask, ref),
            (batch["hidden"], ignored, None, ref),
            (batch["hidden"][:, :10], ignored[:, :10], None, ref[:, :10]),
        ):
            x = h.clone().requires_grad_()
            w = batch["weight"].clone().requires_grad_()
            out = LF.linear_dpo_loss(x, w, y, reference_logps=r, mask=m, impl=impl,
                                     chunk_size=7, **kw)  # fmt: skip
            gx, gw = torch.autograd.grad(out, (x, w))
            res.append((out, gx, gw))
        (o0, gx0, gw0), (o1, gx1, gw1), (o2, gx2, gw2) = res
        torch.testing.assert_close(o0, o1, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(o0, o2, rtol=1e-6, atol=1e-6)
        assert bool((gx0[~mask] == 0).all()) and bool((gx1[~(counted & mask)] == 0).all())
        torch.testing.assert_close(gx0[mask], gx1[mask], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gx1[:, :10], gx2, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gw0, gw1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gw1, gw2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_masked_nan_hidden_reaches_neither_loss_nor_other_rows(impl):
    """NaN hidden states at a masked position: the loss and the other positions' hidden
    gradients are those without it (the head's gradient: see the next test)."""
    batch, setup = make_batch(dtype=torch.float32), SETUPS["full"]
    mask = batch["mask"].clone()
    mask[2, 8] = False
    h = batch["hidden"].clone()
    h[2, 8] = float("nan")
    res = []
    for x0 in (h, batch["hidden"]):
        x = x0.clone().requires_grad_()
        out = run_pair("dpo", dict(batch, hidden=x, mask=mask), setup, impl=impl, chunk_size=26)
        res.append((out, torch.autograd.grad(out, x)[0]))
    (o0, g0), (o1, g1) = res
    assert bool(o0.isfinite())
    torch.testing.assert_close(o0, o1, rtol=0, atol=0)
    keep = torch.ones_like(mask)
    keep[2, 8] = False
    torch.testing.assert_close(g0[keep], g1[keep], rtol=1e-6, atol=1e-8)


@pytest.mark.xfail(strict=True, reason="NaN hidden states at a masked position reach the head's "
                   "gradient (0 * NaN in dW = g.T @ x) and that position's own hidden gradient, "
                   "in both paths, as in linear_cross_entropy")  # fmt: skip
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_masked_nan_hidden_reaches_no_gradient(impl):
    batch, setup = make_batch(dtype=torch.float32), SETUPS["full"]
    mask = batch["mask"].clone()
    mask[2, 8] = False
    h = batch["hidden"].clone()
    h[2, 8] = float("nan")
    x, w = h.requires_grad_(), batch["weight"].clone().requires_grad_()
    out = run_pair("dpo", dict(batch, hidden=x, weight=w, mask=mask), setup, impl=impl,
                   chunk_size=26)  # fmt: skip
    gx, gw = torch.autograd.grad(out, (x, w))
    assert bool(gw.isfinite().all()) and bool((gx[2, 8] == 0).all())


def test_float64_normalizer_and_nll_shares_are_exact():
    """The batch-wide constants (GRPO's S / tokens and its normalizer, ORPO's and CPO's
    B / chosen tokens) keep float64 precision."""
    batch, setup = make_batch(), SETUPS["plain"]
    counted = counted_of(batch, setup)
    want, _ = independent("grpo", batch, setup, grpo_type="dapo",
                          grpo_extra=dict(normalizer=37.3))  # fmt: skip
    close64(run_grpo(batch, setup, "dapo", extra=dict(normalizer=37.3), impl="reference"), want)
    assert float(3 / counted[:3].sum().double()) != float(torch.tensor(3 / 23.0).float())
    terms, _ = independent("orpo", batch, setup)
    close64(run_pair("orpo", batch, setup, reduction="none", impl="reference"), terms)


# --------------------------------------------------------------------------------------------
# 5. input errors
# --------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    batch = make_batch(s=4, t=5, d=3, v=11)
    h, w, y = batch["hidden"], batch["weight"], batch["target"]
    adv, good = batch["advantages"], batch["desirable"]
    ref = torch.randn(4, dtype=F64)
    dpo = functools.partial(LF.linear_dpo_loss, h, w, y)
    grpo = functools.partial(LF.linear_grpo_loss, h, w, y, adv)
    bad_y = y.clone()
    bad_y[1, 3] = 11
    pc = torch.randn(3, dtype=F64)
    cases = [
        (lambda: LF.linear_dpo_loss(h[:3], w, y[:3], reference_logps=ref[:3]), LossValueError,
         "takes pairs"),
        (lambda: LF.linear_orpo_loss(h[:3], w, y[:3]), LossValueError, "3 sequences"),
        (lambda: dpo(reference_logps=ref[:3]), LossValueError, "reference_logps must have shape"),
        (lambda: LF.linear_dpo_loss(h, w, y[:, :4], reference_logps=ref), LossValueError,
         "target has shape"),
        (lambda: LF.linear_dpo_loss(h, w, y.double(), reference_logps=ref), LossTypeError,
         "target must hold class indices"),
        (lambda: LF.linear_dpo_loss(h, w, bad_y, reference_logps=ref), LossIndexError,
         "class index 11"),
        (lambda: dpo(reference_logps=ref, reference_input=h, reference_weight=w), LossValueError,
         "not both"),
        (lambda: dpo(), LossValueError, "reference_logps"),
        (lambda: dpo(reference_input=h), LossValueError, "reference_weight is missing"),
        (lambda: dpo(reference_input=h, reference_weight=w[:5]), LossValueError,
         "reference_weight has 5 classes"),
        (lambda: LF.linear_orpo_loss(h, w, y, reference_logps=ref), TypeError,
         "reference_logps"),
        (lambda: dpo(reference_logps=ref, beta=0.0), LossValueError, "beta must be > 0"),
        (lambda: dpo(reference_logps=ref, beta=float("nan")), LossValueError, "beta"),
        (lambda: dpo(reference_logps=ref, beta="0.1"), LossTypeError, "beta"),
        (lambda: dpo(reference_logps=ref, loss_type="kto"), LossValueError, "loss_type"),
        (lambda: dpo(reference_logps=ref, label_smoothing=0.6), LossValueError,
         "label_smoothing"),
        (lambda: dpo(reference_logps=ref, temperature=0.0), LossValueError, "temperature"),
        (lambda: dpo(reference_logps=ref, reduction="avg"), LossValueError, "reduction"),
        (lambda: dpo(reference_logps=ref, mask=torch.ones(4, 5)), LossTypeError, "mask"),
        (lambda: dpo(reference_logps=ref, impl="fast"), LossValueError, "impl"),
        (lambda: dpo(reference_logps=ref, chunk_size=0), LossValueError, "chunk_size"),
        (lambda: LF.linear_dpo_loss(h, w.T, y, reference_logps=ref), LossValueError,
         "input features"),
        (lambda: LF.linear_dpo_loss(h, w.float(), y, reference_logps=ref), LossTypeError,
         "weight"),
        (lambda: LF.linear_dpo_loss(h[0], w, y[0], reference_logps=ref), LossValueError,
         r"hidden must have shape \(S, T, D\)"),
        (lambda: LF.linear_simpo_loss(h, w, y, alpha=-1.0), LossValueError, "alpha"),
        (lambda: LF.linear_kto_loss(h, w, y, good.long(), reference_logps=ref), LossTypeError,
         "desirable must be a bool tensor"),
        (lambda: LF.linear_kto_loss(h, w, y, good[:3], reference_logps=ref), LossValueError,
         "desirable must have shape"),
        (lambda: LF.linear_kto_loss(h, w, y, good, reference_logps=ref, kl=torch.ones(2)),
         LossValueError, "kl must be"),
        (lambda: LF.linear_kto_loss(h, w, y, good), LossValueError, "reference"),
        (lambda: grpo(beta=0.1), LossValueError, "beta > 0"),
        (lambda: grpo(loss_type="ppo"), LossValueError, "loss_type"),
        (lambda: grpo(epsilon=1.5), LossValueError, "epsilon"),
        (lambda: grpo(epsilon=-0.1), LossValueError, "epsilon"),
        (lambda: grpo(epsilon_high=-0.1), LossValueError, "epsilon_high"),
        (lambda: LF.linear_grpo_loss(h, w, y, adv[:3]), LossValueError,
         "advantages must have shape"),
        (lambda: LF.linear_grpo_loss(h, w, y, adv.unsqueeze(1)), LossValueError,
         "advantages must have shape"),
        (lambda: grpo(old_logps=torch.zeros(4, dtype=F64)), LossValueError,
         "old_logps must have shape"),
        (lambda: grpo(normalizer=10.0, loss_type="bnpo"), LossValueError, "normalizer"),
        (lambda: grpo(max_completion_length=0, loss_type="dr_grpo"), LossValueError,
         "max_completion_length"),
        (lambda: grpo(reference_logps=ref, beta=0.1), LossValueError,
         r"reference_logps must have shape \(4, 5\)"),
        (lambda: LF.dpo_loss(pc, pc, pc, pc[:2]), LossValueError, "reference_rejected_logps"),
        (lambda: LF.dpo_loss(pc, pc, pc, pc.float()), LossTypeError, "reference_rejected_logps"),
        (lambda: LF.dpo_loss(pc.reshape(3, 1), pc, pc, pc), LossValueError,
         "policy_chosen_logps must have shape"),
        (lambda: LF.orpo_loss(pc, torch.ones(3, dtype=torch.long)), LossTypeError,
         "rejected_logps"),
        (lambda: LF.kto_loss(pc, pc, torch.ones(3)), LossTypeError, "desirable"),
        (lambda: LF.grpo_loss(pc, pc), LossValueError, "logps must have shape"),
        (lambda: LF.grpo_loss(pc.reshape(1, 3), torch.ones(1, dtype=F64), beta=0.1),
         LossValueError, "reference_logps"),
        (lambda: LF.grpo_loss(pc.reshape(1, 3), torch.ones(1, dtype=F64),
                              mask=torch.ones(1, 3)), LossTypeError, "mask"),
        (lambda: LF.sequence_logprobs(h[0, 0], w, y[0, 0]), LossValueError, "target"),
    ]  # fmt: skip
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


def test_reference_logps_as_a_chosen_rejected_pair():
    """TRL precomputes ref_chosen_logps and ref_rejected_logps apart: the tuple equals their
    concatenation (chosen first)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    w = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 9, (4, 5), generator=g)
    ref = torch.randn(4, generator=g, dtype=torch.float64) - 10
    joined = LF.linear_dpo_loss(h, w, y, reference_logps=ref)
    pair = LF.linear_dpo_loss(h, w, y, reference_logps=(ref[:2], ref[2:]))
    assert torch.equal(joined, pair)
    with pytest.raises(LossValueError, match="reference_logps"):
        LF.linear_dpo_loss(h, w, y, reference_logps=(ref[:2], ref[2:], ref))
    with pytest.raises(LossValueError, match="reference_logps"):
        LF.linear_dpo_loss(h, w, y, reference_logps=(ref[:2], ref[1:]))
