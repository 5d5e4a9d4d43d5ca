"""Fused elementwise kernels for the CuPy training step.

On a GPU every elementwise operation is a kernel launch that reads and
writes the whole array; the chains of the training step fuse into one
launch each with ``cupy.fuse`` (through :func:`xprop.backend.fuse`, so this
module never imports CuPy itself). The bodies use only arithmetic operators,
so the same function runs on NumPy arrays too: the tests compare every
kernel with its plain reference (the activation registry's ``backward``, the
optimizers' ``_update``) on the CPU.

Each kernel returns new arrays; on CuPy they come from the memory pool, which
makes them as cheap as writing into a buffer.
"""

from __future__ import annotations

from .activations import LEAKY_SLOPE
from .backend import fuse

__all__ = ["BACKWARD", "output_delta", "adam_update"]


# Like the registry's fast overrides, the backward kernels read g' from A alone
# (A > 0 exactly where Z > 0 for the ReLU family), so dA may occupy Z's buffer.
@fuse
def relu_backward(dA, A):
    return dA * (A > 0)                                   # dZ = dA ∘ [Z > 0]


@fuse
def leaky_relu_backward(dA, A):
    # dZ = dA ∘ (0.01 + 0.99·[Z > 0]), written so the scalars meet dA (keeping its
    # dtype) before the boolean mask does: bool ∘ Python float would be float64.
    return dA * LEAKY_SLOPE + (dA * (1 - LEAKY_SLOPE)) * (A > 0)


@fuse
def sigmoid_backward(dA, A):
    return dA * A * (1 - A)                               # dZ = dA ∘ A(1 − A)


@fuse
def tanh_backward(dA, A):
    return dA * (1 - A * A)                               # dZ = dA ∘ (1 − A²)


# Hidden activation name -> fused backward: (dA, A) -> dZ, the registry's
# backward_inplace without xp and scratch.
BACKWARD = {
    "relu": relu_backward,
    "leaky_relu": leaky_relu_backward,
    "sigmoid": sigmoid_backward,
    "tanh": tanh_backward,
}


@fuse
def output_delta(A, Y, inv_m):
    return (A - Y) * inv_m                                # dZ_L / m = (A_L − Y) / m


@fuse
def adam_update(p, g, m, v, beta1, beta2, bias2_sqrt, eps, step_size):
    """One Adam step for one parameter; returns the new ``(p, m, v)``."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * (g * g)
    return p - step_size * (m / (v ** 0.5 / bias2_sqrt + eps)), m, v
