"""Fused elementwise kernels for the CuPy training step, writing in place.

On a GPU every elementwise operation is a kernel launch that reads and
writes the whole array, and every new array is an allocation. The chains of
the training step and of the optimizer updates therefore run as one launch
each, through :func:`xprop.backend.fuse` (``cupy.fuse`` of a body written
against ``xp``; this module never imports CuPy), and write their results
into arrays the step already owns: the ``dA`` buffer becomes ``dZ``, the
output delta goes into ``dZ_L``, the updates change ``P`` and the optimizer
state in place. A CuPy step in steady state allocates nothing.

Every body runs on NumPy too, operation for operation, so the tests compare
each kernel with its plain reference (the activation registry's
``backward_inplace``, the optimizers' ``_update``) on the CPU, and trace the
CuPy kernel itself (CuPy's own fusion tracer, on arrays that need no device)
to check the types it computes in.

The rules that keep a kernel in the net's dtype
------------------------------------------------
``cupy.fuse`` gives every Python scalar argument a float64 or int64
parameter and, for arithmetic between two such scalars, picks the smallest
type (float16): ``1 - beta1`` computed inside a kernel from a Python float
is 0.10009765625. So no kernel does arithmetic on scalars: every scalar is
computed on the host in double precision by the wrapper below and passed as
a scalar of the array's dtype (``dtype.type(c)``), and constants in a body
are made the same way (``t(1)`` with ``t = A.dtype.type``), never on the
left of an operator (``t(1) - A`` hands CuPy a Python float: NumPy's scalar
defers to the array's reflected operator; ``xp.subtract(t(1), A)`` does
not). Comparisons yield booleans, which meet the net's dtype only as a
factor.
"""

from __future__ import annotations

import math

from .activations import LEAKY_SLOPE
from .backend import fuse

__all__ = ["BACKWARD", "output_delta", "adam_update", "sgd_update"]


# ---------------------------------------------------------------- backward
# Like the registry's backward_inplace, each turns the buffer dA into dZ in place,
# reading g' from A alone (A > 0 exactly where Z > 0 for the ReLU family), so dA
# may occupy Z's buffer.
@fuse
def relu_backward(xp, dA, A):
    """``dA ← dA ∘ [A > 0]`` (= dZ)."""
    t = A.dtype.type
    xp.multiply(dA, A > t(0), out=dA)


@fuse
def leaky_relu_backward(xp, dA, A):
    """``dA ← dA ∘ ([A > 0]·0.99 + 0.01)`` (= dZ)."""
    t = A.dtype.type
    xp.multiply(dA, (A > t(0)) * t(1 - LEAKY_SLOPE) + t(LEAKY_SLOPE), out=dA)


@fuse
def sigmoid_backward(xp, dA, A):
    """``dA ← dA ∘ (1 − A) A`` (= dZ)."""
    t = A.dtype.type
    xp.multiply(dA, xp.subtract(t(1), A) * A, out=dA)


@fuse
def tanh_backward(xp, dA, A):
    """``dA ← dA ∘ (1 − A²)`` (= dZ)."""
    t = A.dtype.type
    xp.multiply(dA, xp.subtract(t(1), A * A), out=dA)


# Hidden activation name -> fused backward ``(xp, dA, A)``: dA becomes dZ in place
# (the registry's backward_inplace without the scratch buffer). Identity has none:
# its dZ is dA.
BACKWARD = {
    "relu": relu_backward,
    "leaky_relu": leaky_relu_backward,
    "sigmoid": sigmoid_backward,
    "tanh": tanh_backward,
}


# ------------------------------------------------------------ output delta
@fuse
def _output_delta(xp, A, Y, s, out):
    xp.multiply(A - Y, s, out=out)


def output_delta(xp, A, Y, s, out):
    """``out ← (A − Y)·s``: the fused output delta with ``s = 1/m`` (times any scale).

    Parameters
    ----------
    A, Y : (m, n_L)
        Output and targets, in the net's dtype.
    s : float
        Rounded once to the net's dtype.
    out : (m, n_L)
        The step's ``dZ_L`` buffer; returned.
    """
    _output_delta(xp, A, Y, A.dtype.type(s), out)
    return out


# --------------------------------------------------------------- optimizers
@fuse
def _adam(xp, p, g, m, v, b1, c1, b2, c2, bias2_sqrt, eps, step_size, wd):
    g = g + wd * p                                    # g = dP + weight_decay · P
    m *= b1
    m += c1 * g                                       # m = β1·m + (1 − β1)·g
    v *= b2
    v += c2 * (g * g)                                 # v = β2·v + (1 − β2)·g²
    p -= step_size * (m / (xp.sqrt(v) / bias2_sqrt + eps))


def adam_update(xp, p, g, m, v, *, lr, betas, eps, weight_decay, t):
    """One Adam step (``torch.optim.Adam``'s rule) on ``p``, ``m``, ``v`` in place.

    The coefficients ``1 − β``, ``√(1 − β2ᵗ)`` and ``lr / (1 − β1ᵗ)`` are
    computed here in double precision and rounded once to ``p``'s dtype, as
    the reference's Python floats are when they meet a ``p``-typed array.
    """
    b1, b2 = betas
    c = p.dtype.type
    _adam(xp, p, g, m, v, c(b1), c(1 - b1), c(b2), c(1 - b2), c(math.sqrt(1 - b2 ** t)),
          c(eps), c(lr / (1 - b1 ** t)), c(weight_decay))


@fuse
def _sgd(xp, p, g, lr, wd):
    p -= lr * (g + wd * p)                            # P = P − lr·(dP + weight_decay·P)


@fuse
def _sgd_momentum(xp, p, g, v, lr, mu, wd):
    v *= mu
    v += g + wd * p                                   # v = μ·v + g
    p -= lr * v                                       # P = P − lr·v


@fuse
def _sgd_nesterov(xp, p, g, v, lr, mu, wd):
    g = g + wd * p
    v *= mu
    v += g                                            # v = μ·v + g
    p -= lr * (g + mu * v)                            # P = P − lr·(g + μ·v)


def sgd_update(xp, p, g, v, *, lr, momentum, nesterov, weight_decay):
    """One SGD step (``torch.optim.SGD``'s rule, dampening 0) on ``p`` (and ``v``) in place.

    ``v`` is the momentum buffer, or None without momentum.
    """
    c = p.dtype.type
    if v is None:
        _sgd(xp, p, g, c(lr), c(weight_decay))
    elif nesterov:
        _sgd_nesterov(xp, p, g, v, c(lr), c(momentum), c(weight_decay))
    else:
        _sgd_momentum(xp, p, g, v, c(lr), c(momentum), c(weight_decay))


# Every fused kernel with what it computes, for the kernel-trace test.
FUSED = {k.__name__: k for k in (relu_backward, leaky_relu_backward, sigmoid_backward,
                                 tanh_backward, _output_delta, _adam, _sgd, _sgd_momentum,
                                 _sgd_nesterov)}
