"""A local web page where you draw a digit and the model reads it, and its small JSON API.

Standard library only (``http.server``): ``GET /`` is the page (package data, nothing from the internet),
``GET /model`` the model's summary and class names, ``POST /predict`` takes an image (raw PNG/JPEG/... bytes,
a ``multipart/form-data`` upload as HTML forms and ``curl -F`` send it, or JSON
``{"image": "data:image/png;base64,..."}``) and returns the probabilities and the prepared 28x28 input.

Everything a client sends is bounded before it costs memory or time: the body by ``max_body``, the whole request
by a deadline, the open connections by a cap below the descriptor limit, a picture's pixels by ``max_pixels``
(read from its header, before decoding), and the pictures decoded at once by a few slots with a short queue
(a busy server answers 503 at once). The server listens on loopback unless told ``public=True``.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.parser
import email.policy
import errno
import io
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError
from .model import Model
from .pictures.prepare import SIZE, prepare_image

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PORTS = range(0, 65536)  # TCP ports; 0 asks for any free one
MAX_BODY = 4 * 1024 * 1024  # bytes; a drawing is a few kB, a phone photo a few MB
READ_TIMEOUT = 10.0  # seconds a client may take to send its whole request (line, headers and body together)
WRITE_TIMEOUT = 10.0  # seconds a client may take to take the answer
# A drawing from the page is 280x280 (0.08 MP) and a 12 MP phone photo is 4000x3000; 16 MP leaves room for any
# camera's default output while bounding one decode to 64 MB (4 bytes a pixel) and the preparation to a few
# hundred MB. Pillow's own limit (89 MP, an error only at 179 MP) lets a 79 KB PNG decode to 1 GB.
MAX_PIXELS = 16_000_000
DECODE_SLOTS = 2  # pictures decoded and read at once (memory: a few hundred MB each at MAX_PIXELS)
MAX_WAITING = 128  # requests that may wait for a slot; beyond that, 503 at once
QUEUE_WAIT = 15.0  # seconds a request waits for a slot before 503
MAX_CONNECTIONS = 256  # open connections (one thread and one descriptor each); beyond that, 503 and close
LISTEN_BACKLOG = 128  # connections the kernel queues before they are accepted (the standard library's 5 drops them)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # what a drawing, a scan or a photo comes in
MAX_PARTS = 16  # parts of a multipart/form-data body
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
_PAGES = {"/": ("index.html", "text/html; charset=utf-8")}
# Leading bytes of formats that are refused, to name them in the message (EPS would run Ghostscript).
_REFUSED_MAGIC = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"P1", "Netpbm"),
    (b"P2", "Netpbm"),
    (b"P3", "Netpbm"),
    (b"P4", "Netpbm"),
    (b"P5", "Netpbm"),
    (b"P6", "Netpbm"),
    (b"P7", "Netpbm"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")
# Content types a page on another site may send without asking the server first (a CORS "simple request").
_FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded")
_LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")
_QUIET_ERRORS = (ConnectionError, TimeoutError)  # a client that went away or was too slow: not the server's fault
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


class RequestError(Exception):
    """A client error: the HTTP status, a message for the client and any extra headers."""

    def __init__(self, status: HTTPStatus, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def escape(text: str) -> str:
    """``text`` with control characters (ESC, CR, ...) written as ``\\xNN``, safe to print on a terminal."""
    return text.translate(_ESCAPES)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: 127.0.0.0/8, ::1 or localhost."""
    name = host.strip().lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, public: bool = False) -> Optional[str]:
    """Refuse a non-loopback ``host`` unless ``public``; return the warning to print for a public one, else None.

    Raises ConfigError naming the address and the flag that allows it.
    """
    if is_loopback(host):
        return None
    where = (
        f"--host {host!r} listens on every network interface"
        if host.strip() in ("", "0", "0.0.0.0", "::")
        else f"--host {host!r} is not a loopback address"
    )
    if not public:
        raise ConfigError(
            f"{where}: anyone who can reach this machine could use the server, which has no "
            "authentication; leave --host out (127.0.0.1, this machine only), or add --public to "
            "serve other machines on purpose"
        )
    return f"{where}: anyone who can reach this machine can use the server (no authentication)"


def _refused_format(data: bytes) -> Optional[str]:
    """The name of a known picture format that is refused, from the first bytes, or None."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIC/AVIF"
    head = data[:16].lstrip()
    return next((name for magic, name in _REFUSED_MAGIC if head.startswith(magic)), None)


def open_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode uploaded picture bytes after checking their format and pixel count in the header; turned upright.

    Raises RequestError: 415 for a format other than PNG, JPEG, WebP, GIF, BMP and TIFF, 413 for a picture of more
    than ``max_pixels`` pixels (found before any pixel is decoded), 422 for a damaged file.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except UnidentifiedImageError:
        known = _refused_format(data)
        what = f"a {known} file, which is not accepted" if known else "not a picture in a format the server reads"
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"not a usable image: the upload is {what}; send a {_FORMAT_NAMES} picture",
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its 89 MP warning limit
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the picture is too large to decode ({exc}); the "
            f"limit is {max_pixels / 1e6:g} megapixels (a drawing needs far less): send a smaller "
            "picture",
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"not a usable image: its header is damaged ({exc}); send a {_FORMAT_NAMES} picture",
        ) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the picture is {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels (a drawing needs far less): send a smaller picture",
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            f"not a usable image: the {img.format} file cannot be "
            f"decoded ({exc}); send an undamaged {_FORMAT_NAMES} picture",
        ) from None
    try:
        return ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
    except (ValueError, OSError, SyntaxError):
        return img


class Gate:
    """At most ``slots`` requests decode pictures at once and ``waiting`` more wait, each up to ``wait`` seconds.

    A request that finds the queue full, or waits too long, gets 503 with Retry-After.
    """

    def __init__(self, slots: int = DECODE_SLOTS, waiting: int = MAX_WAITING, wait: float = QUEUE_WAIT) -> None:
        if slots < 1 or waiting < 0 or wait < 0:
            raise ConfigError(f"decode slots must be >= 1 and the queue >= 0, got {slots} and {waiting}")
        self.slots, self.waiting, self.wait = slots, waiting, wait
        self._admitted = threading.BoundedSemaphore(slots + waiting)
        self._decoding = threading.BoundedSemaphore(slots)

    @contextmanager
    def enter(self) -> Iterator[None]:
        """Hold a decoding slot for the ``with`` block, or raise RequestError 503."""
        busy = {"Retry-After": "1"}
        if not self._admitted.acquire(blocking=False):
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server is busy: {self.slots} pictures are being "
                f"read and {self.waiting} wait; try again in a moment",
                busy,
            )
        try:
            if not self._decoding.acquire(timeout=self.wait):
                raise RequestError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"the server is busy: no picture slot came free within {self.wait:g} s; try again in a moment",
                    busy,
                )
            try:
                yield
            finally:
                self._decoding.release()
        finally:
            self._admitted.release()


class Predictor:
    """One model behind a lock: the server's threads take turns on it.

    Raises ConfigError for a model that cannot read pictures (its input is not 28x28).
    """

    def __init__(self, model: Model, max_pixels: int = MAX_PIXELS) -> None:
        if tuple(model.image_size) != (SIZE, SIZE):
            raise ConfigError(
                f"this {model.arch} model takes {model.image_size[0]}x{model.image_size[1]} inputs, but "
                f"pictures are prepared as {SIZE}x{SIZE} inputs like MNIST's, so the page could not "
                f"read any drawing; serve a model trained on {SIZE}x{SIZE} images"
            )
        if max_pixels < 1:
            raise ConfigError(f"max_pixels must be at least 1, got {max_pixels}")
        self.model = model
        self.max_pixels = max_pixels
        self.lock = threading.Lock()
        self.preparation = model.preparation
        self.class_names = model.class_names

    def info(self) -> dict[str, Any]:
        """The model's summary, as ``GET /model`` returns it."""
        lines: list[str] = []
        with self.lock:
            self.model.summary(print_fn=lines.append)
            return {
                "arch": self.model.arch,
                "architecture": self.model.architecture,
                "n_classes": self.model.n_classes,
                "image_size": list(self.model.image_size),
                "n_params": self.model.n_params,
                "class_names": self.class_names,
                "preparation": self.preparation,
                "summary": lines,
            }

    def predict(self, image: bytes) -> dict[str, Any]:
        """Decode encoded image bytes (see :func:`open_upload`), prepare them and classify them.

        Raises RequestError for a refused picture and ImageError for one without a readable digit.
        """
        prepared = prepare_image(open_upload(image, self.max_pixels), preparation=self.preparation)
        with self.lock:
            probs = self.model.predict_proba(prepared)[0]
        label = int(np.argmax(probs))
        return {
            "label": label,
            "class_name": self.class_names[label],
            "probability": float(probs[label]),
            "probabilities": [float(p) for p in probs],
            "prepared": np.asarray(prepared).tolist(),
        }


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def check_content_type(content_type: str) -> None:
    """Refuse the content types a page on another site may post without asking (text/plain, form-urlencoded)
    and anything that cannot hold a picture; raises RequestError 415."""
    media = _media_type(content_type)
    if media in _FORM_TYPES:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {media} is refused (any web page can send it); send the picture with its "
            "own type (curl --data-binary @digit.png -H 'Content-Type: image/png') or as a form "
            "upload (curl -F file=@digit.png)",
        )
    if media and not (
        media.startswith("image/") or media in ("application/octet-stream", "application/json", "multipart/form-data")
    ):
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {media} cannot hold a picture; send image/..., application/octet-stream, "
            "multipart/form-data or application/json",
        )


def decode_body(body: bytes, content_type: str) -> bytes:
    """The image bytes of a ``/predict`` body: raw bytes, a multipart/form-data file, or JSON with a (data-URL)
    base64 ``image``. Raises RequestError."""
    media = _media_type(content_type)
    if media == "multipart/form-data":
        return multipart_file(body, content_type)
    if media != "application/json":
        return body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({exc})") from exc
    text = doc.get("image") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        raise RequestError(HTTPStatus.BAD_REQUEST, 'JSON bodies look like {"image": "data:image/png;base64,..."}')
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the image is not valid base64 ({exc})") from exc


def multipart_file(body: bytes, content_type: str, max_parts: int = MAX_PARTS) -> bytes:
    """The uploaded file of a multipart/form-data body (the first part with a filename, else one named file or
    image), parsed by the standard library's email parser. Raises RequestError."""
    header = " ".join(content_type.splitlines())  # one header line, whatever folding the client sent
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    try:
        boundary = parser.parsebytes(f"Content-Type: {header}\r\n\r\n".encode("latin-1")).get_boundary()
    except (UnicodeEncodeError, ValueError, TypeError):
        boundary = None
    if not boundary or not boundary.isascii():
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "the multipart/form-data Content-Type has no boundary; let the "
            "client build the form (curl -F file=@digit.png, or an HTML form)",
        )
    n_parts = body.count(b"--" + boundary.encode("latin-1")) - 1
    if n_parts > max_parts:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the form has {n_parts} parts; the limit is {max_parts}: send only the picture",
        )
    message = parser.parsebytes(f"Content-Type: {header}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1") + body)
    try:  # the parser records defects, but reading a mangled header can still raise (IndexError in Python 3.11)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        chosen = next((p for p in parts if p.get_filename()), None) or next(
            (p for p in parts if p.get_param("name", header="content-disposition") in ("file", "image")), None
        )
        data = chosen.get_payload(decode=True) if chosen is not None else None
    except (LookupError, ValueError, TypeError, AttributeError, email.errors.MessageError) as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"the multipart form is malformed ({type(exc).__name__}: {exc}); "
            "let the client build it (curl -F file=@digit.png, or an HTML form)",
        ) from None
    if chosen is None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"the form holds {len(parts)} fields and no file; upload the "
            "picture as a file field (curl -F file=@digit.png)",
        )
    if not isinstance(data, bytes) or not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the form's file is empty; choose a picture to upload")
    return data


class _DeadlineReader(io.RawIOBase):
    """A socket's receiving side that raises TimeoutError once ``deadline`` (time.monotonic) has passed, however
    the client spaces its bytes."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _host_name(host_header: str) -> str:
    """The host part of a Host header: ``[::1]:8000`` -> ``::1``, ``localhost:8000`` -> ``localhost``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def make_handler(
    predictor: Predictor,
    max_body: int = MAX_BODY,
    log: Optional[Callable[[str], Any]] = None,
    read_timeout: float = READ_TIMEOUT,
    gate: Optional[Gate] = None,
    public: bool = False,
) -> type:
    """A request handler class bound to one predictor; ``log`` receives one line per request (None: quiet).

    Each request must arrive whole within ``read_timeout`` seconds; pictures are decoded inside ``gate``. Unless
    ``public``, requests must name a loopback Host (no DNS rebinding); a POST from another page's Origin is refused.
    """
    gate = gate or Gate()

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout
        server_version = "ggml-mnist"

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the standard library's reader holds a reference that would keep the socket open
            self._reader = _DeadlineReader(self.connection, time.monotonic() + read_timeout)
            self.rfile = io.BufferedReader(self._reader)

        def flush_headers(self) -> None:
            self.connection.settimeout(WRITE_TIMEOUT)  # the answer gets its own time, whatever the request took
            super().flush_headers()

        def log_message(self, format: str, *args: Any) -> None:
            if log is not None:
                log(escape(f"{self.address_string()} {format % args}"))

        def do_GET(self) -> None:
            self._answer(self._get)

        def do_POST(self) -> None:
            self._answer(self._post)

        def do_HEAD(self) -> None:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"}, {"Allow": "GET"})

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _check_host(self) -> None:
            host = self.headers.get("Host")
            if public or host is None or is_loopback(_host_name(host.strip())):
                return
            raise RequestError(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"Host {host!r} is not this machine's loopback name; this server answers only "
                "http://127.0.0.1 or http://localhost (start it with --public to serve other names)",
            )

        def _check_origin(self) -> None:
            origin = self.headers.get("Origin")
            if origin is None:
                return
            host = (self.headers.get("Host") or "").strip().lower()
            if not host or origin.strip().rstrip("/").lower() not in (f"http://{host}", f"https://{host}"):
                raise RequestError(
                    HTTPStatus.FORBIDDEN,
                    f"a request from another web page (Origin {origin!r}) is refused; use the page "
                    "this server serves, or send the request without a browser",
                )

        def _get(self) -> None:
            self._check_host()
            path = self.path.split("?")[0]
            if path == "/predict":
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "POST an image to /predict")
            if path == "/model":
                return self._send_json(HTTPStatus.OK, predictor.info())
            if path not in _PAGES:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no page {path!r}; try / , /model or POST /predict")
            name, ctype = _PAGES[path]
            self._send(HTTPStatus.OK, resources.files("ggml_mnist").joinpath("web").joinpath(name).read_bytes(), ctype)

        def _post(self) -> None:
            self._check_host()
            path = self.path.split("?")[0]
            if self.command != "POST" or path != "/predict":
                if path in ("/predict", "/model", *_PAGES):
                    use = "POST" if path == "/predict" else "GET"
                    raise RequestError(
                        HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on {path}; use {use}"
                    )
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path!r}; POST images to /predict")
            self._check_origin()
            content_type = self.headers.get("Content-Type", "")
            check_content_type(content_type)
            body = self._read_body()
            with gate.enter():
                image = decode_body(body, content_type)
                try:
                    result = predictor.predict(image)
                except ImageError as exc:
                    raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"not a usable image: {exc}") from exc
            self._send_json(HTTPStatus.OK, result)

        def _read_body(self) -> bytes:
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length header")
            try:
                length = int(length_text)
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_text!r}") from None
            if length > max_body:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body has {length} bytes; the limit is {max_body} (send a smaller image)",
                )
            if length <= 0:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body is empty; send an image")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise RequestError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"the body did not arrive within {read_timeout:g} s (the whole request must arrive in that time)",
                ) from None
            if len(body) != length:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes")
            return body

        def _answer(self, handler: Callable[[], None]) -> None:
            try:
                try:
                    handler()
                except RequestError as exc:
                    self.close_connection = True  # an unread body must not be taken for the next request
                    headers = dict(exc.headers)
                    if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
                        headers["Allow"] = {"/predict": "POST"}.get(self.path.split("?")[0], "GET")
                    self._send_json(exc.status, {"error": str(exc)}, headers)
                except _QUIET_ERRORS:
                    raise
                except ValueError as exc:  # our DataError/ConfigError and the like: the input was unusable
                    self._send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
                except Exception as exc:  # noqa: BLE001 - one failed request must not stop the server
                    self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
            except _QUIET_ERRORS as exc:  # the client went away or stalled: nobody is left to answer
                self.close_connection = True
                self.log_message("client gone: %s", exc.__class__.__name__)

        def _send_json(self, status: HTTPStatus, doc: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json", headers)

        def _send(self, status: HTTPStatus, data: bytes, ctype: str, headers: Optional[dict[str, str]] = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _descriptor_room() -> int:
    """How many more descriptors this process may open (a large number where the limit is unknown)."""
    try:
        import resource
    except ImportError:  # Windows: no descriptor limit of this kind
        return 1 << 20
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return soft - in_use


class Server(ThreadingHTTPServer):
    """The threaded HTTP server with a listen backlog of 128, a cap on open connections (beyond it: 503 and
    close, never a descriptor limit reached) and quiet client disconnects."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type,
        *,
        max_connections: int,
        log: Optional[Callable[[str], Any]] = None,
        gate: Optional[Gate] = None,
    ) -> None:
        host = address[0].strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.max_connections = max_connections
        self.gate = gate
        self._log = log
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((host, address[1]), handler)

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        with self._open_lock:
            return len(self._open)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)  # out of descriptors: wait for some to close instead of spinning on accept
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._open_lock:
            if len(self._open) < self.max_connections:
                self._open.add(request)
                return True
        body = json.dumps(
            {
                "error": f"the server is busy: {self.max_connections} connections are open, the "
                "limit; try again in a moment"
            }
        ).encode()
        head = (
            f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            request.setblocking(False)  # the accepting thread never waits on a client
            request.send(head + body)
        except OSError:
            pass
        if self._log is not None:
            self._log(f"{client_address[0]} refused: {self.max_connections} connections open")
        return False

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _QUIET_ERRORS):  # a client that disconnected or stalled: one line, no traceback
            if self._log is not None:
                self._log(f"{client_address[0]} client gone: {type(exc).__name__}")
            return
        super().handle_error(request, client_address)


def make_server(
    model: Model,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_body: int = MAX_BODY,
    log: Optional[Callable[[str], Any]] = None,
    read_timeout: float = READ_TIMEOUT,
    public: bool = False,
    max_connections: Optional[int] = None,
    max_pixels: int = MAX_PIXELS,
    gate: Optional[Gate] = None,
) -> Server:
    """A ready (bound, not yet serving) server for ``model``; port 0 picks a free port (see ``server_address``).

    Bodies over ``max_body`` bytes get 413; a client gets ``read_timeout`` seconds to send its whole request.
    A host other than loopback needs ``public=True``. ``max_connections`` (default: 256, less where the descriptor
    limit is lower) caps the open connections; ``gate`` bounds the pictures decoded at once (default: :class:`Gate`).
    Raises ConfigError for a model that cannot read pictures, a non-loopback host without ``public`` and bad limits.
    """
    check_host(host, public)
    if isinstance(port, bool) or not isinstance(port, int) or port not in PORTS:
        raise ConfigError(f"port must be 1-65535, or 0 for any free port; got {port!r}")
    if max_body < 1:
        raise ConfigError(f"max_body must be at least 1 byte, got {max_body}")
    if not read_timeout > 0:
        raise ConfigError(f"read_timeout must be more than 0 seconds, got {read_timeout}")
    if max_connections is None:
        max_connections = max(1, min(MAX_CONNECTIONS, _descriptor_room() - 32))
    elif max_connections < 1:
        raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
    gate = gate or Gate()
    handler = make_handler(Predictor(model, max_pixels), max_body, log, read_timeout, gate, public)
    server = Server((host, port), handler, max_connections=max_connections, log=log, gate=gate)
    if not public and not is_loopback(str(server.server_address[0])):  # a name that resolved elsewhere
        server.server_close()
        check_host(str(server.server_address[0]), public)
    return server
