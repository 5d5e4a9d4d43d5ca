"""``MLPClassifier``: scikit-learn's multilayer-perceptron classifier, trained by xprop."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..backend import get_xp, to_numpy
from ._base import BaseMLP
from ._checks import _host, _like_input
from ._docs import CLASSIFIER_DOC

__all__ = ["MLPClassifier"]


class MLPClassifier(ClassifierMixin, BaseMLP):
    __doc__ = CLASSIFIER_DOC

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend="numpy", dtype=None, strict_device=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, loss="log_loss", shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend, dtype=dtype,
            strict_device=strict_device,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    # ------------------------------------------------------------------ labels
    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_xy(X, y, reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the previous "
                        f"call to fit. Previously got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                    f"'y' has {classes}."
                )
        return X, self._label_binarizer.transform(y).astype(bool)

    def _validation_targets(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    # ----------------------------------------------------------------- fitting
    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X (n_samples, n_features)`` (dense or sparse) and ``y``.

        ``y`` is ``(n_samples,)`` labels or an ``(n_samples, n_classes)``
        label-indicator matrix (multilabel). ``sample_weight (n_samples,)``
        weights each sample's loss. Returns self.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. %s is not stochastic."
                % self.solver
            )
        return True

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)`` from the current weights (sgd and adam only).

        ``classes`` (every label that will ever be seen) is required on the
        first call and may be omitted later. Returns self.
        """
        if self._check_partial_fit_first_call(classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(_host(y)).startswith("multilabel"):
                self._label_binarizer.fit(_host(y))
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _check_partial_fit_first_call(self, classes):
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if getattr(self, "classes_", None) is not None:
                if not np.array_equal(self.classes_, unique_labels(classes)):
                    raise ValueError("`classes=%r` is not the same as on last call to partial_fit, was: %r"
                                     % (classes, self.classes_))
            else:
                self.classes_ = unique_labels(classes)
                return True
        return False

    # -------------------------------------------------------------- predicting
    def _predict(self, X, check_input=True):
        A, xp_in = self._forward_pass_fast(X, check_input=check_input)
        lb = self._label_binarizer
        if xp_in is not np and self.classes_.dtype.kind in "biuf" and lb.y_type_ != "multilabel-indicator":
            xp = get_xp(A)
            idx = xp.argmax(A, axis=1) if A.shape[1] > 1 else xp.astype(A[:, 0] > 0.5, xp.int64)
            return xp_in.asarray(self.classes_)[xp_in.asarray(idx)]
        y_pred = to_numpy(A)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        y_pred = lb.inverse_transform(y_pred)
        return y_pred if xp_in is np or y_pred.dtype.kind not in "biuf" else xp_in.asarray(y_pred)

    def predict(self, X):
        """Labels ``(n_samples,)`` from ``classes_`` (an indicator matrix for multilabel y)."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        check_is_fitted(self)
        A, xp_in = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            xp = get_xp(A)
            A = xp.stack([1 - A[:, 0], A[:, 0]], axis=1)
        return _like_input(A, xp_in)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))`` (``log 0 = -inf``)."""
        P = self.predict_proba(X)
        xp = np if isinstance(P, np.ndarray) else get_xp(P)
        with np.errstate(divide="ignore"):
            return xp.log(P)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against ``y`` (NumPy or CuPy)."""
        return float(accuracy_score(_host(y), _host(self.predict(X)), sample_weight=_host(sample_weight)))



