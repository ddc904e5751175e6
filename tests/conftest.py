"""Shared fixtures: synthetic MNIST-style data and the optional real MNIST directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from synthetic import make_synthetic


@pytest.fixture
def synthetic_mnist(tmp_path: Path) -> Path:
    """Directory with raw synthetic MNIST IDX files: 200 train and 50 test images, 10 classes."""
    return make_synthetic(tmp_path / "synthetic-mnist")


DOWNLOADED = Path(__file__).resolve().parent.parent / "data" / "mnist"


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST directory: GGML_MNIST_DATA, else data/mnist after `mnist-data download`; skips without either."""
    value = os.environ.get("GGML_MNIST_DATA")
    if not value:
        if any((DOWNLOADED / f"t10k-labels-idx1-ubyte{ext}").is_file() for ext in ("", ".gz")):
            return DOWNLOADED
        pytest.skip("no MNIST data: run `mnist-data download` (into data/mnist) or set GGML_MNIST_DATA to its directory")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"GGML_MNIST_DATA={value} is not a directory")
    return path
