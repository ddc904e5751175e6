"""Residual blocks: a Residual layer ends a block and adds its input (projected where the body changes the shape);
prediction and gradients against numpy in both graph forms, nesting, GGUF, quantisation, refusals and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import ConfigError, Model, ModelFormatError, load, train
from ggml_mnist.layers import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    SiLU,
    Tanh,
    load_layers,
    residual,
)
from support.helpers import (
    THREADS,
    check_sgd_gradient,
    foreign_net_file,
    images,
    read_gguf,
    reference_logits,
    reference_net_proba,
    same_weights,
    sgd_step,
    spread_weights,
)

NETS = {
    # the input itself is added, twice in a row and nested
    "identity, nested": (
        [
            Conv2d(3, 3, padding=1),
            Tanh(),
            *residual([Conv2d(3, 3, padding=1), SiLU(), *residual([Conv2d(3, 1), Tanh()])]),
            AvgPool2d(2),
            Dense(),
        ],
        (8, 8),
    ),
    # a strided convolution with more channels: a 1x1 convolution of stride 2 projects the input
    "strided projection": (
        [Conv2d(2, 3, padding=1), ReLU(), *residual([Conv2d(4, 3, stride=2, padding=1), ReLU()]), Dense()],
        (9, 10),
    ),
    # max pooling in the body, right after a convolution and relu: the pool must not move before the block's input
    "pool in the body": (
        [Conv2d(3, 3, padding=1), ReLU(), *residual([MaxPool2d(2), Conv2d(3, 3, padding=1)]), Dense()],
        (8, 8),
    ),
    # blocks on the images themselves: a projection of one channel to three, then the identity
    "from the image": (
        [*residual([Conv2d(3, 3, padding=1), ReLU()]), *residual([Conv2d(3, 3, padding=1)]), Dense()],
        (6, 7),
    ),
    # flat blocks: the identity and a dense projection
    "dense": ([Dense(6), Tanh(), *residual([Dense(6), Tanh()]), *residual([Dense(5)]), Dense()], (5, 6)),
}


def make(case: str, graph: str = "cpu", seed: int = 2) -> Model:
    layers, size = NETS[case]
    model = Model.create(layers, n_classes=4, image_size=size, seed=seed, threads=THREADS, graph=graph)
    spread_weights(model, scale=1.5)
    return model


# ---- the layer --------------------------------------------------------------------------------------------------
def test_a_block_is_its_body_and_a_residual_layer() -> None:
    body = [Conv2d(4, 3, padding=1), BatchNorm(), ReLU()]
    assert residual(body, name="r") == [*body, Residual(3, name="r")]
    assert residual([body[0], residual(body[1:])]) == [*body, Residual(2), Residual(4)]
    model = make("strided projection")
    assert model.layers[-2] == Residual(2, name="res1") and model.layers[-2].kind == "residual"
    assert {k: v for k, v in model.tensor_shapes().items() if k.startswith("res")} == {
        "res1.kernel": (4, 2, 1, 1),
        "res1.bias": (4, 1, 1),
    }
    assert [info[3] for info in model.layer_info()][4] == 2 * 4 + 4  # the projection's kernel and bias
    assert not any(k.startswith("res") for k in make("identity, nested").tensor_shapes())
    assert {k for k in make("dense").tensor_shapes() if k.startswith("res")} == {"res2.weight", "res2.bias"}


# ---- prediction against numpy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["cpu", "portable"])
@pytest.mark.parametrize("case", list(NETS))
def test_prediction_matches_the_numpy_reference(case: str, graph: str) -> None:
    model = make(case, graph)
    weights = model.get_weights()
    x = images(70, model.image_size, seed=1)  # 70: the CPU's own matrix product too
    expected = reference_net_proba(model.layers, weights, x)
    assert expected.max(axis=1).mean() > 0.3  # far from uniform, so a wrong sum shows
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(model.predict_proba(x[:3]), expected[:3], atol=2e-5, rtol=0)
    maps = model.activations(x[0])
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Residual):  # the block's output (channels-first), for one image
            after = reference_logits(model.layers[: i + 1], weights, x[:1])[0]
            np.testing.assert_allclose(np.asarray(maps[i]).ravel(), np.moveaxis(after, -1, 0).ravel(), atol=2e-5)


@pytest.mark.parametrize("case", list(NETS))
def test_a_quantised_model_predicts_through_the_same_blocks(case: str) -> None:
    """f16 kernels: the channels-first prediction graph (projections stay f32). ggml rounds the inputs of an f16
    product to f16 too, hence 1e-3; q8_0 rounds them to 8 bits."""
    model = make(case)
    x = images(9, model.image_size, seed=1)
    for kind, tol in (("f16", 1e-3), ("q8_0", 1e-2)):
        q = model.quantize(kind, pad=True)
        assert all(s.type == "f32" for k, s in q.tensor_storage().items() if k.startswith("res"))
        np.testing.assert_allclose(q.predict_proba(x), reference_net_proba(q.layers, q.get_weights(), x), atol=tol)


# ---- training ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["cpu", "portable"])
@pytest.mark.parametrize("case", list(NETS))
def test_one_sgd_step_follows_the_finite_difference_gradient(case: str, graph: str) -> None:
    start = make(case, graph, seed=5)
    n = 6
    x = images(n, start.image_size, seed=3)
    y = np.random.default_rng(11).integers(0, 4, size=n)
    after, _ = sgd_step(start, x, y, graph)

    def loss(weights: dict) -> float:
        probs = reference_net_proba(start.layers, weights, x)
        return float(-np.log(probs[np.arange(n), y]).mean())

    checked = check_sgd_gradient(
        start.get_weights(), after.get_weights(), 1.0, loss, 4, np.random.default_rng(0), abs_tol=3e-5
    )
    assert checked >= 3 * len(start.tensor_shapes())


def test_a_residual_network_with_batchnorm_learns(tmp_path: Path) -> None:
    from support.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "d", n_train=400, n_test=100, seed=2)
    block = [Conv2d(8, 3, padding=1), BatchNorm(), ReLU(), Conv2d(8, 3, padding=1), BatchNorm()]
    arch = [
        Conv2d(8, 3, padding=1),
        BatchNorm(),
        ReLU(),
        MaxPool2d(2),
        *residual(block),
        ReLU(),
        MaxPool2d(2),
        *residual([Conv2d(16, 3, stride=2, padding=1), BatchNorm(), ReLU()]),
        Dense(),
    ]
    model, history = train(
        data_dir=data,
        arch=arch,
        epochs=3,
        batch_size=20,
        lr=5e-3,
        seed=1,
        threads=THREADS,
        progress=False,
        augment="none",
    )
    assert history[-1].train_loss < history[0].train_loss
    from ggml_mnist import evaluate

    assert evaluate(model, data_dir=data).accuracy >= 0.95


def test_pytorch_layout_of_the_projections() -> None:
    """A projection's kernel is PyTorch's 1x1 Conv2d [out, in, 1, 1]; its bias and a dense projection are Linear's."""
    model = make("strided projection")
    torch = model.get_weights(layout="torch")
    assert torch["res1.kernel"].shape == (4, 2, 1, 1) and torch["res1.bias"].shape == (4,)
    assert make("dense").get_weights(layout="torch")["res2.weight"].shape == (5, 6)
    copy = make("strided projection", seed=9)
    copy.set_weights(torch, layout="torch")
    assert same_weights(copy, model)


# ---- GGUF -----------------------------------------------------------------------------------------------------------
def test_gguf_round_trip_is_exact(tmp_path: Path) -> None:
    layers, size = NETS["identity, nested"]
    model = make("identity, nested")
    model.save(tmp_path / "m.gguf")
    loaded = load(tmp_path / "m.gguf", threads=THREADS)
    assert loaded.layers == model.layers and loaded.architecture == "ggml-mnist"
    assert same_weights(loaded, model)
    x = images(5, size)
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    fields, _ = read_gguf(tmp_path / "m.gguf")
    assert fields["ggml_mnist.layers.kind"] == [
        "conv2d",
        "tanh",
        "conv2d",
        "silu",
        "conv2d",
        "tanh",
        "residual",
        "residual",
        "avgpool2d",
        "dense",
    ]
    assert fields["ggml_mnist.layers.body"] == [0, 0, 0, 0, 0, 0, 2, 5, 0, 0]
    Model.create([Dense(5), Dense()], n_classes=3, image_size=(4, 4), threads=THREADS).save(tmp_path / "plain.gguf")
    assert "ggml_mnist.layers.body" not in read_gguf(tmp_path / "plain.gguf")[0]


def residual_file(path: Path, body: object = (0, 0, 1, 0)) -> Path:
    """A layer list with a residual block, written with the gguf package; body=None leaves the key out."""
    layers: dict[str, list] = {
        "kind": ["dense", "relu", "residual", "dense"],
        "name": ["h", "", "r", "o"],
        "units": [5, 0, 0, 3],
        "kernel": [0] * 4,
        "stride": [0] * 4,
        "padding": [0] * 4,
        "dropout": [0.0] * 4,
    }
    if body is not None:
        layers["body"] = list(body)
    return foreign_net_file(path, layers)


def test_a_residual_file_from_another_tool_loads_and_broken_ones_are_refused(tmp_path: Path) -> None:
    model = load(residual_file(tmp_path / "m.gguf"), threads=THREADS)
    assert model.layers == [Dense(5, name="h"), ReLU(), Residual(1, name="r"), Dense(3, name="o")]
    x = images(4, (4, 4))
    np.testing.assert_allclose(
        model.predict_proba(x), reference_net_proba(model.layers, model.get_weights(), x), atol=1e-5
    )
    with pytest.raises(ModelFormatError, match=r"missing key ggml_mnist.layers.body \(the layer list is incomplete\)"):
        load(residual_file(tmp_path / "a.gguf", body=None), threads=THREADS)
    with pytest.raises(
        ModelFormatError, match=r"layer 2 \(residual r\): its body of 3 layers must be 1 to the 2 layers"
    ):
        load(residual_file(tmp_path / "b.gguf", body=(0, 0, 3, 0)), threads=THREADS)


# ---- refusals, JSON ------------------------------------------------------------------------------------------------
REFUSED = [
    ([Dense(4), Residual(0), Dense()], r"layer 1 \(residual res1\): its body of 0 layers must be 1 to the 1 layers"),
    ([Residual(1), Dense()], r"layer 0 \(residual res1\): its body of 1 layers must be 1 to the 0 layers before it"),
    (
        [Conv2d(2, 3, padding=1), Conv2d(2, 3, padding=1), Residual(1), Residual(1), Dense()],
        r"layer 3 \(residual res2\): its body \(layers 2 to 2\) cuts through the block that layer 2 ends "
        r"\(layers 1 to 1\)",
    ),
    ([Conv2d(2, 3), Dense(4), Residual(2), Dense()], r"layer 2 \(residual res1\): its body flattens its input"),
    (
        [Conv2d(2, 3), Conv2d(2, 3), Residual(1), Dense()],
        r"layer 2 \(residual res1\): its body turns a 6x6 input into 4x4, which no strided 1x1 convolution of the "
        r"input matches; pad the body's",
    ),
    ([Dense(4), Dense(4), Residual(1)], r"the last layer must be a dense layer"),
    ([Dense(4), Residual(1.5), Dense()], r"Residual body must be a whole number, got 1.5"),
]


@pytest.mark.parametrize("layers, match", REFUSED, ids=[m.split(": ")[-1][:40] for _, m in REFUSED])
def test_impossible_blocks_are_refused_before_ggml(layers: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Model.create(layers, n_classes=3, image_size=(8, 8), threads=THREADS)


def test_a_block_needs_layers() -> None:
    with pytest.raises(ConfigError, match="needs at least one layer"):
        residual([])
    with pytest.raises(ConfigError, match=r"a residual block's body holds layers such as .*; got 'relu'"):
        residual(["relu"])


def test_json_layer_files_write_blocks_flat_and_read_them_nested_too(tmp_path: Path) -> None:
    net = Sequential([Conv2d(4, 3, padding=1), *residual([Conv2d(4, 3, padding=1), ReLU()], name="block"), Dense()])
    path = tmp_path / "net.json"
    path.write_text(net.to_json())
    assert load_layers(path) == net.layers
    assert json.loads(path.read_text())["layers"][3] == {"type": "residual", "body": 2, "name": "block"}
    nested = [
        {"type": "conv2d", "out_channels": 4, "padding": 1},
        {
            "type": "residual",
            "name": "block",
            "layers": [
                {"type": "conv2d", "out_channels": 4, "padding": 1},
                {"type": "residual", "layers": [{"type": "relu"}]},
            ],
        },
        {"type": "dense"},
    ]
    path.write_text(json.dumps({"layers": nested}))
    assert load_layers(path) == [
        Conv2d(4, 3, padding=1),
        Conv2d(4, 3, padding=1),
        ReLU(),
        Residual(1),
        Residual(3, name="block"),
        Dense(),
    ]
    path.write_text(json.dumps([{"type": "dense", "units": 4}, {"type": "residual", "layers": {}}, {"type": "dense"}]))
    with pytest.raises(ConfigError, match=r"residual block: it takes a list \"layers\" and a \"name\""):
        load_layers(path)
    model = Model.create(net, threads=THREADS)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith("block (residual over 2 layers)") for line in lines)
