"""The loss under test: how :func:`losskit.check` calls it (with a reduction, a dtype, extra
keyword arguments), finds its twin (losskit's ``Module.function``, torch's ``torch.nn`` Module and
``torch.nn.functional`` pairs), and copies the example inputs for each call."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from .. import nn as lnn

#: torch's loss Modules and their functions in ``torch.nn.functional``
TORCH_TWINS = {
    "BCELoss": "binary_cross_entropy",
    "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
    "CTCLoss": "ctc_loss",
    "CosineEmbeddingLoss": "cosine_embedding_loss",
    "CrossEntropyLoss": "cross_entropy",
    "GaussianNLLLoss": "gaussian_nll_loss",
    "HingeEmbeddingLoss": "hinge_embedding_loss",
    "HuberLoss": "huber_loss",
    "KLDivLoss": "kl_div",
    "L1Loss": "l1_loss",
    "MSELoss": "mse_loss",
    "MarginRankingLoss": "margin_ranking_loss",
    "MultiLabelMarginLoss": "multilabel_margin_loss",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin_loss",
    "MultiMarginLoss": "multi_margin_loss",
    "NLLLoss": "nll_loss",
    "PoissonNLLLoss": "poisson_nll_loss",
    "SmoothL1Loss": "smooth_l1_loss",
    "SoftMarginLoss": "soft_margin_loss",
    "TripletMarginLoss": "triplet_margin_loss",
    "TripletMarginWithDistanceLoss": "triplet_margin_with_distance_loss",
}


def twinned_modules() -> list[type]:
    """losskit's Modules that have a functional twin to compare with: each one in
    ``losskit.nn.__all__`` whose ``function`` takes the inputs its ``forward`` takes (not
    ``LinearCrossEntropyLoss``: its function also takes the head's weight)."""
    modules = [getattr(lnn, name) for name in lnn.__all__]
    return [cls for cls in modules if _same_inputs(cls.function, cls)]


def torch_twins() -> dict[type, Callable]:
    """torch's loss Modules (exactly these classes, not subclasses) and their functions, as
    :data:`TORCH_TWINS` names them (``PoissonNLLLoss.forward`` calls its input ``log_input``;
    ``torch.nn.LinearCrossEntropyLoss`` is absent: its function also takes the head)."""
    pairs = {}
    for cls_name, fn_name in TORCH_TWINS.items():
        cls, fn = getattr(nn, cls_name, None), getattr(TF, fn_name, None)
        if isinstance(cls, type) and callable(fn):
            pairs[cls] = fn
    return pairs


def _same_inputs(fn: Callable, cls: type) -> bool:
    """Whether ``fn`` takes the inputs ``cls.forward`` takes: the same second parameter (the
    first may be named differently: ``PoissonNLLLoss.forward`` calls its input ``log_input``,
    as torch's does; the linear loss's function takes the head's ``weight`` second)."""
    try:
        ours, module = _inputs(fn, 0), _inputs(cls.forward, 1)  # forward also takes self
    except (TypeError, ValueError):  # no signature to read
        return False
    return len(ours) == len(module) == 2 and ours[1] == module[1]


def _inputs(fn: Callable, start: int) -> list[str]:
    return list(inspect.signature(fn).parameters)[start : start + 2]


class Subject:
    """Calls the loss under test with a chosen reduction, dtype and extra keyword arguments."""

    def __init__(self, loss: Callable, kwargs: dict, functional: Callable | None) -> None:
        if isinstance(loss, type) and issubclass(loss, nn.Module):
            loss = loss()
        if not callable(loss):
            raise TypeError(f"loss must be a function or an nn.Module, got {type(loss).__name__}")
        self.loss = loss
        self.kwargs = kwargs
        self.is_module = isinstance(loss, nn.Module)
        if self.is_module:
            reduction = getattr(loss, "reduction", None)
            self.default_reduction = reduction if isinstance(reduction, str) else None
        else:
            self.default_reduction = None
            try:
                param = inspect.signature(loss).parameters.get("reduction")
            except (TypeError, ValueError):
                param = None
            if param is not None:
                has_default = param.default is not param.empty
                self.default_reduction = param.default if has_default else "mean"
        self.takes_reduction = self.default_reduction is not None
        #: the reduction of a call without one: ``loss_kwargs['reduction']`` or the default
        self.call_reduction = kwargs.get("reduction", self.default_reduction)
        self.twin = self._find_twin(functional)

    @property
    def name(self) -> str:
        if self.is_module:
            return repr(self.loss).replace("\n", " ")
        module = getattr(self.loss, "__module__", None) or ""
        qual = getattr(self.loss, "__qualname__", type(self.loss).__name__)
        return f"{module}.{qual}" if module else qual

    @property
    def function_name(self) -> str:
        fn = self.loss if not self.is_module else self.twin
        return getattr(fn, "__name__", "")

    def _find_twin(self, functional: Callable | None) -> Callable | type | None:
        """The functional twin of a Module, or the Module class twin of a function."""
        if self.is_module:
            if functional is not None:
                return functional
            own = getattr(type(self.loss), "functional", None)
            if callable(own):
                return own
            cls = type(self.loss)
            if cls in twinned_modules():
                return cls.function
            return torch_twins().get(cls)
        module_cls = getattr(self.loss, "Module", None)
        if isinstance(module_cls, type) and issubclass(module_cls, nn.Module):
            return module_cls
        for cls in twinned_modules():
            if cls.function is self.loss:
                return cls
        for cls, fn in torch_twins().items():
            if fn is self.loss:
                return cls
        return None

    def module_with(self, reduction: str | None, dtype: torch.dtype | None = None) -> nn.Module:
        m = copy.deepcopy(self.loss)
        if reduction is not None:
            m.reduction = reduction
        if dtype is not None:
            m = m.to(dtype)
        return m

    def call(self, args: Sequence, reduction: str | None = None, dtype: torch.dtype | None = None):
        if self.is_module:
            if reduction is None and dtype is None:
                return self.loss(*args, **self.kwargs)
            return self.module_with(reduction, dtype)(*args, **self.kwargs)
        if reduction is None:
            return self.loss(*args, **self.kwargs)
        return self.loss(*args, reduction=reduction, **self.kwargs)

    def source_functions(self) -> list[Callable]:
        """The code to scan for culprits: forward, elementwise, the decorated function."""
        found: list[Callable] = []
        if self.is_module:
            cls = type(self.loss)
            found.append(cls.forward)
            elementwise = getattr(cls, "elementwise", None)
            if elementwise is not None:
                found.append(elementwise)
        else:
            found.append(self.loss)
        for fn in list(found) + ([self.twin] if callable(self.twin) else []):
            inner = getattr(fn, "elementwise", None)
            if callable(inner):
                found.append(inner)
        return found


def describe(args: Sequence) -> str:
    names = ["input", "target"] + [f"arg{i}" for i in range(2, len(args))]
    parts = []
    for name, a in zip(names, args, strict=False):
        if isinstance(a, Tensor):
            parts.append(f"{name} {tuple(a.shape)} {str(a.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{name} {type(a).__name__}")
    return ", ".join(parts)


def clone(args: Sequence, grad_index: Sequence[int] = ()) -> list:
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            a = a.detach().clone()
            if i in grad_index and a.is_floating_point():
                a.requires_grad_(True)
        out.append(a)
    return out
