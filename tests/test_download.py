"""Dataset download and verification against local HTTP servers on 127.0.0.1 (never the network)."""

from __future__ import annotations

import functools
import gzip
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ggml_mnist.data import load_mnist, uncompressed_sha256
from ggml_mnist.datasets import DATASETS, DatasetInfo, FileSpec, downloadable
from ggml_mnist.download import download_dataset, verify_dataset
from ggml_mnist.errors import ChecksumError, ConfigError, DownloadError, GgmlMnistError

MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class DroppingHandler(QuietHandler):
    """Announces the whole file, sends half of it, then closes the connection."""

    def do_GET(self):
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


class StallingHandler(QuietHandler):
    def do_GET(self):
        time.sleep(2)


Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(directory, handler=QuietHandler) starts a server and returns its base URL."""
    servers = []

    def start(directory: Path, handler: type = QuietHandler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    """Registers dataset 'synthetic' (gzip files from make_synthetic) in DATASETS.

    Returns the directory holding its files, for serving. The dataset's built-in mirror is a
    closed local port, so a test that forgets mirrors=... still never reaches the network.
    """
    from support.synthetic import make_synthetic

    source = make_synthetic(tmp_path / "mirror", n_train=60, n_test=20, gz=True)
    files = {
        name: FileSpec(uncompressed_sha256(source / name), len(gzip.decompress((source / name).read_bytes())))
        for name in MNIST_FILES
    }
    monkeypatch.setitem(
        DATASETS, "synthetic", DatasetInfo("synthetic", tuple("0123456789"), files=files, mirrors=(closed_port_url(),))
    )
    return source


def make_mirror(tmp_path: Path, source: Path, name: str, damage: Callable[[bytes], bytes]) -> Path:
    """Copy of source with every file passed through damage."""
    directory = tmp_path / name
    directory.mkdir()
    for path in source.iterdir():
        (directory / path.name).write_bytes(damage(path.read_bytes()))
    return directory


def flip_bytes(data: bytes) -> bytes:
    return data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:]


def wrong_content(data: bytes) -> bytes:
    return gzip.compress(gzip.decompress(data)[:-1] + b"\x01", mtime=0)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- happy paths ----------------------------------------------------------------------------


def test_download_and_verify(serve, mirror, tmp_path, capsys):
    target = download_dataset("synthetic", tmp_path / "data", mirrors=[serve(mirror)], progress=False)
    assert target == tmp_path / "data" / "synthetic"
    assert names(target) == sorted(MNIST_FILES)
    for name in MNIST_FILES:
        assert (target / name).read_bytes() == (mirror / name).read_bytes()
    assert verify_dataset("synthetic", tmp_path / "data") == {name: True for name in MNIST_FILES}
    assert load_mnist(target, "test")[0].shape == (20, 28, 28)
    assert capsys.readouterr().err == ""


def test_a_single_mirror_string(serve, mirror, tmp_path):
    download_dataset("synthetic", tmp_path, mirrors=serve(mirror), progress=False)
    assert all(verify_dataset("synthetic", tmp_path).values())


def test_progress_goes_to_stderr(serve, mirror, tmp_path, capsys):
    download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\rtrain-images-idx3-ubyte.gz: 100% " in captured.err
    assert captured.err.count("\n") == 4
    download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"{name}: already present, verified" for name in MNIST_FILES]


def test_verified_files_are_kept_without_contacting_mirrors(serve, mirror, tmp_path):
    target = download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    assert download_dataset("synthetic", tmp_path, mirrors=[closed_port_url()], progress=False) == target
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamps


def test_uncompressed_local_files_count_as_present(mirror, tmp_path):
    target = tmp_path / "synthetic"
    target.mkdir()
    for name in MNIST_FILES:
        (target / name.removesuffix(".gz")).write_bytes(gzip.decompress((mirror / name).read_bytes()))
    download_dataset("synthetic", tmp_path, mirrors=[closed_port_url()], progress=False)
    assert all(verify_dataset("synthetic", tmp_path).values())
    assert not any(p.suffix == ".gz" for p in target.iterdir())


def test_corrupted_local_files_are_downloaded_again(serve, mirror, tmp_path):
    target = download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=False)
    (target / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    (target / "t10k-images-idx3-ubyte.gz").unlink()
    (target / "t10k-images-idx3-ubyte").write_bytes(b"stale uncompressed copy")
    assert verify_dataset("synthetic", tmp_path) == {
        "train-images-idx3-ubyte.gz": True,
        "train-labels-idx1-ubyte.gz": False,
        "t10k-images-idx3-ubyte.gz": False,
        "t10k-labels-idx1-ubyte.gz": True,
    }
    download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=False)
    assert names(target) == sorted(MNIST_FILES)
    assert (target / "train-labels-idx1-ubyte.gz").read_bytes() == (mirror / "train-labels-idx1-ubyte.gz").read_bytes()
    assert all(verify_dataset("synthetic", tmp_path).values())


def test_first_mirror_404_then_second_mirror(serve, mirror, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    first, second = serve(empty), serve(mirror)
    target = download_dataset("synthetic", tmp_path / "data", mirrors=[first, second], progress=True)
    assert all(verify_dataset("synthetic", tmp_path / "data").values())
    assert names(target) == sorted(MNIST_FILES)
    assert f"train-images-idx3-ubyte.gz: {first}train-images-idx3-ubyte.gz: HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [flip_bytes, wrong_content])
def test_corrupt_mirror_then_good_mirror(serve, mirror, tmp_path, damage):
    bad = serve(make_mirror(tmp_path, mirror, "bad", damage))
    target = download_dataset("synthetic", tmp_path / "data", mirrors=[bad, serve(mirror)], progress=False)
    assert names(target) == sorted(MNIST_FILES)
    assert all(verify_dataset("synthetic", tmp_path / "data").values())


# --- failures -------------------------------------------------------------------------------


def test_every_mirror_corrupt_raises_checksum_error(serve, mirror, tmp_path):
    flipped = serve(make_mirror(tmp_path, mirror, "flipped", flip_bytes))
    wrong = serve(make_mirror(tmp_path, mirror, "wrong", wrong_content))
    with pytest.raises(ChecksumError) as info:
        download_dataset("synthetic", tmp_path / "data", mirrors=[flipped, wrong], progress=False)
    message = str(info.value)
    assert message.startswith("every mirror served a train-images-idx3-ubyte.gz whose content does not match")
    assert f"  {flipped}train-images-idx3-ubyte.gz: uncompressed SHA-256 is not " in message
    assert f"  {wrong}train-images-idx3-ubyte.gz: uncompressed SHA-256 is not " in message
    assert isinstance(info.value, DownloadError) and isinstance(info.value, OSError)
    assert not (tmp_path / "data").exists()  # no folder the failed download created is left


def test_all_mirrors_refuse_connection_says_offline(mirror, tmp_path):
    mirrors = [closed_port_url(), closed_port_url()]
    with pytest.raises(DownloadError) as info:
        download_dataset("synthetic", tmp_path, mirrors=mirrors, progress=False)
    message = str(info.value)
    assert not isinstance(info.value, ChecksumError)
    assert isinstance(info.value, OSError) and isinstance(info.value, GgmlMnistError)
    assert message.startswith("could not download train-images-idx3-ubyte.gz from any mirror:\n")
    for url in mirrors:
        assert f"  {url}train-images-idx3-ubyte.gz: cannot connect (" in message
    assert "this machine seems to be offline" in message
    assert f"copy them (or their uncompressed forms) into '{tmp_path / 'synthetic'}'" in message
    assert not (tmp_path / "synthetic").exists()  # no folder the failed download created is left


def test_each_failure_is_reported_once(mirror, tmp_path, capsys):
    first, last = closed_port_url(), closed_port_url()
    with pytest.raises(DownloadError) as info:
        download_dataset("synthetic", tmp_path, mirrors=[first, last], progress=True)
    err = capsys.readouterr().err
    assert err.count(first) == 1 and "trying the next mirror" in err  # progress says why the next mirror is tried
    assert last not in err and str(info.value).count(last) == 1  # the last failure only in the error


def test_mixed_failures_do_not_claim_offline(serve, tmp_path, mirror):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DownloadError, match=r"HTTP 404 File not found") as info:
        download_dataset(
            "synthetic",
            tmp_path / "data",
            mirrors=[closed_port_url(), serve(empty)],
            progress=False,
        )
    assert "offline" not in str(info.value)
    assert not isinstance(info.value, ChecksumError)


def test_dropped_connection_leaves_no_file(serve, mirror, tmp_path):
    target = tmp_path / "data" / "synthetic"
    target.mkdir(parents=True)
    (target / "train-images-idx3-ubyte.gz").write_bytes(b"old, unverified")
    with pytest.raises(
        DownloadError,
        match=r"transfer failed \(ConnectionError: connection closed after \d+ of \d+ bytes\)",
    ):
        download_dataset("synthetic", tmp_path / "data", mirrors=[serve(mirror, DroppingHandler)], progress=True)
    assert names(target) == ["train-images-idx3-ubyte.gz"]
    assert (target / "train-images-idx3-ubyte.gz").read_bytes() == b"old, unverified"


def test_failed_download_never_destroys_existing_files(serve, mirror, tmp_path):
    target = download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=False)
    bad = b"\x1f\x8b not really gzip"
    (target / "t10k-images-idx3-ubyte.gz").write_bytes(bad)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(DownloadError, match=r"could not download t10k-images-idx3-ubyte\.gz"):
        download_dataset("synthetic", tmp_path, mirrors=[closed_port_url()], progress=False)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    with pytest.raises(ChecksumError):
        download_dataset(
            "synthetic",
            tmp_path,
            mirrors=[serve(make_mirror(tmp_path, mirror, "bad", flip_bytes))],
            progress=False,
        )
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_stalled_server_times_out(serve, mirror, tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out"):
        download_dataset(
            "synthetic",
            tmp_path,
            mirrors=[serve(mirror, StallingHandler)],
            progress=False,
            timeout=0.3,
        )
    assert time.monotonic() - start < 1.5
    assert not (tmp_path / "synthetic").exists()  # no folder the failed download created is left


def test_oversized_download_is_cut_off(serve, mirror, tmp_path):
    huge = tmp_path / "huge"
    shutil.copytree(mirror, huge)
    (huge / "train-images-idx3-ubyte.gz").write_bytes(bytes(300_000))
    with pytest.raises(DownloadError, match=r"transfer failed \(DownloadError: server sent more than the \d+ bytes"):
        download_dataset("synthetic", tmp_path / "data", mirrors=[serve(huge)], progress=False)
    assert not (tmp_path / "data").exists()  # no folder the failed download created is left


def test_decompression_is_bounded_by_the_expected_size(serve, mirror, tmp_path, monkeypatch):
    import ggml_mnist.datasets as datasets

    limits = []

    def spy(path, limit=None):
        limits.append((Path(path).name.split(".part-")[0].lstrip("."), limit))
        return uncompressed_sha256(path, limit)

    monkeypatch.setattr(datasets, "uncompressed_sha256", spy)
    download_dataset("synthetic", tmp_path, mirrors=[serve(mirror)], progress=False)
    sizes = {name: spec.size for name, spec in DATASETS["synthetic"].files.items()}
    assert limits and all(limit == sizes[name] for name, limit in limits)


def test_bad_arguments(mirror, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar'; choose one of: mnist, fashion-mnist") as info:
        download_dataset("cifar", tmp_path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="unknown dataset"):
        verify_dataset("cifar", tmp_path)
    with pytest.raises(ConfigError, match="no mirrors to download from"):
        download_dataset("synthetic", tmp_path, mirrors=[])
    assert list(tmp_path.glob("synthetic")) == []


def test_verify_missing_directory(tmp_path):
    assert verify_dataset("mnist", tmp_path / "nowhere") == {name: False for name in MNIST_FILES}


# --- the built-in table and the real data ---------------------------------------------------


def test_dataset_table():
    assert downloadable() == ["mnist", "fashion-mnist"]
    assert all(
        not DATASETS[name].files and not DATASETS[name].mirrors for name in DATASETS if name.startswith("emnist-")
    )
    for spec in (DATASETS[name] for name in downloadable()):
        assert list(spec.files) == MNIST_FILES
        assert [f.size for f in spec.files.values()] == [47_040_016, 60_008, 7_840_016, 10_008]
        assert all(len(f.sha256) == 64 and int(f.sha256, 16) >= 0 for f in spec.files.values())
        assert all(url.endswith("/") for url in spec.mirrors)
    assert DATASETS["mnist"].files["train-images-idx3-ubyte.gz"].sha256.startswith("ba891046")
    assert DATASETS["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in DATASETS["fashion-mnist"].mirrors[0]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_dataset_table_matches_reference_sums(real_mnist, name):
    sums = real_mnist.parent / name / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(
            f"{sums} not found: run `mnist-data download --dataset {name} --dir {real_mnist.parent}` "
            "(it writes the dataset's SHA256SUMS) to check the table against it"
        )
    expected = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert {f.removesuffix(".gz"): s.sha256 for f, s in DATASETS[name].files.items()} == expected


def test_download_real_mnist(serve, real_mnist, tmp_path):
    if not all((real_mnist / name).is_file() for name in MNIST_FILES):
        pytest.skip(
            f"{real_mnist} lacks the MNIST .gz files: point GGML_MNIST_DATA at the folder with the four "
            "*-ubyte.gz files (as `mnist-data download` writes them) to run this test"
        )
    target = download_dataset("mnist", tmp_path, mirrors=[serve(real_mnist)], progress=False)
    assert verify_dataset("mnist", tmp_path) == {name: True for name in MNIST_FILES}
    for name in MNIST_FILES:
        assert (target / name).read_bytes() == (real_mnist / name).read_bytes()
