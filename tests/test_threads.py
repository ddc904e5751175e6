"""Threads: distinct models train concurrently with the same results as one after the other, and the
native calls release the GIL so that other Python threads run meanwhile. Nothing here measures time."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, Callable

import numpy as np
import pytest

from ggml_mnist import EpochStats, Model, load_mnist, train
from ggml_mnist._ffi import ffi, lib, ptr
from support.helpers import SMALL, THREADS, small_options
from support.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(make_synthetic(tmp_path_factory.mktemp("data"), n_train=300, n_test=10), "train")


JOBS = [small_options("fc", seed=1, epochs=3, val_split=0.1), small_options("cnn", seed=2, epochs=2, val_split=0.1)]


def history_without_time(history: list[EpochStats]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.as_dict().items() if k != "seconds"} for s in history]


def run_in_threads(fns: list[Callable[[], Any]]) -> list[Any]:
    """Start fns together in threads; return their results."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(fns))

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_concurrent_training_is_bit_identical_to_sequential(data: tuple) -> None:
    x, y = data
    sequential = [train(x, y, **job) for job in JOBS]
    # each run waits after its first epoch until the other has one too: both must be inside train() at once
    meet = threading.Barrier(len(JOBS), timeout=300)
    met: list[int] = []

    def meet_once(stats: EpochStats, _model: Any) -> None:
        if stats.epoch == 1:
            meet.wait()  # BrokenBarrierError (the test fails) if the other run cannot get going meanwhile
            met.append(stats.epoch)

    concurrent = run_in_threads([lambda job=job: train(x, y, on_epoch=meet_once, **job) for job in JOBS])
    assert met == [1, 1]  # the two trainings overlapped
    for (model_a, history_a), (model_b, history_b) in zip(sequential, concurrent):
        wa, wb = model_a.get_weights(), model_b.get_weights()
        assert all(np.array_equal(wa[name], wb[name]) for name in wa)
        assert history_without_time(history_a) == history_without_time(history_b)


def test_a_model_per_thread_predicts_like_alone(data: tuple) -> None:
    x, _ = data
    models = [
        Model.create(arch, threads=THREADS, seed=i, **SMALL[arch]) for i, arch in enumerate(["fc", "cnn", "fc", "cnn"])
    ]
    alone = [m.predict_proba(x) for m in models]
    together = run_in_threads([lambda m=m: [m.predict_proba(x) for _ in range(5)] for m in models])
    for expected, runs in zip(alone, together):
        assert all(np.array_equal(expected, r) for r in runs)


def python_runs_during(call: Callable[[], int], rounds: int = 20) -> bool:
    """Whether this thread runs Python while another thread is inside ``call`` (a native call), repeated up to
    ``rounds`` times until it does.

    The switch interval is made so long that the worker keeps the GIL from its start until it blocks or a native
    call releases it: this thread, waiting in ``start()`` for the worker to begin, runs again during a call only if
    the call released the GIL, and otherwise only after the worker is done. No clock is read.
    """
    inside, seen, done = threading.Event(), threading.Event(), threading.Event()
    statuses: list[int] = []

    def work() -> None:
        for _ in range(rounds):
            inside.set()
            statuses.append(call())
            inside.clear()
            if seen.is_set():
                break
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()  # returns once the worker lets go of the GIL: inside a call that releases it, or done
        if inside.is_set() and not done.is_set():
            seen.set()
        worker.join(timeout=300)
    finally:
        sys.setswitchinterval(interval)
    assert statuses and all(s == lib.GMN_OK for s in statuses), statuses
    return seen.is_set()


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
    config = ffi.new(
        "struct gmn_train_config *",
        dict(
            optimizer=0,
            lr=1e-3,
            lr_min_ratio=0.0,
            schedule=0,
            warmup_steps=0,
            total_steps=100,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            batch_size=500,
            physical_batch_size=500,
            seed=1,
            max_loss=0.0,
        ),
    )
    assert lib.gmn_model_train_init(model._handle, config) == lib.GMN_OK
    idx = np.arange(n, dtype=np.int64)
    result = ffi.new("struct gmn_epoch_result *")
    assert python_runs_during(
        lambda: lib.gmn_model_predict(model._handle, ptr(images, "void *"), 0, n, ptr(probs, "float *"))
    ), "no Python ran during predict"
    assert python_runs_during(
        lambda: lib.gmn_model_train_epoch(
            model._handle, dataset, ptr(idx, "int64_t *"), n, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL, result
        )
    ), "no Python ran during train_epoch"  # no callback: one native call


def test_the_gil_check_can_fail() -> None:
    """python_runs_during tells a call that holds the GIL: a pure-Python loop (it never releases it)."""

    def busy() -> int:
        total = 0
        for i in range(200_000):
            total += i
        return lib.GMN_OK

    assert not python_runs_during(busy, rounds=3)


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
