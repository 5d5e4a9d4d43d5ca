"""``coefs_`` and ``intercepts_`` over the network, scikit-learn's packing, and pickling.

The weights live in the network (on its backend). ``coefs_`` and
``intercepts_`` are lists built from it on first reading and cached until
the next training call: on NumPy views of the network's parameters (no copy;
writing into them writes into the net), on CuPy read-only host copies (one
copy per training call, however often they are read). Assigning the
attributes, or an entry of the lists, hands new weights to the network
before the next fit, partial_fit or prediction.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..backend import BackendError, as_backend_array, to_numpy
from ..network import MLP
from ._checks import _host

def _net_state(net) -> dict:
    """A picklable description of an ``xprop.MLP`` (host copies of the weights)."""
    return {
        "kind": "xprop.MLP",
        "sizes": list(net.sizes), "activation": net.activation, "output": net.output,
        "loss": net.loss, "backend": net.backend, "dtype": net.dtype_name, "seed": net.seed,
        "init": net.init, "layout": net.layout,
        "params": {k: np.array(to_numpy(v)) for k, v in net.params.items()},
    }


def _net_from_state(state) -> MLP:
    kwargs = {k: state[k] for k in ("activation", "output", "loss", "dtype", "seed", "init", "layout")}
    try:
        net = MLP(state["sizes"], backend=state["backend"], **kwargs)
    except BackendError as exc:
        warnings.warn(
            f"this estimator was fitted on backend {state['backend']!r}, which is not usable here "
            f"({exc}); its network was loaded onto NumPy instead",
            RuntimeWarning, stacklevel=3,
        )
        net = MLP(state["sizes"], backend="numpy", **kwargs)
    net.set_params(state["params"])
    return net



class WeightsMixin:
    """The weights as scikit-learn's attributes, the packed vector of lbfgs, pickling."""

    @property
    def coefs_(self):
        """list of ``(n_{l-1}, n_l)`` arrays: ``coefs_[i]`` is W of layer i + 1."""
        return self._weight_lists()[0]

    @coefs_.setter
    def coefs_(self, value):
        self._set_weight_list(0, value)

    @property
    def intercepts_(self):
        """list of ``(n_l,)`` arrays: ``intercepts_[i]`` is b of layer i + 1."""
        return self._weight_lists()[1]

    @intercepts_.setter
    def intercepts_(self, value):
        self._set_weight_list(1, value)

    def _weight_lists(self):
        cache = self.__dict__.get("_weights")
        if cache is not None:
            return cache[0], cache[1]
        net = self.__dict__.get("net_")
        if net is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'coefs_'")
        coefs, intercepts = [], []
        for l in range(1, net.L + 1):
            W, b = net.params[f"W{l}"], net.params[f"b{l}"]
            if net.backend != "numpy":
                W, b = to_numpy(W), to_numpy(b)
                W.setflags(write=False)
                b.setflags(write=False)
            coefs.append(W)
            intercepts.append(b)
        self._weights = (coefs, intercepts, (tuple(coefs), tuple(intercepts)))
        return coefs, intercepts

    def _set_weight_list(self, which, value):
        try:
            lists = list(self._weight_lists())
        except AttributeError:
            lists = [[], []]
        lists[which] = value
        self._weights = (lists[0], lists[1], None)

    def _user_weights(self):
        """The (coefs, intercepts) lists when they were assigned or changed since read, else None."""
        cache = self.__dict__.get("_weights")
        if cache is None:
            return None
        coefs, intercepts, handed = cache
        if handed is not None and len(coefs) == len(handed[0]) and len(intercepts) == len(handed[1]) \
                and all(a is b for a, b in zip(coefs, handed[0])) \
                and all(a is b for a, b in zip(intercepts, handed[1])):
            return None
        return coefs, intercepts

    def _drop_weight_cache(self):
        self.__dict__.pop("_weights", None)

    def _load_user_weights(self):
        """Copy assigned coefs_/intercepts_ into the network (all checked before any is written)."""
        user = self._user_weights()
        if user is None:
            return
        net = self.net_
        coefs, intercepts = user
        if len(coefs) != net.L or len(intercepts) != net.L:
            raise ValueError(f"coefs_ and intercepts_ must hold {net.L} arrays each (one per layer); "
                             f"got {len(coefs)} and {len(intercepts)}")
        params = {}
        for l in range(1, net.L + 1):
            params[f"W{l}"] = np.asarray(_host(coefs[l - 1]))
            params[f"b{l}"] = np.asarray(_host(intercepts[l - 1])).reshape(-1)
        net.set_params(params)
        self._drop_weight_cache()

    def _pack_index(self):
        """For each position of scikit-learn's packed vector (all W, then all b), the flat buffer's."""
        offsets, start = {}, 0
        for name, p in self.net_.params.items():
            offsets[name] = (start, start + int(p.size))
            start += int(p.size)
        L = self.net_.L
        order = [f"W{l}" for l in range(1, L + 1)] + [f"b{l}" for l in range(1, L + 1)]
        return np.concatenate([np.arange(*offsets[name]) for name in order])

    def _pack(self):
        return to_numpy(self.net_.params.flat).astype(np.float64)[self._pack_index()]

    def _unpack(self, packed):
        net = self.net_
        flat = np.empty(int(net.params.flat.size), dtype=np.float64)
        flat[self._pack_index()] = packed
        net.params.flat[...] = as_backend_array(flat, net.xp, name="packed parameters", dtype=net.dtype,
                                                device=net.device)

    def __getstate__(self):
        # The network and the solver's state hold their array module, which does
        # not pickle; they travel as host arrays and are rebuilt on loading.
        if "net_" in self.__dict__:
            self._load_user_weights()
        state = dict(super().__getstate__())
        state.pop("_weights", None)
        if isinstance(state.get("net_"), MLP):
            state["net_"] = _net_state(state["net_"])
        if state.get("_best_flat") is not None:
            state["_best_flat"] = np.array(to_numpy(state["_best_flat"]))
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("net_"), dict):
            state["net_"] = _net_from_state(state["net_"])
        if state.get("_best_flat") is not None and "net_" in state:
            net = state["net_"]
            state["_best_flat"] = as_backend_array(state["_best_flat"], net.xp, name="_best_flat",
                                                   dtype=net.dtype, device=net.device)
        super().__setstate__(state)

