"""Tests of xprop.estimators: scikit-learn's estimator checks, then what scikit-learn's
own MLP tests (tests/test_sklearn_mlp_suite.py) and the comparison of numbers
(tests/test_sklearn_numbers.py) do not cover: xprop's extras (backend, dtype,
strict_device, ``net_``), the weights as attributes, the plain bug of NumPy
scalars as parameters, divergence, pickling. The GPU path (CuPy in → CuPy
out, the fit on a device) is in test_estimators_gpu.py.
"""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import unittest
import warnings

import numpy as np
import pytest

# Every test here needs scikit-learn (the estimator checks even to be collected):
# without it this module is skipped with the reason; the estimators' GPU tests live
# in test_estimators_gpu.py and are still collected.
pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install 'xprop[sklearn]'")

import scipy.sparse  # noqa: E402
from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import xprop  # noqa: E402
import xprop.backend  # noqa: E402
from xprop import estimators  # noqa: E402
from xprop.estimators import MLPClassifier, MLPRegressor  # noqa: E402

# The nets here run a few epochs for speed, short of convergence on purpose: scikit-learn's
# ConvergenceWarning is expected and ignored, except where a test asks for it (pytest.warns).
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ----------------------------------------------------------------- data
def blobs(m=120, k=4, n_classes=3, seed=0, labels=None):
    """Separable Gaussian blobs: ``X (m, k)``, ``y (m,)`` with class labels ``labels``."""
    rng = np.random.default_rng(seed)
    y = np.arange(m) % n_classes
    centers = 3.0 * rng.standard_normal((n_classes, k))
    X = centers[y] + rng.standard_normal((m, k))
    if labels is not None:
        y = np.asarray(labels)[y]
    return X, y


def regression(m=100, k=3, t=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k))
    W = rng.standard_normal((k, 1 if t is None else t))
    Y = np.tanh(X @ W) + 0.05 * rng.standard_normal((m, W.shape[1]))
    return X, (Y[:, 0] if t is None else Y)


def noise_labels(m=200, k=10, seed=0):
    """Random inputs with random labels: a net can only memorise them, so the
    validation loss rises after a few epochs (what early stopping is for)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)), rng.integers(0, 2, size=m)


def small(cls=MLPClassifier, **kw):
    kw = {"hidden_layer_sizes": (8,), "max_iter": 5, "random_state": 0, **kw}
    return cls(**kw)


# ------------------------------------------------ the optional dependency
def test_import_xprop_leaves_estimators_and_sklearn_unimported():
    code = "import sys, xprop; print('xprop.estimators' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_missing_sklearn_raises_import_error_with_the_pip_command():
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None  # what an environment without scikit-learn looks like\n"
        "try:\n"
        "    import xprop.estimators\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'xprop[sklearn]'" in out.stdout, out.stdout + out.stderr


# ------------------------------------------- scikit-learn's estimator checks
# Small nets with few iterations keep the checks fast; every solver is checked. No check is
# expected to fail. Not checked: SGD regression (with momentum 0.9 on the checks' unscaled
# targets it diverges or underfits, scikit-learn's own MLPRegressor(solver="sgd") alike: the
# same numbers, tests/test_sklearn_numbers.py) and dtype="float32" on float64 data (the
# sample-weight equivalence checks compare at rtol 1e-7, below float32 rounding).
CHECKED = [
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", max_iter=50, learning_rate_init=0.1, random_state=0),
    MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=20, random_state=0),
    MLPRegressor(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=20, random_state=0),
]

# Skips that come from the estimator itself, as they do for scikit-learn's own MLP.
INTRINSIC_SKIPS = ("does not have a decision_function method",)


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    # check_array_api_input (NumPy inputs with array-API dispatch on) runs only
    # when this variable is set; set it so that the check runs instead of skipping.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    try:
        with warnings.catch_warnings():
            # max_iter is small on purpose: not converging is expected here
            warnings.simplefilter("ignore", ConvergenceWarning)
            check(estimator)
    except unittest.SkipTest as exc:  # e.g. pandas missing: no check is dropped silently
        if any(reason in str(exc) for reason in INTRINSIC_SKIPS):
            pytest.skip(f"as for scikit-learn's MLP: {exc}")
        try:
            import pandas  # noqa: F401, PLC0415
        except ImportError:  # an optional test dependency: this check skips, saying so
            pytest.skip(f"pandas is not installed (pip install 'xprop[test]'); scikit-learn skipped "
                        f"this check: {exc}")
        pytest.fail(f"scikit-learn skipped this check ({exc}); install what it needs (the test extra)")


# ---------------------------------------------------------------- the API
EXTRAS = {"backend": "numpy", "dtype": None, "strict_device": False}


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
def test_parameters_and_defaults_are_scikit_learns_plus_the_extras(name):
    ours, theirs = getattr(estimators, name), getattr(sk_nn, name)
    assert ours().get_params() == {**theirs().get_params(), **EXTRAS}
    # the same positional parameters too (MLPRegressor's first one is loss)
    ours_sig, theirs_sig = inspect.signature(ours), inspect.signature(theirs)
    positional = [p.name for p in theirs_sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in ours_sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional


def test_the_network_follows_the_target():
    X, y = blobs(n_classes=3)
    clf = small(hidden_layer_sizes=(7, 5), activation="logistic").fit(X, y)
    assert clf.net_.sizes == (4, 7, 5, 3) and clf.n_layers_ == 4
    assert (clf.net_.activation, clf.net_.output, clf.net_.loss) == ("sigmoid", "softmax", "cross_entropy")
    binary = small().fit(X, y == 1)  # one logistic unit
    assert binary.net_.sizes[-1] == 1 and (binary.net_.output, binary.out_activation_) == ("sigmoid", "logistic")
    assert binary.predict_proba(X).shape == (len(X), 2)
    multilabel = small().fit(X, np.c_[y == 0, y == 1, y >= 1].astype(int))  # logistic units, BCE
    assert (multilabel.net_.sizes[-1], multilabel.net_.loss) == (3, "binary_cross_entropy")
    assert multilabel.predict(X).shape == (len(X), 3)
    Xr, yr = regression(k=3)
    reg = small(MLPRegressor, hidden_layer_sizes=()).fit(Xr, yr)
    assert reg.net_.sizes == (3, 1) and (reg.net_.output, reg.net_.loss) == ("identity", "mse")
    counts = np.random.default_rng(0).poisson(1.0, size=len(yr))
    poisson = small(MLPRegressor, loss="poisson").fit(Xr, counts)
    assert (poisson.net_.output, poisson.net_.loss, poisson.out_activation_) == ("exp", "poisson", "exp")
    assert np.all(poisson.predict(Xr) > 0)


def test_dtype_follows_x_unless_forced():
    X, y = regression()
    for X_dtype in (np.float32, np.float64):
        reg = small(MLPRegressor).fit(X.astype(X_dtype), y)
        assert reg.net_.dtype_name == np.dtype(X_dtype).name and reg.coefs_[0].dtype == X_dtype
        assert reg.predict(X.astype(X_dtype)).dtype == X_dtype
    forced = small(MLPRegressor, dtype="float32").fit(X, y)  # float64 X, float32 network
    assert forced.net_.dtype_name == "float32" and forced.coefs_[0].dtype == np.float32
    assert forced.predict(X.astype(np.float32)).dtype == np.float32
    assert forced.predict(X).dtype == np.float64  # predictions follow X


def test_numpy_scalar_parameters_are_accepted_as_grid_search_passes_them():
    X, y = blobs()
    plain = small(solver="sgd", alpha=1e-4, momentum=0.5, learning_rate_init=0.01).fit(X, y)
    scalars = small(solver="sgd", alpha=np.float32(1e-4), momentum=np.float64(0.5),
                    learning_rate_init=np.float64(0.01), max_iter=np.int64(5)).fit(X, y)
    np.testing.assert_allclose(scalars.predict_proba(X), plain.predict_proba(X), rtol=1e-6)
    small(alpha=np.int64(0)).fit(X, y)
    grid = GridSearchCV(small(), {"alpha": np.logspace(-4, -2, 3), "momentum": np.arange(2) / 2}, cv=2)
    assert grid.fit(X, y).best_params_["alpha"] in np.logspace(-4, -2, 3)


def test_unfitted_estimator_refuses_to_predict():
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(np.zeros((2, 3)))
    assert not hasattr(MLPClassifier(), "coefs_")


@pytest.mark.parametrize("param, value", [
    ("max_iter", 0), ("batch_size", 0), ("batch_size", "big"), ("solver", "rmsprop"),
    ("validation_fraction", 1.0), ("n_iter_no_change", 0), ("alpha", -1.0), ("momentum", 1.5),
    ("learning_rate_init", 0.0), ("hidden_layer_sizes", (8, 0)), ("dtype", "float16"),
    ("backend", "tpu"), ("early_stopping", "yes"), ("activation", "swish"), ("verbose", "loud"),
    ("learning_rate", "cosine"), ("tol", -1.0), ("beta_1", 1.0), ("epsilon", 0.0), ("max_fun", 0),
    ("power_t", -0.5), ("nesterovs_momentum", 1), ("strict_device", None),
])
def test_bad_parameters_raise_in_fit_not_in_init(param, value):
    clf = small(**{param: value})  # the constructor only stores
    assert clf.get_params()[param] is value
    with pytest.raises(ValueError, match=param):
        clf.fit(*blobs())


def test_regressor_loss_is_checked():
    with pytest.raises(ValueError, match="'loss' parameter"):
        MLPRegressor(loss="absolute_error").fit(*regression())


def test_works_in_pipeline_grid_search_and_cross_val_score():
    X, y = blobs(m=90, n_classes=3, seed=1)
    X = X * 10 + 5  # the scaler has something to do
    pipe = make_pipeline(StandardScaler(), small(max_iter=30, learning_rate_init=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X, y, cv=3)
        assert scores.shape == (3,) and scores.min() > 0.8
        grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (8,)]}, cv=3).fit(X, y)
        Xr, yr = regression()
        reg_scores = cross_val_score(small(MLPRegressor, solver="lbfgs", max_iter=100), Xr, yr, cv=3)
    assert grid.best_params_["mlpclassifier__hidden_layer_sizes"] in [(4,), (8,)]
    assert grid.score(X, y) > 0.8
    assert reg_scores.min() > 0.5


def test_clone_gives_an_unfitted_copy_with_the_same_parameters():
    clf = small(hidden_layer_sizes=(3,), backend="numpy", dtype="float32").fit(*blobs())
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "net_") and not hasattr(twin, "coefs_")


def test_pickle_round_trip_keeps_predictions_and_solver_state():
    X, y = blobs()
    for solver in ("adam", "sgd"):
        clf = small(solver=solver).fit(X, y)
        back = pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
        clf.partial_fit(X, y)  # both continue identically: the moments/velocities travelled too
        back.partial_fit(X, y)
        np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


# ---------------------------------------------------- coefs_ and intercepts_
def test_coefs_are_views_of_the_network_on_numpy_and_shaped_as_scikit_learns():
    X, y = blobs()
    clf = small(hidden_layer_sizes=(6, 5)).fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(4, 6), (6, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(6,), (5,), (3,)]
    assert clf.coefs_ is clf.coefs_  # cached: reading twice builds nothing
    assert np.shares_memory(clf.coefs_[0], clf.net_.params.flat)
    clf.coefs_[2][...] = 0.0  # writing into them writes into the network
    clf.intercepts_[2][...] = [0.0, 5.0, 0.0]
    np.testing.assert_array_equal(clf.predict(X), np.ones(len(X)))


def test_assigning_coefs_sets_the_networks_weights():
    X, y = blobs()
    clf = small(hidden_layer_sizes=(6,)).fit(X, y)
    W1, b1 = np.ones((4, 6)) * 0.1, np.zeros(6)
    clf.coefs_ = [W1, np.zeros((6, 3))]
    clf.intercepts_[0] = b1  # an entry of the list, as scikit-learn's users do
    clf.intercepts_ = [b1, np.array([0.0, 0.0, 1.0])]
    np.testing.assert_array_equal(clf.predict(X), np.full(len(X), 2))
    np.testing.assert_array_equal(clf.net_.params["W1"], W1)
    with pytest.raises(ValueError, match="W2"):
        clf.coefs_ = [W1, np.zeros((5, 3))]
        clf.predict(X)


# ------------------------------------------------- iterations and stopping
def test_n_iter_is_set_anew_by_every_fit_and_partial_fit_and_the_curve_grows():
    X, y = blobs()
    clf = small(max_iter=4, warm_start=True, tol=0.0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(4\\)"):
        clf.fit(X, y)
    assert clf.n_iter_ == 4 and len(clf.loss_curve_) == 4 and clf.t_ == 4 * len(X)
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 5 and clf.t_ == 5 * len(X)
    clf.set_params(warm_start=False, max_iter=2)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)  # afresh
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2


def test_training_loss_stops_after_n_iter_no_change_epochs_without_improving_by_tol():
    X, y = blobs()
    clf = small(max_iter=500, tol=0.05, n_iter_no_change=3, learning_rate_init=0.01).fit(X, y)
    curve = clf.loss_curve_
    best, count = np.inf, 0
    for epoch, loss in enumerate(curve, start=1):  # scikit-learn's rule, replayed
        count = count + 1 if loss > best - 0.05 else 0
        best = min(best, loss)
        if count > 3:
            break
    assert epoch == clf.n_iter_ == len(curve) < 500
    assert clf.best_loss_ == min(curve)


def test_early_stopping_keeps_the_best_epochs_weights():
    X, y = noise_labels()
    kw = {"hidden_layer_sizes": (64,), "learning_rate_init": 0.01, "batch_size": 32, "early_stopping": True,
          "validation_fraction": 0.3, "tol": 0.0}
    long = small(max_iter=300, n_iter_no_change=4, **kw).fit(X, y)
    scores = long.validation_scores_
    best = int(np.argmax(scores))  # the first epoch with the highest score
    assert long.best_validation_score_ == scores[best] and len(scores) == long.n_iter_ < 300
    assert best + 1 < long.n_iter_, "the test needs epochs after the best one"
    assert long.best_loss_ is None
    # A fit that ends at the best epoch: the same draws, so the same epochs up to there.
    with pytest.warns(ConvergenceWarning):
        short = small(max_iter=best + 1, n_iter_no_change=300, **kw).fit(X, y)
    assert short.validation_scores_ == scores[:best + 1]
    for kept, at_best in zip(long.coefs_ + long.intercepts_, short.coefs_ + short.intercepts_):
        np.testing.assert_array_equal(kept, at_best)


def test_divergence_without_early_stopping_is_a_value_error_naming_the_cause():
    Xr, yr = regression()
    reg = small(MLPRegressor, solver="sgd", learning_rate_init=10.0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow on the way
        with pytest.raises(ValueError, match="non-finite parameter weights.*diverged"):
            reg.fit(Xr, yr * 1e3)


def test_divergence_with_early_stopping_stops_restores_the_best_epoch_and_warns():
    Xr, yr = regression()
    reg = small(MLPRegressor, solver="sgd", learning_rate_init=1.0, activation="identity", max_iter=50,
                early_stopping=True, n_iter_no_change=50, hidden_layer_sizes=(50,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.warns(ConvergenceWarning, match="diverged"):
            reg.fit(Xr, yr * 1e3)
    assert reg.n_iter_ < 50 and np.isnan(reg.validation_scores_[-1])
    assert all(np.isfinite(W).all() for W in reg.coefs_)


def test_verbose_prints_scikit_learns_lines(capsys):
    X, y = blobs()
    small(max_iter=2, verbose=True, early_stopping=True, tol=0.0).fit(X, y)
    small(solver="lbfgs", max_iter=2, verbose=1).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"Iteration 1, loss = {out[0].split('= ')[1]}",
                       f"Validation score: {out[1].split(': ')[1]}",
                       f"Iteration 2, loss = {out[2].split('= ')[1]}"]
    assert sum(line.startswith("Iteration ") for line in out) == 4


def test_partial_fit_is_not_available_for_lbfgs():
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(MLPRegressor(solver="sgd"), "partial_fit")


def test_sparse_x_trains_as_the_dense_x_does():
    X, y = blobs()
    dense = small(solver="sgd").fit(X, y)
    sparse = small(solver="sgd").fit(scipy.sparse.csr_matrix(X), y)
    np.testing.assert_array_equal(sparse.predict_proba(scipy.sparse.csc_matrix(X)), dense.predict_proba(X))


def test_sample_weight_of_ones_is_no_weight_and_integer_weights_repeat_rows():
    X, y = blobs(m=40)
    plain = small(solver="lbfgs").fit(X, y)
    ones = small(solver="lbfgs").fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_array_equal(ones.predict_proba(X), plain.predict_proba(X))
    w = (np.arange(len(y)) // 3) % 3  # zeros included; every class keeps weighted rows
    weighted = small(solver="lbfgs", max_iter=200, tol=1e-10).fit(X, y, sample_weight=w)
    repeated = small(solver="lbfgs", max_iter=200, tol=1e-10).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-5, atol=1e-7)


def test_strict_device_is_stored_and_numpy_has_nothing_to_check():
    clf = small(strict_device=True).fit(*blobs())
    assert clf.strict_device is True and clf.n_iter_ == 5


def test_unpickling_a_cupy_model_where_cupy_is_unusable_loads_it_on_numpy(monkeypatch):
    X, y = blobs()
    clf = small().fit(X, y)
    state = clf.__getstate__()
    state["net_"]["backend"] = "cupy"  # as if pickled from a GPU model
    monkeypatch.setattr(xprop.backend, "cupy_status", lambda: (False, "simulated: no GPU here"))
    back = MLPClassifier.__new__(MLPClassifier)
    with pytest.warns(RuntimeWarning, match="loaded onto NumPy"):
        back.__setstate__(state)
    assert back.net_.backend == "numpy"
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    back.partial_fit(X, y)  # and it keeps training there


def test_warm_start_may_switch_solver_and_turn_early_stopping_on():
    X, y = blobs()
    clf = small(solver="lbfgs", warm_start=True).fit(X, y)
    assert not hasattr(clf, "loss_curve_")  # as scikit-learn's: no curve for lbfgs
    clf.set_params(solver="adam", max_iter=3).fit(X, y)
    assert len(clf.loss_curve_) == 3
    clf.set_params(early_stopping=True).fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_ and len(clf.loss_curve_) == 3 + clf.n_iter_


def test_assigned_weights_are_early_stoppings_start_on_a_fresh_estimator():
    """Weights assigned before the first fit are where early stopping starts: a fit that
    diverges in its first epoch (no score ever beats the start) gives them back unchanged."""
    X, y = blobs()
    W = [np.full((4, 6), 0.1), np.full((6, 3), 0.1)]
    b = [np.zeros(6), np.array([0.0, 0.0, 1.0])]
    clf = small(hidden_layer_sizes=(6,), warm_start=True, early_stopping=True, solver="sgd",
                learning_rate_init=1e300, max_iter=5, batch_size=10)
    clf.coefs_, clf.intercepts_ = [w.copy() for w in W], [v.copy() for v in b]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the rate overflows on purpose
        with pytest.warns(ConvergenceWarning, match="diverged in iteration 1"):
            clf.fit(X, y)
    assert len(clf.validation_scores_) == 1
    for got, want in zip(clf.coefs_ + clf.intercepts_, W + b):
        np.testing.assert_array_equal(got, want)
