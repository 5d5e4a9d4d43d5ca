"""The training step at the floor: the same equations, preallocated buffers.

``TrainStep`` is what ``fit`` runs on NumPy and CuPy. It computes exactly the
forward and backward pass of :class:`xprop.network.MLP` (``forward_rows`` and
``backward_rows``, run by :class:`xprop.step.ReferenceStep`, are its plain
reference, and a test holds them equal), but
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
from .backend import backend_name, supports_out
from .flat import flat_views

__all__ = ["TrainStep", "FastStep", "supports_fast_path"]

supports_fast_path = supports_out   # whether ``xp`` has the ``out=`` arguments this step needs


class _Storage:
    """Flat work arrays of one net for batches of up to ``capacity`` examples.

    The buffers of a batch of ``m ≤ capacity`` examples are views of the
    first ``m`` rows' worth of each array, so the last, partial batch of an
    epoch and validation batches cost no memory of their own.
    """

    def __init__(self, net, capacity):
        xp, dt, sizes, g = net.xp, net.dtype, net.sizes, net.layers.hidden
        hidden = sizes[1:-1]
        flat = lambda n: xp.empty((capacity * n,), dtype=dt)  # noqa: E731
        self.capacity = capacity
        self.Z = [None] + [flat(n) for n in sizes[1:]]
        # A_l in a buffer where the activation can write into one (else g.forward allocates it)
        self.A = [None] + [flat(n) if g.forward_into else None for n in hidden] + [flat(sizes[-1])]
        # dA_l over Z_l when the rule reads A only; the plain rule needs Z kept.
        self.dA = None if g.backward_inplace else [None] + [flat(n) for n in sizes[1:]]
        self.dZ_L = flat(sizes[-1])
        self.tmp = flat(max(hidden)) if (g.backward_inplace and g.scratch and hidden) else None
        self.row_max, self.row_sum = flat(1), flat(1)
        self.ones = xp.ones((capacity,), dtype=dt)            # Σ_i as a matrix-vector product
        self.ones_out = xp.ones((sizes[-1],), dtype=dt)       # Σ_j, the same way
        self.zero = [None] + [xp.zeros((n,), dtype=dt) for n in sizes[1:]]


class _Gradients:
    """The step's gradient buffers, one set whatever the batch size.

    Row layout: ``dW_l``, ``db_l`` are views of one flat buffer in the
    params' order, and ``grads`` is that FlatDict; columns: separate arrays,
    and ``grads`` holds their transposed views, as the params are shaped.
    """

    def __init__(self, dW, db, grads):
        self.dW, self.db, self.grads = dW, db, grads

    @classmethod
    def allocate(cls, net) -> "_Gradients":
        xp, dt, sizes, L = net.xp, net.dtype, net.sizes, net.L
        if net.layout == "rows":
            shapes = {}
            for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
                shapes[f"dW{l}"], shapes[f"db{l}"] = (a, b), (b,)
            grads = flat_views(xp, shapes, dt)
            dW = [None] + [grads[f"dW{l}"] for l in range(1, L + 1)]
            db = [None] + [grads[f"db{l}"] for l in range(1, L + 1)]
            return cls(dW, db, grads)
        dW = [None] + [xp.empty((a, b), dtype=dt) for a, b in zip(sizes[:-1], sizes[1:])]
        db = [None] + [xp.empty((n,), dtype=dt) for n in sizes[1:]]
        grads = {}
        for l in range(1, L + 1):
            grads[f"dW{l}"] = dW[l].T
            grads[f"db{l}"] = xp.reshape(db[l], (-1, 1))
        return cls(dW, db, grads)


class _Buffers:
    """Work arrays of one batch size ``m`` (row layout): views of a :class:`_Storage`.

    Attributes
    ----------
    Z : list, ``Z[l] : (m, n_l)``
        ``Z_l`` in the forward pass. For a hidden layer whose activation has a
        ``backward_inplace`` rule, the backward pass then writes ``dA_l`` into
        it and turns that into ``dZ_l`` (``dA`` is then the same list).
    A : list, ``A[l] : (m, n_l)``
        For a hidden activation without ``forward_into`` (sigmoid, identity)
        the forward pass puts the array ``g.forward`` returns here.
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
        The step's gradients (:class:`_Gradients`, shared by every batch size).
    """

    def __init__(self, net, m, storage, gradients):
        xp, sizes, L = net.xp, net.sizes, net.L
        rows = lambda a, n: None if a is None else xp.reshape(a[:m * n], (m, n))  # noqa: E731
        self.Z = [None] + [rows(storage.Z[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.A = [None] + [rows(storage.A[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.dA = self.Z if storage.dA is None else [None] + [
            rows(storage.dA[l], n) for l, n in enumerate(sizes[1:], start=1)]
        self.dZ_L = rows(storage.dZ_L, sizes[-1])
        self.tmp = [None] * (L + 1)
        if storage.tmp is not None:
            for l, n in enumerate(sizes[1:-1], start=1):
                self.tmp[l] = rows(storage.tmp, n)
        self.row_max = rows(storage.row_max, 1)
        self.row_sum = storage.row_sum[:m]
        self.row_sum_col = rows(storage.row_sum, 1)        # the same sums, as a column
        self.ones, self.ones_out, self.zero = storage.ones[:m], storage.ones_out, storage.zero
        self.dW, self.db, self.grads = gradients.dW, gradients.db, gradients.grads


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
    (``fit`` passes plain SGD's learning rate, see ``Optimizer.grad_scale``).

    The returned arrays are buffers, overwritten by the next call (batches of
    every size share them: a smaller batch uses the first rows of the largest
    one's arrays, and there is one set of gradients); so are the hidden
    layers' ``Z`` and ``A``, which the backward pass uses as work space.
    ``cost(X, Y)`` runs the forward pass and the cost alone, in the same
    buffers (validation).
    """

    accepts_scale = True   # step(X, Y, scale): see the class docstring

    def __init__(self, net):
        if not supports_out(net.xp):
            raise TypeError(f"TrainStep needs NumPy or CuPy; the net runs on {net.backend}")
        self.net = net
        self.rules = net.layers    # read once: the activations, loss and output kind
        self._g = self.rules.hidden
        self._buffers = {}
        self._storage = None       # work arrays for the largest batch size seen
        self._gradients = None
        self._softmax_ce = self.rules.softmax_ce
        # On CuPy the elementwise chains run as fused kernels (xprop.kernels).
        self.use_kernels = backend_name(net.xp) == "cupy"
        self._layers_of = (None, None, None)   # (params dict, its flat buffer, [(W_l, b_l)])

    def buffers(self, m) -> _Buffers:
        """The work arrays of batches of ``m`` examples (views of the largest batch's)."""
        buf = self._buffers.get(m)
        if buf is None:
            if self._storage is None or m > self._storage.capacity:
                self._storage, self._buffers = _Storage(self.net, m), {}
            if self._gradients is None:
                self._gradients = _Gradients.allocate(self.net)
            buf = self._buffers[m] = _Buffers(self.net, m, self._storage, self._gradients)
        return buf

    @property
    def grads(self):
        """The gradients every call writes (shaped like ``net.params``; in the row layout a
        FlatDict whose ``.flat`` is one buffer, the optimizer's whole-buffer operand)."""
        if self._gradients is None:
            self._gradients = _Gradients.allocate(self.net)
        return self._gradients.grads

    def adopt_gradients(self, dW, db, grads) -> None:
        """Write the gradients into these arrays from now on (``dW[l]``, ``db[l]`` row layout).

        ``grads`` is what the step then returns; the distributed trainer hands
        in views of the buffer its allreduce sums.
        """
        self._gradients = _Gradients(dW, db, grads)
        for buf in self._buffers.values():
            buf.dW, buf.db, buf.grads = dW, db, grads

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
        layers = [None] + [net.row_params(l) for l in range(1, net.L + 1)]
        self._layers_of = (params, flat, layers)
        return layers

    def __call__(self, X, Y, scale=1.0):
        net, xp, L = self.net, self.net.xp, self.net.L
        m = X.shape[0]
        s = scale / m                                        # the 1/m of dW and db (and any scale)
        buf = self._buffers.get(m) or self.buffers(m)
        g = self._g
        layers = self._layers()
        J, AL, Z = self._forward_cost(X, Y, buf, layers)

        # ---- output delta, divided by m: dZ_L / m
        dZ = buf.dZ_L
        if self._softmax_ce:
            if self.use_kernels:                             # one launch, into the buffer
                kernels.output_delta(xp, AL, Y, s, dZ)       # dZ_L / m = (A_L − Y) / m
            else:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
                dZ *= s                                      # the 1/m of dW and db, once
        elif net.fused and self.use_kernels:                 # sigmoid + BCE: one launch too
            kernels.output_delta(xp, AL, Y, s, dZ)           # dZ_L / m = (A_L − Y) / m
        else:
            rules = self.rules
            if rules.fused:
                xp.subtract(AL, Y, out=dZ)                   # dZ_L = A_L − Y
            else:
                dA_L = rules.loss.grad(xp, Z, AL, Y)
                dZ[...] = rules.output.backward(xp, dA_L, Z, AL)   # dZ_L = dA_L ∘ g_L'(Z_L)
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
                    fused(xp, dA, A_prev)                    # in place: one launch
                    dZ = dA
                elif g.backward_inplace:
                    dZ = g.backward_inplace(xp, dA, A_prev, buf.tmp[l - 1])
                else:
                    dZ = g.backward(xp, dA, buf.Z[l - 1], A_prev)
        return J, AL, buf.grads

    def cost(self, X, Y):
        """``(J, A_L)`` of a batch: the forward pass and the cost, into the same buffers.

        What validation needs, at no memory beyond the step's own: the
        returned ``A_L`` is a buffer, overwritten by the next call.
        """
        m = X.shape[0]
        buf = self._buffers.get(m) or self.buffers(m)
        J, AL, _ = self._forward_cost(X, Y, buf, self._layers())
        return J, AL

    def _forward_cost(self, X, Y, buf, layers):
        """Forward pass and cost of ``X : (m, k)``: ``(J, A_L, Z_L)``, all in ``buf``."""
        net, xp, L = self.net, self.net.xp, self.net.L
        m, g = X.shape[0], self._g

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
            rules = self.rules
            AL = rules.output.forward(xp, Z)
            return rules.loss.value(xp, Z, AL, Y), AL, Z
        AL = buf.A[L]
        M, S, S_col = buf.row_max, buf.row_sum, buf.row_sum_col
        Z.max(axis=1, keepdims=True, out=M)                  # (methods: no dispatch layer)
        xp.subtract(Z, M, out=AL)                            # Z − M ≤ 0: exp cannot overflow
        YZ = xp.vdot(Y, AL)                                  # Σ_ij Y_ij (Z_ij − M_i)
        xp.exp(AL, out=AL)
        xp.matmul(AL, buf.ones_out, out=S)                   # S_i = Σ_j e^{Z_ij − M_i}
        AL /= S_col                                          # A_L = softmax(Z_L)
        xp.log(S, out=S)                                     # S ≥ 1 (the max term is e⁰): no guard needed
        J = (xp.vdot(buf.ones, S) - YZ) / m                  # (1/m) Σ_i −log A_{i,y_i}
        return J, AL, Z


FastStep = TrainStep
