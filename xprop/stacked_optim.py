"""K optimizers of one class as one update of a stack of K nets (:mod:`xprop.stacked`).

The stack's parameters and gradients are ``(K, P)`` buffers; every
hyperparameter becomes a ``(K, 1)`` column, so one pass of the optimizer's
own whole-buffer operations updates every model, each exactly as its own
optimizer would (:class:`StackedOptimizer`).
"""

from __future__ import annotations

import math

import numpy

from . import kernels
from .backend import backend_name
from .optim import SCRATCH_CHUNK, SGD, Adam

__all__ = ["StackedOptimizer"]


class StackedOptimizer:
    """K optimizers of one class (SGD or Adam) as one update of the stack.

    Parameters
    ----------
    optimizers : list of Optimizer
        One per model, all of the same class (exactly ``SGD`` or ``Adam``),
        each with its own hyperparameters; their existing state (``t > 0``)
        is where each model's continues from.
    stack : Stack

    Each hyperparameter is a ``(K, 1)`` column in the nets' dtype, broadcast
    over the ``(K, P)`` buffers; the step counts ``t : (K,)`` live on the
    host. :meth:`step` updates the models of the given row ranges only: a
    model without a batch in a step, or frozen, keeps its parameters, its
    state and its ``t``. Each model's update is the one its optimizer's
    whole-buffer update performs, operation for operation (the bias
    corrections computed on the host in Python floats, as there).
    """

    def __init__(self, optimizers, stack):
        cls = type(optimizers[0])
        if cls not in (SGD, Adam):
            raise TypeError(f"fit_many stacks the updates of SGD and Adam; got {cls.__name__}")
        self.cls, self.opts, self.stack, self.xp = cls, list(optimizers), stack, stack.xp
        xp, K, dt = self.xp, stack.K, stack.dtype
        self.t = numpy.asarray([o.t for o in optimizers], dtype=numpy.int64)
        col = lambda values: xp.reshape(xp.asarray(values, dtype=dt), (K, 1))  # noqa: E731
        self.fast = stack.fast
        if cls is SGD:
            # plain SGD members get lr·∇J from the step (lr folded into s, as fit does):
            # their update is P −= G, i.e. lr 1, momentum 0, weight decay 0 below.
            # (fit folds lr only into its fast step; the plain reference steps with lr·g as well)
            self.scale = [o.grad_scale() if stack.fast else None for o in optimizers]
            plain = [sc is not None for sc in self.scale]
            self.all_plain = all(plain)
            self.lr = col([1.0 if p else o.lr for o, p in zip(optimizers, plain)])
            self.momentum = col([o.momentum for o in optimizers])
            self.weight_decay = col([o.weight_decay for o in optimizers])
            self.any_momentum = any(o.momentum for o in optimizers)
            self.any_decay = any(o.weight_decay for o in optimizers)
            self.nesterov = [o.nesterov for o in optimizers]
            self.state_names = ("v",) if self.any_momentum else ()
        else:
            self.scale = [None] * K
            self.b1 = [o.betas[0] for o in optimizers]
            self.b2 = [o.betas[1] for o in optimizers]
            self.beta1, self.beta2 = col(self.b1), col(self.b2)
            self.one_minus_b1 = col([1 - b for b in self.b1])
            self.one_minus_b2 = col([1 - b for b in self.b2])
            self.eps = col([o.eps for o in optimizers])
            self.lr_host = [o.lr for o in optimizers]
            self.weight_decay = col([o.weight_decay for o in optimizers])
            self.any_decay = any(o.weight_decay for o in optimizers)
            self.nesterov = [False] * K
            self.state_names = ("m", "v")
        shape = (K, stack.P)
        if self.fast:
            self.state = {s: stack.views(xp.zeros(shape, dtype=dt)) for s in self.state_names}
        else:
            self.state = {s: {name: xp.zeros((K,) + sh, dtype=dt) for name, sh in stack.shapes.items()}
                          for s in self.state_names}
        for i, o in enumerate(optimizers):
            for name, st in o.state.items():
                for s, arr in st.items():
                    if s in self.state:
                        self.state[s][name][i, ...] = xp.asarray(arr, dtype=dt)
        self._scratch = None
        # A 1-D buffer the update may use as work space (fit_many lends the step's work
        # arrays, idle between a step and the next); else one of SCRATCH_CHUNK numbers.
        self.scratch = None
        self.use_kernels = backend_name(xp) == "cupy"

    def runs(self, active):
        """Row ranges ``[(a, b), ...]`` of the True entries of ``active`` with the same rule."""
        out, a = [], None
        for i, on in enumerate(list(active) + [False]):
            if a is not None and (not on or self.nesterov[i] != self.nesterov[a]):
                out.append((a, i))
                a = None
            if on and a is None:
                a = i
        return out

    def step(self, params, grads, runs):
        """Update the models of ``runs`` in place from ``grads`` (dicts of ``(K, ...)`` arrays).

        On NumPy and CuPy ``params`` and ``grads`` are FlatDicts of the
        stack's layout and the update runs on their ``(K, P)`` buffers
        (``grads`` is used as work space); elsewhere parameter by parameter.
        """
        for a, b in runs:
            self.t[a:b] += 1
            if self.fast:
                state = {s: buf.flat[a:b] for s, buf in self.state.items()}
                self._update_fast(params.flat[a:b], grads.flat[a:b], state, a, b)
            else:
                for name in params:
                    state = {s: self.state[s][name][a:b, ...] for s in self.state_names}
                    new = self._update(params[name][a:b, ...], grads[name][a:b, ...], state, a, b)
                    params[name][a:b, ...] = new[0]
                    for s, value in new[1].items():
                        self.state[s][name][a:b, ...] = value

    # -- per-run host columns of the bias corrections (Python floats, as Adam computes them)
    def _bias_columns(self, a, b):
        xp, dt = self.xp, self.stack.dtype
        t = [int(v) for v in self.t[a:b]]
        c2 = [math.sqrt(1 - b2 ** tt) for b2, tt in zip(self.b2[a:b], t)]
        ss = [lr / (1 - b1 ** tt) for lr, b1, tt in zip(self.lr_host[a:b], self.b1[a:b], t)]
        return (xp.reshape(xp.asarray(c2, dtype=dt), (b - a, 1)),
                xp.reshape(xp.asarray(ss, dtype=dt), (b - a, 1)))

    def kernel_columns(self, a, b) -> list:
        """Adam's kernel scalars for models ``a:b`` as ``(b − a, 1)`` columns in the stack's dtype:
        ``β1, 1 − β1, β2, 1 − β2, √(1 − β2ᵗ), eps, lr/(1 − β1ᵗ), weight_decay``."""
        c2, ss = self._bias_columns(a, b)
        return [self.beta1[a:b], self.one_minus_b1[a:b], self.beta2[a:b], self.one_minus_b2[a:b], c2,
                self.eps[a:b], ss, self.weight_decay[a:b]]

    def _update_fast(self, P, G, state, a, b):
        xp = self.xp
        if self.cls is SGD:
            if self.all_plain:
                P -= G                                       # P = P − (lr · g)
                return
            if self.any_decay:
                G += self.weight_decay[a:b] * P              # g = dP + wd · P
            g = G
            if self.any_momentum:
                mu, v = self.momentum[a:b], state["v"]
                v *= mu
                v += G                                       # v = μ v + g
                if self.nesterov[a]:
                    G += mu * v                              # g + μ v
                else:
                    g = v
            xp.multiply(g, self.lr[a:b], out=G)
            P -= G                                           # P = P − lr · g
            return
        # Adam
        m, v = state["m"], state["v"]
        if self.use_kernels:
            # CuPy: Adam's own fused kernel in place, its scalars as (k, 1) columns of the
            # stack's dtype (computed on the host in double precision, rounded once)
            kernels._adam(xp, P, G, m, v, *self.kernel_columns(a, b))
            return
        c2, ss = self._bias_columns(a, b)
        b1, b2, eps = self.beta1[a:b], self.beta2[a:b], self.eps[a:b]
        if self.any_decay:
            G += self.weight_decay[a:b] * P
        m *= b1
        k, n = G.shape
        scratch = self.scratch                           # (1 − β1)·g through a bounded scratch
        if scratch is None or scratch.shape[0] < k:
            if self._scratch is None:
                self._scratch = xp.empty((max(SCRATCH_CHUNK, self.stack.K),), dtype=G.dtype)
            scratch = self._scratch
        width = min(n, int(scratch.shape[0]) // k)
        c1 = self.one_minus_b1[a:b]
        for lo in range(0, n, width):
            hi = min(lo + width, n)
            tmp = xp.reshape(scratch[:k * (hi - lo)], (k, hi - lo))
            xp.multiply(G[:, lo:hi], c1, out=tmp)
            m[:, lo:hi] += tmp                           # m = β1 m + (1 − β1) g
        # g is read for the last time below: the rest runs in G itself
        v *= b2
        xp.multiply(G, G, out=G)
        G *= self.one_minus_b2[a:b]
        v += G                                           # v = β2 v + (1 − β2) g²
        xp.sqrt(v, out=G)
        G /= c2
        G += eps                                         # √v / √(1 − β2ᵗ) + eps
        xp.divide(m, G, out=G)
        G *= ss
        P -= G                                           # P −= lr/(1 − β1ᵗ) · m / (...)

    def _update(self, p, g, state, a, b):
        """The plain update of one stacked parameter (any namespace): ``(p, state)`` new."""
        xp = self.xp
        col = lambda c: xp.reshape(c, (b - a,) + (1,) * (p.ndim - 1))  # noqa: E731
        if self.cls is SGD:
            if self.all_plain:
                return p - g, {}
            if self.any_decay:
                g = g + col(self.weight_decay[a:b, ...]) * p
            new = {}
            if self.any_momentum:
                v = col(self.momentum[a:b, ...]) * state["v"] + g
                new["v"] = v
                g = g + col(self.momentum[a:b, ...]) * v if self.nesterov[a] else v
            return p - col(self.lr[a:b, ...]) * g, new
        c2, ss = self._bias_columns(a, b)
        if self.any_decay:
            g = g + col(self.weight_decay[a:b, ...]) * p
        m = col(self.beta1[a:b, ...]) * state["m"] + col(self.one_minus_b1[a:b, ...]) * g
        v = col(self.beta2[a:b, ...]) * state["v"] + col(self.one_minus_b2[a:b, ...]) * (g * g)
        denom = xp.sqrt(v) / col(c2) + col(self.eps[a:b, ...])
        return p - col(ss) * (m / denom), {"m": m, "v": v}

    # -- what a checkpoint keeps (xprop.train.checkpoint calls these as on any optimizer)
    @property
    def name(self) -> str:
        return self.opts[0].name

    def hyperparameters(self) -> dict:
        """Every model's hyperparameters, ``{"models": [...]}`` (what a resume must match)."""
        return {"models": [o.hyperparameters() for o in self.opts]}

    def state_dict(self) -> dict:
        """Step counts ``t`` (a list) and the state arrays ``"<param>.<buffer>" : (K, ...)``."""
        arrays = {f"{name}.{s}": buf for s in self.state_names for name, buf in self.state[s].items()}
        return {"t": [int(t) for t in self.t], "arrays": arrays}

    def load_state_dict(self, state, params) -> None:
        """Restore :meth:`state_dict` output (copied into the stack's state buffers)."""
        t = state["t"]
        if not isinstance(t, list) or len(t) != self.stack.K:
            raise ValueError(f"optimizer state holds step counts for {t!r}, not for {self.stack.K} models")
        xp = self.xp
        for key, value in state["arrays"].items():
            name, s = key.split(".", 1)
            if s not in self.state or name not in self.state[s]:
                raise ValueError(f"optimizer state {key!r} is not one of this stack's")
            target = self.state[s][name]
            arr = xp.asarray(value, dtype=self.stack.dtype)
            if tuple(arr.shape) != tuple(target.shape):
                raise ValueError(f"optimizer state {key!r} has shape {tuple(arr.shape)}, expected "
                                 f"{tuple(target.shape)}")
            target[...] = arr
        self.t[:] = t

    def member_state(self, i) -> dict:
        """Model i's state as its optimizer's ``state_dict()`` would hold it (copies)."""
        xp = self.xp
        own = self.opts[i].state_names
        arrays = {f"{name}.{s}": xp.asarray(self.state[s][name][i, ...], copy=True)
                  for s in self.state_names if s in own for name in self.stack.shapes}
        return {"t": int(self.t[i]), "arrays": arrays}

    def write_back(self, params_of) -> None:
        """Give every optimizer its model's state and step count (``params_of(i)``: its net's params)."""
        for i, opt in enumerate(self.opts):
            opt.load_state_dict(self.member_state(i), params_of(i))
