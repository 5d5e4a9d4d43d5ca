"""The scikit-learn estimators with CuPy: input recognised on any machine, fits on a GPU.

scikit-learn is an optional dependency; it is imported inside the tests (the
``est`` fixture), so on a machine without it every test here is still
collected (the GPU ones too, for ``pytest -m gpu``) and skips saying why.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings

import numpy as np
import pytest

import xprop
from xprop.backend import to_numpy
from xprop.tolerances import tolerance


@pytest.fixture
def est():
    """:mod:`xprop.estimators` (a skip with the reason where scikit-learn is not installed)."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install 'xprop[sklearn]'")
    from xprop import estimators  # noqa: PLC0415  (needs scikit-learn)

    return estimators


def blobs(m=120, k=4, n_classes=3, seed=0):
    """Separable Gaussian blobs: ``X (m, k)``, ``y (m,)``."""
    rng = np.random.default_rng(seed)
    y = np.arange(m) % n_classes
    X = 3.0 * rng.standard_normal((n_classes, k))[y] + rng.standard_normal((m, k))
    return X, y


def regression(m=100, k=3, t=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k))
    Y = np.tanh(X @ rng.standard_normal((k, t or 1))) + 0.05 * rng.standard_normal((m, t or 1))
    return X, (Y[:, 0] if t is None else Y)


def small(cls, **kw):
    return cls(**{"hidden_layer_sizes": (8,), "max_iter": 5, "random_state": 0, **kw})


# ------------------------------------------------------- CuPy input, no device
def fake_cupy_array(shape, dtype="float64"):
    """A real ``cupy.ndarray`` on no memory (the installed wheel; never read)."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'xprop[gpu]')")
    memory = cupy.cuda.UnownedMemory(0, 0, None, 0)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def test_cupy_X_takes_the_device_path_not_scikit_learns_conversion(est):
    """A CuPy X is checked on the device; scikit-learn's validate_data would refuse it
    ("Implicit conversion to a NumPy array is not allowed")."""
    X = fake_cupy_array((5, 3))
    clf = est.MLPClassifier()
    assert clf._check_X(X, reset=True) is X
    assert clf.n_features_in_ == 3
    with pytest.raises(ValueError, match="X has 2 features, but MLPClassifier is expecting 3"):
        clf._check_X(fake_cupy_array((5, 2)), reset=False)
    with pytest.raises(ValueError, match="Expected a 2D array"):
        clf._check_X(fake_cupy_array((5,)), reset=True)


def test_a_cupyx_sparse_matrix_is_not_taken_for_a_cupy_array(est):
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'xprop[gpu]')")
    sparse = pytest.importorskip("cupyx.scipy.sparse")
    m = sparse.csr_matrix.__new__(sparse.csr_matrix)
    assert est._checks._host(m) is m        # not copied as if it were a dense device array


# ------------------------------------------------------------ on a GPU
# The same key tests with backend="cupy" (scikit-learn's whole suite runs on CuPy too, in
# tests/test_sklearn_mlp_suite.py). Skipped with the reason where CuPy is not usable.
def _cupy():
    return xprop.get_xp("cupy")      # gpu-marked: skipped with the reason where CuPy is unusable


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_cupy_fit_gives_scikit_learns_weights(est, solver):
    """On the GPU, from host data as from device data, the fit is scikit-learn's to rounding."""
    from sklearn import neural_network as sk_nn  # noqa: PLC0415  (est: scikit-learn is there)

    cp = _cupy()
    X, y = blobs(m=150)
    Xr, yr = regression(t=2)
    kw = {"solver": solver, "hidden_layer_sizes": (12,), "random_state": 0, "max_iter": 10,
          "learning_rate_init": 0.01, "alpha": 1e-3}
    early = {"early_stopping": solver != "lbfgs"}
    for ours, theirs, data in (
        (est.MLPClassifier(backend="cupy", **kw), sk_nn.MLPClassifier(**kw), (X, y)),
        (est.MLPRegressor(backend="cupy", **early, **kw), sk_nn.MLPRegressor(**early, **kw), (Xr, yr)),
        (est.MLPClassifier(backend="cupy", **kw), sk_nn.MLPClassifier(**kw), (cp.asarray(X), y)),
    ):
        with _ignore_convergence():
            ours.fit(*data)
            theirs.fit(to_numpy(data[0]), data[1])
        assert ours.net_.backend == "cupy" and ours.n_iter_ == theirs.n_iter_
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype
            assert np.abs(a - b).max() / np.abs(b).max() <= tolerance("sklearn", "float64")


@contextlib.contextmanager
def _ignore_convergence():
    """A few epochs, short of convergence on purpose: scikit-learn's ConvergenceWarning is expected."""
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415  (est: scikit-learn is there)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.mark.gpu
@pytest.mark.parametrize("net_backend", ["cupy", "numpy"])
def test_predict_returns_the_kind_of_array_it_was_given(est, net_backend):
    cp = _cupy()
    X, y = blobs()
    with _ignore_convergence():
        clf = small(est.MLPClassifier, backend=net_backend).fit(cp.asarray(X), cp.asarray(y))
        binary = small(est.MLPClassifier, backend=net_backend).fit(cp.asarray(X), y == 1)
        Xr, yr = regression()
        reg = small(est.MLPRegressor, backend=net_backend).fit(cp.asarray(Xr), yr)
    assert isinstance(clf.predict(X), np.ndarray) and isinstance(clf.predict_proba(X), np.ndarray)
    assert isinstance(clf.predict(cp.asarray(X)), cp.ndarray)
    assert isinstance(clf.predict_proba(cp.asarray(X)), cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(clf.predict(cp.asarray(X))), clf.predict(X))
    assert clf.score(cp.asarray(X), cp.asarray(y)) == clf.score(X, y)
    np.testing.assert_array_equal(cp.asnumpy(binary.predict(cp.asarray(X))), binary.predict(X))
    assert isinstance(reg.predict(cp.asarray(Xr)), cp.ndarray) and reg.predict(Xr).shape == (len(Xr),)
    assert reg.score(cp.asarray(Xr), cp.asarray(yr)) == reg.score(Xr, yr)


@pytest.mark.gpu
def test_cupy_coefs_are_cached_read_only_host_copies_refreshed_by_training(est):
    X, y = blobs()
    with _ignore_convergence():
        clf = small(est.MLPClassifier, backend="cupy", solver="sgd").fit(X, y)
    first = clf.coefs_
    assert clf.coefs_ is first and isinstance(first[0], np.ndarray) and not first[0].flags.writeable
    np.testing.assert_array_equal(first[0], to_numpy(clf.net_.params["W1"]))
    clf.partial_fit(X, y)
    assert clf.coefs_ is not first and not np.array_equal(clf.coefs_[0], first[0])
    clf.coefs_ = [np.zeros_like(W) for W in clf.coefs_]  # assigning still sets the weights
    clf.predict(X)
    assert float(_cupy().abs(clf.net_.params["W1"]).max()) == 0.0


@pytest.mark.gpu
def test_cupy_device_inputs_early_stopping_sparse_and_pickling(est):
    import scipy.sparse  # noqa: PLC0415  (comes with scikit-learn)

    cp = _cupy()
    X, y = blobs()
    with _ignore_convergence():
        clf = small(est.MLPClassifier, backend="cupy", early_stopping=True).fit(cp.asarray(X), cp.asarray(y))
        dense = small(est.MLPClassifier, backend="cupy", solver="sgd").fit(X, y)
        sparse = small(est.MLPClassifier, backend="cupy", solver="sgd").fit(scipy.sparse.csr_matrix(X), y)
    assert clf.n_features_in_ == X.shape[1] and len(clf.validation_scores_) == clf.n_iter_
    with pytest.raises(ValueError, match="features"):
        clf.predict(cp.asarray(X[:, :2]))
    back = pickle.loads(pickle.dumps(clf))
    assert back.net_.backend == "cupy"
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_allclose(sparse.predict_proba(scipy.sparse.csr_matrix(X)), dense.predict_proba(X),
                               rtol=tolerance("backends", "float64"))


@pytest.mark.gpu
def test_strict_device_trains_device_data_without_a_transfer_and_refuses_sparse_batches(est):
    """strict_device=True on CuPy: no warning (warnings are errors here), no sync refused, the
    same model as without; sparse X, whose batches cross from the host, is refused."""
    import scipy.sparse  # noqa: PLC0415

    cp = _cupy()
    X, y = blobs()
    with _ignore_convergence():
        strict = small(est.MLPClassifier, backend="cupy", strict_device=True).fit(cp.asarray(X), cp.asarray(y))
        loose = small(est.MLPClassifier, backend="cupy").fit(cp.asarray(X), cp.asarray(y))
        np.testing.assert_array_equal(strict.predict_proba(X), loose.predict_proba(X))
        with pytest.raises(RuntimeError, match="strict_device"):
            small(est.MLPClassifier, backend="cupy", strict_device=True).fit(scipy.sparse.csr_matrix(X), y)
