"""Generate the cffi API-mode C source of ggml_mnist._native from the shim's public header.

Usage: python gen_cffi.py HEADER OUTPUT.c

The cdef is the region of HEADER between the GMN_CDEF_BEGIN and GMN_CDEF_END markers, so the
header is the single source of the binding; the generated C includes the header, so a
mismatch between the two fails the compile.
"""

import sys
from pathlib import Path

import cffi

BEGIN = "/* GMN_CDEF_BEGIN */"
END = "/* GMN_CDEF_END */"


def cdef_region(header: str) -> str:
    """Return the text between the cdef markers of the header."""
    start = header.index(BEGIN) + len(BEGIN)
    return header[start : header.index(END)]


def main() -> None:
    header_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    ffi = cffi.FFI()
    ffi.cdef(cdef_region(header_path.read_text()))
    ffi.set_source("ggml_mnist._native", '#include "ggml_mnist.h"')
    ffi.emit_c_code(str(out_path))


if __name__ == "__main__":
    main()
