"""Console script ``mnist-eval``: a model's (or an ensemble's) loss and accuracy on labelled images, or --info."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

from .. import api
from ..config import DEFAULT_DEVICE, EVAL_CHUNK
from ..ensemble import Ensemble
from ..errors import ConfigError
from ..model import summary_lines
from ..outputs import describe
from .common import (
    add_data_arguments,
    add_graph,
    add_version,
    check_model_argument,
    check_pair_order,
    data_args,
    dataset_dir,
    model_dataset,
    printable,
    run,
)


def eval_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-eval."""
    p = argparse.ArgumentParser(
        prog="mnist-eval",
        description="Evaluate a GGUF model (ours or ggml's mnist example's) on labelled IDX images: "
        "MODEL.gguf [MORE.gguf ...] [IMAGES LABELS] [DEVICE]; several models are evaluated as one "
        "ensemble that averages their probabilities.",
    )
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument(
        "rest",
        nargs="*",
        metavar="[MORE.gguf ...] [IMAGES LABELS] [DEVICE]",
        help="more models (an ensemble), test IDX files (raw or .gz) and/or a device; without files the test "
        "split in --data-dir",
    )
    add_data_arguments(p, "the one the model was trained on, else mnist")
    p.add_argument("--device", help=f"auto, cpu or a ggml device name such as CUDA0 (default: {DEFAULT_DEVICE})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all available cores (default: 0)")
    add_graph(p)
    p.add_argument("--batch-size", type=int, default=EVAL_CHUNK, help=f"images per native call (default: {EVAL_CHUNK})")
    p.add_argument(
        "--info", action="store_true", help="print the model's architecture, shapes and training metadata, then exit"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


def _info(model: Any, as_json: bool) -> int:
    info = {
        "architecture": model.architecture,
        "arch": model.arch,
        "layers": [x.to_dict() for x in model.layers],
        "n_params": model.n_params,
        "n_classes": model.n_classes,
        "image_size": list(model.image_size),
        "device": model.device,
        "tensors": {k: list(v) for k, v in model.tensor_shapes().items()},
        "metadata": model.metadata,
        "plan": model.plan,
    }
    if as_json:
        print(json.dumps(info))
        return 0
    print(
        f"architecture: {printable(info['architecture'])} ({printable(str(model.arch))})  classes: {model.n_classes}  "
        f"image: {model.image_size[0]}x{model.image_size[1]}"
    )
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
    while args.rest and (
        args.rest[0].lower().endswith(".gguf")
        or os.path.isfile(args.rest[0])
        and describe(args.rest[0]) == "a GGUF model file"
    ):
        models.append(args.rest.pop(0))  # more models: the files that are GGUF by their first bytes or their name
    images, labels, device = data_args(args.rest, "mnist-eval")
    check_pair_order(images, labels)
    where = dict(device=device or args.device or DEFAULT_DEVICE, threads=args.threads, graph=args.graph or "auto")
    if len(models) > 1 and args.info:
        raise ConfigError(f"--info describes one model; run it once per file ({len(models)} were given)")
    model = api.load(args.model, **where) if len(models) == 1 else Ensemble(models, **where)
    if args.info:
        return _info(model, args.json)
    data_dir = None
    dataset = None
    if images is None:
        dataset = model_dataset(model, args.dataset)
        data_dir = dataset_dir(args.data_dir, dataset, "test", args.download)
    r = (model.evaluate if len(models) > 1 else functools.partial(api.evaluate, model))(
        images, labels, data_dir=data_dir, dataset=dataset, batch_size=args.batch_size, keep_probabilities=False
    )
    if args.json:
        named = {"model": args.model} if len(models) == 1 else {"models": models}
        print(
            json.dumps(
                {
                    **named,
                    "architecture": model.architecture,
                    "device": model.device,
                    **r.as_dict(),
                    "us_per_image": 1e6 * r.seconds / r.n,
                }
            )
        )
        return 0
    print(
        f"mnist-eval: {model.architecture} on {model.device}: evaluation on {r.n} images took "
        f"{1e3 * r.seconds:.2f} ms, {1e6 * r.seconds / r.n:.2f} us/image"
    )
    print(f"mnist-eval: loss={r.loss:.6f}+-{r.loss_unc:.6f}")
    print(f"mnist-eval: accuracy={100 * r.accuracy:.2f}+-{100 * r.accuracy_unc:.2f}%")
    return 0


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-eval."""
    return run(_eval, eval_parser(), argv)


if __name__ == "__main__":
    sys.exit(eval_main())
