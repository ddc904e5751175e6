"""Nothing lost: outputs never destroy inputs or foreign files, and logs and checkpoints never end a run."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import cli, datasets, runlog
from ggml_mnist.data import uncompressed_sha256
from ggml_mnist.download import download_dataset as real_download
from support.helpers import gguf_module
from support.synthetic import make_synthetic

FAST = ["--hidden", "16", "--batch-size", "20", "--threads", "1", "--lr", "3e-3", "--quiet"]


pytestmark = pytest.mark.usefixtures("no_downloads")  # the network is never needed (conftest.py)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_synthetic(tmp_path / "data" / "mnist", n_train=200, n_test=50, gz=True)


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(200) % 10
    x = rng.integers(0, 64, size=(200, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 7 * (label // 4) : 7 * (label // 4) + 7, 7 * (label % 4) : 7 * (label % 4) + 7] = 220
    return x, y


def fc(**overrides: object) -> dict:
    return {
        "arch": "fc",
        "hidden": 16,
        "epochs": 2,
        "batch_size": 20,
        "threads": 1,
        "lr": 3e-3,
        "progress": False,
        **overrides,
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_of(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


# ---- OUT never replaces an input or a foreign file ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
)
def test_a_forgotten_out_never_overwrites_the_dataset(data_dir: Path, name: str, capsys) -> None:
    target = data_dir / name
    before = digest(target)
    assert cli.train_main(["fc", str(target), "--data-dir", str(data_dir.parent), "--epochs", "1", *FAST]) == 1
    err = error_of(capsys)
    assert "epoch" not in err and digest(target) == before
    assert "already exists and is a gzip file, not a GGUF model file" in err and "--force" in err
    if name.startswith("train"):  # an input of this run, found through --data-dir: refused even with --force
        assert (
            cli.train_main(["fc", str(target), "--data-dir", str(data_dir.parent), "--epochs", "1", "--force", *FAST])
            == 1
        )
        err = error_of(capsys)
        assert f"is the input file '{target}'" in err and "epoch" not in err and digest(target) == before


def test_force_replaces_a_foreign_out_and_a_model_is_replaced_freely(data_dir: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert cli.train_main(["fc", str(notes), "--data-dir", str(data_dir.parent), "--epochs", "1", *FAST]) == 1
    assert "is a file of another kind" in error_of(capsys) and notes.read_text() == "my notes"
    assert (
        cli.train_main(["fc", str(notes), "--data-dir", str(data_dir.parent), "--epochs", "1", "--force", *FAST]) == 0
    )
    assert notes.read_bytes()[:4] == b"GGUF"
    assert cli.train_main(["fc", str(notes), "--data-dir", str(data_dir.parent), "--epochs", "1", *FAST]) == 0


def test_the_api_save_refuses_foreign_files(xy, tmp_path: Path) -> None:
    model, _ = gm.train(*xy, **fc(epochs=1))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    with pytest.raises(gm.ModelIOError, match="already exists and is a JPEG picture, not a GGUF model file"):
        model.save(photo)
    assert photo.read_bytes() == b"\xff\xd8\xff\xe0 a photo"
    model.save(photo, force=True)
    assert gm.load(photo).layers == model.layers


def test_verify_names_a_model_saved_over_a_dataset_file(tmp_path: Path, monkeypatch, capsys) -> None:
    source = make_synthetic(tmp_path / "src", n_train=20, n_test=10, gz=True)
    files = {p.name: datasets.FileSpec(uncompressed_sha256(p), 28 * 28 * 20 + 16) for p in source.iterdir()}
    monkeypatch.setitem(
        datasets.DATASETS,
        "synthetic",
        datasets.DatasetInfo("synthetic", tuple("0123456789"), files=files, mirrors=("http://127.0.0.1:9/",)),
    )
    folder = tmp_path / "data" / "synthetic"
    shutil.copytree(source, folder)
    model = gm.Model.create("fc", hidden=16)
    model.save(folder / "train-images-idx3-ubyte.gz", force=True)
    assert cli.data_main(["verify", "--dataset", "synthetic", "--dir", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert (
        "BAD     train-images-idx3-ubyte.gz: present but its SHA-256 does not match (it is a GGUF model file); "
        "remove it or run `mnist-data download --force`"
    ) in out
    assert "ok      t10k-images-idx3-ubyte.gz" in out and "MISSING" not in out
    before = digest(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(gm.ModelIOError, match="it is a GGUF model file.*download --force"):
        real_download("synthetic", tmp_path / "data", progress=False)
    assert digest(folder / "train-images-idx3-ubyte.gz") == before


# ---- the paths of a run are refused before the first epoch ---------------------------------------------------------
def test_output_paths_that_collide_are_refused_before_training(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.gguf"
    base = ["fc", str(out), "--data-dir", str(data_dir.parent), "--epochs", "1", *FAST]
    one_byte = tmp_path / "one.sqlite"
    one_byte.write_bytes(b"x")
    (tmp_path / "existing.gguf").write_bytes(b"")
    cases = [
        (["--metrics", str(out)], "--metrics and OUT are the same path"),
        (["--checkpoint", ""], "checkpoint must be the name of a folder"),
        (["--checkpoint", str(out)], "--checkpoint and OUT are the same path"),
        (["--metrics", str(one_byte)], "it exists and is a file of another kind, not a SQLite run log"),
        (["--metrics", str(data_dir / "train-labels-idx1-ubyte.gz")], "it exists and is a gzip file"),
        (["--checkpoint", str(tmp_path / "existing.gguf")], "is a file; name a folder"),
    ]
    for extra, message in cases:
        assert cli.train_main([*base, *extra]) == 1, extra
        err = error_of(capsys)
        assert message in err and "epoch 1" not in err, (extra, err)
        assert not out.exists()
    assert one_byte.read_bytes() == b"x"


def test_resume_refuses_options_it_would_ignore(data_dir: Path, tmp_path: Path, capsys) -> None:
    first = tmp_path / "first.gguf"
    assert (
        cli.train_main(
            ["fc", str(first), "--data-dir", str(data_dir.parent), "--epochs", "1", *FAST, "--save-optimizer"]
        )
        == 0
    )
    for extra, named in (
        (["--lr", "0.1"], "lr"),
        (["--batch-size", "10"], "batch_size"),
        (["--optimizer", "sgd"], "optimizer"),
        (["--augment", "strong"], "augment"),
    ):
        assert (
            cli.train_main(
                [
                    str(tmp_path / "next.gguf"),
                    "--resume",
                    str(first),
                    "--data-dir",
                    str(data_dir.parent),
                    "--epochs",
                    "2",
                    *extra,
                ]
            )
            == 1
        )
        err = error_of(capsys)
        assert (
            f"only epochs (the new total), device, graph, threads and max_seconds may be given, not {named}" in err
        ), err
    assert (
        cli.train_main(
            [
                "cnn",
                str(tmp_path / "next.gguf"),
                "--resume",
                str(first),
                "--data-dir",
                str(data_dir.parent),
                "--epochs",
                "2",
            ]
        )
        == 1
    )
    assert "the network comes from the file" in error_of(capsys)
    assert not (tmp_path / "next.gguf").exists()


def test_absurd_optimizer_moments_are_refused_on_load(xy, tmp_path: Path) -> None:
    model, _ = gm.train(*xy, save_optimizer=True, **fc(epochs=1))
    path = tmp_path / "run.gguf"
    model.save(path)
    gguf = gguf_module()
    reader = gguf.GGUFReader(str(path), "r+")
    moment = next(t for t in reader.tensors if t.name == "opt.m.fc1.weight")
    moment.data[0, 0] = 3e38
    reader.data.flush()
    del reader
    with pytest.raises(gm.ModelFormatError, match=r"opt.m.fc1.weight holds 3e\+38 at element 0.*--init"):
        gm.load(path)


# ---- the run log ----------------------------------------------------------------------------------------------------
def test_a_reader_on_the_run_log_never_blocks_training(xy, tmp_path: Path) -> None:
    log = tmp_path / "run.sqlite"
    gm.train(*xy, metrics=log, **fc(epochs=1))
    reader = sqlite3.connect(log)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # a read transaction, held throughout
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, history = gm.train(*xy, metrics=log, **fc(epochs=2))
    reader.rollback()
    assert len(history) == 2
    rows = reader.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
    assert rows == [(1, "finished"), (2, "finished")]
    assert reader.execute("SELECT count(*) FROM epochs WHERE run_id = 2").fetchone() == (2,)


def test_a_locked_run_log_warns_once_and_training_goes_on(xy, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runlog, "BUSY_SECONDS", 0.05)
    log = tmp_path / "run.sqlite"
    gm.train(*xy, metrics=log, **fc(epochs=1))
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another writer holds the log

    def release(stats, model) -> None:
        if stats.epoch == 2:
            writer.execute("COMMIT")

    with pytest.warns(gm.LoggingWarning, match="cannot write the run log .* training goes on") as caught:
        model, history = gm.train(*xy, metrics=log, on_epoch=release, **fc(epochs=3))
    assert len(caught) == 1 and len(history) == 3
    db = sqlite3.connect(log)
    assert db.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall() == [
        (1, "finished"),
        (2, "finished"),
    ]
    assert [r[0] for r in db.execute("SELECT epoch FROM epochs WHERE run_id = 2 ORDER BY epoch")] == [1, 2, 3]
    assert db.execute("SELECT count(*) FROM batches WHERE run_id = 2").fetchone() == (30,)


def test_the_cli_prints_logging_warnings_as_one_line(data_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(runlog, "BUSY_SECONDS", 0.05)
    log = tmp_path / "run.sqlite"
    sqlite3.connect(log).executescript(runlog._SCHEMA)
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    out = tmp_path / "m.gguf"
    code = cli.train_main(
        ["fc", str(out), "--data-dir", str(data_dir.parent), "--epochs", "2", *FAST, "--metrics", str(log)]
    )
    writer.execute("ROLLBACK")
    err = error_of(capsys)
    assert code == 0 and out.exists()
    assert err.count("mnist-train: warning: cannot write the run log") == 1 and "Warning" not in err


# ---- checkpoints ------------------------------------------------------------------------------------------------------
def test_a_checkpoint_failure_warns_and_the_run_goes_on(xy, tmp_path: Path) -> None:
    folder = tmp_path / "ck"

    def sabotage(stats, model) -> None:
        if stats.epoch == 1:
            shutil.rmtree(folder)
            folder.write_text("now a file")  # the folder cannot come back

    with pytest.warns(gm.CheckpointWarning, match="epoch-002.gguf was not saved") as caught:
        model, history = gm.train(*xy, checkpoint=folder, on_epoch=sabotage, **fc(epochs=3))
    assert len(caught) == 1 and len(history) == 3 and model.metadata["status"] == "finished"


def test_a_removed_checkpoint_folder_comes_back(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    out = tmp_path / "m.gguf"

    def remove(stats, model) -> None:
        if stats.epoch == 1:
            shutil.rmtree(folder)

    model, history = gm.train(data_dir, checkpoint=folder, on_epoch=remove, **fc(epochs=2))
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-002.gguf"]
    model.save(out)
    assert out.exists()


def test_a_checkpoint_folder_of_another_run_is_refused_unless_resuming_from_it(xy, tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    gm.train(*xy, checkpoint=folder, save_optimizer=True, **fc(epochs=3))
    epochs: list = []
    with pytest.raises(
        gm.ConfigError,
        match=r"already holds another run's checkpoints \(epoch-001.gguf, epoch-002"
        r".gguf, epoch-003.gguf\).*--resume .*epoch-003.gguf",
    ):
        gm.train(*xy, checkpoint=folder, on_epoch=lambda s, m: epochs.append(s), **fc(epochs=1, seed=9))
    assert epochs == []
    model, history = gm.train(
        *xy, checkpoint=folder, resume=folder / "epoch-002.gguf", progress=False, threads=1, epochs=4
    )
    assert [s.epoch for s in history] == [1, 2, 3, 4]
    assert sorted(p.name for p in folder.iterdir()) == [f"epoch-00{i}.gguf" for i in range(1, 5)]
    assert len(gm.load(folder / "epoch-004.gguf").metadata["history"]) == 4


def test_reading_a_run_log_never_creates_a_file(xy, tmp_path: Path, monkeypatch) -> None:
    from ggml_mnist.plot import history_from_metrics

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "run #3.sqlite"
    gm.train(*xy, metrics=log, **fc(epochs=2))
    before = sorted(p.name for p in tmp_path.iterdir())
    rows = history_from_metrics("run #3.sqlite")
    assert [r["epoch"] for r in rows] == [1, 2]
    after = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))  # SQLite's own
    assert after == before  # no "run " or any other stray file


def test_a_resumed_run_keeps_its_best_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(600, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=600)  # random labels: the validation loss soon gets worse
    folder = tmp_path / "ck"
    saving = dict(threads=1, progress=False, checkpoint=folder, checkpoint_best_only=True, save_optimizer=True)
    gm.train(
        x,
        y,
        arch="fc",
        hidden=16,
        batch_size=20,
        lr=3e-3,
        lr_schedule="constant",
        val_split=0.2,
        seed=1,
        epochs=2,
        **saving,
    )
    _, history = gm.train(x, y, epochs=3, resume=folder / "best.gguf", **saving)  # the history of all 3 epochs
    losses = [s.val_loss for s in history]
    assert losses[2] > losses[1]  # the resumed epoch is worse than the best before it
    kept = gm.load(folder / "best.gguf")
    assert kept.metadata["best_epoch"] == 2 and len(kept.metadata["history"]) == 2, losses


def test_an_interrupted_run_never_saves_over_an_input(tmp_path: Path) -> None:
    from ggml_mnist.cli.train import _interrupted_name

    out = tmp_path / "model.gguf"
    gm.Model.create("fc", hidden=8, threads=1).save(out)
    resumed = tmp_path / "model.interrupted.gguf"
    gm.Model.create("fc", hidden=8, threads=1).save(resumed)
    assert _interrupted_name(str(out)) == str(resumed)  # an earlier partial model of ours is replaced
    assert _interrupted_name(str(out), [str(resumed)]) == str(tmp_path / "model.interrupted-2.gguf")
    resumed.write_text("notes")
    assert _interrupted_name(str(out)) == str(tmp_path / "model.interrupted-2.gguf")  # nor a file of another kind


def test_rows_lost_at_the_end_of_a_run_are_said(xy, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runlog, "BUSY_SECONDS", 0.05)
    log = tmp_path / "run.sqlite"
    gm.train(*xy, metrics=log, **fc(epochs=1))
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.warns(gm.LoggingWarning) as caught:
            gm.train(*xy, metrics=log, **fc(epochs=2))
    finally:
        writer.execute("ROLLBACK")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "could not be written at the end of the run" in messages[1]
    assert "rows (and the run's status) are missing" in messages[1]
