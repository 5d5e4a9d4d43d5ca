"""Tests of ``xprop doctor``: every condition simulated on a CPU machine.

The :class:`Machine` fixture replaces each ``probe_*`` of :mod:`xprop.doctor`
with a field of a fake machine that starts healthy (one H100, driver 550,
cupy-cuda12x, CuPy usable); each test breaks one thing and reads the finding.
The kernel-cache probe is the real one, pointed at a temporary directory,
with ``os.access`` replaced where a test needs a directory it cannot write.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import xprop
from xprop import doctor
from xprop.doctor import Finding, cupy_cuda_major, main, parse_nvidia_smi, run_checks

NAMES = ["nvidia-driver", "cupy-wheels", "cupy-device", "kernel-cache", "cuda-headers", "mpi", "nccl", "blas",
         "gpu-memory"]
H100 = "NVIDIA H100 80GB HBM3"


def smi_output(driver, *names):
    return "".join(f"{driver}, {name}, 81559 MiB\n" for name in (names or (H100,)))


class Machine:
    """A fake machine behind the doctor's probes; starts as a healthy GPU box."""

    def __init__(self, monkeypatch, tmp_path):
        self.smi = (0, smi_output("550.54.15"))
        self.dists = [("cupy-cuda12x", "13.3.0"), ("numpy", "2.1.3"), ("nvidia-nccl-cu12", "2.21.5"),
                      ("mpi4py", "4.0.1")]
        self.cupy = (True, "ok: 1 device(s)")
        self.gpus = [{"id": 0, "name": H100, "total_bytes": 80 * 2**30, "free_bytes": 79 * 2**30,
                      "pool_used_bytes": 0, "pool_total_bytes": 2**30}]
        self.headers = "/venv/lib/python3.12/site-packages/nvidia/cuda_runtime/include"
        self.mpi4py = True
        self.mpiexec = "/usr/bin/mpiexec"
        self.threadpools = [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.27",
                             "num_threads": 8, "threading_layer": "pthreads"}]
        self.numpy_blas = {"name": "scipy-openblas", "version": "0.3.27"}
        self.cache = tmp_path / "kernel_cache"
        self.cache.mkdir()
        monkeypatch.setenv("CUPY_CACHE_DIR", str(self.cache))
        for var in ("CUPY_GPU_MEMORY_LIMIT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.delenv(var, raising=False)
        fakes = {
            "probe_nvidia_smi": lambda: self.smi,
            "probe_distributions": lambda: list(self.dists),
            "probe_cupy_status": lambda: self.cupy,
            "probe_cuda_headers": self._headers,
            "probe_find_spec": lambda name: self.mpi4py if name == "mpi4py" else False,
            "probe_which": lambda name: self.mpiexec if name == "mpiexec" else None,
            "probe_threadpools": lambda: self.threadpools,
            "probe_numpy_blas": lambda: self.numpy_blas,
            "probe_gpu_info": lambda: self.gpus,
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(doctor, name, fake)

    def _headers(self):
        return self.headers

    def without_gpu(self):
        """A CPU machine with the CUDA 12 wheel installed (like CI)."""
        self.smi = (None, "")
        self.cupy = (False, "no NVIDIA driver was found (libcuda cannot be loaded)")
        self.gpus = []

    def findings(self) -> dict[str, Finding]:
        found = run_checks()
        assert [f.name for f in found] == NAMES
        return {f.name: f for f in found}


@pytest.fixture
def machine(monkeypatch, tmp_path):
    return Machine(monkeypatch, tmp_path)


def deny_access_to(monkeypatch, path):
    """Make ``os.access`` say no for ``path`` (as for a directory owned by another user)."""
    real = os.access

    def access(p, mode, *args, **kwargs):
        return False if Path(p) == Path(path) else real(p, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# ------------------------------------------------------------- healthy
def test_healthy_gpu_machine_has_nothing_to_fix(machine, capsys):
    f = machine.findings()
    assert {n: f[n].status for n in NAMES} == {
        "nvidia-driver": "ok", "cupy-wheels": "ok", "cupy-device": "ok", "kernel-cache": "ok",
        "cuda-headers": "ok", "mpi": "info", "nccl": "info", "blas": "info", "gpu-memory": "info"}
    assert "550.54.15" in f["nvidia-driver"].message and H100 in f["nvidia-driver"].message
    assert "needs >= 525.60.13" in f["nvidia-driver"].message
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(NAMES) + 1
    assert [line.split()[1].rstrip(":") for line in lines[:-1]] == NAMES
    assert lines[-1] == "xprop doctor: 9 checks, 0 failed, 0 warnings"


# -------------------------------------------------------- NVIDIA driver
def test_no_nvidia_smi_is_info_no_driver_found(machine):
    machine.without_gpu()
    f = machine.findings()
    assert f["nvidia-driver"].status == "info"
    assert "no NVIDIA driver/GPU found" in f["nvidia-driver"].message


def test_driver_470_with_cupy_cuda12x_is_too_old(machine, capsys):
    machine.smi = (0, smi_output("470.182.03"))
    f = machine.findings()["nvidia-driver"]
    assert f.status == "fail"
    assert "driver too old" in f.message and "470.182.03" in f.message and "cupy-cuda12x" in f.message
    # 470 still runs CUDA 11: the fix offers the driver update or the CUDA 11 wheel.
    assert ">= 525.60.13" in f.fix and "pip uninstall -y cupy-cuda12x && pip install cupy-cuda11x" in f.fix
    assert main([]) == 1
    out = capsys.readouterr().out
    assert f"FAIL nvidia-driver: {f.message} | fix: {f.fix}" in out.splitlines()


def test_driver_550_with_cupy_cuda13x_points_to_the_cuda12_wheel(machine):
    machine.smi = (0, smi_output("550.54.15"))
    machine.dists = [("cupy-cuda13x", "14.0.0")]
    f = machine.findings()["nvidia-driver"]
    assert f.status == "fail" and ">= 580" in f.fix and "pip install cupy-cuda12x" in f.fix


def test_driver_580_with_cupy_cuda13x_is_ok(machine):
    machine.smi = (0, smi_output("580.65.06"))
    machine.dists = [("cupy-cuda13x", "14.0.0")]
    assert machine.findings()["nvidia-driver"].status == "ok"


def test_driver_older_than_every_wheel_only_offers_the_update(machine):
    machine.smi = (0, smi_output("440.33.01"))
    f = machine.findings()["nvidia-driver"]
    assert f.status == "fail" and "pip install" not in f.fix and ">= 525.60.13" in f.fix


def test_nvidia_smi_that_cannot_reach_the_driver_fails(machine):
    machine.smi = (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    machine.cupy = (False, "no CUDA device is visible")
    f = machine.findings()
    assert f["nvidia-driver"].status == "fail" and "couldn't communicate" in f["nvidia-driver"].message
    assert f["cupy-device"].status == "fail"


def test_driver_without_cupy_says_how_to_install_it(machine):
    machine.dists = [("numpy", "2.1.3")]
    f = machine.findings()
    assert f["nvidia-driver"].status == "info" and "no CuPy wheel is installed" in f["nvidia-driver"].message
    assert "xprop[cuda12]" in f["nvidia-driver"].fix
    assert f["cupy-wheels"].status == "info" and f["cupy-device"].status == "info"


def test_two_gpus_are_both_listed(machine):
    machine.smi = (0, smi_output("550.54.15", "NVIDIA A100-SXM4-40GB", H100))
    message = machine.findings()["nvidia-driver"].message
    assert "NVIDIA A100-SXM4-40GB (81559 MiB)" in message and f"{H100} (81559 MiB)" in message


# --------------------------------------------------------- CuPy wheels
def test_two_cupy_wheels_fail_with_the_uninstall_fix(machine, capsys):
    machine.dists = [("cupy-cuda11x", "13.3.0"), ("cupy-cuda12x", "13.3.0")]
    f = machine.findings()["cupy-wheels"]
    assert f.status == "fail" and "2 CuPy wheels" in f.message
    assert f.fix == "pip uninstall -y cupy-cuda11x cupy-cuda12x && pip install cupy-cuda12x"
    assert main([]) == 1


# --------------------------------------------------------- CuPy device
def test_cupy_without_device_on_a_gpu_machine_fails_with_the_reason(machine):
    machine.cupy = (False, "the NVIDIA driver is too old for this CuPy wheel's CUDA version")
    machine.gpus = []
    f = machine.findings()["cupy-device"]
    assert f.status == "fail" and "the NVIDIA driver is too old" in f.message


def test_cupy_without_device_on_a_cpu_machine_is_a_warning(machine, capsys):
    machine.without_gpu()
    f = machine.findings()
    assert f["cupy-device"].status == "warn" and "libcuda cannot be loaded" in f["cupy-device"].message
    assert f["gpu-memory"].status == "info" and "no usable GPU" in f["gpu-memory"].message
    assert main([]) == 0  # a warning is not a failure


# --------------------------------------------------------- kernel cache
def test_unwritable_kernel_cache_fails_with_fix(machine, monkeypatch):
    deny_access_to(monkeypatch, machine.cache)
    f = machine.findings()["kernel-cache"]
    assert f.status == "fail" and "not writable" in f.message and "CUPY_CACHE_DIR" in f.message
    assert "export CUPY_CACHE_DIR=" in f.fix and f"chmod u+rwx {machine.cache}" in f.fix


def test_missing_kernel_cache_under_an_unwritable_parent_fails(machine, monkeypatch, tmp_path):
    target = tmp_path / "locked" / "cache"
    (tmp_path / "locked").mkdir()
    monkeypatch.setenv("CUPY_CACHE_DIR", str(target))
    deny_access_to(monkeypatch, tmp_path / "locked")
    f = machine.findings()["kernel-cache"]
    assert f.status == "fail" and "cannot be created" in f.message


def test_missing_kernel_cache_that_can_be_created_is_ok_and_not_created(machine, monkeypatch, tmp_path):
    target = tmp_path / "new" / "cache"
    monkeypatch.setenv("CUPY_CACHE_DIR", str(target))
    f = machine.findings()["kernel-cache"]
    assert f.status == "ok" and "does not exist yet" in f.message
    assert not target.exists() and not target.parent.exists()


def test_kernel_cache_that_is_a_file_fails(machine, monkeypatch, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("")
    monkeypatch.setenv("CUPY_CACHE_DIR", str(target))
    assert machine.findings()["kernel-cache"].status == "fail"


def test_default_kernel_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CUPY_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert doctor.probe_cache_dir() == tmp_path / ".cupy" / "kernel_cache"


def test_unwritable_kernel_cache_without_cupy_is_only_info(machine, monkeypatch):
    machine.dists = [("numpy", "2.1.3")]
    deny_access_to(monkeypatch, machine.cache)
    assert machine.findings()["kernel-cache"].status == "info"


# ------------------------------------------------------------- CUDA headers
def test_cuda_headers_found_are_ok(machine):
    f = machine.findings()["cuda-headers"]
    assert f.status == "ok" and f.message == f"CUDA headers for NVRTC: {machine.headers}"


@pytest.mark.parametrize("wheel, fix", [("cupy-cuda12x", 'pip install "cupy-cuda12x[ctk]"'),
                                        ("cupy-cuda13x", 'pip install "cupy-cuda13x[ctk]"')])
def test_no_cuda_headers_with_cupy_installed_fails_naming_the_ctk_extra(machine, wheel, fix):
    machine.headers = None                   # a plain cupy-cuda12x on an nvidia/cuda runtime image
    machine.dists = [(wheel, "14.2.0")]
    f = machine.findings()["cuda-headers"]
    assert f.status == "fail" and "cannot compile any kernel" in f.message
    assert f.fix.startswith(fix), f.fix
    assert main([]) == 1


def test_cuda_headers_do_not_matter_without_cupy(machine):
    machine.headers = None
    machine.dists = [("numpy", "2.1.3")]
    assert machine.findings()["cuda-headers"].status == "info"


def test_cuda_header_lookup_missing_warns(machine):
    machine.headers = ImportError("No module named 'cuda.pathfinder'")
    f = machine.findings()["cuda-headers"]
    assert f.status == "warn" and "cuda.pathfinder" in f.message


def test_the_real_header_lookup_answers_without_a_device():
    pytest.importorskip("cuda.pathfinder", reason="CuPy 14's cuda-pathfinder is not installed")
    found = xprop.backend.cuda_headers()
    assert found is None or Path(found, "cuda_runtime.h").is_file(), found


# ------------------------------------------------------------- MPI, NCCL
def test_mpi_and_nccl_found(machine):
    f = machine.findings()
    assert f["mpi"].message == "mpi4py 4.0.1; mpiexec at /usr/bin/mpiexec" and f["mpi"].fix == ""
    assert f["nccl"].message == "nvidia-nccl-cu12 2.21.5 installed"


def test_mpi_and_nccl_missing_are_info_with_how_to_get_them(machine):
    machine.mpi4py, machine.mpiexec = False, None
    machine.dists = [("cupy-cuda12x", "13.3.0")]
    f = machine.findings()
    assert f["mpi"].status == "info" and "mpi4py not installed; no mpiexec on PATH" == f["mpi"].message
    assert "pip install mpi4py" in f["mpi"].fix
    assert f["nccl"].status == "info" and "no NCCL wheel" in f["nccl"].message


@pytest.mark.parametrize("cupy_wheel, want", [("cupy-cuda12x", "nvidia-nccl-cu12"),
                                               ("cupy-cuda13x", "nvidia-nccl-cu13")])
def test_missing_nccl_names_the_wheel_for_cupys_cuda(machine, cupy_wheel, want):
    machine.dists = [(cupy_wheel, "14.2.0")]
    f = machine.findings()["nccl"]
    assert f.status == "info" and f.fix == f"only for multi-GPU communication: pip install {want}"


def test_nccl_for_another_cuda_than_cupy_warns(machine):
    machine.smi = (0, smi_output("580.65.06"))
    machine.dists = [("cupy-cuda13x", "14.0.0"), ("nvidia-nccl-cu12", "2.21.5")]
    f = machine.findings()["nccl"]
    assert f.status == "warn" and f.fix == "pip install nvidia-nccl-cu13"


# ------------------------------------------------------------------ BLAS
def test_blas_from_threadpoolctl_reports_threads(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    f = machine.findings()["blas"]
    assert f.status == "info"
    assert f.message == "NumPy BLAS: openblas 0.3.27 (pthreads), 8 threads (set by OMP_NUM_THREADS=8)"


def test_blas_without_threadpoolctl_falls_back_to_numpy_config(machine):
    machine.threadpools = None
    f = machine.findings()["blas"]
    assert f.message == "NumPy was built with BLAS scipy-openblas 0.3.27; thread count unknown"
    assert "threadpoolctl" in f.fix


# ------------------------------------------------------------ GPU memory
def test_gpu_memory_without_a_limit(machine):
    f = machine.findings()["gpu-memory"]
    assert f.message == (f"GPU 0 {H100}: 80.0 GiB total, 79.0 GiB free, pool holds 1.0 GiB; "
                         "pool limit: none (CUPY_GPU_MEMORY_LIMIT unset; the pool may grow to all free memory)")


@pytest.mark.parametrize("limit, shown", [("50%", "40.0 GiB"), ("8589934592", "8.0 GiB")])
def test_gpu_memory_limit_from_the_environment(machine, monkeypatch, limit, shown):
    monkeypatch.setenv("CUPY_GPU_MEMORY_LIMIT", limit)
    f = machine.findings()["gpu-memory"]
    assert f.status == "info" and f"pool limit: {shown} (CUPY_GPU_MEMORY_LIMIT={limit})" in f.message


def test_malformed_gpu_memory_limit_warns(machine, monkeypatch):
    monkeypatch.setenv("CUPY_GPU_MEMORY_LIMIT", "8GB")
    f = machine.findings()["gpu-memory"]
    assert f.status == "warn" and "80%" in f.fix


# ----------------------------------------------------- robustness, output
def test_a_probe_that_raises_becomes_a_warning_and_the_rest_still_run(machine, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "probe_threadpools", broken)
    f = machine.findings()
    assert f["blas"].status == "warn" and "RuntimeError: boom" in f["blas"].message
    assert f["nvidia-driver"].status == "ok"


def test_main_prints_one_line_per_finding_and_exits_1_on_fail(monkeypatch, capsys):
    findings = [Finding("a", "ok", "fine"), Finding("b", "warn", "hmm", "do x"),
                Finding("c", "fail", "broken", "do y"), Finding("d", "info", "fact")]
    monkeypatch.setattr(doctor, "run_checks", lambda: findings)
    assert main([]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "OK   a: fine", "WARN b: hmm | fix: do x", "FAIL c: broken | fix: do y", "INFO d: fact",
        "xprop doctor: 4 checks, 1 failed, 1 warnings"]
    monkeypatch.setattr(doctor, "run_checks", lambda: findings[:2])
    assert main([]) == 0


def test_main_json(machine, capsys):
    machine.dists.append(("cupy-cuda13x", "14.0.0"))
    assert main(["--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == NAMES
    assert {d["name"]: d["status"] for d in data}["cupy-wheels"] == "fail"


def test_finding_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="status"):
        Finding("x", "error", "?")


# --------------------------------------------------------------- helpers
@pytest.mark.parametrize("name, major", [("cupy-cuda12x", 12), ("cupy-cuda13x", 13), ("cupy-cuda11x", 11),
                                         ("cupy-cuda117", 11), ("cupy-cuda102", 10), ("cupy", None),
                                         ("cupy-rocm-5-0", None)])
def test_cuda_major_from_the_wheel_name(name, major):
    assert cupy_cuda_major(name) == major


def test_parse_nvidia_smi_rows():
    assert parse_nvidia_smi("550.54.15, NVIDIA H100 80GB HBM3, 81559 MiB\n\n535.1, Tesla T4, 15360 MiB\n") == [
        {"driver": "550.54.15", "name": "NVIDIA H100 80GB HBM3", "memory": "81559 MiB"},
        {"driver": "535.1", "name": "Tesla T4", "memory": "15360 MiB"}]


def test_distribution_names_are_normalised():
    names = dict(doctor.probe_distributions())
    assert "numpy" in names and "pytest" in names
    assert all(n == n.lower() and "_" not in n for n in names)


# ------------------------------------------------------ the real machine
def test_real_machine_run_gives_every_finding(capsys):
    found = run_checks()
    assert [f.name for f in found] == NAMES
    assert all(f.status in doctor.STATUSES and f.message for f in found)
    assert main([]) in (0, 1)
    assert len(capsys.readouterr().out.splitlines()) == len(NAMES) + 1


@pytest.mark.parametrize("module", ["doctor.py", "estimators"])
def test_module_does_not_import_cupy(module):
    path = Path(xprop.__file__).with_name(module)
    files = sorted(path.glob("*.py")) if path.is_dir() else [path]
    assert files
    for file in files:
        tree = ast.parse(file.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "cupy"], file
