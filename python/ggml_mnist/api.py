"""The high-level API: ``train``, ``evaluate``, ``load`` and ``export_gguf``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import _ffi
from ._ffi import ffi, lib
from .augment import for_dataset, resolve_augment
from .config import DEFAULT_DEVICE, EVAL_CHUNK, TrainConfig, check_batch_size
from .data import has_split, load_mnist, read_idx, validate_dataset
from .datasets import DATASETS, class_names, dataset_info, preparation
from .download import identify_dataset, identify_labels
from .errors import (CheckpointWarning, ConfigError, DataError, GgmlMnistError, ModelIOError,
                     TrainingDivergedError)
from .layers import ArchLike, Conv2d, Dense, resolve_layers
from .model import EXITING, Model, PathLike, check_net
from .outputs import check_distinct, same_file
from .progress import ProgressBar
from .runlog import RunLog, check_log_path

ArrayOrPath = Union[np.ndarray, PathLike]
_SCHEDULE_CODES = {"constant": lib.GMN_SCHEDULE_CONSTANT, "cosine": lib.GMN_SCHEDULE_COSINE,
                   "linear": lib.GMN_SCHEDULE_LINEAR, "onecycle": lib.GMN_SCHEDULE_ONECYCLE}


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
    time_limit: bool = False  # the epoch ended early at the run's max_seconds

    def as_dict(self) -> dict[str, Any]:
        """Return the stats as a JSON-ready dict, with the history names ``loss``, ``accuracy``, ``val_accuracy`` too."""
        return {**dataclasses.asdict(self), "loss": self.train_loss, "accuracy": self.train_acc,
                "val_accuracy": self.val_acc}

    def summary(self, epochs: int) -> str:
        """One human-readable line, as printed after each epoch."""
        line = (f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {100 * self.train_acc:.2f}%")
        if self.val_loss is not None:
            line += (f" | val loss {self.val_loss:.4f}±{self.val_loss_unc:.4f} "
                     f"acc {100 * self.val_acc:.2f}±{100 * self.val_acc_unc:.2f}%")
        line += f" | {self.seconds:.2f}s"
        return line + (" (interrupted)" if self.interrupted else "") + (" (time limit)" if self.time_limit else "")


@dataclass
class EvalResult:
    """Evaluation of a model on a labelled dataset."""

    n: int
    loss: float
    loss_unc: float
    accuracy: float
    accuracy_unc: float
    seconds: float
    images_per_second: float
    predictions: np.ndarray
    probabilities: Optional[np.ndarray]
    labels: np.ndarray
    n_classes: int

    def confusion_matrix(self) -> np.ndarray:
        """Return the [n_classes, n_classes] int64 matrix; rows are true labels, columns predictions."""
        m = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        np.add.at(m, (self.labels, self.predictions), 1)
        return m

    def as_dict(self) -> dict[str, Any]:
        """Return the scalar figures as a JSON-ready dict."""
        return {k: getattr(self, k) for k in ("n", "loss", "loss_unc", "accuracy", "accuracy_unc", "seconds", "images_per_second")}


def load(path: PathLike, *, device: str = DEFAULT_DEVICE, threads: int = 0, graph: str = "auto") -> Model:
    """Load a GGUF model (ours or ggml's mnist example's). See :meth:`Model.load`."""
    return Model.load(path, device=device, threads=threads, graph=graph)


def _check_data_dir(data_dir: Any) -> None:
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigError(f"data_dir must be a directory name, got {data_dir!r}")


def resolve_dataset(images: Optional[ArrayOrPath], labels: Optional[ArrayOrPath], split: str,
                    data_dir: Optional[PathLike] = None, dataset: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn arrays, IDX file paths or a dataset directory into (images, labels) arrays.

    ``images`` may be an array, an IDX file (then ``labels`` is an array or IDX file too) or a
    directory holding the standard MNIST file names; with neither, ``data_dir`` is used: it holds the
    files of ``dataset`` (default "mnist"; EMNIST's names and layout for "emnist-*") itself or in
    ``data_dir/dataset``. A folder holding another known dataset is refused with ConfigError.
    """
    _check_data_dir(data_dir)
    if images is None:
        if data_dir is None:
            raise ConfigError("no data given: pass images and labels (arrays or IDX paths) or a data directory")
        info = dataset_info(dataset or "mnist")
        nested = Path(data_dir) / info.name  # a parent such as data/, where mnist-data downloads to data/<dataset>
        folder = nested if not info.has_split(data_dir, split) and info.has_split(nested, split) else Path(data_dir)
        found = identify_dataset(folder, split) if info.has_split(folder, split) else None
        if dataset is not None and found is not None and found != info.name:
            raise ConfigError(f"{folder} holds {found}, not {info.name}; point data_dir at the {info.name} files "
                              f"or at their parent folder")
        return info.load(folder, split)
    if isinstance(images, (str, os.PathLike)):
        if Path(images).is_dir():
            if labels is not None:
                raise ConfigError("labels must be omitted when images is a directory")
            return load_mnist(images, split)
        images = read_idx(images)
    if labels is None:
        raise ConfigError("labels are required when images is an array or an IDX file")
    if isinstance(labels, (str, os.PathLike)):
        labels = read_idx(labels)
    return np.asarray(images), np.asarray(labels)


def _dataset_name(images: Optional[ArrayOrPath], labels: Optional[ArrayOrPath], data_dir: Optional[PathLike],
                  dataset: Optional[str]) -> Optional[str]:
    """The known dataset trained on: ``dataset`` when given, else the one a data directory or a labels file
    (given as a path) belongs to, by checksum."""
    if dataset is not None:
        return dataset_info(dataset).name
    if isinstance(labels, (str, os.PathLike)):
        return identify_labels(labels)
    folder = images if isinstance(images, (str, os.PathLike)) and Path(images).is_dir() else (
        data_dir if images is None else None)
    if folder is None:
        return None
    for candidate in (Path(folder), Path(folder) / "mnist"):
        if has_split(candidate, "train"):
            return identify_dataset(candidate, "train")
    return None


def _validation_arrays(validation_data: Any, image_size: tuple[int, int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of ``validation_data``: a pair of arrays or IDX paths, or a dataset directory (its test split)."""
    if isinstance(validation_data, (str, os.PathLike)):
        images, labels = resolve_dataset(validation_data, None, "test")
    elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        images, labels = resolve_dataset(validation_data[0], validation_data[1], "test")
    else:
        raise ConfigError("validation_data must be (images, labels), arrays or IDX paths, or a dataset directory; "
                          f"got {type(validation_data).__name__}")
    try:
        images, labels, _ = validate_dataset(images, labels, n_classes, image_size=image_size)
    except DataError as exc:
        raise DataError(f"validation_data: {exc}") from None
    return images, labels


def _resolve_start(config: Any, options: dict[str, Any], init: Any, resume: Any, threads_device: dict[str, Any]
                   ) -> tuple[Optional[Model], TrainConfig, list[EpochStats]]:
    """The model to start from (None: a new one), the recipe and the history already trained (resume)."""
    if init is not None and resume is not None:
        raise ConfigError("give init= (fine-tune from saved weights) or resume= (continue a saved run exactly), not both")
    start = init if init is not None else resume
    if start is None:
        base = config if config is not None else TrainConfig.defaults(options.get("arch") or "cnn")
        return None, base.replace(**options), []
    what = "init" if init is not None else "resume"
    if isinstance(start, Model):
        model = start.copy()
    elif isinstance(start, (str, os.PathLike)):
        model = Model.load(start, **{k: v for k, v in threads_device.items() if v is not None})
    else:
        raise ConfigError(f"{what} must be a Model or the path of a GGUF model, got {start!r}")
    saved = model.metadata.get("config")
    if resume is not None and (not isinstance(saved, dict) or model.optimizer_steps is None):
        raise ConfigError("resume: this model holds no optimizer state (it was saved without save_optimizer=True / "
                          "--save-optimizer); fine-tune it with init= instead")
    arch = model.arch if model.arch != "custom" else tuple(model.layers)
    wanted = options.get("arch")
    if wanted is not None and resolve_layers(wanted, model.n_classes, hidden=options.get("hidden"),
                                             conv_channels=options.get("conv_channels")) != model.layers:
        held = f"a {model.arch}" if model.arch != "custom" else f"its own {len(model.layers)}-layer"
        raise ConfigError(f"{what}: the model file holds {held} network, not {_arch_label(wanted)}; the "
                          "network comes from the file, so leave arch out (or give the matching one)")
    if resume is None:
        model.drop_optimizer_state()
        if model.weight_type != "f32":  # a quantised model fine-tunes from its weights as ggml dequantises them
            model = model.dequantize()
        base = config if config is not None else TrainConfig.defaults(arch)
        return model, base.replace(**{**options, "arch": arch}), []
    changed = sorted(k for k, v in options.items()
                     if v is not None and k not in ("epochs", "arch", "device", "threads", "graph"))
    if config is not None or changed:
        raise ConfigError(f"resume continues the saved run's recipe; only epochs (the new total), device, graph and "
                          f"threads may be given, not {', '.join(changed) or 'config'}")
    try:
        base = TrainConfig().replace(**{k: v for k, v in saved.items() if k in _CONFIG_FIELDS})
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"resume: the model's stored config is unusable ({exc})") from None
    keep = {f.name for f in dataclasses.fields(EpochStats)}
    history = [EpochStats(**{k: v for k, v in h.items() if k in keep}) for h in model.metadata.get("history", [])
               if isinstance(h, dict) and keep - {"lr", "interrupted", "time_limit"} <= set(h)]
    return model, base.replace(**{k: options.get(k) for k in ("epochs", "device", "threads", "graph")}), history


def train(images: Optional[ArrayOrPath] = None, labels: Optional[ArrayOrPath] = None, *,
          config: Optional[TrainConfig] = None, n_classes: Optional[int] = None, data_dir: Optional[PathLike] = None,
          progress: bool = True, on_epoch: Optional[Callable[[EpochStats, Model], Optional[bool]]] = None,
          validation_data: Any = None, early_stopping: Optional[int] = None, restore_best: bool = True,
          checkpoint: Optional[PathLike] = None, checkpoint_best_only: bool = False, metrics: Optional[PathLike] = None,
          init: Union[Model, PathLike, None] = None, resume: Union[Model, PathLike, None] = None,
          save_optimizer: bool = False, dataset: Optional[str] = None,
          **options: Any) -> tuple[Model, list[EpochStats]]:
    """Train a classifier with ggml-opt and return ``(model, history)``.

    ``images``/``labels``: uint8 arrays [N, H, W] and [N], IDX file paths, or a directory with the
    MNIST file names; ``dataset`` names a known dataset in ``data_dir`` ("fashion-mnist", "emnist-letters", ...).
    ``options`` override fields of ``config`` (default ``TrainConfig.defaults(options.get("arch", "cnn"))``):
    epochs, batch_size, lr, seed, device, ...

    - ``validation_data=(images, labels)`` (arrays or IDX paths) is evaluated after every epoch, like
      ``val_split`` but without taking training images.
    - ``on_epoch(stats, model)`` is called after each epoch; returning False stops training there.
    - ``early_stopping=patience`` stops when the validation loss has not improved for that many epochs and,
      with ``restore_best``, puts back the weights of the best epoch.
    - ``checkpoint="dir/"`` saves ``dir/epoch-NNN.gguf`` after every epoch, or only ``dir/best.gguf`` when the
      validation loss (the training loss without validation) improves with ``checkpoint_best_only``.
    - ``metrics="run.sqlite"`` appends the run, its epochs and its batches to a SQLite run log.
    - ``init=model_or_path`` fine-tunes saved weights (the network comes from the model). ``resume=model_or_path``
      continues a run saved with ``save_optimizer=True`` exactly: same recipe, AdamW moments, schedule position and
      shuffle order, up to ``epochs`` in total.

    ``model.metadata`` (saved with the model) holds the config, the history so far, the dataset, its class names
    and a status ("finished", "interrupted", "stopped_early", "time_limit"), and is up to date whenever ``on_epoch`` runs.
    With ``max_seconds`` (a TrainConfig field) training stops after the batch that crosses that many seconds since
    the first batch; the model is kept as trained so far, with status "time_limit".
    ``progress`` draws a bar on stderr. Ctrl-C stops after the current batch and returns the model trained so far.
    Raises ConfigError, DataError, ModelIOError, DeviceError or TrainingDivergedError (loss became NaN/inf).
    """
    if isinstance(config, Mapping):
        options = {**config, **options}
        config = None
    elif config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a gm.TrainConfig or a dict of its fields, got {type(config).__name__}")
    if on_epoch is not None and not callable(on_epoch):
        raise ConfigError(f"on_epoch must be a function on_epoch(stats, model) or None, got {on_epoch!r}")
    if early_stopping is not None and (isinstance(early_stopping, bool) or not isinstance(early_stopping, int)
                                       or early_stopping < 1):
        raise ConfigError(f"early_stopping is the patience in epochs, a whole number >= 1 (or None), got {early_stopping!r}")
    _check_data_dir(data_dir)
    check_distinct([("checkpoint", checkpoint), ("metrics", metrics)])
    start_path = _start_path(resume)
    saver = _Checkpoints(checkpoint, checkpoint_best_only, start_path) if checkpoint is not None else None
    if metrics is not None:
        check_log_path(metrics, [start_path])
    start_model, cfg, history = _resolve_start(config, options, init, resume,
                                               {"device": options.get("device"), "threads": options.get("threads")})
    cfg = cfg.validate()
    first_epoch = len(history) + 1
    if first_epoch > cfg.epochs:
        raise ConfigError(f"resume: the model has already trained {len(history)} epochs; give epochs > {len(history)}")
    name = _dataset_name(images, labels, data_dir, dataset)
    if config is None and options.get("augment") is None and resume is None:
        # the digits' default distorts a garment's outline and never mirrors it: photos get their own level
        cfg = cfg.replace(augment=for_dataset(cfg.augment, preparation(name)))
    source = os.fspath(images) if isinstance(images, (str, os.PathLike)) else (
        os.fspath(data_dir) if images is None and data_dir is not None else "array")
    images, labels = resolve_dataset(images, labels, "train", data_dir, dataset)
    want_size = start_model.image_size if start_model is not None else None
    if start_model is not None:
        y = np.asarray(labels)
        if y.size and np.issubdtype(y.dtype, np.integer) and int(y.max()) >= start_model.n_classes:
            raise DataError(f"the labels go up to {int(y.max())} but the model to start from has "
                            f"{start_model.n_classes} outputs; train a new model (leave out init=/resume=, "
                            "--init/--resume), which takes its number of classes from the labels")
    images, labels, n_classes = validate_dataset(images, labels, start_model.n_classes if start_model else n_classes,
                                                 image_size=want_size)
    n, h, w = images.shape
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    n_val = int(round(n * cfg.val_split))
    val_idx = np.sort(order[:n_val]).astype(np.int64)
    train_idx = np.sort(order[n_val:]).astype(np.int64)
    if validation_data is not None:
        if n_val:
            raise ConfigError("give validation_data or val_split, not both")
        x_val, y_val = _validation_arrays(validation_data, (h, w), n_classes)
        images = np.concatenate([_as_uint8(images), _as_uint8(x_val)])  # the native dataset holds 8-bit pixels
        labels = np.concatenate([labels, y_val])
        val_idx = np.arange(n, n + len(y_val), dtype=np.int64)
        n_val = len(y_val)
    if early_stopping is not None and n_val == 0:
        raise ConfigError("early_stopping watches the validation loss: give validation_data or val_split too")
    steps_per_epoch = len(train_idx) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(train_idx)} training images are fewer than one batch of {cfg.batch_size}; "
                          "lower batch_size or val_split")
    info = {"name": name, "n": int(n), "n_train": int(len(train_idx)), "n_val": n_val, "image_size": [int(h), int(w)],
            "n_classes": n_classes, "source": source}
    log = RunLog(metrics, arch=_arch_label(cfg.arch) if isinstance(cfg.arch, str) else "custom", dataset=name,
                 seed=cfg.seed, config=cfg.as_dict()) if metrics is not None else None

    if start_model is not None:
        start_model.set_graph(cfg.graph)
    model = start_model or Model.create(cfg.arch, n_classes=n_classes, image_size=(h, w), hidden=cfg.hidden,
                                        conv_channels=cfg.conv_channels, device=cfg.device, threads=cfg.threads,
                                        seed=cfg.seed, graph=cfg.graph)
    dataset_handle = _native_dataset(images.reshape(len(images), h * w), labels, n_classes)
    _ffi.check(model.call_native(lib.gmn_model_train_init, ffi.new("struct gmn_train_config *", dict(
        optimizer=0 if cfg.optimizer == "adamw" else 1, lr=cfg.lr, lr_min_ratio=cfg.lr_min_ratio,
        schedule=_SCHEDULE_CODES[cfg.lr_schedule], warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        total_steps=cfg.epochs * steps_per_epoch, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, physical_batch_size=cfg.physical_on(model.device, any(isinstance(layer, Conv2d) for layer in model.layers)),
        seed=cfg.seed, max_loss=cfg.max_loss, augment=resolve_augment(cfg.augment),
        label_smoothing=cfg.label_smoothing))))
    keep_optimizer = save_optimizer or resume is not None
    if keep_optimizer:
        _ffi.check(model.call_native(lib.gmn_model_train_keep_optimizer, int(resume is not None)), invalid=ConfigError)

    run = _Run(cfg, info, history, early_stopping)
    bar = ProgressBar(cfg.epochs) if progress else None
    result = ffi.new("struct gmn_epoch_result *")
    status = "interrupted"
    with _graceful_interrupt() as interrupt:
        clock = {"epoch": first_epoch, "t": 0.0, "loss": 0.0, "acc": 0.0, "start": time.perf_counter(), "out_of_time": False}

        def on_batch(phase: int, ibatch: int, nbatch: int, loss: float, acc: float) -> bool:
            if phase == lib.GMN_PHASE_TRAIN:
                if bar is not None:
                    bar.update(ibatch, nbatch, loss, acc)
                if log is not None:
                    now = time.perf_counter()
                    log.batch(clock["epoch"], ibatch, loss * ibatch - clock["loss"] * (ibatch - 1),
                              acc * ibatch - clock["acc"] * (ibatch - 1), model.training_lr(), now - clock["t"])
                    clock.update(t=now, loss=loss, acc=acc)
                if cfg.max_seconds and time.perf_counter() - clock["start"] >= cfg.max_seconds:
                    clock["out_of_time"] = True
                    return True
            return interrupt.requested or EXITING.is_set()  # (EXITING: the interpreter is exiting)

        hook = _ffi.ProgressHook(on_batch)
        try:
            for epoch in range(first_epoch, cfg.epochs + 1):
                if bar is not None:
                    bar.start_epoch(epoch)
                t0 = time.perf_counter()
                clock.update(epoch=epoch, t=t0, loss=0.0, acc=0.0)
                native_status = model.call_native(
                    lib.gmn_model_train_epoch, dataset_handle, _ffi.ptr(train_idx, "int64_t *"), len(train_idx),
                    _ffi.ptr(val_idx, "int64_t *") if n_val else ffi.NULL, n_val, hook.callback, ffi.NULL, result)
                hook.reraise()
                _ffi.check(native_status)
                stats = _epoch_stats(epoch, result, time.perf_counter() - t0, model.training_lr())
                if clock["out_of_time"] and not interrupt.requested:
                    stats.interrupted, stats.time_limit = False, True
                history.append(stats)
                if bar is not None:
                    bar.end_epoch(stats.summary(cfg.epochs))
                if keep_optimizer:
                    model.snapshot_optimizer_state()
                stop = run.observe(stats, model)
                status = "interrupted" if stats.interrupted else ("stopped_early" if stop else "time_limit" if stats.time_limit
                                                                   else ("finished" if epoch == cfg.epochs else "running"))
                model.metadata = run.metadata(status)
                if saver is not None:
                    saver.save(model, stats, run.improved)  # a failure warns: the run and its OUT go on
                if log is not None:
                    log.epoch(epoch, stats.train_loss, stats.train_acc, stats.val_loss, stats.val_acc, stats.lr,
                              stats.seconds)
                if on_epoch is not None and on_epoch(stats, model) is False and status == "running":
                    status = "stopped_early"
                    model.metadata = run.metadata(status)
                if status != "running":
                    break
        except TrainingDivergedError:
            status = "diverged"
            raise
        finally:
            model.release_training_state()
            if log is not None:
                log.finish(status if status != "running" else "interrupted")
    if status == "stopped_early" and restore_best and run.best_weights is not None:
        model.set_weights(run.best_weights)
        model.metadata = {**run.metadata(status), "restored_best_epoch": run.best_epoch}
    if status == "stopped_early" and progress:
        why = (f"the validation loss has not improved for {early_stopping} epochs" if early_stopping is not None and
               history[-1].epoch - run.best_epoch >= early_stopping else "on_epoch returned False")
        kept = f"; the model holds the weights of epoch {run.best_epoch}" if "restored_best_epoch" in model.metadata else ""
        print(f"stopped early after epoch {history[-1].epoch} ({why}){kept}", file=sys.stderr)
    return model, history


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _as_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 images unchanged; floats in [0, 1] as 8-bit pixels, the way the native dataset stores them."""
    return images if images.dtype == np.uint8 else np.rint(images * np.float32(255.0)).astype(np.uint8)


class _Run:
    """The bookkeeping of one training run: history, best validation loss, early stopping and metadata."""

    def __init__(self, cfg: TrainConfig, info: dict[str, Any], history: list[EpochStats], patience: Optional[int]) -> None:
        self.cfg, self.info, self.history, self.patience = cfg, info, history, patience
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_weights: Optional[dict[str, np.ndarray]] = None  # of an epoch of this call (not of a resumed part)
        self.improved = False
        for stats in history:  # a resumed run's best so far, so that a worse epoch never counts as an improvement
            loss = self._loss(stats)
            if np.isfinite(loss) and loss < self.best_loss:
                self.best_loss, self.best_epoch = loss, stats.epoch

    @staticmethod
    def _loss(stats: EpochStats) -> float:
        """The loss that decides improvements: validation loss, else training loss."""
        return stats.val_loss if stats.val_loss is not None else stats.train_loss

    def observe(self, stats: EpochStats, model: Model) -> bool:
        """Note an epoch; return True when early stopping says to stop."""
        loss = self._loss(stats)
        self.improved = bool(np.isfinite(loss) and loss < self.best_loss)
        if self.improved:
            self.best_loss, self.best_epoch = loss, stats.epoch
            if self.patience is not None:
                self.best_weights = model.get_weights()
        return self.patience is not None and stats.epoch - self.best_epoch >= self.patience

    def metadata(self, status: str) -> dict[str, Any]:
        """The model's metadata after the epochs so far (saved with it by checkpoints, callbacks and the CLI)."""
        name = self.info["name"]
        return {
            "config": self.cfg.as_dict(),
            "history": [s.as_dict() for s in self.history],
            "seed": self.cfg.seed,
            "dataset": {k: v for k, v in self.info.items() if v is not None},
            "class_names": class_names(name, self.info["n_classes"]),
            "preparation": preparation(name),
            "status": status,
            "interrupted": status == "interrupted",
            "stopped_early": status == "stopped_early",
            "best_epoch": self.best_epoch,
            "ggml_version": ffi.string(lib.gmn_ggml_version()).decode(),
            "version": ffi.string(lib.gmn_version()).decode(),
        }


def _start_path(resume: Any) -> Optional[str]:
    """The file a resumed run continues from (a path, or the file a Model was loaded from), else None."""
    if isinstance(resume, Model):
        return resume.path
    return os.fspath(resume) if isinstance(resume, (str, os.PathLike)) else None


class _Checkpoints:
    """Saves the model into a directory after each epoch (epoch-NNN.gguf) or when it improves (best.gguf).

    A folder that already holds checkpoints belongs to another run and is refused, unless the run resumes from
    one of them. A checkpoint that cannot be written warns once with CheckpointWarning; training goes on.
    """

    PATTERNS = ("epoch-[0-9][0-9][0-9]*.gguf", "best.gguf")

    def __init__(self, directory: PathLike, best_only: bool, resumed_from: Optional[str]) -> None:
        if not isinstance(directory, (str, os.PathLike)) or os.fspath(directory) == "":
            raise ConfigError(f"checkpoint must be the name of a folder such as checkpoints/, got {directory!r}")
        self.directory = Path(directory)
        self.best_only = best_only
        self.warned = False
        if self.directory.exists() and not self.directory.is_dir():
            raise ModelIOError(f"checkpoint folder '{directory}' is a file; name a folder such as checkpoints/")
        held = sorted((p.name for pattern in self.PATTERNS for p in self.directory.glob(pattern)),
                      key=lambda name: (len(name), name)) if self.directory.is_dir() else []  # epoch-999 before -1000
        inside = resumed_from is not None and same_file(Path(resumed_from).parent, self.directory)
        if held and not inside:
            listed = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise ConfigError(f"checkpoint folder '{directory}' already holds another run's checkpoints ({listed}); "
                              "give a new or empty folder, or continue that run with --resume "
                              f"{Path(directory) / held[-1]} (resume=)")
        _check_writable_dir(self.directory, "checkpoint")

    def save(self, model: Model, stats: EpochStats, improved: bool) -> None:
        """Save this epoch's checkpoint; warn (once) instead of raising when it cannot be written."""
        name = f"epoch-{stats.epoch:03d}.gguf" if not self.best_only else ("best.gguf" if improved else None)
        if name is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            model.save(self.directory / name)
        except (GgmlMnistError, OSError) as exc:
            if not self.warned:
                self.warned = True
                warnings.warn(f"checkpoint {self.directory / name} was not saved ({exc}); training goes on, and later "
                              "checkpoints are tried again", CheckpointWarning, stacklevel=3)


def evaluate(model: Union[Model, PathLike], images: Optional[ArrayOrPath] = None, labels: Optional[ArrayOrPath] = None, *,
             data_dir: Optional[PathLike] = None, dataset: Optional[str] = None, batch_size: int = EVAL_CHUNK,
             keep_probabilities: bool = True, device: Optional[str] = None, threads: Optional[int] = None) -> EvalResult:
    """Evaluate ``model`` (a Model or a GGUF path) on labelled images; returns an EvalResult.

    Data arguments work as in :func:`train` (the test split when a directory is given; ``dataset`` defaults to
    the one recorded in the model, so a Fashion-MNIST model reads ``data_dir/fashion-mnist``). Images
    are streamed ``batch_size`` at a time, so memory stays bounded for any N; with
    ``keep_probabilities=False`` only predictions are kept. ``device`` and ``threads`` choose
    where a model loaded from a path runs; a Model runs where it was created, so giving them
    with a Model raises ConfigError.
    """
    check_batch_size(batch_size)
    if isinstance(model, Model):
        if device is not None or threads is not None:
            raise ConfigError(f"device and threads apply when evaluate() loads a model file; this Model already runs on "
                              f"{model.device}: load it with gm.load(path, device=..., threads=...) instead")
    else:
        model = Model.load(model, device=device or DEFAULT_DEVICE, threads=0 if threads is None else threads)
    if dataset is None and images is None:
        recorded = model.metadata.get("dataset")
        dataset = recorded.get("name") if isinstance(recorded, dict) and recorded.get("name") in DATASETS else None
    images, labels = resolve_dataset(images, labels, "test", data_dir, dataset)
    images, labels, _ = validate_dataset(images, labels, model.n_classes, image_size=model.image_size)
    n = len(labels)
    predictions = np.empty(n, dtype=np.int64)
    probabilities = np.empty((n, model.n_classes), dtype=np.float32) if keep_probabilities else None
    losses = np.empty(n, dtype=np.float64)
    seconds = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        t0 = time.perf_counter()
        probs = model.predict_proba(images[start:stop], batch_size=batch_size)
        seconds += time.perf_counter() - t0
        predictions[start:stop] = probs.argmax(axis=1)
        picked = probs[np.arange(stop - start), labels[start:stop]].astype(np.float64)
        losses[start:stop] = -np.log(np.maximum(picked, 1e-30))
        if probabilities is not None:
            probabilities[start:stop] = probs
    return eval_result(predictions, losses, labels, seconds, probabilities, model.n_classes)


def eval_result(predictions: np.ndarray, losses: np.ndarray, labels: np.ndarray, seconds: float,
                probabilities: Optional[np.ndarray], n_classes: int) -> EvalResult:
    """The EvalResult of per-image predictions and losses (-log of the true class's probability) against labels."""
    n = len(labels)
    accuracy = float((predictions == labels).mean()) if n else float("nan")
    return EvalResult(
        n=n, loss=float(losses.mean()),
        loss_unc=float(losses.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        accuracy=accuracy, accuracy_unc=float(np.sqrt(accuracy * (1 - accuracy) / (n - 1))) if n > 1 else float("nan"),
        seconds=seconds, images_per_second=n / seconds if seconds > 0 else float("inf"),
        predictions=predictions, probabilities=probabilities, labels=labels.astype(np.int64), n_classes=n_classes)


def export_gguf(path: PathLike, arch: ArchLike, weights: Mapping[str, Any], *, layout: str = "ggml",
                image_size: Optional[Sequence[int]] = None, metadata: Optional[Mapping[str, Any]] = None) -> Model:
    """Write weights trained elsewhere as a GGUF model that we (and, for fc and cnn, ggml's mnist-eval) can load.

    ``arch`` is a preset name or a list of layers. ``weights`` maps the GGUF tensor names (``fc1.weight``,
    ``conv1.kernel``, ... see :attr:`Model.layers` for the layer names) to arrays in numpy order, which is
    PyTorch's order: Linear weights [out, in], Conv2d kernels [out, in, k, k], biases [out]. Every
    conv/dense layer takes its width from its array, so a 784-128-10 MLP exports as "fc". With
    ``layout="torch"`` a dense layer after a convolution gets its inputs converted from PyTorch's
    channel-first flatten (C, H, W) to ggml's channels-fastest (H, W, C). ``image_size`` defaults to
    28x28, or to the square that a first dense layer's inputs make. Returns the Model.
    """
    if layout not in ("ggml", "torch"):
        raise ConfigError(f"layout must be 'ggml' or 'torch', got {layout!r}")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    layers, _ = check_net(resolve_layers(arch, 10), 10, image_size or (28, 28))
    tensors = [(i, f"{x.name}.{'kernel' if isinstance(x, Conv2d) else 'weight'}", f"{x.name}.bias")
               for i, x in enumerate(layers) if isinstance(x, (Conv2d, Dense))]
    missing = [name for _, w, b in tensors for name in (w, b) if name not in arrays]
    if missing:
        raise ConfigError(f"export_gguf: missing tensor(s) {', '.join(missing)} for architecture {_arch_label(arch)}")
    for i, w, _ in tensors:
        width = int(arrays[w].shape[0]) if arrays[w].ndim else 0
        layers[i] = dataclasses.replace(layers[i], **{"out_channels" if isinstance(layers[i], Conv2d) else "units": width})
    if image_size is None:
        image_size = (28, 28)
        if isinstance(layers[0], Dense):
            n_pixels = arrays[tensors[0][1]].shape[-1]
            side = int(round(np.sqrt(n_pixels)))
            if side * side != n_pixels:
                raise ConfigError(f"export_gguf: {tensors[0][1]} has {n_pixels} inputs, which is not a square image; "
                                  "give image_size=(height, width)")
            image_size = (side, side)
    n_classes = layers[-1].units if isinstance(layers[-1], Dense) else 0
    layers, shapes = check_net(layers, n_classes, image_size)
    if layout == "torch":
        for i, w, _ in tensors:
            if isinstance(layers[i], Dense) and i > 0 and not any(isinstance(x, Dense) for x in layers[:i]):
                h, wd, c, _params = shapes[i - 1]
                out = arrays[w].shape[0]
                if arrays[w].size != out * c * h * wd:
                    raise DataError(f"export_gguf: {w} has {arrays[w].size // max(out, 1)} inputs; expected {c}x{h}x{wd}")
                arrays[w] = arrays[w].reshape(out, c, h, wd).transpose(0, 2, 3, 1).reshape(out, c * h * wd)
    model = Model.create(layers, n_classes=n_classes, image_size=image_size)
    model.set_weights(arrays)
    model.save(path, metadata=dict(metadata or {}, source="export_gguf"))
    return model


def _arch_label(arch: ArchLike) -> str:
    return arch if isinstance(arch, str) else "(layer list)"


def _native_dataset(images: np.ndarray, labels: np.ndarray, n_classes: int) -> Any:
    images = np.ascontiguousarray(_as_uint8(images))
    labels32 = np.ascontiguousarray(labels, dtype=np.int32)
    out = ffi.new("gmn_dataset **")
    _ffi.check(lib.gmn_dataset_init(_ffi.ptr(images, "uint8_t *"), _ffi.ptr(labels32, "int32_t *"), images.shape[0],
                                    images.shape[1], n_classes, out), invalid=DataError)
    return ffi.gc(out[0], lib.gmn_dataset_free)


def _check_writable_dir(directory: Path, what: str) -> None:
    """Create ``directory`` if needed and make sure files can be written into it; raise ModelIOError otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ggml-mnist-check-"):
            pass
    except OSError as exc:
        raise ModelIOError(f"{what} directory '{directory}' cannot be written ({exc.strerror or exc}); "
                           "choose another place") from None


def _epoch_stats(epoch: int, r: Any, seconds: float, lr: float) -> EpochStats:
    has_val = r.n_val > 0
    return EpochStats(
        epoch=epoch, train_loss=r.train_loss, train_loss_unc=r.train_loss_unc, train_acc=r.train_acc,
        train_acc_unc=r.train_acc_unc, val_loss=r.val_loss if has_val else None,
        val_loss_unc=r.val_loss_unc if has_val else None, val_acc=r.val_acc if has_val else None,
        val_acc_unc=r.val_acc_unc if has_val else None, seconds=seconds, n_train=int(r.n_train), n_val=int(r.n_val),
        interrupted=bool(r.stopped), lr=lr)


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
