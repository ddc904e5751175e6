"""The training run: beside ``Model``, the only owner of native handles (the native dataset, the model's training
state, the epoch call, the optimizer snapshot and the per-batch progress hook).

:func:`ggml_mnist.train` resolves the data and the recipe, builds the callbacks and hands them to a
:class:`TrainingRun`, which drives the epochs: the progress bar, Ctrl-C, the time limit (``max_seconds``) and the
run's status and metadata are its own; everything else a run does after a batch or an epoch is a callback
(see :mod:`ggml_mnist.callbacks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _ffi
from ._ffi import ffi, lib
from .augment import resolve_augment
from .config import TrainConfig
from .datasets import class_names, preparation
from .errors import ConfigError, DataError, TrainingDivergedError
from .layers import Conv2d
from .model import EXITING, Model
from .progress import ProgressBar

__all__ = ["EpochStats", "BatchStats", "Callback", "StopTraining", "TrainingRun", "BATCH_INTERVAL"]

_OPTIMIZER_CODES = _ffi.enum_names("gmn_optimizer")
_SCHEDULE_CODES = _ffi.enum_names("gmn_schedule")

#: The default least time in seconds between two calls of a callback's ``on_batch_end`` (its ``batch_interval``
#: attribute overrides it; 0 calls it after every batch).
BATCH_INTERVAL = 0.1

#: The methods that make an object a callback.
HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


@dataclass
class EpochStats:
    """Metrics of one training epoch; ``*_unc`` are standard errors, val_* are None without validation."""

    epoch: int
    train_loss: float
    train_loss_unc: float
    train_acc: float
    train_acc_unc: float
    val_loss: Optional[float]
    val_loss_unc: Optional[float]
    val_acc: Optional[float]
    val_acc_unc: Optional[float]
    seconds: float
    n_train: int
    n_val: int
    interrupted: bool = False
    lr: float = 0.0  # learning rate of the epoch's last optimizer step
    time_limit: bool = False  # the run's max_seconds ended it in this epoch (or right after its last batch)

    def as_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict, with the history names ``loss``, ``accuracy``, ``val_accuracy`` too."""
        return {
            **dataclasses.asdict(self),
            "loss": self.train_loss,
            "accuracy": self.train_acc,
            "val_accuracy": self.val_acc,
        }

    def summary(self, epochs: int) -> str:
        """One human-readable line, as printed after each epoch."""
        line = f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {100 * self.train_acc:.2f}%"
        if self.val_loss is not None:
            line += (
                f" | val loss {self.val_loss:.4f}±{self.val_loss_unc:.4f} "
                f"acc {100 * self.val_acc:.2f}±{100 * self.val_acc_unc:.2f}%"
            )
        line += f" | {self.seconds:.2f}s"
        return line + (" (interrupted)" if self.interrupted else "") + (" (time limit)" if self.time_limit else "")


@dataclass(frozen=True)
class BatchStats:
    """Where a run stands after one optimizer step, as ``on_batch_end`` sees it.

    ``loss`` and ``accuracy`` are the means over the epoch's batches so far (what the progress bar shows);
    ``lr`` is the learning rate of this step; ``seconds`` the time since the epoch began.
    """

    epoch: int
    batch: int  # 1-based, within the epoch
    n_batches: int
    loss: float
    accuracy: float
    lr: float
    seconds: float


class StopTraining(Exception):
    """Raised by a callback to end the run after the current epoch (from ``on_batch_end``: after the current batch).

    The run ends with status "stopped_early" even when that epoch was its last (as :class:`EarlyStopping` does, so
    that its best weights are put back); the message says why. The other callbacks still see that epoch, and
    train() returns normally. Returning False from ``on_epoch_end`` stops a run that would go on, and leaves the
    status of one that ends anyway ("finished").
    """


class Callback:
    """Base class of callbacks (optional: any object with these methods works). Override what you need."""

    #: The least time in seconds between two calls of :meth:`on_batch_end` (0: after every batch).
    batch_interval: float = BATCH_INTERVAL

    def on_train_begin(self, run: TrainingRun) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int, model: Model) -> None:
        """Called before each epoch (1-based)."""

    def on_batch_end(self, batch: BatchStats, model: Model) -> Optional[bool]:
        """Called after an optimizer step, at most every ``batch_interval`` seconds; False stops after this batch."""
        return None

    def on_epoch_end(self, stats: EpochStats, model: Model) -> Optional[bool]:
        """Called after each epoch; False stops the run here."""
        return None

    def on_train_end(self, run: TrainingRun) -> None:
        """Called once when the run ends, however it ends (``run.status`` says how)."""


def monitored_loss(stats: EpochStats) -> float:
    """The loss that decides improvements: the validation loss, else the training loss."""
    return stats.val_loss if stats.val_loss is not None else stats.train_loss


class BestEpoch:
    """The best epoch so far by :func:`monitored_loss`, starting from the epochs a resumed run already has.

    Validation losses and training losses are never compared: once an epoch was validated, an epoch without
    validation (one cut short by Ctrl-C, the time limit or a callback) cannot be the best, and the first validated
    epoch improves on epochs judged by their training loss."""

    def __init__(self, history: Sequence[EpochStats] = ()) -> None:
        self.loss = float("inf")
        self.epoch = 0
        self.validated = False  # whether the best so far was judged by its validation loss
        for stats in history:  # a resumed run's best so far, so that a worse epoch never counts as an improvement
            self.update(stats)

    def update(self, stats: EpochStats) -> bool:
        """Note an epoch; return whether it improved on the best so far."""
        validated = stats.val_loss is not None
        if self.validated and not validated:
            return False
        loss = monitored_loss(stats)
        improved = bool(np.isfinite(loss) and (loss < self.loss or validated > self.validated))
        if improved:
            self.loss, self.epoch, self.validated = loss, stats.epoch, validated
        return improved


def as_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 images unchanged; floats in [0, 1] as 8-bit pixels, the way the native dataset stores them."""
    return images if images.dtype == np.uint8 else np.rint(images * np.float32(255.0)).astype(np.uint8)


def check_callbacks(callbacks: Any) -> list[Any]:
    """The callbacks as a list; raises ConfigError for something that is not a list of callback objects."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise ConfigError(
            f"callbacks must be a list of callback objects such as gm.callbacks.EarlyStopping(3), got "
            f"{type(callbacks).__name__}"
        )
    for cb in callbacks:
        if isinstance(cb, type) or not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
            hint = "; give a function as on_epoch= instead" if callable(cb) and not isinstance(cb, type) else ""
            raise ConfigError(
                f"each callback needs an on_epoch_end(stats, model) method (or another of "
                f"{', '.join(HOOKS)}), got {cb!r}{hint}"
            )
        interval = getattr(cb, "batch_interval", BATCH_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval >= 0:
            raise ConfigError(f"{type(cb).__name__}.batch_interval must be a number of seconds >= 0, got {interval!r}")
    return list(callbacks)


class TrainingRun:
    """One training run of ``model``: creates the native dataset and training state, and drives the epochs.

    Callbacks see the run in ``on_train_begin(run)`` and ``on_train_end(run)``; its public attributes are
    ``model``, ``config`` (the TrainConfig), ``history`` (EpochStats, with a resumed run's earlier epochs),
    ``dataset`` (name, image counts, size, classes, source), ``status`` ("running", then "finished",
    "stopped_early", "time_limit", "interrupted" or "diverged"), ``stop_reason`` and ``best_epoch``.
    """

    def __init__(
        self,
        model: Model,
        config: TrainConfig,
        images: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        dataset: dict[str, Any],
        history: list[EpochStats],
        *,
        keep_optimizer: bool = False,
        exact_resume: bool = False,
        validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    ) -> None:
        self.model, self.config, self.dataset, self.history = model, config, dataset, history
        self.first_epoch = len(history) + 1
        self.status = "running"
        self.stop_reason: Optional[str] = None
        self._best = BestEpoch(history)
        self._train_idx = np.ascontiguousarray(train_idx, dtype=np.int64)
        self._val_idx = np.ascontiguousarray(val_idx, dtype=np.int64)
        self._keep_optimizer = keep_optimizer
        self._native_dataset = _native_dataset(images.reshape(len(images), -1), labels, n_classes)
        # validation images of their own (validation_data): a second native dataset, which val_idx indexes
        self._native_validation = (
            None
            if validation is None
            else _native_dataset(validation[0].reshape(len(validation[0]), -1), validation[1], n_classes)
        )
        cfg = config
        steps_per_epoch = len(self._train_idx) // cfg.batch_size
        physical = cfg.physical_on(model.device, any(isinstance(layer, Conv2d) for layer in model.layers))
        _ffi.check(
            model._call_native(
                lib.gmn_model_train_init,
                ffi.new(
                    "struct gmn_train_config *",
                    dict(
                        optimizer=_OPTIMIZER_CODES[cfg.optimizer],
                        lr=cfg.lr,
                        lr_min_ratio=cfg.lr_min_ratio,
                        schedule=_SCHEDULE_CODES[cfg.lr_schedule],
                        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                        total_steps=cfg.epochs * steps_per_epoch,
                        beta1=cfg.beta1,
                        beta2=cfg.beta2,
                        eps=cfg.eps,
                        weight_decay=cfg.weight_decay,
                        batch_size=cfg.batch_size,
                        physical_batch_size=physical,
                        seed=cfg.seed,
                        max_loss=cfg.max_loss,
                        augment=resolve_augment(cfg.augment),
                        label_smoothing=cfg.label_smoothing,
                    ),
                ),
            )
        )
        if keep_optimizer:
            try:
                _ffi.check(
                    model._call_native(lib.gmn_model_train_keep_optimizer, int(exact_resume)), invalid=ConfigError
                )
            except BaseException:
                model.release_training_state()
                raise

    @property
    def best_epoch(self) -> int:
        """The epoch with the lowest validation loss (training loss without validation) so far; 0 before any."""
        return self._best.epoch

    def metadata(self, status: Optional[str] = None) -> dict[str, Any]:
        """The model's metadata after the epochs so far (saved with it by checkpoints, callbacks and the CLI)."""
        status = self.status if status is None else status
        name = self.dataset["name"]
        return {
            "config": self.config.as_dict(),
            "history": [s.as_dict() for s in self.history],
            "seed": self.config.seed,
            "dataset": {k: v for k, v in self.dataset.items() if v is not None},
            "class_names": class_names(name, self.dataset["n_classes"]),
            "preparation": preparation(name),
            "status": status,
            "interrupted": status == "interrupted",
            "stopped_early": status == "stopped_early",
            "best_epoch": self.best_epoch,
            "ggml_version": ffi.string(lib.gmn_ggml_version()).decode(),
            "version": ffi.string(lib.gmn_version()).decode(),
        }

    def stop(self, reason: str, *, ended: bool = False) -> None:
        """End the run after the current epoch with status "stopped_early" (said as ``reason``) when it would go on;
        with ``ended``, also when the epoch was its last or hit the time limit. An interrupted run stays so."""
        if self.status == "running" or (ended and self.status in ("finished", "time_limit")):
            self.status = "stopped_early"
            self.stop_reason = self.stop_reason or reason
            self.model.metadata = self.metadata()

    def fit(self, callbacks: Sequence[Any] = (), *, progress: bool = True) -> list[EpochStats]:
        """Train up to ``config.epochs`` epochs, calling ``callbacks`` in order; returns the history.

        Releases the training state (the weights stay) however it ends, and calls every ``on_train_end``.
        """
        model, cfg = self.model, self.config
        callbacks = check_callbacks(list(callbacks))
        bar = ProgressBar(cfg.epochs) if progress else None
        result = ffi.new("struct gmn_epoch_result *")
        n_val = len(self._val_idx)
        self.status = "running"
        with _graceful_interrupt() as interrupt:
            clock = _Clock(first_epoch=self.first_epoch, callbacks=callbacks)
            hook = _ffi.ProgressHook(_batch_hook(model, cfg, bar, clock, interrupt))
            try:
                for cb in callbacks:
                    _call(cb, "on_train_begin", self)
                clock.start = time.perf_counter()  # max_seconds counts from here
                for epoch in range(self.first_epoch, cfg.epochs + 1):
                    if epoch > self.first_epoch and (interrupt.requested or EXITING.is_set()):
                        # Ctrl-C after the last epoch's batches (its validation, the callbacks): no batch more
                        self.status = "interrupted"
                        model.metadata = self.metadata()
                        break
                    if epoch > self.first_epoch and clock.time_is_up(cfg.max_seconds):
                        # spent after the last epoch's batches (its validation, the callbacks): no epoch of one batch
                        self.history[-1].time_limit = True
                        self.status = "time_limit"
                        model.metadata = self.metadata()
                        break
                    if bar is not None:
                        bar.start_epoch(epoch)
                    for cb in callbacks:
                        _call(cb, "on_epoch_begin", epoch, model)
                    clock.start_epoch(epoch)
                    native_status = model._call_native(
                        lib.gmn_model_train_epoch,
                        self._native_dataset,
                        _ffi.ptr(self._train_idx, "int64_t *"),
                        len(self._train_idx),
                        self._native_validation if self._native_validation is not None else ffi.NULL,
                        _ffi.ptr(self._val_idx, "int64_t *") if n_val else ffi.NULL,
                        n_val,
                        hook.callback,
                        ffi.NULL,
                        result,
                    )
                    hook.reraise()
                    _ffi.check(native_status)
                    stats = _epoch_stats(epoch, result, time.perf_counter() - clock.t0, model.training_lr())
                    if clock.out_of_time and not interrupt.requested:
                        stats.interrupted, stats.time_limit = False, True
                    elif clock.stopped_by is not None and not interrupt.requested and not EXITING.is_set():
                        stats.interrupted = False  # a callback's stop, said by the status
                    self.history.append(stats)
                    if bar is not None:
                        bar.end_epoch(stats.summary(cfg.epochs))
                    if self._keep_optimizer:
                        _ffi.check(model._call_native(lib.gmn_model_optimizer_snapshot))
                    self._best.update(stats)
                    self.status = (
                        "interrupted"
                        if stats.interrupted
                        else "time_limit"
                        if stats.time_limit
                        else ("finished" if epoch == cfg.epochs else "running")
                    )
                    model.metadata = self.metadata()
                    if clock.stopped_by is not None:
                        self.stop(clock.stopped_by, ended=True)
                    for cb in callbacks:
                        try:
                            keep_going = _call(cb, "on_epoch_end", stats, model)
                        except StopTraining as exc:
                            self.stop(str(exc) or f"{type(cb).__name__} raised StopTraining", ended=True)
                            continue
                        if keep_going is False:
                            self.stop(getattr(cb, "stop_reason", None) or f"{type(cb).__name__} returned False")
                    if self.status != "running":
                        break
            except TrainingDivergedError:
                self.status = "diverged"
                raise
            finally:
                if self.status == "running":  # an exception ended it
                    self.status = "interrupted"
                model.release_training_state()
                self._native_dataset = self._native_validation = None
                _end(callbacks, self)
        if self.status == "stopped_early" and progress:
            kept = (
                f"; the model holds the weights of epoch {model.metadata['restored_best_epoch']}"
                if "restored_best_epoch" in model.metadata
                else ""
            )
            print(f"stopped early after epoch {self.history[-1].epoch} ({self.stop_reason}){kept}", file=sys.stderr)
        return self.history


def _call(cb: Any, hook: str, *args: Any) -> Any:
    method = getattr(cb, hook, None)
    return method(*args) if callable(method) else None


def _end(callbacks: Sequence[Any], run: TrainingRun) -> None:
    """Call every on_train_end, even after one raised; then raise the first error."""
    errors: list[BaseException] = []
    for cb in callbacks:
        try:
            _call(cb, "on_train_end", run)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other callbacks ended
            errors.append(exc)
    if errors:
        raise errors[0]


class _Clock:
    """The batch hook's state: the epoch, its start, the time limit and the callbacks' batch throttle."""

    def __init__(self, first_epoch: int, callbacks: Sequence[Any]) -> None:
        self.epoch = first_epoch
        self.start = time.perf_counter()
        self.t0 = self.start
        self.out_of_time = False
        self.stopped_by: Optional[str] = None  # the reason an on_batch_end stopped the run
        self.batch_callbacks = [
            [cb, float(getattr(cb, "batch_interval", BATCH_INTERVAL)), -float("inf")]
            for cb in callbacks
            if callable(getattr(cb, "on_batch_end", None))
            and getattr(type(cb), "on_batch_end", None) is not Callback.on_batch_end
        ]

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.t0 = time.perf_counter()

    def time_is_up(self, max_seconds: float) -> bool:
        """Whether the run has used its ``max_seconds`` (0: no limit) since ``start``; it stays so once it is."""
        self.out_of_time = self.out_of_time or bool(max_seconds and time.perf_counter() - self.start >= max_seconds)
        return self.out_of_time


def _batch_hook(model: Model, cfg: TrainConfig, bar: Optional[ProgressBar], clock: _Clock, interrupt: _Interrupt):
    """The function the shim calls after every optimizer step (and once with the validation result): draws the bar,
    calls the callbacks' on_batch_end as their batch_interval allows, and says whether to stop."""

    def on_batch(phase: int, ibatch: int, nbatch: int, loss: float, acc: float) -> bool:
        if phase == lib.GMN_PHASE_TRAIN:
            if bar is not None:
                bar.update(ibatch, nbatch, loss, acc)
            if clock.batch_callbacks:
                now = time.perf_counter()
                batch: Optional[BatchStats] = None
                for entry in clock.batch_callbacks:
                    cb, interval, last = entry
                    if ibatch < nbatch and interval > 0 and now - last < interval:
                        continue
                    if batch is None:
                        batch = BatchStats(
                            clock.epoch,
                            int(ibatch),
                            int(nbatch),
                            float(loss),
                            float(acc),
                            model.training_lr(),
                            now - clock.t0,
                        )
                    try:
                        keep_going = cb.on_batch_end(batch, model)
                    except StopTraining as exc:
                        keep_going, clock.stopped_by = (
                            True,
                            clock.stopped_by or str(exc) or f"{type(cb).__name__} raised StopTraining",
                        )
                    if keep_going is False:
                        clock.stopped_by = clock.stopped_by or f"{type(cb).__name__}.on_batch_end returned False"
                    entry[2] = time.perf_counter()
                if clock.stopped_by is not None and ibatch < nbatch:
                    return True
            if clock.time_is_up(cfg.max_seconds) and ibatch < nbatch:
                return True
            # after an epoch's last batch the epoch is whole: the shim validates it, and a stop above ends the run
            # after it (asking the shim to stop there would skip that validation)
        return interrupt.requested or EXITING.is_set()  # (EXITING: the interpreter is exiting)

    return on_batch


def _native_dataset(images: np.ndarray, labels: np.ndarray, n_classes: int) -> Any:
    images = np.ascontiguousarray(as_uint8(images))
    labels32 = np.ascontiguousarray(labels, dtype=np.int32)
    out = ffi.new("gmn_dataset **")
    _ffi.check(
        lib.gmn_dataset_init(
            _ffi.ptr(images, "uint8_t *"),
            _ffi.ptr(labels32, "int32_t *"),
            images.shape[0],
            images.shape[1],
            n_classes,
            out,
        ),
        invalid=DataError,
    )
    return ffi.gc(out[0], lib.gmn_dataset_free)


def _epoch_stats(epoch: int, r: Any, seconds: float, lr: float) -> EpochStats:
    has_val = r.n_val > 0
    return EpochStats(
        epoch=epoch,
        train_loss=r.train_loss,
        train_loss_unc=r.train_loss_unc,
        train_acc=r.train_acc,
        train_acc_unc=r.train_acc_unc,
        val_loss=r.val_loss if has_val else None,
        val_loss_unc=r.val_loss_unc if has_val else None,
        val_acc=r.val_acc if has_val else None,
        val_acc_unc=r.val_acc_unc if has_val else None,
        seconds=seconds,
        n_train=int(r.n_train),
        n_val=int(r.n_val),
        interrupted=bool(r.stopped),
        lr=lr,
    )


class _Interrupt:
    requested = False


@contextlib.contextmanager
def _graceful_interrupt() -> Iterator[_Interrupt]:
    """While active, the first Ctrl-C asks training to stop after the current batch; a second one aborts.

    An ignored SIGINT (a background job started with nohup or ``&`` in a script) stays ignored."""
    state = _Interrupt()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        state.requested = True
        sys.stderr.write("\nstopping after the current batch (Ctrl-C again to abort)\n")
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
