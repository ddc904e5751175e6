"""The GGUF contract: files of ggml's mnist example load, broken files are refused by name, export_gguf."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from ggml_mnist import ConfigError, DataError, Model, ModelFormatError, export_gguf, load
from support.helpers import (
    SMALL,
    THREADS,
    contract_weights,
    conv_channels_of,
    gguf_module,
    hidden_of,
    images,
    read_gguf,
    reference_proba,
    tmp_leftovers,
    write_gguf,
)

CONTRACT_NE = {
    "fc": {"fc1.weight": [784, 500], "fc1.bias": [500], "fc2.weight": [500, 10], "fc2.bias": [10]},
    "cnn": {
        "conv1.kernel": [3, 3, 1, 8],
        "conv1.bias": [1, 1, 8, 1],
        "conv2.kernel": [3, 3, 8, 16],
        "conv2.bias": [1, 1, 16, 1],
        "dense.weight": [784, 10],
        "dense.bias": [10],
    },
}


def strip_ones(ne: list[int]) -> list[int]:
    while len(ne) > 1 and ne[-1] == 1:
        ne = ne[:-1]
    return ne


# ---- files following the contract -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_ggml_example_files_load_and_predict_like_our_model(arch: str, tmp_path: Path) -> None:
    weights = contract_weights(arch)
    path = write_gguf(tmp_path / "example.gguf", f"mnist-{arch}", weights)
    _, tensors = read_gguf(path)
    assert {name: t[0] for name, t in tensors.items()} == CONTRACT_NE[arch]  # the file really has ggml's ne

    loaded = load(path, threads=THREADS)
    assert loaded.architecture == f"mnist-{arch}" and loaded.metadata == {}
    ours = Model.create(arch, threads=THREADS)
    ours.set_weights(weights)
    for name, value in loaded.get_weights().items():
        assert np.array_equal(value.reshape(weights[name].shape), weights[name]), name
    x = images(20, seed=2)
    probs = loaded.predict_proba(x)
    assert np.array_equal(probs, ours.predict_proba(x))
    np.testing.assert_allclose(probs, reference_proba(arch, weights, x), atol=1e-5)
    assert probs.max(axis=1).mean() > 0.6  # the weights are not trivially uniform


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_our_files_follow_the_contract(arch: str, tmp_path: Path) -> None:
    model = Model.create(arch, threads=THREADS)
    model.save(tmp_path / "ours.gguf")
    fields, tensors = read_gguf(tmp_path / "ours.gguf")
    assert fields["general.architecture"] == f"mnist-{arch}"
    assert Model.load(tmp_path / "ours.gguf", threads=THREADS).architecture == f"mnist-{arch}"
    assert {name: strip_ones(t[0]) for name, t in tensors.items()} == {
        name: strip_ones(ne) for name, ne in CONTRACT_NE[arch].items()
    }
    assert {t[1] for t in tensors.values()} == {"F32"}
    weights = model.get_weights()
    for name, (_, _, data) in tensors.items():
        assert np.array_equal(data.reshape(weights[name].shape), weights[name]), name


def test_extra_keys_and_tensors_are_ignored(tmp_path: Path) -> None:
    weights = contract_weights("fc")
    path = write_gguf(
        tmp_path / "m.gguf",
        "mnist-fc",
        {**weights, "optimizer.state": np.zeros(3, np.float32)},
        strings={"general.name": "mnist", "ggml_mnist.note": "plain text"},
        uint32s={"other.count": 3},
    )
    model = load(path, threads=THREADS)
    assert model.metadata == {"note": "plain text"}
    assert np.array_equal(model.get_weights()["fc2.bias"], weights["fc2.bias"])


# ---- broken files ------------------------------------------------------------------------------------
def replaced(arch: str, name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    weights = contract_weights(arch)
    weights[name] = value
    return weights


def without(arch: str, name: str) -> dict[str, np.ndarray]:
    weights = contract_weights(arch)
    del weights[name]
    return weights


def with_value(arch: str, name: str, index: tuple, value: float) -> dict[str, np.ndarray]:
    weights = contract_weights(arch)
    weights[name][index] = value
    return weights


BROKEN: dict[str, tuple[Callable[[Path], Any], str]] = {
    "missing architecture": (
        lambda p: write_gguf(p, None, contract_weights("fc")),
        r"missing key general.architecture \(is this an mnist GGUF\?\)",
    ),
    "architecture not a string": (
        lambda p: write_gguf(p, 7, contract_weights("fc")),
        r"general.architecture is not a string",
    ),
    "unknown architecture": (
        lambda p: write_gguf(p, "llama", contract_weights("fc")),
        r"unsupported architecture 'llama' \(expected mnist-fc, mnist-cnn or ggml-mnist\)",
    ),
    "missing tensor": (
        lambda p: write_gguf(p, "mnist-fc", without("fc", "fc2.bias")),
        r"missing tensor fc2.bias for architecture mnist-fc",
    ),
    "tensors of the other architecture": (
        lambda p: write_gguf(p, "mnist-cnn", contract_weights("fc")),
        r"missing tensor conv1.kernel for architecture mnist-cnn",
    ),
    "wrong shape": (
        lambda p: write_gguf(p, "mnist-fc", replaced("fc", "fc1.weight", np.zeros((500, 700), np.float32))),
        r"tensor fc1.weight has shape \[700,500,1,1\] but \[784,500,1,1\] is expected",
    ),
    "transposed": (
        lambda p: write_gguf(p, "mnist-cnn", replaced("cnn", "dense.weight", np.zeros((784, 10), np.float32))),
        r"tensor dense.weight has shape \[10,784,1,1\] but \[784,10,1,1\] is expected",
    ),
    "f16 tensor": (
        lambda p: write_gguf(p, "mnist-fc", replaced("fc", "fc2.weight", np.zeros((10, 500), np.float16))),
        r"tensor fc2.weight has type f16; only f32 is supported",
    ),
    "NaN weights": (
        lambda p: write_gguf(p, "mnist-fc", with_value("fc", "fc1.weight", (3, 3), np.nan)),
        r"tensor fc1.weight holds NaN or infinite values",
    ),
    "infinite weights": (
        lambda p: write_gguf(p, "mnist-cnn", with_value("cnn", "conv2.bias", (0, 5, 0, 0), -np.inf)),
        r"tensor conv2.bias holds NaN or infinite values",
    ),
    "shape key of the wrong type": (
        lambda p: write_gguf(p, "ggml-mnist", contract_weights("fc"), strings={"ggml_mnist.n_classes": "10"}),
        r"key ggml_mnist.n_classes has type str, expected uint32",
    ),
    "shape key out of range": (
        lambda p: write_gguf(p, "ggml-mnist-fc", contract_weights("fc"), uint32s={"ggml_mnist.hidden": 0}),
        r"key ggml_mnist.hidden = 0 is out of range \[1, 65536\]",
    ),
    # malformed inputs on which ggml's own GGUF reader would abort the process
    "empty key": (
        lambda p: write_gguf(p, "mnist-fc", contract_weights("fc"), strings={"": "x"}),
        r"metadata key 1 has an empty name \(corrupt file\)",
    ),
    "alignment not a uint32": (
        lambda p: write_gguf(p, "mnist-fc", contract_weights("fc"), strings={"general.alignment": "32"}),
        r"key general.alignment must be a uint32",
    ),
    "zero-size dimension": (
        lambda p: write_gguf(p, "mnist-fc", {**contract_weights("fc"), "empty": np.zeros((0, 4), np.float32)}),
        r"tensor 'empty' has a dimension of size 0",
    ),
    "shape key disagreeing with the tensors": (
        lambda p: write_gguf(p, "ggml-mnist-fc", contract_weights("fc"), uint32s={"ggml_mnist.hidden": 64}),
        r"tensor fc1.weight has shape \[784,500,1,1\] but \[784,64,1,1\]",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_refused_by_name(case: str, tmp_path: Path) -> None:
    make, match = BROKEN[case]
    path = tmp_path / "broken.gguf"
    make(path)
    with pytest.raises(ModelFormatError, match=f"model_load: '{path}': {match}") as info:
        load(path, threads=THREADS)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"GGUF",
        b"not a model at all" * 10,
        b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02",
        b"GGUF\x03\x00\x00\x00" + b"\xff" * 40,
    ],
)
def test_non_gguf_files_are_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(
        ModelFormatError, match=r"is not a valid GGUF file \(corrupt or truncated\); re-save or re-download it"
    ):
        load(path, threads=THREADS)


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_truncated_files_are_refused(arch: str, tmp_path: Path) -> None:
    full = tmp_path / "full.gguf"
    Model.create(arch, **SMALL[arch], threads=THREADS).save(full, metadata={"note": "x" * 100})
    data = full.read_bytes()
    gguf = gguf_module()
    last = max(gguf.GGUFReader(full).tensors, key=lambda t: t.data_offset)
    data_end = int(last.data_offset) + int(last.n_bytes)  # the file may go on with alignment padding
    cut_path = tmp_path / "cut.gguf"
    for cut in [0, 1, 4, 7, 8, 16, 24, 40, 100, 300]:  # inside the header, keys and tensor infos
        cut_path.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match=r"is not a valid GGUF file \(corrupt or truncated\)"):
            load(cut_path, threads=THREADS)
    for cut in [data_end - 1, data_end - 100, len(data) // 2]:  # inside the tensor data
        cut_path.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match=r"tensor \S+ lies beyond the end of the file \(truncated\?\)"):
            load(cut_path, threads=THREADS)
    cut_path.write_bytes(data[:data_end])  # without the final padding it is still complete
    expected = load(full, threads=THREADS).get_weights()[last.name]
    assert np.array_equal(load(cut_path, threads=THREADS).get_weights()[last.name], expected)


def test_random_corruption_never_crashes(tmp_path: Path) -> None:
    """Flipped header bytes give ModelFormatError or a model that predicts, never a dead process or another error."""
    good = tmp_path / "good.gguf"
    Model.create("cnn", conv_channels=(2, 4), threads=THREADS).save(good)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.gguf"
    refused = predicted = 0
    for _ in range(200):
        corrupt = bytearray(data)
        for i in rng.integers(0, 600, size=3):
            corrupt[i] = rng.integers(0, 256)
        bad.write_bytes(bytes(corrupt))
        try:
            model = load(bad, threads=THREADS)
        except ModelFormatError:
            refused += 1
            continue
        assert model.predict(np.zeros((1, 28, 28), np.uint8)).shape == (1,)
        predicted += 1
    # most of the first 600 bytes are keys and tensor infos that the loader checks
    assert refused + predicted == 200 and refused >= 100, (refused, predicted)


# ---- export_gguf -----------------------------------------------------------------------------------
def test_export_fc_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weights = {
        "fc1.weight": rng.standard_normal((40, 784)).astype(np.float32) * 0.1,
        "fc1.bias": rng.standard_normal(40).astype(np.float32) * 0.1,
        "fc2.weight": rng.standard_normal((7, 40)).astype(np.float32) * 0.5,
        "fc2.bias": rng.standard_normal(7).astype(np.float32) * 0.1,
    }
    path = tmp_path / "export.gguf"
    returned = export_gguf(path, "fc", weights, metadata={"origin": "numpy"})
    model = load(path, threads=THREADS)
    assert model.architecture == "ggml-mnist" and (hidden_of(model), model.n_classes) == (40, 7)
    assert model.metadata == {"origin": "numpy", "source": "export_gguf"}
    assert all(np.array_equal(model.get_weights()[k], v) for k, v in weights.items())
    x = images(20, seed=2)
    np.testing.assert_allclose(model.predict_proba(x), reference_proba("fc", weights, x), atol=1e-5)
    assert np.array_equal(returned.predict_proba(x), model.predict_proba(x))
    assert tmp_leftovers(tmp_path) == []


def torch_order_cnn(c1: int, c2: int, n_classes: int, side: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Weights as PyTorch holds them: biases [out], dense input flattened channel-first (C, H, W)."""
    rng = np.random.default_rng(seed)
    q = side // 4
    return {
        "conv1.kernel": rng.standard_normal((c1, 1, 3, 3)).astype(np.float32) * 0.5,
        "conv1.bias": rng.standard_normal(c1).astype(np.float32) * 0.1,
        "conv2.kernel": rng.standard_normal((c2, c1, 3, 3)).astype(np.float32) * 0.3,
        "conv2.bias": rng.standard_normal(c2).astype(np.float32) * 0.1,
        "dense.weight": rng.standard_normal((n_classes, c2 * q * q)).astype(np.float32) * 0.3,
        "dense.bias": rng.standard_normal(n_classes).astype(np.float32) * 0.1,
    }


@pytest.mark.parametrize("c1, c2, n_classes", [(8, 16, 10), (3, 5, 4)])
def test_export_cnn_from_torch_layout(c1: int, c2: int, n_classes: int, tmp_path: Path) -> None:
    weights = torch_order_cnn(c1, c2, n_classes, 28)
    x = images(20, seed=2)
    torch_reference = reference_proba("cnn", weights, x, flatten="chw")
    export_gguf(tmp_path / "torch.gguf", "cnn", weights, layout="torch")
    model = load(tmp_path / "torch.gguf", threads=THREADS)
    assert conv_channels_of(model) == (c1, c2) and model.n_classes == n_classes
    assert model.architecture == ("mnist-cnn" if (c1, c2, n_classes) == (8, 16, 10) else "ggml-mnist")
    np.testing.assert_allclose(model.predict_proba(x), torch_reference, atol=1e-5)
    # the same arrays taken as ggml's layout are a different network
    export_gguf(tmp_path / "ggml.gguf", "cnn", weights, layout="ggml")
    assert np.abs(load(tmp_path / "ggml.gguf", threads=THREADS).predict_proba(x) - torch_reference).max() > 1e-2
    np.testing.assert_allclose(
        load(tmp_path / "ggml.gguf", threads=THREADS).predict_proba(x),
        reference_proba("cnn", weights, x, flatten="hwc"),
        atol=1e-5,
    )


def test_export_from_a_real_torch_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 7 * 7, 10),
    )
    state = {k: v.detach().numpy() * 3 for k, v in net.state_dict().items()}
    weights = {
        "conv1.kernel": state["0.weight"],
        "conv1.bias": state["0.bias"],
        "conv2.kernel": state["3.weight"],
        "conv2.bias": state["3.bias"],
        "dense.weight": state["7.weight"],
        "dense.bias": state["7.bias"],
    }
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        x = images(20, seed=2)
        expected = torch.softmax(net(torch.from_numpy(x[:, None] / np.float32(255))), dim=1).numpy()
    export_gguf(tmp_path / "net.gguf", "cnn", weights, layout="torch")
    np.testing.assert_allclose(load(tmp_path / "net.gguf", threads=THREADS).predict_proba(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "arch, weights, layout, cls, match",
    [
        (
            "fc",
            {"fc1.weight": np.zeros((4, 784))},
            "ggml",
            ConfigError,
            r"export_gguf: missing tensor\(s\) fc1.bias, fc2.weight, fc2.bias for architecture fc",
        ),
        (
            "fc",
            {
                "fc1.weight": np.zeros((4, 700)),
                "fc1.bias": np.zeros(4),
                "fc2.weight": np.zeros((10, 4)),
                "fc2.bias": np.zeros(10),
            },
            "ggml",
            ConfigError,
            r"fc1.weight has 700 inputs, which is not a square image",
        ),
        (
            "fc",
            {
                "fc1.weight": np.zeros((4, 784)),
                "fc1.bias": np.zeros(5),
                "fc2.weight": np.zeros((10, 4)),
                "fc2.bias": np.zeros(10),
            },
            "ggml",
            ConfigError,
            r"tensor 'fc1.bias' must have shape \(4,\), got \(5,\)",
        ),
        ("cnn", torch_order_cnn(2, 4, 10, 28), "keras", ConfigError, r"layout must be 'ggml' or 'torch', got 'keras'"),
        (
            "cnn",
            {**torch_order_cnn(2, 4, 10, 28), "dense.weight": np.zeros((10, 190))},
            "torch",
            DataError,
            r"dense.weight has 190 inputs; expected 4x7x7",
        ),
        ("vgg", {}, "ggml", ConfigError, r"unknown network 'vgg'"),
    ],
)
def test_export_rejects_bad_weights(
    arch: str, weights: dict, layout: str, cls: type, match: str, tmp_path: Path
) -> None:
    with pytest.raises(cls, match=match) as info:
        export_gguf(tmp_path / "x.gguf", arch, weights, layout=layout)
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "x.gguf").exists() and tmp_leftovers(tmp_path) == []
