"""Threads: distinct models train concurrently with the same results as one after the other, and the
native calls release the GIL so that other Python threads run meanwhile."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
from ggml_mnist import EpochStats, Model, load_mnist, train
from ggml_mnist._ffi import ffi, lib, ptr
from helpers import SMALL, THREADS, small_options
from synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(make_synthetic(tmp_path_factory.mktemp("data"), n_train=300, n_test=10), "train")


JOBS = [small_options("fc", seed=1, epochs=3, val_split=0.1), small_options("cnn", seed=2, epochs=2, val_split=0.1)]


def history_without_time(history: list[EpochStats]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in history]


def run_in_threads(fns: list[Callable[[], Any]]) -> tuple[list[Any], list[tuple[float, float]]]:
    """Start fns together in threads; return their results and (start, end) times."""
    results: list[Any] = [None] * len(fns)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(fns)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(fns))

    def run(i: int) -> None:
        try:
            barrier.wait()
            t0 = time.perf_counter()
            results[i] = fns[i]()
            spans[i] = (t0, time.perf_counter())
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results, spans


def test_concurrent_training_is_bit_identical_to_sequential(data: tuple) -> None:
    x, y = data
    sequential = [train(x, y, **job) for job in JOBS]
    concurrent, spans = run_in_threads([lambda job=job: train(x, y, **job) for job in JOBS])
    for (model_a, history_a), (model_b, history_b) in zip(sequential, concurrent):
        wa, wb = model_a.get_weights(), model_b.get_weights()
        assert all(np.array_equal(wa[name], wb[name]) for name in wa)
        assert history_without_time(history_a) == history_without_time(history_b)
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the two trainings overlapped in time


def test_a_model_per_thread_predicts_like_alone(data: tuple) -> None:
    x, _ = data
    models = [Model.create(arch, threads=THREADS, seed=i, **SMALL[arch]) for i, arch in enumerate(["fc", "cnn", "fc", "cnn"])]
    alone = [m.predict_proba(x) for m in models]
    together, _ = run_in_threads([lambda m=m: [m.predict_proba(x) for _ in range(5)] for m in models])
    for expected, runs in zip(alone, together):
        assert all(np.array_equal(expected, r) for r in runs)


class Ticker:
    """A pure-Python thread that records the time every few thousand loop iterations."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            if n % 2000 == 0:
                self.times.append(time.perf_counter())

    def __enter__(self) -> "Ticker":
        self._thread.start()
        while not self.times:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def ticks_within(self, start: float, end: float) -> int:
        """Ticks in the middle half of [start, end]: a thread that held the GIL for the whole span allows none."""
        quarter = (end - start) / 4
        return sum(start + quarter <= t <= end - quarter for t in self.times)


def timed(call: Callable[[], int]) -> tuple[float, float]:
    t0 = time.perf_counter()
    assert call() == lib.GMN_OK
    return t0, time.perf_counter()


def test_native_calls_release_the_gil() -> None:
    """A Python thread keeps running during one long native predict and one long native training epoch."""
    model = Model.create("fc", hidden=256, threads=THREADS)
    n = 30000
    images = np.random.default_rng(0).integers(0, 256, size=(n, 784), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.int32)
    probs = np.empty((n, 10), np.float32)
    dataset = ffi.new("gmn_dataset **")
    assert lib.gmn_dataset_init(ptr(images, "uint8_t *"), ptr(labels, "int32_t *"), n, 784, 10, dataset) == lib.GMN_OK
    dataset = ffi.gc(dataset[0], lib.gmn_dataset_free)
    config = ffi.new("struct gmn_train_config *", dict(
        optimizer=0, lr=1e-3, lr_min_ratio=0.0, schedule=0, warmup_steps=0, total_steps=100, beta1=0.9, beta2=0.999,
        eps=1e-8, weight_decay=0.0, batch_size=500, physical_batch_size=500, seed=1, max_loss=0.0))
    assert lib.gmn_model_train_init(model._handle, config) == lib.GMN_OK
    idx = np.arange(n, dtype=np.int64)
    result = ffi.new("struct gmn_epoch_result *")
    with Ticker() as ticker:
        predict = timed(lambda: lib.gmn_model_predict(model._handle, ptr(images, "void *"), 0, n, ptr(probs, "float *")))
        epoch = timed(lambda: lib.gmn_model_train_epoch(model._handle, dataset, ptr(idx, "int64_t *"), n, ffi.NULL, 0,
                                                        ffi.NULL, ffi.NULL, result))  # no callback: one native call
    for name, (start, end) in (("predict", predict), ("train_epoch", epoch)):
        assert end - start > 0.05, f"{name} was too short to tell"
        assert ticker.ticks_within(start, end) >= 3, f"no Python ran during {name} ({end - start:.3f}s)"


def test_a_busy_core_changes_no_bit_of_training() -> None:
    """A run on 2 threads times its batches and runs on one thread while that is faster (another process keeping
    a core busy): the weights are those of a run on one thread, bit for bit, whichever team each batch ran on."""
    x = np.random.default_rng(3).integers(0, 256, size=(1200, 28, 28), dtype=np.uint8)
    y = np.arange(1200) % 10
    options = dict(arch="cnn", conv_channels=(4, 8), epochs=2, batch_size=20, seed=4, progress=False)
    alone = train(x, y, threads=1, **options)[0].get_weights()
    hog = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 60\nwhile time.time() < t: pass"])
    try:
        busy = train(x, y, threads=2, **options)[0].get_weights()
    finally:
        hog.kill()
        hog.wait()
    assert all(np.array_equal(alone[k], busy[k]) for k in alone)
