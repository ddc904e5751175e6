"""The training workflow: validation data, early stopping, checkpoints, the run log, fine-tuning and exact resume."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import layers as L
from ggml_mnist.callbacks import Callback
from support.helpers import read_gguf, same_weights, small_options
from support.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    directory = make_synthetic(tmp_path_factory.mktemp("workflow"), n_train=200, n_test=60)
    x, y = gm.load_mnist(directory, "train")
    xt, yt = gm.load_mnist(directory, "test")
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def fc(**overrides):
    return small_options("fc", **{"hidden": 16, "seed": 7, **overrides})


# ---- validation ---------------------------------------------------------------------------------
def test_validation_data_is_evaluated_each_epoch_and_never_trained_on(data) -> None:
    plain, _ = gm.train(data["x"], data["y"], **fc())
    model, history = gm.train(data["x"], data["y"], validation_data=(data["xt"], data["yt"]), **fc())
    assert same_weights(plain, model)  # appended for validation only: training is unchanged
    result = gm.evaluate(model, data["xt"], data["yt"])
    last = history[-1]
    assert last.n_val == 60 and last.val_acc == pytest.approx(result.accuracy)
    assert last.val_loss == pytest.approx(result.loss, rel=1e-4)
    assert "| val loss" in last.summary(2) and model.metadata["dataset"]["n_val"] == 60


def test_validation_data_is_checked(data) -> None:
    with pytest.raises(gm.ConfigError, match="validation_data or val_split"):
        gm.train(data["x"], data["y"], validation_data=(data["xt"], data["yt"]), **fc(val_split=0.1))
    with pytest.raises(gm.DataError, match="validation_data: 60 images but 59 labels"):
        gm.train(data["x"], data["y"], validation_data=(data["xt"], data["yt"][:-1]), **fc())
    with pytest.raises(gm.ConfigError, match=r"validation_data must be \(images, labels\)"):
        gm.train(data["x"], data["y"], validation_data=data["xt"], **fc())


# ---- stopping, early stopping and the metadata of models saved mid-run ---------------------------
def test_on_epoch_false_stops_and_a_model_saved_in_the_callback_carries_the_run(data, tmp_path: Path) -> None:
    def on_epoch(stats, model):
        model.save(tmp_path / f"cb{stats.epoch}.gguf")
        return stats.epoch < 2

    model, history = gm.train(data["x"], data["y"], on_epoch=on_epoch, **fc(epochs=5))
    assert [s.epoch for s in history] == [1, 2]
    saved = gm.load(tmp_path / "cb1.gguf").metadata
    assert saved["config"]["epochs"] == 5 and len(saved["history"]) == 1 and saved["status"] == "running"
    assert not saved["interrupted"] and not saved["stopped_early"]
    assert len(gm.load(tmp_path / "cb2.gguf").metadata["history"]) == 2
    assert model.metadata["stopped_early"] and model.metadata["status"] == "stopped_early"
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(model.metadata["history"][0])


def test_early_stopping_restores_the_best_weights(data) -> None:
    wrong = (data["yt"] + 1) % 10  # learning the training labels makes the loss on these worse every epoch
    kept = {}

    def on_epoch(stats, model):
        kept[stats.epoch] = model.get_weights()

    model, history = gm.train(
        data["x"],
        data["y"],
        validation_data=(data["xt"], wrong),
        early_stopping=2,
        on_epoch=on_epoch,
        **fc(epochs=10, lr=5e-3),
    )
    losses = [s.val_loss for s in history]
    best = int(np.argmin(losses)) + 1
    assert len(history) == best + 2 < 10 and model.metadata["stopped_early"]
    assert model.metadata["restored_best_epoch"] == best
    assert same_weights(model, kept[best])
    with pytest.raises(gm.ConfigError, match="early_stopping watches the validation loss"):
        gm.train(data["x"], data["y"], early_stopping=2, **fc())
    with pytest.raises(gm.ConfigError, match="patience"):
        gm.train(data["x"], data["y"], early_stopping=0, validation_data=(data["xt"], data["yt"]), **fc())


# ---- checkpoints ----------------------------------------------------------------------------------
def test_checkpoints_every_epoch_and_best_only(data, tmp_path: Path) -> None:
    kept = {}
    gm.train(
        data["x"],
        data["y"],
        checkpoint=tmp_path / "ck",
        on_epoch=lambda s, m: kept.update({s.epoch: m.get_weights()}),
        **fc(epochs=3),
    )
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-001.gguf", "epoch-002.gguf", "epoch-003.gguf"]
    second = gm.load(tmp_path / "ck" / "epoch-002.gguf")
    assert same_weights(second, kept[2])
    assert len(second.metadata["history"]) == 2 and second.metadata["status"] == "running"
    assert gm.load(tmp_path / "ck" / "epoch-003.gguf").metadata["status"] == "finished"

    wrong = (data["yt"] + 1) % 10
    gm.train(
        data["x"],
        data["y"],
        checkpoint=tmp_path / "best",
        checkpoint_best_only=True,
        validation_data=(data["xt"], wrong),
        **fc(epochs=3, lr=5e-3),
    )
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["best.gguf"]
    assert gm.load(tmp_path / "best" / "best.gguf").metadata["best_epoch"] == 1


def test_an_unwritable_checkpoint_folder_fails_before_training(data, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    epochs = []
    with pytest.raises(gm.ModelIOError, match="checkpoint directory .* cannot be written"):
        gm.train(data["x"], data["y"], checkpoint=blocker / "ck", on_epoch=lambda s, m: epochs.append(s), **fc())
    assert epochs == []


# ---- the SQLite run log -----------------------------------------------------------------------------
def test_run_log_holds_runs_epochs_and_batches_of_several_runs(data, tmp_path: Path) -> None:
    log = tmp_path / "run.sqlite"
    _, first = gm.train(data["x"], data["y"], metrics=log, validation_data=(data["xt"], data["yt"]), **fc(epochs=2))
    gm.train(data["x"], data["y"], metrics=log, **fc(epochs=1, seed=8))
    with pytest.raises(gm.TrainingDivergedError):
        gm.train(data["x"], data["y"], metrics=log, **fc(epochs=1, max_loss=0.01))
    db = sqlite3.connect(log)
    runs = db.execute(
        "SELECT run_id, status, arch, seed, config, finished IS NOT NULL FROM runs ORDER BY run_id"
    ).fetchall()
    assert [(r[1], r[2], r[3], r[5]) for r in runs] == [
        ("finished", "fc", 7, 1),
        ("finished", "fc", 8, 1),
        ("diverged", "fc", 7, 1),
    ]
    assert '"hidden": 16' in runs[0][4]
    epochs = db.execute(
        "SELECT epoch, loss, accuracy, val_loss, val_accuracy, lr FROM epochs WHERE run_id = 1"
    ).fetchall()
    assert [e[0] for e in epochs] == [1, 2]
    for stats, row in zip(first, epochs):
        assert row[1:5] == pytest.approx((stats.train_loss, stats.train_acc, stats.val_loss, stats.val_acc))
        batches = db.execute(
            "SELECT batch, loss, accuracy, lr FROM batches WHERE run_id = 1 AND epoch = ? ORDER BY batch",
            (stats.epoch,),
        ).fetchall()
        assert [b[0] for b in batches] == list(range(1, 11))  # 200 images in batches of 20
        assert np.mean([b[1] for b in batches]) == pytest.approx(stats.train_loss, rel=1e-4)
        assert np.mean([b[2] for b in batches]) == pytest.approx(stats.train_acc, abs=1e-6)
        assert batches[-1][3] == pytest.approx(stats.lr) and stats.lr > 0
    assert db.execute("SELECT count(*) FROM epochs WHERE run_id = 2").fetchone() == (1,)
    # the README's comparison of two runs
    rows = db.execute("""SELECT run_id, json_extract(config, '$.lr') AS lr, max(val_accuracy), min(val_loss)
                         FROM runs JOIN epochs USING (run_id) WHERE run_id IN (1, 2) GROUP BY run_id""").fetchall()
    assert rows == [
        (
            1,
            pytest.approx(gm.TrainConfig.defaults("fc").lr),
            max(s.val_acc for s in first),
            min(s.val_loss for s in first),
        ),
        (2, pytest.approx(gm.TrainConfig.defaults("fc").lr), None, None),
    ]


def test_run_log_path_is_checked_before_training(data, tmp_path: Path) -> None:
    with pytest.raises(gm.ModelIOError, match="cannot write the run log"):
        gm.train(data["x"], data["y"], metrics=tmp_path / "missing" / "run.sqlite", **fc())


# ---- fine-tuning and exact resume ---------------------------------------------------------------------
def test_init_fine_tunes_with_the_network_of_the_file(data, tmp_path: Path) -> None:
    base, _ = gm.train(data["x"], data["y"], **fc(epochs=1))
    base.save(tmp_path / "base.gguf")
    tuned, history = gm.train(
        data["x"], data["y"], init=tmp_path / "base.gguf", epochs=1, batch_size=20, threads=1, progress=False
    )
    assert tuned.layers == base.layers and len(history) == 1 and not same_weights(tuned, base)
    assert history[0].train_loss < base.metadata["history"][0]["train_loss"]
    assert (
        gm.train(data["x"], data["y"], init=base, epochs=1, batch_size=20, threads=1, progress=False)[0].layers
        == base.layers
    )
    with pytest.raises(gm.ConfigError, match="holds .* network, not cnn; the network comes from the file"):
        gm.train(data["x"], data["y"], init=base, arch="cnn", progress=False)
    with pytest.raises(gm.DataError):
        gm.train(data["x"][:, :20, :20], data["y"], init=base, progress=False)


@pytest.mark.parametrize(
    "options",
    [
        fc(epochs=4),
        small_options("cnn", epochs=4, seed=3),
        {
            **fc(epochs=4, lr_schedule="linear", warmup_epochs=1),
            "hidden": None,
            "arch": [L.Dense(24), L.ReLU(), L.Dropout(0.3), L.Dense()],
        },
        fc(epochs=4, optimizer="sgd", lr=0.05),
        small_options("cnn", epochs=4, seed=3, augment="strong"),
    ],
    ids=["fc-adamw-cosine", "cnn", "dropout-linear-warmup", "sgd", "cnn-augmented"],
)
def test_resume_continues_bit_for_bit(data, tmp_path: Path, options) -> None:
    full, full_history = gm.train(data["x"], data["y"], **options)
    half, _ = gm.train(data["x"], data["y"], save_optimizer=True, on_epoch=lambda s, m: s.epoch < 2, **options)
    assert half.optimizer_steps == 20
    half.save(tmp_path / "half.gguf")
    rest, history = gm.train(data["x"], data["y"], resume=tmp_path / "half.gguf", progress=False, threads=1)
    assert same_weights(full, rest)
    assert [s.train_loss for s in history] == [s.train_loss for s in full_history]
    assert rest.metadata["status"] == "finished" and rest.optimizer_steps == 40


def test_optimizer_state_in_the_file(data, tmp_path: Path) -> None:
    model, _ = gm.train(data["x"], data["y"], save_optimizer=True, **fc(epochs=1, hidden=500))  # ggml's mnist-fc
    model.save(tmp_path / "with.gguf")
    fields, tensors = read_gguf(tmp_path / "with.gguf")
    assert fields["general.architecture"] == "mnist-fc" and len(fields["ggml_mnist.opt.position"]) == 13
    assert {"opt.m.fc1.weight", "opt.v.fc2.bias"} <= set(tensors) and tensors["opt.v.fc1.weight"][0] == [784, 500]
    assert np.abs(tensors["opt.m.fc2.weight"][2]).max() > 0
    loaded = gm.load(tmp_path / "with.gguf")
    assert loaded.optimizer_steps == 10 and same_weights(loaded, model)
    loaded.drop_optimizer_state()
    loaded.save(tmp_path / "without.gguf")
    assert not any(name.startswith("opt.") for name in read_gguf(tmp_path / "without.gguf")[1])
    plain, _ = gm.train(data["x"], data["y"], **fc(epochs=1))
    assert plain.optimizer_steps is None
    with pytest.raises(gm.ConfigError, match="holds no optimizer state"):
        gm.train(data["x"], data["y"], resume=plain, progress=False)
    with pytest.raises(gm.ConfigError, match="only epochs"):
        gm.train(data["x"], data["y"], resume=tmp_path / "with.gguf", lr=0.5, progress=False)
    with pytest.raises(gm.ConfigError, match="already trained 2 epochs"):
        gm.train(
            data["x"], data["y"], resume=gm.train(data["x"], data["y"], save_optimizer=True, **fc())[0], progress=False
        )
    with pytest.raises(gm.ConfigError, match="init= .* or resume="):
        gm.train(data["x"], data["y"], resume=model, init=model, progress=False)


def test_optimizer_state_is_saved_only_with_the_weights_it_belongs_to(data, tmp_path: Path) -> None:
    """The saved moments and schedule position are those of the last epoch's end: a save in the middle of an
    epoch, or after set_weights (EarlyStopping's restore), would pair them with other weights, and a resume from
    such a file would continue a run that never was. Those files carry the weights only."""

    class SaveMidEpoch(Callback):
        batch_interval = 0

        def __init__(self) -> None:
            self.seen: list[Optional[int]] = []

        def on_batch_end(self, batch, model) -> None:
            if batch.epoch == 2 and batch.batch == 3:
                self.seen.append(model.optimizer_steps)
                model.save(tmp_path / "mid.gguf")

        def on_epoch_end(self, stats, model) -> None:
            self.seen.append(model.optimizer_steps)

    saver = SaveMidEpoch()
    model, _ = gm.train(data["x"], data["y"], save_optimizer=True, callbacks=[saver], **fc(epochs=2))
    assert saver.seen == [10, None, 20] and model.optimizer_steps == 20
    mid = gm.load(tmp_path / "mid.gguf")
    assert mid.optimizer_steps is None and not any(n.startswith("opt.") for n in read_gguf(tmp_path / "mid.gguf")[1])
    with pytest.raises(gm.ConfigError, match="holds no optimizer state"):
        gm.train(data["x"], data["y"], resume=tmp_path / "mid.gguf", progress=False)
    model.save(tmp_path / "end.gguf")
    assert gm.load(tmp_path / "end.gguf").optimizer_steps == 20
    model.set_weights(model.get_weights())  # weights from elsewhere, even the same numbers
    assert model.optimizer_steps is None
    model.save(tmp_path / "set.gguf")
    assert gm.load(tmp_path / "set.gguf").optimizer_steps is None


def test_dropping_the_optimizer_state_inside_a_resumed_run_changes_nothing_of_the_run(data, tmp_path: Path) -> None:
    """The resumed run still restores moments from the loaded state until each parameter's first step: dropping it
    from a callback hides it (nothing to save) without freeing what the run reads, and the run stays exact."""

    class Drop(Callback):
        batch_interval = 0

        def on_batch_end(self, batch, model) -> None:
            if batch.epoch == 3 and batch.batch == 1:
                model.drop_optimizer_state()
                assert model.optimizer_steps is None

    full, _ = gm.train(data["x"], data["y"], **fc(epochs=4))
    half, _ = gm.train(data["x"], data["y"], save_optimizer=True, on_epoch=lambda s, m: s.epoch < 2, **fc(epochs=4))
    half.save(tmp_path / "half.gguf")
    rest, _ = gm.train(data["x"], data["y"], resume=tmp_path / "half.gguf", callbacks=[Drop()], progress=False)
    assert same_weights(full, rest) and rest.optimizer_steps == 40


def test_ctrl_c_leaves_an_interrupted_model_and_run(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class CtrlC(Callback):
        batch_interval = 0

        def on_batch_end(self, batch, model) -> None:
            if batch.epoch == 2 and batch.batch == 3:
                signal.raise_signal(signal.SIGINT)  # as if Ctrl-C was pressed: training stops after this batch

    model, history = gm.train(
        data["x"], data["y"], callbacks=[CtrlC()], metrics=tmp_path / "run.sqlite", save_optimizer=True, **fc(epochs=4)
    )
    assert [s.interrupted for s in history] == [False, True]
    assert "stopping after the current batch" in capsys.readouterr().err
    model.save(tmp_path / "m.gguf")
    meta = gm.load(tmp_path / "m.gguf").metadata
    assert meta["status"] == "interrupted" and meta["interrupted"] and len(meta["history"]) == 2
    with sqlite3.connect(tmp_path / "run.sqlite") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
        assert db.execute("SELECT count(*) FROM batches WHERE epoch = 2").fetchone() == (3,)


def test_ctrl_c_between_epochs_trains_no_more(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in an epoch's callbacks (its validation, on_epoch_end, a checkpoint) ends the run there: no batch of the
    next epoch is trained, the whole epoch stays as it was, and its optimizer state resumes exactly."""

    def on_epoch(stats, model):
        if stats.epoch == 1:
            signal.raise_signal(signal.SIGINT)

    model, history = gm.train(
        data["x"], data["y"], on_epoch=on_epoch, metrics=tmp_path / "run.sqlite", save_optimizer=True, **fc(epochs=4)
    )
    assert [s.interrupted for s in history] == [False] and "stopping" in capsys.readouterr().err
    assert model.metadata["status"] == "interrupted" and model.metadata["interrupted"]
    assert model.optimizer_steps == 10
    with sqlite3.connect(tmp_path / "run.sqlite") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
        assert db.execute("SELECT count(*) FROM batches WHERE epoch = 2").fetchone() == (0,)
    model.save(tmp_path / "m.gguf")
    rest, _ = gm.train(data["x"], data["y"], resume=tmp_path / "m.gguf", progress=False)
    full, _ = gm.train(data["x"], data["y"], **fc(epochs=4))
    assert same_weights(full, rest)
