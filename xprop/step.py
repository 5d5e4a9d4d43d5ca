"""The training step, chosen once: the fast step where the namespace allows, the reference otherwise.

Every step has the same interface, which is all the training loop and its
strategies know of it::

    J, A_L, grads = step(X, Y)        # X : (m, k), Y : (m, n_L), row layout
    J, A_L = step.cost(X, Y)          # forward pass and cost only (validation)

``J`` is the batch's mean cost as a 0-d device array (never read back per
step), ``A_L : (m, n_L)`` the output and ``grads`` the gradients shaped like
``net.params``. A step whose ``accepts_scale`` is True also takes
``step(X, Y, scale)`` and returns ``scale`` times the gradients (plain SGD's
learning rate folded into the output delta, :meth:`Optimizer.grad_scale`).
``step.grads`` is the gradient dict the step writes into, reused by every
call (a :class:`~xprop.flat.FlatDict` whose ``.flat`` is one buffer, the
optimizer's whole-buffer operand), or None for a step that returns new
arrays each call.

- :class:`ReferenceStep`: the plain equations (:meth:`MLP.forward_rows`,
  :meth:`MLP.cost_rows`, :meth:`MLP.backward_rows`) on any array-API
  namespace; the reference the fast step is tested against.
- :class:`xprop.fast.TrainStep`: the same equations into reused buffers
  (NumPy, CuPy: namespaces with ``out=``).

:func:`make_step` is the one place that chooses between them.
"""

from __future__ import annotations

from .backend import supports_out
from .fast import TrainStep

__all__ = ["ReferenceStep", "make_step"]


class ReferenceStep:
    """The plain training step of ``net`` on any array-API namespace.

    Parameters
    ----------
    net : MLP

    Calling it on row-layout ``X : (m, k)`` and ``Y : (m, n_L)`` returns
    ``(J, A_L, grads)`` as the module docstring says, from new arrays.
    """

    accepts_scale = False
    grads = None   # new gradient arrays every call

    def __init__(self, net):
        self.net = net

    def __call__(self, X, Y):
        net = self.net
        A_L, cache = net.forward_rows(X)
        J = net.cost_rows(cache, Y)
        return J, A_L, net.grads_to_layout(net.backward_rows(cache, Y))

    def cost(self, X, Y):
        """``(J, A_L)`` of a batch: the forward pass and the cost."""
        A_L, cache = self.net.forward_rows(X)
        return self.net.cost_rows(cache, Y), A_L


def make_step(net):
    """The training step for ``net``: :class:`~xprop.fast.TrainStep` on NumPy and CuPy, else
    :class:`ReferenceStep`."""
    return TrainStep(net) if supports_out(net.xp) else ReferenceStep(net)
