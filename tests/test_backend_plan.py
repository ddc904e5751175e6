"""The backend plan: one choice of graph form per model, a portable graph of ggml ops that GPU backends run forward
and backward, the CPU kernels' counters, and the version gate in front of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import cli
from ggml_mnist._ffi import ffi, lib
from ggml_mnist.layers import GELU, AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, MaxPool2d, ReLU, SiLU, Tanh, residual
from support.helpers import THREADS, check_sgd_gradient, images, reference_net_proba, same_weights, spread_weights

# The ops ggml-cuda runs, from ggml_backend_cuda_device_supports_op in src/ggml-cuda/ggml-cuda.cu of the pinned
# ggml 0.15.3 (vendor/ggml of the ggml-python 0.0.45 sdist, lines 5054-5456): every case label of the function, as
# ggml_op_desc names them (unary ops by their own name). IM2COL_BACK and POOL_2D_BACK have no case: unsupported.
# Some labels carry conditions on types and shapes; the ones our graphs meet are noted where they are built
# (src/gmn_net.c: the conv bias is added to a 2-D view so that its REPEAT_BACK stays within ggml-cuda's limit).
CUDA_OPS = frozenset(
    [
        "ABS",
        "SGN",
        "NEG",
        "STEP",
        "GELU",
        "SILU",
        "RELU",
        "SIGMOID",
        "HARDSIGMOID",
        "HARDSWISH",
        "GELU_ERF",
        "GELU_QUICK",
        "TANH",
        "EXP",
        "EXPM1",
        "SOFTPLUS",
        "ELU",
        "XIELU",
        "FLOOR",
        "CEIL",
        "ROUND",
        "TRUNC",
        "GLU",
        "MUL_MAT",
        "MUL_MAT_ID",
        "OUT_PROD",
        "GET_ROWS",
        "GET_ROWS_BACK",
        "SET_ROWS",
        "SET",
        "CPY",
        "DUP",
        "ARGMAX",
        "COUNT_EQUAL",
        "REPEAT",
        "REPEAT_BACK",
        "CONCAT",
        "CONV_TRANSPOSE_1D",
        "COL2IM_1D",
        "SILU_BACK",
        "NORM",
        "RMS_NORM",
        "L2_NORM",
        "RMS_NORM_BACK",
        "NONE",
        "RESHAPE",
        "VIEW",
        "PERMUTE",
        "TRANSPOSE",
        "ADD_ID",
        "ADD1",
        "SCALE",
        "SQR",
        "SQRT",
        "SIN",
        "COS",
        "CLAMP",
        "LOG",
        "ADD",
        "SUB",
        "MUL",
        "DIV",
        "SSM_SCAN",
        "SSM_CONV",
        "CONT",
        "DIAG_MASK_INF",
        "SOFT_MAX",
        "SOFT_MAX_BACK",
        "ROLL",
        "ROPE",
        "ROPE_BACK",
        "IM2COL",
        "IM2COL_3D",
        "CONV_2D",
        "CONV_2D_DW",
        "CONV_TRANSPOSE_2D",
        "POOL_2D",
        "ACC",
        "SUM",
        "TOP_K",
        "ARGSORT",
        "SUM_ROWS",
        "MEAN",
        "GROUP_NORM",
        "PAD",
        "UPSCALE",
        "PAD_REFLECT_1D",
        "ARANGE",
        "TIMESTEP_EMBEDDING",
        "LEAKY_RELU",
        "RWKV_WKV6",
        "GATED_LINEAR_ATTN",
        "RWKV_WKV7",
        "GATED_DELTA_NET",
        "FLASH_ATTN_EXT",
        "CROSS_ENTROPY_LOSS",
        "CROSS_ENTROPY_LOSS_BACK",
        "OPT_STEP_ADAMW",
        "OPT_STEP_SGD",
        "FILL",
        "CUMSUM",
        "TRI",
        "DIAG",
        "SOLVE_TRI",
    ]
)

EVERY_KIND = (
    [
        Conv2d(3, 3, stride=2, padding=1),
        SiLU(),
        AvgPool2d(3, 2, 1),
        Conv2d(4, 3, padding=1),
        Tanh(),
        MaxPool2d(2, 2, 1),
        GELU(),
        Dense(6),
        ReLU(),
        Dropout(0.0),
        Dense(),
    ],
    (15, 13),
)


def tiny_train(arch, graph: str, size=(28, 28), n_classes: int = 10, **options):
    x = images(20, size, seed=1)
    y = np.arange(20) % n_classes
    return gm.train(
        x,
        y,
        arch=arch,
        n_classes=n_classes,
        epochs=1,
        batch_size=10,
        threads=THREADS,
        progress=False,
        graph=graph,
        **options,
    )[0]


def test_the_default_plan_on_the_cpu() -> None:
    model = gm.Model.create("cnn", threads=THREADS)
    plan = model.plan
    assert plan["graph"] == "cpu" and plan["device"] == "CPU" and plan["kernels_off"] is None
    assert set(plan["kernels"]) == {"out_prod", "mul_mat", "get_rows", "get_rows_back", "repeat_back", "acc", "repeat"}
    assert "CUSTOM" in plan["ops"] and "SOFT_MAX" in plan["ops"]  # the prediction graph of a model not trained


def test_graph_names_and_devices_are_checked() -> None:
    with pytest.raises(gm.ConfigError, match="graph must be one of auto, cpu, portable, got 'gpu'"):
        gm.Model.create("fc", graph="gpu")
    with pytest.raises(gm.ConfigError, match="graph must be one of"):
        gm.TrainConfig(graph="classic").validate()
    model = gm.Model.create("fc", hidden=8, threads=THREADS, graph="portable")
    assert model.plan["graph"] == "portable" and model.plan["kernels"] == {}
    assert model.copy().plan["graph"] == "portable"


@pytest.mark.parametrize("name", sorted(gm.presets()))
def test_every_preset_trains_in_the_portable_graph_with_ops_ggml_cuda_runs(name: str) -> None:
    model = tiny_train(name, "portable")
    ops = set(model.plan["ops"])
    assert {"OUT_PROD", "OPT_STEP_ADAMW", "CROSS_ENTROPY_LOSS_BACK"} <= ops  # the training graph, backward included
    assert not ops & {"CUSTOM", "IM2COL_BACK", "POOL_2D_BACK", "IM2COL", "POOL_2D"}
    assert ops <= CUDA_OPS, ops - CUDA_OPS
    if any(isinstance(layer, Conv2d) for layer in model.layers):
        assert "GET_ROWS_BACK" in ops  # the convolutions' and pools' gathers, scattered back
        assert "CUSTOM" in tiny_train(name, "cpu").plan["ops"]  # the CPU graph is another form


def test_batchnorm_and_residual_blocks_train_and_predict_in_the_portable_graph_with_ops_ggml_cuda_runs() -> None:
    """Batch normalisation after a convolution and after a dense layer (training: batch statistics, copied out for the
    running ones; prediction: running statistics), and residual blocks with a strided 1x1 projection and a dense one,
    stay within ggml-cuda's ops."""
    arch = [
        Conv2d(4, 3, padding=1),
        BatchNorm(),
        ReLU(),
        *residual([Conv2d(8, 3, stride=2, padding=1), ReLU()]),
        MaxPool2d(2),
        Dense(16),
        BatchNorm(),
        ReLU(),
        *residual([Dense(8)]),
        Dense(),
    ]
    ops = set(tiny_train(arch, "portable").plan["ops"])
    assert {"REPEAT_BACK", "REPEAT", "SQRT", "DIV", "CPY", "ACC", "OPT_STEP_ADAMW"} <= ops
    assert not ops & {"CUSTOM", "IM2COL_BACK", "POOL_2D_BACK", "IM2COL", "POOL_2D"}
    assert ops <= CUDA_OPS, ops - CUDA_OPS
    ops = set(gm.Model.create(arch, threads=THREADS, graph="portable").plan["ops"])  # the prediction graph
    assert {"SQRT", "DIV", "SUB"} <= ops <= CUDA_OPS, ops - CUDA_OPS


@pytest.mark.parametrize("arch, size", [("cnn", (28, 28)), ("lenet5", (28, 28)), ("letters-cnn", (28, 28)), EVERY_KIND])
def test_the_portable_graph_matches_the_numpy_reference(arch, size) -> None:
    model = gm.Model.create(
        arch, n_classes=4 if isinstance(arch, list) else 10, image_size=size, seed=5, threads=THREADS, graph="portable"
    )
    spread_weights(model, scale=2.0)
    x = images(7, size, seed=3)
    np.testing.assert_allclose(
        model.predict_proba(x), reference_net_proba(model.layers, model.get_weights(), x), atol=2e-5, rtol=0
    )
    cpu = model.copy()
    cpu.set_graph("cpu")
    for a, b in zip(model.activations(x[0]), cpu.activations(x[0])):  # channels-first in both forms
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_portable_gradients_equal_finite_differences() -> None:
    layers, size = EVERY_KIND
    n, lr = 8, 1.0
    x = images(n, size, seed=6)
    y = np.random.default_rng(7).integers(0, 4, size=n)
    start = gm.Model.create(layers, n_classes=4, image_size=size, seed=5, threads=THREADS, graph="portable")
    spread_weights(start, scale=1.5)
    before = start.get_weights()
    after = gm.train(
        x,
        y,
        init=start,
        epochs=1,
        batch_size=n,
        optimizer="sgd",
        lr=lr,
        lr_schedule="constant",
        weight_decay=0.0,
        threads=THREADS,
        progress=False,
        augment="none",
        graph="portable",
    )[0]
    assert "POOL_2D_BACK" not in after.plan["ops"] and after.plan["graph"] == "portable"
    after = after.get_weights()

    def loss(weights):
        probs = reference_net_proba(start.layers, weights, x)
        return float(-np.log(probs[np.arange(n), y]).mean())

    assert check_sgd_gradient(before, after, lr, loss, 4, np.random.default_rng(0), abs_tol=2e-5) >= 30


@pytest.mark.parametrize("name", ["fc", "cnn", "best"])
def test_the_cpu_kernels_take_the_nodes_they_should(name: str) -> None:
    """Losing the speed fails here: training and prediction of fc, cnn and best adopt nodes into the shim's kernels."""
    x = images(100, (28, 28), seed=2)
    y = np.arange(100) % 10
    model, _ = gm.train(x, y, arch=name, epochs=1, batch_size=100, threads=THREADS, progress=False)
    taken = model.plan["kernels"]
    assert taken["mul_mat"] > 0 and taken["repeat_back"] > 0, taken
    if name != "fc":
        assert taken["out_prod"] > 0 and taken["get_rows"] > 0 and taken["get_rows_back"] > 0, taken
    loaded = gm.Model.from_bytes(model.to_bytes(), threads=THREADS)
    loaded.predict_proba(x)  # a prediction graph of 100 images
    assert loaded.plan["kernels"]["mul_mat"] > 0


def test_batch_normalisation_sums_and_spreads_its_statistics_on_every_thread() -> None:
    """Its sums over the batch (repeat_back) and their backward pass (repeat) are the shim's kernels, which split the
    work over the threads; ggml runs both on one."""
    from ggml_mnist import layers as L

    x = images(100, (28, 28), seed=3)
    y = np.arange(100) % 10
    net = [L.Conv2d(8, 3, padding=1), L.BatchNorm(), L.ReLU(), L.MaxPool2d(2), L.Dense(32), L.BatchNorm(), L.Dense()]
    model, _ = gm.train(x, y, arch=net, epochs=1, batch_size=50, threads=THREADS, progress=False)
    taken = model.plan["kernels"]
    assert taken["repeat_back"] > 0 and taken["repeat"] > 0, taken


def test_training_and_prediction_do_not_depend_on_the_thread_count() -> None:
    """The shim's kernels share every node's work over the threads: seeded training with 1, 2 and 3 threads (3 on
    this machine's 2 cores, so a thread is often descheduled mid-node) gives the same bits after its 12 steps, and
    so does prediction."""
    x = images(300, (28, 28), seed=8)
    y = np.arange(300) % 10
    options = dict(arch="cnn", epochs=2, batch_size=50, seed=4, progress=False, augment="none")
    runs = [gm.train(x, y, threads=t, **options)[0] for t in (1, 2, 3)]
    weights = [r.get_weights() for r in runs]
    assert runs[1].plan["kernels"]["mul_mat"] > 0 and runs[1].plan["kernels"]["out_prod"] > 0
    for other in weights[1:]:
        assert same_weights(weights[0], other)
    probs = [gm.Model.from_bytes(runs[0].to_bytes(), threads=t).predict_proba(x) for t in (1, 2, 3)]
    assert all(np.array_equal(probs[0], p) for p in probs[1:])


def test_the_version_gate_turns_the_kernels_off_for_another_ggml() -> None:
    x = images(100, (28, 28), seed=4)
    reference = gm.Model.create("cnn", seed=3, threads=THREADS)
    lib.gmn_testing_set_ggml_version(ffi.new("char[]", b"0.99.0"))
    try:
        model = gm.Model.create("cnn", seed=3, threads=THREADS)
        plan = model.plan
    finally:
        lib.gmn_testing_set_ggml_version(ffi.NULL)
    assert plan["graph"] == "cpu" and plan["kernels"] == {}
    assert f"ggml 0.99.0 is not the pinned {gm.ggml_version}" in plan["kernels_off"]
    np.testing.assert_allclose(model.predict_proba(x), reference.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert gm.Model.create("cnn", threads=THREADS).plan["kernels"]  # the gate is open again


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_an_accelerator_beside_the_cpu_gets_ggml_s_products(arch: str) -> None:
    """A CPU with an accelerator beside it (ggml's BLAS backend, which this build lacks, stood in for by a second CPU
    backend): the CPU graph with the shim's kernels off and ggml's own products, run by a scheduler over three
    backends, trains and predicts as the kernels' model does."""
    x = images(100, (28, 28), seed=5)
    y = np.arange(100) % 10
    recipe = dict(arch=arch, epochs=1, batch_size=100, lr=1e-4, threads=THREADS, seed=3, progress=False)
    lib.gmn_testing_cpu_as_accel(1)
    try:
        model, history = gm.train(x, y, **recipe)
    finally:
        lib.gmn_testing_cpu_as_accel(0)
    reference, reference_history = gm.train(x, y, **recipe)
    plan = model.plan
    assert plan["graph"] == "cpu" and plan["accel_products"] and plan["kernels"] == {}
    assert plan["kernels_off"] == "an accelerator beside the CPU (CPU) runs the matrix products"
    assert {"MUL_MAT", "OUT_PROD"} <= set(plan["ops"])  # ggml's nodes, not taken by the kernels
    assert not reference.plan["accel_products"] and reference.plan["kernels"]["mul_mat"] > 0
    assert history[0].train_loss == pytest.approx(reference_history[0].train_loss, rel=1e-5)
    np.testing.assert_allclose(model.predict_proba(x), reference.predict_proba(x), rtol=1e-4, atol=1e-6)


def test_eval_info_prints_the_plan(tmp_path, capsys) -> None:
    path = tmp_path / "m.gguf"
    gm.Model.create("cnn", threads=THREADS).save(path)
    assert cli.eval_main([str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "plan: graph cpu on CPU; shim kernels: out_prod 0, mul_mat" in out and "prediction graph ops:" in out
    assert cli.eval_main([str(path), "--info", "--graph", "portable"]) == 0
    out = capsys.readouterr().out
    assert "plan: graph portable on CPU; shim kernels: off (the portable graph asks for ggml's ops only)" in out


def test_a_seeded_cnn_epoch_reaches_the_same_accuracy_in_both_forms(real_mnist: Path) -> None:
    data = str(real_mnist)
    accuracy = {}
    for graph in ("cpu", "portable"):
        model, _ = gm.train(data_dir=data, arch="cnn", epochs=1, seed=1, graph=graph, progress=False, augment="none")
        accuracy[graph] = gm.evaluate(model, data_dir=data).accuracy
    assert accuracy["cpu"] > 0.95
    assert abs(accuracy["cpu"] - accuracy["portable"]) <= 0.001, accuracy
