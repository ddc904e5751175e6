"""The dataset recorded in a model, and what its outputs mean: the dataset's name, its class names and the image
preparation the model expects, all read from the model's metadata (the registry is :mod:`ggml_mnist.datasets`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from . import datasets
from .datasets import PREPARATIONS


def dataset_name(metadata: Mapping[str, Any]) -> Optional[str]:
    """The known dataset the metadata records (the ``name`` of its ``dataset`` entry), or None."""
    dataset = metadata.get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else None
    return name if isinstance(name, str) and name in datasets.DATASETS else None


def class_names(metadata: Mapping[str, Any], n_classes: int) -> list[str]:
    """The metadata's ``class_names`` when they fit, else the names of a known dataset, else "0".."n-1"."""
    if "class_names" in metadata and class_names_problem(metadata, n_classes) is None:
        return list(metadata["class_names"])
    return datasets.class_names(dataset_name(metadata), n_classes)


def class_names_problem(metadata: Mapping[str, Any], n_classes: int) -> Optional[str]:
    """Why the metadata's ``class_names`` cannot name the classes (so :func:`class_names` ignores them), or None
    when they fit or are absent."""
    if "class_names" not in metadata:
        return None
    names = metadata["class_names"]
    if not isinstance(names, list):
        return f"they are {type(names).__name__ if not isinstance(names, str) else 'text'}, not a list of names"
    if len(names) != n_classes:
        return f"{len(names)} names for {n_classes} classes"
    if not all(isinstance(n, str) for n in names):
        return "not every name is text"
    return None


def preparation(metadata: Mapping[str, Any]) -> str:
    """The metadata's ``preparation`` ("digits" or "photo"), else the known dataset's, else "digits"."""
    value = metadata.get("preparation")
    if value in PREPARATIONS:
        return value
    return datasets.preparation(dataset_name(metadata))
