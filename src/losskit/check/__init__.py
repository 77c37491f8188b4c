"""Verify a loss: ``losskit.check(loss, input, target)`` or ``python -m losskit check mod:attr``.

:func:`check` runs any loss (a function or a Module, losskit's or yours) on example inputs and
tests the properties every loss should have, each with a measured discrepancy:

================== ===================================================================
call               it runs and returns a tensor; without a reduction given, a 0-dim one
                   (``backward()`` needs it) unless its ``reduction`` is ``'none'``
inputs unchanged   it does not modify its inputs in place
reductions         ``'mean'``/``'sum'`` give a 0-dim tensor, ``'none'`` one value per position
sum = mean x count ``'sum'`` equals ``'mean'`` times the count, and the sum of ``'none'``
autograd graph     the result keeps its graph and the input gets a nonzero gradient; when not,
                   the culprit is named (``.item()``/``float()``, a NumPy round trip,
                   ``.detach()``/``.data``, ``torch.no_grad``), with its line
gradcheck (f64)    ``torch.autograd.gradcheck`` in float64 at the example point
double backward    the gradient of the gradient, in float64: a Hessian-vector product
                   (``create_graph=True``) against central differences of the gradient, and
                   ``torch.autograd.gradgradcheck``; skipped as once-differentiable for a
                   backward marked ``@once_differentiable`` or an op torch gives no second
                   derivative; a custom ``autograd.Function`` that cuts it is named
module = function  a Module and its functional twin agree (losskit's, torch's ``torch.nn``
                   Modules and their ``torch.nn.functional`` functions, or ``f.Module`` of a
                   :func:`losskit.loss_function`), in every reduction
deterministic      two calls on the same inputs agree bitwise (random noise is named)
torch.compile      the compiled loss gives the same value (``compile=False`` skips it)
================== ===================================================================

Properties about ``reduction`` run when the loss takes one: a function with a ``reduction``
parameter, or a Module with a ``reduction`` attribute (set on a copy).

The command line generates seeded random examples from ``--shape``::

    python -m losskit check losskit.nn:MSELoss --shape 8,5
    python -m losskit check my_losses.py:My_loss --no-compile
    python -m losskit check losskit.functional:cross_entropy --shape 8,5 --target index
    python -m losskit check torch.nn:HuberLoss --init 'delta=0.5, reduction="sum"'
    python -m losskit check losskit.nn:MSELoss --shape 2 --kwargs 'mask=tensor([True, False])'

``LOSS`` is ``module.path:attr`` or ``path/to/file.py:attr``; a class is instantiated with the
arguments of ``--init`` (none by default), and ``--kwargs`` go to every call (``loss_kwargs``):
each takes ``name=value`` pairs separated by commas, or is given several times, each value a
Python literal (read with :func:`ast.literal_eval`, never run) or ``tensor(<literal>)``. The
header (the loss, the inputs, the properties) is printed before the loss is imported.

With ``--target float`` (the default) the input and the target both have the shape (input
uniform in [0.1, 0.9): valid as logits and as probabilities; target uniform in [0, 1)); with
``--target index`` the target holds class indices in [0, C) over the shape without its
dimension 1 (``C``). Give ``--shape`` twice for different input and target shapes. The exit
status is 0 when every property passes, 1 when one fails, 2 for a usage or import error.

``losskit.check`` is the function; import the rest from the module:
``from losskit.check import CheckReport, make_examples, main``.

One file per concern: ``report`` (the result types), ``subject`` (calling the loss, finding
its twin), ``culprits`` (the source scan that names a cause), ``properties`` and ``gradients``
(the properties), ``examples`` (:func:`make_examples`), ``verify`` (:func:`check`), ``cli``
(:func:`main`).
"""

from .cli import main
from .examples import make_examples
from .report import CheckReport, PropertyResult
from .verify import check

__all__ = ["CheckReport", "PropertyResult", "check", "main", "make_examples"]
