"""The network vocabulary: layer classes, ``Sequential``, the built-in presets and JSON layer files.

A network is a list of layers ending in a ``Dense`` layer with one unit per class. The shim
validates it, infers every shape and builds the ggml graphs; layer kinds and limits are read from
the library, never retyped here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

from ._ffi import ffi, lib
from .errors import ConfigError

__all__ = [
    "Layer",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Dense",
    "Linear",
    "ReLU",
    "SiLU",
    "GELU",
    "Tanh",
    "Dropout",
    "BatchNorm",
    "Residual",
    "residual",
    "Sequential",
    "presets",
    "preset_layers",
    "resolve_layers",
    "load_layers",
    "kind_name",
]


def kind_name(code: int) -> str:
    """The shim's name of a layer kind code ("conv2d", "relu", ...)."""
    return ffi.string(lib.gmn_layer_kind_name(code)).decode()


@dataclass(frozen=True)
class Layer:
    """Base class of the layers; ``code`` is the shim's enum value of the kind."""

    code: ClassVar[int] = 0

    @property
    def kind(self) -> str:
        """The kind's name, as in JSON layer files and GGUF ("conv2d", "relu", ...)."""
        return kind_name(self.code)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"type": kind, **fields}`` (unset optional fields left out)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.kind, **{k: v for k, v in fields.items() if v is not None}}

    def native(self, n_classes: int) -> dict[str, Any]:
        """The ``struct gmn_layer`` fields of this layer (internal)."""
        return {"kind": self.code}

    def describe(self) -> str:
        """A short description for summaries: the kind and its settings."""
        return self.kind


@dataclass(frozen=True)
class Conv2d(Layer):
    """2-D convolution (cross-correlation) with ``out_channels`` square ``kernel_size`` kernels, stride and zero padding."""

    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0
    name: Optional[str] = None
    code: ClassVar[int] = lib.GMN_LAYER_CONV2D

    def native(self, n_classes: int) -> dict[str, Any]:
        return dict(
            kind=self.code,
            name=_name(self.name),
            n_out=as_int(self.out_channels, "Conv2d out_channels"),
            k=as_int(self.kernel_size, "Conv2d kernel_size"),
            stride=as_int(self.stride, "Conv2d stride"),
            pad=as_int(self.padding, "Conv2d padding"),
        )

    def describe(self) -> str:
        return f"conv2d {self.kernel_size}x{self.kernel_size}" + _stride_pad(self.stride, self.padding)


@dataclass(frozen=True)
class _Pool(Layer):
    kernel_size: int = 2
    stride: Optional[int] = None  # None: the window size
    padding: int = 0

    def native(self, n_classes: int) -> dict[str, Any]:
        k = as_int(self.kernel_size, f"{type(self).__name__} kernel_size")
        stride = k if self.stride is None else as_int(self.stride, f"{type(self).__name__} stride")
        return dict(kind=self.code, k=k, stride=stride, pad=as_int(self.padding, f"{type(self).__name__} padding"))

    def describe(self) -> str:
        stride = self.kernel_size if self.stride is None else self.stride
        return f"{self.kind} {self.kernel_size}x{self.kernel_size}" + _stride_pad(stride, self.padding)


@dataclass(frozen=True)
class MaxPool2d(_Pool):
    """Max pooling over square windows; padded cells never win."""

    code: ClassVar[int] = lib.GMN_LAYER_MAXPOOL2D


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    """Average pooling over square windows; zero padding counts in the mean."""

    code: ClassVar[int] = lib.GMN_LAYER_AVGPOOL2D


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer; flattens a spatial input (height, width, channel; channels fastest).

    ``units=None`` means one unit per class (the usual last layer).
    """

    units: Optional[int] = None
    name: Optional[str] = None
    code: ClassVar[int] = lib.GMN_LAYER_DENSE

    def native(self, n_classes: int) -> dict[str, Any]:
        units = n_classes if self.units is None else as_int(self.units, "Dense units")
        return dict(kind=self.code, name=_name(self.name), n_out=units)

    def describe(self) -> str:
        return "dense"


Linear = Dense


@dataclass(frozen=True)
class ReLU(Layer):
    """max(x, 0)."""

    code: ClassVar[int] = lib.GMN_LAYER_RELU


@dataclass(frozen=True)
class SiLU(Layer):
    """x * sigmoid(x)."""

    code: ClassVar[int] = lib.GMN_LAYER_SILU


@dataclass(frozen=True)
class GELU(Layer):
    """GELU, tanh approximation (PyTorch's ``approximate="tanh"``); within 5e-4 of the exact x * Phi(x)."""

    code: ClassVar[int] = lib.GMN_LAYER_GELU


@dataclass(frozen=True)
class Tanh(Layer):
    """tanh(x)."""

    code: ClassVar[int] = lib.GMN_LAYER_TANH


@dataclass(frozen=True)
class Dropout(Layer):
    """Zeroes each input with probability ``p`` while training (scaling the rest by 1/(1-p)); identity when predicting."""

    p: float = 0.5
    code: ClassVar[int] = lib.GMN_LAYER_DROPOUT

    def native(self, n_classes: int) -> dict[str, Any]:
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real) or not math.isfinite(self.p):
            raise ConfigError(f"Dropout p must be a number in [0, 1), got {self.p!r}")
        return dict(kind=self.code, p=float(self.p))

    def describe(self) -> str:
        return f"dropout p={self.p:g}"


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation, as PyTorch's BatchNorm2d after a convolution or pooling (per channel, over the batch and
    every position) and BatchNorm1d after a dense layer (per unit, over the batch).

    Training normalises with the batch's mean and biased variance, then scales by the learnable ``name.weight``
    (starts at 1) and shifts by ``name.bias`` (starts at 0). After every physical batch the running statistics
    ``name.running_mean`` and ``name.running_var`` (the unbiased variance) move towards the batch's by ``momentum``
    (PyTorch's meaning: new = (1 - momentum) * old + momentum * batch); prediction and validation normalise with them.
    They are saved in the GGUF file and are not trained (no gradient, no weight decay). With gradient accumulation
    (a physical batch smaller than the batch) each physical batch is normalised with its own statistics and updates
    the running ones, as in PyTorch. ``eps`` is added to the variance.
    """

    momentum: float = 0.1
    eps: float = 1e-5
    name: Optional[str] = None
    code: ClassVar[int] = lib.GMN_LAYER_BATCHNORM

    def native(self, n_classes: int) -> dict[str, Any]:
        for what, value, rule in (("momentum", self.momentum, "[0, 1]"), ("eps", self.eps, "(0, 1]")):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"BatchNorm {what} must be a number in {rule}, got {value!r}")
        if 0 < self.eps < 1.2e-38:  # a denormal or 0 as the 32-bit float the shim keeps
            raise ConfigError(
                f"BatchNorm eps {self.eps!r} is too small for a 32-bit float; give at least 1e-30 "
                "(PyTorch's default is 1e-5)"
            )
        return dict(kind=self.code, name=_name(self.name), momentum=float(self.momentum), eps=float(self.eps))

    def describe(self) -> str:
        settings = (("momentum", self.momentum, 0.1), ("eps", self.eps, 1e-5))
        return "batchnorm" + "".join(f" {k}={v:g}" for k, v, default in settings if v != default)


@dataclass(frozen=True)
class Residual(Layer):
    """Ends a residual block: adds the block's input, the input of the ``body`` layers before this one, to their
    output. Where the body changes the shape (channels, or the size through strides), the input is projected first:
    by a 1x1 convolution ``name.kernel`` (stride: the body's downsampling) and ``name.bias`` on a feature map, by a
    dense layer ``name.weight``, ``name.bias`` on a flat input. :func:`residual` writes a block as its body and this
    layer; blocks nest, and the body must keep a feature map a feature map.
    """

    body: int
    name: Optional[str] = None
    code: ClassVar[int] = lib.GMN_LAYER_RESIDUAL

    def native(self, n_classes: int) -> dict[str, Any]:
        return dict(kind=self.code, name=_name(self.name), body=as_int(self.body, "Residual body"))

    def describe(self) -> str:
        return f"residual over {self.body} layer{'s' if self.body != 1 else ''}"


def residual(body: Iterable[Union[Layer, Sequence[Layer]]], name: Optional[str] = None) -> list[Layer]:
    """A residual block as a layer list, output = body(x) + x (x projected where the body changes its shape):
    ``[Conv2d(16, 3, padding=1), *residual([Conv2d(16, 3, padding=1), BatchNorm(), ReLU()]), Dense()]``.
    ``body`` may hold blocks made by this function (nested lists are flattened). Raises ConfigError."""
    flat: list[Layer] = []
    for item in body:
        if isinstance(item, Layer):
            flat.append(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(x, Layer) for x in item):
            flat.extend(item)
        else:
            raise ConfigError(f"a residual block's body holds layers such as gm.layers.Conv2d(8, 3); got {item!r}")
    if not flat:
        raise ConfigError("a residual block needs at least one layer in its body")
    return [*flat, Residual(len(flat), name=name)]


_CLASSES: dict[int, type[Layer]] = {
    c.code: c for c in (Conv2d, MaxPool2d, AvgPool2d, Dense, ReLU, SiLU, GELU, Tanh, Dropout, BatchNorm, Residual)
}
_BY_NAME: dict[str, type[Layer]] = {kind_name(code): c for code, c in _CLASSES.items()}


class Sequential:
    """A network as an ordered list of layers, as in Keras and PyTorch: ``Sequential([Conv2d(8, 3), ReLU(), Dense()])``."""

    def __init__(self, layers: Union[Iterable[Layer], Layer] = (), *more: Layer) -> None:
        items = [layers] if isinstance(layers, Layer) else list(layers)
        self.layers: list[Layer] = [*items, *more]
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential takes layers such as gm.layers.Conv2d(8, 3); got {layer!r}")

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"Sequential({self.layers!r})"

    def to_json(self) -> str:
        """The layer list as JSON, the format ``--arch-file`` and :func:`load_layers` read."""
        return json.dumps({"layers": [layer.to_dict() for layer in self.layers]}, indent=2)


def from_native(layer: Any) -> Layer:
    """A Layer from a ``struct gmn_layer`` (internal)."""
    cls = _CLASSES[layer.kind]
    name = ffi.string(layer.name).decode()
    if cls is Conv2d:
        return Conv2d(layer.n_out, layer.k, layer.stride, layer.pad, name=name)
    if cls in (MaxPool2d, AvgPool2d):
        return cls(layer.k, layer.stride, layer.pad)
    if cls is Dense:
        return Dense(layer.n_out, name=name)
    if cls is Dropout:
        return Dropout(round(float(layer.p), 6))
    if cls is BatchNorm:
        return BatchNorm(_from_f32(layer.momentum), _from_f32(layer.eps), name=name)
    if cls is Residual:
        return Residual(layer.body, name=name)
    return cls()


def layer_from_dict(entry: Any) -> Layer:
    """A Layer from its JSON form ``{"type": "conv2d", "out_channels": 8, ...}``; raises ConfigError."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise ConfigError(f'each layer must be an object with a "type" ({", ".join(_BY_NAME)}), got {entry!r}')
    fields = dict(entry)
    kind = fields.pop("type").lower()
    cls = _BY_NAME.get(kind)
    if cls is None:
        raise ConfigError(f"unknown layer type {kind!r}; use one of {', '.join(_BY_NAME)}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{kind} layer: unknown field(s) {', '.join(unknown)}; it takes {', '.join(allowed) or 'none'}"
        )
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"{kind} layer: {exc}") from None


def layers_from_dicts(entries: Sequence[Any]) -> list[Layer]:
    """Layers from their JSON forms, where a residual block may also be written with its body inside,
    ``{"type": "residual", "layers": [...], "name": ...}`` (expanded to the body and a Residual layer)."""
    out: list[Layer] = []
    for entry in entries:
        if isinstance(entry, dict) and str(entry.get("type", "")).lower() == "residual" and "layers" in entry:
            unknown = sorted(set(entry) - {"type", "layers", "name"})
            if unknown or not isinstance(entry["layers"], list):
                raise ConfigError(f'residual block: it takes a list "layers" and a "name", got {entry!r}')
            out.extend(residual(layers_from_dicts(entry["layers"]), name=entry.get("name")))
        else:
            out.append(layer_from_dict(entry))
    return out


def load_layers(path: Union[str, os.PathLike[str]]) -> list[Layer]:
    """Read a JSON layer file: a list of layers or ``{"layers": [...]}``; a residual block may hold its body
    (``{"type": "residual", "layers": [...]}``). Raises ConfigError naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the layer file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"layer file {os.fspath(path)!r} is not valid JSON: {exc}") from None
    entries = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'layer file {os.fspath(path)!r} must hold a non-empty list of layers or {{"layers": [...]}}')
    return layers_from_dicts(entries)


def preset_names() -> list[str]:
    """Names of the built-in networks, in the shim's order."""
    return [ffi.string(lib.gmn_preset_name(i)).decode() for i in range(lib.gmn_preset_count())]


def preset_layers(name: str, n_classes: int = 10) -> list[Layer]:
    """The layers of a built-in network for ``n_classes`` classes; raises ConfigError for an unknown name."""
    from ._ffi import check, cstr

    buf = ffi.new("struct gmn_layer[]", lib.GMN_MAX_LAYERS)
    count = ffi.new("int *")
    check(lib.gmn_preset_layers(cstr(name), n_classes, buf, lib.GMN_MAX_LAYERS, count))
    return [from_native(buf[i]) for i in range(count[0])]


def presets(n_classes: int = 10) -> dict[str, list[Layer]]:
    """Every built-in network by name, with its layers for ``n_classes`` classes."""
    return {name: preset_layers(name, n_classes) for name in preset_names()}


ArchLike = Union[str, Sequence[Layer], Sequential]


def resolve_layers(
    arch: ArchLike, n_classes: int, *, hidden: Optional[int] = None, conv_channels: Optional[Sequence[int]] = None
) -> list[Layer]:
    """The layer list of ``arch`` (a preset name or layers), with the ``hidden`` / ``conv_channels`` shorthands applied.

    ``hidden`` sets the units of the first hidden dense layer; ``conv_channels`` the channels of the
    first convolutions, in order. Raises ConfigError when the network has no such layers.
    """
    if isinstance(arch, str):
        layers = preset_layers(canonical_preset(arch), n_classes)
    elif isinstance(arch, (Sequential, list, tuple)):
        layers = list(arch)
        bad = [x for x in layers if not isinstance(x, Layer)]
        if bad or not layers:
            raise ConfigError(
                "arch must be a preset name or a non-empty list of layers such as gm.layers.Dense(), "
                f"got {bad[0] if bad else 'an empty list'!r}"
            )
    else:
        raise ConfigError(f"arch must be a preset name ({', '.join(preset_names())}) or a list of layers, got {arch!r}")
    if hidden is not None:
        dense = [i for i, x in enumerate(layers[:-1]) if isinstance(x, Dense)]
        if not dense:
            raise ConfigError(
                "hidden= sets the first hidden dense layer's units, but this network has no hidden dense layer"
            )
        layers[dense[0]] = dataclasses.replace(layers[dense[0]], units=hidden)
    if conv_channels is not None:
        convs = [i for i, x in enumerate(layers) if isinstance(x, Conv2d)]
        channels = list(conv_channels)
        if len(channels) > len(convs):
            raise ConfigError(
                f"conv_channels gives {len(channels)} values but the network has {len(convs)} convolutions"
            )
        for i, c in zip(convs, channels):
            layers[i] = dataclasses.replace(layers[i], out_channels=c)
    return layers


def canonical_preset(name: str) -> str:
    """A preset name in canonical form ("mnist-fc" -> "fc"); raises ConfigError for an unknown name."""
    key = str(name).lower()
    key = {"mnist-fc": "fc", "mnist-cnn": "cnn"}.get(key, key)
    if key not in preset_names():
        raise ConfigError(
            f"unknown network {name!r}; use a preset ({', '.join(preset_names())}, or ggml's mnist-fc and "
            "mnist-cnn) or a list of layers"
        )
    return key


def _from_f32(value: float) -> float:
    """The shortest decimal that a float32 field came from: 0.1 stored as float32 reads back as 0.1."""
    stored = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(1, 10):
        short = float(f"{stored:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == stored:
            return short
    return float(stored)


def _name(name: Optional[str]) -> bytes:
    if name is None:
        return b""
    if not isinstance(name, str):
        raise ConfigError(f"layer name must be a string, got {name!r}")
    return name.encode("utf-8")[: lib.GMN_NAME_CAP]


def as_int(value: Any, what: str) -> int:
    """Return value as an int for the shim; raise ConfigError naming ``what`` if it is not a whole number in int32."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if not -(2**31) < int(value) < 2**31:
        raise ConfigError(f"{what} is out of range: {value!r}")
    return int(value)


def _stride_pad(stride: int, padding: int) -> str:
    return (f" /{stride}" if stride != 1 else "") + (f" pad {padding}" if padding else "")
