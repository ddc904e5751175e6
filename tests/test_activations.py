"""Model.activations: every layer's output for one image, checked against numpy and against predict_proba."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_mnist as gm


@pytest.fixture(scope="module")
def cnn() -> gm.Model:
    return gm.Model.create("cnn", seed=3)


def _image() -> np.ndarray:
    return (np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)


def test_shapes_follow_the_layers(cnn: gm.Model) -> None:
    maps = cnn.activations(_image())
    assert [m.shape for m in maps] == [
        (8, 28, 28),
        (8, 28, 28),
        (8, 14, 14),
        (16, 14, 14),
        (16, 14, 14),
        (16, 7, 7),
        (10,),
    ]


def test_first_conv_and_relu_and_pool_match_numpy(cnn: gm.Model) -> None:
    image = _image()
    x = np.pad(image.astype(np.float64) / 255, 1)
    w = cnn.get_weights()
    kernel, bias = w["conv1.kernel"].reshape(8, 3, 3), w["conv1.bias"].reshape(8)
    want = np.zeros((8, 28, 28))
    for dy in range(3):
        for dx in range(3):
            want += kernel[:, dy, dx, None, None] * x[None, dy : dy + 28, dx : dx + 28]
    want += bias[:, None, None]
    conv, relu, pool = cnn.activations(image)[:3]
    np.testing.assert_allclose(conv, want, atol=1e-5)
    np.testing.assert_allclose(relu, np.maximum(want, 0), atol=1e-5)
    np.testing.assert_allclose(pool, np.maximum(want, 0).reshape(8, 14, 2, 14, 2).max(axis=(2, 4)), atol=1e-5)


@pytest.mark.parametrize("arch", ["cnn", "fc", "lenet5"])
def test_last_layer_gives_the_logits_of_predict(arch: str) -> None:
    model = gm.Model.create(arch, seed=2)
    logits = model.activations(_image())[-1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    np.testing.assert_allclose(probs / probs.sum(), model.predict_proba(_image())[0], atol=1e-5)
    model.predict(np.zeros((3, 28, 28), np.uint8))  # the prediction graph is rebuilt after an activation graph


def test_bad_images_raise_and_the_model_survives(cnn: gm.Model) -> None:
    with pytest.raises(gm.DataError):
        cnn.activations(np.zeros((27, 28), np.uint8))
    with pytest.raises(gm.DataError, match="one image"):
        cnn.activations(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(gm.DataError, match="NaN"):
        cnn.activations(np.full((28, 28), np.nan, np.float32))
    assert cnn.activations(_image())[0].shape == (8, 28, 28)
