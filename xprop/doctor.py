"""``xprop doctor``: what this machine offers xprop, what is wrong, and how to fix it.

:func:`run_checks` returns one :class:`Finding` per check; :func:`main` prints
one line per finding (with its fix) and returns 1 when a finding is
``"fail"``, else 0. Statuses:

``ok``    the thing checked works.
``info``  a fact worth knowing (what is installed, how much memory, which BLAS).
``warn``  probably not what you want, but nothing xprop needs is broken.
``fail``  something is broken and xprop's GPU path will not work until it is fixed.

Checks
------
nvidia-driver
    The NVIDIA driver version, from
    ``nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader``,
    against the CUDA major version of the installed CuPy wheel (read from its
    distribution name: ``cupy-cuda12x`` → 12, ``cupy-cuda13x`` → 13,
    ``cupy-cuda117`` → 11). A CUDA major version needs at least this driver
    (CUDA minor-version compatibility, Linux):

    =========  ===============
    CUDA       driver at least
    =========  ===============
    11.x       450.80.02
    12.x       525.60.13
    13.x       580
    =========  ===============

    No ``nvidia-smi`` → info (no NVIDIA driver/GPU here); a driver older than
    the wheel needs → fail.
cupy-wheels
    More than one distribution whose name starts with ``cupy`` → fail: they
    overwrite each other's files (``pip uninstall`` them all, install one).
cupy-device
    CuPy installed but no usable device, with the reason from
    :func:`xprop.backend.cupy_status`: fail where an NVIDIA driver is present
    (a real misconfiguration), warn where there is none (CuPy is simply of no
    use on this machine).
kernel-cache
    CuPy compiles kernels into ``CUPY_CACHE_DIR`` (default
    ``~/.cupy/kernel_cache``); it must be a writable directory or creatable.
    Not writable → fail when CuPy is installed, info otherwise.
cuda-headers
    Where CuPy 14 finds ``cuda_runtime.h``, which NVRTC needs for every kernel
    (:func:`xprop.backend.cuda_headers`, no device needed): none while a CuPy
    wheel is installed → fail (fix: the ``[ctk]`` extra); no CuPy → info.
mpi, nccl
    mpi4py (found without importing it), ``mpiexec`` on PATH, and the NCCL
    wheels ``nvidia-nccl-cu12``/``nvidia-nccl-cu13`` (from the installed
    distributions, without importing anything) → info; an NCCL wheel for a
    CUDA major other than CuPy's → warn.
blas
    The BLAS NumPy uses and its thread count (threadpoolctl when installed,
    else NumPy's build configuration, without the thread count) → info.
gpu-memory
    Total and free memory of each device (:func:`xprop.backend.gpu_info`) and
    the memory-pool limit in force (``CUPY_GPU_MEMORY_LIMIT``: bytes or a
    percentage of each device's memory) → info; a malformed limit → warn.

Every probe of the machine is a small module-level function (``probe_*``), so
tests can replace it and simulate each condition. This module imports no
CuPy: it asks :mod:`xprop.backend`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from . import backend as _backend

__all__ = ["DRIVER_MIN", "STATUSES", "Finding", "main", "run_checks"]

STATUSES = ("ok", "info", "warn", "fail")

#: Least NVIDIA driver for each CUDA major version (minor-version compatibility, Linux).
DRIVER_MIN = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580,)}

_SMI_QUERY = ["--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
_INSTALL_GPU = "pip install 'xprop[cuda12]' (driver >= 525) or 'xprop[cuda13]' (driver >= 580)"


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        The check, e.g. ``"nvidia-driver"``.
    status : {"ok", "info", "warn", "fail"}
    message : str
        What was found, in one sentence.
    fix : str
        What to do about it (empty when there is nothing to do).
    """

    name: str
    status: str
    message: str
    fix: str = ""

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")

    def line(self) -> str:
        """The finding as one line: ``STATUS name: message | fix: ...``."""
        text = f"{self.status.upper():<4} {self.name}: {self.message}"
        return f"{text} | fix: {self.fix}" if self.fix else text


# --------------------------------------------------------------------- probes
def probe_nvidia_smi() -> tuple[int | None, str]:
    """``(returncode, output)`` of the nvidia-smi query; ``(None, "")`` without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, ""
    try:
        done = subprocess.run([exe, *_SMI_QUERY], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return done.returncode, done.stdout if done.returncode == 0 else (done.stdout + done.stderr).strip()


def probe_distributions() -> list[tuple[str, str]]:
    """``(normalised name, version)`` of every installed distribution."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.add((_normalise(name), dist.version))
    return sorted(found)


def probe_cupy_status() -> tuple[bool, str]:
    """:func:`xprop.backend.cupy_status` (whether CuPy is usable, and why not)."""
    return _backend.cupy_status()


def probe_cache_dir() -> Path:
    """CuPy's kernel cache directory: ``CUPY_CACHE_DIR`` or ``~/.cupy/kernel_cache``."""
    env = os.environ.get("CUPY_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cupy" / "kernel_cache"


def probe_writable(path) -> tuple[bool, str]:
    """Whether CuPy can write kernels into ``path`` (or create it), and the detail.

    Nothing is created: an existing directory must pass ``os.access(W_OK | X_OK)``;
    a missing one needs its nearest existing ancestor to be a writable directory.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return False, f"{path} exists but is not a directory"
        if os.access(path, os.W_OK | os.X_OK):
            return True, f"{path} is writable"
        return False, f"{path} is not writable by this user"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return True, f"{path} does not exist yet; CuPy can create it (under {parent})"
    return False, f"{path} does not exist and cannot be created: {parent} is not writable"


def probe_cuda_headers():
    """CuPy's CUDA header directory, None if there is none, or the ImportError of its lookup."""
    try:
        return _backend.cuda_headers()
    except ImportError as exc:
        return exc


def probe_find_spec(name: str) -> bool:
    """Whether a top-level module can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def probe_which(name: str) -> str | None:
    return shutil.which(name)


def probe_threadpools() -> list[dict] | None:
    """threadpoolctl's BLAS entries, or None when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return None
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def probe_numpy_blas() -> dict:
    """The BLAS entry of NumPy's build configuration (``numpy.show_config``)."""
    import numpy  # noqa: PLC0415

    try:
        return dict(numpy.show_config(mode="dicts")["Build Dependencies"]["blas"])
    except Exception:  # older NumPy or an unusual build: report what is known
        return {}


def probe_gpu_info() -> list[dict]:
    """:func:`xprop.backend.gpu_info` (empty when no device is usable)."""
    gpu_info = getattr(_backend, "gpu_info", None)
    return [] if gpu_info is None else gpu_info()


# -------------------------------------------------------------------- helpers
def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of ``driver_version, name, memory.total`` as dicts (blank lines skipped)."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0]:
            continue
        rows.append({"driver": fields[0], "name": ", ".join(fields[1:-1]), "memory": fields[-1]})
    return rows


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"525.60.13"`` → ``(525, 60, 13)``; None when it does not start with a number."""
    parts = re.match(r"\d+(\.\d+)*", text.strip())
    return tuple(int(p) for p in parts.group(0).split(".")) if parts else None


def cupy_cuda_major(dist_name: str) -> int | None:
    """CUDA major version of a CuPy wheel from its name (None: not a CUDA wheel)."""
    m = re.fullmatch(r"cupy-cuda(\d+)x", dist_name) or re.fullmatch(r"cupy-cuda(\d\d)\d", dist_name)
    return int(m.group(1)) if m else None


def _cupy_wheels(dists) -> list[tuple[str, str]]:
    return [(n, v) for n, v in dists if n.startswith("cupy")]


def _version_text(v: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in v)


def _newest_cuda_for(driver: tuple[int, ...]) -> int | None:
    ok = [major for major, least in DRIVER_MIN.items() if driver >= least]
    return max(ok) if ok else None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


# --------------------------------------------------------------------- checks
def check_driver(smi, dists) -> Finding:
    code, text = smi
    if code is None:
        return Finding("nvidia-driver", "info", "no NVIDIA driver/GPU found (nvidia-smi is not on PATH)",
                       "only needed for the CuPy backend: install the NVIDIA driver on a machine with a GPU "
                       "(in Docker: run with --gpus all)")
    rows = parse_nvidia_smi(text) if code == 0 else []
    if not rows:
        return Finding("nvidia-driver", "fail",
                       f"nvidia-smi is installed but did not report a GPU (exit {code}): {text.strip()[:300]}",
                       "check that the NVIDIA kernel module is loaded (reinstall or reboot after a driver "
                       "update); in Docker run with --gpus all")
    driver_text = rows[0]["driver"]
    gpus = "; ".join(f"{r['name']} ({r['memory']})" for r in rows)
    driver = parse_version(driver_text)
    if driver is None:
        return Finding("nvidia-driver", "warn", f"could not read the driver version {driver_text!r}; GPUs: {gpus}",
                       "run nvidia-smi by hand and check the driver")
    wheels = [(n, cupy_cuda_major(n)) for n, _ in _cupy_wheels(dists)]
    cuda = [(n, major) for n, major in wheels if major is not None]
    if not cuda:
        what = "no CuPy wheel is installed" if not wheels else f"{wheels[0][0]} is not a CUDA wheel"
        return Finding("nvidia-driver", "info", f"driver {driver_text}, GPUs: {gpus}; {what}",
                       f"for the CuPy backend: {_INSTALL_GPU}" if not wheels else "")
    problems = []
    for name, major in cuda:
        least = DRIVER_MIN.get(major)
        if least is not None and driver < least:
            problems.append((name, major, least))
    if not problems:
        needs = ", ".join(f"{n} (CUDA {m}) needs >= {_version_text(DRIVER_MIN[m])}"
                          for n, m in cuda if m in DRIVER_MIN)
        unknown = [n for n, m in cuda if m not in DRIVER_MIN]
        msg = f"driver {driver_text}, GPUs: {gpus}; {needs or 'no known minimum'}"
        if unknown:
            return Finding("nvidia-driver", "warn", msg + f"; no driver table entry for {', '.join(unknown)}",
                           "check the CUDA toolkit release notes for the driver it needs")
        return Finding("nvidia-driver", "ok", msg)
    name, major, least = problems[0]
    newest = _newest_cuda_for(driver)
    if newest is not None and newest != major:
        alt = f"pip uninstall -y {name} && pip install cupy-cuda{newest}x"
        fix = f"update the NVIDIA driver to >= {_version_text(least)}, or install the CuPy wheel for CUDA {newest}: {alt}"
    else:
        fix = f"update the NVIDIA driver to >= {_version_text(least)} (no CuPy wheel supports driver {driver_text})"
    return Finding("nvidia-driver", "fail",
                   f"driver too old: {driver_text} is older than the {_version_text(least)} that {name} "
                   f"(CUDA {major}) needs; GPUs: {gpus}", fix)


def check_cupy_wheels(dists, driver=None) -> Finding:
    wheels = _cupy_wheels(dists)
    if not wheels:
        return Finding("cupy-wheels", "info", "no CuPy wheel installed: the NumPy backend only",
                       f"for a GPU: {_INSTALL_GPU}")
    listed = ", ".join(f"{n} {v}" for n, v in wheels)
    if len(wheels) == 1:
        return Finding("cupy-wheels", "ok", f"one CuPy wheel installed: {listed}")
    newest = _newest_cuda_for(driver) if driver else None
    keep = f"cupy-cuda{newest}x" if newest else "the one wheel that matches your driver (cupy-cuda12x or cupy-cuda13x)"
    names = " ".join(n for n, _ in wheels)
    return Finding("cupy-wheels", "fail",
                   f"{len(wheels)} CuPy wheels installed ({listed}); they overwrite each other's files",
                   f"pip uninstall -y {names} && pip install {keep}")


def check_cupy_device(status, dists, smi) -> Finding:
    if not _cupy_wheels(dists):
        return Finding("cupy-device", "info", "CuPy is not installed, so there is no GPU backend to check")
    usable, reason = status
    if usable:
        return Finding("cupy-device", "ok", f"CuPy is usable ({reason})")
    if smi[0] is None:
        return Finding("cupy-device", "warn",
                       f"CuPy is installed but has no device: {reason}",
                       "expected on a machine without an NVIDIA GPU (xprop uses NumPy); run on a GPU machine, "
                       "or pip uninstall the CuPy wheel if it is not wanted here")
    return Finding("cupy-device", "fail", f"CuPy is installed and an NVIDIA driver is present, but CuPy has "
                   f"no device: {reason}",
                   "follow the reason above; see also the nvidia-driver and cupy-wheels lines, and check "
                   "CUDA_VISIBLE_DEVICES")


def check_kernel_cache(path, writable, dists) -> Finding:
    ok, detail = writable
    source = "CUPY_CACHE_DIR" if os.environ.get("CUPY_CACHE_DIR") else "default"
    if ok:
        return Finding("kernel-cache", "ok", f"CuPy kernel cache ({source}): {detail}")
    fix = (f"export CUPY_CACHE_DIR=<a writable directory> (e.g. /tmp/cupy_kernel_cache), "
           f"or make it writable: mkdir -p {path} && chmod u+rwx {path}")
    if not _cupy_wheels(dists):
        return Finding("kernel-cache", "info", f"CuPy kernel cache ({source}): {detail}; "
                       "CuPy is not installed, so it is not needed now", fix)
    return Finding("kernel-cache", "fail", f"CuPy kernel cache ({source}): {detail}; CuPy cannot compile "
                   "kernels without it", fix)


def check_cuda_headers(headers, dists) -> Finding:
    majors = sorted({cupy_cuda_major(n) for n, _ in _cupy_wheels(dists)} - {None}) or [12]
    fix = (f"pip install \"cupy-cuda{majors[-1]}x[ctk]\" (xprop's gpu/cuda12/cuda13 extras bring it), "
           "or install a CUDA toolkit and set CUDA_PATH")
    if not _cupy_wheels(dists):
        return Finding("cuda-headers", "info", "CuPy is not installed: no CUDA headers needed")
    if headers is None:
        return Finding("cuda-headers", "fail", "CuPy finds no CUDA headers (cuda_runtime.h): it cannot "
                       "compile any kernel (\"Failed to find CUDA headers\")", fix)
    if isinstance(headers, Exception):
        return Finding("cuda-headers", "warn", f"CuPy's header lookup could not run ({headers}); "
                       "CuPy >= 14 brings it", fix)
    return Finding("cuda-headers", "ok", f"CUDA headers for NVRTC: {headers}")


def check_mpi(has_mpi4py, mpiexec, dists) -> Finding:
    versions = dict(dists)
    mpi4py = f"mpi4py {versions.get('mpi4py', '')}".strip() if has_mpi4py else "mpi4py not installed"
    launcher = f"mpiexec at {mpiexec}" if mpiexec else "no mpiexec on PATH"
    fix = "" if (has_mpi4py and mpiexec) else \
        "only for multi-process runs: pip install mpi4py and an MPI (e.g. apt-get install openmpi-bin)"
    return Finding("mpi", "info", f"{mpi4py}; {launcher}", fix)


def check_nccl(dists) -> Finding:
    versions = dict(dists)
    nccl = {major: versions[f"nvidia-nccl-cu{major}"] for major in (12, 13) if f"nvidia-nccl-cu{major}" in versions}
    cupy_majors = {cupy_cuda_major(n) for n, _ in _cupy_wheels(dists)} - {None}
    if not nccl:
        wheel = (f"nvidia-nccl-cu{max(cupy_majors)}" if cupy_majors
                 else "nvidia-nccl-cu12 (or -cu13, as your CuPy)")
        return Finding("nccl", "info", "no NCCL wheel (nvidia-nccl-cu12/-cu13) installed",
                       f"only for multi-GPU communication: pip install {wheel}")
    found = ", ".join(f"nvidia-nccl-cu{m} {v}" for m, v in nccl.items())
    if cupy_majors and not cupy_majors & set(nccl):
        want = max(cupy_majors)
        return Finding("nccl", "warn", f"{found} installed, but CuPy is built for CUDA {want}",
                       f"pip install nvidia-nccl-cu{want}")
    return Finding("nccl", "info", f"{found} installed")


def check_blas(threadpools, numpy_blas) -> Finding:
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
           if k in os.environ]
    limits = f" (set by {', '.join(env)})" if env else ""
    if threadpools:
        libs = "; ".join(
            f"{t.get('internal_api', '?')} {t.get('version') or ''} ({t.get('threading_layer', '?')}), "
            f"{t.get('num_threads', '?')} threads{limits}" for t in threadpools)
        return Finding("blas", "info", f"NumPy BLAS: {libs}")
    if threadpools == []:
        return Finding("blas", "info", "threadpoolctl found no BLAS library loaded by NumPy")
    name = numpy_blas.get("name", "unknown")
    version = numpy_blas.get("version", "")
    return Finding("blas", "info", f"NumPy was built with BLAS {name} {version}; thread count unknown{limits}",
                   "pip install threadpoolctl to see the thread count")


def _parse_limit(text: str):
    """``CUPY_GPU_MEMORY_LIMIT``: ``("bytes", n)``, ``("fraction", f)`` or None when malformed."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return "bytes", int(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if m and 0 < float(m.group(1)) <= 100:
        return "fraction", float(m.group(1)) / 100
    return None


def check_gpu_memory(gpus, status) -> Finding:
    raw = os.environ.get("CUPY_GPU_MEMORY_LIMIT")
    limit = None if raw is None else _parse_limit(raw)
    if raw is not None and limit is None:
        return Finding("gpu-memory", "warn", f"CUPY_GPU_MEMORY_LIMIT={raw!r} is not a byte count or a percentage",
                       "set it to bytes (e.g. 8589934592) or a percentage of each GPU (e.g. 80%), or unset it")
    if not gpus:
        note = "" if raw is None else f"; CUPY_GPU_MEMORY_LIMIT={raw} would apply to each device"
        return Finding("gpu-memory", "info", f"no usable GPU, so no device memory to report (see cupy-device){note}")
    parts = []
    for g in gpus:
        total = g["total_bytes"]
        if limit is None:
            cap = "pool limit: none (CUPY_GPU_MEMORY_LIMIT unset; the pool may grow to all free memory)"
        elif limit[0] == "bytes":
            cap = f"pool limit: {_gib(limit[1])} (CUPY_GPU_MEMORY_LIMIT={raw})"
        else:
            cap = f"pool limit: {_gib(int(total * limit[1]))} (CUPY_GPU_MEMORY_LIMIT={raw})"
        if g.get("pool_limit_bytes"):  # where xprop.backend reports the pool's own limit
            cap = f"pool limit: {_gib(g['pool_limit_bytes'])}"
        parts.append(f"GPU {g['id']} {g['name']}: {_gib(total)} total, {_gib(g['free_bytes'])} free, "
                     f"pool holds {_gib(g.get('pool_total_bytes', 0))}; {cap}")
    return Finding("gpu-memory", "info", "; ".join(parts))


# ----------------------------------------------------------------- the runner
def _guard(name, check, *args) -> Finding:
    try:
        return check(*args)
    except Exception as exc:  # a broken probe must not hide the other findings
        return Finding(name, "warn", f"the check itself failed: {type(exc).__name__}: {exc}",
                       "please report this as an xprop bug, with the output of xprop doctor")


def _probe(default, probe, *args):
    try:
        return probe(*args)
    except Exception:
        return default


def run_checks() -> list[Finding]:
    """Run every check and return the findings, in a fixed order (see the module docstring)."""
    smi = _probe((-1, "nvidia-smi could not be run"), probe_nvidia_smi)
    dists = _probe([], probe_distributions)
    status = _probe((False, "xprop.backend.cupy_status() raised"), probe_cupy_status)
    rows = parse_nvidia_smi(smi[1]) if smi[0] == 0 else []
    driver = parse_version(rows[0]["driver"]) if rows else None
    cache = probe_cache_dir()
    return [
        _guard("nvidia-driver", check_driver, smi, dists),
        _guard("cupy-wheels", check_cupy_wheels, dists, driver),
        _guard("cupy-device", check_cupy_device, status, dists, smi),
        _guard("kernel-cache", lambda: check_kernel_cache(cache, probe_writable(cache), dists)),
        _guard("cuda-headers", lambda: check_cuda_headers(probe_cuda_headers(), dists)),
        _guard("mpi", lambda: check_mpi(probe_find_spec("mpi4py"), probe_which("mpiexec"), dists)),
        _guard("nccl", check_nccl, dists),
        _guard("blas", lambda: check_blas(probe_threadpools(), probe_numpy_blas())),
        _guard("gpu-memory", lambda: check_gpu_memory(probe_gpu_info() if status[0] else [], status)),
    ]


def main(argv=None) -> int:
    """``xprop doctor [--json]``: print the findings; 1 if any is "fail", else 0.

    ``argv`` is ``[]`` or ``["--json"]`` (the command line, :mod:`xprop.cli.info`,
    parses the flags).
    """
    argv = list(argv or [])
    unknown = [a for a in argv if a != "--json"]
    if unknown:
        raise ValueError(f"xprop doctor takes only --json; got {unknown}")
    findings = run_checks()
    failed = [f for f in findings if f.status == "fail"]
    if "--json" in argv:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f.line())
        warned = sum(f.status == "warn" for f in findings)
        print(f"xprop doctor: {len(findings)} checks, {len(failed)} failed, {warned} warnings")
    return 1 if failed else 0
