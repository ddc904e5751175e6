"""Ruled lines (lined or squared paper, a notebook's margin) found and taken out of a picture before its ink is read.

A ruled line is a thin straight mark, horizontal or vertical (turned by up to 5 degrees), that runs across most of
the picture: it is found as a ridge (a mark brighter, in the ink's polarity, than the picture a few pixels above and
below it, or left and right of it), and the ridges are summed along every slope (a Hough transform restricted to
near-horizontal lines). Each line found is taken out by subtracting its own contrast, so that a stroke that crosses
it (darker than the line, or thicker than it) keeps its ink.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_THIN = 60  # a line is at most 1/_THIN of the picture's extent along it thick
_COVER = 0.5  # a line's ridge covers this fraction of the picture's extent along it, ...
_SPAN = 0.6  # ... and reaches over this fraction of it, when it is one of _FAMILY evenly spaced lines, ...
_FAMILY = 3
_EDGE_TO_EDGE = 0.95  # ... else over this fraction (the bar of a 7 drawn with a thin pen, tightly cropped, does not)
_THINNER = 0.75  # a line alone is ruled when it is thinner than this fraction of the pen's strokes
_LIKE = 1.5  # a pixel up to this many times the line's contrast is the line
_APART = 3  # ruled lines lie at least this many times their thickness apart
_EVEN = 0.15  # evenly spaced: each gap within this fraction of the commonest gap of a whole number of such gaps
_TILT = 0.09  # slopes searched: up to about 5 degrees either way, ...
_SLOPES = 100  # ... at most this many each way
_SEGMENTS = 8  # a line's contrast is measured in this many pieces along it (the light may change along the page)
_PIECE = 1.25  # a piece of a line is at most this many times the whole line's level (the light changes slowly)
_DENSE = 0.2  # ridges over more than this share of the picture are a texture or noise, not ruled lines
_CANDIDATES = 2048  # at most this many (slope, row) candidates are examined, the best covered first


def remove_lines(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` (float [H, W], ink bright on dark paper) less its ruled lines, and how many lines were taken out."""
    out, across = _remove_rows(x)
    out_t, down = _remove_rows(out.T)
    return np.ascontiguousarray(out_t.T), across + down


def _shifted(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """x moved d rows down and d rows up, the edge rows repeated."""
    p = np.pad(x, ((d, d), (0, 0)), mode="edge")
    return p[: -2 * d], p[2 * d :]


def _ridge(x: np.ndarray, d: int) -> np.ndarray:
    """How much each pixel stands out over the pixels d rows above and below it (a horizontal line up to d thick)."""
    above, below = _shifted(x, d)
    return x - np.maximum(above, below)


def _remove_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """x less its near-horizontal ruled lines, and their number."""
    h, w = x.shape
    d_max = min(w // _THIN, h // 4)
    if d_max < 1 or h < 8:
        return x, 0
    ds = sorted({max(1, round(1.5**i)) for i in range(40) if round(1.5**i) <= d_max})
    ridge = _ridge(x, ds[0])
    for d in ds[1:]:
        ridge = np.maximum(ridge, _ridge(x, d))
    centre = float(np.median(ridge))
    spread = 1.4826 * float(np.median(np.abs(ridge - centre)))
    marks = ridge > max(centre + 4.0 * spread, 0.02)
    if int(marks.sum()) < _COVER * w or marks.mean() > _DENSE:
        return x, 0
    near = marks.copy()  # a line one pixel off its slope still counts
    near[1:] |= marks[:-1]
    near[:-1] |= marks[1:]
    ys, xs = np.nonzero(near)
    my, mx = np.nonzero(marks)
    step = max(2.0 / w, _TILT / _SLOPES)  # on a very long strip, only lines near one of these slopes are found
    slopes = step * np.arange(-int(_TILT / step), int(_TILT / step) + 1)
    offset = int(np.ceil(_TILT * w)) + 2
    rows = h + 2 * offset
    found = []  # (coverage, slope index, row)
    for k, s in enumerate(slopes):
        cover = np.bincount(np.round(ys - s * xs).astype(np.int64) + offset, minlength=rows)
        peak = cover >= _COVER * w
        peak[1:] &= cover[1:] >= cover[:-1]  # a row's neighbours on the same slope are the same line
        peak[:-1] &= cover[:-1] >= cover[1:]
        found += [(int(cover[r]), k, int(r) - offset) for r in np.flatnonzero(peak)]
    if not found:
        return x, 0
    found.sort(key=lambda f: -f[0])
    claimed = np.zeros(my.size, dtype=bool)
    lines = []  # (slope, first row, last row)
    centre_row = d_max + 2
    along: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per slope: the marks' rows on it, sorted, and their order
    for _, k, r in found[:_CANDIDATES]:
        s = float(slopes[k])
        if k not in along:
            v_all = np.round(my - s * mx).astype(np.int64)
            order = np.argsort(v_all, kind="stable")
            along[k] = (v_all[order], order)
        v_sorted, order = along[k]
        a = np.searchsorted(v_sorted, r - centre_row, side="left")
        b = np.searchsorted(v_sorted, r + centre_row, side="right")
        profile = np.bincount(v_sorted[a:b] - (r - centre_row), minlength=2 * centre_row + 1)
        if profile[centre_row] < 0.25 * w:
            continue
        lo = hi = centre_row
        while lo > 0 and profile[lo - 1] >= 0.25 * w:
            lo -= 1
        while hi < len(profile) - 1 and profile[hi + 1] >= 0.25 * w:
            hi += 1
        if hi - lo > d_max:
            continue  # too thick for a line (a line 1 px off its slope at one end may cover one row more)
        first, last = r - centre_row + lo, r - centre_row + hi
        members = order[np.searchsorted(v_sorted, first - 1) : np.searchsorted(v_sorted, last + 1, side="right")]
        if claimed[members].mean() > 0.5:
            continue  # the same line at a neighbouring slope or row
        cols = mx[members]
        span = (cols.max() - cols.min() + 1) / w
        if span < _SPAN:
            continue
        claimed[members] = True
        lines.append((s, first, last, span))
    family, single = _ruled(lines, w)
    if not family and not single:
        return x, 0
    out = x.copy()
    bands = [_band(x, marks, line) for line in family]
    ref = float(np.median([band.level for band in bands])) if bands else np.inf
    for band in bands:
        out -= _line_ink(x, band, ref)
    if single:  # an edge-to-edge line alone is ruled only if it is thinner than the pen that wrote on the paper
        takes = [_line_ink(x, _band(x, marks, line)) for line in single]
        pen = _pen(out - sum(takes))
        kept = [(line, take) for line, take in zip(single, takes) if line[2] - line[1] + 1 < _THINNER * pen]
        for _, take in kept:
            out -= take
        single = [line for line, _ in kept]
    return out, len(family) + len(single)


def _pen(x: np.ndarray) -> float:
    """The stroke width of the clear ink of ``x`` (0 when there is none)."""
    from .prepare import stroke_width

    top = float(np.percentile(x, 99.5))
    return stroke_width(x > max(0.06, 0.5 * top)) if top > 0.06 else 0.0


@dataclass(frozen=True)
class _Band:
    """A line's band of pixels (rows ``by``, columns ``bx``, ``inside`` the picture), each pixel's contrast over the
    picture just above and below the band (``contrast``: over both sides; ``over_paper``: over the darker one), and
    per column the line's strongest pixel (``peak``, -inf where no mark of the line lies: not ``seen``)."""

    by: np.ndarray
    bx: np.ndarray
    inside: np.ndarray
    contrast: np.ndarray
    over_paper: np.ndarray
    peak: np.ndarray
    seen: np.ndarray

    @property
    def level(self) -> float:
        """The line's contrast over the paper: the median over its columns of its strongest pixel in each."""
        return float(np.median(self.peak[self.seen])) if self.seen.any() else 0.0


def _band(x: np.ndarray, marks: np.ndarray, line: tuple[float, int, int, float]) -> _Band:
    """The band of a line (slope, first row, last row, span) in ``x``."""
    h, w = x.shape
    s, first, last, _ = line
    cols = np.arange(w)
    d = last - first + 2
    by = np.round(np.arange(first - 1, last + 2)[:, None] + s * cols[None, :]).astype(np.int64)
    bx = np.broadcast_to(cols, by.shape)
    inside = (by >= 0) & (by < h)
    by = np.clip(by, 0, h - 1)
    above, below = x[np.clip(by - d, 0, h - 1), bx], x[np.clip(by + d, 0, h - 1), bx]
    contrast = x[by, bx] - np.maximum(above, below)
    over_paper = x[by, bx] - np.minimum(above, below)  # a stroke that crosses the line may lie on one side
    # the line's contrast in each column is its strongest pixel there (the others are its anti-aliased edges)
    on_line = inside & marks[by, bx]
    peak = np.where(on_line, contrast, -np.inf).max(axis=0)
    return _Band(by, bx, inside, contrast, over_paper, peak, np.isfinite(peak))


def _line_ink(x: np.ndarray, band: _Band, ref: float = np.inf) -> np.ndarray:
    """What a line adds to ``x``: in each pixel of its band, the pixel's contrast over the picture just above and
    below the band, up to the line's own level there (at most ``_PIECE`` times ``ref``, the level of the lines it is
    ruled with). The level is the median over the columns of a piece of the line, which strokes crossing it barely
    move."""
    w = x.shape[1]
    piece = np.minimum(np.arange(w) * _SEGMENTS // w, _SEGMENTS - 1)
    peak, seen = band.peak, band.seen
    whole = min(band.level, _PIECE * ref)  # a stroke written along most of the line does not make it the line
    level = np.full(w, whole, dtype=np.float32)
    for k in range(_SEGMENTS):
        here = seen & (piece == k)
        if here.sum() >= 3:
            # a stroke written along the line can fill a piece: it may raise the piece's level only a little over
            # the whole line's, so that the stroke keeps its ink
            level[piece == k] = min(float(np.median(peak[here])), _PIECE * whole)
    level = np.maximum(level, 0.0)
    take = np.zeros_like(x)
    # a pixel no brighter than the line is the line, even beside a stroke that crosses it (which hides the paper on
    # one side); a brighter one is the stroke, unless the paper lies on both sides
    line_like = band.over_paper <= _LIKE * level[None, :]
    values = np.clip(np.where(line_like, band.over_paper, band.contrast), 0.0, level[None, :])
    take[band.by[band.inside], band.bx[band.inside]] = values[band.inside]
    return take


def _ruled(
    lines: list[tuple[float, int, int, float]], w: int
) -> tuple[list[tuple[float, int, int, float]], list[tuple[float, int, int, float]]]:
    """Of the lines (slope, first row, last row, span): those of a family of evenly spaced lines (which may end where
    a sheet of paper ends), and the others that run (nearly) edge to edge."""
    keep: list[tuple[float, int, int, float]] = []
    if len(lines) >= _FAMILY:
        centres = np.array([(first + last) / 2 + s * w / 2 for s, first, last, _ in lines])
        order = np.argsort(centres)
        gaps = np.diff(centres[order])
        gap = float(np.median(gaps))
        thickest = max(last - first + 1 for _, first, last, _ in lines)
        if gap >= _APART * thickest + 2:  # not the edges and ripples of one broad stroke
            steps = gaps / gap
            even = (np.abs(steps - np.round(steps)) <= _EVEN) & (np.round(steps) >= 1)
            regular = np.zeros(len(lines), dtype=bool)
            regular[order[:-1]] |= even  # a line evenly spaced from its lower neighbour, ...
            regular[order[1:]] |= even  # ... or from its upper one
            if regular.sum() >= _FAMILY:
                keep = [line for i, line in enumerate(lines) if regular[i]]
    return keep, [line for line in lines if line not in keep and line[3] >= _EDGE_TO_EDGE]
