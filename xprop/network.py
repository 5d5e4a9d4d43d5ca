"""The multi-layer network: forward pass with a cache, backward pass from it.

Notation (row layout, the default; ``m`` examples, ``k`` features, ``L`` layers)::

    A0 = X                                   (m, k)
    Z_l = A_{l-1} @ W_l + b_l                (m, n_l)    W_l : (n_{l-1}, n_l), b_l : (n_l,)
    A_l = g_l(Z_l)                           (m, n_l)
    J = (1/m) Σ_i L_i                        scalar

    dZ_L = A_L − Y                           softmax + CE, sigmoid + BCE (see losses.py)
    dZ_L = dA_L ∘ g_L'(Z_L)                  any other output/loss pair
    dW_l = (1/m) A_{l-1}ᵀ @ dZ_l             (n_{l-1}, n_l)
    db_l = (1/m) Σ_i dZ_l                    (n_l,)
    dA_{l-1} = dZ_l @ W_lᵀ                   (m, n_{l-1})
    dZ_{l-1} = dA_{l-1} ∘ g'_{l-1}(Z_{l-1})

The column layout (``layout="columns"``, examples as columns) is the same
math transposed: ``X : (k, m)``, ``W_l : (n_l, n_{l-1})``, ``b_l : (n_l, 1)``,
``Z_l = W_l A_{l-1} + b_l``, ``dW_l = (1/m) dZ_l A_{l-1}ᵀ``. It is not a second
copy of the equations: the parameters, inputs and cache are handed to the
row-layout code as transposed views, and the results handed back the same way.

Everything here goes through the namespace ``self.xp``; this module imports
neither NumPy nor CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass

from .activations import Activation, get_activation
from .backend import as_backend_array, backend_name, device_of, get_xp, supports_out, to_numpy
from .flat import flat_views
from .heads import Head, get_head
from .init import INITS, default_init, initial_weights
from .losses import DEFAULT_LOSS, LOSSES, Loss, get_loss
from .validation import (
    check_choice,
    check_dtype_name,
    check_inputs,
    check_layer_sizes,
    check_sample_weight,
    check_seed,
    check_targets,
)

__all__ = ["MLP", "LayerRules"]

LAYOUTS = ("rows", "columns")


@dataclass(frozen=True)
class LayerRules:
    """What a training step needs to know of a net besides its weights (read-only).

    Attributes
    ----------
    sizes : tuple of int
        ``(k, n_1, ..., n_L)``.
    hidden : Activation
        ``g`` of layers ``1..L-1`` (forward, derivative and the in-place
        overrides a fast step may use, :mod:`xprop.activations`).
    output : Activation
        ``g_L``.
    loss : Loss
    fused : bool
        ``dZ_L = A_L − Y`` (softmax + cross-entropy, sigmoid + BCE).
    softmax_ce : bool
        The output is softmax with cross-entropy.
    head : Head
        The output kind (:mod:`xprop.heads`).
    """

    sizes: tuple
    hidden: Activation
    output: Activation
    loss: Loss
    fused: bool
    softmax_ce: bool
    head: Head


class MLP:
    """A fully connected network with hand-written forward and backward passes.

    Parameters
    ----------
    layer_sizes : list of int
        ``[k, n_1, ..., n_L]``: input features, then units per layer.
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "identity"}
        Hidden-layer activation g.
    output : {"softmax", "sigmoid", "identity", "tanh", "relu", "leaky_relu"}
        Output activation g_L.
    loss : {"cross_entropy", "binary_cross_entropy", "mse"} or None
        None picks the natural loss of the output: softmax → cross_entropy,
        sigmoid → binary_cross_entropy, anything else → mse. cross_entropy
        needs a softmax output and binary_cross_entropy a sigmoid output.
    backend : {"auto", "numpy", "cupy"} or array namespace
    dtype : {"float32", "float64"}
        Parameters, activations and gradients all keep this dtype.
    seed : int or None
        Seed of the host RNG that draws the initial weights.
    init : {"he", "glorot", "small"} or None
        None picks He for the ReLU family, Glorot otherwise. Biases start at 0.
    layout : {"rows", "columns"}
        Examples as rows (``X : (m, k)``) or as columns (``X : (k, m)``).

    Attributes
    ----------
    params : dict of str to array
        ``"W1", "b1", ..., "WL", "bL"`` on the backend, shaped for the layout.
    xp : module
        The array namespace the math runs against.
    """

    def __init__(self, layer_sizes, activation="relu", output="softmax", loss=None,
                 backend="auto", dtype="float32", seed=0, init=None, layout="rows"):
        self.sizes = check_layer_sizes(layer_sizes)
        self.activation = activation
        self._g = get_activation(activation, argument="activation")
        self.output = output
        self._g_out = get_activation(output, argument="output", hidden=False)
        if loss is None:
            loss = DEFAULT_LOSS.get(output, "mse")
        self._loss = get_loss(loss)
        self.loss = loss
        need = self._loss.fused_output
        if need is not None and output != need:
            raise ValueError(
                f"loss {loss!r} needs output={need!r}; got output={output!r} "
                f"(use output={need!r}, or loss='mse' for other outputs)"
            )
        # dZ_L = A_L − Y for softmax + CE and sigmoid + BCE; the generic rule otherwise.
        self.fused = need is not None
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.init = default_init(activation) if init is None else check_choice("init", init, tuple(INITS))
        self.seed = check_seed(seed)
        self.xp = get_xp(backend)
        self.backend = backend_name(self.xp)
        self.dtype_name = check_dtype_name(dtype)
        self.dtype = getattr(self.xp, self.dtype_name)
        try:
            self._set_params(initial_weights(self.sizes, self.init, self.seed))
        except MemoryError as exc:  # NumPy's and CuPy's out-of-memory errors alike
            n = sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))
            itemsize = 4 if self.dtype_name == "float32" else 8
            raise MemoryError(
                f"layer_sizes {list(self.sizes)} need {n:,} parameters ({n * itemsize / 2**30:.1f} GiB "
                f"in {self.dtype_name}, drawn in float64 first) and they cannot be allocated on "
                f"{self.backend} ({exc}); use smaller layers") from None

    # ------------------------------------------------------------------ setup
    def _set_params(self, host_layers):
        """Move host ``(W, b)`` pairs (row layout) onto the backend, in the layout."""
        xp = self.xp
        host = {}
        for l, (W, b) in enumerate(host_layers, start=1):
            if self.layout == "columns":
                W, b = W.T, b.reshape(-1, 1)
            host[f"W{l}"] = W.astype(self.dtype_name, order="C")
            host[f"b{l}"] = b.astype(self.dtype_name, order="C")
        if supports_out(xp):  # one buffer, one view per parameter (see flat.py)
            self.params = flat_views(xp, {k: v.shape for k, v in host.items()}, self.dtype)
            for name, value in host.items():
                self.params[name][...] = xp.asarray(value)
        else:
            self.params = {name: xp.asarray(value) for name, value in host.items()}
        self.device = device_of(self.params["W1"])

    @property
    def head(self) -> Head:
        """What the output kind means: targets, predictions, accuracy (:mod:`xprop.heads`)."""
        return get_head(self.output)

    @property
    def L(self) -> int:
        """Number of layers with weights."""
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    def shape_text(self, what: str) -> str:
        """The expected shape of ``X`` or ``Y`` in words, for error messages."""
        k, n_out = self.sizes[0], self.sizes[-1]
        if what == "X":
            return f"(m, {k})" if self.layout == "rows" else f"({k}, m)"
        return f"(m, {n_out})" if self.layout == "rows" else f"({n_out}, m)"

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.sizes))
        return (f"MLP({sizes}, activation={self.activation!r}, output={self.output!r}, "
                f"loss={self.loss!r}, backend={self.backend!r}, dtype={self.dtype_name!r}, "
                f"layout={self.layout!r})")

    def __getstate__(self):
        """Pickle as host arrays and the backend's name (modules do not pickle)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("xp", "dtype", "params", "device")}
        state["host_params"] = {k: to_numpy(v).copy() for k, v in self.params.items()}
        return state

    def __setstate__(self, state):
        host = state.pop("host_params")
        self.__dict__.update(state)
        self.xp = get_xp(self.backend)
        self.dtype = getattr(self.xp, self.dtype_name)
        layers = [(host[f"W{l}"], host[f"b{l}"]) for l in range(1, len(self.sizes))]
        if self.layout == "columns":
            layers = [(W.T, b.reshape(-1)) for W, b in layers]
        self._set_params(layers)

    def to(self, backend=None, *, dtype=None) -> "MLP":
        """A copy of this net with the same weights on another backend or dtype.

        The original is left as it is. ``net.to("cupy")``, ``net.to("numpy")``,
        ``net.to(dtype="float64")``.
        """
        new = object.__new__(MLP)
        new.__dict__.update(self.__dict__)
        new.xp = self.xp if backend is None else get_xp(backend)
        new.backend = backend_name(new.xp)
        new.dtype_name = self.dtype_name if dtype is None else check_dtype_name(dtype)
        new.dtype = getattr(new.xp, new.dtype_name)
        new._set_params(self.host_layers())
        return new

    def host_layers(self):
        """Host float64 copies of ``(W_l, b_l)`` in the row layout."""
        layers = []
        for l in range(1, self.L + 1):
            W = to_numpy(self.params[f"W{l}"]).astype("float64")
            b = to_numpy(self.params[f"b{l}"]).astype("float64")
            if self.layout == "columns":
                W, b = W.T, b.reshape(-1)
            layers.append((W, b))
        return layers

    def set_params(self, params) -> None:
        """Copy ``params[name]`` (any backend) into every parameter, in place.

        Shapes must match this net's layout; all names are checked before any
        parameter is written, so a failed call leaves the net unchanged.
        """
        xp, new = self.xp, {}
        for name, p in self.params.items():
            if name not in params:
                raise ValueError(f"params lacks {name!r}; expected keys {list(self.params)}")
            a = as_backend_array(params[name], xp, name=f"params[{name!r}]", dtype=self.dtype,
                                 device=self.device)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"params[{name!r}] must have shape {tuple(p.shape)}; got {tuple(a.shape)}")
            new[name] = a
        for name, a in new.items():
            self.params[name][...] = a

    def save(self, path, metadata=None):
        """Write the net to a ``.npz`` model file (see :func:`xprop.load`)."""
        from .io import save  # noqa: PLC0415

        return save(self, path, metadata)

    # ------------------------------------------------------ row-layout math
    # What training steps and checks build on: the same equations on row-layout
    # arrays (``X : (m, k)``), whatever the net's layout.
    @property
    def layers(self) -> LayerRules:
        """The rules of every layer, read-only (:class:`LayerRules`)."""
        return LayerRules(tuple(self.sizes), self._g, self._g_out, self._loss, self.fused,
                          self.output == "softmax" and self.loss == "cross_entropy", self.head)

    def row_params(self, l: int):
        """``(W_l, b_l)`` as the row-layout math sees them (views, no copies)."""
        W, b = self.params[f"W{l}"], self.params[f"b{l}"]
        if self.layout == "columns":
            return W.T, b.T  # (n_{l-1}, n_l), (1, n_l)
        return W, b

    def forward_rows(self, X):
        """Forward pass on row-layout ``X : (m, k)``; returns ``A_L`` and the cache."""
        xp = self.xp
        cache = {"A0": X}
        A = X
        for l in range(1, self.L + 1):
            W, b = self.row_params(l)
            g = self._g_out if l == self.L else self._g
            Z = A @ W + b                      # Z_l = A_{l-1} W_l + b_l
            A = g.forward(xp, Z)               # A_l = g_l(Z_l)
            cache[f"Z{l}"] = Z
            cache[f"A{l}"] = A
        return A, cache

    def output_delta(self, cache, Y):
        """``dZ_L``: ``A_L − Y`` for the fused pairs, else ``dA_L ∘ g_L'(Z_L)``."""
        xp, L = self.xp, self.L
        Z, A = cache[f"Z{L}"], cache[f"A{L}"]
        if self.fused:
            return A - Y                                   # dZ_L = A_L − Y
        dA = self._loss.grad(xp, Z, A, Y)                  # dA_L = ∂L/∂A_L
        return self._g_out.backward(xp, dA, Z, A)          # dZ_L = dA_L ∘ g_L'(Z_L)

    def backward_rows(self, cache, Y, sample_weight=None):
        """Backward pass from a row-layout cache and targets ``Y : (m, n_L)``.

        With ``sample_weight : (m,)`` the cost is the weighted mean
        ``J = Σ_i w_i L_i / Σ_i w_i``: ``dZ_L`` is scaled row by row by ``w_i``
        and ``Σ_i w_i`` takes the place of ``m`` below.
        """
        xp = self.xp
        m = Y.shape[0]
        dZ = self.output_delta(cache, Y)
        if sample_weight is not None:
            dZ = dZ * xp.reshape(sample_weight, (-1, 1))  # dZ_L,i = w_i (∂L_i/∂Z_L,i)
            m = xp.sum(sample_weight)
        grads = {}
        for l in range(self.L, 0, -1):
            W, b = self.row_params(l)
            A_prev = cache[f"A{l - 1}"]
            grads[f"dW{l}"] = (A_prev.T @ dZ) / m          # dW_l = (1/m) A_{l-1}ᵀ dZ_l
            grads[f"db{l}"] = xp.sum(dZ, axis=0) / m       # db_l = (1/m) Σ_i dZ_l
            if l > 1:
                dA = dZ @ W.T                              # dA_{l-1} = dZ_l W_lᵀ
                Z_prev = cache[f"Z{l - 1}"]
                dZ = self._g.backward(xp, dA, Z_prev, A_prev)  # dZ_{l-1} = dA_{l-1} ∘ g'(Z_{l-1})
        return grads

    def cost_rows(self, cache, Y):
        """``J`` (0-d array) from a row-layout cache and targets ``Y : (m, n_L)``."""
        L = self.L
        return self._loss.value(self.xp, cache[f"Z{L}"], cache[f"A{L}"], Y)

    # ---------------------------------------------------- layout at the edges
    def _cache_to_layout(self, cache):
        if self.layout == "columns":
            return {key: value.T for key, value in cache.items()}
        return cache

    def _cache_from_layout(self, cache):
        expected = ["A0"] + [f"{s}{l}" for l in range(1, self.L + 1) for s in ("Z", "A")]
        missing = [key for key in expected if key not in cache]
        if missing:
            raise ValueError(
                f"cache must be the dict returned by forward() with keys {expected}; missing {missing}"
            )
        if self.layout == "columns":
            return {key: cache[key].T for key in expected}
        return cache

    def grads_to_layout(self, grads):
        """Row-layout gradients (``dW_l : (n_{l-1}, n_l)``) shaped like this net's params."""
        if self.layout == "columns":
            xp = self.xp
            return {key: (value.T if key.startswith("dW") else xp.reshape(value, (-1, 1)))
                    for key, value in grads.items()}
        return grads

    # ------------------------------------------------------------- public API
    def forward(self, X):
        """Forward pass.

        Parameters
        ----------
        X : array, ``(m, k)`` (rows) or ``(k, m)`` (columns)

        Returns
        -------
        out : array
            ``A_L``, ``(m, n_L)`` or ``(n_L, m)``.
        cache : dict
            ``"A0"`` (= X), ``"Z1"``, ``"A1"``, ..., ``"ZL"``, ``"AL"`` in the
            layout of X, kept for :meth:`backward`.
        """
        A, cache = self.forward_rows(check_inputs(self, X))
        cache = self._cache_to_layout(cache)
        return cache[f"A{self.L}"], cache

    def backward(self, cache, Y, sample_weight=None):
        """Backward pass: gradients of J with respect to every parameter.

        Parameters
        ----------
        cache : dict
            As returned by :meth:`forward`.
        Y : array
            Targets for the same examples (see :func:`xprop.validation.check_targets`).
        sample_weight : array ``(m,)``, optional
            Weights of the examples: the gradients are those of the weighted
            mean ``J = Σ_i w_i L_i / Σ_i w_i`` (None: every weight 1).

        Returns
        -------
        dict
            ``"dW1", "db1", ..., "dWL", "dbL"``, each shaped like its parameter,
            averaged over the batch.
        """
        if not isinstance(cache, dict):
            raise TypeError(f"cache must be the dict returned by forward(); got {type(cache).__name__}")
        rows = self._cache_from_layout(cache)
        m = rows["A0"].shape[0]
        Y = check_targets(self, Y, m)
        if sample_weight is None:
            return self.grads_to_layout(self.backward_rows(rows, Y))
        sample_weight = check_sample_weight(self, sample_weight, m)
        return self.grads_to_layout(self.backward_rows(rows, Y, sample_weight))

    def cost(self, X, Y) -> float:
        """The cost ``J = (1/m) Σ_i L_i`` on ``(X, Y)``."""
        X = check_inputs(self, X)
        Y = check_targets(self, Y, X.shape[0])
        _, cache = self.forward_rows(X)
        return float(self.cost_rows(cache, Y))

    def predict(self, X):
        """Predictions: class indices ``(m,)`` for softmax, 0/1 for sigmoid,
        the output values for any other output (layout-shaped like ``A_L``)."""
        A, _ = self.forward_rows(check_inputs(self, X))
        P = self.head.predict(self.xp, A)
        return P.T if self.layout == "columns" and P.ndim == 2 else P
