"""Console script ``mnist-serve``: the draw-a-digit web page for a model (argparse only; the work is in serve)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import api, serve
from .cli import _add_version, _run
from .config import DEFAULT_DEVICE


def serve_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-serve."""
    p = argparse.ArgumentParser(prog="mnist-serve",
                                description="Serve a web page where you draw a digit and MODEL.gguf reads it.")
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("--host", default=serve.DEFAULT_HOST,
                   help=f"address to listen on (default: {serve.DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=serve.DEFAULT_PORT, help=f"port, 0 = any free one (default: {serve.DEFAULT_PORT})")
    p.add_argument("--max-body", type=int, default=serve.MAX_BODY, metavar="BYTES",
                   help=f"largest accepted request body (default: {serve.MAX_BODY})")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"auto, cpu or a ggml device name (default: {DEFAULT_DEVICE})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all available cores (default: 0)")
    p.add_argument("--quiet", action="store_true", help="do not log each request on stderr")
    p.add_argument("--verbose", action="store_true", help="show ggml's own log on stderr")
    return _add_version(p)


def _serve(args: argparse.Namespace) -> int:
    model = api.load(args.model, device=args.device, threads=args.threads)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    server = serve.make_server(model, args.host, args.port, max_body=args.max_body, log=log)
    host, port = server.server_address[:2]
    print(f"mnist-serve: {model.arch} model on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def serve_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-serve."""
    return _run(_serve, serve_parser(), argv)
