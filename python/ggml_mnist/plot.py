"""Pictures of training and of a model: curves, confusion matrix, mistakes, conv filters, feature maps.

matplotlib is an optional extra (``pip install "ggml-mnist[plot]"``), imported only when a plot is made.
Each function returns a ``matplotlib.figure.Figure`` (made without pyplot, so it works headless and in
threads) and, given ``path``, also writes it as a PNG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from .data import atomic_path
from .errors import ConfigError, DataError
from .layers import Conv2d, Dropout
from .model import Model, PathLike
from .outputs import PNG_SOFTWARE, check_output
from .runlog import read_epochs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = 'plots need matplotlib: pip install "ggml-mnist[plot]"'
HistoryLike = Union[Model, Sequence[Any]]
# history keys: the agreed metadata names first, then EpochStats' field names
_ALIASES = {
    "loss": ("loss", "train_loss"),
    "accuracy": ("accuracy", "train_acc"),
    "val_loss": ("val_loss",),
    "val_accuracy": ("val_accuracy", "val_acc"),
    "lr": ("lr",),
}


def require_matplotlib() -> None:
    """Raise ImportError saying how to install matplotlib, the optional extra, when it is missing."""
    try:
        import matplotlib.figure  # noqa: F401  (what every figure is made of)
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig: Figure, path: PathLike, *, force: bool = False) -> None:
    """Write ``fig`` as a PNG atomically: a failed save leaves an existing file untouched. An existing file that
    is not a picture this package drew is replaced only with ``force`` (ModelIOError otherwise)."""
    path = check_output(path, kind="png", force=force, what="the plot", example="plot.png")
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # unlike mkstemp, the file gets the usual permissions (umask)
        fig.savefig(f, format="png", metadata={"Software": PNG_SOFTWARE})  # marks the file as ours


def _done(fig: Figure, path: Optional[PathLike], force: bool) -> Figure:
    if path is not None:
        save_png(fig, path, force=force)
    return fig


def history_rows(history: HistoryLike) -> list[dict[str, Optional[float]]]:
    """Normalise a history (a Model's stored one, EpochStats or dicts) to dicts of epoch, loss, accuracy,
    val_loss, val_accuracy and lr (None where not recorded). Raises DataError for an empty history."""
    if isinstance(history, Model):
        history = history.metadata.get("history") or []
    rows = []
    for i, entry in enumerate(history, start=1):
        d = entry if isinstance(entry, Mapping) else entry.as_dict()
        row: dict[str, Optional[float]] = {"epoch": float(d.get("epoch", i))}
        for key, names in _ALIASES.items():
            value = next((d[n] for n in names if d.get(n) is not None), None)
            row[key] = None if value is None else float(value)
        rows.append(row)
    if not rows:
        raise DataError("no training history: the model file holds none (train with ggml-mnist) or give --metrics")
    return rows


def history_from_metrics(path: PathLike, run: Optional[int] = None) -> list[dict[str, Optional[float]]]:
    """Read the per-epoch history of one run (default: the latest) from a ``--metrics`` SQLite log.

    Raises DataFileNotFoundError for a missing file and DataError for a file without that run.
    """
    return history_rows(read_epochs(path, run)[1])


def history(history_or_model: HistoryLike, *, path: Optional[PathLike] = None, force: bool = False) -> Figure:
    """Loss and accuracy against epoch, train and validation, and the learning rate when recorded."""
    rows = history_rows(history_or_model)
    has_lr = any(r["lr"] is not None for r in rows)
    fig = _figure(12 if has_lr else 8.5, 3.6)
    axes = fig.subplots(1, 3 if has_lr else 2)
    panels = [("loss", "loss", 1.0), ("accuracy", "accuracy (%)", 100.0)] + (
        [("lr", "learning rate", 1.0)] if has_lr else []
    )
    for ax, (key, title, scale) in zip(axes, panels):
        series = [(key, "train")] if key == "lr" else [(key, "train"), (f"val_{key}", "validation")]
        for name, label in series:
            pts = [(r["epoch"], r[name] * scale) for r in rows if r[name] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label if key != "lr" else "lr")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if key != "lr":
            ax.legend()
    return _done(fig, path, force)


def confusion_matrix(
    result: Any, *, class_names: Optional[Sequence[str]] = None, path: Optional[PathLike] = None, force: bool = False
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes of an EvalResult (or a square count matrix)."""
    counts = np.asarray(result.confusion_matrix() if hasattr(result, "confusion_matrix") else result)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise DataError(f"a confusion matrix is square, got shape {counts.shape}")
    n = counts.shape[0]
    names = _class_names(class_names, n)
    size = max(5.0, 0.5 * n + 2)
    fig = _figure(size, size * 0.9)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(
        range(n), names, rotation=45 if max(len(s) for s in names) > 2 else 0, ha="right" if n > 2 else "center"
    )
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {int(np.trace(counts))} of {int(counts.sum())} right")
    if n <= 30:
        top = counts.max() or 1
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, str(int(c)), ha="center", va="center", fontsize=8, color="white" if c > top / 2 else "black")
    return _done(fig, path, force)


def mistakes(
    model: Model,
    x: Any,
    y: Any,
    *,
    n: int = 24,
    class_names: Optional[Sequence[str]] = None,
    path: Optional[PathLike] = None,
    force: bool = False,
) -> Figure:
    """A grid of the ``n`` most confident mistakes of ``model`` on images ``x`` with labels ``y``."""
    images = np.asarray(x)
    labels = np.asarray(y).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise DataError(f"mistakes() needs images [N, H, W] and labels [N], got {images.shape} and {labels.shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    probs = model.predict_proba(images)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    names = _class_names(class_names if class_names is not None else model.class_names, model.n_classes)
    cols = min(8, max(1, len(worst)))
    rows = max(1, math.ceil(len(worst) / cols))
    fig = _figure(1.5 * cols + 0.4, 1.75 * rows + 0.5)
    fig.suptitle(f"{len(wrong)} mistakes in {len(labels)} images; the most confident {len(worst)}")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, worst):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"true {names[labels[i]]}\npred {names[pred[i]]} {100 * probs[i, pred[i]]:.0f}%", fontsize=8)
    return _done(fig, path, force)


def _mosaic(tiles: np.ndarray) -> np.ndarray:
    """Tiles [rows, cols, h, w] as one image with a one-pixel NaN gap between them."""
    r, c, h, w = tiles.shape
    out = np.full((r * (h + 1) - 1, c * (w + 1) - 1), np.nan, dtype=np.float32)
    for i in range(r):
        for j in range(c):
            out[i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = tiles[i, j]
    return out


def feature_grid(maps: np.ndarray, columns: int = 8) -> np.ndarray:
    """Feature maps [C, H, W] as one image of ``columns`` maps a row (NaN gaps and padding); units [N] as one row."""
    if maps.ndim == 1:
        return maps[None, :]
    c, h, w = maps.shape
    rows = math.ceil(c / columns)
    tiles = np.full((rows * min(c, columns), h, w), np.nan, dtype=np.float32)
    tiles[:c] = maps
    return _mosaic(tiles.reshape(rows, min(c, columns), h, w))


def filters(model: Model, *, path: Optional[PathLike] = None, force: bool = False) -> Figure:
    """Every convolution layer's kernels: one column per output channel, one row per input channel."""
    convs = [layer for layer in model.layers if isinstance(layer, Conv2d)]
    if not convs:
        raise ConfigError(f"this {model.arch} network has no convolution layers, so it has no filters to show")
    weights = model.get_weights()
    fig = _figure(9, 1.2 + 2.2 * len(convs))
    for ax, layer in zip(np.atleast_1d(fig.subplots(len(convs), 1)), convs):
        kernel = weights[f"{layer.name}.kernel"]  # [out, in, k, k]
        limit = float(np.abs(kernel).max()) or 1.0
        image = ax.imshow(_mosaic(kernel.transpose(1, 0, 2, 3)), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(
            f"{layer.name}: {kernel.shape[0]} x {kernel.shape[1]} kernels {kernel.shape[2]}x{kernel.shape[3]}",
            fontsize=9,
        )
        ax.set_xlabel("output channel")
        ax.set_ylabel("input channel")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _done(fig, path, force)


def activations(model: Model, image: Any, *, path: Optional[PathLike] = None, force: bool = False) -> Figure:
    """The feature maps of one image ([H, W] uint8 or floats in [0, 1]), layer by layer (dropout skipped)."""
    maps = model.activations(image)
    shown = [(i, layer, a) for i, (layer, a) in enumerate(zip(model.layers, maps)) if not isinstance(layer, Dropout)]
    grids = [feature_grid(a) for _, _, a in shown]
    heights = [3.0] + [max(0.6, g.shape[0] / max(g.shape[1], 1) * 10) for g in grids]
    fig = _figure(10, 0.4 * len(heights) + sum(heights))
    axes = np.atleast_1d(fig.subplots(len(heights), 1, height_ratios=heights))
    axes[0].imshow(np.asarray(image), cmap="gray")
    axes[0].set_title("input", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    names = model.class_names
    for ax, (i, layer, a), grid in zip(axes[1:], shown, grids):
        ax.imshow(grid, cmap="viridis", aspect="auto" if a.ndim == 1 else "equal", interpolation="nearest")
        name = getattr(layer, "name", None)
        ax.set_title(f"layer {i}: {name + ' ' if name else ''}{layer.describe()} -> {tuple(a.shape)}", fontsize=9)
        if i == shown[-1][0] and a.shape == (len(names),):  # the output strip: one unit per class
            ax.set_xticks(
                range(len(names)),
                names,
                fontsize=8,
                rotation=45 if max(map(len, names)) > 2 else 0,
                ha="right" if max(map(len, names)) > 2 else "center",
            )
    return _done(fig, path, force)


def _class_names(names: Optional[Sequence[str]], n: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(n)]
    names = [str(s) for s in names]
    if len(names) != n:
        raise ConfigError(f"class_names has {len(names)} names for {n} classes")
    return names


def study(study_or_result: Any, *, path: Optional[PathLike] = None, force: bool = False) -> Figure:
    """A recipe search (``gm.tune``'s result, or its Optuna study): the validation accuracy of every trial after each
    epoch (pruned trials in grey, where the pruner stopped them), each finished trial's score in trial order with the
    best so far, and the parameters' importances (Optuna's default evaluator) once two trials have finished."""
    from .tune import require_optuna

    optuna = require_optuna()
    s = getattr(study_or_result, "study", study_or_result)
    if not hasattr(s, "get_trials"):
        raise ConfigError(f"plot.study takes a gm.tune result or an Optuna study, not {type(study_or_result).__name__}")
    states = optuna.trial.TrialState
    trials = [t for t in s.get_trials(deepcopy=False) if t.state in (states.COMPLETE, states.PRUNED)]
    if not trials:
        raise DataError(
            f"study {s.study_name!r} has no finished trials to draw yet; run trials first (or wait for one to "
            "finish), or look at it with --show"
        )
    done = [t for t in trials if t.state == states.COMPLETE and t.value is not None]
    importances = {}
    if len(done) >= 2 and s.user_attrs.get("ggml_mnist", {}).get("mode") != "seeds":
        try:
            with warnings.catch_warnings():  # a small study's quantiles warning: its importances are rough anyway
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(s)
        except (RuntimeError, ValueError):  # no parameter varied among the finished trials
            importances = {}
    fig = _figure(12.5 if importances else 8.5, 3.8)
    axes = fig.subplots(1, 3 if importances else 2)
    curves, scores = axes[0], axes[1]
    for t in trials:
        pts = sorted(t.intermediate_values.items())
        if not pts:
            continue
        pruned = t.state == states.PRUNED
        curves.plot(
            [e for e, _ in pts],
            [100 * v for _, v in pts],
            color="0.65" if pruned else None,
            lw=1.0 if pruned else 1.4,
            marker="x" if pruned else None,
            markevery=[len(pts) - 1] if pruned else None,
            zorder=1 if pruned else 2,
        )
    curves.set_xlabel("epoch")
    curves.xaxis.get_major_locator().set_params(integer=True)
    curves.set_ylabel("validation accuracy (%)")
    n_pruned = sum(t.state == states.PRUNED for t in trials)
    curves.set_title(f"every trial ({n_pruned} pruned, grey)")
    numbers = [t.number for t in done]
    values = [100 * t.value for t in done]
    scores.scatter(numbers, values, s=18, label="finished trial")
    if done:
        best = np.maximum.accumulate(values)
        scores.step(numbers, best, where="post", color="C3", label="best so far")
    scores.set_xlabel("trial")
    scores.set_ylabel("validation accuracy (%)")
    scores.set_title("finished trials")
    scores.legend(loc="lower right")
    for ax in (curves, scores):
        ax.grid(alpha=0.3)
        if values:  # the interesting band: from a little below the worst finished trial
            top = max(values)
            ax.set_ylim(max(min(values) - 0.5 * (top - min(values)) - 0.05, 0), top + 0.15 * (top - min(values)) + 0.05)
    if importances:
        ax = axes[2]
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="C2")
        ax.set_xlabel("importance (Optuna)")
        ax.set_title("what mattered")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"study {s.study_name}: {len(done)} finished, {n_pruned} pruned")
    return _done(fig, path, force)
