"""Predictions on users' pictures: one picture per input, or every digit on a page.

``predict_image`` and ``read_digits`` serve any classifier with ``predict_proba``, ``image_size``,
``class_names`` and ``preparation`` (a Model, an Ensemble): ``Model.predict_image`` and
``Model.read_digits`` hand their pictures to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

import numpy as np

from ..errors import ImageError
from .prepare import MAX_PIECES, SIZE, ImageLike, digit_input, find_ink, original_box, prepare_with_box
from .segment import segment

Predictor = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 28, 28] -> probabilities [N, n_classes]


class Classifier(Protocol):
    """What reading pictures needs of a model: its input size, classes, picture recipe and probabilities."""

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def preparation(self) -> str: ...

    def predict_proba(self, images: Any) -> np.ndarray: ...


@dataclass
class Prediction:
    """A model's answer for one picture: the class, its name and probability, every class's probability,
    the prepared 28x28 input and the box (x0, y0, x1, y1) of the picture it came from, in pixels."""

    label: int
    class_name: str
    probability: float
    probabilities: np.ndarray
    input: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready fields: label, class_name, probability, probabilities, box."""
        return {
            "label": self.label,
            "class_name": self.class_name,
            "probability": self.probability,
            "probabilities": [float(p) for p in self.probabilities],
            "box": list(self.box),
        }


@dataclass
class Digit:
    """One digit read on a page: its box (x0, y0, x1, y1) in the picture's pixels, its line (0 = top),
    the class, its name and probability, and the prepared 28x28 input."""

    box: tuple[int, int, int, int]
    line: int
    label: int
    class_name: str
    probability: float
    input: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready fields: box, line, label, class_name, probability."""
        return {
            "box": list(self.box),
            "line": self.line,
            "label": self.label,
            "class_name": self.class_name,
            "probability": self.probability,
        }


@dataclass
class DigitReading:
    """The digits read on a page: ``text`` (one line of class names per line of writing) and each digit."""

    text: str
    digits: list[Digit]

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready fields: text and digits."""
        return {"text": self.text, "digits": [d.as_dict() for d in self.digits]}


def predict_image(
    model: Classifier, image: Union[ImageLike, Sequence[ImageLike]]
) -> Union[Prediction, list[Prediction]]:
    """Predict a picture (or a list of them) with model, each prepared as the model expects (its preparation)."""
    if isinstance(image, (list, tuple)):
        return predict_images(image, predictor(model), model.class_names, model.preparation) if image else []
    return predict_images([image], predictor(model), model.class_names, model.preparation)[0]


def read_digits(model: Classifier, image: ImageLike) -> DigitReading:
    """Read every digit on one picture with model (see :func:`read_page`).

    Raises ImageError for a model that classifies photos (Fashion-MNIST) rather than handwriting.
    """
    if model.preparation != "digits":
        raise ImageError(
            f"read_digits reads handwriting; this model classifies {model.preparation}s "
            "(use predict_image for one picture)"
        )
    return read_page(image, predictor(model), model.class_names)


def predictor(model: Classifier) -> Predictor:
    """model's probabilities for prepared 28x28 inputs; raises ImageError for a model of another input size."""
    if tuple(model.image_size) != (SIZE, SIZE):
        raise ImageError(
            f"pictures are prepared as {SIZE}x{SIZE} inputs; this model takes "
            f"{model.image_size[0]}x{model.image_size[1]} images"
        )
    return model.predict_proba


def predict_images(
    images: Sequence[ImageLike], predict: Predictor, names: Sequence[str], preparation: str
) -> list[Prediction]:
    """Prepare each picture and predict them in one batch."""
    prepared = [prepare_with_box(image, preparation=preparation) for image in images]
    probs = predict(np.stack([p[0] for p in prepared]))
    out = []
    for (arr, box), p in zip(prepared, probs):
        k = int(p.argmax())
        out.append(Prediction(k, names[k], float(p[k]), p, arr, box))
    return out


def read_page(image: ImageLike, predict: Predictor, names: Sequence[str]) -> DigitReading:
    """Find, prepare and predict every digit on a page; lines top to bottom, digits left to right.

    Raises ImageError when the page holds no digit (see find_ink) or more digits than MAX_PIECES.
    """
    ink = find_ink(image)

    def confidence(pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        inputs = {i: _input_or_none(*piece) for i, piece in enumerate(pieces)}
        ok = [i for i, arr in inputs.items() if arr is not None]
        out = np.zeros(len(pieces))
        if ok:
            out[ok] = predict(np.stack([inputs[i] for i in ok])).max(axis=1)
        return out

    glyphs, inputs = [], []
    for g in segment(ink, confidence):
        x0, y0, x1, y1 = g.box
        arr = _input_or_none(ink.strength[y0:y1, x0:x1], g.mask)
        if arr is not None:  # a piece too faint to prepare is no digit
            glyphs.append(g)
            inputs.append(arr)
    if not inputs:
        raise ImageError("the image holds no ink clear enough to be a digit; give a picture of digits")
    if len(inputs) > MAX_PIECES:
        raise ImageError(
            f"the image holds {len(inputs)} digit-like marks, more than a page of digits ({MAX_PIECES}); "
            "give a picture of digits on plain paper"
        )
    probs = predict(np.stack(inputs))
    digits = []
    for g, arr, p in zip(glyphs, inputs, probs):
        k = int(p.argmax())
        digits.append(Digit(original_box(ink, g.box), g.line, k, names[k], float(p[k]), arr))
    lines: dict[int, str] = {}
    for d in digits:
        lines[d.line] = lines.get(d.line, "") + d.class_name
    return DigitReading("\n".join(lines[i] for i in sorted(lines)), digits)


def _input_or_none(strength: np.ndarray, mask: np.ndarray) -> Optional[np.ndarray]:
    """digit_input, or None for a piece without visible ink."""
    try:
        return digit_input(strength, mask)
    except ImageError:
        return None
