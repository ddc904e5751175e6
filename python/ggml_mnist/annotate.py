"""Draw what a model read onto the picture: a box and a label per prediction (Pillow)."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence, Union

from PIL import Image, ImageDraw, ImageFont

from .errors import ImageError
from .imaging import ImageLike, open_picture
from .reading import Digit, Prediction


def annotate(image: ImageLike, found: Sequence[Union[Digit, Prediction]]) -> Image.Image:
    """The picture (as RGB) with a box around each prediction and its class name and probability above it.

    Boxes are green from 90 % probability, orange from 60 %, red below.
    """
    canvas = open_picture(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    heights = [d.box[3] - d.box[1] for d in found]
    size = max(10, int(0.35 * (sorted(heights)[len(heights) // 2] if heights else canvas.height)))
    font = ImageFont.load_default(size=size)
    line = max(1, size // 8)
    for d in found:
        colour = (0, 160, 0) if d.probability >= 0.9 else (230, 130, 0) if d.probability >= 0.6 else (220, 0, 0)
        x0, y0, x1, y1 = d.box
        draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=colour, width=line)
        text = f"{d.class_name} {100 * d.probability:.0f}%"
        tx, ty = x0, max(0, y0 - line - size - 2)
        draw.rectangle(draw.textbbox((tx, ty), text, font=font), fill=(255, 255, 255))
        draw.text((tx, ty), text, fill=colour, font=font)
    return canvas


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG atomically: a failed save leaves any existing file untouched. Raises ImageError."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ImageError(f"{path!r} is a directory; give a file name such as annotated.png")
    if not os.path.isdir(folder):
        raise ImageError(f"cannot write {path!r}: directory {folder!r} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ggml-mnist-", suffix=".png")
    except OSError as exc:
        raise ImageError(f"cannot write {path!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise ImageError(f"cannot write {path!r}: {exc.strerror or exc}") from None
