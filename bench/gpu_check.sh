#!/usr/bin/env bash
# One command for a machine with a GPU: get a CUDA build of ggml-mnist, train fc, cnn and best on CUDA0 for a few
# epochs, evaluate, compare the test accuracy with the same seeded run on the CPU, time epochs against PyTorch on
# CUDA (skipped, with the reason, where torch is missing or sees no GPU) and print one JSON summary
# (bench/gpu_check.py). Meant to finish within about 8 minutes on an H100 (--deadline); needs no network.
#
# usage: bench/gpu_check.sh [--wheels DIR] [--python PY] [--venv DIR] [--device CUDA0|cpu] [--data DIR]
#                           [--epochs fc=3,cnn=3,best=2] [--limit N] [--deadline S] [--out FILE] [--no-build]
#   --wheels DIR   install ggml-mnist from a wheel in DIR (bench/cuda_build.sh --wheel-dir writes one), with any
#                  other wheels there (numpy, cffi, pillow, nvidia-cuda-runtime, nvidia-cublas, ...), offline
#   --python PY    the interpreter whose packages the environment sees (default python3); with --no-build, the one
#                  that already has ggml-mnist installed and is used as it is
#   --venv DIR     the environment for the build (default build/gpu-check-venv in this checkout, which git
#                  ignores; made with --system-site-packages so that a preinstalled torch and numpy are seen);
#                  reused when it already holds a build of the same sources
#   --device D     the device under test (default CUDA0); "cpu" is a smoke mode for a machine without a GPU
#   --data DIR     MNIST (default $GGML_MNIST_DATA, else ../shared/data/mnist or data/mnist)
#   --deadline S   seconds for the whole command, build included (default 480); the runs get what is left
#   --no-build     use --python as it is (its ggml-mnist must import)
#   Anything after -- goes to bench/gpu_check.py (e.g. -- --no-torch --tolerance 1.0).
# Without --wheels the package is built from this checkout when nvcc is found (PATH, $CUDA_HOME, /usr/local/cuda),
# for the GPU's own architecture (nvidia-smi's compute_cap), with ggml's pinned source from
# $GGML_MNIST_GGML_SOURCE or build/*/_deps/ (bench/ggml_source.sh; no download). The build needs scikit-build-core
# and cffi importable by --python, or as wheels in --wheels.
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheels=""; python="${PYTHON:-python3}"; venv="$here/build/gpu-check-venv"; device="CUDA0"; data=""
epochs="fc=3,cnn=3,best=2"; limit=0; deadline=480; out=""; build=1; extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels="$(cd "$2" && pwd)"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --venv) venv="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --limit) limit="$2"; shift 2 ;;
        --deadline) deadline="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
say() { printf '[gpu_check %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - t_start ))" "$*" >&2; }
die() { echo "gpu_check.sh: $*" >&2; exit 1; }
command -v "$python" >/dev/null || die "no Python interpreter '$python' (give --python)"

want_cuda=1
[ "$(printf '%s' "$device" | tr '[:upper:]' '[:lower:]')" = cpu ] && want_cuda=0
if [ "$want_cuda" = 1 ] && command -v nvidia-smi >/dev/null; then
    say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | head -n 1)"
elif [ "$want_cuda" = 1 ]; then
    say "nvidia-smi not found: is there a GPU and its driver here?"
fi

# Does PY import a ggml-mnist that runs on the device under test? (prints its build_info on success)
usable() {
    "$1" - "$want_cuda" <<'EOF' 2>/dev/null
import sys, ggml_mnist as gm
if sys.argv[1] == "1" and "ggml-cuda" not in gm.build_info.get("backends", []):
    sys.exit(1)
print(gm.build_info)
EOF
}

# ---- 1. an environment with a CUDA build ------------------------------------------------------------------------
if [ "$build" = 0 ]; then
    py="$python"
    usable "$py" >/dev/null || die "--no-build: $py has no usable ggml-mnist$([ "$want_cuda" = 1 ] && echo ' built with CUDA')"
else
    [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv" \
        || die "could not make a virtual environment with $python (Debian: apt-get install python3-venv), or use --no-build"
    py="$venv/bin/python"
    stamp="$venv/.ggml-mnist-build"  # which checkout the environment's build came from
    src_id="$(cd "$here" && { git rev-parse HEAD 2>/dev/null; git status --porcelain -- src CMakeLists.txt external 2>/dev/null; } | cksum)"
    if [ -n "$wheels" ]; then
        whl=""
        for w in "$wheels"/ggml_mnist-*.whl; do [ -f "$w" ] && whl="$w"; done
        [ -n "$whl" ] || die "--wheels $wheels holds no ggml_mnist-*.whl (bench/cuda_build.sh --wheel-dir writes one)"
        others=()
        for w in "$wheels"/*.whl; do case "${w##*/}" in ggml_mnist-*) ;; *) others+=("$w") ;; esac; done
        say "installing $whl offline (with ${#others[@]} other wheel(s) from $wheels)"
        "$py" -m pip install -q --no-index --find-links "$wheels" --force-reinstall --no-deps "$whl"
        "$py" -m pip install -q --no-index --find-links "$wheels" "$whl" ${others[@]+"${others[@]}"} \
            || die "could not install from $wheels offline: a requirement above is neither installed nor there"
    elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$src_id" ] && usable "$py" >/dev/null; then
        say "reusing the build in $venv"
    else
        nvcc="$(command -v nvcc || true)"
        for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
            [ -z "$nvcc" ] && [ -n "$c" ] && [ -x "$c/bin/nvcc" ] && nvcc="$c/bin/nvcc"
        done
        if [ "$want_cuda" = 1 ] && [ -z "$nvcc" ]; then
            die "no nvcc here (PATH, \$CUDA_HOME, /usr/local/cuda): install the CUDA toolkit, or build a wheel where \
there is a network (bench/cuda_build.sh --wheel-dir DIR) and pass --wheels DIR"
        fi
        "$py" -c 'import scikit_build_core, cffi' 2>/dev/null || "$py" -m pip install -q ${wheels:+--no-index --find-links "$wheels"} \
            "scikit-build-core>=0.10" "cffi>=1.17" || die "scikit-build-core and cffi are needed to build (no network?)"
        if ! command -v cmake >/dev/null || ! cmake -P /dev/stdin <<<'cmake_minimum_required(VERSION 3.21)' 2>/dev/null; then
            "$py" -m pip install -q ${wheels:+--no-index --find-links "$wheels"} "cmake>=3.21" "ninja" \
                || die "CMake >= 3.21 is needed to build (no network? install it, or put its wheel in --wheels)"
        fi
        # shellcheck source=bench/ggml_source.sh
        . "$here/bench/ggml_source.sh"
        gmn_reuse_ggml_source "$here" "$here/../shared"
        args="-DGGML_CUDA_FA=OFF"
        if [ "$want_cuda" = 1 ]; then
            cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
            args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${cap:-native} -DCMAKE_CUDA_COMPILER=$nvcc $args"
        fi
        export CMAKE_ARGS="$args ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
        log="$venv/build.log"
        say "building with CMAKE_ARGS=$CMAKE_ARGS, ggml from ${GGML_MNIST_GGML_SOURCE:-download}; log: $log"
        t0=$(date +%s)
        if ! "$py" -m pip install --no-build-isolation --no-deps --force-reinstall -v "$here" \
                --config-settings=build-dir="$venv/build" >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            die "the build failed (log: $log)"
        fi
        "$py" -c 'import numpy, PIL' 2>/dev/null || "$py" -m pip install -q ${wheels:+--no-index --find-links "$wheels"} \
            "numpy>=1.24" "pillow>=10.1" || die "numpy and pillow are needed (no network? pass --wheels with them)"
        echo "$src_id" >"$stamp"
        say "built in $(( $(date +%s) - t0 )) s"
    fi
fi
# CUDA libraries that pip packages put in the interpreter's site-packages (torch's nvidia-* requirements, for one)
cuda_libs="$("$py" -c 'import os, sys
dirs = [os.path.join(p, "nvidia", s, "lib") for p in sys.path for s in ("cu13", "cu12", "cuda_runtime", "cublas")]
print(":".join(d for d in dirs if os.path.isdir(d)))' 2>/dev/null || true)"
[ -n "$cuda_libs" ] && export LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
info="$(usable "$py")" || {
    "$py" -c 'import ggml_mnist' || true
    if [ "$want_cuda" = 1 ]; then
        lib="$("$py" -c 'import ggml_mnist, os; print(os.path.dirname(ggml_mnist.__file__))' 2>/dev/null)/lib"
        ls "$lib"/libggml-cuda.so* >/dev/null 2>&1 && ldd "$lib"/libggml-cuda.so* | grep 'not found' >&2
    fi
    die "$py cannot use ggml-mnist on $device (see above)"
}
say "ggml-mnist: $info"
# ggml's own log says why a GPU is missing (driver, runtime, visibility); stop here rather than train without it
"$py" - "$device" <<'EOF' || die "ggml sees no device '$device' (its log is above); gm.devices() lists what it sees"
import logging, sys, ggml_mnist as gm
gm.set_verbose(True, logging.WARNING)
names = [d.name for d in gm.devices()]
print("gm.devices():", ", ".join(f"{d.name} ({d.description})" for d in gm.devices()), file=sys.stderr)
sys.exit(0 if sys.argv[1].lower() in [n.lower() for n in names] + ["cpu"] else 1)
EOF

# ---- 2. the runs ------------------------------------------------------------------------------------------------
left=$(( deadline - ($(date +%s) - t_start) - 15 ))
[ "$left" -ge 60 ] || die "only ${left} s of the ${deadline} s deadline left after the build; raise --deadline"
say "training with a budget of $left s"
set -- --device "$device" --epochs "$epochs" --limit "$limit" --budget "$left"
[ -n "$data" ] && set -- "$@" --data "$data"
[ -n "$out" ] && set -- "$@" --out "$out"
exec "$py" "$here/bench/gpu_check.py" "$@" ${extra[@]+"${extra[@]}"}
