"""Tests of xprop.estimators: scikit-learn's own checks, then the documented semantics.

The "Training semantics" section of the module docstring of
:mod:`xprop.estimators` is the contract; each of its sentences has a test
below, named after it. Most of them watch the calls to :func:`xprop.fit`
through :class:`FitSpy`, which records what the estimator handed to fit (the
data, the optimizer, the weights at the start of the call) and then runs the
real fit.
"""

from __future__ import annotations

import math
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

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import xprop  # noqa: E402
import xprop.backend  # noqa: E402
from xprop import estimators  # noqa: E402
from xprop.backend import to_numpy  # noqa: E402
from xprop.estimators import MLPClassifier, MLPRegressor  # noqa: E402
from xprop.tolerances import tolerance  # noqa: E402


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


class FitSpy:
    """Stands in for ``xprop.fit`` inside xprop.estimators and records each call."""

    def __init__(self):
        self.real = xprop.train.fit
        self.calls = []

    def __call__(self, net, X, Y, **kwargs):
        opt = kwargs["optimizer"]
        val = kwargs["validation"]
        self.calls.append({
            **kwargs,
            "X": np.array(to_numpy(X)), "Y": np.array(to_numpy(Y)),
            "validation": None if val is None else tuple(np.array(to_numpy(a)) for a in val),
            "params_at_start": {k: np.array(to_numpy(v)) for k, v in net.params.items()},
            "optimizer_t_at_start": opt.t,
            "net": net,
        })
        return self.real(net, X, Y, **kwargs)


@pytest.fixture
def spy(monkeypatch):
    s = FitSpy()
    monkeypatch.setattr(estimators, "xprop_fit", s)
    return s


def host_params(est):
    return {k: np.array(to_numpy(v)) for k, v in est.net_.params.items()}


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
# Small nets keep the whole suite fast. The first two are the defaults but
# for size and speed; the other two cover early stopping, SGD and float64.
# Seeded, so the checks are the same on every run: unseeded, SGD with momentum at this rate
# diverges on a few draws of make_regression's unscaled targets (a clear TrainingDiverged,
# as it should, but a different outcome from run to run).
CHECKED = [
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, learning_rate_init=0.01, batch_size=32,
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, learning_rate_init=0.01, batch_size=32,
                 random_state=0),
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=40, learning_rate_init=0.003, batch_size=32,
                  optimizer="sgd", early_stopping=True, validation_fraction=0.2, dtype="float64",
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(8,), max_iter=40, learning_rate_init=0.003, batch_size=32,
                 optimizer="sgd", early_stopping=True, validation_fraction=0.2, dtype="float64",
                 random_state=0),
]


def expected_failed_checks(estimator):
    """Every check of scikit-learn that fails, with why (run as strict xfails)."""
    if isinstance(estimator, MLPRegressor) and estimator.dtype == "float32":
        return {
            "check_regressor_multioutput": (
                "predictions come in the network's dtype, float32 by default, and the check "
                "requires float64 multi-output predictions; the dtype='float64' instance passes it"
            ),
        }
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    # check_array_api_input (NumPy inputs with array-API dispatch on) runs only
    # when this variable is set; set it so that the check runs instead of skipping.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    try:
        check(estimator)
    except unittest.SkipTest as exc:  # no check is dropped silently
        try:
            import pandas  # noqa: F401, PLC0415
        except ImportError:  # an optional test dependency: this check skips, saying so
            pytest.skip(f"pandas is not installed (pip install 'xprop[test]'); scikit-learn skipped "
                        f"this check: {exc}")
        pytest.fail(f"scikit-learn skipped this check ({exc}); install what it needs (the test extra)")


# ---------------------------------------------------------------- the API
def test_defaults_are_the_documented_ones():
    assert MLPClassifier().get_params() == MLPRegressor().get_params() == {
        "hidden_layer_sizes": (100,), "activation": "relu", "optimizer": "adam",
        "learning_rate_init": 1e-3, "batch_size": 200, "max_iter": 200, "early_stopping": False,
        "validation_fraction": 0.1, "n_iter_no_change": 10, "alpha": 1e-4, "momentum": 0.9,
        "shuffle": True, "random_state": None, "warm_start": False, "verbose": False,
        "backend": "numpy", "dtype": "float32", "strict_device": False,
    }


def test_network_is_built_from_the_parameters():
    X, y = blobs(n_classes=3)
    clf = small(hidden_layer_sizes=(7, 5), activation="tanh", dtype="float64").fit(X, y)
    assert clf.net_.sizes == (4, 7, 5, 3)
    assert (clf.net_.activation, clf.net_.output, clf.net_.loss) == ("tanh", "softmax", "cross_entropy")
    assert clf.net_.dtype_name == "float64" and clf.net_.backend == "numpy"
    Xr, yr = regression(k=3)
    reg = small(MLPRegressor, hidden_layer_sizes=()).fit(Xr, yr)
    assert reg.net_.sizes == (3, 1)
    assert (reg.net_.output, reg.net_.loss) == ("identity", "mse")


def test_binary_classification_uses_a_two_unit_softmax():
    X, y = blobs(n_classes=2, labels=["no", "yes"])
    clf = small(max_iter=100, learning_rate_init=0.01).fit(X, y)
    assert clf.net_.sizes[-1] == 2 and clf.net_.output == "softmax"
    P = clf.predict_proba(X)
    assert P.shape == (len(X), 2)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[np.argmax(P, axis=1)])
    assert clf.score(X, y) > 0.9


def test_classes_are_sorted_and_unit_j_is_classes_j():
    # Labels 30/10/20 must train exactly as the indices 2/0/1 they are mapped to.
    X, y_idx = blobs(n_classes=3)
    y_lab = np.array([10, 20, 30])[y_idx]
    a = small().fit(X, y_lab)
    b = small().fit(X, y_idx)
    np.testing.assert_array_equal(a.classes_, [10, 20, 30])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.predict(X), a.classes_[b.predict(X)])


def test_regressor_output_shape_follows_y():
    X, y = regression(t=None)
    assert small(MLPRegressor).fit(X, y).predict(X).shape == (len(X),)
    X2, Y2 = regression(t=2)
    assert small(MLPRegressor).fit(X2, Y2).predict(X2).shape == (len(X2), 2)
    assert small(MLPRegressor).fit(X, y.reshape(-1, 1)).predict(X).shape == (len(X), 1)


def test_predictions_are_in_the_network_dtype():
    X, y = regression()
    assert small(MLPRegressor).fit(X, y).predict(X).dtype == np.float32
    assert small(MLPRegressor, dtype="float64").fit(X, y).predict(X).dtype == np.float64


def test_predict_log_proba_is_the_log_of_predict_proba():
    X, y = blobs()
    clf = small().fit(X, y)
    np.testing.assert_array_equal(clf.predict_log_proba(X), np.log(clf.predict_proba(X)))


def test_unfitted_estimator_refuses_to_predict():
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(np.zeros((2, 3)))


@pytest.mark.parametrize("param, value", [
    ("max_iter", 0), ("batch_size", 0), ("batch_size", "big"), ("optimizer", "rmsprop"),
    ("validation_fraction", 1.0), ("n_iter_no_change", 0), ("alpha", -1.0), ("momentum", 1.0),
    ("learning_rate_init", 0.0), ("hidden_layer_sizes", (8, 0)), ("dtype", "float16"),
    ("backend", "tpu"), ("early_stopping", "yes"), ("activation", "swish"), ("verbose", "loud"),
])
def test_bad_parameters_raise_in_fit_not_in_init(param, value):
    clf = small(**{param: value})  # the constructor only stores
    assert clf.get_params()[param] == value
    with pytest.raises(ValueError, match=param):
        clf.fit(*blobs())


def test_works_in_pipeline_grid_search_and_cross_val_score():
    X, y = blobs(m=90, n_classes=3, seed=1)
    X = X * 10 + 5  # the scaler has something to do
    pipe = make_pipeline(StandardScaler(), small(max_iter=30, learning_rate_init=0.01))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(4,), (8,)]}, cv=3).fit(X, y)
    assert grid.best_params_["mlpclassifier__hidden_layer_sizes"] in [(4,), (8,)]
    assert grid.score(X, y) > 0.8
    Xr, yr = regression()
    assert cross_val_score(small(MLPRegressor, max_iter=50, learning_rate_init=0.01), Xr, yr, cv=3).min() > 0.5


def test_clone_gives_an_unfitted_copy_with_the_same_parameters():
    clf = small(hidden_layer_sizes=(3,)).fit(*blobs())
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "net_")


def test_batch_size_auto_is_min_200_n_and_larger_sizes_are_clipped(spy):
    small(batch_size="auto", max_iter=1).fit(*blobs(m=60))
    small(batch_size="auto", max_iter=1).fit(*blobs(m=300))
    small(batch_size=500, max_iter=1).fit(*blobs(m=60))
    assert [c["batch_size"] for c in spy.calls] == [60, 200, 60]


def test_optimizer_parameters_reach_the_optimizer(spy):
    X, y = blobs()
    small(optimizer="sgd", learning_rate_init=0.05, momentum=0.5, alpha=0.01).fit(X, y)
    small(optimizer="adam", learning_rate_init=0.02, alpha=0.001).fit(X, y)
    sgd, adam = spy.calls[0]["optimizer"], spy.calls[1]["optimizer"]
    assert isinstance(sgd, xprop.SGD) and isinstance(adam, xprop.Adam)
    assert (sgd.lr, sgd.momentum, sgd.weight_decay) == (0.05, 0.5, 0.01)
    assert (adam.lr, adam.weight_decay) == (0.02, 0.001)


def test_verbose_and_shuffle_reach_fit(spy):
    X, y = blobs()
    small(verbose=False, shuffle=True).fit(X, y)
    small(verbose=True, shuffle=False).fit(X, y)
    small(verbose=1).fit(X, y)
    assert [(c["progress"], c["shuffle"]) for c in spy.calls] == [(False, True), (True, False), (True, True)]


def test_strict_device_is_stored_and_not_passed_to_a_fit_without_it(spy):
    clf = small(strict_device=True).fit(*blobs())
    assert clf.strict_device is True
    assert "strict_device" not in spy.calls[0]


def test_strict_device_is_passed_to_a_fit_that_accepts_it(monkeypatch):
    seen = []

    def fit_with_strict_device(net, X, Y, *, strict_device=False, **kwargs):
        seen.append(strict_device)
        return xprop.train.fit(net, X, Y, **kwargs)

    monkeypatch.setattr(estimators, "xprop_fit", fit_with_strict_device)
    small(strict_device=True).fit(*blobs())
    small(strict_device=False).fit(*blobs())
    assert seen == [True, False]


def test_pickle_round_trip_keeps_predictions_and_optimizer_state():
    X, y = blobs()
    clf = small().fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    assert back._optimizer.t == clf._optimizer.t
    # Both continue identically: the optimizer moments travelled too.
    clf.partial_fit(X, y)
    back.partial_fit(X, y)
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


# ------------------------------------------------- max_iter and n_iter_
def test_one_iteration_is_one_epoch_of_mini_batches():
    X, y = blobs(m=50)
    clf = small(max_iter=3, batch_size=16).fit(X, y)
    assert clf._optimizer.t == 3 * math.ceil(50 / 16)  # 3 epochs of 4 steps each


def test_fit_without_early_stopping_runs_exactly_max_iter_epochs():
    X, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no ConvergenceWarning
        clf = small(max_iter=7).fit(X, y)
    assert clf.n_iter_ == 7 and len(clf.loss_curve_) == 7
    assert clf.best_loss_ == min(clf.loss_curve_)


# --------------------------------------------------- fit without warm_start
def test_cold_fit_starts_afresh_and_resets_the_counters(spy):
    X, y = blobs()
    clf = small(max_iter=3).fit(X, y)
    clf.set_params(max_iter=2).fit(X, y)
    first, second = spy.calls
    for name, W in first["params_at_start"].items():  # the same fresh initial weights again
        np.testing.assert_array_equal(second["params_at_start"][name], W)
    assert second["optimizer"] is not first["optimizer"] and second["optimizer_t_at_start"] == 0
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2


def test_same_integer_random_state_gives_the_same_model():
    X, y = blobs()
    a, b = small(random_state=3).fit(X, y), small(random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = small(random_state=4).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


# ------------------------------------------------------------- warm_start
def test_warm_start_keeps_weights_classes_and_counters_with_a_fresh_optimizer(spy):
    X, y = blobs(labels=["a", "b", "c"])
    clf = small(max_iter=3, warm_start=True).fit(X, y)
    after_first, curve = host_params(clf), list(clf.loss_curve_)
    clf.set_params(max_iter=2).fit(X, y)
    second = spy.calls[1]
    for name, W in after_first.items():
        np.testing.assert_array_equal(second["params_at_start"][name], W)
    assert second["optimizer"] is not spy.calls[0]["optimizer"] and second["optimizer_t_at_start"] == 0
    np.testing.assert_array_equal(clf.classes_, ["a", "b", "c"])
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5 and clf.loss_curve_[:3] == curve


@pytest.mark.parametrize("change", [{"hidden_layer_sizes": (9,)}, {"activation": "tanh"},
                                    {"dtype": "float64"}])
def test_warm_start_refuses_a_different_network(change):
    X, y = blobs()
    clf = small(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="warm_start"):
        clf.set_params(**change).fit(X, y)


def test_warm_start_refuses_a_network_on_another_backend():
    X, y = blobs()
    clf = small(warm_start=True).fit(X, y)
    clf.net_.backend = "cupy"  # as if fitted with backend="cupy"; this machine may have no GPU
    with pytest.raises(ValueError, match="backend 'cupy' \\(now 'numpy'\\)"):
        clf.fit(X, y)


def test_warm_start_y_may_only_use_known_classes():
    X, y = blobs(n_classes=3)
    clf = small(warm_start=True).fit(X, y)
    clf.fit(X[y < 2], y[y < 2])  # a subset of classes_ is fine
    assert clf.net_.sizes[-1] == 3
    with pytest.raises(ValueError, match="not in classes_"):
        clf.fit(X, np.where(y == 2, 7, y))


# ------------------------------------------------------------ partial_fit
def test_partial_fit_runs_one_epoch_over_the_given_data(spy):
    X, y = blobs(m=50)
    clf = small(batch_size=16)
    for i in range(1, 4):
        clf.partial_fit(X, y, classes=[0, 1, 2])
        assert clf.n_iter_ == i and len(clf.loss_curve_) == i
    assert [c["epochs"] for c in spy.calls] == [1, 1, 1]
    assert all(c["X"].shape[0] == 50 for c in spy.calls)
    assert clf._optimizer.t == 3 * math.ceil(50 / 16)


def test_partial_fit_continues_weights_and_optimizer_from_fit_and_partial_fit(spy):
    X, y = blobs()
    clf = small(max_iter=2).fit(X, y)
    after_fit = host_params(clf)
    clf.partial_fit(X, y)
    after_partial = host_params(clf)
    clf.partial_fit(X, y)
    fit_call, p1, p2 = spy.calls
    assert p1["optimizer"] is fit_call["optimizer"] is p2["optimizer"]
    steps = math.ceil(len(X) / 200)
    assert (p1["optimizer_t_at_start"], p2["optimizer_t_at_start"]) == (2 * steps, 3 * steps)
    for name in after_fit:
        np.testing.assert_array_equal(p1["params_at_start"][name], after_fit[name])
        np.testing.assert_array_equal(p2["params_at_start"][name], after_partial[name])
    assert clf.n_iter_ == 4


@pytest.mark.parametrize("change", [{"learning_rate_init": 0.01}, {"alpha": 0.5},
                                    {"optimizer": "sgd"}, {"momentum": 0.1}])
def test_partial_fit_makes_a_fresh_optimizer_when_its_settings_changed(spy, change):
    X, y = blobs()
    clf = small().partial_fit(X, y, classes=[0, 1, 2])
    clf.set_params(**change).partial_fit(X, y)
    assert spy.calls[1]["optimizer"] is not spy.calls[0]["optimizer"]
    assert spy.calls[1]["optimizer_t_at_start"] == 0


def test_first_partial_fit_initialises_and_the_classifier_needs_classes():
    X, y = blobs(n_classes=3)
    with pytest.raises(ValueError, match="classes must be passed"):
        small().partial_fit(X, y)
    clf = small().partial_fit(X[y < 2], y[y < 2], classes=[2, 1, 0, 5])  # 2 and 5 not yet seen
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2, 5])
    assert clf.predict_proba(X).shape == (len(X), 4) and clf.n_iter_ == 1
    clf.partial_fit(X, y)  # class 2 arrives later
    reg = small(MLPRegressor).partial_fit(*regression())
    assert reg.n_iter_ == 1


def test_later_partial_fit_checks_classes_and_labels():
    X, y = blobs(n_classes=3)
    clf = small().partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y, classes=[2, 0, 1])  # the same set is accepted
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X, np.where(y == 2, 9, y))


def test_partial_fit_ignores_max_iter_early_stopping_and_warm_start(spy):
    X, y = blobs()
    clf = small(max_iter=50, early_stopping=True, warm_start=False)
    clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y)
    for call in spy.calls:
        assert call["epochs"] == 1 and call["validation"] is None and call["patience"] is None
        assert call["X"].shape[0] == len(X)  # nothing held out
    assert clf.n_iter_ == 2  # the second call continued although warm_start=False


# --------------------------------------------------------- early stopping
def test_early_stopping_holds_out_a_stratified_fraction_not_trained_on(spy):
    X, y = blobs(m=100, n_classes=2)
    y = (np.arange(100) < 60).astype(int)  # 60 / 40
    small(early_stopping=True, validation_fraction=0.2).fit(X, y)
    call = spy.calls[0]
    X_val, y_val = call["validation"]
    assert call["X"].shape[0] == 80 and X_val.shape[0] == 20
    assert np.bincount(y_val).tolist() == [8, 12]  # the 40/60 proportions of y
    rows = np.concatenate([call["X"], X_val]).astype(np.float64)
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(X, axis=0))  # disjoint, all rows used


def _stopping_epoch(val_losses, patience):
    """The epoch the documented rule stops at (None: it never stops)."""
    best, bad = math.inf, 0
    for epoch, loss in enumerate(val_losses, start=1):
        if loss < best:
            best, bad = loss, 0
        else:
            bad += 1
            if bad == patience:
                return epoch
    return None


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_stops_after_n_iter_no_change_epochs_without_a_lower_validation_loss(cls):
    X, y = noise_labels()
    clf = small(cls, hidden_layer_sizes=(64,), max_iter=300, learning_rate_init=0.01, batch_size=32,
                early_stopping=True, n_iter_no_change=4, validation_fraction=0.3).fit(X, y)
    curve = clf.validation_loss_curve_
    assert clf.n_iter_ < 300, "the data should make the validation loss rise"
    assert _stopping_epoch(curve, 4) == clf.n_iter_ == len(curve)
    assert clf.best_iter_ == int(np.argmin(curve)) + 1 == clf.n_iter_ - 4


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_restores_the_best_epochs_weights(spy, cls):
    X, y = noise_labels()
    clf = small(cls, hidden_layer_sizes=(64,), max_iter=300, learning_rate_init=0.01, batch_size=32,
                early_stopping=True, n_iter_no_change=4, validation_fraction=0.3).fit(X, y)
    X_val, Y_val = spy.calls[0]["validation"]
    kept = xprop.evaluate(clf.net_, X_val, Y_val)["loss"]
    curve = clf.validation_loss_curve_
    assert clf.best_validation_loss_ == min(curve)
    # fit validates through the training step's buffers, evaluate through the plain forward
    # pass: the same loss up to float32 roundoff of its (positive) terms
    assert abs(kept - min(curve)) <= tolerance("fast", clf.net_.dtype_name) * min(curve)
    others = sorted(curve)[1]
    assert others - min(curve) > 10 * tolerance("fast", clf.net_.dtype_name) * min(curve), (
        "another epoch's loss is as close: the check could not tell them apart")
    assert kept < curve[-1]  # not the last epoch's model
    # The recorded score of the best epoch is the score of the fitted model.
    y_val = Y_val if cls is MLPClassifier else Y_val[:, 0]
    assert clf.best_validation_score_ == clf.validation_scores_[clf.best_iter_ - 1]
    assert clf.best_validation_score_ == pytest.approx(clf.score(X_val, y_val), abs=0, rel=1e-12)


def test_early_stopping_still_counts_the_epochs_after_the_best():
    X, y = noise_labels()
    clf = small(hidden_layer_sizes=(64,), max_iter=300, learning_rate_init=0.01, batch_size=32,
                early_stopping=True, n_iter_no_change=4, validation_fraction=0.3).fit(X, y)
    assert clf.n_iter_ == len(clf.loss_curve_) == len(clf.validation_scores_) == clf.best_iter_ + 4


def test_early_stopping_stops_at_max_iter_at_the_latest():
    X, y = blobs()
    clf = small(max_iter=3, early_stopping=True, n_iter_no_change=50).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.validation_scores_) == 3


def test_validation_attributes_are_none_without_early_stopping():
    clf = small().fit(*blobs())
    assert clf.validation_scores_ is None and clf.validation_loss_curve_ is None
    assert clf.best_iter_ is None and clf.best_validation_loss_ is None


# -------------------------------------------------------------------- CuPy
# The CuPy cases (GPU tests, and CuPy input recognised without a device) are in
# tests/test_estimators_gpu.py, which needs scikit-learn only inside its tests.


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
