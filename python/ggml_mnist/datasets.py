"""The dataset registry: every known dataset once, with its class names, how its images are prepared, its IDX file
layout and, for those that can be downloaded, its files, their checksums and the mirrors they come from.

``download.py`` fetches and verifies the downloadable ones; ``labels.py`` reads which dataset a model records.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from .data import PathLike, has_split, load_mnist, uncompressed_sha256
from .errors import ConfigError

PREPARATIONS = ("digits", "photo")  # how a picture becomes a model input: see ggml_mnist.pictures.prepare

_DIGITS = tuple(string.digits)
_EMNIST_MERGED = tuple(string.digits + string.ascii_uppercase + "abdefghnqrt")  # balanced and bymerge: 47 classes


class FileSpec(NamedTuple):
    """SHA-256 (hex) and size in bytes of a dataset file's uncompressed content."""

    sha256: str
    size: int


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: class names, image preparation ("digits" or "photo"), the IDX file layout and, when it can be
    downloaded, its ``.gz`` files (name -> FileSpec) and the mirror base URLs they are fetched from, in order."""

    name: str
    class_names: tuple[str, ...]
    preparation: str = "digits"
    prefix: str = ""  # EMNIST: every file name starts with "emnist-<subset>-"
    transposed: bool = False  # EMNIST stores each image column by column
    label_offset: int = 0  # EMNIST letters number their classes 1..26
    files: Mapping[str, FileSpec] = field(default_factory=dict)  # empty: not downloadable (EMNIST)
    mirrors: tuple[str, ...] = ()

    @property
    def downloadable(self) -> bool:
        """True when the registry knows this dataset's files and checksums (``mnist-data download`` fetches it)."""
        return bool(self.files)

    def has_split(self, directory: PathLike, split: str) -> bool:
        """True when ``directory`` holds this dataset's images file of ``split`` ("train" or "test")."""
        return has_split(directory, split, self.prefix)

    def load(self, directory: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (images [N, 28, 28] uint8 upright, labels [N] from 0) of ``split`` in ``directory``."""
        return load_mnist(
            directory, split, prefix=self.prefix, transposed=self.transposed, label_offset=self.label_offset
        )


def _mnist_files(train_images: str, train_labels: str, test_images: str, test_labels: str) -> dict[str, FileSpec]:
    """The four files of an MNIST-layout dataset, by the SHA-256 of their uncompressed content."""
    return {
        "train-images-idx3-ubyte.gz": FileSpec(train_images, 47_040_016),
        "train-labels-idx1-ubyte.gz": FileSpec(train_labels, 60_008),
        "t10k-images-idx3-ubyte.gz": FileSpec(test_images, 7_840_016),
        "t10k-labels-idx1-ubyte.gz": FileSpec(test_labels, 10_008),
    }


def _emnist(subset: str, names: tuple[str, ...], label_offset: int = 0) -> DatasetInfo:
    return DatasetInfo(
        f"emnist-{subset}", names, prefix=f"emnist-{subset}-", transposed=True, label_offset=label_offset
    )


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist",
            _DIGITS,
            files=_mnist_files(
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
        ),
        DatasetInfo(
            "fashion-mnist",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            preparation="photo",
            files=_mnist_files(
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        ),
        _emnist("letters", tuple(string.ascii_lowercase), label_offset=1),
        _emnist("digits", _DIGITS),
        _emnist("mnist", _DIGITS),
        _emnist("balanced", _EMNIST_MERGED),
        _emnist("bymerge", _EMNIST_MERGED),
        _emnist("byclass", tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a known dataset; raises ConfigError naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def downloadable() -> list[str]:
    """The names of the datasets that can be downloaded, in the registry's order."""
    return [name for name, info in DATASETS.items() if info.downloadable]


def download_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a dataset that can be downloaded; raises ConfigError naming those otherwise."""
    info = DATASETS.get(name)
    if info is not None and info.downloadable:
        return info
    choices = ", ".join(downloadable())
    if info is not None:
        raise ConfigError(
            f"{name} cannot be downloaded here (put its {info.prefix}*-idx?-ubyte.gz files from the "
            f"EMNIST release into a folder); choose one of: {choices}"
        )
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {choices}")


def class_names(dataset: Optional[str], n_classes: int) -> list[str]:
    """The class names of a known dataset with ``n_classes`` classes, else "0".."n_classes-1"."""
    info = DATASETS.get(dataset or "")
    if info is not None and len(info.class_names) == n_classes:
        return list(info.class_names)
    return [str(i) for i in range(n_classes)]


def preparation(dataset: Optional[str]) -> str:
    """How images for a model of ``dataset`` are prepared: "photo" for Fashion-MNIST, else "digits"."""
    info = DATASETS.get(dataset or "")
    return info.preparation if info is not None else "digits"


# --- which dataset a folder or a file holds ---------------------------------------------------------


def file_matches(path: Path, spec: FileSpec) -> bool:
    """True when ``path`` is a file (raw or .gz) whose uncompressed content has the SHA-256 of ``spec``."""
    return path.is_file() and uncompressed_sha256(path, limit=spec.size) == spec.sha256


def file_present(directory: Path, filename: str, spec: FileSpec) -> bool:
    """True if directory holds filename (.gz) or its uncompressed form with the expected content."""
    return any(file_matches(directory / n, spec) for n in (filename, filename.removesuffix(".gz")))


def identify_dataset(directory: PathLike, split: str) -> Optional[str]:
    """Name of the known dataset whose ``split`` labels file ``directory`` holds, or None (other or custom files)."""
    stem = "train" if split == "train" else "t10k"
    filename = f"{stem}-labels-idx1-ubyte.gz"
    for name, info in DATASETS.items():
        if filename in info.files and file_present(Path(directory), filename, info.files[filename]):
            return name
    return None


def identify_labels(path: PathLike) -> Optional[str]:
    """Name of the known dataset one of whose labels files ``path`` is (raw or .gz, by checksum), or None."""
    if not Path(path).is_file():
        return None
    for name, info in DATASETS.items():
        for filename, spec in info.files.items():
            if "-labels-" in filename and file_matches(Path(path), spec):
                return name
    return None


def locate(
    directory: PathLike, name: str, split: str, *, strict: bool = True, what: str = "data_dir"
) -> Optional[Path]:
    """The folder holding the ``split`` files of dataset ``name``: ``directory`` itself, else ``directory/name`` (where
    ``mnist-data download`` puts it); None when neither holds them.

    ``strict``: a folder whose files are another known dataset's (by checksum) does not count, and when that is all
    there is ConfigError says so, naming ``what`` (the argument that gave ``directory``) as the thing to change.
    """
    info = dataset_info(name)
    other = None
    for candidate in (Path(directory), Path(directory) / info.name):
        if not info.has_split(candidate, split):
            continue
        found = identify_dataset(candidate, split) if strict else None
        if found is None or found == info.name:
            return candidate
        other = other or (candidate, found)
    if other is not None:
        raise ConfigError(
            f"{other[0]} holds {other[1]}, not {info.name}; point {what} at the {info.name} files "
            f"or at their parent folder (downloads go to DIR/{info.name})"
        )
    return None
