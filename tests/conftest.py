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


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST directory named by GGML_MNIST_DATA; skips the test when it is not set."""
    value = os.environ.get("GGML_MNIST_DATA")
    if not value:
        pytest.skip("GGML_MNIST_DATA is not set (point it at a directory with the MNIST IDX files)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"GGML_MNIST_DATA={value} is not a directory")
    return path
