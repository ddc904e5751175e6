"""A SQLite run log: one row per run, per epoch and per batch, which several runs can share."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from typing import Any, Callable, Optional

from .errors import ConfigError, ModelIOError

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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunLog:
    """Appends one training run to a SQLite file (created if missing): ``runs``, ``epochs`` and ``batches`` tables.

    Batch rows are buffered and written with their epoch, one transaction per epoch.
    """

    def __init__(self, path: Any, *, arch: str, dataset: Optional[str], seed: int, config: dict[str, Any]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"metrics must be the name of a SQLite file such as run.sqlite, got {path!r}")
        self.path = os.fspath(path)
        try:
            self._db = sqlite3.connect(self.path)
            with self._db:
                self._db.executescript(_SCHEMA)
                cur = self._db.execute(
                    "INSERT INTO runs(started, status, arch, dataset, seed, config) VALUES (?, 'running', ?, ?, ?, ?)",
                    (_now(), arch, dataset, seed, json.dumps(config, sort_keys=True)))
        except sqlite3.Error as exc:
            raise ModelIOError(f"cannot write the run log {self.path!r}: {exc}; give a writable SQLite file") from None
        self.run_id = int(cur.lastrowid)
        self._batches: list[tuple[Any, ...]] = []

    def batch(self, epoch: int, batch: int, loss: float, accuracy: float, lr: float, seconds: float) -> None:
        """Buffer one batch row (written with the next :meth:`epoch`)."""
        self._batches.append((self.run_id, epoch, batch, loss, accuracy, lr, seconds))

    def epoch(self, epoch: int, loss: float, accuracy: float, val_loss: Optional[float], val_accuracy: Optional[float],
              lr: float, seconds: float) -> None:
        """Write one epoch row and the batch rows buffered since the last epoch."""
        self._write(lambda db: (
            db.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)", self._batches),
            db.execute("INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (self.run_id, epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds))))
        self._batches = []

    def finish(self, status: str) -> None:
        """Write any buffered batch rows, record the run's end and status, and close the file."""
        self._write(lambda db: (
            db.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)", self._batches),
            db.execute("UPDATE runs SET finished = ?, status = ? WHERE run_id = ?", (_now(), status, self.run_id))))
        self._batches = []
        self._db.close()

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        try:
            with self._db:
                fn(self._db)
        except sqlite3.Error as exc:
            raise ModelIOError(f"cannot write the run log {self.path!r}: {exc}") from None

