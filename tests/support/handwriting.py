"""Pictures of handwriting made in the tests: digits drawn as pen strokes with Pillow, lines of digits,
MNIST digits rendered as scans, and the troubles of real pictures (polarity, size, position, rotation,
noise, uneven light, JPEG, paper colour)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
    """Points along an ellipse from angle a0 to a1 in degrees (0 = right, 90 = down)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(a0, a1, n)]


# Each digit is a list of strokes (polylines) in a box 0.6 wide and 1 tall, y down.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.3, 0.5, 0.27, 0.48, -90, 275, 40)],
    1: [[(0.12, 0.22), (0.34, 0.02), (0.34, 1.0)]],
    2: [_arc(0.3, 0.27, 0.26, 0.25, 190, 380) + [(0.04, 1.0), (0.6, 0.98)]],
    3: [_arc(0.28, 0.25, 0.25, 0.24, 200, 450) + _arc(0.28, 0.73, 0.29, 0.26, -90, 160)],
    4: [[(0.42, 0.0), (0.02, 0.68), (0.6, 0.68)], [(0.45, 0.3), (0.45, 1.0)]],
    5: [[(0.56, 0.02), (0.1, 0.02), (0.06, 0.45)] + _arc(0.3, 0.68, 0.27, 0.3, -130, 150)],
    6: [_arc(0.55, 0.55, 0.5, 0.55, 250, 180, 16) + _arc(0.3, 0.72, 0.26, 0.27, 180, 540)],
    7: [[(0.02, 0.03), (0.6, 0.03), (0.22, 1.0)]],
    8: [_arc(0.3, 0.25, 0.22, 0.24, 90, 450) + _arc(0.3, 0.74, 0.28, 0.26, -90, 270)],
    9: [_arc(0.3, 0.27, 0.26, 0.26, 0, 360) + [(0.56, 0.3), (0.5, 1.0)]],
}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two pictures of the same shape are (two prepared inputs, say): the correlation of their pixels."""
    return float(np.corrcoef(np.ravel(a).astype(float), np.ravel(b).astype(float))[0, 1])


def draw_digits(
    digits: Sequence[int],
    *,
    height: int = 100,
    thickness: float = 0.1,
    gaps: Optional[Sequence[float]] = None,
    margin: float = 0.5,
    slant: float = 0.0,
    jitter: float = 0.0,
    seed: int = 0,
) -> Image.Image:
    """Black strokes on white: the digits side by side, ``height`` pixels tall, pen ``thickness`` as a fraction of the
    height, ``gaps`` between digits as fractions of the height (default 0.3 each), ``slant`` shears (fraction of x per y),
    ``jitter`` moves each stroke point by that fraction of the height at random."""
    rng = np.random.default_rng(seed)
    gaps = list(gaps) if gaps is not None else [0.3] * (len(digits) - 1)
    m = margin * height
    xs = [m]
    for g in gaps:
        xs.append(xs[-1] + 0.6 * height + g * height)
    width = int(xs[-1] + 0.6 * height + m + abs(slant) * height)
    img = Image.new("L", (width, int(height + 2 * m)), 255)
    draw = ImageDraw.Draw(img)
    pen = max(1, round(thickness * height))
    for digit, x in zip(digits, xs):
        for stroke in STROKES[digit]:
            pts = [
                (
                    x + (px + slant * (1 - py)) * height + jitter * height * rng.normal(),
                    m + py * height + jitter * height * rng.normal(),
                )
                for px, py in stroke
            ]
            draw.line(pts, fill=0, width=pen, joint="curve")
            r = pen / 2
            for px, py in (pts[0], pts[-1]):
                draw.ellipse((px - r, py - r, px + r, py + r), fill=0)
    return img


def as_scan(
    img: Image.Image,
    *,
    invert: bool = False,
    noise: float = 0.0,
    gradient: float = 0.0,
    jpeg: Optional[int] = None,
    paper: tuple[int, int, int] = (255, 255, 255),
    ink: tuple[int, int, int] = (0, 0, 0),
    rotate: float = 0.0,
    size: Optional[int] = None,
    seed: int = 0,
) -> Image.Image:
    """A black-on-white grey image as a colour scan: ink and paper colours, rotated (degrees), resized to ``size`` on
    its longest side, lit unevenly (``gradient``: the light falls by that fraction across the page), with Gaussian
    ``noise`` (std, 0..1), JPEG at quality ``jpeg``, and the polarity flipped with ``invert``."""
    g = img.convert("L")
    if rotate:
        g = g.rotate(rotate, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    if size:
        f = size / max(g.size)
        g = g.resize((max(1, round(g.width * f)), max(1, round(g.height * f))), Image.Resampling.LANCZOS)
    t = np.asarray(g, dtype=np.float32)[..., None] / 255.0  # 1 = paper
    rgb = t * np.array(paper, np.float32) + (1 - t) * np.array(ink, np.float32)
    if invert:
        rgb = 255.0 - rgb
    h, w = t.shape[:2]
    if gradient:
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = rgb * (1.0 - gradient * (0.6 * xx / w + 0.4 * yy / h))[..., None]
    if noise:
        rgb = rgb + np.random.default_rng(seed).normal(0, 255 * noise, rgb.shape)
    return jpeg_round_trip(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), jpeg)


def jpeg_round_trip(img: Image.Image, quality: Optional[int]) -> Image.Image:
    """img as a JPEG of that quality decodes it (unchanged when quality is None or 0)."""
    if not quality:
        return img
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def mnist_scan(
    digit: np.ndarray, *, size: int = 200, canvas: float = 1.6, seed: int = 0, **scan: object
) -> Image.Image:
    """An MNIST digit (uint8 28x28, white on black) as if written on paper and scanned: upscaled to ``size``,
    dark ink on a larger light page, then :func:`as_scan` (noise, gradient, JPEG, ...)."""
    up = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC)
    page = Image.new("L", (int(size * canvas), int(size * canvas)), 255)
    rng = np.random.default_rng(seed)
    free = page.width - size
    page.paste(up, (int(rng.integers(0, free + 1)), int(rng.integers(0, free + 1))))
    return as_scan(page, seed=seed, **scan)  # type: ignore[arg-type]


def soft_scan(
    ink: np.ndarray,
    *,
    res: int = 16,
    factor: int = 10,
    blur: float = 0.0,
    grain: float = 0.0,
    margin: float = 0.5,
    paper: float = 0.92,
    dark: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Writing scanned at low resolution and upscaled, as old scans and small web images are: ``ink`` ([H, W], 1 =
    ink) with ``margin`` of its height of paper around it is scanned ``res`` pixels tall (each scan pixel the mean
    of the paper it covers), upscaled ``factor`` times (bicubic), blurred by ``blur`` scan pixels and printed in
    grey level ``dark`` on ``paper`` (0..1) with Gaussian ``grain`` (std, 0..1). Returns uint8 [H', W']."""
    h, w = ink.shape
    m = round(margin * h)
    page = np.pad(np.asarray(ink, dtype=np.float32), m)
    f = res / h
    low = Image.fromarray(page, "F").resize(
        (max(1, round(page.shape[1] * f)), max(1, round(page.shape[0] * f))), Image.Resampling.BOX
    )
    up = low.resize((low.width * factor, low.height * factor), Image.Resampling.BICUBIC)
    grey = Image.fromarray(np.clip(np.asarray(up) * 255.0, 0, 255).astype(np.uint8))
    if blur:
        grey = grey.filter(ImageFilter.GaussianBlur(blur * factor))
    t = np.asarray(grey, dtype=np.float64) / 255.0
    out = paper - t * (paper - dark) + np.random.default_rng(seed).normal(0, grain, t.shape)
    return np.clip(out * 255.0, 0, 255).astype(np.uint8)
