"""Helpers shared by the model, training, GGUF and CLI tests.

A numpy reference of the two networks, small fast training options and GGUF writing with the
``gguf`` package (the ``test`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

# One ggml thread: the test machines have two shared cores, and ggml's worker threads spin
# while they wait, which makes two threads on a busy machine many times slower than one.
THREADS = 1
SMALL = {"fc": {"hidden": 32}, "cnn": {"conv_channels": (2, 4)}}
#: Why a test that needs the real MNIST skips, and what to do about it.
NO_REAL_MNIST = (
    "real MNIST not found: set GGML_MNIST_DATA=/path/to/mnist (the folder with the IDX .gz files), or run "
    "`mnist-data download` (into data/mnist), to run these tests"
)


def summary_rows(lines: list[str]) -> list[str]:
    """The layer rows of a printed model summary: the lines between its two rules of dashes, less the input row."""
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert len(rules) == 2, "a summary has a rule under its header and one above its total:\n" + "\n".join(lines)
    rows = lines[rules[0] + 1 : rules[1]]
    assert rows and rows[0].startswith("input "), rows
    return rows[1:]


def images(n: int = 8, size: tuple[int, int] = (28, 28), seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images of ``size`` (height, width); the same ones for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)


def small_options(arch: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of train() for a fast run of ``arch`` on a few hundred images."""
    options = dict(
        arch=arch, epochs=2, batch_size=20, threads=THREADS, progress=False, augment="none", **SMALL.get(arch, {})
    )
    options.update(overrides)
    return options


def tmp_leftovers(directory: Path) -> list[str]:
    """Names of temporary files an atomic save may leave behind in directory."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith(".") and ".tmp-" in p.name)


# ---- numpy reference network -------------------------------------------------------------------
def _pixels(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    x = images.astype(np.float64)
    return x / 255.0 if images.dtype == np.uint8 else x


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def conv3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Cross-correlation, stride 1, zero padding 1: x [N, C, H, W], kernel [O, C, 3, 3] -> [N, O, H, W]."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, kernel.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,nchw->nohw", kernel[:, :, i, j], padded[:, :, i : i + h, j : j + w])
    return out + bias.reshape(1, -1, 1, 1)


def maxpool2(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling with stride 2, dropping an odd last row/column: [N, C, H, W] -> [N, C, H//2, W//2]."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def reference_proba(
    arch: str, weights: Mapping[str, np.ndarray], images: np.ndarray, flatten: str = "hwc"
) -> np.ndarray:
    """Class probabilities [N, classes] in float64 for images [N, H, W] (uint8 0..255 or floats in [0, 1]).

    fc: softmax(W2 relu(W1 x + b1) + b2). cnn: (conv3x3 + bias, relu, maxpool2) twice, then the
    features flattened height-width-channel with channels fastest (``flatten="hwc"``, ggml's
    layout) or channel-first (``"chw"``, PyTorch's), a dense layer and softmax.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    x = _pixels(images)
    n = x.shape[0]
    if arch == "fc":
        hidden = np.maximum(x.reshape(n, -1) @ w["fc1.weight"].T + w["fc1.bias"].reshape(-1), 0.0)
        return softmax(hidden @ w["fc2.weight"].T + w["fc2.bias"].reshape(-1))
    h = maxpool2(np.maximum(conv3x3(x[:, None], w["conv1.kernel"], w["conv1.bias"]), 0.0))
    h = maxpool2(np.maximum(conv3x3(h, w["conv2.kernel"], w["conv2.bias"]), 0.0))
    features = h.transpose(0, 2, 3, 1).reshape(n, -1) if flatten == "hwc" else h.reshape(n, -1)
    return softmax(features @ w["dense.weight"].T + w["dense.bias"].reshape(-1))


def same_weights(a: Any, b: Any) -> bool:
    """Whether two models (or :meth:`Model.get_weights` dicts) hold the same tensors with the same bits."""
    wa = a if isinstance(a, Mapping) else a.get_weights()
    wb = b if isinstance(b, Mapping) else b.get_weights()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def spread_weights(model: Any, scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Give model normal random weights, ``scale`` times its init bound, so its outputs are far from uniform."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, value in model.get_weights().items():
        bound = float(np.abs(value).max())
        weights[name] = (rng.standard_normal(value.shape) * bound * scale).astype(np.float32)
        if name.endswith(".running_var"):  # a variance is never negative (the shim refuses one)
            weights[name] = np.abs(weights[name])
    model.set_weights(weights)
    return weights


# ---- GGUF files written from numpy ---------------------------------------------------------------
def gguf_module() -> Any:
    """The ``gguf`` package (test extra); skips the calling test when it is missing."""
    return pytest.importorskip("gguf")


def write_gguf(
    path: os.PathLike | str,
    arch: Optional[Any],
    tensors: Mapping[str, np.ndarray],
    strings: Optional[Mapping[str, str]] = None,
    uint32s: Optional[Mapping[str, int]] = None,
    arrays: Optional[Mapping[str, list]] = None,
) -> Path:
    """Write a GGUF file with the gguf package: general.architecture = arch (a str; an int is
    written as uint32; None leaves the key out), extra string/uint32/array keys (arrays of int are
    int32, of float float32, of str strings), and tensors whose
    numpy shapes are ggml's ne reversed, in their own dtypes (float32 -> F32, float16 -> F16)."""
    gguf = gguf_module()
    writer = gguf.GGUFWriter(os.fspath(path), "placeholder")
    del writer.kv_data[0]["general.architecture"]
    if isinstance(arch, str):
        writer.add_string("general.architecture", arch)
    elif arch is not None:
        writer.add_uint32("general.architecture", int(arch))
    for key, value in (strings or {}).items():
        writer.add_string(key, value)
    for key, value in (uint32s or {}).items():
        writer.add_uint32(key, value)
    for key, value in (arrays or {}).items():
        writer.add_array(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def foreign_net_file(
    path: os.PathLike | str,
    layers: Mapping[str, list],
    changes: Optional[Mapping[str, object]] = None,
    middle: Optional[Callable[[np.random.Generator], dict[str, np.ndarray]]] = None,
) -> Path:
    """A small ggml-mnist network written with the gguf package (not by us): 4x4 images, 3 classes, a dense layer h
    (16 -> 5) first and o (5 -> 3) last, the layer list ``layers`` (``ggml_mnist.layers.KEY`` -> one value a layer).
    ``changes`` replace list keys (None: removed); a change ``"drop:TENSOR"`` leaves that tensor out. ``middle``
    gives the tensors of the layers between h and o, drawn from the same generator after h's weights."""
    keys = dict(layers)
    drop = set()
    for key, value in (changes or {}).items():
        if key.startswith("drop:"):
            drop.add(key[5:])
        elif value is None:
            del keys[key]
        else:
            keys[key] = value
    rng = np.random.default_rng(0)
    tensors = {"h.weight": rng.standard_normal((5, 16)).astype(np.float32), "h.bias": np.zeros(5, np.float32)}
    tensors.update(middle(rng) if middle is not None else {})
    tensors["o.weight"] = rng.standard_normal((3, 5)).astype(np.float32)
    tensors["o.bias"] = np.zeros(3, np.float32)
    return write_gguf(
        path,
        "ggml-mnist",
        {name: t for name, t in tensors.items() if name not in drop},
        uint32s={"ggml_mnist.image_height": 4, "ggml_mnist.image_width": 4, "ggml_mnist.n_classes": 3},
        arrays={f"ggml_mnist.layers.{k}": v for k, v in keys.items()},
    )


def read_gguf(path: os.PathLike | str) -> tuple[dict[str, Any], dict[str, tuple[list[int], str, np.ndarray]]]:
    """Return (key -> value, tensor name -> (ne, type name, data)) of a GGUF file, via the gguf package."""
    gguf = gguf_module()
    reader = gguf.GGUFReader(os.fspath(path))
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {t.name: ([int(d) for d in t.shape], t.tensor_type.name, np.array(t.data)) for t in reader.tensors}
    return fields, tensors


def contract_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the shapes of ggml's mnist example, keyed by tensor name.

    Biases of the convolutions have ggml's ne [1, 1, C, 1], i.e. numpy shape (1, C, 1, 1).
    """
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if arch == "fc":
        return {
            "fc1.weight": normal(500, 784, scale=0.1),
            "fc1.bias": normal(500, scale=0.1),
            "fc2.weight": normal(10, 500, scale=0.2),
            "fc2.bias": normal(10, scale=0.1),
        }
    return {
        "conv1.kernel": normal(8, 1, 3, 3, scale=0.5),
        "conv1.bias": normal(1, 8, 1, 1, scale=0.1),
        "conv2.kernel": normal(16, 8, 3, 3, scale=0.3),
        "conv2.bias": normal(1, 16, 1, 1, scale=0.1),
        "dense.weight": normal(10, 784, scale=0.2),
        "dense.bias": normal(10, scale=0.1),
    }


def hidden_of(model: Any) -> int:
    """Units of the model's first hidden dense layer."""
    from ggml_mnist.layers import Dense

    return [x.units for x in model.layers[:-1] if isinstance(x, Dense)][0]


def conv_channels_of(model: Any) -> tuple[int, ...]:
    """Output channels of the model's convolutions, in order."""
    from ggml_mnist.layers import Conv2d

    return tuple(x.out_channels for x in model.layers if isinstance(x, Conv2d))


# ---- numpy reference of any layer list -----------------------------------------------------------
def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (what the shim computes)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Sliding k x k windows of x [N, H, W, C] with a stride: [N, OH, OW, C, k, k]."""
    v = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return v[:, ::stride, ::stride]


def reference_logits(
    layers: list,
    weights: Mapping[str, np.ndarray],
    images: np.ndarray,
    masks: Optional[Mapping[int, np.ndarray]] = None,
    batch_stats: Optional[dict[int, tuple[np.ndarray, np.ndarray, int]]] = None,
) -> np.ndarray:
    """Logits [N, classes] in float64 of a network given as gm.layers objects (with their names), interpreted in numpy.

    Activations are [N, H, W, C]; a dense layer flattens height-width-channel with channels fastest.
    masks[i] (numpy layout of the activation entering dropout layer i) multiplies it; without, dropout is identity.
    Batch normalisation uses the running statistics, or with ``batch_stats`` (a dict, training mode) the batch's mean
    and biased variance over every axis but the channels, which it records as batch_stats[i] = (mean, biased
    variance, values per channel). A residual layer adds the input of the layers of its body, through its projection
    (a strided 1x1 convolution or a dense layer) when it has one.
    """
    from ggml_mnist import layers as L

    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    x = _pixels(images)[..., None]
    inputs = []
    for i, layer in enumerate(layers):
        inputs.append(x)
        if isinstance(layer, L.Conv2d):
            k, s, p = layer.kernel_size, layer.stride, layer.padding
            kernel = w[f"{layer.name}.kernel"]  # [O, C, k, k]
            win = _windows(np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), k, s)
            x = np.einsum("nhwcij,ocij->nhwo", win, kernel) + w[f"{layer.name}.bias"].reshape(-1)
        elif isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
            k, p = layer.kernel_size, layer.padding
            s = layer.stride or k
            fill = -np.inf if isinstance(layer, L.MaxPool2d) else 0.0
            win = _windows(np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill), k, s)
            x = win.max(axis=(4, 5)) if isinstance(layer, L.MaxPool2d) else win.sum(axis=(4, 5)) / (k * k)
        elif isinstance(layer, L.Dense):
            x = x.reshape(x.shape[0], -1) @ w[f"{layer.name}.weight"].T + w[f"{layer.name}.bias"].reshape(-1)
        elif isinstance(layer, L.ReLU):
            x = np.maximum(x, 0.0)
        elif isinstance(layer, L.SiLU):
            x = x / (1.0 + np.exp(-x))
        elif isinstance(layer, L.GELU):
            x = gelu_tanh(x)
        elif isinstance(layer, L.Tanh):
            x = np.tanh(x)
        elif isinstance(layer, L.Dropout):
            if masks is not None:
                x = x * masks[i]
        elif isinstance(layer, L.BatchNorm):
            axes = tuple(range(x.ndim - 1))
            if batch_stats is not None:
                mean, var = x.mean(axis=axes), x.var(axis=axes)
                batch_stats[i] = (mean, var, x.size // x.shape[-1])
            else:
                mean, var = w[f"{layer.name}.running_mean"], w[f"{layer.name}.running_var"]
            x = (x - mean) / np.sqrt(var + layer.eps) * w[f"{layer.name}.weight"] + w[f"{layer.name}.bias"]
        elif isinstance(layer, L.Residual):
            skip = inputs[i - layer.body]
            if f"{layer.name}.kernel" in w:  # [O, C, 1, 1]; stride: the body's downsampling
                h, wd = skip.shape[1:3]
                s = next(s for s in range(1, 33) if ((h - 1) // s + 1, (wd - 1) // s + 1) == x.shape[1:3])
                kernel = w[f"{layer.name}.kernel"].reshape(x.shape[-1], skip.shape[-1])
                skip = skip[:, ::s, ::s, :] @ kernel.T + w[f"{layer.name}.bias"].reshape(-1)
            elif f"{layer.name}.weight" in w:
                skip = skip @ w[f"{layer.name}.weight"].T + w[f"{layer.name}.bias"].reshape(-1)
            x = x + skip
        else:
            raise AssertionError(f"no reference for {layer!r}")
    return x


def reference_net_proba(
    layers: list,
    weights: Mapping[str, np.ndarray],
    images: np.ndarray,
    masks: Optional[Mapping[int, np.ndarray]] = None,
    batch_stats: Optional[dict[int, tuple[np.ndarray, np.ndarray, int]]] = None,
) -> np.ndarray:
    """Class probabilities of :func:`reference_logits`."""
    return softmax(reference_logits(layers, weights, images, masks, batch_stats))


def http_request(
    addr: Any,
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request to a test server at addr (host, port, ...)."""
    import http.client

    conn = http.client.HTTPConnection(*addr[:2], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def sgd_step(start: Any, x: np.ndarray, y: np.ndarray, graph: str, **options: Any) -> tuple[Any, list[Any]]:
    """One full-batch SGD step at lr 1 (no decay, no augmentation) from the weights of ``start``: (model, history)."""
    from ggml_mnist import train

    return train(
        x,
        y,
        init=start,
        epochs=1,
        batch_size=len(y),
        optimizer="sgd",
        lr=1.0,
        lr_schedule="constant",
        weight_decay=0.0,
        threads=THREADS,
        progress=False,
        augment="none",
        graph=graph,
        **options,
    )


def check_sgd_gradient(
    before: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    lr: float,
    loss: Any,
    per_tensor: int,
    rng: np.random.Generator,
    abs_tol: float,
) -> int:
    """Assert that one SGD step from ``before`` to ``after`` moved each of ``per_tensor`` random weights of every
    tensor by -lr times the central finite difference of ``loss(weights as float64)``; returns how many it checked."""
    import pytest

    checked = 0
    for name, w in before.items():
        grad = (w - after[name]).astype(np.float64) / lr
        for flat in rng.choice(w.size, size=min(per_tensor, w.size), replace=False):
            idx = np.unravel_index(flat, w.shape)
            plus = {k: v.astype(np.float64) for k, v in before.items()}
            minus = {k: v.astype(np.float64) for k, v in before.items()}
            plus[name][idx] += 1e-6
            minus[name][idx] -= 1e-6
            numeric = (loss(plus) - loss(minus)) / 2e-6
            assert grad[idx] == pytest.approx(numeric, rel=2e-2, abs=abs_tol), (name, idx)
            checked += 1
    return checked
