"""The training step at the floor: the same equations, preallocated buffers.

``TrainStep`` is what ``fit`` runs on NumPy and CuPy. It computes exactly the
forward and backward pass of :class:`xprop.network.MLP` (``_forward_rows`` and
``_backward_rows`` are its plain reference, and a test holds them equal), but
writes every intermediate into buffers allocated once per batch size and
reused across steps (``out=``), so a step in steady state allocates nothing
large. The rearrangements, all exact in real arithmetic:

- ``1/m`` is folded once into the output delta: every ``dZ_l`` below it is
  linear in ``dZ_L``, so ``A_{l-1}ᵀ (dZ_l / m)`` is ``(1/m) A_{l-1}ᵀ dZ_l``
  without scaling each (large) ``dW_l``.
- ``db_l = (1/m) Σ_i dZ_l`` is the matrix-vector product ``1ᵀ (dZ_l / m)``.
- activation derivatives are applied in place to the ``dA`` buffer, which
  then holds ``dZ``. The hidden rules read ``g'`` from ``A`` alone
  (:mod:`xprop.activations`), so ``dA_{l-1}`` is written over ``Z_{l-1}``,
  which nothing reads after the forward pass: a step holds the forward
  cache and no more.
- softmax + cross-entropy share their row maxima and sums: with ``M`` the row
  max and ``S = Σ_j e^{Z − M}``,
  ``J = (1/m) Σ_i (log S_i − Σ_j Y_ij (Z_ij − M_i))`` for rows of ``Y`` that
  sum to 1, and ``Z − M`` is the array the softmax exponentiates anyway.

``out=`` is not in the array API standard, so this class is used only for
NumPy and CuPy; other namespaces train through the plain reference.
"""

from __future__ import annotations

from . import kernels
from .backend import backend_name
from .flat import flat_views

__all__ = ["TrainStep", "supports_fast_path"]


def supports_fast_path(xp) -> bool:
    """Whether ``xp`` has the ``out=`` arguments the fast step needs."""
    return backend_name(xp) in ("numpy", "cupy")


class _Buffers:
    """Per-batch-size work arrays of one net (row layout).

    Attributes
    ----------
    Z : list, ``Z[l] : (m, n_l)``
        ``Z_l`` in the forward pass. For a hidden layer whose activation has a
        ``backward_inplace`` rule, the backward pass then writes ``dA_l`` into
        it and turns that into ``dZ_l`` (``dA`` is then the same list).
    A : list, ``A[l] : (m, n_l)``
    dA : list
        ``Z`` itself, or separate ``(m, n_l)`` buffers for an activation that
        needs ``Z`` in its derivative.
    dZ_L : (m, n_L)
        The output delta (already divided by m).
    tmp : list
        Per hidden layer, an ``(m, n_l)`` view of one shared scratch buffer, for
        the rules that need one (None otherwise).
    zero : list, ``zero[l] : (n_l,)``
        Zeros, for ``forward_into``.
    dW, db, grads
        The gradients: views of one flat buffer in the params' order (rows
        layout), and the dict the caller sees in the net's layout.
    """

    def __init__(self, net, m):
        xp, dt, sizes, L, g = net.xp, net.dtype, net.sizes, net.L, net._g
        empty = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
        hidden = sizes[1:-1]
        self.Z = [None] + [empty(m, n) for n in sizes[1:]]
        self.A = [None] + [empty(m, n) for n in sizes[1:]]
        # dA_l over Z_l when the rule reads A only; the plain rule needs Z kept.
        self.dA = self.Z if g.backward_inplace else [None] + [empty(m, n) for n in sizes[1:]]
        self.dZ_L = empty(m, sizes[-1])
        self.tmp = [None] * (L + 1)
        if g.backward_inplace and g.scratch and hidden:
            shared = xp.empty((m * max(hidden),), dtype=dt)   # one scratch for every hidden layer
            for l, n in enumerate(hidden, start=1):
                self.tmp[l] = xp.reshape(shared[:m * n], (m, n))
        self.zero = [None] + [xp.zeros((n,), dtype=dt) for n in sizes[1:]]
        if net.layout == "rows":  # grads are views of one buffer, in the params' order
            shapes = {}
            for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
                shapes[f"dW{l}"], shapes[f"db{l}"] = (a, b), (b,)
            flat = flat_views(xp, shapes, dt)
            self.dW = [None] + [flat[f"dW{l}"] for l in range(1, L + 1)]
            self.db = [None] + [flat[f"db{l}"] for l in range(1, L + 1)]
        else:
            self.dW = [None] + [empty(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
            self.db = [None] + [empty(n) for n in sizes[1:]]
        self.row_max = empty(m, 1)
        self.row_sum = empty(m)
        self.row_sum_col = xp.reshape(self.row_sum, (m, 1))   # the same sums, as a column
        self.ones = xp.ones((m,), dtype=dt)   # Σ_i as a matrix-vector product
        self.ones_out = xp.ones((sizes[-1],), dtype=dt)   # Σ_j, the same way
        # The grads as the caller's layout sees them: views of the buffers.
        if net.layout == "rows":
            self.grads = flat
        else:
            self.grads = {}
            for l in range(1, L + 1):
                self.grads[f"dW{l}"] = self.dW[l].T
                self.grads[f"db{l}"] = xp.reshape(self.db[l], (-1, 1))


class TrainStep:
    """Forward, cost and backward of one mini-batch into reused buffers.

    Parameters
    ----------
    net : MLP
        On NumPy or CuPy.

    Calling ``step(X, Y)`` with row-layout ``X : (m, k)`` and targets
    ``Y : (m, n_L)`` returns ``(J, A_L, grads)``: the cost as a 0-d device
    array (no host sync), the output, and the gradients shaped like
    ``net.params``. ``step(X, Y, scale=s)`` returns ``s`` times the gradients
    instead, at no cost: ``s`` joins the ``1/m`` folded into ``dZ_L``
    (``fit`` passes plain SGD's learning rate, see ``Optimizer.grad_scale``). The returned arrays are buffers, overwritten by the next
    call with the same ``m``; so are the hidden layers' ``Z`` and ``A``, which
    the backward pass uses as work space.
    """

    def __init__(self, net):
        if not supports_fast_path(net.xp):
            raise TypeError(f"TrainStep needs NumPy or CuPy; the net runs on {net.backend}")
        self.net = net
        self._buffers = {}
        self._softmax_ce = net.output == "softmax" and net.loss == "cross_entropy"
        # On CuPy the elementwise chains run as fused kernels (xprop.kernels).
        self.use_kernels = backend_name(net.xp) == "cupy"
        self._layers_of = (None, None, None)   # (params dict, its flat buffer, [(W_l, b_l)])

    def buffers(self, m) -> _Buffers:
        if m not in self._buffers:
            self._buffers[m] = _Buffers(self.net, m)
        return self._buffers[m]

    def _layers(self):
        """``[None, (W_1, b_1), ...]`` as row-layout views, rebuilt when the params change.

        ``net.params`` is a FlatDict whose ``flat`` becomes None when a key is
        replaced (and a new dict when the net is rebuilt), so the views are
        reused exactly as long as they are the net's parameters.
        """
        net = self.net
        params = net.params
        flat = getattr(params, "flat", None)
        seen_params, seen_flat, layers = self._layers_of
        if params is seen_params and flat is not None and flat is seen_flat:
            return layers
        layers = [None] + [net._layer_params(l) for l in range(1, net.L + 1)]
        self._layers_of = (params, flat, layers)
        return layers

    def __call__(self, X, Y, scale=1.0):
        net, xp, L = self.net, self.net.xp, self.net.L
        m = X.shape[0]
        s = scale / m                                        # the 1/m of dW and db (and any scale)
        buf = self._buffers.get(m) or self.buffers(m)
        g = net._g
        layers = self._layers()

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

        # ---- output layer, cost and dZ_L / m
        dZ = buf.dZ_L
        if self._softmax_ce:
            AL = buf.A[L]
            M, S, S_col = buf.row_max, buf.row_sum, buf.row_sum_col
            Z.max(axis=1, keepdims=True, out=M)              # (methods: no dispatch layer)
            xp.subtract(Z, M, out=AL)                        # Z − M ≤ 0: exp cannot overflow
            YZ = xp.vdot(Y, AL)                              # Σ_ij Y_ij (Z_ij − M_i)
            xp.exp(AL, out=AL)
            xp.matmul(AL, buf.ones_out, out=S)               # S_i = Σ_j e^{Z_ij − M_i}
            AL /= S_col                                      # A_L = softmax(Z_L)
            xp.log(S, out=S)                                 # S ≥ 1 (the max term is e⁰): no guard needed
            J = (xp.vdot(buf.ones, S) - YZ) / m              # (1/m) Σ_i −log A_{i,y_i}
            if self.use_kernels:
                dZ = kernels.output_delta(AL, Y, s)         # dZ_L / m = (A_L − Y) / m
            else:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
                dZ *= s                                      # the 1/m of dW and db, once
        else:
            AL = net._g_out.forward(xp, Z)
            J = net._loss.value(xp, Z, AL, Y)
            if net.fused:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
            else:
                dA_L = net._loss.grad(xp, Z, AL, Y)
                dZ[...] = net._g_out.backward(xp, dA_L, Z, AL)   # dZ_L = dA_L ∘ g_L'(Z_L)
            dZ *= s                                          # the 1/m of dW and db, once

        # ---- backward
        fused = kernels.BACKWARD.get(net.activation) if self.use_kernels else None
        for l in range(L, 0, -1):
            W, _ = layers[l]
            A_prev = X if l == 1 else buf.A[l - 1]
            xp.matmul(A_prev.T, dZ, out=buf.dW[l])           # dW_l = (1/m) A_{l-1}ᵀ dZ_l
            xp.matmul(buf.ones, dZ, out=buf.db[l])           # db_l = (1/m) Σ_i dZ_l
            if l > 1:
                dA = xp.matmul(dZ, W.T, out=buf.dA[l - 1])   # dA_{l-1} = dZ_l W_lᵀ
                if fused is not None:                        # dZ_{l-1} = dA_{l-1} ∘ g'(Z_{l-1})
                    dZ = fused(dA, A_prev)
                elif g.backward_inplace:
                    dZ = g.backward_inplace(xp, dA, A_prev, buf.tmp[l - 1])
                else:
                    dZ = g.backward(xp, dA, buf.Z[l - 1], A_prev)
        return J, AL, buf.grads
