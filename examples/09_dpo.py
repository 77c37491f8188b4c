"""DPO as TRL's ``DPOTrainer`` runs it, on losskit's fused ``linear_dpo_loss``, against the
same loss written out in plain torch.

    pip install 'losskit[transformers]'
    python examples/09_dpo.py

Everything is built here, nothing is downloaded: a two-layer Llama from a config with random
weights and synthetic preference pairs of token ids (a prompt; the chosen answer counts on from
the prompt's last token, the rejected one is random). As TRL batches them, a batch of ``B``
pairs is ``2B`` sequences, the chosen answers first, then the rejected ones, each its prompt
then its answer, right-padded; the labels are the tokens, -100 on the prompt and the padding,
shifted by one for next-token prediction. The reference model is a frozen copy of the initial
policy; its sequence log-probabilities are computed once before training (TRL's
``precompute_ref_log_probs``) with ``losskit.functional.sequence_logprobs``.

The same initial weights, batches and optimizer are trained twice: "plain" forms the logits
(``model(...).logits``) and computes TRL's sigmoid DPO loss from their ``log_softmax``;
"fused" runs the decoder only (``model.model``) and hands its hidden states and the head's
weight to ``linear_dpo_loss``, which never forms the batch's logits. The per-step losses and
TRL's metrics are printed side by side. It takes a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F

try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError:
    sys.exit("this example needs transformers: pip install 'losskit[transformers]'")

import losskit.functional as LF

VOCAB, PAIRS, BATCH, EPOCHS = 1000, 8, 4, 5  # vocabulary, pairs in the data, pairs per step
PROMPT, ANSWER = (3, 8), (2, 8)  # lengths (inclusive ranges) of the prompts and the answers
LENGTH = PROMPT[1] + ANSWER[1]  # every sequence is padded to this many tokens
BETA, LR, PAD = 0.1, 1e-3, 0
STEPS = EPOCHS * PAIRS // BATCH
MIB = float(1 << 20)
#: The two forms compute the same float32 numbers in a different order: the losses agree to
#: rounding (here at most ~2e-7, a few ulps of a loss of ~0.7), and the few AdamW steps keep
#: it there. Anything real is far above the tolerance: the learning rate off by 1% moves the
#: curve by ~2e-3, the decoder's gradient missing by ~0.2.
TOLERANCE = 1e-5


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A two-layer Llama with random weights (``seed``), untied head, no dropout."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=PAD,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def preference_data(seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """``PAIRS`` (prompt, chosen, rejected) triples of token ids (never the padding id)."""
    gen = torch.Generator().manual_seed(seed)

    def length(bounds: tuple[int, int]) -> int:
        return int(torch.randint(bounds[0], bounds[1] + 1, (), generator=gen))

    def tokens(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=gen).tolist()

    data = []
    for _ in range(PAIRS):
        prompt = tokens(length(PROMPT))
        chosen = [1 + (prompt[-1] + k) % (VOCAB - 1) for k in range(1, length(ANSWER) + 1)]
        data.append((prompt, chosen, tokens(length(ANSWER))))
    return data


def collate(pairs: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """TRL's concatenated batch: ``2B`` sequences (the chosen answers, then the rejected ones),
    prompt + answer, right-padded; labels -100 on the prompt and the padding (not shifted)."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    ids = torch.full((len(rows), LENGTH), PAD)
    labels = torch.full((len(rows), LENGTH), -100)
    attention = torch.zeros((len(rows), LENGTH), dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        n, m = len(prompt), len(prompt) + len(answer)
        ids[i, :m] = torch.tensor(prompt + answer)
        labels[i, n:m] = torch.tensor(answer)
        attention[i, :m] = 1
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def batches(data: list) -> list[dict[str, torch.Tensor]]:
    """``STEPS`` batches: ``EPOCHS`` passes over ``data`` in order, ``BATCH`` pairs each."""
    per_epoch = [collate(data[i : i + BATCH]) for i in range(0, len(data), BATCH)]
    return per_epoch * EPOCHS


@torch.no_grad()
def reference_logps(reference: LlamaForCausalLM, batch: dict) -> torch.Tensor:
    """The frozen reference's sequence log-probabilities ``(2B,)``, from its last hidden states
    and head (its logits are never formed either)."""
    hidden = reference.model(batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = hidden.last_hidden_state
    return LF.sequence_logprobs(hidden[:, :-1], reference.lm_head.weight, batch["labels"][:, 1:])


def plain_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRL's ``concatenated_forward``: shift, log-softmax, gather, masked sum per sequence."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    counted = labels != -100
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, logp, 0.0).sum(-1)


def plain_dpo(logps: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """TRL's ``dpo_loss`` (``loss_type='sigmoid'``, no label smoothing) and reward metrics."""
    half = logps.shape[0] // 2
    chosen = logps[:half] - ref[:half]
    rejected = logps[half:] - ref[half:]
    loss = -F.logsigmoid(BETA * (chosen - rejected)).mean()
    chosen_rewards, rejected_rewards = BETA * chosen.detach(), BETA * rejected.detach()
    metrics = {
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
    }
    return loss, metrics


def train(form: str, model: LlamaForCausalLM, data: list, refs: list) -> tuple[list, list, tuple]:
    """DPO steps of ``model`` with ``form`` ``"plain"`` or ``"fused"``: per step the loss and
    TRL's metrics; and the shape of the largest logits tensor the loss held."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    losses, metrics, logits_shape = [], [], ()
    for batch, ref in zip(data, refs, strict=True):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if form == "plain":
            logits = model(**inputs).logits
            logits_shape = tuple(logits.shape)
            loss, m = plain_dpo(plain_sequence_logps(logits, batch["labels"]), ref)
        else:
            hidden = model.model(**inputs).last_hidden_state  # the decoder only: no logits
            positions = hidden.shape[1] - 1
            loss, m = LF.linear_dpo_loss(
                hidden[:, :-1], model.lm_head.weight, batch["labels"][:, 1:],
                reference_logps=ref, beta=BETA, return_metrics=True,
                chunk_size=2 * positions,  # rows per chunk: one pair (its 2 sequences)
            )  # fmt: skip
            logits_shape = (2 * positions, VOCAB)  # the one chunk of logits held at a time
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        metrics.append({k: float(m[k]) for k in ("rewards/accuracies", "rewards/margins")})
    return losses, metrics, logits_shape


def main() -> None:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    data = batches(preference_data())
    initial = tiny_llama()
    reference = copy.deepcopy(initial).eval().requires_grad_(False)
    refs = [reference_logps(reference, batch) for batch in data]  # once, before training
    with torch.no_grad():  # the same log-probabilities from the reference's full logits
        plain_refs = [
            plain_sequence_logps(reference(b["input_ids"], b["attention_mask"]).logits, b["labels"])
            for b in data
        ]
    ref_difference = max(float((a - b).abs().max()) for a, b in zip(refs, plain_refs, strict=True))
    print(
        f"data: {PAIRS} preference pairs, {BATCH} per step ({2 * BATCH} sequences of {LENGTH} "
        f"tokens), {EPOCHS} epochs\nmodel: 2-layer Llama, hidden 64, vocabulary {VOCAB}; "
        f"beta {BETA}, AdamW lr {LR}, float32"
    )
    print(
        "reference: a frozen copy of the initial policy, its sequence log-probs precomputed\n"
        f"  with sequence_logprobs (vs plain log_softmax: max |difference| {ref_difference:.1e})"
    )

    plain, plain_metrics, plain_shape = train("plain", copy.deepcopy(initial), data, refs)
    fused, fused_metrics, fused_shape = train("fused", copy.deepcopy(initial), data, refs)

    print(
        "\nrewards/accuracies and rewards/margins: TRL's metrics, of the fused form"
        " (return_metrics=True)"
    )
    print(
        f"{'step':>4}  {'plain loss':>10}  {'fused loss':>10}  {'|difference|':>12}  "
        f"{'accuracies':>10}  {'margins':>8}"
    )
    for i, (a, b, m) in enumerate(zip(plain, fused, fused_metrics, strict=True)):
        acc, margin = m["rewards/accuracies"], m["rewards/margins"]
        print(
            f"{i + 1:>4}  {a:>10.6f}  {b:>10.6f}  {abs(a - b):>12.2e}  {acc:>10.2f}  {margin:>8.4f}"
        )
    worst = max(abs(a - b) for a, b in zip(plain, fused, strict=True))
    worst_margin = max(
        abs(p["rewards/margins"] - f["rewards/margins"])
        for p, f in zip(plain_metrics, fused_metrics, strict=True)
    )
    print(f"max |difference| over {STEPS} steps: {worst:.2e} (rewards/margins: {worst_margin:.2e})")
    b, t, v = plain_shape
    print(
        f"plain form holds logits of shape {plain_shape} = (2B, T, V), {b * t * v * 4 / MIB:.2f} "
        f"MiB,\n  and log_softmax's output of shape {(b, t - 1, v)}"
    )
    print(
        f"fused form holds neither: one pair's chunk of logits at a time, {fused_shape} = "
        f"(2 (T - 1), V),\n  {fused_shape[0] * v * 4 / MIB:.2f} MiB"
    )

    assert ref_difference < 1e-4, ref_difference
    assert worst < TOLERANCE and worst_margin < TOLERANCE, (plain, fused)
    assert [p["rewards/accuracies"] for p in plain_metrics] == [
        f["rewards/accuracies"] for f in fused_metrics
    ]
    assert fused[-1] < fused[0] - 0.1, fused  # the loss moved: DPO learned the preference
    print(f"OK: fused DPO == plain DPO (|difference| < {TOLERANCE:g} at every step)")


if __name__ == "__main__":
    main()
