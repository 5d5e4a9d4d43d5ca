"""The scikit-learn estimators with CuPy: input recognised on any machine, fits on a GPU.

scikit-learn is an optional dependency; it is imported inside the tests (the
``est`` fixture), so on a machine without it every test here is still
collected (the GPU ones too, for ``pytest -m gpu``) and skips saying why.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import xprop
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


def regression(m=100, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k))
    return X, np.tanh(X @ rng.standard_normal(k)) + 0.05 * rng.standard_normal(m)


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
    assert est._host(m) is m        # not copied as if it were a dense device array


# ------------------------------------------------------------ on a GPU
def _cupy():
    return xprop.get_xp("cupy")      # gpu-marked: skipped with the reason where CuPy is unusable


@pytest.mark.gpu
@pytest.mark.parametrize("net_backend", ["cupy", "numpy"])
def test_predict_returns_the_kind_of_array_it_was_given(est, net_backend):
    cp = _cupy()
    X, y = blobs()
    clf = small(est.MLPClassifier, backend=net_backend).fit(cp.asarray(X), cp.asarray(y))
    assert isinstance(clf.predict(X), np.ndarray) and isinstance(clf.predict_proba(X), np.ndarray)
    assert isinstance(clf.predict(cp.asarray(X)), cp.ndarray)
    assert isinstance(clf.predict_proba(cp.asarray(X)), cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(clf.predict(cp.asarray(X))), clf.predict(X))
    assert clf.score(cp.asarray(X), cp.asarray(y)) == clf.score(X, y)
    Xr, yr = regression()
    reg = small(est.MLPRegressor, backend=net_backend).fit(cp.asarray(Xr), yr)
    assert isinstance(reg.predict(cp.asarray(Xr)), cp.ndarray) and reg.predict(Xr).shape == (len(Xr),)
    assert reg.score(cp.asarray(Xr), cp.asarray(yr)) == reg.score(Xr, yr)


@pytest.mark.gpu
def test_cupy_fit_matches_numpy_fit(est):
    _cupy()
    X, y = blobs()
    # Plain SGD steps: Adam's m/√v would turn roundoff-sized gradients into ±lr steps.
    kw = {"dtype": "float64", "shuffle": False, "max_iter": 2, "batch_size": 30, "optimizer": "sgd",
          "momentum": 0.0, "learning_rate_init": 0.1}
    gpu = small(est.MLPClassifier, backend="cupy", **kw).fit(X, y)
    cpu = small(est.MLPClassifier, backend="numpy", **kw).fit(X, y)
    P_gpu, P_cpu = gpu.predict_proba(X), cpu.predict_proba(X)
    err = np.linalg.norm(P_gpu - P_cpu) / (np.linalg.norm(P_gpu) + np.linalg.norm(P_cpu))
    assert err <= tolerance("backends", "float64"), err


@pytest.mark.gpu
def test_cupy_device_inputs_are_checked_and_early_stopping_works(est):
    cp = _cupy()
    X, y = blobs()
    clf = small(est.MLPClassifier, backend="cupy", early_stopping=True).fit(cp.asarray(X), cp.asarray(y))
    assert clf.n_features_in_ == X.shape[1] and len(clf.validation_scores_) == clf.n_iter_
    with pytest.raises(ValueError, match="features"):
        clf.predict(cp.asarray(X[:, :2]))
    back = pickle.loads(pickle.dumps(clf))
    assert back.net_.backend == "cupy"
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


@pytest.mark.gpu
def test_strict_device_fit_on_cupy_input_warns_nothing(est):
    """strict_device=True on CuPy: no deprecation warning (warnings are errors here), no sync refused."""
    cp = _cupy()
    X, y = blobs()
    clf = small(est.MLPClassifier, backend="cupy", strict_device=True).fit(cp.asarray(X), cp.asarray(y))
    assert clf.n_iter_ == 5
