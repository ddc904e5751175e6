"""Console script ``mnist-predict``: read the user's own pictures with a model (argparse only)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .. import api
from ..config import DEFAULT_DEVICE
from ..ensemble import Ensemble
from ..errors import ConfigError, GgmlMnistError
from ..outputs import MAGIC, check_output, check_png_name, describe, same_file
from ..pictures.annotate import annotate, save_png
from ..pictures.prepare import text_art
from .common import IMAGE_SUFFIXES, add_version, printable, run


def predict_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-predict."""
    p = argparse.ArgumentParser(
        prog="mnist-predict",
        description="Predict pictures of handwritten digits (PNG, JPEG, ...; photos and scans, either polarity) "
        "with a GGUF model. Each picture is prepared as MNIST's digits were: cropped to the ink, "
        "fitted into 20x20 and centred in 28x28 (Fashion-MNIST models: the whole picture). Several models "
        "(MODEL.gguf MORE.gguf ... IMAGE ...) predict as one ensemble that averages their probabilities.",
    )
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("images", nargs="+", metavar="[MORE.gguf ...] IMAGE")
    p.add_argument("--digits", action="store_true", help="read each picture as lines of digits, left to right")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per picture: path, label, class_name, probability, probabilities "
        "(with --digits: path, text, digits [{box, label, probability}]); failures: path, error",
    )
    p.add_argument(
        "--annotate",
        metavar="OUT.png",
        help="write the picture with boxes and labels drawn on it; with several pictures or an existing "
        "directory, OUT is a directory and each goes to OUT/NAME.annotated.png",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="let --annotate replace an existing file that ggml-mnist did not draw (never an input)",
    )
    p.add_argument("--show-input", action="store_true", help="print each prepared 28x28 input as text art")
    p.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"auto, cpu or a ggml device name (default: {DEFAULT_DEVICE})"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all available cores (default: 0)")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


def _check_model_first(model: str, images: Sequence[str]) -> None:
    """Raise ConfigError when the model and the pictures were given the other way round."""
    if _head(model).startswith(MAGIC["model"]):
        return
    model_later = any(i.lower().endswith(".gguf") or _head(i).startswith(MAGIC["model"]) for i in images)
    kind = describe(model) if os.path.isfile(model) else "a missing file"
    if model_later or kind in ("a PNG picture", "a JPEG picture") or model.lower().endswith(IMAGE_SUFFIXES):
        raise ConfigError(f"the first argument is the model: mnist-predict MODEL.gguf IMAGE…; {model!r} is {kind}")


def _head(path: str) -> bytes:
    """The first bytes of a regular file (b"" for anything else: a FIFO is never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""
        with open(path, "rb") as f:
            return f.read(len(MAGIC["model"]))
    except OSError:
        return b""


def _annotation_paths(out: str, images: Sequence[str], model: str, force: bool) -> dict[str, str]:
    """Where each picture's annotation goes, checked before the first picture is read: never the model or a
    picture, never a file ggml-mnist did not draw (unless force), never one name for two pictures."""
    named = {images[0]: out}
    if len(images) > 1 or os.path.isdir(out):
        if os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--annotate {out!r}: with several pictures give a directory, not a file")
        named, owner = {}, {}
        for image in images:
            name = f"{Path(image).stem}.annotated.png"
            first = owner.setdefault(name.casefold(), image)  # case-blind: two names may be one file on macOS
            if first != image and not same_file(first, image) and os.path.abspath(first) != os.path.abspath(image):
                raise ConfigError(
                    f"--annotate: pictures {first!r} and {image!r} would both be annotated as "
                    f"{os.path.join(out, name)!r}; annotate them in separate runs or rename one"
                )
            named[image] = os.path.join(out, name)
        os.makedirs(out, exist_ok=True)
    checked = {
        image: str(
            check_output(path, [model, *images], kind="png", force=force, what="--annotate output", example="read.png")
        )
        for image, path in named.items()
    }
    if not os.path.isdir(out):
        check_png_name(out, "--annotate", "read.png")
    return checked


def _one(model: Any, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Predict one picture; returns the JSON-ready result and prints the human-readable one."""
    if args.digits:
        reading = model.read_digits(path)
        found, result = reading.digits, {"path": path, **reading.as_dict()}
        lowest = min(d.probability for d in found)
        text = printable(reading.text.replace("\n", " / "))  # class names come from the model file
        line = f"{path}: {text}  ({len(found)} digits, lowest probability {100 * lowest:.1f}%)"
    else:
        pred = model.predict_image(path)
        found, result = [pred], {"path": path, **pred.as_dict()}
        line = f"{path}: {printable(pred.class_name)} ({100 * pred.probability:.1f}%)"
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(line, flush=True)
    if args.show_input:
        for item in found:
            print(
                f"{printable(item.class_name)} at {item.box}:\n{text_art(item.input)}",
                file=sys.stderr if args.json else sys.stdout,
            )
    if args.annotate:
        save_png(annotate(path, found), args.annotation_paths[path])
    return result


def _predict(args: argparse.Namespace) -> int:
    _check_model_first(args.model, args.images)
    models = [args.model]
    while args.images and (
        args.images[0].lower().endswith(".gguf") or _head(args.images[0]).startswith(MAGIC["model"])
    ):
        models.append(args.images.pop(0))  # more models: an ensemble
    if not args.images:
        raise ConfigError(
            f"no picture to read after the {len(models)} models; mnist-predict MODEL.gguf [MORE.gguf ...] IMAGE ..."
        )
    if args.annotate:
        args.annotation_paths = _annotation_paths(args.annotate, args.images, args.model, args.force)
    model = (
        api.load(args.model, device=args.device, threads=args.threads)
        if len(models) == 1
        else Ensemble(models, device=args.device, threads=args.threads)
    )
    failed = 0
    for path in args.images:
        try:
            _one(model, path, args)
        except BrokenPipeError:  # the reader of our output is gone (| head): nothing failed; stop quietly
            raise
        except (GgmlMnistError, OSError, MemoryError) as exc:
            failed += 1
            message = " ".join(str(exc).split()) or "not enough memory"
            print(f"mnist-predict: {path}: {message}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"path": path, "error": message}), flush=True)
    if failed:
        print(f"mnist-predict: {failed} of {len(args.images)} pictures failed", file=sys.stderr)
    return 1 if failed else 0


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-predict."""
    return run(_predict, predict_parser(), argv)


if __name__ == "__main__":
    sys.exit(predict_main())
