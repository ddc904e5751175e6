"""Reading pictures with a model trained on the real MNIST files (GGML_MNIST_DATA; skipped without it).

MNIST test digits, from writers the model never saw, are rendered as scans and photos of a page;
digits drawn with Pillow strokes stand in for another writer's hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ggml_mnist import Model, load_mnist, train
from support.handwriting import as_scan, draw_digits, mnist_scan
from support.helpers import THREADS


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def trained(real_mnist: Path, cache: dict) -> tuple[Model, np.ndarray, np.ndarray]:
    """fc after one epoch (about 15 s) and the last 1000 test digits."""
    if "fc" not in cache:
        x, y = load_mnist(real_mnist, "train")
        model, _ = train(x, y, arch="fc", epochs=1, lr_schedule="constant", threads=THREADS, progress=False)
        xt, yt = load_mnist(real_mnist, "test")
        cache["fc"] = (model, xt[-1000:], yt[-1000:])
    return cache["fc"]


def test_mnist_digits_rendered_as_scans_read_as_well_as_the_originals(trained: tuple) -> None:
    model, x, y = trained
    rng = np.random.default_rng(0)
    idx = rng.choice(len(y), 80, replace=False)
    scans = [
        mnist_scan(
            x[i],
            size=int(rng.choice([40, 120, 400])),
            seed=k,
            invert=bool(k % 3 == 0),
            noise=0.05 * (k % 2),
            gradient=0.4 * (k % 4 == 1),
            jpeg=50 if k % 5 == 0 else None,
            paper=(235, 225, 200),
            rotate=float(rng.uniform(-6, 6)),
        )
        for k, i in enumerate(idx)
    ]
    read = np.array([p.label for p in model.predict_image(scans)])
    plain = model.predict(x[idx])
    naive = model.predict(np.stack([np.asarray(s.convert("L").resize((28, 28))) for s in scans]))
    assert (read == y[idx]).mean() >= (plain == y[idx]).mean() - 0.06
    assert (read == y[idx]).mean() >= 0.88
    assert (naive == y[idx]).mean() < 0.5  # why the preparation exists


def test_drawn_digits_in_both_polarities(trained: tuple) -> None:
    model, _, _ = trained
    pictures, labels = [], []
    for d in range(10):
        for k, opts in enumerate([dict(), dict(invert=True, noise=0.05), dict(gradient=0.5, jpeg=40, size=500)]):
            pictures.append(
                as_scan(draw_digits([d], height=100, thickness=0.05 + 0.04 * k, jitter=0.02, seed=d + k), **opts)
            )
            labels.append(d)
    read = np.array([p.label for p in model.predict_image(pictures)])
    assert (read == np.array(labels)).mean() >= 0.85


def test_lines_of_digits_are_read(trained: tuple) -> None:
    model, x, y = trained
    rng = np.random.default_rng(1)
    right = total = counted = 0
    for _ in range(8):
        k = int(rng.integers(3, 11))
        idx = rng.choice(len(y), k, replace=False)
        gaps = rng.integers(-2, 16, k - 1)
        row = np.zeros((40, 28 * k + int(gaps.sum()) + 30), dtype=np.uint8)
        pos = 15
        for j, g in zip(idx, list(gaps) + [0]):
            dy = int(rng.integers(0, 8))
            row[dy : dy + 28, pos : pos + 28] = np.maximum(row[dy : dy + 28, pos : pos + 28], x[j])
            pos += 28 + int(g)
        page = Image.fromarray(255 - row).resize((row.shape[1] * 4, 160), Image.Resampling.BICUBIC)
        reading = model.read_digits(as_scan(page, noise=0.03, gradient=0.4, rotate=float(rng.uniform(-3, 3)), jpeg=70))
        truth = "".join(str(int(v)) for v in y[idx])
        if len(reading.text) == k:  # digits are compared where the line was cut into the right number of digits
            counted += 1
            right += sum(a == b for a, b in zip(reading.text, truth))
            total += k
    assert counted >= 6
    assert right / total >= 0.85
