# Sourced by bench/*_build.sh and bench/gpu_check.sh: reuse a pinned ggml source distribution that is already on
# this machine, so that a scratch build downloads nothing.
#
# gmn_reuse_ggml_source ROOT DIR...: unless $GGML_MNIST_GGML_SOURCE is set, export it as the first of
# ROOT/build/*/_deps/NAME.tar.gz and DIR/NAME.tar.gz that exists, where NAME is the source distribution that
# ROOT/external/ggml.cmake pins (its SHA-256 is still checked by the build). Leaves it unset when none exists.
gmn_reuse_ggml_source() {
    local root="$1" name t; shift
    [ -z "${GGML_MNIST_GGML_SOURCE:-}" ] || return 0
    name="$(sed -n 's/^set(_gmn_sdist_name "\(.*\)")$/\1/p' "$root/external/ggml.cmake")"
    [ -n "$name" ] || { echo "ggml_source.sh: no _gmn_sdist_name in $root/external/ggml.cmake" >&2; return 1; }
    for t in "$root"/build/*/_deps/"$name".tar.gz; do
        if [ -f "$t" ]; then export GGML_MNIST_GGML_SOURCE="$t"; return 0; fi
    done
    for t in "$@"; do
        if [ -f "$t/$name.tar.gz" ]; then export GGML_MNIST_GGML_SOURCE="$t/$name.tar.gz"; return 0; fi
    done
}
