"""Checks of the estimators' parameters, and the array helpers the estimators share.

Parameters are checked in ``fit`` (scikit-learn's rule: the constructor only
stores them), against scikit-learn's constraints, in its wording.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..backend import get_xp, is_cupy_array, to_numpy
from ..validation import check_dtype_name

SOLVERS = ("lbfgs", "sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
# scikit-learn's hidden activations, then xprop's extras; the value is xprop's name.
HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
          "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}


def _is_cupy_array(a) -> bool:
    """Whether ``a`` is a dense CuPy array (asked of xprop.backend, which owns CuPy)."""
    return is_cupy_array(a)


def _is_sparse(a) -> bool:
    return hasattr(a, "tocsr") and hasattr(a, "nnz")


def _host(a):
    """``a`` on the host: CuPy arrays are copied, anything else is left as it is."""
    return to_numpy(a) if _is_cupy_array(a) else a


def _like_input(result, xp_in):
    """``result`` as the kind of array the caller gave: NumPy for ``np``, else ``xp_in``."""
    if xp_in is np:
        return to_numpy(result)
    return xp_in.asarray(result)


def _bad(name, expected, value):
    return ValueError(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")


def _check_int(name, value, low=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise _bad(name, f"an int in the range [{low}, inf)", value)
    return int(value)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(name, "an instance of 'bool'", value)
    return bool(value)


def _check_real(name, value, low, high, *, closed="left"):
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and np.isfinite(value)
    if ok:
        ok = ((value >= low) if closed in ("left", "both") else (value > low)) and (
            value <= high if closed in ("right", "both") else value < high)
    if not ok:
        lb = "[" if closed in ("left", "both") else "("
        rb = "]" if closed in ("right", "both") else ")"
        raise _bad(name, f"a float in the range {lb}{low}, {high}{rb}", value)
    return float(value)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise _bad(name, f"a str among {{{', '.join(map(repr, choices))}}}", value)
    return value


def _hidden_sizes(value) -> list[int]:
    sizes = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    for n in sizes:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {value!r}.")
    if any(n <= 0 for n in sizes):
        raise ValueError("hidden_layer_sizes must be > 0, got %s." % sizes)
    return [int(n) for n in sizes]



def check_params(est) -> list[int]:
    """Check every constructor argument of ``est`` (in fit, as scikit-learn does); the hidden sizes."""
    hidden = _hidden_sizes(est.hidden_layer_sizes)
    _check_choice("activation", est.activation, tuple(HIDDEN))
    _check_choice("solver", est.solver, SOLVERS)
    _check_real("alpha", est.alpha, 0, np.inf)
    if not (isinstance(est.batch_size, str) and est.batch_size == "auto"):
        _check_int("batch_size", est.batch_size)
    _check_choice("learning_rate", est.learning_rate, LEARNING_RATES)
    _check_real("learning_rate_init", est.learning_rate_init, 0, np.inf, closed="neither")
    _check_real("power_t", est.power_t, 0, np.inf)
    _check_int("max_iter", est.max_iter)
    _check_real("tol", est.tol, 0, np.inf)
    if isinstance(est.verbose, (bool, np.bool_)):
        pass
    elif not isinstance(est.verbose, numbers.Integral) or est.verbose < 0:
        raise _bad("verbose", "an int in the range [0, inf) or an instance of 'bool'", est.verbose)
    for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping", "strict_device"):
        _check_bool(name, getattr(est, name))
    _check_real("momentum", est.momentum, 0, 1, closed="both")
    _check_real("validation_fraction", est.validation_fraction, 0, 1)
    _check_real("beta_1", est.beta_1, 0, 1)
    _check_real("beta_2", est.beta_2, 0, 1)
    _check_real("epsilon", est.epsilon, 0, np.inf, closed="neither")
    if not (isinstance(est.n_iter_no_change, numbers.Real) and est.n_iter_no_change == np.inf):
        _check_int("n_iter_no_change", est.n_iter_no_change)
    _check_int("max_fun", est.max_fun)
    if est.dtype is not None:
        check_dtype_name(est.dtype)
    get_xp(est.backend)  # raises for unknown or unusable backends
    return hidden
