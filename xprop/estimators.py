"""scikit-learn estimators around xprop's network: ``MLPClassifier`` and ``MLPRegressor``.

>>> from xprop.estimators import MLPClassifier
>>> clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(X, y)
>>> clf.predict_proba(X[:3])

They drop into ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``: the
constructor only stores its arguments (``get_params``/``set_params``/``clone``),
``fit`` checks them, builds ``xprop.MLP([n_features, *hidden_layer_sizes, n_out])``
and trains it with :func:`xprop.fit`.

scikit-learn is an optional extra of xprop (``pip install 'xprop[sklearn]'``)
and this is the only module that imports it; ``import xprop`` does not import
this module.

The network
-----------
Classifier
    Softmax output with cross-entropy, for binary problems as well (two
    output units). ``classes_`` is ``np.unique(y)`` (or ``np.unique(classes)``
    given to the first ``partial_fit``); class ``classes_[j]`` is output unit
    ``j``. Only 1-D targets (binary or multiclass) are supported.
Regressor
    Identity output with the mean squared error ``(1/m) Σ_i ½ ‖A_i − Y_i‖²``.
    1-D ``y`` gives one output unit and ``predict`` returns 1-D; 2-D ``y``
    ``(m, t)`` gives ``t`` output units and 2-D predictions.

Training semantics
------------------
These sentences are the contract; ``tests/test_estimators.py`` has a test
for each.

``max_iter`` and ``n_iter_``
    One iteration is one epoch: one pass over the training data in
    mini-batches of ``batch_size`` examples. ``max_iter`` is the most epochs
    one call to ``fit`` runs. ``n_iter_`` counts the epochs run since the
    weights were initialised, and ``loss_curve_`` has one entry per such
    epoch. There is no ``tol``: without early stopping every ``fit`` runs
    exactly ``max_iter`` epochs (so no ``ConvergenceWarning`` either).
``fit`` without ``warm_start``
    Starts from freshly initialised weights and a fresh optimizer, and
    resets ``n_iter_`` and ``loss_curve_``. Two fits with the same integer
    ``random_state`` and data give the same model.
``warm_start=True``
    A ``fit`` on an already fitted estimator keeps the weights, ``classes_``,
    ``n_iter_`` and ``loss_curve_`` (they continue counting) and starts a
    fresh optimizer (as scikit-learn's own MLP does). The architecture,
    activation, backend and dtype must be the ones the weights were built
    with (ValueError otherwise), and a classifier's ``y`` may only use
    classes in ``classes_``.
``partial_fit(X, y, classes=None)``
    One call runs exactly one epoch over the given data and adds 1 to
    ``n_iter_``. It continues from the current weights and optimizer state,
    whether they come from ``fit`` or from an earlier ``partial_fit``; a
    fresh optimizer is made only if ``optimizer``, ``learning_rate_init``,
    ``alpha`` or ``momentum`` changed since. The first call on an unfitted
    estimator initialises the weights; a classifier then needs ``classes``
    (every label that will ever be seen). ``max_iter``, ``early_stopping``
    and ``warm_start`` play no part in ``partial_fit``.
``early_stopping=True``
    ``fit`` holds out ``validation_fraction`` of the data (stratified by
    class for the classifier) and does not train on it. After each epoch it
    computes the loss on the held-out part; training stops once that loss
    has not strictly decreased for ``n_iter_no_change`` consecutive epochs
    (or after ``max_iter`` epochs). The weights are then restored to those
    of the epoch with the lowest validation loss (``best_iter_``), so the
    fitted model is that epoch's model, not the last one. ``n_iter_`` and
    ``loss_curve_`` still count the epochs run after the best one.
    Stopping is decided on the validation *loss* (scikit-learn's MLP uses
    the validation score); the score of each epoch is recorded in
    ``validation_scores_``.

Other differences from ``sklearn.neural_network.MLP*``
    ``alpha`` is PyTorch-style weight decay: ``alpha · P`` is added to the
    gradient of every parameter, biases included (scikit-learn adds
    ``alpha · W / batch_size`` to the weights only). ``loss_curve_`` holds the
    data loss without the penalty, averaged over the epoch's batches as they
    were trained. The default ``dtype`` is float32, so predictions are
    float32.

Arrays and devices
------------------
``backend="numpy"`` (the default, for bit-for-bit reproducible results) or
``"cupy"`` or ``"auto"`` (see :func:`xprop.backend.get_xp`). ``fit`` accepts
NumPy or CuPy ``X``; the data is moved to the net's backend once per call by
:func:`xprop.fit`. ``y`` is brought to the host for validation and label
encoding. ``predict``, ``predict_proba`` return the kind of array they were
given: NumPy in, NumPy out; CuPy in, CuPy out (a classifier with non-numeric
classes returns NumPy labels, which cannot live on a GPU). CuPy inputs are
checked for shape and finiteness by xprop itself, not by scikit-learn's
``validate_data`` (which would copy them to the host).
"""

from __future__ import annotations

import inspect
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import (
        check_array,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as exc:  # the optional extra is missing (or older than 1.6)
    raise ImportError(
        "xprop.estimators needs scikit-learn >= 1.6, an optional extra of xprop; "
        "install it with: pip install 'xprop[sklearn]'  (or: pip install 'scikit-learn>=1.6')"
    ) from exc

from .backend import BackendError, as_backend_array, backend_name, get_xp, is_cupy_array, to_numpy
from .network import MLP
from .optim import SGD, Adam, make_optimizer
from .train import fit as xprop_fit
from .validation import check_dtype_name

__all__ = ["MLPClassifier", "MLPRegressor"]

_OPTIMIZERS = ("adam", "sgd")


# ------------------------------------------------------------------ helpers
def _host(a):
    """``a`` on the host: CuPy arrays are copied, anything else is left as it is."""
    return to_numpy(a) if is_cupy_array(a) else a


def _like_input(result, xp_in):
    """``result`` as the kind of array the caller gave: NumPy for ``np``, else ``xp_in``."""
    if xp_in is np:
        return to_numpy(result)
    return xp_in.asarray(result)


def _check_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _check_real(name, value, low, high, *, low_open=False, high_open=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb, hb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lb}{low}, {high}{hb}; got {value!r}")
    return float(value)


def _hidden_sizes(value) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"hidden_layer_sizes must be a tuple of positive integers like (100,); got {value!r}")
    sizes = tuple(value)
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"hidden_layer_sizes must hold positive integers; got {value!r}")
    return tuple(int(n) for n in sizes)


def _net_state(net) -> dict:
    """A picklable description of an ``xprop.MLP`` (host copies of the weights)."""
    return {
        "kind": "xprop.MLP",
        "sizes": list(net.sizes), "activation": net.activation, "output": net.output,
        "loss": net.loss, "backend": net.backend, "dtype": net.dtype_name, "seed": net.seed,
        "init": net.init, "layout": net.layout,
        "params": {k: np.array(to_numpy(v)) for k, v in net.params.items()},
    }


def _net_from_state(state) -> MLP:
    kwargs = {k: state[k] for k in ("activation", "output", "loss", "dtype", "seed", "init", "layout")}
    try:
        net = MLP(state["sizes"], backend=state["backend"], **kwargs)
    except BackendError as exc:
        warnings.warn(
            f"this estimator was fitted on backend {state['backend']!r}, which is not usable here "
            f"({exc}); its network was loaded onto NumPy instead",
            RuntimeWarning, stacklevel=3,
        )
        net = MLP(state["sizes"], backend="numpy", **kwargs)
    net.set_params(state["params"])
    return net


def _optimizer_state(opt) -> dict:
    state = opt.state_dict()
    return {"kind": "xprop.Optimizer", "name": opt.name, "hyperparameters": opt.hyperparameters(),
            "t": state["t"], "arrays": {k: np.array(to_numpy(v)) for k, v in state["arrays"].items()}}


def _optimizer_from_state(state, net):
    opt = make_optimizer(state["name"], **state["hyperparameters"])
    opt.load_state_dict({"t": state["t"], "arrays": state["arrays"]}, net.params)
    return opt


# ---------------------------------------------------------------- the base
class _XpropMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    _output = None  # "softmax" or "identity", set by the subclasses

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam",
                 learning_rate_init=1e-3, batch_size=200, max_iter=200, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, alpha=1e-4, momentum=0.9,
                 shuffle=True, random_state=None, warm_start=False, verbose=False,
                 backend="numpy", dtype="float32", strict_device=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.alpha = alpha
        self.momentum = momentum
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.backend = backend
        self.dtype = dtype
        self.strict_device = strict_device

    # -------------------------------------------------------- parameter checks
    def _checked_params(self) -> dict:
        """The constructor arguments checked (sklearn checks them in fit, not __init__)."""
        p = {
            "hidden": _hidden_sizes(self.hidden_layer_sizes),
            "max_iter": _check_int("max_iter", self.max_iter),
            "n_iter_no_change": _check_int("n_iter_no_change", self.n_iter_no_change),
            "validation_fraction": _check_real("validation_fraction", self.validation_fraction, 0.0, 1.0,
                                               low_open=True),
            "alpha": _check_real("alpha", self.alpha, 0.0, np.inf),
            "momentum": _check_real("momentum", self.momentum, 0.0, 1.0),
            "learning_rate_init": _check_real("learning_rate_init", self.learning_rate_init, 0.0, np.inf,
                                              low_open=True),
            "dtype": check_dtype_name(self.dtype),
        }
        for name in ("early_stopping", "shuffle", "warm_start", "strict_device"):
            p[name] = _check_bool(name, getattr(self, name))
        if isinstance(self.verbose, numbers.Integral):  # bool, or an int as elsewhere in sklearn
            p["verbose"] = bool(self.verbose)
        else:
            raise ValueError(f"verbose must be True/False (or an integer); got {self.verbose!r}")
        if self.batch_size != "auto":
            _check_int("batch_size", self.batch_size)
        if not isinstance(self.optimizer, str) or self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, _OPTIMIZERS))}; got {self.optimizer!r}")
        p["backend"] = backend_name(get_xp(self.backend))  # raises for unknown or unusable backends
        return p

    def _batch_size(self, m: int) -> int:
        """``"auto"`` → ``min(200, m)``; an integer larger than ``m`` is clipped to ``m``."""
        return min(200 if self.batch_size == "auto" else int(self.batch_size), m)

    def _optimizer_key(self):
        return (self.optimizer, float(self.learning_rate_init), float(self.alpha), float(self.momentum))

    def _make_optimizer(self):
        if self.optimizer == "adam":
            return Adam(lr=self.learning_rate_init, weight_decay=self.alpha)
        return SGD(lr=self.learning_rate_init, momentum=self.momentum, weight_decay=self.alpha)

    def _draw_seed(self) -> int:
        return int(self._rng.randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------ input checks
    def _check_X(self, X, *, reset: bool):
        """X for fitting or predicting; CuPy arrays stay on the device.

        NumPy and array-likes go through scikit-learn's ``validate_data``
        (which sets ``n_features_in_``/``feature_names_in_`` when ``reset``
        and checks them otherwise). CuPy arrays get the same shape checks
        here; :func:`xprop.validation.check_inputs` checks their values.
        """
        if not is_cupy_array(X):
            return validate_data(self, X, reset=reset, dtype=(np.float64, np.float32))
        if X.ndim != 2:
            raise ValueError(f"Expected a 2D array, got a {X.ndim}D array of shape {tuple(X.shape)} instead; "
                             "reshape your data with X.reshape(-1, 1) for a single feature or "
                             "X.reshape(1, -1) for a single sample")
        if reset:
            self.n_features_in_ = int(X.shape[1])
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X

    def _check_y_device(self, X, y):
        """Host ``y`` for a CuPy ``X``, checked as ``validate_data`` checks it for host X."""
        y = _host(y)
        if self._output == "softmax":
            y = column_or_1d(y, warn=True)
        else:
            y = check_array(y, ensure_2d=False, dtype="numeric", input_name="y")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}; they must match")
        return y

    # --------------------------------------------------------- fitting core
    def _fit(self, X, y, *, incremental: bool, classes=None):
        p = self._checked_params()
        fitted = hasattr(self, "net_")
        reuse = fitted and (incremental or p["warm_start"])
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if is_cupy_array(X):
            X = self._check_X(X, reset=not reuse)
            y = self._check_y_device(X, y)
        else:
            X, y = validate_data(self, X, y, reset=not reuse, dtype=(np.float64, np.float32),
                                 **self._y_check_params())
        Y, n_out = self._targets(y, reuse=reuse, incremental=incremental, classes=classes)

        if reuse:
            self._check_same_net(p, n_out)
        else:
            self._rng = check_random_state(self.random_state)
            self.net_ = MLP([self.n_features_in_, *p["hidden"], n_out], activation=self.activation,
                            output=self._output, backend=self.backend, dtype=p["dtype"],
                            seed=self._draw_seed())
            self.n_iter_ = 0
            self.loss_curve_ = []
            self._optimizer = None
        if not incremental or self._optimizer is None or self._optimizer_settings != self._optimizer_key():
            self._optimizer = self._make_optimizer()
            self._optimizer_settings = self._optimizer_key()

        early = p["early_stopping"] and not incremental
        validation = scores = None
        callbacks = []
        X_train, Y_train = X, Y
        if early:
            X_train, Y_train, X_val, Y_val = self._split(X, Y)
            validation = (X_val, Y_val)
            scores = []
            callbacks.append(self._score_recorder(X_val, Y_val, scores))
        kwargs = {}
        if "strict_device" in inspect.signature(xprop_fit).parameters:
            kwargs["strict_device"] = p["strict_device"]
        start = self.n_iter_
        history = xprop_fit(
            self.net_, X_train, Y_train, epochs=1 if incremental else p["max_iter"],
            batch_size=self._batch_size(int(X_train.shape[0])), optimizer=self._optimizer,
            validation=validation, shuffle=p["shuffle"], seed=self._draw_seed(),
            progress=p["verbose"], patience=p["n_iter_no_change"] if early else None,
            callbacks=callbacks, **kwargs,
        )
        self.n_iter_ = start + len(history)
        self.loss_curve_.extend(float(v) for v in history.loss)
        self.best_loss_ = min(self.loss_curve_)
        if not incremental:
            if early:
                best = history.best_epoch
                self.validation_scores_ = scores
                self.validation_loss_curve_ = [float(v) for v in history.val_loss]
                self.best_iter_ = start + best
                self.best_validation_loss_ = self.validation_loss_curve_[best - 1]
                self.best_validation_score_ = scores[best - 1]
            else:
                self.validation_scores_ = self.validation_loss_curve_ = None
                self.best_iter_ = self.best_validation_loss_ = self.best_validation_score_ = None
        return self

    def _check_same_net(self, p, n_out):
        want = (self.n_features_in_, *p["hidden"], n_out)
        have = tuple(self.net_.sizes)
        problems = []
        if have != want:
            problems.append(f"layer sizes {list(have)} (now {list(want)})")
        if self.net_.activation != self.activation:
            problems.append(f"activation {self.net_.activation!r} (now {self.activation!r})")
        if self.net_.backend != p["backend"]:
            problems.append(f"backend {self.net_.backend!r} (now {p['backend']!r})")
        if self.net_.dtype_name != p["dtype"]:
            problems.append(f"dtype {self.net_.dtype_name!r} (now {p['dtype']!r})")
        if problems:
            raise ValueError(
                "warm_start and partial_fit continue the fitted network, which was built with "
                + "; ".join(problems)
                + ". Fit afresh with warm_start=False, or set the parameters back."
            )

    def _split(self, X, Y):
        """Hold out ``validation_fraction`` of the rows (indices drawn on the host)."""
        idx = np.arange(X.shape[0])
        stratify = to_numpy(Y) if self._output == "softmax" else None
        train_idx, val_idx = train_test_split(idx, test_size=self.validation_fraction,
                                              random_state=self._draw_seed(), stratify=stratify)
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        xp = get_xp(X) if is_cupy_array(X) else np
        def take(a, rows):
            return xp.take(a, xp.asarray(rows), axis=0)

        return take(X, train_idx), Y[train_idx], take(X, val_idx), Y[val_idx]

    # ------------------------------------------------------------- predicting
    def __sklearn_is_fitted__(self):
        return hasattr(self, "net_")

    def _outputs(self, X):
        """``A_L`` on the net's backend, and the namespace of the given X."""
        check_is_fitted(self)
        xp_in = get_xp(X) if is_cupy_array(X) else np
        X = self._check_X(X, reset=False)
        A, _ = self.net_.forward(X)
        return A, xp_in

    # -------------------------------------------------------------- pickling
    def __getstate__(self):
        # The network and optimizer hold their array module, which does not
        # pickle; they travel as host arrays and are rebuilt on loading.
        state = dict(super().__getstate__())
        if isinstance(state.get("net_"), MLP):
            state["net_"] = _net_state(state["net_"])
        if state.get("_optimizer") is not None:
            state["_optimizer"] = _optimizer_state(state["_optimizer"])
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("net_"), dict):
            state["net_"] = _net_from_state(state["net_"])
        if isinstance(state.get("_optimizer"), dict):
            state["_optimizer"] = _optimizer_from_state(state["_optimizer"], state["net_"])
        super().__setstate__(state)


_PARAMETERS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(100,)
        Units of each hidden layer; ``()`` means no hidden layer.
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "identity"}, default="relu"
        Hidden-layer activation.
    optimizer : {"adam", "sgd"}, default="adam"
        :class:`xprop.Adam` or :class:`xprop.SGD` (PyTorch update rules).
    learning_rate_init : float, default=1e-3
        The optimizer's learning rate (constant).
    batch_size : int or "auto", default=200
        Examples per step; ``"auto"`` is ``min(200, n_samples)``; an integer
        larger than the training set is clipped to it (full-batch steps).
    max_iter : int, default=200
        Most epochs one ``fit`` call runs (see the module docstring).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop on its loss;
        the best epoch's weights are restored.
    validation_fraction : float in (0, 1), default=0.1
    n_iter_no_change : int, default=10
        Epochs without a strictly lower validation loss before stopping.
    alpha : float, default=1e-4
        L2 weight decay: ``alpha · P`` is added to every parameter's gradient.
    momentum : float in [0, 1), default=0.9
        Momentum of ``optimizer="sgd"`` (unused by Adam).
    shuffle : bool, default=True
        Reshuffle the training data every epoch.
    random_state : int, RandomState or None, default=None
        Seeds the weight initialisation, the hold-out split and the shuffling.
    warm_start : bool, default=False
        ``fit`` continues from the fitted weights (see the module docstring).
    verbose : bool or int, default=False
        Show xprop's progress bar (``progress=`` of :func:`xprop.fit`) when true.
    backend : {"numpy", "cupy", "auto"}, default="numpy"
        Where the network lives; NumPy by default for reproducible results.
    dtype : {"float32", "float64"}, default="float32"
        The network's dtype; predictions come in it.
    strict_device : bool, default=False
        Only meaningful on the CuPy backend. It is handed to :func:`xprop.fit`
        when ``fit`` accepts a ``strict_device`` argument; the current
        ``xprop.fit`` does not, so it is stored but not enforced yet, on any
        backend.

    Attributes
    ----------
    net_ : xprop.MLP
        The trained network.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names (a DataFrame).
    n_iter_ : int
        Epochs run since the weights were initialised.
    loss_curve_ : list of float
        Training loss of each of those epochs.
    best_loss_ : float
        ``min(loss_curve_)``.
    validation_scores_ : list of float or None
        With early stopping: the validation score (accuracy / R²) of each
        epoch of the last ``fit``; else None.
    validation_loss_curve_ : list of float or None
        With early stopping: the validation loss of each epoch of the last ``fit``.
    best_iter_ : int or None
        With early stopping: the epoch (counted like ``n_iter_``) whose weights were kept.
    best_validation_loss_, best_validation_score_ : float or None
        Validation loss and score of that epoch.
"""


class MLPClassifier(ClassifierMixin, _XpropMLP):
    __doc__ = ("""A multilayer-perceptron classifier trained by xprop (softmax output, cross-entropy).

    Binary problems use a softmax over two units too. See the module
    docstring of :mod:`xprop.estimators` for what ``fit``, ``partial_fit``,
    ``warm_start`` and early stopping do, exactly.
""" + _PARAMETERS_DOC + """    classes_ : ndarray of shape (n_classes,)
        The class labels; ``classes_[j]`` is output unit ``j``.
""")

    _output = "softmax"

    def _y_check_params(self):
        return {"multi_output": False}

    def _targets(self, y, *, reuse, incremental, classes):
        """Labels as indices 0..K-1 into ``classes_`` (host int64), and K."""
        y = np.asarray(y)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"{type(self).__name__} supports binary and multiclass targets only; got {kind!r} y")
        if not reuse:
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit: "
                                     "every label that will ever be seen, e.g. classes=np.unique(y_all)")
                self.classes_ = np.unique(np.asarray(classes))
            else:
                self.classes_ = np.unique(y)
        elif incremental and classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={np.unique(np.asarray(classes))!r} differs from classes_={self.classes_!r} "
                             "of the earlier fit/partial_fit; it can only be set on the first call")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(f"y contains labels {np.unique(y[unknown])!r} that are not in classes_ "
                             f"{self.classes_!r}")
        return idx.astype(np.int64), len(self.classes_)

    def _score_recorder(self, X_val, Y_val, scores):
        def record(rec, net):
            scores.append(float(rec["val_accuracy"]))
            return False
        return record

    def fit(self, X, y):
        """Train on ``(X, y)``: ``X`` (n_samples, n_features), ``y`` (n_samples,) labels.

        Runs at most ``max_iter`` epochs; see the module docstring for
        ``warm_start`` and ``early_stopping``. Returns self.
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``, continuing from the current weights.

        ``classes`` (all labels that will ever be seen) is required on the
        first call and may be omitted (or must be equal) later. Returns self.
        """
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        A, xp_in = self._outputs(X)
        return _like_input(A, xp_in)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba` (``log(0)`` gives ``-inf``)."""
        P = self.predict_proba(X)
        xp = np if isinstance(P, np.ndarray) else get_xp(P)
        with np.errstate(divide="ignore"):
            return xp.log(P)

    def predict(self, X):
        """The most probable class of each row, as labels from ``classes_``."""
        A, xp_in = self._outputs(X)
        idx = self.net_.xp.argmax(A, axis=1)
        if xp_in is np or self.classes_.dtype.kind not in "biuf":
            return self.classes_[to_numpy(idx)]
        classes = xp_in.asarray(self.classes_)
        return classes[xp_in.asarray(idx)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against ``y`` (NumPy or CuPy)."""
        return float(accuracy_score(_host(y), _host(self.predict(X)), sample_weight=_host(sample_weight)))


class MLPRegressor(RegressorMixin, _XpropMLP):
    __doc__ = ("""A multilayer-perceptron regressor trained by xprop (identity output, squared error).

    1-D ``y`` gives one output and 1-D predictions; 2-D ``y`` of shape
    ``(n_samples, n_targets)`` gives 2-D predictions. See the module docstring
    of :mod:`xprop.estimators` for what ``fit``, ``partial_fit``,
    ``warm_start`` and early stopping do, exactly.
""" + _PARAMETERS_DOC)

    _output = "identity"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _y_check_params(self):
        return {"multi_output": True, "y_numeric": True}

    def _targets(self, y, *, reuse, incremental, classes):
        """Targets as ``(m, t)`` host floats, and t."""
        y = np.asarray(y)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D; got shape {y.shape}")
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        if not reuse:
            self._y_1d = y.ndim == 1
        return Y.astype(np.float64), Y.shape[1]

    def _score_recorder(self, X_val, Y_val, scores):
        X_val = as_backend_array(X_val, self.net_.xp, name="X_val", device=self.net_.device)

        def record(rec, net):
            with np.errstate(over="ignore", invalid="ignore"):
                pred = to_numpy(net.predict(X_val))
            # A diverging epoch gives inf (or finite but huge, overflowing when squared)
            # predictions; r2_score refuses the first, and either is recorded as NaN.
            score = float("nan")
            if np.all(np.isfinite(pred)):
                with np.errstate(over="ignore", invalid="ignore"):
                    score = float(r2_score(Y_val, pred))
            scores.append(score if np.isfinite(score) else float("nan"))
            return False
        return record

    def fit(self, X, y):
        """Train on ``(X, y)``: ``y`` (n_samples,) or (n_samples, n_targets). Returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``, continuing from the current weights. Returns self."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predictions ``(n_samples,)`` if fitted on 1-D ``y``, else ``(n_samples, n_targets)``."""
        A, xp_in = self._outputs(X)
        if self._y_1d:
            A = A[:, 0]
        return _like_input(A, xp_in)

    def score(self, X, y, sample_weight=None):
        """R² of ``predict(X)`` against ``y`` (NumPy or CuPy), averaged over targets."""
        return float(r2_score(_host(y), _host(self.predict(X)), sample_weight=_host(sample_weight)))
