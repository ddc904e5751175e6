"""What the console scripts share: argparse helpers, the one-line error and warning output, and the checks and
data-folder lookup that several scripts run on their arguments. One module per script sits beside it (train, eval,
data, plot, serve, predict, quantize, tune); the work itself happens in the package's API."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import textwrap
import types
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from .. import download
from ..config import DEFAULT_DATA_DIR, GRAPHS, TrainConfig
from ..data import read_idx_header
from ..datasets import dataset_info, locate
from ..errors import ConfigError, GgmlMnistError, GgmlMnistWarning
from ..labels import dataset_name
from ..outputs import FOREIGN_KINDS, describe


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without breaking lines inside hyphenated names such as minerva-mlp."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_version(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .._ffi import ffi, lib

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
            self.exit(
                2, f"{self.prog}: error: unknown option {', '.join(hints)}; '{self.prog} --help' lists every option\n"
            )
        argparse.ArgumentParser.error(self, message)

    parser.error = types.MethodType(error, parser)  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _short_errors(sub)


def run(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> int:
    _short_errors(parser)
    args = parser.parse_intermixed_args(argv) if parser.prog != "mnist-data" else parser.parse_args(argv)
    if getattr(args, "verbose", False):
        from .._ffi import set_verbose

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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def data_args(rest: list[str], prog: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """Split optional positionals [IMAGES LABELS] [DEVICE] the way ggml's examples take them, naming likely mix-ups."""
    for arg in rest:
        if arg.lower().endswith(IMAGE_SUFFIXES):
            raise ConfigError(
                f"{arg!r} looks like an image file; {prog} takes IDX files (IMAGES LABELS), "
                "e.g. train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz"
            )
    if len(rest) == 0:
        return None, None, None
    if len(rest) == 1:
        if Path(rest[0]).exists():
            raise ConfigError(
                f"{rest[0]!r} is a file but its partner is missing: give IMAGES and LABELS, in that order"
            )
        return None, None, rest[0]
    if len(rest) in (2, 3):
        return rest[0], rest[1], rest[2] if len(rest) == 3 else None
    raise ConfigError(f"expected [IMAGES LABELS] [DEVICE], got {len(rest)} extra arguments: {' '.join(rest)}")


def check_pair_order(images: Optional[str], labels: Optional[str]) -> None:
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


def dataset_dir(data_dir: str, dataset: str, split: str, allow_download: bool) -> Path:
    """The directory holding the split: DATA_DIR itself or DATA_DIR/DATASET (either may be given).

    A missing dataset is downloaded into DATA_DIR/DATASET when DATA_DIR exists, is the default, or
    --download was given; a folder of another known dataset is refused.
    """
    root = Path(data_dir)
    found = locate(root, dataset, split, what="--data-dir")
    if found is not None:
        return found
    info = dataset_info(dataset)
    if not info.downloadable:
        raise ConfigError(
            f"no {dataset} {split} files in {root} or {root / dataset}, and {dataset} cannot be downloaded "
            f"here: put {info.prefix}{split}-images-idx3-ubyte.gz and {info.prefix}{split}-labels-idx1-ubyte.gz "
            "(from the EMNIST release) into one of them"
        )
    if not root.exists() and not allow_download and data_dir != DEFAULT_DATA_DIR:
        raise ConfigError(
            f"--data-dir {data_dir!r} does not exist; check the path, or add --download to download "
            f"{dataset} into {root / dataset}"
        )
    print(f"{dataset} not found in {root}; downloading it to {root / dataset}", file=sys.stderr)
    return download.download_dataset(dataset, root)


def add_data_arguments(p: argparse.ArgumentParser, dataset_default: str, note: str = "") -> None:
    """--data-dir, --dataset and --download, as every script that reads a dataset from a folder spells them;
    ``dataset_default`` says what --dataset is when it is not given, ``note`` adds to its help."""
    from ..datasets import DATASETS

    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"directory with the dataset, downloaded into DIR/DATASET when missing (default: {DEFAULT_DATA_DIR})",
    )
    more = f"; {note}" if note else ""
    p.add_argument(
        "--dataset", choices=list(DATASETS), help=f"dataset for --data-dir (default: {dataset_default}){more}"
    )
    p.add_argument(
        "--download", action="store_true", help="download the dataset into a --data-dir that does not exist yet"
    )


def add_graph(p: argparse.ArgumentParser) -> None:
    """--graph as TrainConfig.graph describes it (for scripts that load a model; mnist-train has it as a recipe flag)."""
    p.add_argument("--graph", choices=GRAPHS, help=TrainConfig.help("graph"))


def model_dataset(model: Any, asked: Optional[str]) -> str:
    """The dataset to use: --dataset, else the one recorded in the model, else mnist; warns when they differ."""
    recorded = dataset_name(model.metadata)
    if asked is not None and recorded is not None and asked != recorded:
        print(f"warning: the model was trained on {recorded}, not on {asked}", file=sys.stderr)
    return asked or recorded or "mnist"
