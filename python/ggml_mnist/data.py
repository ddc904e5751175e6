"""IDX dataset files: reading, writing, validation and loading of MNIST-style directories."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import mmap
import os
import secrets
import select
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from .errors import ConfigError, DataError, DataFileNotFoundError, IdxFormatError
from .outputs import refuse_directory

PathLike = Union[str, os.PathLike]

# IDX element type code -> dtype of the elements as stored (big-endian).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}
_TYPE_NAMES = "0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"
_MAX_NDIM = 16
_MAX_DIM = 0xFFFFFFFF
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data by more than this factor
_CHUNK = 1 << 20
_MMAP_MIN = (
    1 << 30
)  # raw files this large are memory-mapped; smaller ones are read, so rewriting them later is harmless
_STREAM_MAX = 1 << 31  # the most data read from a pipe or device
_PIPE_WAIT = 5.0  # seconds a named pipe may take before its writer sends anything

_SPLITS = {"train": "train", "test": "t10k"}
_DOWNLOAD_HINT = (
    "download it with `mnist-data download --dir DIR` (which writes DIR/mnist/) and pass "
    "DIR/mnist, or copy the IDX files (raw or .gz) there by hand"
)


def _format_error(path: Path, problem: str, fix: str = "re-download the file") -> IdxFormatError:
    return IdxFormatError(f"IDX file '{path}': {problem}; {fix}")


def _open_uncompressed(path: Path) -> tuple[BinaryIO, int | None]:
    """Open path for reading its uncompressed bytes (gzip is detected by its magic bytes).

    Returns the file and the size of a regular file, or None for a pipe or device, which is read
    as a stream; a named pipe whose writer sends nothing within _PIPE_WAIT seconds is refused.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataFileNotFoundError(f"file '{path}' does not exist") from None
    refuse_directory(path, f"IDX file '{path}':", "give the path of an IDX file", IdxFormatError)
    if not stat.S_ISREG(info.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer would block open() for good
        if stat.S_ISFIFO(info.st_mode) and not select.select([fd], [], [], _PIPE_WAIT)[0]:
            os.close(fd)
            raise _format_error(
                path, f"nothing wrote to this pipe within {_PIPE_WAIT:g} s", "start the program that feeds it first"
            )
        os.set_blocking(fd, True)
        stream = os.fdopen(fd, "rb")
        if stream.peek(2)[:2] == _GZIP_MAGIC:
            unzipped = gzip.GzipFile(fileobj=stream, mode="rb")
            unzipped.myfileobj = stream  # closed with it, as when gzip opens a file itself
            return unzipped, None  # type: ignore[return-value]
        return stream, None
    f = open(path, "rb")  # noqa: SIM115 (returned open: the caller closes it)
    if f.read(2) == _GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb"), info.st_size  # type: ignore[return-value]
    f.seek(0)
    return f, info.st_size


def _read_header(path: Path, f: BinaryIO) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the IDX header at the start of f; return element dtype, shape and header size."""
    head = f.read(4)
    if len(head) < 4:
        raise _format_error(path, f"data ends after {len(head)} bytes, inside the 4-byte header")
    if head[:2] != b"\0\0":
        raise _format_error(
            path,
            f"bad magic number: starts with bytes {head[:2].hex(' ')}, expected 00 00 (IDX) or 1f 8b (gzip)",
            "check that this is an IDX file",
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise _format_error(path, f"unknown IDX element type 0x{code:02X} (known: {_TYPE_NAMES})")
    if not 1 <= ndim <= _MAX_NDIM:
        raise _format_error(path, f"header declares {ndim} dimensions, expected 1 to {_MAX_NDIM}")
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise _format_error(path, f"data ends inside the header ({ndim} dimensions need {4 + 4 * ndim} bytes)")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[code]
    # 0 bytes of data, but numpy refuses shapes whose other dimensions multiply past its index range
    if 0 in shape and math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise _format_error(path, f"header declares dimensions {list(shape)}, too large for any array")
    return dtype, shape, 4 + 4 * ndim


def read_idx_header(path: PathLike) -> tuple[int, ...]:
    """The shape an IDX file declares (raw or gzip), without reading its data.

    Raises DataFileNotFoundError if the file is missing and IdxFormatError if the header is malformed.
    """
    path = Path(path)
    f, _ = _open_uncompressed(path)
    with f:
        try:
            return _read_header(path, f)[1]
        except _GZIP_ERRORS as e:
            raise _format_error(path, f"corrupt gzip data ({e})") from e


def _check_payload(path: Path, declared: int, actual: int) -> None:
    if actual < declared:
        raise _format_error(path, f"header says {declared} bytes of data, file has {actual}")
    if actual > declared:
        raise _format_error(path, f"trailing bytes after the {declared} bytes of data declared")


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (recognised by its magic bytes, not its name).

    Returns a native-endian array of the file's element type and shape. Files are read into
    memory, except raw 8-bit files of 1 GiB or more, which are memory-mapped copy-on-write (the
    array shares the file's pages; do not truncate such a file while using the array). Pipes and
    devices (``<(zcat f.gz)``) are read as streams; a named pipe nobody writes to fails after 5 s. Data is never read or decompressed beyond the
    declared size plus one byte (and gzip's small read buffer).
    Raises DataFileNotFoundError if the file is missing and IdxFormatError if it is malformed.
    """
    path = Path(path)
    f, file_size = _open_uncompressed(path)
    with f:
        try:
            dtype, shape, header_size = _read_header(path, f)
            declared = math.prod(shape) * dtype.itemsize
            if isinstance(f, gzip.GzipFile) or file_size is None:
                return _read_payload(path, f, dtype, shape, declared, file_size, stream=file_size is None)
        except _GZIP_ERRORS as e:
            raise _format_error(path, f"corrupt gzip data ({e})") from e
        _check_payload(path, declared, file_size - header_size)
        if file_size < _MMAP_MIN:
            return _read_payload(path, f, dtype, shape, declared, None, stream=False)
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    data = np.frombuffer(buffer, dtype, count=math.prod(shape), offset=header_size).reshape(shape)
    return data if dtype.itemsize == 1 else data.astype(dtype.newbyteorder("="))


def _read_payload(
    path: Path,
    f: BinaryIO,
    dtype: np.dtype,
    shape: tuple[int, ...],
    declared: int,
    compressed_size: int | None,
    stream: bool,
) -> np.ndarray:
    """Read the declared payload after the header into memory, and one byte more to reveal trailing data.

    compressed_size is the size of a gzip file (None for raw data), which bounds what it can hold;
    a stream (pipe or device) is bounded by _STREAM_MAX."""
    if compressed_size is not None and declared > _DEFLATE_MAX_RATIO * compressed_size:
        raise _format_error(
            path,
            f"header says {declared} bytes of data, more than a {compressed_size}-byte gzip file "
            "can hold (the header is corrupt or the file is truncated)",
        )
    if stream and declared > _STREAM_MAX:
        raise _format_error(path, f"header says {declared} bytes of data; at most {_STREAM_MAX} are read from a pipe")
    payload = np.empty(declared, np.uint8)
    view, done = memoryview(payload), 0
    while done < declared:
        n = f.readinto(view[done : done + _CHUNK])
        if n == 0:
            break
        done += n
    done += len(f.read(1))  # a byte past the declared size reveals trailing data
    _check_payload(path, declared, done)
    return payload.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def uncompressed_sha256(path: PathLike, limit: int | None = None) -> str | None:
    """Return the hex SHA-256 of a raw or gzip file's uncompressed bytes.

    Returns None when the gzip data is corrupt or holds more than limit bytes.
    Raises DataFileNotFoundError if the file is missing.
    """
    digest, size = hashlib.sha256(), 0
    f, _ = _open_uncompressed(Path(path))
    with f:
        try:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if limit is not None and size > limit:
                    return None
                digest.update(chunk)
        except _GZIP_ERRORS:
            return None
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a fresh hidden path next to path (``.NAME.part-RANDOM``) for the caller to write.

    When the block succeeds the file is moved onto path with os.replace; when it raises the
    temporary file is removed, so path is either untouched or complete.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part-{secrets.token_hex(6)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write array as an IDX file, gzip-compressed when path ends in ``.gz``, atomically.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (any byte order).
    Raises DataError for other dtypes and for arrays with 0 or more than 16 dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise DataError(
            f"cannot write dtype {array.dtype} to IDX file '{path}'; convert the array to one of "
            "uint8, int8, int16, int32, float32, float64"
        )
    if not 1 <= array.ndim <= _MAX_NDIM or max(array.shape) > _MAX_DIM:
        raise DataError(
            f"cannot write an array of shape {array.shape} to IDX file '{path}'; IDX holds 1 to "
            f"{_MAX_NDIM} dimensions of at most {_MAX_DIM} each"
        )
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).reshape(-1).view(np.uint8)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        out: BinaryIO = f
        if path.suffix == ".gz":
            out = gzip.GzipFile(filename=path.stem, mode="wb", compresslevel=6, fileobj=f, mtime=0)
        with out:
            out.write(header)
            out.write(body)


def validate_images(
    images: Any, *, name: str = "images", size: tuple[int, int] | None = (28, 28), single: bool = False
) -> np.ndarray:
    """The one check of image arrays, for training and prediction alike.

    Pixels are uint8 0..255 (other integer types in that range are converted) or floats in [0, 1]
    (pixels / 255). Shapes: [N, H, W]; [N, H*W] when size is known; a channel axis of 1 as PyTorch
    ([N, 1, H, W]) or Keras ([N, H, W, 1]) hold it; with single=True also one image [H, W].
    (H, W) must equal size unless size is None. Returns [N, H, W], uint8 or float32 (a view where
    possible). Raises DataError naming the problem.
    """
    if isinstance(images, (str, bytes, os.PathLike)):
        raise DataError(
            f"{name} must be an array of images, not a path ({os.fspath(images)!r}); "
            "read an IDX file with gm.read_idx(path)"
        )
    images = np.asarray(images)
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{name} must be uint8 pixels 0..255 or floats in [0, 1], got dtype {images.dtype}")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if single and size is not None and images.shape == tuple(size):
        images = images[None]
    if size is not None and images.ndim == 2 and images.shape[1] == size[0] * size[1]:
        images = images.reshape(-1, *size)
    if images.ndim != 3:
        flat = f" or [N, {size[0] * size[1]}]" if size is not None else ""
        raise DataError(
            f"{name} must have shape [N, H, W]{flat}, got {images.shape}; "
            "a channel axis of 1 ([N, 1, H, W] or [N, H, W, 1]) is fine too"
        )
    if len(images) == 0:
        raise DataError(f"{name} is empty: the dataset has no images")
    if size is not None and images.shape[1:] != tuple(size):
        height, width = images.shape[1:]
        raise DataError(f"{name} are {height}x{width}; this model needs {size[0]}x{size[1]} — resize them first")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise DataError(f"{name} must hold pixels 0..255 when they are integers, got values in [{low}, {high}]")
        return images.astype(np.uint8)
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise DataError(f"{name} contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{name} must hold pixels / 255 in [0, 1] when they are floats, got values in [{low:g}, {high:g}]; "
            "for 0..255 values use images.astype(np.uint8), for standardised data undo the standardisation"
        )
    return images


def validate_labels(labels: np.ndarray, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Check that labels is a non-empty 1-D integer array with values in [0, n_classes).

    Returns (labels, n_classes); n_classes=None is inferred as max(labels) + 1, at least 2.
    Raises DataError for bad labels and ConfigError for an n_classes below 2.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        hint = "; for one-hot labels use labels.argmax(axis=1)" if labels.ndim == 2 else ""
        raise DataError(f"labels must be 1-D [N], got shape {labels.shape}{hint}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be integers, got dtype {labels.dtype}; convert whole-number labels "
            "with labels.astype(np.int64)"
        )
    if len(labels) == 0:
        raise DataError("labels is empty: the dataset has no labels")
    valid_count = isinstance(n_classes, (int, np.integer)) and not isinstance(n_classes, bool)
    if n_classes is not None and not (valid_count and n_classes >= 2):
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        i = negative[0]
        raise DataError(
            f"labels must be >= 0, but label {labels[i]} at index {i} is negative "
            f"({negative.size} negative labels in total)"
        )
    if n_classes is None:
        return labels, max(int(labels.max()) + 1, 2)
    too_big = np.flatnonzero(labels >= n_classes)
    if too_big.size:
        i = too_big[0]
        raise DataError(
            f"label {labels[i]} at index {i} is outside [0, {n_classes}) ({too_big.size} labels "
            f"out of range); fix the labels or use n_classes={int(labels.max()) + 1}"
        )
    return labels, int(n_classes)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A short digest that tells one labelled set from another, for validated images and labels: their shape, every
    label and an even sample of about 512 images (cheap for any N; equal sets always match)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(np.asarray(images.shape, np.int64).tobytes() + images.dtype.str.encode())
    digest.update(np.ascontiguousarray(images[:: max(1, len(images) // 512)]).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def validate_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int | None = None,
    image_size: tuple[int, int] | None = (28, 28),
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate images and labels together (see validate_images and validate_labels).

    Returns (images as [N, H, W], labels, n_classes).
    Raises DataError, or ConfigError for a bad n_classes.
    """
    images = validate_images(images, size=image_size)
    labels, n_classes = validate_labels(labels, n_classes)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels; every image needs one label")
    return images, labels, n_classes


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an images IDX file and a labels IDX file and validate them as a 28x28 dataset.

    Returns (images [N, 28, 28] uint8, labels [N]).
    Raises DataFileNotFoundError, IdxFormatError or DataError.
    """
    images, labels, _ = validate_dataset(read_idx(images_path), read_idx(labels_path))
    return images, labels


def has_split(directory: PathLike, split: str, prefix: str = "") -> bool:
    """True when directory holds the images file of split ("train" or "test") under one of the MNIST names
    (each starting with ``prefix``, see :func:`load_mnist`)."""
    stem = _split_stem("train" if split == "train" else "test", prefix)
    return any((Path(directory) / name).is_file() for name in _idx_candidates(stem, "images", "idx3"))


def split_files(directory: PathLike, prefix: str = "") -> list[Path]:
    """Every existing file in ``directory`` under one of the names the train and test splits are read from."""
    found = []
    for split in _SPLITS:
        for kind, idx in (("images", "idx3"), ("labels", "idx1")):
            found += [Path(directory) / n for n in _idx_candidates(_split_stem(split, prefix), kind, idx)]
    return [path for path in found if path.is_file()]


def _idx_candidates(prefix: str, kind: str, idx: str) -> list[str]:
    stems = (f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte")
    return [stem + ext for stem in stems for ext in ("", ".gz")]


def load_mnist(
    directory: PathLike, split: str = "train", *, prefix: str = "", transposed: bool = False, label_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Load the train or test split of an MNIST-style directory.

    Looks for the standard names (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, ...),
    also with ``.gz`` and in the dotted form ``train-images.idx3-ubyte``. EMNIST's layout: ``prefix``
    starts every name and test files say ``test`` (``emnist-letters-test-images-idx3-ubyte``),
    ``transposed`` images are stored column-major, and ``label_offset`` is subtracted from every label
    (EMNIST letters are numbered from 1).
    Returns (images [N, 28, 28] uint8, labels [N]). Raises ConfigError for an unknown split,
    DataFileNotFoundError when the directory or a file is missing, IdxFormatError or DataError.
    """
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFileNotFoundError(f"dataset directory '{directory}' does not exist; {_DOWNLOAD_HINT}")
    found, missing = [], []
    for kind, idx in (("images", "idx3"), ("labels", "idx1")):
        names = _idx_candidates(_split_stem(split, prefix), kind, idx)
        path = next((directory / n for n in names if (directory / n).is_file()), None)
        found.append(path)
        if path is None:
            missing.append(f"{split} {kind} (looked for {', '.join(names)})")
    if missing:
        raise DataFileNotFoundError(f"no {' and no '.join(missing)} in '{directory}'; {_DOWNLOAD_HINT}")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if transposed and images.ndim == 3:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    if label_offset:
        if labels.ndim == 1 and labels.size and int(labels.min()) < label_offset:
            raise DataError(
                f"'{found[1]}' holds label {int(labels.min())}; this dataset numbers its classes from "
                f"{label_offset}: check that the files belong to it"
            )
        labels = labels.astype(np.int64) - label_offset
    images, labels, _ = validate_dataset(images, labels)
    return images, labels


def _split_stem(split: str, prefix: str) -> str:
    """The name stem of a split's files: ``train``/``t10k``, or ``<prefix>train``/``<prefix>test`` with a prefix."""
    return prefix + (split if prefix else _SPLITS[split])
