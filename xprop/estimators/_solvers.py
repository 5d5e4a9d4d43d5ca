"""scikit-learn's solvers for the MLP estimators, against the net's array namespace.

The two stochastic update rules are scikit-learn's (``sklearn/neural_network/
_stochastic_optimizers.py``), operation for operation, so that the same
gradients give the same steps to the last bit; they differ from xprop's own
:class:`xprop.SGD` and :class:`xprop.Adam` (PyTorch's rules):

``sgd`` (:class:`SGDOptimizer`)
    ``v ← μ·v − η·g``; the step is ``v``, or with Nesterov's momentum
    ``μ·v − η·g`` (the new ``v``); ``P ← P + step``. ``η`` follows
    ``learning_rate``: constant, ``invscaling`` (``η_init / (t + 1)^power_t``,
    ``t`` the samples seen, set after each epoch) or ``adaptive`` (divided by
    5 each time the stopping rule fires, until it is ≤ 1e-6).
``adam`` (:class:`AdamOptimizer`)
    ``m ← β₁·m + (1 − β₁)·g``, ``v ← β₂·v + (1 − β₂)·g²``,
    ``η_t = η·√(1 − β₂^t) / (1 − β₁^t)`` and ``P ← P − η_t·m / (√v + ε)``:
    the bias correction folded into the rate, ε added to ``√v`` uncorrected
    (PyTorch adds it to ``√v̂``).

Both update the net's flat parameter buffer with whole-buffer operations: a
handful of array operations per step, whatever the number of layers. The
``lbfgs`` solver (:func:`minimize_lbfgs`) hands the same flat buffer, as one
host float64 vector in scikit-learn's packing order, to
``scipy.optimize.minimize(method="L-BFGS-B")``.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp, to_numpy

__all__ = ["SGDOptimizer", "AdamOptimizer", "minimize_lbfgs"]


class _Rule:
    """State arrays (on the parameters' backend) and the hyperparameters of one rule."""

    _arrays: tuple[str, ...] = ()

    def __init__(self, flat, learning_rate_init):
        xp = get_xp(flat)
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)
        for name in self._arrays:
            setattr(self, name, xp.zeros_like(flat))

    def iteration_ends(self, time_step):
        """Called after each epoch with the number of samples seen, ``t_``."""

    def trigger_stopping(self, msg, verbose):
        """The stopping rule fired: True to stop (scikit-learn's message printed if verbose)."""
        if verbose:
            print(msg + " Stopping.")
        return True

    def _on(self, flat):
        """The state arrays on ``flat``'s backend (they are host arrays after unpickling)."""
        xp = get_xp(flat)
        for name in self._arrays:
            a = getattr(self, name)
            if get_xp(a) is not xp or a.dtype != flat.dtype:
                setattr(self, name, xp.asarray(to_numpy(a), dtype=flat.dtype))
        return xp

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in self._arrays:
            state[name] = np.array(to_numpy(state[name]))
        return state


class SGDOptimizer(_Rule):
    """scikit-learn's SGD with (Nesterov's) momentum and its learning-rate schedules.

    Parameters
    ----------
    flat : array ``(n_params,)``
        The parameter buffer (shape and dtype of the velocity).
    learning_rate_init, lr_schedule, momentum, nesterov, power_t
        As the estimator's ``learning_rate_init``, ``learning_rate``,
        ``momentum``, ``nesterovs_momentum``, ``power_t``.
    """

    _arrays = ("velocity",)

    def __init__(self, flat, learning_rate_init=0.1, lr_schedule="constant", momentum=0.9,
                 nesterov=True, power_t=0.5):
        super().__init__(flat, learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.power_t = float(power_t)

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            return super().trigger_stopping(msg, verbose)
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False

    def update_params(self, flat, grad, scratch):
        """``flat += step`` in place; ``grad`` and ``scratch`` are flat buffers (grad is overwritten)."""
        self._on(flat)
        mu, eta, v = self.momentum, self.learning_rate, self.velocity
        grad *= eta                      # η·g
        v *= mu
        v -= grad                        # v ← μ·v − η·g
        if self.nesterov:
            scratch[...] = v
            scratch *= mu
            scratch -= grad              # step = μ·v − η·g with the new v
            flat += scratch
        else:
            flat += v


class AdamOptimizer(_Rule):
    """scikit-learn's Adam: bias correction in the rate, ε added to the uncorrected ``√v``.

    Parameters
    ----------
    flat : array ``(n_params,)``
    learning_rate_init, beta_1, beta_2, epsilon
        As the estimator's parameters of the same names.
    """

    _arrays = ("ms", "vs")

    def __init__(self, flat, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        super().__init__(flat, learning_rate_init)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.t = 0

    def update_params(self, flat, grad, scratch):
        xp = self._on(flat)
        b1, b2, m, v = self.beta_1, self.beta_2, self.ms, self.vs
        self.t += 1
        m *= b1
        xp.multiply(grad, 1 - b1, out=scratch)
        m += scratch                     # m ← β₁·m + (1 − β₁)·g
        v *= b2
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1 - b2
        v += scratch                     # v ← β₂·v + (1 − β₂)·g²
        self.learning_rate = (self.learning_rate_init * math.sqrt(1 - b2 ** self.t)
                              / (1 - b1 ** self.t))
        xp.sqrt(v, out=grad)
        grad += self.epsilon             # √v + ε
        xp.multiply(m, -self.learning_rate, out=scratch)
        scratch /= grad                  # step = −η_t·m / (√v + ε)
        flat += scratch


def minimize_lbfgs(fun, x0, *, max_iter, max_fun, tol, callback=None):
    """``scipy.optimize.minimize(fun, x0, method="L-BFGS-B", jac=True)`` with scikit-learn's options.

    ``fun(x) -> (loss, grad)`` on host float64 vectors; ``maxiter=max_iter``,
    ``maxfun=max_fun``, ``gtol=tol``. Returns scipy's ``OptimizeResult``.
    """
    import scipy.optimize  # noqa: PLC0415  (only the lbfgs solver needs SciPy)

    return scipy.optimize.minimize(
        fun, x0, method="L-BFGS-B", jac=True, callback=callback,
        options={"maxfun": int(max_fun), "maxiter": int(max_iter), "gtol": float(tol)},
    )
