"""Nothing lost, nothing poisoned: saves, outputs, streams and numeric guards under hostile use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import ggml_mnist as gm
from ggml_mnist import ConfigError, Model, ModelIOError, TrainingDivergedError, cli, load, read_idx, train, write_idx
from support.helpers import THREADS, small_options

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
Y = np.arange(60) % 10
# one quiet epoch of a small fc, for the tests that only need mnist-train to get through its input
TINY_RUN = ["--epochs", "1", "--hidden", "8", "--batch-size", "20", "--threads", "1", "--quiet"]


# ---- saves --------------------------------------------------------------------------------------------


def test_a_device_is_never_replaced_and_a_symlink_saves_to_its_target(tmp_path: Path) -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(ModelIOError, match=r"'/dev/null' is not a regular file \(a device, FIFO or socket\)"):
        model.save("/dev/null")
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ModelIOError, match="is not a regular file"):
        model.save(fifo)
    (tmp_path / "real.gguf").write_bytes(b"old")
    (tmp_path / "link.gguf").symlink_to(tmp_path / "real.gguf")
    with pytest.raises(ModelIOError, match="already exists and is a file of another kind"):
        model.save(tmp_path / "link.gguf")  # the link's target is not a model: replaced only with force
    model.save(tmp_path / "link.gguf", force=True)
    assert (tmp_path / "link.gguf").is_symlink() and load(tmp_path / "real.gguf").layers == model.layers
    (tmp_path / "dangling.gguf").symlink_to(tmp_path / "nowhere" / "x.gguf")
    with pytest.raises(ModelIOError, match="is a symbolic link to a missing file"):
        model.save(tmp_path / "dangling.gguf")


@pytest.mark.parametrize("key", ["hidden", "n_classes", "image_width", "layers.units", "layers"])
def test_reserved_metadata_keys_are_refused_and_save_does_not_change_the_model(key: str, tmp_path: Path) -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(ConfigError, match=rf"metadata key '{key}' is reserved for the file's own description"):
        model.save(tmp_path / "m.gguf", metadata={key: 500})
    assert not (tmp_path / "m.gguf").exists()
    model.save(tmp_path / "m.gguf", metadata={"note": "once"})
    assert model.metadata == {} and load(tmp_path / "m.gguf").metadata == {"note": "once"}
    model.save(tmp_path / "m.gguf")
    assert load(tmp_path / "m.gguf").metadata == {}


def test_names_up_to_255_bytes_save(tmp_path: Path) -> None:
    name = "m" * 250 + ".gguf"
    Model.create("fc", hidden=4, threads=THREADS).save(tmp_path / name)
    assert load(tmp_path / name).n_classes == 10 and sorted(os.listdir(tmp_path)) == [name]


def test_a_save_without_memory_for_it_raises_instead_of_aborting() -> None:
    code = textwrap.dedent("""
        import resource, ggml_mnist as gm
        model = gm.Model.create("fc", hidden=65536, threads=1)        # 205 MB of weights
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (300 << 20), resource.RLIM_INFINITY))
        try:
            model.save("never.gguf")
        except gm.OutOfMemoryError as exc:
            print("refused:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        out.stdout.startswith("refused: model_save: writing 'never.gguf' needs about 4")
        and "MB of memory" in out.stdout
    )


def test_the_model_class_takes_no_raw_handles() -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(TypeError, match=r"use gm.Model.create\(...\), gm.Model.load\(path\) or gm.train\(...\)"):
        Model(model._handle)


# ---- CLI outputs ------------------------------------------------------------------------------------------
def test_the_output_may_not_be_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_idx(tmp_path / "x.idx", X)
    write_idx(tmp_path / "y.idx", Y.astype(np.uint8))
    before = (tmp_path / "x.idx").read_bytes()
    assert (
        cli.train_main(
            ["fc", str(tmp_path / "x.idx"), str(tmp_path / "x.idx"), str(tmp_path / "y.idx"), "--epochs", "1"]
        )
        == 1
    )
    assert "is the input file" in capsys.readouterr().err and (tmp_path / "x.idx").read_bytes() == before


# ---- streams and files rewritten under us --------------------------------------------------------------
def test_a_fifo_without_a_writer_fails_and_with_a_late_one_it_reads(tmp_path: Path) -> None:
    fifo = tmp_path / "images"
    os.mkfifo(fifo)
    with pytest.raises(
        gm.IdxFormatError, match=r"nothing wrote to this pipe within 5 s; start the program that feeds it"
    ):
        read_idx(fifo)  # no writer: gives up after a few seconds instead of waiting for good
    write_idx(tmp_path / "x.idx.gz", X)
    data = (tmp_path / "x.idx.gz").read_bytes()

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        np.testing.assert_array_equal(read_idx(fifo), X)  # like <(cat x.idx.gz)
    finally:
        thread.join(timeout=30)


def test_a_file_truncated_after_reading_does_not_kill_the_process(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    write_idx(path, X)
    images = read_idx(path)
    with open(path, "r+b") as f:
        f.truncate(16)
    assert int(images.astype(np.int64).sum()) == int(X.astype(np.int64).sum())


# ---- numeric guards and arguments ------------------------------------------------------------------------
def test_a_step_that_ruins_the_weights_is_divergence(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match="after the last step of the epoch the loss is"):
        train(X, Y, **small_options("fc", epochs=1, batch_size=60, optimizer="sgd", lr=1e20, lr_schedule="constant"))


def test_numpy_scalars_are_numbers_and_bools_are_not() -> None:
    model, history = train(
        X,
        Y,
        arch="fc",
        hidden=np.int32(8),
        epochs=np.int64(1),
        batch_size=np.int64(20),
        lr=np.float32(1e-3),
        seed=np.uint64(1),
        val_split=np.float32(0.5),
        threads=np.int64(1),
        progress=False,
    )
    assert history[0].n_val == 30 and model.metadata["config"]["seed"] == 1
    for bad, match in [
        ({"epochs": True}, r"epochs must be a whole number in \[1, 1000000\], got True"),
        ({"physical_batch_size": 0}, r"physical_batch_size must be a whole number >= 1"),
        ({"batch_size": True}, r"batch_size must be in \[1, 1000000\], got True"),
    ]:
        with pytest.raises(ConfigError, match=match):
            train(X, Y, **small_options("fc", **bad))


# ---- found in review ------------------------------------------------------------------------------------
def test_a_run_stopped_on_a_ruinous_step_is_divergence_and_nan_weights_never_save(tmp_path: Path) -> None:
    from ggml_mnist._ffi import ffi, lib

    model = Model.create("fc", hidden=8, threads=THREADS)
    x = np.ascontiguousarray(X.reshape(60, -1))
    y = Y.astype(np.int32)
    ds = ffi.new("gmn_dataset **")
    assert (
        lib.gmn_dataset_init(
            ffi.cast("uint8_t *", ffi.from_buffer(x)), ffi.cast("int32_t *", ffi.from_buffer(y)), 60, 784, 10, ds
        )
        == 0
    )
    cfg = ffi.new(
        "struct gmn_train_config *",
        dict(
            optimizer=1,
            lr=1e20,
            lr_min_ratio=0,
            schedule=0,
            warmup_steps=0,
            total_steps=6,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0,
            batch_size=10,
            physical_batch_size=10,
            seed=1,
            max_loss=100,
        ),
    )
    assert lib.gmn_model_train_init(model._handle, cfg) == 0
    stop = ffi.callback("int(void *, int, int64_t, int64_t, double, double)", lambda *a: 1)  # stop after batch 1
    idx = np.arange(60, dtype=np.int64)
    result = ffi.new("struct gmn_epoch_result *")
    status = lib.gmn_model_train_epoch(
        model._handle,
        ds[0],
        ffi.cast("int64_t *", ffi.from_buffer(idx)),
        60,
        ffi.NULL,
        ffi.NULL,
        0,
        stop,
        ffi.NULL,
        result,
    )
    lib.gmn_dataset_free(ds[0])
    assert status == lib.GMN_E_DIVERGED
    with pytest.raises(TrainingDivergedError):
        model.save(tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_an_output_symlink_to_nowhere_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_idx(tmp_path / "x.idx", X)
    write_idx(tmp_path / "y.idx", Y.astype(np.uint8))
    (tmp_path / "out.gguf").symlink_to(tmp_path / "missing" / "m.gguf")
    assert cli.train_main(["fc", str(tmp_path / "out.gguf"), str(tmp_path / "x.idx"), str(tmp_path / "y.idx")]) == 1
    err = capsys.readouterr().err
    assert "is a symbolic link to a missing file" in err and "epoch" not in err
    long_name = tmp_path / ("m" * 250 + ".gguf")
    assert (
        cli.train_main(
            [
                "fc",
                str(long_name),
                str(tmp_path / "x.idx"),
                str(tmp_path / "y.idx"),
                *TINY_RUN,
            ]
        )
        == 0
    )
    assert load(long_name).n_classes == 10


def test_training_from_pipes(tmp_path: Path) -> None:
    """Like mnist-train fc out.gguf <(zcat images.gz) <(zcat labels.gz): each pipe can be read once only."""
    write_idx(tmp_path / "x.idx.gz", X)
    write_idx(tmp_path / "y.idx.gz", Y.astype(np.uint8))
    writers = []
    for name in ("x", "y"):
        os.mkfifo(tmp_path / f"{name}.pipe")
        data = (tmp_path / f"{name}.idx.gz").read_bytes()

        def feed(path=tmp_path / f"{name}.pipe", data=data) -> None:
            with open(path, "wb") as f:
                f.write(data)

        writers.append(threading.Thread(target=feed))
        writers[-1].start()
    try:
        assert (
            cli.train_main(
                [
                    "fc",
                    str(tmp_path / "m.gguf"),
                    str(tmp_path / "x.pipe"),
                    str(tmp_path / "y.pipe"),
                    *TINY_RUN,
                ]
            )
            == 0
        )
    finally:
        for w in writers:
            w.join(timeout=30)
    assert load(tmp_path / "m.gguf").metadata["dataset"]["n"] == 60


def test_export_checks_the_network_at_its_own_image_size(tmp_path: Path) -> None:
    layers = [
        gm.layers.Conv2d(2, 5),
        gm.layers.MaxPool2d(2),
        gm.layers.Conv2d(2, 5),
        gm.layers.MaxPool2d(2),
        gm.layers.Conv2d(2, 5),
        gm.layers.Dense(),
    ]  # impossible at 28x28, fine at 64x64
    model = Model.create(layers, image_size=(64, 64), threads=THREADS)
    exported = gm.export_gguf(tmp_path / "e.gguf", layers, model.get_weights(), image_size=(64, 64))
    assert exported.image_size == (64, 64) and exported.layers == model.layers


def test_numbers_of_any_kind_in_layers_and_seeds() -> None:
    layers = [gm.layers.Dense(np.int64(8)), gm.layers.Dropout(np.float32(0.25)), gm.layers.Dense()]
    model = Model.create(layers, seed=np.int64(3), threads=THREADS)
    assert model.layers[1].p == 0.25 and model.layers[0].units == 8
    assert gm.TrainConfig.defaults("cnn").replace(conv_channels=np.int64(4)).conv_channels == (4,)
    with pytest.raises(ConfigError, match="conv_channels must be whole numbers"):
        gm.TrainConfig.defaults("cnn").replace(conv_channels=1.5)


def test_default_names_skip_names_already_taken() -> None:
    model = Model.create([gm.layers.Dense(8), gm.layers.Dense(6, name="fc1"), gm.layers.Dense()], threads=THREADS)
    assert [x.name for x in model.layers] == ["fc2", "fc1", "fc3"]


def test_exiting_while_daemon_threads_predict_and_train_does_not_crash() -> None:
    """Process exit tears down ggml's static state: a native call still running in a daemon thread must end
    first (it crashed about one exit in ten before the models were quiesced at exit)."""
    code = textwrap.dedent("""
        import threading, time, numpy as np, ggml_mnist as gm
        x = np.zeros((3000, 28, 28), np.uint8); y = np.arange(3000) % 10
        model = gm.Model.create("cnn", threads=1)
        started = threading.Event()
        def predict():
            while True:
                started.set()
                model.predict(x)
        def fit():
            gm.train(x, y, arch="fc", epochs=50, batch_size=100, threads=1, progress=False)
        def create():
            while True:
                gm.Model.create("cnn", threads=1).predict(x[:10])
        for target in (predict, fit, create):
            threading.Thread(target=target, daemon=True).start()
        started.wait()
        time.sleep(0.3)
        print("exiting")
    """)
    for _ in range(6):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "exiting", (out.returncode, out.stderr[-2000:])


def test_a_child_forked_while_another_thread_predicts_can_predict() -> None:
    code = textwrap.dedent("""
        import os, threading, numpy as np, ggml_mnist as gm
        model = gm.Model.create("cnn", threads=1)
        x = np.zeros((3000, 28, 28), np.uint8)
        busy = threading.Event()
        def work():
            while not busy.is_set():
                model.predict(x)
        t = threading.Thread(target=work, daemon=True)
        t.start()
        forked = 0
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                model.predict(x[:2])
                os._exit(0)
            forked += os.waitpid(pid, 0)[1] == 0
        busy.set()
        print(forked)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr[-2000:]
