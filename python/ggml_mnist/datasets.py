"""The known datasets: their class names, how their images are prepared, and their IDX file layout."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .data import PathLike, has_split, load_mnist
from .errors import ConfigError

_DIGITS = tuple(string.digits)
_EMNIST_MERGED = tuple(string.digits + string.ascii_uppercase + "abdefghnqrt")  # balanced and bymerge: 47 classes


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: class names, image preparation ("digits" or "photo") and the IDX file layout."""

    name: str
    class_names: tuple[str, ...]
    preparation: str = "digits"
    prefix: str = ""  # EMNIST: every file name starts with "emnist-<subset>-"
    transposed: bool = False  # EMNIST stores each image column by column
    label_offset: int = 0  # EMNIST letters number their classes 1..26

    def has_split(self, directory: PathLike, split: str) -> bool:
        """True when ``directory`` holds this dataset's images file of ``split`` ("train" or "test")."""
        return has_split(directory, split, self.prefix)

    def load(self, directory: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (images [N, 28, 28] uint8 upright, labels [N] from 0) of ``split`` in ``directory``."""
        return load_mnist(directory, split, prefix=self.prefix, transposed=self.transposed, label_offset=self.label_offset)


def _emnist(subset: str, names: tuple[str, ...], label_offset: int = 0) -> DatasetInfo:
    return DatasetInfo(f"emnist-{subset}", names, prefix=f"emnist-{subset}-", transposed=True, label_offset=label_offset)


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("mnist", _DIGITS),
    DatasetInfo("fashion-mnist", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                  "Bag", "Ankle boot"), preparation="photo"),
    _emnist("letters", tuple(string.ascii_lowercase), label_offset=1),
    _emnist("digits", _DIGITS),
    _emnist("mnist", _DIGITS),
    _emnist("balanced", _EMNIST_MERGED),
    _emnist("bymerge", _EMNIST_MERGED),
    _emnist("byclass", tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)),
)}


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a known dataset; raises ConfigError naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


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


def find_split(directory: PathLike, split: str) -> Optional[str]:
    """Name of the EMNIST subset whose ``split`` files ``directory`` holds, or None (EMNIST has no checksums here)."""
    for info in DATASETS.values():
        if info.prefix and info.has_split(Path(directory), split):
            return info.name
    return None
