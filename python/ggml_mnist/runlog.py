"""A SQLite run log: one row per run, per epoch and per batch, which several runs and readers can share."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import urllib.parse
import warnings
from typing import Any, Callable, Optional

from .errors import ConfigError, DataError, DataFileNotFoundError, LoggingWarning, ModelIOError
from .outputs import check_output, describe, is_ours

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(run_id INTEGER PRIMARY KEY, started TEXT, finished TEXT, status TEXT, arch TEXT,
                                dataset TEXT, seed INTEGER, config TEXT);
CREATE TABLE IF NOT EXISTS epochs(run_id INTEGER, epoch INTEGER, loss REAL, accuracy REAL, val_loss REAL,
                                  val_accuracy REAL, lr REAL, seconds REAL);
CREATE TABLE IF NOT EXISTS batches(run_id INTEGER, epoch INTEGER, batch INTEGER, loss REAL, accuracy REAL, lr REAL,
                                   seconds REAL);
CREATE INDEX IF NOT EXISTS epochs_run ON epochs(run_id, epoch);
CREATE INDEX IF NOT EXISTS batches_run ON batches(run_id, epoch, batch);
"""
#: How long a write waits for another writer (a second run on the same log) before it is retried at the next epoch.
BUSY_SECONDS = 10.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_log_path(path: Any, inputs: Any = ()) -> str:
    """Refuse, before training, a run log that cannot be written or is another kind of file; returns the path.

    Raises ConfigError for a non-path, ModelIOError for a directory, an input file, a missing folder or an
    existing file that is not a SQLite database (an empty file is fine).
    """
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path) == "":
        raise ConfigError(f"metrics must be the name of a SQLite file such as run.sqlite, got {path!r}")
    text = os.fspath(path)
    if os.path.exists(text) and os.path.isfile(text) and not is_ours(text, "sqlite"):
        raise ModelIOError(
            f"cannot write the run log {text!r}: it exists and is {describe(text)}, not a SQLite run "
            "log; name a new file such as run.sqlite"
        )
    check_output(text, inputs, kind="sqlite", what="the run log", example="run.sqlite")
    return text


class RunLog:
    """Appends one training run to a SQLite file (created if missing): ``runs``, ``epochs`` and ``batches`` tables.

    Batch rows are buffered and written with their epoch, one transaction per epoch. The file is put in WAL mode,
    so readers never block the run. A write that fails (a lock held too long, a full disk) warns once with
    LoggingWarning and is retried with the next epoch: logging never ends a run.
    """

    def __init__(self, path: Any, *, arch: str, dataset: Optional[str], seed: int, config: dict[str, Any]) -> None:
        self.path = check_log_path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        except sqlite3.Error as exc:
            raise ModelIOError(f"cannot write the run log {self.path!r}: {exc}; give a writable SQLite file") from None
        self._ready = False  # the tables exist and the journal mode is set
        self.run_id: Optional[int] = None
        self._run = (
            "INSERT INTO runs(started, status, arch, dataset, seed, config) VALUES (?, 'running', ?, ?, ?, ?)",
            (_now(), arch, dataset, seed, json.dumps(config, sort_keys=True)),
        )
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._warned = False
        self._flush()

    def batch(self, epoch: int, batch: int, loss: float, accuracy: float, lr: float, seconds: float) -> None:
        """Buffer one batch row (written with the next :meth:`epoch`)."""
        self._pending.append(
            ("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)", (epoch, batch, loss, accuracy, lr, seconds))
        )

    def epoch(
        self,
        epoch: int,
        loss: float,
        accuracy: float,
        val_loss: Optional[float],
        val_accuracy: Optional[float],
        lr: float,
        seconds: float,
    ) -> None:
        """Write one epoch row and the batch rows buffered since the last epoch."""
        self._pending.append(
            (
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds),
            )
        )
        self._flush()

    def finish(self, status: str) -> None:
        """Write any buffered rows, record the run's end and status, and close the file."""
        self._pending.append(("UPDATE runs SET finished = ?, status = ? WHERE run_id = ?", (_now(), status)))
        self._flush()
        self._db.close()
        if self._pending:  # said even after an earlier warning: these rows are lost now
            warnings.warn(
                f"the run log {self.path!r} could not be written at the end of the run; its last "
                f"{len(self._pending)} rows (and the run's status) are missing from it",
                LoggingWarning,
                stacklevel=3,
            )

    def _flush(self) -> None:
        """Write the run row (once) and the pending rows in one transaction; on failure keep them and warn once."""

        def write(db: sqlite3.Connection) -> None:
            if not self._ready:
                # an older reader holds the file, or its file system has no shared memory: rollback journal
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                self._ready = True
            if self.run_id is None:
                self.run_id = int(db.execute(*self._run).lastrowid)
            for sql, row in self._pending:
                db.execute(sql, (self.run_id, *row) if sql.startswith("INSERT") else (*row, self.run_id))

        self._write(write)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        run_id = self.run_id
        try:
            with self._db:
                fn(self._db)
            self._pending = []
        except sqlite3.Error as exc:
            self.run_id = run_id  # the transaction rolled back, the run row with it
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"cannot write the run log {self.path!r} ({exc}); training goes on and the rows are "
                    "written once the log can be written again",
                    LoggingWarning,
                    stacklevel=4,
                )


#: The columns of an epoch row, in the order :func:`read_epochs` returns them.
EPOCH_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def read_epochs(path: Any, run: Optional[int] = None) -> tuple[int, list[dict[str, Any]]]:
    """(run_id, its epoch rows as dicts of EPOCH_COLUMNS) of one run of a run log (default: the latest), read-only.

    The file is opened read-only through a URI with its name quoted, so no name ('run #3.sqlite') creates a file.
    Raises DataFileNotFoundError for a missing file and DataError for a file that is not a run log or lacks the run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"metrics log {path!r} does not exist")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            if run is None:
                found = db.execute("SELECT MAX(run_id) FROM runs").fetchone()
                run = found[0] if found else None
            rows = db.execute(
                f"SELECT {', '.join(EPOCH_COLUMNS)} FROM epochs WHERE run_id = ? ORDER BY epoch", (run,)
            ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path!r} is not a ggml-mnist metrics log ({exc})") from exc
    if not rows:
        raise DataError(f"metrics log {path!r} has no epochs for run {run}")
    return int(run), [dict(zip(EPOCH_COLUMNS, r)) for r in rows]
