"""The web server holds: decompression bombs, refused formats, slow clients, the connection cap, the listen backlog
and a bounded load test (127.0.0.1 only; bounded in count and time; no timing assertions)."""

from __future__ import annotations

import errno
import io
import json
import select
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import types
import zlib
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import pytest
from PIL import Image, ImageFile, features

import ggml_mnist as gm
from ggml_mnist import serve
from support.helpers import http_request

HOST = "127.0.0.1"
SLOW_REQUEST = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"


def _start(srv: serve.Server) -> threading.Thread:
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


def _stop(srv: serve.Server, thread: threading.Thread) -> None:
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[serve.Server]:
    srv = serve.make_server(gm.Model.create("fc", seed=2), HOST, 0, read_timeout=2.0)
    thread = _start(srv)
    yield srv
    _stop(srv, thread)


def _request(
    addr: Any,
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    return http_request(addr, method, path, body, headers, timeout)


def _digit(fmt: str = "PNG") -> bytes:
    canvas = np.zeros((140, 140), np.uint8)
    canvas[20:120, 62:78] = 255
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format=fmt)
    return buf.getvalue()


def _png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: a few kB that decode to side**2 bytes and more."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def _bmp_header_bomb(side: int) -> bytes:
    """A BMP header announcing side x side 24-bit pixels, followed by one row."""
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + side * 3, 0, 0, 54) + info + b"\0" * side * 3


@pytest.mark.parametrize(
    "bomb, size", [(_png_bomb(8000), "8000x8000 = 64.0 megapixels"), (_bmp_header_bomb(20000), "(400000000 pixels)")]
)
def test_a_decompression_bomb_is_refused_before_decoding(
    server: serve.Server, bomb: bytes, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    assert len(bomb) < 100_000
    status, _, raw = _request(server.server_address, "POST", "/predict", bomb, {"Content-Type": "image/png"})
    error = json.loads(raw)["error"]
    assert status == 413 and size in error and "the limit is 16 megapixels" in error
    assert all(w * h <= serve.MAX_PIXELS for w, h in decoded), f"decoded {decoded}"
    assert _request(server.server_address, "POST", "/predict", _digit(), {"Content-Type": "image/png"})[0] == 200


def test_a_picture_at_the_pixel_limit_is_still_read() -> None:
    picture = serve.open_upload(_png_bomb(400), max_pixels=400 * 400)
    assert picture.size == (400, 400)
    with pytest.raises(serve.RequestError, match="400x400 = 0.2 megapixels; the limit is 0.159999 megapixels"):
        serve.open_upload(_png_bomb(400), max_pixels=400 * 400 - 1)


ACCEPTED = ["PNG", "JPEG", "GIF", "BMP", "TIFF"] + (["WEBP"] if features.check("webp") else [])


@pytest.mark.parametrize("fmt", ACCEPTED)
def test_the_picture_formats_of_drawings_and_photos_are_read(server: serve.Server, fmt: str) -> None:
    status, _, raw = _request(server.server_address, "POST", "/predict", _digit(fmt), {"Content-Type": "image/*"})
    assert status == 200, raw


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n%%EndComments\n"
    b"newpath 14 4 moveto 14 24 lineto 3 setlinewidth stroke showpage\n%%EOF\n"
)


@pytest.mark.parametrize(
    "data, named",
    [
        (EPS, "PostScript/EPS"),
        (_digit("PPM"), "Netpbm"),
        (_digit("PCX"), "not a picture in a format the server reads"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64, "HEIC"),
    ],
)
def test_other_formats_are_refused_with_415(server: serve.Server, data: bytes, named: str) -> None:
    status, _, raw = _request(server.server_address, "POST", "/predict", data, {"Content-Type": "image/x-anything"})
    error = json.loads(raw)["error"]
    assert status == 415 and named in error and "send a PNG, JPEG, WebP, GIF, BMP or TIFF picture" in error


def test_a_busy_server_answers_503_at_once() -> None:
    gate = serve.Gate(slots=1, waiting=0)
    srv = serve.make_server(gm.Model.create("fc"), HOST, 0, gate=gate)
    thread = _start(srv)
    try:
        with gate.enter():  # every decoding slot taken, no queue
            status, headers, raw = _request(
                srv.server_address, "POST", "/predict", _digit(), {"Content-Type": "image/png"}
            )
            assert status == 503 and headers["Retry-After"] == "1" and "busy" in json.loads(raw)["error"]
            assert _request(srv.server_address, "GET", "/model")[0] == 200  # the page and model still answer
        assert _request(srv.server_address, "POST", "/predict", _digit(), {"Content-Type": "image/png"})[0] == 200
    finally:
        _stop(srv, thread)


def test_the_decoding_queue_is_bounded_and_waits_for_a_slot() -> None:
    gate = serve.Gate(slots=1, waiting=1, wait=0)
    with gate.enter(), pytest.raises(serve.RequestError, match="no picture slot came free within 0 s"), gate.enter():
        pass
    with gate.enter():  # the slot came back
        pass
    with pytest.raises(gm.ConfigError):
        serve.Gate(slots=0)


def _tcp_listen_backlog(sock: socket.socket) -> int:
    """Linux reports a listening socket's backlog as tcpi_sacked in TCP_INFO."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("<I", info, 28)[0]


def test_the_listen_backlog_holds_128_connections(server: serve.Server) -> None:
    assert server.request_queue_size == 128
    if sys.platform.startswith("linux"):
        with open("/proc/sys/net/core/somaxconn") as f:
            assert _tcp_listen_backlog(server.socket) == min(128, int(f.read()))


def _cut_off(sock: socket.socket, trickle: bytes, steps: int) -> tuple[bool, bytes]:
    """Send ``trickle`` one byte per 0.1 s, at most ``steps`` bytes; whether the server ended it, and its answer."""
    for i in range(steps):
        try:
            sock.sendall(trickle[i % len(trickle) : i % len(trickle) + 1])
        except OSError:
            return True, b""
        if select.select([sock], [], [], 0.1)[0]:
            answer = b""
            try:
                while chunk := sock.recv(4096):
                    answer += chunk
            except OSError:
                pass
            return True, answer
    return False, b""


@pytest.mark.parametrize("head, trickle", [(SLOW_REQUEST, b"x"), (b"", SLOW_REQUEST)])
def test_a_slow_client_is_cut_off_at_the_request_deadline(head: bytes, trickle: bytes) -> None:
    srv = serve.make_server(gm.Model.create("fc"), HOST, 0, read_timeout=0.5)
    thread = _start(srv)
    try:
        with socket.create_connection(srv.server_address[:2], timeout=10) as sock:
            sock.sendall(head)
            # one byte each 0.1 s would keep a per-receive timeout of 0.5 s waiting for ever; the deadline ends it
            ended, answer = _cut_off(sock, trickle, 60)
        assert ended
        assert answer == b"" or (answer.startswith(b"HTTP/1.0 408") and b"did not arrive within 0.5 s" in answer)
        assert _request(srv.server_address, "GET", "/model")[0] == 200
    finally:
        _stop(srv, thread)


def test_open_connections_are_capped_with_a_503() -> None:
    srv = serve.make_server(gm.Model.create("fc"), HOST, 0, read_timeout=20, max_connections=3)
    thread = _start(srv)
    idle = [socket.create_connection(srv.server_address[:2], timeout=10) for _ in range(3)]
    try:
        for _ in range(500):
            if srv.open_connections == 3:
                break
            threading.Event().wait(0.02)
        with socket.create_connection(srv.server_address[:2], timeout=10) as extra:
            answer = extra.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.0 503") and b"3 connections are open, the limit" in answer
    finally:
        for sock in idle:
            sock.close()
    try:
        for _ in range(200):
            if srv.open_connections == 0:
                break
            threading.Event().wait(0.02)
        assert _request(srv.server_address, "GET", "/model")[0] == 200
    finally:
        _stop(srv, thread)


def test_running_out_of_descriptors_pauses_instead_of_spinning(
    server: serve.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused: list[float] = []

    def no_descriptors(self: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socketserver.TCPServer, "get_request", no_descriptors)
    monkeypatch.setattr(serve, "time", types.SimpleNamespace(sleep=paused.append, monotonic=time.monotonic))
    with pytest.raises(OSError, match="Too many open files"):
        server.get_request()  # serve_forever drops the error and polls again: a pause first, not a busy loop
    assert paused and all(p > 0 for p in paused)


CHILD = """
import resource, sys
import ggml_mnist as gm
from ggml_mnist import serve
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
srv = serve.make_server(gm.Model.create("fc"), "127.0.0.1", 0, read_timeout=30)
print(srv.server_address[1], srv.max_connections, flush=True)
srv.serve_forever(0.05)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descriptor limits as on Linux")
def test_the_descriptor_limit_is_never_reached() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        port_text, cap_text = proc.stdout.readline().split()
        addr, cap = (HOST, int(port_text)), int(cap_text)
        assert 8 <= cap < 128
        clients = [socket.create_connection(addr, timeout=10) for _ in range(cap + 40)]  # past 128 descriptors
        refused = 0
        waiting = list(clients)
        for _ in range(100):  # bounded: until every connection beyond the cap has its 503
            ready = select.select(waiting, [], [], 0.2)[0]
            for sock in ready:
                refused += sock.recv(4096).startswith(b"HTTP/1.0 503")
                waiting.remove(sock)
            if refused >= 40:
                break
        assert refused == 40
        for sock in clients:
            sock.close()
        for _ in range(100):  # the server answers again once the held connections are gone
            status = _request(addr, "GET", "/model", timeout=10)[0]
            if status == 200:
                break
            threading.Event().wait(0.05)
        assert status == 200
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Too many open files" not in err and "Traceback" not in err


def test_200_concurrent_requests_slow_clients_and_a_bomb_leave_the_server_answering() -> None:
    srv = serve.make_server(gm.Model.create("fc", seed=3), HOST, 0, read_timeout=2.0)
    thread = _start(srv)
    addr = srv.server_address
    digit, big = _digit(), _png_bomb(8000)
    start = threading.Barrier(200 + 3 + 1)
    statuses: list[int] = []
    failures: list[str] = []
    answers: dict[str, Any] = {}

    def client() -> None:
        start.wait(30)
        try:
            statuses.append(_request(addr, "POST", "/predict", digit, {"Content-Type": "image/png"}, timeout=60)[0])
        except OSError as exc:  # refused, reset or timed out: the failure this test is about
            failures.append(repr(exc))

    def slow(i: int) -> None:
        with socket.create_connection(addr[:2], timeout=10) as sock:
            sock.sendall(SLOW_REQUEST)
            start.wait(30)
            answers[f"slow{i}"] = _cut_off(sock, b"x", 60)[0]

    def bomb() -> None:
        start.wait(30)
        answers["bomb"] = _request(addr, "POST", "/predict", big, {"Content-Type": "image/png"}, timeout=60)[0]

    workers = (
        [threading.Thread(target=client) for _ in range(200)]
        + [threading.Thread(target=slow, args=(i,)) for i in range(3)]
        + [threading.Thread(target=bomb)]
    )
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert not failures, failures[:3]
        assert len(statuses) == 200 and set(statuses) <= {200, 503}
        assert answers == {"slow0": True, "slow1": True, "slow2": True, "bomb": 413}
        assert _request(addr, "GET", "/model")[0] == 200
        assert _request(addr, "POST", "/predict", digit, {"Content-Type": "image/png"})[0] == 200
    finally:
        _stop(srv, thread)
