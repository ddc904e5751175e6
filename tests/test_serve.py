"""The web page's server: its JSON API and its answers to bad requests (127.0.0.1 only, bounded traffic)."""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import pytest
from PIL import Image

import ggml_mnist as gm
from ggml_mnist import serve
from support.helpers import http_request

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    model = gm.Model.create("cnn", seed=4)
    srv = serve.make_server(model, "127.0.0.1", 0, max_body=MAX_BODY, read_timeout=1.0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[:2]
    srv.shutdown()
    srv.server_close()
    thread.join(5)


_request = http_request


def _png_digit() -> bytes:
    canvas = np.zeros((140, 140), np.uint8)
    canvas[20:120, 62:78] = 255  # a thick vertical bar: a "1"
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def _json(raw: bytes) -> Any:
    return json.loads(raw.decode())


def test_page_and_model_description(server: tuple[str, int]) -> None:
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '<canvas id="pad"' in page and "http://" not in page and "https://" not in page  # nothing from the internet
    status, _, body = _request(server, "GET", "/model")
    info = _json(body)
    assert status == 200 and info["class_names"] == [str(i) for i in range(10)] and info["arch"] == "cnn"
    assert info["n_params"] == gm.Model.create("cnn").n_params and info["summary"][-1].startswith("Total params")


def test_predict_raw_and_json_bodies_agree_with_the_model(server: tuple[str, int]) -> None:
    png = _png_digit()
    status, _, body = _request(server, "POST", "/predict", png, {"Content-Type": "image/png"})
    raw = _json(body)
    assert status == 200
    prepared = np.array(raw["prepared"], dtype=np.uint8)
    assert prepared.shape == (28, 28) and prepared.max() > 200 and prepared[0].max() == 0  # white ink, black border
    want = gm.Model.create("cnn", seed=4).predict_proba(prepared)[0]
    np.testing.assert_allclose(raw["probabilities"], want, atol=1e-6)
    assert raw["label"] == int(want.argmax()) and raw["class_name"] == str(raw["label"])
    assert abs(sum(raw["probabilities"]) - 1) < 1e-5
    doc = json.dumps({"image": "data:image/png;base64," + __import__("base64").b64encode(png).decode()}).encode()
    status, _, body = _request(server, "POST", "/predict", doc, {"Content-Type": "application/json"})
    assert status == 200 and _json(body)["probabilities"] == raw["probabilities"]


@pytest.mark.parametrize(
    "method, path, body, headers, status, message",
    [
        ("POST", "/predict", b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("POST", "/predict", b'{"img": 1}', {"Content-Type": "application/json"}, 400, '{"image": '),
        ("POST", "/predict", b'{"image": "***"}', {"Content-Type": "application/json"}, 400, "not valid base64"),
        ("POST", "/predict", b"this is not an image at all", {"Content-Type": "image/png"}, 415, "not a usable image"),
        ("POST", "/predict", b"x" * (MAX_BODY + 1), {}, 413, f"the limit is {MAX_BODY}"),
        ("POST", "/predict", b"", {}, 400, "empty"),
        ("GET", "/predict", None, {}, 405, "POST an image"),
        ("PUT", "/model", b"x", {}, 405, "use GET"),
        ("GET", "/nope", None, {}, 404, "no page"),
        ("POST", "/nope", b"x", {}, 404, "no endpoint"),
        ("DELETE", "/predict", None, {}, 405, "not allowed"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(
    server: tuple[str, int],
    method: str,
    path: str,
    body: Optional[bytes],
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    got, reply_headers, raw = _request(server, method, path, body, headers)
    assert got == status and message in _json(raw)["error"]
    if status == 405:
        assert reply_headers["Allow"] in ("GET", "POST")
    assert _request(server, "GET", "/model")[0] == 200  # still serving


def test_blank_drawing_is_refused_and_a_missing_length_too(server: tuple[str, int]) -> None:
    buf = io.BytesIO()
    Image.new("L", (50, 50)).save(buf, format="PNG")
    status, _, raw = _request(server, "POST", "/predict", buf.getvalue(), {"Content-Type": "image/png"})
    assert status == 422 and "ink" in _json(raw)["error"]
    conn = http.client.HTTPConnection(*server, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 411 and "Content-Length" in _json(reply.read())["error"]
    conn.close()


def test_a_body_that_never_arrives_times_out(server: tuple[str, int]) -> None:
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly ten b")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.0 408") and b"did not arrive within 1 s" in reply
    assert _request(server, "GET", "/model")[0] == 200


def test_concurrent_requests_take_turns_on_the_model(server: tuple[str, int]) -> None:
    png = _png_digit()
    results: list[Any] = []

    def client() -> None:
        for _ in range(5):
            status, _, raw = _request(server, "POST", "/predict", png, {"Content-Type": "image/png"})
            results.append((status, _json(raw)["probabilities"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 20 and all(s == 200 and p == results[0][1] for s, p in results)


def test_binds_to_localhost_by_default() -> None:
    model = gm.Model.create("fc")
    srv = serve.make_server(model, port=0)
    try:
        assert srv.server_address[0] == "127.0.0.1" == serve.DEFAULT_HOST
    finally:
        srv.server_close()


@pytest.fixture()
def logged_server() -> Iterator[tuple[serve.Server, list[str]]]:
    """A server of its own that logs into a list, for tests that look at the log or the open connections."""
    lines: list[str] = []
    srv = serve.make_server(
        gm.Model.create("fc", seed=1), "127.0.0.1", 0, max_body=MAX_BODY, read_timeout=2.0, log=lines.append
    )
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv, lines
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _until_idle(srv: serve.Server) -> None:
    """Wait (bounded) until the server has finished with every connection."""
    for _ in range(100):
        if getattr(srv, "open_connections", 0) == 0:
            break
        threading.Event().wait(0.05)
    threading.Event().wait(0.2)  # the handler threads log after the connection count drops


def test_log_lines_escape_control_characters(logged_server: tuple[serve.Server, list[str]]) -> None:
    srv, lines = logged_server
    with socket.create_connection(srv.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /\x1b[2J\x1b]0;owned\x07x HTTP/1.0\r\n\r\n")
        assert sock.makefile("rb").read().startswith(b"HTTP/1.0 404")
    _until_idle(srv)
    text = "\n".join(lines)
    assert "\\x1b[2J" in text and "\\x07" in text
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text.replace("\n", ""))
    assert serve.escape("a\x1bb\r\n\x9bc") == "a\\x1bb\\x0d\\x0a\\x9bc"


@pytest.mark.parametrize(
    "extra, status, message",
    [
        ({"Origin": "http://evil.example"}, 403, "another web page"),
        ({"Origin": "null"}, 403, "another web page"),
        ({"Content-Type": "text/plain"}, 415, "any web page can send it"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "curl -F file=@digit.png"),
        ({"Content-Type": "application/pdf"}, 415, "cannot hold a picture"),
        ({"Host": "evil.example"}, 421, "loopback"),  # DNS rebinding: a name that resolves to 127.0.0.1
    ],
)
def test_another_web_page_cannot_post_to_the_local_server(
    server: tuple[str, int], extra: dict[str, str], status: int, message: str
) -> None:
    headers = {"Content-Type": "image/png", **extra}
    got, _, raw = _request(server, "POST", "/predict", _png_digit(), headers)
    assert got == status and message in _json(raw)["error"]
    same = {"Content-Type": "image/png", "Origin": f"http://{server[0]}:{server[1]}"}  # the page's own origin
    assert _request(server, "POST", "/predict", _png_digit(), same)[0] == 200


def test_a_client_that_disconnects_leaves_no_traceback(
    logged_server: tuple[serve.Server, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, lines = logged_server
    for request in (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\npart of it",
        b"GET /model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0",
    ):
        for _ in range(4):
            sock = socket.create_connection(srv.server_address[:2], timeout=10)
            sock.sendall(request)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, as a closed browser tab or a killed curl sends
    _until_idle(srv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err
    assert _request(srv.server_address[:2], "GET", "/model")[0] == 200


Part = tuple[str, Optional[str], str, bytes]  # name, filename, content type, data


def _multipart(parts: list[Part], boundary: str = "------------------------d74496d66958873e") -> tuple[bytes, str]:
    """A multipart/form-data body as curl -F builds it: (name, filename, content type, data) per part."""
    out = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += (f"Content-Type: {ctype}\r\n" if ctype else "").encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _bmp_with_line_breaks() -> bytes:
    """A BMP digit whose raw pixel rows hold CR and LF bytes in every order, to catch a parser that mends them."""
    canvas = np.tile(np.array([13, 10, 10, 13, 13, 13, 10, 10], np.uint8), (140, 140 // 8 + 1))[:, :140].copy()
    canvas[20:120, 62:78] = 255
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="BMP")
    return buf.getvalue()


def test_multipart_uploads_are_read_like_raw_bodies(server: tuple[str, int]) -> None:
    for picture, ctype in ((_png_digit(), "image/png"), (_bmp_with_line_breaks(), "image/bmp")):
        status, _, raw = _request(server, "POST", "/predict", picture, {"Content-Type": ctype})
        assert status == 200
        want = _json(raw)
        curl_body, curl_type = _multipart([("file", "digit.png", ctype, picture)])
        fields = [("note", None, "", b"hello"), ("upload", "x", "application/octet-stream", picture)]
        form_body, form_type = _multipart(fields, boundary="----WebKitFormBoundaryA1b2")  # as a browser sends it
        for body, content_type in ((curl_body, curl_type), (form_body, form_type)):
            status, _, raw = _request(server, "POST", "/predict", body, {"Content-Type": content_type})
            assert status == 200, raw
            got = _json(raw)
            assert got["prepared"] == want["prepared"] and got["probabilities"] == want["probabilities"]


@pytest.mark.parametrize(
    "parts, content_type, status, message",
    [
        ([("note", None, "", b"hello")], None, 400, "no file"),
        ([("file", "x.png", "image/png", b"x")], "multipart/form-data", 400, "no boundary"),
        ([("file", "x.png", "image/png", b"")], None, 400, "empty"),
        ([(f"f{i}", None, "", b"v") for i in range(40)], None, 413, "the limit is 16"),
        ([("file", "x.png", "image/png", b"not a picture")], None, 415, "not a usable image"),
    ],
)
def test_bad_multipart_uploads_get_a_message(
    server: tuple[str, int], parts: list[Part], content_type: Optional[str], status: int, message: str
) -> None:
    body, built_type = _multipart(parts)
    got, _, raw = _request(server, "POST", "/predict", body, {"Content-Type": content_type or built_type})
    assert got == status and message in _json(raw)["error"]


def test_a_mangled_multipart_header_is_a_400_not_a_500(server: tuple[str, int]) -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; file*\r\nContent-Type: image/png\r\n\r\n'
        + _png_digit()
        + b"\r\n--XyZ--\r\n"
    )  # the email package's header parser raises IndexError on file*
    status, _, raw = _request(server, "POST", "/predict", body, {"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status in (200, 400), raw
    if status == 400:
        assert "malformed" in _json(raw)["error"] or "no file" in _json(raw)["error"]
    for boundary in ("*=utf-8''%ff", '=""'):
        status, _, raw = _request(
            server, "POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary{boundary}"}
        )
        assert status == 400 and "no boundary" in _json(raw)["error"]
