"""Console script ``mnist-serve``: the draw-a-digit web page for a model (argparse only; the work is in serve)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from .. import api, serve
from ..config import DEFAULT_DEVICE
from .common import add_version, run


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535, or 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number; give 1-65535, or 0 for any free port"
        ) from None
    if port not in serve.PORTS:
        raise argparse.ArgumentTypeError(f"{port} is not a port; give 1-65535, or 0 for any free port")
    return port


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; give a size in bytes, e.g. 4194304"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} bytes would refuse every picture; give at least 1, e.g. 4194304")
    return value


def serve_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-serve."""
    p = argparse.ArgumentParser(
        prog="mnist-serve", description="Serve a web page where you draw a digit and MODEL.gguf reads it."
    )
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument(
        "--host",
        default=serve.DEFAULT_HOST,
        help=f"address to listen on (default: {serve.DEFAULT_HOST}, this machine only); any address "
        "but loopback needs --public",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="allow a --host that other machines can reach (the server has no authentication)",
    )
    p.add_argument(
        "--port", type=_port, default=serve.DEFAULT_PORT, help=f"port, 0 = any free one (default: {serve.DEFAULT_PORT})"
    )
    p.add_argument(
        "--max-body",
        type=_positive,
        default=serve.MAX_BODY,
        metavar="BYTES",
        help=f"largest accepted request body (default: {serve.MAX_BODY})",
    )
    p.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"auto, cpu or a ggml device name (default: {DEFAULT_DEVICE})"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all available cores (default: 0)")
    p.add_argument("--quiet", action="store_true", help="do not log each request on stderr")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return add_version(p)


def _serve(args: argparse.Namespace) -> int:
    warning = serve.check_host(args.host, args.public)  # refused before the model is loaded
    model = api.load(args.model, device=args.device, threads=args.threads)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    server = serve.make_server(model, args.host, args.port, max_body=args.max_body, log=log, public=args.public)
    host, port = server.server_address[:2]
    if warning:
        print(f"mnist-serve: warning: {warning}", file=sys.stderr, flush=True)
    if ":" in str(host):
        host = f"[{host}]"
    print(f"mnist-serve: {model.arch} model on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def serve_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-serve."""
    return run(_serve, serve_parser(), argv)


if __name__ == "__main__":
    sys.exit(serve_main())
