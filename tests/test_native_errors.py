"""The C shim called directly: every bad argument is a status code and a message, never a crash.

ggml itself aborts the process (GGML_ASSERT) on many of these inputs, so the shim must catch
them first. Each test also shows that the process carries on.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ggml_mnist import (
    ConfigError,
    DataError,
    Model,
    NativeError,
    TrainingDivergedError,
    set_verbose,
)
from ggml_mnist._ffi import check, ffi, last_error, lib, ptr
from support.helpers import THREADS

GOOD_TRAIN = dict(
    optimizer=0,
    lr=1e-3,
    lr_min_ratio=0.0,
    schedule=1,
    warmup_steps=0,
    total_steps=10,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    batch_size=10,
    physical_batch_size=10,
    seed=1,
)


def train_config(**changes: Any) -> Any:
    return ffi.new("struct gmn_train_config *", {**GOOD_TRAIN, **changes})


def new_dataset(n: int = 50, n_pixels: int = 784, n_classes: int = 10, labels: Any = None) -> tuple[int, Any]:
    images = np.random.default_rng(0).integers(0, 256, size=(max(n, 1), n_pixels), dtype=np.uint8)
    labels = np.asarray(labels if labels is not None else np.arange(max(n, 1)) % n_classes, dtype=np.int32)
    out = ffi.new("gmn_dataset **")
    status = lib.gmn_dataset_init(ptr(images, "uint8_t *"), ptr(labels, "int32_t *"), n, n_pixels, n_classes, out)
    return status, ffi.gc(out[0], lib.gmn_dataset_free) if status == lib.GMN_OK else None


def run_epoch(
    model: Model, dataset: Any, train_idx: np.ndarray, val_idx: np.ndarray | None = None, val_dataset: Any = None
) -> int:
    result = ffi.new("struct gmn_epoch_result *")
    val = ptr(val_idx, "int64_t *") if val_idx is not None else ffi.NULL
    return lib.gmn_model_train_epoch(
        model._handle,
        dataset,
        ptr(train_idx, "int64_t *"),
        len(train_idx),
        ffi.NULL if val_dataset is None else val_dataset,
        val,
        0 if val_idx is None else len(val_idx),
        ffi.NULL,
        ffi.NULL,
        result,
    )


@pytest.fixture
def model() -> Model:
    return Model.create("fc", hidden=8, threads=THREADS)


def test_free_accepts_null() -> None:
    lib.gmn_model_free(ffi.NULL)
    lib.gmn_dataset_free(ffi.NULL)
    assert lib.gmn_model_n_tensors(ffi.NULL) == 0 and lib.gmn_model_meta_count(ffi.NULL) == 0


def test_null_and_out_of_range_arguments() -> None:
    layers = ffi.new(
        "struct gmn_layer[]",
        [
            dict(kind=lib.GMN_LAYER_DENSE, n_out=4),
            dict(kind=lib.GMN_LAYER_RELU),
            dict(kind=lib.GMN_LAYER_DENSE, n_out=10),
        ],
    )
    cfg = ffi.new("struct gmn_net *", dict(image_h=28, image_w=28, n_layers=3, layers=layers))
    cases = [
        (lambda: lib.gmn_model_init(cfg, b"cpu", 1, 0, ffi.NULL), "model_init: out is NULL"),
        (lambda: lib.gmn_model_init(ffi.NULL, b"cpu", 1, 0, ffi.new("gmn_model **")), "network: NULL network"),
        (lambda: lib.gmn_model_load(ffi.NULL, b"cpu", 1, ffi.new("gmn_model **")), "model_load: NULL argument"),
        (lambda: lib.gmn_model_get_net(ffi.NULL, ffi.new("struct gmn_net *"), ffi.NULL, 0), "NULL argument"),
        (lambda: lib.gmn_net_check(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL), "network: NULL network"),
        (lambda: lib.gmn_preset_layers(b"fc", 10, ffi.NULL, 0, ffi.new("int *")), "preset: NULL argument"),
        (lambda: lib.gmn_model_dropout_mask(ffi.NULL, 0, ffi.NULL, 0), "dropout_mask: NULL argument"),
        (lambda: lib.gmn_model_predict(ffi.NULL, ffi.NULL, 0, 1, ffi.NULL), "predict: NULL argument"),
        (lambda: lib.gmn_model_train_init(ffi.NULL, train_config()), "train_init: NULL argument"),
        (lambda: lib.gmn_device_get(0, ffi.NULL), "device_get: out is NULL"),
        (lambda: lib.gmn_device_get(-1, ffi.new("struct gmn_device_info *")), r"index -1 out of range \[0, \d+\)"),
        (lambda: lib.gmn_device_get(lib.gmn_device_count(), ffi.new("struct gmn_device_info *")), "out of range"),
        (
            lambda: lib.gmn_dataset_init(ffi.NULL, ffi.NULL, 1, 784, 10, ffi.new("gmn_dataset **")),
            "dataset_init: NULL argument",
        ),
    ]
    for call, match in cases:
        assert call() == lib.GMN_E_INVALID, match
        assert re.search(match, last_error()), (match, last_error())
    layers[1].kind = 99
    assert lib.gmn_model_init(cfg, b"cpu", 1, 0, ffi.new("gmn_model **")) == lib.GMN_E_INVALID
    assert "network: layer 1 has unknown kind 99" in last_error()
    assert lib.gmn_layer_kind_name(99) == ffi.NULL or ffi.string(lib.gmn_layer_kind_name(99)) == b""
    assert lib.gmn_preset_name(-1) == ffi.NULL and lib.gmn_preset_name(lib.gmn_preset_count()) == ffi.NULL


def test_last_error_is_per_thread_and_cleared_by_success(model: Model) -> None:
    assert lib.gmn_device_get(-1, ffi.new("struct gmn_device_info *")) == lib.GMN_E_INVALID
    main_message = last_error()
    seen = {}

    def other() -> None:
        seen["before"] = last_error()
        lib.gmn_model_predict(model._handle, ffi.NULL, 0, 1, ffi.NULL)
        seen["after"] = last_error()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"before": "", "after": "predict: NULL argument"}
    assert last_error() == main_message
    assert lib.gmn_model_get_net(model._handle, ffi.new("struct gmn_net *"), ffi.NULL, 0) == lib.GMN_OK
    assert last_error() == ""


def test_status_codes_map_to_exceptions() -> None:
    with pytest.raises(ConfigError, match="device_get"):
        check(lib.gmn_device_get(-1, ffi.new("struct gmn_device_info *")))
    with pytest.raises(DataError, match="device_get") as info:
        check(lib.gmn_device_get(-1, ffi.new("struct gmn_device_info *")), invalid=DataError)
    assert isinstance(info.value, ValueError)
    assert lib.gmn_device_get(0, ffi.new("struct gmn_device_info *")) == lib.GMN_OK  # clears the last error
    with pytest.raises(NativeError, match="ggml-mnist shim failed with status -99") as info:
        check(-99)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(optimizer=2), r"unknown optimizer code 2 \(use adamw or sgd\)"),
        (dict(lr=0.0), r"learning rate 0 must be a finite number > 0"),
        (dict(lr=-1.0), r"learning rate -1 must be a finite number > 0"),
        (dict(lr=math.nan), r"learning rate nan must be a finite number > 0"),
        (dict(lr=math.inf), r"learning rate inf must be a finite number > 0"),
        (dict(max_loss=-1.0), r"max_loss -1 must be >= 0"),
        (dict(lr_min_ratio=-0.1), r"lr_min_ratio -0.1 must be in \[0, 1\]"),
        (dict(lr_min_ratio=math.nan), r"lr_min_ratio nan"),
        (dict(schedule=4), r"unknown schedule code 4 \(use constant, cosine, linear or onecycle\)"),
        (dict(schedule=-1), r"unknown schedule code -1"),
        (dict(label_smoothing=1.0), r"label_smoothing 1 must be in \[0, 1\)"),
        (dict(label_smoothing=math.nan), r"label_smoothing nan must be in \[0, 1\)"),
        (dict(label_smoothing=1.5), r"label_smoothing 1.5 must be in \[0, 1\)"),
        (dict(warmup_steps=-1), r"warmup_steps -1 must be >= 0"),
        (dict(total_steps=0), r"total_steps 0 > 0"),
        (dict(beta1=1.0), r"betas \(1, 0.999\) must be in \[0, 1\)"),
        (dict(beta2=-0.5), r"betas \(0.9, -0.5\)"),
        (dict(beta1=math.nan), r"betas \(nan"),
        (dict(eps=-1e-8), r"eps -1e-08 must be >= 0"),
        (dict(eps=math.inf), r"eps inf must be >= 0"),
        (dict(weight_decay=1.5), r"weight decay 1.5 must be in \[0, 1\]"),
        (dict(weight_decay=math.nan), r"weight decay nan"),
        (dict(weight_decay=1.0, lr=2.0), r"weight_decay \* lr = 2 exceeds 1"),
        (dict(batch_size=0), r"batch sizes must be in \[1, 1000000\] \(batch 0, physical 10\)"),
        (dict(physical_batch_size=0), r"\(batch 10, physical 0\)"),
        (dict(batch_size=1_000_001, physical_batch_size=1), r"batch sizes must be in"),
        (dict(physical_batch_size=3), r"batch size 10 is not a multiple of the physical batch size 3"),
    ],
)
def test_train_init_refuses_what_ggml_would_assert_on(model: Model, changes: dict, match: str) -> None:
    assert lib.gmn_model_train_init(model._handle, train_config(**changes)) == lib.GMN_E_INVALID
    assert re.search(match, last_error()), last_error()
    _, dataset = new_dataset()
    assert run_epoch(model, dataset, np.arange(50, dtype=np.int64)) == lib.GMN_E_STATE  # nothing was set up
    assert last_error() == "train_epoch: call train_init first"
    assert lib.gmn_model_train_init(model._handle, train_config()) == lib.GMN_OK


def test_train_init_takes_the_onecycle_schedule_and_label_smoothing(model: Model) -> None:
    config = train_config(schedule=lib.GMN_SCHEDULE_ONECYCLE, label_smoothing=0.1)
    assert lib.gmn_model_train_init(model._handle, config) == lib.GMN_OK


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), r"need n > 0 images of 1..16M pixels, got n=0, pixels=784"),
        (dict(n=-5), r"got n=-5"),
        (dict(n_pixels=0), r"pixels=0"),
        (dict(n_classes=1), r"n_classes is 1; it must be in \[2, 1000\]"),
        (dict(n=3, labels=[0, 10, 2]), r"label 10 at index 1 is outside \[0, 10\)"),
        (dict(n=3, labels=[0, 1, -2]), r"label -2 at index 2 is outside"),
    ],
)
def test_dataset_init_validates(kwargs: dict, match: str) -> None:
    status, dataset = new_dataset(**kwargs)
    assert status == lib.GMN_E_INVALID and dataset is None
    assert re.search(match, last_error()), last_error()
    with pytest.raises(DataError, match=match):
        check(status, invalid=DataError)


def test_train_epoch_validates_its_arguments(model: Model) -> None:
    assert lib.gmn_model_train_init(model._handle, train_config()) == lib.GMN_OK
    idx = np.arange(50, dtype=np.int64)
    _, small_images = new_dataset(n_pixels=100)
    assert run_epoch(model, small_images, idx) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: dataset images have 100 pixels but the model takes 28x28"
    _, many_classes = new_dataset(n_classes=12)
    assert run_epoch(model, many_classes, idx) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: dataset has 12 classes but the model only 10"
    _, dataset = new_dataset()
    bad = idx.copy()
    bad[7] = 50
    assert run_epoch(model, dataset, bad) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: train index 50 at position 7 is outside [0, 50)"
    assert run_epoch(model, dataset, idx, val_idx=np.array([-1], dtype=np.int64)) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: validation index -1 at position 0 is outside [0, 50)"
    assert run_epoch(model, dataset, idx[:9]) == lib.GMN_E_INVALID
    assert "9 training images are fewer than one batch of 10" in last_error()
    assert run_epoch(model, dataset, idx, val_idx=idx[:5]) == lib.GMN_OK  # and it still trains
    # a validation dataset of its own is checked like the training one, and its indices against its own size
    assert run_epoch(model, dataset, idx, val_idx=idx[:5], val_dataset=small_images) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: validation dataset images have 100 pixels but the model takes 28x28"
    assert run_epoch(model, dataset, idx, val_idx=idx[:5], val_dataset=many_classes) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: validation dataset has 12 classes but the model only 10"
    _, ten = new_dataset(n=10)
    assert run_epoch(model, dataset, idx, val_idx=idx[:11], val_dataset=ten) == lib.GMN_E_INVALID
    assert last_error() == "train_epoch: validation index 10 at position 10 is outside [0, 10)"
    assert run_epoch(model, dataset, idx, val_idx=idx[:10], val_dataset=ten) == lib.GMN_OK


def test_predict_validates_its_arguments(model: Model) -> None:
    probs = np.empty((2, 10), np.float32)
    pixels = np.zeros((2, 784), np.float32)
    assert lib.gmn_model_predict(model._handle, ptr(pixels, "void *"), 1, 0, ptr(probs, "float *")) == lib.GMN_E_INVALID
    assert last_error() == "predict: need at least one image, got 0"
    pixels[1, 300] = np.nan
    assert lib.gmn_model_predict(model._handle, ptr(pixels, "void *"), 1, 2, ptr(probs, "float *")) == lib.GMN_E_INVALID
    assert last_error() == "predict: image 1 has a non-finite pixel"
    pixels[1, 300] = 0.5
    assert lib.gmn_model_predict(model._handle, ptr(pixels, "void *"), 1, 2, ptr(probs, "float *")) == lib.GMN_OK
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_tensor_and_metadata_access_validate(model: Model) -> None:
    name, ne = ffi.new("char[64]"), ffi.new("int64_t[4]")
    assert lib.gmn_model_tensor_info(model._handle, 4, name, 64, ne) == lib.GMN_E_INVALID
    assert last_error() == "model_tensor_info: index 4 out of range [0, 4)"
    buf = np.empty(10, np.float32)
    assert lib.gmn_model_get_tensor(model._handle, b"dense.weight", ptr(buf, "float *"), 10) == lib.GMN_E_INVALID
    assert last_error() == "tensor access: the ggml-mnist model has no tensor 'dense.weight'"
    assert lib.gmn_model_get_tensor(model._handle, b"fc2.bias", ptr(buf, "float *"), 9) == lib.GMN_E_INVALID
    assert last_error() == "tensor access: 'fc2.bias' has 10 elements, got 9"
    key, value = ffi.new("const char **"), ffi.new("const char **")
    assert lib.gmn_model_meta_get(model._handle, 0, key, value) == lib.GMN_E_INVALID
    assert last_error() == "model_meta_get: index 0 out of range [0, 0)"


def test_save_validates_metadata(model: Model, tmp_path: Path) -> None:
    path = str(tmp_path / "m.gguf").encode()
    keys = [ffi.new("char[]", b"ok_key"), ffi.new("char[]", b"Bad-Key")]
    values = [ffi.new("char[]", b"1"), ffi.new("char[]", b"2")]
    assert (
        lib.gmn_model_save(model._handle, path, 2, ffi.new("char *[]", keys), ffi.new("char *[]", values))
        == lib.GMN_E_INVALID
    )
    assert last_error() == "model_save: metadata key 'Bad-Key' must be 1-200 chars of [a-z0-9_.] with a value"
    assert lib.gmn_model_save(model._handle, path, -1, ffi.NULL, ffi.NULL) == lib.GMN_E_INVALID
    assert lib.gmn_model_save(model._handle, path, 1, ffi.NULL, ffi.NULL) == lib.GMN_E_INVALID
    assert lib.gmn_model_save(model._handle, b"", 0, ffi.NULL, ffi.NULL) == lib.GMN_E_INVALID
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_model_refuses_to_be_saved(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    model.save(path)
    before = path.read_bytes()
    huge = {name: np.full(shape, 1e30, np.float32) for name, shape in model.tensor_shapes().items()}
    model.set_weights(huge)  # finite, but the logits overflow
    assert lib.gmn_model_train_init(model._handle, train_config(optimizer=1)) == lib.GMN_OK
    _, dataset = new_dataset()
    status = run_epoch(model, dataset, np.arange(50, dtype=np.int64))
    assert status == lib.GMN_E_DIVERGED
    assert last_error().startswith(
        "train: training diverged: the loss became NaN at batch 0; the learning rate 0.001 is too high, try 10x lower"
    )
    with pytest.raises(TrainingDivergedError, match="too high") as info:
        check(status)
    assert isinstance(info.value, ArithmeticError)
    with pytest.raises(
        TrainingDivergedError,
        match=r"refusing to save '.*model.gguf': training diverged and the weights hold NaN/inf; "
        r"retrain with a lower learning rate",
    ):
        model.save(path)
    assert path.read_bytes() == before
    model.set_weights({name: np.zeros(shape, np.float32) for name, shape in model.tensor_shapes().items()})
    model.save(path)  # new, finite weights may be saved again
    assert path.read_bytes() != before


def test_ggml_log_goes_to_python_logging_only_when_verbose(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 24)
    caplog.set_level(logging.DEBUG, logger="ggml_mnist.ggml")
    with pytest.raises(Exception, match="not a valid GGUF"):
        Model.load(bad, threads=THREADS)
    assert caplog.records == []
    assert capfd.readouterr() == ("", "")  # quiet by default: ggml prints nothing

    set_verbose(True)
    try:
        with pytest.raises(Exception, match="not a valid GGUF"):
            Model.load(bad, threads=THREADS)
    finally:
        set_verbose(False)
    messages = [r.getMessage() for r in caplog.records if r.name == "ggml_mnist.ggml"]
    assert any("gguf_init_from_reader" in m for m in messages), messages
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    assert "ggml: gguf_init_from_reader" in capfd.readouterr().err

    caplog.clear()
    with pytest.raises(Exception, match="not a valid GGUF"):
        Model.load(bad, threads=THREADS)
    assert caplog.records == [] and capfd.readouterr() == ("", "")
