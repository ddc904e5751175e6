"""Quantised weights: ggml's conversions within their formats' error bounds, prediction, files, refusals,
mnist-quantize, the loader on mutated quantised files, and a q8_0 accuracy floor on the real data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import ConfigError, Model, NativeError, _ffi, evaluate, load_mnist, train, weight_types
from ggml_mnist._ffi import ffi, lib
from ggml_mnist.cli.quantize import quantize_main
from ggml_mnist.layers import Conv2d, Dense, MaxPool2d, ReLU
from support import fuzz_loaders as fz
from support.helpers import THREADS

BLOCK = 32  # values per block of q8_0, q5_0 and q4_0 (ggml-common.h: QK8_0, QK5_0, QK4_0)
F16_EPS = 2.0**-11  # unit roundoff of f16: the scales of the block types are f16 too
# Largest error in a block, as a multiple of the block's largest magnitude amax, from the formats' definitions
# (ggml-quants.c, quantize_row_*_ref): q8_0 rounds to d = amax/127; q5_0 and q4_0 take d = -max/16 and -max/8,
# so the value opposite the extreme one clamps at 15 (or 7) steps instead of 16 (or 8); the f16 scale adds
# at most its roundoff times the largest step count.
BOUND = {"q8_0": (0.5 + 127 * F16_EPS) / 127, "q5_0": (1 + 16 * F16_EPS) / 16, "q4_0": (1 + 8 * F16_EPS) / 8}


def small_cnn() -> Model:
    """Kernels with rows of 9 and 72 values (padded to 96 with pad=True) and dense rows of 256 (4x4x16 inputs,
    permuted in the graph) and 32."""
    layers = [
        Conv2d(8, 3, padding=1),
        ReLU(),
        MaxPool2d(2),
        Conv2d(16, 3, stride=2, padding=1),
        ReLU(),
        Dense(32),
        ReLU(),
        Dense(10),
    ]
    return Model.create(layers, image_size=(16, 16), threads=THREADS, seed=3)


def spread_weights(model: Model, seed: int = 0) -> Model:
    """Give the model normal weights (He-like scale) with outliers, so logits differ clearly."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, w in model.get_weights().items():
        scale = 1.5 / np.sqrt(w[0].size) if w.ndim > 1 else 0.1
        values = rng.normal(0, scale, w.shape).astype(np.float32)
        values.flat[::97] *= 8  # a few outliers widen some blocks' range
        weights[name] = values
    model.set_weights(weights)
    return model


def varied_images(n: int, side: int, seed: int = 1) -> np.ndarray:
    """Random images of random ink density and brightness."""
    rng = np.random.default_rng(seed)
    ink = rng.random((n, side, side)) < rng.random((n, 1, 1))
    return (ink * rng.integers(0, 256, (n, 1, 1))).astype(np.uint8)


def blocks(w: np.ndarray) -> np.ndarray:
    """A dense weight [out, in] as blocks of 32 along its rows, zero-padded to whole blocks: [out, n_blocks, 32]."""
    padded = np.pad(w, ((0, 0), (0, -w.shape[1] % BLOCK)))
    return padded.reshape(w.shape[0], -1, BLOCK)


@pytest.fixture(scope="module")
def fc() -> Model:
    return spread_weights(Model.create("fc", hidden=64, threads=THREADS, seed=1))


@pytest.mark.parametrize("qtype", ["q8_0", "q5_0", "q4_0"])
def test_block_types_round_trip_within_their_bounds(fc: Model, qtype: str) -> None:
    q = fc.quantize(qtype, pad=True)
    original, back = fc.get_weights(), q.get_weights()
    storage = q.tensor_storage()
    for name in ("fc1.weight", "fc2.weight"):
        assert storage[name].type == qtype
        assert storage[name].row_length == -(-original[name].shape[1] // BLOCK) * BLOCK  # 784 -> 800, 64 stays
        err, amax = (
            blocks(np.abs(back[name] - original[name])),
            blocks(np.abs(original[name])).max(axis=2, keepdims=True),
        )
        assert (err <= BOUND[qtype] * amax + 1e-7).all(), f"{name}: worst {float((err / amax).max()):.5f} of amax"
        assert err.max() > 0.1 * BOUND[qtype] * amax.min()  # the conversion did happen
    for name in ("fc1.bias", "fc2.bias"):
        assert storage[name].type == "f32" and np.array_equal(back[name], original[name])


def test_f16_rounds_to_nearest(fc: Model) -> None:
    q = fc.quantize("f16")
    assert {s.type for name, s in q.tensor_storage().items() if name.endswith(".weight")} == {"f16"}
    for name, w in fc.get_weights().items():
        expected = w.astype(np.float16).astype(np.float32)
        assert np.array_equal(q.get_weights()[name], expected if name.endswith(".weight") else w), name


def test_errors_grow_as_bits_shrink_and_f32_restores_exactly(fc: Model) -> None:
    w = fc.get_weights()["fc1.weight"]
    rms = [
        float(np.sqrt(np.mean((fc.quantize(t, pad=True).get_weights()["fc1.weight"] - w) ** 2)))
        for t in ("f16", "q8_0", "q5_0", "q4_0")
    ]
    assert rms == sorted(rms) and rms[0] > 0
    q = fc.quantize("q4_0", pad=True)
    restored = q.dequantize()
    assert restored.weight_type == "f32" and q.weight_type == "q4_0"
    for name, value in q.get_weights().items():
        assert np.array_equal(restored.get_weights()[name], value)
    assert restored.architecture == fc.architecture


def test_rows_that_are_not_whole_blocks_stay_f16_unless_padding_makes_them_smaller() -> None:
    model = small_cnn()
    types = {
        "conv1.kernel": "f16",
        "conv1.bias": "f32",
        "conv2.kernel": "f16",
        "conv2.bias": "f32",
        "fc1.weight": "q4_0",
        "fc1.bias": "f32",
        "fc2.weight": "q4_0",
        "fc2.bias": "f32",
    }
    assert {k: s.type for k, s in model.quantize("q4_0").tensor_storage().items()} == types
    padded = model.quantize("q4_0", pad=True).tensor_storage()  # 9 values in a 32-value q4_0 block: no smaller than f16
    assert {k: s.type for k, s in padded.items()} == {**types, "conv2.kernel": "q4_0"}
    assert padded["conv2.kernel"].row_length == 96 and padded["conv2.kernel"].nbytes == 16 * 3 * 18
    assert model.quantize("q4_0", pad=True).tensor_shapes() == model.tensor_shapes()
    fc_q = Model.create("fc", hidden=64, threads=THREADS).quantize("q8_0")  # fc1 has rows of 784, fc2 of 64
    assert fc_q.tensor_storage()["fc1.weight"].type == "f16" and fc_q.tensor_storage()["fc2.weight"].type == "q8_0"


def test_kernels_with_whole_blocks_are_quantised_as_matrices() -> None:
    model = spread_weights(
        Model.create([Conv2d(4, 3), ReLU(), Conv2d(8, 4, stride=2), Dense(10)], image_size=(12, 12), threads=THREADS)
    )
    q = model.quantize("q8_0")
    storage = q.tensor_storage()  # conv2's rows: 4 x 4 x 4 = 64 values
    assert storage["conv2.kernel"].type == "q8_0" and storage["conv2.kernel"].row_length == 64
    w, back = model.get_weights()["conv2.kernel"], q.get_weights()["conv2.kernel"]
    assert back.shape == w.shape == (8, 4, 4, 4)
    err, amax = blocks(np.abs(back - w).reshape(8, 64)), blocks(np.abs(w).reshape(8, 64)).max(axis=2, keepdims=True)
    assert (err <= BOUND["q8_0"] * amax + 1e-7).all()
    x = np.random.default_rng(1).integers(0, 256, (32, 12, 12), dtype=np.uint8)
    assert np.abs(q.predict_proba(x) - q.dequantize().predict_proba(x)).max() < 0.03


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q5_0", "q4_0"])
def test_a_quantised_dense_layer_computes_softmax_of_its_dequantised_weights(qtype: str) -> None:
    """Numpy reference: 7x7 images, so the rows of 49 inputs are zero-padded to 64 for the block types."""
    model = spread_weights(Model.create([Dense(10)], image_size=(7, 7), threads=THREADS))
    x = varied_images(64, 7)
    q = model.quantize(qtype, pad=True)
    assert q.tensor_storage()["fc1.weight"].row_length == (49 if qtype == "f16" else 64)
    w = q.get_weights()
    z = (x.reshape(64, -1) / 255.0) @ w["fc1.weight"].T.astype(np.float64) + w["fc1.bias"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert np.abs(q.predict_proba(x) - p).max() < 1e-3  # ggml rounds the inputs to f16 or q8_0 for the products
    assert len(set(p.argmax(axis=1))) >= 4


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("pad", [False, True])
def test_quantised_graphs_compute_the_dequantised_network(qtype: str, pad: bool) -> None:
    """The f16/quantised paths (kernel as first operand, activations permuted and zero-padded) equal the f32 graph of
    the dequantised weights, up to ggml rounding the activations to f16 or q8_0 for the products."""
    model = spread_weights(small_cnn())
    x = varied_images(64, 16)
    q = model.quantize(qtype, pad=pad)
    assert (q.tensor_storage()["conv2.kernel"].type == qtype) == (pad or qtype == "f16")
    dq = q.dequantize()
    got, want = q.predict_proba(x), dq.predict_proba(x)
    assert np.abs(got - want).mean() < (0.001 if qtype == "f16" else 0.02)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    w = dq.get_weights()["fc1.weight"]  # fc1 reading its 4x4x16 inputs channel-slowest instead would be far off
    dq.set_weights({"fc1.weight": w.reshape(32, 4, 4, 16).transpose(0, 3, 1, 2).reshape(32, 256)})
    assert np.abs(dq.predict_proba(x) - want).mean() > 0.1


def test_quantised_files_round_trip_and_are_never_ggml_architectures(tmp_path: Path) -> None:
    model = Model.create("fc", threads=THREADS, seed=4)
    model.metadata = {"note": "kept"}
    assert model.architecture == "mnist-fc"
    q = model.quantize("q8_0", pad=True)
    assert q.architecture == "ggml-mnist" and q.metadata == {"note": "kept"} and model.weight_type == "f32"
    path = tmp_path / "q.gguf"
    q.save(path)
    loaded = Model.load(path, threads=THREADS)
    assert loaded.architecture == "ggml-mnist" and loaded.arch == "fc" and loaded.metadata["note"] == "kept"
    assert loaded.tensor_storage() == q.tensor_storage()
    for name, value in q.get_weights().items():
        assert np.array_equal(loaded.get_weights()[name], value)
    x = np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(loaded.predict_proba(x), q.predict_proba(x))
    assert q.copy().tensor_storage() == q.tensor_storage()
    assert repr(q).endswith("weights=q8_0>") and "weights=" not in repr(model)
    model.save(tmp_path / "f32.gguf")
    assert (tmp_path / "f32.gguf").stat().st_size > 3.5 * path.stat().st_size


def test_refusals(fc: Model) -> None:
    q = fc.quantize("q8_0", pad=True)
    with pytest.raises(
        NativeError, match=r"'fc1.weight' is stored as q8_0; the weights of a quantised model are read-only"
    ):
        q.set_weights({"fc1.weight": np.zeros((64, 784), np.float32)})
    with pytest.raises(ConfigError, match=r"unknown type 'q3_k'; use f32, f16, q8_0, q5_0 or q4_0"):
        fc.quantize("q3_k")
    with pytest.raises(ConfigError, match=r"type must be a string"):
        fc.quantize(8)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=r"no tensor of this network can be stored as q4_0: .* rows of fc1.weight 784, "
        r"fc2.weight 500; zero-pad the rows \(pad / --pad\) or choose f16",
    ):
        Model.create("fc", threads=THREADS).quantize("q4_0")
    assert weight_types() == ["f32", "f16", "q8_0", "q5_0", "q4_0"]


def test_training_a_quantised_model_is_refused_and_its_dequantised_copy_trains(fc: Model) -> None:
    config = ffi.new(
        "struct gmn_train_config *",
        dict(lr=1e-3, total_steps=1, beta1=0.9, beta2=0.999, batch_size=10, physical_batch_size=10),
    )
    q = fc.quantize("q8_0", pad=True)
    with pytest.raises(
        NativeError,
        match=r"quantised \(fc1.weight is q8_0\) and cannot be trained; fine-tune its "
        r"dequantised weights instead \(Model.dequantize\(\), or mnist-train --init FILE\)",
    ):
        _ffi.check(q._call_native(lib.gmn_model_train_init, config))
    dq = q.dequantize()
    _ffi.check(dq._call_native(lib.gmn_model_train_init, config))
    dq.release_training_state()


def test_mnist_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "fc.gguf", tmp_path / "fc-q4.gguf"
    Model.create("fc", threads=THREADS).save(src)
    assert quantize_main([str(src), str(out), "--type", "q4_0"]) == 1
    assert "no tensor of this network can be stored as q4_0" in capsys.readouterr().err
    assert quantize_main([str(src), str(out), "--type", "q4_0", "--pad", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "ggml-mnist" and report["input_bytes"] > 6 * report["output_bytes"]
    rows = {r["name"]: r for r in report["tensors"]}
    assert (
        rows["fc1.weight"]["type"] == "q4_0"
        and rows["fc1.weight"]["row_length"] == 800
        and rows["fc1.weight"]["kept"] is None
    )
    assert rows["fc1.bias"]["kept"] == "biases stay f32"
    narrow = tmp_path / "fc64.gguf"
    Model.create("fc", hidden=64, threads=THREADS).save(narrow)
    assert quantize_main([str(narrow), str(tmp_path / "fc64-q8.gguf"), "--type", "q8_0"]) == 0
    captured = capsys.readouterr()
    assert (
        "fc1.weight" in captured.out
        and "its rows (784 inputs) are not whole blocks; --pad zero-pads them" in captured.out
    )
    assert "fc1.weight stayed f32; add --pad to make q8_0 of them too" in captured.err and "bias" not in captured.err
    assert quantize_main([str(src), str(tmp_path / "q4.gguf"), "--type", "q4_0", "--pad"]) == 0
    assert "stayed f32" not in capsys.readouterr().err  # the table already says that biases stay f32
    assert quantize_main([str(out)]) == 0
    assert "weights q4_0" in capsys.readouterr().out
    assert quantize_main([str(src), str(src), "--type", "f16"]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert quantize_main([str(src), str(out)]) == 1
    assert "give --type" in capsys.readouterr().err


# ---- the loader on quantised files ------------------------------------------------------------------------------
LOADER_CASES = [
    # (base, ops, expected outcome(s), pattern of the message of a ModelFormatError)
    (
        "fc-q4_0",
        [["t_type", "fc1.weight", 3]],
        "ModelFormatError",
        r"tensor fc1.weight has type q4_1; weights are stored as",
    ),
    ("fc-q4_0", [["t_type", "fc1.bias", 8]], "ModelFormatError", r"not a valid GGUF"),  # rows of 8: not whole blocks
    ("fc-q4_0", [["t_type", "fc1.weight", 4]], "ModelFormatError", r"not a valid GGUF"),  # a removed type
    ("fc-q4_0", [["t_type", "fc1.weight", 39]], "ModelFormatError", r"not a valid GGUF"),
    ("fc-q4_0", [["t_dims", "fc1.weight", [784, 8]]], "ModelFormatError", r"not a valid GGUF"),
    (
        "fc-q4_0",
        [["t_dims", "fc1.weight", [832, 8]]],
        "ModelFormatError",
        r"tensor fc1.weight has shape \[832,8,1,1\] but \[784,8,1,1\] is expected for q4_0 \(rows of the layer's inputs, or "
        r"zero-padded to whole blocks\)",
    ),
    (
        "fc-q4_0",
        [["t_dims", "fc1.weight", [800, 9]]],
        "ModelFormatError",
        r"tensor fc1.weight has shape \[800,9,1,1\] but "
        r"\[800,8,1,1\] is expected",
    ),
    (
        "fc-q4_0",
        [["arch", "mnist-fc"]],
        "ModelFormatError",
        r"has type q4_0; only f32 is supported under the architecture mnist-fc",
    ),
    (
        "fc-q4_0",
        [["t_fill", "fc1.weight", float("nan")]],
        "ModelFormatError",
        r"tensor fc1.weight holds NaN or infinite values",
    ),
    (
        "fc-q4_0",
        [["t_offset", "fc2.weight", 2**40]],
        "ModelFormatError",
        r"not a valid GGUF|beyond the end of the file",
    ),
    # q8_0 over q4_0 bytes (the rest zero-filled): read within bounds; the values load or hold a NaN scale
    ("fc-q4_0", [["t_type", "fc1.weight", 8]], "ok|ModelFormatError", r"NaN or infinite"),
    ("cnn-q8_0", [["t_type", "conv1.kernel", 8]], "ModelFormatError", r"not a valid GGUF"),
    ("cnn-q8_0", [["t_type", "conv1.kernel", 0]], "ok", r""),  # f32 over f16 bytes, zero-filled to the f32 size
    (
        "cnn-q8_0",
        [["t_type", "conv2.kernel", 0]],
        "ModelFormatError",  # stored flat for q8_0: f32 needs the kernel's shape
        r"tensor conv2.kernel has shape \[32,2,1,1\] but \[3,3,2,2\] is expected",
    ),
    ("cnn-q8_0", [["t_type", "dense.weight", 6]], "ok", r""),
    (
        "cnn-q8_0",
        [["t_type", "conv1.bias", 1]],
        "ModelFormatError",
        r"tensor conv1.bias has type f16; biases are stored as f32",
    ),
]


def test_loader_refuses_wrong_block_types_and_sizes() -> None:
    recipes = [{"kind": "gguf", "base": base, "ops": ops} for base, ops, _, _ in LOADER_CASES]
    report = fz.replay(recipes)
    assert report.ok, report.summary()
    for (_base, ops, outcome, pattern), result in zip(LOADER_CASES, report.results):
        assert result["outcome"] in outcome.split("|"), (ops, result["message"])
        assert result["outcome"] == "ok" or re.search(pattern, result["message"]), (ops, result["message"])


def test_quantised_file_truncated_anywhere_is_refused(tmp_path: Path) -> None:
    ws = fz.Workspace(tmp_path)
    report = fz.replay(fz.sweep_recipes("gguf", ws, bases=["fc-tiny-q5_0"]))
    assert report.ok, report.summary()
    outcomes = [r["outcome"] for r in report.results]
    n_ok = outcomes.count("ok")
    assert outcomes == ["ModelFormatError"] * (len(outcomes) - n_ok) + ["ok"] * n_ok
    assert 1 <= n_ok <= fz.GGUF_ALIGNMENT
    # random mutations of the quantised bases (fuzz_loaders.GGUF_BASES) run in test_fuzz_loaders.py


# ---- real data ------------------------------------------------------------------------------------------------
def test_q8_0_keeps_fc_accuracy_on_mnist(real_mnist: Path) -> None:
    x, y = load_mnist(real_mnist, "train")
    xt, yt = load_mnist(real_mnist, "test")
    model, _ = train(x, y, arch="fc", epochs=1, lr_schedule="constant", threads=THREADS, progress=False)
    base = evaluate(model, xt, yt)
    q8 = evaluate(model.quantize("q8_0", pad=True), xt, yt)
    q4 = evaluate(model.quantize("q4_0", pad=True), xt, yt)
    assert base.accuracy > 0.95
    assert q8.accuracy >= base.accuracy - 0.001, (q8.accuracy, base.accuracy)  # at most 10 of 10 000 images lost
    assert (q8.predictions != base.predictions).sum() <= 20
    assert q4.accuracy >= base.accuracy - 0.005, (q4.accuracy, base.accuracy)


def test_init_fine_tunes_a_quantised_model_from_its_dequantised_weights(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    y = np.arange(200) % 10
    base, _ = train(x, y, arch="fc", hidden=32, epochs=1, batch_size=20, threads=1, progress=False, augment="none")
    quantised = base.quantize("q4_0", pad=True)
    path = tmp_path / "q.gguf"
    quantised.save(path)
    start = Model.load(path).dequantize().get_weights()
    for init in (path, quantised):
        tuned, _ = train(x, y, init=init, epochs=1, batch_size=20, lr=1e-12, threads=1, progress=False, augment="none")
        assert tuned.weight_type == "f32"
        weights = tuned.get_weights()
        assert all(np.allclose(weights[k], start[k], atol=1e-6) for k in start)
    assert quantised.weight_type == "q4_0"  # the model given as init= is not changed
