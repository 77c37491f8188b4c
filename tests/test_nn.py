"""Loss Modules: Module == functional == torch.nn; buffers, state_dict, pickle, repr, legacy."""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_torch_signature, check_against_torch

import losskit
import losskit.functional as LF
import losskit.nn
from losskit.check import make_examples

NAMES = (
    "MSELoss",
    "L1Loss",
    "SmoothL1Loss",
    "HuberLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "NLLLoss",
    "KLDivLoss",
)
LEGACY = (
    "MSELoss",
    "L1Loss",
    "SmoothL1Loss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "NLLLoss",
    "KLDivLoss",
)


#: Modules whose forward takes other inputs than (input, float target), or whose targets are
#: +1/-1 labels or label lists: their Module == function == torch tests live with the family's
#: function tests (tests/functional/test_<family>.py)
OTHER_INPUTS = {
    "CosineEmbeddingLoss",
    "MarginRankingLoss",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
    "HingeEmbeddingLoss",
    "SoftMarginLoss",
    "MultiMarginLoss",
    "MultiLabelMarginLoss",
    "PoissonNLLLoss",
    "GaussianNLLLoss",
    "CTCLoss",
    "DistillationLoss",  # tests/functional/test_distillation.py: hard labels, two heads
    "LinearDistillationLoss",
    # tests/test_check.py (Module == function on each) and tests/functional/test_preference.py
    *losskit.nn.preference.__all__,
}


def _w(n=4):
    return torch.rand(n, dtype=torch.float64) + 0.2


def _setups():
    """(id, losskit module, torch module, inputs, the equivalent functional call)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.randn(3, 4, dtype=torch.float64)
    p = torch.sigmoid(x)
    q = torch.rand(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 1])
    logp = torch.log_softmax(x, 1)
    dist = torch.softmax(y, 1)
    w, pw = _w(), _w() * 2
    return [
        (
            "mse",
            losskit.MSELoss(reduction="sum"),
            nn.MSELoss(reduction="sum"),
            (x, y),
            lambda a, b: LF.mse_loss(a, b, reduction="sum"),
        ),
        ("l1", losskit.L1Loss(), nn.L1Loss(), (x, y), lambda a, b: LF.l1_loss(a, b)),
        (
            "smooth_l1",
            losskit.SmoothL1Loss(reduction="none", beta=0.5),
            nn.SmoothL1Loss(reduction="none", beta=0.5),
            (x, y),
            lambda a, b: LF.smooth_l1_loss(a, b, reduction="none", beta=0.5),
        ),
        (
            "huber",
            losskit.HuberLoss(delta=0.7),
            nn.HuberLoss(delta=0.7),
            (x, y),
            lambda a, b: LF.huber_loss(a, b, delta=0.7),
        ),
        (
            "bce",
            losskit.BCELoss(w, reduction="sum"),
            nn.BCELoss(w, reduction="sum"),
            (p, q),
            lambda a, b: LF.binary_cross_entropy(a, b, w, reduction="sum"),
        ),
        (
            "bce_logits",
            losskit.BCEWithLogitsLoss(w, pos_weight=pw),
            nn.BCEWithLogitsLoss(w, pos_weight=pw),
            (x, q),
            lambda a, b: LF.binary_cross_entropy_with_logits(a, b, w, pos_weight=pw),
        ),
        (
            "cross_entropy",
            losskit.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.2, impl="reference"),
            nn.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.2),
            (x, t),
            lambda a, b: LF.cross_entropy(
                a, b, w, ignore_index=1, label_smoothing=0.2, impl="reference"
            ),
        ),
        (
            "cross_entropy_probabilities",
            losskit.CrossEntropyLoss(w, reduction="none", impl="reference"),
            nn.CrossEntropyLoss(w, reduction="none"),
            (x, dist),
            lambda a, b: LF.cross_entropy(a, b, w, reduction="none", impl="reference"),
        ),
        (
            "nll",
            losskit.NLLLoss(w, ignore_index=3),
            nn.NLLLoss(w, ignore_index=3),
            (logp, t),
            lambda a, b: LF.nll_loss(a, b, w, ignore_index=3),
        ),
        (
            "kl",
            losskit.KLDivLoss(reduction="batchmean", log_target=True),
            nn.KLDivLoss(reduction="batchmean", log_target=True),
            (logp, torch.log(dist)),
            lambda a, b: LF.kl_div(a, b, reduction="batchmean", log_target=True),
        ),
    ]


SETUPS = {s[0]: s for s in _setups()}


def _torch_loss_modules() -> list[str]:
    """Every loss Module of the installed ``torch.nn`` (``AdaptiveLogSoftmaxWithLoss`` is a
    layer with parameters that returns a loss among its outputs, not a loss: it is left out)."""
    return sorted(
        name
        for name in dir(torch.nn.modules.loss)
        if name.endswith("Loss") and not name.startswith("_")
    )


def _torch_loss_functions() -> list[str]:
    """Every loss function of the installed ``torch.nn.functional``."""
    names = {"binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy"}
    names |= {"kl_div", "nll_loss"}
    return sorted(names | {n for n in dir(F) if n.endswith("_loss") and not n.startswith("_")})


def _newer_positional(ours, theirs) -> tuple[str, ...]:
    """losskit's positional parameters after torch's: those a newer torch has (``weight`` of
    the regression losses on torch < 2.13), which each family's own test pins."""
    extra = list(inspect.signature(ours).parameters.values())
    extra = extra[len(inspect.signature(theirs).parameters) :]
    return tuple(q.name for q in extra if q.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


@pytest.mark.parametrize("name", _torch_loss_modules())
def test_every_torch_loss_module_has_its_twin(name):
    """``losskit.XxxLoss`` for every ``torch.nn.XxxLoss``, with torch's constructor."""
    assert hasattr(losskit, name), f"losskit has no {name}"
    ours, theirs = getattr(losskit, name), getattr(nn, name)
    assert_torch_signature(ours, theirs, _newer_positional(ours, theirs))


@pytest.mark.parametrize("name", _torch_loss_functions())
def test_every_torch_loss_function_has_its_twin(name):
    """``losskit.functional.xxx`` for every loss of ``torch.nn.functional``, torch's signature."""
    assert hasattr(LF, name), f"losskit.functional has no {name}"
    ours, theirs = getattr(LF, name), getattr(F, name)
    assert_torch_signature(ours, theirs, _newer_positional(ours, theirs))


@pytest.mark.parametrize("name", NAMES)
def test_constructor_signature_matches_torch(name):
    assert_torch_signature(getattr(losskit, name), getattr(nn, name))


@pytest.mark.parametrize("key", list(SETUPS))
def test_module_equals_functional_and_torch(key):
    _, ours, theirs, args, functional = SETUPS[key]
    assert torch.equal(ours(*args), functional(*args))
    check_against_torch(ours, theirs, args)


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides:UserWarning")  # KLDivLoss
@pytest.mark.filterwarnings("ignore:NLLLoss2d has been deprecated:FutureWarning")
@pytest.mark.parametrize("name", losskit.nn.__all__)
def test_every_module_names_its_function(name):
    """``Module.function`` is the function of losskit.functional its forward calls."""
    cls = getattr(losskit.nn, name)
    function = cls.function
    assert getattr(LF, function.__name__) is function
    if name in OTHER_INPUTS:
        return  # called with its own inputs in its family's tests (Module == function == torch)
    index = name in (
        "CrossEntropyLoss", "NLLLoss", "NLLLoss2d", "FocalLoss", "LinearCrossEntropyLoss"
    )  # fmt: skip
    x, y = make_examples((4, 3), target="index" if index else "float", dtype=torch.float64)
    if cls is losskit.LinearCrossEntropyLoss:  # the head's weight is the function's 2nd input
        module = cls(3, 5, dtype=torch.float64)
        assert torch.equal(module(x, y), cls.function(x, module.linear.weight, y))
    else:
        assert torch.equal(cls()(x, y), cls.function(x, y))


# --------------------------------------------------------------------------------------------
# buffers and state
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("BCELoss", "CrossEntropyLoss", "NLLLoss"))
def test_weight_is_a_buffer(name):
    w = _w(3)
    module = getattr(losskit, name)(w)
    assert dict(module.named_buffers())["weight"] is w
    assert list(module.state_dict()) == list(getattr(nn, name)(w).state_dict()) == ["weight"]
    assert not list(module.parameters())
    assert module.to(torch.float32).weight.dtype == torch.float32
    module.to("meta")
    assert module.weight.device.type == "meta"
    # no weight: no buffer value, and nothing in the state_dict (as torch)
    assert getattr(losskit, name)().state_dict() == {}


def test_pos_weight_is_a_buffer():
    w, pw = _w(), _w()
    module = losskit.BCEWithLogitsLoss(w, pos_weight=pw)
    buffers = dict(module.named_buffers())
    assert buffers["weight"] is w and buffers["pos_weight"] is pw
    assert list(module.state_dict()) == list(nn.BCEWithLogitsLoss(w, pos_weight=pw).state_dict())
    module.half()
    assert module.weight.dtype == module.pos_weight.dtype == torch.float16
    module.to("meta")
    assert module.pos_weight.device.type == "meta"


def test_buffers_follow_to_and_the_result_follows_them():
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 1])
    module = losskit.CrossEntropyLoss(_w(3), impl="reference").to(torch.float32)
    expected = nn.CrossEntropyLoss(module.weight)(x, t)
    torch.testing.assert_close(module(x, t), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key", ("bce", "bce_logits", "cross_entropy", "nll"))
def test_state_dict_round_trip(key):
    _, ours, _, args, _ = SETUPS[key]
    fresh = copy.deepcopy(ours)
    for buffer in fresh.buffers():
        buffer.data = torch.rand_like(buffer) + 3.0  # different numbers, same shapes
    assert not torch.equal(fresh(*args), ours(*args))
    fresh.load_state_dict(ours.state_dict())
    assert torch.equal(fresh(*args), ours(*args))


@pytest.mark.parametrize("key", list(SETUPS))
def test_pickle_round_trip(key):
    _, ours, _, args, _ = SETUPS[key]
    restored = pickle.loads(pickle.dumps(ours))
    assert repr(restored) == repr(ours)
    assert torch.equal(restored(*args), ours(*args))
    for (name, a), (name_b, b) in zip(
        ours.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        assert name == name_b and torch.equal(a, b)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(*args), ours(*args))


# --------------------------------------------------------------------------------------------
# repr and legacy arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (losskit.MSELoss(reduction="sum"), "MSELoss(reduction='sum')"),
        (losskit.L1Loss(), "L1Loss(reduction='mean')"),
        (losskit.SmoothL1Loss(beta=0.5), "SmoothL1Loss(reduction='mean', beta=0.5)"),
        (losskit.HuberLoss(reduction="none", delta=2.0), "HuberLoss(reduction='none', delta=2.0)"),
        (losskit.BCELoss(label_smoothing=0.1), "BCELoss(reduction='mean', label_smoothing=0.1)"),
        (
            losskit.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.25),
            "CrossEntropyLoss(reduction='sum', ignore_index=3, label_smoothing=0.25)",
        ),
        (losskit.NLLLoss(ignore_index=-1), "NLLLoss(reduction='mean', ignore_index=-1)"),
        (
            losskit.KLDivLoss(reduction="batchmean", log_target=True),
            "KLDivLoss(reduction='batchmean', log_target=True)",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else "",
)
def test_extra_repr(module, expected):
    assert repr(module) == expected


def test_repr_leaves_out_the_weight():
    """The weight is a buffer: it does not appear in the repr line (as in torch)."""
    assert repr(losskit.CrossEntropyLoss(_w(3))).startswith("CrossEntropyLoss(reduction='mean'")


@pytest.mark.parametrize(
    ("size_average", "reduce"),
    [c for c in itertools.product((None, True, False), repeat=2) if c != (None, None)],
)
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_size_average_and_reduce(name, size_average, reduce):
    with pytest.warns(FutureWarning, match="reduction="):
        ours = getattr(losskit, name)(size_average=size_average, reduce=reduce)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(nn, name)(size_average=size_average, reduce=reduce)
    assert ours.reduction == theirs.reduction


@pytest.mark.parametrize("name", NAMES)
def test_elementwise_mean_module(name):
    with pytest.warns(FutureWarning, match="elementwise_mean"):
        module = getattr(losskit, name)(reduction="elementwise_mean")
    assert module.reduction == "mean"


def test_kl_div_module_keeps_batchmean():
    module = losskit.KLDivLoss(reduction="batchmean")
    assert module.reduction == "batchmean"
    logp = torch.log_softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    check_against_torch(module, nn.KLDivLoss(reduction="batchmean"), (logp, q))


def test_modules_follow_the_torch_2_13_audit_fixes():
    """The Modules take what the functions now take, with torch.nn's numbers: integer
    regression targets, integer pos_weight buffers, and KLDivLoss built with the legacy flags
    and 'batchmean' (torch's _Loss keeps only the legacy reduction; so does losskit's)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    counts = torch.randint(0, 5, (3, 4))
    for name in ("MSELoss", "L1Loss", "SmoothL1Loss"):
        check_against_torch(getattr(losskit, name)(), getattr(nn, name)(), (x, counts))
    q = torch.rand(3, 4, dtype=torch.float64)
    pw = torch.tensor([1, 2, 3, 4])
    ours = losskit.BCEWithLogitsLoss(pos_weight=pw)
    assert ours.state_dict()["pos_weight"].dtype == torch.int64
    check_against_torch(ours, nn.BCEWithLogitsLoss(pos_weight=pw), (x, q), wrt=(0, 1))
    logp, dist = torch.log_softmax(x, 1), torch.softmax(q, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = losskit.KLDivLoss(size_average=False, reduction="batchmean")
        theirs = nn.KLDivLoss(size_average=False, reduction="batchmean")
    assert ours.reduction == theirs.reduction == "sum"
    check_against_torch(ours, theirs, (logp, dist), wrt=(0, 1))


def test_nll_loss_2d_is_torch_s_deprecated_name_of_nll_loss():
    assert_torch_signature(losskit.NLLLoss2d.__init__, nn.NLLLoss2d.__init__)
    with pytest.warns(FutureWarning, match="NLLLoss2d has been deprecated"):
        ours = losskit.NLLLoss2d(reduction="sum", ignore_index=1)
    with pytest.warns(FutureWarning):
        theirs = nn.NLLLoss2d(reduction="sum", ignore_index=1)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).log_softmax(1)
    t = torch.randint(0, 3, (2, 4, 5))
    assert isinstance(ours, losskit.NLLLoss)
    check_against_torch(ours, theirs, (x, t))
