"""The sgd and adam solvers' epochs: scikit-learn's ``_fit_stochastic``, over xprop's net.

The same random draws (the early-stopping split, one shuffle per epoch, from
the estimator's ``_random_state``), the same batches, the same stopping
rules and messages as scikit-learn's; the step is the estimator's
``_backprop`` and the update one of :mod:`._solvers`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import gen_batches
from sklearn.utils import shuffle as sk_shuffle

from ..backend import all_finite, get_xp, strict_device
from ._checks import _is_sparse
from ._solvers import AdamOptimizer, SGDOptimizer

NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
             "values and need to be preprocessed.")


class StochasticMixin:
    """``_fit_stochastic`` and its parts."""

    def _make_optimizer(self):
        flat = self.net_.params.flat
        if self.solver == "sgd":
            return SGDOptimizer(flat, self.learning_rate_init, self.learning_rate, self.momentum,
                                self.nesterovs_momentum, self.power_t)
        return AdamOptimizer(flat, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)

    def _fit_stochastic(self, X, Y, sw, incremental):
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        train, validation = self._split(X, Y, sw)
        batches = _Batches(self, *train)
        xp, flat = self.net_.xp, self.net_.params.flat
        G, scratch = self._grad_buffer(), xp.empty_like(flat)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                accumulated_loss = 0.0
                order = batches.order()  # drawn and moved before the strict region
                with strict_device(xp, bool(self.strict_device)):
                    for Xb, Yb, wb, n_b in batches.epoch(order):
                        batch_loss = self._backprop(Xb, Yb, wb, G)
                        self._optimizer.update_params(flat, G.flat, scratch)
                        accumulated_loss = accumulated_loss + batch_loss * n_b
                if self._epoch_ends(float(accumulated_loss) / batches.n_samples, validation, incremental):
                    break
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if self.early_stopping:
            flat[...] = self._best_flat

    def _split(self, X, Y, sw):
        """``(X, Y, sw)`` to train on and ``(X_val, y_val, sw_val)`` to score (None without early stopping)."""
        if not self.early_stopping:
            return (X, Y, sw), (None, None, None)
        should_stratify = is_classifier(self) and self.n_outputs_ == 1
        arrays = [np.arange(X.shape[0])] + ([] if sw is None else [sw])
        parts = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=Y if should_stratify else None)
        train, val = parts[0], parts[1]
        sw_train, sw_val = (None, None) if sw is None else (parts[2], parts[3])
        if val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        X_val = self._take_validation(X, val)
        if not _is_sparse(X_val):
            X_val = self._to_net(X_val)  # once; scored after every epoch
        return ((self._take_validation(X, train), Y[train], sw_train),
                (X_val, self._validation_targets(Y[val]), sw_val))

    def _epoch_ends(self, loss, validation, incremental) -> bool:
        """scikit-learn's end of an epoch: record, score, schedule, stopping rule. True: stop."""
        self.n_iter_ += 1
        self.loss_ = loss
        self.t_ += self._n_train
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        diverged = not all_finite(self.net_.xp, self.net_.params.flat)
        self._update_no_improvement_count(self.early_stopping, *validation, diverged=diverged)
        self._optimizer.iteration_ends(self.t_)
        if diverged:
            if not self.early_stopping:
                raise ValueError(f"{NONFINITE} They became non-finite in iteration {self.n_iter_} "
                                 "(the training diverged: lower learning_rate_init or scale X).")
            warnings.warn(f"The training diverged in iteration {self.n_iter_} (non-finite weights); "
                          "stopped, and the weights of the best validation score were restored.",
                          ConvergenceWarning, stacklevel=5)
            return True
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score" if self.early_stopping else "Training loss"
            msg = ("%s did not improve more than tol=%f for %d consecutive epochs."
                   % (what, self.tol, self.n_iter_no_change))
            if self._optimizer.trigger_stopping(msg, self.verbose):
                return True
            self._no_improvement_count = 0
        if incremental:
            return True
        if self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                          "hasn't converged yet." % self.max_iter, ConvergenceWarning, stacklevel=5)
        return False

    def _take_validation(self, X, rows):
        if _is_sparse(X) or isinstance(X, np.ndarray):
            return X[rows]
        xp = get_xp(X)
        return xp.take(X, xp.asarray(rows), axis=0)

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight, diverged=False):
        if early_stopping:
            # Non-finite weights score NaN (a classifier's labels from NaN probabilities would
            # still score a number, and such weights could be kept as the best).
            val_score = float("nan") if diverged else self._score(X, y, sample_weight=sample_weight)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            last_valid_score = self.validation_scores_[-1]
            if last_valid_score < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last_valid_score > self.best_validation_score_:
                self.best_validation_score_ = last_valid_score
                self._best_flat[...] = self.net_.params.flat
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]



class _Batches:
    """The training data on the net's backend and scikit-learn's mini-batches over it.

    Dense X crosses to the device once; sparse X stays on the host and each
    batch is densified and moved. Each epoch draws one permutation from the
    estimator's ``_random_state`` (``sklearn.utils.shuffle``), as scikit-learn does.
    """

    def __init__(self, est, X, Y, sw):
        self.est, self.xp = est, est.net_.xp
        self.sparse = _is_sparse(X)
        self.X = X.tocsr() if self.sparse else est._to_net(X)
        self.Y = est._to_net(Y, "y")
        self.w = None if sw is None else est._to_net(sw, "sample_weight")
        self.n_samples = est._n_train = self.X.shape[0]
        self.sample_idx = np.arange(self.n_samples, dtype=int)
        if est.batch_size == "auto":
            self.batch_size = min(200, self.n_samples)
        else:
            if est.batch_size > self.n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped", stacklevel=5)
            self.batch_size = int(np.clip(est.batch_size, 1, self.n_samples))

    def order(self):
        """The epoch's order of the examples (None: unshuffled), where the batches are gathered."""
        if not self.est.shuffle:
            return None
        self.sample_idx = sk_shuffle(self.sample_idx, random_state=self.est._random_state)
        return self.sample_idx if self.sparse else self.xp.asarray(self.sample_idx)

    def epoch(self, order):
        """``(X_b, Y_b, w_b, m_b)`` per batch of one epoch in ``order``, on the net's backend."""
        est, xp = self.est, self.xp
        for batch_slice in gen_batches(self.n_samples, self.batch_size):
            rows = order[batch_slice] if est.shuffle else batch_slice
            if self.sparse:
                Xb = est._to_net(self.X[rows])
                rows = xp.asarray(rows) if est.shuffle else rows
            else:
                Xb = _take(self.X, rows)
            wb = None if self.w is None else _take(self.w, rows)
            yield Xb, _take(self.Y, rows), wb, batch_slice.stop - batch_slice.start


def _take(A, rows):
    """``A[rows]`` for a slice (a view) or an index array on A's backend."""
    if isinstance(rows, slice):
        return A[rows]
    return get_xp(A).take(A, rows, axis=0)
