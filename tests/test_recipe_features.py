"""Recipe features of fast runs: the one-cycle schedule, label smoothing and the max_seconds time budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import ConfigError, TrainConfig
from ggml_mnist._ffi import ffi, lib
from support.helpers import small_options
from support.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return gm.load_mnist(make_synthetic(tmp_path_factory.mktemp("data"), n_train=300, n_test=10), "train")


def onecycle(step: int, total: int, lr: float, up: int, min_ratio: float = 0.0) -> float:
    """The one-cycle rate of optimizer step ``step`` (0-based), written out independently of the shim."""
    if step < up:
        return lr + (lr / 25 - lr) * 0.5 * (1 + math.cos(math.pi * step / up))
    p = min(1.0, (step - up) / (total - up))
    end = lr * min_ratio
    return max(end + (lr - end) * 0.5 * (1 + math.cos(math.pi * p)), 1e-12)


@pytest.mark.parametrize("warmup_epochs, up", [(0.0, 18), (1.0, 15)])
def test_onecycle_rises_to_the_peak_then_falls_to_the_floor(data, warmup_epochs, up) -> None:
    x, y = data  # 300 images in batches of 20: 15 steps an epoch, 60 in 4 epochs; the default warm-up is 30 %
    _, history = gm.train(
        x,
        y,
        **small_options(
            "fc", epochs=4, lr=0.01, lr_schedule="onecycle", warmup_epochs=warmup_epochs, lr_min_ratio=0.01
        ),
    )
    last_steps = [15 * e - 1 for e in range(1, 5)]
    expected = [onecycle(s, 60, 0.01, up, 0.01) for s in last_steps]
    assert [h.lr for h in history] == pytest.approx(expected, rel=1e-5)
    assert history[0].lr < 0.01 and history[1].lr > history[2].lr > history[3].lr  # the peak lies inside epoch 2
    assert 1e-4 < history[-1].lr < 1.2e-4  # near the floor lr * lr_min_ratio, reached one step after the last


def test_onecycle_learns_and_differs_from_cosine(data) -> None:
    x, y = data
    a, ha = gm.train(x, y, **small_options("fc", epochs=3, lr=0.01, lr_schedule="onecycle"))
    b, _ = gm.train(x, y, **small_options("fc", epochs=3, lr=0.01, lr_schedule="cosine"))
    assert ha[-1].train_acc >= 0.9
    assert not np.array_equal(a.get_weights()["fc2.weight"], b.get_weights()["fc2.weight"])


def _last_targets(x, y, **options) -> np.ndarray:
    seen = []

    def on_epoch(_stats, model):
        images = np.empty((20, 28, 28), np.float32)
        targets = np.empty((20, 10), np.float32)
        assert (
            lib.gmn_model_last_batch(
                model._handle,
                ffi.cast("float *", images.ctypes.data),
                images.size,
                ffi.cast("float *", targets.ctypes.data),
                targets.size,
            )
            == 0
        )
        seen.append(targets)

    gm.train(x, y, on_epoch=on_epoch, **small_options("fc", epochs=1, **options))
    return seen[-1]


def test_label_smoothing_mixes_the_targets_with_a_uniform_distribution(data) -> None:
    x, y = data
    plain = _last_targets(x, y)
    smooth = _last_targets(x, y, label_smoothing=0.2)
    assert set(np.unique(plain)) == {0.0, 1.0}
    # same shuffle, same labels: (1 - 0.2) one-hot + 0.2 / 10 everywhere
    np.testing.assert_allclose(smooth, 0.8 * plain + 0.02, rtol=1e-6)
    np.testing.assert_allclose(smooth.sum(axis=1), 1.0, rtol=1e-6)


def test_label_smoothing_bounds_the_training_loss_but_not_the_evaluation_loss(data) -> None:
    x, y = data
    s = 0.1
    entropy = -((1 - s + s / 10) * math.log(1 - s + s / 10) + 9 * (s / 10) * math.log(s / 10))  # about 0.50
    smooth, hs = gm.train(x, y, **small_options("fc", epochs=6, lr=0.01, label_smoothing=s))
    plain, hp = gm.train(x, y, **small_options("fc", epochs=6, lr=0.01))
    assert all(h.train_loss >= entropy - 1e-3 for h in hs)  # no model gets below the targets' own entropy
    assert hp[-1].train_loss < entropy / 2  # ... which the one-hot run passes easily on this easy task
    assert hs[-1].train_acc >= 0.9
    # evaluation scores plain cross-entropy: the smoothed model is less sure, so its loss is higher but finite
    with pytest.warns(gm.GgmlMnistWarning, match="the set the model was trained on"):  # scored on training images
        e_smooth, e_plain = gm.evaluate(smooth, x, y), gm.evaluate(plain, x, y)
    assert e_smooth.accuracy >= 0.9 and e_plain.loss < e_smooth.loss < entropy + 0.2
    assert smooth.predict_proba(x).max(axis=1).mean() < plain.predict_proba(x).max(axis=1).mean()


def test_max_seconds_stops_after_the_batch_that_crosses_it_and_keeps_the_model(data) -> None:
    x, y = data
    model, history = gm.train(x, y, **small_options("fc", epochs=5, max_seconds=1e-9))
    assert len(history) == 1 and history[0].time_limit and not history[0].interrupted
    assert history[0].n_train == 20  # one batch of 20: the first batch already crosses the budget
    assert model.metadata["status"] == "time_limit"
    assert "(time limit)" in history[0].summary(5)
    assert model.predict_proba(x[:3]).shape == (3, 10)


def test_a_generous_max_seconds_changes_nothing(data) -> None:
    x, y = data
    a, ha = gm.train(x, y, **small_options("fc", epochs=2))
    b, hb = gm.train(x, y, **small_options("fc", epochs=2, max_seconds=3600))
    assert len(hb) == 2 and not any(h.time_limit for h in hb) and b.metadata["status"] == "finished"
    for name, w in a.get_weights().items():
        np.testing.assert_array_equal(w, b.get_weights()[name])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
        ("label_smoothing", -0.1, r"label_smoothing must be in \[0, 1\)"),
        ("label_smoothing", float("nan"), r"label_smoothing must be in \[0, 1\)"),
        ("max_seconds", -1, r"max_seconds must be a number of seconds >= 0"),
        ("max_seconds", float("inf"), r"max_seconds must be a number of seconds >= 0"),
        ("lr_schedule", "one-cycle", r"lr_schedule must be one of constant, cosine, linear, onecycle"),
    ],
)
def test_bad_recipe_values_name_the_fix(field, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig().replace(**{field: value}).validate()


def test_the_shim_says_where_the_training_time_went(data) -> None:
    x, y = data  # 15 batches of 20 an epoch; physical batch = batch: one graph run per batch
    seen = []

    def on_epoch(_stats, model):
        t = ffi.new("struct gmn_train_timing *")
        assert lib.gmn_model_train_timing(model._handle, t) == 0
        seen.append((t.graph_runs, t.data, t.first_graph, t.graph, t.callback, t.check))

    model, _ = gm.train(x, y, on_epoch=on_epoch, **small_options("fc", epochs=2))
    assert [s[0] for s in seen] == [15, 30]
    for _runs, *seconds in seen:
        assert all(s > 0 for s in seconds)
    assert all(b >= a for a, b in zip(seen[0][1:], seen[1][1:]))  # running totals
    assert seen[0][2] == seen[1][2]  # the first graph run is counted once
    t = ffi.new("struct gmn_train_timing *")
    assert lib.gmn_model_train_timing(model._handle, t) == lib.GMN_E_STATE  # train() has released its state
    assert "not training" in ffi.string(lib.gmn_last_error()).decode()


def test_mnist_train_max_seconds_saves_to_out_and_says_why_it_stopped(tmp_path, capsys) -> None:
    from ggml_mnist import cli
    from support.synthetic import SPLIT_FILES

    data = make_synthetic(tmp_path / "data", n_train=200, n_test=20)
    images, labels = (str(data / name) for name in SPLIT_FILES["train"])
    out = tmp_path / "m.gguf"
    gm.Model.create("fc", hidden=8, threads=1).save(out)  # an existing model: a run cut by its time limit replaces it
    assert (
        cli.train_main(
            [
                "fc",
                str(out),
                images,
                labels,
                "--epochs",
                "3",
                "--hidden",
                "16",
                "--batch-size",
                "20",
                "--threads",
                "1",
                "--max-seconds",
                "1e-9",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "stopped at the time limit (--max-seconds 1e-09) in epoch 1 of 3" in err
    assert not list(tmp_path.glob("m.interrupted*"))
    model = gm.load(out)
    assert model.metadata["status"] == "time_limit" and len(model.metadata["history"]) == 1
    assert (
        cli.train_main(
            [
                "fc",
                str(tmp_path / "j.gguf"),
                images,
                labels,
                "--epochs",
                "2",
                "--hidden",
                "16",
                "--batch-size",
                "20",
                "--threads",
                "1",
                "--max-seconds",
                "1e-9",
                "--json",
            ]
        )
        == 0
    )
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert done["event"] == "done" and done["time_limit"] is True and done["interrupted"] is False


def test_a_budget_spent_between_epochs_starts_no_epoch_of_one_batch(data, monkeypatch) -> None:
    """Time that runs out after an epoch's last batch (in its validation or its callbacks) ends the run there: the
    next epoch would stop after its first batch, leaving an epoch of one batch without validation."""
    x, y = data

    class Clock:  # the run's clock, moved by the callback alone (no real timing)
        now = 0.0

        @staticmethod
        def perf_counter() -> float:
            return Clock.now

    class SlowCheckpoint(gm.callbacks.Callback):
        def on_epoch_end(self, stats, model) -> None:
            Clock.now += 11.0  # e.g. a checkpoint on a slow disk

    monkeypatch.setattr(gm.training, "time", Clock)
    model, history = gm.train(
        x, y, callbacks=[SlowCheckpoint()], **small_options("fc", epochs=3, max_seconds=10, val_split=0.2)
    )
    assert len(history) == 1 and history[0].n_train == 240 and history[0].val_loss is not None
    assert history[0].time_limit and model.metadata["status"] == "time_limit"
    assert model.metadata["history"][-1]["time_limit"]


def test_a_time_budget_belongs_to_one_call_not_to_the_resumed_recipe(data) -> None:
    x, y = data
    cut, h1 = gm.train(x, y, save_optimizer=True, **small_options("fc", epochs=3, max_seconds=1e-9))
    assert len(h1) == 1 and h1[0].time_limit and cut.metadata["config"]["max_seconds"] == 1e-9
    # resumed without a budget: the run goes on to its 3 epochs instead of stopping after one more batch
    done, h2 = gm.train(x, y, resume=cut, progress=False)
    assert [h.epoch for h in h2][-1] == 3 and not h2[-1].time_limit and done.metadata["status"] == "finished"
    assert done.metadata["config"]["max_seconds"] == 0.0
    # a budget may be given again on resume, and nothing else of the recipe
    again, h3 = gm.train(x, y, resume=cut, max_seconds=1e-9, progress=False)
    assert h3[-1].time_limit and again.metadata["status"] == "time_limit"
    with pytest.raises(ConfigError, match="threads and max_seconds may be given, not lr"):
        gm.train(x, y, resume=cut, lr=0.5, progress=False)


def test_changing_the_graph_during_training_is_a_config_error(data) -> None:
    x, y = data
    seen = []

    def on_epoch(_stats, model):
        with pytest.raises(ConfigError, match="graph") as info:
            model.set_graph("portable")
        seen.append(str(info.value))

    gm.train(x, y, on_epoch=on_epoch, **small_options("fc", epochs=1))
    assert len(seen) == 1
