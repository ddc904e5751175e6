"""Model: creation, parameter shapes, the forward pass against a numpy reference, predict inputs, devices."""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ggml_mnist
from ggml_mnist import ConfigError, DataError, DeviceError, Model
from support.helpers import THREADS, conv_channels_of, hidden_of, reference_proba, same_weights, spread_weights

FC_DEFAULT_SHAPES = {"fc1.weight": (500, 784), "fc1.bias": (500,), "fc2.weight": (10, 500), "fc2.bias": (10,)}
CNN_DEFAULT_SHAPES = {
    "conv1.kernel": (8, 1, 3, 3),
    "conv1.bias": (8, 1, 1),
    "conv2.kernel": (16, 8, 3, 3),
    "conv2.bias": (16, 1, 1),
    "dense.weight": (10, 784),
    "dense.bias": (10,),
}


def random_images(n: int, size: tuple[int, int], dtype: str, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
    return rng.random((n, *size), dtype=np.float32)


# ---- versions and devices --------------------------------------------------------------------
def test_version_strings() -> None:
    assert ggml_mnist.__version__ == importlib.metadata.version("ggml-mnist")
    assert re.fullmatch(r"\d+\.\d+\.\d+", ggml_mnist.__version__)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", ggml_mnist.ggml_version)


def test_devices_include_the_cpu() -> None:
    devices = ggml_mnist.devices()
    names = [d.name for d in devices]
    assert "CPU" in names
    assert len(set(names)) == len(names)
    cpu = devices[names.index("CPU")]
    assert cpu.type == "cpu"
    assert isinstance(cpu.description, str) and cpu.description
    assert all(d.type in ("cpu", "gpu", "igpu", "accel") for d in devices)
    assert all(isinstance(d.memory_total, int) and d.memory_free >= 0 for d in devices)


@pytest.mark.parametrize("device", ["cpu", "CPU", "cPu"])
def test_device_names_are_case_insensitive(device: str) -> None:
    assert Model.create("fc", hidden=4, device=device, threads=THREADS).device == "CPU"


def test_unknown_device_lists_the_available_ones() -> None:
    with pytest.raises(DeviceError, match=r"unknown device 'CUDA7'; available: auto, cpu, .*CPU") as info:
        Model.create("fc", hidden=4, device="CUDA7", threads=THREADS)
    assert isinstance(info.value, ValueError)


# ---- shapes, names and initialisation ----------------------------------------------------------
def test_default_tensor_shapes_follow_ggmls_example() -> None:
    fc = Model.create("fc", threads=THREADS)
    cnn = Model.create("cnn", threads=THREADS)
    assert fc.tensor_shapes() == FC_DEFAULT_SHAPES
    assert cnn.tensor_shapes() == CNN_DEFAULT_SHAPES
    assert {k: v.shape for k, v in fc.get_weights().items()} == FC_DEFAULT_SHAPES
    assert all(v.dtype == np.float32 for v in cnn.get_weights().values())
    assert (fc.architecture, cnn.architecture) == ("mnist-fc", "mnist-cnn")
    assert (fc.arch, fc.n_classes, fc.image_size, hidden_of(fc)) == ("fc", 10, (28, 28), 500)
    assert (cnn.arch, conv_channels_of(cnn)) == ("cnn", (8, 16))


@pytest.mark.parametrize(
    "arch, kwargs, shapes",
    [
        ("fc", dict(hidden=64, n_classes=5), {"fc1.weight": (64, 784), "fc2.weight": (5, 64), "fc2.bias": (5,)}),
        ("fc", dict(hidden=8, image_size=(20, 24)), {"fc1.weight": (8, 480)}),
        (
            "cnn",
            dict(conv_channels=(4, 6), n_classes=5),
            {
                "conv1.kernel": (4, 1, 3, 3),
                "conv2.kernel": (6, 4, 3, 3),
                "conv2.bias": (6, 1, 1),
                "dense.weight": (5, 7 * 7 * 6),
            },
        ),
        ("cnn", dict(conv_channels=(2, 3), image_size=(30, 26)), {"dense.weight": (10, 7 * 6 * 3)}),
    ],
)
def test_non_default_shapes_use_our_architecture_name(arch: str, kwargs: dict, shapes: dict) -> None:
    model = Model.create(arch, threads=THREADS, **kwargs)
    actual = model.tensor_shapes()
    for name, shape in shapes.items():
        assert actual[name] == shape
    assert model.architecture == "ggml-mnist"


@pytest.mark.parametrize("arch", ["fc", "mnist-fc", "cnn", "MNIST-CNN"])
def test_architecture_aliases(arch: str) -> None:
    model = Model.create(arch, threads=THREADS)
    assert model.arch == arch.lower().replace("mnist-", "")
    edited = Model.create(
        arch, **({"hidden": 4} if "fc" in arch.lower() else {"conv_channels": (2, 2)}), threads=THREADS
    )
    assert edited.arch == "custom" and edited.architecture == "ggml-mnist"


def test_init_is_seeded_and_pytorch_uniform() -> None:
    a = Model.create("cnn", seed=7, threads=THREADS).get_weights()
    b = Model.create("cnn", seed=7, threads=THREADS).get_weights()
    c = Model.create("cnn", seed=8, threads=THREADS).get_weights()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
        assert not np.array_equal(a[name], c[name]), name
    fan_in = {
        "conv1.kernel": 9,
        "conv1.bias": 9,
        "conv2.kernel": 72,
        "conv2.bias": 72,
        "dense.weight": 784,
        "dense.bias": 784,
    }
    for name, value in a.items():
        bound = 1 / np.sqrt(fan_in[name])
        assert np.abs(value).max() <= bound, name
        if value.size >= 100:  # a uniform sample fills its range and is centred
            assert np.abs(value).max() > 0.95 * bound, name
            assert abs(value.mean()) < 0.1 * bound, name


# ---- forward pass against numpy ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("fc", dict()),
        ("fc", dict(hidden=40, n_classes=7, image_size=(20, 24))),
        ("cnn", dict()),
        ("cnn", dict(conv_channels=(3, 5), n_classes=6, image_size=(30, 26))),
    ],
)
def test_forward_matches_numpy_reference(arch: str, kwargs: dict, dtype: str) -> None:
    model = Model.create(arch, seed=3, threads=THREADS, **kwargs)
    images = random_images(37, model.image_size, dtype)

    # as initialised
    probs = model.predict_proba(images)
    assert probs.shape == (37, model.n_classes) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, reference_proba(arch, model.get_weights(), images), atol=1e-5, rtol=0)

    # larger weights, so that the probabilities are far from uniform and a wrong layout shows
    spread_weights(model, scale=3.0)
    probs = model.predict_proba(images)
    reference = reference_proba(arch, model.get_weights(), images)
    assert reference.max(axis=1).mean() > 0.6
    np.testing.assert_allclose(probs, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(model.predict(images), probs.argmax(axis=1))
    if arch == "cnn":  # the test tells ggml's channels-fastest flatten from PyTorch's channel-first one
        assert np.abs(probs - reference_proba(arch, model.get_weights(), images, flatten="chw")).max() > 1e-2


def test_uint8_and_float_inputs_agree() -> None:
    model = Model.create("cnn", seed=1, conv_channels=(2, 4), threads=THREADS)
    spread_weights(model, scale=3.0)
    images = random_images(10, (28, 28), "uint8")
    as_uint8 = model.predict_proba(images)
    np.testing.assert_allclose(model.predict_proba(images / np.float32(255)), as_uint8, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba((images / 255.0).astype(np.float64)), as_uint8, atol=1e-6)
    assert np.array_equal(model.predict_proba(images.astype(np.int64)), as_uint8)
    assert np.array_equal(model.predict_proba(images.reshape(10, 784)), as_uint8)
    assert np.array_equal(model.predict_proba(images[3]), as_uint8[3:4])
    assert np.array_equal(model.predict_proba(np.asfortranarray(images)), as_uint8)


def assert_same_prediction(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float rounding, same classes: ggml's CPU backend multiplies a one-row batch with another
    kernel (vec_dot) than larger ones (llamafile's sgemm), which rounds differently (about 1e-6 here)."""
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def test_prediction_does_not_depend_on_batching() -> None:
    model = Model.create("fc", hidden=16, seed=2, threads=THREADS)
    spread_weights(model, scale=3.0)
    images = random_images(2345, (28, 28), "uint8")  # more than one native batch of 1000, with a remainder
    whole = model.predict_proba(images)
    for batch_size in (1, 7, 1000, 1001):
        assert_same_prediction(model.predict_proba(images[:1100], batch_size=batch_size), whole[:1100])
    single = np.concatenate([model.predict_proba(images[i]) for i in (0, 999, 1000, 2344)])
    assert_same_prediction(single, whole[[0, 999, 1000, 2344]])


# ---- set_weights / get_weights -------------------------------------------------------------------
def test_set_weights_round_trip_and_torch_bias_shapes() -> None:
    model = Model.create("cnn", conv_channels=(2, 4), threads=THREADS)
    rng = np.random.default_rng(0)
    new = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.tensor_shapes().items()}
    new["conv1.bias"] = new["conv1.bias"].reshape(2)  # PyTorch's [out] bias is accepted
    model.set_weights(new)
    got = model.get_weights()
    for name, value in new.items():
        assert np.array_equal(got[name].reshape(value.shape), value), name
    got["dense.bias"][:] = 0  # get_weights returns copies
    assert not np.array_equal(model.get_weights()["dense.bias"], got["dense.bias"])


def test_set_weights_rejects_bad_tensors_and_keeps_the_old_ones() -> None:
    model = Model.create("fc", hidden=8, threads=THREADS)
    before = model.get_weights()
    with pytest.raises(ConfigError, match=r"unknown tensor 'conv1.kernel'; this model has fc1.weight, fc1.bias"):
        model.set_weights({"conv1.kernel": np.zeros((8, 1, 3, 3))})
    with pytest.raises(ConfigError, match=r"tensor 'fc1.weight' must have shape \(8, 784\), got \(784, 8\)"):
        model.set_weights({"fc1.weight": np.zeros((784, 8))})
    bad = np.zeros((10, 8), np.float32)
    bad[3, 5] = np.nan
    with pytest.raises(ConfigError, match=r"tensor 'fc2.weight' holds NaN or infinite values") as info:
        model.set_weights({"fc2.weight": bad})
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="holds NaN or infinite values"):
        model.set_weights({"fc2.bias": np.full(10, np.inf)})
    with pytest.raises(ConfigError, match=r"tensor 'fc2.bias' must have shape \(10,\)"):  # all or nothing
        model.set_weights({"fc1.bias": np.ones(8, np.float32), "fc2.bias": np.zeros(3, np.float32)})
    assert same_weights(model, before)


# ---- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((5, 28, 27), np.uint8), r"images are 28x27; this model needs 28x28 — resize them first"),
        (np.zeros((5, 783), np.uint8), r"got \(5, 783\)"),
        (np.zeros((2, 5, 28, 28), np.uint8), r"got \(2, 5, 28, 28\); a channel axis of 1"),
        (np.zeros((0, 28, 28), np.uint8), "images is empty"),
        (np.full((2, 28, 28), np.nan, np.float32), "NaN or infinite"),
        (np.full((2, 28, 28), np.inf), "NaN or infinite"),
        (
            np.full((2, 28, 28), 256, np.int32),
            r"images must hold pixels 0..255 when they are integers, got values in \[256, 256\]",
        ),
        (np.full((2, 28, 28), -1, np.int16), r"got values in \[-1, -1\]"),
        (np.full((2, 28, 28), 1.5, np.float32), r"images must hold pixels / 255 in \[0, 1\] when they are floats"),
        (
            np.zeros((2, 28, 28), np.complex64),
            "images must be uint8 pixels 0..255 or floats in \\[0, 1\\], got dtype complex64",
        ),
        (np.zeros((2, 28, 28), bool), "got dtype bool"),
    ],
)
def test_predict_rejects_bad_images(images: np.ndarray, match: str) -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(DataError, match=match) as info:
        model.predict_proba(images)
    assert isinstance(info.value, ValueError)
    assert model.predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)  # still usable


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, None])
def test_predict_rejects_bad_batch_sizes(batch_size: object) -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(ConfigError, match="batch_size must be a whole number >= 1"):
        model.predict(np.zeros((3, 28, 28), np.uint8), batch_size=batch_size)


@pytest.mark.parametrize(
    "arch, kwargs, match",
    [
        ("resnet", {}, r"unknown network 'resnet'; use a preset \(fc, cnn, fast, mlp800, .*\) or a list of layers"),
        ("fc", dict(n_classes=1), r"n_classes is 1; it must be in \[2, 1000\]"),
        ("fc", dict(n_classes=1001), r"n_classes is 1001"),
        ("fc", dict(hidden=0), r"network: layer 0 \(dense fc1\): 0 units; use 1 to 65536"),
        ("fc", dict(hidden=2.5), "Dense units must be a whole number, got 2.5"),
        ("fc", dict(hidden=True), "Dense units must be a whole number"),
        ("cnn", dict(hidden=8), "this network has no hidden dense layer"),
        ("fc", dict(conv_channels=(2,)), "conv_channels gives 1 values but the network has 0 convolutions"),
        ("fc", dict(image_size=(3, 28)), r"image size 3x28 is out of range \[4, 4096\]"),
        ("cnn", dict(conv_channels=(0, 4)), r"network: layer 0 \(conv2d conv1\): 0 output channels; use 1 to 4096"),
        ("fc", dict(threads=-1), r"n_threads is -1; use 0 \(all cores\) or 1..1024"),
        ("fc", dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64\)"),
        ("fc", dict(seed=2**64), "seed must be an integer"),
        ("fc", dict(n_classes=2**40), "n_classes is out of range"),
    ],
)
def test_create_rejects_impossible_configs(arch: str, kwargs: dict, match: str) -> None:
    kwargs.setdefault("threads", THREADS)
    with pytest.raises(ConfigError, match=match) as info:
        Model.create(arch, **kwargs)
    assert isinstance(info.value, ValueError)


# ---- lifetime ------------------------------------------------------------------------------------
def test_close_and_context_manager() -> None:
    with Model.create("fc", hidden=4, threads=THREADS) as model:
        assert "classes=10" in repr(model)
        model.predict(np.zeros((1, 28, 28), np.uint8))
    assert repr(model) == "<Model custom (closed)>"
    with pytest.raises(ValueError, match="this Model has been closed"):
        model.predict(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="closed"):
        model.save("never-written.gguf")
    model.close()  # closing twice is fine


def test_distinct_models_are_independent() -> None:
    a = Model.create("fc", hidden=4, seed=1, threads=THREADS)
    b = Model.create("fc", hidden=4, seed=1, threads=THREADS)
    images = random_images(4, (28, 28), "uint8")
    before = b.predict_proba(images)
    spread_weights(a, scale=5.0)
    a.close()
    assert np.array_equal(b.predict_proba(images), before)


@pytest.mark.parametrize(
    "names, problem",
    [
        (["a", "b", "c"], "3 names for 10 classes"),
        ({"0": "zero"}, "they are dict, not a list of names"),
        ("zero one two", "they are text, not a list of names"),
        ([str(i) for i in range(9)] + [7], "not every name is text"),
    ],
)
def test_class_names_that_do_not_fit_warn_when_loaded(tmp_path: Path, names: Any, problem: str) -> None:
    model = Model.create("fc", hidden=8, threads=THREADS)
    model.metadata["class_names"] = names
    model.save(tmp_path / "m.gguf")
    with pytest.warns(
        ggml_mnist.GgmlMnistWarning, match=rf"its class_names are ignored \({problem}\); its classes are called 0, 1, 2"
    ):
        loaded = ggml_mnist.load(tmp_path / "m.gguf")
    assert loaded.class_names == [str(i) for i in range(10)]
    model.metadata["class_names"] = [f"c{i}" for i in range(10)]
    model.save(tmp_path / "fine.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ggml_mnist.load(tmp_path / "fine.gguf").class_names[9] == "c9"
