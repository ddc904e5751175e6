"""The high-level API: ``train``, ``evaluate``, ``load`` and ``export_gguf``."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from . import callbacks as _callbacks
from .augment import for_dataset
from .config import DEFAULT_DEVICE, EVAL_CHUNK, TrainConfig, check_batch_size
from .data import fingerprint, load_mnist, read_idx, validate_dataset
from .datasets import dataset_info, identify_dataset, identify_labels, locate, preparation
from .errors import ConfigError, DataError, GgmlMnistWarning
from .labels import dataset_name as recorded_dataset
from .layers import ArchLike, Conv2d, Dense, resolve_layers
from .model import Model, PathLike, check_net
from .outputs import check_distinct
from .progress import ProgressBar  # noqa: F401 (its old home here: ggml_mnist.api.ProgressBar)
from .runlog import check_log_path
from .training import EpochStats, TrainingRun, check_callbacks

ArrayOrPath = Union[np.ndarray, PathLike]


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
        return {
            k: getattr(self, k)
            for k in ("n", "loss", "loss_unc", "accuracy", "accuracy_unc", "seconds", "images_per_second")
        }


def load(path: PathLike, *, device: str = DEFAULT_DEVICE, threads: int = 0, graph: str = "auto") -> Model:
    """Load a GGUF model (ours or ggml's mnist example's). See :meth:`Model.load`."""
    return Model.load(path, device=device, threads=threads, graph=graph)


def _check_data_dir(data_dir: Any) -> None:
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigError(f"data_dir must be a directory name, got {data_dir!r}")


def resolve_dataset(
    images: Optional[ArrayOrPath],
    labels: Optional[ArrayOrPath],
    split: str,
    data_dir: Optional[PathLike] = None,
    dataset: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
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
        folder = locate(data_dir, info.name, split, strict=dataset is not None) or Path(data_dir)
        return info.load(folder, split)
    if isinstance(images, (str, os.PathLike)):
        if _is_folder(images):
            if labels is not None:
                raise ConfigError("labels must be omitted when images is a directory")
            return load_mnist(images, split)
        images = read_idx(images)
    if labels is None:
        raise ConfigError("labels are required when images is an array or an IDX file")
    if isinstance(labels, (str, os.PathLike)):
        labels = read_idx(labels)
    return np.asarray(images), np.asarray(labels)


def _dataset_name(
    images: Optional[ArrayOrPath], labels: Optional[ArrayOrPath], data_dir: Optional[PathLike], dataset: Optional[str]
) -> Optional[str]:
    """The known dataset trained on: ``dataset`` when given, else the one a data directory or a labels file
    (given as a path) belongs to, by checksum."""
    if dataset is not None:
        return dataset_info(dataset).name
    if isinstance(labels, (str, os.PathLike)):
        return identify_labels(labels)
    folder = images if _is_folder(images) else (data_dir if images is None else None)
    found = locate(folder, "mnist", "train", strict=False) if folder is not None else None  # the MNIST file names
    return identify_dataset(found, "train") if found is not None else None


def _is_folder(images: Optional[ArrayOrPath]) -> bool:
    """True when ``images`` names a dataset folder (not an array or an IDX file)."""
    return isinstance(images, (str, os.PathLike)) and Path(images).is_dir()


def _validation_arrays(
    validation_data: Any, image_size: tuple[int, int], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of ``validation_data``: a pair of arrays or IDX paths, or a dataset directory (its test split)."""
    if isinstance(validation_data, (str, os.PathLike)):
        images, labels = resolve_dataset(validation_data, None, "test")
    elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        images, labels = resolve_dataset(validation_data[0], validation_data[1], "test")
    else:
        raise ConfigError(
            "validation_data must be (images, labels), arrays or IDX paths, or a dataset directory; "
            f"got {type(validation_data).__name__}"
        )
    try:
        images, labels, _ = validate_dataset(images, labels, n_classes, image_size=image_size)
    except DataError as exc:
        raise DataError(f"validation_data: {exc}") from None
    return images, labels


def _resolve_start(
    config: Any, options: dict[str, Any], init: Any, resume: Any, threads_device: dict[str, Any]
) -> tuple[Optional[Model], TrainConfig, list[EpochStats]]:
    """The model to start from (None: a new one), the recipe and the history already trained (resume)."""
    if init is not None and resume is not None:
        raise ConfigError(
            "give init= (fine-tune from saved weights) or resume= (continue a saved run exactly), not both"
        )
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
        raise ConfigError(
            "resume: this model holds no optimizer state (it was saved without save_optimizer=True / "
            "--save-optimizer); fine-tune it with init= instead"
        )
    arch = model.arch if model.arch != "custom" else tuple(model.layers)
    wanted = options.get("arch")
    if (
        wanted is not None
        and resolve_layers(
            wanted, model.n_classes, hidden=options.get("hidden"), conv_channels=options.get("conv_channels")
        )
        != model.layers
    ):
        held = f"a {model.arch}" if model.arch != "custom" else f"its own {len(model.layers)}-layer"
        raise ConfigError(
            f"{what}: the model file holds {held} network, not {_arch_label(wanted)}; the "
            "network comes from the file, so leave arch out (or give the matching one)"
        )
    if resume is None:
        model.drop_optimizer_state()
        if model.weight_type != "f32":  # a quantised model fine-tunes from its weights as ggml dequantises them
            model = model.dequantize()
        base = config if config is not None else TrainConfig.defaults(arch)
        return model, base.replace(**{**options, "arch": arch}), []
    changed = sorted(
        k
        for k, v in options.items()
        if v is not None and k not in ("epochs", "arch", "device", "threads", "graph", "max_seconds")
    )
    if config is not None or changed:
        raise ConfigError(
            f"resume continues the saved run's recipe; only epochs (the new total), device, graph, "
            f"threads and max_seconds may be given, not {', '.join(changed) or 'config'}"
        )
    try:
        base = TrainConfig().replace(**{k: v for k, v in saved.items() if k in _CONFIG_FIELDS})
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"resume: the model's stored config is unusable ({exc})") from None
    keep = {f.name for f in dataclasses.fields(EpochStats)}
    history = [
        EpochStats(**{k: v for k, v in h.items() if k in keep})
        for h in model.metadata.get("history", [])
        if isinstance(h, dict) and keep - {"lr", "interrupted", "time_limit"} <= set(h)
    ]
    # a time budget belongs to one call, not to the recipe: a resumed run has none unless it is given again
    budget = {"max_seconds": options.get("max_seconds") or 0.0}
    return (
        model,
        base.replace(**{k: options.get(k) for k in ("epochs", "device", "threads", "graph")}, **budget),
        history,
    )


def train(
    images: Optional[ArrayOrPath] = None,
    labels: Optional[ArrayOrPath] = None,
    *,
    config: Optional[TrainConfig] = None,
    n_classes: Optional[int] = None,
    data_dir: Optional[PathLike] = None,
    progress: bool = True,
    callbacks: Optional[Sequence[Any]] = None,
    on_epoch: Optional[Callable[[EpochStats, Model], Optional[bool]]] = None,
    validation_data: Any = None,
    early_stopping: Optional[int] = None,
    restore_best: bool = True,
    checkpoint: Optional[PathLike] = None,
    checkpoint_best_only: bool = False,
    metrics: Optional[PathLike] = None,
    init: Union[Model, PathLike, None] = None,
    resume: Union[Model, PathLike, None] = None,
    save_optimizer: bool = False,
    dataset: Optional[str] = None,
    **options: Any,
) -> tuple[Model, list[EpochStats]]:
    """Train a classifier with ggml-opt and return ``(model, history)``.

    ``images``/``labels``: uint8 arrays [N, H, W] and [N], IDX file paths, or a directory with the
    MNIST file names; ``dataset`` names a known dataset in ``data_dir`` ("fashion-mnist", "emnist-letters", ...).
    ``options`` override fields of ``config`` (default ``TrainConfig.defaults(options.get("arch", "cnn"))``):
    epochs, batch_size, lr, seed, device, ...

    - ``validation_data=(images, labels)`` (arrays or IDX paths) is evaluated after every epoch, like
      ``val_split`` but without taking training images.
    - ``callbacks=[...]``: Keras-style callbacks (:mod:`ggml_mnist.callbacks`): ``gm.callbacks.EarlyStopping``,
      ``ModelCheckpoint``, ``RunLog`` or any object with ``on_epoch_end(stats, model)`` (and optionally
      ``on_train_begin``, ``on_epoch_begin``, ``on_batch_end`` (throttled), ``on_train_end``). The keywords below
      are shorthands that build those callbacks; they run first, in this order:
    - ``early_stopping=patience`` stops when the validation loss has not improved for that many epochs and,
      with ``restore_best``, puts back the weights of the best epoch (``EarlyStopping``).
    - ``checkpoint="dir/"`` saves ``dir/epoch-NNN.gguf`` after every epoch, or only ``dir/best.gguf`` when the
      validation loss (the training loss without validation) improves with ``checkpoint_best_only``
      (``ModelCheckpoint``).
    - ``metrics="run.sqlite"`` appends the run, its epochs and its batches to a SQLite run log (``RunLog``).
    - ``on_epoch(stats, model)`` is called after each epoch; returning False stops training there.
    - ``init=model_or_path`` fine-tunes saved weights (the network comes from the model). ``resume=model_or_path``
      continues a run saved with ``save_optimizer=True`` exactly: same recipe, AdamW moments, schedule position and
      shuffle order, up to ``epochs`` in total.

    ``model.metadata`` (saved with the model) holds the config, the history so far, the dataset, its class names
    and a status ("finished", "interrupted", "stopped_early", "time_limit"), and is up to date whenever a callback's
    ``on_epoch_end`` runs.
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
    if early_stopping is not None and (
        isinstance(early_stopping, bool) or not isinstance(early_stopping, int) or early_stopping < 1
    ):
        raise ConfigError(
            f"early_stopping is the patience in epochs, a whole number >= 1 (or None), got {early_stopping!r}"
        )
    _check_data_dir(data_dir)
    run_callbacks = _callbacks.from_keywords(
        early_stopping=early_stopping,
        restore_best=restore_best,
        checkpoint=checkpoint,
        checkpoint_best_only=checkpoint_best_only,
        metrics=metrics,
        on_epoch=on_epoch,
    ) + check_callbacks(callbacks)
    check_distinct(
        [
            (cb.what, cb.directory if isinstance(cb, _callbacks.ModelCheckpoint) else cb.path)
            for cb in run_callbacks
            if isinstance(cb, (_callbacks.ModelCheckpoint, _callbacks.RunLog))
        ]
    )
    start_path = _start_path(resume)
    for cb in run_callbacks:  # before any work: the folders and files the callbacks will write
        if isinstance(cb, _callbacks.ModelCheckpoint):
            cb.prepare(start_path)
    for cb in run_callbacks:
        if isinstance(cb, _callbacks.RunLog):
            check_log_path(cb.path, [start_path])
    start_model, cfg, history = _resolve_start(
        config, options, init, resume, {"device": options.get("device"), "threads": options.get("threads")}
    )
    cfg = cfg.validate()
    first_epoch = len(history) + 1
    if first_epoch > cfg.epochs:
        raise ConfigError(f"resume: the model has already trained {len(history)} epochs; give epochs > {len(history)}")
    name = _dataset_name(images, labels, data_dir, dataset)
    if config is None and options.get("augment") is None and resume is None:
        # the digits' default distorts a garment's outline and never mirrors it: photos get their own level
        cfg = cfg.replace(augment=for_dataset(cfg.augment, preparation(name)))
    source = (
        os.fspath(images)
        if isinstance(images, (str, os.PathLike))
        else (os.fspath(data_dir) if images is None and data_dir is not None else "array")
    )
    images, labels = resolve_dataset(images, labels, "train", data_dir, dataset)
    want_size = start_model.image_size if start_model is not None else None
    if start_model is not None:
        y = np.asarray(labels)
        if y.size and np.issubdtype(y.dtype, np.integer) and int(y.max()) >= start_model.n_classes:
            raise DataError(
                f"the labels go up to {int(y.max())} but the model to start from has "
                f"{start_model.n_classes} outputs; train a new model (leave out init=/resume=, "
                "--init/--resume), which takes its number of classes from the labels"
            )
    images, labels, n_classes = validate_dataset(
        images, labels, start_model.n_classes if start_model else n_classes, image_size=want_size
    )
    n, h, w = images.shape
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    n_val = int(round(n * cfg.val_split))
    val_idx = np.sort(order[:n_val]).astype(np.int64)
    train_idx = np.sort(order[n_val:]).astype(np.int64)
    validation = None  # validation_data's (images, labels); None: val_idx picks training images
    if validation_data is not None:
        if n_val:
            raise ConfigError("give validation_data or val_split, not both")
        validation = _validation_arrays(validation_data, (h, w), n_classes)  # a native dataset of its own
        val_idx = np.arange(len(validation[1]), dtype=np.int64)
        n_val = len(val_idx)
    if n_val == 0 and any(isinstance(cb, _callbacks.EarlyStopping) for cb in run_callbacks):
        raise ConfigError("early_stopping watches the validation loss: give validation_data or val_split too")
    steps_per_epoch = len(train_idx) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(train_idx)} training images are fewer than one batch of {cfg.batch_size}; "
            "lower batch_size or val_split"
        )
    info = {
        "name": name,
        "n": int(n),
        "n_train": int(len(train_idx)),
        "n_val": n_val,
        "image_size": [int(h), int(w)],
        "n_classes": n_classes,
        "source": source,
        "fingerprint": fingerprint(images, labels),  # evaluate() warns when it is given these very images
    }
    if start_model is not None:
        start_model.set_graph(cfg.graph)
    model = start_model or Model.create(
        cfg.arch,
        n_classes=n_classes,
        image_size=(h, w),
        hidden=cfg.hidden,
        conv_channels=cfg.conv_channels,
        device=cfg.device,
        threads=cfg.threads,
        seed=cfg.seed,
        graph=cfg.graph,
    )
    run = TrainingRun(
        model,
        cfg,
        images,
        labels,
        n_classes,
        train_idx,
        val_idx,
        info,
        history,
        keep_optimizer=save_optimizer or resume is not None,
        exact_resume=resume is not None,
        validation=validation,
    )
    return model, run.fit(run_callbacks, progress=progress)


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _start_path(resume: Any) -> Optional[str]:
    """The file a resumed run continues from (a path, or the file a Model was loaded from), else None."""
    if isinstance(resume, Model):
        return resume.path
    return os.fspath(resume) if isinstance(resume, (str, os.PathLike)) else None


def _warn_if_trained_on(model: Model, images: np.ndarray, labels: np.ndarray) -> None:
    """Warn when the images to evaluate on are the very set the model was trained on (its dataset's fingerprint)."""
    trained = model.metadata.get("dataset")
    if isinstance(trained, dict) and trained.get("fingerprint") == fingerprint(images, labels):
        warnings.warn(
            f"these {len(labels)} images are the set the model was trained on (from {trained.get('source')!r}), so "
            "the accuracy says how well it remembers them, not how it reads new ones; evaluate on a held-out "
            "test split",
            GgmlMnistWarning,
            stacklevel=3,
        )


def evaluate(
    model: Union[Model, PathLike],
    images: Optional[ArrayOrPath] = None,
    labels: Optional[ArrayOrPath] = None,
    *,
    data_dir: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    batch_size: int = EVAL_CHUNK,
    keep_probabilities: bool = True,
    device: Optional[str] = None,
    threads: Optional[int] = None,
) -> EvalResult:
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
            raise ConfigError(
                f"device and threads apply when evaluate() loads a model file; this Model already runs on "
                f"{model.device}: load it with gm.load(path, device=..., threads=...) instead"
            )
    else:
        model = Model.load(model, device=device or DEFAULT_DEVICE, threads=0 if threads is None else threads)
    if dataset is None and images is None:
        dataset = recorded_dataset(model.metadata)
    images, labels = resolve_dataset(images, labels, "test", data_dir, dataset)
    images, labels, _ = validate_dataset(images, labels, model.n_classes, image_size=model.image_size)
    _warn_if_trained_on(model, images, labels)
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


def eval_result(
    predictions: np.ndarray,
    losses: np.ndarray,
    labels: np.ndarray,
    seconds: float,
    probabilities: Optional[np.ndarray],
    n_classes: int,
) -> EvalResult:
    """The EvalResult of per-image predictions and losses (-log of the true class's probability) against labels."""
    n = len(labels)
    accuracy = float((predictions == labels).mean()) if n else float("nan")
    return EvalResult(
        n=n,
        loss=float(losses.mean()),
        loss_unc=float(losses.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        accuracy=accuracy,
        accuracy_unc=float(np.sqrt(accuracy * (1 - accuracy) / (n - 1))) if n > 1 else float("nan"),
        seconds=seconds,
        images_per_second=n / seconds if seconds > 0 else float("inf"),
        predictions=predictions,
        probabilities=probabilities,
        labels=labels.astype(np.int64),
        n_classes=n_classes,
    )


def export_gguf(
    path: PathLike,
    arch: ArchLike,
    weights: Mapping[str, Any],
    *,
    layout: str = "ggml",
    image_size: Optional[Sequence[int]] = None,
    metadata: Optional[Mapping[str, Any]] = None,
) -> Model:
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
    tensors = [
        (i, f"{x.name}.{'kernel' if isinstance(x, Conv2d) else 'weight'}", f"{x.name}.bias")
        for i, x in enumerate(layers)
        if isinstance(x, (Conv2d, Dense))
    ]
    missing = [name for _, w, b in tensors for name in (w, b) if name not in arrays]
    if missing:
        raise ConfigError(f"export_gguf: missing tensor(s) {', '.join(missing)} for architecture {_arch_label(arch)}")
    for i, w, _ in tensors:
        width = int(arrays[w].shape[0]) if arrays[w].ndim else 0
        layers[i] = dataclasses.replace(
            layers[i], **{"out_channels" if isinstance(layers[i], Conv2d) else "units": width}
        )
    if image_size is None:
        image_size = (28, 28)
        if isinstance(layers[0], Dense):
            n_pixels = arrays[tensors[0][1]].shape[-1]
            side = int(round(np.sqrt(n_pixels)))
            if side * side != n_pixels:
                raise ConfigError(
                    f"export_gguf: {tensors[0][1]} has {n_pixels} inputs, which is not a square image; "
                    "give image_size=(height, width)"
                )
            image_size = (side, side)
    n_classes = layers[-1].units if isinstance(layers[-1], Dense) else 0
    layers, shapes = check_net(layers, n_classes, image_size)
    if layout == "torch":
        for i, w, _ in tensors:
            if isinstance(layers[i], Dense) and i > 0 and not any(isinstance(x, Dense) for x in layers[:i]):
                h, wd, c, _params = shapes[i - 1]
                out = arrays[w].shape[0]
                if arrays[w].size != out * c * h * wd:
                    raise DataError(
                        f"export_gguf: {w} has {arrays[w].size // max(out, 1)} inputs; expected {c}x{h}x{wd}"
                    )
                arrays[w] = arrays[w].reshape(out, c, h, wd).transpose(0, 2, 3, 1).reshape(out, c * h * wd)
    model = Model.create(layers, n_classes=n_classes, image_size=image_size)
    model.set_weights(arrays)
    model.save(path, metadata=dict(metadata or {}, source="export_gguf"))
    return model


def _arch_label(arch: ArchLike) -> str:
    return arch if isinstance(arch, str) else "(layer list)"
