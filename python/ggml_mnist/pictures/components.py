"""Connected components of a binary mask (8-connectivity), found on runs of pixels with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Component:
    """One connected piece of a mask: its label in the label image, pixel count and bounding box (x0, y0, x1, y1), end-exclusive."""

    label: int
    area: int
    box: tuple[int, int, int, int]


def label(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """Label the 8-connected components of a 2-D boolean mask.

    Returns an int32 label image (0 = background, components numbered from 1) and the components.
    Works on horizontal runs: runs in neighbouring rows that touch (diagonals included) are joined
    with a union-find, so the cost follows the number of runs, not of pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # end-exclusive; same order as the starts (row-major)
    n = len(starts)
    labels = np.zeros((h, w), dtype=np.int32)
    if n == 0:
        return labels, []
    key = np.int64(w + 2)
    start_key = rows * key + starts
    end_key = rows * key + ends
    # run b (row r+1) touches run a (row r) when a's start <= b's end and a's end >= b's start
    upper = (rows - 1) * key
    lo = np.searchsorted(end_key, upper + starts, side="left")
    hi = np.searchsorted(start_key, upper + ends, side="right")
    counts = np.maximum(hi - lo, 0) * (rows > 0)
    b = np.repeat(np.arange(n), counts)
    a = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    _, run_label = np.unique(roots, return_inverse=True)
    run_label = run_label.astype(np.int32) + 1
    lengths = ends - starts
    flat = labels.reshape(-1)
    offsets = np.repeat(rows * w + starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    flat[offsets] = np.repeat(run_label, lengths)
    n_comp = int(run_label.max())
    area = np.bincount(run_label, weights=lengths, minlength=n_comp + 1)
    x0 = np.full(n_comp + 1, w)
    y0 = np.full(n_comp + 1, h)
    x1 = np.zeros(n_comp + 1, dtype=np.int64)
    y1 = np.zeros(n_comp + 1, dtype=np.int64)
    np.minimum.at(x0, run_label, starts)
    np.minimum.at(y0, run_label, rows)
    np.maximum.at(x1, run_label, ends)
    np.maximum.at(y1, run_label, rows + 1)
    comps = [Component(i, int(area[i]), (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]))) for i in range(1, n_comp + 1)]
    return labels, comps
