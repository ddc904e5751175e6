"""Weight layouts: the shapes :meth:`Model.get_weights` gives and :meth:`Model.set_weights` takes.

- ``"ggml"`` (the default): ggml's tensor shapes in numpy order (ggml's ``ne`` reversed) with ggml's trailing 1s
  dropped, as :meth:`Model.tensor_shapes` and GGUF files have them: cnn's conv bias is ``[8, 1, 1]``, a 1-in
  1-out conv kernel ``[k, k]``, and a dense layer after convolutions reads its inputs height-width-channel,
  channels fastest (ggml's flatten).
- ``"torch"``: PyTorch's ``state_dict`` shapes and order: a Conv2d kernel is ``[out, in, k, k]`` and its bias
  ``[out]``, a Linear weight ``[out, in]`` and its bias ``[out]``, and a dense layer after convolutions reads
  its inputs channel-first (C, H, W), as after ``torch.flatten``. Other parameters are plain vectors.

Both hold the same numbers; only shapes (and the first dense layer's input order) differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from .errors import ConfigError
from .layers import Conv2d, Dense, Layer

#: The layouts get_weights/set_weights/convert_weights know.
LAYOUTS = ("ggml", "torch")

Shape = tuple[int, ...]


def check_layout(layout: Any) -> str:
    """``layout`` if it is one of LAYOUTS; raises ConfigError otherwise."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return layout


def _roles(layers: Sequence[Layer]) -> dict[str, tuple[int, str]]:
    """Tensor name -> (layer index, "kernel" / "weight" / "bias") for the conv and dense layers."""
    roles: dict[str, tuple[int, str]] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, (Conv2d, Dense)):
            roles[f"{layer.name}.{'kernel' if isinstance(layer, Conv2d) else 'weight'}"] = (i, "weight")
            roles[f"{layer.name}.bias"] = (i, "bias")
    return roles


def _reads_spatial(layers: Sequence[Layer], i: int) -> bool:
    """Whether dense layer i flattens a spatial input of several channels (the input order differs then)."""
    return i > 0 and not any(isinstance(x, Dense) for x in layers[:i])


def _flattened_map(
    name: str, roles: Mapping[str, tuple[int, str]], layers: Sequence[Layer], inputs: Sequence[Shape]
) -> Optional[Shape]:
    """The (height, width, channels) feature map that tensor ``name`` reads flattened when it is the weight of a
    dense layer after convolutions (the layouts order its inputs differently), else None."""
    if name not in roles or roles[name][1] != "weight":
        return None
    i = roles[name][0]
    return inputs[i] if isinstance(layers[i], Dense) and _reads_spatial(layers, i) else None


def torch_shapes(
    layers: Sequence[Layer], inputs: Sequence[Shape], ggml_shapes: Mapping[str, Shape]
) -> dict[str, Shape]:
    """The torch-layout shape of each tensor; ``inputs[i]`` is (height, width, channels) entering layer i."""
    roles = _roles(layers)
    out: dict[str, Shape] = {}
    for name, shape in ggml_shapes.items():
        if name not in roles and name.endswith(".kernel"):  # a residual projection: torch's 1x1 Conv2d [out, in, 1, 1]
            out[name] = {4: (shape[0], shape[1], 1, 1), 3: (1, shape[0], 1, 1)}.get(len(shape), (1, 1, 1, 1))
            continue
        if name not in roles:  # batch normalisation's vectors, a residual projection's bias and dense weight
            out[name] = tuple(d for d in shape if d != 1) or (1,)
            continue
        i, role = roles[name]
        layer = layers[i]
        h, w, c = inputs[i]
        width = int(layer.out_channels if isinstance(layer, Conv2d) else layer.units)  # type: ignore[attr-defined]
        if role == "bias":
            out[name] = (width,)
        elif isinstance(layer, Conv2d):
            out[name] = (width, c, layer.kernel_size, layer.kernel_size)
        else:
            out[name] = (width, h * w * c)
    return out


def to_torch(
    weights: Mapping[str, np.ndarray], layers: Sequence[Layer], inputs: Sequence[Shape]
) -> dict[str, np.ndarray]:
    """Weights in the ggml layout as the torch layout (new arrays)."""
    shapes = torch_shapes(layers, inputs, {k: np.shape(v) for k, v in weights.items()})
    roles = _roles(layers)
    out = {}
    for name, value in weights.items():
        arr = np.asarray(value)
        if arr.size != int(np.prod(shapes[name])):
            raise ConfigError(f"tensor {name!r} has {arr.size} values; this network's has {int(np.prod(shapes[name]))}")
        spatial = _flattened_map(name, roles, layers, inputs)
        if spatial is not None:
            h, w, c = spatial
            arr = arr.reshape(-1, h, w, c).transpose(0, 3, 1, 2)
        out[name] = np.ascontiguousarray(arr).reshape(shapes[name]).copy()
    return out


def from_torch(
    weights: Mapping[str, Any], layers: Sequence[Layer], inputs: Sequence[Shape], ggml_shapes: Mapping[str, Shape]
) -> dict[str, np.ndarray]:
    """Weights in the torch layout as the ggml layout (float32). Names this network lacks pass through unchanged;
    raises ConfigError for an array whose shape is not the torch layout's."""
    expected = torch_shapes(layers, inputs, ggml_shapes)
    roles = _roles(layers)
    out: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        if name not in ggml_shapes:
            out[name] = value
            continue
        arr = np.asarray(value, dtype=np.float32)
        if arr.shape != expected[name]:
            raise ConfigError(
                f"tensor {name!r} must have shape {expected[name]} in the torch layout, got {arr.shape} "
                "(give layout='ggml' for the shapes of tensor_shapes())"
            )
        spatial = _flattened_map(name, roles, layers, inputs)
        if spatial is not None:
            h, w, c = spatial
            arr = arr.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
        out[name] = np.ascontiguousarray(arr).reshape(ggml_shapes[name])
    return out
