"""Exceptions raised by ggml_mnist.

Every exception derives from :class:`GgmlMnistError` and from the built-in
exception a caller would naturally catch (``ValueError``, ``OSError``, ...).
"""

from __future__ import annotations


class GgmlMnistError(Exception):
    """Base class of every error raised by ggml_mnist."""


class DataError(GgmlMnistError, ValueError):
    """Dataset content is unusable: shape or count mismatch, labels out of range."""


class IdxFormatError(DataError):
    """An IDX file is corrupt: wrong magic, unsupported type, truncated or oversized payload."""


class DataFileNotFoundError(GgmlMnistError, FileNotFoundError):
    """A dataset or model file, or a directory, does not exist."""


class ModelIOError(GgmlMnistError, OSError):
    """A model file could not be read or written (permissions, missing directory, disk full)."""


class ImageError(GgmlMnistError, ValueError):
    """A picture cannot be used: unreadable, not an image, too small, or holding no ink."""


class DownloadError(GgmlMnistError, OSError):
    """A dataset could not be downloaded from any mirror."""


class ChecksumError(DownloadError):
    """Downloaded or existing bytes do not match the expected SHA-256."""


class ConfigError(GgmlMnistError, ValueError):
    """A hyperparameter or option is impossible (non-positive batch size, bad split, ...)."""


class DeviceError(GgmlMnistError, ValueError):
    """The requested ggml device does not exist or cannot be initialised."""


class ModelFormatError(GgmlMnistError, ValueError):
    """A model file is not a valid ggml-mnist / mnist GGUF file."""


class TrainingDivergedError(GgmlMnistError, ArithmeticError):
    """The training loss became NaN or infinite."""


class OutOfMemoryError(GgmlMnistError, MemoryError):
    """ggml could not allocate the memory a model, batch or dataset needs."""


class NativeError(GgmlMnistError, RuntimeError):
    """The native ggml shim reported a failure that matches no more specific class."""


class GgmlMnistWarning(UserWarning):
    """Base class of the warnings ggml_mnist gives about work that goes on (the CLI prints them as one line)."""


class LoggingWarning(GgmlMnistWarning):
    """The run log could not be written; training goes on and the rows are written later."""


class CheckpointWarning(GgmlMnistWarning):
    """A checkpoint could not be saved; training goes on."""


class DeviceWarning(GgmlMnistWarning):
    """device="auto" runs on the CPU although this installation was built for a GPU."""
