"""The forward and backward equations of a network, layer by layer, with shapes.

:func:`explain` builds the actual :class:`~xprop.MLP`, runs one forward and one
backward pass on a small batch, and writes every equation with the shapes of
the arrays that pass produced: parameters from ``net.params``, ``Z_l`` and
``A_l`` from the cache, ``dW_l`` and ``db_l`` from the gradients. Every
matrix product is checked (inner dimensions agree, the result has the shape
the code produced), so the printout cannot drift from the code; it is a
dimension check as much as a cheat sheet.

Rows layout (examples are rows)::

    Z2 (m×2) = A1 (m×3) @ W2 (3×2) + b2 (2)

Columns layout (examples are columns)::

    Z2 (2×m) = W2 (2×3) @ A1 (3×m) + b2 (2×1)
"""

from __future__ import annotations

import numpy

from .network import LAYOUTS, MLP

__all__ = ["explain", "explain_layout"]

# dA_L = ∂L/∂A_L written out for the losses whose gradient is used on the generic path.
_LOSS_GRAD = {"mse": "A{L} ({a}) − Y ({a})"}


def _dims(shape, batch_axis, m_text):
    """``(5, 3)`` → ``"5×3"``, with the batch axis written as ``m_text``."""
    parts = [m_text if i == batch_axis else str(n) for i, n in enumerate(shape)]
    return "×".join(parts)


def _matmul(a, b, name):
    """Shape of ``a @ b``; refuses operands whose inner dimensions differ."""
    if a[1] != b[0]:
        raise RuntimeError(f"{name}: inner dimensions disagree, {a} @ {b}")
    return (a[0], b[1])


def _same(expected, actual, name):
    if tuple(expected) != tuple(actual):
        raise RuntimeError(f"{name}: the equations give shape {tuple(expected)} but the code "
                           f"produced {tuple(actual)}")


def _example_batch(net, m, seed=0):
    """Inputs and targets for ``net`` in its layout (values do not matter, shapes do)."""
    rng = numpy.random.default_rng(seed)
    k, n_out = net.sizes[0], net.sizes[-1]
    X = rng.standard_normal((m, k))
    Y = net.head.example_targets(rng, m, n_out)
    if Y.ndim == 1:                    # class labels: their one-hot rows
        Y = numpy.eye(n_out)[Y]
    if net.layout == "columns":
        X, Y = X.T, Y.T
    return X, Y


def explain_layout(layer_sizes, batch=None, activation="relu", output="softmax", loss=None,
                   layout="rows") -> str:
    """The equations with shapes for one layout (see :func:`explain`)."""
    net = MLP(layer_sizes, activation=activation, output=output, loss=loss, backend="numpy",
              dtype="float64", seed=0, layout=layout)
    m = 2 if batch is None else int(batch)
    m_text = "m" if batch is None else str(m)
    X, Y = _example_batch(net, m)
    _, cache = net.forward(X)
    grads = net.backward(cache, Y)

    rows = layout == "rows"
    ax = 0 if rows else 1  # the batch axis of X, Z_l, A_l, dZ_l, Y

    def act(name):
        return cache[name].shape

    def d(shape, batch_axis=None):
        return _dims(shape, batch_axis, m_text)

    def T(shape):
        return tuple(reversed(shape))

    L = net.L
    P = {name: p.shape for name, p in net.params.items()}
    lines = []
    m_says = "the batch size" if batch is None else f"the batch size, {m}"
    if rows:
        lines.append(f"rows layout: examples are rows, X is (m×k); m = {m_says}")
    else:
        lines.append(f"columns layout: examples are columns, X is (k×m); m = {m_says}")
    hidden = f"hidden {activation}, " if L > 1 else ""
    lines.append(f"  network {'-'.join(map(str, net.sizes))}: {hidden}output {output}, "
                 f"loss {net.loss}; {net.n_params} parameters")
    lines.append("  parameters: " + "  ".join(f"{name} ({d(shape)})" for name, shape in P.items()))

    lines.append("forward")
    lines.append(f"  A0 ({d(act('A0'), ax)}) = X")
    for l in range(1, L + 1):
        A_prev, W, b, Z = act(f"A{l - 1}"), P[f"W{l}"], P[f"b{l}"], act(f"Z{l}")
        if rows:
            _same(_matmul(A_prev, W, f"Z{l}"), Z, f"Z{l}")
            rhs = f"A{l - 1} ({d(A_prev, ax)}) @ W{l} ({d(W)}) + b{l} ({d(b)})"
        else:
            _same(_matmul(W, A_prev, f"Z{l}"), Z, f"Z{l}")
            rhs = f"W{l} ({d(W)}) @ A{l - 1} ({d(A_prev, ax)}) + b{l} ({d(b)})"
        lines.append(f"  Z{l} ({d(Z, ax)}) = {rhs}")
        g = output if l == L else activation
        lines.append(f"  A{l} ({d(act(f'A{l}'), ax)}) = {g}(Z{l})")
    y_shape = Y.shape
    lines.append(f"  J = (1/m) Σ_i L_i, with L = {net.loss}(A{L}, Y) and Y ({d(y_shape, ax)})")

    lines.append("backward")
    ZL = act(f"Z{L}")
    _same(y_shape, act(f"A{L}"), "Y")
    if net.fused:
        lines.append(f"  dZ{L} ({d(ZL, ax)}) = A{L} ({d(act(f'A{L}'), ax)}) − Y ({d(y_shape, ax)})"
                     f"    [{output} + {net.loss}: the fused output delta]")
    else:
        grad = _LOSS_GRAD.get(net.loss, "∂L/∂A{L}").format(L=L, a=d(act(f"A{L}"), ax))
        lines.append(f"  dA{L} ({d(act(f'A{L}'), ax)}) = {grad}    [{net.loss} gradient]")
        if output == "softmax":
            lines.append(f"  dZ{L} ({d(ZL, ax)}) = A{L} ∘ (dA{L} − Σ_units dA{L} ∘ A{L}) ({d(ZL, ax)})"
                         "    [generic rule: softmax Jacobian times dA, per example]")
        else:
            lines.append(f"  dZ{L} ({d(ZL, ax)}) = dA{L} ({d(act(f'A{L}'), ax)}) ∘ {output}'(Z{L}) "
                         f"({d(ZL, ax)})    [generic rule]")
    for l in range(L, 0, -1):
        A_prev, W, Z = act(f"A{l - 1}"), P[f"W{l}"], act(f"Z{l}")
        dW, db = grads[f"dW{l}"].shape, grads[f"db{l}"].shape
        _same(W, dW, f"dW{l}")
        if rows:
            _same(_matmul(T(A_prev), Z, f"dW{l}"), dW, f"dW{l}")
            lines.append(f"  dW{l} ({d(dW)}) = (1/m) A{l - 1}ᵀ ({d(T(A_prev), 1)}) @ dZ{l} ({d(Z, ax)})")
            lines.append(f"  db{l} ({d(db)}) = (1/m) Σ over rows of dZ{l} ({d(Z, ax)})")
        else:
            _same(_matmul(Z, T(A_prev), f"dW{l}"), dW, f"dW{l}")
            lines.append(f"  dW{l} ({d(dW)}) = (1/m) dZ{l} ({d(Z, ax)}) @ A{l - 1}ᵀ ({d(T(A_prev), 0)})")
            lines.append(f"  db{l} ({d(db)}) = (1/m) Σ over columns of dZ{l} ({d(Z, ax)})")
        if l > 1:
            Z_prev = act(f"Z{l - 1}")
            if rows:
                dA = _matmul(Z, T(W), f"dA{l - 1}")
                rhs = f"dZ{l} ({d(Z, ax)}) @ W{l}ᵀ ({d(T(W))})"
            else:
                dA = _matmul(T(W), Z, f"dA{l - 1}")
                rhs = f"W{l}ᵀ ({d(T(W))}) @ dZ{l} ({d(Z, ax)})"
            _same(dA, act(f"A{l - 1}"), f"dA{l - 1}")
            lines.append(f"  dA{l - 1} ({d(dA, ax)}) = {rhs}")
            lines.append(f"  dZ{l - 1} ({d(Z_prev, ax)}) = dA{l - 1} ({d(dA, ax)}) ∘ "
                         f"{activation}'(Z{l - 1}) ({d(Z_prev, ax)})")
    return "\n".join(lines)


def explain(layer_sizes, batch=None, activation="relu", output="softmax", loss=None,
            layout="both") -> str:
    """Every forward and backward equation of a network with concrete shapes.

    Parameters
    ----------
    layer_sizes : list of int
        ``[k, n_1, ..., n_L]``, as for :class:`~xprop.MLP`.
    batch : int, optional
        Batch size m to substitute; None writes ``m``.
    activation, output, loss
        As for :class:`~xprop.MLP`; they decide the output delta (fused
        ``A_L − Y`` or the generic ``dA_L ∘ g_L'(Z_L)``).
    layout : {"rows", "columns", "both"}

    Returns
    -------
    str
        One line per equation, e.g. ``Z2 (5×2) = A1 (5×3) @ W2 (3×2) + b2 (2)``.
    """
    if layout not in (*LAYOUTS, "both"):
        raise ValueError(f"layout must be one of 'rows', 'columns', 'both'; got {layout!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be an integer ≥ 1; got {batch!r}")
    layouts = LAYOUTS if layout == "both" else (layout,)
    return "\n\n".join(explain_layout(layer_sizes, batch, activation, output, loss, lay)
                       for lay in layouts)
