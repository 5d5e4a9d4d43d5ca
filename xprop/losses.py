"""Losses J and their gradients with respect to the output A, in one registry.

Every entry has the same functions with the same argument order::

    J  = value(xp, Z, A, Y)   # 0-d array: (1/m) Σ_i L_i, summed over output units
    dA = grad(xp, Z, A, Y)    # ∂L_i/∂A per example, (m, n_L); the 1/m comes in dW, db

``Z`` and ``A`` are the output layer's cached pre-activation and activation,
``Y`` the targets, all ``(m, n_L)``.

The fused output delta
----------------------
For softmax + cross-entropy, sigmoid + binary cross-entropy and exp + Poisson
(the canonical links) the output delta is simply::

    dZ_L = A_L − Y

Take sigmoid + BCE. The loss gradient is ``dA = (A − Y) / (A(1 − A))`` and the
sigmoid derivative is ``g'(Z) = A(1 − A)``, so the chain rule
``dZ = dA ∘ g'(Z)`` divides by ``A(1 − A)`` and multiplies by it again: the
factors cancel and ``A − Y`` is left. The same cancellation happens for
softmax + CE through the softmax Jacobian, provided every row of Y sums to 1
(one-hot or a probability distribution). Computing it the long way is not
only wasteful but unstable: when a unit saturates, ``A(1 − A)`` rounds to 0
and the division gives inf or NaN, while ``A − Y`` stays exact. The network
therefore uses ``A − Y`` for these pairs (``Loss.fused_output``) and the
generic ``dA ∘ g'(Z)`` for every other pair; the generic ``grad`` functions of
CE and BCE are kept, with guarded divisions, as the reference that a test
compares the fused delta against.

The values of CE and BCE are computed from Z (log-softmax and softplus forms),
which never take the log of 0 and never overflow.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

__all__ = ["Loss", "LOSSES", "DEFAULT_LOSS", "get_loss"]


class Loss(NamedTuple):
    """One loss: value and gradient with respect to the output A.

    Attributes
    ----------
    value : callable ``(xp, Z, A, Y) -> J``
    grad : callable ``(xp, Z, A, Y) -> dA``
    fused_output : str or None
        The output activation this loss must be paired with and for which
        ``dZ_L = A_L − Y`` is used; None if any output may be used.
    """

    value: Callable
    grad: Callable
    fused_output: str | None = None


def _tiny(xp, A):
    return xp.finfo(A.dtype).smallest_normal


# Cross-entropy with softmax output: L_i = −Σ_j Y_ij log A_ij
def cross_entropy(xp, Z, A, Y):
    m = Z.shape[0]
    Zs = Z - xp.max(Z, axis=1, keepdims=True)
    log_A = Zs - xp.log(xp.sum(xp.exp(Zs), axis=1, keepdims=True))  # log-softmax
    return -xp.sum(Y * log_A) / m


def cross_entropy_grad(xp, Z, A, Y):
    return -Y / xp.maximum(A, _tiny(xp, A))


# Binary cross-entropy with sigmoid output: L_i = −Σ_j [Y log A + (1 − Y) log(1 − A)]
def binary_cross_entropy(xp, Z, A, Y):
    m = Z.shape[0]
    # −[y log σ(z) + (1 − y) log(1 − σ(z))] = max(z, 0) − z·y + log(1 + e^{−|z|})
    return xp.sum(xp.maximum(Z, 0.0) - Z * Y + xp.log1p(xp.exp(-xp.abs(Z)))) / m


def binary_cross_entropy_grad(xp, Z, A, Y):
    return (A - Y) / xp.maximum(A * (1 - A), _tiny(xp, A))


# Poisson deviance with exp output (log link): L_i = Σ_j [A_ij − Y_ij log A_ij], up to terms in Y alone.
# With A = e^Z: L_i = Σ_j [e^{Z_ij} − Y_ij Z_ij]; dL/dA = 1 − Y/A, and through g'(Z) = A the
# output delta is dZ = A − Y: the third fused pair.
def poisson(xp, Z, A, Y):
    m = Z.shape[0]
    return xp.sum(A - Y * Z) / m


def poisson_grad(xp, Z, A, Y):
    return 1 - Y / xp.maximum(A, _tiny(xp, A))


# Mean squared error: L_i = ½ Σ_j (A_ij − Y_ij)²
def mse(xp, Z, A, Y):
    m = Z.shape[0]
    D = A - Y
    return xp.sum(D * D) / (2 * m)


def mse_grad(xp, Z, A, Y):
    return A - Y


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss(cross_entropy, cross_entropy_grad, fused_output="softmax"),
    "binary_cross_entropy": Loss(
        binary_cross_entropy, binary_cross_entropy_grad, fused_output="sigmoid"
    ),
    "mse": Loss(mse, mse_grad),
    "poisson": Loss(poisson, poisson_grad, fused_output="exp"),
}

# The natural loss of each output activation (loss=None).
DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "exp": "poisson"}


def get_loss(name: str) -> Loss:
    """Look up a loss by name, with a clear error for unknown names."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {name!r}")
    return LOSSES[name]
