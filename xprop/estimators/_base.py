"""The machinery shared by :class:`MLPClassifier` and :class:`MLPRegressor`.

scikit-learn's ``BaseMultilayerPerceptron`` re-expressed over an
:class:`xprop.MLP`: the same parameters, fitted attributes, random draws,
stopping rules and solvers, with the forward and backward passes done by
xprop's network against its array namespace (NumPy or CuPy). Everything on
the host side (label binarising, the early-stopping split, the shuffling
permutations, the stopping decisions) is scikit-learn's own code or a line
for line copy of it, so that the same ``random_state`` draws the same
numbers.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ..backend import all_finite, as_backend_array, backend_name, get_xp, to_numpy
from ..flat import flat_views
from ..network import MLP
from ..validation import check_dtype_name
from ._checks import HIDDEN, _host, _is_cupy_array, _is_sparse, check_params
from ._solvers import minimize_lbfgs
from ._stochastic import NONFINITE, StochasticMixin
from ._weights import WeightsMixin

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# scikit-learn's out_activation_ -> xprop's (output, loss).
OUTPUTS = {"identity": ("identity", "mse"), "exp": ("exp", "poisson"),
           "softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "binary_cross_entropy")}
PREDICT_ROWS = 4096  # rows densified at a time when predicting on sparse X


# ---------------------------------------------------------------- the base
class BaseMLP(WeightsMixin, StochasticMixin, BaseEstimator):
    """scikit-learn's multilayer perceptron over an :class:`xprop.MLP`."""

    def __init__(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
                 learning_rate_init, power_t, max_iter, loss, shuffle, random_state, tol, verbose,
                 warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction,
                 beta_1, beta_2, epsilon, n_iter_no_change, max_fun, backend, dtype, strict_device):
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.strict_device = strict_device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------- the network
    def _make_net(self, layer_units, dtype_name):
        output, loss = OUTPUTS[self.out_activation_]
        return MLP(layer_units, activation=HIDDEN[self.activation], output=output, loss=loss,
                   backend=self.backend, dtype=dtype_name, seed=0)

    def _init_coef(self, fan_in, fan_out, dtype):
        """scikit-learn's Glorot-uniform draw (factor 2 for logistic units, else 6), on the host."""
        factor = 2.0 if HIDDEN[self.activation] == "sigmoid" else 6.0
        init_bound = np.sqrt(factor / (fan_in + fan_out))
        coef_init = self._random_state.uniform(-init_bound, init_bound, (fan_in, fan_out))
        intercept_init = self._random_state.uniform(-init_bound, init_bound, fan_out)
        return coef_init.astype(dtype, copy=False), intercept_init.astype(dtype, copy=False)

    def _initialize(self, Y, layer_units, dtype_name):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        params = {}
        for i in range(self.n_layers_ - 1):
            W, b = self._init_coef(layer_units[i], layer_units[i + 1], dtype_name)
            params[f"W{i + 1}"], params[f"b{i + 1}"] = W, b
        self.net_ = self._make_net(layer_units, dtype_name)
        self.net_.set_params(params)
        self._drop_weight_cache()
        self.__dict__.pop("_optimizer", None)
        self._best_flat = self.net_.params.flat.copy()
        self._init_stopping_state()

    def _init_stopping_state(self):
        if self.solver in _STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _continue_net(self, layer_units, dtype_name):
        """Not a first pass: the fitted net (or one built from assigned weights) must fit the data."""
        if "net_" not in self.__dict__:  # weights assigned to an estimator never fitted
            coefs, intercepts = self._user_weights() or ([], [])
            if not hasattr(self, "out_activation_"):
                self.out_activation_ = self._out_activation()
            self.n_layers_ = len(layer_units)
            dtype = np.asarray(coefs[0]).dtype.name if coefs else dtype_name
            self.net_ = self._make_net(layer_units, dtype if dtype in ("float32", "float64") else "float64")
            self._weights = (coefs, intercepts, None)
            for name, value in (("n_iter_", 0), ("t_", 0)):
                if not hasattr(self, name):
                    setattr(self, name, value)
        if self.solver in _STOCHASTIC_SOLVERS and not hasattr(self, "loss_curve_"):
            self._init_stopping_state()  # continuing an lbfgs fit (or assigned weights) with sgd/adam
        elif self.early_stopping and getattr(self, "validation_scores_", None) is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        self._load_user_weights()
        if "_best_flat" not in self.__dict__:  # the assigned weights are where early stopping starts
            self._best_flat = self.net_.params.flat.copy()
        have, want = tuple(self.net_.sizes), tuple(layer_units)
        problems = []
        if have != want:
            problems.append(f"layer sizes {list(have)} (now {list(want)})")
        if self.net_.activation != HIDDEN[self.activation]:
            problems.append(f"activation {self.net_.activation!r} (now {HIDDEN[self.activation]!r})")
        if self.backend != "auto" and self.net_.backend != backend_name(get_xp(self.backend)):
            problems.append(f"backend {self.net_.backend!r} (now {self.backend!r})")
        if self.dtype is not None and self.net_.dtype_name != check_dtype_name(self.dtype):
            problems.append(f"dtype {self.net_.dtype_name!r} (now {self.dtype!r})")
        if problems:
            raise ValueError(
                "warm_start and partial_fit continue the fitted network, which was built with "
                + "; ".join(problems) + ". Fit afresh with warm_start=False, or set the parameters back."
            )

    # ------------------------------------------------------------ input checks
    def _validate_xy(self, X, y, reset, **y_kwargs):
        """``validate_data`` for host X; the same shape checks for CuPy X, which stays on the device."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if not _is_cupy_array(X):
            return validate_data(self, X, y, reset=reset, accept_sparse=["csr", "csc"], multi_output=True,
                                 dtype=(np.float64, np.float32), **y_kwargs)
        X = self._check_device_X(X, reset=reset)
        y = check_array(_host(y), ensure_2d=False, dtype="numeric" if y_kwargs.get("y_numeric") else None,
                        input_name="y")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"[{X.shape[0]}, {y.shape[0]}]")
        return X, y

    def _check_X(self, X, *, reset):
        """The shape checks of a CuPy ``X`` (scikit-learn's wording); its values are not read."""
        if X.ndim != 2:
            raise ValueError(f"Expected a 2D array, got a {X.ndim}D array of shape {tuple(X.shape)} instead; "
                             "reshape your data with X.reshape(-1, 1) for a single feature or "
                             "X.reshape(1, -1) for a single sample")
        if reset:
            self.n_features_in_ = int(X.shape[1])
            self.__dict__.pop("feature_names_in_", None)
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X

    def _check_device_X(self, X, *, reset):
        """A CuPy ``X`` checked where it is: shape, then numbers and finite (one reduction)."""
        X = self._check_X(X, reset=reset)
        if X.dtype.kind not in "fiu":
            raise ValueError(f"X must hold numbers; got a CuPy array of dtype {X.dtype}")
        if X.dtype.kind != "f":
            X = X.astype("float64")
        if not all_finite(get_xp(X), X):
            raise ValueError("Input X contains NaN or infinity.")
        return X

    @staticmethod
    def _check_sample_weight(sample_weight, n_samples):
        if isinstance(sample_weight, numbers.Number):
            return np.full(n_samples, float(sample_weight))
        sw = check_array(_host(sample_weight), ensure_2d=False, dtype=(np.float64, np.float32),
                         input_name="sample_weight", order="C")
        if sw.ndim != 1:
            raise ValueError(f"Sample weights must be 1D array or scalar, got {sw.ndim}D array of shape "
                             f"{sw.shape}")
        if sw.shape != (n_samples,):
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n_samples,)}!")
        if not np.any(sw):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return sw

    # ------------------------------------------------------ data on the device
    def _to_net(self, A, name="X"):
        """A dense array on the net's backend and in its dtype (one move if it is elsewhere)."""
        net = self.net_
        if _is_sparse(A):
            A = A.toarray()
        return as_backend_array(A, net.xp, name=name, dtype=net.dtype, device=net.device)

    # --------------------------------------------------------- loss and step
    def _data_loss(self, xp, A, Y, w):
        """scikit-learn's LOSS_FUNCTIONS on the net's namespace: the value without the penalty."""
        def mean(T):  # weighted mean over examples: (m, n) -> (n,)
            if w is None:
                return xp.mean(T, axis=0)
            return xp.sum(T * xp.reshape(w, (-1, 1)), axis=0) / xp.sum(w)

        if self.loss == "squared_error":                     # ½ mean_i mean_j (y − a)²
            D = Y - A
            return 0.5 * xp.mean(mean(D * D))
        if self.loss == "poisson":                           # Σ_j mean_i [y log(y/a) − y + a]
            positive = Y > 0
            ratio = xp.where(positive, Y, 1.0) / A
            return xp.sum(mean(xp.where(positive, Y * xp.log(ratio), 0.0) - Y + A))
        eps = float(xp.finfo(A.dtype).eps)                   # log loss, probabilities clipped
        P = xp.clip(A, eps, 1 - eps)
        if self.out_activation_ == "softmax":                # −Σ_j mean_i y log p
            return -xp.sum(mean(Y * xp.log(P)))
        return -xp.sum(mean(Y * xp.log(P) + (1 - Y) * xp.log(1 - P)))  # binary log loss

    def _backprop(self, X, Y, w, G):
        """Loss and gradient of one batch, the gradient written into the flat buffer ``G``.

        The loss is scikit-learn's: the data loss plus ``α/(2·s) Σ_l ‖W_l‖²``
        with ``s`` the batch size (the sum of the batch's sample weights).
        The gradient is xprop's backward pass of the (weighted) mean data
        loss plus ``(α/s)·W_l`` for the weights; biases are not penalised.
        """
        net, xp, alpha = self.net_, self.net_.xp, float(self.alpha)
        A, cache = net.forward_rows(X)
        loss = self._data_loss(xp, A, Y, w)
        grads = net.backward_rows(cache, Y) if w is None else net.backward_rows(cache, Y, w)
        s = X.shape[0] if w is None else xp.sum(w)
        for l in range(1, net.L + 1):
            W, dW = net.params[f"W{l}"], G[f"W{l}"]
            if alpha:
                flat_W = xp.reshape(W, (-1,))
                loss = loss + (0.5 * alpha) * xp.vdot(flat_W, flat_W) / s
                xp.multiply(W, alpha / s, out=dW)
                dW += grads[f"dW{l}"]                    # dW_l + (α/s)·W_l
            else:
                dW[...] = grads[f"dW{l}"]
            G[f"b{l}"][...] = grads[f"db{l}"]
        return loss

    def _grad_buffer(self):
        net = self.net_
        return flat_views(net.xp, {k: v.shape for k, v in net.params.items()}, net.dtype)

    # ----------------------------------------------------------------- fitting
    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples, n_features = X.shape
        sw = None if sample_weight is None else self._check_sample_weight(sample_weight, n_samples)
        if Y.ndim == 1:
            Y = Y.reshape((-1, 1))
        self.n_outputs_ = Y.shape[1]
        layer_units = [n_features, *hidden, self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        dtype_name = check_dtype_name(self.dtype) if self.dtype is not None else np.dtype(X.dtype).name
        if first_pass:
            self._initialize(Y, layer_units, dtype_name)
        else:
            self._continue_net(layer_units, dtype_name)
        try:
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, Y, sw, incremental)
            else:
                self._fit_lbfgs(X, Y, sw)
        finally:
            self._drop_weight_cache()
        if not all_finite(self.net_.xp, self.net_.params.flat):
            raise ValueError(NONFINITE)
        return self

    def _fit_lbfgs(self, X, Y, sw):
        Xd, Yd = self._to_net(X), self._to_net(Y, "y")
        wd = None if sw is None else self._to_net(sw, "sample_weight")
        G = self._grad_buffer()
        iterations = []

        def fun(x):
            return self._loss_grad_lbfgs(x, Xd, Yd, wd, G=G)

        def progress(intermediate_result):
            iterations.append(intermediate_result.fun)
            print("Iteration %d, loss = %.8f" % (len(iterations), intermediate_result.fun))

        result = minimize_lbfgs(fun, self._pack(), max_iter=self.max_iter, max_fun=self.max_fun, tol=self.tol,
                                callback=progress if self.verbose else None)
        n_iter = min(result.nit, self.max_iter)
        if result.status != 0:
            message = (f"lbfgs failed to converge after {n_iter} iteration(s) (status={result.status}):\n"
                       f"{result.message}\n")
            if n_iter == self.max_iter:
                message += (f"\nIncrease the number of iterations to improve the convergence "
                            f"(max_iter={self.max_iter}).")
            message += ("\nYou might also want to scale the data as shown in:\n"
                        "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(message, ConvergenceWarning, stacklevel=4)
        self.n_iter_ = n_iter
        self.loss_ = float(result.fun)
        self._unpack(result.x)

    def _score_with_function(self, X, y, sample_weight, score_function):
        with np.errstate(over="ignore", invalid="ignore"):
            y_pred = self._predict(X, check_input=False)
        y_pred = _host(y_pred)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(score_function(y, y_pred, sample_weight=sample_weight))

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight=None, *buffers, G=None):
        """Loss and gradient at ``packed_coef_inter`` (scikit-learn's packing), on the whole data.

        Sets the network's weights to the packed vector, as scikit-learn's
        method of this name does; ``buffers`` (scikit-learn's preallocated
        per-layer arrays) are accepted and not needed. Returns the loss as a
        float and the gradient as a host float64 vector in the same packing:
        one vector crosses to the device and one back per call.
        """
        self._unpack(np.asarray(packed_coef_inter, dtype=np.float64))
        X, y = self._to_net(X), self._to_net(y, "y")
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        w = None if sample_weight is None else self._to_net(sample_weight, "sample_weight")
        G = self._grad_buffer() if G is None else G
        with np.errstate(over="ignore", invalid="ignore"):
            loss = self._backprop(X, y, w, G)
        self._drop_weight_cache()
        return float(loss), to_numpy(G.flat).astype(np.float64)[self._pack_index()]


    # -------------------------------------------------------------- predicting
    def __sklearn_is_fitted__(self):
        return "net_" in self.__dict__

    def _forward_pass_fast(self, X, check_input=True):
        """``A_L`` of X on the net's backend, and the namespace X came in (NumPy for host input)."""
        xp_in = get_xp(X) if _is_cupy_array(X) else np
        if check_input:
            check_is_fitted(self)
            self._load_user_weights()
            if xp_in is np:
                X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
            else:
                X = self._check_device_X(X, reset=False)
        net = self.net_
        if _is_sparse(X):
            X = X.tocsr()
            parts = [net.forward_rows(self._to_net(X[i:i + PREDICT_ROWS]))[0]
                     for i in range(0, X.shape[0], PREDICT_ROWS)]
            A = net.xp.concat(parts, axis=0) if hasattr(net.xp, "concat") else net.xp.concatenate(parts)
        else:
            A = net.forward_rows(self._to_net(X))[0]
        out = np.result_type(X.dtype, net.dtype_name)
        if A.dtype != out:  # predictions follow X: float64 X on a float32 net gives float64
            A = net.xp.astype(A, out) if hasattr(net.xp, "astype") else A.astype(out)
        return A, xp_in


    def _check_params(self) -> list[int]:
        return check_params(self)
