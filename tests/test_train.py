"""train(): learning, history, determinism, optimizers and schedules, callbacks, progress and Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist
from ggml_mnist import EpochStats, Model, TrainConfig, TrainingDivergedError, evaluate, load_mnist, train
from ggml_mnist.data import fingerprint
from support.helpers import THREADS, conv_channels_of, hidden_of, small_options
from support.synthetic import SPLIT_FILES, make_synthetic


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=300, n_test=100)


@pytest.fixture(scope="module")
def data(synthetic_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (*load_mnist(synthetic_dir, "train"), *load_mnist(synthetic_dir, "test"))


def same_history(a: list[EpochStats], b: list[EpochStats]) -> bool:
    strip = [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in a]
    return strip == [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in b]


# ---- learning ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_training_learns_the_synthetic_task(arch: str, data: tuple) -> None:
    x, y, xt, yt = data
    model, history = train(x, y, **small_options(arch, epochs=3))
    assert isinstance(model, Model) and model.architecture == "ggml-mnist"
    assert [s.epoch for s in history] == [1, 2, 3]
    assert all(s.n_train == 300 and s.n_val == 0 and s.val_loss is None and s.val_acc is None for s in history)
    assert all(s.val_loss_unc is None and s.val_acc_unc is None and not s.interrupted for s in history)
    assert all(s.seconds > 0 and np.isfinite(s.train_loss) and s.train_loss_unc > 0 for s in history)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].train_acc >= 0.9
    result = evaluate(model, xt, yt)
    assert result.accuracy >= 0.9
    assert result.n == 100


def test_history_metadata(data: tuple) -> None:
    x, y, *_ = data
    model, history = train(x, y, **small_options("fc", seed=5))
    meta = model.metadata
    assert meta["seed"] == 5
    assert (
        meta["config"]
        == TrainConfig.defaults("fc")
        .replace(epochs=2, batch_size=20, threads=THREADS, hidden=32, seed=5, augment="none")
        .as_dict()
    )
    assert meta["history"] == [s.as_dict() for s in history]
    assert meta["dataset"] == {
        "n": 300,
        "n_train": 300,
        "n_val": 0,
        "image_size": [28, 28],
        "n_classes": 10,
        "source": "array",
        "fingerprint": fingerprint(x, y),
    }
    assert meta["ggml_version"] == ggml_mnist.ggml_version and meta["version"] == ggml_mnist.__version__


def test_validation_split(data: tuple) -> None:
    x, y, *_ = data
    _, history = train(x, y, **small_options("fc", val_split=0.2, epochs=3))
    for s in history:
        assert (s.n_train, s.n_val) == (240, 60)
        assert 0 <= s.val_acc <= 1 and 0 < s.val_loss < 10
        assert s.val_loss_unc > 0 and s.val_acc_unc >= 0
    assert history[-1].val_acc >= 0.9
    assert history[-1].val_loss < history[0].val_loss
    assert "| val loss" in history[-1].summary(3)


def test_incomplete_last_batch_is_dropped(data: tuple) -> None:
    x, y, *_ = data
    _, history = train(x[:250], y[:250], **small_options("fc", batch_size=40, epochs=1))
    assert history[0].n_train == 240  # six batches of 40


@pytest.mark.parametrize("arch", ["fc", "cnn"])
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 1e-3)])
def test_gradient_accumulation_matches_the_full_batch(arch: str, optimizer: str, lr: float, data: tuple) -> None:
    x, y, *_ = data
    full, h_full = train(x, y, **small_options(arch, optimizer=optimizer, lr=lr))
    accumulated, h_acc = train(x, y, **small_options(arch, optimizer=optimizer, lr=lr, physical_batch_size=5))
    assert [s.n_train for s in h_acc] == [300, 300]
    assert h_acc[-1].train_loss == pytest.approx(h_full[-1].train_loss, rel=1e-5)
    a, b = full.get_weights(), accumulated.get_weights()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=0, err_msg=name)


def test_accumulation_reports_whole_batches(data: tuple, tmp_path: Path) -> None:
    """Progress, the run log and stopping count optimizer steps, not the graph runs inside each."""
    import sqlite3

    x, y, *_ = data
    db = tmp_path / "run.sqlite"
    _, history = train(x, y, metrics=db, **small_options("fc", physical_batch_size=5, epochs=1))
    with sqlite3.connect(db) as con:
        batches = [b for (b,) in con.execute("SELECT batch FROM batches ORDER BY batch")]
        losses = [loss for (loss,) in con.execute("SELECT loss FROM batches ORDER BY batch")]
    assert batches == list(range(1, 300 // 20 + 1))
    assert np.mean(losses) == pytest.approx(history[0].train_loss, rel=1e-6)


def test_cpu_physical_batch_is_automatic() -> None:
    """On a CPU a large batch runs in parts of at most 128 images; elsewhere, or when asked, as given."""
    config = TrainConfig.defaults("fc")
    assert config.replace(batch_size=100).physical_on("CPU") == 100
    assert config.replace(batch_size=1000).physical_on("CPU") == 125
    assert config.replace(batch_size=256).physical_on("CPU") == 128
    assert config.replace(batch_size=1009).physical_on("CPU") == 1009  # a prime: no part fits, no accumulation
    assert config.replace(batch_size=1000).physical_on("CUDA0") == 1000
    assert config.replace(batch_size=1000, physical_batch_size=500).physical_on("CPU") == 500
    assert config.replace(batch_size=1000).physical_on("CPU", convolutional=False) == 1000  # dense layers: whole


def test_automatic_parts_train_like_the_whole_batch(data: tuple) -> None:
    x, y, *_ = data
    options = small_options("cnn", batch_size=300, epochs=3, lr=1e-2)
    whole, h_whole = train(x, y, **options, physical_batch_size=300)
    parts, h_parts = train(x, y, **options)  # 300 on a CPU: three parts of 100 (a convolutional network)
    assert [s.n_train for s in h_parts] == [300] * 3
    assert h_parts[-1].train_loss == pytest.approx(h_whole[-1].train_loss, rel=1e-5)
    a, b = whole.get_weights(), parts.get_weights()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=0, err_msg=name)
    assert any(not np.array_equal(a[name], b[name]) for name in a)  # the parts' gradients summed in another order


def test_sgd_learns(data: tuple) -> None:
    x, y, xt, yt = data
    model, history = train(x, y, **small_options("fc", optimizer="sgd", lr=0.5, epochs=3))
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert evaluate(model, xt, yt).accuracy >= 0.9


def test_schedules_and_warmup_change_the_result(data: tuple) -> None:
    x, y, *_ = data
    weights = {}
    for schedule, warmup in (("cosine", 0.0), ("linear", 0.0), ("constant", 0.0), ("constant", 1.0)):
        model, history = train(x, y, **small_options("fc", lr_schedule=schedule, warmup_epochs=warmup))
        assert np.isfinite(history[-1].train_loss)
        weights[schedule, warmup] = model.get_weights()["fc2.weight"]
    keys = list(weights)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.array_equal(weights[a], weights[b]), (a, b)


def test_weight_decay_shrinks_the_weights(data: tuple) -> None:
    x, y, *_ = data
    plain, _ = train(x, y, **small_options("fc", lr=2e-2, epochs=3, lr_schedule="constant"))
    decayed, _ = train(x, y, **small_options("fc", lr=2e-2, epochs=3, lr_schedule="constant", weight_decay=1.0))
    norm = {name: np.linalg.norm(w) for name, w in plain.get_weights().items()}
    for name, w in decayed.get_weights().items():
        assert np.linalg.norm(w) < 0.75 * norm[name], name


def test_n_classes_and_image_size_follow_the_data(data: tuple) -> None:
    x, y, xt, yt = data
    small, small_test = x[:, ::2, ::2], xt[:, ::2, ::2]  # 14x14 keeps the class squares
    model, _ = train(np.ascontiguousarray(small), y, n_classes=12, **small_options("cnn", epochs=8, lr=1e-2))
    assert model.n_classes == 12 and model.image_size == (14, 14)
    assert model.tensor_shapes()["dense.weight"] == (12, 3 * 3 * 4)
    assert model.architecture == "ggml-mnist"
    assert model.metadata["dataset"]["image_size"] == [14, 14]
    assert evaluate(model, small_test, yt).accuracy >= 0.8
    assert model.predict_proba(small_test).shape == (100, 12)


def test_data_from_idx_files_and_directories(synthetic_dir: Path, data: tuple) -> None:
    x, y, *_ = data
    reference, _ = train(x, y, **small_options("fc", epochs=1))
    images, labels = (synthetic_dir / name for name in SPLIT_FILES["train"])
    for args, kwargs, source in (
        ((images, labels), {}, str(images)),
        ((str(images), str(labels)), {}, str(images)),
        ((synthetic_dir,), {}, str(synthetic_dir)),
        ((), {"data_dir": synthetic_dir}, str(synthetic_dir)),
    ):
        model, _ = train(*args, **kwargs, **small_options("fc", epochs=1))
        assert model.metadata["dataset"]["source"] == source
        assert np.array_equal(model.get_weights()["fc1.weight"], reference.get_weights()["fc1.weight"])


def test_config_object_and_overrides(data: tuple) -> None:
    x, y, *_ = data
    config = TrainConfig.defaults("cnn").replace(epochs=1, batch_size=30, threads=THREADS, conv_channels=(2, 3))
    model, history = train(x, y, config=config, progress=False, seed=9)
    assert model.arch == "custom" and conv_channels_of(model) == (2, 3)
    assert len(history) == 1 and history[0].n_train == 300
    assert model.metadata["config"] == config.replace(seed=9).as_dict()
    model, _ = train(
        x,
        y,
        config=TrainConfig.defaults("fc").replace(epochs=1, batch_size=30, threads=THREADS),
        progress=False,
        hidden=8,
    )
    assert model.arch == "custom" and hidden_of(model) == 8


# ---- determinism -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["fc", "cnn"])
def test_same_seed_gives_bit_identical_models(arch: str, data: tuple) -> None:
    x, y, *_ = data
    options = small_options(arch, seed=11, val_split=0.1)
    a, ha = train(x, y, **options)
    b, hb = train(x, y, **options)
    c, hc = train(x, y, **{**options, "seed": 12})
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name
        assert not np.array_equal(wa[name], wc[name]), name
    assert same_history(ha, hb)
    assert not same_history(ha, hc)


# ---- callbacks, progress, Ctrl-C -------------------------------------------------------------------
def test_on_epoch_is_called_after_every_epoch(data: tuple) -> None:
    x, y, *_ = data
    seen: list[tuple[EpochStats, Model]] = []
    model, history = train(x, y, on_epoch=lambda stats, m: seen.append((stats, m)), **small_options("fc", epochs=3))
    assert [s for s, _ in seen] == history
    assert all(m is model for _, m in seen)


def test_on_epoch_exception_propagates(data: tuple) -> None:
    x, y, *_ = data
    calls = []

    def stop(stats: EpochStats, model: Model) -> None:
        calls.append(stats.epoch)
        raise KeyError("stop here")

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyError, match="stop here"):
        train(x, y, on_epoch=stop, **small_options("fc", epochs=3))
    assert calls == [1]
    assert signal.getsignal(signal.SIGINT) is handler


def test_progress_callback_exception_propagates(data: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, *_ = data
    batches = []

    def update(self: object, ibatch: int, nbatch: int, loss: float, acc: float) -> None:
        batches.append((ibatch, nbatch))
        if ibatch == 3:
            raise ZeroDivisionError("progress bar broke")

    monkeypatch.setattr(ggml_mnist.api.ProgressBar, "update", update)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(ZeroDivisionError, match="progress bar broke"):
        train(x, y, **small_options("fc", epochs=3, progress=True))
    assert batches == [(1, 15), (2, 15), (3, 15)]  # training stopped at the failing batch
    assert signal.getsignal(signal.SIGINT) is handler


def test_progress_prints_one_summary_per_epoch(data: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    x, y, *_ = data
    train(x, y, **small_options("fc", epochs=2, progress=True))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2: train loss ") and lines[1].startswith("epoch 2/2: train loss ")
    train(x, y, **small_options("fc", epochs=1, progress=False))
    assert capsys.readouterr().err == ""


def test_ctrl_c_stops_training_and_returns_the_model(data: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    """A SIGINT from another thread during a long run stops it after the current batch."""
    x, y, xt, yt = data
    assert threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    timers = []

    def on_epoch(stats: EpochStats, model: Model) -> None:
        if stats.epoch == 3:  # the interrupt handler is surely installed now
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            timers.append(timer)
        if time.monotonic() - started > 60:
            raise AssertionError("SIGINT did not stop training")

    model, history = train(x, y, on_epoch=on_epoch, **small_options("fc", epochs=100_000, batch_size=10))
    assert timers and 3 < len(history) < 100_000
    # the signal cuts the epoch it lands in, or ends the run between two epochs (in on_epoch, say)
    assert model.metadata["status"] == "interrupted" and not any(s.interrupted for s in history[:-1])
    assert history[-1].summary(100_000).endswith("(interrupted)") == history[-1].interrupted
    assert model.metadata["history"][-1]["interrupted"] is history[-1].interrupted
    assert evaluate(model, xt, yt).accuracy >= 0.9  # usable, and trained
    assert signal.getsignal(signal.SIGINT) is handler
    assert "stopping after the current batch" in capsys.readouterr().err


# ---- divergence ------------------------------------------------------------------------------------
def test_divergence_raises_with_advice(data: tuple) -> None:
    x, y, *_ = data
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingDivergedError, match=r"loss became NaN at batch \d+; .*use eps > 0") as info:
        train(x, y, **small_options("fc", eps=0.0, batch_size=10))
    assert isinstance(info.value, ArithmeticError)
    assert signal.getsignal(signal.SIGINT) is handler
    model, _ = train(x, y, **small_options("fc", epochs=1))  # the process carries on
    assert np.isfinite(model.get_weights()["fc1.weight"]).all()


def test_an_exploding_learning_rate_is_detected_as_divergence(data: tuple) -> None:
    images, labels = data[0], data[1]
    with pytest.raises(
        TrainingDivergedError,
        match=r"training diverged: the loss became .* \(above max_loss 100\) at batch \d+; "
        r"the learning rate 1000 is too high, try 10x lower",
    ) as info:
        train(images, labels, arch="fc", epochs=2, lr=1e3, hidden=16, threads=1, progress=False)
    assert isinstance(info.value, ArithmeticError)
