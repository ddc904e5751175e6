# Locates the ggml that this project builds and runs against; never a copy of ggml.
#
# Default: the ggml installed by the pinned PyPI package ggml-python (see pyproject.toml), found
# through the Python interpreter that runs the build. Its shared libraries carry no SONAME, so they
# are linked by bare file name (-lggml) and found at run time through an RPATH relative to the
# installed module ($ORIGIN/../ggml/lib), never through a path into the temporary build environment.
#
# Override: set GGML_MNIST_GGML_PREFIX (CMake variable or environment variable) to the install
# prefix of another ggml, for example a ggml source checkout built and installed with
#   cmake -B build -DCMAKE_INSTALL_PREFIX=$HOME/ggml-install && cmake --build build && cmake --install build
# The module then keeps an absolute RPATH to <prefix>/lib.
#
# Results: GGML_MNIST_INCLUDE_DIR, GGML_MNIST_LIB_DIR, GGML_MNIST_RPATH.

if(NOT GGML_MNIST_GGML_PREFIX AND DEFINED ENV{GGML_MNIST_GGML_PREFIX})
    set(GGML_MNIST_GGML_PREFIX "$ENV{GGML_MNIST_GGML_PREFIX}")
endif()

if(GGML_MNIST_GGML_PREFIX)
    set(GGML_MNIST_INCLUDE_DIR "${GGML_MNIST_GGML_PREFIX}/include")
    if(EXISTS "${GGML_MNIST_GGML_PREFIX}/lib64/libggml.so")
        set(GGML_MNIST_LIB_DIR "${GGML_MNIST_GGML_PREFIX}/lib64")
    else()
        set(GGML_MNIST_LIB_DIR "${GGML_MNIST_GGML_PREFIX}/lib")
    endif()
    set(GGML_MNIST_RPATH "${GGML_MNIST_LIB_DIR}")
else()
    execute_process(
        COMMAND "${Python_EXECUTABLE}" -c
            "import importlib.util, pathlib; s = importlib.util.find_spec('ggml'); p = pathlib.Path(s.origin).parent; print(p); print(p.parent)"
        OUTPUT_VARIABLE _ggml_paths
        RESULT_VARIABLE _ggml_rc
        OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT _ggml_rc EQUAL 0)
        message(FATAL_ERROR "ggml-mnist: the Python package ggml-python is not installed in ${Python_EXECUTABLE}; "
                            "pip install ggml-python==0.0.45 or set GGML_MNIST_GGML_PREFIX")
    endif()
    string(REPLACE "\n" ";" _ggml_paths "${_ggml_paths}")
    list(GET _ggml_paths 0 _ggml_pkg)
    list(GET _ggml_paths 1 _ggml_site)
    set(GGML_MNIST_INCLUDE_DIR "${_ggml_site}/include")
    set(GGML_MNIST_LIB_DIR "${_ggml_pkg}/lib")
    set(GGML_MNIST_RPATH "$ORIGIN/../ggml/lib")
endif()

foreach(_f "${GGML_MNIST_INCLUDE_DIR}/ggml-opt.h" "${GGML_MNIST_INCLUDE_DIR}/gguf.h" "${GGML_MNIST_LIB_DIR}/libggml.so" "${GGML_MNIST_LIB_DIR}/libggml-base.so")
    if(NOT EXISTS "${_f}")
        message(FATAL_ERROR "ggml-mnist: ${_f} not found; ggml 0.15.3 (ggml-python==0.0.45) or a ggml install prefix with ggml-opt.h is required")
    endif()
endforeach()
message(STATUS "ggml-mnist: ggml headers in ${GGML_MNIST_INCLUDE_DIR}, libraries in ${GGML_MNIST_LIB_DIR}, rpath ${GGML_MNIST_RPATH}")
