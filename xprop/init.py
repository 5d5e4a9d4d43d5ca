"""Initial weights, drawn on the host so every backend starts from the same numbers.

CuPy's random streams differ from NumPy's even with the same seed, so the
weights are always drawn with ``numpy.random.default_rng(seed)`` in float64 on
the host, in the row layout and in layer order, and only then cast and moved
to the backend. The same seed therefore gives bit-identical starting weights
on NumPy, CuPy and in either layout.
"""

from __future__ import annotations

import math

import numpy

__all__ = ["INITS", "default_init", "initial_weights"]

# Standard deviation of W_l's entries for fan-in n_in and fan-out n_out.
INITS = {
    "he": lambda n_in, n_out: math.sqrt(2.0 / n_in),
    "glorot": lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out)),
    "small": lambda n_in, n_out: 0.1,  # N(0, 1)·0.1, the tutorials' choice
}


def default_init(activation: str) -> str:
    """He for the ReLU family, Glorot for sigmoid, tanh and identity."""
    return "he" if activation in ("relu", "leaky_relu") else "glorot"


def initial_weights(sizes, init: str, seed) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """Host float64 ``(W_l, b_l)`` per layer in the row layout.

    Parameters
    ----------
    sizes : sequence of int
        ``[k, n_1, ..., n_L]``.
    init : {"he", "glorot", "small"}
    seed : int or None

    Returns
    -------
    list of (W, b)
        ``W_l : (n_{l-1}, n_l)`` drawn from N(0, std²), ``b_l : (n_l,)`` zeros.
    """
    rng = numpy.random.default_rng(seed)
    std = INITS[init]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = rng.standard_normal((n_in, n_out)) * std(n_in, n_out)
        layers.append((W, numpy.zeros(n_out)))
    return layers
