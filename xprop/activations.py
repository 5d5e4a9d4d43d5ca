"""Activations g and their backward rules, side by side in one registry.

Every entry has the same two functions with the same argument order::

    A  = forward(xp, Z)            # A = g(Z)
    dZ = backward(xp, dA, Z, A)    # dZ = dA ∘ g'(Z)

``Z`` and ``A`` are the values cached by the forward pass, both ``(m, n_l)``
(rows: examples). ``backward`` reads the derivative from what is cached and
never recomputes the forward: sigmoid and tanh from ``A``, the ReLU family
from ``Z``. Softmax is not elementwise; its ``backward`` is the product of
``dA`` with its Jacobian, row by row, which is still ``(m, n_l) → (m, n_l)``.

The hidden activations also carry fast overrides for the training step
(:mod:`xprop.fast`): ``forward_into`` writes ``A`` into a buffer and
``backward_inplace`` turns a ``dA`` buffer into ``dZ`` reading ``A`` alone.
Every hidden ``g'`` here is a function of ``A``: ``A(1 − A)``, ``1 − A²``,
``[A > 0]`` (``A > 0`` exactly where ``Z > 0``, for ReLU and leaky ReLU alike)
and 1, so the step can let ``dA_l`` overwrite ``Z_l``, which nothing reads
after the forward pass, instead of holding a third buffer per layer.

Only functions of the Python array API standard are used, so ``xp`` can be
NumPy, CuPy or any standard namespace. Constants are Python scalars, which
keep the array's dtype (a float32 net stays float32).

Adding an activation is one entry in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

__all__ = ["Activation", "ACTIVATIONS", "HIDDEN", "LEAKY_SLOPE", "get_activation"]

LEAKY_SLOPE = 0.01


class Activation(NamedTuple):
    """One activation: forward and its backward rule.

    Attributes
    ----------
    forward : callable ``(xp, Z) -> A``
    backward : callable ``(xp, dA, Z, A) -> dZ``
    kink : bool
        True where g is not differentiable at 0 (ReLU family); gradient checks
        keep Z away from there.
    hidden : bool
        Whether it may be used in hidden layers (softmax is output-only).
    forward_into : callable ``(xp, Z, out, zero) -> out``, optional
        Fast override of ``forward`` writing into a preallocated buffer;
        ``zero`` is a row of zeros ``(n_l,)`` in Z's dtype (see ``relu_into``).
    backward_inplace : callable ``(xp, dA, A, tmp) -> dA``, optional
        Fast override of ``backward`` that turns the buffer ``dA`` into
        ``dZ`` in place, reading ``g'`` from ``A`` only (``dA`` may occupy
        the buffer Z was in); ``tmp`` is a scratch buffer of the same shape,
        or None where ``scratch`` is False: the rule needs none.

    The overrides use ``out=`` arguments, which NumPy and CuPy have and the
    array API standard does not; the training step uses them on those two
    backends only, and a test checks each against its plain reference.
    """

    forward: Callable
    backward: Callable
    kink: bool = False
    hidden: bool = True
    forward_into: Callable | None = None
    backward_inplace: Callable | None = None
    scratch: bool = True


# sigmoid: σ(z) = 1 / (1 + e^{-z});  σ'(z) = σ(z)(1 − σ(z)) = A(1 − A)
def sigmoid(xp, Z):
    # Overflow-free: e = exp(-|z|) is in (0, 1], so nothing overflows for any z.
    # z ≥ 0: 1/(1+e^{-z}) = 1/(1+e);   z < 0: e^{z}/(1+e^{z}) = e/(1+e).
    E = xp.exp(-xp.abs(Z))
    return xp.where(Z >= 0, 1 / (1 + E), E / (1 + E))


def sigmoid_backward(xp, dA, Z, A):
    return dA * A * (1 - A)


def sigmoid_backward_inplace(xp, dA, A, tmp):
    xp.subtract(1, A, out=tmp)
    tmp *= A
    dA *= tmp                                   # dZ = dA ∘ A(1 − A)
    return dA


# tanh: tanh'(z) = 1 − tanh(z)² = 1 − A²
def tanh(xp, Z):
    return xp.tanh(Z)


def tanh_backward(xp, dA, Z, A):
    return dA * (1 - A * A)


def tanh_into(xp, Z, out, zero):
    return xp.tanh(Z, out=out)


def tanh_backward_inplace(xp, dA, A, tmp):
    xp.multiply(A, A, out=tmp)
    xp.subtract(1, tmp, out=tmp)
    dA *= tmp                                   # dZ = dA ∘ (1 − A²)
    return dA


# ReLU: max(z, 0);  relu'(z) = 1 for z > 0 else 0 (0 taken at the kink)
def relu(xp, Z):
    return xp.maximum(Z, 0.0)


def relu_backward(xp, dA, Z, A):
    return xp.where(Z > 0, dA, 0.0)


def relu_into(xp, Z, out, zero):
    # max(Z, 0) against a row of zeros rather than the scalar 0: the same values,
    # and NumPy's maximum broadcasting a row runs a vectorised loop (2-3x faster
    # than its scalar-operand loop on float32).
    return xp.maximum(Z, zero, out=out)


def relu_backward_inplace(xp, dA, A, tmp):
    xp.multiply(dA, A > 0, out=dA)             # dZ = dA ∘ [Z > 0], and A > 0 ⟺ Z > 0
    return dA


# leaky ReLU: z for z > 0 else 0.01·z;  derivative 1 or 0.01
def leaky_relu(xp, Z):
    return xp.where(Z > 0, Z, LEAKY_SLOPE * Z)


def leaky_relu_backward(xp, dA, Z, A):
    return xp.where(Z > 0, dA, LEAKY_SLOPE * dA)


def leaky_relu_into(xp, Z, out, zero):
    # max(Z, 0.01·Z) is Z for Z > 0 and 0.01·Z otherwise: the same values as the where.
    xp.multiply(Z, LEAKY_SLOPE, out=out)
    return xp.maximum(Z, out, out=out)


def leaky_relu_backward_inplace(xp, dA, A, tmp):
    # g'(Z) = 0.01 + 0.99·[Z > 0], and A > 0 ⟺ Z > 0 (A = 0.01·Z < 0 for Z < 0)
    xp.multiply(A > 0, 1 - LEAKY_SLOPE, out=tmp)
    tmp += LEAKY_SLOPE
    dA *= tmp
    return dA


# identity: g(z) = z;  g' = 1
def identity(xp, Z):
    return Z


def identity_backward(xp, dA, Z, A):
    return dA


def identity_backward_inplace(xp, dA, A, tmp):
    return dA


# softmax over the units of each row: A_ij = e^{Z_ij − max_j Z} / Σ_j e^{Z_ij − max_j Z}
# Jacobian-vector product: dZ_i = A_i ∘ (dA_i − ⟨dA_i, A_i⟩)
def softmax(xp, Z):
    E = xp.exp(Z - xp.max(Z, axis=1, keepdims=True))  # row max subtracted: exp ≤ 1
    return E / xp.sum(E, axis=1, keepdims=True)


def softmax_backward(xp, dA, Z, A):
    return A * (dA - xp.sum(dA * A, axis=1, keepdims=True))


# exp (output only, the inverse of the Poisson log link): g(z) = e^z;  g'(z) = e^z = A
def exp(xp, Z):
    return xp.exp(Z)


def exp_backward(xp, dA, Z, A):
    return dA * A


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(sigmoid, sigmoid_backward,
                          backward_inplace=sigmoid_backward_inplace),
    "tanh": Activation(tanh, tanh_backward,
                       forward_into=tanh_into, backward_inplace=tanh_backward_inplace),
    "relu": Activation(relu, relu_backward, kink=True,
                       forward_into=relu_into, backward_inplace=relu_backward_inplace,
                       scratch=False),
    "leaky_relu": Activation(leaky_relu, leaky_relu_backward, kink=True, forward_into=leaky_relu_into,
                             backward_inplace=leaky_relu_backward_inplace),
    "identity": Activation(identity, identity_backward,
                           backward_inplace=identity_backward_inplace, scratch=False),
    "softmax": Activation(softmax, softmax_backward, hidden=False),
    "exp": Activation(exp, exp_backward, hidden=False),
}

HIDDEN = tuple(name for name, act in ACTIVATIONS.items() if act.hidden)


def get_activation(name: str, *, argument: str = "activation", hidden: bool = True) -> Activation:
    """Look up an activation by name, with a clear error for unknown names."""
    choices = HIDDEN if hidden else tuple(ACTIVATIONS)
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(choices)}; got {name!r}")
    return ACTIVATIONS[name]
