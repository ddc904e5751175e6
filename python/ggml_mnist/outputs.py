"""The rules every file the package writes follows, checked before any work starts.

An output is never one of the run's inputs, never a directory, device or FIFO, and an existing file that
another program wrote (a dataset, a photo, a log) is never replaced without ``force``: only a file of the
kind being written (a GGUF model, a PNG this package drew, a SQLite run log) is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError, GgmlMnistError, ModelIOError

PathLike = Union[str, "os.PathLike[str]"]

#: The first bytes of each kind of file we write, which an existing file must start with to be replaced.
MAGIC = {"model": b"GGUF", "png": b"\x89PNG\r\n\x1a\n", "sqlite": b"SQLite format 3\x00"}
#: The PNG text chunk that marks pictures this package drew (annotations, plots).
PNG_SOFTWARE = "ggml-mnist"
#: What :func:`describe` calls the files that are surely not a damaged dataset download.
FOREIGN_KINDS = ("a GGUF model file", "a SQLite database", "a PNG picture", "a JPEG picture")
_KIND_NAME = {"model": "a GGUF model file", "png": "a picture ggml-mnist drew", "sqlite": "a SQLite run log"}
_DESCRIBED = {"model": "a GGUF model file", "png": "a PNG picture", "sqlite": "a SQLite database"}  # by describe()


def describe(path: PathLike) -> str:
    """What an existing file holds, judged by its first bytes: 'a GGUF model file', 'an IDX file', ...."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "an unreadable file"
    if head.startswith(MAGIC["model"]):
        return "a GGUF model file"
    if head.startswith(MAGIC["sqlite"]):
        return "a SQLite database"
    if head.startswith(MAGIC["png"]):
        return "a PNG picture"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E) and 1 <= head[3] <= 4:
        return "an IDX file"
    if head.startswith(b"\xff\xd8"):
        return "a JPEG picture"
    if not head:
        return "an empty file"
    return "a file of another kind"


def is_ours(path: PathLike, kind: str) -> bool:
    """True when the existing file at ``path`` is of ``kind`` ("model", "png", "sqlite") and may be replaced.

    An empty file counts as ours (a name reserved with ``touch``). A PNG must carry our Software text chunk.
    """
    held = describe(path)
    if held == "an empty file":
        return True
    if held != _DESCRIBED[kind]:
        return False
    if kind != "png":
        return True
    try:
        from PIL import Image

        with Image.open(path) as picture:
            return picture.info.get("Software") == PNG_SOFTWARE
    except Exception:  # noqa: BLE001 - a broken PNG is not ours
        return False


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths name the same existing file (through links, ``..`` or another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: PathLike,
    inputs: Iterable[Optional[PathLike]] = (),
    *,
    kind: str = "model",
    force: bool = False,
    what: str = "the output",
    example: str = "model.gguf",
) -> Path:
    """Refuse, before any work, an output that could not be written or would destroy something.

    ``inputs`` are every file the run reads (None entries are skipped); ``example`` is a good name to suggest.
    Returns the path to write (a symbolic link's target). Raises ModelIOError naming the problem and the fix; ``force`` allows replacing an
    existing file of another kind, never an input.
    """
    text = os.fspath(path)
    fix = f"give another name such as {example}"
    if text == "":
        raise ModelIOError(f"{what} is an empty name; {fix}")
    target = Path(text)
    if target.is_symlink():  # the file is written through the link
        if not target.exists():
            raise ModelIOError(
                f"cannot write {what} {text!r}: it is a symbolic link to a missing file; remove it or write elsewhere"
            )
        target = target.resolve()
    if len(target.name.encode()) > 255:
        raise ModelIOError(f"cannot write {what} {os.fspath(target)[:64]!r}...: the file name is longer than 255 bytes")
    check_file_name(target, what, example, text=text)
    if target.exists() and not target.is_file():
        raise ModelIOError(f"{what} {text!r} is not a regular file (a device, FIFO or socket); {fix}")
    for source in inputs:
        if source is not None and same_file(target, source):
            raise ModelIOError(
                f"{what} {text!r} is the input file {os.fspath(source)!r}; writing it would destroy it, so {fix}"
            )
    if target.exists() and not force and not is_ours(target, kind):
        raise ModelIOError(
            f"{what} {text!r} already exists and is {describe(target)}, not {_KIND_NAME[kind]}; "
            f"replacing it would destroy it: {fix}, or add --force (force=True) to replace it"
        )
    check_writable(target, what)
    return target


def check_png_name(path: str, option: str, example: str) -> None:
    """Raise ConfigError unless ``path``, the value of ``option``, names a PNG file: that option writes PNG."""
    if not path.lower().endswith(".png"):
        raise ConfigError(f"{option} {path!r}: the picture is a PNG; give a name ending in .png, e.g. {example}")


def check_file_name(
    target: PathLike, what: str, example: str, *, text: Optional[str] = None, error: type[GgmlMnistError] = ModelIOError
) -> None:
    """Raise ``error`` naming the fix unless ``target`` can name a file to write: it is not a directory and its
    folder exists. ``text`` is the name as the user gave it (default: ``target``)."""
    text = os.fspath(target) if text is None else text
    target = Path(target)
    refuse_directory(target, f"{what} {text!r}", f"give a file name such as {example}", error)
    if not target.parent.is_dir():
        raise error(
            f"cannot write {what} {os.fspath(target)!r}: directory '{target.parent}' does not exist; create it first"
        )


def refuse_directory(path: PathLike, subject: str, fix: str, error: type[GgmlMnistError] = ModelIOError) -> None:
    """The one check that a path given as a file (to read or to write) is not a directory: raises ``error`` saying
    "SUBJECT is a directory; FIX"."""
    if os.path.isdir(path):
        raise error(f"{subject} is a directory; {fix}")


def _write_probe(folder: Path) -> Optional[OSError]:
    """Create and remove a file in ``folder``; return the error that stopped it, or None."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ggml-mnist-check-"):
            pass
    except OSError as exc:
        return exc
    return None


def check_writable(target: Path, what: str) -> None:
    """Raise ModelIOError unless a file named ``target`` could be created now (its folder is writable)."""
    exc = _write_probe(target.parent)
    if exc is not None:
        raise ModelIOError(
            f"cannot write {what} {os.fspath(target)!r}: directory '{target.parent}' is not writable "
            f"({exc.strerror}); choose another place"
        )


def check_writable_dir(directory: Path, what: str) -> None:
    """Create ``directory`` if needed and make sure files can be written into it; raise ModelIOError otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error: Optional[OSError] = exc
    else:
        error = _write_probe(directory)
    if error is not None:
        raise ModelIOError(
            f"{what} directory '{directory}' cannot be written ({error.strerror or error}); choose another place"
        )


def check_distinct(named: Iterable[tuple[str, Optional[PathLike]]]) -> None:
    """Raise ConfigError when two outputs name the same path (``named`` holds (what, path) pairs; None skipped)."""
    seen: dict[str, str] = {}
    for what, path in named:
        if path is None:
            continue
        key = os.path.normcase(os.path.realpath(os.fspath(path)))
        if key in seen:
            raise ConfigError(f"{what} and {seen[key]} are the same path {os.fspath(path)!r}; give each its own name")
        seen[key] = what
