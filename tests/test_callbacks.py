"""train(callbacks=[...]): the shorthand keywords and the explicit callbacks give the same bits; hooks, their order,
the batch throttle, the ways to stop, and bad callbacks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist.callbacks import Callback, EarlyStopping, EpochStats, ModelCheckpoint, RunLog, StopTraining
from ggml_mnist.training import BestEpoch
from support.helpers import THREADS, same_weights

EPOCHS = 6


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 10
    x = (rng.integers(0, 80, size=(400, 28, 28)) + (y * 17)[:, None, None]).astype(np.uint8)
    yt = (y[:100] + (np.arange(100) % 3 == 0)) % 10  # a third mislabelled: the validation loss turns up early
    return {"x": x, "y": y, "xt": x[:100].copy(), "yt": yt}


def options(data: dict, **changes) -> dict:
    return {
        **dict(
            arch="fc",
            hidden=16,
            epochs=EPOCHS,
            batch_size=50,
            lr=3e-3,
            seed=5,
            threads=THREADS,
            progress=False,
            validation_data=(data["xt"], data["yt"]),
        ),
        **changes,
    }


class Recorder(Callback):
    """Records every hook call; stops as told."""

    def __init__(self, batch_interval: float = 0.0, stop_after: int | None = None) -> None:
        self.batch_interval = batch_interval
        self.stop_after = stop_after
        self.calls: list[tuple] = []

    def on_train_begin(self, run) -> None:
        self.calls.append(("begin", run.status, len(run.history), run.config.epochs, run.dataset["n_val"]))

    def on_epoch_begin(self, epoch, model) -> None:
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, model) -> None:
        self.calls.append(("batch", batch.epoch, batch.batch, batch.n_batches))

    def on_epoch_end(self, stats, model):
        self.calls.append(("epoch_end", stats.epoch, len(model.metadata["history"]), model.metadata["status"]))
        return None if self.stop_after is None or stats.epoch < self.stop_after else False

    def on_train_end(self, run) -> None:
        self.calls.append(("end", run.status, len(run.history)))


def test_the_shorthand_keywords_and_the_callbacks_give_the_same_bits(data, tmp_path: Path) -> None:
    seen: dict[str, list[int]] = {"keywords": [], "callbacks": []}
    a, ha = gm.train(
        data["x"],
        data["y"],
        early_stopping=2,
        checkpoint=tmp_path / "a",
        checkpoint_best_only=True,
        metrics=tmp_path / "a.sqlite",
        on_epoch=lambda s, m: seen["keywords"].append(s.epoch),
        save_optimizer=True,
        **options(data),
    )

    class OnEpoch:  # not a Callback subclass: any object with on_epoch_end will do
        def on_epoch_end(self, stats, model) -> None:
            seen["callbacks"].append(stats.epoch)

    log = RunLog(tmp_path / "b.sqlite")
    b, hb = gm.train(
        data["x"],
        data["y"],
        callbacks=[EarlyStopping(2), ModelCheckpoint(tmp_path / "b", best_only=True), log, OnEpoch()],
        save_optimizer=True,
        **options(data),
    )
    assert a.metadata["status"] == "stopped_early" and len(ha) < EPOCHS  # the run is one that stops early
    assert same_weights(a, b)
    assert a.metadata["restored_best_epoch"] == b.metadata["restored_best_epoch"] == a.metadata["best_epoch"]
    strip = [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in ha]
    assert strip == [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in hb]
    assert seen["keywords"] == seen["callbacks"] == [s.epoch for s in ha]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert same_weights(gm.load(tmp_path / "a" / "best.gguf"), gm.load(tmp_path / "b" / "best.gguf"))
    query = "SELECT epoch, batch, loss, accuracy, lr FROM batches ORDER BY epoch, batch"
    rows_a = sqlite3.connect(tmp_path / "a.sqlite").execute(query).fetchall()
    assert rows_a == sqlite3.connect(tmp_path / "b.sqlite").execute(query).fetchall()
    assert len(rows_a) == len(ha) * 8  # 400 training images in batches of 50
    assert log.run_id == 1
    assert sqlite3.connect(tmp_path / "b.sqlite").execute("SELECT status FROM runs").fetchall() == [("stopped_early",)]


def test_the_shorthand_and_a_callback_without_validation_give_the_same_bits(data) -> None:
    a, ha = gm.train(
        data["x"],
        data["y"],
        arch="cnn",
        conv_channels=(2, 4),
        epochs=2,
        batch_size=50,
        seed=3,
        threads=THREADS,
        progress=False,
        on_epoch=lambda s, m: None,
    )
    b, hb = gm.train(
        data["x"],
        data["y"],
        arch="cnn",
        conv_channels=(2, 4),
        epochs=2,
        batch_size=50,
        seed=3,
        threads=THREADS,
        progress=False,
        callbacks=[Recorder(batch_interval=0.0)],
    )
    assert same_weights(a, b) and [s.train_loss for s in ha] == [s.train_loss for s in hb]


def test_hooks_run_in_order_and_see_the_run(data) -> None:
    rec = Recorder(batch_interval=0.0)
    model, history = gm.train(data["x"], data["y"], callbacks=[rec], **options(data, epochs=2))
    expected = [("begin", "running", 0, 2, 100)]
    for epoch in (1, 2):
        expected += [("epoch_begin", epoch)] + [("batch", epoch, b, 8) for b in range(1, 9)]
        expected.append(("epoch_end", epoch, epoch, "running" if epoch == 1 else "finished"))
    expected.append(("end", "finished", 2))
    assert rec.calls == expected
    assert model.metadata["status"] == "finished" and len(history) == 2


def test_on_batch_end_is_throttled_but_sees_each_epochs_last_batch(data) -> None:
    rec = Recorder(batch_interval=1e9)  # never twice within an epoch: only the first and the last batch
    gm.train(data["x"], data["y"], callbacks=[rec, Recorder()], **options(data, epochs=3))
    batches = [c[1:] for c in rec.calls if c[0] == "batch"]
    assert batches == [(1, 1, 8), (1, 8, 8), (2, 8, 8), (3, 8, 8)]

    class Plain:  # no batch_interval: the default throttle
        def __init__(self) -> None:
            self.batches: list = []

        def on_batch_end(self, batch, model) -> None:
            self.batches.append((batch.epoch, batch.batch))

    plain = Plain()
    gm.train(data["x"], data["y"], callbacks=[plain], **options(data, epochs=2))
    assert plain.batches[0] == (1, 1) and (1, 8) in plain.batches and plain.batches[-1] == (2, 8)
    assert len(plain.batches) <= 16 and gm.callbacks.Callback.batch_interval == 0.1


def test_returning_false_stops_a_run_that_would_go_on(data, capsys) -> None:
    rec = Recorder(stop_after=2)
    model, history = gm.train(data["x"], data["y"], callbacks=[rec], **options(data, progress=True))
    assert len(history) == 2 and model.metadata["status"] == "stopped_early"
    assert rec.calls[-1] == ("end", "stopped_early", 2)
    assert "stopped early after epoch 2 (Recorder returned False)" in capsys.readouterr().err
    last = Recorder(stop_after=EPOCHS)  # at the last epoch, False changes nothing
    model, history = gm.train(data["x"], data["y"], callbacks=[last], **options(data))
    assert len(history) == EPOCHS and model.metadata["status"] == "finished"


def test_stop_training_ends_the_run_as_stopped_early_even_at_its_last_epoch(data, capsys) -> None:
    class Enough(Callback):
        def on_epoch_end(self, stats, model) -> None:
            if stats.epoch == 2:
                raise StopTraining("the run is good enough")

    after = Recorder()
    model, history = gm.train(
        data["x"], data["y"], callbacks=[Enough(), after], **options(data, epochs=2, progress=True)
    )
    assert len(history) == 2 and model.metadata["status"] == "stopped_early"
    assert ("epoch_end", 2, 2, "stopped_early") in after.calls  # later callbacks still see the epoch, and the stop
    assert "stopped early after epoch 2 (the run is good enough)" in capsys.readouterr().err


def test_on_batch_end_can_stop_after_a_batch(data) -> None:
    class Third(Callback):
        batch_interval = 0

        def on_batch_end(self, batch, model):
            return not (batch.epoch == 2 and batch.batch == 3)

    model, history = gm.train(data["x"], data["y"], callbacks=[Third()], **options(data))
    assert len(history) == 2 and model.metadata["status"] == "stopped_early"
    assert history[1].n_train == 150 and not history[1].interrupted and history[0].n_train == 400


def test_on_train_end_runs_however_the_run_ends(data) -> None:
    rec = Recorder()
    with pytest.raises(gm.TrainingDivergedError):
        gm.train(data["x"], data["y"], callbacks=[rec], **options(data, max_loss=0.01))
    assert rec.calls[-1][:2] == ("end", "diverged")

    class Broken(Callback):
        batch_interval = 0

        def on_batch_end(self, batch, model) -> None:
            if batch.batch == 2:
                raise ZeroDivisionError("callback bug")

    rec = Recorder()
    with pytest.raises(ZeroDivisionError, match="callback bug"):
        gm.train(data["x"], data["y"], callbacks=[Broken(), rec], **options(data))
    assert rec.calls[-1][:2] == ("end", "interrupted")


def test_callbacks_are_checked_before_training(data, tmp_path: Path) -> None:
    with pytest.raises(gm.ConfigError, match="give a function as on_epoch= instead"):
        gm.train(data["x"], data["y"], callbacks=[lambda s, m: None], **options(data))
    with pytest.raises(gm.ConfigError, match="callbacks must be a list"):
        gm.train(data["x"], data["y"], callbacks=EarlyStopping(2), **options(data))
    with pytest.raises(gm.ConfigError, match="needs an on_epoch_end"):
        gm.train(data["x"], data["y"], callbacks=[object()], **options(data))
    with pytest.raises(gm.ConfigError, match="needs an on_epoch_end"):
        gm.train(data["x"], data["y"], callbacks=[Recorder], **options(data))
    with pytest.raises(gm.ConfigError, match=r"Recorder.batch_interval must be a number of seconds >= 0"):
        gm.train(data["x"], data["y"], callbacks=[Recorder(batch_interval=-1)], **options(data))
    with pytest.raises(gm.ConfigError, match="patience is a number of epochs"):
        EarlyStopping(0)
    with pytest.raises(gm.ConfigError, match="early_stopping watches the validation loss"):
        gm.train(data["x"], data["y"], callbacks=[EarlyStopping(1)], **options(data, validation_data=None))
    with pytest.raises(gm.ConfigError, match="metrics and metrics are the same path"):
        gm.train(
            data["x"],
            data["y"],
            callbacks=[RunLog(tmp_path / "r.sqlite"), RunLog(tmp_path / "r.sqlite")],
            **options(data),
        )
    with pytest.raises(gm.ConfigError, match="metrics and checkpoint are the same path"):
        gm.train(data["x"], data["y"], checkpoint=tmp_path / "x", callbacks=[RunLog(tmp_path / "x")], **options(data))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "epoch-001.gguf").write_bytes(b"")
    with pytest.raises(gm.ConfigError, match="already holds another run's checkpoints"):
        gm.train(data["x"], data["y"], callbacks=[ModelCheckpoint(tmp_path / "old")], **options(data))
    assert not (tmp_path / "r.sqlite").exists()


def test_max_seconds_stays_a_config_field_beside_the_callbacks(data) -> None:
    rec = Recorder()
    model, history = gm.train(data["x"], data["y"], callbacks=[rec], **options(data, epochs=50, max_seconds=1e-9))
    assert model.metadata["status"] == "time_limit" and history[-1].time_limit and len(history) == 1
    assert rec.calls[-1] == ("end", "time_limit", 1)


def test_a_stop_at_an_epochs_last_batch_keeps_that_epochs_validation(data) -> None:
    """The epoch is whole when on_batch_end stops at its last batch: it is validated like any other, so the run's
    best epoch (EarlyStopping, best-only checkpoints) is chosen by validation losses alone."""

    class LastOfSecond(Callback):
        def on_batch_end(self, batch, model):
            return not (batch.epoch == 2 and batch.batch == batch.n_batches)

    model, history = gm.train(data["x"], data["y"], callbacks=[LastOfSecond()], **options(data))
    assert len(history) == 2 and model.metadata["status"] == "stopped_early"
    assert history[1].n_train == 400 and history[1].n_val == 100 and history[1].val_loss is not None


def test_an_epoch_cut_short_never_counts_as_the_best_by_its_training_loss() -> None:
    def epoch(n: int, train_loss: float, val_loss) -> EpochStats:
        return EpochStats(
            n, train_loss, 0.0, 0.5, 0.0, val_loss, 0.0, 0.5, 0.0, 1.0, 400, 0 if val_loss is None else 100
        )

    best = BestEpoch([epoch(1, 0.9, 1.2)])
    assert not best.update(epoch(2, 0.3, None))  # interrupted or at the time limit: not validated
    assert best.epoch == 1 and best.update(epoch(3, 0.8, 1.1)) and best.epoch == 3
    unvalidated = BestEpoch([epoch(1, 0.9, None)])  # a run without validation goes by the training loss
    assert unvalidated.update(epoch(2, 0.8, None)) and not unvalidated.update(epoch(3, 0.85, None))
    assert unvalidated.update(epoch(4, 2.0, 1.5)) and unvalidated.epoch == 4  # validated: ahead of any training loss
