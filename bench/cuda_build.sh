#!/usr/bin/env bash
# Build ggml-mnist with ggml's CUDA backend on a machine that may have no GPU and no CUDA toolkit.
#
# The CUDA 13 toolkit comes from the package index (nvidia-cuda-nvcc, -runtime, -crt, -cccl, nvidia-cublas; they
# unpack under site-packages/nvidia/cu13/) into a scratch virtual environment; the package is built there as a wheel
# with CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=<arch> ...", installed and imported. Without a GPU the
# import must still work: gm.devices() lists the CPU only, device="auto" runs on the CPU and device="CUDA0" raises
# gm.DeviceError (bench/cuda_smoke.py checks all three and prints what it saw).
#
# usage: bench/cuda_build.sh [--venv DIR] [--build-dir DIR] [--wheel-dir DIR] [--arch LIST] [--jobs N]
#                            [--flash-attn] [--no-check] [--source DIR] [--runtime-wheels]
#   --venv DIR       scratch environment, reused (default ${TMPDIR:-/tmp}/ggml-mnist-cuda-venv; 1.1 GB of toolkit)
#   --build-dir DIR  CMake build directory outside the checkout, reused (default ${TMPDIR:-/tmp}/ggml-mnist-cuda-build)
#   --wheel-dir DIR  where the wheel is written (default <build-dir>/wheels), with the wheels it needs at run time
#                    (numpy, cffi, pycparser, pillow), for machines without a network (bench/gpu_check.sh --wheels)
#   --runtime-wheels also put nvidia-cuda-runtime and nvidia-cublas there (about 0.6 GB), for a GPU machine that
#                    has a driver for CUDA 13 but no CUDA 13 libraries
#   --arch LIST      CMAKE_CUDA_ARCHITECTURES (default 90: sm_90 code and PTX, for H100/H200; "80;90" adds A100)
#   --jobs N         parallel compile jobs (default: number of cores); every compile runs under nice -n 19
#   --flash-attn     also compile ggml's flash-attention kernels (no graph of ours uses FLASH_ATTN_EXT; off by
#                    default to shorten the compile)
#   --no-check       build and install only
#   --source DIR     build this source tree instead of the checkout around this script (for example a clean
#                    `git archive` of a commit while the working tree is mid-edit)
# The pinned ggml source is reused from $GGML_MNIST_GGML_SOURCE or build/dev/_deps/ when present (no download).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here"; venv=""; build_dir=""; wheel_dir=""; arch="90"; jobs="$(nproc 2>/dev/null || echo 2)"; fa="OFF"; check=1; runtime_wheels=0
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="$2"; shift 2 ;;
        --build-dir) build_dir="$2"; shift 2 ;;
        --wheel-dir) wheel_dir="$2"; shift 2 ;;
        --arch) arch="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --flash-attn) fa="ON"; shift ;;
        --no-check) check=0; shift ;;
        --runtime-wheels) runtime_wheels=1; shift ;;
        --source) src="$(cd "$2" && pwd)"; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "cuda_build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$venv" ] || venv="${TMPDIR:-/tmp}/ggml-mnist-cuda-venv"
venv="$(mkdir -p "$venv" && cd "$venv" && pwd)"
[ -n "$build_dir" ] || build_dir="${TMPDIR:-/tmp}/ggml-mnist-cuda-build"
build_dir="$(mkdir -p "$build_dir" && cd "$build_dir" && pwd)"
[ -n "$wheel_dir" ] || wheel_dir="$build_dir/wheels"
mkdir -p "$build_dir" "$wheel_dir"
case "$build_dir/" in "$src"/*) echo "cuda_build.sh: --build-dir must lie outside $src" >&2; exit 2 ;; esac

say() { printf '[cuda_build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---- 1. the toolkit, from the package index ------------------------------------------------------------------
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
say "installing the CUDA 13 toolkit and the build requirements into $venv"
"$py" -m pip install -q "nvidia-cuda-nvcc==13.*" "nvidia-cuda-runtime==13.*" "nvidia-cuda-crt==13.*" \
    "nvidia-cuda-cccl==13.*" "nvidia-cublas==13.*" "scikit-build-core>=0.10" "cffi>=1.17" "numpy>=1.24" "pillow>=10.1"
cu="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "cuda_build.sh: $cu/bin/nvcc not found after installing nvidia-cuda-nvcc" >&2; exit 1; }
# the wheels carry only the versioned names (libcudart.so.13); CMake's FindCUDAToolkit and the linker want libX.so
for f in "$cu"/lib/lib*.so.*; do
    base="${f##*/}"; plain="${base%%.so.*}.so"
    [ -e "$cu/lib/$plain" ] || ln -s "$base" "$cu/lib/$plain"
done
say "nvcc: $("$cu/bin/nvcc" --version | tail -n 2 | head -n 1)"

# ---- 2. the pinned ggml source, without a second download -----------------------------------------------------
# shellcheck source=bench/ggml_source.sh
. "$here/bench/ggml_source.sh"
gmn_reuse_ggml_source "$here" "$build_dir/_deps"
say "ggml source: ${GGML_MNIST_GGML_SOURCE:-download (external/ggml.cmake)}"

# ---- 3. the package, as a wheel, then installed ---------------------------------------------------------------
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DCMAKE_CUDA_COMPILER=$cu/bin/nvcc -DCUDAToolkit_ROOT=$cu -DGGML_CUDA_NO_VMM=ON -DGGML_CUDA_FA=$fa ${CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
log="$build_dir/build.log"
say "building (CMAKE_ARGS=$CMAKE_ARGS, $jobs jobs); log: $log"
rm -f "$wheel_dir"/ggml_mnist-*.whl
t0=$(date +%s)
if ! nice -n 19 "$py" -m pip wheel --no-build-isolation --no-deps -v "$src" -w "$wheel_dir" \
        --config-settings=build-dir="$build_dir" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "cuda_build.sh: the build failed; the whole log is $log" >&2
    exit 1
fi
t1=$(date +%s)
whl="$(ls "$wheel_dir"/ggml_mnist-*.whl)"
"$py" -m pip install -q --force-reinstall --no-deps "$whl"
say "built in $((t1 - t0)) s: $whl ($(du -h "$whl" | cut -f1))"
"$py" -m pip download -q --only-binary=:all: -d "$wheel_dir" "numpy>=1.24" "cffi>=1.17" "pillow>=10.1"
if [ "$runtime_wheels" = 1 ]; then
    pins="$("$py" -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("nvidia-cuda-runtime", "nvidia-cublas")))')"
    # shellcheck disable=SC2086  # two words, each a requirement
    "$py" -m pip download -q -d "$wheel_dir" $pins  # with their requirements (nvidia-cuda-nvrtc)
fi
say "wheel directory $wheel_dir: $(du -sh "$wheel_dir" | cut -f1) ($(find "$wheel_dir" -maxdepth 1 -name '*.whl' | wc -l) wheels)"
pkg="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/ggml_mnist"
say "installed: ggml_mnist $(du -sh "$pkg" | cut -f1) (libggml-cuda $(du -h "$pkg"/lib/libggml-cuda.so* | cut -f1)), CUDA toolkit $(du -sh "$cu" | cut -f1)"

# ---- 4. import it -----------------------------------------------------------------------------------------------
if [ "$check" = 1 ]; then
    "$py" "$here/bench/cuda_smoke.py"
fi
