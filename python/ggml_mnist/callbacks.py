"""Keras-style callbacks for ``gm.train(..., callbacks=[...])``.

A callback is any object with one or more of these methods (:class:`Callback` gives no-op defaults):

- ``on_train_begin(run)`` and ``on_train_end(run)``: ``run`` is the :class:`~ggml_mnist.training.TrainingRun`
  (``run.model``, ``run.config``, ``run.history``, ``run.dataset``, ``run.status``, ``run.best_epoch``);
  ``on_train_end`` is called however the run ends (finished, stopped, interrupted, diverged or by an exception).
- ``on_epoch_begin(epoch, model)``.
- ``on_epoch_end(stats, model)`` with the epoch's :class:`~ggml_mnist.training.EpochStats`; ``model.metadata``
  is up to date. Returning False stops a run that would go on; raising :class:`StopTraining` ends the run as
  "stopped_early" even at its last epoch. Either way the later callbacks still see the epoch.
- ``on_batch_end(batch, model)`` with a :class:`~ggml_mnist.training.BatchStats`, throttled: called when at least
  ``batch_interval`` seconds (the callback's attribute; default 0.1) have passed since its previous call ended,
  and after each epoch's last batch, so that a slow callback never slows training much; ``batch_interval = 0``
  calls it after every batch. Returning False or raising StopTraining stops the run after the current batch.

They are called in list order; train()'s keywords ``early_stopping=``, ``checkpoint=``, ``metrics=`` and
``on_epoch=`` build an :class:`EarlyStopping`, a :class:`ModelCheckpoint`, a :class:`RunLog` and an ``on_epoch``
callback, in that order, before the ``callbacks`` list.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import CheckpointWarning, ConfigError, GgmlMnistError, ModelIOError
from .model import Model
from .outputs import check_writable_dir, same_file
from .runlog import RunLog as _RunLogFile
from .training import BatchStats, BestEpoch, Callback, EpochStats, StopTraining, TrainingRun

__all__ = [
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "RunLog",
    "StopTraining",
    "EpochStats",
    "BatchStats",
    "TrainingRun",
]


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved for ``patience`` epochs (a run needs validation_data or
    val_split for it); with ``restore_best`` the model ends with the weights of its best epoch of this run
    (``model.metadata["restored_best_epoch"]``). Its stop ends the run as "stopped_early" (even at the last epoch).
    """

    def __init__(self, patience: int, *, restore_best: bool = True) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"EarlyStopping patience is a number of epochs, a whole number >= 1, got {patience!r}")
        self.patience = patience
        self.restore_best = bool(restore_best)
        self.best_weights: Optional[dict[str, Any]] = None
        self._best = BestEpoch()

    def on_train_begin(self, run: TrainingRun) -> None:
        if not run.dataset.get("n_val"):
            raise ConfigError("early_stopping watches the validation loss: give validation_data or val_split too")
        self._best = BestEpoch(run.history)
        self.best_weights = None

    def on_epoch_end(self, stats: EpochStats, model: Model) -> None:
        if self._best.update(stats) and self.restore_best:
            self.best_weights = model.get_weights()
        if stats.epoch - self._best.epoch >= self.patience:
            raise StopTraining(f"the validation loss has not improved for {self.patience} epochs")

    def on_train_end(self, run: TrainingRun) -> None:
        weights, self.best_weights = self.best_weights, None
        if run.status == "stopped_early" and weights is not None:
            run.model.set_weights(weights)
            run.model.metadata = {**run.metadata(), "restored_best_epoch": self._best.epoch}


class ModelCheckpoint(Callback):
    """Save the model into ``directory`` after every epoch (``epoch-NNN.gguf``), or with ``best_only`` as
    ``best.gguf`` whenever the validation loss (the training loss without validation) improves.

    A folder that already holds checkpoints belongs to another run and is refused before training, unless the run
    resumes from one of them. A checkpoint that cannot be written warns once with CheckpointWarning; training goes on.
    """

    PATTERNS = ("epoch-[0-9][0-9][0-9]*.gguf", "best.gguf")

    def __init__(self, directory: Any, *, best_only: bool = False) -> None:
        if not isinstance(directory, (str, os.PathLike)) or os.fspath(directory) == "":
            raise ConfigError(f"checkpoint must be the name of a folder such as checkpoints/, got {directory!r}")
        self.directory = Path(directory)
        self.best_only = bool(best_only)
        self.what = "checkpoint"  # how error messages name it
        self._warned = False
        self._prepared = False
        self._best = BestEpoch()

    def prepare(self, resumed_from: Optional[str] = None) -> None:
        """Check the folder before training: refuse a file, another run's checkpoints (unless ``resumed_from``, the
        file a resumed run starts from, is one of them) and a folder that cannot be written (it is created)."""
        directory = self.directory
        if directory.exists() and not directory.is_dir():
            raise ModelIOError(f"checkpoint folder '{directory}' is a file; name a folder such as checkpoints/")
        held = (
            sorted(
                (p.name for pattern in self.PATTERNS for p in directory.glob(pattern)),
                key=lambda name: (len(name), name),
            )
            if directory.is_dir()
            else []
        )  # epoch-999 before -1000
        inside = resumed_from is not None and same_file(Path(resumed_from).parent, directory)
        if held and not inside:
            listed = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise ConfigError(
                f"checkpoint folder '{directory}' already holds another run's checkpoints ({listed}); "
                "give a new or empty folder, or continue that run with --resume "
                f"{directory / held[-1]} (resume=)"
            )
        check_writable_dir(directory, "checkpoint")
        self._prepared = True

    def on_train_begin(self, run: TrainingRun) -> None:
        if not self._prepared:
            self.prepare(None)
        self._prepared = False  # a later run checks the folder again
        self._warned = False
        self._best = BestEpoch(run.history)

    def on_epoch_end(self, stats: EpochStats, model: Model) -> None:
        improved = self._best.update(stats)
        name = f"epoch-{stats.epoch:03d}.gguf" if not self.best_only else ("best.gguf" if improved else None)
        if name is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            model.save(self.directory / name)
        except (GgmlMnistError, OSError) as exc:  # a failure warns: the run and its output go on
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"checkpoint {self.directory / name} was not saved ({exc}); training goes on, and later "
                    "checkpoints are tried again",
                    CheckpointWarning,
                    stacklevel=4,
                )


class RunLog(Callback):
    """Append the run, its epochs and every batch to the SQLite run log ``path`` (see :mod:`ggml_mnist.runlog`):
    several runs and readers can share one file; a write that fails warns once with LoggingWarning and is retried
    at the next epoch, so logging never ends a run. ``run_id`` is the run's row once training began."""

    batch_interval = 0.0  # a row per batch

    def __init__(self, path: Any) -> None:
        if not isinstance(path, (str, os.PathLike)) or os.fspath(path) == "":
            raise ConfigError(f"metrics must be the name of a SQLite file such as run.sqlite, got {path!r}")
        self.path = os.fspath(path)
        self.what = "metrics"  # how error messages name it
        self.run_id: Optional[int] = None
        self._log: Optional[_RunLogFile] = None
        self._last = (0.0, 0.0, 0.0)  # the epoch's mean loss, accuracy and seconds at the previous batch

    def on_train_begin(self, run: TrainingRun) -> None:
        cfg = run.config
        self._log = _RunLogFile(
            self.path,
            arch=cfg.arch if isinstance(cfg.arch, str) else "custom",
            dataset=run.dataset["name"],
            seed=cfg.seed,
            config=cfg.as_dict(),
        )
        self.run_id = self._log.run_id

    def on_epoch_begin(self, epoch: int, model: Model) -> None:
        self._last = (0.0, 0.0, 0.0)

    def on_batch_end(self, batch: BatchStats, model: Model) -> None:
        if self._log is None:
            return
        loss, acc, seconds = self._last
        b = batch.batch  # the batch's own loss and accuracy, from the epoch's running means
        self._log.batch(
            batch.epoch,
            b,
            batch.loss * b - loss * (b - 1),
            batch.accuracy * b - acc * (b - 1),
            batch.lr,
            batch.seconds - seconds,
        )
        self._last = (batch.loss, batch.accuracy, batch.seconds)

    def on_epoch_end(self, stats: EpochStats, model: Model) -> None:
        if self._log is not None:
            self._log.epoch(
                stats.epoch, stats.train_loss, stats.train_acc, stats.val_loss, stats.val_acc, stats.lr, stats.seconds
            )

    def on_train_end(self, run: TrainingRun) -> None:
        log, self._log = self._log, None
        if log is not None:
            self.run_id = log.run_id
            log.finish(run.status)


class _OnEpoch(Callback):
    """train()'s ``on_epoch=fn``: ``fn(stats, model)`` after each epoch; False stops the run."""

    stop_reason = "on_epoch returned False"

    def __init__(self, fn: Callable[[EpochStats, Model], Optional[bool]]) -> None:
        self.fn = fn

    def on_epoch_end(self, stats: EpochStats, model: Model) -> Optional[bool]:
        return self.fn(stats, model)


def from_keywords(
    *,
    early_stopping: Optional[int],
    restore_best: bool,
    checkpoint: Any,
    checkpoint_best_only: bool,
    metrics: Any,
    on_epoch: Any,
) -> list[Callback]:
    """The callbacks that train()'s shorthand keywords stand for, in the order they run."""
    built: list[Callback] = []
    if early_stopping is not None:
        built.append(EarlyStopping(early_stopping, restore_best=restore_best))
    if checkpoint is not None:
        built.append(ModelCheckpoint(checkpoint, best_only=checkpoint_best_only))
    if metrics is not None:
        built.append(RunLog(metrics))
    if on_epoch is not None:
        built.append(_OnEpoch(on_epoch))
    return built
