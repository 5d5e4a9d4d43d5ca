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
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils import shuffle as sk_shuffle
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from ..backend import _is_cupy_array as _backend_is_cupy_array
from ..backend import (
    BackendError,
    all_finite,
    as_backend_array,
    backend_name,
    get_xp,
    strict_device,
    to_numpy,
)
from ..flat import flat_views
from ..network import MLP
from ..validation import check_dtype_name
from ._solvers import AdamOptimizer, SGDOptimizer, minimize_lbfgs

_STOCHASTIC_SOLVERS = ("sgd", "adam")
SOLVERS = ("lbfgs", "sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
# scikit-learn's hidden activations, then xprop's extras; the value is xprop's name.
HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
          "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}
# scikit-learn's out_activation_ -> xprop's (output, loss).
OUTPUTS = {"identity": ("identity", "mse"), "exp": ("exp", "poisson"),
           "softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "binary_cross_entropy")}
PREDICT_ROWS = 4096  # rows densified at a time when predicting on sparse X
NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
             "values and need to be preprocessed.")


# ------------------------------------------------------------------ helpers
def _is_cupy_array(a) -> bool:
    """Whether ``a`` is a CuPy array (asked of xprop.backend, which owns CuPy)."""
    return not isinstance(a, np.ndarray) and _backend_is_cupy_array(a)


def _is_sparse(a) -> bool:
    return hasattr(a, "tocsr") and hasattr(a, "nnz")


def _host(a):
    """``a`` on the host: CuPy arrays are copied, anything else is left as it is."""
    return to_numpy(a) if _is_cupy_array(a) else a


def _like_input(result, xp_in):
    """``result`` as the kind of array the caller gave: NumPy for ``np``, else ``xp_in``."""
    if xp_in is np:
        return to_numpy(result)
    return xp_in.asarray(result)


def _bad(name, expected, value):
    return ValueError(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")


def _check_int(name, value, low=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise _bad(name, f"an int in the range [{low}, inf)", value)
    return int(value)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(name, "an instance of 'bool'", value)
    return bool(value)


def _check_real(name, value, low, high, *, closed="left"):
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and np.isfinite(value)
    if ok:
        ok = ((value >= low) if closed in ("left", "both") else (value > low)) and (
            value <= high if closed in ("right", "both") else value < high)
    if not ok:
        lb = "[" if closed in ("left", "both") else "("
        rb = "]" if closed in ("right", "both") else ")"
        raise _bad(name, f"a float in the range {lb}{low}, {high}{rb}", value)
    return float(value)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise _bad(name, f"a str among {{{', '.join(map(repr, choices))}}}", value)
    return value


def _hidden_sizes(value) -> list[int]:
    sizes = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    for n in sizes:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {value!r}.")
    if any(n <= 0 for n in sizes):
        raise ValueError("hidden_layer_sizes must be > 0, got %s." % sizes)
    return [int(n) for n in sizes]


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


# ---------------------------------------------------------------- the base
class BaseMLP(BaseEstimator):
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

    # -------------------------------------------------------- parameter checks
    def _check_params(self) -> list[int]:
        """Check every constructor argument (in fit, as scikit-learn does); the hidden sizes."""
        hidden = _hidden_sizes(self.hidden_layer_sizes)
        _check_choice("activation", self.activation, tuple(HIDDEN))
        _check_choice("solver", self.solver, SOLVERS)
        _check_real("alpha", self.alpha, 0, np.inf)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_int("batch_size", self.batch_size)
        _check_choice("learning_rate", self.learning_rate, LEARNING_RATES)
        _check_real("learning_rate_init", self.learning_rate_init, 0, np.inf, closed="neither")
        _check_real("power_t", self.power_t, 0, np.inf)
        _check_int("max_iter", self.max_iter)
        _check_real("tol", self.tol, 0, np.inf)
        if isinstance(self.verbose, (bool, np.bool_)):
            pass
        elif not isinstance(self.verbose, numbers.Integral) or self.verbose < 0:
            raise _bad("verbose", "an int in the range [0, inf) or an instance of 'bool'", self.verbose)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping", "strict_device"):
            _check_bool(name, getattr(self, name))
        _check_real("momentum", self.momentum, 0, 1, closed="both")
        _check_real("validation_fraction", self.validation_fraction, 0, 1)
        _check_real("beta_1", self.beta_1, 0, 1)
        _check_real("beta_2", self.beta_2, 0, 1)
        _check_real("epsilon", self.epsilon, 0, np.inf, closed="neither")
        if not (isinstance(self.n_iter_no_change, numbers.Real) and self.n_iter_no_change == np.inf):
            _check_int("n_iter_no_change", self.n_iter_no_change)
        _check_int("max_fun", self.max_fun)
        if self.dtype is not None:
            check_dtype_name(self.dtype)
        get_xp(self.backend)  # raises for unknown or unusable backends
        return hidden

    # ------------------------------------------------- coefs_ and intercepts_
    # The weights live in the network (on its backend). ``coefs_`` and
    # ``intercepts_`` are lists built from it on first reading and cached until
    # the next training call: on NumPy views of the network's parameters (no
    # copy; writing into them writes into the net), on CuPy read-only host
    # copies (one copy per training call, however often they are read).
    # Assigning the attributes, or an entry of the lists, hands new weights to
    # the network before the next fit, partial_fit or prediction.
    @property
    def coefs_(self):
        """list of ``(n_{l-1}, n_l)`` arrays: ``coefs_[i]`` is W of layer i + 1."""
        return self._weight_lists()[0]

    @coefs_.setter
    def coefs_(self, value):
        self._set_weight_list(0, value)

    @property
    def intercepts_(self):
        """list of ``(n_l,)`` arrays: ``intercepts_[i]`` is b of layer i + 1."""
        return self._weight_lists()[1]

    @intercepts_.setter
    def intercepts_(self, value):
        self._set_weight_list(1, value)

    def _weight_lists(self):
        cache = self.__dict__.get("_weights")
        if cache is not None:
            return cache[0], cache[1]
        net = self.__dict__.get("net_")
        if net is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'coefs_'")
        coefs, intercepts = [], []
        for l in range(1, net.L + 1):
            W, b = net.params[f"W{l}"], net.params[f"b{l}"]
            if net.backend != "numpy":
                W, b = to_numpy(W), to_numpy(b)
                W.setflags(write=False)
                b.setflags(write=False)
            coefs.append(W)
            intercepts.append(b)
        self._weights = (coefs, intercepts, (tuple(coefs), tuple(intercepts)))
        return coefs, intercepts

    def _set_weight_list(self, which, value):
        try:
            lists = list(self._weight_lists())
        except AttributeError:
            lists = [[], []]
        lists[which] = value
        self._weights = (lists[0], lists[1], None)

    def _user_weights(self):
        """The (coefs, intercepts) lists when they were assigned or changed since read, else None."""
        cache = self.__dict__.get("_weights")
        if cache is None:
            return None
        coefs, intercepts, handed = cache
        if handed is not None and len(coefs) == len(handed[0]) and len(intercepts) == len(handed[1]) \
                and all(a is b for a, b in zip(coefs, handed[0])) \
                and all(a is b for a, b in zip(intercepts, handed[1])):
            return None
        return coefs, intercepts

    def _drop_weight_cache(self):
        self.__dict__.pop("_weights", None)

    def _load_user_weights(self):
        """Copy assigned coefs_/intercepts_ into the network (all checked before any is written)."""
        user = self._user_weights()
        if user is None:
            return
        net = self.net_
        coefs, intercepts = user
        if len(coefs) != net.L or len(intercepts) != net.L:
            raise ValueError(f"coefs_ and intercepts_ must hold {net.L} arrays each (one per layer); "
                             f"got {len(coefs)} and {len(intercepts)}")
        params = {}
        for l in range(1, net.L + 1):
            params[f"W{l}"] = np.asarray(_host(coefs[l - 1]))
            params[f"b{l}"] = np.asarray(_host(intercepts[l - 1])).reshape(-1)
        net.set_params(params)
        self._drop_weight_cache()

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
            self._best_flat = self.net_.params.flat.copy()
            for name, value in (("n_iter_", 0), ("t_", 0)):
                if not hasattr(self, name):
                    setattr(self, name, value)
        if self.solver in _STOCHASTIC_SOLVERS and not hasattr(self, "loss_curve_"):
            self._init_stopping_state()  # continuing an lbfgs fit (or assigned weights) with sgd/adam
        elif self.early_stopping and getattr(self, "validation_scores_", None) is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        self._load_user_weights()
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

    def _check_device_X(self, X, *, reset):
        if X.ndim != 2:
            raise ValueError(f"Expected a 2D array, got a {X.ndim}D array of shape {tuple(X.shape)} instead; "
                             "reshape your data with X.reshape(-1, 1) for a single feature or "
                             "X.reshape(1, -1) for a single sample")
        if X.dtype.kind not in "fiu":
            raise ValueError(f"X must hold numbers; got a CuPy array of dtype {X.dtype}")
        if X.dtype.kind != "f":
            X = X.astype("float64")
        if not all_finite(get_xp(X), X):
            raise ValueError("Input X contains NaN or infinity.")
        if reset:
            self.n_features_in_ = int(X.shape[1])
            self.__dict__.pop("feature_names_in_", None)
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
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

    def _rows(self, X, rows):
        """``X[rows]``: host ``rows`` for sparse or NumPy X, device ``rows`` for device X."""
        if _is_sparse(X):
            return X[rows]
        xp = get_xp(X)
        if isinstance(rows, slice):
            return X[rows]
        return xp.take(X, rows, axis=0)

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
        A, cache = net._forward_rows(X)
        loss = self._data_loss(xp, A, Y, w)
        grads = net._backward_rows(cache, Y) if w is None else net._backward_rows(cache, Y, w)
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

    def _pack_index(self):
        """For each position of scikit-learn's packed vector (all W, then all b), the flat buffer's."""
        offsets, start = {}, 0
        for name, p in self.net_.params.items():
            offsets[name] = (start, start + int(p.size))
            start += int(p.size)
        L = self.net_.L
        order = [f"W{l}" for l in range(1, L + 1)] + [f"b{l}" for l in range(1, L + 1)]
        return np.concatenate([np.arange(*offsets[name]) for name in order])

    def _pack(self):
        return to_numpy(self.net_.params.flat).astype(np.float64)[self._pack_index()]

    def _unpack(self, packed):
        net = self.net_
        flat = np.empty(int(net.params.flat.size), dtype=np.float64)
        flat[self._pack_index()] = packed
        net.params.flat[...] = as_backend_array(flat, net.xp, name="packed parameters", dtype=net.dtype,
                                                device=net.device)

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

    def _make_optimizer(self):
        flat = self.net_.params.flat
        if self.solver == "sgd":
            return SGDOptimizer(flat, self.learning_rate_init, self.learning_rate, self.momentum,
                                self.nesterovs_momentum, self.power_t)
        return AdamOptimizer(flat, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)

    def _fit_stochastic(self, X, Y, sw, incremental):
        net = self.net_
        xp, flat = net.xp, net.params.flat
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        n = X.shape[0]
        if early_stopping:
            should_stratify = is_classifier(self) and self.n_outputs_ == 1
            arrays = [np.arange(n)] + ([] if sw is None else [sw])
            parts = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction,
                                     stratify=Y if should_stratify else None)
            train, val = parts[0], parts[1]
            sw_train, sw_val = (None, None) if sw is None else (parts[2], parts[3])
            if val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            X_val = self._take_validation(X, val)
            if not _is_sparse(X_val):
                X_val = self._to_net(X_val)  # once; scored after every epoch
            y_val = self._validation_targets(Y[val])
            X_train, Y_train = self._take_validation(X, train), Y[train]
        else:
            X_train, Y_train, sw_train = X, Y, sw
            X_val = y_val = sw_val = None

        # The training data crosses to the device once (sparse X stays on the
        # host and each batch is densified and moved).
        Xt = X_train.tocsr() if _is_sparse(X_train) else self._to_net(X_train)
        Yt = self._to_net(Y_train, "y")
        wt = None if sw_train is None else self._to_net(sw_train, "sample_weight")
        on_device = not _is_sparse(Xt)

        n_samples = Xt.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped", stacklevel=4)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        G = self._grad_buffer()
        scratch = xp.empty_like(flat)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = sk_shuffle(sample_idx, random_state=self._random_state)
                    idx = xp.asarray(sample_idx) if on_device else sample_idx
                accumulated_loss = 0.0
                with strict_device(xp, bool(self.strict_device)):
                    for batch_slice in gen_batches(n_samples, batch_size):
                        rows = idx[batch_slice] if self.shuffle else batch_slice
                        Xb = self._rows(Xt, rows)
                        if not on_device:
                            Xb = self._to_net(Xb)
                            rows = xp.asarray(rows) if self.shuffle else rows
                        Yb = self._rows(Yt, rows)
                        wb = None if wt is None else self._rows(wt, rows)
                        batch_loss = self._backprop(Xb, Yb, wb, G)
                        self._optimizer.update_params(flat, G.flat, scratch)
                        accumulated_loss = accumulated_loss + batch_loss * (batch_slice.stop - batch_slice.start)
                self.n_iter_ += 1
                self.loss_ = float(accumulated_loss) / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                diverged = not all_finite(xp, flat)
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                self._optimizer.iteration_ends(self.t_)
                if diverged:
                    if not early_stopping:
                        raise ValueError(f"{NONFINITE} They became non-finite in iteration {self.n_iter_} "
                                         "(the training diverged: lower learning_rate_init or scale X).")
                    warnings.warn(f"The training diverged in iteration {self.n_iter_} (non-finite weights); "
                                  "stopped, and the weights of the best validation score were restored.",
                                  ConvergenceWarning, stacklevel=4)
                    break
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                                  "hasn't converged yet." % self.max_iter, ConvergenceWarning, stacklevel=4)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if early_stopping:
            flat[...] = self._best_flat

    def _take_validation(self, X, rows):
        if _is_sparse(X) or isinstance(X, np.ndarray):
            return X[rows]
        xp = get_xp(X)
        return xp.take(X, xp.asarray(rows), axis=0)

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight):
        if early_stopping:
            val_score = self._score(X, y, sample_weight=sample_weight)
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

    def _score_with_function(self, X, y, sample_weight, score_function):
        with np.errstate(over="ignore", invalid="ignore"):
            y_pred = self._predict(X, check_input=False)
        y_pred = _host(y_pred)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(score_function(y, y_pred, sample_weight=sample_weight))

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
            parts = [net._forward_rows(self._to_net(X[i:i + PREDICT_ROWS]))[0]
                     for i in range(0, X.shape[0], PREDICT_ROWS)]
            A = net.xp.concat(parts, axis=0) if hasattr(net.xp, "concat") else net.xp.concatenate(parts)
        else:
            A = net._forward_rows(self._to_net(X))[0]
        out = np.result_type(X.dtype, net.dtype_name)
        if A.dtype != out:  # predictions follow X: float64 X on a float32 net gives float64
            A = net.xp.astype(A, out) if hasattr(net.xp, "astype") else A.astype(out)
        return A, xp_in

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        # The network and the solver's state hold their array module, which does
        # not pickle; they travel as host arrays and are rebuilt on loading.
        if "net_" in self.__dict__:
            self._load_user_weights()
        state = dict(super().__getstate__())
        state.pop("_weights", None)
        if isinstance(state.get("net_"), MLP):
            state["net_"] = _net_state(state["net_"])
        if state.get("_best_flat") is not None:
            state["_best_flat"] = np.array(to_numpy(state["_best_flat"]))
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("net_"), dict):
            state["net_"] = _net_from_state(state["net_"])
        if state.get("_best_flat") is not None and "net_" in state:
            net = state["net_"]
            state["_best_flat"] = as_backend_array(state["_best_flat"], net.xp, name="_best_flat",
                                                   dtype=net.dtype, device=net.device)
        super().__setstate__(state)
