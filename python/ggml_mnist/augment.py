"""Training-time data augmentation: named levels, parameter checking and a preview of augmented images.

The transforms themselves run in the C shim's batch gatherer (no Python per image); ``augment_images``
runs the same code on an array so that users can see what training sees.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

from . import _ffi
from ._ffi import ffi, lib
from .errors import ConfigError

# Parameters and their meaning; the C header (struct gmn_augment) holds the ranges and checks them.
PARAMETERS: dict[str, str] = {
    "shift": "largest shift per axis, in pixels",
    "rotate": "largest rotation, in degrees",
    "scale": "largest relative size change (0.1: factors 0.9..1.1)",
    "shear": "largest shear angle, in degrees",
    "elastic": "largest elastic displacement, in pixels (0: off)",
    "elastic_grid": "distance between the elastic field's control points, in pixels",
    "noise_pixels": "pixels flipped (v -> 1 - v) per image, as in hello-dl",
    "flip": "probability of mirroring an image left-right (clothes and objects; never for digits or letters)",
    "crop": "largest whole-pixel shift per axis: a random crop of the image padded with background, no resampling",
    "erase": "probability of erasing a random rectangle with random values (Zhong et al.'s random erasing)",
    "erase_area": "largest share of the image one erased rectangle covers (from 0.02)",
}
# parameters that are whole numbers
WHOLE = ("noise_pixels", "crop")
NONE: dict[str, float] = {name: 0.0 for name in PARAMETERS} | {
    "elastic_grid": 7.0,
    "noise_pixels": 0,
    "crop": 0,
    "erase_area": 0.4,
}
LEVELS: dict[str, dict[str, float]] = {
    "none": NONE,
    "light": NONE | dict(shift=2.0, rotate=10.0, scale=0.1, shear=5.0),
    "strong": NONE | dict(shift=2.5, rotate=12.0, scale=0.12, shear=12.0, elastic=1.5, elastic_grid=7.0),
    # for small networks (the cnn's 9 098 parameters underfit light): chosen on a validation split, see README
    "mild": NONE | dict(shift=1.5, rotate=8.0, scale=0.08, shear=4.0),
    # photos of objects (Fashion-MNIST): left-right mirroring only, which keeps a garment's outline and, unlike a
    # sub-pixel shift or scale, its texture (bilinear resampling blurs it); chosen on a validation split, see README
    "clothes": NONE | dict(flip=0.5),
}

AugmentLike = Union[str, Mapping[str, Any], None]


def for_dataset(augment: AugmentLike, preparation: str) -> AugmentLike:
    """The default level adapted to a dataset: photos of objects ("photo" preparation, Fashion-MNIST) get
    "clothes" where digits get "light" or "mild"; anything else is returned unchanged."""
    return "clothes" if augment in ("light", "mild") and preparation == "photo" else augment


def resolve_augment(spec: AugmentLike) -> dict[str, float]:
    """Return the full parameter dict (also a ``struct gmn_augment`` initialiser) for a level name ("none", "light",
    "strong") or a dict of parameters.

    A dict may start from a level with ``{"level": "light", "rotate": 20}``; missing parameters are 0.
    Raises ConfigError for an unknown level or parameter or a value that is not a number.
    """
    if spec is None:
        return dict(NONE)
    if isinstance(spec, str):
        if spec not in LEVELS:
            raise ConfigError(
                f"augment must be one of {', '.join(LEVELS)} or a dict of {', '.join(PARAMETERS)}; got {spec!r}"
            )
        return dict(LEVELS[spec])
    if not isinstance(spec, Mapping):
        raise ConfigError(f"augment must be a level name ({', '.join(LEVELS)}) or a dict of parameters, got {spec!r}")
    spec = dict(spec)
    base = resolve_augment(spec.pop("level", "none"))
    unknown = sorted(set(spec) - set(PARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown augment parameter(s) {', '.join(map(repr, unknown))}; known: {', '.join(PARAMETERS)}"
        )
    for name, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"augment {name} ({PARAMETERS[name]}) must be a finite number, got {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float is finite, and far too large (below)
            finite = True
        if not finite:
            raise ConfigError(f"augment {name} ({PARAMETERS[name]}) must be a finite number, got {value!r}")
        if (name in WHOLE or isinstance(value, numbers.Integral)) and not -(2**31) < value < 2**31:
            raise ConfigError(f"augment {name} {value!r} is far outside its range; see docs/training.md")
        if name in WHOLE and int(value) != value:
            raise ConfigError(f"augment {name} ({PARAMETERS[name]}) must be a whole number, got {value!r}")
        base[name] = int(value) if name in WHOLE else float(value)
    return base


def augment_images(images: Any, augment: AugmentLike = "light", seed: int = 0) -> np.ndarray:
    """Return float32 images in [0, 1] of shape [N, H, W] augmented as training would, from ``seed``.

    ``images``: uint8 [N, H, W] or one [H, W] image (then one image comes back). Raises ConfigError for bad
    parameters (naming the range) and DataError-like ConfigError for images that are not uint8.
    """
    arr = np.asarray(images)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ConfigError(f"augment_images takes uint8 images [N, H, W] or [H, W], got {arr.dtype} {arr.shape}")
    seed = _ffi.check_seed(seed)
    arr = np.ascontiguousarray(arr)
    n, h, w = arr.shape
    out = np.empty((n, h, w), dtype=np.float32)
    params = ffi.new("struct gmn_augment *", resolve_augment(augment))
    if n == 0:
        _ffi.check(lib.gmn_augment_check(params, h, w))
        return out
    _ffi.check(lib.gmn_augment_images(params, int(seed), _ffi.ptr(arr, "uint8_t *"), n, h, w, _ffi.ptr(out, "float *")))
    return out[0] if single else out
