# Provides the ggml that this project builds and runs against; never a copy of ggml.
#
# The pin (one place): ggml 0.15.3, as carried by the source distribution of the PyPI package
# ggml-python 0.0.45 (in vendor/ggml), identified by the SHA-256 of that tarball.
#
# Default route ("sdist"): download that tarball into the build directory (reused by later builds
# in the same directory), check its hash, unpack vendor/ggml and build it here with add_subdirectory,
# with our options: GGML_LLAMAFILE=ON (llamafile's sgemm for F32 products), -fno-math-errno for ggml's
# C and C++ (lets the compiler vectorise the AdamW step), GGML_NATIVE=ON, OpenMP, shared libraries,
# CPU backend linked directly (no GGML_BACKEND_DL). Each option can be overridden with
# -D..., for example CMAKE_ARGS="-DGGML_CUDA=on" pip install . for a CUDA build.
# The libraries are installed as ggml_mnist/lib/libggml*.so.0 (one file each, named by its SONAME),
# with RUNPATH $ORIGIN, and the module finds them through RUNPATH $ORIGIN/lib.
#
# Mirror: GGML_MNIST_GGML_URL (CMake variable) downloads the same tarball from elsewhere; the hash is checked.
# Offline: GGML_MNIST_GGML_SOURCE (CMake or environment variable) names a local copy of that tarball
# (hash-checked as well, route "sdist") or an unpacked ggml source directory, either the sdist's root
# or a ggml checkout (route "source-dir", not hash-checked).
#
# Prebuilt ggml (route "prefix"): GGML_MNIST_GGML_PREFIX (CMake or environment variable) names the
# install prefix of a ggml with ggml-opt.h, for example a ggml checkout built and installed with
#   cmake -B build -DCMAKE_INSTALL_PREFIX=$HOME/ggml-install && cmake --build build && cmake --install build
# Nothing of ggml is built then; the module links -lggml -lggml-base from <prefix>/lib by bare name
# (libraries without SONAME would otherwise be recorded by path) and keeps an absolute RPATH to it.
#
# Results: the interface target gmn_ggml (headers + libraries), GGML_MNIST_RPATH (the module's
# INSTALL_RPATH), GGML_MNIST_BUILD_RPATH (extra RPATH for uninstalled executables, may be empty),
# GGML_MNIST_GGML_ROUTE and the _gmn_py_* values written to ggml_mnist/_build_info.py (as Python literals).

set(GGML_MNIST_GGML_VERSION "0.15.3")
set(_gmn_sdist_name "ggml_python-0.0.45")
set(GGML_MNIST_GGML_URL "https://files.pythonhosted.org/packages/0f/0e/ef343189f9e31b651e57770d04a0e5fc64795d3ee9e8f46fe0fc5e0aa8e0/${_gmn_sdist_name}.tar.gz"
    CACHE STRING "ggml-mnist: where to download ${_gmn_sdist_name}.tar.gz (e.g. a PyPI mirror); its SHA-256 is checked")
set(_gmn_sdist_url "${GGML_MNIST_GGML_URL}")
set(_gmn_sdist_sha256 "10aac52075cf3c7ef2b00d6c35b1c23f7b018dbeff8ae8df67339b4be1166f05")

foreach(_v GGML_MNIST_GGML_PREFIX GGML_MNIST_GGML_SOURCE)
    if(NOT ${_v} AND DEFINED ENV{${_v}})
        set(${_v} "$ENV{${_v}}")
    endif()
endforeach()

add_library(gmn_ggml INTERFACE)

if(GGML_MNIST_GGML_PREFIX)
    set(_inc "${GGML_MNIST_GGML_PREFIX}/include")
    if(EXISTS "${GGML_MNIST_GGML_PREFIX}/lib64/libggml.so")
        set(_lib "${GGML_MNIST_GGML_PREFIX}/lib64")
    else()
        set(_lib "${GGML_MNIST_GGML_PREFIX}/lib")
    endif()
    foreach(_f "${_inc}/ggml-opt.h" "${_inc}/gguf.h" "${_lib}/libggml.so" "${_lib}/libggml-base.so")
        if(NOT EXISTS "${_f}")
            message(FATAL_ERROR "ggml-mnist: ${_f} not found; GGML_MNIST_GGML_PREFIX must name the install prefix "
                                "of ggml ${GGML_MNIST_GGML_VERSION} (with ggml-opt.h), or unset it to build the pinned ggml")
        endif()
    endforeach()
    target_include_directories(gmn_ggml INTERFACE "${_inc}")
    target_link_directories(gmn_ggml INTERFACE "${_lib}")
    target_link_libraries(gmn_ggml INTERFACE -lggml -lggml-base -lggml-cpu)
    set(GGML_MNIST_RPATH "${_lib}")
    set(GGML_MNIST_BUILD_RPATH "${_lib}")
    set(GGML_MNIST_GGML_ROUTE "prefix")
    foreach(_k native llamafile openmp no_math_errno backends)
        set(_gmn_py_${_k} None)
    endforeach()
    message(STATUS "ggml-mnist: ggml from the prefix ${GGML_MNIST_GGML_PREFIX} (headers ${_inc}, libraries ${_lib})")
    return()
endif()

# ---- locate or fetch the ggml source -----------------------------------------------------------
set(_deps "${CMAKE_BINARY_DIR}/_deps")

function(_gmn_check_sdist tarball)
    file(SHA256 "${tarball}" _got)
    if(NOT _got STREQUAL _gmn_sdist_sha256)
        message(FATAL_ERROR "ggml-mnist: ${tarball} has SHA-256 ${_got}, not ${_gmn_sdist_sha256}: it is not "
                            "${_gmn_sdist_name}.tar.gz. Delete it and build again to download it, or get the right "
                            "file from ${_gmn_sdist_url} and set GGML_MNIST_GGML_SOURCE to its path.")
    endif()
endfunction()

set(_tarball "")
if(GGML_MNIST_GGML_SOURCE)
    get_filename_component(_src "${GGML_MNIST_GGML_SOURCE}" ABSOLUTE)
    if(IS_DIRECTORY "${_src}/vendor/ggml")
        set(_ggml_dir "${_src}/vendor/ggml")
    elseif(IS_DIRECTORY "${_src}")
        set(_ggml_dir "${_src}")
    elseif(EXISTS "${_src}")
        set(_tarball "${_src}")
    else()
        message(FATAL_ERROR "ggml-mnist: GGML_MNIST_GGML_SOURCE=${GGML_MNIST_GGML_SOURCE} does not exist; set it to "
                            "${_gmn_sdist_name}.tar.gz (from ${_gmn_sdist_url}) or an unpacked ggml source directory")
    endif()
    set(GGML_MNIST_GGML_ROUTE "source-dir")
else()
    set(_tarball "${_deps}/${_gmn_sdist_name}.tar.gz")
    if(NOT EXISTS "${_tarball}")
        message(STATUS "ggml-mnist: downloading ${_gmn_sdist_url}")
        file(DOWNLOAD "${_gmn_sdist_url}" "${_tarball}.part" STATUS _status TIMEOUT 300)
        list(GET _status 0 _code)
        if(NOT _code EQUAL 0)
            list(GET _status 1 _why)
            file(REMOVE "${_tarball}.part")
            message(FATAL_ERROR "ggml-mnist: could not download ggml's source (${_gmn_sdist_url}): ${_why}. Without "
                                "network access, fetch that file elsewhere and set GGML_MNIST_GGML_SOURCE=/path/to/"
                                "${_gmn_sdist_name}.tar.gz, or set GGML_MNIST_GGML_PREFIX to an installed ggml.")
        endif()
        _gmn_check_sdist("${_tarball}.part")
        file(RENAME "${_tarball}.part" "${_tarball}")
    endif()
endif()

if(_tarball)
    _gmn_check_sdist("${_tarball}")
    set(_ggml_dir "${_deps}/${_gmn_sdist_name}/vendor/ggml")
    if(NOT EXISTS "${_deps}/${_gmn_sdist_name}.unpacked")
        file(REMOVE_RECURSE "${_deps}/${_gmn_sdist_name}")
        file(ARCHIVE_EXTRACT INPUT "${_tarball}" DESTINATION "${_deps}" PATTERNS "${_gmn_sdist_name}/vendor/ggml")
        file(TOUCH "${_deps}/${_gmn_sdist_name}.unpacked")
    endif()
    set(GGML_MNIST_GGML_ROUTE "sdist")
endif()

if(NOT EXISTS "${_ggml_dir}/CMakeLists.txt" OR NOT EXISTS "${_ggml_dir}/include/ggml-opt.h")
    message(FATAL_ERROR "ggml-mnist: ${_ggml_dir} is not a ggml source directory with include/ggml-opt.h")
endif()

# ---- build it with our options ------------------------------------------------------------------
set(BUILD_SHARED_LIBS ON CACHE BOOL "ggml-mnist: ggml as shared libraries")
set(GGML_NATIVE ON CACHE BOOL "ggml: optimize the build for the current system")
set(GGML_LLAMAFILE ON CACHE BOOL "ggml: use LLAMAFILE")
set(GGML_OPENMP ON CACHE BOOL "ggml: use OpenMP")
set(GGML_BACKEND_DL OFF CACHE BOOL "ggml: build backends as dynamic libraries")
if(GGML_BACKEND_DL OR NOT BUILD_SHARED_LIBS)
    message(FATAL_ERROR "ggml-mnist: build ggml with BUILD_SHARED_LIBS=ON and GGML_BACKEND_DL=OFF "
                        "(the module links ggml's backends directly and loads them from ggml_mnist/lib)")
endif()

get_directory_property(_gmn_opts COMPILE_OPTIONS)
add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fno-math-errno>)
if(GGML_MNIST_GGML_ROUTE STREQUAL "sdist")
    # ggml asks git for its commit; keep git from finding the repository around a build directory
    # (it would report ours, and every commit of ours would recompile ggml)
    set(_gmn_ceiling "$ENV{GIT_CEILING_DIRECTORIES}")
    set(ENV{GIT_CEILING_DIRECTORIES} "${_deps}:${_gmn_ceiling}")
endif()
add_subdirectory("${_ggml_dir}" "${CMAKE_BINARY_DIR}/ggml" EXCLUDE_FROM_ALL)
if(GGML_MNIST_GGML_ROUTE STREQUAL "sdist")
    set(ENV{GIT_CEILING_DIRECTORIES} "${_gmn_ceiling}")
endif()
set_directory_properties(PROPERTIES COMPILE_OPTIONS "${_gmn_opts}")

set(_gmn_backends "")
foreach(_t IN LISTS GGML_AVAILABLE_BACKENDS)  # a cache list: may name backends of an earlier configure
    if(TARGET ${_t})
        list(APPEND _gmn_backends ${_t})
    endif()
endforeach()
set(_gmn_ggml_libs ggml ggml-base ${_gmn_backends})
foreach(_t IN LISTS _gmn_ggml_libs)
    # one file per library, named by its SONAME (libggml.so.0): wheels cannot hold symlinks
    get_target_property(_so ${_t} SOVERSION)
    set_target_properties(${_t} PROPERTIES VERSION "${_so}" INSTALL_RPATH "$ORIGIN")
endforeach()
if(TARGET ggml-cuda)
    # libggml-cuda needs libcudart/libcublas at import time. A toolkit from the package index (nvidia-cuda-runtime,
    # nvidia-cublas) lies in site-packages/nvidia/cuNN/lib, next to our ggml_mnist/lib: reach it relatively, as in
    # any environment that installs those packages; any other toolkit by its absolute library directory.
    find_package(CUDAToolkit REQUIRED)
    if(CUDAToolkit_LIBRARY_DIR MATCHES "/site-packages/nvidia/(cu[0-9]+)/lib$")
        set(_gmn_cuda_rpath "$ORIGIN/../../nvidia/${CMAKE_MATCH_1}/lib")
    else()
        set(_gmn_cuda_rpath "${CUDAToolkit_LIBRARY_DIR}")
    endif()
    set_target_properties(ggml-cuda PROPERTIES INSTALL_RPATH "$ORIGIN;${_gmn_cuda_rpath}")
    message(STATUS "ggml-mnist: CUDA ${CUDAToolkit_VERSION} from ${CUDAToolkit_LIBRARY_DIR}, "
                   "architectures ${CMAKE_CUDA_ARCHITECTURES}, libggml-cuda RUNPATH $ORIGIN;${_gmn_cuda_rpath}")
endif()
install(TARGETS ${_gmn_ggml_libs}
        LIBRARY DESTINATION ggml_mnist/lib NAMELINK_SKIP COMPONENT ggml_mnist
        PUBLIC_HEADER DESTINATION include EXCLUDE_FROM_ALL)  # the module needs no headers at run time

target_link_libraries(gmn_ggml INTERFACE ggml ggml-cpu)
set(GGML_MNIST_RPATH "$ORIGIN/lib")
set(GGML_MNIST_BUILD_RPATH "")
foreach(_k NATIVE LLAMAFILE OPENMP_ENABLED)
    string(REPLACE "_ENABLED" "" _n "${_k}")
    string(TOLOWER "${_n}" _n)
    if(GGML_${_k})
        set(_gmn_py_${_n} True)
    else()
        set(_gmn_py_${_n} False)
    endif()
endforeach()
set(_gmn_py_no_math_errno True)
list(JOIN _gmn_backends "\", \"" _gmn_py_backends)
set(_gmn_py_backends "[\"${_gmn_py_backends}\"]")
message(STATUS "ggml-mnist: building ggml ${GGML_MNIST_GGML_VERSION} from ${_ggml_dir}: native ${GGML_NATIVE}, "
               "llamafile ${GGML_LLAMAFILE}, OpenMP ${GGML_OPENMP_ENABLED}, backends ${_gmn_backends}")
