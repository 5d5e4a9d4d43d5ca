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
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import xprop
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


# ----------------------------------------------------------------------- data
def make_data(net, m, seed=0):
    """Inputs and targets for ``net``, in its layout, from a seeded host RNG.

    ``X`` has standard normal entries. ``Y`` is integer labels ``(m,)`` for a
    softmax output (labels stay ``(m,)`` in both layouts), 0/1 targets for a
    sigmoid output, standard normal values otherwise. Rows: ``X (m, k)``,
    ``Y (m, n_L)``; columns: ``X (k, m)``, ``Y (n_L, m)``, holding exactly the
    transposes of the row data for the same seed.
    """
    rng = np.random.default_rng(seed)
    k, n_out = net.sizes[0], net.sizes[-1]
    X = rng.standard_normal((m, k))
    if net.output == "softmax":
        Y = rng.integers(0, n_out, size=m)
    elif net.output == "sigmoid":
        Y = rng.integers(0, 2, size=(m, n_out)).astype(np.float64)
    else:
        Y = rng.standard_normal((m, n_out))
    if net.layout == "columns":
        X = np.ascontiguousarray(X.T)
        if Y.ndim == 2:
            Y = np.ascontiguousarray(Y.T)
    return X, Y


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Tag the reports of gpu-marked tests for the GPU tally."""
    report = yield
    if item.get_closest_marker("gpu") is not None:
        report.user_properties.append(("xprop_gpu", True))
    return report
