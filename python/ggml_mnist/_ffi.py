"""The only importer of the native module: status checks, exceptions, array pointers, logging."""

from __future__ import annotations

import logging
import numbers
import os
import sys
from typing import Any, Callable, Optional

import numpy as np

from ._native import ffi, lib
from .errors import (
    ConfigError,
    DeviceError,
    GgmlMnistError,
    ModelFormatError,
    ModelIOError,
    NativeError,
    OutOfMemoryError,
    TrainingDivergedError,
)

__all__ = [
    "ffi",
    "lib",
    "enum_names",
    "check",
    "check_seed",
    "ptr",
    "cstr",
    "last_error",
    "set_verbose",
    "ProgressHook",
]


def enum_names(c_enum: str) -> dict[str, int]:
    """The members of a C enum of ggml_mnist.h as {name: code} in the order of their codes, each name in lower case
    without the prefix the members share: ``enum_names("gmn_schedule")`` is {"constant": 0, "cosine": 1, ...}.
    The header is the one place these names and codes are written."""
    members = sorted(ffi.typeof(f"enum {c_enum}").relements.items(), key=lambda item: item[1])
    prefix = os.path.commonprefix([name for name, _ in members]).rpartition("_")[0] + "_"
    return {name[len(prefix) :].lower(): code for name, code in members}


_STATUS_ERRORS: dict[int, type[GgmlMnistError]] = {
    lib.GMN_E_INVALID: ConfigError,
    lib.GMN_E_IO: ModelIOError,
    lib.GMN_E_FORMAT: ModelFormatError,
    lib.GMN_E_NOMEM: OutOfMemoryError,
    lib.GMN_E_DEVICE: DeviceError,
    lib.GMN_E_STATE: NativeError,
    lib.GMN_E_DIVERGED: TrainingDivergedError,
}


def last_error() -> str:
    """Return the calling thread's last error message from the shim."""
    return ffi.string(lib.gmn_last_error()).decode("utf-8", "replace")


def check(status: int, invalid: type[GgmlMnistError] = ConfigError) -> None:
    """Raise the exception matching a shim status code; ``invalid`` is used for GMN_E_INVALID."""
    if status == lib.GMN_OK:
        return
    cls = invalid if status == lib.GMN_E_INVALID else _STATUS_ERRORS.get(status, NativeError)
    raise cls(last_error() or f"ggml-mnist shim failed with status {status}")


def check_seed(seed: Any) -> int:
    """``seed`` as an int, as the shim's seeds are (uint64_t); raises ConfigError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def ptr(array: np.ndarray, ctype: str) -> Any:
    """Return a cffi pointer of type ``ctype`` to a C-contiguous array's data (no copy)."""
    if not array.flags.c_contiguous:
        raise ValueError("internal: array must be C-contiguous")
    return ffi.cast(ctype, ffi.from_buffer(array))


def cstr(text: str, what: str = "argument") -> bytes:
    """Encode a str for the shim, refusing other types and embedded NUL bytes with ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string, got {text!r}")
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ConfigError(f"string {text!r} contains a NUL byte")
    return data


_LOGGER = logging.getLogger("ggml_mnist.ggml")
_LEVELS = {
    lib.GMN_LOG_DEBUG: logging.DEBUG,
    lib.GMN_LOG_INFO: logging.INFO,
    lib.GMN_LOG_WARN: logging.WARNING,
    lib.GMN_LOG_ERROR: logging.ERROR,
}


@ffi.callback("void(void *, int, const char *)")
def _log_sink(_userdata: Any, level: int, text: Any) -> None:
    message = ffi.string(text).decode("utf-8", "replace").rstrip("\n")
    if message:
        _LOGGER.log(_LEVELS.get(level, logging.INFO), "%s", message)


_handler: logging.Handler | None = None


def set_verbose(enabled: bool = True, level: int = logging.INFO) -> None:
    """Show ggml's log on stderr (``enabled``) or silence it (the default)."""
    global _handler
    if enabled:
        if _handler is None:
            _handler = logging.StreamHandler(sys.stderr)
            _handler.setFormatter(logging.Formatter("ggml: %(message)s"))
            _LOGGER.addHandler(_handler)
        _LOGGER.setLevel(level)
        native_level = {py: native for native, py in _LEVELS.items()}.get(level, lib.GMN_LOG_ERROR)
        lib.gmn_log_set(_log_sink, ffi.NULL, native_level)
    else:
        lib.gmn_log_set(ffi.NULL, ffi.NULL, lib.GMN_LOG_ERROR)
        if _handler is not None:
            _LOGGER.removeHandler(_handler)
            _handler = None


class ProgressHook:
    """A shim progress callback around ``fn(phase, ibatch, nbatch, loss, acc) -> stop``.

    An exception raised by ``fn`` stops training; :meth:`reraise` raises it in the caller.
    """

    def __init__(self, fn: Callable[[int, int, int, float, float], bool]) -> None:
        # the callback must not refer back to self: that cycle would keep fn (and whatever it holds, such as a
        # model and its native memory) alive until Python's cycle collector happens to run
        errors: list[BaseException] = []
        self._errors = errors

        def trampoline(_userdata: Any, phase: int, ibatch: int, nbatch: int, loss: float, acc: float) -> int:
            return 1 if fn(phase, ibatch, nbatch, loss, acc) else 0

        def on_error(exc_type: Any, exc: Any, _tb: Any) -> int:
            errors.append(exc if exc is not None else exc_type())
            return 1

        self.callback = ffi.callback("int(void *, int, int64_t, int64_t, double, double)", trampoline, onerror=on_error)

    @property
    def error(self) -> Optional[BaseException]:
        """The first exception the callback swallowed, or None."""
        return self._errors[0] if self._errors else None

    def reraise(self) -> None:
        """Raise the exception the callback swallowed, if any."""
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise error


set_verbose(False)
