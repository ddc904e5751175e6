"""Draw what a model read onto the picture: a box and a label per prediction (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..data import atomic_path
from ..errors import ImageError
from ..outputs import PNG_SOFTWARE, check_file_name
from .prepare import ImageLike, open_picture
from .read import Digit, Prediction

Box = tuple[int, int, int, int]


def annotate(image: ImageLike, found: Sequence[Union[Digit, Prediction]]) -> Image.Image:
    """The picture (as RGB) with a box around each prediction and its class name and probability next to it.

    Boxes are green from 90 % probability, orange from 60 %, red below. Labels do not overlap each other.
    """
    canvas = open_picture(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font, line = _font(found, canvas.height)
    for d, (text, spot) in zip(found, layout_labels(found, canvas.size, font)):
        colour = (0, 160, 0) if d.probability >= 0.9 else (230, 130, 0) if d.probability >= 0.6 else (220, 0, 0)
        x0, y0, x1, y1 = d.box
        draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=colour, width=line)
        draw.rectangle(spot, fill=(255, 255, 255))
        draw.text((spot[0], spot[1]), text, fill=colour, font=font, anchor="lt")
    return canvas


def _font(found: Sequence[Union[Digit, Prediction]], height: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """The label font, sized to the median digit's height, and the box line width."""
    heights = sorted(d.box[3] - d.box[1] for d in found)
    size = max(10, int(0.35 * (heights[len(heights) // 2] if heights else height)))
    return ImageFont.load_default(size=size), max(1, size // 8)


def layout_labels(
    found: Sequence[Union[Digit, Prediction]], size: tuple[int, int], font: Optional[ImageFont.FreeTypeFont] = None
) -> list[tuple[str, Box]]:
    """Each prediction's label text and where it goes (x0, y0, x1, y1): above its box, else below it, else in
    rows further up or down, the first spot inside the picture that overlaps no earlier label nor another box."""
    if font is None:
        font = _font(found, size[1])[0]
    gap = max(1, int(font.size) // 8) + 2
    boxes = [d.box for d in found]
    placed: list[Box] = []
    out = []
    for i, d in enumerate(found):
        text = f"{d.class_name} {100 * d.probability:.0f}%"
        left, top, right, bottom = font.getbbox(text, anchor="lt")
        tw, th = right - left + 2, bottom - top + 2
        x = min(max(0, d.box[0]), max(0, size[0] - tw))
        spots = []
        for row in range(len(found) + 1):
            spots += [(x, d.box[1] - gap - th - row * (th + 1)), (x, d.box[3] + gap + row * (th + 1))]
        spots = [(sx, sy, sx + tw, sy + th) for sx, sy in spots if sy >= 0 and sy + th <= size[1]] or [
            (x, max(0, d.box[1] - gap - th), x + tw, max(0, d.box[1] - gap - th) + th)
        ]
        others = [b for j, b in enumerate(boxes) if j != i]
        free = [s for s in spots if not any(_meets(s, p) for p in placed)]
        clear = [s for s in free if not any(_meets(s, b) for b in others)]
        spot = (clear or free or spots)[0]
        placed.append(spot)
        out.append((text, spot))
    return out


def _meets(a: Box, b: Box, pad: int = 2) -> bool:
    """Whether two boxes overlap or come closer than ``pad`` pixels."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _ours() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)  # marks the file as ours: a later run may replace it
    return info


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG atomically, marked as drawn by ggml-mnist: a failed save leaves any existing file untouched.

    Raises ImageError."""
    check_file_name(path, "the annotated picture", "annotated.png", error=ImageError)
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:  # created with the user's umask, like any new file
            image.save(f, format="PNG", pnginfo=_ours())
    except OSError as exc:
        raise ImageError(f"cannot write {path!r}: {exc.strerror or exc}") from None
