"""Accuracy floors and round trips on the real MNIST files (GGML_MNIST_DATA; skipped without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ggml_mnist import Model, augment_images, cli, evaluate, load, load_mnist, train
from support.helpers import THREADS


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def mnist(real_mnist: Path, cache: dict) -> dict[str, np.ndarray]:
    if "data" not in cache:
        x, y = load_mnist(real_mnist, "train")
        xt, yt = load_mnist(real_mnist, "test")
        assert (x.shape, xt.shape) == ((60000, 28, 28), (10000, 28, 28))
        cache["data"] = dict(x=x, y=y, xt=xt, yt=yt)
    return cache["data"]


@pytest.fixture
def fc_model(mnist: dict, cache: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Path]:
    """fc trained for one epoch, saved once for the tests below.

    The default cosine schedule decays the rate to 0 within a one-epoch run, which reaches
    94.5% here (PyTorch gives the same with that recipe); a constant rate reaches 95.7%.
    """
    if "fc" not in cache:
        model, history = train(
            mnist["x"],
            mnist["y"],
            arch="fc",
            epochs=1,
            lr_schedule="constant",
            augment="none",
            threads=THREADS,
            progress=False,
        )
        assert len(history) == 1 and history[0].n_train == 60000
        path = tmp_path_factory.mktemp("real") / "fc.gguf"
        model.save(path)
        cache["fc"] = (model, path)
    return cache["fc"]


def test_fc_one_epoch_accuracy(fc_model: tuple, mnist: dict) -> None:
    model, _ = fc_model
    result = evaluate(model, mnist["xt"], mnist["yt"])
    assert result.n == 10000
    assert result.accuracy > 0.95
    assert result.loss < 0.2
    assert model.architecture == "mnist-fc"


def test_cnn_one_epoch_accuracy(mnist: dict) -> None:
    model, history = train(mnist["x"], mnist["y"], arch="cnn", epochs=1, threads=THREADS, progress=False)
    assert history[0].train_acc > 0.85
    result = evaluate(model, mnist["xt"], mnist["yt"])
    assert result.accuracy > 0.95
    assert model.architecture == "mnist-cnn"


def test_saved_model_gives_identical_results(fc_model: tuple, mnist: dict) -> None:
    model, path = fc_model
    loaded = load(path, threads=THREADS)
    a, b = evaluate(model, mnist["xt"], mnist["yt"]), evaluate(loaded, mnist["xt"], mnist["yt"])
    assert np.array_equal(a.probabilities, b.probabilities)
    assert (a.accuracy, a.loss) == (b.accuracy, b.loss)
    assert loaded.metadata["dataset"]["n"] == 60000


def test_eval_cli_in_process(
    fc_model: tuple, real_mnist: Path, mnist: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    model, path = fc_model
    images, labels = sorted(real_mnist.glob("t10k-images*"))[0], sorted(real_mnist.glob("t10k-labels*"))[0]
    assert cli.eval_main([str(path), str(images), str(labels), "--threads", str(THREADS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = evaluate(model, mnist["xt"], mnist["yt"])
    assert lines[0].startswith("mnist-eval: mnist-fc on CPU: evaluation on 10000 images took ")
    assert lines[1] == f"mnist-eval: loss={expected.loss:.6f}+-{expected.loss_unc:.6f}"
    assert lines[2] == f"mnist-eval: accuracy={100 * expected.accuracy:.2f}+-{100 * expected.accuracy_unc:.2f}%"


def test_eval_console_script(fc_model: tuple, real_mnist: Path) -> None:
    _, path = fc_model
    script = Path(sys.executable).parent / "mnist-eval"
    if not script.exists():
        pytest.skip("the mnist-eval console script is not installed in this environment")
    images, labels = sorted(real_mnist.glob("t10k-images*"))[0], sorted(real_mnist.glob("t10k-labels*"))[0]
    out = subprocess.run(
        [str(script), str(path), str(images), str(labels), "--threads", str(THREADS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith("mnist-eval: loss=") and float(lines[1].split("=")[1].split("+-")[0]) < 0.2
    accuracy = float(lines[2].split("=")[1].split("+-")[0])
    assert lines[2].startswith("mnist-eval: accuracy=") and accuracy > 95


def test_augmentation_buys_robustness_to_shifted_and_rotated_digits(fc_model: tuple, mnist: dict) -> None:
    """fc trained with the "light" level reads test digits moved 2 px and turned 10 degrees far better than the
    plain fc, and loses little on the plain test set."""
    plain, _ = fc_model
    augmented, history = train(
        mnist["x"],
        mnist["y"],
        arch="fc",
        epochs=1,
        lr_schedule="constant",
        augment="light",
        threads=THREADS,
        progress=False,
    )
    moved = np.roll(mnist["xt"], (2, -2), axis=(1, 2))
    turned = (augment_images(moved, {"rotate": 10}, seed=3) * 255).round().astype(np.uint8)
    plain_acc = evaluate(plain, turned, mnist["yt"]).accuracy
    augmented_acc = evaluate(augmented, turned, mnist["yt"]).accuracy
    assert augmented_acc > 0.85 and augmented_acc > plain_acc + 0.2, (plain_acc, augmented_acc)  # measured 0.89 vs 0.51
    assert evaluate(augmented, mnist["xt"], mnist["yt"]).accuracy > 0.94
