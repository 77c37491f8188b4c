"""Bad input raises a LossError subclass, before any computation, naming the argument."""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_torch
from torch.overrides import TorchFunctionMode

import losskit
import losskit.functional as LF
from losskit import LossError, LossIndexError, LossTypeError, LossValueError

ce = functools.partial(LF.cross_entropy, impl="reference")


def logits(*shape):
    return torch.randn(*shape)


def labels(*values):
    return torch.tensor(values)


def probs(*shape):
    return torch.rand(*shape)


@dataclass
class Case:
    id: str
    call: Callable[[], object]
    error: type[LossError]
    argument: str
    also: str = ""  # another word the message must hold

    def param(self):
        return pytest.param(self, id=self.id)


CASES = [
    # ---- class indices
    Case(
        "ce-index-too-large",
        lambda: ce(logits(4, 3), labels(0, 1, 7, 2)),
        LossIndexError,
        "target",
        "7",
    ),
    Case(
        "ce-index-negative",
        lambda: ce(logits(4, 3), labels(0, -3, 1, 2)),
        LossIndexError,
        "target",
        "-3",
    ),
    Case(
        "ce-index-too-large-spatial",
        lambda: ce(logits(2, 3, 2), labels([0, 1], [2, 3])),
        LossIndexError,
        "target",
        "3",
    ),
    Case("ce-index-unbatched", lambda: ce(logits(3), torch.tensor(3)), LossIndexError, "target"),
    Case(
        "ce-index-not-this-ignore-index",
        lambda: ce(logits(4, 3), labels(0, -100, 1, 2), ignore_index=-1),
        LossIndexError,
        "target",
        "-100",
    ),
    Case(
        "nll-index-too-large",
        lambda: LF.nll_loss(logits(4, 3), labels(0, 1, 3, 2)),
        LossIndexError,
        "target",
    ),
    Case(
        "nll-index-negative",
        lambda: LF.nll_loss(logits(4, 3), labels(0, -1, 1, 2)),
        LossIndexError,
        "target",
    ),
    Case(
        "ce-float-indices",
        lambda: ce(logits(4, 3), labels(0.0, 1.0, 2.0, 1.0)),
        LossTypeError,
        "target",
        "long",
    ),
    Case(
        "nll-float-indices",
        lambda: LF.nll_loss(logits(4, 3), labels(0.0, 1.0, 2.0, 1.0)),
        LossTypeError,
        "target",
    ),
    Case(
        "ce-bool-target",
        lambda: ce(logits(4, 3), labels(True, False, True, True)),
        LossTypeError,
        "target",
    ),
    # ---- logits
    Case(
        "ce-integer-logits",
        lambda: ce(torch.randint(0, 5, (4, 3)), labels(0, 1, 2, 1)),
        LossTypeError,
        "input",
        "float",
    ),
    Case(
        "nll-integer-input",
        lambda: LF.nll_loss(torch.randint(0, 5, (4, 3)), labels(0, 1, 2, 1)),
        LossTypeError,
        "input",
    ),
    Case("ce-not-a-tensor", lambda: ce([[0.0, 1.0]], labels(0)), LossTypeError, "input"),
    Case(
        "ce-missing-class-dim",
        lambda: ce(logits(4), labels(0, 1, 1, 0)),
        LossValueError,
        "input",
        "class dimension",
    ),
    Case("ce-0-dim-input", lambda: ce(torch.tensor(1.0), labels(0)), LossValueError, "input"),
    Case(
        "ce-channels-last",
        lambda: ce(logits(2, 4, 4, 3), torch.randint(0, 3, (2, 4, 4))),
        LossValueError,
        "input",
        "channels-last",
    ),
    Case(
        "ce-channels-last-1d",
        lambda: ce(logits(2, 6, 3), torch.randint(0, 3, (2, 6))),
        LossValueError,
        "input",
        "channels-last",
    ),
    Case(
        "ce-target-n-by-1",
        lambda: ce(logits(4, 3), torch.randint(0, 3, (4, 1))),
        LossValueError,
        "target",
        "squeeze",
    ),
    Case(
        "nll-target-n-by-1",
        lambda: LF.nll_loss(logits(4, 3), torch.randint(0, 3, (4, 1))),
        LossValueError,
        "target",
    ),
    Case(
        "ce-target-wrong-batch", lambda: ce(logits(4, 3), labels(0, 1, 2)), LossValueError, "target"
    ),
    # ---- integer one-hot targets (of the input's shape): torch 2.13 refuses them too
    Case(
        "ce-one-hot-int64-target",
        lambda: ce(logits(4, 3), F.one_hot(labels(0, 2, 1, 1), 3)),
        LossTypeError,
        "target",
        "target.float()",
    ),
    Case(
        "ce-one-hot-int32-spatial-target",
        lambda: ce(logits(2, 3, 5), F.one_hot(torch.randint(0, 3, (2, 5)), 3).movedim(-1, 1).int()),
        LossTypeError,
        "target",
        "torch.int32",
    ),
    Case(
        "nll-one-hot-int64-target",
        lambda: LF.nll_loss(logits(4, 3), F.one_hot(labels(0, 2, 1, 1), 3)),
        LossValueError,
        "target",
        "target.argmax(1)",
    ),
    # ---- kl_div: 'batchmean' with the legacy flags (torch reduces twice)
    Case(
        "kl-batchmean-with-size-average",
        lambda: LF.kl_div(logits(3, 4), probs(3, 4), size_average=False, reduction="batchmean"),
        LossValueError,
        "reduction",
        "size_average",
    ),
    # ---- probability targets
    Case(
        "ce-probabilities-wrong-class-count",
        lambda: ce(logits(4, 3), probs(4, 5)),
        LossValueError,
        "target",
        "classes",
    ),
    Case(
        "ce-probabilities-wrong-class-count-spatial",
        lambda: ce(logits(2, 3, 4), probs(2, 2, 4)),
        LossValueError,
        "target",
    ),
    Case(
        "ce-probabilities-negative",
        lambda: ce(logits(2, 3), torch.tensor([[0.5, 0.6, -0.1], [0.2, 0.3, 0.5]])),
        LossValueError,
        "target",
        "-0.1",
    ),
    Case(
        "ce-probabilities-above-one",
        lambda: ce(logits(2, 3), torch.tensor([[0.0, 1.5, 0.0], [0.2, 0.3, 0.5]])),
        LossValueError,
        "target",
        "1.5",
    ),
    Case(
        "ce-probabilities-nan",
        lambda: ce(logits(1, 2), torch.tensor([[float("nan"), 1.0]])),
        LossValueError,
        "target",
    ),
    Case(
        "ce-probabilities-with-ignore-index",
        lambda: ce(logits(2, 3), probs(2, 3), ignore_index=1),
        LossValueError,
        "ignore_index",
        "mask",
    ),
    Case(
        "nll-probability-target",
        lambda: LF.nll_loss(logits(2, 3), probs(2, 3)),
        LossValueError,
        "target",
    ),
    # ---- options
    Case(
        "ce-label-smoothing-negative",
        lambda: ce(logits(2, 3), labels(0, 1), label_smoothing=-0.1),
        LossValueError,
        "label_smoothing",
        "[0, 1]",
    ),
    Case(
        "ce-label-smoothing-above-one",
        lambda: ce(logits(2, 3), labels(0, 1), label_smoothing=1.5),
        LossValueError,
        "label_smoothing",
    ),
    Case(
        "ce-label-smoothing-nan",
        lambda: ce(logits(2, 3), labels(0, 1), label_smoothing=float("nan")),
        LossValueError,
        "label_smoothing",
    ),
    Case(
        "ce-label-smoothing-string",
        lambda: ce(logits(2, 3), labels(0, 1), label_smoothing="0.1"),
        LossTypeError,
        "label_smoothing",
    ),
    Case(
        "bce-label-smoothing",
        lambda: LF.binary_cross_entropy(probs(3), probs(3), label_smoothing=2.0),
        LossValueError,
        "label_smoothing",
    ),
    Case(
        "bcel-label-smoothing",
        lambda: LF.binary_cross_entropy_with_logits(logits(3), probs(3), label_smoothing=-1.0),
        LossValueError,
        "label_smoothing",
    ),
    Case(
        "ce-ignore-index-float",
        lambda: ce(logits(2, 3), labels(0, 1), ignore_index=1.0),
        LossTypeError,
        "ignore_index",
    ),
    Case(
        "ce-impl",
        lambda: LF.cross_entropy(logits(2, 3), labels(0, 1), impl="fast"),
        LossValueError,
        "impl",
    ),
    Case(
        "smooth-l1-negative-beta",
        lambda: LF.smooth_l1_loss(logits(3), logits(3), beta=-1.0),
        LossValueError,
        "beta",
    ),
    Case(
        "huber-zero-delta",
        lambda: LF.huber_loss(logits(3), logits(3), delta=0.0),
        LossValueError,
        "delta",
    ),
    # ---- weights
    Case(
        "ce-weight-wrong-length",
        lambda: ce(logits(2, 3), labels(0, 1), torch.ones(4)),
        LossValueError,
        "weight",
        "(3,)",
    ),
    Case(
        "ce-weight-2d",
        lambda: ce(logits(2, 3), labels(0, 1), torch.ones(1, 3)),
        LossValueError,
        "weight",
    ),
    Case(
        "ce-weight-integer",
        lambda: ce(logits(2, 3), labels(0, 1), torch.ones(3, dtype=torch.long)),
        LossTypeError,
        "weight",
    ),
    Case(
        "nll-weight-wrong-length",
        lambda: LF.nll_loss(logits(2, 3), labels(0, 1), torch.ones(2)),
        LossValueError,
        "weight",
    ),
    Case(
        "bce-weight-not-broadcast",
        lambda: LF.binary_cross_entropy(probs(3, 4), probs(3, 4), torch.ones(3)),
        LossValueError,
        "weight",
        "broadcast",
    ),
    Case(
        "bce-weight-grows-output",
        lambda: LF.binary_cross_entropy(probs(3, 4), probs(3, 4), torch.ones(2, 3, 4)),
        LossValueError,
        "weight",
    ),
    Case(
        "bcel-weight-not-broadcast",
        lambda: LF.binary_cross_entropy_with_logits(logits(3, 4), probs(3, 4), torch.ones(5)),
        LossValueError,
        "weight",
    ),
    Case(
        "bcel-pos-weight-not-broadcast",
        lambda: LF.binary_cross_entropy_with_logits(
            logits(3, 4), probs(3, 4), pos_weight=torch.ones(3)
        ),
        LossValueError,
        "pos_weight",
        "broadcast",
    ),
    Case(
        "bcel-pos-weight-grows-output",
        lambda: LF.binary_cross_entropy_with_logits(
            logits(4), probs(4), pos_weight=torch.ones(2, 4)
        ),
        LossValueError,
        "pos_weight",
    ),
    Case(
        "mse-weight-shape",
        lambda: LF.mse_loss(logits(3, 4), logits(3, 4), weight=torch.ones(4)),
        LossValueError,
        "weight",
    ),
    # ---- binary values
    Case(
        "bcel-target-above-one",
        lambda: LF.binary_cross_entropy_with_logits(logits(3), torch.tensor([0.0, 1.2, 1.0])),
        LossValueError,
        "target",
        "1.2",
    ),
    Case(
        "bcel-target-negative",
        lambda: LF.binary_cross_entropy_with_logits(logits(3), torch.tensor([0.0, -0.5, 1.0])),
        LossValueError,
        "target",
    ),
    Case(
        "bce-target-above-one",
        lambda: LF.binary_cross_entropy(probs(3), torch.tensor([0.0, 2.0, 1.0])),
        LossValueError,
        "target",
    ),
    Case(
        "bce-input-above-one",
        lambda: LF.binary_cross_entropy(torch.tensor([0.5, 1.5]), probs(2)),
        LossValueError,
        "input",
        "sigmoid",
    ),
    Case(
        "bce-input-negative",
        lambda: LF.binary_cross_entropy(torch.tensor([-0.5, 0.5]), probs(2)),
        LossValueError,
        "input",
    ),
    Case(
        "bce-dtype-mismatch",
        lambda: LF.binary_cross_entropy(probs(3), probs(3).double()),
        LossTypeError,
        "target",
    ),
    # ---- shapes that would broadcast
    *[
        Case(
            f"{name}-broadcast-{i}",
            lambda n=name, a=a, b=b: getattr(LF, n)(logits(*a), b),
            LossValueError,
            "target",
            "shape",
        )
        for name in (
            "mse_loss",
            "l1_loss",
            "smooth_l1_loss",
            "huber_loss",
            "kl_div",
            "binary_cross_entropy_with_logits",
        )
        for i, (a, b) in enumerate([((3, 4), probs(4)), ((3, 1), probs(3, 4)), ((3,), probs(3, 1))])
    ],
    Case(
        "bce-broadcast",
        lambda: LF.binary_cross_entropy(probs(3, 1), probs(3, 4)),
        LossValueError,
        "target",
    ),
    # an integer target (or input) is promoted as in torch; two integer tensors are refused
    *[
        Case(
            f"{name}-integer-input-and-target",
            lambda n=name: getattr(LF, n)(labels(1, 2, 3), labels(1, 2, 2)),
            LossTypeError,
            "target",
            "input.float()",
        )
        for name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
    ],
    Case(
        "mse-complex-target",
        lambda: LF.mse_loss(logits(3), torch.ones(3, dtype=torch.complex64)),
        LossTypeError,
        "target",
        "complex64",
    ),
    Case("kl-integer-input", lambda: LF.kl_div(labels(1, 2, 3), probs(3)), LossTypeError, "input"),
    # ---- reduction
    *[
        Case(
            f"{name}-unknown-reduction",
            lambda n=name, a=args: getattr(LF, n)(*a(), reduction="avg"),
            LossValueError,
            "reduction",
            "'none', 'mean', 'sum'",
        )
        for name, args in [
            ("mse_loss", lambda: (logits(3), logits(3))),
            ("l1_loss", lambda: (logits(3), logits(3))),
            ("smooth_l1_loss", lambda: (logits(3), logits(3))),
            ("huber_loss", lambda: (logits(3), logits(3))),
            ("binary_cross_entropy", lambda: (probs(3), probs(3))),
            ("binary_cross_entropy_with_logits", lambda: (logits(3), probs(3))),
            ("cross_entropy", lambda: (logits(2, 3), labels(0, 1))),
            ("nll_loss", lambda: (logits(2, 3), labels(0, 1))),
            ("kl_div", lambda: (logits(3), probs(3))),
        ]
    ],
    # ---- Modules check their options at construction
    Case(
        "module-ce-label-smoothing",
        lambda: losskit.CrossEntropyLoss(label_smoothing=1.5),
        LossValueError,
        "label_smoothing",
    ),
    Case("module-ce-impl", lambda: losskit.CrossEntropyLoss(impl="fast"), LossValueError, "impl"),
    Case(
        "module-bce-label-smoothing",
        lambda: losskit.BCELoss(label_smoothing=-0.5),
        LossValueError,
        "label_smoothing",
    ),
    Case("module-smooth-l1-beta", lambda: losskit.SmoothL1Loss(beta=-1.0), LossValueError, "beta"),
    Case("module-huber-delta", lambda: losskit.HuberLoss(delta=-2.0), LossValueError, "delta"),
    Case(
        "module-mse-reduction",
        lambda: losskit.MSELoss(reduction="avg"),
        LossValueError,
        "reduction",
    ),
    Case(
        "module-weight-not-a-tensor",
        lambda: losskit.CrossEntropyLoss(weight=[1.0, 2.0]),
        LossTypeError,
        "weight",
    ),
    Case(
        "module-pos-weight-not-a-tensor",
        lambda: losskit.BCEWithLogitsLoss(pos_weight=[2.0]),
        LossTypeError,
        "pos_weight",
    ),
    Case(
        "module-ce-forward-weight-length",
        lambda: losskit.CrossEntropyLoss(torch.ones(4), impl="reference")(
            logits(2, 3), labels(0, 1)
        ),
        LossValueError,
        "weight",
    ),
]

_BUILTIN = {LossIndexError: IndexError, LossTypeError: TypeError, LossValueError: ValueError}


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input_raises_a_named_error(case: Case):
    with pytest.raises(case.error) as info:
        case.call()
    assert type(info.value) is case.error, f"raised {type(info.value).__name__}"
    assert isinstance(info.value, _BUILTIN[case.error])
    assert isinstance(info.value, LossError)
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(case.argument)}(?!\w)", message), (
        f"the message does not name {case.argument!r}: {message}"
    )
    if case.also:
        assert case.also in message, f"the message lacks {case.also!r}: {message}"


# Operations that compute a loss; none may run before an input error is raised.
_COMPUTE = {
    # torch's own loss kernels (the plain path, losskit.functional._torch)
    "cross_entropy_loss",
    "nll_loss_nd",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
    # the reference's ops
    "log_softmax",
    "logsigmoid",
    "log",
    "log1p",
    "exp",
    "gather",
    "xlogy",
    "sum",
    "mean",
    "abs",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "sub",
    "mul",
    "tanh",
    "logsumexp",
    "pow",
}


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", [c.param() for c in CASES if not c.id.startswith("module-")])
def test_errors_are_raised_before_computation(case: Case):
    # the recorder also sees the case's tensors being created (randn, tensor): none computes
    recorder = _Recorder()
    with recorder, pytest.raises(case.error):
        case.call()
    computed = _COMPUTE.intersection(recorder.names)
    assert not computed, f"ran {sorted(computed)} before raising"


def test_recorder_sees_the_computation():
    """Control for the test above: a valid call does run the recorded operations."""
    for call in (
        lambda: ce(torch.randn(2, 3), torch.tensor([0, 1])),
        lambda: LF.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3)),
        lambda: LF.mse_loss(torch.randn(3), torch.randn(3)),
    ):
        recorder = _Recorder()
        with recorder:
            call()
        assert _COMPUTE.intersection(recorder.names), recorder.names


# --------------------------------------------------------------------------------------------
# positive controls and validate=False
# --------------------------------------------------------------------------------------------


def test_ignore_index_out_of_range_is_allowed():
    x = torch.randn(4, 3, dtype=torch.float64)
    for ignore_index in (-100, 3, 7, -1):
        t = torch.tensor([0, ignore_index, 2, 1])
        assert_close_to_torch(
            ce(x, t, ignore_index=ignore_index), F.cross_entropy(x, t, ignore_index=ignore_index)
        )
        assert_close_to_torch(
            LF.nll_loss(x, t, ignore_index=ignore_index),
            F.nll_loss(x, t, ignore_index=ignore_index),
        )


def test_validate_false_skips_value_checks(monkeypatch):
    """validate=False runs no value check; out-of-range values then give torch's numbers."""
    import losskit._validate as V

    def forbidden(*args, **kwargs):
        raise AssertionError("a value check ran with validate=False")

    for where in (V, V.tensors):  # the package's names, and their home
        monkeypatch.setattr(where, "check_class_indices", forbidden)
        monkeypatch.setattr(where, "check_unit_interval", forbidden)
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 1])
    assert_close_to_torch(ce(x, t, validate=False), F.cross_entropy(x, t))
    assert_close_to_torch(LF.nll_loss(x, t, validate=False), F.nll_loss(x, t))
    soft = torch.tensor([[0.5, -0.5, 1.5, 0.0]] * 3, dtype=torch.float64)
    assert_close_to_torch(ce(x, soft, validate=False), F.cross_entropy(x, soft))
    y = torch.tensor([[0.0, 1.5, -0.5, 1.0]] * 3, dtype=torch.float64)
    assert_close_to_torch(
        LF.binary_cross_entropy_with_logits(x, y, validate=False),
        F.binary_cross_entropy_with_logits(x, y),
    )
    # torch rejects BCE values outside [0, 1] itself: only check that nothing else changes
    p, q = torch.sigmoid(x), torch.rand(3, 4, dtype=torch.float64)
    assert_close_to_torch(
        LF.binary_cross_entropy(p, q, validate=False), F.binary_cross_entropy(p, q)
    )
    with pytest.raises(AssertionError, match="value check ran"):
        ce(x, t)


def test_validate_false_still_checks_shapes_and_dtypes():
    with pytest.raises(LossTypeError, match="target"):
        ce(torch.randn(2, 3), torch.tensor([0.0, 1.0]), validate=False)
    with pytest.raises(LossValueError, match="target"):
        ce(torch.randn(2, 3), torch.tensor([[0], [1]]), validate=False)


# --------------------------------------------------------------------------------------------
# integer one-hot targets (issue 11, item 7)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (torch.int64, torch.int32, torch.uint8), ids=str)
@pytest.mark.parametrize("shape", ((4, 3), (2, 3, 5)), ids=str)
def test_integer_one_hot_target_names_the_dtype_and_the_fix(shape, dtype):
    """torch 2.13 refuses an integer target of the input's shape ("Expected floating point type
    for target with class probabilities"); losskit says so, naming the dtype and target.float(),
    and the suggested fix gives torch's numbers (and the index form's)."""
    x = torch.randn(shape, dtype=torch.float64)
    indices = torch.randint(0, 3, (shape[0], *shape[2:]))
    one_hot = F.one_hot(indices, 3).movedim(-1, 1).to(dtype)
    with pytest.raises(RuntimeError, match="floating point"):
        F.cross_entropy(x, one_hot)
    with pytest.raises(LossTypeError) as info:
        ce(x, one_hot)
    message = str(info.value)
    assert f"target has the input's shape {tuple(shape)}" in message
    assert str(dtype) in message and "target.float()" in message
    assert "target.argmax(1)" in message
    assert_close_to_torch(ce(x, one_hot.double()), F.cross_entropy(x, one_hot.double()))
    assert_close_to_torch(ce(x, one_hot.double()), F.cross_entropy(x, indices))


def test_nll_loss_messages_do_not_offer_probabilities():
    """nll_loss takes class indices only: its shape errors must not suggest probabilities."""
    for target in (labels(0, 1, 2), F.one_hot(labels(0, 2, 1, 1), 3)):
        with pytest.raises(LossValueError) as info:
            LF.nll_loss(logits(4, 3), target)
        assert "probabilit" not in str(info.value), str(info.value)
    with pytest.raises(LossValueError, match=r"or floating probabilities of the input's shape"):
        ce(logits(4, 3), labels(0, 1, 2))


def test_unbatched_integer_vector_mentions_float_for_one_hot():
    """Input (C,) with an integer (C,) target: most likely a missing class dimension, but it may
    be an unbatched one-hot (torch refuses that too): the message names both fixes."""
    with pytest.raises(LossValueError) as info:
        ce(logits(3), labels(0, 1, 0))
    message = str(info.value)
    assert "class dimension seems to be missing" in message and "target.float()" in message


@pytest.mark.parametrize(
    ("size_average", "reduce"), [(None, True), (True, None), (False, False), (True, True)]
)
def test_kl_div_batchmean_with_legacy_flags_is_refused(size_average, reduce):
    """torch applies the legacy reduction and then divides by the batch size again; losskit
    refuses the combination. Either flag alone still maps as in torch."""
    x = torch.log_softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    y = torch.softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    with pytest.raises(LossValueError, match="batchmean"):
        LF.kl_div(x, y, size_average, reduce, "batchmean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close_to_torch(
            LF.kl_div(x, y, size_average, reduce), F.kl_div(x, y, size_average, reduce)
        )
