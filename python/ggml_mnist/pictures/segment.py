"""Cut the ink of a page into single digits: lines top to bottom, digits left to right.

Ink pieces (connected components) are grouped into lines by vertical overlap, pieces of one broken
digit are merged when they overlap horizontally (or a small one sits right beside another), and a
piece too wide for one digit is cut at the columns with the least ink.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .prepare import Ink

_SAME_LINE = 0.35  # vertical overlap, as a fraction of the shorter of two heights, that puts pieces on one line
_LINE_GAP = 4.0  # pieces further apart than this many heights start a new line
_SAME_DIGIT = 0.5  # horizontal overlap, as a fraction of the narrower width, that merges two pieces
_FRAGMENT = 0.4  # a piece lower than this fraction of its line's height is a fragment of a neighbour when close
_NEAR = 0.12  # "close" for a fragment: a gap below this fraction of the line's height
_TOO_SMALL = 0.2  # a piece smaller than this fraction of its line's height in both directions is dropped
_WIDE = 1.5  # a glyph wider than this many typical digit widths holds several digits
_SURE = 0.9  # a wide glyph the model reads with this probability is one digit
_DIGIT_ASPECT = 0.65  # width / height of a typical handwritten digit, when the line gives no example

Scorer = Callable[[Sequence[tuple[np.ndarray, np.ndarray]]], np.ndarray]


@dataclass
class Glyph:
    """One digit's ink at working resolution: its box (x0, y0, x1, y1), end-exclusive, its mask within the box
    and the index of its line."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    line: int


@dataclass
class _Group:
    x0: int
    y0: int
    x1: int
    y1: int
    labels: list[int]

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def absorb(self, other: _Group) -> None:
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        self.labels += other.labels


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return min(a1, b1) - max(a0, b0)


def _lines(groups: list[_Group]) -> list[list[_Group]]:
    """Chain pieces into lines left to right: a piece joins the line whose last tall pieces it overlaps most in
    height, or whose band holds its centre (lines may slope or wave); lines top to bottom, pieces left to right."""
    lines: list[list[_Group]] = []
    for g in sorted(groups, key=lambda g: g.x0):
        best, best_ov = None, 0.0
        for members in lines:
            tall = max(m.h for m in members)
            recent = [m for m in members if m.h >= 0.5 * tall][-3:]
            y0, y1 = float(np.median([m.y0 for m in recent])), float(np.median([m.y1 for m in recent]))
            ov = _overlap(g.y0, g.y1, y0, y1) / min(g.h, y1 - y0)
            if y0 <= (g.y0 + g.y1) / 2 <= y1:
                ov = max(ov, _SAME_LINE)
            near = g.x0 - max(m.x1 for m in recent) < _LINE_GAP * max(g.h, y1 - y0)
            if ov >= _SAME_LINE and near and ov > best_ov:
                best, best_ov = members, ov
        if best is None:
            lines.append([g])
        else:
            best.append(g)
    return sorted(_adopt_fragments(lines), key=lambda members: float(np.median([(m.y0 + m.y1) / 2 for m in members])))


def _adopt_fragments(lines: list[list[_Group]]) -> list[list[_Group]]:
    """Move a "line" of small pieces that sits just above or below a much taller piece (the bar of a 5 cut off
    its body) into that piece's line."""
    for small in sorted(lines, key=lambda members: max(m.h for m in members)):
        height = max(m.h for m in small)
        for other in lines:
            if other is small:
                continue
            host = next(
                (
                    m
                    for m in other
                    for f in small
                    if height < _FRAGMENT * m.h
                    and _overlap(f.x0, f.x1, m.x0, m.x1) > -_NEAR * m.h
                    and _overlap(f.y0, f.y1, m.y0, m.y1) > -0.35 * m.h
                ),
                None,
            )
            if host is not None:
                other.extend(small)
                other.sort(key=lambda m: m.x0)
                small.clear()
                break
    return [members for members in lines if members]


def _merge(line: list[_Group]) -> list[_Group]:
    """Join the pieces of broken digits within one line (pieces sorted by x0)."""
    height = max(g.h for g in line)
    out: list[_Group] = []
    for g in line:
        if out:
            prev = out[-1]
            ov = _overlap(prev.x0, prev.x1, g.x0, g.x1)
            small = min(g.h, prev.h) < _FRAGMENT * height
            if ov >= _SAME_DIGIT * min(g.w, prev.w) or (small and -ov < _NEAR * height):
                prev.absorb(g)
                continue
        out.append(g)
    return [g for g in out if max(g.w, g.h) >= _TOO_SMALL * height]


def _candidates(profile: np.ndarray, a: int, n_left: int) -> list[int]:
    """Where to cut off the next of ``n_left`` digits after column ``a``, best first: a clear gap near the even
    cut, else the even cut, then the columns with the least ink near it."""
    w = len(profile)
    step = (w - a) / n_left
    centre = a + step
    lo, hi = max(a + 1, int(centre - 0.35 * step)), min(w - 1, int(centre + 0.35 * step) + 1)
    cols = np.arange(lo, hi)
    order = np.lexsort((np.abs(cols - centre), profile[lo:hi]))  # least ink, then nearest the even cut
    even = min(max(int(round(centre)), a + 1), w - 1)
    picks = [int(c) for c in cols[order[:6]]]
    if not picks or profile[picks[0]] > 0.15 * profile.max():  # no clear gap near the even cut: the even cut first
        picks.insert(0, even)
    return list(dict.fromkeys(c for c in picks + [even] if a < c < w))


def _cut(box_mask: np.ndarray, strength: np.ndarray, n: int, score: Optional[Scorer]) -> list[int]:
    """Columns that split a wide glyph into n digits, chosen left to right: with a scorer, the candidate whose
    left piece (and, at the last cut, right piece too) the model reads most confidently; else the least ink."""
    profile = box_mask.sum(axis=0)
    cuts = [0]
    for k in range(n - 1, 0, -1):
        cands = _candidates(profile, cuts[-1], k + 1)
        if not cands:
            break
        best = cands[0]
        if score is not None and len(cands) > 1:
            a = cuts[-1]
            pieces = [(strength[:, a:c], box_mask[:, a:c]) for c in cands]
            conf = score(pieces)
            if k == 1:
                conf = conf * score([(strength[:, c:], box_mask[:, c:]) for c in cands])
            best = cands[int(np.argmax(conf))]
        cuts.append(best)
    return cuts[1:]


def _glyphs(group: _Group, ink: Ink, line: int, typical_w: float, score: Optional[Scorer]) -> list[Glyph]:
    box_mask = np.isin(ink.labels[group.y0 : group.y1, group.x0 : group.x1], group.labels)
    n = round(group.w / typical_w) if group.w > _WIDE * typical_w and group.w > group.h else 1
    strength = ink.strength[group.y0 : group.y1, group.x0 : group.x1]
    edges = [0] + (_cut(box_mask, strength, n, score) if n >= 2 else []) + [group.w]
    if len(edges) > 2 and score is not None:  # keep a wide digit whole when the model reads it better so
        whole = float(score([(strength, box_mask)])[0])
        parts = score([(strength[:, a:b], box_mask[:, a:b]) for a, b in zip(edges[:-1], edges[1:])])
        if whole >= _SURE or float(parts.mean()) <= whole:
            edges = [0, group.w]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        part = box_mask[:, a:b]
        rows = np.flatnonzero(part.any(axis=1))
        cols = np.flatnonzero(part.any(axis=0))
        if rows.size == 0:
            continue
        y0, y1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(
            Glyph(
                (group.x0 + a + int(c0), group.y0 + int(y0), group.x0 + a + int(c1), group.y0 + int(y1)),
                part[y0:y1, c0:c1],
                line,
            )
        )
    return out


def segment(ink: Ink, score: Optional[Scorer] = None) -> list[Glyph]:
    """The digits in the ink, line by line (top to bottom), each line left to right.

    ``score`` (optional) rates candidate digits, given as (ink strength, mask) pairs, by how surely a model reads
    them; it picks where touching digits are cut.
    """
    groups = [_Group(*c.box, labels=[c.label]) for c in ink.pieces]
    glyphs: list[Glyph] = []
    for i, line in enumerate(_lines(groups)):
        line = _merge(line)
        height = max(g.h for g in line)
        narrow = [g.w for g in line if g.w <= 0.9 * g.h and g.h >= 0.5 * height]
        typical_w = float(np.median(narrow)) if narrow else _DIGIT_ASPECT * height
        typical_w = max(typical_w, 0.45 * height)
        for g in line:
            glyphs += _glyphs(g, ink, i, typical_w, score)
    return glyphs
