"""Tests of the core: gradients, the worked example, layouts, numerics, contracts, errors.

Every bound comes from the one tolerance table (``tolerance(...)`` from
xprop.tolerances, re-exported by conftest); the only literal comparisons are
exact equalities and numbers derived by hand in the test itself.
"""

from __future__ import annotations

import ast
import inspect
import math
import pathlib
import re
import warnings

import numpy as np
import pytest
from conftest import (
    HIDDEN_ACTIVATIONS,
    LAYOUTS,
    OUTPUT_LOSSES,
    kink_free_gradcheck,
    make_data,
    tolerance,
)

import xprop
from xprop import MLP, compare_backends, gradcheck
from xprop.activations import ACTIVATIONS, Activation
from xprop.gradcheck import GradcheckReport, relative_error
from xprop.losses import LOSSES

XPROP_DIR = pathlib.Path(xprop.__file__).parent
DTYPES = ["float64", "float32"]


def pair_id(pair):
    output, loss = pair
    return f"{output}+{loss}"


def one_hot(labels, n, dtype):
    return (np.asarray(labels)[:, None] == np.arange(n)[None, :]).astype(dtype)


def row_targets(net, Y):
    """Y as the row-layout math sees it: one-hot for labels, transposed for columns."""
    Y = np.asarray(Y)
    if Y.ndim == 1 and net.output == "softmax":
        return one_hot(Y, net.sizes[-1], net.dtype_name)
    Y = Y.T if net.layout == "columns" else Y
    return Y.astype(net.dtype_name)


# =========================================================================== gradcheck
@pytest.mark.parametrize("m", [1, 7], ids=lambda m: f"m={m}")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSSES, ids=[pair_id(p) for p in OUTPUT_LOSSES])
@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradcheck_passes(dtype, activation, output, loss, layout, m):
    """Analytic gradients (in ``dtype``) match float64 central differences.

    float32 is the "float32 analytic vs float64 numeric" case: the numeric
    gradient is always taken on a float64 copy of the same weights.
    """
    net = MLP([4, 5, 3, 3], activation=activation, output=output, loss=loss,
              backend="numpy", dtype=dtype, seed=0, layout=layout)
    report, _, _ = kink_free_gradcheck(net, m)
    assert report.tolerance == tolerance("gradcheck", dtype)
    assert report.passed, str(report)


def test_gradcheck_numeric_gradient_is_a_central_difference_of_the_cost():
    """gradcheck's numeric side is (J(θ+ε) − J(θ−ε)) / 2ε of ``net.cost``, recomputed here."""
    net = MLP([4, 5, 3], activation="tanh", output="softmax", backend="numpy", dtype="float64")
    X, Y = make_data(net, 7)
    report = gradcheck(net, X, Y)
    eps = report.eps
    for name, idx in [("W1", (2, 3)), ("b2", (1,))]:
        P = net.params[name]
        original = P[idx]
        P[idx] = original + eps
        plus = net.cost(X, Y)
        P[idx] = original - eps
        minus = net.cost(X, Y)
        P[idx] = original
        by_hand = (plus - minus) / (2 * eps)
        assert relative_error(report.numeric[name][idx], by_hand) <= tolerance("gradcheck", "float64")
        _, cache = net.forward(X)
        assert report.analytic["d" + name][idx] == net.backward(cache, Y)["d" + name][idx]


def test_gradcheck_fails_on_a_broken_backward_rule(monkeypatch):
    """A wrong hidden derivative is caught, and the report names the parameters it spoils."""
    good = ACTIVATIONS["tanh"]

    def broken_tanh_backward(xp, dA, Z, A):
        return dA * (1 - A)  # wrong: tanh' = 1 − A², not 1 − A

    # A fresh entry with only forward and the broken backward (no fast overrides to bypass it).
    monkeypatch.setitem(ACTIVATIONS, "tanh", Activation(good.forward, broken_tanh_backward, kink=good.kink))
    net = MLP([4, 5, 3, 3], activation="tanh", output="softmax", backend="numpy", dtype="float64")
    X, Y = make_data(net, 7)
    report = gradcheck(net, X, Y)
    text = str(report)
    assert not report.passed, text
    assert "FAILED" in text
    # Layer 3's gradient (dW3 = A2ᵀ dZ3 / m) never meets the hidden derivative; layers 1, 2 do.
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    for name in ("W1", "b1", "W2", "b2"):
        assert report.errors[name] > report.tolerance, text
        assert "too large" in lines[name], text
    for name in ("W3", "b3"):
        assert report.errors[name] <= report.tolerance, text
        assert "too large" not in lines[name], text


def test_gradcheck_catches_a_gradient_off_by_a_tenth_of_a_percent(monkeypatch):
    net = MLP([4, 5, 3, 3], activation="sigmoid", output="sigmoid", backend="numpy", dtype="float64")
    real_backward = net.backward_rows

    def scaled(cache, Y):
        grads = real_backward(cache, Y)
        grads["dW2"] = grads["dW2"] * 1.001
        return grads

    monkeypatch.setattr(net, "backward_rows", scaled)
    X, Y = make_data(net, 7)
    report = gradcheck(net, X, Y)
    assert not report.passed, str(report)
    assert [name for name, err in report.errors.items() if err > report.tolerance] == ["W2"], str(report)
    assert re.search(r"^W2 .*too large$", str(report), re.MULTILINE), str(report)


def test_gradcheck_refuses_to_pass_near_a_relu_kink():
    """A pre-activation at exactly 0 makes the check fail (kinks > 0), never pass silently."""
    net = MLP([2, 3, 2], activation="relu", output="softmax", backend="numpy", dtype="float64")
    net.params["W1"][...] = np.array([[1.0, 2.0, -1.0], [0.5, 1.0, 1.0]])
    X = np.array([[1.0, -2.0], [0.3, 0.7]])  # example 0: Z1[0, 0] = 1·1 + (−2)·0.5 + 0 = 0
    report = gradcheck(net, X, np.array([0, 1]))
    assert report.kinks >= 1
    assert not report.passed
    assert "kink" in str(report)


def test_a_report_with_kinks_never_passes():
    report = GradcheckReport(errors={"W1": 0.0}, worst={"W1": ((0, 0), 0.0, 0.0, 0.0)},
                             tolerance=tolerance("gradcheck", "float64"), dtype="float64",
                             backend="numpy", eps=1e-6, kinks=1)
    assert not report.passed and not report
    assert "1 pre-activation(s) lie within 10·eps of a ReLU kink" in str(report)


# =========================================================================== worked example
def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def hand_worked_2_2_1():
    """The 2-2-1 sigmoid net of the tutorial, forward and backward, by hand.

    Row layout: examples are rows, X (2, 2), W1 (2, 2), W2 (2, 1), m = 2::

        X  = [[1, 1],      Y = [[1],      W1 = [[0.1, -0.2],    b1 = [0.1, -0.1]
              [0, 0]]           [0]]            [0.3,  0.4]]
        W2 = [[ 0.5],     b2 = [0.1]
              [-0.6]]

    Every entry below is written out with scalar Python arithmetic.
    """
    # ---- forward ------------------------------------------------------------
    # Z1 = X W1 + b1
    #   example 1, x = (1, 1): [1·0.1 + 1·0.3 + 0.1, 1·(−0.2) + 1·0.4 − 0.1] = [0.5, 0.1]
    #   example 2, x = (0, 0): the biases alone                                = [0.1, −0.1]
    Z1 = [[1 * 0.1 + 1 * 0.3 + 0.1, 1 * -0.2 + 1 * 0.4 - 0.1],
          [0 * 0.1 + 0 * 0.3 + 0.1, 0 * -0.2 + 0 * 0.4 - 0.1]]
    # A1 = σ(Z1) = [[σ(0.5), σ(0.1)], [σ(0.1), σ(−0.1)]]
    #            ≈ [[0.6224593, 0.5249792], [0.5249792, 0.4750208]]
    A1 = [[sigmoid(Z1[0][0]), sigmoid(Z1[0][1])],
          [sigmoid(Z1[1][0]), sigmoid(Z1[1][1])]]
    # Z2 = A1 W2 + b2 = [0.5·A1[i][0] − 0.6·A1[i][1] + 0.1]  ≈ [[0.0962422], [0.0774771]]
    Z2 = [[A1[0][0] * 0.5 + A1[0][1] * -0.6 + 0.1],
          [A1[1][0] * 0.5 + A1[1][1] * -0.6 + 0.1]]
    # A2 = σ(Z2) ≈ [[0.5240420], [0.5193596]]
    A2 = [[sigmoid(Z2[0][0])], [sigmoid(Z2[1][0])]]
    # J = −(1/m) Σ [y log a + (1 − y) log(1 − a)] = −(log 0.5240420 + log(1 − 0.5193596)) / 2 ≈ 0.6894097
    J = -(1 * math.log(A2[0][0]) + (1 - 0) * math.log(1 - A2[1][0])) / 2

    # ---- backward -----------------------------------------------------------
    # dZ2 = A2 − Y (sigmoid + BCE) ≈ [[−0.4759580], [0.5193596]]
    dZ2 = [[A2[0][0] - 1], [A2[1][0] - 0]]
    # dW2 = (1/m) A1ᵀ dZ2: dW2[j] = (A1[0][j]·dZ2[0] + A1[1][j]·dZ2[1]) / 2 ≈ [[−0.0118058], [−0.0015807]]
    dW2 = [[(A1[0][0] * dZ2[0][0] + A1[1][0] * dZ2[1][0]) / 2],
           [(A1[0][1] * dZ2[0][0] + A1[1][1] * dZ2[1][0]) / 2]]
    # db2 = (1/m) Σ_i dZ2 = (−0.4759580 + 0.5193596) / 2 ≈ [0.0217008]
    db2 = [(dZ2[0][0] + dZ2[1][0]) / 2]
    # dA1 = dZ2 W2ᵀ: dA1[i][j] = dZ2[i]·W2[j] ≈ [[−0.2379790, 0.2855748], [0.2596798, −0.3116158]]
    dA1 = [[dZ2[0][0] * 0.5, dZ2[0][0] * -0.6],
           [dZ2[1][0] * 0.5, dZ2[1][0] * -0.6]]
    # dZ1 = dA1 ∘ A1(1 − A1) ≈ [[−0.0559260, 0.0712155], [0.0647579, −0.0777095]]
    dZ1 = [[dA1[i][j] * A1[i][j] * (1 - A1[i][j]) for j in range(2)] for i in range(2)]
    # dW1 = (1/m) Xᵀ dZ1: dW1[p][j] = (X[0][p]·dZ1[0][j] + X[1][p]·dZ1[1][j]) / 2;
    # example 2 has x = 0, so both rows are dZ1[0] / 2 ≈ [[−0.0279630, 0.0356078], [−0.0279630, 0.0356078]]
    dW1 = [[(1 * dZ1[0][0] + 0 * dZ1[1][0]) / 2, (1 * dZ1[0][1] + 0 * dZ1[1][1]) / 2],
           [(1 * dZ1[0][0] + 0 * dZ1[1][0]) / 2, (1 * dZ1[0][1] + 0 * dZ1[1][1]) / 2]]
    # db1 = (1/m) Σ_i dZ1 ≈ [0.0044160, −0.0032470]
    db1 = [(dZ1[0][0] + dZ1[1][0]) / 2, (dZ1[0][1] + dZ1[1][1]) / 2]
    return dict(Z1=Z1, A1=A1, Z2=Z2, A2=A2, J=J, dW1=dW1, db1=db1, dW2=dW2, db2=db2)


# Vectorised and scalar arithmetic differ only in the order of a few additions:
# the bound for "same operations, reordered" is the "fast" one.
HAND_TOL = tolerance("fast", "float64")


def test_hand_worked_example_rows():
    net = MLP([2, 2, 1], activation="sigmoid", output="sigmoid", loss="binary_cross_entropy",
              backend="numpy", dtype="float64", layout="rows")
    net.params["W1"] = np.array([[0.1, -0.2], [0.3, 0.4]])
    net.params["b1"] = np.array([0.1, -0.1])
    net.params["W2"] = np.array([[0.5], [-0.6]])
    net.params["b2"] = np.array([0.1])
    X = np.array([[1.0, 1.0], [0.0, 0.0]])
    Y = np.array([[1.0], [0.0]])
    hand = hand_worked_2_2_1()

    out, cache = net.forward(X)
    for key in ("Z1", "A1", "Z2", "A2"):
        np.testing.assert_allclose(cache[key], np.array(hand[key]), rtol=0, atol=HAND_TOL, err_msg=key)
    np.testing.assert_array_equal(out, cache["A2"])
    grads = net.backward(cache, Y)
    for key in ("dW1", "db1", "dW2", "db2"):
        np.testing.assert_allclose(grads[key], np.array(hand[key]), rtol=0, atol=HAND_TOL, err_msg=key)
    assert abs(net.cost(X, Y) - hand["J"]) <= HAND_TOL


def test_hand_worked_example_columns():
    """The same example with examples as columns gives the transposed numbers."""
    net = MLP([2, 2, 1], activation="sigmoid", output="sigmoid", loss="binary_cross_entropy",
              backend="numpy", dtype="float64", layout="columns")
    net.params["W1"] = np.array([[0.1, 0.3], [-0.2, 0.4]])  # W1 (n1, k) = row-layout W1ᵀ
    net.params["b1"] = np.array([[0.1], [-0.1]])            # (n1, 1)
    net.params["W2"] = np.array([[0.5, -0.6]])              # (1, n1)
    net.params["b2"] = np.array([[0.1]])
    X = np.array([[1.0, 0.0], [1.0, 0.0]])                  # (k, m): example 1 = (1, 1), example 2 = (0, 0)
    Y = np.array([[1.0, 0.0]])                              # (n_L, m)
    hand = hand_worked_2_2_1()

    _, cache = net.forward(X)
    for key in ("Z1", "A1", "Z2", "A2"):
        np.testing.assert_allclose(cache[key], np.array(hand[key]).T, rtol=0, atol=HAND_TOL, err_msg=key)
    grads = net.backward(cache, Y)
    for key in ("dW1", "dW2"):
        np.testing.assert_allclose(grads[key], np.array(hand[key]).T, rtol=0, atol=HAND_TOL, err_msg=key)
    for key in ("db1", "db2"):
        np.testing.assert_allclose(grads[key], np.array(hand[key])[:, None], rtol=0, atol=HAND_TOL, err_msg=key)
    assert abs(net.cost(X, Y) - hand["J"]) <= HAND_TOL


# =========================================================================== layouts
@pytest.mark.parametrize("m", [1, 7], ids=lambda m: f"m={m}")
@pytest.mark.parametrize("output,loss", OUTPUT_LOSSES, ids=[pair_id(p) for p in OUTPUT_LOSSES])
@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
def test_columns_layout_is_the_transpose_of_rows(activation, output, loss, m):
    kw = dict(activation=activation, output=output, loss=loss, backend="numpy", dtype="float64", seed=3)
    rows = MLP([4, 5, 3, 3], layout="rows", **kw)
    cols = MLP([4, 5, 3, 3], layout="columns", **kw)
    X, Y = make_data(rows, m, seed=1)
    Xc, Yc = make_data(cols, m, seed=1)
    np.testing.assert_array_equal(Xc, X.T)

    for l in range(1, rows.L + 1):
        np.testing.assert_array_equal(cols.params[f"W{l}"], rows.params[f"W{l}"].T)
        np.testing.assert_array_equal(cols.params[f"b{l}"], rows.params[f"b{l}"][:, None])

    out_r, cache_r = rows.forward(X)
    out_c, cache_c = cols.forward(Xc)
    grads_r = rows.backward(cache_r, Y)
    grads_c = cols.backward(cache_c, Yc)
    assert list(cache_c) == list(cache_r) and set(grads_c) == set(grads_r)
    pairs = [(key, cache_c[key], cache_r[key].T) for key in cache_r]
    pairs.append(("out", out_c, out_r.T))
    pairs += [(key, grads_c[key], grads_r[key].T if key.startswith("dW") else grads_r[key][:, None])
              for key in grads_r]
    if m > 1:
        # The column net runs the row code on transposed views; for m > 1 both are
        # the same BLAS matrix products and the results are bit-identical.
        for key, got, want in pairs:
            np.testing.assert_array_equal(got, want, err_msg=key)
    else:
        # For m = 1, NumPy hands (1, k) @ (k, n) to a matrix-vector kernel whose
        # summation order depends on the memory order of the transposed operand:
        # the results differ in the last bit, so the "fast" bound applies.
        for key, got, want in pairs:
            assert relative_error(got, want) <= tolerance("fast", "float64"), key
    assert cols.cost(Xc, Yc) == pytest.approx(rows.cost(X, Y), rel=tolerance("fast", "float64"), abs=0)


# =========================================================================== fused output delta
FUSED = [("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,loss", FUSED, ids=[pair_id(p) for p in FUSED])
def test_fused_delta_equals_generic_chain_rule(output, loss, dtype):
    """dZ_L = A − Y equals dA ∘ g'(Z) from the registries, on outputs away from saturation."""
    net = MLP([4, 5, 3], activation="tanh", output=output, loss=loss, backend="numpy", dtype=dtype)
    X, Y = make_data(net, 9)
    _, cache = net.forward(X)
    Z, A = cache["Z2"], cache["A2"]
    assert net.fused
    assert np.all((A > 0.01) & (A < 0.99)), "the data must not saturate the output for this test"
    Yr = row_targets(net, Y)

    fused = A - Yr
    dA = LOSSES[loss].grad(np, Z, A, Yr)
    generic = ACTIVATIONS[output].backward(np, dA, Z, A)
    assert generic.dtype == fused.dtype == np.dtype(dtype)
    assert relative_error(generic, fused) <= tolerance("fast", dtype)

    # The whole backward pass through the generic path agrees too.
    generic_net = net.to()
    generic_net.fused = False
    g_fused = net.backward(cache, Y)
    g_generic = generic_net.backward(cache, Y)
    for key in g_fused:
        assert relative_error(g_generic[key], g_fused[key]) <= tolerance("fast", dtype), key


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_fused_delta_equals_generic_chain_rule(dtype):
    """exp + Poisson: dZ_L = A − Y equals (1 − Y/A) ∘ e^Z, the chain rule through the registries."""
    net = MLP([4, 5, 3], activation="tanh", output="exp", loss="poisson", backend="numpy", dtype=dtype)
    assert net.fused and net.loss == MLP([4, 3], output="exp", backend="numpy").loss == "poisson"
    X, _ = make_data(net, 9)
    Y = np.random.default_rng(1).poisson(2.0, size=(9, 3)).astype(dtype)
    _, cache = net.forward(X)
    Z, A = cache["Z2"], cache["A2"]
    generic = ACTIVATIONS["exp"].backward(np, LOSSES["poisson"].grad(np, Z, A, Y), Z, A)
    assert relative_error(generic, A - Y) <= tolerance("fast", dtype)
    generic_net = net.to()
    generic_net.fused = False
    g_fused, g_generic = net.backward(cache, Y), generic_net.backward(cache, Y)
    for key in g_fused:
        assert relative_error(g_generic[key], g_fused[key]) <= tolerance("fast", dtype), key


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_weight_gives_the_gradient_of_the_weighted_mean_cost(dtype):
    """Integer weights in backward = repeating the rows; weights 1 = no weights."""
    net = MLP([4, 5, 3], activation="tanh", output="softmax", backend="numpy", dtype=dtype, seed=2)
    X, Y = make_data(net, 6)
    w = np.array([0, 1, 2, 3, 1, 2])
    _, cache = net.forward(X)
    weighted = net.backward(cache, Y, sample_weight=w)
    _, cache_rep = net.forward(np.repeat(X, w, axis=0))
    repeated = net.backward(cache_rep, np.repeat(Y, w, axis=0))
    ones = net.backward(cache, Y, sample_weight=np.ones(6))
    plain = net.backward(cache, Y)
    for key in plain:
        assert relative_error(weighted[key], repeated[key]) <= tolerance("fast", dtype), key
        np.testing.assert_array_equal(ones[key], plain[key], err_msg=key)
    with pytest.raises(ValueError, match="sample_weight must be 1-D with one weight per example"):
        net.backward(cache, Y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        net.backward(cache, Y, sample_weight=-np.ones(6))


@pytest.mark.parametrize("output,loss", FUSED, ids=[pair_id(p) for p in FUSED])
def test_fused_delta_is_exact_on_saturated_float32_outputs(output, loss):
    """At |Z| = 50 in float32 the fused delta is the exact ±1; the long way loses it."""
    Z = np.array([[50.0, -50.0, 0.0]], dtype=np.float32)
    Y = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)  # the confident units are wrong
    A = ACTIVATIONS[output].forward(np, Z)
    fused = A - Y
    assert fused.dtype == np.float32 and np.all(np.isfinite(fused))
    # d(loss)/dZ by hand: sigmoid + BCE: σ(z) − y = [1 − e⁻⁵⁰, e⁻⁵⁰ − 1, 0.5];
    # softmax + CE: softmax(Z) − y = [1 − e⁻⁵⁰, −1 + e⁻¹⁰⁰, e⁻⁵⁰] up to terms below float32 roundoff.
    exact = [1.0, -1.0, 0.5] if output == "sigmoid" else [1.0, -1.0, 0.0]
    assert relative_error(fused, np.array([exact])) <= tolerance("fast", "float32")
    # The generic path divides by A(1 − A) (or A), which rounds to 0 here: its delta
    # is finite (guarded division) but wrong, which is why the net uses A − Y.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generic = ACTIVATIONS[output].backward(np, LOSSES[loss].grad(np, Z, A, Y), Z, A)
    # (generic ≈ [0, −1, 0.5] for sigmoid: error 1/(1.5 + 1.12) ≈ 0.38; ≈ [3e-6, −3e-6, 0] for softmax: ≈ 1)
    assert relative_error(generic, np.array([exact])) > 0.1


def test_saturated_net_gives_finite_gradients():
    net = MLP([4, 5, 3], activation="tanh", output="softmax", backend="numpy", dtype="float32")
    net.params["W2"] = net.params["W2"] * np.float32(1e3)  # |Z2| in the hundreds
    X, Y = make_data(net, 9)
    _, cache = net.forward(X)
    assert np.max(np.abs(cache["Z2"])) > 50
    grads = net.backward(cache, Y)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert math.isfinite(net.cost(X, Y))


# =========================================================================== numerical stability
@pytest.mark.parametrize("dtype", DTYPES)
# exp (the Poisson output) is unbounded by design: e^{1e4} has no float value, and the
# mean it predicts is meant to be e^Z; its overflow is left visible (a RuntimeWarning).
@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if name != "exp"])
def test_activation_is_finite_at_extreme_inputs(name, dtype):
    Z = np.array([[-1e4, -1.0, 0.0, 1.0, 1e4], [1e4, 1e4, -1e4, 0.5, -0.5]], dtype=dtype)
    act = ACTIVATIONS[name]
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        A = act.forward(np, Z)
        dZ = act.backward(np, np.ones_like(Z), Z, A)
    assert A.dtype == dZ.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(A)) and np.all(np.isfinite(dZ))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_of_plus_minus_1e4_is_exactly_one_and_zero(dtype):
    A = ACTIVATIONS["sigmoid"].forward(np, np.array([[1e4, -1e4]], dtype=dtype))
    np.testing.assert_array_equal(A, np.array([[1.0, 0.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one_at_extreme_inputs(dtype):
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    A = ACTIVATIONS["softmax"].forward(np, Z)
    # row 1: e⁰ / (e⁰ + e⁻²ᵉ⁴ + e⁻¹ᵉ⁴) = 1 exactly; row 2: three equal entries
    np.testing.assert_array_equal(A[0], np.array([1.0, 0.0, 0.0], dtype=dtype))
    np.testing.assert_array_equal(A[1], np.full(3, A[1, 0]))
    assert abs(float(A[1].sum()) - 1.0) <= tolerance("fast", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_and_bce_are_finite_for_saturated_outputs(dtype):
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        # CE: −log softmax_1([1e4, −1e4, 0]) = 1e4 − (−1e4) + log(1 + e⁻²ᵉ⁴ + e⁻¹ᵉ⁴) = 2e4
        Z = np.array([[1e4, -1e4, 0.0]], dtype=dtype)
        Y = np.array([[0.0, 1.0, 0.0]], dtype=dtype)
        J = LOSSES["cross_entropy"].value(np, Z, ACTIVATIONS["softmax"].forward(np, Z), Y)
        assert np.isfinite(J) and float(J) == 2e4
        # BCE: confidently wrong, each example costs |z| = 1e4; confidently right costs log(1 + e⁻¹ᵉ⁴) = 0
        Z = np.array([[1e4], [-1e4]], dtype=dtype)
        A = ACTIVATIONS["sigmoid"].forward(np, Z)
        J_wrong = LOSSES["binary_cross_entropy"].value(np, Z, A, np.array([[0.0], [1.0]], dtype=dtype))
        J_right = LOSSES["binary_cross_entropy"].value(np, Z, A, np.array([[1.0], [0.0]], dtype=dtype))
        assert float(J_wrong) == 1e4 and float(J_right) == 0.0


# =========================================================================== dtype
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_dtype", ["float64", "float32", "int64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_array_keeps_the_net_dtype(dtype, x_dtype, layout):
    net = MLP([4, 5, 3], activation="relu", output="softmax", backend="numpy", dtype=dtype, layout=layout)
    X, Y = make_data(net, 6)
    X = (3 * X).astype(x_dtype)
    out, cache = net.forward(X)
    grads = net.backward(cache, Y)
    arrays = {**net.params, **cache, **grads, "out": out}
    wrong = {k: str(v.dtype) for k, v in arrays.items() if v.dtype != np.dtype(dtype)}
    assert not wrong, f"not {dtype}: {wrong}"
    assert isinstance(net.cost(X, Y), float)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_output_predictions_keep_the_dtype(dtype):
    net = MLP([4, 3, 2], activation="tanh", output="identity", backend="numpy", dtype=dtype)
    X, _ = make_data(net, 5)
    assert net.predict(X).dtype == np.dtype(dtype)


# =========================================================================== contracts
CONTRACT_NETS = [("relu", "softmax", "cross_entropy"), ("tanh", "sigmoid", "binary_cross_entropy"),
                 ("sigmoid", "identity", "mse")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,output,loss", CONTRACT_NETS, ids=[o for _, o, _ in CONTRACT_NETS])
def test_public_calls_do_not_mutate_inputs_or_params(activation, output, loss, layout):
    net = MLP([4, 5, 3], activation=activation, output=output, loss=loss, backend="numpy",
              dtype="float64", layout=layout)
    X, Y = make_data(net, 6)
    X0, Y0 = X.copy(), Y.copy()
    P0 = {k: v.copy() for k, v in net.params.items()}

    _, cache = net.forward(X)
    net.backward(cache, Y)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, P0[k], err_msg=f"{k} changed by forward/backward")
    net.cost(X, Y)
    net.predict(X)
    np.testing.assert_array_equal(X, X0, err_msg="X changed")
    np.testing.assert_array_equal(Y, Y0, err_msg="Y changed")
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, P0[k], err_msg=f"{k} changed by cost/predict")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_and_cache_have_the_documented_keys_shapes_and_dtypes(dtype, layout):
    net = MLP([4, 6, 5, 3], activation="tanh", output="softmax", backend="numpy", dtype=dtype, layout=layout)
    X, Y = make_data(net, 7)
    out, cache = net.forward(X)
    assert list(cache) == ["A0", "Z1", "A1", "Z2", "A2", "Z3", "A3"]
    np.testing.assert_array_equal(cache["A0"], X.astype(dtype))
    assert out is cache["A3"]
    grads = net.backward(cache, Y)
    assert set(grads) == {"dW1", "db1", "dW2", "db2", "dW3", "db3"}
    for name, P in net.params.items():
        g = grads["d" + name]
        assert g.shape == P.shape and g.dtype == P.dtype, name
    m = 7
    for l, n in enumerate(net.sizes[1:], start=1):
        shape = (m, n) if layout == "rows" else (n, m)
        assert cache[f"Z{l}"].shape == cache[f"A{l}"].shape == shape


# =========================================================================== init
def test_same_seed_same_params_different_seed_different():
    a = MLP([4, 5, 3], seed=7, backend="numpy")
    b = MLP([4, 5, 3], seed=7, backend="numpy")
    c = MLP([4, 5, 3], seed=8, backend="numpy")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    for k in ("W1", "W2"):
        assert not np.array_equal(a.params[k], c.params[k]), k


@pytest.mark.parametrize("activation,expected_init", [("relu", "he"), ("leaky_relu", "he"), ("tanh", "glorot"),
                                                      ("sigmoid", "glorot"), ("identity", "glorot")])
def test_default_init_depends_on_the_activation(activation, expected_init):
    assert MLP([4, 3], activation=activation, init=None, backend="numpy").init == expected_init


@pytest.mark.parametrize("activation,init,std_of", [
    ("relu", None, lambda n_in, n_out: math.sqrt(2 / n_in)),              # He
    ("tanh", None, lambda n_in, n_out: math.sqrt(2 / (n_in + n_out))),    # Glorot
    ("tanh", "small", lambda n_in, n_out: 0.1),
], ids=["relu-default-he", "tanh-default-glorot", "small"])
def test_initial_weight_spread(activation, init, std_of):
    n_in, n_out = 1000, 1000
    net = MLP([n_in, n_out, 10], activation=activation, init=init, backend="numpy", dtype="float64", seed=0)
    W = net.params["W1"]
    expected = std_of(n_in, n_out)
    # The sample std of N = 10⁶ normal draws has relative standard error 1/√(2N) ≈ 7e-4;
    # allow ten of them. He and Glorot differ by a factor √2 here, far outside that.
    bound = 10 / math.sqrt(2 * W.size)
    assert abs(W.std() / expected - 1) < bound, (W.std(), expected)
    assert abs(W.mean()) < 10 * expected / math.sqrt(W.size)
    assert all(np.all(net.params[f"b{l}"] == 0) for l in (1, 2))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_params_are_the_seeded_float64_host_draws_cast(dtype, layout):
    """Weights: numpy default_rng(seed) standard normals, layer by layer, × std, then cast."""
    sizes = [4, 5, 3]
    net = MLP(sizes, activation="tanh", init="glorot", backend="numpy", dtype=dtype, seed=42, layout=layout)
    rng = np.random.default_rng(42)
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        W = rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / (n_in + n_out))
        W = W.astype(dtype)
        np.testing.assert_array_equal(net.params[f"W{l}"], W if layout == "rows" else W.T)
        b = net.params[f"b{l}"]
        assert b.shape == ((n_out,) if layout == "rows" else (n_out, 1)) and np.all(b == 0)


# =========================================================================== predict
@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_softmax_is_argmax_of_forward(layout):
    net = MLP([4, 5, 3], activation="tanh", output="softmax", backend="numpy", layout=layout)
    X, _ = make_data(net, 8)
    out, _ = net.forward(X)
    pred = net.predict(X)
    assert pred.shape == (8,)
    np.testing.assert_array_equal(pred, np.argmax(out, axis=1 if layout == "rows" else 0))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_sigmoid_is_zero_one(layout):
    net = MLP([4, 5, 2], activation="tanh", output="sigmoid", backend="numpy", layout=layout)
    X, _ = make_data(net, 8)
    out, _ = net.forward(X)
    pred = net.predict(X)
    assert pred.shape == out.shape
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (out > 0.5).astype(pred.dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_identity_is_the_output(layout):
    net = MLP([4, 5, 2], activation="tanh", output="identity", backend="numpy", layout=layout)
    X, _ = make_data(net, 8)
    out, _ = net.forward(X)
    np.testing.assert_array_equal(net.predict(X), out)


# =========================================================================== cost
COST_NETS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse"),
             ("softmax", "mse")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output,loss", COST_NETS, ids=[pair_id(p) for p in COST_NETS])
def test_cost_is_the_mean_over_examples(output, loss, layout):
    net = MLP([4, 5, 3], activation="tanh", output=output, loss=loss, backend="numpy",
              dtype="float64", layout=layout)
    X, Y = make_data(net, 2)
    if layout == "rows":
        singles = [net.cost(X[i:i + 1], Y[i:i + 1]) for i in range(2)]
    else:
        singles = [net.cost(X[:, i:i + 1], Y[i:i + 1] if Y.ndim == 1 else Y[:, i:i + 1]) for i in range(2)]
    assert net.cost(X, Y) == pytest.approx((singles[0] + singles[1]) / 2, rel=tolerance("fast", "float64"))


@pytest.mark.parametrize("output,loss", COST_NETS, ids=[pair_id(p) for p in COST_NETS])
def test_cost_matches_its_definition_on_the_forward_output(output, loss):
    net = MLP([4, 5, 3], activation="tanh", output=output, loss=loss, backend="numpy", dtype="float64")
    X, Y = make_data(net, 6)
    A, _ = net.forward(X)
    Yr = row_targets(net, Y)
    m = A.shape[0]
    if loss == "mse":
        expected = np.sum((A - Yr) ** 2) / (2 * m)              # (1/(2m)) Σ (A − Y)²
    elif loss == "cross_entropy":
        expected = -np.sum(Yr * np.log(A)) / m                   # −(1/m) Σ y log a
    else:
        expected = -np.sum(Yr * np.log(A) + (1 - Yr) * np.log(1 - A)) / m
    assert net.cost(X, Y) == pytest.approx(expected, rel=tolerance("fast", "float64"))


# =========================================================================== errors
CONSTRUCTOR_ERRORS = [
    (dict(activation="swish"), ValueError, r"^activation must be one of .*'swish'"),
    (dict(activation="softmax"), ValueError, r"^activation must be one of"),
    (dict(output="relu6"), ValueError, r"^output must be one of .*'relu6'"),
    (dict(loss="hinge"), ValueError, r"^loss must be one of .*'hinge'"),
    (dict(layout="cols"), ValueError, r"^layout must be one of .*'cols'"),
    (dict(init="xavier"), ValueError, r"^init must be one of .*'xavier'"),
    (dict(dtype="float16"), ValueError, r"^dtype must be 'float32' or 'float64'; got 'float16'"),
    (dict(backend="nonsense"), ValueError, r"^backend must be .*'nonsense'"),
    (dict(output="sigmoid", loss="cross_entropy"), ValueError,
     r"loss 'cross_entropy' needs output='softmax'; got output='sigmoid'"),
    (dict(output="softmax", loss="binary_cross_entropy"), ValueError,
     r"loss 'binary_cross_entropy' needs output='sigmoid'; got output='softmax'"),
    (dict(seed="zero"), TypeError, r"^seed must be an integer"),
    (dict(seed=-1), ValueError, r"^seed must be"),
]


@pytest.mark.parametrize("kwargs,exc,match", CONSTRUCTOR_ERRORS,
                         ids=["-".join(f"{k}={v}" for k, v in kw.items()) for kw, _, _ in CONSTRUCTOR_ERRORS])
def test_constructor_errors_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MLP([4, 3], **kwargs)


@pytest.mark.parametrize("sizes,match", [
    ([], r"^layer_sizes must have at least two entries"),
    ([3], r"^layer_sizes must have at least two entries"),
    ([3, 0], r"^layer_sizes\[1\] must be a positive integer; got 0"),
    ([3, -1], r"^layer_sizes\[1\] must be a positive integer; got -1"),
    ([3, 2.5], r"^layer_sizes\[1\] must be a positive integer; got 2.5"),
], ids=["empty", "one-entry", "zero-units", "negative-units", "fractional-units"])
def test_layer_sizes_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        MLP(sizes)


X_ERRORS = [
    (np.zeros(4), ValueError, r"^X must be 2-D \(m, 4\); got 1-D"),
    (np.zeros((2, 4, 1)), ValueError, r"^X must be 2-D \(m, 4\); got 3-D"),
    (np.zeros((0, 4)), ValueError, r"^X is empty"),
    (np.zeros((2, 5)), ValueError, r"^X must have 4 features"),
    (np.array([[0.0, np.nan, 0.0, 0.0]]), ValueError, r"^X contains NaN"),
    (np.array([["a", "b", "c", "d"]]), TypeError, r"^X must hold numbers"),
    ([["a", "b", "c", "d"]], TypeError, r"^X must hold numbers"),
]


@pytest.mark.parametrize("X,exc,match", X_ERRORS,
                         ids=["1-D", "3-D", "empty", "wrong-features", "nan", "strings", "string-list"])
@pytest.mark.parametrize("call", ["forward", "predict", "cost"])
def test_bad_X_is_refused_naming_X(call, X, exc, match):
    net = MLP([4, 5, 3], backend="numpy")
    with pytest.raises(exc, match=match):
        if call == "cost":
            net.cost(X, np.zeros(1, dtype=np.int64))
        else:
            getattr(net, call)(X)


@pytest.mark.parametrize("output,Y,match", [
    ("softmax", np.array([0, 1, 2]), r"^Y has 3 examples but X has 4"),
    ("softmax", np.array([0, 1, 2, 10]), r"^Y labels must be in 0\.\.9 .*got values from 0 to 10"),
    ("softmax", np.array([0, -1, 2, 3]), r"^Y labels must be in 0\.\.9 .*got values from -1 to 3"),
    ("softmax", np.array([0.0, 1.5, 2.0, 3.0]), r"^Y as 1-D labels must hold whole class numbers"),
    ("softmax", np.full((4, 10), 0.5), r"^Y for a softmax net must be one-hot rows"),
    ("softmax", np.array([0.0, np.nan, 2.0, 3.0]), r"^Y contains NaN"),
    ("sigmoid", np.full((4, 10), np.nan), r"^Y contains NaN"),
    ("sigmoid", np.full((4, 10), 2.0), r"^Y for binary cross-entropy must be in \[0, 1\]"),
    ("sigmoid", np.zeros((4, 9)), r"^Y must have 10 output columns"),
    ("sigmoid", np.zeros(4), r"^Y is 1-D but the net has 10 outputs"),
    ("softmax", np.array([["a"] * 10] * 4), r"^Y must hold numbers"),
], ids=["length-mismatch", "label-10-of-10", "label-minus-1", "fractional-labels", "not-one-hot",
        "nan-labels", "nan-targets", "bce-target-2", "wrong-columns", "1-D-for-10-outputs", "strings"])
def test_bad_Y_is_refused_naming_Y(output, Y, match):
    net = MLP([4, 5, 10], activation="tanh", output=output, backend="numpy")
    X = np.zeros((4, 4))
    _, cache = net.forward(X)
    exc = TypeError if Y.dtype.kind == "U" else ValueError
    with pytest.raises(exc, match=match):
        net.backward(cache, Y)
    with pytest.raises(exc, match=match):
        net.cost(X, Y)


def test_columns_layout_errors_describe_the_column_shapes():
    net = MLP([4, 5, 3], backend="numpy", layout="columns")
    with pytest.raises(ValueError, match=r"^X must have 4 features \(4, m\)"):
        net.forward(np.zeros((7, 4)))
    X = np.zeros((4, 7))
    _, cache = net.forward(X)
    with pytest.raises(ValueError, match=r"^Y has 6 examples but X has 7"):
        net.backward(cache, np.zeros((3, 6)))  # Y (n_L, m): the examples are its columns


def test_backward_refuses_something_that_is_not_a_cache():
    net = MLP([4, 5, 3], backend="numpy")
    with pytest.raises(TypeError, match=r"^cache must be the dict returned by forward\(\)"):
        net.backward([1, 2], np.array([0]))
    with pytest.raises(ValueError, match=r"^cache must be the dict .*missing \['Z2', 'A2'\]"):
        net.backward({"A0": np.zeros((1, 4)), "Z1": np.zeros((1, 5)), "A1": np.zeros((1, 5))}, np.array([0]))


# =========================================================================== array API namespace
@pytest.mark.parametrize("layout", LAYOUTS)
def test_array_api_strict_net_passes_gradcheck(array_api_strict, layout):
    """array_api_strict refuses anything outside the standard: no NumPy-only call in the math."""
    net = MLP([4, 5, 3, 3], activation="relu", output="softmax", backend=array_api_strict,
              dtype="float64", layout=layout)
    report, _, _ = kink_free_gradcheck(net, 7)
    assert report.passed, str(report)


STEP_NETS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("tanh", "mse")]


@pytest.mark.parametrize("output,loss", STEP_NETS, ids=[pair_id(p) for p in STEP_NETS])
def test_array_api_strict_training_step_lowers_the_cost(array_api_strict, output, loss):
    xs = array_api_strict
    net = MLP([4, 5, 3], activation="tanh", output=output, loss=loss, backend=xs, dtype="float64")
    X, Y = make_data(net, 16)
    X, Y = xs.asarray(X), xs.asarray(Y)
    Array = type(X)

    J0 = net.cost(X, Y)
    out, cache = net.forward(X)
    grads = net.backward(cache, Y)
    assert isinstance(out, Array) and isinstance(net.predict(X), Array)
    assert all(isinstance(v, Array) for v in (*cache.values(), *grads.values(), *net.params.values()))
    lr = 0.1
    for name in list(net.params):
        net.params[name] = net.params[name] - lr * grads["d" + name]
    J1 = net.cost(X, Y)
    assert J1 < J0, (J0, J1)


@pytest.mark.parametrize("argument", ["X", "Y"])
def test_array_on_another_device_is_refused_naming_both_devices(array_api_strict, argument):
    xs = array_api_strict
    net = MLP([4, 5, 3], activation="tanh", backend=xs, dtype="float64")
    X, Y = make_data(net, 6)
    other = xs.Device("device1")
    assert net.device != other
    pattern = (rf"^{argument} is on device {re.escape(str(other))} "
               rf"but the net's parameters are on device {re.escape(str(net.device))}")
    if argument == "X":
        with pytest.raises(ValueError, match=pattern):
            net.forward(xs.asarray(X, device=other))
    else:
        _, cache = net.forward(X)
        with pytest.raises(ValueError, match=pattern):
            net.backward(cache, xs.asarray(Y, device=other))


# =========================================================================== architecture
MATH_MODULES = ["activations.py", "losses.py", "network.py", "optim.py"]


def imported_modules(path):
    """Top-level names of every module imported by the file (import, from-import, import_module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names.add(node.args[0].value.split(".")[0])
    return names


@pytest.mark.parametrize("module", MATH_MODULES)
def test_math_modules_never_import_numpy_or_cupy(module):
    path = XPROP_DIR / module
    if not path.exists():
        assert module == "optim.py", f"xprop/{module} is missing"
        return  # optim.py is optional; the other three must exist
    assert not imported_modules(path) & {"numpy", "cupy"}, f"xprop/{module} imports {imported_modules(path)}"


def test_only_the_backend_module_imports_cupy():
    importers = sorted(str(p.relative_to(XPROP_DIR)) for p in XPROP_DIR.rglob("*.py")
                       if "cupy" in imported_modules(p))
    assert importers == ["backend.py"]


@pytest.mark.parametrize("line,found", [
    ("import numpy as np", {"numpy"}),
    ("import cupy.cuda", {"cupy"}),
    ("from numpy import linalg", {"numpy"}),
    ("from cupy.cuda import runtime", {"cupy"}),
    ("import importlib; importlib.import_module('cupy')", {"importlib", "cupy"}),
    ("from . import backend", set()),
], ids=["import-as", "import-submodule", "from-import", "from-submodule", "import_module", "relative"])
def test_architecture_check_sees_every_import_form(tmp_path, line, found):
    """The parser behind the two checks above does see each way of importing (so they can fail)."""
    path = tmp_path / "snippet.py"
    path.write_text(line + "\n")
    assert imported_modules(path) == found


# =========================================================================== registries
def parameter_names(fn):
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_registry_signatures(name):
    act = ACTIVATIONS[name]
    assert parameter_names(act.forward) == ["xp", "Z"]
    assert parameter_names(act.backward) == ["xp", "dA", "Z", "A"]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_registry_signatures(name):
    loss = LOSSES[name]
    assert parameter_names(loss.value) == ["xp", "Z", "A", "Y"]
    assert parameter_names(loss.grad) == ["xp", "Z", "A", "Y"]


# =========================================================================== backend agreement
def test_compare_backends_reports_what_it_could_not_run():
    net = MLP([4, 5, 3], activation="tanh", output="softmax", backend="numpy", dtype="float64")
    X, Y = make_data(net, 6)
    report = compare_backends(net, X, Y)
    assert report.passed, str(report)
    usable, reason = xprop.backend.cupy_status()
    if usable:
        assert set(report.errors) == {"cupy"} and not report.skipped, str(report)
    else:
        assert report.errors == {} and report.skipped == {"cupy": reason} and reason, str(report)
        assert f"cupy: skipped ({reason})" in str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compare_backends_agrees_with_numpy(backend, dtype):
    net = MLP([4, 5, 3, 3], activation="relu", output="softmax", backend=backend, dtype=dtype)
    X, Y = make_data(net, 8)
    report = compare_backends(net, X, Y)
    assert report.tolerance == tolerance("backends", dtype)
    assert report.passed, str(report)
    if backend == "cupy":
        assert set(report.errors) == {"cupy"}
        assert set(report.errors["cupy"]) == {"AL", "cost", "dW1", "db1", "dW2", "db2", "dW3", "db3"}
