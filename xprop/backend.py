"""The one door to the hardware.

This is the only module in xprop that imports CuPy. It decides whether a GPU
is really usable (CuPy imports *and* a CUDA device is counted, CUDA errors
caught), hands out the array namespace ``xp`` that the math runs against, and
moves arrays between host and device. Transfers happen here, at the edges;
the math modules never see NumPy or CuPy by name.

Backends
--------
``"numpy"``
    Always available.
``"cupy"``
    Available when CuPy imports and ``cupy.cuda.runtime.getDeviceCount() > 0``.
``"auto"``
    The environment variable ``XPROP_BACKEND`` if set, else CuPy when usable,
    else NumPy.
any array-API namespace
    A module such as ``array_api_strict`` may be passed wherever a backend name
    is accepted; the math uses only functions of the array API standard.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import types
import warnings

import numpy

__all__ = [
    "BackendError",
    "backends",
    "cupy_status",
    "get_xp",
    "backend_name",
    "to_numpy",
    "device_of",
    "as_backend_array",
    "is_cupy_array",
]


class BackendError(RuntimeError):
    """A backend was asked for that cannot be used on this machine."""


# --------------------------------------------------------------------------
# CuPy probing (the only place cupy is imported)
# --------------------------------------------------------------------------

_FIX_INSTALL = (
    "install the wheel that matches your driver: pip install 'xprop[gpu]' "
    "(CUDA 12, cupy-cuda12x) or 'xprop[cuda13]' (CUDA 13, cupy-cuda13x)"
)

# CuPy 14 is the first release with what xprop calls: the top-level
# ``cupy.astype`` (every input check) and ``cupy.asarray(..., copy=)``.
CUPY_MIN_VERSION = (14, 0)


def _import_cupy():
    import cupy  # noqa: PLC0415  (guarded import: the one place in xprop)

    return cupy


def _libcuda_loads() -> bool:
    """Whether the NVIDIA driver library can be loaded at all."""
    import ctypes  # noqa: PLC0415

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _classify_cuda_error(text: str) -> str:
    if not _libcuda_loads():
        return (
            f"no NVIDIA driver was found (libcuda cannot be loaded; CUDA says {text}); "
            "this machine has no usable GPU, or, in Docker, the container lacks the driver "
            "libraries (run with --gpus all and NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
        )
    if "InsufficientDriver" in text or "insufficient" in text.lower():
        return (
            "the NVIDIA driver is too old for this CuPy wheel's CUDA version "
            f"({text}); update the driver, or install the CuPy wheel for an older CUDA "
            "(e.g. pip install 'xprop[cuda12]' instead of 'xprop[cuda13]')"
        )
    if "NoDevice" in text or "no CUDA-capable device" in text:
        return (
            f"no CUDA device is visible ({text}); check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES (in Docker: run with --gpus all)"
        )
    if "libcuda" in text or "cuda.so" in text or "CUDA driver" in text:
        return (
            f"the CUDA driver library could not be loaded ({text}); install the NVIDIA "
            "driver (in Docker: set NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
        )
    return f"CUDA is not usable ({text})"


def _cupy_too_old(version) -> str | None:
    """Why CuPy ``version`` cannot serve xprop, or None (also for an unreadable version)."""
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except (TypeError, ValueError):
        return None
    if (major, minor) >= CUPY_MIN_VERSION:
        return None
    need = ".".join(map(str, CUPY_MIN_VERSION))
    return (f"CuPy {version} is installed but xprop needs CuPy >= {need} (it calls cupy.astype "
            f"and asarray(copy=)); {_FIX_INSTALL}")


@functools.lru_cache(maxsize=1)
def cupy_status() -> tuple[bool, str]:
    """Whether CuPy can be used here, and why not.

    Returns
    -------
    usable : bool
    reason : str
        ``"ok: N device(s)"`` when usable, otherwise one sentence saying what
        is missing and how to fix it.
    """
    try:
        cupy = _import_cupy()
    except ImportError as exc:
        if getattr(exc, "name", None) == "cupy":
            return False, f"CuPy is not installed; {_FIX_INSTALL}"
        return False, (
            f"CuPy is installed but fails to import ({exc}); if more than one CuPy wheel "
            "is installed (pip list | grep -i cupy), uninstall all but one"
        )
    except Exception as exc:  # a broken install raises anything at import time
        return False, f"CuPy fails to import ({type(exc).__name__}: {exc})"
    too_old = _cupy_too_old(getattr(cupy, "__version__", None))
    if too_old:
        return False, too_old
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError, or a missing libcuda at first use
        return False, _classify_cuda_error(f"{type(exc).__name__}: {exc}")
    if count < 1:
        return False, "CuPy imports but no CUDA device is counted; check nvidia-smi"
    return True, f"ok: {count} device(s)"


def backends() -> list[str]:
    """Names of the backends usable on this machine, ``["numpy"]`` first."""
    names = ["numpy"]
    if cupy_status()[0]:
        names.append("cupy")
    return names


def _cupy_module():
    usable, reason = cupy_status()
    if not usable:
        raise BackendError(f"backend 'cupy' is not usable here: {reason}")
    return _import_cupy()


def _namespace_of_array(a):
    if isinstance(a, numpy.ndarray):
        return numpy
    if is_cupy_array(a):  # cupy.ndarray (CuPy 14) has no __array_namespace__
        return _import_cupy()
    get_ns = getattr(a, "__array_namespace__", None)
    if get_ns is not None:
        ns = get_ns()
        # NumPy/CuPy arrays report their main namespace; keep those modules.
        return ns
    return None


def get_xp(backend="auto"):
    """The array namespace ``xp`` for a backend.

    Parameters
    ----------
    backend : {"auto", "numpy", "cupy"} or module or array
        A name, an array-API namespace (returned as is; the ``cupy`` module
        itself counts as ``"cupy"``), or an array (its namespace is returned).

    Returns
    -------
    module
        ``numpy``, ``cupy`` or the given namespace.

    Raises
    ------
    BackendError
        ``"cupy"`` asked for where it cannot be used; the message says why.
    ValueError
        An unknown backend name.
    """
    if backend is None or (isinstance(backend, str) and backend == "auto"):
        env = os.environ.get("XPROP_BACKEND", "").strip()
        if env and env != "auto":
            return get_xp(env)
        return _cupy_module() if cupy_status()[0] else numpy
    if isinstance(backend, str):
        name = backend.strip().lower()
        if name == "numpy":
            return numpy
        if name == "cupy":
            return _cupy_module()
        raise ValueError(
            f"backend must be 'auto', 'numpy', 'cupy' or an array namespace; got {backend!r}"
        )
    if isinstance(backend, types.ModuleType):
        if backend is numpy or hasattr(backend, "__array_api_version__"):
            return backend
        if backend is sys.modules.get("cupy"):  # CuPy 14 has no __array_api_version__
            return _cupy_module()
        raise ValueError(
            f"backend module {backend.__name__!r} is not an array-API namespace"
        )
    ns = _namespace_of_array(backend)
    if ns is None:
        raise TypeError(
            "backend must be a name ('auto', 'numpy', 'cupy'), an array namespace or "
            f"an array; got {type(backend).__name__}"
        )
    return ns


def backend_name(xp) -> str:
    """Short name of a namespace: ``"numpy"``, ``"cupy"`` or the module name."""
    name = getattr(xp, "__name__", None) or str(xp)
    if name.startswith("cupy"):
        return "cupy"
    return name


def is_cupy_array(a) -> bool:
    """Whether ``a`` is a dense CuPy array (``cupy.ndarray``).

    The one test for a CuPy array in xprop. It never imports CuPy: where
    CuPy has not been imported nothing can be a CuPy array. ``cupyx``
    sparse matrices are not ``cupy.ndarray`` and are not matched (xprop
    takes dense arrays only; they are refused as inputs with their type).
    """
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(a, cupy.ndarray)


def to_numpy(a) -> numpy.ndarray:
    """Host (NumPy) copy of an array from any backend.

    NumPy arrays are returned as they are (no copy); CuPy arrays are copied
    from the device; other array-API arrays go through DLPack.
    """
    if isinstance(a, numpy.ndarray):
        return a
    if is_cupy_array(a):
        return a.get()
    if numpy.isscalar(a):
        return numpy.asarray(a)
    try:
        return numpy.from_dlpack(a)
    except Exception:  # not every array exports DLPack on the host
        return numpy.asarray(a)


def device_of(a):
    """The device an array lives on (the standard ``.device`` attribute)."""
    return getattr(a, "device", "cpu")


def _describe(a) -> str:
    ns = _namespace_of_array(a)
    where = backend_name(ns) if ns is not None else type(a).__module__
    return f"{where} array on device {device_of(a)}"


# Host↔device moves made at the door so far (see strict_device).
TRANSFERS = 0


def as_backend_array(a, xp, *, name: str, dtype=None, device=None):
    """Bring one input array through the door into namespace ``xp``.

    The moves done here are the only implicit transfers in xprop, and they
    happen once per call at the entry of a public function: a NumPy array
    given to a CuPy net is copied to the device; a CuPy array given to a
    NumPy net is copied to the host. An array of the net's own namespace on
    another device is refused (moving it silently would hide a mistake).

    Parameters
    ----------
    a : array_like
    xp : module
        Target namespace.
    name : str
        Argument name used in error messages (``"X"``, ``"Y"``).
    dtype : dtype, optional
        Cast to this dtype after the move.
    device : optional
        The device the result must be on (the net's parameters' device).
    """
    global TRANSFERS
    ns = _namespace_of_array(a)
    if ns is None:
        if isinstance(a, (list, tuple)) or numpy.isscalar(a):
            a = numpy.asarray(a)
            ns = numpy
        else:
            raise TypeError(
                f"{name} must be an array (NumPy, CuPy or the net's array namespace); "
                f"got {type(a).__name__}"
            )
    if ns is not xp:
        if ns is numpy or is_cupy_array(a):
            TRANSFERS += 1
            host = to_numpy(a)
            if xp is numpy:
                a = host
            elif backend_name(xp) == "cupy":  # cupy.asarray takes no device=; use the context
                with device if device is not None else contextlib.nullcontext():
                    a = xp.asarray(host)
            else:
                a = xp.asarray(host, device=device)
        else:
            raise TypeError(
                f"{name} is a {_describe(a)} but the net runs on {backend_name(xp)}; "
                f"pass a NumPy array or an array of the net's namespace"
            )
    elif device is not None and device_of(a) != device:
        raise ValueError(
            f"{name} is on device {device_of(a)} but the net's parameters are on "
            f"device {device}; move it first (e.g. {name}.to_device(...)) or move the "
            "net with net.to(...)"
        )
    if dtype is not None and a.dtype != dtype:
        a = xp.astype(a, dtype)
    return a


def dtype_kind(a) -> str:
    """NumPy-style kind letter of an array's dtype ('f', 'i', 'u', 'b', 'O', ...).

    NumPy and CuPy dtypes are NumPy dtypes; other namespaces are asked with
    the standard ``isdtype``.
    """
    try:
        return numpy.dtype(a.dtype).kind
    except TypeError:
        xp = a.__array_namespace__()
        for kind, letter in (("real floating", "f"), ("signed integer", "i"),
                             ("unsigned integer", "u"), ("bool", "b"),
                             ("complex floating", "c")):
            if xp.isdtype(a.dtype, kind):
                return letter
        return "O"


def gpu_info() -> list[dict]:
    """Name and memory of every CUDA device CuPy can use (empty list if none).

    Returns
    -------
    list of dict
        ``{"id", "name", "total_bytes", "free_bytes", "pool_used_bytes",
        "pool_total_bytes", "pool_limit_bytes"}`` per device (limit 0: none); the pool figures are CuPy's memory
        pool, which keeps freed blocks for reuse (why ``nvidia-smi`` shows
        more memory in use than live arrays need).
    """
    if not cupy_status()[0]:
        return []
    cupy = _import_cupy()
    out = []
    pool = cupy.get_default_memory_pool()
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        with cupy.cuda.Device(i):
            free, total = cupy.cuda.runtime.memGetInfo()
        name = props["name"]
        out.append({"id": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                    "total_bytes": int(total), "free_bytes": int(free),
                    "pool_used_bytes": int(pool.used_bytes()), "pool_total_bytes": int(pool.total_bytes()),
                    "pool_limit_bytes": int(pool.get_limit())})
    return out


def synchronize(xp) -> None:
    """Wait for the device to finish queued work (no-op on the host)."""
    if backend_name(xp) == "cupy":
        _import_cupy().cuda.get_current_stream().synchronize()


def all_finite(xp, a) -> bool:
    """Whether every entry of ``a`` is finite, without an ``a``-sized temporary.

    A NaN or inf anywhere makes the sum NaN or inf, so a finite sum proves
    every entry finite in one reduction. Only a non-finite sum (a bad entry,
    or finite entries whose sum overflows) pays for the exact elementwise
    test. NumPy's overflow and inf − inf warnings of that sum are expected
    here and silenced.
    """
    with numpy.errstate(over="ignore", invalid="ignore"):
        if bool(xp.isfinite(xp.sum(a))):
            return True
    return bool(xp.all(xp.isfinite(a)))


def cast_quietly(xp, a, dtype):
    """``xp.astype(a, dtype)`` without NumPy's "overflow encountered in cast" warning.

    For callers that check the result for inf themselves and say what
    overflowed (:func:`xprop.validation.check_inputs`).
    """
    with numpy.errstate(over="ignore", invalid="ignore"):
        return xp.astype(a, dtype)


def take_rows(xp, a, idx, out):
    """``out[...] = a[idx]`` for in-bounds row indices ``idx`` (NumPy or CuPy).

    NumPy's ``take`` copies into ``out`` through a temporary buffer when it has
    to check the indices (``mode="raise"``); the batch indices are slices of a
    permutation, always in range, so NumPy is told to wrap instead, which
    writes straight into ``out``. CuPy's ``take`` has no ``mode`` and never
    checks.
    """
    if xp is numpy:
        return a.take(idx, axis=0, out=out, mode="wrap")
    return a.take(idx, axis=0, out=out)


class FusedKernel:
    """An elementwise kernel written once against ``xp``, fused into one launch on CuPy.

    ``fn(xp, *arrays_and_scalars)`` is plain array code. Called as
    ``kernel(xp, *args)``: with NumPy (or any namespace but CuPy) it runs
    ``fn`` itself, operation by operation; with CuPy it runs ``cupy.fuse`` of
    ``fn`` with ``xp = cupy``, which CuPy traces once per argument-type key
    into one compiled elementwise kernel. So the body that the tests check
    against its reference on the CPU is the body the GPU compiles.

    Attributes
    ----------
    fn : callable
        The plain body.
    fusion : cupy fused function
        ``cupy.fuse`` of the body, made at first use (importing xprop does
        not import CuPy); the kernel-trace test hands it to CuPy's tracer.
    """

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._fusion = None

    @property
    def fusion(self):
        if self._fusion is None:
            cupy = _import_cupy()
            self._fusion = cupy.fuse(kernel_name=self.__name__)(functools.partial(self.fn, cupy))
        return self._fusion

    @fusion.setter
    def fusion(self, value):
        self._fusion = value

    def __call__(self, xp, *args):
        if backend_name(xp) == "cupy":
            return self.fusion(*args)
        return self.fn(xp, *args)

    def __repr__(self) -> str:
        return f"<fused kernel {self.__name__}>"


def fuse(fn) -> FusedKernel:
    """Decorator: :class:`FusedKernel` of ``fn(xp, ...)``."""
    return FusedKernel(fn)


# --------------------------------------------------------------------------
# Multi-GPU helpers for xprop.distributed (CuPy access stays behind this door)
# --------------------------------------------------------------------------
def device_count() -> int:
    """Number of CUDA devices CuPy can use here (0 where CuPy is not usable)."""
    if not cupy_status()[0]:
        return 0
    return int(_import_cupy().cuda.runtime.getDeviceCount())


def gpu_bus_ids() -> list[str]:
    """PCI bus id of every CUDA device this process sees, in device order.

    Two processes that see the same GPU (whatever its index in each, e.g.
    under different ``CUDA_VISIBLE_DEVICES``) get the same string.
    """
    if not cupy_status()[0]:
        return []
    cupy = _import_cupy()
    return [str(cupy.cuda.Device(i).pci_bus_id) for i in range(device_count())]


def use_device(index: int) -> None:
    """Make CUDA device ``index`` current for this process (arrays made later live there)."""
    _cupy_module().cuda.Device(int(index)).use()


def device_index(device):
    """Index of a CUDA device (``net.device`` of a CuPy net); None for the host."""
    index = getattr(device, "id", None)
    return None if index is None else int(index)


def nccl_module():
    """``cupy.cuda.nccl`` where CuPy is usable and the NCCL runtime loads, else None.

    CuPy warns at import when libnccl is missing (install :func:`nccl_wheel`);
    that warning is swallowed here and the caller says what the absence means.
    """
    if not cupy_status()[0]:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl  # noqa: PLC0415
    except Exception:  # a broken or missing NCCL: no NCCL path
        return None
    return nccl if getattr(nccl, "available", False) else None


def device_pointer(a) -> int:
    """Address of a CuPy array's first element on the device (for NCCL calls)."""
    return int(a.data.ptr)


def current_stream_pointer() -> int:
    """Handle of CuPy's current CUDA stream (for NCCL calls)."""
    return int(_import_cupy().cuda.get_current_stream().ptr)


def copy_to_host(a, out: numpy.ndarray) -> numpy.ndarray:
    """Copy array ``a`` (NumPy or CuPy) into the host buffer ``out``; waits for the copy."""
    if is_cupy_array(a):
        a.get(out=out)
    else:
        numpy.copyto(out, a)
    return out


def copy_from_host(host: numpy.ndarray, a) -> None:
    """Copy the host buffer ``host`` into array ``a`` (NumPy or CuPy), in place."""
    if is_cupy_array(a):
        a.set(host)
    else:
        numpy.copyto(a, host)


class StrictDeviceError(RuntimeError):
    """A host↔device copy or a device synchronisation inside :func:`strict_device`."""


def _refusing_synchronize(stream, owner: int):
    """``stream.synchronize`` that refuses in thread ``owner`` and works in every other."""
    plain = type(stream).synchronize.__get__(stream)

    def synchronize():
        if threading.get_ident() == owner:
            raise StrictDeviceError(
                f"strict_device: {stream!r}.synchronize() was called inside a training step "
                "(it waits for the device); read results after the step")
        return plain()

    return synchronize


@contextlib.contextmanager
def strict_device(xp, enabled: bool = True):
    """A region where host↔device copies and device synchronisation are errors.

    What is caught, in the thread that entered the region (CuPy 14):

    - every read-back through ``ndarray.get()``: ``cupy.asnumpy``,
      ``float()``/``int()``/``bool()`` of a device array, ``.item()``,
      ``.tolist()``, and ``Device.synchronize()``. These call CuPy's
      synchronisation check (``cupy._core.syncdetect``), whose flag is set
      here directly: its public switch ``cupyx.allow_synchronize`` is
      deprecated and warns on every entry;
    - ``Stream.synchronize()`` of the null stream, the per-thread default
      stream and the stream current at entry (CuPy itself never checks
      these; the region replaces their ``synchronize`` for this thread), so
      also :func:`synchronize`;
    - a host↔device move through :func:`as_backend_array`, refused when the
      region ends.

    Each raises :class:`StrictDeviceError`. Not caught: CUDA runtime calls
    made directly (``cupy.cuda.runtime.deviceSynchronize``,
    ``streamSynchronize``), ``Event.synchronize()``, other streams, other
    libraries, and the implicit synchronisation of a ``cudaMalloc`` when
    CuPy's memory pool has to grow. On NumPy there is no device: nothing to
    check.
    """
    if not enabled or backend_name(xp) != "cupy":
        yield
        return
    cupy = _import_cupy()
    from cupy._core import syncdetect  # noqa: PLC0415  (CuPy's own check, see above)

    owner = threading.get_ident()
    streams = [cupy.cuda.Stream.null, cupy.cuda.Stream.ptds]
    try:
        streams.append(cupy.cuda.get_current_stream())
    except Exception:  # no usable device: nothing can be synchronised
        pass
    patched = []
    for stream in streams:
        if "synchronize" not in vars(stream) and all(stream is not p for p in patched):
            stream.synchronize = _refusing_synchronize(stream, owner)
            patched.append(stream)
    before = TRANSFERS
    allowed = syncdetect._is_allowed()
    syncdetect._thread_local.allowed = False
    try:
        yield
    except syncdetect.DeviceSynchronized as exc:
        raise StrictDeviceError(
            "strict_device: a device array was read back to the host (or the device "
            "synchronised) inside a training step; read results after the step") from exc
    finally:
        syncdetect._thread_local.allowed = allowed
        for stream in patched:
            vars(stream).pop("synchronize", None)
    if TRANSFERS != before:
        raise StrictDeviceError(
            f"strict_device: {TRANSFERS - before} host/device transfer(s) happened inside a "
            "training step; move the data to the device before the call"
        )


def memory_pool_bytes(xp):
    """``(used, total)`` bytes of CuPy's default memory pool; ``(None, None)`` elsewhere."""
    if backend_name(xp) != "cupy":
        return None, None
    pool = _import_cupy().get_default_memory_pool()
    return int(pool.used_bytes()), int(pool.total_bytes())


def set_memory_limit(xp, nbytes: int) -> int:
    """Cap CuPy's default memory pool at ``nbytes`` (CuPy backend only).

    Returns the limit it replaces, in bytes (0: none), so that the caller
    can put it back (``fit`` does when it returns).
    """
    if backend_name(xp) != "cupy":
        raise ValueError(f"gpu_mem_limit applies to the cupy backend; this net runs on {backend_name(xp)}")
    pool = _import_cupy().get_default_memory_pool()
    previous = int(pool.get_limit())
    pool.set_limit(size=int(nbytes))
    return previous


def cuda_headers() -> str | None:
    """Where CuPy 14 finds the CUDA runtime headers NVRTC compiles every kernel against.

    CuPy asks ``cuda.pathfinder.find_nvidia_header_directory("cudart")`` at
    its first kernel (the ``[ctk]`` wheels, a CUDA toolkit, ``CUDA_PATH``); so
    does this, without a device and without compiling anything. Returns the
    directory, or None where there is none (then no kernel compiles).

    Raises
    ------
    ImportError
        ``cuda.pathfinder`` (a dependency of CuPy 14) is not installed.
    """
    from cuda.pathfinder import find_nvidia_header_directory  # noqa: PLC0415  (CuPy 14's own lookup)

    return find_nvidia_header_directory("cudart")


def nccl_wheel() -> str:
    """The NCCL wheel for the installed CuPy: ``nvidia-nccl-cu12`` or ``nvidia-nccl-cu13``.

    Taken from the CUDA version of CuPy's runtime (which needs no device);
    ``nvidia-nccl-cu12`` when CuPy does not import.
    """
    try:
        major = int(_import_cupy().cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:  # no CuPy, or a broken one: the common case
        major = 12
    return f"nvidia-nccl-cu{major}"


def supports_out(xp) -> bool:
    """Whether ``xp`` takes the ``out=`` arguments (NumPy, CuPy) that in-place fast paths need.

    ``out=`` is not in the array API standard: every other namespace runs the
    plain reference code.
    """
    return backend_name(xp) in ("numpy", "cupy")
