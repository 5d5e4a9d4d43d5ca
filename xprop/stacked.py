"""K nets of one architecture as one stack: the stacked training step and update.

Every parameter of ``K`` nets with the same layer sizes gets a leading model
axis, and one step trains all of them with batched matrix products
(``xp.matmul`` over the leading axis: one GEMM per model inside one call on
NumPy, one strided-batched GEMM on CuPy)::

    A0 = X                                 (K, m, k)    model i's batch in X[i]
    Z_l = A_{l-1} @ W_l + b_l              (K, m, n_l)  W_l : (K, n_{l-1}, n_l), b_l : (K, 1, n_l)
    A_l = g_l(Z_l)
    dZ_L = (A_L − Y) · s                   s : (K, 1, 1), model i's 1/m_i (and SGD's lr)
    dW_l = A_{l-1}ᵀ @ dZ_l                 (K, n_{l-1}, n_l)
    db_l = 1ᵀ @ dZ_l                       (K, n_l)
    dA_{l-1} = dZ_l @ W_lᵀ
    dZ_{l-1} = dA_{l-1} ∘ g'(Z_{l-1})

the equations of :class:`xprop.fast.TrainStep`, operation for operation, with
a model axis in front: each model's slice of every product and every
elementwise operation is the very operation ``TrainStep`` performs on that
model alone (NumPy's batched ``matmul`` calls the same BLAS routine per slice),
so on NumPy a stacked step gives each model the bits its own step gives.

Models whose batches have different sizes (the last batch of an epoch, k-fold
training sets of different sizes) share one padded batch of ``m`` rows: the
rows a model does not have are filled with real examples (finite values) and
masked. ``s`` becomes ``(K, m, 1)``, holding model i's ``1/m_i`` on its rows
and 0 on its padding, so the padding's output delta, and with it every
gradient term it would add, is exactly 0; the cost's row sums take the same
mask. A model without any batch left in a step is not in the step at all
(:class:`StackedStep` works on the first ``k ≤ K`` models, which ``fit_many``
orders by their number of steps).

The parameters of the whole stack are one ``(K, P)`` buffer (row ``i``: model
i's parameters in the order and layout of ``net.params.flat``) and so are the
gradients, so :class:`xprop.stacked_optim.StackedOptimizer` updates every model with a handful of
whole-buffer operations, each model's hyperparameters a ``(K, 1)`` column.

``out=`` is not in the array API standard: :class:`StackedStep` and the
buffered update run on NumPy and CuPy; :class:`ReferenceStackedStep` and the
plain update are the reference, for any namespace, and a test holds them equal.
"""

from __future__ import annotations

import math

from . import kernels
from .backend import backend_name, take_rows
from .fast import supports_fast_path
from .flat import FlatDict

__all__ = ["Stack", "StackedStep", "ReferenceStackedStep", "ARCHITECTURE_FIELDS", "gather_rows"]

# What nets must share to be stacked (MLP attributes), in the order they are compared.
ARCHITECTURE_FIELDS = ("sizes", "activation", "output", "loss", "dtype_name", "backend", "layout")


def _swap(xp, a):
    """The last two axes swapped (a view)."""
    mT = getattr(a, "mT", None)
    return mT if mT is not None else xp.swapaxes(a, -1, -2)


class Stack:
    """The parameters of K nets of one architecture, stacked.

    Parameters
    ----------
    nets : list of MLP
        Same sizes, activation, output, loss, dtype, backend and layout
        (checked by the caller).

    Attributes
    ----------
    params : dict of str to array
        ``"W1", "b1", ...``, each ``(K, *net.params[name].shape)`` in the
        nets' layout. On NumPy and CuPy a :class:`~xprop.flat.FlatDict` of
        views of ``flat``.
    flat : (K, P) array or None
        Row ``i`` holds model i's parameters as ``net.params.flat`` does.
    """

    def __init__(self, nets):
        net = nets[0]
        self.net, self.xp, self.K, self.L = net, net.xp, len(nets), net.L
        self.dtype, self.layout = net.dtype, net.layout
        self.shapes = {name: tuple(p.shape) for name, p in net.params.items()}
        self.P = net.n_params
        self.fast = supports_fast_path(self.xp)
        xp = self.xp
        if self.fast:
            self.flat = xp.empty((self.K, self.P), dtype=self.dtype)
            self.params = self.views(self.flat)
        else:
            self.flat = None
            self.params = {name: xp.stack([n.params[name] for n in nets]) for name in self.shapes}
        for i, n in enumerate(nets):
            self.load(i, n)

    def views(self, flat):
        """A FlatDict of ``(K, *shape)`` views of a ``(K, P)`` buffer, in the params' order."""
        xp, views, offset = self.xp, {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            views[name] = xp.reshape(flat[:, offset:offset + n], (flat.shape[0],) + shape)
            offset += n
        return FlatDict(flat, views)

    def load(self, i, net):
        """Row ``i`` of the stack := ``net``'s parameters."""
        if self.fast:
            src = getattr(net.params, "flat", None)
            if src is not None:
                self.flat[i] = src
                return
            for name, view in self.params.items():
                view[i] = net.params[name]
            return
        for name in self.shapes:
            self.params[name][i, ...] = net.params[name]

    def store(self, i, net, params=None):
        """``net``'s parameters := row ``i`` of the stack, or of ``params`` (stacked like it).

        In place, into the net's own arrays (a copy on namespaces without ``out=``).
        """
        params = self.params if params is None else params
        dst, src = getattr(net.params, "flat", None), getattr(params, "flat", None)
        if self.fast and dst is not None and src is not None:
            dst[...] = src[i]
            return
        xp = self.xp
        for name in self.shapes:
            if self.fast:
                net.params[name][...] = params[name][i]
            else:
                net.params[name] = xp.asarray(params[name][i, ...], copy=True)

    def row(self, i) -> dict:
        """Model i's parameters (copies), keyed like ``net.params``."""
        xp = self.xp
        return {name: xp.asarray(p[i, ...], copy=True) for name, p in self.params.items()}

    def layers(self, params, k=None):
        """``[None, (W_1, b_1), ...]`` of the first ``k`` models as row-layout views.

        ``W_l : (k, n_{l-1}, n_l)``, ``b_l : (k, 1, n_l)``.
        """
        xp, out = self.xp, [None]
        for l in range(1, self.L + 1):
            W, b = params[f"W{l}"], params[f"b{l}"]
            if k is not None:
                W, b = W[:k, ...], b[:k, ...]
            if self.layout == "columns":              # W_l : (n_l, n_{l-1}), b_l : (n_l, 1)
                out.append((_swap(xp, W), _swap(xp, b)))
            else:                                     # W_l : (n_{l-1}, n_l), b_l : (n_l,)
                out.append((W, xp.reshape(b, (b.shape[0], 1, b.shape[1]))))
        return out


# ------------------------------------------------------------------ the step
class _Storage:
    """Flat work arrays for up to ``K`` models × ``capacity`` rows (cf. xprop.fast._Storage)."""

    def __init__(self, net, K, capacity):
        xp, dt, sizes, g = net.xp, net.dtype, net.sizes, net.layers.hidden
        hidden = sizes[1:-1]
        flat = lambda n: xp.empty((K * capacity * n,), dtype=dt)  # noqa: E731
        self.K, self.capacity = K, capacity
        self.Z = [None] + [flat(n) for n in sizes[1:]]
        self.A = [None] + [flat(n) if g.forward_into else None for n in hidden] + [flat(sizes[-1])]
        self.dA = None if g.backward_inplace else [None] + [flat(n) for n in sizes[1:]]
        self.dZ_L = flat(sizes[-1])
        self.tmp = flat(max(hidden)) if (g.backward_inplace and g.scratch and hidden) else None
        self.row_max, self.row_sum = flat(1), flat(1)
        self.ones = xp.ones((capacity,), dtype=dt)            # Σ_i as a matrix-vector product
        self.ones_row = xp.ones((1, 1, capacity), dtype=dt)   # the same, for the cost's row sums
        self.ones_out = xp.ones((sizes[-1],), dtype=dt)       # Σ_j
        self.zero = [None] + [xp.zeros((n,), dtype=dt) for n in sizes[1:]]


class _Buffers:
    """Work arrays of ``k`` models × ``m`` rows: ``(k, m, n_l)`` views of a :class:`_Storage`."""

    def __init__(self, net, k, m, storage):
        xp, sizes, L = net.xp, net.sizes, net.L
        part = lambda a, n: None if a is None else xp.reshape(a[:k * m * n], (k, m, n))  # noqa: E731
        self.Z = [None] + [part(storage.Z[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.A = [None] + [part(storage.A[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.dA = self.Z if storage.dA is None else [None] + [
            part(storage.dA[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.dZ_L = part(storage.dZ_L, sizes[-1])
        self.tmp = [None] * (L + 1)
        if storage.tmp is not None:
            for l, n in enumerate(sizes[1:-1], start=1):
                self.tmp[l] = part(storage.tmp, n)
        self.row_max = part(storage.row_max, 1)
        self.row_sum = xp.reshape(storage.row_sum[:k * m], (k, m))
        self.row_sum_col = part(storage.row_sum, 1)
        self.ones, self.ones_out, self.zero = storage.ones[:m], storage.ones_out, storage.zero
        self.ones_row = storage.ones_row[:, :, :m]


class StackedStep:
    """Forward, cost and backward of K models' batches into reused buffers.

    Parameters
    ----------
    stack : Stack
        On NumPy or CuPy.

    ``step(X, Y, s, counts, row_counts)`` with ``X : (k, m, k_in)`` (model i's batch
    in ``X[i]``, ``k ≤ K`` the first models of the stack), ``Y : (k, m, n_L)``,
    ``s : (k, 1, 1)`` or ``(k, m, 1)`` (each model's ``scale/m_i``; 0 on
    padding rows), ``counts : (k, 1, 1)`` (each model's ``m_i``, the cost's
    divisor) and ``row_counts`` (None, or for a padded batch the list of the
    ``m_i``: each model's sums then run over its own rows) returns ``(J, A_L, G)``: the costs ``(k,)`` (device), the outputs and the
    gradients' ``(k, P)`` buffer (the first ``k`` rows of :attr:`grads`),
    ``s`` times ``Σ_i`` of each model's terms: its mean gradient when
    ``s = 1/m_i``, ``lr`` times it when ``s = lr/m_i`` (plain SGD, as
    ``TrainStep(scale=lr)``). Padding rows may hold anything finite: their
    delta is multiplied by 0 and the sums of a padded batch (``row_counts``
    given) run over each model's own rows.

    Every returned array is a buffer, overwritten by the next call.
    """

    def __init__(self, stack):
        if not stack.fast:
            raise TypeError(f"StackedStep needs NumPy or CuPy; the nets run on {stack.net.backend}")
        self.stack, self.net, self.xp = stack, stack.net, stack.xp
        net, xp = self.net, self.xp
        self.rules = net.layers
        self._softmax_ce = self.rules.softmax_ce
        self.use_kernels = backend_name(xp) == "cupy"
        self._storage = None
        self._buffers = {}
        self.grads = stack.views(xp.empty((stack.K, stack.P), dtype=stack.dtype))
        self._grad_views = {}
        self._layer_views = {}

    def scratch(self):
        """The largest work array (1-D), free between one call and the next, or None."""
        if self._storage is None:
            return None
        return max((a for a in self._storage.Z[1:] if a is not None), key=lambda a: a.shape[0])

    def buffers(self, k, m) -> _Buffers:
        buf = self._buffers.get((k, m))
        if buf is None:
            if self._storage is None or m > self._storage.capacity:
                self._storage, self._buffers = _Storage(self.net, self.stack.K, m), {}
            buf = self._buffers[(k, m)] = _Buffers(self.net, k, m, self._storage)
        return buf

    def _layers(self, k):
        """Row-layout views of the first ``k`` models' parameters (made once per k)."""
        layers = self._layer_views.get(k)
        if layers is None:
            layers = self._layer_views[k] = self.stack.layers(self.stack.params, k)
        return layers

    def _gradient_views(self, k):
        """``(G, dW, db)`` of the first ``k`` models: ``dW[l] : (k, n_{l-1}, n_l)``, ``db[l] : (k, n_l)``."""
        views = self._grad_views.get(k)
        if views is None:
            xp, L, grads = self.xp, self.net.L, self.grads
            dW, db = [None], [None]
            for l in range(1, L + 1):
                W, b = grads[f"W{l}"][:k], grads[f"b{l}"][:k]
                if self.stack.layout == "columns":
                    dW.append(_swap(xp, W))
                    db.append(xp.reshape(b, (k, b.shape[1])))
                else:
                    dW.append(W)
                    db.append(b)
            views = self._grad_views[k] = (grads.flat[:k], dW, db)
        return views

    def __call__(self, X, Y, s, counts, row_counts=None):
        net, xp, L = self.net, self.xp, self.net.L
        k, m = X.shape[0], X.shape[1]
        buf = self._buffers.get((k, m)) or self.buffers(k, m)
        rules = self.rules
        g = rules.hidden
        layers = self._layers(k)
        G, dW, db = self._gradient_views(k)
        J, AL, Z = self._forward_cost(X, Y, buf, layers, counts, row_counts)

        # ---- output delta, times each model's s = scale_i / m_i (0 on padding rows)
        dZ = buf.dZ_L
        if self._softmax_ce or rules.fused:
            xp.subtract(AL, Y, out=dZ)                       # dZ_L = A_L − Y
            dZ *= s                                          # each model's s: a (k, 1, 1) column
        else:
            dA_L = rules.loss.grad(xp, Z, AL, Y)             # elementwise for every loss
            if net.output == "softmax":                      # the softmax Jacobian works row by row
                dZ[...] = xp.stack([rules.output.backward(xp, dA_L[i], Z[i], AL[i]) for i in range(k)])
            else:
                dZ[...] = rules.output.backward(xp, dA_L, Z, AL)   # dZ_L = dA_L ∘ g_L'(Z_L)
            dZ *= s

        # ---- backward
        fused = kernels.BACKWARD.get(net.activation) if self.use_kernels else None
        for l in range(L, 0, -1):
            W, _ = layers[l]
            A_prev = X if l == 1 else buf.A[l - 1]
            if row_counts is None:
                xp.matmul(_swap(xp, A_prev), dZ, out=dW[l])  # dW_l = A_{l-1}ᵀ dZ_l · s
                xp.matmul(buf.ones, dZ, out=db[l])           # db_l = Σ_i dZ_l · s
            else:   # a padded batch: each model's sums over its own rows, as its own step sums them
                for i, c in enumerate(row_counts):
                    xp.matmul(A_prev[i, :c].T, dZ[i, :c], out=dW[l][i])
                    xp.matmul(buf.ones[:c], dZ[i, :c], out=db[l][i])
            if l > 1:
                dA = xp.matmul(dZ, _swap(xp, W), out=buf.dA[l - 1])   # dA_{l-1} = dZ_l W_lᵀ
                if fused is not None:                        # dZ_{l-1} = dA_{l-1} ∘ g'(Z_{l-1})
                    fused(xp, dA, A_prev)                    # in place: one launch
                    dZ = dA
                elif g.backward_inplace:
                    dZ = g.backward_inplace(xp, dA, A_prev, buf.tmp[l - 1])
                else:
                    dZ = g.backward(xp, dA, buf.Z[l - 1], A_prev)
        return J, AL, G

    def cost(self, X, Y, counts, row_counts=None):
        """``(J, A_L)`` of K models' batches: forward pass and cost, into the same buffers."""
        k, m = X.shape[0], X.shape[1]
        buf = self._buffers.get((k, m)) or self.buffers(k, m)
        J, AL, _ = self._forward_cost(X, Y, buf, self._layers(k), counts, row_counts)
        return J, AL

    def _forward_cost(self, X, Y, buf, layers, counts, row_counts):
        net, xp, L = self.net, self.xp, self.net.L
        k, m, g = X.shape[0], X.shape[1], self.rules.hidden

        # ---- forward: Z_l = A_{l-1} W_l + b_l, A_l = g_l(Z_l)
        A = X
        for l in range(1, L):
            W, b = layers[l]
            Z = xp.matmul(A, W, out=buf.Z[l])
            Z += b
            if g.forward_into:
                A = g.forward_into(xp, Z, buf.A[l], buf.zero[l])
            else:
                A = buf.A[l] = g.forward(xp, Z)
        W, b = layers[L]
        Z = xp.matmul(A, W, out=buf.Z[L])
        Z += b

        # ---- output layer and cost
        if not self._softmax_ce:
            if net.output == "softmax":
                AL = xp.stack([self.rules.output.forward(xp, Z[i]) for i in range(k)])
            else:
                AL = self.rules.output.forward(xp, Z)
            return _loss_values(net, xp, Z, AL, Y, row_counts, k, m), AL, Z
        AL = buf.A[L]
        M, S, S_col = buf.row_max, buf.row_sum, buf.row_sum_col
        Z.max(axis=2, keepdims=True, out=M)
        xp.subtract(Z, M, out=AL)                            # Z − M ≤ 0: exp cannot overflow
        n = AL.shape[2]
        if row_counts is None:
            # Σ_ij Y_ij (Z_ij − M_i) per model, as a (1 × mn)·(mn × 1) product
            YZ = xp.matmul(xp.reshape(Y, (k, 1, m * n)), xp.reshape(AL, (k, m * n, 1)))
        else:                                                # a padded batch: each model's own rows
            YZ = [xp.vdot(Y[i, :c], AL[i, :c]) for i, c in enumerate(row_counts)]
        xp.exp(AL, out=AL)
        xp.matmul(AL, buf.ones_out, out=S)                   # S_i = Σ_j e^{Z_ij − M_i}
        AL /= S_col                                          # A_L = softmax(Z_L)
        xp.log(S, out=S)                                     # S ≥ 1: no guard needed
        if row_counts is None:
            J = (xp.matmul(buf.ones_row, S_col) - YZ) / counts   # (1/m_i) Σ_i −log A_{i,y_i}
            return xp.reshape(J, (k,)), AL, Z
        zero = xp.zeros((), dtype=AL.dtype)
        J = xp.stack([(xp.vdot(buf.ones[:c], S[i, :c]) - YZ[i]) / c if c else zero
                      for i, c in enumerate(row_counts)])
        return J, AL, Z


def _loss_values(net, xp, Z, AL, Y, row_counts, k, m):
    """Each model's cost over its real rows, with the loss registry's own function."""
    counts = row_counts if row_counts is not None else [m] * k
    zero = xp.zeros((), dtype=Z.dtype)                       # a model with no rows in this batch
    return xp.stack([net.layers.loss.value(xp, Z[i, :counts[i], :], AL[i, :counts[i], :], Y[i, :counts[i], :])
                     if counts[i] else zero for i in range(k)])


class ReferenceStackedStep:
    """The plain stacked step (any array-API namespace): the reference of :class:`StackedStep`.

    ``step(X, Y, s, counts, row_counts=None)`` as :class:`StackedStep`,
    returning ``(J, A_L, grads)`` with ``grads`` a dict ``"W1", "b1", ...`` of
    ``(k, *shape)`` arrays (no flat buffer); every array is new.
    """

    grads = None   # new gradient arrays every call

    def __init__(self, stack):
        self.stack, self.net, self.xp = stack, stack.net, stack.xp

    def _forward(self, X):
        net, xp, L, k = self.net, self.xp, self.stack.L, X.shape[0]
        rules = net.layers
        cache = {"A0": X}
        A = X
        for l, (W, b) in enumerate(self.stack.layers(self.stack.params, k)[1:], start=1):
            Z = xp.matmul(A, W) + b                          # Z_l = A_{l-1} W_l + b_l
            if l < L:
                A = rules.hidden.forward(xp, Z)
            elif net.output == "softmax":                    # rows of each model
                A = xp.stack([_softmax_rows(xp, Z[i, ...]) for i in range(k)])
            else:
                A = rules.output.forward(xp, Z)
            cache[f"Z{l}"], cache[f"A{l}"] = Z, A
        return cache

    def cost(self, X, Y, counts, row_counts=None):
        cache = self._forward(X)
        L = self.stack.L
        AL = cache[f"A{L}"]
        return _loss_values(self.net, self.xp, cache[f"Z{L}"], AL, Y, row_counts, X.shape[0], X.shape[1]), AL

    def __call__(self, X, Y, s, counts, row_counts=None):
        net, xp, stack, L, k = self.net, self.xp, self.stack, self.stack.L, X.shape[0]
        rules = net.layers
        cache = self._forward(X)
        Z, AL = cache[f"Z{L}"], cache[f"A{L}"]
        J = _loss_values(net, xp, Z, AL, Y, row_counts, k, X.shape[1])
        layers = stack.layers(stack.params, k)
        if rules.fused:
            dZ = AL - Y                                      # dZ_L = A_L − Y
        else:
            dA = rules.loss.grad(xp, Z, AL, Y)
            if net.output == "softmax":
                dZ = xp.stack([rules.output.backward(xp, dA[i, ...], Z[i, ...], AL[i, ...]) for i in range(k)])
            else:
                dZ = rules.output.backward(xp, dA, Z, AL)     # dZ_L = dA_L ∘ g_L'(Z_L)
        dZ = dZ * s
        grads = {}
        for l in range(L, 0, -1):
            A_prev = cache[f"A{l - 1}"]
            dW = xp.matmul(_swap(xp, A_prev), dZ)            # dW_l = A_{l-1}ᵀ dZ_l · s
            db = xp.sum(dZ, axis=1)                          # db_l = Σ_i dZ_l · s
            if stack.layout == "columns":
                dW, db = _swap(xp, dW), xp.reshape(db, (k, db.shape[1], 1))
            grads[f"W{l}"], grads[f"b{l}"] = dW, db
            if l > 1:
                dA = xp.matmul(dZ, _swap(xp, layers[l][0]))  # dA_{l-1} = dZ_l W_lᵀ
                dZ = rules.hidden.backward(xp, dA, cache[f"Z{l - 1}"], A_prev)
        return J, AL, {name: grads[name] for name in stack.shapes}


def _softmax_rows(xp, Z):
    E = xp.exp(Z - xp.max(Z, axis=1, keepdims=True))
    return E / xp.sum(E, axis=1, keepdims=True)


def gather_rows(xp, fast, src, idx, out):
    """``src[idx]`` into ``out`` (NumPy, CuPy) or as a new array."""
    if fast:
        return take_rows(xp, src, idx, out)
    return xp.take(src, idx, axis=0)
