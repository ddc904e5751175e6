"""Phone photos made in the tests: a sheet of paper with handwriting lying on a darker table, seen at an angle
(a perspective quadrilateral), lit unevenly, with grain and JPEG; the table shows at the picture's edges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from PIL import Image

from .handwriting import jpeg_round_trip

Point = tuple[float, float]


def _perspective(src: Sequence[Point], dst: Sequence[Point]) -> list[float]:
    """Pillow's PERSPECTIVE coefficients that map each output point dst[i] to the input point src[i]."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float))]


def photo_of_sheet(
    sheet: Image.Image,
    corners: Sequence[Point],
    size: tuple[int, int],
    *,
    table: tuple[int, int, int] = (70, 55, 40),
    paper: tuple[int, int, int] = (235, 232, 222),
    light: float = 0.35,
    grain: float = 0.02,
    jpeg: Optional[int] = 85,
    seed: int = 0,
) -> Image.Image:
    """A photo (RGB, ``size`` = (width, height)) of ``sheet`` (black ink on white, grey) lying on a textured table.

    ``corners`` are where the sheet's top-left, top-right, bottom-right and bottom-left corners land in the photo
    (they may lie outside it). The light falls by ``light`` from the top-left to the bottom-right corner and is
    dimmer towards the picture's corners; ``grain`` is Gaussian noise (std, 0..1)."""
    w, h = sheet.size
    coeffs = _perspective([(0, 0), (w, 0), (w, h), (0, h)], corners)
    ink = (
        np.asarray(
            sheet.convert("L").transform(
                size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC, fillcolor=255
            ),
            np.float32,
        )
        / 255.0
    )
    cover = (
        np.asarray(
            Image.new("L", sheet.size, 255).transform(
                size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=0
            ),
            np.float32,
        )
        / 255.0
    )
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    texture = rng.normal(0, 6, (height // 8 + 1, width // 8 + 1))
    texture = np.asarray(Image.fromarray(texture.astype(np.float32), "F").resize(size, Image.Resampling.BICUBIC))
    table_rgb = np.array(table, np.float32) + texture[..., None]
    paper_rgb = ink[..., None] * np.array(paper, np.float32) + (1 - ink[..., None]) * np.array((25, 25, 35), np.float32)
    rgb = cover[..., None] * paper_rgb + (1 - cover[..., None]) * table_rgb
    yy, xx = np.mgrid[0:height, 0:width]
    u, v = xx / width, yy / height
    lit = 1.0 - light * (0.6 * u + 0.4 * v) - 0.25 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
    rgb = rgb * lit[..., None] + rng.normal(0, 255 * grain, rgb.shape)
    return jpeg_round_trip(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), jpeg)


def sheet_with(writing: Image.Image, *, sheet: tuple[int, int], at: tuple[int, int]) -> Image.Image:
    """A white sheet of ``sheet`` = (width, height) pixels with ``writing`` (black on white) pasted at ``at``."""
    page = Image.new("L", sheet, 255)
    page.paste(writing.convert("L"), at)
    return page
