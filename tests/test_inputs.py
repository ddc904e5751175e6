"""One rule for images everywhere (uint8 0..255 or floats in [0, 1], with or without a channel axis), and
arguments that are checked before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import ConfigError, DataError, Model, TrainConfig, evaluate, train
from support.helpers import SMALL, THREADS, small_options, spread_weights

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
Y = np.arange(60) % 10


def test_float_images_train_like_their_uint8_pixels() -> None:
    a, _ = train(X, Y, **small_options("fc", epochs=1))
    b, _ = train(X / 255.0, Y, **small_options("fc", epochs=1))
    assert all(np.array_equal(a.get_weights()[k], v) for k, v in b.get_weights().items())


@pytest.mark.parametrize("layout", ["N1HW", "NHW1", "HW", "1HW", "NHW", "N784", "int64", "float"])
def test_predict_accepts_the_layouts_users_hold(layout: str) -> None:
    model = Model.create("cnn", **SMALL["cnn"], threads=THREADS)
    spread_weights(model, scale=2.0)
    expected = model.predict_proba(X[:3])
    x = {
        "N1HW": X[:3, None],
        "NHW1": X[:3, ..., None],
        "HW": X[0],
        "1HW": X[:1],
        "NHW": X[:3],
        "N784": X[:3].reshape(3, -1),
        "int64": X[:3].astype(np.int64),
        "float": X[:3] / np.float32(255),
    }[layout]
    got = model.predict_proba(x)
    n = 1 if layout in ("HW", "1HW") else 3
    np.testing.assert_allclose(got, expected[:n], atol=1e-6)


@pytest.mark.parametrize(
    "images, match",
    [
        (
            "digits.idx",
            r"images must be an array of images, not a path \('digits.idx'\); read an IDX file with gm.read_idx",
        ),
        (X[:2] * 1.0, r"images must hold pixels / 255 in \[0, 1\] when they are floats, got values in \[0, 255\]"),
        (-X[:2].astype(np.int16), r"images must hold pixels 0..255 when they are integers, got values in \[-255, 0\]"),
        (np.full((2, 28, 28), np.nan, np.float32), r"images contain NaN or infinite values"),
        (
            np.zeros((2, 3, 28, 28), np.uint8),
            r"images must have shape \[N, H, W\] or \[N, 784\], got \(2, 3, 28, 28\); a channel axis of 1",
        ),
    ],
)
def test_predict_refuses_with_the_reason(images: object, match: str) -> None:
    model = Model.create("fc", threads=THREADS)
    with pytest.raises(DataError, match=match):
        model.predict(images)


def test_evaluate_refuses_device_and_threads_for_a_model(tmp_path: Path) -> None:
    model = Model.create("fc", hidden=8, threads=THREADS)
    with pytest.raises(
        ConfigError,
        match=r"device and threads apply when evaluate\(\) loads a model file; this Model already "
        r"runs on CPU",
    ):
        evaluate(model, X, Y, device="cpu")
    with pytest.raises(ConfigError, match=r"device and threads apply"):
        evaluate(model, X, Y, threads=2)
    model.save(tmp_path / "m.gguf")
    assert evaluate(tmp_path / "m.gguf", X, Y, device="cpu", threads=1).n == 60


def test_config_may_be_a_dict() -> None:
    model, history = train(
        X, Y, config={"arch": "fc", "hidden": 8, "epochs": 1, "batch_size": 20, "threads": THREADS}, progress=False
    )
    assert len(history) == 1 and model.metadata["config"]["hidden"] == 8
    assert (
        model.metadata["config"]
        == TrainConfig.defaults("fc").replace(hidden=8, epochs=1, batch_size=20, threads=THREADS).as_dict()
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Model.create("fc", device=5), r"device must be a string, got 5"),
        (lambda: Model.load(5), r"path must be a file name, got 5"),
        (lambda: train(data_dir=5, arch="fc"), r"data_dir must be a directory name, got 5"),
        (
            lambda: evaluate(Model.create("fc", threads=THREADS), data_dir=[1]),
            r"data_dir must be a directory name, got \[1\]",
        ),
    ],
)
def test_wrong_argument_types_are_config_errors(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
