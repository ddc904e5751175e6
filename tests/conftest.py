"""Shared fixtures: synthetic MNIST-style data and the optional real MNIST directory.

The tests' support code (data makers, reference maths, picture makers, the fuzzer) is the package tests/support/,
imported as ``from support.helpers import THREADS``.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # pytest's default import mode puts it there; --import-mode=importlib does not
    sys.path.insert(0, str(TESTS))

from support.helpers import NO_REAL_MNIST  # noqa: E402
from support.synthetic import make_synthetic  # noqa: E402


class _MovedSupport(importlib.abc.MetaPathFinder):
    """``from helpers import ...`` (the support modules' old place) fails with the line to write instead."""

    OLD = ("synthetic", "helpers", "handwriting", "photos", "reliability", "fuzz_loaders")

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in self.OLD:
            raise ModuleNotFoundError(
                f"the tests' support code moved to tests/support/: write `from support.{name} "
                f"import ...` instead of `from {name} import ...`",
                name=name,
            )


if not any(isinstance(f, _MovedSupport) for f in sys.meta_path):
    sys.meta_path.append(_MovedSupport())


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any dataset download fail the test: tests never need the network (pytestmark = usefixtures(...))."""
    from ggml_mnist import download

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to download a dataset")

    monkeypatch.setattr(download, "download_dataset", refuse)


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
        pytest.skip(NO_REAL_MNIST)
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"GGML_MNIST_DATA={value} is not a directory: set it to the folder with MNIST's IDX .gz files")
    return path
