"""Batch normalisation as a layer kind: the training forward pass and its gradient against numpy and finite
differences, the running statistics (their update after every physical batch, their use when predicting, GGUF),
both graph forms, quantisation, validation and a small training run that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import ConfigError, GgmlMnistError, Model, ModelFormatError, load, train
from ggml_mnist.layers import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    MaxPool2d,
    ReLU,
    Sequential,
    Tanh,
    load_layers,
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
    write_gguf,
)

# BatchNorm after a strided, padded convolution, after average and max pooling, and after a dense layer
NETS = {
    "conv": ([Conv2d(3, 3, stride=2, padding=1), BatchNorm(momentum=0.3), Tanh(), AvgPool2d(2), Dense()], (9, 10)),
    "pool and dense": (
        [Conv2d(2, 3, padding=1), ReLU(), MaxPool2d(2), BatchNorm(eps=1e-3), Dense(5), BatchNorm(), ReLU(), Dense()],
        (8, 8),
    ),
}
RUNNING = ("running_mean", "running_var")


def batchnorms(model: Model) -> list[tuple[int, BatchNorm]]:
    return [(i, x) for i, x in enumerate(model.layers) if isinstance(x, BatchNorm)]


def random_weights(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights far from the defaults: spread parameters, random running means and positive running variances."""
    weights = spread_weights(model, scale=2.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for _, layer in batchnorms(model):
        c = weights[f"{layer.name}.weight"].size
        weights[f"{layer.name}.weight"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        weights[f"{layer.name}.bias"] = rng.normal(0.0, 0.5, c).astype(np.float32)
        weights[f"{layer.name}.running_mean"] = rng.normal(0.0, 0.5, c).astype(np.float32)
        weights[f"{layer.name}.running_var"] = rng.uniform(0.2, 3.0, c).astype(np.float32)
    model.set_weights(weights)
    return model.get_weights()


def training_loss(layers: list, weights: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the batch x in training mode (batch statistics), in float64."""
    probs = reference_net_proba(layers, weights, x, batch_stats={})
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def one_sgd_step(layers: list, size: tuple[int, int], n: int, graph: str, seed: int = 5, **options):
    """(model before, model after one SGD step of lr 1 on one batch of all n images, images, labels, history)."""
    x = images(n, size, seed=3)
    y = np.random.default_rng(11).integers(0, 4, size=n)
    start = Model.create(layers, n_classes=4, image_size=size, seed=seed, threads=THREADS, graph=graph)
    random_weights(start)
    after, history = sgd_step(start, x, y, graph, **options)
    return start, after, x, y, history


# ---- the layer and its tensors -------------------------------------------------------------------------------------
def test_the_layer_has_pytorch_defaults_and_four_named_tensors() -> None:
    layers, size = NETS["pool and dense"]
    model = Model.create(layers, n_classes=4, image_size=size, threads=THREADS)
    assert BatchNorm() == BatchNorm(0.1, 1e-5) and BatchNorm().kind == "batchnorm"
    assert [(i, x.name) for i, x in batchnorms(model)] == [(3, "bn1"), (5, "bn2")]
    shapes = model.tensor_shapes()
    assert {k: v for k, v in shapes.items() if k.startswith("bn")} == {
        "bn1.weight": (2,),
        "bn1.bias": (2,),
        "bn1.running_mean": (2,),
        "bn1.running_var": (2,),
        "bn2.weight": (5,),
        "bn2.bias": (5,),
        "bn2.running_mean": (5,),
        "bn2.running_var": (5,),
    }
    w = model.get_weights()
    for name in ("bn1", "bn2"):
        assert (w[f"{name}.weight"] == 1).all() and (w[f"{name}.bias"] == 0).all()
        assert (w[f"{name}.running_mean"] == 0).all() and (w[f"{name}.running_var"] == 1).all()
    # the parameters are what the optimizer trains: weight and bias, not the running statistics
    assert [info[3] for info in model.layer_info()][3] == 4 and model.n_params == sum(
        v.size for k, v in w.items() if not k.endswith(RUNNING)
    )
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith("bn1 (batchnorm eps=0.001)") for line in lines)


def test_names_default_to_bn_n_and_must_be_unique() -> None:
    model = Model.create(
        [Dense(4), BatchNorm(name="norm"), Dense(3), BatchNorm(), Dense()],
        n_classes=2,
        image_size=(4, 4),
        threads=THREADS,
    )
    assert [x.name for _, x in batchnorms(model)] == ["norm", "bn2"]
    with pytest.raises(ConfigError, match=r"layer 1 \(batchnorm h\): name 'h' is already used by layer 0"):
        Model.create(
            [Dense(4, name="h"), BatchNorm(name="h"), Dense()], n_classes=2, image_size=(4, 4), threads=THREADS
        )


def test_get_and_set_weights_include_the_running_statistics() -> None:
    layers, size = NETS["conv"]
    model = Model.create(layers, n_classes=4, image_size=size, threads=THREADS)
    weights = random_weights(model)
    assert {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"} <= set(weights)
    copy = Model.create(layers, n_classes=4, image_size=size, seed=9, threads=THREADS)
    copy.set_weights(weights)
    x = images(5, size)
    assert np.array_equal(copy.predict_proba(x), model.predict_proba(x))
    copy.set_weights({"bn1.running_var": weights["bn1.running_var"] * 4})  # the statistics change the prediction
    assert not np.allclose(copy.predict_proba(x), model.predict_proba(x))


# ---- prediction with the running statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["cpu", "portable"])
@pytest.mark.parametrize("case", list(NETS))
def test_prediction_normalises_with_the_running_statistics(case: str, graph: str) -> None:
    layers, size = NETS[case]
    model = Model.create(layers, n_classes=4, image_size=size, seed=2, threads=THREADS, graph=graph)
    weights = random_weights(model)
    x = images(70, size, seed=1)  # 70: the CPU's own matrix product too
    expected = reference_net_proba(model.layers, weights, x)
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(model.predict_proba(x[:3]), expected[:3], atol=2e-5, rtol=0)  # a different batch
    maps = model.activations(x[0])
    for i, _ in batchnorms(model):  # the feature maps after the layer (channels-first), for one image
        after = reference_logits(model.layers[: i + 1], weights, x[:1])[0]
        np.testing.assert_allclose(np.asarray(maps[i]).ravel(), np.moveaxis(after, -1, 0).ravel(), atol=2e-5)


def test_a_quantised_model_keeps_its_batchnorm_tensors_f32() -> None:
    layers, size = NETS["pool and dense"]
    model = Model.create(layers, n_classes=4, image_size=size, seed=2, threads=THREADS)
    random_weights(model)
    x = images(9, size, seed=1)
    for kind in ("f16", "q8_0"):
        q = model.quantize(kind, pad=True)
        storage = q.tensor_storage()
        assert all(
            storage[f"{name}.{t}"].type == "f32"
            for name in ("bn1", "bn2")
            for t in ("weight", "bias", "running_mean", "running_var")
        )
        assert storage["conv1.kernel"].type == "f16"  # channels-first prediction graph of quantised kernels
        # (ggml rounds the inputs of an f16 or block-type product too: hence 1e-3, which a wrong normalisation exceeds)
        np.testing.assert_allclose(q.predict_proba(x), reference_net_proba(q.layers, q.get_weights(), x), atol=1e-3)
        np.testing.assert_allclose(q.predict_proba(x), model.predict_proba(x), atol=0.05)
        assert np.array_equal(gm.Model.from_bytes(q.to_bytes(), threads=THREADS).predict_proba(x), q.predict_proba(x))


# ---- training: forward, gradient, running statistics ---------------------------------------------------------------
@pytest.mark.parametrize("graph", ["cpu", "portable"])
@pytest.mark.parametrize("case", list(NETS))
def test_the_training_loss_uses_the_batch_statistics(case: str, graph: str) -> None:
    """One batch of every image: the epoch's training loss is the loss of the training forward pass before the step."""
    layers, size = NETS[case]
    start, _, x, y, history = one_sgd_step(layers, size, 12, graph)
    expected = training_loss(start.layers, start.get_weights(), x, y)
    assert history[0].train_loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with_running = reference_net_proba(start.layers, start.get_weights(), x)  # not what training computes
    assert abs(float(-np.log(with_running[np.arange(len(y)), y]).mean()) - expected) > 1e-3


@pytest.mark.parametrize("graph", ["cpu", "portable"])
@pytest.mark.parametrize("case", list(NETS))
def test_one_sgd_step_follows_the_finite_difference_gradient(case: str, graph: str) -> None:
    layers, size = NETS[case]
    start, after, x, y, _ = one_sgd_step(layers, size, 8, graph)
    names = {k for k in start.get_weights() if not k.endswith(RUNNING)}
    before = {k: v for k, v in start.get_weights().items() if k in names}
    moved = {k: v for k, v in after.get_weights().items() if k in names}
    checked = check_sgd_gradient(
        before, moved, 1.0, lambda w: training_loss(start.layers, w, x, y), 5, np.random.default_rng(0), abs_tol=3e-5
    )
    assert checked >= 5 * 4
    if graph == "portable":
        assert after.plan["graph"] == "portable" and set(after.plan["ops"]) >= {"REPEAT_BACK", "SQRT", "DIV", "CPY"}


@pytest.mark.parametrize("graph", ["cpu", "portable"])
def test_the_running_statistics_follow_each_batch_like_pytorch(graph: str) -> None:
    layers, size = NETS["pool and dense"]
    layers = [BatchNorm(momentum=0.25) if isinstance(x, BatchNorm) else x for x in layers]
    start, after, x, y, _ = one_sgd_step(layers, size, 10, graph)
    stats: dict = {}
    reference_net_proba(start.layers, start.get_weights(), x, batch_stats=stats)
    before, now = start.get_weights(), after.get_weights()
    for i, layer in batchnorms(start):
        mean, var, count = stats[i]
        assert count == {3: 10 * 4 * 4, 5: 10}[i]  # every position of every image, or every image
        for stat, batch in (("running_mean", mean), ("running_var", var * count / (count - 1))):  # unbiased
            np.testing.assert_allclose(
                now[f"{layer.name}.{stat}"],
                0.75 * before[f"{layer.name}.{stat}"] + 0.25 * batch,
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{layer.name}.{stat}",
            )


def test_momentum_zero_keeps_and_one_replaces_the_running_statistics() -> None:
    x = images(30, (6, 6), seed=2)
    y = np.arange(30) % 3
    options = dict(epochs=2, batch_size=10, threads=THREADS, progress=False, augment="none")
    frozen, _ = train(x, y, arch=[Dense(6), BatchNorm(momentum=0.0), Dense()], **options)
    w = frozen.get_weights()
    assert (w["bn1.running_mean"] == 0).all() and (w["bn1.running_var"] == 1).all() and (w["bn1.weight"] != 1).any()
    # momentum 1: the statistics of the last physical batch, also with gradient accumulation (5 images per graph run)
    last, _ = train(x, y, arch=[Dense(6), BatchNorm(momentum=1.0), Dense()], physical_batch_size=5, **options)
    assert (last.get_weights()["bn1.running_var"] != 1).all()


def test_gradient_accumulation_normalises_each_physical_batch_alone() -> None:
    """batch 12 in graph runs of 6 and of 12 images: the batch statistics differ, so the steps do."""
    x = images(12, (6, 6), seed=4)
    y = np.arange(12) % 3
    options = dict(
        arch=[Dense(6), BatchNorm(), ReLU(), Dense()],
        epochs=1,
        batch_size=12,
        seed=1,
        threads=THREADS,
        progress=False,
        augment="none",
    )
    whole, _ = train(x, y, **options)
    parts, _ = train(x, y, physical_batch_size=6, **options)
    assert not np.allclose(whole.get_weights()["fc1.weight"], parts.get_weights()["fc1.weight"], atol=1e-7)
    assert np.isfinite(parts.get_weights()["bn1.running_var"]).all()


def test_seeded_runs_repeat_and_threads_change_no_bit() -> None:
    layers, size = NETS["pool and dense"]
    x = images(60, size, seed=5)
    y = np.arange(60) % 4
    options = dict(arch=layers, n_classes=4, epochs=2, batch_size=20, seed=3, progress=False, augment="none")
    runs = [train(x, y, threads=t, **options)[0].get_weights() for t in (1, 1, 2)]
    for other in runs[1:]:
        assert same_weights(runs[0], other)


@pytest.mark.parametrize("case", list(NETS))
def test_both_graph_forms_train_the_same_network(case: str) -> None:
    """SGD: a bias right before batch normalisation has no gradient but rounding noise, which AdamW would turn into
    full-size steps that differ between the forms."""
    layers, size = NETS[case]
    x = images(40, size, seed=6)
    y = np.arange(40) % 4
    options = dict(
        arch=layers,
        n_classes=4,
        epochs=2,
        batch_size=10,
        seed=4,
        threads=THREADS,
        progress=False,
        augment="none",
        optimizer="sgd",
        lr=0.1,
    )
    cpu, _ = train(x, y, graph="cpu", **options)
    portable, _ = train(x, y, graph="portable", **options)
    assert cpu.plan["graph"] == "cpu" and portable.plan["graph"] == "portable"
    a, b = cpu.get_weights(), portable.get_weights()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(cpu.predict_proba(x), portable.predict_proba(x), atol=1e-5)


def test_validation_during_training_uses_the_running_statistics() -> None:
    layers, size = NETS["pool and dense"]
    x = images(48, size, seed=7)
    y = np.arange(48) % 4
    seen: list = []
    model, history = train(
        x[:40],
        y[:40],
        validation_data=(x[40:], y[40:]),
        arch=layers,
        n_classes=4,
        epochs=2,
        batch_size=10,
        threads=THREADS,
        progress=False,
        augment="none",
        on_epoch=lambda stats, m: seen.append(m.get_weights()),
    )
    probs = reference_net_proba(model.layers, seen[-1], x[40:])
    assert history[-1].val_loss == pytest.approx(float(-np.log(probs[np.arange(8), y[40:]]).mean()), rel=1e-4)


def test_a_network_with_batchnorm_learns(tmp_path: Path) -> None:
    """Synthetic digits (a bright square whose cell is the label): a conv net with batch normalisation and a high
    learning rate learns them in three epochs, and predicts them with its running statistics."""
    from support.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "d", n_train=400, n_test=100, seed=1)
    arch = [Conv2d(4, 3, padding=1), BatchNorm(), ReLU(), MaxPool2d(4), Dense(16), BatchNorm(), ReLU(), Dense()]
    model, history = train(
        data_dir=data,
        arch=arch,
        epochs=3,
        batch_size=20,
        lr=1e-2,
        seed=1,
        threads=THREADS,
        progress=False,
        augment="none",
    )
    assert history[-1].train_acc > 0.9 and history[-1].train_loss < history[0].train_loss
    assert gm.evaluate(model, data_dir=data).accuracy >= 0.95
    w = model.get_weights()
    assert (w["bn1.running_mean"] != 0).any() and (w["bn2.running_var"] != 1).any()


def test_training_needs_two_values_per_unit() -> None:
    x = images(10, (6, 6))
    y = np.arange(10) % 2
    with pytest.raises(
        ConfigError,
        match=r"layer 1 \(batchnorm bn1\) normalises each unit over the 1 image of a physical "
        r"batch; batch statistics need at least 2 values: raise the physical batch size",
    ):
        train(x, y, arch=[Dense(4), BatchNorm(), Dense()], epochs=1, batch_size=1, threads=THREADS, progress=False)
    # after a convolution every position counts: one image is enough
    train(
        x,
        y,
        arch=[Conv2d(2, 3), BatchNorm(), Dense()],
        epochs=1,
        batch_size=2,
        physical_batch_size=1,
        threads=THREADS,
        progress=False,
    )


def test_exact_resume_restores_the_running_statistics(tmp_path: Path) -> None:
    """The running statistics are saved like weights and have no optimizer moments; a resumed run is bit-identical."""
    layers, size = NETS["pool and dense"]
    x = images(40, size, seed=8)
    y = np.arange(40) % 4
    options = dict(
        arch=layers, n_classes=4, epochs=3, batch_size=10, seed=2, threads=THREADS, progress=False, augment="none"
    )
    full, _ = train(x, y, **options)
    half, _ = train(x, y, save_optimizer=True, on_epoch=lambda s, m: s.epoch < 2, **options)
    half.save(tmp_path / "half.gguf")
    _, tensors = read_gguf(tmp_path / "half.gguf")
    assert "opt.m.bn1.weight" in tensors and not any(k.startswith("opt.") and k.endswith(RUNNING) for k in tensors)
    rest, _ = train(x, y, resume=tmp_path / "half.gguf", threads=THREADS, progress=False)
    assert same_weights(full, rest)


# ---- GGUF ----------------------------------------------------------------------------------------------------------
def test_gguf_round_trip_is_exact(tmp_path: Path) -> None:
    layers, size = NETS["pool and dense"]
    layers = [BatchNorm(momentum=0.05, eps=1e-4) if i == 3 else x for i, x in enumerate(layers)]
    model = Model.create(layers, n_classes=4, image_size=size, seed=3, threads=THREADS)
    weights = random_weights(model)
    model.save(tmp_path / "m.gguf")
    loaded = load(tmp_path / "m.gguf", threads=THREADS)
    assert loaded.layers == model.layers and loaded.layers[3] == BatchNorm(0.05, 1e-4, name="bn1")
    assert same_weights(loaded, weights)
    x = images(6, size)
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    fields, tensors = read_gguf(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "ggml-mnist"  # which ggml's mnist-eval refuses
    assert fields["ggml_mnist.layers.kind"][3] == "batchnorm"
    assert fields["ggml_mnist.layers.momentum"] == pytest.approx([0, 0, 0, 0.05, 0, 0.1, 0, 0])
    assert fields["ggml_mnist.layers.eps"] == pytest.approx([0, 0, 0, 1e-4, 0, 1e-5, 0, 0])
    assert {k: v[1] for k, v in tensors.items() if k.startswith("bn")} == {
        f"bn{j}.{t}": "F32" for j in (1, 2) for t in ("weight", "bias", "running_mean", "running_var")
    }


def test_networks_without_batchnorm_write_no_new_keys(tmp_path: Path) -> None:
    Model.create([Dense(5), ReLU(), Dense()], n_classes=3, image_size=(4, 4), threads=THREADS).save(tmp_path / "m.gguf")
    fields, _ = read_gguf(tmp_path / "m.gguf")
    assert "ggml_mnist.layers.momentum" not in fields and "ggml_mnist.layers.eps" not in fields
    fc = Model.create([Dense(500), ReLU(), Dense()], threads=THREADS)
    assert fc.architecture == "mnist-fc"
    assert Model.create([Dense(500), BatchNorm(), ReLU(), Dense()], threads=THREADS).architecture == "ggml-mnist"


def bn_file(path: Path, **changes: object) -> Path:
    """A layer-list file with a batchnorm layer, written with the gguf package, with keys replaced or removed (None)
    and tensors left out ("drop:NAME")."""
    layers = {
        "kind": ["dense", "batchnorm", "dense"],
        "name": ["h", "n", "o"],
        "units": [5, 0, 3],
        "kernel": [0, 0, 0],
        "stride": [0, 0, 0],
        "padding": [0, 0, 0],
        "dropout": [0.0, 0.0, 0.0],
        "momentum": [0.0, 0.1, 0.0],
        "eps": [0.0, 1e-5, 0.0],
    }

    def norm(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "n.weight": np.full(5, 2.0, np.float32),
            "n.bias": np.full(5, 0.5, np.float32),
            "n.running_mean": rng.standard_normal(5).astype(np.float32),
            "n.running_var": np.full(5, 4.0, np.float32),
        }

    return foreign_net_file(path, layers, changes, norm)


def test_a_batchnorm_file_from_another_tool_loads(tmp_path: Path) -> None:
    model = load(bn_file(tmp_path / "m.gguf"), threads=THREADS)
    assert model.layers == [Dense(5, name="h"), BatchNorm(name="n"), Dense(3, name="o")]
    x = images(4, (4, 4))
    np.testing.assert_allclose(
        model.predict_proba(x), reference_net_proba(model.layers, model.get_weights(), x), atol=1e-5
    )


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(momentum=None), r"missing key ggml_mnist.layers.momentum \(the layer list is incomplete\)"),
        (dict(eps=None), r"missing key ggml_mnist.layers.eps"),
        (dict(eps=[0, 0, 0]), r"key ggml_mnist.layers.eps must be an array of f32"),
        (dict(eps=[0.0, 1e-5]), r"key ggml_mnist.layers.eps has 2 entries but the network has 3 layers"),
        (dict(eps=[0.0, 0.0, 0.0]), r"layer 1 \(batchnorm n\): eps 0 must be in \(0, 1\]"),
        (dict(momentum=[0.0, float("nan"), 0.0]), r"layer 1 \(batchnorm n\): momentum nan must be in \[0, 1\]"),
        ({"drop:n.running_var": True}, r"missing tensor n.running_var"),
    ],
)
def test_broken_batchnorm_files_are_refused_by_name(changes: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match=match):
        load(bn_file(tmp_path / "bad.gguf", **changes), threads=THREADS)


def test_a_quantised_batchnorm_tensor_in_a_file_is_refused(tmp_path: Path) -> None:
    path = bn_file(tmp_path / "m.gguf")
    gguf = pytest.importorskip("gguf")
    fields, tensors = read_gguf(path)
    arrays = {k: v for k, v in fields.items() if k.startswith("ggml_mnist.layers.")}
    data = {name: t[2].reshape(list(reversed(t[0]))) for name, t in tensors.items()}
    data["n.running_var"] = data["n.running_var"].astype(np.float16)
    assert gguf is not None
    write_gguf(
        path,
        "ggml-mnist",
        data,
        uint32s={"ggml_mnist.image_height": 4, "ggml_mnist.image_width": 4, "ggml_mnist.n_classes": 3},
        arrays=arrays,
    )
    with pytest.raises(
        ModelFormatError,
        match=r"tensor n.running_var has type f16; batch normalisation and residual projection tensors are "
        r"stored as f32",
    ):
        load(path, threads=THREADS)


def test_a_negative_running_variance_is_refused_in_files_and_by_set_weights(tmp_path: Path) -> None:
    good = load(bn_file(tmp_path / "good.gguf"), threads=THREADS)
    fields, tensors = read_gguf(tmp_path / "good.gguf")
    data = {name: t[2].reshape(list(reversed(t[0]))) for name, t in tensors.items()}
    data["n.running_var"] = np.array([4.0, 4.0, -4.0, 4.0, 4.0], np.float32)  # would predict NaN, read as class 0
    write_gguf(
        tmp_path / "bad.gguf",
        "ggml-mnist",
        data,
        uint32s={"ggml_mnist.image_height": 4, "ggml_mnist.image_width": 4, "ggml_mnist.n_classes": 3},
        arrays={k: v for k, v in fields.items() if k.startswith("ggml_mnist.layers.")},
    )
    with pytest.raises(ModelFormatError, match=r"tensor n.running_var holds a negative variance \(-4 at 2\)"):
        load(tmp_path / "bad.gguf", threads=THREADS)
    weights = good.get_weights()
    weights["n.running_var"] = -weights["n.running_var"]
    with pytest.raises(
        GgmlMnistError, match=r"'n.running_var' element 0 is -4, but a running variance is never negative"
    ):
        good.set_weights(weights)
    assert np.all(good.get_weights()["n.running_var"] == 4.0)  # unchanged


# ---- refusals, JSON ------------------------------------------------------------------------------------------------
REFUSED = [
    (
        [BatchNorm(), Dense()],
        r"layer 0 \(batchnorm bn1\): it is the first layer; batch normalisation goes after a conv2d",
    ),
    ([Dense(4), BatchNorm()], r"layer 1 \(batchnorm bn1\): it is the last layer; the network ends in the dense layer"),
    ([Conv2d(2, 3), BatchNorm()], r"layer 1 \(batchnorm bn1\): it is the last layer"),
    ([Dense(4), BatchNorm(momentum=1.5), Dense()], r"layer 1 \(batchnorm bn1\): momentum 1.5 must be in \[0, 1\]"),
    ([Dense(4), BatchNorm(momentum=-0.1), Dense()], r"momentum -0.1 must be in \[0, 1\] \(PyTorch's default is 0.1\)"),
    ([Dense(4), BatchNorm(eps=0), Dense()], r"layer 1 \(batchnorm bn1\): eps 0 must be in \(0, 1\]"),
    ([Dense(4), BatchNorm(eps=2), Dense()], r"eps 2 must be in \(0, 1\] \(PyTorch's default is 1e-5\)"),
    ([Dense(4), BatchNorm(eps=float("nan")), Dense()], r"BatchNorm eps must be a number in \(0, 1\], got nan"),
    (
        [Dense(4), BatchNorm(eps=1e-46), Dense()],
        r"BatchNorm eps 1e-46 is too small for a 32-bit float; give at least 1e-30",
    ),
    ([Dense(4), BatchNorm(momentum=True), Dense()], r"BatchNorm momentum must be a number in \[0, 1\], got True"),
    ([Dense(4), BatchNorm(momentum="0.1"), Dense()], r"BatchNorm momentum must be a number in \[0, 1\], got '0.1'"),
]


@pytest.mark.parametrize("layers, match", REFUSED, ids=[m.split(": ")[-1][:40] for _, m in REFUSED])
def test_impossible_batchnorm_layers_are_refused_before_ggml(layers: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Model.create(layers, n_classes=3, image_size=(6, 6), threads=THREADS)
    with pytest.raises(ConfigError, match=match):
        train(
            images(20, (6, 6)), np.arange(20) % 3, arch=layers, epochs=1, batch_size=10, threads=THREADS, progress=False
        )


def test_the_c_layer_needs_its_eps() -> None:
    """A struct gmn_layer of kind batchnorm with its fields left 0 (no defaults in C) is refused, naming eps."""
    from ggml_mnist._ffi import ffi, lib

    buf = ffi.new("struct gmn_layer[]", 3)
    buf[0].kind, buf[0].n_out = lib.GMN_LAYER_DENSE, 4
    buf[1].kind = lib.GMN_LAYER_BATCHNORM
    buf[2].kind, buf[2].n_out = lib.GMN_LAYER_DENSE, 3
    net = ffi.new("struct gmn_net *", dict(image_h=6, image_w=6, n_layers=3, layers=buf))
    assert lib.gmn_net_check(net, ffi.NULL, ffi.NULL, ffi.NULL) == lib.GMN_E_INVALID
    assert "eps 0 must be in (0, 1]" in ffi.string(lib.gmn_last_error()).decode()


def test_json_layer_files_and_sequential(tmp_path: Path) -> None:
    net = Sequential(
        [
            Conv2d(4, 3, padding=1),
            BatchNorm(momentum=0.01),
            ReLU(),
            MaxPool2d(2),
            Dropout(0.1),
            Dense(8),
            BatchNorm(eps=1e-3, name="head_bn"),
            ReLU(),
            Dense(),
        ]
    )
    path = tmp_path / "net.json"
    path.write_text(net.to_json())
    assert load_layers(path) == net.layers
    assert json.loads(path.read_text())["layers"][1] == {"type": "batchnorm", "momentum": 0.01, "eps": 1e-5}
    path.write_text(json.dumps([{"type": "dense", "units": 4}, {"type": "batchnorm"}, {"type": "dense"}]))
    assert load_layers(path)[1] == BatchNorm()
    path.write_text(
        json.dumps([{"type": "dense", "units": 4}, {"type": "batchnorm", "affine": False}, {"type": "dense"}])
    )
    with pytest.raises(ConfigError, match=r"batchnorm layer: unknown field\(s\) affine; it takes momentum, eps, name"):
        load_layers(path)
    model = Model.create(net, threads=THREADS)
    assert model.layers[1] == BatchNorm(0.01, 1e-5, name="bn1") and model.layers[6].name == "head_bn"


def test_mnist_quantize_says_why_batchnorm_tensors_stay_f32(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ggml_mnist.cli.quantize import quantize_main

    src = tmp_path / "bn.gguf"
    Model.create([Dense(64), BatchNorm(), ReLU(), Dense()], threads=THREADS).save(src)
    assert quantize_main([str(src), str(tmp_path / "q.gguf"), "--type", "q8_0", "--pad", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows["fc1.weight"]["type"] == "q8_0" and rows["fc1.bias"]["kept"] == "biases stay f32"
    assert {rows[f"bn1.{t}"]["kept"] for t in ("weight", "bias", "running_mean", "running_var")} == {
        "batch normalisation tensors stay f32"
    }
    loaded = load(tmp_path / "q.gguf", threads=THREADS)
    assert loaded.layers[1] == BatchNorm(name="bn1") and loaded.tensor_storage()["bn1.running_var"].type == "f32"


def test_a_training_graph_larger_than_ggml_opt_builds_is_refused() -> None:
    """ggml-opt builds graphs of at most 2048 nodes and aborts the process beyond; the shim refuses first."""
    arch = [layer for _ in range(21) for layer in (Conv2d(2, 3, padding=1), BatchNorm(), ReLU())] + [Dense()]
    with pytest.raises(
        ConfigError, match=r"the training graph of this network has about \d+ nodes, more than the 2048"
    ):
        train(
            images(10, (6, 6)), np.arange(10) % 2, arch=arch, epochs=1, batch_size=10, threads=THREADS, progress=False
        )
    model = Model.create(arch, n_classes=2, image_size=(6, 6), threads=THREADS)
    assert model.predict_proba(images(3, (6, 6))).shape == (3, 2)  # predicting needs the forward graph only
