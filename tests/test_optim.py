"""Tests for xprop.optim: SGD and Adam follow PyTorch's update rules exactly.

Every update is checked against numbers worked out by hand in the comments
(gradients are given, not computed, so each step is plain arithmetic). The
comparisons are in float64, where the hand arithmetic and the optimizer's
differ only by rounding, a few units in the last place.
"""

import math
import re

import numpy as np
import pytest

import xprop
from xprop.backend import cupy_status, get_xp, to_numpy
from xprop.optim import SGD, Adam, make_optimizer
from xprop.tolerances import tolerance

# Hand arithmetic vs the optimizer in float64: only rounding differs, as between
# two backends computing the same float64 expression.
RTOL = tolerance("backends", "float64")  # 1e-12

# NumPy and CuPy run the optimizers' fast updates (scratch buffers, on CuPy fused
# kernels); any other array-API namespace runs the plain reference update, which
# array-api-strict exercises here. Every hand-worked example runs on all three.
NAMESPACES = ["numpy", "array_api_strict", pytest.param("cupy", marks=pytest.mark.gpu)]


def use_namespace(name):
    """The array namespace ``name``, or a visible skip saying why it is not usable."""
    if name == "array_api_strict":
        return pytest.importorskip("array_api_strict", reason="array-api-strict (a test extra) is not installed")
    if name not in xprop.backends():
        pytest.skip(f"backend {name!r} is not usable here: {cupy_status()[1]}")
    return get_xp(name)


def raises(exc, *parts):
    """pytest.raises matching every literal part of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in parts))


def run(xp, opt, p0, grads):
    """Apply ``opt`` to a 1x1 float64 parameter W = [[p0]] in namespace ``xp``,
    one step per gradient in ``grads``; each update is one line of arithmetic.

    Returns the value of W after every step.
    """
    params = {"W": xp.asarray([[p0]], dtype=xp.float64)}
    out = []
    for g in grads:
        opt.step(params, {"dW": xp.asarray([[g]], dtype=xp.float64)})
        out.append(float(params["W"][0, 0]))
    return out


def assert_steps(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=0,
                               err_msg="parameter after each step vs the hand-worked values")


# --------------------------------------------------------------------------- SGD


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_sgd_plain_step(namespace):
    # P = P − lr · g, two independent entries:
    #   W = [1.0, -2.0], g = [0.5, -4.0], lr = 0.1
    #   W − 0.1 · g = [1.0 − 0.05, -2.0 + 0.4] = [0.95, -1.6]
    xp = use_namespace(namespace)
    params = {"W": xp.asarray([1.0, -2.0], dtype=xp.float64)}
    SGD(lr=0.1).step(params, {"dW": xp.asarray([0.5, -4.0], dtype=xp.float64)})
    np.testing.assert_allclose(to_numpy(params["W"]), [0.95, -1.6], rtol=RTOL, atol=0)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_sgd_momentum_two_steps(namespace):
    xp = use_namespace(namespace)
    # torch.optim.SGD, dampening 0: v₁ = g₁ (the buffer starts as the gradient),
    # then v_t = μ v_{t-1} + g_t, and P = P − lr · v.
    #   lr = 0.1, μ = 0.9, P₀ = 1.0, g₁ = 0.5, g₂ = -0.25
    #   step 1: v₁ = 0.5                         P₁ = 1.0 − 0.1 · 0.5 = 0.95
    #   step 2: v₂ = 0.9 · 0.5 − 0.25 = 0.2      P₂ = 0.95 − 0.1 · 0.2 = 0.93
    opt = SGD(lr=0.1, momentum=0.9)
    assert_steps(run(xp, opt, 1.0, [0.5, -0.25]), [0.95, 0.93])
    np.testing.assert_allclose(to_numpy(opt.state["W"]["v"]), [[0.2]], rtol=RTOL, atol=0)
    assert opt.t == 2


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_sgd_nesterov_two_steps(namespace):
    xp = use_namespace(namespace)
    # Nesterov (torch): v as for momentum, but the step uses g + μ v.
    #   lr = 0.1, μ = 0.9, P₀ = 1.0, g₁ = 0.5, g₂ = -0.25
    #   step 1: v₁ = 0.5;  g + μ v = 0.5 + 0.45 = 0.95;    P₁ = 1.0 − 0.095 = 0.905
    #   step 2: v₂ = 0.45 − 0.25 = 0.2;  g + μ v = -0.25 + 0.18 = -0.07
    #           P₂ = 0.905 + 0.007 = 0.912
    # (plain momentum would give 0.95, 0.93: the test tells the two apart)
    assert_steps(run(xp, SGD(lr=0.1, momentum=0.9, nesterov=True), 1.0, [0.5, -0.25]), [0.905, 0.912])


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_sgd_weight_decay_two_steps(namespace):
    xp = use_namespace(namespace)
    # L2 penalty through the gradient: g' = g + wd · P, then P = P − lr · g'.
    #   lr = 0.1, wd = 0.01, P₀ = 2.0, g₁ = g₂ = 0.5
    #   step 1: g' = 0.5 + 0.01 · 2.0 = 0.52          P₁ = 2.0 − 0.052 = 1.948
    #   step 2: g' = 0.5 + 0.01 · 1.948 = 0.51948     P₂ = 1.948 − 0.051948 = 1.896052
    assert_steps(run(xp, SGD(lr=0.1, weight_decay=0.01), 2.0, [0.5, 0.5]), [1.948, 1.896052])


# -------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_adam_first_two_steps_with_bias_correction(namespace):
    xp = use_namespace(namespace)
    # torch.optim.Adam (amsgrad off):
    #   m = β1 m + (1 − β1) g
    #   v = β2 v + (1 − β2) g²
    #   P = P − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
    # lr = 0.1, β = (0.9, 0.999), eps = 1e-8, P₀ = 1.0, g₁ = 0.5, g₂ = -0.25
    #
    # step 1: m₁ = 0.1 · 0.5 = 0.05            v₁ = 0.001 · 0.25 = 0.00025
    #         1 − β1 = 0.1, 1 − β2 = 0.001
    #         step size = 0.1 / 0.1 = 1.0
    #         denom = √0.00025 / √0.001 + 1e-8 = 0.5 + 1e-8
    #         P₁ = 1.0 − 1.0 · 0.05 / (0.5 + 1e-8) = 0.900000002
    #         (the first step moves by lr · sign(g): the bias correction at work)
    # step 2: m₂ = 0.9 · 0.05 + 0.1 · (-0.25) = 0.045 − 0.025 = 0.02
    #         v₂ = 0.999 · 0.00025 + 0.001 · 0.0625 = 0.00024975 + 0.0000625 = 0.00031225
    #         1 − β1² = 1 − 0.81 = 0.19,  1 − β2² = 1 − 0.998001 = 0.001999
    #         step size = 0.1 / 0.19 = 0.526315789…
    #         denom = √0.00031225 / √0.001999 + 1e-8 = 0.0176705970… / 0.0447101778… + 1e-8
    #               = 0.395225390…
    #         P₂ = 0.900000002 − 0.526315789… · 0.02 / 0.395225390… = 0.900000002 − 0.0266337033…
    #            = 0.8733662987…
    # The "efficient" form lr·√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + eps) scales eps differently
    # and gives P₁ = 0.90000006325, 7e-8 relative away: far outside RTOL.
    p1 = 1.0 - (0.1 / 0.1) * 0.05 / (math.sqrt(0.00025) / math.sqrt(0.001) + 1e-8)
    p2 = p1 - (0.1 / 0.19) * 0.02 / (math.sqrt(0.00031225) / math.sqrt(0.001999) + 1e-8)
    assert p1 == pytest.approx(0.900000002, rel=RTOL) and p2 == pytest.approx(0.8733662987078, rel=RTOL)

    opt = Adam(lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    assert_steps(run(xp, opt, 1.0, [0.5, -0.25]), [p1, p2])
    np.testing.assert_allclose(to_numpy(opt.state["W"]["m"]), [[0.02]], rtol=RTOL, atol=0)
    np.testing.assert_allclose(to_numpy(opt.state["W"]["v"]), [[0.00031225]], rtol=RTOL, atol=0)
    assert opt.t == 2


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_adam_weight_decay_two_steps(namespace):
    xp = use_namespace(namespace)
    # torch Adam's weight_decay is an L2 term added to the gradient (not AdamW's
    # decoupled decay): g' = g + wd · P, then the Adam update with g'.
    # lr = 0.1, β = (0.9, 0.999), eps = 1e-8, wd = 0.1, P₀ = 1.0, g₁ = 0.5, g₂ = -0.25
    #
    # step 1: g' = 0.5 + 0.1 · 1.0 = 0.6
    #         m₁ = 0.06, v₁ = 0.001 · 0.36 = 0.00036
    #         P₁ = 1.0 − 1.0 · 0.06 / (√0.00036 / √0.001 + 1e-8) = 1.0 − 0.06 / (0.6 + 1e-8)
    #            = 0.9000000016666…
    # step 2: g' = -0.25 + 0.1 · P₁ = -0.1599999998333…
    #         m₂ = 0.9 · 0.06 + 0.1 · g' = 0.054 − 0.016 = 0.0380000000166…
    #         v₂ = 0.999 · 0.00036 + 0.001 · g'² = 0.00035964 + 0.0000256 = 0.00038523999995…
    #         denom = √v₂ / √0.001999 + 1e-8 = 0.438994723…
    #         P₂ = P₁ − (0.1 / 0.19) · m₂ / denom = 0.9000000017 − 0.0455586342 = 0.8544413675
    # Without weight decay P₂ would be 0.8733662987 (test above); AdamW's
    # decoupled decay would give P₁ = 1.0 − 0.1·0.1·1.0 − 0.1 ≈ 0.89.
    p1 = 1.0 - 0.06 / (math.sqrt(0.00036) / math.sqrt(0.001) + 1e-8)
    g2 = -0.25 + 0.1 * p1
    m2 = 0.9 * 0.06 + 0.1 * g2
    v2 = 0.999 * 0.00036 + 0.001 * g2 * g2
    p2 = p1 - (0.1 / 0.19) * m2 / (math.sqrt(v2) / math.sqrt(0.001999) + 1e-8)
    assert p2 == pytest.approx(0.8544413674617, rel=RTOL)

    assert_steps(run(xp, Adam(lr=0.1, weight_decay=0.1), 1.0, [0.5, -0.25]), [p1, p2])


# ------------------------------------------------------------------ contracts


OPTIMIZER_FACTORIES = {
    "sgd": lambda: SGD(lr=0.1),
    "sgd-momentum": lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(lr=0.01),
    "adam-wd": lambda: Adam(lr=0.01, weight_decay=0.1),
}


def random_params_and_grads(xp, dtype, seed=0):
    """Two layers' worth of parameters and gradients (host RNG, moved to ``xp``)."""
    rng = np.random.default_rng(seed)
    shapes = {"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}
    params = {k: xp.asarray(rng.standard_normal(s).astype(dtype)) for k, s in shapes.items()}
    grads = [{f"d{k}": xp.asarray(rng.standard_normal(s).astype(dtype)) for k, s in shapes.items()}
             for _ in range(3)]
    return params, grads


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZER_FACTORIES))
def test_step_keeps_dtype_backend_and_updates_in_place(namespace, dtype, kind):
    xp = use_namespace(namespace)
    params, grads = random_params_and_grads(xp, dtype)
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    objects = {k: id(v) for k, v in params.items()}
    views = {k: v[...] for k, v in params.items()}  # views see in-place updates
    opt = OPTIMIZER_FACTORIES[kind]()
    for g in grads:
        opt.step(params, g)
    for name, p in params.items():
        assert id(p) == objects[name], f"{name} was replaced, not updated in place"
        assert p.dtype == getattr(xp, dtype), f"{name} became {p.dtype}, expected {dtype}"
        assert get_xp(p) is xp, f"{name} left namespace {namespace}"
        assert not np.array_equal(to_numpy(p), before[name]), f"{name} did not change"
        np.testing.assert_array_equal(to_numpy(views[name]), to_numpy(p),
                                      err_msg=f"a view of {name} does not see the update")
        for buf_name, buf in opt.state.get(name, {}).items():
            assert buf.dtype == p.dtype, f"state {name}.{buf_name} is {buf.dtype}, param is {p.dtype}"
            assert get_xp(buf) is xp, f"state {name}.{buf_name} is not in namespace {namespace}"
            assert buf.shape == p.shape
    expected_state = {"sgd": set(), "sgd-momentum": {"v"}, "sgd-nesterov": {"v"},
                      "adam": {"m", "v"}, "adam-wd": {"m", "v"}}[kind]
    assert all(set(st) == expected_state for st in opt.state.values())
    assert opt.t == len(grads)


@pytest.mark.parametrize("kind", sorted(OPTIMIZER_FACTORIES))
def test_state_dict_round_trip_gives_identical_next_steps(kind):
    params_a, grads = random_params_and_grads(np, "float64")
    opt_a = OPTIMIZER_FACTORIES[kind]()
    opt_a.step(params_a, grads[0])
    opt_a.step(params_a, grads[1])

    # Restore into a fresh optimizer and a copy of the parameters, then take the
    # same steps with both, interleaved: the two must not share any buffer.
    params_b = {k: v.copy() for k, v in params_a.items()}
    opt_b = OPTIMIZER_FACTORIES[kind]()
    opt_b.load_state_dict(opt_a.state_dict(), params_b)
    assert opt_b.t == opt_a.t == 2
    for g in (grads[2], grads[0], grads[1]):
        opt_a.step(params_a, g)
        opt_b.step(params_b, g)
    for name in params_a:
        assert np.array_equal(params_a[name], params_b[name]), (
            f"{name}: restored optimizer diverged from the original "
            f"(max diff {np.max(np.abs(params_a[name] - params_b[name]))})"
        )


def test_state_dict_survives_a_trip_through_host_arrays():
    # As a checkpoint stores it: host copies, float64 ones for a float32 net.
    params, grads = random_params_and_grads(np, "float32")
    opt = Adam(lr=0.01)
    opt.step(params, grads[0])
    state = opt.state_dict()
    host = {"t": int(state["t"]), "arrays": {k: np.array(v, dtype=np.float64) for k, v in state["arrays"].items()}}
    restored = Adam(lr=0.01)
    restored.load_state_dict(host, params)
    for name, st in restored.state.items():
        for buf_name, buf in st.items():
            assert buf.dtype == np.float32
            assert np.array_equal(buf, opt.state[name][buf_name])


def test_load_state_dict_refuses_mismatched_state():
    params, grads = random_params_and_grads(np, "float64")
    opt = Adam()
    opt.step(params, grads[0])
    state = opt.state_dict()
    with raises(ValueError, "W1.m", "(4, 3)", "(3, 4)"):
        Adam().load_state_dict({"t": 1, "arrays": {**state["arrays"], "W1.m": np.zeros((4, 3))}}, params)
    with raises(ValueError, "'W9'"):
        Adam().load_state_dict({"t": 1, "arrays": {"W9.m": np.zeros(2)}}, params)


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: SGD(lr=0), "lr"),
        (lambda: SGD(lr=-1), "lr"),
        (lambda: SGD(lr=float("nan")), "lr"),
        (lambda: Adam(lr=0), "lr"),
        (lambda: SGD(lr=0.1, momentum=1.5), "momentum"),
        (lambda: SGD(lr=0.1, momentum=-0.1), "momentum"),
        (lambda: SGD(lr=0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: Adam(betas=(1.0, 0.9)), "betas[0]"),
        (lambda: Adam(betas=(0.9, 1.0)), "betas[1]"),
        (lambda: Adam(betas=0.9), "betas"),
        (lambda: Adam(eps=0), "eps"),
        (lambda: SGD(lr=0.1, nesterov=True), "nesterov"),
        (lambda: make_optimizer("rmsprop"), "optimizer"),
    ],
    ids=["lr=0", "lr=-1", "lr=nan", "adam-lr=0", "momentum=1.5", "momentum<0", "weight_decay<0",
         "beta1=1", "beta2=1", "betas-not-pair", "eps=0", "nesterov-no-momentum", "rmsprop"],
)
def test_bad_hyperparameters_name_the_argument(make, argument):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(argument), f"message does not start with {argument!r}: {info.value}"


def test_make_optimizer_names_the_choices_and_the_value():
    with raises(ValueError, "sgd", "adam", "'rmsprop'"):
        make_optimizer("rmsprop")
    assert isinstance(make_optimizer("Adam", lr=0.5), Adam)
    opt = make_optimizer("sgd", lr=0.5, momentum=0.5)
    assert isinstance(opt, SGD) and opt.lr == 0.5 and opt.momentum == 0.5


def test_missing_gradient_is_refused_before_anything_changes():
    params, grads = random_params_and_grads(np, "float64")
    before = {k: v.copy() for k, v in params.items()}
    incomplete = {k: v for k, v in grads[0].items() if k != "db2"}
    opt = SGD(lr=0.1, momentum=0.9)
    with raises(ValueError, "missing", "'db2'"):
        opt.step(params, incomplete)
    assert opt.t == 0 and opt.state == {}
    for name in params:
        assert np.array_equal(params[name], before[name]), f"{name} changed by a refused step"


# --------------------------------------------------- the learning rate folded into the gradients
def test_only_plain_sgd_offers_a_gradient_scale():
    assert SGD(lr=0.3).grad_scale() == 0.3
    assert SGD(lr=0.3, momentum=0.9).grad_scale() is None
    assert SGD(lr=0.3, weight_decay=1e-4).grad_scale() is None
    assert Adam().grad_scale() is None

    class Clipped(SGD):   # a changed rule must not be replaced by the folded form
        def _update_fast(self, xp, p, g, state, tmp):
            super()._update_fast(xp, p, xp.clip(g, -1, 1), state, tmp)

    assert Clipped(lr=0.3).grad_scale() is None


def test_a_scaled_step_subtracts_the_given_gradients():
    """step(..., scaled=True): the gradients already carry lr, P = P − G exactly."""
    net = xprop.MLP([3, 4, 2], backend="numpy", dtype="float64", seed=0)
    before = {k: v.copy() for k, v in net.params.items()}
    rng = np.random.default_rng(0)
    grads = xprop.fast.TrainStep(net).buffers(2).grads   # one flat buffer, like fit's
    for k in before:
        grads[f"d{k}"][...] = rng.standard_normal(before[k].shape)
    expected = {k: before[k] - grads[f"d{k}"] for k in before}
    opt = SGD(lr=0.5)
    opt.step(net.params, grads, scaled=True)
    assert opt.t == 1
    for k in before:
        assert np.array_equal(net.params[k], expected[k]), k


def test_scaled_is_refused_where_the_update_needs_the_gradient_itself():
    net = xprop.MLP([3, 4, 2], backend="numpy", seed=0)
    before = {k: v.copy() for k, v in net.params.items()}
    grads = {f"d{k}": np.ones_like(v) for k, v in net.params.items()}
    with raises(ValueError, "scaled=True", "Adam"):
        Adam().step(net.params, grads, scaled=True)
    assert all(np.array_equal(before[k], v) for k, v in net.params.items())


@pytest.mark.parametrize("make", [
    lambda v: xprop.SGD(lr=v["lr"], momentum=v["beta"], weight_decay=v["wd"]),
    lambda v: xprop.Adam(lr=v["lr"], betas=(v["beta"], v["beta"]), weight_decay=v["wd"]),
])
def test_numpy_scalar_hyperparameters_are_numbers(make):
    """What a grid built with np.arange / np.logspace holds (np.float32, np.int64) is a number:
    taken, stored as the Python float of the same value; a NumPy bool or NaN is still refused."""
    opt = make({"lr": np.float32(0.5), "beta": np.float64(0.25), "wd": np.int64(0)})
    hp = opt.hyperparameters()
    assert type(hp["lr"]) is float and hp["lr"] == 0.5 and hp["weight_decay"] == 0.0
    assert all(type(v) is float for v in (opt.weight_decay,))
    with pytest.raises(ValueError, match="weight_decay must be a number"):
        make({"lr": 0.1, "beta": 0.5, "wd": np.float64("nan")})
    with pytest.raises(ValueError, match="weight_decay must be a number"):
        make({"lr": 0.1, "beta": 0.5, "wd": np.bool_(True)})
