"""Messages that name the problem and the fix: argument mix-ups, values as given, limits the machine sets."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import cli
from ggml_mnist.cli.quantize import quantize_main
from support.synthetic import SPLIT_FILES, make_synthetic

FAST = ["--hidden", "16", "--batch-size", "20", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=100, n_test=20, gz=True)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.gguf"
    gm.Model.create("fc", hidden=8, threads=1).save(path)
    return path


def test_a_mistyped_option_gets_one_line_and_the_closest_option(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.train_main(["fc", "m.gguf", "--epcohs", "3"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert "unknown option --epcohs (did you mean --epochs?)" in err and "mnist-train --help" in err
    with pytest.raises(SystemExit):
        cli.data_main(["download", "--datset", "mnist"])
    assert "did you mean --dataset?" in capsys.readouterr().err


def test_swapped_eval_arguments_say_which_comes_first(data_dir: Path, model_file: Path, capsys) -> None:
    images = data_dir / f"{SPLIT_FILES['test'][0]}.gz"
    assert cli.eval_main([str(images), str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "is a gzip file, not a GGUF model; the first argument is the model: mnist-eval MODEL.gguf" in err


def test_predict_with_a_picture_points_to_predict_image(tmp_path: Path) -> None:
    from PIL import Image

    model = gm.Model.create("fc", hidden=8, threads=1)
    for picture in ("digit.png", Image.new("L", (60, 40)), np.zeros((480, 640, 3), np.uint8), np.zeros((90, 90))):
        with pytest.raises(gm.DataError, match=r"model.predict_image\(picture\)"):
            model.predict(picture)
    assert model.predict(np.zeros((3, 784), np.uint8)).shape == (3,)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", 1e-50, "lr 1e-50 is 0 as the 32-bit float"),
        ("beta1", 0.9999999999, "beta1 0.9999999999 is 1 as the 32-bit float"),
        ("beta2", 0.99999999999, "beta2 0.99999999999 is 1 as the 32-bit float"),
    ],
)
def test_values_are_reported_as_given(field: str, value: float, message: str) -> None:
    with pytest.raises(gm.ConfigError, match=message):
        gm.TrainConfig.defaults("fc").replace(**{field: value}).validate()


def test_more_threads_than_the_process_can_start_is_an_error_not_an_exit() -> None:
    code = textwrap.dedent("""
        import ggml_mnist as gm
        try:
            gm.Model.create("fc", hidden=8, threads=1024)
        except gm.ConfigError as exc:
            print("refused:", exc)
        print("alive")
    """)
    limit = 3 << 30  # 3 GB of address space: 1024 threads of 8 MB stacks do not fit

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, 8 << 20))

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=cap)
    assert out.returncode == 0, out.stderr
    assert "refused: model: this process cannot start 1024 threads" in out.stdout and "use threads=0" in out.stdout
    assert out.stdout.strip().endswith("alive") and "Thread creation failed" not in out.stderr


def test_an_ignored_sigint_stays_ignored(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from ggml_mnist import cli
        def on_epoch_line(*a): pass
        import ggml_mnist.api as api
        real = api.train
        def train(*args, **kwargs):
            kwargs["on_epoch"] = lambda s, m: os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        api.train = train
        sys.exit(cli.train_main(["fc", {str(out)!r}, "--data-dir", {str(data_dir)!r}, "--epochs", "3",
                                 "--hidden", "8", "--batch-size", "20", "--threads", "1", "--quiet"]))
    """)
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert run.returncode == 0, run.stderr
    assert len(gm.load(out).metadata["history"]) == 3 and "interrupted" not in run.stderr


def test_python_early_stopping_says_so(capsys) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(100, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, size=100)
    gm.train(
        x,
        y,
        arch="fc",
        hidden=8,
        epochs=30,
        batch_size=20,
        threads=1,
        lr=0.05,
        val_split=0.2,
        early_stopping=1,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "stopped early after epoch" in err and "has not improved for 1 epochs" in err
    assert "the model holds the weights of epoch" in err


def test_more_classes_than_the_start_model_names_the_cli_fix(model_file: Path) -> None:
    x = np.zeros((40, 28, 28), np.uint8)
    y = np.arange(40) % 12
    with pytest.raises(gm.DataError, match="model to start from has 10 outputs; train a new model") as info:
        gm.train(x, y, init=model_file, epochs=1, batch_size=20, threads=1, progress=False)
    assert "n_classes=" not in str(info.value)


def test_quantize_reports_only_what_the_table_does_not(model_file: Path, tmp_path: Path, capsys) -> None:
    assert quantize_main([str(model_file), str(tmp_path / "q.gguf"), "--type", "q8_0", "--pad"]) == 0
    captured = capsys.readouterr()
    assert "biases stay f32" in captured.out and captured.err == ""


def test_info_escapes_class_names_from_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.gguf"
    gm.Model.create("fc", hidden=8, threads=1).save(
        path, metadata={"class_names": [f"c{i}" for i in range(9)] + ["\x1b[2J\x1b]0;owned\x07"]}
    )
    assert cli.eval_main([str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "9 \\x1b[2J\\x1b]0;owned\\x07" in out


def test_explicit_fashion_files_are_recognised_by_their_labels(tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    from ggml_mnist import datasets
    from ggml_mnist.data import uncompressed_sha256

    source = make_synthetic(tmp_path / "clothes", n_train=100, n_test=20, gz=True)
    files = {p.name: datasets.FileSpec(uncompressed_sha256(p), 28 * 28 * 100 + 16) for p in source.iterdir()}
    monkeypatch.setitem(
        datasets.DATASETS,
        "fashion-mnist",
        dataclasses.replace(datasets.DATASETS["fashion-mnist"], files=files, mirrors=()),
    )
    out = tmp_path / "m.gguf"
    images, labels = (str(source / f"{name}.gz") for name in SPLIT_FILES["train"])
    assert cli.train_main(["fc", str(out), images, labels, "--epochs", "1", *FAST]) == 0
    meta = gm.load(out).metadata
    assert meta["dataset"]["name"] == "fashion-mnist" and meta["class_names"][9] == "Ankle boot"
    assert meta["config"]["augment"] == "clothes" and meta["preparation"] == "photo"  # the digits' recipe is "light"
