"""The gradients ggml computes for our graphs equal finite differences of a numpy forward pass.

One SGD step with a constant learning rate moves every weight by -lr * gradient, so the
gradient is read back from the weights before and after a one-batch epoch.
"""

from __future__ import annotations

import numpy as np
import pytest

from ggml_mnist import Model, train
from support.helpers import SMALL, THREADS, reference_proba

LR = 1.0
N = 16


def mean_loss(arch: str, weights: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray) -> float:
    probs = reference_proba(arch, {k: v.astype(np.float64) for k, v in weights.items()}, images)
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_one_sgd_step_follows_the_true_gradient(arch: str) -> None:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=N)
    options = dict(
        arch=arch,
        epochs=1,
        batch_size=N,
        optimizer="sgd",
        lr=LR,
        lr_schedule="constant",
        weight_decay=0.0,
        seed=5,
        threads=THREADS,
        progress=False,
        augment="none",
        **SMALL[arch],
    )
    before = Model.create(
        arch,
        seed=5,
        threads=THREADS,
        **({"hidden": SMALL[arch]["hidden"]} if arch == "fc" else {"conv_channels": SMALL[arch]["conv_channels"]}),
    ).get_weights()
    after = train(images, labels, **options)[0].get_weights()
    checked = 0
    for name, w in before.items():
        grad = (w - after[name]) / LR
        for flat in rng.choice(w.size, size=min(6, w.size), replace=False):
            idx = np.unravel_index(flat, w.shape)
            eps = 1e-6
            plus = {k: v.astype(np.float64) for k, v in before.items()}
            minus = {k: v.astype(np.float64) for k, v in before.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (mean_loss(arch, plus, images, labels) - mean_loss(arch, minus, images, labels)) / (2 * eps)
            assert grad[idx] == pytest.approx(numeric, rel=2e-2, abs=2e-5), (name, idx)
            checked += 1
    assert checked >= 24
