"""Tests of the door to the hardware: namespaces, the CuPy probe, moving nets, GPU cases.

The CuPy probe is exercised without a GPU by replacing its two inputs
(``_import_cupy`` and ``_libcuda_loads``) with fakes. ``cupy_status`` is
cached, so every such test goes through the ``fresh_probe`` fixture, which
clears the cache before and after.

The ``backend`` fixture (conftest) runs the GPU cases on CuPy where it is
usable and shows them as SKIPPED with the reason where it is not. The last
part runs pytest on a small suite in a subprocess to check that machinery
itself: the skips, ``XPROP_REQUIRE_GPU=1`` and the session summary.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import types
import warnings

import numpy as np
import pytest
from conftest import kink_free_gradcheck, make_data, tolerance

import xprop
import xprop.backend as xb
from xprop import MLP, BackendError, get_xp, to_numpy
from xprop.backend import backend_name
from xprop.gradcheck import relative_error


# --------------------------------------------------------------------------- namespaces
def test_backends_start_with_numpy():
    names = xprop.backends()
    assert names[0] == "numpy"
    assert names == (["numpy", "cupy"] if xb.cupy_status()[0] else ["numpy"])


def test_get_xp_of_names_modules_and_arrays():
    assert get_xp("numpy") is np
    assert get_xp(" NumPy ") is np
    assert get_xp(np) is np
    assert get_xp(np.zeros(3)) is np


def test_get_xp_of_an_array_api_namespace_and_its_arrays(array_api_strict):
    assert get_xp(array_api_strict) is array_api_strict
    assert get_xp(array_api_strict.asarray([1.0, 2.0])) is array_api_strict


def test_get_xp_refuses_what_is_not_a_backend():
    with pytest.raises(ValueError, match=r"^backend must be 'auto', 'numpy', 'cupy' .*got 'nonsense'"):
        get_xp("nonsense")
    with pytest.raises(ValueError, match=r"^backend module 'math' is not an array-API namespace"):
        get_xp(types.ModuleType("math"))
    with pytest.raises(TypeError, match=r"^backend must be a name .*got object"):
        get_xp(object())


def test_to_numpy():
    a = np.arange(6.0).reshape(2, 3)
    assert to_numpy(a) is a  # host arrays pass through, no copy


def test_to_numpy_of_an_array_api_array(array_api_strict):
    a = np.arange(6.0).reshape(2, 3)
    b = to_numpy(array_api_strict.asarray(a))
    assert type(b) is np.ndarray
    np.testing.assert_array_equal(b, a)


# --------------------------------------------------------------------------- the CuPy probe
@pytest.fixture
def fresh_probe(monkeypatch):
    """``cupy_status`` with an empty cache, emptied again afterwards."""
    xb.cupy_status.cache_clear()
    yield monkeypatch
    xb.cupy_status.cache_clear()


def fake_cupy(get_device_count):
    """A module shaped like cupy as far as the probe looks: cupy.cuda.runtime.getDeviceCount."""
    return types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count)))


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def raising(exc):
    def f(*args, **kwargs):
        raise exc
    return f


def test_get_xp_cupy_here_raises_with_the_real_reason():
    usable, reason = xb.cupy_status()
    if usable:
        pytest.skip("CuPy is usable on this machine; test_nets_live_on_their_backend[cupy] covers it")
    assert reason
    with pytest.raises(BackendError) as info:
        get_xp("cupy")
    assert str(info.value) == f"backend 'cupy' is not usable here: {reason}"


def test_probe_cupy_not_installed(fresh_probe):
    fresh_probe.setattr(xb, "_import_cupy", raising(ImportError("No module named 'cupy'", name="cupy")))
    usable, reason = xb.cupy_status()
    assert not usable
    assert reason.startswith("CuPy is not installed")
    assert "pip install 'xprop[gpu]'" in reason
    assert xprop.backends() == ["numpy"]
    with pytest.raises(BackendError, match=r"^backend 'cupy' is not usable here: CuPy is not installed"):
        get_xp("cupy")


def test_probe_cupy_broken_install(fresh_probe):
    fresh_probe.setattr(xb, "_import_cupy",
                        raising(ImportError("libnvrtc.so.12: cannot open", name="cupy_backends.cuda.libs")))
    usable, reason = xb.cupy_status()
    assert not usable
    assert reason.startswith("CuPy is installed but fails to import (libnvrtc.so.12: cannot open)")
    assert "uninstall all but one" in reason


@pytest.mark.parametrize("error,libcuda,expected", [
    ("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     True, "the NVIDIA driver is too old for this CuPy wheel's CUDA version"),
    ("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     False, "no NVIDIA driver was found (libcuda cannot be loaded"),
    ("cudaErrorNoDevice: no CUDA-capable device is detected",
     True, "no CUDA device is visible"),
], ids=["driver-too-old", "no-driver", "no-device"])
def test_probe_classifies_cuda_errors(fresh_probe, error, libcuda, expected):
    fresh_probe.setattr(xb, "_import_cupy", lambda: fake_cupy(raising(CUDARuntimeError(error))))
    fresh_probe.setattr(xb, "_libcuda_loads", lambda: libcuda)
    usable, reason = xb.cupy_status()
    assert not usable
    assert reason.startswith(expected), reason
    assert error in reason  # CUDA's own words are kept
    assert xprop.backends() == ["numpy"]


def test_probe_refuses_a_cupy_older_than_the_pin(fresh_probe):
    """CuPy 13 has no cupy.astype (every input check calls it): unusable, saying why."""
    fake = fake_cupy(lambda: 1)
    fake.__version__ = "13.6.0"
    fresh_probe.setattr(xb, "_import_cupy", lambda: fake)
    usable, reason = xb.cupy_status()
    assert not usable
    assert reason.startswith("CuPy 13.6.0 is installed but xprop needs CuPy >= 14.0"), reason
    fake.__version__ = "14.0.0rc1"
    xb.cupy_status.cache_clear()
    assert xb.cupy_status() == (True, "ok: 1 device(s)")


def test_the_cupy_extras_pin_what_the_code_needs():
    """Every CuPy requirement in pyproject.toml: at least CUPY_MIN_VERSION, with the CUDA headers."""
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
    from packaging.requirements import Requirement  # noqa: PLC0415  (pytest depends on packaging)

    project = tomllib.loads((pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    found = []
    for extra, reqs in project["optional-dependencies"].items():
        for text in reqs:
            req = Requirement(text)
            if not req.name.startswith("cupy"):
                continue
            found.append(extra)
            need = ".".join(map(str, xb.CUPY_MIN_VERSION))
            assert not req.specifier.contains("13.6.0") and req.specifier.contains(need + ".0"), (extra, text)
            assert "ctk" in req.extras, f"{extra}: {text} brings no CUDA headers; NVRTC needs them ([ctk])"
    assert {"gpu", "cuda12", "cuda13"} <= set(found)


def test_probe_zero_devices(fresh_probe):
    fresh_probe.setattr(xb, "_import_cupy", lambda: fake_cupy(lambda: 0))
    assert xb.cupy_status() == (False, "CuPy imports but no CUDA device is counted; check nvidia-smi")


def test_probe_usable_device_makes_cupy_the_auto_backend(fresh_probe):
    fake = fake_cupy(lambda: 2)
    fresh_probe.setattr(xb, "_import_cupy", lambda: fake)
    fresh_probe.delenv("XPROP_BACKEND", raising=False)
    assert xb.cupy_status() == (True, "ok: 2 device(s)")
    assert xprop.backends() == ["numpy", "cupy"]
    assert get_xp("cupy") is fake
    assert get_xp("auto") is fake


# ------------------------------------------------------------- the real CuPy wheel, no device
# These use the installed CuPy (it imports without a GPU) and arrays that point at
# no device memory: enough for everything that does not launch a kernel or copy.
@pytest.fixture(scope="module")
def cupy():
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'xprop[gpu]'); "
                                              "these tests need the wheel, not a device")


def fake_cupy_array(cupy, shape=(3, 2), dtype="float32"):
    """A real ``cupy.ndarray`` on no memory (never read: it would need a device)."""
    memory = cupy.cuda.UnownedMemory(0, 0, None, 0)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def test_cupy_arrays_are_recognised_without_array_namespace(cupy):
    """cupy.ndarray (CuPy 14) has no __array_namespace__: it is recognised by its type."""
    a = fake_cupy_array(cupy)
    assert not hasattr(a, "__array_namespace__")
    assert xb.is_cupy_array(a)
    assert get_xp(a) is cupy
    assert not xb.is_cupy_array(np.zeros(3)) and not xb.is_cupy_array([1.0])


def test_cupyx_sparse_matrices_are_not_cupy_arrays(cupy):
    """A cupyx sparse matrix lives in a module named cupy…, but it is not a dense cupy.ndarray."""
    sparse = pytest.importorskip("cupyx.scipy.sparse")
    for cls in (sparse.csr_matrix, sparse.csc_matrix, sparse.coo_matrix):
        m = cls.__new__(cls)           # an instance of the real type (building one needs a device)
        assert not xb.is_cupy_array(m), cls
        with pytest.raises(TypeError, match=rf"^X must be an array .*got {cls.__name__}"):
            xb.as_backend_array(m, np, name="X")


def test_is_cupy_array_does_not_import_cupy():
    code = ("import sys, numpy, xprop.backend as b; "
            "print(b.is_cupy_array(numpy.zeros(2)), 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_get_xp_of_the_cupy_module_is_the_cupy_backend(cupy):
    """CuPy 14 has no __array_api_version__: the module itself still names the cupy backend."""
    usable, reason = xb.cupy_status()
    if usable:
        assert get_xp(cupy) is cupy
    else:
        with pytest.raises(BackendError) as info:
            get_xp(cupy)
        assert str(info.value) == f"backend 'cupy' is not usable here: {reason}"


def test_strict_device_enters_without_a_warning_and_refuses_a_read_back(cupy):
    """strict_device on CuPy 14: no deprecation warning, and ndarray.get() is refused."""
    a = fake_cupy_array(cupy)
    null = cupy.cuda.Stream.null
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the deprecated cupyx.allow_synchronize warns
        with pytest.raises(xb.StrictDeviceError, match="read back to the host"):
            with xb.strict_device(cupy):
                a.get(stream=null)              # CuPy checks before it touches the device
    # Outside the region CuPy goes on to the device (none here): a CUDA error, not ours.
    with pytest.raises(Exception) as info:
        a.get(stream=null)
    assert not isinstance(info.value, xb.StrictDeviceError)
    assert "DeviceSynchronized" not in type(info.value).__name__, "the region's check outlived it"


@pytest.mark.parametrize("which", ["null", "ptds"])
def test_strict_device_refuses_stream_synchronize_in_its_thread_only(cupy, which):
    stream = getattr(cupy.cuda.Stream, which)
    seen = {}

    def other_thread():
        try:
            stream.synchronize()                # the real call (a CUDA error here: no device)
        except Exception as exc:  # noqa: BLE001  (recorded and checked below)
            seen["other"] = exc

    with pytest.raises(xb.StrictDeviceError, match=r"synchronize\(\) was called inside a training step"):
        with xb.strict_device(cupy):
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
            stream.synchronize()
    assert not isinstance(seen.get("other"), xb.StrictDeviceError), seen
    assert "synchronize" not in vars(stream), "the stream's own synchronize was not put back"


def test_strict_device_is_off_on_numpy_and_when_disabled(cupy):
    with xb.strict_device(np):
        pass
    with xb.strict_device(cupy, enabled=False):
        assert "synchronize" not in vars(cupy.cuda.Stream.null)


def test_memory_limit_is_put_back_where_it_applies():
    with pytest.raises(ValueError, match="gpu_mem_limit applies to the cupy backend"):
        xb.set_memory_limit(np, 1 << 20)


@pytest.mark.gpu
def test_set_memory_limit_returns_the_limit_it_replaces():
    cp = get_xp("cupy")
    pool = cp.get_default_memory_pool()
    before = pool.get_limit()
    try:
        assert xb.set_memory_limit(cp, 1 << 30) == before
        assert xb.set_memory_limit(cp, before) == 1 << 30
    finally:
        pool.set_limit(size=before)


def test_nccl_wheel_matches_cupys_cuda(cupy):
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    assert xb.nccl_wheel() == f"nvidia-nccl-cu{major}"


def test_nccl_wheel_for_a_cuda13_cupy(monkeypatch):
    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: 13000)
    monkeypatch.setattr(xb, "_import_cupy", lambda: types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    assert xb.nccl_wheel() == "nvidia-nccl-cu13"


def test_host_array_goes_to_a_cupy_net_through_the_device_context():
    """cupy.asarray has no device= argument: the copy is made inside the device's context."""
    events = []

    class FakeDevice:
        def __enter__(self):
            events.append("enter device")

        def __exit__(self, *exc):
            events.append("leave device")

    fake = types.ModuleType("cupy")

    def asarray(a):  # the parameters cupy.asarray shares with this call: no device
        events.append("asarray")
        return a

    fake.asarray = asarray
    X = np.zeros((2, 3))
    assert xb.as_backend_array(X, fake, name="X", device=FakeDevice()) is X
    assert events == ["enter device", "asarray", "leave device"]


# --------------------------------------------------------------------------- auto / XPROP_BACKEND
def test_auto_backend_is_cupy_only_where_usable(monkeypatch):
    monkeypatch.delenv("XPROP_BACKEND", raising=False)
    expected = "cupy" if xb.cupy_status()[0] else "numpy"
    assert backend_name(get_xp("auto")) == expected
    assert MLP([3, 2], backend="auto").backend == expected


def test_xprop_backend_numpy_is_honoured(monkeypatch):
    monkeypatch.setenv("XPROP_BACKEND", "numpy")
    assert get_xp("auto") is np
    assert get_xp(None) is np
    assert MLP([3, 2]).backend == "numpy"


def test_xprop_backend_cupy_without_a_gpu_is_a_clear_error(fresh_probe):
    fresh_probe.setattr(xb, "_import_cupy", raising(ImportError("No module named 'cupy'", name="cupy")))
    fresh_probe.setenv("XPROP_BACKEND", "cupy")
    with pytest.raises(BackendError, match=r"^backend 'cupy' is not usable here: CuPy is not installed"):
        MLP([3, 2])


def test_xprop_backend_cupy_here(monkeypatch):
    """The same with the real probe of this machine (skipped where CuPy works)."""
    usable, reason = xb.cupy_status()
    if usable:
        pytest.skip("CuPy is usable on this machine")
    monkeypatch.setenv("XPROP_BACKEND", "cupy")
    with pytest.raises(BackendError) as info:
        MLP([3, 2], backend="auto")
    assert reason in str(info.value)


# --------------------------------------------------------------------------- moving nets
def test_to_numpy_returns_an_equal_new_net_and_leaves_the_original():
    net = MLP([4, 5, 3], activation="tanh", backend="numpy", dtype="float32", seed=3)
    before = {k: (v, v.copy()) for k, v in net.params.items()}
    moved = net.to("numpy")
    assert moved is not net and moved.backend == "numpy" and moved.dtype_name == "float32"
    for k, (obj, values) in before.items():
        assert net.params[k] is obj
        np.testing.assert_array_equal(net.params[k], values)
        np.testing.assert_array_equal(moved.params[k], values)
        assert not np.shares_memory(moved.params[k], net.params[k]), k
    moved.params["W1"][0, 0] += 1  # the copy owns its arrays
    np.testing.assert_array_equal(net.params["W1"], before["W1"][1])


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_to_float64_casts_every_param(layout):
    net = MLP([4, 5, 3], activation="tanh", backend="numpy", dtype="float32", layout=layout)
    wide = net.to(dtype="float64")
    assert wide.dtype_name == "float64" and net.dtype_name == "float32"
    for k, v in net.params.items():
        assert wide.params[k].dtype == np.float64 and v.dtype == np.float32
        np.testing.assert_array_equal(wide.params[k], v.astype(np.float64))
    X, _ = make_data(net, 4)
    out, _ = wide.forward(X)
    assert out.dtype == np.float64


def test_to_array_api_strict_and_back(array_api_strict):
    net = MLP([4, 5, 3], activation="tanh", backend="numpy", dtype="float64")
    strict = net.to(array_api_strict)
    assert strict.xp is array_api_strict
    X, _ = make_data(net, 5)
    # Same weights, and array_api_strict runs NumPy underneath: identical numbers.
    np.testing.assert_array_equal(to_numpy(strict.forward(X)[0]), net.forward(X)[0])
    back = strict.to("numpy")
    for k, v in net.params.items():
        np.testing.assert_array_equal(back.params[k], v)


def test_numpy_array_into_an_array_api_strict_net_is_moved(array_api_strict):
    """Documented in backend.as_backend_array: NumPy arrays are copied into the net's namespace."""
    net = MLP([4, 5, 3], activation="tanh", backend=array_api_strict, dtype="float64")
    X, Y = make_data(net, 5)
    out, cache = net.forward(X)  # NumPy in
    assert get_xp(out) is array_api_strict
    assert get_xp(cache["A0"]) is array_api_strict
    np.testing.assert_array_equal(to_numpy(cache["A0"]), X)
    out_strict, _ = net.forward(array_api_strict.asarray(X))
    np.testing.assert_array_equal(to_numpy(out), to_numpy(out_strict))
    grads = net.backward(cache, Y)  # NumPy labels, moved too
    assert all(get_xp(g) is array_api_strict for g in grads.values())


def test_foreign_namespace_array_is_refused_by_a_numpy_net(array_api_strict):
    net = MLP([4, 5, 3], backend="numpy")
    with pytest.raises(TypeError, match=r"^X is a array_api_strict array on device .* but the net runs on numpy"):
        net.forward(array_api_strict.zeros((2, 4)))


# --------------------------------------------------------------------------- GPU cases
# Each runs on NumPy here and on CuPy where it is usable; the cupy cases show
# as SKIPPED with the reason on a machine without a GPU.
def test_nets_live_on_their_backend(backend):
    net = MLP([4, 5, 3], activation="relu", backend=backend, dtype="float32")
    assert net.backend == backend
    X, Y = make_data(net, 6)
    out, cache = net.forward(X)
    grads = net.backward(cache, Y)
    for name, a in {**net.params, **cache, **grads, "out": out}.items():
        assert backend_name(get_xp(a)) == backend, name
        assert a.dtype == np.float32, name


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_same_seed_same_initial_weights_as_numpy(backend, dtype, layout):
    """Weights are drawn on the host: every backend starts from the same numbers, bit for bit."""
    kw = dict(activation="tanh", dtype=dtype, seed=11, layout=layout)
    on_backend = MLP([4, 5, 3], backend=backend, **kw)
    on_numpy = MLP([4, 5, 3], backend="numpy", **kw)
    for k, v in on_numpy.params.items():
        np.testing.assert_array_equal(to_numpy(on_backend.params[k]), v, err_msg=k)


@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"),
                                         ("identity", "mse")], ids=["softmax", "sigmoid", "identity"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_on_backend(backend, dtype, output, loss):
    net = MLP([4, 5, 3, 3], activation="relu", output=output, loss=loss, backend=backend, dtype=dtype)
    report, _, _ = kink_free_gradcheck(net, 7)
    assert report.backend == backend
    assert report.tolerance == tolerance("gradcheck", dtype)
    assert report.passed, str(report)


def test_to_numpy_of_a_backend_net(backend):
    net = MLP([4, 5, 3], activation="tanh", backend=backend, dtype="float32", seed=5)
    host = net.to("numpy")
    assert host.backend == "numpy"
    for k, v in net.params.items():
        assert isinstance(host.params[k], np.ndarray)
        np.testing.assert_array_equal(host.params[k], to_numpy(v))
    X, _ = make_data(net, 6)
    assert backend_name(get_xp(net.forward(X)[0])) == backend  # the original stays where it was


def test_numpy_input_to_a_backend_net(backend):
    """NumPy arrays given to a CuPy net are copied to the device at the door."""
    net = MLP([4, 5, 3], activation="tanh", backend=backend, dtype="float64")
    X, Y = make_data(net, 6)
    out, cache = net.forward(X)
    host = net.to("numpy")
    h_out, h_cache = host.forward(X)
    assert relative_error_ok(out, h_out, "float64")
    g, h_g = net.backward(cache, Y), host.backward(h_cache, Y)
    for k in h_g:
        assert relative_error_ok(g[k], h_g[k], "float64"), k


def relative_error_ok(a, b, dtype):
    return relative_error(a, b) <= tolerance("backends", dtype)


# --------------------------------------------------------------------------- the GPU-skip machinery
CONFTEST = pathlib.Path(__file__).with_name("conftest.py")
REPO = pathlib.Path(xprop.__file__).resolve().parent.parent

FAKE_PROBE = '''
import os
import xprop.backend

if os.environ["FAKE_CUPY"] == "usable":
    xprop.backend.cupy_status = lambda: (True, "ok: 1 device(s)")
    xprop.backend.gpu_info = lambda: [{"id": 0, "name": "Fake GPU", "total_bytes": 2**30}]
else:
    xprop.backend.cupy_status = lambda: (False, "fake reason: no GPU in this run")
'''

SAMPLE_TESTS = '''
import pytest

def test_cpu():
    pass

@pytest.mark.gpu
def test_marked():
    pass

def test_matrix(backend):
    assert backend in ("numpy", "cupy")
'''


@pytest.fixture
def run_suite(tmp_path):
    """Run pytest on a four-test suite using our conftest, with CuPy's status faked."""
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "fake_probe.py").write_text(FAKE_PROBE)
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -ra\nmarkers =\n    gpu: needs a GPU\n")

    def run(cupy, require_gpu, *args):
        env = {k: v for k, v in os.environ.items()
               if k not in ("XPROP_REQUIRE_GPU", "XPROP_BACKEND", "PYTEST_ADDOPTS")}
        env.update(FAKE_CUPY=cupy, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
        if require_gpu:
            env["XPROP_REQUIRE_GPU"] = "1"
        proc = subprocess.run(
            # third-party plugins off: they only slow the start (-p no:NAME is a no-op if absent)
            [sys.executable, "-m", "pytest", "-p", "fake_probe", "-p", "no:cacheprovider",
             "-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:xdist", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        return proc.returncode, proc.stdout + proc.stderr

    return run


def test_gpu_cases_are_skipped_with_the_reason(run_suite):
    rc, out = run_suite("unusable", False)
    assert rc == 0, out
    assert "xprop backends usable: numpy" in out
    assert "GPU: none; CuPy is not usable: fake reason: no GPU in this run" in out
    assert "SKIPPED [2] conftest.py" in out and "CuPy is not usable: fake reason: no GPU in this run" in out
    assert "2 passed, 2 skipped" in out
    assert "gpu-marked tests: 0 ran (0 passed, 0 failed), 2 skipped" in out


def test_require_gpu_turns_skips_into_failures(run_suite):
    rc, out = run_suite("unusable", True)
    assert rc == 1, out
    assert "XPROP_REQUIRE_GPU=1 but CuPy is not usable: fake reason: no GPU in this run" in out
    assert "2 passed, 2 errors" in out
    assert "XPROP_REQUIRE_GPU=1 but no GPU test ran" in out


def test_require_gpu_session_without_gpu_tests_is_red(run_suite):
    rc, out = run_suite("unusable", True, "test_sample.py::test_cpu")
    assert "1 passed" in out
    assert rc == 1, out
    assert "XPROP_REQUIRE_GPU=1 but no GPU test ran" in out


def test_require_gpu_with_gpu_tests_deselected_on_purpose(run_suite):
    """scripts/gpu-check.sh runs the rest of the suite with -m 'not gpu' under XPROP_REQUIRE_GPU=1."""
    rc, out = run_suite("unusable", True, "-m", "not gpu")
    assert rc == 0, out
    assert "2 passed, 2 deselected" in out
    assert "no GPU test ran" not in out


def test_gpu_cases_run_where_cupy_is_usable(run_suite):
    rc, out = run_suite("usable", True)
    assert rc == 0, out
    assert "xprop backends usable: numpy, cupy" in out
    assert "GPU: device 0: Fake GPU, 1.0 GiB" in out
    assert "4 passed" in out
    assert "gpu-marked tests: 2 ran (2 passed, 0 failed), 0 skipped" in out


# ------------------------------------------------------------- helpers of the fast paths
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_all_finite_finds_one_bad_entry(bad):
    a = np.ones((50, 7), dtype=np.float32)
    assert xprop.backend.all_finite(np, a)
    a[31, 4] = bad
    assert not xprop.backend.all_finite(np, a)


def test_all_finite_when_the_sum_overflows_but_every_entry_is_finite():
    """A finite array whose sum overflows takes the exact path (and warns nothing)."""
    a = np.full((4, 3), np.finfo(np.float32).max, dtype=np.float32)
    assert xprop.backend.all_finite(np, a)
    a[0, 0], a[1, 1] = np.inf, -np.inf        # the sum is inf − inf = NaN
    assert not xprop.backend.all_finite(np, a)


def test_take_rows_writes_the_rows_into_the_buffer():
    a = np.arange(30.0).reshape(10, 3)
    out = np.empty((4, 3))
    idx = np.array([7, 0, 9, 3], dtype=np.int32)
    assert xprop.backend.take_rows(np, a, idx, out) is out
    assert np.array_equal(out, a[idx])
