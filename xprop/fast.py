"""The training step at the floor: the same equations, preallocated buffers.

``TrainStep`` is what ``fit`` runs on NumPy and CuPy. It computes exactly the
forward and backward pass of :class:`xprop.network.MLP` (``_forward_rows`` and
``_backward_rows`` are its plain reference, and a test holds them equal), but
writes every intermediate into buffers allocated once per batch size and
reused across steps (``out=``), so a step in steady state allocates nothing
large. Three rearrangements, all exact in real arithmetic:

- ``1/m`` is folded once into the output delta: every ``dZ_l`` below it is
  linear in ``dZ_L``, so ``A_{l-1}ᵀ (dZ_l / m)`` is ``(1/m) A_{l-1}ᵀ dZ_l``
  without scaling each (large) ``dW_l``.
- activation derivatives are applied in place to the ``dA`` buffer, which
  then holds ``dZ``;
- softmax + cross-entropy share their row maxima and sums: with ``M`` the row
  max and ``S = Σ_j e^{Z − M}``, ``J = (1/m)(Σ_i log S_i + Σ_i M_i − Σ Y∘Z)``
  for rows of ``Y`` that sum to 1.

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
    """Per-batch-size work arrays of one net (row layout)."""

    def __init__(self, net, m):
        xp, dt, sizes, L = net.xp, net.dtype, net.sizes, net.L
        empty = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
        self.Z = [None] + [empty(m, n) for n in sizes[1:]]
        self.A = [None] + [empty(m, n) for n in sizes[1:]]
        self.dA = [None] + [empty(m, n) for n in sizes[1:]]   # dA_l, turned into dZ_l in place
        scratch = net._g.scratch  # hidden layers' derivative work space, if the rule needs it
        self.tmp = [None] + [empty(m, n) if scratch else None for n in sizes[1:]]
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
        self.row_sum = empty(m, 1)
        self.ones = xp.ones((m,), dtype=dt)   # Σ_i as a matrix-vector product
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
    ``net.params``. The returned arrays are buffers, overwritten by the next
    call with the same ``m``.
    """

    def __init__(self, net):
        if not supports_fast_path(net.xp):
            raise TypeError(f"TrainStep needs NumPy or CuPy; the net runs on {net.backend}")
        self.net = net
        self._buffers = {}
        self._softmax_ce = net.output == "softmax" and net.loss == "cross_entropy"
        # On CuPy the elementwise chains run as fused kernels (xprop.kernels).
        self.use_kernels = backend_name(net.xp) == "cupy"

    def buffers(self, m) -> _Buffers:
        if m not in self._buffers:
            self._buffers[m] = _Buffers(self.net, m)
        return self._buffers[m]

    def __call__(self, X, Y):
        net, xp, L = self.net, self.net.xp, self.net.L
        m = X.shape[0]
        buf = self.buffers(m)
        g, g_out = net._g, net._g_out

        layers = [None] + [net._layer_params(l) for l in range(1, L + 1)]

        # ---- forward: Z_l = A_{l-1} W_l + b_l, A_l = g_l(Z_l)
        A = X
        for l in range(1, L):
            W, b = layers[l]
            Z = xp.matmul(A, W, out=buf.Z[l])
            Z += b
            A = g.forward_into(xp, Z, buf.A[l]) if g.forward_into else g.forward(xp, Z)
            buf.A[l] = A
        W, b = layers[L]
        Z = xp.matmul(A, W, out=buf.Z[L])
        Z += b

        # ---- output layer, cost and dZ_L / m
        dZ = buf.dA[L]
        if self._softmax_ce:
            AL = buf.A[L]
            M, S = buf.row_max, buf.row_sum
            Z.max(axis=1, keepdims=True, out=M)              # (methods: no dispatch layer)
            xp.subtract(Z, M, out=AL)
            xp.exp(AL, out=AL)
            AL.sum(axis=1, keepdims=True, out=S)
            AL /= S                                          # A_L = softmax(Z_L)
            xp.log(S, out=S)                                 # S ≥ 1 (the max term is e⁰): no guard needed
            S += M                                           # log Σ_j e^{Z_ij}, per row
            J = (xp.vdot(buf.ones, S) - xp.vdot(Y, Z)) / m
            if self.use_kernels:
                dZ = kernels.output_delta(AL, Y, 1.0 / m)   # dZ_L / m = (A_L − Y) / m
            else:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
                dZ *= 1.0 / m                                # the 1/m of dW and db, once
        else:
            AL = g_out.forward(xp, Z)
            J = net._loss.value(xp, Z, AL, Y)
            if net.fused:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
            else:
                dA_L = net._loss.grad(xp, Z, AL, Y)
                dZ[...] = g_out.backward(xp, dA_L, Z, AL)   # dZ_L = dA_L ∘ g_L'(Z_L)
            dZ *= 1.0 / m                                    # the 1/m of dW and db, once

        # ---- backward
        for l in range(L, 0, -1):
            W, _ = layers[l]
            A_prev = X if l == 1 else buf.A[l - 1]
            xp.matmul(A_prev.T, dZ, out=buf.dW[l])           # dW_l = (1/m) A_{l-1}ᵀ dZ_l
            xp.matmul(buf.ones, dZ, out=buf.db[l])           # db_l = (1/m) Σ_i dZ_l
            if l > 1:
                dA = xp.matmul(dZ, W.T, out=buf.dA[l - 1])   # dA_{l-1} = dZ_l W_lᵀ
                Z_prev = buf.Z[l - 1]
                fused = kernels.BACKWARD.get(net.activation) if self.use_kernels else None
                if fused is not None:                        # dZ_{l-1} = dA_{l-1} ∘ g'(Z_{l-1})
                    dZ = fused(dA, Z_prev, A_prev)
                elif g.backward_inplace:
                    dZ = g.backward_inplace(xp, dA, Z_prev, A_prev, buf.tmp[l - 1])
                else:
                    dZ = g.backward(xp, dA, Z_prev, A_prev)
        return J, AL, buf.grads
