"""mnist-train's workflow options: validation, early stopping, checkpoints, run log, --init and --resume."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import ggml_mnist as gm
from ggml_mnist import cli
from support.synthetic import SPLIT_FILES, make_synthetic

FAST = ["--hidden", "16", "--batch-size", "20", "--threads", "1", "--lr", "3e-3"]


pytestmark = pytest.mark.usefixtures("no_downloads")  # the network is never needed (conftest.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=50)


def test_val_files_show_on_every_epoch_line(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = (str(data_dir / name) for name in SPLIT_FILES["test"])
    assert (
        cli.train_main(
            [
                "fc",
                str(tmp_path / "m.gguf"),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "2",
                *FAST,
                "--val-images",
                images,
                "--val-labels",
                labels,
            ]
        )
        == 0
    )
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 2 and all("| val loss" in x for x in lines) and "TEST" not in "".join(lines)
    assert (
        cli.train_main(
            [
                "fc",
                str(tmp_path / "m.gguf"),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                *FAST,
                "--val-images",
                images,
            ]
        )
        == 1
    )
    assert "give --val-images and --val-labels together" in capsys.readouterr().err


def test_validate_on_test_says_that_it_is_test_data(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.train_main(
            [
                "fc",
                str(tmp_path / "m.gguf"),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                *FAST,
                "--validate-on-test",
                "--json",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "validating on the TEST split of mnist (50 images" in err and "test figures" in err
    epoch = json.loads(out.splitlines()[0])
    assert epoch["n_val"] == 50 and epoch["val_accuracy"] is not None
    assert gm.load(tmp_path / "m.gguf").metadata["dataset"]["n_val"] == 50


def test_workflow_options_chain(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, first, second = tmp_path / "runs.sqlite", tmp_path / "first.gguf", tmp_path / "second.gguf"
    assert (
        cli.train_main(
            [
                "fc",
                str(first),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "2",
                *FAST,
                "--quiet",
                "--save-optimizer",
                "--metrics",
                str(log),
                "--checkpoint",
                str(tmp_path / "ck"),
                "--val-split",
                "0.2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-001.gguf", "epoch-002.gguf"]
    assert gm.load(first).optimizer_steps == 16  # 160 training images in batches of 20, 2 epochs
    assert (
        cli.train_main(
            [
                str(second),
                "--resume",
                str(first),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "3",
                "--quiet",
                "--metrics",
                str(log),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    resumed = gm.load(second)
    assert [h["epoch"] for h in resumed.metadata["history"]] == [1, 2, 3] and resumed.optimizer_steps == 24
    assert (
        cli.train_main(
            [
                str(tmp_path / "tuned.gguf"),
                "--init",
                str(second),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                "--quiet",
                "--batch-size",
                "20",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    tuned = gm.load(tmp_path / "tuned.gguf")
    assert len(tuned.metadata["history"]) == 1 and tuned.layers == resumed.layers and tuned.optimizer_steps is None
    with sqlite3.connect(log) as db:
        assert db.execute("SELECT run_id, status FROM runs").fetchall() == [(1, "finished"), (2, "finished")]
        assert db.execute("SELECT run_id, epoch FROM epochs").fetchall() == [(1, 1), (1, 2), (2, 3)]
    capsys.readouterr()
    assert cli.train_main(["cnn", str(tmp_path / "x.gguf"), "--init", str(second), "--data-dir", str(data_dir)]) == 1
    assert "the network comes from the file" in capsys.readouterr().err
    assert (
        cli.train_main(
            ["fc", str(tmp_path / "x.gguf"), "--resume", str(tmp_path / "tuned.gguf"), "--data-dir", str(data_dir)]
        )
        == 1
    )
    assert "holds no optimizer state" in capsys.readouterr().err


def test_early_stopping_on_the_command_line(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = (str(data_dir / name) for name in SPLIT_FILES["test"])
    wrong = tmp_path / "wrong-labels"
    gm.write_idx(wrong, (gm.read_idx(labels) + 1) % 10)  # the validation loss rises from the first epoch on
    assert (
        cli.train_main(
            [
                "fc",
                str(tmp_path / "m.gguf"),
                "--data-dir",
                str(data_dir),
                "--epochs",
                "10",
                *FAST,
                "--val-images",
                images,
                "--val-labels",
                str(wrong),
                "--early-stopping",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "stopped early after epoch" in err and gm.load(tmp_path / "m.gguf").metadata["stopped_early"]
    assert cli.train_main(["fc", str(tmp_path / "m.gguf"), "--data-dir", str(data_dir), "--early-stopping", "1"]) == 1
    assert "give validation_data or val_split too" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--checkpoint", "{file}/ck"], ["--metrics", "{missing}/run.sqlite"]])
def test_unwritable_checkpoint_or_metrics_fail_before_training(
    data_dir: Path, tmp_path: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    value = option[1].format(file=tmp_path / "file", missing=tmp_path / "missing")
    assert (
        cli.train_main(
            ["fc", str(tmp_path / "m.gguf"), "--data-dir", str(data_dir), "--epochs", "1", *FAST, option[0], value]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "cannot be written" in err or "cannot write the run log" in err
    assert "epoch" not in err.replace("epoch-", "") and not (tmp_path / "m.gguf").exists()
