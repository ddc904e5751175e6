"""Console scripts ``mnist-train``, ``mnist-eval`` and ``mnist-data`` (argparse only; the work happens in api)."""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import sys
import textwrap
import types
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from . import api, download
from .augment import LEVELS, PARAMETERS, for_dataset
from .config import DEFAULT_DATA_DIR, DEFAULT_DEVICE, EVAL_CHUNK, GRAPHS, OPTIMIZERS, SCHEDULES, TrainConfig
from .data import read_idx_header, split_files
from .errors import ConfigError, GgmlMnistError, GgmlMnistWarning, ModelIOError
from .datasets import DATASETS, dataset_info, preparation
from .ensemble import Ensemble
from .layers import canonical_preset, load_layers, preset_names, resolve_layers
from .model import check_net, summary_lines
from .outputs import FOREIGN_KINDS, check_distinct, check_output, describe, is_ours, same_file
from .runlog import check_log_path


def _default(field: str) -> str:
    """Describe a field's default, per network where the presets differ."""
    by_value: dict[str, list[str]] = {}
    for name in preset_names():
        by_value.setdefault(str(getattr(TrainConfig.defaults(name), field)), []).append(name)
    if len(by_value) == 1:
        return f"default: {next(iter(by_value))}"
    return "default: " + ", ".join(f"{value} ({' '.join(names)})" for value, names in by_value.items())


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without breaking lines inside hyphenated names such as minerva-mlp."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _add_version(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ._ffi import ffi, lib
    version = f"%(prog)s {ffi.string(lib.gmn_version()).decode()} (ggml {ffi.string(lib.gmn_ggml_version()).decode()})"
    p.add_argument("--version", action="version", version=version)
    return p


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every --option of parser and of its sub-commands."""
    options = []
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options += _long_options(sub)
    return options


def _short_errors(parser: argparse.ArgumentParser) -> None:
    """Make parser (and its sub-commands) report a mistyped option in one line, with the closest real options."""
    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        words = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments") else []
        unknown = [w for w in words if w.startswith("-")]
        if unknown:
            options = _long_options(self)
            hints = []
            for word in unknown:
                close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.7)
                hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
            self.exit(2, f"{self.prog}: error: unknown option {', '.join(hints)}; '{self.prog} --help' lists every option\n")
        argparse.ArgumentParser.error(self, message)

    parser.error = types.MethodType(error, parser)  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _short_errors(sub)


def _run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    _short_errors(parser)
    args = parser.parse_intermixed_args(argv) if parser.prog != "mnist-data" else parser.parse_args(argv)
    if getattr(args, "verbose", False):
        from ._ffi import set_verbose
        set_verbose(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", GgmlMnistWarning)
            warnings.showwarning = _warning_printer(parser.prog)
            return main(args)
    except BrokenPipeError:  # output piped into head and the like: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (GgmlMnistError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: aborted", file=sys.stderr)
        return 130


def _warning_printer(prog: str) -> Callable[..., None]:
    """showwarning for a console script: our warnings as one 'PROG: warning: ...' line, others as Python prints them."""
    original = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, GgmlMnistWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)
    return show


def printable(text: str) -> str:
    """text with every control or format character (ESC, CR, bidi overrides, ...) written as an escape, so that
    words from a file or a client never drive the terminal."""
    return "".join(c if not unicodedata.category(c).startswith("C") else ascii(c)[1:-1] for c in text)


def check_model_argument(path: str, usage: str) -> None:
    """Raise ConfigError when the file given as the model is surely something else (IDX data, a picture, ...),
    which means the arguments were given in the wrong order; ``usage`` shows the right one."""
    kind = describe(path) if os.path.isfile(path) else None
    if kind in (*FOREIGN_KINDS, "a gzip file", "an IDX file") and kind != "a GGUF model file":
        raise ConfigError(f"{path!r} is {kind}, not a GGUF model; the first argument is the model: {usage}")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _data_args(rest: list[str], prog: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """Split optional positionals [IMAGES LABELS] [DEVICE] the way ggml's examples take them, naming likely mix-ups."""
    for arg in rest:
        if arg.lower().endswith(_IMAGE_SUFFIXES):
            raise ConfigError(f"{arg!r} looks like an image file; {prog} takes IDX files (IMAGES LABELS), "
                              "e.g. train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz")
    if len(rest) == 0:
        return None, None, None
    if len(rest) == 1:
        if Path(rest[0]).exists():
            raise ConfigError(f"{rest[0]!r} is a file but its partner is missing: give IMAGES and LABELS, in that order")
        return None, None, rest[0]
    if len(rest) in (2, 3):
        return rest[0], rest[1], rest[2] if len(rest) == 3 else None
    raise ConfigError(f"expected [IMAGES LABELS] [DEVICE], got {len(rest)} extra arguments: {' '.join(rest)}")


def _check_pair_order(images: Optional[str], labels: Optional[str]) -> None:
    """Raise ConfigError when the IDX files given as IMAGES LABELS are the other way round."""
    if images is None or labels is None or not (Path(images).is_file() and Path(labels).is_file()):
        return  # a pipe (<(zcat f.gz)) can be read once only: leave it to the real read
    ndims = []
    for path in (images, labels):
        try:
            ndims.append(len(read_idx_header(path)))
        except GgmlMnistError:
            return  # reading the file itself reports what is wrong with it
    if ndims[0] == 1 and ndims[1] >= 2:
        raise ConfigError(f"{images!r} holds labels and {labels!r} images; the order is IMAGES LABELS")


def _dataset_dir(data_dir: str, dataset: str, split: str, allow_download: bool) -> Path:
    """The directory holding the split: DATA_DIR itself or DATA_DIR/DATASET (either may be given).

    A missing dataset is downloaded into DATA_DIR/DATASET when DATA_DIR exists, is the default, or
    --download was given; a folder of another known dataset is refused.
    """
    root = Path(data_dir)
    other = None
    info = dataset_info(dataset)
    for candidate in (root, root / dataset):
        if info.has_split(candidate, split):
            found = download.identify_dataset(candidate, split)
            if found is None or found == dataset:
                return candidate
            other = other or (candidate, found)
    if other is not None:
        raise ConfigError(f"{other[0]} holds {other[1]}, not {dataset}; point --data-dir at the {dataset} files "
                          f"or at their parent folder (downloads go to DIR/{dataset})")
    if dataset not in download.DATASETS:
        raise ConfigError(f"no {dataset} {split} files in {root} or {root / dataset}, and {dataset} cannot be downloaded "
                          f"here: put {info.prefix}{split}-images-idx3-ubyte.gz and {info.prefix}{split}-labels-idx1-ubyte.gz "
                          "(from the EMNIST release) into one of them")
    if not root.exists() and not allow_download and data_dir != DEFAULT_DATA_DIR:
        raise ConfigError(f"--data-dir {data_dir!r} does not exist; check the path, or add --download to download "
                          f"{dataset} into {root / dataset}")
    print(f"{dataset} not found in {root}; downloading it to {root / dataset}", file=sys.stderr)
    return download.download_dataset(dataset, root)


# ---- mnist-train ------------------------------------------------------------------------------
def train_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-train."""
    p = argparse.ArgumentParser(
        prog="mnist-train", formatter_class=_HelpFormatter,
        description="Train a classifier on MNIST-style IDX data with ggml and save it as GGUF. "
                    "Positional order follows ggml's example: ARCH OUT.gguf [TRAIN_IMAGES TRAIN_LABELS] [DEVICE]; "
                    "with --arch-file, leave ARCH out.")
    p.add_argument("arch", metavar="ARCH", nargs="?",
                   help=f"a preset: {', '.join(preset_names())} (ggml's mnist-fc and mnist-cnn work too)")
    p.add_argument("output", metavar="OUT.gguf", nargs="?", help="where to write the trained model (atomically)")
    p.add_argument("rest", nargs="*", metavar="[IMAGES LABELS] [DEVICE]",
                   help="training IDX files (raw or .gz) and/or a device; without files --data-dir is used")
    p.add_argument("--arch-file", metavar="NET.json",
                   help='the network as a JSON layer list, e.g. [{"type": "conv2d", "out_channels": 8, "kernel_size": 3}, '
                        '{"type": "relu"}, {"type": "dense"}] instead of ARCH (default: none)')
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"directory with the dataset, downloaded into DIR/DATASET when missing (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--dataset", choices=list(DATASETS),
                   help="dataset for --data-dir (default: that of the --init/--resume model, else mnist); "
                   "EMNIST's files (emnist-letters-train-images-idx3-ubyte.gz, ...) must be there already")
    p.add_argument("--download", action="store_true", help="download the dataset into a --data-dir that does not exist yet")
    p.add_argument("--val-images", metavar="IDX", help="validation images (IDX, raw or .gz), evaluated after every epoch (default: none)")
    p.add_argument("--val-labels", metavar="IDX", help="validation labels for --val-images (default: none)")
    p.add_argument("--validate-on-test", action="store_true",
                   help="validate on the dataset's TEST split after every epoch (only to watch; choose recipes on --val-split)")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs and keep the best weights "
                        "(default: off)")
    p.add_argument("--checkpoint", metavar="DIR", help="save DIR/epoch-NNN.gguf after every epoch (created if missing; default: none)")
    p.add_argument("--checkpoint-best", action="store_true",
                   help="with --checkpoint: save only DIR/best.gguf, whenever the validation (else training) loss improves")
    p.add_argument("--metrics", metavar="RUN.sqlite", help="append this run's epochs and batches to a SQLite run log (default: none)")
    p.add_argument("--init", metavar="MODEL.gguf", help="fine-tune the weights of a saved model (its network; ARCH optional; default: none)")
    p.add_argument("--resume", metavar="MODEL.gguf",
                   help="continue a run saved with --save-optimizer exactly, up to --epochs in total (ARCH optional; "
                        "default: none)")
    p.add_argument("--save-optimizer", action="store_true",
                   help="store the AdamW moments and schedule position in the saved model(s), for --resume")
    p.add_argument("--epochs", type=int, help=_default("epochs"))
    p.add_argument("--batch-size", type=int, help="images per optimizer step; " + _default("batch_size"))
    p.add_argument("--physical-batch-size", type=int,
                   help="images per graph evaluation, divides --batch-size (gradient accumulation); default: for a network with "
                        "convolutions on a CPU, the largest divisor of the batch size up to 128, otherwise the batch size")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=_default("optimizer"))
    p.add_argument("--lr", type=float, help="peak learning rate; " + _default("lr"))
    p.add_argument("--lr-schedule", choices=SCHEDULES, help=_default("lr_schedule"))
    p.add_argument("--lr-min-ratio", type=float, help="final lr as a fraction of --lr; " + _default("lr_min_ratio"))
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length in epochs; " + _default("warmup_epochs"))
    p.add_argument("--beta1", type=float, help="AdamW beta1; " + _default("beta1"))
    p.add_argument("--beta2", type=float, help="AdamW beta2; " + _default("beta2"))
    p.add_argument("--eps", type=float, help="AdamW epsilon; " + _default("eps"))
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay; " + _default("weight_decay"))
    p.add_argument("--val-split", type=float, help="fraction held out for validation; " + _default("val_split"))
    p.add_argument("--seed", type=int, help="weight init and shuffle seed (bit-identical reruns); " + _default("seed"))
    p.add_argument("--device", help=f"auto, cpu or a ggml device name such as CUDA0 (default: {DEFAULT_DEVICE})")
    p.add_argument("--threads", type=int, help="CPU threads, 0 = all available cores; " + _default("threads"))
    _add_graph(p)
    p.add_argument("--hidden", type=int, help="units of the network's first hidden dense layer (default: the preset's)")
    p.add_argument("--conv-channels", type=int, nargs="+", metavar="C",
                   help="output channels of the network's convolutions, in order (default: the preset's)")
    p.add_argument("--augment", metavar="LEVEL|JSON",
                   help=f"training-time augmentation: {', '.join(LEVELS)}, or a JSON object of "
                        f"{', '.join(PARAMETERS)} (optionally with \"level\"); " + _default("augment"))
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT that is not a GGUF model (never one of the run's input files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    p.add_argument("--json", action="store_true", help="print one JSON object per epoch and a final one on stdout")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return _add_version(p)


def _add_graph(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graph", choices=GRAPHS,
                   help="graph form: cpu (channels-last, the shim's CPU kernels), portable (ggml's ops only, which GPU "
                        "backends run forward and backward) or auto (cpu on the CPU, else portable; default)")


def _positionals(args: argparse.Namespace) -> tuple[Any, str, list[str]]:
    """(arch, output, rest): with --arch-file, and with --init/--resume unless it names a preset, the first positional
    is the output file."""
    positionals = [p for p in (args.arch, args.output) if p is not None] + list(args.rest)
    if args.arch_file is not None:
        arch: Any = load_layers(args.arch_file)
    elif (args.init or args.resume) and not (positionals and _is_preset(positionals[0])):
        arch = None
    elif positionals:
        arch = positionals.pop(0)
    else:
        raise ConfigError("give the network (ARCH, a preset name, or --arch-file NET.json) and OUT.gguf")
    if not positionals:
        raise ConfigError("give OUT.gguf, the file to save the trained model to")
    return arch, positionals[0], positionals[1:]


def _is_preset(name: str) -> bool:
    try:
        canonical_preset(name)
    except ConfigError:
        return False
    return True


def _validation(args: argparse.Namespace, data_dir: Optional[Path]) -> Any:
    """validation_data from --val-images/--val-labels or --validate-on-test (announced as test data), or None."""
    if (args.val_images is None) != (args.val_labels is None):
        raise ConfigError("give --val-images and --val-labels together")
    if args.val_images is not None:
        if args.validate_on_test:
            raise ConfigError("give --val-images/--val-labels or --validate-on-test, not both")
        _check_pair_order(args.val_images, args.val_labels)
        return args.val_images, args.val_labels
    if not args.validate_on_test:
        return None
    if data_dir is None:
        raise ConfigError("--validate-on-test uses the test split in --data-dir; with IDX files give --val-images and "
                          "--val-labels instead")
    test_dir = _dataset_dir(args.data_dir, args.dataset, "test", args.download)
    images, labels = dataset_info(args.dataset).load(test_dir, "test")
    print(f"mnist-train: validating on the TEST split of {args.dataset} ({len(labels)} images, {test_dir}) as asked: "
          "the val figures below are test figures; choose recipes on --val-split, not on these", file=sys.stderr)
    return images, labels


def _train(args: argparse.Namespace) -> int:
    arch, args.output, rest = _positionals(args)
    images, labels, device = _data_args(rest, "mnist-train")
    _check_pair_order(images, labels)
    if args.device and device and args.device != device:
        raise ConfigError(f"device given twice: {device!r} and --device {args.device!r}")
    if args.init and args.resume:
        raise ConfigError("give --init (fine-tune) or --resume (continue exactly), not both")
    start = args.init or args.resume
    start_model = None
    given_arch = arch
    outputs = [("OUT", args.output), ("--metrics", args.metrics), ("--checkpoint", args.checkpoint)]
    check_distinct(outputs)
    inputs = [p for p in (images, labels, start, args.arch_file, args.val_images, args.val_labels) if p is not None]
    check_output(args.output, inputs, force=args.force, what="OUT")
    if start is not None:
        start_model = api.load(start, device=device or args.device or DEFAULT_DEVICE, threads=args.threads or 0,
                               graph=args.graph or "auto")
        arch = arch if arch is not None else (start_model.arch if start_model.arch != "custom" else start_model.layers)
    if start_model is not None:
        args.dataset = _eval_dataset(start_model, args.dataset)
    elif args.dataset is None and labels is not None:  # explicit files: a known dataset's labels say which it is
        args.dataset = download.identify_labels(labels) or "mnist"
    else:
        args.dataset = args.dataset or "mnist"
    options: dict[str, Any] = dict(
        arch=arch, epochs=args.epochs, batch_size=args.batch_size, physical_batch_size=args.physical_batch_size,
        optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule, lr_min_ratio=args.lr_min_ratio,
        warmup_epochs=args.warmup_epochs, beta1=args.beta1, beta2=args.beta2, eps=args.eps,
        weight_decay=args.weight_decay, val_split=args.val_split, seed=args.seed, device=device or args.device,
        graph=args.graph,
        threads=args.threads, hidden=args.hidden, conv_channels=args.conv_channels, augment=_augment_arg(args.augment))
    if args.resume:
        config = None  # train() refuses every option but epochs, device, graph and threads, as for the API
        options = {k: v for k, v in options.items() if v is not None}
        options["arch"] = given_arch
    else:
        config = TrainConfig.defaults(arch).replace(**options).validate()  # before any download
        if args.augment is None:
            config = config.replace(augment=for_dataset(config.augment, preparation(args.dataset)))
        # train() refuses an ARCH (with --hidden / --conv-channels) that is not the file's network
        options = dict(arch=arch, hidden=args.hidden, conv_channels=args.conv_channels) if args.init else {}
    if args.checkpoint_best and not args.checkpoint:
        raise ConfigError("--checkpoint-best needs --checkpoint DIR")
    data_dir = None
    if images is None:
        if config is not None and start is None:
            # the built-in datasets are 28x28: refuse an impossible network before downloading
            n_classes = len(dataset_info(args.dataset).class_names)
            check_net(resolve_layers(config.arch, n_classes, hidden=config.hidden, conv_channels=config.conv_channels),
                      n_classes, (28, 28))
        data_dir = _dataset_dir(args.data_dir, args.dataset, "train", args.download)
    validation_data = _validation(args, data_dir)
    if data_dir is not None:  # OUT is never one of the dataset's files, however they were found
        inputs += split_files(data_dir, dataset_info(args.dataset).prefix)
        check_output(args.output, inputs, force=args.force, what="OUT")
    if args.metrics is not None:
        check_log_path(args.metrics, inputs)

    def on_epoch(stats: api.EpochStats, _model: Any) -> None:
        if args.json:
            print(json.dumps({"event": "epoch", **stats.as_dict()}), flush=True)

    model, history = api.train(
        images, labels, config=config, data_dir=data_dir, dataset=args.dataset if images is None else None,
        progress=not args.quiet and not args.json, on_epoch=on_epoch, validation_data=validation_data,
        early_stopping=args.early_stopping, checkpoint=args.checkpoint, checkpoint_best_only=args.checkpoint_best,
        metrics=args.metrics, init=start_model if args.init else None, resume=start_model if args.resume else None,
        save_optimizer=args.save_optimizer, **options)
    interrupted = bool(history) and history[-1].interrupted
    # an interrupted run never replaces an existing model: its partial model goes beside it
    saved = _interrupted_name(args.output, inputs) if interrupted and Path(args.output).exists() else args.output
    model.save(saved, force=args.force)
    seconds = sum(s.seconds for s in history)
    if args.json:
        print(json.dumps({"event": "done", "model": saved, "epochs": len(history), "seconds": seconds,
                          "device": model.device, "architecture": model.architecture, "interrupted": interrupted}), flush=True)
    elif not args.quiet:
        print(f"mnist-train: trained {model.architecture} on {model.device} for {len(history)} epochs in {seconds:.1f}s; "
              f"saved {saved}", file=sys.stderr)
    if interrupted:
        kept = f"; {args.output} is kept as it was" if saved != args.output else ""
        print(f"mnist-train: interrupted in epoch {len(history)}; {saved} holds the model trained so far{kept}",
              file=sys.stderr)
        return 130
    return 0


def _augment_arg(text: Optional[str]) -> Any:
    """--augment's value: a level name, or a JSON object of parameters."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--augment {text!r} is not valid JSON ({exc.msg}); write e.g. '{{\"rotate\": 10, \"shift\": 2}}'") from None


def _interrupted_name(output: str, inputs: Sequence[str] = ()) -> str:
    """Where an interrupted run saves beside an existing OUT: model.gguf -> model.interrupted.gguf, or
    model.interrupted-2.gguf, ... when that name is one of the run's inputs or a file of another kind."""
    path = Path(output)
    for n in range(1, 1000):
        name = path.with_name(f"{path.stem}.interrupted{'' if n == 1 else f'-{n}'}{path.suffix or '.gguf'}")
        if not name.exists() or (is_ours(name, "model") and not any(same_file(name, p) for p in inputs)):
            return str(name)
    raise ModelIOError(f"no free name for the interrupted run's model beside {output!r}; remove old "
                       f"{path.stem}.interrupted*.gguf files")


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-train."""
    return _run(_train, train_parser(), argv)


# ---- mnist-eval -------------------------------------------------------------------------------
def eval_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-eval."""
    p = argparse.ArgumentParser(
        prog="mnist-eval",
        description="Evaluate a GGUF model (ours or ggml's mnist example's) on labelled IDX images: "
                    "MODEL.gguf [MORE.gguf ...] [IMAGES LABELS] [DEVICE]; several models are evaluated as one "
                    "ensemble that averages their probabilities.")
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("rest", nargs="*", metavar="[MORE.gguf ...] [IMAGES LABELS] [DEVICE]",
                   help="more models (an ensemble), test IDX files (raw or .gz) and/or a device; without files the test "
                        "split in --data-dir")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"directory with the dataset, downloaded into DIR/DATASET when missing (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--dataset", choices=list(DATASETS),
                   help="dataset for --data-dir (default: the one the model was trained on, else mnist)")
    p.add_argument("--download", action="store_true", help="download the dataset into a --data-dir that does not exist yet")
    p.add_argument("--device", help=f"auto, cpu or a ggml device name such as CUDA0 (default: {DEFAULT_DEVICE})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all available cores (default: 0)")
    _add_graph(p)
    p.add_argument("--batch-size", type=int, default=EVAL_CHUNK, help=f"images per native call (default: {EVAL_CHUNK})")
    p.add_argument("--info", action="store_true", help="print the model's architecture, shapes and training metadata, then exit")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return _add_version(p)


def _info(model: Any, as_json: bool) -> int:
    info = {"architecture": model.architecture, "arch": model.arch, "layers": [x.to_dict() for x in model.layers],
            "n_params": model.n_params, "n_classes": model.n_classes, "image_size": list(model.image_size),
            "device": model.device, "tensors": {k: list(v) for k, v in model.tensor_shapes().items()},
            "metadata": model.metadata, "plan": model.plan}
    if as_json:
        print(json.dumps(info))
        return 0
    print(f"architecture: {printable(info['architecture'])} ({printable(str(model.arch))})  classes: {model.n_classes}  "
          f"image: {model.image_size[0]}x{model.image_size[1]}")
    names = model.metadata.get("class_names")
    if isinstance(names, list) and len(names) == model.n_classes:
        print("class names: " + ", ".join(f"{i} {printable(str(name))}" for i, name in enumerate(names)))
    for line in summary_lines(model.layers, model.n_classes, model.image_size):
        print(line)
    plan = info["plan"]
    kernels = ", ".join(f"{name} {n}" for name, n in plan["kernels"].items()) or f"off ({plan['kernels_off']})"
    print(f"plan: graph {plan['graph']} on {plan['device']}; shim kernels: {kernels}")
    print(f"  prediction graph ops: {' '.join(plan['ops'])}")
    print("tensors (numpy shapes, i.e. ggml's ne reversed):")
    for name, shape in info["tensors"].items():
        print(f"  {name:14s} {shape}")
    for key, value in model.metadata.items():
        if key == "history" and isinstance(value, list):
            for entry in value:
                print(f"  history: {_history_line(entry)}")
        else:
            print(f"  {printable(key)}: {json.dumps(value)}")
    return 0


def _history_line(entry: Any) -> str:
    """Describe one stored history entry; anything but a dict of numbers (a foreign or damaged file) prints as JSON."""
    if isinstance(entry, dict):
        loss, acc, seconds = entry.get("train_loss"), entry.get("train_acc", 0), entry.get("seconds", 0)
        if all(isinstance(v, (int, float)) for v in (loss, acc, seconds)):
            return f"epoch {entry.get('epoch')}: train loss {loss:.4f} acc {100 * acc:.2f}% ({seconds:.2f}s)"
    return json.dumps(entry)


def _eval(args: argparse.Namespace) -> int:
    check_model_argument(args.model, "mnist-eval MODEL.gguf [IMAGES LABELS] [DEVICE]")
    models = [args.model]
    while args.rest and (args.rest[0].lower().endswith(".gguf") or
                         os.path.isfile(args.rest[0]) and describe(args.rest[0]) == "a GGUF model file"):
        models.append(args.rest.pop(0))  # more models: the files that are GGUF by their first bytes or their name
    images, labels, device = _data_args(args.rest, "mnist-eval")
    _check_pair_order(images, labels)
    where = dict(device=device or args.device or DEFAULT_DEVICE, threads=args.threads, graph=args.graph or "auto")
    if len(models) > 1 and args.info:
        raise ConfigError(f"--info describes one model; run it once per file ({len(models)} were given)")
    model = api.load(args.model, **where) if len(models) == 1 else Ensemble(models, **where)
    if args.info:
        return _info(model, args.json)
    data_dir = None
    dataset = None
    if images is None:
        dataset = _eval_dataset(model, args.dataset)
        data_dir = _dataset_dir(args.data_dir, dataset, "test", args.download)
    r = (model.evaluate if len(models) > 1 else functools.partial(api.evaluate, model))(
        images, labels, data_dir=data_dir, dataset=dataset, batch_size=args.batch_size, keep_probabilities=False)
    if args.json:
        named = {"model": args.model} if len(models) == 1 else {"models": models}
        print(json.dumps({**named, "architecture": model.architecture, "device": model.device, **r.as_dict(),
                          "us_per_image": 1e6 * r.seconds / r.n}))
        return 0
    print(f"mnist-eval: {model.architecture} on {model.device}: evaluation on {r.n} images took "
          f"{1e3 * r.seconds:.2f} ms, {1e6 * r.seconds / r.n:.2f} us/image")
    print(f"mnist-eval: loss={r.loss:.6f}+-{r.loss_unc:.6f}")
    print(f"mnist-eval: accuracy={100 * r.accuracy:.2f}+-{100 * r.accuracy_unc:.2f}%")
    return 0


def _eval_dataset(model: Any, asked: Optional[str]) -> str:
    """The dataset to use: --dataset, else the one recorded in the model, else mnist; warns when they differ."""
    recorded = model.metadata.get("dataset")
    recorded = recorded.get("name") if isinstance(recorded, dict) else None
    recorded = recorded if recorded in DATASETS else None
    if asked is not None and recorded is not None and asked != recorded:
        print(f"warning: the model was trained on {recorded}, not on {asked}", file=sys.stderr)
    return asked or recorded or "mnist"


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-eval."""
    return _run(_eval, eval_parser(), argv)


# ---- mnist-data -------------------------------------------------------------------------------
def data_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-data."""
    p = argparse.ArgumentParser(prog="mnist-data", description="Download and verify IDX datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("download", "download (or complete) a dataset, verifying SHA-256 sums"),
                       ("verify", "check the SHA-256 sums of a downloaded dataset")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--dataset", default="mnist", choices=sorted(download.DATASETS), help="which dataset (default: mnist)")
        s.add_argument("--dir", default=DEFAULT_DATA_DIR, help=f"parent directory; files go to DIR/DATASET (default: {DEFAULT_DATA_DIR})")
        s.add_argument("--quiet", action="store_true", help="no progress output")
        if name == "download":
            s.add_argument("--force", action="store_true",
                           help="replace a file of another kind (such as a model saved there by mistake) that sits "
                                "under a dataset file's name")
    return _add_version(p)


def _data(args: argparse.Namespace) -> int:
    if args.command == "download":
        where = download.download_dataset(args.dataset, args.dir, progress=not args.quiet, force=args.force)
        if not args.quiet:
            print(f"mnist-data: {args.dataset} is ready in {where}", file=sys.stderr)
        return 0
    status = download.dataset_status(args.dataset, args.dir)
    print(f"{args.dataset} in {Path(args.dir) / args.dataset}:")
    for name, state in status.items():
        if state == "ok" or state == "missing":
            print(f"{'ok' if state == 'ok' else 'MISSING':7s} {name}")
        else:
            print(f"BAD     {name}: {state}; remove it or run `mnist-data download --force`")
    return 0 if all(state == "ok" for state in status.values()) else 1


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-data."""
    return _run(_data, data_parser(), argv)
