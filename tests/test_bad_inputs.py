"""Every bad argument of train() and evaluate() raises the documented exception with a helpful message."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ggml_mnist import (
    ConfigError,
    DataError,
    DataFileNotFoundError,
    DeviceError,
    GgmlMnistError,
    Model,
    TrainConfig,
    evaluate,
    train,
)
from support.helpers import THREADS, small_options

N = 100
rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
LABELS = (np.arange(N) % 10).astype(np.uint8)


def labels_with(index: int, value: int, dtype: str = "int64") -> np.ndarray:
    labels = LABELS.astype(dtype)
    labels[index] = value
    return labels


# (images, labels, options, exception, built-in, message)
TRAIN_CASES: dict[str, tuple[Any, Any, dict, type, type, str]] = {
    "label out of range": (
        IMAGES,
        labels_with(7, 12),
        {"n_classes": 10},
        DataError,
        ValueError,
        r"label 12 at index 7 is outside \[0, 10\) \(1 labels out of range\); .*n_classes=13",
    ),
    "negative label": (
        IMAGES,
        labels_with(4, -1),
        {},
        DataError,
        ValueError,
        r"labels must be >= 0, but label -1 at index 4 is negative",
    ),
    "count mismatch": (IMAGES, LABELS[:-1], {}, DataError, ValueError, r"100 images but 99 labels"),
    "flat images of the wrong size": (
        IMAGES.reshape(N, -1)[:, :700],
        LABELS,
        {},
        DataError,
        ValueError,
        r"images must have shape \[N, H, W\], got \(100, 700\)",
    ),
    "4-D images": (
        np.stack([IMAGES] * 3, axis=1),
        LABELS,
        {},
        DataError,
        ValueError,
        r"images must have shape \[N, H, W\]",
    ),
    "float images of 0..255": (
        IMAGES.astype(np.float64),
        LABELS,
        {},
        DataError,
        ValueError,
        r"images must hold pixels / 255 in \[0, 1\] when they are floats, got values in \[0, 255\]",
    ),
    "images that are a string": (
        np.array(["x"] * N),
        LABELS,
        {},
        DataError,
        ValueError,
        r"images must be uint8 pixels 0..255 or floats in \[0, 1\], got dtype <U1",
    ),
    "epochs 10**20": (
        IMAGES,
        LABELS,
        {"epochs": 10**20},
        ConfigError,
        ValueError,
        r"epochs must be a whole number in \[1, 1000000\]",
    ),
    "device a number": (
        IMAGES,
        LABELS,
        {"device": 123},
        ConfigError,
        ValueError,
        r"device must be a name such as 'auto', 'cpu' or 'CUDA0', got 123",
    ),
    "config a list": (
        IMAGES,
        LABELS,
        {"config": [1]},
        ConfigError,
        ValueError,
        r"config must be a gm.TrainConfig or a dict",
    ),
    "on_epoch not callable": (
        IMAGES,
        LABELS,
        {"on_epoch": 5},
        ConfigError,
        ValueError,
        r"on_epoch must be a function on_epoch\(stats, model\) or None, got 5",
    ),
    "float labels": (
        IMAGES,
        LABELS.astype(np.float32),
        {},
        DataError,
        ValueError,
        r"labels must be integers, got dtype float32; .*astype\(np.int64\)",
    ),
    "one-hot labels": (
        IMAGES,
        np.eye(10, dtype=np.uint8)[LABELS],
        {},
        DataError,
        ValueError,
        r"labels must be 1-D \[N\], got shape \(100, 10\); for one-hot labels use labels.argmax",
    ),
    "empty images": (IMAGES[:0], LABELS[:0], {}, DataError, ValueError, r"images is empty"),
    "empty labels": (IMAGES, LABELS[:0], {}, DataError, ValueError, r"labels is empty"),
    "n_classes 1": (
        IMAGES,
        LABELS,
        {"n_classes": 1},
        ConfigError,
        ValueError,
        r"n_classes must be an integer >= 2, got 1",
    ),
    "unknown device": (
        IMAGES,
        LABELS,
        {"device": "CUDA7"},
        DeviceError,
        ValueError,
        r"unknown device 'CUDA7'; available: auto, cpu, .*CPU",
    ),
    "unknown arch": (
        IMAGES,
        LABELS,
        {"arch": "resnet"},
        ConfigError,
        ValueError,
        r"unknown network 'resnet'; use a preset \(fc, cnn, .*\) or a list of layers",
    ),
    "unknown option": (
        IMAGES,
        LABELS,
        {"momentum": 0.9},
        ConfigError,
        ValueError,
        r"unknown training option\(s\): momentum",
    ),
    "batch_size 0": (
        IMAGES,
        LABELS,
        {"batch_size": 0},
        ConfigError,
        ValueError,
        r"batch_size must be in \[1, 1000000\], got 0",
    ),
    "batch_size float": (IMAGES, LABELS, {"batch_size": 2.5}, ConfigError, ValueError, r"batch_size must be in"),
    "physical batch not dividing": (
        IMAGES,
        LABELS,
        {"physical_batch_size": 7},
        ConfigError,
        ValueError,
        r"physical_batch_size 7 must divide batch_size 20 \(e.g. 20 or 10\)",
    ),
    "physical batch too big": (
        IMAGES,
        LABELS,
        {"physical_batch_size": 40},
        ConfigError,
        ValueError,
        r"physical_batch_size 40 must divide batch_size 20",
    ),
    "lr 0": (IMAGES, LABELS, {"lr": 0.0}, ConfigError, ValueError, r"lr must be a finite number > 0, got 0.0"),
    "lr negative": (
        IMAGES,
        LABELS,
        {"lr": -1e-3},
        ConfigError,
        ValueError,
        r"lr must be a finite number > 0, got -0.001",
    ),
    "lr nan": (IMAGES, LABELS, {"lr": math.nan}, ConfigError, ValueError, r"lr must be a finite number > 0, got nan"),
    "lr inf": (IMAGES, LABELS, {"lr": math.inf}, ConfigError, ValueError, r"lr must be a finite number > 0, got inf"),
    "lr string": (IMAGES, LABELS, {"lr": "0.1"}, ConfigError, ValueError, r"lr must be a finite number > 0, got '0.1'"),
    "val_split 1": (
        IMAGES,
        LABELS,
        {"val_split": 1.0},
        ConfigError,
        ValueError,
        r"val_split must be in \[0, 1\), got 1.0",
    ),
    "val_split negative": (
        IMAGES,
        LABELS,
        {"val_split": -0.1},
        ConfigError,
        ValueError,
        r"val_split must be in \[0, 1\)",
    ),
    "epochs 0": (
        IMAGES,
        LABELS,
        {"epochs": 0},
        ConfigError,
        ValueError,
        r"epochs must be a whole number in \[1, 1000000\], got 0",
    ),
    "epochs float": (
        IMAGES,
        LABELS,
        {"epochs": 1.5},
        ConfigError,
        ValueError,
        r"epochs must be a whole number in \[1, 1000000\], got 1.5",
    ),
    "weight_decay 2": (
        IMAGES,
        LABELS,
        {"weight_decay": 2.0},
        ConfigError,
        ValueError,
        r"weight_decay must be in \[0, 1\], got 2.0",
    ),
    "weight_decay * lr": (
        IMAGES,
        LABELS,
        {"weight_decay": 1.0, "lr": 50.0},
        ConfigError,
        ValueError,
        r"weight_decay \* lr = 50 must not exceed 1",
    ),
    "threads -1": (
        IMAGES,
        LABELS,
        {"threads": -1},
        ConfigError,
        ValueError,
        r"threads must be in \[0, 1024\] \(0 = all cores\), got -1",
    ),
    "unknown optimizer": (
        IMAGES,
        LABELS,
        {"optimizer": "rmsprop"},
        ConfigError,
        ValueError,
        r"optimizer must be one of adamw, sgd, got 'rmsprop'",
    ),
    "unknown schedule": (
        IMAGES,
        LABELS,
        {"lr_schedule": "step"},
        ConfigError,
        ValueError,
        r"lr_schedule must be one of constant, cosine, linear, onecycle, got 'step'",
    ),
    "lr_min_ratio 2": (
        IMAGES,
        LABELS,
        {"lr_min_ratio": 2.0},
        ConfigError,
        ValueError,
        r"lr_min_ratio must be in \[0, 1\]",
    ),
    "warmup longer than training": (
        IMAGES,
        LABELS,
        {"warmup_epochs": 3.0},
        ConfigError,
        ValueError,
        r"warmup_epochs must be in \[0, epochs\], got 3.0",
    ),
    "beta1 1": (IMAGES, LABELS, {"beta1": 1.0}, ConfigError, ValueError, r"beta1 must be in \[0, 1\), got 1.0"),
    "beta2 negative": (IMAGES, LABELS, {"beta2": -0.5}, ConfigError, ValueError, r"beta2 must be in \[0, 1\)"),
    "eps negative": (IMAGES, LABELS, {"eps": -1e-8}, ConfigError, ValueError, r"eps must be >= 0"),
    "seed negative": (
        IMAGES,
        LABELS,
        {"seed": -1},
        ConfigError,
        ValueError,
        r"seed must be an integer in \[0, 2\*\*64\), got -1",
    ),
    "hidden 0": (
        IMAGES,
        LABELS,
        {"hidden": 0},
        ConfigError,
        ValueError,
        r"network: layer 0 \(dense fc1\): 0 units; use 1 to 65536",
    ),
    "conv channels 0": (
        IMAGES,
        LABELS,
        {"arch": "cnn", "conv_channels": (0, 4)},
        ConfigError,
        ValueError,
        r"network: layer 0 \(conv2d conv1\): 0 output channels; use 1 to 4096",
    ),
    "batch bigger than the dataset": (
        IMAGES,
        LABELS,
        {"batch_size": 200},
        ConfigError,
        ValueError,
        r"100 training images are fewer than one batch of 200; lower batch_size or val_split",
    ),
    "validation leaves less than a batch": (
        IMAGES,
        LABELS,
        {"val_split": 0.9},
        ConfigError,
        ValueError,
        r"10 training images are fewer than one batch of 20",
    ),
    "labels missing": (
        IMAGES,
        None,
        {},
        ConfigError,
        ValueError,
        r"labels are required when images is an array or an IDX file",
    ),
    "no data at all": (None, None, {}, ConfigError, ValueError, r"no data given: pass images and labels"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_rejects(case: str) -> None:
    images, labels, options, cls, builtin, match = TRAIN_CASES[case]
    options = dict(options)
    with pytest.raises(cls, match=match) as info:
        train(images, labels, **small_options(options.pop("arch", "fc"), **options))
    assert isinstance(info.value, builtin) and isinstance(info.value, GgmlMnistError)
    assert "\n" not in str(info.value)


def test_train_rejects_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"file '.*nope-images' does not exist") as info:
        train(tmp_path / "nope-images", tmp_path / "nope-labels", **small_options("fc"))
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DataFileNotFoundError, match=r"dataset directory '.*missing' does not exist; download it with"):
        train(data_dir=tmp_path / "missing", **small_options("fc"))
    with pytest.raises(DataFileNotFoundError, match=r"no train images \(looked for train-images-idx3-ubyte"):
        train(data_dir=tmp_path, **small_options("fc"))
    with pytest.raises(ConfigError, match="labels must be omitted when images is a directory"):
        train(tmp_path, LABELS, **small_options("fc"))


def test_train_config_validation_does_not_depend_on_the_data() -> None:
    with pytest.raises(ConfigError, match="lr must be a finite number > 0"):
        TrainConfig.defaults("cnn").replace(lr=-1).validate()
    with pytest.raises(ConfigError, match=r"unknown training option\(s\): colour, size"):
        TrainConfig().replace(size=1, colour=2)
    assert TrainConfig.defaults("mnist-fc").arch == "fc"
    assert TrainConfig.defaults("cnn").validate().physical == 100


# ---- evaluate -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> Model:
    return Model.create("fc", hidden=8, n_classes=10, threads=THREADS)


@pytest.mark.parametrize(
    "images, labels, kwargs, cls, match",
    [
        (IMAGES, labels_with(0, 10), {}, DataError, r"label 10 at index 0 is outside \[0, 10\)"),
        (IMAGES, LABELS[:50], {}, DataError, r"100 images but 50 labels"),
        (IMAGES[:, :14, :14], LABELS, {}, DataError, r"images are 14x14; this model needs 28x28"),
        (
            IMAGES.astype(np.float32),
            LABELS,
            {},
            DataError,
            r"images must hold pixels / 255 in \[0, 1\] when they are floats",
        ),
        (IMAGES, LABELS.astype(float), {}, DataError, r"labels must be integers"),
        (IMAGES[:0], LABELS[:0], {}, DataError, r"images is empty"),
        (IMAGES, None, {}, ConfigError, r"labels are required"),
        (IMAGES, LABELS, {"batch_size": 0}, ConfigError, r"batch_size must be a whole number >= 1, got 0"),
        (IMAGES, LABELS, {"batch_size": -5}, ConfigError, r"batch_size must be a whole number >= 1, got -5"),
    ],
)
def test_evaluate_rejects(model: Model, images: Any, labels: Any, kwargs: dict, cls: type, match: str) -> None:
    with pytest.raises(cls, match=match) as info:
        evaluate(model, images, labels, **kwargs)
    assert isinstance(info.value, ValueError)


def test_evaluate_rejects_missing_and_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"model file '.*absent.gguf' does not exist") as info:
        evaluate(tmp_path / "absent.gguf", IMAGES, LABELS)
    assert isinstance(info.value, FileNotFoundError)
    saved = tmp_path / "m.gguf"
    Model.create("fc", hidden=4, threads=THREADS).save(saved)
    with pytest.raises(DeviceError, match="unknown device 'CUDA7'"):
        evaluate(saved, IMAGES, LABELS, device="CUDA7", threads=THREADS)


def test_the_process_survives_every_error(model: Model) -> None:
    """After every error of this module, raised again here in one process, it still trains and evaluates."""
    raised = 0
    for images, labels, options, cls, _, match in TRAIN_CASES.values():
        options = dict(options)
        with pytest.raises(cls, match=match):
            train(images, labels, **small_options(options.pop("arch", "fc"), **options))
        raised += 1
    assert raised == len(TRAIN_CASES) >= 20
    trained, history = train(IMAGES, LABELS, **small_options("fc", epochs=1))
    assert len(history) == 1 and np.isfinite(history[0].train_loss)
    assert evaluate(model, IMAGES, LABELS).n == N
