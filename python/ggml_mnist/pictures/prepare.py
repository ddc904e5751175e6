"""Turn a user's picture (a path, bytes, a PIL image or an array) into a 28x28 input like MNIST's.

The "digits" recipe is MNIST's own, made robust for photos and scans: grey levels, ink polarity
found from the paper at the border, uneven lighting removed with a morphological background
estimate, ink found with a noise-aware hysteresis threshold, specks dropped, thin pen strokes
thickened to MNIST's stroke width, the ink fitted into 20x20 keeping its aspect ratio and centred
by its centre of mass in 28x28 (white ink on black). The "photo" recipe (Fashion-MNIST) keeps the
whole picture: object light on black, resized to 28x28.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..datasets import PREPARATIONS
from ..errors import DataFileNotFoundError, ImageError
from ..outputs import refuse_directory
from .components import Component, label
from .lines import remove_lines

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]
SIZE = 28  # MNIST's image side
FIT = 20  # MNIST fits the ink into FITxFIT before centring it in SIZExSIZE
WORK_SIDE = 1200  # larger pictures are reduced to WORK_SIDE x (3/4 WORK_SIDE) pixels in all before the ink is searched
_STROKE = 0.125  # MNIST's stroke width as a fraction of the fitted digit's longest side
_GRAINY = 1.25  # smoothing that widens the measured strokes by this factor or more shows their outline was grain
_SCRATCH = 80  # a digit is cropped to this longest side to normalise its strokes
_MIN_CONTRAST = 0.06  # ink must differ from the paper by at least this much (0..1) to count
_SPECK = 0.04  # components smaller than this fraction of the largest are specks
_BLOB = 0.15  # ink strokes wider than this fraction of the picture's shorter side are a sheet of paper
_CONTACT = 0.5  # a mark lying against the picture's edge along this fraction of its size is background
_DUST_MARKS = 30  # this many marks too small for a digit (fewer on small pictures: one per 200 pixels, at least 8), ...
_DUST_SHARE = 0.5  # ... holding this fraction of all ink, or ...
_STAND_OUT = 8.0  # ... with no mark this many times larger than the largest of them, are dust or noise
MAX_PIECES = 1000  # more separate marks than a page of digits holds (dotted or squared paper, a pattern)
_PAPER_BELOW = 0.2  # a paper level found again (a tight crop) has at least this share of the picture below it, ...
_PAPER_SHARE = 0.4  # ... and this share of the picture stays under its noise floor
_MIN_EXTENT = 0.04  # a digit spans at least this fraction of the picture's shorter side
_MIN_SIDE = 8  # and at least this many pixels (MNIST's digits span 20)
_MARGIN = 0.25  # a picture without a digit is read again with this much paper (of its longer side) around it, ...
_TIGHT = 0.05  # ... and a digit found then must reach within this fraction of the side of two opposite edges, ...
_FLAT = 0.08  # ... on paper that is faintly inked (a tenth of the ink's level) in less than this share


def describe(image: Any) -> str:
    """A short name for an image argument in error messages."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, np.ndarray):
        return f"array {image.shape} {image.dtype}"
    return type(image).__name__


def load_gray(image: ImageLike) -> np.ndarray:
    """Return the image as float32 grey levels [H, W] in [0, 1] (1 = white), alpha composited on white.

    Raises DataFileNotFoundError for a missing path and ImageError for anything that is not a readable image.
    """
    if isinstance(image, np.ndarray):
        return _array_gray(image)
    return _pil_gray(open_picture(image))


def open_picture(image: ImageLike) -> Image.Image:
    """The picture as a PIL image, decoded from a path or bytes (turned upright per its EXIF); arrays are shown grey.

    Raises DataFileNotFoundError for a missing path and ImageError for anything that is not a readable image.
    """
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.round(_array_gray(image) * 255).astype(np.uint8))
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), "the bytes")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise DataFileNotFoundError(f"image file {path!r} does not exist")
        refuse_directory(path, repr(path), "give an image file (PNG, JPEG, ...)", ImageError)
        if not stat.S_ISREG(os.stat(path).st_mode):  # reading a FIFO or a terminal would wait forever
            raise ImageError(f"{path!r} is not a regular file (a FIFO, device or socket); give an image file")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        except PermissionError as exc:
            raise ImageError(f"{path!r} cannot be read: {exc.strerror}") from exc
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the check above
                raise ImageError(f"{path!r} is not a regular file (a FIFO, device or socket); give an image file")
            return _decode(f, repr(path))
    raise ImageError(
        f"an image must be a file path, encoded bytes, a PIL image or a numpy array, got {describe(image)}"
    )


def _decode(f: Any, name: str) -> Image.Image:
    img: Optional[Image.Image] = None
    is_ = "are" if name == "the bytes" else "is"
    formats = "give a PNG, JPEG, BMP, GIF, TIFF or WebP file"
    if f.seek(0, os.SEEK_END) == 0:
        raise ImageError(f"{name} {is_} empty (0 bytes), not a picture; {formats}")
    f.seek(0)
    try:
        with warnings.catch_warnings():  # the pixel count is checked below, with a message of ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
        limit = Image.MAX_IMAGE_PIXELS  # Pillow's own bomb limit, checked on the header before decoding
        if limit and img.width * img.height > limit:
            raise ImageError(
                f"{name} {is_} a picture of {img.width}x{img.height} pixels, more than the {limit / 1e6:.0f} "
                "megapixels read here (a guard against decompression bombs); scale it down first"
            )
        img.load()
    except ImageError:
        raise
    except MemoryError:
        raise _no_memory(name if img is None else f"{name} ({img.width}x{img.height} pixels)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} {is_} too large to decode safely ({exc}); scale it down first") from exc
    except UnidentifiedImageError:
        raise ImageError(f"{name} {is_} not a readable image (no picture format Pillow knows); {formats}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name} {is_} not a readable image ({exc}); {formats}") from exc
    try:
        return ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    except (ValueError, OSError, SyntaxError):
        return img


def _no_memory(name: str) -> ImageError:
    return ImageError(f"the picture {name} does not fit in the memory available; scale it down first")


def _pil_gray(img: Image.Image) -> np.ndarray:
    if img.width == 0 or img.height == 0:
        raise ImageError("the image has no pixels")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _array_gray(np.asarray(img))
    try:
        if img.mode == "La":  # premultiplied alpha, which Pillow converts only to LA
            img = img.convert("LA")
        if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
            return _composite(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0)
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"a PIL image of mode {img.mode!r} cannot be turned into grey levels ({exc}); convert it to "
            "'RGB', 'RGBA' or 'L' first"
        ) from None


def _composite(rgba: np.ndarray) -> np.ndarray:
    """Grey levels of an [H, W, 4] picture in [0, 1] with its transparency composited: on white, except where the
    colour is one and the same wherever the picture is not transparent (a drawing app's export: the strokes are
    in the alpha channel): then the strokes go on white when they are dark and on black when they are light."""
    grey = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    alpha = rgba[..., 3]
    back = 1.0
    seen = grey[alpha > 0.05]
    if seen.size and float(alpha.max() - alpha.min()) > 0.25:
        lo, hi = np.percentile(seen, [1, 99])
        if hi - lo < _MIN_CONTRAST:  # the colour says nothing: the alpha draws the picture
            back = 0.0 if float(np.median(seen)) > 0.5 else 1.0
    return np.ascontiguousarray(grey * alpha + back * (1.0 - alpha), dtype=np.float32)


def _array_gray(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageError(f"an image array must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim != 2:
        raise ImageError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    if arr.size == 0:
        raise ImageError(f"the image array is empty (shape {arr.shape})")
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise ImageError("the image array holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        raise ImageError(f"image pixels must not be negative (minimum {lo}); use 0..1 floats or 0..255 integers")
    if np.issubdtype(arr.dtype, np.integer):
        x /= 255.0 if hi <= 255 else 65535.0 if hi <= 65535 else hi
    elif hi > 1.0:
        if hi > 255.0:
            raise ImageError(f"float image pixels must lie in [0, 1] (or 0..255), got a maximum of {hi}")
        x /= 255.0
    if x.ndim == 3:
        if x.shape[2] == 4:
            return _composite(x)
        x = x[..., 0] if x.shape[2] == 1 else x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    return np.ascontiguousarray(x, dtype=np.float32)


# -- the ink ---------------------------------------------------------------------------------------


@dataclass
class Ink:
    """Ink found in a picture at working resolution: its strength [0, 1] per pixel, the labelled ink pieces that
    are not specks, and the factor from working to original pixel coordinates."""

    strength: np.ndarray
    labels: np.ndarray
    pieces: list[Component]
    scale: float


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float image to (width, height) with anti-aliasing (Lanczos)."""
    return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))


def _slide(x: np.ndarray, k: int, axis: int, reduce: Any) -> np.ndarray:
    pad = [(0, 0), (0, 0)]
    pad[axis] = (k // 2, k // 2)
    view = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad, mode="symmetric"), k, axis=axis)
    return reduce(view, axis=-1)


def _opening(x: np.ndarray, k: int) -> np.ndarray:
    """Grey-level opening with a k x k square: removes bright details narrower than k, keeps the slow background."""
    low = _slide(_slide(x, k, 0, np.min), k, 1, np.min)
    return _slide(_slide(low, k, 0, np.max), k, 1, np.max)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k square (k odd), edges mirrored; running sums, so any k costs the same."""
    assert k % 2 == 1, k
    out = x
    for _ in range(2):  # down the columns, then (transposed) along the rows
        sums = np.cumsum(np.pad(out, ((k // 2 + 1, k // 2), (0, 0)), mode="symmetric"), axis=0, dtype=np.float64)
        out = ((sums[k:] - sums[:-k]) / k).T  # the window's sum is the difference of two running sums
    return out.astype(np.result_type(x.dtype, np.float32))


def _ink_side(g: np.ndarray) -> tuple[bool, np.ndarray]:
    """Whether the ink is darker than the paper, and the picture less its lighting slope (a fitted plane).

    The ink is the extreme further from the paper, whose level is the picture's median (paper covers most of it)."""
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xx.ravel() / w, yy.ravel() / h], axis=1)
    coef, *_ = np.linalg.lstsq(design, g.ravel().astype(np.float64), rcond=None)
    r = g - (design @ coef).reshape(h, w)
    paper = float(np.median(r))
    lo, hi = np.percentile(r, [0.3, 99.7])
    return paper - lo >= hi - paper, r


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a mask in pixels: twice the area over the perimeter (pixels with a background 4-neighbour)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1]
    edge = inner & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
    n_edge = int(edge.sum())
    return 2.0 * int(inner.sum()) / n_edge if n_edge else 0.0


def _rough_stroke(x: np.ndarray) -> float:
    """Stroke width of the clearly bright marks away from the picture's edges (0 when there are none).

    Grain makes the outline of a mask ragged, which makes its strokes look thin (the width is measured from the
    outline's length), so the picture is measured again, smoothed over ever larger squares, while the square stays
    under half the width measured and each smoothing still widens the strokes markedly (by a factor of _GRAINY): a
    clean outline barely changes, so a clean picture keeps its first measure."""
    h, w = x.shape
    width = _stroke_at(x)
    k = 3
    while k < min(h, w) // 4:
        smoothed = _stroke_at(_box(x, k))
        if k > smoothed / 2 or smoothed < _GRAINY * width:
            break  # the square is too large to measure with, or the outline was not ragged: the width stands
        width = smoothed
        k = 2 * k + 1
    return width


def _stroke_at(x: np.ndarray) -> float:
    h, w = x.shape
    labels, comps = label(x > max(_MIN_CONTRAST, 0.5 * float(np.percentile(x, 99.5))))
    comps = [c for c in comps if c.area >= 4]
    contact = _edge_contact(labels)
    for tier in (
        [c for c in comps if not _at_edge(c, w, h)],  # a table or shadow at the edge is no stroke, ...
        [c for c in comps if not _against_edge(c, int(contact[c.label]))],
        comps,
    ):  # ... but when all ink touches the edge, it is all there is to measure
        if tier:
            largest = max(c.area for c in tier)
            return stroke_width(np.isin(labels, [c.label for c in tier if c.area >= _SPECK * largest]))
    return 0.0


def _at_edge(c: Component, w: int, h: int) -> bool:
    return c.box[0] == 0 or c.box[1] == 0 or c.box[2] == w or c.box[3] == h


def find_ink(image: ImageLike, *, work_side: int = WORK_SIDE) -> Ink:
    """Find the ink in a picture of handwriting on paper (either polarity, uneven light, noise, JPEG artefacts).

    Raises ImageError when the picture holds no digit (blank, uniform, noise, dust, specks, a pattern, ink only
    at the edge) or does not fit in memory.
    """
    try:
        return _find_ink(load_gray(image), work_side)
    except MemoryError:
        raise _no_memory(describe(image)) from None


def _find_ink(gray: np.ndarray, work_side: int) -> Ink:
    h0, w0 = gray.shape
    # larger pictures are reduced to work_side x (3/4 work_side) pixels in all, whatever their shape: a long strip
    # (a row of digits, a stroke 40 000 px long) keeps its short side
    scale = max(1.0, float(np.sqrt(h0 * w0 / (0.75 * work_side * work_side))))
    g = gray if scale == 1.0 else _resize(gray, (max(1, round(w0 / scale)), max(1, round(h0 / scale))))
    h, w = g.shape
    if min(h, w) < 5:
        raise ImageError(f"the image is {w0}x{h0} pixels; it needs at least 5 pixels on each side to hold a digit")
    try:
        return _ink_at(g, scale)
    except ImageError as exc:
        if not getattr(exc, "no_digit", False):
            raise
        lo, hi = np.percentile(g, [1, 99])
        if hi - lo < _MIN_CONTRAST:  # nothing stands out anywhere: no crop of a digit either
            raise
        # A digit cropped tightly, its strokes against the picture's edges and over much of it, is no background at
        # the edge and leaves little paper to measure: read again with a margin of paper around it, and keep what is
        # found if it reaches across the picture (a tight crop), not just into one edge (a digit cut off).
        pad = max(2, round(_MARGIN * min(max(h, w), 4 * min(h, w))))
        ring = np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])
        try:
            ink = _ink_at(np.pad(g, pad, constant_values=float(np.median(ring))), scale)
        except ImageError:
            raise exc from None
        ink = _cropped(ink, pad, h, w)
        if not ink.pieces or not _across(ink.pieces, w, h) or not _clean_paper(ink):
            raise exc from None
        return ink


def _no_digit(message: str) -> ImageError:
    """The ImageError of a picture in which no digit was found (no ink, only specks or only ink against the edge),
    marked so that a tight crop may be tried (its type stays the public ImageError)."""
    exc = ImageError(message)
    exc.no_digit = True  # type: ignore[attr-defined]
    return exc


def _cropped(ink: Ink, pad: int, h: int, w: int) -> Ink:
    """Ink found on a picture padded by ``pad`` pixels, cut back to the picture (h x w)."""
    labels = ink.labels[pad : pad + h, pad : pad + w]
    pieces = []
    for c in ink.pieces:
        x0, y0, x1, y1 = (
            max(0, c.box[0] - pad),
            max(0, c.box[1] - pad),
            min(w, c.box[2] - pad),
            min(h, c.box[3] - pad),
        )
        if x1 > x0 and y1 > y0:
            pieces.append(Component(c.label, c.area, (x0, y0, x1, y1)))
    return Ink(ink.strength[pad : pad + h, pad : pad + w], labels, pieces, ink.scale)


def _clean_paper(ink: Ink) -> bool:
    """Whether the paper around the ink is clean: a tenth of the picture or more lies away from the ink, and little
    of it is even faintly inked (a texture or noise, padded with flat paper, would stand out as ink all over)."""
    mask = np.isin(ink.labels, [c.label for c in ink.pieces])
    away = ink.strength[~(_dilate(mask.astype(np.float32), 2) > 0)]
    return away.size >= 0.1 * mask.size and float(np.mean(away > 0.1)) < _FLAT


def _across(pieces: list[Component], w: int, h: int) -> bool:
    """Whether the pieces reach (nearly) from one edge of a w x h picture to the opposite one."""
    x0, y0 = min(c.box[0] for c in pieces), min(c.box[1] for c in pieces)
    x1, y1 = max(c.box[2] for c in pieces), max(c.box[3] for c in pieces)
    tx, ty = max(2, _TIGHT * w), max(2, _TIGHT * h)
    return (x0 <= tx and x1 >= w - tx) or (y0 <= ty and y1 >= h - ty)


def _ink_at(g: np.ndarray, scale: float) -> Ink:
    """The ink of a picture at working resolution (``g``, grey levels), ruled lines taken out."""
    dark, flat = _ink_side(g)
    x = -flat if dark else flat  # ink bright on dark paper, as in MNIST, less any lighting slope
    clean, n_lines = remove_lines(x)
    if n_lines:
        try:
            return _ink_of(clean, scale)
        except ImageError as exc:
            if n_lines >= 3:
                again = ImageError(
                    str(exc).replace("the image", f"the image, once its {n_lines} ruled lines are taken out,", 1)
                )
                again.no_digit = getattr(exc, "no_digit", False)  # type: ignore[attr-defined]
                raise again from None
            # one or two long straight marks and nothing else: they may be the digit (a 1 drawn with a thin pen)
    return _ink_of(x, scale)


def _ink_of(x: np.ndarray, scale: float) -> Ink:
    """The ink of a picture at working resolution, ink bright (``x``, less its lighting slope)."""
    h, w = x.shape
    width = _rough_stroke(x)
    if width > _BLOB * min(h, w):  # "ink" as wide as a sheet of paper: the paper lies on something darker
        other = _rough_stroke(-x)
        if 0 < other < width / 3:
            x, width = -x, other
    k = int(min(4 * max(width, 2.0) + 1, min(h, w)) // 2 * 2 + 1)
    b = max(1, k // 8) * 2 + 1  # the background is estimated on a blurred picture: noise would bias the opening
    raw = x - _opening(_box(x, b), max(k, 3))
    median = float(np.median(raw))
    mean3 = _box(raw, 3)
    # on paper that is white to the last bit (a photo's paper clipped at 255) every pixel lies at or above its level,
    # so the noise is also measured below where the 3x3 means centre, this far above the pixels' median
    lift = float(np.median(mean3)) - median
    strength, smooth, floor, level = _ink_level(raw, mean3, median, lift)
    if level < max(_MIN_CONTRAST, 2.0 * floor):  # a digit filling a tight crop may put the median among its strokes
        peak = _paper_peak(raw, median)
        again = _ink_level(raw, mean3, peak, lift)
        _, smooth_again, floor_again, _ = again
        # Real paper has grain on both sides of its level, and most of it stays under the noise floor. A texture, or
        # blank paper clipped at white, has a "peak" at its darkest levels, with everything above it counted as ink.
        if (raw < peak).mean() >= _PAPER_BELOW and (smooth_again <= floor_again).mean() >= _PAPER_SHARE:
            strength, smooth, floor, level = again
    if level < max(_MIN_CONTRAST, 2.0 * floor):
        raise _no_digit("the image holds no ink (no mark stands out from the paper); give a picture of a digit")
    high, low = max(0.5 * level, floor), max(0.25 * level, 0.6 * floor)
    labels, comps = label(smooth > low)
    peak = np.zeros(len(comps) + 1, dtype=np.float32)
    np.maximum.at(peak, labels.ravel(), smooth.ravel())
    marks = [c for c in comps if peak[c.label] >= high]
    pieces = _digit_pieces(marks, labels, w, h)
    strength = np.clip(strength / level, 0.0, 1.0)
    return Ink(strength, labels, pieces, scale)


def _ink_level(
    raw: np.ndarray, mean3: np.ndarray, paper: float, lift: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The ink's strength over the paper's level (paper at 0), its 3x3 mean, the noise floor and the ink's level
    (the 90th percentile of what stands above the floor). The noise is the spread of the 3x3 means of ``raw``
    (``mean3``) on the side darker than the paper, which ink never reaches, below the paper's level or below that
    level raised by ``lift``, whichever is larger."""
    strength = np.clip(raw - paper, 0.0, 1.0)
    smooth = _box(strength, 3)
    noise = max(_spread_below(mean3, paper), _spread_below(mean3, paper + lift))
    floor = 4.0 * noise + 0.02
    candidates = smooth[smooth > floor]
    return strength, smooth, floor, float(np.percentile(candidates, 90)) if candidates.size else 0.0


def _spread_below(values: np.ndarray, level: float) -> float:
    """The standard deviation of values under ``level`` (from the median distance, as for one half of a normal law)."""
    below = level - values
    return 1.4826 * float(np.median(below[below > 0])) if (below > 0).any() else 0.0


def _paper_peak(raw: np.ndarray, median: float) -> float:
    """The commonest grey level among the lower half of the picture's levels (below its ``median``; the peak of their
    histogram): the paper, even where strokes and their soft edges cover most of the picture."""
    lo = float(np.percentile(raw, 0.5))
    if not median - lo > 1e-9:
        return median
    counts, edges = np.histogram(raw, bins=64, range=(lo, median))
    i = int(np.argmax(np.convolve(counts, np.ones(3), mode="same")))
    return float((edges[i] + edges[i + 1]) / 2)


def _digit_pieces(marks: list[Component], labels: np.ndarray, w: int, h: int) -> list[Component]:
    """The marks that make up digits: not the background at the picture's edges, not specks, not dust.

    Raises ImageError naming why no digit is there: only specks, ink that touches the edge, dust or noise
    all over the picture, or more marks than a page of digits holds (dotted or squared paper)."""
    contact = _edge_contact(labels)
    edge = [c for c in marks if _against_edge(c, int(contact[c.label]))]
    inside = [c for c in marks if not _against_edge(c, int(contact[c.label]))]
    min_extent = max(_MIN_SIDE, _MIN_EXTENT * min(h, w))

    def digit_sized(c: Component) -> bool:
        return max(c.box[2] - c.box[0], c.box[3] - c.box[1]) >= min_extent

    largest = max((c.area for c in inside), default=0)
    pieces = [c for c in inside if c.area >= _SPECK * largest]
    sized = [c for c in pieces if digit_sized(c)]
    if not sized:
        if any(digit_sized(c) for c in edge):
            raise _no_digit(
                "the only ink large enough to be a digit touches the picture's edge (a digit cut off by the "
                "edge, or the edge of the paper, a table or a shadow); take the picture with a margin of "
                "paper around the digit"
            )
        raise _no_digit("the image holds no ink large enough to be a digit (only specks); give a picture of a digit")
    clutter = [c for c in inside if not digit_sized(c)]
    if len(clutter) >= min(_DUST_MARKS, max(8, h * w // 200)) and (
        sum(c.area for c in clutter) >= _DUST_SHARE * sum(c.area for c in inside)
        or largest < _STAND_OUT * max(c.area for c in clutter)
    ):
        raise ImageError(
            f"the image holds {len(clutter)} specks spread over it and no clear digit (dust, grain or "
            "noise); give a cleaner picture of a digit"
        )
    if len(pieces) > MAX_PIECES:
        raise ImageError(
            f"the image holds {len(pieces)} separate marks, more than a page of digits ({MAX_PIECES}); "
            "dotted or squared paper, a pattern or noise is no handwriting: give a picture of digits on "
            "plain paper"
        )
    return pieces


def _edge_contact(labels: np.ndarray) -> np.ndarray:
    """How many of the picture's border pixels each label covers (index = label)."""
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    return np.bincount(border, minlength=int(labels.max()) + 1)


def _against_edge(c: Component, contact: int) -> bool:
    """A mark that lies against the picture's edge along much of its own size: the table or the floor around
    the paper, a shadow, the paper's edge, or a digit cut off by the edge (a stroke that merely reaches the
    edge covers only its own width of it)."""
    return contact >= _CONTACT * max(c.box[2] - c.box[0], c.box[3] - c.box[1])


# -- one digit -------------------------------------------------------------------------------------


def _fit(crop: np.ndarray, side: int) -> np.ndarray:
    h, w = crop.shape
    f = side / max(h, w)
    return np.clip(_resize(crop, (max(1, round(w * f)), max(1, round(h * f)))), 0.0, 1.0)


def _max_pool(x: np.ndarray, f: int) -> np.ndarray:
    """Shrink by an integer factor keeping each block's brightest pixel, so that thin pen strokes do not fade."""
    if f < 2:
        return x
    h, w = x.shape
    x = np.pad(x, ((0, -h % f), (0, -w % f)))
    return x.reshape(x.shape[0] // f, f, x.shape[1] // f, f).max(axis=(1, 3))


def _dilate(x: np.ndarray, r: int) -> np.ndarray:
    return _slide(_slide(x, 2 * r + 1, 0, np.max), 2 * r + 1, 1, np.max)


def digit_input(strength: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MNIST's preparation of one digit from its ink strength and mask (same shape): crop to the ink,
    bring thin strokes to MNIST's width, fit into 20x20 keeping the aspect ratio, centre by mass in 28x28.
    Returns uint8 [28, 28], white ink on black. Raises ImageError when the mask holds no visible ink."""
    if not mask.any():
        raise ImageError("the digit's mask is empty")
    x0, y0, x1, y1 = mask_box(mask)
    ink = np.where(_dilate(mask.astype(np.float32), 1) > 0, strength, 0.0)
    crop = _max_pool(ink[y0:y1, x0:x1], max(y1 - y0, x1 - x0) // _SCRATCH)
    pad = max(crop.shape) // 8 + 2  # room for thickening and resampling at the edges
    big = _fit(np.pad(crop, pad), _SCRATCH + 2 * round(pad * _SCRATCH / max(crop.shape)))
    target = _STROKE * _SCRATCH
    width = stroke_width(big > 0.5)
    if width < 0.75 * target:
        big = _dilate(big, max(1, round((target - width) / 2)))
    rows, cols = np.nonzero(big > 0.05)
    if rows.size == 0:
        raise ImageError("the digit's ink is too faint to prepare (no mark stands out from the paper)")
    big = big[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    big = np.clip(big / max(float(np.percentile(big[big > 0.05], 90)), 1e-6), 0.0, 1.0)
    return centre_by_mass(_fit(big, FIT))


def centre_by_mass(small: np.ndarray) -> np.ndarray:
    """MNIST's last step: a digit fitted into 20x20 (floats in [0, 1], ink bright, not all 0) is placed in 28x28 so
    that its centre of mass falls on the centre. Returns uint8 [28, 28]."""
    total = float(small.sum())
    h, w = small.shape
    cy = float(small.sum(axis=1) @ np.arange(h)) / total
    cx = float(small.sum(axis=0) @ np.arange(w)) / total
    top = int(np.clip(round(SIZE / 2 - 0.5 - cy), 0, SIZE - h))
    left = int(np.clip(round(SIZE / 2 - 0.5 - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return np.round(out * 255.0).astype(np.uint8)


def prepare_image(image: ImageLike, *, preparation: str = "digits") -> np.ndarray:
    """Return a picture as a model input: uint8 [28, 28], white ink on black like MNIST.

    ``image`` is a file path, encoded bytes, a PIL image or an array ([H, W], [H, W, 3] or [H, W, 4];
    uint8 or floats in [0, 1]). ``preparation`` is "digits" (MNIST's recipe, see the module) or
    "photo" (whole picture, for Fashion-MNIST). Raises ImageError for a picture that cannot be read
    or holds no ink, DataFileNotFoundError for a missing file, ValueError for an unknown preparation.
    """
    return prepare_with_box(image, preparation=preparation)[0]


def prepare_with_box(image: ImageLike, *, preparation: str = "digits") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`prepare_image` and the box (x0, y0, x1, y1) of the picture it used, in original pixels."""
    if preparation not in PREPARATIONS:
        raise ImageError(f"preparation must be one of {', '.join(PREPARATIONS)}, got {preparation!r}")
    if preparation == "photo":
        try:
            return _photo(load_gray(image))
        except MemoryError:
            raise _no_memory(describe(image)) from None
    ink = find_ink(image)
    mask = np.isin(ink.labels, [c.label for c in ink.pieces])
    return digit_input(ink.strength, mask), original_box(ink, mask_box(mask))


def original_box(ink: Ink, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) at working resolution in the original picture's pixel coordinates."""
    s = ink.scale
    return (int(box[0] * s), int(box[1] * s), int(np.ceil(box[2] * s)), int(np.ceil(box[3] * s)))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x0, y0, x1, y1), end-exclusive, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _photo(gray: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fashion-MNIST's look: the object light on a black background, the whole picture squared and resized.

    Raises ImageError for a picture too small to show an object or of one uniform shade."""
    h, w = gray.shape
    if min(h, w) < 5:
        raise ImageError(f"the image is {w}x{h} pixels; it needs at least 5 pixels on each side to show an object")
    lo, hi = np.percentile(gray, [0.5, 99.5])
    if hi - lo < _MIN_CONTRAST:
        raise ImageError(
            "the image is one uniform shade (nothing stands out from its background); give a photo of an object"
        )
    ring = max(1, round(0.05 * min(h, w)))
    border = np.concatenate(
        [gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel()]
    )
    x = 1.0 - gray if np.median(border) > 0.5 else gray
    paper = float(
        np.median(np.concatenate([x[:ring].ravel(), x[-ring:].ravel(), x[:, :ring].ravel(), x[:, -ring:].ravel()]))
    )
    side = max(h, w)
    square = np.full((side, side), paper, dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = x
    small = np.clip((_resize(square, (SIZE, SIZE)) - paper) / max(1.0 - paper, 1e-6), 0.0, 1.0)
    return np.round(small * 255.0).astype(np.uint8), (0, 0, w, h)


def text_art(image: np.ndarray) -> str:
    """A 28x28 uint8 image as 28 lines of characters, darkest to brightest ' .:-=+*#%@' (two per pixel)."""
    ramp = " .:-=+*#%@"
    idx = (np.asarray(image, dtype=np.int32) * len(ramp)) // 256
    return "\n".join("".join(ramp[i] * 2 for i in row).rstrip() for row in idx)
