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
from helpers import THREADS, small_options

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
Y = np.arange(60) % 10


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
    model.save(tmp_path / "link.gguf")
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
    assert out.stdout.startswith("refused: model_save: writing 'never.gguf' needs about 4") and "MB of memory" in out.stdout


def test_the_model_class_takes_no_raw_handles() -> None:
    model = Model.create("fc", hidden=4, threads=THREADS)
    with pytest.raises(TypeError, match=r"use gm.Model.create\(...\), gm.Model.load\(path\) or gm.train\(...\)"):
        Model(model.handle)


# ---- CLI outputs ------------------------------------------------------------------------------------------
def test_the_output_may_not_be_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_idx(tmp_path / "x.idx", X)
    write_idx(tmp_path / "y.idx", Y.astype(np.uint8))
    before = (tmp_path / "x.idx").read_bytes()
    assert cli.train_main(["fc", str(tmp_path / "x.idx"), str(tmp_path / "x.idx"), str(tmp_path / "y.idx"), "--epochs", "1"]) == 1
    assert "is the input file" in capsys.readouterr().err and (tmp_path / "x.idx").read_bytes() == before


# ---- streams and files rewritten under us --------------------------------------------------------------
def test_a_fifo_without_a_writer_fails_at_once_and_with_one_it_reads(tmp_path: Path) -> None:
    fifo = tmp_path / "images"
    os.mkfifo(fifo)
    with pytest.raises(gm.IdxFormatError, match="data ends after 0 bytes"):
        read_idx(fifo)  # no writer: must not wait for one
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
    model, history = train(X, Y, arch="fc", hidden=np.int32(8), epochs=np.int64(1), batch_size=np.int64(20),
                           lr=np.float32(1e-3), seed=np.uint64(1), val_split=np.float32(0.5), threads=np.int64(1),
                           progress=False)
    assert history[0].n_val == 30 and model.metadata["config"]["seed"] == 1
    for bad, match in [({"epochs": True}, r"epochs must be a whole number in \[1, 1000000\], got True"),
                       ({"physical_batch_size": 0}, r"physical_batch_size must be a whole number >= 1"),
                       ({"batch_size": True}, r"batch_size must be in \[1, 1000000\], got True")]:
        with pytest.raises(ConfigError, match=match):
            train(X, Y, **small_options("fc", **bad))
