"""mnist-tune on a real PostgreSQL server: worker processes sharing one study, a killed worker's trial run again,
the same results serially and in parallel, and refused URLs. The cluster is private: started on 127.0.0.1 in a
temporary folder and stopped afterwards (Debian's postgresql package gives initdb and pg_ctl)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ggml_mnist as gm
from ggml_mnist.tune import load_study
from support.synthetic import make_synthetic

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed: pip install 'ggml-mnist[tune]'")
psycopg = pytest.importorskip("psycopg", reason="psycopg is missing: pip install 'ggml-mnist[tune]'")

SPACE = json.dumps({"hidden": 16, "batch_size": 20})
SEARCH = json.dumps({"hidden": 16, "batch_size": {"choices": [20, 40]}})


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return versions[-1] if versions else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A private PostgreSQL cluster on 127.0.0.1: URLs of a user who owns database 'tune' and of one without rights."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb and pg_ctl are missing: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="gmn-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start PostgreSQL as the postgres user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = root / "pw"
    password.write_text("admin-pw\n")
    if as_user:
        shutil.chown(password, "postgres")
    data = root / "data"
    subprocess.run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-U",
            "admin",
            "--pwfile",
            str(password),
            "-A",
            "scram-sha-256",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        with psycopg.connect(f"postgresql://admin:admin-pw@127.0.0.1:{port}/postgres", autocommit=True) as db:
            db.execute("CREATE ROLE tuner LOGIN PASSWORD 'tuner-pw'")
            db.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
            db.execute("CREATE DATABASE tune OWNER tuner")
        yield {
            "url": f"postgresql://tuner:tuner-pw@127.0.0.1:{port}/tune",
            "reader": f"postgresql://reader:reader-pw@127.0.0.1:{port}/tune",
            "wrong_password": f"postgresql://tuner:not-the-pw@127.0.0.1:{port}/tune",
            "no_database": f"postgresql://tuner:tuner-pw@127.0.0.1:{port}/nosuchdb",
        }
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=10)
    return [str(folder / "train-images-idx3-ubyte"), str(folder / "train-labels-idx1-ubyte")]


def worker(files: list[str], storage: str, study: str, run: Path, *options: str) -> subprocess.Popen:
    """One `mnist-tune` process, as another machine would run it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ggml_mnist.cli.tune",
            "fc",
            *files,
            "--storage",
            storage,
            "--study",
            study,
            "--dir",
            str(run),
            "--threads",
            "1",
            "--heartbeat",
            "1",
            "--quiet",
            "--no-export",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def trials_of(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return load_study(storage, study).get_trials()


def test_three_workers_share_one_study_each_slot_done_once(
    postgres: dict[str, str], files: list[str], tmp_path: Path
) -> None:
    runs = [tmp_path / f"host{i}" for i in range(3)]
    finish(
        [
            worker(files, postgres["url"], "shared", run, "--trials", "7", "--epochs", "2", "--space", SEARCH)
            for run in runs
        ]
    )
    trials = [t for t in trials_of(postgres["url"], "shared") if not t.user_attrs.get("surplus")]
    assert sorted(t.user_attrs["slot"] for t in trials) == list(range(7))  # none lost, none run twice
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    saved = sorted(p.name for run in runs for p in (run / "trials").iterdir())
    complete = sorted(f"trial-{t.number:04d}.gguf" for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert saved == complete


def test_a_killed_workers_trial_is_failed_retried_and_the_study_finishes(
    postgres: dict[str, str], files: list[str], tmp_path: Path
) -> None:
    options = ("--seeds", "2", "--epochs", "400", "--space", SPACE)
    doomed = worker(files, postgres["url"], "kill", tmp_path / "a", *options)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and doomed.poll() is None:
        time.sleep(0.2)
        try:
            running = [t for t in trials_of(postgres["url"], "kill") if t.state == optuna.trial.TrialState.RUNNING]
        except gm.ConfigError:  # the study is not created yet
            continue
        victim = next((t for t in running if t.user_attrs.get("pid") == doomed.pid and t.intermediate_values), None)
    assert victim is not None, "the worker never got into a trial"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=60)
    finish([worker(files, postgres["url"], "kill", tmp_path / "b", *options)])
    trials = {t.number: t for t in trials_of(postgres["url"], "kill")}
    assert trials[victim.number].state == optuna.trial.TrialState.FAIL
    retry = [
        t
        for t in trials.values()
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    ]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].user_attrs["slot"] == victim.user_attrs["slot"] and retry[0].user_attrs["pid"] != doomed.pid
    done = sorted(t.user_attrs["seed"] for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE)
    assert done == [42, 43]


def test_the_same_seeds_give_the_same_results_serially_and_in_parallel(
    postgres: dict[str, str], files: list[str], tmp_path: Path
) -> None:
    options = ("--seeds", "3", "--epochs", "2", "--space", SPACE)
    finish([worker(files, postgres["url"], "serial", tmp_path / "s", *options)])
    finish([worker(files, postgres["url"], "parallel", tmp_path / "p", *options, "--workers", "3")])
    results = {}
    for study in ("serial", "parallel"):
        results[study] = {
            t.user_attrs["seed"]: t.value
            for t in trials_of(postgres["url"], study)
            if t.state == optuna.trial.TrialState.COMPLETE
        }
    assert sorted(results["serial"]) == [42, 43, 44] and results["serial"] == results["parallel"]


@pytest.mark.parametrize(
    "which, reason",
    [
        ("wrong_password", "password authentication failed"),
        ("no_database", "does not exist"),
        ("reader", "permission denied"),
    ],
)
def test_a_refused_url_stops_before_training_with_the_password_masked(
    postgres: dict[str, str], files: list[str], tmp_path: Path, which: str, reason: str
) -> None:
    url = postgres[which]
    p = worker(files, url, "refused", tmp_path, "--trials", "1", "--epochs", "1", "--space", SPACE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1, err
    secret = url.split(":")[2].split("@")[0]
    assert secret not in err and url.replace(secret, "***") in err and reason in err
    assert not list((tmp_path / "trials").iterdir())


def test_a_study_on_postgresql_is_joined_and_another_presets_refused(
    postgres: dict[str, str], files: list[str], tmp_path: Path
) -> None:
    finish([worker(files, postgres["url"], "join", tmp_path, "--trials", "1", "--epochs", "1", "--space", SPACE)])
    finish([worker(files, postgres["url"], "join", tmp_path, "--trials", "2", "--epochs", "1", "--space", SPACE)])
    assert len(trials_of(postgres["url"], "join")) == 2
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "ggml_mnist.cli.tune",
            "cnn",
            *files,
            "--storage",
            postgres["url"],
            "--study",
            "join",
            "--dir",
            str(tmp_path),
            "--trials",
            "1",
            "--space",
            '{"batch_size": 20}',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "is another search (arch" in p.stderr and "tuner:***@" in p.stderr
