#!/usr/bin/env bash
# GPU diagnosis shared by scripts/gpu-check.sh (bare machine) and
# scripts/docker-test.sh (container): one list of failure modes, one way of
# recognising each from the text a command printed, one fix message for each.
#
# Source it for the functions:
#   xprop_classify TEXT             prints the code of the first failure TEXT shows (or nothing)
#   xprop_explain CODE [CONTEXT]    prints "CODE: what it means" and "  fix: what to do";
#                                   CONTEXT is "bare" (default) or "docker"
#   xprop_diagnose TEXT [CONTEXT]   both; returns 1 when TEXT shows no known failure
#   xprop_probe_python              runs the CuPy probe below; exit status 0 = a GPU is usable
# or run it:
#   bash scripts/_gpu_diagnose.sh probe    nvidia-smi -L, then the CuPy probe (used inside the image)

xprop_codes() {
    # Every code xprop_explain knows: what xprop_classify prints, and no-docker-cli.
    printf '%s\n' no-docker-cli no-engine docker-permission no-toolkit image-needs-newer-driver \
        driver-mismatch two-cupy cupy-missing insufficient-driver no-driver libcuda-missing \
        no-device cuda-libs-missing cuda-headers-missing cache-readonly
}

# The probe: which CuPy distributions are installed, whether CuPy imports, the
# CUDA runtime/driver versions, the device count, whether the kernel cache is
# writable, where CuPy finds the CUDA headers, and one elementwise kernel
# (compiled by NVRTC, so it also catches missing CUDA libraries, missing CUDA
# headers: CuPy 14 needs cuda_runtime.h for every kernel, and an unwritable cache). The last line is
# "XPROP-PROBE OK ..." or "XPROP-PROBE FAIL <what>: <message>".
XPROP_PROBE_PY=$(
    cat <<'PY'
import os
import re
import sys
from importlib import metadata


def fail(what, message):
    print(f"XPROP-PROBE FAIL {what}: {message}", flush=True)
    sys.exit(1)


def cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


wheel = re.compile(r"^cupy(-cuda\d+x?|-rocm-[\d-]+)?$")
dists = {}
for dist in metadata.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if wheel.match(name):
        dists.setdefault(name, dist.version)
print("cupy-dists:", ", ".join(f"{n}=={v}" for n, v in sorted(dists.items())) or "none", flush=True)
if len(dists) > 1:
    fail("two-cupy", "more than one CuPy distribution is installed: " + ", ".join(sorted(dists)))

try:
    import cupy
except Exception as exc:  # ImportError, or whatever a broken install raises
    fail("import", f"{type(exc).__name__}: {exc}")
print("cupy:", cupy.__version__, flush=True)

try:
    runtime = cupy.cuda.runtime
    print("cuda-runtime:", cuda_version(runtime.runtimeGetVersion()), flush=True)
    print("cuda-driver:", cuda_version(runtime.driverGetVersion()), flush=True)
    n_devices = runtime.getDeviceCount()
except Exception as exc:
    fail("device", f"{type(exc).__name__}: {exc}")
print("devices:", n_devices, flush=True)
if n_devices < 1:
    fail("no-device", "CuPy counts 0 CUDA devices")
props = runtime.getDeviceProperties(0)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
print(f"device0: {name} (compute capability {props['major']}.{props['minor']})", flush=True)

cache = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
existing = cache
while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
if not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
    fail("cache-readonly", f"kernel cache {cache} cannot be written ({existing} is not a writable directory for uid {os.getuid()})")
print("kernel-cache:", cache, flush=True)

try:  # CuPy 14 looks for the CUDA headers this way (cupy._core.core, NVRTC options)
    from cuda.pathfinder import find_nvidia_header_directory
except ImportError:
    pass
else:
    try:
        headers = find_nvidia_header_directory("cudart")
    except Exception as exc:  # report, and let the kernel below say what it means
        headers = f"unknown ({type(exc).__name__}: {exc})"
    print("cuda-headers:", headers or "none found", flush=True)

try:
    x = cupy.arange(4, dtype=cupy.float32)
    total = float((x * 2 + 1).sum())  # 1 + 3 + 5 + 7
except Exception as exc:
    if "Failed to find CUDA headers" in str(exc):
        fail("cuda-headers", f"{type(exc).__name__}: {exc}")
    fail("kernel", f"{type(exc).__name__}: {exc}")
if total != 16.0:
    fail("kernel", f"(arange(4) * 2 + 1).sum() gave {total}, expected 16")
print(f"XPROP-PROBE OK: {n_devices} device(s), {name}, CuPy {cupy.__version__}", flush=True)
PY
)

xprop_python() {
    # The interpreter to use: $PYTHON, else python, else python3.
    if [[ -n "${PYTHON:-}" ]]; then
        printf '%s\n' "$PYTHON"
    elif command -v python >/dev/null 2>&1; then
        printf 'python\n'
    else
        printf 'python3\n'
    fi
}

xprop_probe_python() {
    "$(xprop_python)" -c "$XPROP_PROBE_PY" 2>&1
}

_xprop_has() {
    grep -qiE -- "$1" <<<"$_xprop_text"
}

xprop_classify() {
    local _xprop_text=$1
    if _xprop_has 'XPROP-PROBE FAIL two-cupy|multiple CuPy packages'; then
        echo two-cupy
    elif _xprop_has 'permission denied.*docker|docker\.sock.*permission denied'; then
        echo docker-permission
    elif _xprop_has 'cannot connect to the docker daemon|is the docker daemon running|error during connect'; then
        echo no-engine
    elif _xprop_has 'could not select device driver|unknown or invalid runtime name: nvidia|unresolvable CDI devices'; then
        echo no-toolkit
    elif _xprop_has 'unsatisfied condition: cuda'; then
        echo image-needs-newer-driver
    elif _xprop_has 'driver/library version mismatch|cudaErrorSystemDriverMismatch'; then
        echo driver-mismatch
    elif _xprop_has "no module named ['\"]?cupy['\"]?([^_.a-z]|$)"; then
        echo cupy-missing
    elif _xprop_has "nvidia-container-cli: initialization error|couldn't communicate with the nvidia driver|nvidia-smi: (command )?not found"; then
        echo no-driver
    elif _xprop_has 'libcuda\.so|^cuda-driver: 0\.0$'; then
        # A driver version of 0 means no libcuda at all; CuPy then reports it
        # as cudaErrorInsufficientDriver, which would send the reader the wrong way.
        echo libcuda-missing
    elif _xprop_has 'cudaErrorInsufficientDriver|driver version is insufficient'; then
        echo insufficient-driver
    elif _xprop_has 'XPROP-PROBE FAIL no-device|cudaErrorNoDevice|no CUDA-capable device|No devices were found'; then
        echo no-device
    elif _xprop_has 'XPROP-PROBE FAIL cuda-headers|Failed to find CUDA headers'; then
        echo cuda-headers-missing
    elif _xprop_has 'lib(nvrtc|cublas|cublasLt|cufft|curand|cusolver|cusparse|cudart|nvJitLink)[^ ]*\.so'; then
        echo cuda-libs-missing
    elif _xprop_has 'XPROP-PROBE FAIL cache-readonly|read-only file system|permission denied.*(cupy|kernel_cache)'; then
        echo cache-readonly
    fi
}

xprop_explain() {
    local code=$1 context=${2:-bare} what fix
    case $code in
    no-docker-cli)
        what="the docker command is not installed (or not on PATH)"
        fix="install Docker Engine (https://docs.docker.com/engine/install/), or test without Docker: scripts/gpu-check.sh" ;;
    no-engine)
        what="no Docker engine: the docker CLI is here but no daemon answers (not installed, not running, or DOCKER_HOST points nowhere)"
        fix="start it (sudo systemctl start docker) or install Docker Engine; without Docker use scripts/gpu-check.sh" ;;
    docker-permission)
        what="the Docker daemon runs but this user may not use its socket"
        fix="sudo usermod -aG docker \"\$USER\" and log in again (or run this script with sudo)" ;;
    no-toolkit)
        what="Docker cannot hand a GPU to a container: the NVIDIA Container Toolkit is not installed or not configured for Docker"
        fix="install nvidia-container-toolkit, then: sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker" ;;
    image-needs-newer-driver)
        what="the host driver is older than the CUDA version of the image (NVIDIA_REQUIRE_CUDA of nvidia/cuda:12.x)"
        fix="upgrade the NVIDIA driver (nvidia-smi shows the newest CUDA it supports), or change both FROM lines of docker/Dockerfile.gpu to an older nvidia/cuda:12.x runtime tag" ;;
    driver-mismatch)
        what="the loaded NVIDIA kernel module and the driver libraries have different versions (usually a driver upgrade without reboot)"
        fix="reboot, or unload and reload the nvidia kernel modules" ;;
    two-cupy)
        what="more than one CuPy wheel is installed (e.g. cupy-cuda12x and cupy-cuda13x); they overwrite each other's files"
        fix="pip uninstall every cupy* package listed, then install one: pip install \"xprop[gpu]\" (CUDA 12 driver) or \"xprop[cuda13]\"" ;;
    cupy-missing)
        what="CuPy is not installed for this Python"
        fix="pip install \"xprop[gpu]\" (CUDA 12 driver) or \"xprop[cuda13]\" (CUDA 13 driver)" ;;
    insufficient-driver)
        what="cudaErrorInsufficientDriver: the NVIDIA driver is older than the CUDA version the CuPy wheel was built for (cupy-cuda12x needs a CUDA 12 driver, >= 525; cupy-cuda13x a CUDA 13 driver, >= 580)"
        fix="upgrade the driver, or install the CuPy wheel that matches it (the 'CUDA Version' in nvidia-smi is the newest the driver supports): pip install \"xprop[cuda12]\"" ;;
    no-driver)
        what="no working NVIDIA driver: nvidia-smi is missing or cannot talk to the kernel module"
        fix="install the NVIDIA driver (Ubuntu: sudo ubuntu-drivers install), reboot, and check that nvidia-smi lists the GPU" ;;
    libcuda-missing)
        if [[ $context == docker ]]; then
            what="the container has no CUDA driver library (libcuda.so.1): no GPU was handed over, or it was handed over without the compute capability (then nvidia-smi works while CUDA cannot)"
            fix="run with NVIDIA_DRIVER_CAPABILITIES=compute,utility (the image sets it; check that docker run -e or compose does not override it) and --gpus all"
        else
            what="libcuda.so.1, the CUDA library of the NVIDIA driver, cannot be loaded (CUDA reports driver version 0): no driver installed, or its libraries are not on the loader path"
            fix="install the NVIDIA driver (Ubuntu: sudo ubuntu-drivers install) and reboot; on WSL2 add /usr/lib/wsl/lib to LD_LIBRARY_PATH"
        fi ;;
    no-device)
        what="CUDA works but sees no GPU"
        if [[ $context == docker ]]; then
            fix="run the container with --gpus all (compose: deploy.resources.reservations.devices); NVIDIA_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES must not be empty or 'none'"
        else
            fix="check nvidia-smi -L lists a GPU and that CUDA_VISIBLE_DEVICES is unset or names one"
        fi ;;
    cuda-libs-missing)
        what="CuPy imports but CUDA toolkit libraries (NVRTC, cuBLAS, ...) cannot be loaded"
        fix="use an nvidia/cuda *runtime* image (not base), install the CUDA toolkit, or install the CUDA library wheels CuPy's installation guide lists" ;;
    cuda-headers-missing)
        what="CuPy imports and sees the GPU but cannot compile any kernel: CuPy 14 compiles every kernel with NVRTC against the CUDA runtime headers (cuda_runtime.h), and finds none (no [ctk] wheels, no CUDA toolkit, CUDA_PATH unset)"
        fix="pip install \"cupy-cuda12x[ctk]\" (or cupy-cuda13x[ctk], as your wheel; xprop's gpu/cuda12/cuda13 extras bring it), or use an nvidia/cuda *-devel* image or a CUDA toolkit and set CUDA_PATH" ;;
    cache-readonly)
        what="CuPy cannot write its kernel cache (CUPY_CACHE_DIR, default ~/.cupy/kernel_cache): read-only file system or wrong owner"
        fix="export CUPY_CACHE_DIR=<a writable directory>; in Docker mount a volume there (docker/compose.yaml does) owned by the container user (UID 1000)" ;;
    *)
        what="unknown failure code '$code'"
        fix="read the output above" ;;
    esac
    printf '%s: %s\n  fix: %s\n' "$code" "$what" "$fix"
}

xprop_diagnose() {
    local code
    code=$(xprop_classify "$1")
    if [[ -z $code ]]; then
        return 1
    fi
    xprop_explain "$code" "${2:-bare}"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case ${1:-} in
    probe)
        if command -v "${NVIDIA_SMI:-nvidia-smi}" >/dev/null 2>&1; then
            "${NVIDIA_SMI:-nvidia-smi}" -L 2>&1 || true
        else
            echo "nvidia-smi: absent (no driver, or the utility capability was not granted)"
        fi
        xprop_probe_python
        ;;
    *)
        echo "usage: bash scripts/_gpu_diagnose.sh probe   (or source it for its functions)" >&2
        exit 2
        ;;
    esac
fi
