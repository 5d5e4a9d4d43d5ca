"""Shared test machinery: the backend matrix, GPU skips that show, data helpers.

The backend matrix
------------------
Tests that should run on every backend take the ``backend`` fixture. It is
parametrised over ``"numpy"`` and ``"cupy"``; the cupy case carries the
``gpu`` marker. Where CuPy cannot be used the cupy case is *skipped inside the
fixture with the reason* from :func:`xprop.backend.cupy_status` (the
scikit-learn way), so a CPU run lists every GPU case under SKIPPED with why,
instead of dropping it silently. Any other test marked ``gpu`` is treated the
same way by :func:`pytest_runtest_setup`.

``XPROP_REQUIRE_GPU=1`` (set by the GPU image and scripts/gpu-check.sh) turns
each of those skips into a failure, and a session under it that ran no GPU
test at all is made red (see :class:`GpuTally`), unless the GPU tests were
deselected on purpose (``-m "not gpu"``).

Tolerances
----------
The one tolerance table lives in :mod:`xprop.tolerances`; it is re-exported
here and tests take every bound from it (``tolerance("gradcheck", dtype)``).
The only literal comparisons in the tests are exact-equality checks.

Fast step against reference
---------------------------
:func:`assert_fast_step_equals_reference` is the one comparison of a training
step (``xprop.fast.TrainStep``) with the plain reference step. It measures each
difference against the magnitude of what was summed to make the quantity
(:func:`summed_magnitudes`), the forward error bound of sums and dot
products, not against the quantity itself: a bias gradient whose terms
cancel is small, and two correct summation orders differ relative to it by
far more than a few roundoffs (see the ``fast`` entry of
:mod:`xprop.tolerances`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import xprop
from xprop.gradcheck import example_data
import xprop.backend
from xprop.tolerances import TOLERANCES, tolerance  # noqa: F401  (the one table, re-exported)

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu, id="cupy")]

HIDDEN_ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]

# Every output activation with the losses it is used with.
OUTPUT_LOSSES = [
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("identity", "mse"),
    ("tanh", "mse"),
    ("sigmoid", "mse"),
    ("softmax", "mse"),
    ("exp", "poisson"),
]

LAYOUTS = ["rows", "columns"]


# ----------------------------------------------------------------------- GPU skips
def require_gpu() -> bool:
    """Whether ``XPROP_REQUIRE_GPU`` asks for GPU skips to be failures."""
    return os.environ.get("XPROP_REQUIRE_GPU", "").strip().lower() not in ("", "0", "false", "no")


def cupy_unusable_reason():
    """None when CuPy can be used here, else the reason it cannot."""
    usable, reason = xprop.backend.cupy_status()
    return None if usable else reason


def skip_or_fail_without_gpu() -> None:
    """Skip (or, under ``XPROP_REQUIRE_GPU=1``, fail) when CuPy is not usable."""
    reason = cupy_unusable_reason()
    if reason is None:
        return
    if require_gpu():
        pytest.fail(f"XPROP_REQUIRE_GPU=1 but CuPy is not usable: {reason}", pytrace=False)
    pytest.skip(f"CuPy is not usable: {reason}")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Backend name, ``"numpy"`` or ``"cupy"``; the cupy case skips with the reason."""
    if request.param == "cupy":
        skip_or_fail_without_gpu()
    return request.param


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        skip_or_fail_without_gpu()


def pytest_report_header(config):
    lines = [f"xprop backends usable: {', '.join(xprop.backends())}"]
    reason = cupy_unusable_reason()
    if reason is None:
        try:
            for gpu in xprop.backend.gpu_info():
                lines.append(f"GPU: device {gpu['id']}: {gpu['name']}, "
                             f"{gpu['total_bytes'] / 2**30:.1f} GiB")
        except Exception as exc:  # noqa: BLE001  (report, never break the header)
            lines.append(f"GPU: CuPy is usable but the device name could not be read ({exc})")
    else:
        lines.append(f"GPU: none; CuPy is not usable: {reason}")
    if require_gpu():
        lines.append("XPROP_REQUIRE_GPU=1: GPU skips are failures; a run with no GPU test is red")
    return lines


class GpuTally:
    """Counts what happened to the ``gpu``-marked tests and reports it.

    A test counts as *ran* when its body was executed (passed or failed),
    *skipped* when it was skipped, *errored* when its setup failed (under
    ``XPROP_REQUIRE_GPU=1`` that is where a missing GPU ends up).
    """

    def __init__(self):
        self.passed = self.failed = self.skipped = self.errored = self.deselected = 0

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    def red(self) -> bool:
        """Under XPROP_REQUIRE_GPU=1: no GPU test ran although none was deselected on purpose."""
        return require_gpu() and self.ran == 0 and self.deselected == 0

    def pytest_deselected(self, items):
        self.deselected += sum(1 for item in items if item.get_closest_marker("gpu") is not None)

    def pytest_runtest_logreport(self, report):
        # The marker itself, not report.keywords: a parametrize id "gpu" is a keyword too.
        if ("xprop_gpu", True) not in report.user_properties:
            return
        if report.when == "call":
            if report.passed:
                self.passed += 1
            elif report.skipped:
                self.skipped += 1
            else:
                self.failed += 1
        elif report.when == "setup":
            if report.skipped:
                self.skipped += 1
            elif report.failed:
                self.errored += 1

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if session.config.option.collectonly:
            return
        if self.red() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if config.option.collectonly:
            return
        tr = terminalreporter
        tr.section("GPU tests")
        tr.write_line(
            f"gpu-marked tests: {self.ran} ran ({self.passed} passed, {self.failed} failed), "
            f"{self.skipped} skipped, {self.errored} errored in setup, "
            f"{self.deselected} deselected"
        )
        if self.red():
            tr.write_line(
                "XPROP_REQUIRE_GPU=1 but no GPU test ran: this GPU job checked nothing on the GPU "
                f"(CuPy: {cupy_unusable_reason() or 'usable'})",
                red=True, bold=True,
            )


def pytest_configure(config):
    config.pluginmanager.register(GpuTally(), "xprop-gpu-tally")


# ----------------------------------------------------------------------- optional test deps
# The optional test dependencies (array-api-strict, scikit-learn, pandas) are
# imported by the tests that need them, never at a module's top: where one is
# missing those tests skip with the reason and every other test, the GPU tests
# first, is still collected and run (tests/test_collection.py checks it).
def array_api_strict_or_skip():
    """The ``array_api_strict`` module, or a skip saying it is not installed."""
    return pytest.importorskip("array_api_strict",
                               reason="array-api-strict (a test extra) is not installed: pip install 'xprop[test]'")


@pytest.fixture
def array_api_strict():
    """The ``array_api_strict`` namespace (the test skips with the reason where it is absent)."""
    return array_api_strict_or_skip()


# ----------------------------------------------------------------------- data
def make_data(net, m, seed=0):
    """Inputs and targets for ``net`` in its layout: :func:`xprop.gradcheck.example_data`."""
    return example_data(net, m, seed)


def kink_free_gradcheck(net, m, seeds=range(50)):
    """Gradcheck ``net`` on data whose ReLU pre-activations avoid the kink.

    For the ReLU family the numeric gradient is meaningless within ``10·eps``
    of 0 (``report.kinks`` counts such pre-activations, and a report with
    kinks never passes). The data seed is advanced until ``kinks == 0``; the
    check then has to pass, it is never skipped.

    Returns
    -------
    report, X, Y
    """
    for seed in seeds:
        X, Y = make_data(net, m, seed)
        report = xprop.gradcheck(net, X, Y)
        if report.kinks == 0:
            return report, X, Y
    raise AssertionError(f"no data seed in {seeds} kept every ReLU pre-activation away from 0 for {net!r}")


# ----------------------------------------------------------------------- fast == reference
def _loss_term_magnitudes(loss, Z, A, Y):
    """Per example, the sum of |terms| that make up ``L_i`` (float64 ``(m, n_L)`` in, ``(m,)`` out)."""
    if loss == "cross_entropy":     # L_i = log S_i + M_i − Σ_j Y_ij Z_ij, S_i = Σ_j e^{Z_ij − M_i}
        M = Z.max(axis=1)
        S = np.exp(Z - M[:, None]).sum(axis=1)
        return np.abs(np.log(S)) + np.abs(M) + np.abs(Y * Z).sum(axis=1)
    if loss == "binary_cross_entropy":  # L_i = Σ_j max(z, 0) − z·y + log(1 + e^{−|z|})
        return (np.maximum(Z, 0) + np.abs(Z * Y) + np.log1p(np.exp(-np.abs(Z)))).sum(axis=1)
    if loss == "mse":               # L_i = ½ Σ_j (A − Y)²: no cancellation
        return ((A - Y) ** 2).sum(axis=1) / 2
    if loss == "poisson":           # L_i = Σ_j e^{Z_ij} − Y_ij Z_ij
        return (np.abs(A) + np.abs(Y * Z)).sum(axis=1)
    raise ValueError(f"no term magnitudes for loss {loss!r}")


def summed_magnitudes(net, X, Y):
    """The magnitude of the terms behind every output of one training step, in float64.

    The forward error of a computed sum or dot product is bounded by a few
    units of roundoff times the sum of the magnitudes of its terms
    (``|fl(xᵀy) − xᵀy| ≤ γ_n |x|ᵀ|y|``), and composing such bounds through the
    backward pass gives, with the reference's cached ``Z_l, A_l`` and its
    output delta ``dZ_L``::

        D_L     = |dZ_L|
        D_{l-1} = (D_l |W_l|ᵀ) ∘ |g'(Z_{l-1})|     (the magnitude behind dZ_{l-1})
        dW_l   ← |A_{l-1}|ᵀ D_l / m
        db_l   ← Σ_i D_l[i] / m
        J      ← (1/m) Σ_i Σ |terms of L_i|        (see _loss_term_magnitudes)
        A_L    ← |A_L|

    ``D_{l-1}`` is not ``|dZ_{l-1}|``: a roundoff in ``dZ_l`` (the fast step
    scales it by 1/m first) reaches ``dZ_{l-1} = (dZ_l W_lᵀ) ∘ g'`` in proportion
    to ``|dZ_l| |W_l|ᵀ``, which is much larger than ``|dZ_{l-1}|`` where that
    product cancels.

    Parameters
    ----------
    net : MLP
    X : (m, k), Y : (m, n_L)
        Row layout, as the steps take them.

    Returns
    -------
    dict
        ``"J"`` (float), ``"A_L"`` ``(m, n_L)`` and ``"dW1", "db1", ...`` shaped like
        the step's gradients (the net's layout), all non-negative float64.
    """
    L = net.L
    _, cache = net.forward_rows(X)
    dZ_L = net.output_delta(cache, Y)          # computed by the same code in both steps
    c = {key: np.asarray(xprop.backend.to_numpy(v), dtype=np.float64) for key, v in cache.items()}
    Y64 = np.asarray(xprop.backend.to_numpy(Y), dtype=np.float64)
    m = Y64.shape[0]
    D = np.abs(np.asarray(xprop.backend.to_numpy(dZ_L), dtype=np.float64))
    g = net.layers.hidden                                # hidden activation: elementwise, g' ≥ 0
    scale = {}
    for l in range(L, 0, -1):
        scale[f"dW{l}"] = np.abs(c[f"A{l - 1}"]).T @ D / m
        scale[f"db{l}"] = D.sum(axis=0) / m
        if l > 1:
            W = np.asarray(xprop.backend.to_numpy(net.row_params(l)[0]), dtype=np.float64)
            D = np.abs(g.backward(np, D @ np.abs(W).T, c[f"Z{l - 1}"], c[f"A{l - 1}"]))
    scale = net.grads_to_layout(scale)
    scale["J"] = float(_loss_term_magnitudes(net.loss, c[f"Z{L}"], c[f"A{L}"], Y64).mean())
    scale["A_L"] = np.abs(c[f"A{L}"])
    return scale


def fast_step_errors(net, X, Y, fast, reference):
    """``‖fast − ref‖ / ‖scale‖`` per output of a training step (norm-wise, float64).

    ``fast`` and ``reference`` are the ``(J, A_L, grads)`` of the two steps on
    row-layout ``X, Y``; ``scale`` is :func:`summed_magnitudes`. A zero
    difference is 0 and a nonzero one against a zero scale is inf.

    Returns
    -------
    errors : dict
        Per quantity (``"J"``, ``"A_L"``, ``"dW1"``, ...).
    detail : dict
        Per quantity, ``(index, fast, ref, scale)`` where ``|fast − ref|`` is largest.
    """
    scale = summed_magnitudes(net, X, Y)
    (J, A, grads), (J_ref, A_ref, grads_ref) = fast, reference
    pairs = {"J": (J, J_ref), "A_L": (A, A_ref), **{k: (grads[k], grads_ref[k]) for k in grads_ref}}
    errors, detail = {}, {}
    for name, (a, b) in pairs.items():
        a = np.asarray(xprop.backend.to_numpy(a), dtype=np.float64)
        b = np.asarray(xprop.backend.to_numpy(b), dtype=np.float64)
        s = np.broadcast_to(np.asarray(scale[name], dtype=np.float64), b.shape)
        diff = np.abs(a - b)
        num, den = float(np.linalg.norm(diff)), float(np.linalg.norm(s))
        errors[name] = 0.0 if num == 0 else (num / den if den > 0 else float("inf"))
        i = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        detail[name] = (tuple(int(k) for k in i), float(a[i]), float(b[i]), float(s[i]))
    return errors, detail


def assert_fast_step_equals_reference(net, X, Y, fast, reference, context=""):
    """Fail unless every output of the fast step is within ``tolerance("fast")`` of the reference.

    The bound is on ``‖fast − ref‖ ≤ tol · ‖scale‖`` per quantity (see
    :func:`summed_magnitudes`). The message names the worst quantity, all the
    errors, and where the worst one differs most (both values and the scale).
    """
    bound = tolerance("fast", net.dtype_name)
    errors, detail = fast_step_errors(net, X, Y, fast, reference)
    worst = max(errors, key=errors.get)
    if errors[worst] <= bound:
        return
    i, a, b, s = detail[worst]
    raise AssertionError(
        f"{context + ': ' if context else ''}{worst} of the fast step differs from the reference by {errors[worst]:.3e} "
        f"of the magnitude of its terms (bound {bound:g}, {net.dtype_name}); "
        f"at {worst}[{', '.join(map(str, i))}] fast {a!r}, reference {b!r}, terms' magnitude {s!r}; "
        f"all: { {k: f'{v:.2e}' for k, v in errors.items()} }"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Tag the reports of gpu-marked tests for the GPU tally."""
    report = yield
    if item.get_closest_marker("gpu") is not None:
        report.user_properties.append(("xprop_gpu", True))
    return report
