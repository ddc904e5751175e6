"""Workloads that run in a child process and report memory or survive signals.

Shared by the reliability tests (small sizes, in CI) and tests/long/reliability_long.py (full sizes).
Each child prints one JSON object as its last line of output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

# Measuring helpers pasted into every child: resident set size now, and the peak since reset_peak().
_MEASURE = textwrap.dedent("""
    import json, os, resource, sys
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM); without it the peak below is an upper bound
        except OSError:
            pass
    def peak():  # VmHWM, which reset_peak resets (ru_maxrss also keeps peaks seen when a thread exited)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
""")


def run_child(body: str, *args: Any, timeout: float = 300, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run a Python child (the measuring helpers, then body) with args in sys.argv and extra environment variables;
    return its last JSON line."""
    code = _MEASURE + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise AssertionError(f"child failed with status {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


# ---- repeated train / evaluate / save / load cycles --------------------------------------------------------
_CYCLES = """
    import tempfile
    import numpy as np
    import ggml_mnist as gm
    cycles = int(sys.argv[1])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    y = np.arange(100) % 10
    path = os.path.join(tempfile.mkdtemp(), "m.gguf")
    archs = (("fc", dict(hidden=8)), ("cnn", dict(conv_channels=(2, 2))))
    after = []
    for i in range(cycles):
        for arch, shape in archs:
            model, _ = gm.train(x, y, arch=arch, epochs=1, batch_size=20, val_split=0.2, threads=1, progress=False,
                                seed=i, **shape)
            gm.evaluate(model, x, y)
            model.save(path, metadata={"cycle": i})
            with gm.load(path, threads=1) as loaded:
                loaded.predict(x[:5])
        after.append(rss())
    os.unlink(path)
    print(json.dumps({"rss": after}))
"""


# glibc raises its mmap threshold each time a large mmapped block is freed, after which blocks of that size come
# from the heap, whose top then moves with fragmentation: RSS steps up by a few MB once and wanders. A fixed
# threshold keeps large blocks in their own mappings, so RSS then shows leaks rather than allocator policy.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_per_cycle(cycles: int, env: Optional[dict[str, str]] = None) -> list[int]:
    """RSS in bytes after each of ``cycles`` cycles, each training, evaluating, saving and loading a tiny fc and cnn
    on 100 images in one child process (threads=1)."""
    return run_child(_CYCLES, cycles, env=env)["rss"]


# ---- evaluation and training on large datasets ----------------------------------------------------------------
_EVAL = """
    import numpy as np
    import ggml_mnist as gm
    n = int(sys.argv[1])
    model = gm.Model.create("fc", hidden=8, threads=1, seed=1)
    # n distinct images from n + 784 bytes: image i is the 784 bytes at offset i (overlapping windows)
    pixels = np.random.default_rng(0).integers(0, 256, n + 784, dtype=np.uint8)
    images = np.lib.stride_tricks.as_strided(pixels, shape=(n, 28, 28), strides=(1, 28, 1), writeable=False)
    labels = np.random.default_rng(1).integers(0, 10, n).astype(np.uint8)
    gm.evaluate(model, images[:20000], labels[:20000], keep_probabilities=False)  # warm-up: every buffer once
    before = rss()
    reset_peak()
    result = gm.evaluate(model, images, labels, keep_probabilities=False)
    print(json.dumps({"n": result.n, "rss_before": before, "peak": peak(), "seconds": result.seconds,
                      "input_bytes": pixels.nbytes, "float_copy_bytes": n * 784 * 4}))
"""

_TRAIN = """
    import numpy as np
    import ggml_mnist as gm
    n, n_val = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    val = (images[:n_val].copy(), labels[:n_val].copy()) if n_val else None
    gm.train(images[:1000], labels[:1000], arch="fc", hidden=8, epochs=1, batch_size=500, threads=1, progress=False)
    before = rss()
    reset_peak()
    model, history = gm.train(images, labels, arch="fc", hidden=8, epochs=1, batch_size=500, threads=1, progress=False,
                              validation_data=val)
    print(json.dumps({"n": history[0].n_train, "n_val": history[0].n_val, "rss_before": before, "peak": peak(),
                      "uint8_bytes": images.nbytes, "val_bytes": 0 if val is None else val[0].nbytes,
                      "float_copy_bytes": images.nbytes * 4}))
"""


def eval_memory(n_images: int) -> dict[str, Any]:
    """Evaluate a tiny fc on n distinct strided images (keep_probabilities=False) in a child; RSS figures in bytes."""
    return run_child(_EVAL, n_images, timeout=600)


def train_memory(n_images: int, n_val: int = 0) -> dict[str, Any]:
    """Train a tiny fc for one epoch on n contiguous uint8 images in a child, with validation_data of n_val more
    when n_val > 0; RSS figures in bytes."""
    return run_child(_TRAIN, n_images, n_val, timeout=600)


# ---- killing a process while it saves ------------------------------------------------------------------------
_SAVER = """
    import signal
    import sys
    # Ctrl-C raises KeyboardInterrupt even when this test runs under a parent that ignores SIGINT (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import ggml_mnist as gm
    path, hidden = sys.argv[1], int(sys.argv[2])
    model = gm.Model.create("fc", hidden=hidden, threads=1, seed=7)
    version = 0
    while True:
        model.save(path, metadata={"version": version})
        print(f"saved {version}", flush=True)
        version += 1
"""


def saver_command(path: Path, hidden: int) -> list[str]:
    """A child that saves a deterministic fc model (seed 7) to path over and over, printing "saved K" after save K."""
    return [sys.executable, "-c", textwrap.dedent(_SAVER), str(path), str(hidden)]


def kill_while_saving(path: Path, hidden: int, sig: int, delay: float, timeout: float = 120) -> dict[str, Any]:
    """Start a saver, wait for its first complete save, kill it with sig ``delay`` seconds later.

    Returns {"returncode", "last_saved": the last version it reported complete, "output"}.
    """
    proc = subprocess.Popen(saver_command(path, hidden), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if first != "saved 0\n":
            proc.kill()
            raise AssertionError(f"saver did not start: {first!r} {proc.stderr.read()[-2000:]}")
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
        out, err = proc.stdout.read(), proc.stderr.read()  # not communicate(): it would skip what readline buffered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = [int(line.split()[1]) for line in (first + out).splitlines() if line.startswith("saved ")]
    return {"returncode": proc.returncode, "last_saved": saved[-1], "output": err[-500:]}


def check_saved_file(path: Path, last_saved: int, expected_weights: dict[str, Any]) -> int:
    """Assert path loads, holds one complete version (last_saved or the one after, if its rename won the race)
    and the expected weights; return that version."""
    import numpy as np

    from ggml_mnist import load

    with load(path, threads=1) as model:
        version = model.metadata["version"]
        assert version in (last_saved, last_saved + 1), (version, last_saved)
        weights = model.get_weights()
    for name, value in expected_weights.items():
        assert np.array_equal(weights[name], value), name
    return version


def kill_campaign(
    directory: Path,
    kills: int,
    hidden: int,
    seed: int = 0,
    max_delay: float = 0.4,
    sigkill_share: float = 0.7,
    log: Optional[list[dict[str, Any]]] = None,
) -> list[dict[str, Any]]:
    """Kill savers of the same file ``kills`` times (SIGKILL or SIGINT at random moments); check the file after each.

    Returns one dict per kill: signal, returncode, last_saved, version (found in the file) and new_temp_files
    (temporary files this kill left behind).
    """
    from ggml_mnist import Model

    path = directory / "model.gguf"
    # each save ends in fsync; on ext4 that also waits for every other dirty page on the disk (a fresh
    # install's or an earlier test's), which can hold a SIGKILLed saver in the kernel for minutes: start clean
    os.sync()
    with Model.create("fc", hidden=hidden, threads=1, seed=7) as reference:
        expected = reference.get_weights()
    rng = random.Random(seed)
    results = [] if log is None else log

    def temp_files() -> set[str]:
        return {p.name for p in directory.iterdir() if p.name.startswith(".model.gguf.tmp-")}

    for _ in range(kills):
        sig = signal.SIGKILL if rng.random() < sigkill_share else signal.SIGINT
        before = temp_files()
        outcome = kill_while_saving(path, hidden, sig, rng.uniform(0, max_delay))
        outcome["signal"] = signal.Signals(sig).name
        outcome["version"] = check_saved_file(path, outcome["last_saved"], expected)
        outcome["new_temp_files"] = sorted(temp_files() - before)
        results.append(outcome)
    return results


def age(path: Path, seconds: float) -> None:
    """Set path's modification time ``seconds`` into the past."""
    t = time.time() - seconds
    os.utime(path, (t, t))
