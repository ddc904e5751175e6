"""ggml-mnist: train and run IDX image classifiers (MNIST, Fashion-MNIST, EMNIST, ...) on ggml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _moved, callbacks, layers, plot
from ._build_info import build_info
from ._ffi import enum_names as _enum_names
from ._ffi import ffi as _ffi_ffi
from ._ffi import lib as _lib
from ._ffi import set_verbose
from .api import EpochStats, EvalResult, evaluate, export_gguf, load, train
from .augment import augment_images
from .config import TrainConfig
from .data import load_idx_pair, load_mnist, read_idx, write_idx
from .download import download_dataset, verify_dataset
from .ensemble import Ensemble
from .errors import (
    CheckpointWarning,
    ChecksumError,
    ConfigError,
    DataError,
    DataFileNotFoundError,
    DeviceError,
    DeviceWarning,
    DownloadError,
    GgmlMnistError,
    GgmlMnistWarning,
    IdxFormatError,
    ImageError,
    LoggingWarning,
    ModelFormatError,
    ModelIOError,
    NativeError,
    OutOfMemoryError,
    TrainingDivergedError,
)
from .layers import Sequential, load_layers, presets
from .model import Model, TensorStorage, _note_cpu_fallback, convert_weights, weight_types
from .pictures import Digit, DigitReading, Prediction, prepare_image
from .tune import TuneResult, default_space, tune

__version__ = _ffi_ffi.string(_lib.gmn_version()).decode()
ggml_version = _ffi_ffi.string(_lib.gmn_ggml_version()).decode()

_DEVICE_TYPES = {code: name for name, code in _enum_names("gmn_device_type").items()}  # 0: "cpu", 1: "gpu", ...

_moved.install()  # the old module paths (ggml_mnist.imaging, ggml_mnist.predict_cli, ...) import their new modules


def __getattr__(name: str) -> Any:
    return _moved.module(name)  # ggml_mnist.imaging and the like, without an import of their own


@dataclass(frozen=True)
class Device:
    """A ggml device: ``name`` is what ``device=`` accepts; memory in bytes."""

    name: str
    description: str
    type: str
    memory_free: int
    memory_total: int


def devices() -> list[Device]:
    """Return the ggml devices this installation can use (CPU always; GPUs when ggml was built with them)."""
    info = _ffi_ffi.new("struct gmn_device_info *")
    out = []
    for i in range(_lib.gmn_device_count()):
        if _lib.gmn_device_get(i, info) == 0:
            out.append(
                Device(
                    _ffi_ffi.string(info.name).decode(),
                    _ffi_ffi.string(info.description).decode(),
                    _DEVICE_TYPES.get(info.type, "accel"),
                    int(info.memory_free),
                    int(info.memory_total),
                )
            )
    if not any(d.type in ("gpu", "igpu") for d in out):
        _note_cpu_fallback("auto", "CPU")  # a GPU build on a machine whose GPU ggml cannot use says so, once
    return out


__all__ = [
    "__version__",
    "ggml_version",
    "build_info",
    "Device",
    "devices",
    "set_verbose",
    "train",
    "evaluate",
    "load",
    "export_gguf",
    "Model",
    "TrainConfig",
    "EpochStats",
    "EvalResult",
    "tune",
    "TuneResult",
    "default_space",
    "Ensemble",
    "prepare_image",
    "Prediction",
    "Digit",
    "DigitReading",
    "callbacks",
    "layers",
    "Sequential",
    "presets",
    "load_layers",
    "augment_images",
    "plot",
    "TensorStorage",
    "weight_types",
    "convert_weights",
    "read_idx",
    "write_idx",
    "load_mnist",
    "load_idx_pair",
    "download_dataset",
    "verify_dataset",
    "GgmlMnistError",
    "ConfigError",
    "DataError",
    "IdxFormatError",
    "DataFileNotFoundError",
    "DownloadError",
    "ChecksumError",
    "DeviceError",
    "ModelFormatError",
    "ModelIOError",
    "OutOfMemoryError",
    "NativeError",
    "TrainingDivergedError",
    "ImageError",
    "GgmlMnistWarning",
    "LoggingWarning",
    "CheckpointWarning",
    "DeviceWarning",
]
