"""Console script ``mnist-tune``: recipe searches and seed studies on Optuna (argparse only; the work is in tune)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .. import api, plot
from ..config import DEFAULT_DATA_DIR
from ..datasets import DATASETS
from ..errors import ConfigError
from ..layers import preset_names
from ..outputs import check_output, check_png_name
from ..tune import (
    DEFAULT_DIR,
    GRACE_BEATS,
    HEARTBEAT,
    VAL_SPLIT,
    default_space,
    load_study,
    require_optuna,
    summarize,
    tune,
)
from .common import HelpFormatter, add_version, data_args, dataset_dir, run


def tune_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-tune."""
    p = argparse.ArgumentParser(
        prog="mnist-tune",
        formatter_class=HelpFormatter,
        description="Search training recipes (or train one recipe over several seeds) with Optuna: every trial trains "
        "on the training images less a validation split and is scored on that split, never on the test set. "
        "Several processes (--workers) and machines (the same command with one --storage URL) share a "
        "study. Needs the tune extra: pip install 'ggml-mnist[tune]'.",
    )
    p.add_argument("arch", metavar="ARCH", nargs="?", help=f"a preset: {', '.join(preset_names())}")
    p.add_argument(
        "rest",
        nargs="*",
        metavar="[IMAGES LABELS]",
        help="training IDX files (raw or .gz); without them the training split in --data-dir",
    )
    p.add_argument("--trials", type=int, metavar="N", help="trials of the whole study, shared by all its workers")
    p.add_argument(
        "--seeds",
        type=int,
        metavar="K",
        help="instead of a search, train one recipe (the preset's, changed by --space) with K seeds and "
        "report mean ± spread",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="with --seeds: also measure each seed's model on the test split (reported, never chosen on)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database: sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB, shared by every "
        "machine that joins (default: SQLite in the run folder)",
    )
    p.add_argument("--study", metavar="NAME", help="study name (default: ARCH-DATASET, with -seeds for --seeds)")
    p.add_argument(
        "--dir",
        metavar="DIR",
        help=f"run folder: trials/, best.gguf and the default SQLite study (default: {DEFAULT_DIR}/STUDY)",
    )
    p.add_argument(
        "--space",
        metavar="JSON|FILE",
        help='entries over the default search space, e.g. \'{"lr": {"low": 1e-4, "high": 1e-2, "log": true}, '
        '"batch_size": {"choices": [50, 100]}, "weight_decay": null, "hidden": 64}\' (null: not searched)',
    )
    p.add_argument("--show-space", action="store_true", help="print the search space as JSON and exit")
    p.add_argument("--epochs", type=int, help="each trial's epochs (default: the preset's)")
    p.add_argument(
        "--val-split",
        type=float,
        default=VAL_SPLIT,
        help=f"fraction of the training images trials are scored on (default: {VAL_SPLIT})",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="training seed of every trial; --seeds counts from it (default: 42)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads of this machine, shared out between the workers; 0 = all cores (default: 0)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT,
        help=f"seconds between a trial's heartbeats; a trial silent for {GRACE_BEATS} of them (its "
        f"worker died) is run again (default: {HEARTBEAT})",
    )
    p.add_argument(
        "--no-export",
        action="store_true",
        help="do not retrain the best recipe on all training images into DIR/best.gguf at the end",
    )
    p.add_argument("--show", action="store_true", help="print the study's leaderboard and exit (trains nothing)")
    p.add_argument("--json", action="store_true", help="with --show: the leaderboard as one JSON object")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="with --show (implied): also draw the study into FILE.png: every trial's validation accuracy by "
        "epoch, the finished trials' scores and the parameters' importances (needs matplotlib: "
        'pip install "ggml-mnist[plot]")',
    )
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"directory with the dataset, downloaded into DIR/DATASET when missing (default: {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="dataset for --data-dir (default: mnist)")
    p.add_argument(
        "--download", action="store_true", help="download the dataset into a --data-dir that does not exist yet"
    )
    p.add_argument(
        "--force", action="store_true", help="with --plot: replace an existing file of that name that is not a PNG"
    )
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    return add_version(p)


def _space_arg(text: Optional[str]) -> Any:
    """--space: JSON text, or the name of a JSON file."""
    if text is None or text.lstrip().startswith("{"):
        return text
    try:
        return Path(text).read_text()
    except OSError as exc:
        raise ConfigError(
            f"--space {text!r}: cannot read it ({exc.strerror or exc}); give a JSON file or JSON text "
            'such as \'{"lr": {"low": 1e-4, "high": 1e-2, "log": true}}\''
        ) from None


def _tune(args: argparse.Namespace) -> int:
    require_optuna()
    if args.show or args.plot:
        return _show(args)
    if args.arch is None:
        raise ConfigError("give ARCH, e.g. mnist-tune cnn --trials 24 --epochs 3")
    if args.show_space:
        print(json.dumps(default_space(args.arch, args.dataset) | json.loads(_space_arg(args.space) or "{}")))
        return 0
    if (args.trials is None) == (args.seeds is None):
        raise ConfigError("give --trials N (a recipe search) or --seeds K (one recipe over K seeds)")
    if args.test and args.seeds is None:
        raise ConfigError(
            "--test measures a seed study's models on the test split; a search never looks at it, so "
            "give --seeds K or leave --test out"
        )
    images, labels, device = data_args(args.rest, "mnist-tune")
    if device is not None:
        raise ConfigError(f"unexpected argument {device!r}: give IMAGES and LABELS, in that order")
    data_dir = test_data = None
    dataset = args.dataset
    if images is None:
        data_dir = dataset_dir(args.data_dir, args.dataset, "train", args.download)
        if args.test:
            test_data = api.resolve_dataset(None, None, "test", data_dir, args.dataset)
    elif args.test:
        raise ConfigError("--test reads the test split of --data-dir; with IMAGES LABELS given, leave --test out")
    else:
        dataset = None
    result = tune(
        images,
        labels,
        arch=args.arch,
        n_trials=args.trials,
        seeds=args.seeds,
        storage=args.storage,
        study=args.study,
        space=_space_arg(args.space),
        epochs=args.epochs,
        val_split=args.val_split,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        run_dir=args.dir,
        data_dir=data_dir,
        dataset=dataset if data_dir is not None else None,
        test_data=test_data,
        export=not args.no_export,
        heartbeat=args.heartbeat,
        progress=not args.quiet,
    )
    print(result.report())
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.study is None and args.arch is None:
        raise ConfigError("--show needs the study: give ARCH (its default study name) or --study NAME")
    study = args.study or f"{args.arch}-{args.dataset}{'-seeds' if args.seeds else ''}"
    run_dir = args.dir or os.path.join(DEFAULT_DIR, study)
    storage = args.storage or f"sqlite:///{os.path.join(run_dir, 'study.db')}"
    if args.storage is None and not os.path.isfile(os.path.join(run_dir, "study.db")):
        raise ConfigError(f"no study database {os.path.join(run_dir, 'study.db')}; give --dir or --storage of the run")
    if args.plot is not None:
        check_png_name(args.plot, "--plot", "study.png")
        check_output(
            args.plot,
            [os.path.join(run_dir, "study.db")],
            kind="png",
            force=args.force,
            what="--plot output",
            example="study.png",
        )
        try:
            plot.require_matplotlib()  # before any work
        except ImportError as exc:
            raise ConfigError(f"--plot: {exc}") from None
    result = summarize(load_study(storage, study), storage, run_dir)
    if args.json:
        print(json.dumps({k: v for k, v in vars(result).items() if k != "study"}))
    else:
        print(result.report())
    if args.plot is not None:
        plot.study(result, path=args.plot, force=args.force)
    return 0


def tune_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-tune."""
    return run(_tune, tune_parser(), argv)


if __name__ == "__main__":
    sys.exit(tune_main())
