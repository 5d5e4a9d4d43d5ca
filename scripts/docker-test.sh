#!/usr/bin/env bash
# Builds an xprop test image and runs the test suite in it.
#
#   scripts/docker-test.sh [gpu|cpu]      (default: gpu)
#
# gpu: docker/Dockerfile.gpu (CUDA 12 runtime + cupy-cuda12x), run with the
#      GPU handed over; its command is scripts/gpu-check.sh --full, which fails
#      when CuPy sees no device (XPROP_REQUIRE_GPU=1 turns GPU skips into failures).
# cpu: docker/Dockerfile.cpu, the suite with the GPU cases skipped.
#
# Before building it checks that a Docker engine answers and, for gpu, that
# Docker can hand a GPU to a container; then it probes CuPy inside the image.
# Each known failure is named with its fix (scripts/_gpu_diagnose.sh).
#
# Environment: DOCKER (the docker command), XPROP_IMAGE (image name, default
# xprop-test), XPROP_DOCKER_GPU_FLAGS (default --gpus all, or the CDI device
# when Docker only knows the GPU through CDI), XPROP_CUPY_CACHE_VOLUME (named
# volume for CuPy's kernel cache, default xprop-cupy-cache, shared with
# docker/compose.yaml).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_gpu_diagnose.sh
source "$here/_gpu_diagnose.sh"
cd "$here/.."

mode=${1:-gpu}
case $mode in
gpu | cpu) ;;
-h | --help)
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: scripts/docker-test.sh [gpu|cpu]" >&2
    exit 2
    ;;
esac

docker=${DOCKER:-docker}
image="${XPROP_IMAGE:-xprop-test}:$mode"
cache_volume=${XPROP_CUPY_CACHE_VOLUME:-xprop-cupy-cache}
cache_dir=/home/xprop/.cupy/kernel_cache

say() { printf 'docker-test: %s\n' "$*"; }

die_with() { # CODE [DETAIL]: explain a known failure and stop
    printf '\ndocker-test: FAILED\n' >&2
    if [[ -n ${2:-} ]]; then
        printf '%s\n' "$2" >&2
    fi
    xprop_explain "$1" docker >&2
    exit 1
}

die_from_output() { # WHAT OUTPUT: name the failure OUTPUT shows, or show OUTPUT
    local code
    code=$(xprop_classify "$2")
    if [[ -n $code ]]; then
        die_with "$code" "$1 failed:"$'\n'"$2"
    fi
    printf '\ndocker-test: FAILED: %s\n%s\n' "$1" "$2" >&2
    exit 1
}

# 1. a docker CLI, and an engine behind it
if ! command -v "$docker" >/dev/null 2>&1; then
    die_with no-docker-cli
fi
if ! info=$("$docker" info 2>&1); then
    die_from_output "docker info" "$info"
fi
say "Docker engine answers"

# 2. gpu: can Docker hand a GPU to a container?
gpu_flags=()
if [[ $mode == gpu ]]; then
    runtimes=$("$docker" info --format '{{json .Runtimes}}' 2>/dev/null || true)
    devices=$("$docker" info --format '{{json .DiscoveredDevices}}' 2>/dev/null || true)
    if [[ -n ${XPROP_DOCKER_GPU_FLAGS:-} ]]; then
        read -r -a gpu_flags <<<"$XPROP_DOCKER_GPU_FLAGS"
        say "GPU flags from XPROP_DOCKER_GPU_FLAGS: ${gpu_flags[*]}"
    elif [[ $runtimes == *nvidia* ]]; then
        gpu_flags=(--gpus all)
        say "NVIDIA runtime registered with Docker"
    elif [[ -z ${DOCKER_HOST:-} ]] && command -v nvidia-container-runtime-hook >/dev/null 2>&1; then
        gpu_flags=(--gpus all)
        say "NVIDIA Container Toolkit hook found (runtime not registered; --gpus uses the hook)"
    elif [[ $devices == *nvidia.com/gpu* ]]; then
        gpu_flags=(--device nvidia.com/gpu=all)
        say "NVIDIA GPUs known to Docker through CDI"
    else
        die_with no-toolkit "docker info shows no nvidia runtime (Runtimes: ${runtimes:-?}) and no CDI GPU device; set XPROP_DOCKER_GPU_FLAGS to skip this check"
    fi
fi

# 3. compose.yaml, where the compose plugin exists
if "$docker" compose version >/dev/null 2>&1; then
    if ! out=$("$docker" compose -f docker/compose.yaml config --quiet 2>&1); then
        printf '\ndocker-test: FAILED: docker/compose.yaml is not valid\n%s\n' "$out" >&2
        exit 1
    fi
    say "docker/compose.yaml is valid"
else
    say "no docker compose plugin; docker/compose.yaml not checked"
fi

# 4. build
say "building $image from docker/Dockerfile.$mode"
if ! "$docker" build -f "docker/Dockerfile.$mode" -t "$image" .; then
    printf '\ndocker-test: FAILED: docker build -f docker/Dockerfile.%s (output above)\n' "$mode" >&2
    exit 1
fi

# 5. gpu: does CuPy see a device inside the image?
if [[ $mode == gpu ]]; then
    say "probing CuPy inside $image"
    if ! probe=$("$docker" run --rm "${gpu_flags[@]}" "$image" bash scripts/_gpu_diagnose.sh probe 2>&1); then
        die_from_output "the CuPy probe in the container" "$probe"
    fi
    printf '%s\n' "$probe"
fi

# 6. the suite, with the image's own command
run=("$docker" run --rm)
if [[ $mode == gpu ]]; then
    run+=("${gpu_flags[@]}" -v "$cache_volume:$cache_dir")
fi
say "running: ${run[*]} $image"
rc=0
"${run[@]}" "$image" || rc=$?
if [[ $rc != 0 ]]; then
    printf '\ndocker-test: FAILED: the %s suite in %s exited %s (output above)\n' "$mode" "$image" "$rc" >&2
    exit "$rc"
fi
say "the $mode suite passed in $image"
