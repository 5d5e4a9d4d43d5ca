"""Checks at the door: constructor arguments and the arrays given to a net.

Every check raises a ``ValueError`` or ``TypeError`` whose message names the
argument, what was expected and what was received, before anything is
computed or changed. Array checks run in the net's namespace ``xp`` (one
reduction each), once per public call; the training loop checks its data
once, not per batch.
"""

from __future__ import annotations

import math
import numbers

from .backend import all_finite, as_backend_array, cast_quietly, dtype_kind
from .tolerances import tolerance

__all__ = [
    "check_layer_sizes",
    "check_choice",
    "check_dtype_name",
    "check_number_in",
    "check_seed",
    "check_sample_weight",
    "check_positive_number",
    "check_positive_int",
    "check_inputs",
    "check_targets",
    "one_hot",
]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_layer_sizes(sizes) -> tuple[int, ...]:
    """``[k, n_1, ..., n_L]``: at least two positive integers."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(
            f"layer_sizes must be a list of integers like [4, 8, 3]; got {sizes!r}"
        )
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(
            "layer_sizes must have at least two entries (inputs and outputs), "
            f"e.g. [4, 3]; got {sizes!r}"
        )
    for i, n in enumerate(sizes):
        if not _is_int(n) or n < 1:
            raise ValueError(
                f"layer_sizes[{i}] must be a positive integer; got {n!r} in {sizes!r}"
            )
    return tuple(int(n) for n in sizes)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_dtype_name(dtype) -> str:
    """'float32' or 'float64' from a string, a NumPy dtype or a scalar type."""
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    name = str(name).rsplit(".", 1)[-1]
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    return name


def check_seed(seed):
    if seed is not None and not _is_int(seed):
        raise TypeError(f"seed must be an integer or None; got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
    return seed


def check_number_in(name: str, value, lo: float, hi: float, hi_open: bool = True) -> float:
    """``value`` as a float in ``[lo, hi)`` (``[lo, hi]`` with ``hi_open=False``).

    Any real number is taken: Python's, and NumPy's scalars (``np.float32(0.9)``,
    ``np.int64(0)``, what a grid built with ``np.arange``/``np.logspace`` holds); booleans,
    NaN and infinities are not.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (value >= hi if hi_open else value > hi):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be a number in [{lo}, {hi}{bracket}; got {value!r}")
    return float(value)


def check_positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {value!r}")
    return int(value)


def _refuse_kind(name: str, a, allowed: str):
    kind = dtype_kind(a)
    if kind not in allowed:
        raise TypeError(
            f"{name} must hold numbers (float{' or integer' if 'i' in allowed else ''}); "
            f"got an array of dtype {a.dtype}"
        )
    return kind


def _first_example(xp, bad) -> int:
    """Index of the first example (row) with a True entry in ``bad``."""
    rows = xp.any(bad, axis=1) if bad.ndim == 2 else bad
    return int(xp.argmax(xp.astype(rows, xp.int8)))


def _require_finite(xp, name: str, a, original=None):
    """Refuse NaN or inf in ``a``; ``original``: what ``a`` was cast from, if anything.

    Finite values that only became inf in the cast (1e300 into float32) are
    reported as such, with the range of the dtype, not as "NaN or inf".
    """
    if not all_finite(xp, a):  # the error path only: count and locate what is wrong
        bad = xp.logical_not(xp.isfinite(a))
        n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
        if original is not None and original is not a and all_finite(xp, original):
            i = _first_example(xp, bad)
            row = original[i] if original.ndim == 1 else original[i, :]
            biggest = float(xp.max(xp.abs(xp.astype(row, xp.float64))))
            limit = float(xp.finfo(a.dtype).max)
            raise ValueError(
                f"{name} has {n_bad} finite value{'' if n_bad == 1 else 's'} beyond the range of "
                f"{a.dtype} (±{limit:.6g}), the first in example {i} (magnitude {biggest:.6g}); "
                f"scale the data first (e.g. standardise it) or use dtype='float64'"
            )
        raise ValueError(
            f"{name} contains NaN or inf ({n_bad} value{'' if n_bad == 1 else 's'}, the first in "
            f"example {_first_example(xp, bad)}); expected finite numbers: clean or impute the data first"
        )


def _to_backend(a, xp, name, device):
    try:
        return as_backend_array(a, xp, name=name, device=device)
    except ValueError as exc:
        if isinstance(a, (list, tuple)):  # NumPy's message for a ragged list does not name it
            raise ValueError(
                f"{name} must be a rectangular nested list (rows of equal length); got one that "
                f"is not ({exc})"
            ) from None
        raise


def check_inputs(net, X, *, name: str = "X"):
    """The net's input in the row layout: ``(m, k)`` in the net's dtype.

    Integer X is cast to the net's dtype (documented); bool, string and
    object arrays are refused. In the column layout X is ``(k, m)`` and the
    returned array is its transposed view.
    """
    xp = net.xp
    X = _to_backend(X, xp, name, net.device)
    _refuse_kind(name, X, "fiu")
    k = net.sizes[0]
    if X.ndim != 2:
        hint = f" (for one example use X.reshape(1, {k}))" if X.ndim == 1 and net.layout == "rows" else ""
        raise ValueError(
            f"{name} must be 2-D {net.shape_text('X')}; got {X.ndim}-D shape {tuple(X.shape)}{hint}"
        )
    if net.layout == "columns":
        X = X.T
    m, n_features = X.shape
    if m == 0:
        raise ValueError(f"{name} is empty: it has 0 examples; expected at least one, "
                         f"{net.shape_text('X')} with m ≥ 1")
    if n_features != k:
        raise ValueError(
            f"{name} must have {k} features {net.shape_text('X')} for this net; "
            f"got shape {tuple(X.T.shape if net.layout == 'columns' else X.shape)}"
        )
    original = X
    if X.dtype != net.dtype:
        X = cast_quietly(xp, X, net.dtype)
    _require_finite(xp, name, X, original)
    return X


def check_sample_weight(net, w, m: int, *, name: str = "sample_weight"):
    """Example weights ``(m,)`` in the net's dtype: finite, non-negative, not all zero."""
    xp = net.xp
    w = _to_backend(w, xp, name, net.device)
    _refuse_kind(name, w, "fiu")
    if w.ndim != 1 or w.shape[0] != m:
        raise ValueError(f"{name} must be 1-D with one weight per example ({m}); got shape {tuple(w.shape)}")
    w = xp.astype(w, net.dtype, copy=False)
    _require_finite(xp, name, w)
    if bool(xp.any(w < 0)) or not bool(xp.sum(w) > 0):
        raise ValueError(f"{name} must be non-negative with a positive sum; got values from "
                         f"{float(xp.min(w)):.6g} to {float(xp.max(w)):.6g}, sum {float(xp.sum(w)):.6g}")
    return w


def one_hot(xp, labels, n_out: int, dtype, out=None):
    """One-hot rows ``(m, n_out)`` of int ``labels : (m,)``; into ``out`` if given (NumPy, CuPy)."""
    classes = xp.arange(n_out, dtype=labels.dtype)
    hits = labels[:, None] == classes[None, :]
    if out is None:
        return xp.astype(hits, dtype)
    out[...] = hits
    return out


def _label_text(value) -> str:
    """A label as the user wrote it: ``3`` for whole numbers, ``1e+20`` for huge ones."""
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:g}"


def _class_labels(xp, name: str, Y, kind: str, n_out: int):
    """1-D class labels ``Y : (m,)`` checked against ``n_out`` classes, as int64."""
    if kind == "f":
        _require_finite(xp, name, Y)
        if not bool(xp.all(Y == xp.floor(Y))):
            raise ValueError(
                f"{name} as 1-D labels must hold whole class numbers 0..{n_out - 1}; got fractional values"
            )
    # the range is checked before the cast to int64 (which turns 1e20 into -2**63),
    # and explicitly: CuPy does not raise on bad indices
    lo, hi = xp.min(Y), xp.max(Y)
    if bool(lo < 0) or bool(hi >= n_out):
        raise ValueError(
            f"{name} labels must be in 0..{n_out - 1} for a net with {n_out} outputs; "
            f"got values from {_label_text(lo)} to {_label_text(hi)}"
        )
    return xp.astype(Y, xp.int64, copy=False)


def check_targets(net, Y, m: int, *, name: str = "Y", keep_labels: bool = False):
    """Targets in the row layout: ``(m, n_L)`` in the net's dtype.

    With ``keep_labels=True`` the class labels of a softmax net are checked
    and returned as they are, ``(m,)`` int64 (``fit`` builds each batch's
    one-hot rows instead of the whole data set's). Targets already in the
    net's dtype are not copied.

    Accepted forms
    --------------
    - softmax output: integer class labels ``(m,)`` in ``[0, n_L)`` (turned
      into one-hot rows), or ``(m, n_L)`` rows that are probability
      distributions (one-hot or soft labels: non-negative, summing to 1 —
      the fused ``A − Y`` output delta relies on that sum).
    - sigmoid output: ``(m, n_L)`` targets in [0, 1]; ``(m,)`` when n_L = 1.
    - any other output: ``(m, n_L)`` values; ``(m,)`` when n_L = 1.
    In the column layout 2-D targets are ``(n_L, m)``; labels stay ``(m,)``.
    """
    xp = net.xp
    n_out = net.sizes[-1]
    Y = _to_backend(Y, xp, name, net.device)
    kind = _refuse_kind(name, Y, "fiub")
    if Y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D labels or 2-D targets; got {Y.ndim}-D shape {tuple(Y.shape)}")
    length = Y.shape[0] if (Y.ndim == 1 or net.layout == "rows") else Y.shape[1]
    if length != m:
        raise ValueError(f"{name} has {length} examples but X has {m}; they must match")
    head = net.head
    if Y.ndim == 1 and head.takes_labels:
        labels = _class_labels(xp, name, Y, kind, n_out)
        if keep_labels:
            return labels
        return one_hot(xp, labels, n_out, net.dtype)
    if Y.ndim == 1:
        if n_out != 1:
            raise ValueError(
                f"{name} is 1-D but the net has {n_out} outputs; pass targets "
                f"{net.shape_text('Y')}"
            )
        Y = xp.reshape(Y, (m, 1))
    elif net.layout == "columns":
        Y = Y.T
    if Y.shape[1] != n_out:
        raise ValueError(
            f"{name} must have {n_out} output columns {net.shape_text('Y')}; "
            f"got shape {tuple(Y.T.shape if net.layout == 'columns' else Y.shape)}"
        )
    Y = xp.astype(Y, net.dtype, copy=False)
    _require_finite(xp, name, Y)
    if head.rows_are_distributions:
        tol = tolerance("targets", net.dtype_name)
        sums = xp.sum(Y, axis=1)
        bad = xp.any(Y < 0, axis=1) | (xp.abs(sums - 1) > tol)
        if bool(xp.any(bad)):
            i = _first_example(xp, bad)
            raise ValueError(
                f"{name} for a softmax net must be one-hot rows (or probability rows summing to 1), "
                f"or 1-D integer labels; got rows that are not distributions (example {i}: sum "
                f"{float(sums[i]):.6g}, smallest entry {float(xp.min(Y[i, :])):.6g})"
            )
    elif net.output == "sigmoid" and net.loss == "binary_cross_entropy":
        lo, hi = float(xp.min(Y)), float(xp.max(Y))
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} for binary cross-entropy must be in [0, 1] (0/1 targets); "
                             f"got values from {lo:.6g} to {hi:.6g}")
    return Y
