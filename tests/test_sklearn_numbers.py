"""xprop's estimators give scikit-learn's numbers.

Both estimators draw the same initial weights, validation split and
shuffling permutations from ``random_state`` and apply the same update
rules, so with the same data and parameters the fitted weights agree to
rounding (the ``sklearn`` entry of :mod:`xprop.tolerances`): the strongest
comparison, run here for every solver and output kind. The worked example
starts both from the *same copied weights* (scikit-learn's after one epoch,
assigned to xprop's ``coefs_``/``intercepts_``), so it holds whatever the
initialisation. Across seeds, accuracy and loss are compared with the
seed-to-seed spread of scikit-learn's own results.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn (xprop's [sklearn] extra) is not installed")

import scipy.sparse  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from xprop import estimators as xe  # noqa: E402
from xprop.tolerances import tolerance  # noqa: E402

X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
X_DIGITS = X_DIGITS[:400] / 16.0
Y_DIGITS = Y_DIGITS[:400]
X_REG, Y_REG = make_regression(n_samples=150, n_features=6, noise=5.0, random_state=0)
Y_REG = Y_REG / Y_REG.std()
X_ML, Y_ML = make_multilabel_classification(n_samples=120, n_features=8, n_classes=4, random_state=0)
X_ML = X_ML / X_ML.max()


def weight_error(ours, theirs):
    """Largest |difference| of any weight or bias, relative to the largest entry of its array."""
    worst = 0.0
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape and a.dtype == b.dtype
        worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    return worst


def fit_both(cls_name, X, y, sample_weight=None, **params):
    kw = {} if sample_weight is None else {"sample_weight": sample_weight}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = getattr(sk, cls_name)(**params).fit(X, y, **kw)
        ours = getattr(xe, cls_name)(**params).fit(X, y, **kw)
    return ours, theirs


def assert_same_fit(ours, theirs, dtype="float64"):
    assert ours.n_iter_ == theirs.n_iter_
    for name in ("n_layers_", "n_outputs_", "out_activation_", "t_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    err = weight_error(ours, theirs)
    assert err <= tolerance("sklearn", dtype), f"weights differ by {err:.3g} (relative)"
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=tolerance("sklearn", dtype), abs=0)
    if hasattr(theirs, "loss_curve_"):
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=tolerance("sklearn", dtype))


STOCHASTIC = [
    {"solver": "sgd"},
    {"solver": "sgd", "nesterovs_momentum": False, "momentum": 0.5, "learning_rate": "invscaling"},
    {"solver": "sgd", "learning_rate": "adaptive", "tol": 0.05, "n_iter_no_change": 2},
    {"solver": "sgd", "shuffle": False, "alpha": 0.05},
    {"solver": "adam"},
    {"solver": "adam", "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-6, "batch_size": 64},
    {"solver": "adam", "early_stopping": True, "validation_fraction": 0.2, "n_iter_no_change": 3},
]


@pytest.mark.parametrize("params", STOCHASTIC, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_stochastic_solvers_give_scikit_learns_weights(params):
    kw = {"hidden_layer_sizes": (16, 8), "random_state": 0, "max_iter": 12, "learning_rate_init": 0.01,
          **params}
    assert_same_fit(*fit_both("MLPClassifier", X_DIGITS, Y_DIGITS, **kw))
    assert_same_fit(*fit_both("MLPRegressor", X_REG, Y_REG, **kw))


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_lbfgs_gives_scikit_learns_weights(activation):
    kw = {"solver": "lbfgs", "hidden_layer_sizes": (12,), "random_state": 1, "max_iter": 10,
          "activation": activation, "alpha": 1e-3}
    assert_same_fit(*fit_both("MLPClassifier", X_DIGITS, Y_DIGITS, **kw))
    assert_same_fit(*fit_both("MLPRegressor", X_REG, Y_REG, **kw))


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_every_output_kind_gives_scikit_learns_weights(solver):
    kw = {"solver": solver, "hidden_layer_sizes": (10,), "random_state": 2, "max_iter": 10}
    binary = Y_DIGITS < 5
    ours, theirs = fit_both("MLPClassifier", X_DIGITS, binary, **kw)
    assert ours.out_activation_ == "logistic" and ours.coefs_[-1].shape == (10, 1)
    assert_same_fit(ours, theirs)
    ours, theirs = fit_both("MLPClassifier", X_ML, Y_ML, **kw)  # multilabel indicator y
    assert ours.out_activation_ == "logistic" and ours.coefs_[-1].shape == (10, 4)
    assert_same_fit(ours, theirs)
    counts = np.random.default_rng(0).poisson(np.exp(X_REG[:, 0] / 3))
    ours, theirs = fit_both("MLPRegressor", X_REG, counts, loss="poisson", **kw)
    assert ours.out_activation_ == "exp"
    assert_same_fit(ours, theirs)
    ours, theirs = fit_both("MLPRegressor", X_REG, np.c_[Y_REG, -Y_REG, 2 * Y_REG], **kw)
    assert_same_fit(ours, theirs)


def test_sample_weight_and_sparse_x_give_scikit_learns_weights():
    w = np.random.default_rng(3).uniform(0.2, 3.0, size=len(Y_DIGITS))
    for solver in ("sgd", "lbfgs"):
        kw = {"solver": solver, "hidden_layer_sizes": (10,), "random_state": 3, "max_iter": 8}
        assert_same_fit(*fit_both("MLPClassifier", X_DIGITS, Y_DIGITS, sample_weight=w, **kw))
        assert_same_fit(*fit_both("MLPClassifier", scipy.sparse.csr_array(X_DIGITS), Y_DIGITS, **kw))


def test_float32_data_gives_a_float32_model_close_to_scikit_learns():
    X = X_DIGITS.astype(np.float32)
    ours, theirs = fit_both("MLPClassifier", X, Y_DIGITS, hidden_layer_sizes=(16,), random_state=0,
                            max_iter=5, learning_rate_init=0.01)
    assert ours.coefs_[0].dtype == theirs.coefs_[0].dtype == np.float32
    assert ours.predict_proba(X).dtype == np.float32
    assert weight_error(ours, theirs) <= tolerance("sklearn", "float32")


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_one_epoch_from_the_same_copied_weights_matches_scikit_learn(solver):
    """The worked check: scikit-learn's weights after one epoch are copied into
    xprop's estimator through ``coefs_``/``intercepts_``; one more epoch on
    each, without shuffling, gives the same weights to rounding."""
    kw = {"solver": solver, "hidden_layer_sizes": (12,), "max_iter": 1, "shuffle": False, "alpha": 0.01,
          "learning_rate_init": 0.05, "batch_size": 50, "warm_start": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = sk.MLPClassifier(random_state=5, **kw).fit(X_DIGITS, Y_DIGITS)
        ours = xe.MLPClassifier(random_state=123, **kw)  # another seed: its own draw is unused
        ours.coefs_ = [W.copy() for W in theirs.coefs_]
        ours.intercepts_ = [b.copy() for b in theirs.intercepts_]
        start = [W.copy() for W in theirs.coefs_]
        theirs.fit(X_DIGITS, Y_DIGITS)
        ours.fit(X_DIGITS, Y_DIGITS)
    assert not np.allclose(theirs.coefs_[0], start[0]), "the epoch must move the weights"
    assert weight_error(ours, theirs) <= tolerance("sklearn", "float64")
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=tolerance("sklearn", "float64"), abs=0)


def test_accuracy_and_loss_over_seeds_are_within_scikit_learns_own_spread():
    """Five seeds each; the means of xprop's and scikit-learn's test accuracy and final
    loss may differ by at most the standard error of scikit-learn's mean over the
    seeds (its seed-to-seed noise): a model that merely trains "about as well" can
    pass this, one that trains differently, e.g. another penalty scaling, cannot."""
    X_train, y_train, X_test, y_test = X_DIGITS[:300], Y_DIGITS[:300], X_DIGITS[300:], Y_DIGITS[300:]
    results = {"ours": [], "theirs": []}
    for seed in range(5):
        ours, theirs = fit_both("MLPClassifier", X_train, y_train, hidden_layer_sizes=(20,), max_iter=15,
                                random_state=seed, alpha=0.5)
        results["ours"].append((ours.score(X_test, y_test), ours.loss_))
        results["theirs"].append((theirs.score(X_test, y_test), theirs.loss_))
    ours, theirs = np.array(results["ours"]), np.array(results["theirs"])
    noise = theirs.std(axis=0, ddof=1) / np.sqrt(len(theirs))
    assert np.all(noise > 0)
    assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) <= noise), (ours, theirs)
