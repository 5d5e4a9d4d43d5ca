"""``MLPRegressor``: scikit-learn's multilayer-perceptron regressor, trained by xprop."""

from __future__ import annotations

from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._base import BaseMLP
from ._checks import _host, _like_input
from ._docs import REGRESSOR_DOC

__all__ = ["MLPRegressor"]

LOSSES = ("squared_error", "poisson")


class MLPRegressor(RegressorMixin, BaseMLP):
    __doc__ = REGRESSOR_DOC

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend="numpy", dtype=None, strict_device=False):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, loss=loss, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend, dtype=dtype,
            strict_device=strict_device,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check_params(self):
        if not isinstance(self.loss, str) or self.loss not in LOSSES:
            raise ValueError(f"The 'loss' parameter of MLPRegressor must be a str among "
                             f"{{{', '.join(map(repr, LOSSES))}}}. Got {self.loss!r} instead.")
        return super()._check_params()

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validate_xy(X, y, reset, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _validation_targets(self, Y):
        return Y[:, 0] if Y.shape[1] == 1 else Y

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X (n_samples, n_features)`` (dense or sparse) and ``y``
        ``(n_samples,)`` or ``(n_samples, n_targets)``; ``sample_weight (n_samples,)``. Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. %s is not stochastic."
                % self.solver
            )
        return True

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)`` from the current weights (sgd and adam only). Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        A, xp_in = self._forward_pass_fast(X, check_input=check_input)
        if A.shape[1] == 1:
            A = A[:, 0]
        return _like_input(A, xp_in)

    def predict(self, X):
        """Predictions ``(n_samples,)`` for one target, else ``(n_samples, n_targets)``."""
        check_is_fitted(self)
        return self._predict(X)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def score(self, X, y, sample_weight=None):
        """R² of ``predict(X)`` against ``y`` (NumPy or CuPy), averaged over targets."""
        return float(r2_score(_host(y), _host(self.predict(X)), sample_weight=_host(sample_weight)))
