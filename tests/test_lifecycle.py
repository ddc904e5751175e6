"""Copies, pickles, closing from another thread and fork: model lifetimes never crash or hang the process."""

from __future__ import annotations

import copy
import gc
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from ggml_mnist import ConfigError, Model, train
from ggml_mnist._ffi import lib
from support.helpers import SMALL, THREADS, images, spread_weights


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle", "method"])
def test_a_copy_outlives_its_original(how: str) -> None:
    original = Model.create("cnn", **SMALL["cnn"], threads=THREADS)
    spread_weights(original, scale=2.0)
    original.metadata = {"note": "kept"}
    x = images()
    expected = original.predict_proba(x)
    twin = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "method": lambda m: m.copy(),
    }[how](original)
    original.close()
    del original
    gc.collect()
    Model.create("fc", threads=THREADS).predict_proba(x)  # reuses the freed memory
    assert np.array_equal(twin.predict_proba(x), expected)
    assert twin.metadata["note"] == "kept" and twin.layers[0].out_channels == SMALL["cnn"]["conv_channels"][0]
    spread_weights(twin, scale=1.0, seed=9)
    assert not np.array_equal(twin.predict_proba(x), expected)


def test_copying_a_closed_model_raises() -> None:
    model = Model.create("fc", threads=THREADS)
    model.close()
    with pytest.raises(ValueError, match="this Model has been closed"):
        copy.copy(model)


def test_closing_from_another_thread_while_training_raises_instead_of_crashing() -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(3000, 28, 28), dtype=np.uint8)
    y = np.arange(3000) % 10
    closers: list[threading.Thread] = []

    def close_between_epochs(stats, model: Model) -> None:
        if stats.epoch == 1:  # another thread closes the model; the next epoch must raise, not crash
            closers.append(threading.Thread(target=model.close))
            closers[-1].start()
            closers[-1].join()

    with pytest.raises(ValueError, match="this Model has been closed"):
        train(
            x,
            y,
            arch="cnn",
            **SMALL["cnn"],
            epochs=3,
            batch_size=50,
            threads=THREADS,
            progress=False,
            on_epoch=close_between_epochs,
        )

    def close_during_an_epoch(stats, model: Model) -> None:
        if stats.epoch == 1:  # the close waits for the running native call; whichever comes next must not crash
            closers.append(threading.Thread(target=lambda: (time.sleep(0.05), model.close())))
            closers[-1].start()

    try:
        model, _ = train(
            x,
            y,
            arch="cnn",
            **SMALL["cnn"],
            epochs=4,
            batch_size=50,
            threads=THREADS,
            progress=False,
            on_epoch=close_during_an_epoch,
        )
    except ValueError as exc:
        assert "this Model has been closed" in str(exc)
    else:
        closers[-1].join()
        with pytest.raises(ValueError, match="this Model has been closed"):
            model.predict(x[:1])
    closers[-1].join()


def test_two_threads_using_one_model_take_turns() -> None:
    model = Model.create("cnn", **SMALL["cnn"], threads=THREADS)
    x = images(500)
    expected = model.predict_proba(x)
    results: list[np.ndarray] = []
    workers = [threading.Thread(target=lambda: results.append(model.predict_proba(x))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


SWEEP = textwrap.dedent("""
    import multiprocessing as mp, numpy as np, ggml_mnist as gm
    from ggml_mnist._ffi import lib
    rng = np.random.default_rng(0)
    y = np.arange(400) % 4
    x = (rng.integers(0, 60, size=(400, 28, 28)) + (y * 60)[:, None, None]).astype(np.uint8)

    def job(lr, threads=2):
        model, _ = gm.train(x, y, arch="fc", hidden=16, epochs=2, batch_size=20, lr=lr, threads=threads, progress=False)
        return lib.gmn_thread_limit(), model.predict_proba(x).tolist()

    if __name__ == "__main__":
        job(1e-3)  # the parent runs ggml on two threads first: OpenMP's pool exists before the fork
        with mp.get_context("fork").Pool(2) as pool:
            forked = pool.map(job, [1e-3, 3e-3, 1e-2])
        alone = [job(lr, threads=1) for lr in [1e-3, 3e-3, 1e-2]]
        print([limit for limit, _ in forked], [a[1] == f[1] for a, f in zip(alone, forked)], alone[0][0])
""")


def test_multiprocessing_workers_forked_after_training_do_not_hang(tmp_path) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    # each worker ran on one thread and trained exactly what one thread trains in the parent
    assert out.stdout.strip() == "[1, 1, 1] [True, True, True] 0"
    assert lib.gmn_thread_limit() == 0  # this process was not forked


@pytest.mark.parametrize("call", ["close", "release_training_state"])
def test_closing_the_model_inside_on_batch_end_raises_instead_of_crashing(call: str) -> None:
    """on_batch_end runs inside the shim's epoch call, on the thread that holds the model's (reentrant) lock: freeing
    the model or its training state there would pull them from under that call, so both refuse."""
    x, y = images(40, (6, 6)), np.arange(40) % 3
    refused: list[BaseException] = []

    class Closer:
        batch_interval = 0

        def on_batch_end(self, batch, model: Model) -> None:
            try:
                getattr(model, call)()
            except ConfigError as exc:
                refused.append(exc)
                raise

    with pytest.raises(ConfigError, match=rf"{call}\(\) cannot run inside a training callback") as caught:
        train(x, y, arch="fc", hidden=4, epochs=2, batch_size=10, threads=THREADS, progress=False, callbacks=[Closer()])
    assert refused == [caught.value] and "return False or raise StopTraining" in str(caught.value)
