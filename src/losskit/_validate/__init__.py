"""Input checks for every public entry point, and the error family they raise.

All checks run once, at the public entry, before any computation. Shape, dtype and option checks
are free; value checks (class-index range, probabilities in [0, 1]) cost one cheap min/max pass
and are skipped with ``validate=False``.

Messages name the argument, what was expected and what came, e.g.
``target has class index 7 at position (3,), but input has 3 classes (dim 1)``.

- :mod:`.errors`: ``LossError`` and its ``ValueError``/``TypeError``/``IndexError`` kinds.
- :mod:`.tensors`: checks of tensor arguments (dtype, device, shape, index ranges, masks).
- :mod:`.options`: checks of options, returning the frozen option objects the losses, their
  Modules, the kernels and ``losskit.distributed`` share.
- :mod:`.targets`: classification targets (class indices or probabilities) and their shapes.
- :mod:`.linear`: the linear + cross-entropy call (head shapes) and its fused path's options.
"""

from .errors import LossError, LossIndexError, LossTypeError, LossValueError
from .linear import (
    ACCUMULATE,
    BUDGETS,
    LinearCall,
    check_linear_call,
    check_linear_options,
)
from .options import (
    IMPLS,
    CrossEntropyOptions,
    check_alpha,
    check_float_option,
    check_ignore_index,
    check_impl,
    check_positive_int,
    cross_entropy_options,
)
from .targets import check_classification, index_target_shape
from .tensors import (
    FLOATING,
    check_class_indices,
    check_class_weight,
    check_elementwise,
    check_elementwise_weight,
    check_inplace_allowed,
    check_mask,
    check_normalizer,
    check_unit_interval,
    position,
    require_broadcastable_to,
    require_floating,
    require_one_floating,
    require_real,
    require_same_device,
    require_same_dtype,
    require_same_shape,
    require_tensor,
    shape_str,
)

__all__ = [
    "ACCUMULATE",
    "FLOATING",
    "BUDGETS",
    "LinearCall",
    "check_linear_call",
    "check_linear_options",
    "IMPLS",
    "CrossEntropyOptions",
    "LossError",
    "LossIndexError",
    "LossTypeError",
    "LossValueError",
    "check_alpha",
    "check_class_indices",
    "check_class_weight",
    "check_elementwise",
    "check_elementwise_weight",
    "check_classification",
    "check_float_option",
    "check_ignore_index",
    "check_impl",
    "check_inplace_allowed",
    "check_mask",
    "check_normalizer",
    "check_positive_int",
    "check_unit_interval",
    "cross_entropy_options",
    "index_target_shape",
    "position",
    "require_broadcastable_to",
    "require_floating",
    "require_one_floating",
    "require_real",
    "require_same_device",
    "require_same_dtype",
    "require_same_shape",
    "require_tensor",
    "shape_str",
]
