"""losskit.integrations.transformers: a patched causal LM against the same model unpatched.

Hugging Face's own forward is the oracle. Every model is a tiny one built from a config with
random weights (nothing is downloaded), its head scaled up so that the logits span several units
and the config's logit transforms (Gemma's softcap, Cohere's scale, Granite's divisor) change
the loss. Patched and unpatched runs see the same weights and batch; the loss and every
parameter's gradient must agree to float32 rounding at the tensor's scale (:data:`RTOL`), which
holds whatever SIMD width torch's CPU kernels pick (``ATEN_CPU_CAPABILITY``).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from losskit import LossTypeError, LossValueError  # noqa: E402
from losskit.integrations import transformers as LT  # noqa: E402

VOCAB = 1000
#: float32 rounding of a loss or gradient, relative to the largest entry of the tensor
RTOL = 1e-5
#: what every family's config shares: two layers, hidden 32, four heads (two KV heads)
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
#: GPT-2's dropout defaults to 0.1 (the others' to 0); training runs must not draw it
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
#: family -> (model class, config class, config overrides, what the family exercises)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}, ()),
    "mistral": ("MistralForCausalLM", "MistralConfig", {}, ()),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {}, ()),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 8}, ()),
    "gemma2": (
        "Gemma2ForCausalLM",
        "Gemma2Config",
        {"head_dim": 8, "final_logit_softcapping": 3.0},
        ("tied", "softcap"),
    ),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {}, ()),
    "phi": ("PhiForCausalLM", "PhiConfig", {}, ("bias",)),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, **NO_DROPOUT},
        ("tied",),
    ),
    "cohere": ("CohereForCausalLM", "CohereConfig", {"logit_scale": 0.5}, ("tied", "scale")),
    "granite": ("GraniteForCausalLM", "GraniteConfig", {"logits_scaling": 4.0}, ("scale",)),
}


def build(
    family: str = "llama", cls: type | None = None, seed: int = 0, **overrides
) -> torch.nn.Module:
    """A tiny model of ``family`` (or of ``cls``, a subclass) with weights drawn from ``seed``,
    in train mode.

    The head is scaled so that the logits have a spread of about 3 (at initialization they are
    ~0.1 apart, where a softcap or a scale hardly shows), and a head bias is drawn at random.
    """
    model_name, config_name, extra, _ = FAMILIES[family]
    kwargs = {**SMALL, **extra, **overrides}
    if family == "gpt2":
        kwargs = {k: v for k, v in kwargs.items() if k not in SMALL or k == "vocab_size"}
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = (cls or getattr(transformers, model_name))(config)
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(30.0)
        if head.bias is not None:
            head.bias.normal_()
    return model.train()


def batch(n: int = 2, length: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}


def loss_and_grads(model: torch.nn.Module, **inputs) -> tuple[object, dict[str, torch.Tensor]]:
    """The output of ``model(**inputs)`` and every parameter's gradient of its loss."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol=RTOL) -> None:
    """Equal within ``rtol`` of the expected tensor's largest entry (float32 rounding there)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(expected.detach().abs().max()), 1e-30)
    diff = float((actual.detach().float() - expected.detach().float()).abs().max())
    assert diff <= rtol * scale, f"{what}: {diff:.3g} apart, {diff / scale:.3g} of its scale"


def assert_same_training(ours: tuple, theirs: tuple, rtol: float = RTOL) -> None:
    """Same loss and the same gradient for every parameter that has one."""
    (out, grads), (ref, ref_grads) = ours, theirs
    assert_close(out.loss, ref.loss, "loss", rtol)
    assert grads.keys() == ref_grads.keys(), set(grads) ^ set(ref_grads)
    for name, g in ref_grads.items():
        assert_close(grads[name], g, f"gradient of {name}", rtol)


# --------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_its_own_loss(family):
    model = build(family)
    inputs = batch()
    features = FAMILIES[family][3]
    head = model.get_output_embeddings()
    assert ("tied" in features) == (head.weight is model.get_input_embeddings().weight)
    assert ("bias" in features) == (head.bias is not None)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"]).logits
    theirs = loss_and_grads(model, **inputs)
    assert theirs[0].logits is not None

    assert LT.patch(model) is model
    ours = loss_and_grads(model, **inputs)
    assert ours[0].logits is None
    assert_same_training(ours, theirs)
    with torch.no_grad():  # without labels: the model's own forward, to the bit
        assert torch.equal(model(input_ids=inputs["input_ids"]).logits, logits)

    LT.unpatch(model)
    assert "forward" not in vars(model)
    again = loss_and_grads(model, **inputs)
    assert torch.equal(again[0].logits, theirs[0].logits)
    assert torch.equal(again[0].loss, theirs[0].loss)


@pytest.mark.parametrize(
    "family, recipe",
    [
        ("gemma2", LT.LogitsRecipe(1.0, 3.0)),
        ("cohere", LT.LogitsRecipe(0.5, None)),
        ("granite", LT.LogitsRecipe(0.25, None)),
        ("llama", LT.LogitsRecipe(1.0, None)),
    ],
)
def test_config_transform_is_read_and_matters(family, recipe):
    """The recipe read from the config is the one the forward applies, and it changes the loss:
    the family test above would fail if the patch left it out."""
    model = build(family).eval()
    assert LT.LogitsRecipe.from_config(model.config) == recipe
    inputs = batch()
    with torch.no_grad():
        ref = model(**inputs)
        hidden = model.base_model(input_ids=inputs["input_ids"]).last_hidden_state
        head = model.get_output_embeddings()
        assert_close(recipe.logits(hidden, head), ref.logits, "the recipe's logits")
        plain = LT.LogitsRecipe().logits(hidden, head)
        plain_loss = LT.causal_lm_loss(plain, inputs["labels"], VOCAB)
    if recipe != LT.LogitsRecipe():
        assert abs(float(plain_loss) - float(ref.loss)) > 0.05, (float(plain_loss), ref.loss)


@pytest.mark.parametrize("impl", ["auto", "fused", "reference"])
def test_every_impl_matches(impl):
    model = build("gemma2")
    inputs = batch()
    theirs = loss_and_grads(model, **inputs)
    LT.patch(model, impl=impl)
    assert_same_training(loss_and_grads(model, **inputs), theirs)


# --------------------------------------------------------------------------------------------
# Hugging Face's normalization
# --------------------------------------------------------------------------------------------


def padded_batch() -> dict[str, torch.Tensor]:
    """Rows of 24 tokens, right-padded to different lengths: -100 labels, attention mask 0."""
    inputs = batch(3, 24)
    lengths = torch.tensor([24, 17, 9])
    pad = torch.arange(24)[None] >= lengths[:, None]
    inputs["input_ids"] = inputs["input_ids"].masked_fill(pad, 0)
    inputs["labels"] = inputs["labels"].masked_fill(pad, -100)
    inputs["attention_mask"] = (~pad).long()
    return inputs


CALLS = {
    "padding and attention mask": lambda: padded_batch(),
    "shift_labels": lambda: {
        **batch(),
        "shift_labels": batch(seed=7)["labels"].index_fill(1, torch.tensor([3, 15]), -100),
    },
    "num_items_in_batch tensor": lambda: {**padded_batch(), "num_items_in_batch": torch.tensor(50)},
    "num_items_in_batch int": lambda: {**padded_batch(), "num_items_in_batch": 50},
    "logits_to_keep=0": lambda: {**batch(), "logits_to_keep": 0},
    "position_ids": lambda: {**batch(), "position_ids": torch.arange(16).flip(0)[None]},
}


@pytest.mark.parametrize("call", CALLS)
def test_normalization_matches_hugging_face(call):
    model = build("llama")
    inputs = CALLS[call]()
    theirs = loss_and_grads(model, **inputs)
    LT.patch(model)
    assert_same_training(loss_and_grads(model, **inputs), theirs)


def test_shift_labels_are_the_labels_they_shift_from():
    """``shift_labels=T`` (whatever ``labels``) is ``labels=L`` for the ``L`` whose left shift
    is ``T``: ``L = [-100, T[:-1]]``, where ``T``'s last target is -100."""
    model = LT.patch(build("llama").eval())
    inputs = batch()
    targets = batch(seed=7)["labels"]
    targets[:, -1] = -100
    labels = torch.cat([torch.full((2, 1), -100), targets[:, :-1]], 1)
    given = model(**inputs, shift_labels=targets).loss
    assert_close(given, model(input_ids=inputs["input_ids"], labels=labels).loss, "loss")
    assert abs(float(given) - float(model(**inputs).loss)) > 0.1  # the labels themselves unused


def test_num_items_in_batch_is_the_sum_over_it():
    """``num_items_in_batch=N`` is the summed loss over N: the mean when N counts the tokens."""
    model = build("llama").eval()
    inputs = padded_batch()
    counted = int((inputs["labels"][:, 1:] != -100).sum())
    LT.patch(model)
    mean = model(**inputs).loss
    assert_close(model(**inputs, num_items_in_batch=counted).loss, mean, "loss")
    assert_close(model(**inputs, num_items_in_batch=2 * counted).loss, mean / 2, "loss")


def test_return_dict_false_gives_a_tuple_starting_with_the_loss():
    model = build("llama").eval()
    inputs = batch()
    ref = model(**inputs, return_dict=False)
    LT.patch(model)
    out = model(**inputs, return_dict=False)
    assert isinstance(out, tuple)
    assert_close(out[0], ref[0], "loss")
    # Hugging Face's tuple less its logits (to_tuple leaves out what is None)
    assert [type(t) for t in out] == [type(ref[0])] + [type(t) for t in ref[2:]]


def test_forward_signature_is_kept():
    """The Trainer reads the forward's signature to decide whether to pass num_items_in_batch."""
    model = build("llama")
    before = inspect.signature(model.forward)
    LT.patch(model)
    assert inspect.signature(model.forward) == before
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in before.parameters.values())


# --------------------------------------------------------------------------------------------
# Trainer with gradient accumulation
# --------------------------------------------------------------------------------------------


def train(model, tmp_path, name):
    """Three optimizer steps of two micro-batches of two rows, padded to different lengths."""
    gen = torch.Generator().manual_seed(3)
    rows = []
    for i in range(12):
        ids = torch.randint(3, VOCAB, (16,), generator=gen)
        labels = ids.clone()
        labels[16 - 2 * (i % 6) :] = -100  # from 0 to 10 padded positions: uneven micro-batches
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long()})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert trainer.model_accepts_loss_kwargs
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trainer_with_gradient_accumulation(tmp_path, monkeypatch):
    model = build("llama")
    twin = copy.deepcopy(model)
    theirs, their_weights = train(model, tmp_path, "unpatched")

    seen = []
    lce = LT.linear_cross_entropy

    def spy(*args, **kwargs):
        seen.append((kwargs["normalizer"], int((args[2] != -100).sum())))
        return lce(*args, **kwargs)

    monkeypatch.setattr(LT, "linear_cross_entropy", spy)
    LT.patch(twin)
    seen.clear()  # the probe's call
    ours, our_weights = train(twin, tmp_path, "patched")
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=0)
    for name, w in their_weights.items():
        assert_close(our_weights[name], w, name)
    # every micro-batch's loss was divided by the Trainer's token count of its whole step: the
    # counted targets of both micro-batches (transformers 5.0's Trainer counts the labels before
    # the shift, one more per sequence: 4 here; the patched model takes whatever it is given)
    assert len(seen) == 6
    for (n1, c1), (n2, c2) in zip(seen[::2], seen[1::2], strict=True):
        assert int(n1) == int(n2) and c1 != c2, seen
        assert c1 + c2 <= int(n1) <= c1 + c2 + 4, seen


# --------------------------------------------------------------------------------------------
# PEFT
# --------------------------------------------------------------------------------------------


def lora(model, targets):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False
    )
    return peft.get_peft_model(model, config)


def test_lora_model_matches():
    model = lora(build("llama"), ["q_proj", "v_proj"])
    assert not model.get_output_embeddings().weight.requires_grad  # the head is frozen
    inputs = padded_batch()
    theirs = loss_and_grads(model, **inputs)
    assert len(theirs[1]) == 8 and all(".lora_" in name for name in theirs[1])  # A, B of 2x2
    assert LT.patch(model) is model
    ours = loss_and_grads(model, **inputs)
    assert ours[0].logits is None
    assert_same_training(ours, theirs)
    LT.unpatch(model)
    assert loss_and_grads(model, **inputs)[0].logits is not None


def test_lora_on_the_head_is_refused():
    model = lora(build("llama"), ["q_proj", "v_proj", "lm_head"])
    with pytest.raises(LossValueError, match="cannot patch LlamaForCausalLM: its output emb"):
        LT.patch(model)
    assert "forward" not in vars(model.get_base_model())


# --------------------------------------------------------------------------------------------
# gradient checkpointing, autocast
# --------------------------------------------------------------------------------------------


def test_gradient_checkpointing_matches():
    model = build("llama")
    if hasattr(model, "activation_checkpointing_enable"):  # its newer name
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
    else:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    assert model.training
    calls = []

    def counted(inner):
        def checkpoint(*args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        return checkpoint

    for layer in model.model.layers:  # count the checkpointed layer calls
        layer._gradient_checkpointing_func = counted(layer._gradient_checkpointing_func)
    inputs = batch()
    theirs = loss_and_grads(model, **inputs)
    assert len(calls) == 2
    LT.patch(model)
    calls.clear()
    assert_same_training(loss_and_grads(model, **inputs), theirs)
    assert len(calls) == 2


def test_bfloat16_autocast_with_float32_weights():
    model = build("llama")
    inputs = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = loss_and_grads(model, **inputs)
        LT.patch(model)
        ours = loss_and_grads(model, **inputs)
    assert ours[0].logits is None and ours[0].loss.dtype == torch.float32
    assert ours[1].keys() == theirs[1].keys()
    assert_close(ours[0].loss, theirs[0].loss, "loss", rtol=2e-2)
    for name, p in model.named_parameters():
        g = ours[1][name]
        assert g.dtype == p.dtype == torch.float32 and bool(g.any()), name
    assert_close(ours[1]["lm_head.weight"], theirs[1]["lm_head.weight"], "head", rtol=5e-2)


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


class DoubledLlama(transformers.LlamaForCausalLM):
    """A forward that edits the logits after the model's own forward (its loss unchanged)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


class PassThroughLlama(transformers.LlamaForCausalLM):
    """A forward that takes everything as ``*args, **kwargs`` and changes nothing."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)


def test_a_pass_through_subclass_is_patched():
    """Its labels come in through ``**kwargs``: the patch must still see them."""
    model = build(cls=PassThroughLlama)
    inputs = padded_batch()
    theirs = loss_and_grads(model, **inputs)
    LT.patch(model)
    ours = loss_and_grads(model, **inputs)
    assert ours[0].logits is None
    assert_same_training(ours, theirs)
    with torch.no_grad():  # positional inputs without labels: the model's own forward
        assert model(inputs["input_ids"]).logits is not None
    with pytest.raises(LossValueError, match=r"takes as \*args, .* pass them by keyword"):
        model(inputs["input_ids"], labels=inputs["labels"])


class ScaledLossLlama(transformers.LlamaForCausalLM):
    """A forward that scales the loss (an auxiliary term's stand-in), the logits unchanged."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if out.loss is not None:
            out.loss = out.loss * 1.5
        return out


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: build(cls=DoubledLlama), "cannot patch DoubledLlama: its forward computes"),
        (lambda: build(cls=ScaledLossLlama), "cannot patch ScaledLossLlama: its forward comp"),
        (
            lambda: build(final_logit_softcapping=3.0),
            r"cannot patch LlamaForCausalLM: .*softcap 3\.0",
        ),
        (lambda: build(logit_scale=2.0), r"cannot patch LlamaForCausalLM: .*scale 2,"),
    ],
)
def test_a_forward_the_config_does_not_describe_is_refused(make, pattern):
    model = make()
    with pytest.raises(LossValueError, match=pattern):
        LT.patch(model)
    assert "forward" not in vars(model) and model.training  # untouched, mode restored


def test_router_logits_are_refused():
    config = transformers.MixtralConfig(
        **SMALL, num_local_experts=2, num_experts_per_tok=1, output_router_logits=True
    )
    with pytest.raises(LossValueError, match="cannot patch MixtralForCausalLM: with output_r"):
        LT.patch(transformers.MixtralForCausalLM(config))


def test_router_logits_asked_for_in_the_call_are_refused():
    config = transformers.MixtralConfig(**SMALL, num_local_experts=2, num_experts_per_tok=1)
    model = LT.patch(transformers.MixtralForCausalLM(config))
    assert model(**batch()).logits is None  # the config asks for no router loss: patched
    with pytest.raises(LossValueError, match="patched MixtralForCausalLM cannot take output_r"):
        model(**batch(), output_router_logits=True)


def test_a_model_without_a_separate_decoder_is_refused():
    with pytest.raises(LossValueError, match="cannot patch LlamaModel: it has no separate"):
        LT.patch(transformers.LlamaModel(transformers.LlamaConfig(**SMALL)))


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: LT.patch(torch.nn.Linear(4, 4)), "model must be a transformers Pre.*, got Linear"),
        (lambda: LT.patch("model"), "model must be a transformers PreTrainedModel .*, got str"),
        (lambda: LT.verify(torch.nn.Linear(4, 4)), "model must be a transformers PreTrained"),
        (lambda: LT.patch_class(torch.nn.Linear), "cls must be a PreTrainedModel class, got"),
        (lambda: LT.patch_class(build("llama")), "cls must be a PreTrainedModel class, got"),
    ],
)
def test_not_a_pretrained_model_is_a_type_error(call, pattern):
    with pytest.raises(LossTypeError, match=pattern):
        call()


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"z_los": 1e-4}, "'z_los' is not a loss option"),
        ({"reduction": "sum"}, "'reduction' is not a loss option"),
        ({"softcap": 3.0}, "'softcap' is not a loss option"),
        ({"impl": "triton"}, "impl"),
    ],
)
def test_bad_options_are_value_errors(options, pattern):
    model = build("llama")
    with pytest.raises(ValueError, match=pattern):
        LT.patch(model, **options)
    with pytest.raises(ValueError, match=pattern):
        LT.patch_class(transformers.LlamaForCausalLM, **options)
    assert "forward" not in vars(model)
    assert not hasattr(transformers.LlamaForCausalLM.forward, "__losskit_original__")


def test_keep_logits_takes_no_loss_options():
    with pytest.raises(ValueError, match=r"keep_logits=True .* no loss options, got \['z_loss'\]"):
        LT.patch(build("llama"), keep_logits=True, z_loss=1e-4)


def test_loss_options_reach_the_loss():
    model = build("llama")
    inputs = batch()
    LT.patch(model, z_loss=1e-2, chunk_size=5)
    ours = model(**inputs).loss
    LT.patch(model)
    plain = model(**inputs).loss
    assert float(ours.detach()) > float(plain.detach()) + 1e-3


# --------------------------------------------------------------------------------------------
# patch_class, keep_logits, train_only, patched(), verify()
# --------------------------------------------------------------------------------------------


class TinyLlama(transformers.LlamaForCausalLM):
    """A class of its own, so that patching it touches no other test's models."""


class TinyGemma(transformers.Gemma2ForCausalLM):
    """The same for Gemma 2, whose recipe has a softcap."""


@pytest.mark.parametrize("family, cls", [("llama", TinyLlama), ("gemma2", TinyGemma)])
def test_patch_class_patches_later_instances(family, cls):
    inputs = batch()
    theirs = loss_and_grads(build(family, cls=cls), **inputs)
    try:
        assert LT.patch_class(cls) is cls
        model = build(family, cls=cls)
        ours = loss_and_grads(model, **inputs)
        assert ours[0].logits is None
        assert_same_training(ours, theirs)
        assert "forward" not in vars(model)  # the class's forward, not the instance's
        assert inspect.signature(cls.forward) == inspect.signature(cls.__mro__[1].forward)
    finally:
        LT.unpatch(cls)
    assert "forward" not in vars(cls)  # inherited again
    assert loss_and_grads(build(family, cls=cls), **inputs)[0].logits is not None


def test_patch_class_refuses_a_wrong_instance_on_its_first_call():
    try:
        LT.patch_class(DoubledLlama)
        model = build(cls=DoubledLlama)
        with torch.no_grad():
            assert model(input_ids=batch()["input_ids"]).logits is not None  # no labels: fine
        with pytest.raises(LossValueError, match="cannot patch DoubledLlama"):
            model(**batch())
    finally:
        LT.unpatch(DoubledLlama)


def test_patch_on_an_instance_of_a_patched_class():
    """The instance's patch wraps the class's own forward; unpatched, the class's patch (here
    with a z-loss, to tell them apart) applies again."""
    inputs = batch()
    theirs = loss_and_grads(build(cls=TinyLlama), **inputs)
    try:
        LT.patch_class(TinyLlama, z_loss=1e-2)
        model = LT.patch(build(cls=TinyLlama))
        assert_same_training(loss_and_grads(model, **inputs), theirs)
        LT.unpatch(model)
        out = model(**inputs)
        assert out.logits is None and float(out.loss.detach()) > float(theirs[0].loss) + 1e-3
    finally:
        LT.unpatch(TinyLlama)


def test_keep_logits_keeps_the_forward_and_puts_only_the_loss_on_losskit():
    model = build("gemma2")
    inputs = padded_batch()
    theirs = loss_and_grads(model, **inputs)
    LT.patch(model, keep_logits=True)
    assert "forward" not in vars(model)
    ours = loss_and_grads(model, **inputs)
    assert torch.equal(ours[0].logits, theirs[0].logits)
    assert_same_training(ours, theirs)
    LT.unpatch(model)
    assert "_loss_function" not in vars(model)


def test_keep_logits_after_a_fused_patch_replaces_it():
    model = build("llama")
    LT.patch(model)
    LT.patch(model, keep_logits=True)
    assert model(**batch()).logits is not None


def test_train_only_runs_the_model_own_forward_in_eval():
    model = build("llama")
    inputs = batch()
    LT.patch(model, train_only=True)
    assert model(**inputs).logits is None
    model.eval()
    out = model(**inputs)
    LT.unpatch(model)
    ref = model(**inputs)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)


def test_patched_context_manager():
    model = build("llama")
    inputs = batch()
    with LT.patched(model, impl="reference") as same:
        assert same is model and model(**inputs).logits is None
    assert "forward" not in vars(model) and model(**inputs).logits is not None
    with pytest.raises(RuntimeError, match="inside"), LT.patched(model):
        raise RuntimeError("inside")
    assert "forward" not in vars(model)


def test_verify_reports_ok_and_leaves_the_model_as_it_was():
    model = build("cohere")
    report = LT.verify(model)
    assert report.ok, str(report)
    assert report.model == "CohereForCausalLM"
    assert report.loss_diff <= RTOL * abs(report.loss_unpatched)
    text = str(report)
    assert text.startswith("OK: CohereForCausalLM: loss ") and "tolerance 0.0001" in text
    assert model.training and "forward" not in vars(model)
    assert all(p.grad is None for p in model.parameters())

    LT.patch(model, train_only=True)
    assert LT.verify(model).ok
    state = vars(model)[LT._STATE]
    assert state.train_only and "forward" in vars(model)


def test_verify_reports_a_mismatch():
    """A z-loss is not Hugging Face's loss: verify shows the difference it makes."""
    bad = LT.verify(build("llama"), z_loss=1e-2)
    assert not bad.ok and bad.loss_patched > bad.loss_unpatched + 1e-3
    assert str(bad).startswith("MISMATCH: LlamaForCausalLM")


def test_verify_keeps_a_keep_logits_patch():
    model = LT.patch(build("llama"), keep_logits=True)
    assert LT.verify(model).ok
    assert vars(model)["_loss_function"].func is LT.causal_lm_loss


def test_verify_on_an_instance_of_a_patched_class_compares_with_the_class_own_forward():
    """Unpatched means Hugging Face's forward, not the class's patch (a z-loss here, which
    would show as a mismatch)."""
    inputs = batch()
    try:
        LT.patch_class(TinyLlama, z_loss=1e-2)
        model = build(cls=TinyLlama)
        patched_loss = model(**inputs).loss  # the first call proves the instance's recipe
        report = LT.verify(model)
        assert report.ok, str(report)
        assert "forward" not in vars(model)
        assert torch.equal(model(**inputs).loss, patched_loss)  # the class's patch still
    finally:
        LT.unpatch(TinyLlama)


# --------------------------------------------------------------------------------------------
# memory: the logits are never held
# --------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, time, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from losskit.bench import _common as C
    from losskit.integrations.transformers import patch, unpatch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024)
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(0, 8000, (1, 1024))
    seconds = []
    def step():
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        seconds.append(time.perf_counter() - start)
    prepare = lambda: model.zero_grad(set_to_none=True)
    out = {}
    budgets = {"patched": "default", "patched, 4 MiB budget": 4 << 20}
    for name in ("patched", "patched, 4 MiB budget", "unpatched"):
        patch(model, memory_budget=budgets[name]) if name in budgets else unpatch(model)
        extra = C.peak_extra_bytes(C.Case(name, step, prepare), "cpu")
        out[name] = {"extra": extra, "step_s": seconds[-1]}  # the measured step, not the warm-up
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM")
def test_peak_memory_of_a_training_step_is_lower_patched():
    """One training step at 1024 tokens and a vocabulary of 8000, where the float32 logits
    (31 MiB) are the largest tensor: its peak resident memory above the size before it
    (``losskit.bench``'s ``peak_extra_bytes``, after a warm-up step), in a fresh process.

    Unpatched, the step holds the logits, their log-softmax and their gradient. Patched, the
    fused loss holds one chunk of logits at a time, which the CPU's default 64 MiB budget lets
    be all of them here (overwritten in place by their gradient), and a 4 MiB budget a few
    rows. The allocator's mmap threshold is fixed so that freed blocks go back to the system
    and no case reuses another's pages unseen.
    """
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src, MALLOC_MMAP_THRESHOLD_="65536")
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    extra = {name: f["extra"] for name, f in figures.items()}
    assert None not in extra.values(), figures
    logits = 1024 * 8000 * 4
    assert extra["unpatched"] >= 2.5 * logits, figures  # it sees the logits where they exist
    assert extra["patched"] <= extra["unpatched"] - 1.5 * logits, figures
    assert extra["patched, 4 MiB budget"] <= 0.5 * logits, figures
