#!/usr/bin/env bash
# Checks that xprop can use the GPU of this machine, without Docker.
#
#   scripts/gpu-check.sh [--full] [--no-bench] [--probe-only]
#
# Steps: the NVIDIA driver (nvidia-smi), CuPy (import, device count, CUDA headers, one
# kernel), the GPU tests (XPROP_REQUIRE_GPU=1 python -m pytest -m gpu), with
# --full the rest of the suite, `python -m xprop check` (CPU and GPU numbers
# agree), and scripts/bench.py --backend cupy --quick when that script exists.
# A step that cannot mean anything after a failed one is skipped. Ends with one
# line per step (OK / FAIL / SKIP and why) and exits 1 if any step failed.
#
# Uses the Python on PATH as it is (PYTHON=... to pick another; no pip install),
# so it works with PYTHONPATH=. and a preinstalled CuPy. NVIDIA_SMI=... picks
# the nvidia-smi to run. This is also the default command of docker/Dockerfile.gpu.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_gpu_diagnose.sh
source "$here/_gpu_diagnose.sh"
cd "$here/.."

full=0
bench=1
probe_only=0
for arg in "$@"; do
    case $arg in
    --full) full=1 ;;
    --no-bench) bench=0 ;;
    --probe-only) probe_only=1 ;;
    -h | --help)
        sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "gpu-check: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

PYTHON=$(xprop_python)
nvidia_smi=${NVIDIA_SMI:-nvidia-smi}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

report=()
failed=0
record() { # STATUS STEP REASON
    report+=("$(printf '%-5s %-12s %s' "$1" "$2" "$3")")
    if [[ $1 == FAIL ]]; then
        failed=1
    fi
}

explain_one_line() { # CODE -> "code: what; fix: ..."
    local text
    text=$(xprop_explain "$1" bare)
    printf '%s\n' "${text/$'\n'  fix:/; fix:}"
}

step() { # NAME: print a header, like pytest's
    printf '\n=== gpu-check: %s ===\n' "$1"
}

# Runs a command with its output shown and kept in $logs/NAME; returns its status.
run_logged() { # NAME CMD...
    local name=$1
    shift
    set +e
    "$@" 2>&1 | tee "$logs/$name"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

last_line() { # FILE: the last non-empty line, without pytest's "=" framing
    grep -v '^[[:space:]]*$' "$1" | tail -n 1 | sed 's/^=* *//; s/ *=*$//'
}

# 1. driver
step driver
if ! command -v "$nvidia_smi" >/dev/null 2>&1; then
    echo "nvidia-smi: not found"
    record FAIL driver "nvidia-smi not found; $(explain_one_line no-driver)"
elif run_logged driver "$nvidia_smi" --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
    record OK driver "$(head -n 1 "$logs/driver")"
else
    code=$(xprop_classify "$(cat "$logs/driver")")
    record FAIL driver "nvidia-smi failed; $(explain_one_line "${code:-no-driver}")"
fi

# 2. CuPy
step cupy
gpu_ok=0
if run_logged cupy xprop_probe_python; then
    gpu_ok=1
    record OK cupy "$(grep '^XPROP-PROBE OK' "$logs/cupy" | sed 's/^XPROP-PROBE OK: //')"
else
    code=$(xprop_classify "$(cat "$logs/cupy")")
    if [[ -n $code ]]; then
        record FAIL cupy "$(explain_one_line "$code")"
    else
        record FAIL cupy "$(last_line "$logs/cupy")"
    fi
fi

# 3.-6. what needs a usable GPU
pytest_step() { # NAME MARKEXPR
    step "$1"
    local rc=0
    XPROP_REQUIRE_GPU=1 run_logged "$1" "$PYTHON" -m pytest -m "$2" || rc=$?
    case $rc in
    0) record OK "$1" "$(last_line "$logs/$1")" ;;
    5) record FAIL "$1" "no test selected by -m '$2'" ;;
    *) record FAIL "$1" "$(last_line "$logs/$1")" ;;
    esac
}

command_step() { # NAME CMD...
    local name=$1
    shift
    step "$name"
    if run_logged "$name" "$@"; then
        record OK "$name" "$*"
    else
        record FAIL "$name" "$* failed: $(last_line "$logs/$name")"
    fi
}

if [[ $probe_only == 1 ]]; then
    why="--probe-only"
elif [[ $gpu_ok == 0 ]]; then
    why="CuPy cannot use a GPU (see the cupy step)"
else
    why=""
fi

if [[ -n $why ]]; then
    record SKIP gpu-tests "$why"
else
    pytest_step gpu-tests gpu
fi
if [[ $full == 0 ]]; then
    record SKIP other-tests "only with --full"
elif [[ -n $why ]]; then
    record SKIP other-tests "$why"
else
    pytest_step other-tests "not gpu"
fi
if [[ -n $why ]]; then
    record SKIP check "$why"
else
    command_step check "$PYTHON" -m xprop check
fi
if [[ $bench == 0 ]]; then
    record SKIP bench "--no-bench"
elif [[ ! -f scripts/bench.py ]]; then
    record SKIP bench "scripts/bench.py not present"
elif [[ -n $why ]]; then
    record SKIP bench "$why"
else
    command_step bench "$PYTHON" scripts/bench.py --backend cupy --quick
fi

printf '\n=== gpu-check report ===\n'
printf '%s\n' "${report[@]}"
if [[ $failed == 1 ]]; then
    echo "gpu-check: FAILED"
    exit 1
fi
echo "gpu-check: all steps OK or skipped"
