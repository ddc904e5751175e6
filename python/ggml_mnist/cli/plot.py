"""Console script ``mnist-plot``: every picture of a model into one folder (argparse only; the work is in plot)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .. import api, plot
from ..config import DEFAULT_DEVICE
from ..datasets import dataset_info
from ..errors import ConfigError, DataError
from ..layers import Conv2d
from ..outputs import check_output, check_writable_dir
from .common import add_data_arguments, add_version, dataset_dir, model_dataset, run

#: The files mnist-plot writes into --out.
PICTURES = ("history.png", "confusion.png", "mistakes.png", "filters.png", "activations.png")


def plot_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-plot."""
    p = argparse.ArgumentParser(
        prog="mnist-plot",
        description="Write PNG plots of a GGUF model: training curves (from the model or a --metrics log), "
        "confusion matrix, most confident mistakes and feature maps on the test split, conv filters.",
    )
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created when missing)")
    p.add_argument("--metrics", metavar="RUN.sqlite", help="read the training curves from this SQLite run log")
    p.add_argument("--run", type=int, help="run id in --metrics (default: the latest run)")
    add_data_arguments(p, "the one stored in the model, else mnist")
    p.add_argument("--mistakes", type=int, default=24, metavar="N", help="how many mistakes to show (default: 24)")
    p.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"auto, cpu or a ggml device name (default: {DEFAULT_DEVICE})"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="let the plots replace files in DIR that ggml-mnist did not draw (never the model or --metrics)",
    )
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


def _plot(args: argparse.Namespace) -> int:
    if args.run is not None and args.metrics is None:
        raise ConfigError("--run picks a run in a --metrics log; give --metrics RUN.sqlite too")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out!r} is a file; give a folder for the pictures (created when missing)")
    model = api.load(args.model, device=args.device)  # a mistyped model name leaves no empty folder behind
    check_writable_dir(out, "--out")
    # every picture's file, checked before the work: never the model or the run log, never another program's file
    for name in PICTURES:
        check_output(out / name, [args.model, args.metrics], kind="png", force=args.force, what="the plot")
    written = []
    try:
        history = plot.history_from_metrics(args.metrics, args.run) if args.metrics else plot.history_rows(model)
    except DataError as exc:
        if args.metrics:
            raise
        print(f"mnist-plot: no training curves: {exc}", file=sys.stderr)
    else:
        plot.history(history, path=out / "history.png", force=args.force)
        written.append("history.png")
    dataset = model_dataset(model, args.dataset)
    images, labels = dataset_info(dataset).load(dataset_dir(args.data_dir, dataset, "test", args.download), "test")
    result = api.evaluate(model, images, labels)
    names = model.class_names
    plot.confusion_matrix(result, class_names=names, path=out / "confusion.png", force=args.force)
    plot.mistakes(
        model, images, labels, n=args.mistakes, class_names=names, path=out / "mistakes.png", force=args.force
    )
    written += ["confusion.png", "mistakes.png"]
    if any(isinstance(layer, Conv2d) for layer in model.layers):
        plot.filters(model, path=out / "filters.png", force=args.force)
        written.append("filters.png")
    plot.activations(model, images[0], path=out / "activations.png", force=args.force)
    written.append("activations.png")
    print(
        f"mnist-plot: test accuracy {100 * result.accuracy:.2f}% on {result.n} images; wrote "
        + ", ".join(str(out / name) for name in written)
    )
    return 0


def plot_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-plot."""
    try:
        return run(_plot, plot_parser(), argv)
    except ImportError as exc:  # matplotlib, the optional extra, is missing
        print(f"mnist-plot: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(plot_main())
