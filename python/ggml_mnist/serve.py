"""A local web page where you draw a digit and the model reads it, and its small JSON API.

Standard library only (``http.server``): ``GET /`` is the page (package data, nothing from the internet),
``GET /model`` the model's summary and class names, ``POST /predict`` takes an image (raw PNG/JPEG/... bytes,
or JSON ``{"image": "data:image/png;base64,..."}``) and returns the probabilities and the prepared 28x28 input.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np

from .errors import ImageError
from .imaging import prepare_image
from .model import Model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_BODY = 4 * 1024 * 1024  # bytes; a drawing is a few kB, a phone photo a few MB
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
_PAGES = {"/": ("index.html", "text/html; charset=utf-8")}


class RequestError(Exception):
    """A client error: the HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Predictor:
    """One model behind a lock: the server's threads take turns on it."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.preparation = model.preparation
        self.class_names = model.class_names

    def info(self) -> dict[str, Any]:
        """The model's summary, as ``GET /model`` returns it."""
        lines: list[str] = []
        with self.lock:
            self.model.summary(print_fn=lines.append)
            return {"arch": self.model.arch, "architecture": self.model.architecture, "n_classes": self.model.n_classes,
                    "image_size": list(self.model.image_size), "n_params": self.model.n_params,
                    "class_names": self.class_names, "preparation": self.preparation, "summary": lines}

    def predict(self, image: bytes) -> dict[str, Any]:
        """Prepare encoded image bytes as the model's input and classify it. Raises ImageError."""
        prepared = prepare_image(image, preparation=self.preparation)
        with self.lock:
            probs = self.model.predict_proba(prepared)[0]
        label = int(np.argmax(probs))
        return {"label": label, "class_name": self.class_names[label], "probability": float(probs[label]),
                "probabilities": [float(p) for p in probs], "prepared": np.asarray(prepared).tolist()}


def decode_body(body: bytes, content_type: str) -> bytes:
    """The image bytes of a ``/predict`` body: raw bytes, or JSON with a (data-URL) base64 ``image``."""
    if not content_type.split(";")[0].strip().lower() == "application/json":
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


def make_handler(predictor: Predictor, max_body: int = MAX_BODY, log: Optional[Callable[[str], Any]] = None,
                 read_timeout: float = READ_TIMEOUT) -> type:
    """A request handler class bound to one predictor; ``log`` receives one line per request (None: quiet)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout
        server_version = "ggml-mnist"

        def log_message(self, format: str, *args: Any) -> None:
            if log is not None:
                log(f"{self.address_string()} {format % args}")

        def do_GET(self) -> None:
            self._answer(self._get)

        def do_POST(self) -> None:
            self._answer(self._post)

        def do_HEAD(self) -> None:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"}, allow="GET")

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _get(self) -> None:
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
            path = self.path.split("?")[0]
            if self.command != "POST" or path != "/predict":
                if path in ("/predict", "/model", *_PAGES):
                    raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED,
                                       f"{self.command} is not allowed on {path}; use {'POST' if path == '/predict' else 'GET'}")
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path!r}; POST images to /predict")
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length header")
            try:
                length = int(length_text)
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_text!r}") from None
            if length > max_body:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"the body has {length} bytes; the limit is {max_body} (send a smaller image)")
            if length <= 0:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body is empty; send an image")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                                   f"the body did not arrive within {read_timeout:g} s") from None
            if len(body) != length:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes")
            image = decode_body(body, self.headers.get("Content-Type", ""))
            try:
                result = predictor.predict(image)
            except ImageError as exc:
                raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"not a usable image: {exc}") from exc
            self._send_json(HTTPStatus.OK, result)

        def _answer(self, handler: Callable[[], None]) -> None:
            try:
                handler()
            except RequestError as exc:
                self.close_connection = True  # an unread body must not be taken for the next request
                allow = {"/predict": "POST"}.get(self.path.split("?")[0], "GET")
                self._send_json(exc.status, {"error": str(exc)},
                                allow=allow if exc.status == HTTPStatus.METHOD_NOT_ALLOWED else None)
            except ValueError as exc:  # our DataError/ConfigError and the like: the input was unusable
                self._send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - one failed request must not stop the server
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

        def _send_json(self, status: HTTPStatus, doc: dict[str, Any], allow: Optional[str] = None) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json", allow)

        def _send(self, status: HTTPStatus, data: bytes, ctype: str, allow: Optional[str] = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def make_server(model: Model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, max_body: int = MAX_BODY,
                log: Optional[Callable[[str], Any]] = None, read_timeout: float = READ_TIMEOUT) -> ThreadingHTTPServer:
    """A ready (bound, not yet serving) server for ``model``; port 0 picks a free port (see ``server_address``).

    Bodies over ``max_body`` bytes get 413; a client gets ``read_timeout`` seconds to send its request.
    """
    server = ThreadingHTTPServer((host, port), make_handler(Predictor(model), max_body, log, read_timeout))
    server.daemon_threads = True
    return server
