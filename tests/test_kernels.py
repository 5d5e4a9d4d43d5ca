"""The CuPy kernels as CuPy builds them, checked on a machine without a GPU.

``cupy.fuse`` turns a kernel's body into CUDA source by tracing it: it calls
the body with stand-ins for the arguments and records every operation with
the types it chose. That tracing needs no device, so these tests run it,
through CuPy's own fusion code, on arrays that point at no memory
(:func:`fake_array`), then check what CuPy recorded:

- every parameter and every intermediate is in the net's dtype (no float16,
  no float64 in a float32 net); the only other type allowed is the boolean
  result of a comparison;
- the kernel returns nothing: it writes into the arrays it was given (a
  kernel with outputs would allocate them on every call);
- the recorded operations, evaluated on NumPy with exactly the recorded
  types (:func:`evaluate`), give what the plain reference gives (the
  activation registry's ``backward``, the optimizers' ``_update``).

The kernels are traced through the public wrappers of :mod:`xprop.kernels`
(``adam_update``, ...), called with the real ``cupy`` module, so the scalars
are the ones the training step passes. The tests need the CuPy wheel, not a
device; without CuPy they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import tolerance

from xprop import kernels
from xprop.activations import ACTIVATIONS
from xprop.optim import SGD, Adam

DTYPES = ["float32", "float64"]


@pytest.fixture(scope="module")
def cupy():
    return pytest.importorskip("cupy", reason="CuPy is not installed: the kernel traces need the wheel "
                                              "(pip install 'xprop[gpu]'), not a device")


def fake_array(cupy, shape, dtype):
    """A ``cupy.ndarray`` of ``shape`` and ``dtype`` on no memory: fine for tracing, never launched."""
    memory = cupy.cuda.UnownedMemory(0, 0, None, 0)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


@dataclass
class Trace:
    """What CuPy recorded for one fused kernel call."""

    name: str
    args: tuple          # as the wrapper passed them (fake arrays, typed scalars)
    history: object      # cupy._core.fusion._FusionHistory: param_list, local_list, op_list
    kernel: object       # the cupy ElementwiseKernel CuPy would compile

    @property
    def ops(self):
        return self.history.op_list

    def variables(self):
        return list(self.history.param_list) + list(self.history.local_list)


def trace(fused, args) -> Trace:
    """Trace one call of a :class:`xprop.backend.FusedKernel` exactly as ``cupy.fuse`` does.

    The steps of ``cupy._core.fusion.Fusion.__call__`` (CuPy 14) up to the
    kernel launch: a fresh fusion history, the thread-local "fusing" flag,
    ``get_fusion``. An exception here is a kernel CuPy's classic fusion cannot
    build (CuPy would quietly fall back to its other fusion path): the test fails.
    """
    from cupy._core import _fusion_thread_local, fusion  # noqa: PLC0415  (CuPy's tracer)

    fz = fused.fusion
    history = fusion._FusionHistory()
    local = _fusion_thread_local.thread_local
    local.history, local.is_old_fusing = history, True
    try:
        kernel, _ = history.get_fusion(fz.func, tuple(args), fz.name)
    finally:
        local.history, local.is_old_fusing = None, False
    return Trace(fused.__name__, tuple(args), history, kernel)


@contextlib.contextmanager
def recording():
    """Within: every fused kernel called with CuPy records its arguments instead of launching."""
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        for fused in kernels.FUSED.values():
            def record(*args, fused=fused):
                calls.append((fused, args))
            mp.setattr(fused, "fusion", _Recorder(fused.fusion, record))
        yield calls


class _Recorder:
    """Stands in for a cupy Fusion object: keeps ``func``/``name`` for tracing, records calls."""

    def __init__(self, fusion, record):
        self.func, self.name, self._record = fusion.func, fusion.name, record

    def __call__(self, *args):
        self._record(*args)


def traced_call(cupy, wrapper, host_args, **kwargs):
    """Call ``wrapper(cupy, *device stand-ins, **kwargs)``; return its one kernel's trace and host values.

    ``host_args`` are NumPy arrays; each becomes a fake CuPy array of the same
    shape and dtype. Returns ``(trace, values)`` where ``values`` maps every
    argument the kernel received to its host value (the NumPy array, or the
    scalar itself).
    """
    fakes = [fake_array(cupy, a.shape, a.dtype) for a in host_args]
    host_of = {id(f): a for f, a in zip(fakes, host_args)}
    with recording() as calls:
        wrapper(cupy, *fakes, **kwargs)
    assert len(calls) == 1, f"{wrapper.__name__} launched {len(calls)} kernels; want one"
    fused, args = calls[0]
    for fused_recorded in kernels.FUSED.values():   # the recorders are gone again
        assert not isinstance(fused_recorded.fusion, _Recorder)
    values = [host_of.get(id(a), a) for a in args]
    return trace(fused, args), values


# ----------------------------------------------------------------- evaluation
UFUNCS = {"cupy_add": np.add, "cupy_subtract": np.subtract, "cupy_multiply": np.multiply,
          "cupy_true_divide": np.true_divide, "cupy_sqrt": np.sqrt, "cupy_greater": np.greater,
          "cupy_less": np.less, "cupy_power": np.power, "cupy_copy": np.copy}
COMPARISONS = {"cupy_greater", "cupy_less"}


def evaluate(tr: Trace, values) -> dict:
    """Run the recorded operations on NumPy with the recorded types; the final value of every parameter.

    Each operation casts its operands to the types CuPy chose for it and its
    results to the type of the variable they go into, as the generated CUDA
    does (``static_cast``). Returns ``{argument position: final host value}``.
    """
    env = {}
    params = [p for p in tr.history.param_list][:len(tr.args)]
    for var, value in zip(params, values):
        env[var.index] = np.array(value, dtype=var.dtype, copy=True)
    for var in tr.history.local_list:
        if var.const_value is not None:
            env[var.index] = np.asarray(var.const_value, dtype=var.dtype)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        for op in tr.ops:
            nin = len(op.submodule.in_params)
            ins = [env[v.index].astype(t) for v, t in zip(op.args[:nin], op.dtypes[:nin])]
            out = UFUNCS[op.submodule.name](*ins)
            outs = out if isinstance(out, tuple) else (out,)
            for var, t, result in zip(op.args[nin:], op.dtypes[nin:], outs):
                env[var.index] = np.asarray(result).astype(t).astype(var.dtype)
    return {i: env[var.index] for i, var in enumerate(params)}


def assert_in_net_dtype(tr: Trace, dtype):
    """Every parameter, constant and intermediate in ``dtype``; booleans only out of comparisons."""
    dtype = np.dtype(dtype)
    compared = {v.index for op in tr.ops if op.submodule.name in COMPARISONS
                for v in op.args[len(op.submodule.in_params):]}
    for var in tr.variables():
        ok = var.dtype == dtype or (var.dtype == np.bool_ and var.index in compared)
        assert ok, (f"{tr.name}: v{var.index} is {var.dtype} (constant {var.const_value!r}) in a "
                    f"{dtype} kernel; the generated code:\n{tr.kernel.operation}")
    for op in tr.ops:
        nin = len(op.submodule.in_params)
        want = [dtype] * nin + [np.dtype(np.bool_) if op.submodule.name in COMPARISONS else dtype] * (
            len(op.dtypes) - nin)
        assert list(op.dtypes) == want, (f"{tr.name}: operation {op.index} ({op.submodule.name}) "
                                         f"computes in {list(map(str, op.dtypes))}, want {list(map(str, want))}")


def assert_writes_in_place(tr: Trace, written: set):
    """No output arrays (nothing allocated per call); exactly the ``written`` arguments are written."""
    assert len(tr.kernel.out_params) == 0, f"{tr.name} returns {len(tr.kernel.out_params)} new array(s)"
    mutated = {i for i, var in enumerate(tr.history.param_list[:len(tr.args)]) if var.mutable}
    assert mutated == written, f"{tr.name} writes arguments {sorted(mutated)}, want {sorted(written)}"


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


# ----------------------------------------------------------------- the kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(kernels.BACKWARD))
def test_backward_kernel_as_cupy_builds_it(cupy, name, dtype):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((7, 5)).astype(dtype)
    Z[np.abs(Z) < 1e-3] = 0.5                      # away from the ReLU kink
    act = ACTIVATIONS[name]
    A, dA = act.forward(np, Z), rng.standard_normal(Z.shape).astype(dtype)
    tr, values = traced_call(cupy, kernels.BACKWARD[name], [dA, A])
    assert_in_net_dtype(tr, dtype)
    assert_writes_in_place(tr, {0})                # dA becomes dZ
    dZ = evaluate(tr, values)[0]
    assert rel(dZ, act.backward(np, dA, Z, A)) <= tolerance("fast", dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_delta_kernel_as_cupy_builds_it(cupy, dtype):
    rng = np.random.default_rng(1)
    A, Y = rng.random((6, 4)).astype(dtype), rng.random((6, 4)).astype(dtype)
    out = np.empty_like(A)
    s = 1 / 6
    tr, values = traced_call(cupy, kernels.output_delta, [A, Y], s=s,
                             out=fake_array(cupy, out.shape, out.dtype))
    assert_in_net_dtype(tr, dtype)
    assert_writes_in_place(tr, {3})                # into the step's dZ_L
    expected = (A - Y) * s                         # the reference step: dZ_L = A_L − Y, times 1/m
    values[3] = np.zeros_like(A)
    assert rel(evaluate(tr, values)[3], expected) <= tolerance("fast", dtype)


OPTIMIZERS = {
    "adam": lambda: Adam(lr=1e-2),
    "adam-wd": lambda: Adam(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05),
    "sgd": lambda: SGD(lr=0.1),
    "sgd-wd": lambda: SGD(lr=0.1, weight_decay=0.05),
    "sgd-momentum": lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", sorted(OPTIMIZERS))
def test_optimizer_kernel_as_cupy_builds_it(cupy, which, dtype):
    """Three steps of the fused update against three of the plain ``_update`` (the reference)."""
    rng = np.random.default_rng(2)
    opt, ref = OPTIMIZERS[which](), OPTIMIZERS[which]()
    n = 200
    p = rng.standard_normal(n).astype(dtype)
    state = {s: np.zeros(n, dtype) for s in opt.state_names}
    p_ref, state_ref = p.copy(), {s: b.copy() for s, b in state.items()}
    opt.use_kernels = True
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        opt.t = ref.t = t
        ref._update(np, p_ref, g, state_ref)
        host = [p, g] + [state[s] for s in opt.state_names]
        with recording() as calls:
            fakes = [fake_array(cupy, a.shape, a.dtype) for a in host]
            opt._update_fast(cupy, fakes[0], fakes[1], dict(zip(opt.state_names, fakes[2:])), None)
        assert len(calls) == 1, f"{which}: {len(calls)} kernel launches per update; want one"
        fused, args = calls[0]
        tr = trace(fused, args)
        assert_in_net_dtype(tr, dtype)
        written = {0} | {2 + i for i in range(len(opt.state_names))}    # P and the state, in place
        assert_writes_in_place(tr, written)
        host_of = {id(f): a for f, a in zip(fakes, host)}
        final = evaluate(tr, [host_of.get(id(a), a) for a in args])
        p = final[0]
        for i, s in enumerate(opt.state_names):
            state[s] = final[2 + i]
    bound = tolerance("fast", dtype)
    assert rel(p, p_ref) <= bound, f"{which}: P after 3 steps"
    for s in opt.state_names:
        assert rel(state[s], state_ref[s]) <= bound, f"{which}: {s} after 3 steps"


def test_the_cases_above_reach_every_fused_kernel(cupy):
    """A new kernel in xprop.kernels needs a case above: the cases' calls reach all of FUSED."""
    reached = set()
    with recording() as calls:
        x = fake_array(cupy, (3, 2), "float32")
        for name in kernels.BACKWARD:
            kernels.BACKWARD[name](cupy, x, x)
        kernels.output_delta(cupy, x, x, 0.5, x)
        for make in OPTIMIZERS.values():
            opt = make()
            opt.use_kernels, opt.t = True, 1
            opt._update_fast(cupy, x, x, {s: x for s in opt.state_names}, None)
    reached = {fused.__name__ for fused, _ in calls}
    assert reached == set(kernels.FUSED), f"no case reaches {sorted(set(kernels.FUSED) - reached)}"


def test_adam_coefficients_are_the_nets_not_float16(cupy):
    """The defect this file was written for: 1 − β1 = 0.1, not float16's 0.10009765625."""
    opt = Adam(lr=1e-3)
    opt.use_kernels, opt.t = True, 1
    host = [np.zeros(4, "float32") for _ in range(4)]
    with recording() as calls:
        fakes = [fake_array(cupy, a.shape, a.dtype) for a in host]
        opt._update_fast(cupy, fakes[0], fakes[1], {"m": fakes[2], "v": fakes[3]}, None)
    tr = trace(*calls[0])
    constants = [v for v in tr.variables() if v.dtype == np.float16]
    assert not constants, f"float16 values in the Adam kernel: {constants}"
    coefficients = {float(a) for a in calls[0][1] if np.isscalar(a) or isinstance(a, np.generic)}
    assert float(np.float32(1 - 0.9)) in coefficients and float(np.float32(1 - 0.999)) in coefficients
