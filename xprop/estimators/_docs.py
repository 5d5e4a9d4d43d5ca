"""The docstrings of the two estimators (shared parameter and attribute sections)."""

_PARAMETERS = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of int or int, default=(100,)
        Units of each hidden layer (``()``: none).
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden-layer activation; xprop also has "sigmoid" (= "logistic") and
        "leaky_relu" (slope 0.01).
    solver : {"lbfgs", "sgd", "adam"}, default="adam"
        scikit-learn's update rules (:mod:`xprop.estimators._solvers`);
        "lbfgs" is SciPy's L-BFGS-B on the whole data set.
    alpha : float, default=0.0001
        L2 penalty: ``α/(2·s) Σ_l ‖W_l‖²`` added to each batch's loss (``s``
        the batch size, or its sum of sample weights), gradient ``(α/s)·W_l``;
        biases are not penalised.
    batch_size : int or "auto", default="auto"
        ``"auto"`` is ``min(200, n_samples)``; larger sizes are clipped (with
        a warning). Unused by lbfgs.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Schedule of sgd: ``invscaling`` sets ``η = learning_rate_init /
        (t_ + 1)^power_t`` after each epoch; ``adaptive`` divides η by 5 when
        the stopping rule fires, stopping once η ≤ 1e-6.
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=200
        Epochs (sgd, adam) or iterations (lbfgs) of one ``fit``.
    shuffle : bool, default=True
        Reshuffle the samples each epoch (sgd, adam).
    random_state : int, RandomState instance or None, default=None
        Draws the initial weights, the early-stopping split and the
        shuffling, exactly as scikit-learn's estimator draws them.
    tol : float, default=1e-4
        Stop when the training loss has not fallen by ``tol`` (the
        validation score not risen by ``tol`` with early stopping) for
        ``n_iter_no_change`` consecutive epochs; lbfgs: SciPy's ``gtol``.
    verbose : bool or int, default=False
        Print ``Iteration N, loss = …`` after each epoch (lbfgs: iteration).
    warm_start : bool, default=False
        ``fit`` continues from the fitted weights.
    momentum : float in [0, 1], default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` (stratified for a binary target)
        and stop on its score; the best epoch's weights are kept.
    validation_fraction : float in [0, 1), default=0.1
    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
    epsilon : float, default=1e-8
    n_iter_no_change : int or np.inf, default=10
    max_fun : int, default=15000
        Most loss evaluations of lbfgs.
    backend : {"numpy", "cupy", "auto"}, default="numpy"
        Where the network lives and trains (xprop's extra).
    dtype : {None, "float32", "float64"}, default=None
        None: the network takes the dtype of X (float32 stays float32,
        anything else is float64), as scikit-learn's weights do. "float32"
        forces single precision, the GPU user's choice for speed.
    strict_device : bool, default=False
        On CuPy, make any host↔device copy or synchronisation inside an
        epoch's batch loop an error (:func:`xprop.backend.strict_device`);
        sparse X, densified batch by batch on the host, cannot train so.

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray
        ``W_l (n_{l-1}, n_l)`` and ``b_l (n_l,)`` per layer, host arrays in
        the network's dtype (views of it on NumPy; read-only copies, cached
        until the next training call, on CuPy). Assigning them, or one of
        their entries, sets the network's weights.
    net_ : xprop.MLP
        The network.
    n_layers_, n_outputs_, out_activation_, loss_, best_loss_, loss_curve_,
    validation_scores_, best_validation_score_, t_, n_iter_, n_features_in_,
    feature_names_in_
        As scikit-learn's (``loss_curve_``, ``best_loss_`` and the validation
        attributes only for sgd and adam).
"""

CLASSIFIER_DOC = """Multilayer-perceptron classifier: scikit-learn's ``MLPClassifier``, trained by xprop.

    ``from xprop.estimators import MLPClassifier`` in place of
    ``from sklearn.neural_network import MLPClassifier``: same parameters,
    defaults, attributes, random draws and stopping rules; the network and
    its backward pass are xprop's, on NumPy or (``backend="cupy"``) a GPU.
    One logistic output unit for a binary target, logistic units with binary
    cross-entropy for a multilabel indicator ``y``, softmax otherwise.
""" + _PARAMETERS + """    classes_ : ndarray
        The class labels (``0..n_labels-1`` for a multilabel ``y``).
"""

REGRESSOR_DOC = """Multilayer-perceptron regressor: scikit-learn's ``MLPRegressor``, trained by xprop.

    ``loss="squared_error"`` (identity output) or ``"poisson"`` (exp output,
    the log link). 1 target gives 1-D predictions.

    Parameters
    ----------
    loss : {"squared_error", "poisson"}, default="squared_error"
""" + _PARAMETERS.replace("    Parameters\n    ----------\n", "", 1)
