"""Users' own pictures (Pillow and numpy; no native calls): from a photo or scan to what a model reads on it.

- ``prepare``: a picture (path, bytes, PIL image, array) -> a 28x28 input as MNIST's were made (``prepare_image``)
- ``components``: connected pieces of a mask (8-connectivity)
- ``segment``: the ink of a page cut into lines and single digits
- ``read``: predictions on pictures for a model (``predict_image``, ``read_digits``; ``Prediction``, ``Digit``)
- ``annotate``: boxes and labels drawn onto the picture (``annotate``, ``save_png``)

``Model.predict_image`` and ``Model.read_digits`` (and the Ensemble's) hand their pictures to ``read``.
"""

from __future__ import annotations

from .prepare import ImageLike, prepare_image, text_art
from .read import Digit, DigitReading, Prediction, predict_image, read_digits

__all__ = [
    "ImageLike",
    "prepare_image",
    "text_art",
    "Digit",
    "DigitReading",
    "Prediction",
    "predict_image",
    "read_digits",
]
