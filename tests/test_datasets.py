"""Datasets: EMNIST's IDX layout, class names and preparation in the model, and which dataset a folder holds."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import cli, download
from ggml_mnist.datasets import class_names, dataset_info, preparation
from support.synthetic import make_synthetic

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "20", "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("no_downloads")  # the network is never needed (conftest.py)


def upright_letters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class (0..25) is a bar in row 2 + class: transposing them would make a column instead."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 26
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    images[np.arange(n), labels + 1, 3:25] = 255
    return images, labels


def write_emnist(directory: Path, n_train: int = 260, n_test: int = 52) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """EMNIST letters as the release stores them: transposed images, labels 1..26, gzip, emnist-letters-* names."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = upright_letters(n, seed=len(split))
        gm.write_idx(directory / f"emnist-letters-{split}-images-idx3-ubyte.gz", images.transpose(0, 2, 1).copy())
        gm.write_idx(directory / f"emnist-letters-{split}-labels-idx1-ubyte.gz", (labels + 1).astype(np.uint8))
        out[split] = (images, labels)
    return out


def test_emnist_letters_are_read_upright_with_labels_from_zero(tmp_path: Path) -> None:
    written = write_emnist(tmp_path / "emnist")
    info = dataset_info("emnist-letters")
    for split in ("train", "test"):
        images, labels = info.load(tmp_path / "emnist", split)
        assert np.array_equal(images, written[split][0]) and np.array_equal(labels, written[split][1])
    assert class_names("emnist-letters", 26) == list(string.ascii_lowercase)
    assert len(class_names("emnist-balanced", 47)) == 47 and class_names("emnist-byclass", 62)[36] == "a"


def test_emnist_letters_refuse_a_label_zero(tmp_path: Path) -> None:
    write_emnist(tmp_path)
    gm.write_idx(tmp_path / "emnist-letters-train-labels-idx1-ubyte.gz", np.zeros(260, dtype=np.uint8))
    with pytest.raises(gm.DataError, match="numbers its classes from 1"):
        dataset_info("emnist-letters").load(tmp_path, "train")


def test_names_and_preparation_of_known_and_unknown_datasets() -> None:
    assert class_names("fashion-mnist", 10)[9] == "Ankle boot" and preparation("fashion-mnist") == "photo"
    assert class_names("mnist", 10) == [str(i) for i in range(10)] and preparation("mnist") == "digits"
    assert class_names(None, 3) == ["0", "1", "2"] and class_names("fashion-mnist", 3) == ["0", "1", "2"]
    assert preparation(None) == "digits"
    with pytest.raises(gm.ConfigError, match="unknown dataset 'kmnist'; choose one of: mnist, fashion-mnist"):
        dataset_info("kmnist")


def test_training_records_the_dataset_its_class_names_and_preparation(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "fashion-mnist", n_train=100, n_test=20)
    model, _ = gm.train(
        data_dir=tmp_path,
        dataset="fashion-mnist",
        arch="fc",
        hidden=16,
        epochs=1,
        batch_size=20,
        threads=1,
        progress=False,
    )
    meta = model.metadata
    assert meta["dataset"]["name"] == "fashion-mnist" and meta["preparation"] == "photo"
    assert meta["class_names"][0] == "T-shirt/top" and meta["dataset"]["n"] == 100
    arrays, _ = gm.train(
        *gm.load_mnist(tmp_path / "fashion-mnist"),
        arch="fc",
        hidden=16,
        epochs=1,
        batch_size=20,
        threads=1,
        progress=False,
    )
    assert "name" not in arrays.metadata["dataset"] and arrays.metadata["class_names"] == [str(i) for i in range(10)]


def test_cli_trains_and_evaluates_emnist_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_emnist(tmp_path / "data" / "emnist-letters")
    out = tmp_path / "letters.gguf"
    assert (
        cli.train_main(
            [
                "fc",
                str(out),
                "--dataset",
                "emnist-letters",
                "--data-dir",
                str(tmp_path / "data"),
                *FAST,
                "--lr",
                "3e-3",
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    model = gm.load(out)
    assert model.n_classes == 26 and model.metadata["class_names"] == list(string.ascii_lowercase)
    assert model.metadata["dataset"]["name"] == "emnist-letters"
    capsys.readouterr()
    assert cli.eval_main([str(out), "--data-dir", str(tmp_path / "data"), "--threads", "1", "--json"]) == 0
    result = capsys.readouterr()
    assert '"n": 52' in result.out and "warning" not in result.err  # the model's own dataset, its 52 test images
    assert cli.eval_main([str(out), "--info"]) == 0
    assert "class names: 0 a, 1 b, 2 c" in capsys.readouterr().out


def test_cli_errors_for_emnist_files_that_are_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.train_main(
            ["fc", str(tmp_path / "m.gguf"), "--dataset", "emnist-digits", "--data-dir", str(tmp_path), *FAST]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "emnist-digits cannot be downloaded here: put emnist-digits-train-images-idx3-ubyte.gz" in err


def test_mnist_eval_warns_when_the_dataset_differs_from_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_synthetic(tmp_path / "digits", n_train=100, n_test=20)
    model, _ = gm.train(
        *gm.load_mnist(directory), arch="fc", hidden=16, epochs=1, batch_size=20, threads=1, progress=False
    )
    model.save(tmp_path / "m.gguf", metadata={"dataset": {"name": "fashion-mnist"}})
    assert (
        cli.eval_main([str(tmp_path / "m.gguf"), "--data-dir", str(directory), "--dataset", "mnist", "--threads", "1"])
        == 0
    )
    assert "warning: the model was trained on fashion-mnist, not on mnist" in capsys.readouterr().err


def test_fashion_is_not_read_from_a_folder_of_mnist(
    real_mnist: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(gm.ConfigError, match="holds mnist, not fashion-mnist"):
        gm.train(data_dir=real_mnist, dataset="fashion-mnist", arch="fc", epochs=1, progress=False)
    assert (
        cli.train_main(
            ["fc", str(tmp_path / "f.gguf"), "--dataset", "fashion-mnist", "--data-dir", str(real_mnist), *FAST]
        )
        == 1
    )
    assert "holds mnist, not fashion-mnist" in capsys.readouterr().err


def test_one_registry_holds_every_fact_of_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ggml_mnist import datasets

    assert download.DATASETS is datasets.DATASETS  # the old name is the registry itself, not a second table
    fashion = dataset_info("fashion-mnist")
    assert fashion.downloadable and fashion.preparation == "photo" and len(fashion.class_names) == 10
    assert fashion.files["t10k-labels-idx1-ubyte.gz"].size == 10_008 and fashion.mirrors[0].startswith("http")
    assert datasets.downloadable() == ["mnist", "fashion-mnist"]
    assert not dataset_info("emnist-letters").downloadable
    with pytest.raises(gm.ConfigError, match=r"emnist-letters cannot be downloaded here \(put its emnist-letters-\*"):
        datasets.download_info("emnist-letters")
    with pytest.raises(gm.ConfigError, match="unknown dataset 'cifar'; choose one of: mnist, fashion-mnist$"):
        datasets.download_info("cifar")
    with pytest.raises(SystemExit):  # mnist-data offers only what it can download
        cli.data_main(["verify", "--dataset", "emnist-letters", "--dir", str(tmp_path)])
    assert "invalid choice: 'emnist-letters' (choose from 'fashion-mnist', 'mnist')" in capsys.readouterr().err


def test_the_dataset_recorded_in_a_model_is_read_in_one_place() -> None:
    from ggml_mnist import labels

    assert labels.dataset_name({"dataset": {"name": "emnist-letters"}}) == "emnist-letters"
    for metadata in ({}, {"dataset": "mnist"}, {"dataset": {"name": "cifar"}}, {"dataset": {"name": 3}}):
        assert labels.dataset_name(metadata) is None
    assert labels.class_names({"dataset": {"name": "emnist-letters"}}, 26)[25] == "z"
    assert labels.preparation({"dataset": {"name": "fashion-mnist"}}) == "photo"
    assert labels.preparation({"dataset": {"name": "fashion-mnist"}, "preparation": "digits"}) == "digits"


def test_locate_finds_a_dataset_in_its_folder_or_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from ggml_mnist import datasets
    from ggml_mnist.api import _dataset_name, resolve_dataset
    from ggml_mnist.data import uncompressed_sha256

    clothes = make_synthetic(tmp_path / "clothes", n_train=40, n_test=20, seed=1)
    files = {f"{p.name}.gz": datasets.FileSpec(uncompressed_sha256(p), p.stat().st_size) for p in clothes.iterdir()}
    monkeypatch.setitem(
        datasets.DATASETS,
        "fashion-mnist",  # these synthetic files are "fashion-mnist" by checksum
        dataclasses.replace(datasets.DATASETS["fashion-mnist"], files=files, mirrors=()),
    )
    assert datasets.locate(tmp_path, "fashion-mnist", "train") is None  # neither DIR nor DIR/fashion-mnist holds it
    assert datasets.locate(clothes, "fashion-mnist", "train") == clothes
    assert datasets.identify_dataset(clothes, "test") == "fashion-mnist"
    with pytest.raises(
        gm.ConfigError,
        match=r"holds fashion-mnist, not mnist; point --data-dir at the mnist files or at "
        r"their parent folder \(downloads go to DIR/mnist\)",
    ):
        datasets.locate(clothes, "mnist", "train", what="--data-dir")
    assert (
        datasets.locate(clothes, "mnist", "train", strict=False) == clothes
    )  # gm.train(data_dir=...) without dataset=
    digits = make_synthetic(clothes / "mnist", n_train=40, n_test=20, seed=2)
    assert datasets.locate(clothes, "mnist", "train") == digits  # the parent's files are another dataset's
    images, _ = resolve_dataset(None, None, "train", clothes, "mnist")
    assert np.array_equal(images, gm.load_mnist(digits)[0])
    # the dataset a run records: the folder's own files first, else those in its mnist/ subfolder (by checksum)
    assert _dataset_name(None, None, clothes, None) == "fashion-mnist"
    make_synthetic(tmp_path / "parent" / "mnist", n_train=40, n_test=20, seed=1)  # the same bytes as clothes/
    assert _dataset_name(None, None, tmp_path / "parent", None) == "fashion-mnist"
    assert _dataset_name(str(digits), None, None, None) is None and _dataset_name(None, None, tmp_path, None) is None
