"""Hugging Face ``transformers``: a causal LM's training loss on losskit's fused linear
cross-entropy, for any model of the standard shape, in one call.

``patch(model)`` replaces the forward of one model instance (``patch_class(cls)`` of a class):
called with ``labels``, the decoder's last hidden states go straight into
:func:`losskit.functional.linear_cross_entropy` with the output embedding's weight (tied or not)
and bias, so the ``(tokens, vocabulary)`` logits are never built; the output has ``loss`` and
``logits=None``. Without labels the model runs its own forward, unchanged.

Nothing here is written per model family. What a forward does to the head's output is read from
the config (:class:`LogitsRecipe`: Gemma's ``final_logit_softcapping``, Cohere's
``logit_scale``, Granite's ``logits_scaling``), and :func:`patch` then *proves* the reading on a
probe batch: the unpatched forward's logits and loss must equal what the patched path computes
from the same hidden states. A model whose forward does something else (another transform of the
logits, an auxiliary loss, a custom ``loss_function``, a LoRA adapter on the head) is refused
with an error naming its class, never patched wrong.

The loss is Hugging Face's ``ForCausalLMLoss``, exactly: labels shifted left with
``ignore_index=-100`` appended (or ``shift_labels`` as given), the mean over the counted tokens,
or the sum divided by ``num_items_in_batch`` when the ``Trainer`` passes it (its
gradient-accumulation fix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import modeling_outputs as hf_outputs

from .. import _validate as V
from ..functional import cross_entropy, linear_cross_entropy

__all__ = [
    "LogitsRecipe",
    "VerifyReport",
    "causal_lm_loss",
    "patch",
    "patch_class",
    "patched",
    "unpatch",
    "verify",
]

IGNORE_INDEX = -100
#: keyword arguments a causal LM's forward hands its loss function, not its decoder
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")
_STATE = "_losskit_patch"


# --------------------------------------------------------------------------------------------
# what the forward does to the head's output
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogitsRecipe:
    """``logits = softcap * tanh(scale * (h W^T + b) / softcap)`` (no tanh without a softcap).

    Read from a config by :meth:`from_config`: ``logit_scale`` (Cohere: logits times it),
    ``logits_scaling`` (Granite: logits divided by it), ``final_logit_softcapping`` (Gemma 2/3).
    """

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def from_config(cls, config: Any) -> LogitsRecipe:
        scale = 1.0
        if getattr(config, "logit_scale", None) is not None:
            scale *= float(config.logit_scale)
        if getattr(config, "logits_scaling", None) is not None:
            scale /= float(config.logits_scaling)
        cap = getattr(config, "final_logit_softcapping", None)
        return cls(scale, float(cap) if cap else None)

    def logits(self, hidden: Tensor, head: nn.Linear) -> Tensor:
        """The logits this recipe says the model computes (the probe's side of the proof)."""
        z = nn.functional.linear(hidden, head.weight, head.bias) * self.scale
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


def _shifted(labels: Tensor, shift_labels: Tensor | None, ignore_index: int) -> Tensor:
    """Hugging Face's targets: ``labels`` shifted left with ``ignore_index`` appended."""
    if shift_labels is not None:
        return shift_labels
    return nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _normalizer(num_items_in_batch: object, device: torch.device) -> float | Tensor | None:
    if isinstance(num_items_in_batch, Tensor):
        return num_items_in_batch.to(device)
    return num_items_in_batch  # type: ignore[return-value]


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor,
    vocab_size: int,
    num_items_in_batch: Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: Tensor | None = None,
    *,
    impl: str = "auto",
    **kwargs: Any,
) -> Tensor:
    """Hugging Face's ``ForCausalLMLoss`` on losskit's fused cross-entropy (same arguments and
    numbers); what ``patch(model, keep_logits=True)`` installs as ``model.loss_function``.

    Other keyword arguments the model hands its loss function are ignored, as Hugging Face's
    loss ignores them.
    """
    y = _shifted(labels, shift_labels, ignore_index).reshape(-1).to(logits.device)
    x = logits.float().reshape(-1, vocab_size)  # as Hugging Face: the loss in float32
    return cross_entropy(
        x, y, ignore_index=ignore_index, impl=impl,
        normalizer=_normalizer(num_items_in_batch, x.device),
    )  # fmt: skip


def _fused_loss(
    hidden: Tensor,
    head: nn.Linear,
    recipe: LogitsRecipe,
    labels: Tensor,
    loss_kwargs: dict,
    options: dict,
) -> Tensor:
    """The causal-LM loss of the last hidden states, the logits never built."""
    ignore_index = loss_kwargs.get("ignore_index", IGNORE_INDEX)
    y = _shifted(labels, loss_kwargs.get("shift_labels"), ignore_index)
    h = hidden.reshape(-1, hidden.shape[-1])
    w, b = head.weight, head.bias
    if w.dtype != h.dtype:  # under autocast the head would run in the hidden states' dtype
        w, b = w.to(h.dtype), (b.to(h.dtype) if b is not None else None)
    if recipe.scale != 1.0:  # scale (h W^T + b) == (scale h) W^T + scale b
        h, b = h * recipe.scale, (b * recipe.scale if b is not None else None)
    loss = linear_cross_entropy(
        h, w, y.reshape(-1).to(h.device), linear_bias=b, ignore_index=ignore_index,
        softcap=recipe.softcap,
        normalizer=_normalizer(loss_kwargs.get("num_items_in_batch"), h.device), **options,
    )  # fmt: skip
    return loss.float()  # Hugging Face's loss is float32 whatever the model's dtype


# --------------------------------------------------------------------------------------------
# the patched forward
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Patch:
    original: Callable  #: the class's own forward (an unbound function)
    options: dict  #: linear_cross_entropy's keyword arguments (impl, z_loss, ...)
    train_only: bool
    recipe: LogitsRecipe | None = None  #: set once the probe has proved it (per instance)


def _resolve(model: nn.Module) -> PreTrainedModel:
    """The causal LM itself: a PEFT wrapper's base model, or the model."""
    if not isinstance(model, PreTrainedModel) and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if not isinstance(model, PreTrainedModel):
        raise V.LossTypeError(
            f"model must be a transformers PreTrainedModel (or a PEFT model wrapping one), got "
            f"{type(model).__name__}"
        )
    return model


def _head(model: PreTrainedModel) -> nn.Linear:
    """The output embedding, which must be a plain ``nn.Linear``."""
    name = type(model).__name__
    if model.base_model is model:
        raise V.LossValueError(
            f"cannot patch {name}: it has no separate decoder (base_model_prefix "
            f"{model.base_model_prefix!r}); losskit patches causal LMs of the shape "
            "decoder + output embedding (XxxForCausalLM)"
        )
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise V.LossValueError(
            f"cannot patch {name}: its output embedding is a {type(head).__name__}, not a plain "
            "nn.Linear (a LoRA adapter on the head?); the fused loss needs the head's weight "
            "itself: leave the head out of the adapter's target_modules, or merge it first"
        )
    return head


@functools.cache
def _signature(function: Callable) -> inspect.Signature:
    """``inspect.signature`` of a class's function, read once: every patched call (every
    generation step too) binds its arguments."""
    return inspect.signature(function)


def _decoder_parameters(decoder: nn.Module) -> Any:
    """The parameters of ``decoder.forward`` (cached for the class's own forward; a forward set
    on the instance, e.g. by a hook, is read each time)."""
    forward = decoder.forward
    function = getattr(forward, "__func__", None)
    if function is not None and function is getattr(type(decoder), "forward", None):
        return _signature(function).parameters  # its first parameter, self, is never passed
    return inspect.signature(forward).parameters


def _split(model: PreTrainedModel, original: Callable, args: tuple, kwargs: dict) -> tuple:
    """The call's arguments: (labels, logits_to_keep, return_dict, loss kwargs, the rest)."""
    signature = _signature(original)
    bound = signature.bind(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))  # self
    extra: dict = {}
    star = ""  # the name of a *args that got positional arguments
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = dict(arguments.pop(name, {}))
        elif param.kind is inspect.Parameter.VAR_POSITIONAL and arguments.pop(name, ()):
            star = name
    # a subclass's forward(self, *args, **kwargs) receives even labels through **kwargs
    labels = arguments.pop("labels", extra.pop("labels", None))
    if star and labels is not None:
        raise V.LossValueError(
            f"the patched {type(model).__name__} got positional arguments that its forward "
            f"takes as *{star}, which cannot be told apart; pass them by keyword"
        )
    keep = arguments.pop("logits_to_keep", extra.pop("logits_to_keep", 0))
    return_dict = arguments.pop("return_dict", extra.pop("return_dict", None))
    loss_kwargs = {k: extra.pop(k) for k in _LOSS_KWARGS if k in extra}
    return labels, keep, return_dict, loss_kwargs, {**arguments, **extra}


def _decoder_kwargs(model: PreTrainedModel, forwarded: dict) -> dict:
    """The call's other arguments that the decoder takes; one it cannot take is refused (read
    only on the fused path: a call that runs the model's own forward hands them on itself)."""
    decoder = _decoder_parameters(model.base_model)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in decoder.values())
    refused = [
        k for k, v in forwarded.items() if k not in decoder and not takes_any and v is not None
    ]
    if refused:
        raise V.LossValueError(
            f"the patched {type(model).__name__} cannot hand {refused} to its decoder "
            f"{type(model.base_model).__name__}, which does not take them"
        )
    return {k: v for k, v in forwarded.items() if k in decoder or takes_any}


def _keep(hidden: Tensor, logits_to_keep: int | Tensor) -> Tensor:
    """The positions whose logits the forward would compute (``logits_to_keep``)."""
    if isinstance(logits_to_keep, int):
        return hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:, :]
    return hidden[:, logits_to_keep, :]


def _output(out: Any, loss: Tensor) -> Any:
    """The causal-LM output of a decoder output, with ``loss`` and ``logits=None``."""
    names = {f.name for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out) else set()
    cls = (
        hf_outputs.CausalLMOutputWithCrossAttentions
        if "cross_attentions" in names
        else hf_outputs.CausalLMOutputWithPast
    )
    values = {
        f.name: getattr(out, f.name, None)
        for f in dataclasses.fields(cls)
        if f.name not in ("loss", "logits") and f.name in names
    }
    return cls(loss=loss, logits=None, **values)


def _patched_call(model: PreTrainedModel, state: _Patch, args: tuple, kwargs: dict) -> Any:
    labels, keep, return_dict, loss_kwargs, forwarded = _split(model, state.original, args, kwargs)
    if labels is None or (state.train_only and not model.training):
        return state.original(model, *args, **kwargs)
    if forwarded.get("output_router_logits"):
        raise V.LossValueError(
            f"the patched {type(model).__name__} cannot take output_router_logits=True: its loss "
            "would add the router's auxiliary loss, which losskit's patched forward does not "
            "compute; unpatch it (or leave the argument out)"
        )
    if state.recipe is None:  # patch_class: prove the recipe on this instance's first call
        state.recipe = _probe(model, state)
    out = model.base_model(**_decoder_kwargs(model, forwarded))
    hidden = _keep(out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state, keep)
    loss = _fused_loss(hidden, _head(model), state.recipe, labels, loss_kwargs, state.options)
    result = _output(out, loss)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)
    return result if return_dict else result.to_tuple()


def _probe(model: PreTrainedModel, state: _Patch) -> LogitsRecipe:
    """Read the recipe from the config and prove it: on 8 tokens, in eval mode, the unpatched
    forward's logits and loss must equal the patched path's from the same hidden states."""
    name = type(model).__name__
    head = _head(model)
    if getattr(model.config, "output_router_logits", False):
        raise V.LossValueError(
            f"cannot patch {name}: with output_router_logits=True its loss adds the router's "
            "auxiliary loss, which losskit's patched forward does not compute"
        )
    recipe = LogitsRecipe.from_config(model.config)
    vocab = head.weight.shape[0]
    ids = (torch.arange(8, device=head.weight.device) * 7 + 1).remainder(vocab)[None]
    training = model.training
    model.eval()
    try:  # outside autocast: the recipe is proved on the weights' own dtype
        with torch.no_grad(), torch.autocast(head.weight.device.type, enabled=False):
            ref = state.original(model, input_ids=ids, labels=ids, return_dict=True)
            out = model.base_model(input_ids=ids)
            hidden = out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state
            logits = recipe.logits(hidden, head)
            loss = _fused_loss(hidden, head, recipe, ids, {}, {"impl": "reference"})
    finally:
        model.train(training)
    tol = 1e-4 if hidden.dtype in (torch.float32, torch.float64) else 3e-2
    ref_logits = ref.logits.float()
    scale = max(1.0, float(ref_logits.abs().max()))
    logit_diff = float((logits.float() - ref_logits).abs().max()) / scale
    loss_diff = abs(float(loss) - float(ref.loss)) / max(1.0, abs(float(ref.loss)))
    if not (logit_diff <= tol and loss_diff <= tol):  # NaN fails too
        raise V.LossValueError(
            f"cannot patch {name}: its forward computes logits or a loss that losskit's reading "
            f"of its config (scale {recipe.scale:g}, softcap {recipe.softcap}) does not "
            f"reproduce on a probe batch (logits {logit_diff:.2g}, loss {loss_diff:.2g} apart, "
            f"relative; tolerance {tol:g}); it does something else to the logits or the loss "
            "(another transform, an auxiliary loss, a custom loss_function), so it is not "
            "patched"
        )
    return recipe


def _options(impl: str, loss_options: dict) -> dict:
    V.check_impl(impl)
    taken = set(inspect.signature(linear_cross_entropy).parameters)
    fixed = {"input", "linear_weight", "target", "linear_bias", "ignore_index", "softcap",
             "normalizer", "reduction", "return_z_loss"}  # fmt: skip
    for key in loss_options:
        if key not in taken or key in fixed:
            raise V.LossValueError(
                f"{key!r} is not a loss option patch() can pass on: it takes linear_cross_"
                f"entropy's {sorted(taken - fixed)} (softcap and scale come from the config, "
                "the reduction from Hugging Face's rule)"
            )
    return {"impl": impl, **loss_options}


def _class_forward(cls: type) -> Callable:
    """``cls.forward`` as the class defines it, under a :func:`patch_class` if there is one."""
    return getattr(cls.forward, "__losskit_original__", cls.forward)


def patch(
    model: nn.Module,
    *,
    impl: str = "auto",
    train_only: bool = False,
    keep_logits: bool = False,
    **loss_options: Any,
) -> nn.Module:
    """Put ``model``'s training loss on losskit; returns the model (patched in place).

    Args:
        model: a causal LM (``XxxForCausalLM``), or a PEFT model wrapping one.
        impl: ``linear_cross_entropy``'s ``impl`` (``'auto'``, ``'fused'``, ``'reference'``).
        train_only: keyword-only; True: in ``eval()`` the model runs its own forward even with
            labels (logits and all), e.g. for an evaluation loop that reads the logits.
        keep_logits: keyword-only; True: keep the model's forward (logits built) and only
            install :func:`causal_lm_loss`, the fused cross-entropy on those logits, as its
            ``loss_function``.
        **loss_options: other ``linear_cross_entropy`` options (``z_loss``, ``chunk_size``,
            ``memory_budget``, ``accumulate``, ``validate``).

    Raises:
        LossValueError: the model is not of the decoder + output-embedding shape, its head is
            not a plain ``nn.Linear``, or the probe batch shows its forward does something to
            the logits or the loss that losskit would not reproduce.
    """
    hf = _resolve(model)
    options = _options(impl, loss_options)
    if keep_logits:
        if loss_options:
            raise V.LossValueError(
                f"keep_logits=True installs only the cross-entropy on the model's logits and "
                f"takes no loss options, got {sorted(loss_options)}"
            )
        unpatch(hf)
        hf._loss_function = functools.partial(causal_lm_loss, impl=impl)
        return model
    unpatch(hf)
    original = _class_forward(type(hf))
    state = _Patch(original, options, train_only)
    state.recipe = _probe(hf, state)

    @functools.wraps(original)
    def forward(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        return _patched_call(self, state, args, kwargs)

    setattr(hf, _STATE, state)
    hf.forward = types.MethodType(forward, hf)
    return model


def patch_class(
    cls: type, *, impl: str = "auto", train_only: bool = False, **loss_options: Any
) -> type:
    """:func:`patch` for every instance of a ``XxxForCausalLM`` class, present and future (for
    code that builds its models itself). Each instance's recipe is proved on its first call
    with labels. Undo with ``unpatch(cls)``."""
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise V.LossTypeError(f"cls must be a PreTrainedModel class, got {cls!r}")
    options = _options(impl, loss_options)
    unpatch(cls)
    original = cls.forward

    @functools.wraps(original)
    def forward(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        state = self.__dict__.get(_STATE)
        if state is None:  # this instance's own state: its recipe is proved on first use
            state = _Patch(original, options, train_only)
            self.__dict__[_STATE] = state
        return _patched_call(self, state, args, kwargs)

    forward.__losskit_original__ = original  # type: ignore[attr-defined]
    forward.__losskit_inherited__ = "forward" not in cls.__dict__  # type: ignore[attr-defined]
    cls.forward = forward
    return cls


def unpatch(target: nn.Module | type) -> None:
    """Undo :func:`patch` on a model (or :func:`patch_class` on a class); a no-op if none."""
    if isinstance(target, type):
        forward = target.__dict__.get("forward")
        original = getattr(forward, "__losskit_original__", None)
        if original is not None and forward.__losskit_inherited__:
            del target.forward
        elif original is not None:
            target.forward = original
        return
    hf = _resolve(target)
    if "forward" in hf.__dict__ and _STATE in hf.__dict__:
        del hf.forward
    hf.__dict__.pop(_STATE, None)
    if isinstance(hf.__dict__.get("_loss_function"), functools.partial):
        if hf.__dict__["_loss_function"].func is causal_lm_loss:
            del hf._loss_function


@contextlib.contextmanager
def patched(model: nn.Module, **options: Any) -> Iterator[nn.Module]:
    """``with patched(model): ...``: :func:`patch` for the block, :func:`unpatch` after it."""
    patch(model, **options)
    try:
        yield model
    finally:
        unpatch(model)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VerifyReport:
    """One batch, unpatched and patched: the loss and every parameter gradient compared."""

    model: str
    loss_unpatched: float
    loss_patched: float
    max_grad_diff: float  #: the largest |difference| over parameters, relative to that
    #: parameter's largest |gradient|
    worst_parameter: str
    tolerance: float

    @property
    def loss_diff(self) -> float:
        return abs(self.loss_patched - self.loss_unpatched)

    @property
    def ok(self) -> bool:
        rel = self.loss_diff / max(1.0, abs(self.loss_unpatched))
        return rel <= self.tolerance and self.max_grad_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (
            f"{verdict}: {self.model}: loss {self.loss_unpatched:.6g} unpatched, "
            f"{self.loss_patched:.6g} patched ({self.loss_diff:.2g} apart); gradients at most "
            f"{self.max_grad_diff:.2g} apart relative to their largest entry "
            f"({self.worst_parameter}); tolerance {self.tolerance:g}"
        )


def verify(
    model: nn.Module,
    input_ids: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    tolerance: float | None = None,
    **patch_options: Any,
) -> VerifyReport:
    """Run one batch unpatched and patched (in eval mode, so that dropout cannot differ) and
    compare the loss and every parameter's gradient; the model is left as it was.

    ``input_ids`` default to a seeded random ``(2, 32)`` batch, ``labels`` to the inputs. The
    tolerance defaults to 1e-4 (float32/float64 parameters) or 3e-2 (half types).
    """
    hf = _resolve(model)
    if input_ids is None:
        gen = torch.Generator().manual_seed(0)
        vocab = hf.get_output_embeddings().weight.shape[0]
        input_ids = torch.randint(0, vocab, (2, 32), generator=gen)
    input_ids = input_ids.to(hf.get_output_embeddings().weight.device)
    labels = input_ids if labels is None else labels
    dtype = hf.get_output_embeddings().weight.dtype
    full = dtype in (torch.float32, torch.float64)
    tol = tolerance if tolerance is not None else (1e-4 if full else 3e-2)
    params = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    state = hf.__dict__.get(_STATE)  #: patch()'s, or patch_class()'s state of this instance
    instance_patch = "forward" in hf.__dict__
    loss_function = hf.__dict__.get("_loss_function")
    training = hf.training
    hf.eval()
    own = None

    def run() -> tuple[float, list[Tensor]]:
        saved = [p.grad for _, p in params]
        for _, p in params:
            p.grad = None
        loss = hf(input_ids=input_ids, labels=labels).loss
        loss.backward()
        value = float(loss.detach())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in params]
        for (_, p), g in zip(params, saved, strict=True):
            p.grad = g
        return value, grads

    try:
        unpatch(hf)
        if _class_forward(type(hf)) is not type(hf).forward:  # patch_class: its own forward
            own = hf.forward = types.MethodType(_class_forward(type(hf)), hf)
        theirs, their_grads = run()
        patch(hf, **patch_options)
        ours, our_grads = run()
    finally:
        unpatch(hf)
        if own is not None and hf.__dict__.get("forward") is own:
            del hf.forward
        if state is not None:  # it was patched before: as it was
            setattr(hf, _STATE, state)
        if state is not None and instance_patch:
            patch(hf, impl=state.options["impl"], train_only=state.train_only,
                  **{k: v for k, v in state.options.items() if k != "impl"})  # fmt: skip
        if loss_function is not None:
            hf._loss_function = loss_function
        hf.train(training)
    worst, worst_name = 0.0, "-"
    for (name, _), a, b in zip(params, our_grads, their_grads, strict=True):
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a.float() - b.float()).abs().max()) / max(scale, 1e-30) if b.numel() else 0.0
        if not diff <= worst:  # NaN counts as worst
            worst, worst_name = diff if not math.isnan(diff) else math.inf, name
    return VerifyReport(type(hf).__name__, theirs, ours, worst, worst_name, tol)
