"""scikit-learn's multilayer perceptrons, trained by xprop: swap the import, keep the rest.

>>> from xprop.estimators import MLPClassifier   # was: from sklearn.neural_network import ...
>>> clf = MLPClassifier(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
>>> clf = MLPClassifier(hidden_layer_sizes=(32,), backend="cupy").fit(X, y)   # on a GPU

``MLPClassifier`` and ``MLPRegressor`` take scikit-learn's parameters with
scikit-learn's defaults and meaning, set the same fitted attributes, draw the
same random numbers from ``random_state`` (initial weights, early-stopping
split, shuffling) and stop by the same rules (``tol`` and
``n_iter_no_change`` on the training loss, or on the validation score with
``early_stopping``; ``ConvergenceWarning`` at ``max_iter``; ``n_iter_`` set
anew by every ``fit`` and ``partial_fit``; ``warm_start`` and
``partial_fit`` as scikit-learn's). The forward and backward passes are
xprop's (:class:`xprop.MLP`), against NumPy or CuPy; the update rules are
scikit-learn's, written against the same array namespace
(:mod:`xprop.estimators._solvers`). scikit-learn's own ``test_mlp.py`` runs
against these classes in the test suite (tests/test_sklearn_mlp_suite.py).

xprop's extras: ``backend`` ("numpy" default, "cupy", "auto"), ``dtype``
(None: follow X; "float32" to force single precision), ``strict_device``,
CuPy in → CuPy out (``predict``, ``predict_proba``), the network as
``net_``, and the hidden activations "sigmoid" (= "logistic") and
"leaky_relu".

Where they differ from scikit-learn's (README.md, "scikit-learn estimators",
keeps the full list): the numbers agree to rounding, not bit for bit
(summation order of the backward pass); a float32 network computes its Adam
step in float32 (scikit-learn's in float64); a fit whose weights become
non-finite stops in that epoch (with early stopping: a ConvergenceWarning
and the best epoch's weights; without: scikit-learn's ValueError) instead of
running on to ``max_iter``; ``MLPRegressor.partial_fit`` is unavailable for
lbfgs, as the classifier's is; lbfgs's ``verbose`` prints one line per
iteration instead of SciPy's report.

scikit-learn is an optional extra of xprop (``pip install 'xprop[sklearn]'``)
and this package is the only place that imports it (SciPy, for lbfgs, comes
with it); ``import xprop`` does not import this package.
"""

from __future__ import annotations

try:
    import sklearn  # noqa: F401
    from sklearn.utils.validation import validate_data  # noqa: F401  (new in scikit-learn 1.6)
except ImportError as exc:  # the optional extra is missing (or older than 1.6)
    raise ImportError(
        "xprop.estimators needs scikit-learn >= 1.6, an optional extra of xprop; "
        "install it with: pip install 'xprop[sklearn]'  (or: pip install 'scikit-learn>=1.6')"
    ) from exc

from ._classifier import MLPClassifier
from ._regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
