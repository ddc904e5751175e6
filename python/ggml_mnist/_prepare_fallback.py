"""FALLBACK for ``ggml_mnist.imaging.prepare_image`` until image preparation is merged; delete it then.

Minimal "digits" recipe: grey, ink white on black, crop the ink, fit it in 20x20, centre it by mass in 28x28.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError


class ImageError(DataError):
    """An image could not be read or holds no ink."""


def prepare_image(image: bytes, *, preparation: str = "digits") -> np.ndarray:
    """Encoded image bytes as a uint8 [28, 28] MNIST-like input. Raises ImageError."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            im = im.convert("RGBA")
            flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
            gray = np.asarray(Image.alpha_composite(flat, im).convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"cannot read the image ({exc})") from exc
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 255 - gray if np.median(border) > 127 else gray
    ys, xs = np.nonzero(ink > 40)
    if len(ys) == 0:
        raise ImageError("the image holds no ink")
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = 20 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32)
    out = np.zeros((28, 28), dtype=np.float32)
    weights = small / max(small.sum(), 1e-6)
    cy = (weights.sum(axis=1) * np.arange(small.shape[0])).sum()
    cx = (weights.sum(axis=0) * np.arange(small.shape[1])).sum()
    y0 = int(np.clip(round(14 - cy), 0, 28 - small.shape[0]))
    x0 = int(np.clip(round(14 - cx), 0, 28 - small.shape[1]))
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return np.clip(out, 0, 255).astype(np.uint8)
