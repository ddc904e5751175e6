"""Signals: Ctrl-C during training keeps the model trained so far; SIGINT or SIGKILL during a save never
leaves a damaged file; the temporary files of killed saves are cleaned up by a later save."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist import Model, load
from support.helpers import THREADS, tmp_leftovers
from support.reliability import age, kill_campaign
from support.synthetic import SPLIT_FILES, make_synthetic


@pytest.fixture(scope="module")
def train_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=20)
    return [str(directory / name) for name in SPLIT_FILES["train"]]


def mnist_train(out: Path, files: list[str], *extra: str) -> subprocess.Popen:
    """mnist-train (the installed entry point) on files, running practically forever, in a subprocess."""
    args = [
        "fc",
        str(out),
        *files,
        "--epochs",
        "100000",
        "--batch-size",
        "10",
        "--hidden",
        "8",
        "--threads",
        "1",
        *extra,
    ]
    code = "import sys; from ggml_mnist.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    """Wait for proc and return the rest of its output (communicate() would skip lines readline() buffered).

    Both pipes are drained while waiting: a child that prints more than a pipe holds before it sees the signal
    would otherwise block in write() while this waits for it to exit."""
    import threading

    rest: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda k=k, f=f: rest.__setitem__(k, f.read()), daemon=True)
        for k, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for r in readers:
        r.start()
    proc.wait(timeout=120)
    for r in readers:
        r.join(timeout=60)
    return rest["out"], rest["err"]


def test_sigint_makes_mnist_train_save_the_partial_model(train_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    proc = mnist_train(out, train_files, "--json")
    try:
        first = json.loads(proc.stdout.readline())  # training runs, so the handler is installed
        assert first["event"] == "epoch" and first["epoch"] == 1
        proc.send_signal(signal.SIGINT)
        stdout, stderr = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    done = events[-1]
    assert done["event"] == "done" and done["interrupted"] is True and done["model"] == str(out)
    epochs = [first] + events[:-1]
    # the signal ends the epoch it lands in, or the run between two epochs (while the first one's line is printed)
    assert done["epochs"] == len(epochs) >= 1 and not any(e["interrupted"] for e in epochs[:-1])
    assert "stopping after the current batch" in stderr
    with load(out, threads=THREADS) as model:
        history = model.metadata["history"]
        assert len(history) == done["epochs"] and model.metadata["status"] == "interrupted"
        assert [e["interrupted"] for e in history] == [e["interrupted"] for e in epochs]
        assert np.isfinite(model.get_weights()["fc1.weight"]).all()
    assert tmp_leftovers(tmp_path) == []


def test_sigint_note_without_json(train_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    proc = mnist_train(out, train_files)
    try:
        line = ""
        while "epoch 1/100000" not in line:  # the summary line of the first epoch
            line = proc.stderr.readline()
            assert line, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, stderr = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.match(r"mnist-train: interrupted (in|after) epoch \d+; ", last) and last.endswith(
        f"{out} holds the model trained so far"
    )
    assert load(out, threads=THREADS).metadata["status"] == "interrupted"


def test_sigint_keeps_an_existing_model(train_files: list[str], tmp_path: Path) -> None:
    """A second run interrupted early must not replace the model of the first: it saves beside it and exits 130."""
    out = tmp_path / "m.gguf"
    Model.create("fc", hidden=8, threads=THREADS).save(out)
    before = out.read_bytes()
    proc = mnist_train(out, train_files, "--json")
    try:
        assert json.loads(proc.stdout.readline())["event"] == "epoch"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    partial = tmp_path / "m.interrupted.gguf"
    assert json.loads(stdout.splitlines()[-1])["model"] == str(partial)
    assert out.read_bytes() == before
    assert stderr.strip().endswith(f"{partial} holds the model trained so far; {out} is kept as it was")
    assert load(partial, threads=THREADS).metadata["status"] == "interrupted"


# ---- killed saves -------------------------------------------------------------------------------------------
@pytest.fixture
def save_dir(tmp_path: Path):
    """A folder in memory (/dev/shm) when there is one: on a VM disk, the saves' fsync can stall a SIGKILLed saver
    in the kernel for minutes (seen in CI); the atomic rename that these tests check works the same there."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="gmn-kill-", dir="/dev/shm"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_killing_a_save_leaves_a_complete_file(save_dir: Path) -> None:
    """SIGKILL and SIGINT at random moments of repeated 5 MB saves (the saver does nothing but save, so a kill lands inside one): the file always loads as one complete version
    (checked inside kill_campaign); a SIGINT lets the save finish, a SIGKILL leaves at most its temporary file."""
    results = kill_campaign(save_dir, kills=10, hidden=1500, seed=1)
    assert {r["signal"] for r in results} == {"SIGKILL", "SIGINT"}
    for r in results:
        if r["signal"] == "SIGINT":
            assert r["returncode"] in (-signal.SIGINT, 1) and r["new_temp_files"] == [], r
            assert "KeyboardInterrupt" in r["output"]
        else:
            assert r["returncode"] == -signal.SIGKILL and len(r["new_temp_files"]) <= 1, r
    assert len({r["version"] for r in results}) > 1  # the kills landed in different saves
    leftovers = set().union(*(r["new_temp_files"] for r in results))
    assert all(len(name) == len(".model.gguf.tmp-XXXXXX") for name in leftovers)


def test_the_next_save_removes_stale_temp_files_only(tmp_path: Path) -> None:
    """Temporary files of killed saves (.NAME.tmp-XXXXXX) are removed by the next save to NAME once they are
    a minute old and no writer holds them locked; anything else is left alone."""
    model = Model.create("fc", hidden=4, threads=THREADS)
    stale = tmp_path / ".model.gguf.tmp-Ab12Cd"
    fresh = tmp_path / ".model.gguf.tmp-Ef34Gh"
    locked = tmp_path / ".model.gguf.tmp-Ij56Kl"
    other_name = tmp_path / ".other.gguf.tmp-Mn78Op"
    other_pattern = tmp_path / ".model.gguf.tmp-too-long"
    directory = tmp_path / ".model.gguf.tmp-Qr90St"
    for path in (stale, fresh, locked, other_name, other_pattern):
        path.write_bytes(b"GGUF half-written")
    directory.mkdir()
    for path in (stale, locked, other_name, other_pattern, directory):
        age(path, 120)
    with open(locked, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a save still writing it
        model.save(tmp_path / "model.gguf")
        remaining = set(os.listdir(tmp_path))
    assert stale.name not in remaining
    assert {fresh.name, locked.name, other_name.name, other_pattern.name, directory.name, "model.gguf"} == remaining
    model.save(tmp_path / "model.gguf")
    assert locked.name not in os.listdir(tmp_path)  # unlocked now, and old


def test_a_killed_save_leaves_a_temp_file_that_a_later_save_removes(save_dir: Path) -> None:
    tmp_path = save_dir
    results = kill_campaign(tmp_path, kills=6, hidden=1500, seed=3, max_delay=0.1, sigkill_share=1.0)
    leftovers = sorted(set().union(*(r["new_temp_files"] for r in results)))
    assert leftovers and tmp_leftovers(tmp_path) == leftovers
    for name in leftovers:
        age(tmp_path / name, 120)
    Model.create("fc", hidden=4, threads=THREADS).save(tmp_path / "model.gguf")
    assert tmp_leftovers(tmp_path) == []
