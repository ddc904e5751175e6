#!/usr/bin/env bash
# Build ggml-mnist with ggml's BLAS backend (OpenBLAS) into a scratch virtual environment and check what its plan
# and training do there: an accelerator beside the CPU takes the matrix products, so the plan turns the shim's CPU
# kernels off and pads the products as ggml wants (bench/blas_check.py trains fc and cnn for one epoch on MNIST and
# prints each plan, accuracy and epoch time).
#
# usage: bench/blas_build.sh [--venv DIR] [--build-dir DIR] [--jobs N] [--no-check]
#   --venv DIR       scratch environment, reused (default ${TMPDIR:-/tmp}/ggml-mnist-blas-venv)
#   --build-dir DIR  CMake build directory outside the checkout, reused (default ${TMPDIR:-/tmp}/ggml-mnist-blas-build)
#   --jobs N         parallel compile jobs (default: number of cores); every compile runs under nice -n 19
#   --no-check       build and install only
# Needs OpenBLAS's headers and library: apt-get install libopenblas-dev. The pinned ggml source is reused from
# $GGML_MNIST_GGML_SOURCE or build/*/_deps/ when present (no download). MNIST for the check: $GGML_MNIST_DATA.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TMPDIR:-/tmp}/ggml-mnist-blas-venv"; build_dir="${TMPDIR:-/tmp}/ggml-mnist-blas-build"
jobs="$(nproc 2>/dev/null || echo 2)"; check=1
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --build-dir) build_dir="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --no-check) check=0; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "blas_build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$build_dir/" in "$here"/*) echo "blas_build.sh: --build-dir must lie outside $here" >&2; exit 2 ;; esac
say() { printf '[blas_build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
if [ ! -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] && [ ! -e /usr/include/openblas/cblas.h ] \
        && ! ls /usr/include/*/cblas.h /usr/include/cblas.h > /dev/null 2>&1; then
    echo "blas_build.sh: no cblas.h: apt-get install libopenblas-dev" >&2; exit 1
fi
mkdir -p "$venv" "$build_dir"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q "scikit-build-core>=0.10" "cffi>=1.17" "numpy>=1.24" "pillow>=10.1"
# shellcheck source=bench/ggml_source.sh
. "$here/bench/ggml_source.sh"
gmn_reuse_ggml_source "$here" "$build_dir/_deps"
export CMAKE_ARGS="-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS ${CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
log="$build_dir/build.log"
say "building (CMAKE_ARGS=$CMAKE_ARGS, $jobs jobs, ggml source ${GGML_MNIST_GGML_SOURCE:-downloaded}); log: $log"
t0=$(date +%s)
if ! nice -n 19 "$py" -m pip install --no-build-isolation --no-deps -v "$here" \
        --config-settings=build-dir="$build_dir" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "blas_build.sh: the build failed; the whole log is $log" >&2
    exit 1
fi
say "built and installed in $(( $(date +%s) - t0 )) s"
if [ "$check" = 1 ]; then
    (cd / && "$py" "$here/bench/blas_check.py")
fi
