"""gm.Ensemble: averaged probabilities, refused members, and several models in mnist-eval and mnist-predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist.cli import eval_main
from ggml_mnist.cli.predict import predict_main
from support.handwriting import draw_digits
from support.helpers import THREADS
from support.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=50)


@pytest.fixture(scope="module")
def members(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three fc models (hidden 16) trained with different seeds."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (1, 2, 3):
        model, _ = gm.train(
            data,
            arch="fc",
            hidden=16,
            epochs=2,
            batch_size=20,
            threads=THREADS,
            progress=False,
            augment="none",
            seed=seed,
        )
        paths.append(folder / f"fc-{seed}.gguf")
        model.save(paths[-1])
    return paths


def test_ensemble_averages_the_members_probabilities(members: list[Path], data: Path) -> None:
    images = gm.read_idx(data / "t10k-images-idx3-ubyte")
    labels = gm.read_idx(data / "t10k-labels-idx1-ubyte")
    models = [gm.load(p, threads=THREADS) for p in members]
    ensemble = gm.Ensemble(models)
    mean = np.mean([m.predict_proba(images) for m in models], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(images), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ensemble.predict(images), mean.argmax(axis=1))
    result = ensemble.evaluate(images, labels)
    assert result.n == 50 and result.accuracy == pytest.approx(float((mean.argmax(axis=1) == labels).mean()))
    np.testing.assert_allclose(result.probabilities, mean, rtol=1e-6, atol=1e-7)
    assert result.confusion_matrix().sum() == 50
    assert len(ensemble) == 3 and ensemble.n_classes == 10 and ensemble.image_size == (28, 28)
    assert "ensemble of 3" in ensemble.architecture


def test_ensemble_of_paths_reads_the_test_split_of_a_folder(members: list[Path], data: Path) -> None:
    by_path = gm.Ensemble([str(p) for p in members], threads=THREADS).evaluate(data_dir=data)
    by_model = gm.Ensemble([gm.load(p, threads=THREADS) for p in members]).evaluate(data)
    assert by_path.n == 50 and by_path.accuracy == by_model.accuracy


def test_ensemble_refuses_other_classes_and_image_sizes_naming_the_file(members: list[Path], tmp_path: Path) -> None:
    four = tmp_path / "four-classes.gguf"
    gm.Model.create("fc", n_classes=4, hidden=16, threads=THREADS).save(four)
    with pytest.raises(gm.ConfigError, match=r"four-classes\.gguf.*number of classes 4.*fc-1\.gguf.*10"):
        gm.Ensemble([members[0], four], threads=THREADS)
    small = tmp_path / "small.gguf"
    gm.Model.create("fc", image_size=(14, 14), hidden=16, threads=THREADS).save(small)
    with pytest.raises(gm.ConfigError, match=r"small\.gguf.*image size 14x14.*28x28"):
        gm.Ensemble([members[0], small], threads=THREADS)
    letters = tmp_path / "fashion.gguf"
    model = gm.load(members[0], threads=THREADS)
    model.save(letters, metadata={"class_names": [f"c{i}" for i in range(10)]})
    with pytest.raises(gm.ConfigError, match=r"fashion\.gguf.*class names"):
        gm.Ensemble([members[0], letters], threads=THREADS)


@pytest.mark.parametrize(
    "members_arg, message", [([], "at least one model"), ("a.gguf", "list of Models"), ([3], "Models or GGUF paths")]
)
def test_ensemble_refuses_what_is_not_a_list_of_models(members_arg: object, message: str) -> None:
    with pytest.raises(gm.ConfigError, match=message):
        gm.Ensemble(members_arg)  # type: ignore[arg-type]


def test_mnist_eval_evaluates_several_models_as_an_ensemble(
    members: list[Path], data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(data / "t10k-images-idx3-ubyte"), str(data / "t10k-labels-idx1-ubyte")]
    expected = gm.Ensemble([str(p) for p in members], threads=THREADS).evaluate(*files).accuracy
    assert eval_main([*map(str, members), *files, "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == [str(p) for p in members] and out["accuracy"] == pytest.approx(expected)
    assert "ensemble of 3" in out["architecture"]
    assert eval_main([*map(str, members[:2]), "--data-dir", str(data), "--threads", "1"]) == 0
    assert "accuracy=" in capsys.readouterr().out
    assert eval_main([str(members[0]), *files, "--threads", "1", "--json"]) == 0  # one model as before
    assert json.loads(capsys.readouterr().out)["model"] == str(members[0])


def test_mnist_eval_refuses_a_mixed_ensemble_in_one_line(
    members: list[Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    four = tmp_path / "four.gguf"
    gm.Model.create("fc", n_classes=4, hidden=16, threads=THREADS).save(four)
    assert eval_main([str(members[0]), str(four), "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "four.gguf" in err and "number of classes" in err
    assert eval_main([str(members[0]), str(members[1]), "--info"]) == 1
    assert "--info describes one model" in capsys.readouterr().err


def test_mnist_predict_with_several_models(
    members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "seven.png"
    draw_digits([7]).save(picture)
    assert predict_main([*map(str, members), str(picture), "--json", "--threads", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = gm.Ensemble([str(p) for p in members], threads=THREADS).predict_image(picture)
    assert got["label"] == expected.label and got["probability"] == pytest.approx(expected.probability)
    assert predict_main([*map(str, members), "--threads", "1"]) == 1
    assert "no picture to read after the 3 models" in capsys.readouterr().err
