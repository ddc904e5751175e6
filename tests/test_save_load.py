"""Model.save / Model.load: bit-exact round trips, metadata, architecture names and atomic writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import ConfigError, DataFileNotFoundError, Model, ModelIOError, load, train
from support.helpers import (
    THREADS,
    read_gguf,
    small_options,
    spread_weights,
    tmp_leftovers,
)
from support.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    from ggml_mnist import load_mnist

    return load_mnist(make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=20), "train")


@pytest.fixture(scope="module")
def trained(data: tuple) -> dict[str, Model]:
    x, y = data
    return {arch: train(x, y, **small_options(arch, val_split=0.1))[0] for arch in ("fc", "cnn")}


def probe_images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_round_trip_is_bit_exact(arch: str, trained: dict, tmp_path: Path) -> None:
    model = trained[arch]
    path = tmp_path / "model.gguf"
    model.save(path)
    loaded = load(path, threads=THREADS)
    assert (loaded.arch, loaded.n_classes, loaded.image_size) == (model.arch, model.n_classes, model.image_size)
    assert loaded.tensor_shapes() == model.tensor_shapes()
    original, restored = model.get_weights(), loaded.get_weights()
    assert all(np.array_equal(original[k], restored[k]) for k in original)
    assert np.array_equal(loaded.predict_proba(probe_images()), model.predict_proba(probe_images()))
    assert loaded.architecture == model.architecture == "ggml-mnist"


@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_training_metadata_survives(arch: str, trained: dict, tmp_path: Path) -> None:
    model = trained[arch]
    path = tmp_path / "model.gguf"
    model.save(path, metadata={"note": "hello", "class_names": [str(i) for i in range(10)]})
    loaded = Model.load(path, threads=THREADS)
    expected = {**model.metadata, "note": "hello", "class_names": [str(i) for i in range(10)]}
    assert loaded.metadata == expected
    for key in ("config", "history", "seed", "dataset"):
        assert loaded.metadata[key] == model.metadata[key], key
    assert loaded.metadata["config"]["arch"] == arch
    assert len(loaded.metadata["history"]) == 2 and loaded.metadata["history"][0]["n_val"] == 20
    assert loaded.metadata["dataset"]["n"] == 200

    fields, _ = read_gguf(path)
    assert fields["general.architecture"] == "ggml-mnist"
    for key in ("config", "history", "seed", "dataset", "note", "class_names"):
        assert isinstance(fields[f"ggml_mnist.{key}"], str), key
    assert fields["ggml_mnist.seed"] == "42" and fields["ggml_mnist.note"] == '"hello"'
    assert fields["ggml_mnist.n_classes"] == 10 and fields["ggml_mnist.image_height"] == 28


def test_save_load_save_is_byte_identical(trained: dict, tmp_path: Path) -> None:
    trained["cnn"].save(tmp_path / "a.gguf")
    Model.load(tmp_path / "a.gguf", threads=THREADS).save(tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


@pytest.mark.parametrize(
    "arch, kwargs, shapes",
    [
        ("fc", dict(hidden=64, n_classes=5), {"fc1.weight": (64, 784), "fc1.bias": (64,), "fc2.weight": (5, 64)}),
        ("fc", dict(hidden=16, image_size=(20, 24)), {"fc1.weight": (16, 480)}),
        (
            "cnn",
            dict(conv_channels=(4, 6), n_classes=5),
            {
                "conv1.kernel": (4, 1, 3, 3),
                "conv2.kernel": (6, 4, 3, 3),
                "conv2.bias": (6, 1, 1),
                "dense.weight": (5, 294),
            },
        ),
        ("cnn", dict(conv_channels=(2, 3), image_size=(30, 26)), {"dense.weight": (10, 126)}),
    ],
)
def test_non_default_shapes_reload(arch: str, kwargs: dict, shapes: dict, tmp_path: Path) -> None:
    model = Model.create(arch, seed=4, threads=THREADS, **kwargs)
    spread_weights(model, scale=2.0)
    model.save(tmp_path / "m.gguf")
    loaded = Model.load(tmp_path / "m.gguf", threads=THREADS)
    assert loaded.architecture == "ggml-mnist"
    assert (loaded.n_classes, loaded.image_size) == (model.n_classes, model.image_size)
    assert loaded.layers == model.layers
    for name, shape in shapes.items():
        assert loaded.tensor_shapes()[name] == shape, name
    images = np.random.default_rng(0).integers(0, 256, size=(5, *model.image_size), dtype=np.uint8)
    assert np.array_equal(loaded.predict_proba(images), model.predict_proba(images))
    fields, _ = read_gguf(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "ggml-mnist"
    assert fields["ggml_mnist.n_classes"] == model.n_classes
    assert (fields["ggml_mnist.image_height"], fields["ggml_mnist.image_width"]) == model.image_size


# ---- metadata arguments ------------------------------------------------------------------------------
def test_save_rejects_bad_metadata_and_writes_nothing(tmp_path: Path) -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    path = tmp_path / "m.gguf"
    with pytest.raises(ConfigError, match=r"metadata key 'Bad Key' must be 1-200 chars of \[a-z0-9_.\]"):
        model.save(path, metadata={"Bad Key": 1})
    with pytest.raises(ConfigError, match="contains a NUL byte"):
        model.save(path, metadata={"no\0te": "x"})
    assert not path.exists() and tmp_leftovers(tmp_path) == []
    assert model.metadata == {}  # a failed save does not change the model's metadata
    model.save(path, metadata={"note": "a\0b \u00e9"})  # values are JSON, so any text survives
    assert Model.load(path, threads=THREADS).metadata == {"note": "a\0b \u00e9"}


# ---- atomic writes -------------------------------------------------------------------------------------
@pytest.fixture
def existing(tmp_path: Path) -> tuple[Model, Path, bytes]:
    """A model and a file it was saved to, with that file's bytes."""
    model = Model.create("fc", hidden=8, threads=THREADS)
    path = tmp_path / "model.gguf"
    model.save(path)
    return model, path, path.read_bytes()


def test_overwrite_replaces_the_file_and_keeps_its_mode(existing: tuple, tmp_path: Path) -> None:
    model, path, before = existing
    os.chmod(path, 0o640)
    spread_weights(model, scale=2.0)
    model.save(path)
    assert path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert np.array_equal(
        Model.load(path, threads=THREADS).get_weights()["fc2.weight"], model.get_weights()["fc2.weight"]
    )
    assert tmp_leftovers(tmp_path) == []


def test_new_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        Model.create("fc", hidden=4, threads=THREADS).save(tmp_path / "m.gguf")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.gguf").stat().st_mode) == 0o640


@pytest.mark.parametrize(
    "target, match",
    [
        ("missing-dir/model.gguf", r"directory '.*missing-dir' does not exist; create it first"),
        ("model.gguf/inner.gguf", r"directory '.*model.gguf' does not exist"),
        ("subdir", r"is a directory; give a file name such as model.gguf"),
    ],
)
def test_failed_saves_raise_and_leave_files_alone(existing: tuple, tmp_path: Path, target: str, match: str) -> None:
    model, path, before = existing
    (tmp_path / "subdir").mkdir()
    with pytest.raises(ModelIOError, match=match) as info:
        model.save(tmp_path / target)
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == before
    assert tmp_leftovers(tmp_path) == [] and not (tmp_path / "missing-dir").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "subdir"]


def test_a_write_error_keeps_the_old_file(existing: tuple, tmp_path: Path) -> None:
    """A save that fails half-way (here: the file size limit, like a full disk) leaves the old file."""
    _, path, before = existing
    script = textwrap.dedent(f"""
        import resource, signal
        from ggml_mnist import Model, ModelIOError
        model = Model.create("fc", hidden=64, threads=1)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
        try:
            model.save({str(path)!r})
        except ModelIOError as e:
            print("ModelIOError:", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"ModelIOError: model_save: writing '{path}' failed: File too large (disk full?)")
    assert path.read_bytes() == before
    assert tmp_leftovers(tmp_path) == []


# ---- loading errors that are not about the format --------------------------------------------------------
def test_load_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"model file '.*nothing.gguf' does not exist") as info:
        Model.load(tmp_path / "nothing.gguf")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelIOError, match=r"model_load: '.*' is not a regular file") as info:
        Model.load(tmp_path, threads=THREADS)
    assert isinstance(info.value, OSError)


def test_save_and_load_with_a_bare_file_name_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = Model.create("fc", hidden=8, threads=1, seed=3)
    for name in ("m.gguf", "x", "a-much-longer-model-file-name.gguf"):
        model.save(name)
        assert np.array_equal(
            Model.load(name, threads=1).get_weights()["fc1.weight"], model.get_weights()["fc1.weight"]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-much-longer-model-file-name.gguf", "m.gguf", "x"]
