"""Small synthetic MNIST-style IDX datasets for tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ggml_mnist.data import write_idx

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BLOCK = 7  # class c is a bright BLOCK x BLOCK square in cell c of a 4x4 grid over 28x28


def make_synthetic(
    directory: str | os.PathLike,
    n_train: int = 200,
    n_test: int = 50,
    n_classes: int = 10,
    seed: int = 0,
    gz: bool = False,
) -> Path:
    """Write train and test IDX files under the standard MNIST names into directory.

    Images are 28x28 uint8 noise (0..63) with one bright square (192..255) whose position is
    the label, so any classifier can learn them. Labels are uint8 and balanced: each split
    holds every class when it has at least n_classes images. Files get a ``.gz`` suffix (and
    gzip compression) when gz is True. Returns the directory as a Path.
    """
    if not 2 <= n_classes <= 16:
        raise ValueError(f"n_classes must be in 2..16, got {n_classes}")
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % n_classes).astype(np.uint8)
        images = rng.integers(0, 64, size=(n, 28, 28), dtype=np.uint8)
        for c in range(n_classes):
            rows, cols = divmod(c, 4)
            block = np.s_[BLOCK * rows : BLOCK * (rows + 1), BLOCK * cols : BLOCK * (cols + 1)]
            members = labels == c
            images[(members, *block)] = rng.integers(192, 256, size=(int(members.sum()), BLOCK, BLOCK), dtype=np.uint8)
        images_name, labels_name = SPLIT_FILES[split]
        write_idx(directory / (images_name + suffix), images)
        write_idx(directory / (labels_name + suffix), labels)
    return directory
