"""The activation plot names the classes under the output strip (matplotlib, untrained model, no data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggml_mnist import Model
from ggml_mnist.outputs import PNG_SOFTWARE
from support.helpers import THREADS

pytest.importorskip("matplotlib")


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_the_output_strip_has_class_labels(arch: str, tmp_path: Path) -> None:
    from ggml_mnist import plot

    model = Model.create(arch, threads=THREADS, seed=1)
    fig = plot.activations(model, np.zeros((28, 28), np.uint8), path=tmp_path / "a.png")
    last = fig.axes[len(model.layers) - sum(1 for layer in model.layers if type(layer).__name__ == "Dropout")]
    assert [t.get_text() for t in last.get_xticklabels()] == model.class_names
    assert all(not ax.get_xticklabels() for ax in fig.axes[:-1] if ax is not last)
    assert Image.open(tmp_path / "a.png").info.get("Software") == PNG_SOFTWARE  # a later run may replace it
