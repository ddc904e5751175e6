"""An ensemble of trained models that averages their class probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from . import api
from .config import DEFAULT_DEVICE, EVAL_CHUNK
from .errors import ConfigError
from .labels import dataset_name as recorded_dataset
from .model import Model, PathLike
from .pictures import read as pictures
from .pictures.prepare import ImageLike


class Ensemble:
    """Several models of the same classes and image size, used as one: their probabilities are averaged.

    ``members`` are Models or GGUF paths (loaded with ``device``, ``threads`` and ``graph``). Raises ConfigError
    for an empty list or members that classify other classes or image sizes than the first, naming the file.
    """

    def __init__(
        self,
        members: Sequence[Union[Model, PathLike]],
        *,
        device: str = DEFAULT_DEVICE,
        threads: int = 0,
        graph: str = "auto",
    ) -> None:
        if isinstance(members, (str, os.PathLike, Model)) or not isinstance(members, (list, tuple)):
            raise ConfigError(
                f"Ensemble takes a list of Models or GGUF paths, got {type(members).__name__}; "
                "write gm.Ensemble([m1, m2])"
            )
        if not members:
            raise ConfigError(
                "an ensemble needs at least one model; give a list such as gm.Ensemble(['a.gguf', 'b.gguf'])"
            )
        self.members: list[Model] = []
        for member in members:
            if not isinstance(member, (Model, str, os.PathLike)):
                raise ConfigError(f"ensemble members are Models or GGUF paths, got {member!r}")
            self.members.append(
                member if isinstance(member, Model) else Model.load(member, device=device, threads=threads, graph=graph)
            )
        first = self.members[0]
        for i, member in enumerate(self.members[1:], 1):
            for what, mine, theirs in (
                ("image size", member.image_size, first.image_size),
                ("number of classes", member.n_classes, first.n_classes),
                ("class names", member.class_names, first.class_names),
            ):
                if mine != theirs:
                    raise ConfigError(
                        f"ensemble member {_name(member, i)} has {what} {_show(mine)}, but "
                        f"{_name(first, 0)} has {_show(theirs)}; an ensemble averages the probabilities "
                        "of one set of classes, so leave out the models of other datasets"
                    )

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<Ensemble of {len(self)}: {', '.join(_name(m, i) for i, m in enumerate(self.members))}>"

    @property
    def n_classes(self) -> int:
        """The members' number of classes."""
        return self.members[0].n_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """The members' (height, width)."""
        return self.members[0].image_size

    @property
    def class_names(self) -> list[str]:
        """What each output means (the members agree)."""
        return self.members[0].class_names

    @property
    def preparation(self) -> str:
        """How pictures are prepared: that of the first member (see :attr:`Model.preparation`)."""
        return self.members[0].preparation

    @property
    def metadata(self) -> dict[str, Any]:
        """The first member's metadata (its dataset and class names hold for all)."""
        return self.members[0].metadata

    @property
    def architecture(self) -> str:
        """A description such as ``ensemble of 3 (mnist-cnn x3)``."""
        counts: dict[str, int] = {}
        for member in self.members:
            counts[member.architecture] = counts.get(member.architecture, 0) + 1
        kinds = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())
        return f"ensemble of {len(self)} ({kinds})"

    @property
    def device(self) -> str:
        """The members' devices, e.g. ``CPU``."""
        return "+".join(dict.fromkeys(m.device for m in self.members))

    def predict_proba(self, images: Any, *, batch_size: int = EVAL_CHUNK) -> np.ndarray:
        """Return the mean of the members' probabilities, shape [N, n_classes] float32 (see :meth:`Model.predict_proba`)."""
        total = sum(m.predict_proba(images, batch_size=batch_size).astype(np.float64) for m in self.members)
        return (total / len(self)).astype(np.float32)

    def predict(self, images: Any, *, batch_size: int = EVAL_CHUNK) -> np.ndarray:
        """Return the class of highest mean probability of each image as an int64 array of shape [N]."""
        return self.predict_proba(images, batch_size=batch_size).argmax(axis=1)

    def evaluate(
        self,
        images: Any = None,
        labels: Any = None,
        *,
        data_dir: Optional[PathLike] = None,
        dataset: Optional[str] = None,
        batch_size: int = EVAL_CHUNK,
        keep_probabilities: bool = True,
    ) -> api.EvalResult:
        """Evaluate the ensemble on labelled images as :func:`ggml_mnist.evaluate` does a model; returns an EvalResult
        whose probabilities are the members' mean and whose seconds are the members' sum."""
        if dataset is None and images is None:
            dataset = recorded_dataset(self.metadata)
        images, labels = api.resolve_dataset(images, labels, "test", data_dir, dataset)
        results = [api.evaluate(m, images, labels, batch_size=batch_size) for m in self.members]
        probs = (sum(r.probabilities.astype(np.float64) for r in results) / len(self)).astype(np.float32)
        truth = results[0].labels
        losses = -np.log(np.maximum(probs[np.arange(len(truth)), truth].astype(np.float64), 1e-30))
        return api.eval_result(
            probs.argmax(axis=1).astype(np.int64),
            losses,
            truth,
            sum(r.seconds for r in results),
            probs if keep_probabilities else None,
            self.n_classes,
        )

    def predict_image(
        self, image: Union[ImageLike, Sequence[ImageLike]]
    ) -> Union[pictures.Prediction, list[pictures.Prediction]]:
        """Predict a picture (or a list of them) as :meth:`Model.predict_image` does, with the mean probabilities."""
        return pictures.predict_image(self, image)

    def read_digits(self, image: ImageLike) -> pictures.DigitReading:
        """Read the handwritten digits on one picture as :meth:`Model.read_digits` does, with the mean probabilities."""
        return pictures.read_digits(self, image)


def _name(model: Model, index: int) -> str:
    return repr(model.path) if model.path else f"#{index + 1} (a Model in memory)"


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, list):
        return "[" + ", ".join(value[:12]) + (", ..." if len(value) > 12 else "") + "]"
    return str(value)
