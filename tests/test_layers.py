"""Networks as data: presets, the numpy reference of any layer list, gradients of every layer kind,
refusals, the GGUF layer list and the Python/JSON/CLI ways of describing a network."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import ConfigError, Model, ModelFormatError, cli, load, train
from ggml_mnist._ffi import ffi, lib
from ggml_mnist.layers import (
    GELU,
    AvgPool2d,
    Conv2d,
    Dense,
    Dropout,
    MaxPool2d,
    ReLU,
    Sequential,
    SiLU,
    Tanh,
    load_layers,
)
from support.helpers import (
    THREADS,
    check_sgd_gradient,
    foreign_net_file,
    gelu_tanh,
    images,
    read_gguf,
    reference_net_proba,
    spread_weights,
    summary_rows,
)

PRESETS = ["fc", "cnn", "fast", "mlp800", "minerva-mlp", "minerva-cnn", "lenet5", "letters-cnn", "best"]

# Small networks that between them use every layer kind and option: strided and padded convolutions,
# max and average pooling with padding, every activation and dropout on spatial and flat inputs.
KINDS = {
    "conv stride 2 pad 1, silu, avgpool pad 1": (
        [Conv2d(3, 3, stride=2, padding=1), SiLU(), AvgPool2d(3, 2, 1), Dense()],
        (10, 10),
    ),
    "conv 5x5, gelu, maxpool pad 1, tanh dense": (
        [Conv2d(2, 5), GELU(), MaxPool2d(2, 2, 1), Dense(6), Tanh(), Dense()],
        (11, 9),
    ),
    "two convs, relu, maxpool 3/3": (
        [Conv2d(3, 3, padding=1), ReLU(), Conv2d(4, 3), ReLU(), MaxPool2d(3, 3), Dense()],
        (12, 12),
    ),
    "dense gelu silu": ([Dense(7), GELU(), Dense(5), SiLU(), Dense()], (6, 8)),
}
DROPOUT = {
    "dropout after dense": ([Dense(9), ReLU(), Dropout(0.5), Dense()], (6, 6)),
    "dropout on a feature map": ([Conv2d(3, 3, padding=1), Dropout(0.3), MaxPool2d(2), Dense()], (8, 8)),
}


# ---- presets -------------------------------------------------------------------------------------
def test_presets_are_listed_with_their_layers() -> None:
    table = gm.presets()
    assert list(table) == PRESETS
    assert table["fc"] == [Dense(500, name="fc1"), ReLU(), Dense(10, name="fc2")]
    assert table["cnn"] == [
        Conv2d(8, 3, 1, 1, name="conv1"),
        ReLU(),
        MaxPool2d(2, 2, 0),
        Conv2d(16, 3, 1, 1, name="conv2"),
        ReLU(),
        MaxPool2d(2, 2, 0),
        Dense(10, name="dense"),
    ]
    assert table["fast"] == table["cnn"]  # cnn's network under the 10-second recipe
    assert gm.presets(n_classes=26)["lenet5"][-1] == Dense(26, name="fc3")
    assert [x.kind for x in table["letters-cnn"]][:3] == ["conv2d", "maxpool2d", "gelu"]


@pytest.mark.parametrize(
    "name, n_params, shapes",
    [
        ("fc", 397_510, [(500,), (10,)]),
        ("cnn", 9_098, [(28, 28, 8), (14, 14, 8), (14, 14, 16), (7, 7, 16), (10,)]),
        ("mlp800", 636_010, [(800,), (10,)]),
        ("minerva-mlp", 203_530, [(256,), (10,)]),
        ("minerva-cnn", 18_378, [(24, 24, 16), (12, 12, 16), (12, 12, 32), (4, 4, 32), (10,)]),
        ("lenet5", 61_706, [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (120,), (84,), (10,)]),
        (
            "letters-cnn",
            135_114,
            [(26, 26, 32), (13, 13, 32), (11, 11, 64), (6, 6, 64), (4, 4, 128), (2, 2, 128), (64,), (128,), (10,)],
        ),
        (
            "best",
            390_410,
            [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (7, 7, 128), (3, 3, 128), (256,), (10,)],
        ),
    ],
)
def test_preset_shapes_and_parameter_counts(name: str, n_params: int, shapes: list) -> None:
    model = Model.create(name, threads=THREADS)
    assert model.arch == name and model.n_params == n_params
    assert sum(w.size for w in model.get_weights().values()) == n_params
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert lines[-1] == f"Total params: {n_params:,}"
    rows = summary_rows(lines)
    assert len(rows) == len(model.layers)
    changes = []  # the distinct shapes along the network, as the summary prints them
    for line in rows:
        shape = tuple(int(v) for v in re.findall(r"\((\d+(?:, \d+)*),?\)", line)[-1].split(", "))
        if not changes or changes[-1] != shape:
            changes.append(shape)
    assert changes == shapes


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_matches_the_numpy_reference_and_round_trips(name: str, tmp_path: Path) -> None:
    model = Model.create(name, seed=5, threads=THREADS)
    x = images(6, model.image_size)
    spread_weights(model, scale=2.0)
    probs = model.predict_proba(x)
    reference = reference_net_proba(model.layers, model.get_weights(), x)
    assert reference.max(axis=1).mean() > 0.2  # twice uniform or more, so a wrong layout would show
    np.testing.assert_allclose(probs, reference, atol=2e-5, rtol=0)
    model.save(tmp_path / "m.gguf")
    loaded = load(tmp_path / "m.gguf", threads=THREADS)
    assert loaded.layers == model.layers and loaded.arch == {"fast": "cnn"}.get(name, name)  # fast is cnn's network
    assert loaded.architecture == {"fc": "mnist-fc", "cnn": "mnist-cnn", "fast": "mnist-cnn"}.get(name, "ggml-mnist")
    assert np.array_equal(loaded.predict_proba(x), probs)


@pytest.mark.parametrize("name", ["fc", "cnn", "lenet5", "best"])
def test_large_batches_match_the_reference_and_do_not_depend_on_the_thread_count(name: str) -> None:
    """With 64 images or more, every product (dense layers too) runs the shim's matrix kernel on the CPU: 130
    images give edge tiles of both sizes. It sums each output in a fixed order, so threads change no bit."""
    x = images(130, (28, 28), seed=4)
    probs = {}
    for threads in (1, 2, 3):
        model = Model.create(name, seed=5, threads=threads)
        if threads == 1:
            spread_weights(model, scale=2.0)
            weights = model.get_weights()
        else:
            model.set_weights(weights)
        probs[threads] = model.predict_proba(x)
    reference = reference_net_proba(model.layers, weights, x)
    np.testing.assert_allclose(probs[1], reference, atol=2e-5, rtol=0)
    assert np.array_equal(probs[1], probs[2]) and np.array_equal(probs[1], probs[3])
    np.testing.assert_allclose(
        model.predict_proba(x[:6]), probs[1][:6], atol=2e-5, rtol=0
    )  # a few images: ggml's products


@pytest.mark.parametrize("case", list(KINDS) + list(DROPOUT))
def test_custom_networks_match_the_numpy_reference(case: str) -> None:
    layers, size = {**KINDS, **DROPOUT}[case]
    model = Model.create(layers, n_classes=4, image_size=size, seed=2, threads=THREADS)
    spread_weights(model, scale=2.0)
    x = images(9, size)
    np.testing.assert_allclose(
        model.predict_proba(x), reference_net_proba(model.layers, model.get_weights(), x), atol=2e-5
    )


def conv_kernels_as_torch(layers: list, weights: dict) -> dict:
    """weights with every convolution kernel as [O, C, k, k] (tensor_shapes drops trailing 1s: O = C = 1 gives [k, k])"""
    out = dict(weights)
    for layer in layers:
        if isinstance(layer, Conv2d):
            k = layer.kernel_size
            out[f"{layer.name}.kernel"] = np.asarray(weights[f"{layer.name}.kernel"]).reshape(
                layer.out_channels, -1, k, k
            )
    return out


def test_random_convolutions_match_the_numpy_reference() -> None:
    """Seeded random kernel sizes, strides, paddings, channel counts, image sizes and batch sizes, which reach the
    column-gathering ops' edge cases: windows of fewer than 8 values (1x1 kernels, one channel), strides larger than
    the kernel, a thread's last columns, and batches above and below the size at which the shim's own matrix
    product takes over from ggml's."""
    rng = np.random.default_rng(20261202)
    checked = 0
    while checked < 40:
        k = int(rng.integers(1, 6))
        layers = [
            Conv2d(int(rng.integers(1, 6)), k, stride=int(rng.integers(1, 4)), padding=int(rng.integers(0, k // 2 + 1)))
        ]
        if rng.random() < 0.5:
            k2 = int(rng.integers(1, 4))
            layers.append(
                Conv2d(
                    int(rng.integers(1, 9)),
                    k2,
                    stride=int(rng.integers(1, 3)),
                    padding=int(rng.integers(0, k2 // 2 + 1)),
                )
            )
        if rng.random() < 0.3:
            layers.append(AvgPool2d(2, 1, 1) if rng.random() < 0.5 else MaxPool2d(2, 1))
        layers.append(Dense())
        size = (int(rng.integers(k, 20)), int(rng.integers(k, 20)))
        try:
            model = Model.create(layers, n_classes=3, image_size=size, seed=checked, threads=THREADS)
        except ConfigError:  # too small an image for this stack of layers
            continue
        spread_weights(model, scale=2.0)
        x = images(int(rng.choice([1, 2, 5, 40])), size, seed=checked)
        expected = reference_net_proba(model.layers, conv_kernels_as_torch(model.layers, model.get_weights()), x)
        np.testing.assert_allclose(model.predict_proba(x), expected, atol=5e-5, err_msg=f"{layers} on {size} images")
        checked += 1


# ---- activations against the exact functions -------------------------------------------------------
EXACT = {
    "relu": (ReLU(), lambda z: np.maximum(z, 0.0), 1e-5),
    "silu": (SiLU(), lambda z: z / (1.0 + np.exp(-z)), 1e-4),
    "tanh": (Tanh(), np.tanh, 1e-5),
    "gelu": (GELU(), lambda z: np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z]), 1e-3),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_activation_follows_the_exact_function(name: str) -> None:
    """A network whose output exposes the activation: z = 20 * pixel - 10 enters it, and the logit of class 0 is a(z)."""
    act, exact, tol = EXACT[name]
    model = Model.create(
        [Dense(1, name="pre"), act, Dense(2, name="out")], n_classes=2, image_size=(4, 4), threads=THREADS
    )
    pre = np.zeros((1, 16), np.float32)
    pre[0, 0] = 20.0
    model.set_weights(
        {
            "pre.weight": pre,
            "pre.bias": np.array([-10.0], np.float32),
            "out.weight": np.array([[1.0], [0.0]], np.float32),
            "out.bias": np.zeros(2, np.float32),
        }
    )
    pixels = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    x = np.zeros((201, 4, 4), np.float32)
    x[:, 0, 0] = pixels
    probs = model.predict_proba(x).astype(np.float64)
    z = 20.0 * pixels.astype(np.float64) - 10.0
    seen = np.log(probs[:, 0]) - np.log(probs[:, 1])
    np.testing.assert_allclose(seen, exact(z), atol=tol, rtol=1e-4)
    if name == "gelu":
        np.testing.assert_allclose(seen, gelu_tanh(z), atol=2e-5, rtol=1e-4)


# ---- gradients ------------------------------------------------------------------------------------
def mean_loss(layers: list, weights: dict, x: np.ndarray, y: np.ndarray, masks: dict | None = None) -> float:
    probs = reference_net_proba(layers, weights, x, masks)
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def dropout_masks(model: Model, batch: int) -> dict[int, np.ndarray]:
    """The masks of the last training batch, in the reference's layout ([B, H, W, C] or [B, units])."""
    masks = {}
    h, w = model.image_size
    shape: tuple[int, ...] = (h, w, 1)
    for i, (layer, info) in enumerate(zip(model.layers, model.layer_info())):
        if isinstance(layer, Dropout):
            flat = len(shape) == 1
            mask = np.empty(batch * int(np.prod(shape)), np.float32)
            assert (
                lib.gmn_model_dropout_mask(model._handle, i, ffi.cast("float *", ffi.from_buffer(mask)), mask.size) == 0
            )
            masks[i] = (
                mask.reshape(batch, *shape)
                if flat
                else mask.reshape(batch, shape[2], shape[0], shape[1]).transpose(0, 2, 3, 1)
            )
        shape = (info[2],) if isinstance(layer, Dense) or len(shape) == 1 else (info[0], info[1], info[2])
    return masks


def check_one_sgd_step(layers: list, size: tuple[int, int], n: int, n_classes: int = 4) -> int:
    """Train one SGD step (lr 1, one batch of n) and compare every parameter's move with finite differences."""
    rng = np.random.default_rng(11)
    x = images(n, size, seed=3)
    y = rng.integers(0, n_classes, size=n)
    before = Model.create(layers, n_classes=n_classes, image_size=size, seed=5, threads=THREADS)
    start = before.get_weights()
    seen: dict = {}  # the masks can be read while training runs; train() frees the training state when it returns

    def keep_masks(stats, m: Model) -> None:
        if any(isinstance(layer, Dropout) for layer in layers):
            seen["masks"] = dropout_masks(m, n)

    model, _ = train(
        x,
        y,
        arch=layers,
        n_classes=n_classes,
        epochs=1,
        batch_size=n,
        optimizer="sgd",
        lr=1.0,
        lr_schedule="constant",
        weight_decay=0.0,
        seed=5,
        threads=THREADS,
        progress=False,
        on_epoch=keep_masks,
    )
    masks = seen.get("masks")
    for i, m in (masks or {}).items():
        p = model.layers[i].p
        assert set(np.unique(m)) <= {0.0, np.float32(1 / (1 - p))}
    return check_sgd_gradient(
        start, model.get_weights(), 1.0, lambda w: mean_loss(model.layers, w, x, y, masks), 5, rng, abs_tol=3e-5
    )


@pytest.mark.parametrize("case", list(KINDS))
def test_one_sgd_step_follows_the_true_gradient(case: str) -> None:
    layers, size = KINDS[case]
    assert check_one_sgd_step(layers, size, n=6) >= 16


@pytest.mark.parametrize("case", list(DROPOUT))
def test_dropout_gradients_with_the_step_mask(case: str) -> None:
    """One image per batch, so the mask rows need no shuffle order."""
    layers, size = DROPOUT[case]
    assert check_one_sgd_step(layers, size, n=1) >= 12


def test_dropout_is_seeded_and_only_active_in_training() -> None:
    layers, size = DROPOUT["dropout after dense"]
    x = images(60, size)
    y = np.arange(60) % 4
    options = dict(arch=layers, epochs=2, batch_size=10, seed=3, threads=THREADS, progress=False)
    a, _ = train(x, y, **options)
    b, _ = train(x, y, **options)
    c, _ = train(x, y, **{**options, "seed": 4})
    assert all(np.array_equal(a.get_weights()[k], v) for k, v in b.get_weights().items())
    assert not all(np.array_equal(a.get_weights()[k], v) for k, v in c.get_weights().items())
    # predicting is deterministic and equals the network without dropout
    np.testing.assert_allclose(a.predict_proba(x), reference_net_proba(a.layers, a.get_weights(), x), atol=2e-5)
    assert np.array_equal(a.predict_proba(x), a.predict_proba(x))
    same_order, _ = train(x, y, **{**options, "arch": [Dense(9), ReLU(), Dropout(0.0), Dense()]})
    plain, _ = train(x, y, **{**options, "arch": [Dense(9), ReLU(), Dense()]})
    assert all(np.array_equal(same_order.get_weights()[k], v) for k, v in plain.get_weights().items())


def test_dropout_mask_outside_training_is_a_state_error() -> None:
    layers = DROPOUT["dropout after dense"][0]
    buf = np.empty(9, np.float32)
    for model in (
        Model.create(layers, n_classes=4, image_size=(6, 6), threads=THREADS),
        train(
            images(10, (6, 6)), np.arange(10) % 4, arch=layers, epochs=1, batch_size=10, threads=THREADS, progress=False
        )[0],
    ):  # train() has released its state
        assert (
            lib.gmn_model_dropout_mask(model._handle, 2, ffi.cast("float *", ffi.from_buffer(buf)), 9)
            == lib.GMN_E_STATE
        )
        assert (
            lib.gmn_model_dropout_mask(model._handle, 1, ffi.cast("float *", ffi.from_buffer(buf)), 9)
            == lib.GMN_E_INVALID
        )


# ---- refusals ---------------------------------------------------------------------------------------
REFUSED = [
    ([Conv2d(4, 9), Dense()], (6, 6), r"layer 0 \(conv2d conv1\): the kernel 9x9 is larger than its 6x6 input"),
    ([Conv2d(0, 3), Dense()], (28, 28), r"layer 0 \(conv2d conv1\): 0 output channels; use 1 to 4096"),
    (
        [Conv2d(4, 3), MaxPool2d(2), MaxPool2d(2), MaxPool2d(2), MaxPool2d(5), Dense()],
        (28, 28),
        r"layer 4 \(maxpool2d\): the window 5x5 is larger than its 3x3 input",
    ),
    (
        [MaxPool2d(2, padding=2), Dense()],
        (28, 28),
        r"layer 0 \(maxpool2d\): padding 2 must be in \[0, 1\] for a window of 2",
    ),
    ([Conv2d(4, 3, padding=3), Dense()], (28, 28), r"padding 3 must be in \[0, 2\] for a kernel of 3"),
    ([Conv2d(4, 3, stride=0), Dense()], (28, 28), r"stride 0 must be in \[1, 32\]"),
    ([Conv2d(4, 40), Dense()], (64, 64), r"kernel size 40 must be in \[1, 32\]"),
    ([Dense(0), Dense()], (28, 28), r"layer 0 \(dense fc1\): 0 units; use 1 to 65536"),
    (
        [Dense(65536), ReLU(), Dense(2000), Dense()],
        (28, 28),
        r"layer 2 \(dense fc2\): the network reaches \d+ parameters here, over the limit of 100000000",
    ),
    (
        [Dense(8), Conv2d(2, 3), Dense()],
        (28, 28),
        r"layer 1 \(conv2d conv1\): its input is flat \(it follows a dense layer\)",
    ),
    ([Conv2d(4, 3), ReLU()], (28, 28), r"the last layer must be a dense layer with one unit per class"),
    ([Dense(8), Dropout(1.0), Dense()], (28, 28), r"layer 1 \(dropout\): drop probability 1 must be in \[0, 1\)"),
    ([Dense(8, name="a"), Dense(name="a")], (28, 28), r"layer 1 \(dense a\): name 'a' is already used by layer 0"),
    ([Dense(8, name="fc 1"), Dense()], (28, 28), r"name 'fc 1' must be 1-31 characters of A-Z, a-z, 0-9 and _"),
    ([Dense(8, name="x" * 40), Dense()], (28, 28), r"its name is longer than 31 characters"),
    ([ReLU()] * 64 + [Dense()], (28, 28), r"the network has 65 layers; at most 64 are supported"),
    ([Dense()], (3, 28), r"image size 3x28 is out of range \[4, 4096\]"),
]


@pytest.mark.parametrize("layers, size, match", REFUSED, ids=[m.split(":")[-1][:40] for _, _, m in REFUSED])
def test_impossible_networks_are_refused_before_ggml(layers: list, size: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Model.create(layers, image_size=size, threads=THREADS)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=match):
        train(
            images(20, size), np.arange(20) % 10, arch=layers, epochs=1, batch_size=10, threads=THREADS, progress=False
        )


@pytest.mark.parametrize(
    "arch, match",
    [
        ([], r"empty list of layers"),
        (["relu"], r"each layer must be an object with a \"type\""),
        ([{"type": "lstm"}], r"unknown layer type 'lstm'"),
        (
            [{"type": "conv2d", "out_channels": 4, "size": 3}],
            r"conv2d layer: unknown field\(s\) size; it takes out_channels",
        ),
        ([Conv2d(4.5, 3), Dense()], r"Conv2d out_channels must be a whole number, got 4.5"),
        ([Dropout("x"), Dense()], r"Dropout p must be a number in \[0, 1\), got 'x'"),
        (42, r"arch must be a preset name or a list of layers, got 42"),
    ],
)
def test_bad_layer_descriptions_are_config_errors(arch: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(
            images(20, (28, 28)),
            np.arange(20) % 10,
            arch=arch,
            epochs=1,
            batch_size=10,
            threads=THREADS,
            progress=False,
        )


# ---- GGUF -------------------------------------------------------------------------------------------
def test_the_layer_list_is_stored_as_typed_keys(tmp_path: Path) -> None:
    layers, size = KINDS["conv 5x5, gelu, maxpool pad 1, tanh dense"]
    Model.create([*layers[:-1], Dropout(0.25), Dense(name="head")], n_classes=3, image_size=size, threads=THREADS).save(
        tmp_path / "m.gguf"
    )
    fields, tensors = read_gguf(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "ggml-mnist"
    assert fields["ggml_mnist.layers.kind"] == ["conv2d", "gelu", "maxpool2d", "dense", "tanh", "dropout", "dense"]
    assert fields["ggml_mnist.layers.name"] == ["conv1", "", "", "fc1", "", "", "head"]
    assert fields["ggml_mnist.layers.units"] == [2, 0, 0, 6, 0, 0, 3]
    assert fields["ggml_mnist.layers.kernel"] == [5, 0, 2, 0, 0, 0, 0]
    assert fields["ggml_mnist.layers.stride"] == [1, 0, 2, 0, 0, 0, 0]
    assert fields["ggml_mnist.layers.padding"] == [0, 0, 1, 0, 0, 0, 0]
    assert fields["ggml_mnist.layers.dropout"] == pytest.approx([0, 0, 0, 0, 0, 0.25, 0])
    assert (fields["ggml_mnist.image_height"], fields["ggml_mnist.image_width"], fields["ggml_mnist.n_classes"]) == (
        11,
        9,
        3,
    )
    assert sorted(tensors) == ["conv1.bias", "conv1.kernel", "fc1.bias", "fc1.weight", "head.bias", "head.weight"]


def layer_file(path: Path, **changes: object) -> Path:
    """A valid layer-list file written with the gguf package (not by us), with keys replaced or removed (None)."""
    layers = {
        "kind": ["dense", "relu", "dense"],
        "name": ["h", "", "o"],
        "units": [5, 0, 3],
        "kernel": [0, 0, 0],
        "stride": [0, 0, 0],
        "padding": [0, 0, 0],
        "dropout": [0.0, 0.0, 0.0],
    }
    return foreign_net_file(path, layers, changes)


def test_a_layer_list_file_from_another_tool_loads(tmp_path: Path) -> None:
    model = load(layer_file(tmp_path / "m.gguf"), threads=THREADS)
    assert model.layers == [Dense(5, name="h"), ReLU(), Dense(3, name="o")] and model.n_classes == 3
    x = images(4, (4, 4))
    np.testing.assert_allclose(
        model.predict_proba(x), reference_net_proba(model.layers, model.get_weights(), x), atol=1e-5
    )


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(units=None), r"missing key ggml_mnist.layers.units \(the layer list is incomplete\)"),
        (dict(units=["5", "0", "3"]), r"key ggml_mnist.layers.units must be an array of i32"),
        (dict(kind=[1, 2, 3]), r"key ggml_mnist.layers.kind must be an array of str"),
        (dict(units=[5, 0]), r"key ggml_mnist.layers.units has 2 entries but the network has 3 layers"),
        (dict(kind=["dense", "lstm", "dense"]), r"layer 1 has unknown kind 'lstm'"),
        (dict(units=[0, 0, 3]), r"network: layer 0 \(dense h\): 0 units"),
        (dict(units=[5, 0, 4]), r"tensor o.weight has shape \[5,3,1,1\] but \[5,4,1,1\] is expected"),
        (dict(name=["h", "", "x" * 40]), r"layer 2 has a name longer than 31 characters"),
        (dict(kind=["relu"] * 70, name=[""] * 70), r"the network has 70 layers; 1 to 64 are supported"),
    ],
)
def test_broken_layer_lists_are_refused_by_name(changes: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=match):
        load(layer_file(tmp_path / "bad.gguf", **changes), threads=THREADS)


# ---- Sequential, JSON and the CLI ------------------------------------------------------------------
def test_sequential_json_round_trip_and_training(tmp_path: Path) -> None:
    net = Sequential(
        [Conv2d(4, 3, padding=1, name="c"), ReLU(), MaxPool2d(2), Dropout(0.2), Dense(16), GELU(), Dense()]
    )
    path = tmp_path / "net.json"
    path.write_text(net.to_json())
    assert load_layers(path) == net.layers
    assert json.loads(path.read_text())["layers"][0] == {
        "type": "conv2d",
        "out_channels": 4,
        "kernel_size": 3,
        "stride": 1,
        "padding": 1,
        "name": "c",
    }
    model, history = train(
        images(40, (28, 28)), np.arange(40) % 10, arch=net, epochs=1, batch_size=20, threads=THREADS, progress=False
    )
    assert model.arch == "custom" and [x.kind for x in model.layers][-1] == "dense"
    assert model.metadata["config"]["arch"][0]["type"] == "conv2d"


def test_cli_trains_an_arch_file_and_info_prints_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d"
    data.mkdir()
    gm.write_idx(data / "x.idx", images(40, (28, 28)))
    gm.write_idx(data / "y.idx", (np.arange(40) % 10).astype(np.uint8))
    (tmp_path / "net.json").write_text(
        json.dumps(
            [
                {"type": "conv2d", "out_channels": 3, "kernel_size": 5},
                {"type": "tanh"},
                {"type": "avgpool2d", "kernel_size": 2},
                {"type": "dense"},
            ]
        )
    )
    out = tmp_path / "m.gguf"
    assert (
        cli.train_main(
            [
                "--arch-file",
                str(tmp_path / "net.json"),
                str(out),
                str(data / "x.idx"),
                str(data / "y.idx"),
                "--epochs",
                "1",
                "--batch-size",
                "20",
                "--threads",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert load(out).layers == [Conv2d(3, 5, name="conv1"), Tanh(), AvgPool2d(2, 2), Dense(10, name="fc1")]
    capsys.readouterr()
    assert cli.eval_main([str(out), "--info"]) == 0
    text = capsys.readouterr().out
    assert "architecture: ggml-mnist (custom)" in text and "conv1 (conv2d 5x5)" in text and "(24, 24, 3)" in text
    assert "avgpool2d 2x2 /2" in text and f"Total params: {78 + 12 * 12 * 3 * 10 + 10:,}" in text
    (tmp_path / "bad.json").write_text('[{"type": "conv2d"}]')
    assert cli.train_main(["--arch-file", str(tmp_path / "bad.json"), str(out), "--quiet"]) == 1
    assert "conv2d layer: " in capsys.readouterr().err
