"""mnist-train and mnist-eval: help text, positional forms, --json, --info and one-line user errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import Model, TrainConfig, cli, evaluate, load, load_mnist, read_idx, train
from ggml_mnist.cli.common import dataset_dir
from support.helpers import conv_channels_of, hidden_of
from support.synthetic import SPLIT_FILES, make_synthetic

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "20", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=50)


@pytest.fixture(scope="module")
def files(data_dir: Path) -> dict[str, str]:
    (train_images, train_labels), (test_images, test_labels) = (
        [str(data_dir / name) for name in SPLIT_FILES[split]] for split in ("train", "test")
    )
    return dict(train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory, files: dict) -> str:
    path = str(tmp_path_factory.mktemp("model") / "fc.gguf")
    assert (
        cli.train_main(
            [
                "fc",
                path,
                files["train_images"],
                files["train_labels"],
                "--quiet",
                "--epochs",
                "3",
                "--hidden",
                "16",
                "--batch-size",
                "20",
                "--threads",
                "1",
                "--lr",
                "3e-3",
            ]
        )
        == 0
    )
    return path


pytestmark = pytest.mark.usefixtures("no_downloads")  # the network is never needed (conftest.py)


def console_script(name: str) -> str:
    """Path of an installed console script of this environment."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"console script {name} is not installed")
    return path


def one_error_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


# ---- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("parser_factory, prog", [(cli.train_parser, "mnist-train"), (cli.eval_parser, "mnist-eval")])
def test_help_mentions_every_option_with_its_default(
    parser_factory, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = parser_factory()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: {prog} ")
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            assert option in text, option
        assert action.help and " ".join(action.help.split()) in text, option
        if action.nargs != 0:  # options taking a value name their default; flags are off by default
            assert "default" in action.help, option


def test_train_help_shows_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    fc, cnn = TrainConfig.defaults("fc"), TrainConfig.defaults("cnn")
    assert re.search(rf"--epochs EPOCHS [^;]*; default: .*{fc.epochs} \((\S+ )*fc[ )]", text)
    assert re.search(rf"--epochs EPOCHS [^;]*; default: .*{cnn.epochs} \((\S+ )*cnn[ )]", text)
    assert re.search(rf"peak learning rate; default: .*{fc.lr} \(fc[ )].*{cnn.lr} \((\S+ )*cnn[ )]", text)
    assert f"default: {fc.batch_size}" in text and "first hidden dense layer (default: the preset's)" in text
    assert "convolutions, in order (default: the preset's)" in text
    assert f"default: {fc.seed}" in text and f"AdamW epsilon; default: {fc.eps}" in text
    for name in ("fc", "cnn", "mlp800", "minerva-mlp", "minerva-cnn", "lenet5", "letters-cnn", "best"):
        assert name in text


def test_console_scripts_are_installed() -> None:
    for name in ("mnist-train", "mnist-eval"):
        out = subprocess.run([console_script(name), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith(f"usage: {name} "), out.stderr


# ---- mnist-train ---------------------------------------------------------------------------------
def test_train_positional_form_with_device(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.gguf"
    assert cli.train_main(["mnist-fc", str(out), files["train_images"], files["train_labels"], "cpu", *FAST]) == 0
    stdout, err = capsys.readouterr()
    assert stdout == ""
    assert err.splitlines()[0].startswith("epoch 1/1: train loss ")
    assert (
        err.splitlines()[-1] == f"mnist-train: trained ggml-mnist on CPU for 1 epochs in {_seconds(err)}s; saved {out}"
    )
    model = load(out, threads=1)
    assert (model.arch, hidden_of(model), model.device) == ("custom", 16, "CPU")
    assert model.metadata["config"]["device"] == "cpu" and model.metadata["config"]["batch_size"] == 20
    assert model.metadata["dataset"]["source"] == files["train_images"]


def _seconds(err: str) -> str:
    return err.splitlines()[-1].split(" epochs in ")[1].split("s;")[0]


def test_train_from_a_data_directory(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn.gguf"
    args = ["cnn", str(out), "--data-dir", str(data_dir), "--conv-channels", "2", "3", "--quiet", *FAST[:2], *FAST[4:]]
    assert cli.train_main(args) == 0
    assert capsys.readouterr() == ("", "")
    model = load(out, threads=1)
    assert conv_channels_of(model) == (2, 3) and model.architecture == "ggml-mnist"
    assert model.metadata["dataset"]["n"] == 200


def test_train_json_lines(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.gguf"
    args = [
        "fc",
        str(out),
        files["train_images"],
        files["train_labels"],
        "--json",
        "--val-split",
        "0.1",
        *FAST[2:],
        "--epochs",
        "2",
    ]
    assert cli.train_main(args) == 0
    stdout, err = capsys.readouterr()
    assert err == ""  # no progress bar with --json
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["event"] for e in events] == ["epoch", "epoch", "done"]
    assert [e["epoch"] for e in events[:2]] == [1, 2]
    assert events[0]["n_train"] == 180 and events[0]["n_val"] == 20 and 0 <= events[1]["val_acc"] <= 1
    done = events[-1]
    assert done["model"] == str(out) and done["epochs"] == 2 and done["device"] == "CPU"
    assert done["architecture"] == "ggml-mnist"
    assert done["seconds"] == pytest.approx(events[0]["seconds"] + events[1]["seconds"])
    assert load(out, threads=1).metadata["history"][1]["epoch"] == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lr", "-1"], r"lr must be a finite number > 0, got -1.0"),
        (["--lr", "nan"], r"lr must be a finite number > 0, got nan"),
        (["--epochs", "0"], r"epochs must be a whole number in \[1, 1000000\], got 0"),
        (["--batch-size", "0"], r"batch_size must be in \[1, 1000000\], got 0"),
        (["--physical-batch-size", "7"], r"physical_batch_size 7 must divide batch_size 20"),
        (["--val-split", "1"], r"val_split must be in \[0, 1\), got 1.0"),
        (["--weight-decay", "2"], r"weight_decay must be in \[0, 1\], got 2.0"),
        (["--threads", "-1"], r"threads must be in \[0, 1024\]"),
        (["--device", "CUDA7"], r"unknown device 'CUDA7'; available: auto, cpu, .*CPU"),
        (["--device", "cpu", "--batch-size", "500"], r"200 training images are fewer than one batch of 500"),
    ],
)
def test_train_user_errors_are_one_line(
    extra: list, match: str, files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.gguf"
    args = ["fc", str(out), files["train_images"], files["train_labels"], *FAST, *extra]
    assert cli.train_main(args) == 1
    stdout, err = capsys.readouterr()
    assert stdout == ""
    line = one_error_line(err, "mnist-train")
    assert re.search(match, line), line
    assert not out.exists()


def test_train_file_and_argument_errors(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m.gguf")
    cases = [
        (["fc", out, str(tmp_path / "missing-images"), files["train_labels"]], "missing-images' does not exist"),
        (["resnet", out, files["train_images"], files["train_labels"]], "unknown network 'resnet'"),
        (["fc", out, files["train_labels"], files["train_labels"]], "images must have shape [N, H, W]"),
        (
            ["fc", out, files["train_images"], files["train_labels"], "cpu", "--device", "CUDA0"],
            "device given twice: 'cpu' and --device 'CUDA0'",
        ),
        (["fc", out, "a", "b", "c", "d"], "expected [IMAGES LABELS] [DEVICE], got 4 extra arguments"),
        (
            ["fc", str(tmp_path / "no-dir" / "m.gguf"), files["train_images"], files["train_labels"]],
            "directory '" + str(tmp_path / "no-dir") + "' does not exist; create it first",
        ),
        (["fc", str(tmp_path), files["train_images"], files["train_labels"]], "is a directory; give a file name"),
    ]
    for args, message in cases:
        assert cli.train_main([*args, *FAST]) == 1, args
        line = one_error_line(capsys.readouterr().err, "mnist-train")
        assert message in line, line
    assert sorted(os.listdir(tmp_path)) == []


def test_bad_arch_fails_before_any_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No data files and an empty --data-dir would mean a download; a bad option must stop it first."""
    assert cli.train_main(["resnet", str(tmp_path / "m.gguf"), "--data-dir", str(tmp_path)]) == 1
    assert "unknown network 'resnet'" in one_error_line(capsys.readouterr().err, "mnist-train")
    assert cli.train_main(["fc", str(tmp_path / "m.gguf"), "--data-dir", str(tmp_path), "--lr", "0"]) == 1
    assert "lr must be a finite number > 0" in one_error_line(capsys.readouterr().err, "mnist-train")


def test_unparsable_values_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.train_main(["fc", str(tmp_path / "m.gguf"), "--lr", "fast"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "mnist-train: error: argument --lr: invalid float value: 'fast'"
    assert "Traceback" not in err


# ---- mnist-eval ----------------------------------------------------------------------------------
def test_eval_positional_form(trained_model: str, files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.eval_main([trained_model, files["test_images"], files["test_labels"], "--threads", "1"]) == 0
    stdout, err = capsys.readouterr()
    assert err == ""
    lines = stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("mnist-eval: ggml-mnist on CPU: evaluation on 50 images took ")
    images, labels = load_mnist(Path(files["test_images"]).parent, "test")
    expected = evaluate(load(trained_model, threads=1), images, labels)
    assert expected.accuracy >= 0.9
    assert lines[1] == f"mnist-eval: loss={expected.loss:.6f}+-{expected.loss_unc:.6f}"
    assert lines[2] == f"mnist-eval: accuracy={100 * expected.accuracy:.2f}+-{100 * expected.accuracy_unc:.2f}%"


def test_eval_with_device_and_data_dir(trained_model: str, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.eval_main([trained_model, "cpu", "--data-dir", str(data_dir), "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 50 and result["device"] == "CPU" and result["model"] == trained_model
    assert result["architecture"] == "ggml-mnist" and 0.9 <= result["accuracy"] <= 1
    assert set(result) >= {"loss", "loss_unc", "accuracy_unc", "seconds", "images_per_second", "us_per_image"}


def test_eval_info(trained_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.eval_main([trained_model, "--info", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("architecture: ggml-mnist (custom)  classes: 10  image: 28x28\n")
    assert "  fc1.weight     [16, 784]\n" in text and "  fc2.bias       [10]\n" in text
    assert "  history: epoch 3: train loss " in text and "  seed: 42\n" in text
    assert '"hidden": 16' in text and '"lr": 0.003' in text

    assert cli.eval_main([trained_model, "--info", "--json", "--threads", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "ggml-mnist" and info["tensors"]["fc1.weight"] == [16, 784]
    assert info["metadata"]["config"]["hidden"] == 16 and len(info["metadata"]["history"]) == 3


def test_eval_info_on_a_foreign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Model.create("cnn", threads=1).save(tmp_path / "plain.gguf")
    assert cli.eval_main([str(tmp_path / "plain.gguf"), "--info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("architecture: mnist-cnn (cnn)  classes: 10  image: 28x28\n")
    assert re.search(r"conv1 \(conv2d 3x3 pad 1\)\s+\(28, 28, 8\)\s+80\n", text) and "Total params: 9,098" in text
    assert "  dense.weight   [10, 784]\n" in text


def test_eval_user_errors_are_one_line(
    trained_model: str, files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"hello")
    wide = tmp_path / "wide-labels"
    from ggml_mnist import write_idx

    write_idx(wide, np.full(50, 11, np.uint8))
    cases = [
        ([str(tmp_path / "absent.gguf"), files["test_images"], files["test_labels"]], "absent.gguf' does not exist"),
        ([str(not_gguf), files["test_images"], files["test_labels"]], "is not a valid GGUF file"),
        ([trained_model, files["test_images"], str(wide)], "label 11 at index 0 is outside [0, 10)"),
        (
            [trained_model, files["test_images"], files["test_labels"], "--batch-size", "0"],
            "batch_size must be a whole number >= 1, got 0",
        ),
        ([trained_model, files["test_images"], files["test_labels"], "CUDA7"], "unknown device 'CUDA7'"),
        ([trained_model, "a", "b", "c", "d"], "expected [IMAGES LABELS] [DEVICE], got 4 extra arguments"),
        ([trained_model, files["test_images"], str(tmp_path / "nolabels")], "nolabels' does not exist"),
    ]
    for args, message in cases:
        assert cli.eval_main([*args, "--threads", "1"]) == 1, args
        stdout, err = capsys.readouterr()
        assert stdout == ""
        assert message in one_error_line(err, "mnist-eval"), err


# ---- the installed scripts, end to end ----------------------------------------------------------------
def test_console_scripts_end_to_end(files: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    train = subprocess.run(
        [console_script("mnist-train"), "fc", str(out), files["train_images"], files["train_labels"], "--json", *FAST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout.splitlines()[-1])["event"] == "done"
    ok = subprocess.run(
        [console_script("mnist-eval"), str(out), files["test_images"], files["test_labels"], "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert [line.split("=")[0] for line in ok.stdout.splitlines()[1:]] == ["mnist-eval: loss", "mnist-eval: accuracy"]
    bad = subprocess.run(
        [
            console_script("mnist-train"),
            "resnet",
            str(tmp_path / "x.gguf"),
            files["train_images"],
            files["train_labels"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == (
        "mnist-train: error: unknown network 'resnet'; use a preset (fc, cnn, fast, mlp800, minerva-mlp, minerva-cnn, lenet5, "
        "letters-cnn, best, or ggml's mnist-fc and mnist-cnn) or a list of layers\n"
    )


# ---- the usual mix-ups ----------------------------------------------------------------------------
def _error(argv: list[str], capsys: pytest.CaptureFixture[str], main=cli.train_main) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_swapped_images_and_labels_are_named(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["fc", str(tmp_path / "m.gguf"), files["train_labels"], files["train_images"], *FAST], capsys)
    assert "holds labels and" in err and "the order is IMAGES LABELS" in err
    err = _error([str(tmp_path / "m.gguf"), files["test_labels"], files["test_images"]], capsys, cli.eval_main)
    assert "the order is IMAGES LABELS" in err


def test_a_lone_data_file_or_an_image_file_is_not_a_device(
    files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(["fc", str(tmp_path / "m.gguf"), files["train_images"], *FAST], capsys)
    assert "is a file but its partner is missing: give IMAGES and LABELS" in err
    (tmp_path / "digit.png").write_bytes(b"\x89PNG")
    err = _error(["fc", str(tmp_path / "m.gguf"), str(tmp_path / "digit.png"), *FAST], capsys)
    assert "looks like an image file; mnist-train takes IDX files" in err


def test_a_device_after_the_options_is_understood(files: dict, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    assert cli.train_main(["fc", str(out), files["train_images"], files["train_labels"], *FAST, "--quiet", "cpu"]) == 0
    assert load(out, threads=1).metadata["config"]["device"] == "cpu"


def test_a_missing_output_name_is_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert "give OUT.gguf, the file to save the trained model to" in _error(["cnn", *FAST], capsys)


def test_an_unwritable_output_folder_fails_before_training(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["fc", "/proc/model.gguf", files["train_images"], files["train_labels"], *FAST], capsys)
    assert "cannot write OUT '/proc/model.gguf': directory '/proc' is not writable" in err and "epoch" not in err


def test_a_mistyped_data_dir_is_not_downloaded_into(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "dta"
    err = _error(["fc", str(tmp_path / "m.gguf"), "--data-dir", str(typo), *FAST], capsys)
    assert f"--data-dir '{typo}' does not exist; check the path, or add --download" in err
    assert not typo.exists()


def test_data_dir_may_be_the_parent_in_the_cli_and_the_api(data_dir: Path, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "mnist").symlink_to(data_dir)
    assert cli.train_main(["fc", str(tmp_path / "m.gguf"), "--data-dir", str(parent), "--quiet", *FAST]) == 0
    model, history = train(data_dir=parent, arch="fc", hidden=8, epochs=1, batch_size=20, threads=1, progress=False)
    assert history[0].n_train == 200
    assert evaluate(model, data_dir=parent).n == 50


def test_another_datasets_folder_is_refused(
    real_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(
        ["fc", str(tmp_path / "m.gguf"), "--dataset", "fashion-mnist", "--data-dir", str(real_mnist), *FAST], capsys
    )
    assert f"{real_mnist} holds mnist, not fashion-mnist; point --data-dir at the fashion-mnist files" in err


@pytest.mark.parametrize(
    "main, prog", [(cli.train_main, "mnist-train"), (cli.eval_main, "mnist-eval"), (cli.data_main, "mnist-data")]
)
def test_every_command_has_a_version(main, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(rf"{prog} \d+\.\d+\.\d+ \(ggml \d+\.\d+\.\d+\)\n", capsys.readouterr().out)


def test_verify_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.data_main(["verify", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"mnist in {tmp_path / 'mnist'}:\nMISSING train-images-idx3-ubyte.gz\n")


def test_the_dataset_folder_is_found_beside_another_dataset(real_mnist: Path, tmp_path: Path) -> None:
    """MNIST's files directly in DATA_DIR and Fashion-MNIST in DATA_DIR/fashion-mnist: --dataset picks the right one."""
    fashion = real_mnist.parent / "fashion-mnist"
    if not (fashion / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST not found beside {real_mnist}: run `mnist-data download --dataset fashion-mnist "
            f"--dir {real_mnist.parent}` to run this test"
        )
    root = tmp_path / "data"
    root.mkdir()
    for f in real_mnist.glob("*-ubyte.gz"):
        (root / f.name).symlink_to(f)
    (root / "fashion-mnist").symlink_to(fashion)
    assert dataset_dir(str(root), "fashion-mnist", "test", False) == root / "fashion-mnist"
    assert dataset_dir(str(root), "mnist", "test", False) == root


def test_output_piped_into_head_stops_quietly(tmp_path: Path) -> None:
    Model.create("fc", hidden=4, threads=1).save(
        tmp_path / "m.gguf", metadata={"note": "x" * 300_000}
    )  # > a pipe's buffer
    code = "import sys; from ggml_mnist.cli import eval_main; sys.exit(eval_main(sys.argv[1:]))"
    out = subprocess.run(
        f"{sys.executable} -c '{code}' {tmp_path / 'm.gguf'} --info | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.startswith("architecture: ") and out.stderr == ""


def test_evaluating_on_the_training_images_warns(
    trained_model: str, files: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model trained on a set and scored on that very set (the test files given to mnist-train by mistake) says
    so; the test split, a part of the training set or other labels do not warn."""
    assert cli.eval_main([trained_model, files["train_images"], files["train_labels"]]) == 0
    err = capsys.readouterr().err
    assert "mnist-eval: warning: these 200 images are the set the model was trained on" in err
    assert files["train_images"] in err and "held-out test split" in err
    assert cli.eval_main([trained_model, files["test_images"], files["test_labels"]]) == 0
    assert "warning" not in capsys.readouterr().err
    x, y = read_idx(files["train_images"]), read_idx(files["train_labels"])
    model = load(trained_model)
    with pytest.warns(UserWarning, match="the set the model was trained on"):
        evaluate(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(model, x[:199], y[:199])
        evaluate(model, x, (y + 1) % 10)
