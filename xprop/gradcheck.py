"""Numeric checks of the analytic gradients and of backend agreement.

``gradcheck`` compares ``net.backward`` with central differences
``(J(θ + ε) − J(θ − ε)) / 2ε`` taken on a float64 copy of the net, one
parameter entry at a time. ``compare_backends`` runs the same forward and
backward from identical weights on every usable backend and reports how far
each is from NumPy. Both return reports that print as tables and say, on
failure, where the largest difference is and what the two values were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from .activations import ACTIVATIONS
from .backend import backends as usable_backends
from .backend import cupy_status, to_numpy
from .tolerances import tolerance
from .validation import check_inputs, check_targets

__all__ = ["gradcheck", "compare_backends", "example_data", "relative_error", "GradcheckReport",
           "BackendReport"]


def example_data(net, m: int, seed=0):
    """Host inputs and targets for checking ``net``, in its layout, from a seeded RNG.

    ``X`` has standard normal entries. ``Y`` is integer labels ``(m,)`` for a
    softmax output (in both layouts), 0/1 targets for a sigmoid output,
    standard normal values otherwise. Rows: ``X (m, k)``, ``Y (m, n_L)``;
    columns: ``X (k, m)``, ``Y (n_L, m)``, exactly the transposes of the row
    data for the same seed.
    """
    rng = numpy.random.default_rng(seed)
    k, n_out = net.sizes[0], net.sizes[-1]
    X = rng.standard_normal((m, k))
    Y = net.head.example_targets(rng, m, n_out)
    if net.layout == "columns":
        X = numpy.ascontiguousarray(X.T)
        if Y.ndim == 2:
            Y = numpy.ascontiguousarray(Y.T)
    return X, Y


def relative_error(a, b) -> float:
    """``‖a − b‖ / max(‖a‖ + ‖b‖, tiny)`` on host float64 copies."""
    a = numpy.asarray(to_numpy(a), dtype=numpy.float64)
    b = numpy.asarray(to_numpy(b), dtype=numpy.float64)
    denom = max(numpy.linalg.norm(a) + numpy.linalg.norm(b), numpy.finfo(numpy.float64).tiny)
    return float(numpy.linalg.norm(a - b) / denom)


def _worst(a, b):
    """Index, both values and abs difference where ``a`` and ``b`` differ most."""
    a = numpy.asarray(to_numpy(a), dtype=numpy.float64)
    b = numpy.asarray(to_numpy(b), dtype=numpy.float64)
    diff = numpy.abs(a - b)
    idx = numpy.unravel_index(int(numpy.argmax(diff)), diff.shape) if diff.size else ()
    idx = tuple(int(i) for i in idx)
    return idx, float(a[idx]), float(b[idx]), float(diff[idx]) if diff.size else 0.0


@dataclass
class GradcheckReport:
    """Result of :func:`gradcheck`.

    Attributes
    ----------
    errors : dict of str to float
        Relative error per parameter (``"W1"``, ``"b1"``, ...).
    worst : dict
        Per parameter: ``(index, analytic, numeric, abs_diff)`` at the largest difference.
    tolerance : float
        Bound from the tolerance table for the net's dtype.
    kinks : int
        Pre-activations within ``10·eps`` of a ReLU kink; the numeric gradient
        is unreliable there, so a check with ``kinks > 0`` does not pass.
    """

    errors: dict
    worst: dict
    tolerance: float
    dtype: str
    backend: str
    eps: float
    kinks: int = 0
    analytic: dict = field(default_factory=dict, repr=False)
    numeric: dict = field(default_factory=dict, repr=False)

    @property
    def max_error(self) -> float:
        return max(self.errors.values())

    @property
    def passed(self) -> bool:
        return self.kinks == 0 and self.max_error <= self.tolerance

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [f"gradcheck on {self.backend} ({self.dtype}), eps={self.eps:g}, "
                 f"tolerance {self.tolerance:g}: {'PASSED' if self.passed else 'FAILED'}",
                 f"{'param':<6} {'rel. error':>11}  worst entry (analytic vs numeric)"]
        for name, err in self.errors.items():
            idx, a, n, _ = self.worst[name]
            flag = "" if err <= self.tolerance else "  <-- too large"
            lines.append(f"{name:<6} {err:11.3e}  {name}{list(idx)}: {a:.9g} vs {n:.9g}{flag}")
        if self.kinks:
            lines.append(f"{self.kinks} pre-activation(s) lie within 10·eps of a ReLU kink: "
                         "move the inputs or change the seed")
        return "\n".join(lines)


def gradcheck(net, X, Y, eps: float = 1e-6) -> GradcheckReport:
    """Compare the analytic gradients of ``net`` with central differences.

    Parameters
    ----------
    net : MLP
    X : array, ``(m, k)`` (rows) or ``(k, m)`` (columns)
    Y : array
        Targets, as accepted by :meth:`MLP.backward`.
    eps : float
        Step of the central difference, applied in float64.

    Returns
    -------
    GradcheckReport
        ``.errors`` per parameter, ``.max_error``, ``.passed``; ``str(report)``
        is a table with the worst entry of each parameter.

    Notes
    -----
    The analytic gradient is computed by ``net`` itself, in its own dtype.
    The numeric one is computed on a float64 copy of ``net`` on the same
    backend, so ``net`` is never modified. The cost of the numeric gradient
    is two forward passes per parameter entry: keep the net small.
    """
    _, cache = net.forward(X)
    analytic = net.backward(cache, Y)

    ref = net.to(dtype="float64")
    xp = ref.xp
    X64 = check_inputs(ref, X)
    Y64 = check_targets(ref, Y, X64.shape[0])

    def cost():
        _, c = ref.forward_rows(X64)
        return float(ref.cost_rows(c, Y64))

    _, c64 = ref.forward_rows(X64)
    kinks = 0
    if ACTIVATIONS[net.activation].kink:
        for l in range(1, net.L):
            kinks += int(xp.sum(xp.astype(xp.abs(c64[f"Z{l}"]) < 10 * eps, xp.int64)))
    if ACTIVATIONS[net.output].kink:
        kinks += int(xp.sum(xp.astype(xp.abs(c64[f"Z{net.L}"]) < 10 * eps, xp.int64)))

    numeric, errors, worst = {}, {}, {}
    for name, P in ref.params.items():
        grad = numpy.zeros(tuple(P.shape))
        for idx in numpy.ndindex(*grad.shape):
            original = float(P[idx])
            P[idx] = original + eps
            plus = cost()
            P[idx] = original - eps
            minus = cost()
            P[idx] = original
            grad[idx] = (plus - minus) / (2 * eps)
        a = to_numpy(analytic["d" + name])
        numeric[name] = grad
        errors[name] = relative_error(a, grad)
        worst[name] = _worst(a, grad)
    return GradcheckReport(
        errors=errors, worst=worst, tolerance=tolerance("gradcheck", net.dtype_name),
        dtype=net.dtype_name, backend=net.backend, eps=eps, kinks=kinks,
        analytic={k: to_numpy(v) for k, v in analytic.items()}, numeric=numeric,
    )


@dataclass
class BackendReport:
    """Result of :func:`compare_backends`.

    Attributes
    ----------
    errors : dict
        ``{backend: {quantity: relative error vs numpy}}``; quantities are
        ``"AL"`` (the output), ``"cost"`` and every gradient ``"dW1"``, ...
    skipped : dict
        ``{backend: reason}`` for backends that could not be run here.
    """

    errors: dict
    skipped: dict
    tolerance: float
    dtype: str

    @property
    def max_error(self) -> float:
        values = [e for errs in self.errors.values() for e in errs.values()]
        return max(values) if values else 0.0

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [f"backends vs numpy ({self.dtype}), tolerance {self.tolerance:g}: "
                 f"{'PASSED' if self.passed else 'FAILED'}"]
        for backend, errs in self.errors.items():
            lines.append(f"  {backend}:")
            for q, e in errs.items():
                flag = "" if e <= self.tolerance else "  <-- too large"
                lines.append(f"    {q:<6} {e:11.3e}{flag}")
        for backend, reason in self.skipped.items():
            lines.append(f"  {backend}: skipped ({reason})")
        return "\n".join(lines)


def compare_backends(net, X, Y) -> BackendReport:
    """Run forward and backward on every usable backend from ``net``'s weights.

    Parameters
    ----------
    net : MLP
    X, Y : arrays
        Host (NumPy) arrays, or arrays of ``net``'s backend.

    Returns
    -------
    BackendReport
        Relative differences of the output, the cost and every gradient on
        each backend against NumPy; backends not usable here are listed in
        ``.skipped`` with the reason.
    """
    X, Y = to_numpy(X), to_numpy(Y)
    results = {}
    for backend in usable_backends():
        other = net.to(backend)
        out, cache = other.forward(X)
        grads = other.backward(cache, Y)
        results[backend] = {"AL": to_numpy(out), "cost": numpy.asarray(other.cost(X, Y))}
        results[backend].update({k: to_numpy(v) for k, v in grads.items()})
    ref = results["numpy"]
    errors = {b: {q: relative_error(v, ref[q]) for q, v in r.items()}
              for b, r in results.items() if b != "numpy"}
    skipped = {}
    if "cupy" not in results:
        skipped["cupy"] = cupy_status()[1]
    return BackendReport(errors=errors, skipped=skipped,
                         tolerance=tolerance("backends", net.dtype_name), dtype=net.dtype_name)
