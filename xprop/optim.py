"""Optimizers with PyTorch's update rules, so results can be compared.

``opt.step(net.params, grads)`` updates every parameter in place on its own
backend; the state (momentum buffers, Adam moments, step count) lives on the
same backend and is created at the first step. Only ``xp`` operations are
used; this module imports neither NumPy nor CuPy.
"""

from __future__ import annotations

import math

from . import kernels
from .backend import backend_name, get_xp, supports_out
from .validation import check_number_in, check_positive_number

__all__ = ["Optimizer", "SGD", "Adam", "OPTIMIZERS", "make_optimizer"]

# Largest scratch buffer (in numbers) of a whole-buffer update on NumPy: 256 kB in
# float32, so the scratch stays a fixed size however large the net.
SCRATCH_CHUNK = 1 << 16


class Optimizer:
    """Base class: hyperparameters, per-parameter state, a step counter.

    Subclasses implement :meth:`_update` for one parameter.
    """

    name = "optimizer"
    state_names: tuple = ()

    def __init__(self, lr):
        self.lr = check_positive_number("lr", lr)
        self.t = 0
        self.state: dict = {}
        self._xp: dict = {}
        self._scratch: dict = {}   # one work buffer per parameter (fast path; not state)
        self._flat = None          # (params buffer, xp, state buffers, scratch) when flat
        self.use_kernels = False   # fused CuPy kernels where a subclass has them
        self._params = None        # the parameter dict the state belongs to (set by the first step)

    # Whether _update_fast may use the gradient itself as its scratch buffer.
    grads_as_scratch = False
    # Whether _update_fast runs one fused in-place kernel on CuPy (xprop.kernels), which
    # needs no scratch: on CuPy the update is then one launch over the whole buffer.
    fused_kernel = False

    def grad_scale(self):
        """A factor the caller may fold into the gradients it passes, or None.

        Where the update only ever uses ``lr · g`` (plain SGD), ``fit`` asks
        the training step for ``lr · ∇J`` directly (the factor rides on the
        output delta with ``1/m``) and calls ``step(..., scaled=True)``: the
        update is then one subtraction, with no pass over the gradients to
        scale them. None for every rule that needs ``g`` itself.
        """
        return None

    def step(self, params, grads, *, overwrite_grads=False, scaled=False):
        """Update ``params`` in place from ``grads``.

        Parameters
        ----------
        params : dict of str to array
            ``"W1", "b1", ...`` (``net.params``).
        grads : dict of str to array
            ``"dW1", "db1", ...``, each shaped like its parameter.
        overwrite_grads : bool
            Allow the update to use ``grads`` as work space (their values
            afterwards are unspecified). ``fit`` passes True for its own
            gradient buffers, which saves a parameter-sized buffer.
        scaled : bool
            ``grads`` are already multiplied by :meth:`grad_scale` (which
            must not be None): the update is ``P −= grads``.
        """
        if scaled and self.grad_scale() is None:
            raise ValueError(f"scaled=True needs an optimizer with a gradient scale; {self!r} has none")
        if params is not self._params:
            self.check_params(params)
            self._params = params
        flat = self._flat_plan(params, grads)  # names and shapes checked when the plan is made
        if flat is not None:  # every parameter in one buffer: one update for all
            self.t += 1
            xp, flat_state, tmp = flat
            if scaled:
                params.flat -= grads.flat              # P = P − (lr · g)
                return
            P, G = params.flat, grads.flat
            if self.use_kernels and self.fused_kernel:   # CuPy: one in-place kernel, no scratch
                self._update_fast(xp, P, G, flat_state, None)
                return
            if overwrite_grads and self.grads_as_scratch:
                self._update_fast(xp, P, G, flat_state, G)
                return
            if tmp is None:            # bounded: the update runs chunk by chunk
                tmp = self._flat[3] = xp.empty((min(int(P.shape[0]), SCRATCH_CHUNK),), dtype=P.dtype)
            n, chunk = int(P.shape[0]), int(tmp.shape[0])
            if n <= chunk:
                self._update_fast(xp, P, G, flat_state, tmp[:n])
                return
            # Elementwise, so chunk by chunk gives the same bits as one pass over everything,
            # with a scratch buffer of at most SCRATCH_CHUNK numbers (and each chunk's
            # operands stay in cache across the update's passes).
            for lo in range(0, n, chunk):
                hi = min(lo + chunk, n)
                part = {k: buf[lo:hi] for k, buf in flat_state.items()}
                self._update_fast(xp, P[lo:hi], G[lo:hi], part, tmp[:hi - lo])
            return
        missing = [f"d{name}" for name in params if f"d{name}" not in grads]
        if missing:
            raise ValueError(f"grads must hold a gradient for every parameter; missing {missing}")
        self.t += 1
        for name, p in params.items():
            if scaled:
                p -= grads[f"d{name}"]                 # P = P − (lr · g)
                continue
            state = self.state.get(name)
            if state is None:
                xp = get_xp(p)
                if backend_name(xp) == "cupy":
                    self.use_kernels = True
                state = self.state[name] = {s: xp.zeros_like(p) for s in self.state_names}
                self._xp[name] = xp
            xp = self._xp[name]
            if supports_out(xp):
                tmp = None
                if not (self.use_kernels and self.fused_kernel):   # the kernel needs no scratch
                    tmp = self._scratch.get(name)
                    if tmp is None:
                        tmp = self._scratch[name] = xp.empty_like(p)
                self._update_fast(xp, p, grads[f"d{name}"], state, tmp)
            else:
                self._update(xp, p, grads[f"d{name}"], state)

    def check_params(self, params) -> None:
        """Refuse ``params`` of another net while this optimizer holds a net's state.

        An optimizer's state (momentum buffers, Adam's moments and step count)
        belongs to the parameters it first updated; stepping another net's
        parameters with it would silently carry them over. Use one optimizer
        per net, or call :meth:`reset` to start afresh.

        Raises
        ------
        ValueError
            ``params`` is not the parameter dict this optimizer's state
            belongs to (and the optimizer has taken a step or been loaded).
        """
        if self._params is not None and params is not self._params and (self.t or self.state):
            raise ValueError(
                f"this {type(self).__name__} optimizer already holds the state of another net's "
                f"parameters ({self.t} step{'' if self.t == 1 else 's'}"
                f"{', ' + ' and '.join(self.state_names) + ' buffers' if self.state_names else ''}); "
                "stepping these parameters with it would carry that state over. Use a new "
                "optimizer for each net, or call optimizer.reset() first")

    def reset(self) -> None:
        """Forget the state and the net it belongs to: the next step starts at ``t = 1``."""
        self.t = 0
        self.state, self._xp, self._scratch, self._flat, self._params = {}, {}, {}, None, None

    def _flat_plan(self, params, grads):
        """``(xp, flat_state, scratch)`` when params and grads are single buffers, else None.

        The flat state buffers are built once per parameter buffer; the
        per-parameter ``self.state`` entries become views of them (existing
        state, e.g. from a checkpoint, is copied in), so ``state_dict`` and
        checkpoints look the same either way.
        """
        flat_p, flat_g = getattr(params, "flat", None), getattr(grads, "flat", None)
        if flat_p is None or flat_g is None:
            return None
        if self._flat is not None and self._flat[0] is flat_p and id(flat_g) in self._flat[4]:
            return self._flat[1:4]
        xp = get_xp(flat_p)
        if (not supports_out(xp) or tuple(flat_g.shape) != tuple(flat_p.shape)
                or list(grads) != [f"d{name}" for name in params]):
            return None
        if self._flat is not None and self._flat[0] is flat_p:
            # the same parameters with another (checked) gradient buffer, e.g. the last
            # partial batch's: remember it, keeping a reference so its id stays unique
            self._flat[4][id(flat_g)] = flat_g
            return self._flat[1:4]
        flat_state = {s: xp.zeros_like(flat_p) for s in self.state_names}
        offset = 0
        for name, p in params.items():
            n = int(p.size)
            old = self.state.get(name, {})
            views = {s: xp.reshape(flat_state[s][offset:offset + n], p.shape) for s in self.state_names}
            for s, view in views.items():
                if s in old:
                    view[...] = old[s]
            self.state[name] = views
            self._xp[name] = xp
            offset += n
        self.use_kernels = backend_name(xp) == "cupy"
        self._flat = [flat_p, xp, flat_state, None, {id(flat_g): flat_g}]  # scratch made when needed
        return self._flat[1:4]

    def _update(self, xp, p, g, state):  # pragma: no cover - abstract
        """The plain update (any array-API namespace): the reference."""
        raise NotImplementedError

    def _update_fast(self, xp, p, g, state, tmp):  # pragma: no cover - abstract
        """The same update, operation for operation, into a scratch buffer (NumPy, CuPy)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Step count and state arrays, keyed ``"<param>.<buffer>"`` (backend arrays)."""
        out = {f"{name}.{s}": buf for name, st in self.state.items() for s, buf in st.items()}
        return {"t": self.t, "arrays": out}

    def load_state_dict(self, state, params):
        """Restore :meth:`state_dict` output onto the backend of ``params``.

        The buffers are copied: the state is updated in place by later steps
        and must not be shared with the optimizer it came from.
        """
        self.t = int(state["t"])
        self.state, self._xp, self._flat = {}, {}, None
        self._params = params      # the loaded state belongs to these parameters now
        for key, value in state["arrays"].items():
            name, buf = key.split(".", 1)
            if name not in params:
                raise ValueError(f"optimizer state names parameter {name!r}, which the net does not have")
            xp = get_xp(params[name])
            arr = xp.asarray(value, dtype=params[name].dtype, copy=True)
            if tuple(arr.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"optimizer state {key!r} has shape {tuple(arr.shape)} but parameter "
                    f"{name!r} has shape {tuple(params[name].shape)}"
                )
            self.state.setdefault(name, {})[buf] = arr
            self._xp[name] = xp
            self.use_kernels = self.use_kernels or backend_name(xp) == "cupy"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    As ``torch.optim.SGD`` with dampening 0::

        g = dP + weight_decay · P          (L2 penalty through the gradient)
        v = momentum · v + g               (v starts at 0, so v₁ = g₁)
        g = g + momentum · v  if nesterov else  v
        P = P − lr · g
    """

    name = "sgd"

    def __init__(self, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = check_number_in("momentum", momentum, 0.0, 1.0)
        self.weight_decay = check_number_in("weight_decay", weight_decay, 0.0, math.inf)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0; got momentum=0")
        self.nesterov = bool(nesterov)
        self.state_names = ("v",) if self.momentum else ()

    def grad_scale(self):
        """``lr`` for plain SGD (no momentum, no weight decay), else None.

        A subclass that changes the update gets None: the folded form assumes
        this class's rule.
        """
        plain = not self.momentum and not self.weight_decay
        return self.lr if plain and type(self) in _PLAIN_RULE else None

    def _update(self, xp, p, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = state["v"]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= self.lr * g

    grads_as_scratch = True  # every step below reads g before tmp is written
    fused_kernel = True

    def _update_fast(self, xp, p, g, state, tmp):
        if self.use_kernels:  # CuPy: the whole update as one in-place fused kernel
            kernels.sgd_update(xp, p, g, state.get("v"), lr=self.lr, momentum=self.momentum,
                               nesterov=self.nesterov, weight_decay=self.weight_decay)
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = state["v"]
            v *= self.momentum
            v += g
            if self.nesterov:
                if tmp is g:       # g + μ·v, computed in g itself
                    g += self.momentum * v
                else:
                    xp.multiply(v, self.momentum, out=tmp)
                    tmp += g
                    g = tmp
            else:
                g = v
        xp.multiply(g, self.lr, out=tmp)
        p -= tmp

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam`` (amsgrad off)::

        g = dP + weight_decay · P
        m = β1 · m + (1 − β1) · g
        v = β2 · v + (1 − β2) · g²
        P = P − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)
    """

    name = "adam"
    state_names = ("m", "v")
    fused_kernel = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        self.betas = (check_number_in("betas[0]", betas[0], 0.0, 1.0),
                      check_number_in("betas[1]", betas[1], 0.0, 1.0))
        self.eps = check_positive_number("eps", eps)
        self.weight_decay = check_number_in("weight_decay", weight_decay, 0.0, math.inf)

    def _update(self, xp, p, g, state):
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * p
        m, v = state["m"], state["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        step_size = self.lr / (1 - b1 ** self.t)
        denom = xp.sqrt(v) / math.sqrt(1 - b2 ** self.t) + self.eps
        p -= step_size * (m / denom)

    def _update_fast(self, xp, p, g, state, tmp):
        b1, b2 = self.betas
        m, v = state["m"], state["v"]
        if self.use_kernels:  # CuPy: the whole update as one in-place fused kernel
            kernels.adam_update(xp, p, g, m, v, lr=self.lr, betas=self.betas, eps=self.eps,
                                weight_decay=self.weight_decay, t=self.t)
            return
        if self.weight_decay:
            g = g + self.weight_decay * p
        m *= b1
        xp.multiply(g, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp /= math.sqrt(1 - b2 ** self.t)
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - b1 ** self.t)
        p -= tmp

    def hyperparameters(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


class _PlainRule(dict):
    """Classes whose update is SGD's own rule (a subclass that overrides it is not)."""

    def __missing__(self, cls):
        same = issubclass(cls, SGD) and cls._update is SGD._update and cls._update_fast is SGD._update_fast
        self[cls] = same
        return same

    def __contains__(self, cls):
        return self[cls]


_PLAIN_RULE = _PlainRule()


def make_optimizer(name: str, **hyperparameters) -> Optimizer:
    """An optimizer by name (``"sgd"`` or ``"adam"``)."""
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name.lower()](**hyperparameters)
