"""The installed ggml: the pinned version built with our options, loaded from the package, and the build's refusals.

``ggml_mnist.build_info["route"]`` says how ggml was obtained (external/ggml.cmake): "sdist" (the pinned source,
built with the package), "source-dir" (a local source, built with the package) or "prefix" (a prebuilt ggml, whose
options we cannot know; those checks skip).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import ggml_mnist as gm

ROOT = Path(__file__).resolve().parent.parent
MODULE = Path(importlib.util.find_spec("ggml_mnist._native").origin).resolve()  # the installed extension module
PACKAGE_LIB = MODULE.parent / "lib"  # where its RUNPATH points
LIBRARIES = ("libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0")


def built_here() -> None:
    """Skip unless this package built its own ggml (not GGML_MNIST_GGML_PREFIX)."""
    if gm.build_info["route"] == "prefix":
        pytest.skip("ggml came from GGML_MNIST_GGML_PREFIX: its build options are not ours to check")


def test_build_info_names_a_route():
    assert gm.build_info["route"] in ("sdist", "source-dir", "prefix")
    assert gm.build_info["ggml_pin"] == "0.15.3"


def test_pinned_ggml_built_with_our_options():
    if gm.build_info["route"] != "sdist":
        pytest.skip(f"ggml came from route {gm.build_info['route']!r}, not the pinned source distribution")
    assert gm.ggml_version == gm.build_info["ggml_pin"]
    assert {k: gm.build_info[k] for k in ("native", "llamafile", "openmp", "no_math_errno")} == dict(
        native=True, llamafile=True, openmp=True, no_math_errno=True
    )
    assert "ggml-cpu" in gm.build_info["backends"]


def test_loaded_cpu_backend_has_llamafile_and_comes_from_the_package():
    built_here()
    cpu = ctypes.CDLL("libggml-cpu.so.0")  # already loaded by the module: dlopen returns that copy
    assert cpu.ggml_cpu_has_llamafile() == 1
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps to see where the libraries were loaded from")
    loaded = {Path(line.split()[-1]) for line in maps.read_text().splitlines() if "libggml" in line}
    assert loaded == {PACKAGE_LIB / name for name in LIBRARIES}


def dynamic_section(path: Path) -> list[tuple[str, str]]:
    """(tag, value) pairs of the NEEDED, RPATH, RUNPATH and SONAME entries of an ELF file, by readelf."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    pairs = []
    for line in out.splitlines():
        for tag in ("NEEDED", "RPATH", "RUNPATH", "SONAME"):
            if f"({tag})" in line:
                pairs.append((tag, line.split("[", 1)[1].rstrip("]")))
    return pairs


def test_installed_files_record_no_build_paths():
    built_here()
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    module = dynamic_section(MODULE)
    assert ("RUNPATH", "$ORIGIN/lib") in module and not any(t == "RPATH" for t, _ in module)
    # the module asks the backend registry, never ggml-cpu itself, so that a GGML_BACKEND_DL build links too
    assert {v for t, v in module if t == "NEEDED" and "ggml" in v} == {"libggml.so.0", "libggml-base.so.0"}
    for name in LIBRARIES:
        lib = dynamic_section(PACKAGE_LIB / name)
        assert ("SONAME", name) in lib and ("RUNPATH", "$ORIGIN") in lib
        assert not any("/" in v for t, v in lib if t == "NEEDED")


def configure(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run CMake's configure step of this project in a fresh build directory; skip without cmake."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH")
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={sys.executable}", *args]
    unset = {"GGML_MNIST_GGML_PREFIX": "", "GGML_MNIST_GGML_SOURCE": ""}  # empty reads as unset
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **unset, **(env or {})}, timeout=120)


def test_a_tarball_with_the_wrong_hash_stops_the_build(tmp_path):
    fake = tmp_path / "ggml_python-0.0.45.tar.gz"
    fake.write_bytes(b"not the sdist")
    r = configure(tmp_path, f"-DGGML_MNIST_GGML_SOURCE={fake}")
    assert r.returncode != 0
    message = " ".join(r.stderr.split())
    assert f"{fake} has SHA-256" in message and "it is not ggml_python-0.0.45.tar.gz" in message
    assert "set GGML_MNIST_GGML_SOURCE to its path" in message


def test_a_missing_source_stops_the_build(tmp_path):
    r = configure(tmp_path, env={"GGML_MNIST_GGML_SOURCE": str(tmp_path / "nowhere")})
    assert r.returncode != 0
    assert f"GGML_MNIST_GGML_SOURCE={tmp_path / 'nowhere'} does not exist" in " ".join(r.stderr.split())


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_download_says_how_to_build_offline(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/ggml_python-0.0.45.tar.gz"  # refused at once; nothing leaves the machine
    r = configure(tmp_path, f"-DGGML_MNIST_GGML_URL={url}")
    assert r.returncode != 0
    message = " ".join(r.stderr.split())
    assert (
        "could not download ggml's source" in message
        and "GGML_MNIST_GGML_SOURCE=/path/to/ggml_python-0.0.45.tar.gz" in message
    )
    assert not list(
        (tmp_path / "build" / "_deps").glob("*.tar.gz*")
    )  # no partial file left to be mistaken for the sdist
