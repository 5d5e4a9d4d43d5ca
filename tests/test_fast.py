"""Fast paths against their plain references.

Every override in xprop (the buffered training step, in-place activation
derivatives, whole-buffer optimizer updates, fused CuPy kernels run on NumPy)
must compute what the plain code computes. Bounds come from the tolerance
table's "fast" row; the optimizer paths are required to agree bit for bit,
because they perform the same floating-point operations in the same order.
The training step sums in another order and scales by 1/m before summing, so
its outputs are compared against the magnitude of the terms they sum
(``conftest.assert_fast_step_equals_reference``); the elementwise overrides,
which sum nothing, by their plain relative error.
"""


import numpy as np
import pytest
from conftest import assert_fast_step_equals_reference

import xprop
from xprop import kernels
from xprop.activations import ACTIVATIONS, HIDDEN
from xprop.fast import TrainStep
from xprop.flat import FlatDict
from xprop.optim import SGD, Adam
from xprop.tolerances import tolerance
from xprop.step import ReferenceStep

PAIRS = [("softmax", None), ("sigmoid", None), ("identity", None), ("tanh", "mse"),
         ("sigmoid", "mse"), ("softmax", "mse")]


def data(net, m, rng):
    k, n_out = net.sizes[0], net.sizes[-1]
    X = rng.standard_normal((m, k))
    if net.output == "softmax":
        Y = np.eye(n_out)[rng.integers(0, n_out, m)]
    else:
        Y = rng.random((m, n_out))
    return X.astype(net.dtype_name), Y.astype(net.dtype_name)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("kernels_on", [False, True], ids=["buffers", "fused-kernels"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output, loss", PAIRS, ids=[f"{o}-{l or 'natural'}" for o, l in PAIRS])
@pytest.mark.parametrize("activation", HIDDEN)
def test_train_step_equals_reference(activation, output, loss, dtype, layout, kernels_on):
    rng = np.random.default_rng(7)
    net = xprop.MLP([6, 5, 4, 3], activation=activation, output=output, loss=loss,
                    backend="numpy", dtype=dtype, layout=layout, seed=2)
    X, Y = data(net, 9, rng)
    fast = TrainStep(net)
    fast.use_kernels = kernels_on  # the kernels' bodies run on NumPy arrays here
    reference = ReferenceStep(net)(X, Y)
    for _ in range(2):  # the second call reuses the buffers
        out = fast(X, Y)
    g, g_ref = out[2], reference[2]
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert g[name].shape == g_ref[name].shape and g[name].dtype == net.dtype
    # Each difference against the magnitude of the terms summed (conftest.summed_magnitudes).
    assert_fast_step_equals_reference(net, X, Y, out, reference, context=repr(net))


def test_train_step_buffers_are_reused_and_grads_are_one_buffer():
    net = xprop.MLP([4, 3, 2], backend="numpy", dtype="float64", seed=0)
    X, Y = data(net, 5, np.random.default_rng(0))
    step = TrainStep(net)
    _, _, g1 = step(X, Y)
    _, _, g2 = step(X, Y)
    assert g1 is g2 and isinstance(g1, FlatDict) and g1.flat is not None
    assert all(np.shares_memory(g, g1.flat) for g in g1.values())
    assert list(g1) == ["dW1", "db1", "dW2", "db2"]  # the params' order


@pytest.mark.parametrize("name", [n for n in HIDDEN if n in kernels.BACKWARD])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_backward_kernel_equals_registry(name, dtype):
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((6, 5)).astype(dtype)
    Z[np.abs(Z) < 1e-3] = 0.5  # away from the ReLU kink
    act = ACTIVATIONS[name]
    A = act.forward(np, Z)
    dA = rng.standard_normal((6, 5)).astype(dtype)
    out = dA.copy()
    assert kernels.BACKWARD[name](np, out, A) is None   # in place: dA becomes dZ, g' from A alone
    assert out.dtype == np.dtype(dtype)
    assert rel(out, act.backward(np, dA, Z, A)) <= tolerance("fast", dtype)


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.backward_inplace])
def test_inplace_backward_equals_registry(name):
    rng = np.random.default_rng(2)
    Z = rng.standard_normal((6, 5))
    Z[0, :2] = 0.0, -0.0   # at the kink both rules take g'(0) from the same side
    act = ACTIVATIONS[name]
    A = act.forward(np, Z)
    dA = rng.standard_normal((6, 5))
    expected = act.backward(np, dA, Z, A)
    # The step writes dA over Z's buffer: the fast rule must read nothing but A.
    buf, tmp = Z.copy(), np.empty_like(dA)
    buf[...] = dA
    out = act.backward_inplace(np, buf, A, tmp)
    assert out is buf
    assert rel(out, expected) <= tolerance("fast", "float64")


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.forward_into])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_into_equals_forward(name, dtype):
    Z = np.random.default_rng(3).standard_normal((4, 3)).astype(dtype)
    Z[0, :3] = 0.0, -0.0, np.nan
    act = ACTIVATIONS[name]
    out = np.empty_like(Z)
    assert act.forward_into(np, Z, out, np.zeros(3, dtype)) is out
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, act.forward(np, Z))   # NaN where NaN, bit for bit


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_delta_kernel_writes_into_the_buffer(dtype):
    rng = np.random.default_rng(4)
    A, Y = rng.random((5, 3)).astype(dtype), rng.random((5, 3)).astype(dtype)
    out = np.empty_like(A)
    assert kernels.output_delta(np, A, Y, 0.2, out) is out
    expected = A - Y
    expected *= 0.2                      # the non-kernel step: subtract into dZ, then dZ *= s
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("activation", sorted(kernels.BACKWARD))
@pytest.mark.parametrize("output, loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")])
def test_the_step_hands_its_own_buffers_to_the_kernels(activation, output, loss, monkeypatch):
    """As on CuPy (kernels on): the delta goes into dZ_L, each g' turns the step's dA buffer into dZ."""
    net = xprop.MLP([5, 4, 3, 3], activation=activation, output=output, loss=loss, backend="numpy", seed=1)
    X, Y = data(net, 6, np.random.default_rng(9))
    step = TrainStep(net)
    step.use_kernels = True
    seen = {"delta": [], "backward": []}
    real_delta, real_backward = kernels.output_delta, kernels.BACKWARD[activation]

    def delta(xp, A, Y_, s, out):
        seen["delta"].append(out)
        return real_delta(xp, A, Y_, s, out)

    def backward(xp, dA, A):
        seen["backward"].append(dA)
        assert real_backward(xp, dA, A) is None

    monkeypatch.setattr(kernels, "output_delta", delta)
    monkeypatch.setitem(kernels.BACKWARD, activation, backward)
    for _ in range(2):
        step(X, Y)
    buf = step.buffers(6)
    assert [o is buf.dZ_L for o in seen["delta"]] == [True, True]
    assert len(seen["backward"]) == 2 * (net.L - 1)
    layers = list(range(net.L - 1, 0, -1)) * 2                      # dA_2, dA_1 in each step
    for got, l in zip(seen["backward"], layers):
        assert got is buf.dA[l] and np.shares_memory(got, buf.Z[l]), l   # written over Z_l


OPTIMIZERS = {
    "sgd": lambda: SGD(lr=0.1),
    "sgd-momentum-wd": lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(lr=1e-2),
    "adam-wd": lambda: Adam(lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("kernels_on", [False, True], ids=["ufuncs", "fused-kernels"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_flat_optimizer_equals_per_parameter_reference(make, dtype, kernels_on):
    """One whole-buffer update == the plain per-parameter ``_update``, bit for bit."""
    rng = np.random.default_rng(5)
    net = xprop.MLP([4, 3, 2], backend="numpy", dtype=dtype, seed=0)
    ref = {k: v.copy() for k, v in net.params.items()}
    fast, plain = make(), make()
    ref_state = {k: {s: np.zeros_like(v) for s in plain.state_names} for k, v in ref.items()}
    for _ in range(4):
        step = TrainStep(net)
        grads = {f"d{k}": rng.standard_normal(v.shape).astype(dtype) for k, v in ref.items()}
        flat_grads = step.buffers(3).grads
        for k, g in grads.items():
            flat_grads[k][...] = g
        fast.step(net.params, flat_grads)
        fast.use_kernels = kernels_on   # as on CuPy; only Adam has a fused kernel, SGD keeps its scratch
        plain.t += 1
        for k, p in ref.items():
            plain._update(np, p, grads[f"d{k}"], ref_state[k])
    assert fast._flat is not None, "the whole-buffer path was not taken"
    for k in ref:
        assert net.params[k].dtype == np.dtype(dtype)
        assert np.array_equal(net.params[k], ref[k]), k
        for s in fast.state_names:
            assert np.array_equal(fast.state_dict()["arrays"][f"{k}.{s}"], ref_state[k][s])


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_fused_update_makes_no_scratch_and_runs_no_chunk_loop(make, monkeypatch):
    """As on CuPy (kernels on): one in-place update over the whole buffer, without overwrite_grads too."""
    from xprop import optim, kernels as K  # noqa: PLC0415

    monkeypatch.setattr(optim, "SCRATCH_CHUNK", 5)      # a chunk loop would make 5 calls per step
    calls = []
    for name in ("sgd_update", "adam_update"):
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, real=real, **kw: (calls.append(a[1].shape), real(*a, **kw)))
    rng = np.random.default_rng(8)
    net = xprop.MLP([4, 3, 2], backend="numpy", dtype="float64", seed=0)
    ref = {k: v.copy() for k, v in net.params.items()}
    fast, plain = make(), make()
    ref_state = {k: {s: np.zeros_like(v) for s in plain.state_names} for k, v in ref.items()}
    step = TrainStep(net)
    for t in range(3):
        grads = {f"d{k}": rng.standard_normal(v.shape) for k, v in ref.items()}
        flat_grads = step.buffers(3).grads
        for k, g in grads.items():
            flat_grads[k][...] = g
        if t == 0:
            fast._flat_plan(net.params, flat_grads)
            fast.use_kernels = True                       # what the plan sets on CuPy
        fast.step(net.params, flat_grads)                 # overwrite_grads=False: distributed, direct calls
        plain.t += 1
        for k, p in ref.items():
            plain._update(np, p, grads[f"d{k}"], ref_state[k])
    assert calls == [(23,)] * 3, f"update calls per step (shapes): {calls}"
    assert fast._flat[3] is None, "a scratch buffer was made"
    for k in ref:
        assert np.array_equal(net.params[k], ref[k]), k


def test_params_are_views_of_one_buffer_until_a_key_is_replaced():
    net = xprop.MLP([3, 4, 2], backend="numpy", seed=0)
    flat = net.params.flat
    assert flat.size == net.n_params
    assert all(np.shares_memory(p, flat) for p in net.params.values())
    before = net.params["W1"]
    net.set_params({k: v * 2 for k, v in net.params.items()})  # copies into the views
    assert net.params.flat is flat and net.params["W1"] is before
    net.params["W1"] = np.zeros_like(before)                   # a new array: no longer one buffer
    assert net.params.flat is None


def test_optimizer_falls_back_when_params_are_not_one_buffer():
    net = xprop.MLP([3, 4, 2], backend="numpy", seed=0, dtype="float64")
    net.params["b2"] = net.params["b2"].copy()  # breaks the shared buffer
    opt = SGD(lr=0.5)
    grads = {f"d{k}": np.ones_like(v) for k, v in net.params.items()}
    before = {k: v.copy() for k, v in net.params.items()}
    opt.step(net.params, grads)
    assert opt._flat is None
    for k, v in net.params.items():
        assert np.array_equal(v, before[k] - 0.5)


# ------------------------------------------------------------------ buffers and scale
def buffer_bytes(buf):
    """Bytes of every distinct array a TrainStep's buffers for one batch size hold."""
    seen, total = set(), 0
    for value in vars(buf).values():
        for a in (value if isinstance(value, list) else [value]):
            if isinstance(a, np.ndarray):
                base = a if a.base is None else a.base
                if id(base) not in seen:
                    seen.add(id(base))
                    total += base.nbytes
    return total


@pytest.mark.parametrize("activation", HIDDEN)
def test_the_step_holds_the_forward_cache_and_the_gradients_and_little_else(activation):
    """dA_l is written over Z_l (the hidden rules read A only): no third buffer per layer."""
    sizes, m = [7, 12, 9, 4], 16
    net = xprop.MLP(sizes, activation=activation, backend="numpy", dtype="float32", seed=0)
    X, Y = data(net, m, np.random.default_rng(0))
    step = TrainStep(net)
    step(X, Y)
    buf = step.buffers(m)
    assert buf.dA is buf.Z
    itemsize = 4
    cache = m * 2 * sum(sizes[1:]) * itemsize                   # Z_l and A_l of every layer
    grads = net.n_params * itemsize
    scratch = m * max(sizes[1:-1]) * itemsize if ACTIVATIONS[activation].scratch else 0
    small = (m * sizes[-1] + 3 * m + sizes[-1] + sum(sizes[1:])) * itemsize   # dZ_L, row stats, ones, zeros
    # (identity's A_l is Z_l itself, so it holds less)
    assert buffer_bytes(buf) <= cache + grads + scratch + small


def test_an_activation_without_a_fast_rule_keeps_Z_and_matches_the_reference(monkeypatch):
    """A registry entry with no backward_inplace gets separate dA buffers and its plain rule."""
    from xprop.activations import Activation

    rng = np.random.default_rng(8)
    plain = ACTIVATIONS["tanh"]
    monkeypatch.setitem(ACTIVATIONS, "tanh", Activation(plain.forward, plain.backward))  # no overrides at all
    net = xprop.MLP([5, 6, 4, 3], activation="tanh", backend="numpy", dtype="float64", seed=1)
    assert net.layers.hidden.backward_inplace is None
    X, Y = data(net, 7, rng)
    step = TrainStep(net)
    out = step(X, Y)
    assert step.buffers(7).dA is not step.buffers(7).Z
    assert_fast_step_equals_reference(net, X, Y, out, ReferenceStep(net)(X, Y))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_scaled_step_returns_scaled_gradients_and_the_same_cost(dtype):
    """step(X, Y, scale=s): s rides on dZ_L with 1/m; J and A_L are untouched."""
    rng = np.random.default_rng(9)
    net = xprop.MLP([6, 5, 4], backend="numpy", dtype=dtype, seed=3)
    X, Y = data(net, 11, rng)
    step = TrainStep(net)
    J, A, _ = step(X, Y)
    J, A = np.array(J), A.copy()
    s = 0.37
    J_s, A_s, g_s = step(X, Y, s)
    assert J_s == J and np.array_equal(A_s, A)
    unscaled = {k: np.asarray(v, np.float64) / s for k, v in g_s.items()}
    assert_fast_step_equals_reference(net, X, Y, (J_s, A_s, unscaled), ReferenceStep(net)(X, Y),
                                      context=f"scale={s}")


# ------------------------------------------------------------------ on the GPU
# The same comparisons with CuPy arrays: the fused kernels compiled and run on the
# device (with NumPy arrays the cases above run their Python bodies). Skipped, with
# the reason, where CuPy cannot use a device.
@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(kernels.BACKWARD))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_backward_kernels_on_the_gpu_equal_the_registry(name, dtype):
    cp = xprop.get_xp("cupy")
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((64, 33)).astype(dtype)
    Z[np.abs(Z) < 1e-3] = 0.5
    act = ACTIVATIONS[name]
    A, dA = act.forward(np, Z), rng.standard_normal(Z.shape).astype(dtype)
    out = cp.asarray(dA)
    kernels.BACKWARD[name](cp, out, cp.asarray(A))          # in place
    assert isinstance(out, cp.ndarray) and out.dtype == np.dtype(dtype)
    assert rel(xprop.to_numpy(out), act.backward(np, dA, Z, A)) <= tolerance("fast", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_delta_and_adam_kernels_on_the_gpu_equal_the_plain_code(dtype):
    cp = xprop.get_xp("cupy")
    rng = np.random.default_rng(4)
    A, Y = rng.random((40, 10)).astype(dtype), rng.random((40, 10)).astype(dtype)
    delta = cp.empty(A.shape, dtype=dtype)
    assert kernels.output_delta(cp, cp.asarray(A), cp.asarray(Y), 0.25, delta) is delta
    assert rel(xprop.to_numpy(delta), (A - Y) * 0.25) <= tolerance("fast", dtype)
    p, g = rng.standard_normal(500).astype(dtype), rng.standard_normal(500).astype(dtype)
    m, v = rng.standard_normal(500).astype(dtype), rng.random(500).astype(dtype)
    plain = Adam(lr=1e-2)
    plain.t = 3
    state = {"m": m.copy(), "v": v.copy()}
    expected = p.copy()
    plain._update(np, expected, g, state)
    new_p, new_m, new_v = cp.asarray(p), cp.asarray(m), cp.asarray(v)
    kernels.adam_update(cp, new_p, cp.asarray(g), new_m, new_v, lr=plain.lr, betas=plain.betas,
                        eps=plain.eps, weight_decay=0.0, t=3)     # in place
    for got, want in ((new_p, expected), (new_m, state["m"]), (new_v, state["v"])):
        assert got.dtype == np.dtype(dtype)
        assert rel(xprop.to_numpy(got), want) <= tolerance("fast", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["sgd", "sgd-momentum-wd", "adam-wd"])
def test_a_cupy_step_in_steady_state_allocates_only_the_cost_scalars(which):
    """CuPy's memory hooks see every allocation from the pool: after warm-up, a step and its
    update allocate nothing but the cost's 0-d values (CuPy's vdot has no out=)."""
    cp = xprop.get_xp("cupy")
    net = xprop.MLP([64, 32, 16, 10], activation="relu", backend="cupy", dtype="float32", seed=0)
    X, Y = data(net, 128, np.random.default_rng(3))
    X, Y = cp.asarray(X), cp.asarray(Y)
    step, opt = TrainStep(net), OPTIMIZERS[which]()
    scale = opt.grad_scale()

    def one():
        _, _, grads = step(X, Y) if scale is None else step(X, Y, scale)
        opt.step(net.params, grads, overwrite_grads=True, scaled=scale is not None)

    for _ in range(3):                 # buffers, optimizer state, compiled kernels
        one()

    class Allocations(cp.cuda.MemoryHook):
        name = "xprop-allocations"

        def __init__(self):
            self.sizes = []

        def malloc_preprocess(self, **kwargs):
            self.sizes.append(kwargs["size"])

    with Allocations() as seen:
        one()
        one()
    cp.cuda.get_current_stream().synchronize()
    assert all(size <= 8 for size in seen.sizes), f"{which}: allocations per 2 steps (bytes): {seen.sizes}"


@pytest.mark.gpu
@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_training_step_on_the_gpu_equals_the_reference(activation, dtype):
    """TrainStep with the fused kernels on CuPy vs the plain step on the same CuPy net."""
    rng = np.random.default_rng(7)
    net = xprop.MLP([6, 5, 4, 3], activation=activation, backend="cupy", dtype=dtype, seed=2)
    X, Y = data(net, 9, rng)
    X, Y = net.xp.asarray(X), net.xp.asarray(Y)
    step = TrainStep(net)
    assert step.use_kernels
    for _ in range(2):
        out = step(X, Y)
    assert_fast_step_equals_reference(net, X, Y, out, ReferenceStep(net)(X, Y), context=repr(net))


@pytest.mark.parametrize("make", [OPTIMIZERS["adam"], OPTIMIZERS["adam-wd"], OPTIMIZERS["sgd-nesterov"]],
                         ids=["adam", "adam-wd", "sgd-nesterov"])
def test_a_chunked_whole_buffer_update_gives_the_same_bits(make, monkeypatch):
    """Past SCRATCH_CHUNK numbers the update runs chunk by chunk with a bounded scratch."""
    from xprop import optim

    monkeypatch.setattr(optim, "SCRATCH_CHUNK", 7)   # the 4-3-2 net has 23 parameters: 4 chunks
    rng = np.random.default_rng(6)
    net = xprop.MLP([4, 3, 2], backend="numpy", dtype="float32", seed=0)
    ref = {k: v.copy() for k, v in net.params.items()}
    fast, plain = make(), make()
    ref_state = {k: {s: np.zeros_like(v) for s in plain.state_names} for k, v in ref.items()}
    step = TrainStep(net)
    for _ in range(3):
        grads = {f"d{k}": rng.standard_normal(v.shape).astype("float32") for k, v in ref.items()}
        flat_grads = step.buffers(3).grads
        for k, g in grads.items():
            flat_grads[k][...] = g
        fast.step(net.params, flat_grads)
        plain.t += 1
        for k, p in ref.items():
            plain._update(np, p, grads[f"d{k}"], ref_state[k])
    assert fast._flat[3].shape == (7,), "the scratch is not bounded by SCRATCH_CHUNK"
    for k in ref:
        assert np.array_equal(net.params[k], ref[k]), k
