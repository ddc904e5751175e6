"""IDX reading/writing, dataset validation and MNIST directory loading."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ggml_mnist.data import (
    atomic_path,
    load_idx_pair,
    load_mnist,
    read_idx,
    uncompressed_sha256,
    validate_dataset,
    validate_images,
    validate_labels,
    write_idx,
)
from ggml_mnist.errors import (
    ConfigError,
    DataError,
    DataFileNotFoundError,
    GgmlMnistError,
    IdxFormatError,
)
from support.synthetic import SPLIT_FILES, make_synthetic

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def sample(dtype: str, shape: tuple[int, ...] = (3, 4, 5)) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    values = np.linspace(float(info.min) / 2, float(info.max) / 2, num=int(np.prod(shape)))
    values[:2] = info.min, info.max
    return values.astype(dtype).reshape(shape)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(tmp_path, dtype, gz):
    array = sample(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    assert result.shape == (3, 4, 5)
    np.testing.assert_array_equal(result, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz


@pytest.mark.parametrize("order", ["<", ">"])
def test_write_converts_to_big_endian(tmp_path, order):
    write_idx(tmp_path / "a.idx", np.array([1, -2], dtype=f"{order}i4"))
    expected = idx_header(0x0C, (2,)) + b"\x00\x00\x00\x01\xff\xff\xff\xfe"
    assert (tmp_path / "a.idx").read_bytes() == expected


def test_write_exact_bytes_and_one_dimension(tmp_path):
    write_idx(tmp_path / "a", np.arange(6, dtype=np.uint8).reshape(2, 3))
    expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    assert (tmp_path / "a").read_bytes() == expected
    write_idx(tmp_path / "b", np.array([7, 8, 9], dtype=np.int8))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), [7, 8, 9])


def test_gzip_output_is_deterministic(tmp_path):
    array = sample("int16")
    write_idx(tmp_path / "a.gz", array)
    first = (tmp_path / "a.gz").read_bytes()
    write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == first
    assert gzip.decompress(first)[:4] == bytes([0, 0, 0x0B, 3])


def test_empty_dimension_round_trips(tmp_path):
    write_idx(tmp_path / "a", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(tmp_path / "a").shape == (0, 28, 28)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = sample("float32")
    write_idx(tmp_path / "real.gz", array)
    shutil.copy(tmp_path / "real.gz", tmp_path / "no-extension")
    np.testing.assert_array_equal(read_idx(tmp_path / "no-extension"), array)
    write_idx(tmp_path / "raw", array)
    shutil.copy(tmp_path / "raw", tmp_path / "misnamed.gz")
    np.testing.assert_array_equal(read_idx(tmp_path / "misnamed.gz"), array)


def test_raw_ubyte_is_zero_copy_and_writes_do_not_reach_the_file(tmp_path):
    path = tmp_path / "images"
    write_idx(path, np.full((10, 28, 28), 7, np.uint8))
    before = path.read_bytes()
    result = read_idx(path)
    assert not result.flags.owndata
    assert result.base is not None
    assert result.flags.writeable
    result[:] = 200
    assert path.read_bytes() == before
    assert (read_idx(path) == 7).all()


def test_reads_str_paths(tmp_path):
    write_idx(str(tmp_path / "a"), np.array([1, 2], np.uint8))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a")), [1, 2])


# --- write errors and atomicity ------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bool", "int64", "uint16", "uint32", "float16", "complex64", "object"])
def test_write_rejects_unsupported_dtype(tmp_path, dtype):
    with pytest.raises(DataError, match=f"cannot write dtype {dtype} .*convert the array to one of uint8"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=dtype))
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_scalar(tmp_path):
    with pytest.raises(DataError, match=r"shape \(\).*1 to 16 dimensions"):
        write_idx(tmp_path / "a", np.uint8(3))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.gz"
    write_idx(path, np.array([1, 2, 3], np.uint8))
    before = path.read_bytes()

    def fail(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(gzip.GzipFile, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_idx(path, np.array([4, 5, 6], np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_atomic_path_names_and_cleanup(tmp_path):
    with atomic_path(tmp_path / "f.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.bin.part-")
        tmp.write_bytes(b"new")
        assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin").read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == b"new"


# --- read errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"'.*nope\.idx' does not exist") as info:
        read_idx(tmp_path / "nope.idx")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, GgmlMnistError)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "data, message",
    [
        (b"", r"data ends after 0 bytes, inside the 4-byte header"),
        (b"\0\0\x08", r"data ends after 3 bytes, inside the 4-byte header"),
        (
            b"\x01\x00\x08\x01\0\0\0\1x",
            r"bad magic number: starts with bytes 01 00, expected 00 00",
        ),
        (b"PK\x03\x04", r"bad magic number: starts with bytes 50 4b"),
        (idx_header(0x07, (1,)) + b"x", r"unknown IDX element type 0x07 \(known: 0x08 ubyte"),
        (idx_header(0x0A, (1,)) + b"x", r"unknown IDX element type 0x0A"),
        (b"\0\0\x08\x00", r"header declares 0 dimensions, expected 1 to 16"),
        (
            b"\0\0\x08\x11" + b"\0\0\0\1" * 17 + b"x",
            r"header declares 17 dimensions, expected 1 to 16",
        ),
        (
            b"\0\0\x08\x03\0\0\0\1\0\0",
            r"data ends inside the header \(3 dimensions need 16 bytes\)",
        ),
        (idx_header(0x08, (28, 28)) + bytes(783), r"header says 784 bytes of data, file has 783"),
        (idx_header(0x0C, (2,)) + bytes(7), r"header says 8 bytes of data, file has 7"),
        (
            idx_header(0x08, (28, 28)) + bytes(785),
            r"trailing bytes after the 784 bytes of data declared",
        ),
    ],
)
def test_malformed_files(tmp_path, data, message, gz):
    path = write_bytes(tmp_path / "bad.idx", data, gz)
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DataError)
    assert str(info.value).startswith(f"IDX file '{path}': ")


def peak_of_rejected_read(path, message):
    """Read path expecting IdxFormatError matching message; return the peak bytes Python allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(IdxFormatError, match=message):
            read_idx(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_dims_in_tiny_raw_file_do_not_allocate(tmp_path):
    path = write_bytes(tmp_path / "huge", idx_header(0x0E, (0xFFFFFFFF,) * 3) + bytes(10))
    message = rf"header says {0xFFFFFFFF**3 * 8} bytes of data, file has 10"
    assert peak_of_rejected_read(path, message) < 1 << 20


def test_huge_dims_in_tiny_gzip_file_do_not_allocate(tmp_path):
    path = write_bytes(tmp_path / "huge.gz", idx_header(0x08, (100_000, 1000)) + bytes(10), gz=True)
    size = path.stat().st_size
    message = rf"header says 100000000 bytes of data, more than a {size}-byte gzip file can hold"
    assert peak_of_rejected_read(path, message) < 1 << 20


def test_gzip_bomb_is_not_decompressed_past_the_declared_size(tmp_path):
    path = tmp_path / "bomb.gz"
    zeros = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_header(0x08, (16,)) + bytes(16))
        for _ in range(128):  # 128 MiB of zeros after the declared 16 bytes
            f.write(zeros)
    assert path.stat().st_size < 1 << 20
    message = "trailing bytes after the 16 bytes of data declared"
    assert peak_of_rejected_read(path, message) < 4 << 20


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b[:20] + bytes(x ^ 0x55 for x in b[20:60]) + b[60:],
        lambda b: b[:-8] + b"\0\0\0\0" + b[-4:],  # wrong CRC
        lambda b: b"\x1f\x8b",
        lambda b: b + b"garbage!",
    ],
    ids=["truncated", "flipped", "bad-crc", "magic-only", "trailing-garbage"],
)
def test_corrupt_gzip(tmp_path, damage):
    write_idx(tmp_path / "ok.gz", np.arange(1000, dtype=np.int32))
    path = write_bytes(tmp_path / "bad.gz", damage((tmp_path / "ok.gz").read_bytes()))
    with pytest.raises(IdxFormatError, match=r"bad.gz': .*re-download the file") as info:
        read_idx(path)
    assert isinstance(info.value, ValueError)


def test_invalid_deflate_data_is_reported(tmp_path):
    path = write_bytes(tmp_path / "bad.gz", gzip.compress(b"")[:10] + b"\xff" * 40)
    with pytest.raises(IdxFormatError, match=r"corrupt gzip data \(Error -3 .*invalid block type\)"):
        read_idx(path)


# --- uncompressed_sha256 --------------------------------------------------------------------


def test_uncompressed_sha256(tmp_path):
    data = idx_header(0x08, (5,)) + b"hello"
    raw = write_bytes(tmp_path / "raw", data)
    gz = write_bytes(tmp_path / "raw.gz", data, gz=True)
    expected = hashlib.sha256(data).hexdigest()
    assert uncompressed_sha256(raw) == expected
    assert uncompressed_sha256(gz) == expected
    assert uncompressed_sha256(gz, limit=len(data)) == expected
    assert uncompressed_sha256(gz, limit=len(data) - 1) is None
    assert uncompressed_sha256(write_bytes(tmp_path / "cut.gz", gz.read_bytes()[:-6])) is None
    with pytest.raises(DataFileNotFoundError):
        uncompressed_sha256(tmp_path / "missing")


# --- validation -----------------------------------------------------------------------------


def blank_images(n: int, h: int = 28, w: int = 28) -> np.ndarray:
    return np.zeros((n, h, w), np.uint8)


def test_validate_dataset_ok_and_infers_classes():
    x, y, n = validate_dataset(blank_images(5), np.array([0, 1, 4, 2, 1], np.uint8))
    assert x.shape == (5, 28, 28) and y.tolist() == [0, 1, 4, 2, 1] and n == 5
    assert validate_dataset(blank_images(2), np.zeros(2, np.int64))[2] == 2
    assert validate_dataset(blank_images(2), np.array([0, 1]), n_classes=10)[2] == 10


def test_count_mismatch():
    with pytest.raises(DataError, match=r"^60000 images but 59999 labels; every image needs one label$"):
        validate_dataset(np.zeros((60000, 784), np.uint8), np.zeros(59999, np.uint8))


def test_wrong_image_size():
    with pytest.raises(DataError, match=r"^images are 32x32; this model needs 28x28 — resize them first$"):
        validate_dataset(blank_images(3, 32, 32), np.zeros(3, np.uint8))
    assert validate_images(blank_images(3, 32, 32), size=None).shape == (3, 32, 32)
    assert validate_images(blank_images(3, 32, 32), size=(32, 32)).shape == (3, 32, 32)


def test_flat_images_are_reshaped_without_copy():
    flat = np.arange(2 * 784, dtype=np.int64).astype(np.uint8).reshape(2, 784)
    result = validate_images(flat)
    assert result.shape == (2, 28, 28) and np.shares_memory(result, flat)
    with pytest.raises(DataError, match=r"images must have shape \[N, H, W\] or \[N, 784\], got \(2, 783\)"):
        validate_images(np.zeros((2, 783), np.uint8))


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            np.full((2, 28, 28), 2.0, np.float32),
            r"train images must hold pixels / 255 in \[0, 1\] when they are floats",
        ),
        (
            np.zeros((2, 28, 28, 3), np.uint8),
            r"train images must have shape \[N, H, W\] or \[N, 784\]",
        ),
        (np.zeros(784, np.uint8), r"got \(784,\)"),
        (np.zeros((0, 28, 28), np.uint8), r"train images is empty: the dataset has no images"),
    ],
)
def test_bad_images(bad, message):
    with pytest.raises(DataError, match=message):
        validate_images(bad, name="train images")


def test_labels_out_of_range():
    labels = np.array([0, 1, 2, 10, 4, 12, 3])
    with pytest.raises(
        DataError,
        match=r"^label 10 at index 3 is outside \[0, 10\) \(2 labels out of range\); "
        r"fix the labels or use n_classes=13$",
    ):
        validate_labels(labels, n_classes=10)


def test_negative_labels():
    with pytest.raises(
        DataError,
        match=r"labels must be >= 0, but label -1 at index 2 is negative "
        r"\(2 negative labels in total\)",
    ):
        validate_labels(np.array([0, 1, -1, 3, -5]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([0.0, 1.0]), r"labels must be integers, got dtype float64"),
        (np.array([True, False]), r"labels must be integers, got dtype bool"),
        (
            np.zeros((3, 10), np.uint8),
            r"labels must be 1-D \[N\], got shape \(3, 10\); for one-hot",
        ),
        (np.zeros((), np.uint8), r"labels must be 1-D \[N\], got shape \(\)$"),
        (np.zeros(0, np.uint8), r"labels is empty"),
    ],
)
def test_bad_labels(bad, message):
    with pytest.raises(DataError, match=message) as info:
        validate_labels(bad)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("n_classes", [1, 0, -3, 2.5, True, "10"])
def test_bad_n_classes(n_classes):
    with pytest.raises(ConfigError, match=r"n_classes must be an integer >= 2, got ") as info:
        validate_labels(np.array([0, 1]), n_classes=n_classes)
    assert isinstance(info.value, ValueError)


def test_validate_labels_infers_at_least_two_classes():
    labels = np.zeros(4, np.uint8)
    result, n_classes = validate_labels(labels)
    assert result is labels and n_classes == 2
    assert validate_labels(np.array([3, 7, 1]))[1] == 8
    assert validate_labels(np.array([3, 7, 1]), n_classes=np.int64(8))[1] == 8


# --- MNIST directories ----------------------------------------------------------------------


def test_load_synthetic_mnist(synthetic_mnist):
    x, y = load_mnist(synthetic_mnist)
    assert x.shape == (200, 28, 28) and x.dtype == np.uint8
    assert y.shape == (200,) and np.bincount(y).tolist() == [20] * 10
    xt, yt = load_mnist(synthetic_mnist, split="test")
    assert xt.shape == (50, 28, 28) and sorted(set(yt.tolist())) == list(range(10))


def test_synthetic_data_is_learnable(synthetic_mnist):
    x, y = load_mnist(synthetic_mnist)
    xt, yt = load_mnist(synthetic_mnist, "test")
    centroids = np.stack([x[y == c].reshape(-1, 784).mean(0) for c in range(10)])
    predicted = ((xt.reshape(-1, 1, 784) - centroids) ** 2).sum(-1).argmin(1)
    assert (predicted == yt).all()


def test_synthetic_is_reproducible_and_gz_matches_raw(tmp_path):
    raw = load_mnist(make_synthetic(tmp_path / "raw", seed=3))
    gz = load_mnist(make_synthetic(tmp_path / "gz", seed=3, gz=True))
    other = load_mnist(make_synthetic(tmp_path / "other", seed=4))
    np.testing.assert_array_equal(raw[0], gz[0])
    np.testing.assert_array_equal(raw[1], gz[1])
    assert not np.array_equal(raw[0], other[0])
    assert sorted(p.name for p in (tmp_path / "gz").iterdir()) == sorted(
        n + ".gz" for names in SPLIT_FILES.values() for n in names
    )


def test_load_dotted_file_names(synthetic_mnist):
    for path in synthetic_mnist.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert (synthetic_mnist / "train-images.idx3-ubyte").is_file()
    assert load_mnist(synthetic_mnist, "test")[0].shape == (50, 28, 28)


def test_bad_split(synthetic_mnist):
    with pytest.raises(ConfigError, match=r"split must be 'train' or 'test', got 'valid'") as info:
        load_mnist(synthetic_mnist, split="valid")
    assert isinstance(info.value, ValueError)


def test_missing_directory(tmp_path):
    with pytest.raises(
        DataFileNotFoundError,
        match=r"dataset directory '.*nowhere' does not exist; .*"
        r"mnist-data download --dir DIR",
    ) as info:
        load_mnist(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)


def test_missing_files_lists_what_was_looked_for(synthetic_mnist):
    (synthetic_mnist / "t10k-labels-idx1-ubyte").unlink()
    message = (
        r"no test labels \(looked for t10k-labels-idx1-ubyte, t10k-labels-idx1-ubyte.gz, "
        r"t10k-labels.idx1-ubyte, t10k-labels.idx1-ubyte.gz\) in '.*'; download it with "
        r"`mnist-data download --dir DIR`"
    )
    with pytest.raises(DataFileNotFoundError, match=message):
        load_mnist(synthetic_mnist, "test")
    assert load_mnist(synthetic_mnist, "train")[0].shape == (200, 28, 28)


def test_missing_both_files(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"no train images \(.*\) and no train labels \("):
        load_mnist(tmp_path)


def test_load_mismatched_files(synthetic_mnist):
    shutil.copy(synthetic_mnist / "t10k-labels-idx1-ubyte", synthetic_mnist / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"^200 images but 50 labels"):
        load_mnist(synthetic_mnist)


def test_load_idx_pair(synthetic_mnist):
    x, y = load_idx_pair(synthetic_mnist / "t10k-images-idx3-ubyte", synthetic_mnist / "t10k-labels-idx1-ubyte")
    assert x.shape == (50, 28, 28) and y.shape == (50,)
    with pytest.raises(DataError, match=r"images must have shape \[N, H, W\] or \[N, 784\], got \(50,\)"):
        load_idx_pair(synthetic_mnist / "t10k-labels-idx1-ubyte", synthetic_mnist / "t10k-labels-idx1-ubyte")


def test_real_mnist(real_mnist):
    x, y = load_mnist(real_mnist)
    xt, yt = load_mnist(real_mnist, "test")
    assert x.shape == (60000, 28, 28) and y.shape == (60000,)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert y[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert yt[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert round(float(x.mean(dtype=np.float64)), 6) == 33.318421
    assert np.bincount(y).tolist()[:3] == [5923, 6742, 5958]
