"""The two graph forms: the CPU's channels-last graph with the shim's own ops (graph="cpu", the default on the CPU)
and the portable graph of ggml's ops that every other backend runs (graph="portable"). They must compute the same
predictions and the same gradients for every layer kind, and each must be bit-reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from ggml_mnist import Model, train
from ggml_mnist.layers import GELU, AvgPool2d, Conv2d, Dense, Dropout, MaxPool2d, ReLU, SiLU, Tanh
from support.helpers import THREADS, images

NETS = {
    "cnn": ("cnn", (28, 28)),
    "strided conv, silu, avgpool pad 1, conv after it": (
        [Conv2d(3, 3, stride=2, padding=1), SiLU(), AvgPool2d(3, 2, 1), Conv2d(4, 2), Tanh(), Dense()],
        (13, 11),
    ),
    "5x5 conv, gelu, maxpool pad 1, dense tanh": (
        [Conv2d(2, 5), GELU(), MaxPool2d(2, 2, 1), Dense(6), Tanh(), Dense()],
        (11, 9),
    ),
    "maxpool first, two convs, maxpool 3/3": (
        [MaxPool2d(2, 1), Conv2d(3, 3, padding=1), ReLU(), Conv2d(4, 3, padding=2), ReLU(), MaxPool2d(3, 3), Dense()],
        (12, 12),
    ),
    "pool first with tanh, overlapping pools": (
        [
            Conv2d(5, 3, padding=1),
            Tanh(),
            MaxPool2d(3, 2, 1),
            Conv2d(6, 3, stride=2),
            ReLU(),
            MaxPool2d(2, 2),
            Dense(8),
            ReLU(),
            Dropout(0.0),
            Dense(),
        ],
        (16, 16),
    ),
}


def step(graph: str, arch, size, x, y, optimizer: str = "sgd") -> Model:
    model, _ = train(
        x,
        y,
        arch=arch,
        n_classes=4,
        epochs=2,
        batch_size=len(x) // 2,
        optimizer=optimizer,
        lr=0.05,
        lr_schedule="constant",
        weight_decay=0.0,
        seed=5,
        threads=THREADS,
        progress=False,
        augment="none",
        graph=graph,
    )
    assert model.plan["graph"] == graph
    return model


@pytest.mark.parametrize("case", list(NETS))
def test_both_graphs_predict_and_train_alike(case: str) -> None:
    arch, size = NETS[case]
    x = images(12, size, seed=1)
    y = np.random.default_rng(2).integers(0, 4, size=len(x))
    probs = {
        graph: Model.create(arch, n_classes=4, image_size=size, seed=7, threads=THREADS, graph=graph).predict_proba(x)
        for graph in ("portable", "cpu")
    }
    np.testing.assert_allclose(probs["cpu"], probs["portable"], rtol=1e-5, atol=1e-6)
    # two epochs of two SGD steps: the weights after four gradient steps agree to float rounding
    a = step("portable", arch, size, x, y).get_weights()
    b = step("cpu", arch, size, x, y).get_weights()
    assert a.keys() == b.keys()
    for k in a:
        assert not np.array_equal(a[k], Model.create(arch, n_classes=4, image_size=size, seed=5).get_weights()[k]), k
        np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("graph", ["portable", "cpu"])
def test_each_graph_is_bit_reproducible(graph: str) -> None:
    arch, size = NETS["pool first with tanh, overlapping pools"]
    x = images(16, size, seed=3)
    y = np.random.default_rng(4).integers(0, 4, size=len(x))
    a = step(graph, arch, size, x, y, optimizer="adamw").get_weights()
    b = step(graph, arch, size, x, y, optimizer="adamw").get_weights()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_layer_activations_are_channels_first_on_both_graphs() -> None:
    image = images(1, (28, 28), seed=5)[0]
    out = {
        graph: Model.create("cnn", seed=3, threads=THREADS, graph=graph).activations(image)
        for graph in ("portable", "cpu")
    }
    assert [a.shape for a in out["cpu"]] == [
        (8, 28, 28),
        (8, 28, 28),
        (8, 14, 14),
        (16, 14, 14),
        (16, 14, 14),
        (16, 7, 7),
        (10,),
    ]
    for layer, (a, b) in enumerate(zip(out["portable"], out["cpu"])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=str(layer))
