"""Console script ``mnist-train``: train a network and save it as GGUF (argparse only; the work happens in api)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .. import api
from ..augment import for_dataset
from ..config import DEFAULT_DEVICE, TrainConfig
from ..data import split_files
from ..datasets import dataset_info, identify_labels, preparation
from ..errors import ConfigError, ModelIOError
from ..layers import canonical_preset, load_layers, preset_names, resolve_layers
from ..model import check_net
from ..outputs import check_distinct, check_output, is_ours, same_file
from ..runlog import check_log_path
from .common import (
    HelpFormatter,
    add_data_arguments,
    add_version,
    check_pair_order,
    data_args,
    dataset_dir,
    model_dataset,
    run,
)


def _default(field: str) -> str:
    """Describe a field's default, per network where the presets differ."""
    by_value: dict[str, list[str]] = {}
    for name in preset_names():
        by_value.setdefault(str(getattr(TrainConfig.defaults(name), field)), []).append(name)
    if len(by_value) == 1:
        return f"default: {next(iter(by_value))}"
    return "default: " + ", ".join(f"{value} ({' '.join(names)})" for value, names in by_value.items())


def recipe_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are mnist-train flags: all but those marked flag=False (arch, a positional)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag", True)]


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _takes_json(hint: Any) -> bool:
    """Whether a field's type takes a dict, which the command line gives as JSON text."""
    return typing.get_origin(hint) is dict or any(_takes_json(h) for h in typing.get_args(hint))


def _argparse_type(name: str, hint: Any) -> dict[str, Any]:
    """add_argument's type (and nargs or action) for a field's type hint: int, float, str, bool, Optional[X],
    tuple[X, ...] (one or more values), or a union with a dict (text: a name, or a JSON object)."""
    members = [h for h in typing.get_args(hint) if h is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        if _takes_json(hint):
            return {"type": str}
        if len(members) == 1:
            return _argparse_type(name, members[0])
    elif hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    elif hint in (int, float, str):
        return {"type": hint}
    elif typing.get_origin(hint) is tuple and members[-1] is Ellipsis:
        return {"type": members[0], "nargs": "+"}
    raise TypeError(
        f"TrainConfig.{name}: no command-line form for {hint!r}; give its option() flag=False or a plain type"
    )


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, in the fields' order: --batch-size for batch_size, typed by the field's type,
    with the field's help text and, unless that text names its default, the defaults per network."""
    hints = typing.get_type_hints(TrainConfig)
    for field in recipe_fields():
        text = field.metadata["help"]
        extra = {k: field.metadata[k] for k in ("choices", "metavar") if k in field.metadata}
        p.add_argument(
            _flag(field),
            **_argparse_type(field.name, hints[field.name]),
            **extra,
            help=text if "default" in text else f"{text}; {_default(field.name)}",
        )


def recipe_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every recipe flag's value by its TrainConfig field name (None: not given); JSON text as its object."""
    hints = typing.get_type_hints(TrainConfig)
    options = {}
    for field in recipe_fields():
        value = getattr(args, field.name)
        if _takes_json(hints[field.name]) and isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                example = json.dumps(field.metadata.get("example", {}))
                raise ConfigError(
                    f"{_flag(field)} {value!r} is not valid JSON ({exc.msg}); write e.g. '{example}'"
                ) from None
        options[field.name] = value
    return options


def train_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-train."""
    p = argparse.ArgumentParser(
        prog="mnist-train",
        formatter_class=HelpFormatter,
        description="Train a classifier on MNIST-style IDX data with ggml and save it as GGUF. "
        "Positional order follows ggml's example: ARCH OUT.gguf [TRAIN_IMAGES TRAIN_LABELS] [DEVICE]; "
        "with --arch-file, leave ARCH out.",
    )
    p.add_argument(
        "arch",
        metavar="ARCH",
        nargs="?",
        help=f"a preset: {', '.join(preset_names())} (ggml's mnist-fc and mnist-cnn work too)",
    )
    p.add_argument("output", metavar="OUT.gguf", nargs="?", help="where to write the trained model (atomically)")
    p.add_argument(
        "rest",
        nargs="*",
        metavar="[IMAGES LABELS] [DEVICE]",
        help="training IDX files (raw or .gz) and/or a device; without files --data-dir is used",
    )
    p.add_argument(
        "--arch-file",
        metavar="NET.json",
        help='the network as a JSON layer list, e.g. [{"type": "conv2d", "out_channels": 8, "kernel_size": 3}, '
        '{"type": "relu"}, {"type": "dense"}] instead of ARCH (default: none)',
    )
    add_data_arguments(
        p,
        "that of the --init/--resume model, else mnist",
        "EMNIST's files (emnist-letters-train-images-idx3-ubyte.gz, ...) must be there already",
    )
    p.add_argument(
        "--val-images",
        metavar="IDX",
        help="validation images (IDX, raw or .gz), evaluated after every epoch (default: none)",
    )
    p.add_argument("--val-labels", metavar="IDX", help="validation labels for --val-images (default: none)")
    p.add_argument(
        "--validate-on-test",
        action="store_true",
        help="validate on the dataset's TEST split after every epoch (only to watch; choose recipes on --val-split)",
    )
    p.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help="stop when the validation loss has not improved for PATIENCE epochs and keep the best weights "
        "(default: off)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save DIR/epoch-NNN.gguf after every epoch (created if missing; default: none)",
    )
    p.add_argument(
        "--checkpoint-best",
        action="store_true",
        help="with --checkpoint: save only DIR/best.gguf, whenever the validation (else training) loss improves",
    )
    p.add_argument(
        "--metrics",
        metavar="RUN.sqlite",
        help="append this run's epochs and batches to a SQLite run log (default: none)",
    )
    p.add_argument(
        "--init",
        metavar="MODEL.gguf",
        help="fine-tune the weights of a saved model (its network; ARCH optional; default: none)",
    )
    p.add_argument(
        "--resume",
        metavar="MODEL.gguf",
        help="continue a run saved with --save-optimizer exactly, up to --epochs in total (ARCH optional; "
        "default: none)",
    )
    p.add_argument(
        "--save-optimizer",
        action="store_true",
        help="store the AdamW moments and schedule position in the saved model(s), for --resume",
    )
    add_recipe_options(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing OUT that is not a GGUF model (never one of the run's input files)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    p.add_argument("--json", action="store_true", help="print one JSON object per epoch and a final one on stdout")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


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
        check_pair_order(args.val_images, args.val_labels)
        return args.val_images, args.val_labels
    if not args.validate_on_test:
        return None
    if data_dir is None:
        raise ConfigError(
            "--validate-on-test uses the test split in --data-dir; with IDX files give --val-images and "
            "--val-labels instead"
        )
    test_dir = dataset_dir(args.data_dir, args.dataset, "test", args.download)
    images, labels = dataset_info(args.dataset).load(test_dir, "test")
    print(
        f"mnist-train: validating on the TEST split of {args.dataset} ({len(labels)} images, {test_dir}) as asked: "
        "the val figures below are test figures; choose recipes on --val-split, not on these",
        file=sys.stderr,
    )
    return images, labels


def _train(args: argparse.Namespace) -> int:
    arch, args.output, rest = _positionals(args)
    images, labels, device = data_args(rest, "mnist-train")
    check_pair_order(images, labels)
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
        start_model = api.load(
            start, device=device or args.device or DEFAULT_DEVICE, threads=args.threads or 0, graph=args.graph or "auto"
        )
        arch = arch if arch is not None else (start_model.arch if start_model.arch != "custom" else start_model.layers)
    if start_model is not None:
        args.dataset = model_dataset(start_model, args.dataset)
    elif args.dataset is None and labels is not None:  # explicit files: a known dataset's labels say which it is
        args.dataset = identify_labels(labels) or "mnist"
    else:
        args.dataset = args.dataset or "mnist"
    options: dict[str, Any] = {"arch": arch, **recipe_options(args), "device": device or args.device}
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
            check_net(
                resolve_layers(config.arch, n_classes, hidden=config.hidden, conv_channels=config.conv_channels),
                n_classes,
                (28, 28),
            )
        data_dir = dataset_dir(args.data_dir, args.dataset, "train", args.download)
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
        images,
        labels,
        config=config,
        data_dir=data_dir,
        dataset=args.dataset if images is None else None,
        progress=not args.quiet and not args.json,
        on_epoch=on_epoch,
        validation_data=validation_data,
        early_stopping=args.early_stopping,
        checkpoint=args.checkpoint,
        checkpoint_best_only=args.checkpoint_best,
        metrics=args.metrics,
        init=start_model if args.init else None,
        resume=start_model if args.resume else None,
        save_optimizer=args.save_optimizer,
        **options,
    )
    # Ctrl-C in an epoch ends it early; between two epochs (in validation or callbacks) it ends the run there
    interrupted = model.metadata.get("status") == "interrupted"
    # an interrupted run never replaces an existing model: its partial model goes beside it
    saved = _interrupted_name(args.output, inputs) if interrupted and Path(args.output).exists() else args.output
    model.save(saved, force=args.force)
    seconds = sum(s.seconds for s in history)
    if args.json:
        print(
            json.dumps(
                {
                    "event": "done",
                    "model": saved,
                    "epochs": len(history),
                    "seconds": seconds,
                    "device": model.device,
                    "architecture": model.architecture,
                    "interrupted": interrupted,
                    "time_limit": bool(history) and history[-1].time_limit,
                }
            ),
            flush=True,
        )
    elif not args.quiet:
        print(
            f"mnist-train: trained {model.architecture} on {model.device} for {len(history)} epochs in {seconds:.1f}s; "
            f"saved {saved}",
            file=sys.stderr,
        )
        if history and history[-1].time_limit:
            recipe = model.metadata.get("config", {})
            print(
                f"mnist-train: stopped at the time limit (--max-seconds {recipe.get('max_seconds', 0):g}) in epoch "
                f"{history[-1].epoch} of {recipe.get('epochs')}, before the learning rate finished its schedule; "
                "for the full recipe give fewer --epochs or more seconds",
                file=sys.stderr,
            )
    if interrupted:
        kept = f"; {args.output} is kept as it was" if saved != args.output else ""
        print(
            f"mnist-train: interrupted {'in' if history and history[-1].interrupted else 'after'} epoch "
            f"{len(history)}; {saved} holds the model trained so far{kept}"
            if history
            else f"mnist-train: interrupted before the first epoch ended; {saved} holds the model{kept}",
            file=sys.stderr,
        )
        return 130
    return 0


def _interrupted_name(output: str, inputs: Sequence[str] = ()) -> str:
    """Where an interrupted run saves beside an existing OUT: model.gguf -> model.interrupted.gguf, or
    model.interrupted-2.gguf, ... when that name is one of the run's inputs or a file of another kind."""
    path = Path(output)
    for n in range(1, 1000):
        name = path.with_name(f"{path.stem}.interrupted{'' if n == 1 else f'-{n}'}{path.suffix or '.gguf'}")
        if not name.exists() or (is_ours(name, "model") and not any(same_file(name, p) for p in inputs)):
            return str(name)
    raise ModelIOError(
        f"no free name for the interrupted run's model beside {output!r}; remove old "
        f"{path.stem}.interrupted*.gguf files"
    )


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-train."""
    return run(_train, train_parser(), argv)


if __name__ == "__main__":
    sys.exit(train_main())
