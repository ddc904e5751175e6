"""get_weights/set_weights in the ggml and torch layouts, convert_weights, and Model.evaluate."""

from __future__ import annotations

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import ConfigError, Model
from ggml_mnist.layers import BatchNorm, Conv2d, Dense, MaxPool2d, ReLU
from support.helpers import THREADS, same_weights, spread_weights

# a 1-in 1-out convolution (ggml layout [k, k]), a strided padded one, pooling, a hidden dense layer
CUSTOM = [
    Conv2d(1, 3, name="pre"),
    ReLU(),
    Conv2d(5, 3, stride=2, padding=1),
    ReLU(),
    MaxPool2d(2),
    Dense(7),
    ReLU(),
    Dense(),
]
TORCH_SHAPES = {
    "fc": {"fc1.weight": (500, 784), "fc1.bias": (500,), "fc2.weight": (10, 500), "fc2.bias": (10,)},
    "cnn": {
        "conv1.kernel": (8, 1, 3, 3),
        "conv1.bias": (8,),
        "conv2.kernel": (16, 8, 3, 3),
        "conv2.bias": (16,),
        "dense.weight": (10, 784),
        "dense.bias": (10,),
    },
    "custom": {
        "pre.kernel": (1, 1, 3, 3),
        "pre.bias": (1,),
        "conv2.kernel": (5, 1, 3, 3),
        "conv2.bias": (5,),
        "fc1.weight": (7, 6 * 6 * 5),
        "fc1.bias": (7,),
        "fc2.weight": (4, 7),
        "fc2.bias": (4,),
    },
    "bn": {
        "conv1.kernel": (3, 1, 3, 3),
        "conv1.bias": (3,),
        **{f"bn1.{k}": (3,) for k in ("weight", "bias", "running_mean", "running_var")},
        "fc1.weight": (6, 5 * 5 * 3),
        "fc1.bias": (6,),
        **{f"bn2.{k}": (6,) for k in ("weight", "bias", "running_mean", "running_var")},
        "fc2.weight": (4, 6),
        "fc2.bias": (4,),
    },
}


# batch normalisation after a convolution (BatchNorm2d) and after a dense layer (BatchNorm1d): plain vectors
WITH_BN = [Conv2d(3, 3), BatchNorm(), ReLU(), MaxPool2d(2), Dense(6), BatchNorm(), ReLU(), Dense()]


def make(arch: str) -> Model:
    if arch in ("custom", "bn"):
        net, size = (CUSTOM, (26, 26)) if arch == "custom" else (WITH_BN, (12, 12))
        model = Model.create(net, n_classes=4, image_size=size, seed=3, threads=THREADS)
    else:
        model = Model.create(arch, seed=3, threads=THREADS)
    weights = spread_weights(model, scale=2.0)
    variances = {k: np.abs(v) + 0.5 for k, v in weights.items() if k.endswith(".running_var")}
    model.set_weights(variances)  # a variance is positive
    return model


def torch_forward(layers: list, weights: dict, x: np.ndarray) -> np.ndarray:
    """Softmax outputs of a network with PyTorch's conventions: NCHW activations, [O, C, k, k] kernels, [O] biases,
    torch.flatten's (C, H, W) order into [out, in] dense weights (float64, images as floats in [0, 1])."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    h = x[:, None].astype(np.float64)
    for layer in layers:
        if isinstance(layer, (Conv2d, MaxPool2d)):
            k, p = layer.kernel_size, layer.padding
            s = layer.stride or k
            fill = -np.inf if isinstance(layer, MaxPool2d) else 0.0
            padded = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
            win = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]
            if isinstance(layer, MaxPool2d):
                h = win.max(axis=(4, 5))
            else:
                h = np.einsum("nchwij,ocij->nohw", win, w[f"{layer.name}.kernel"])
                h = h + w[f"{layer.name}.bias"][None, :, None, None]
        elif isinstance(layer, Dense):
            h = h.reshape(h.shape[0], -1) @ w[f"{layer.name}.weight"].T + w[f"{layer.name}.bias"]
        elif isinstance(layer, BatchNorm):
            shape = (1, -1, 1, 1) if h.ndim == 4 else (1, -1)
            mean, var = (w[f"{layer.name}.running_{s}"].reshape(shape) for s in ("mean", "var"))
            h = (h - mean) / np.sqrt(var + layer.eps) * w[f"{layer.name}.weight"].reshape(shape)
            h = h + w[f"{layer.name}.bias"].reshape(shape)
        elif isinstance(layer, ReLU):
            h = np.maximum(h, 0.0)
        else:
            raise AssertionError(f"no reference for {layer!r}")
    z = np.exp(h - h.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("arch", ["fc", "cnn", "custom", "bn"])
def test_the_torch_layout_has_pytorchs_shapes_and_computes_what_the_model_does(arch: str) -> None:
    model = make(arch)
    torch = model.get_weights(layout="torch")
    assert {k: v.shape for k, v in torch.items()} == TORCH_SHAPES[arch]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in torch.values())
    x = np.random.default_rng(1).random((6, *model.image_size), dtype=np.float32)
    np.testing.assert_allclose(model.predict_proba(x), torch_forward(model.layers, torch, x), atol=5e-5)
    if arch == "cnn":  # the ggml layout's dense weight reads its inputs in another order: the reference notices
        wrong = {**torch, "dense.weight": model.get_weights()["dense.weight"]}
        assert np.abs(torch_forward(model.layers, wrong, x) - model.predict_proba(x)).max() > 1e-2


@pytest.mark.parametrize("arch", ["fc", "cnn", "custom", "bn"])
@pytest.mark.parametrize("layout", ["ggml", "torch"])
def test_set_weights_takes_back_what_get_weights_gives(arch: str, layout: str) -> None:
    model = make(arch)
    other = Model.create(model.layers, n_classes=model.n_classes, image_size=model.image_size, seed=99, threads=THREADS)
    other.set_weights(model.get_weights(layout=layout), layout=layout)
    for name, value in model.get_weights().items():
        assert np.array_equal(other.get_weights()[name], value), name
    x = np.random.default_rng(2).integers(0, 256, (5, *model.image_size), dtype=np.uint8)
    assert np.array_equal(other.predict_proba(x), model.predict_proba(x))


def test_the_ggml_layout_keeps_ggmls_shapes() -> None:
    model = make("custom")
    shapes = {k: v.shape for k, v in model.get_weights().items()}
    assert shapes == model.tensor_shapes() == {k: v.shape for k, v in model.get_weights(layout="ggml").items()}
    assert shapes["pre.kernel"] == (3, 3) and shapes["pre.bias"] == (1,) and shapes["conv2.bias"] == (5, 1, 1)


def test_the_flatten_order_differs_between_the_layouts() -> None:
    model = make("cnn")
    ggml, torch = model.get_weights(), model.get_weights(layout="torch")
    # dense input (h, w, c) in ggml's order is input c * 49 + h * 7 + w in PyTorch's
    assert np.array_equal(
        ggml["dense.weight"].reshape(10, 7, 7, 16).transpose(0, 3, 1, 2).reshape(10, 784), torch["dense.weight"]
    )
    assert not np.array_equal(ggml["dense.weight"], torch["dense.weight"])
    assert np.array_equal(ggml["conv2.kernel"], torch["conv2.kernel"])  # already [O, C, k, k]


def test_convert_weights_from_an_architecture_matches_the_model() -> None:
    model = make("custom")
    ggml, torch = model.get_weights(), model.get_weights(layout="torch")
    converted = gm.convert_weights(ggml, CUSTOM, to="torch", image_size=(26, 26))
    assert all(np.array_equal(converted[k], torch[k]) for k in torch)
    back = gm.convert_weights(torch, CUSTOM, to="ggml", image_size=(26, 26))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in ggml.items()}
    assert all(np.array_equal(back[k], ggml[k]) for k in ggml)


def test_a_torch_layout_export_gives_the_same_model(tmp_path) -> None:
    model = make("cnn")
    exported = gm.export_gguf(tmp_path / "t.gguf", "cnn", model.get_weights(layout="torch"), layout="torch")
    x = np.random.default_rng(3).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    assert np.array_equal(exported.predict_proba(x), model.predict_proba(x))


def test_wrong_layouts_and_shapes_are_refused_and_change_nothing() -> None:
    model = make("cnn")
    before = model.get_weights()
    with pytest.raises(ConfigError, match="layout must be one of 'ggml', 'torch'"):
        model.get_weights(layout="keras")
    with pytest.raises(ConfigError, match="layout must be one of"):
        model.set_weights(before, layout="pytorch")
    weights = model.get_weights(layout="torch")
    weights["conv1.bias"] = np.zeros((8, 1, 1), np.float32)  # the ggml shape, given as torch
    with pytest.raises(ConfigError, match=r"'conv1.bias' must have shape \(8,\) in the torch layout"):
        model.set_weights({**weights, "dense.bias": np.zeros(10, np.float32)}, layout="torch")
    with pytest.raises(ConfigError, match="'dense.weight' has 10 values"):
        gm.convert_weights({"dense.weight": np.zeros(10)}, model, to="torch")
    assert same_weights(model, before)


def test_model_evaluate_mirrors_gm_evaluate() -> None:
    model = make("custom")
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (300, 26, 26), dtype=np.uint8)
    y = rng.integers(0, 4, 300)
    a = model.evaluate(x, y)
    b = gm.evaluate(model, x, y)
    assert (a.n, a.loss, a.accuracy, a.loss_unc) == (b.n, b.loss, b.accuracy, b.loss_unc)
    assert model.evaluate(x, y, batch_size=64).loss == pytest.approx(a.loss, rel=1e-6)  # streamed in 5 batches
    assert np.array_equal(a.predictions, model.predict(x)) and np.array_equal(a.probabilities, model.predict_proba(x))
    assert a.accuracy == float((model.predict(x) == y).mean())
    assert model.evaluate(x, y, keep_probabilities=False).probabilities is None
    with pytest.raises(ConfigError, match="no data given"):
        model.evaluate()
