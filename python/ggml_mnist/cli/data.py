"""Console script ``mnist-data``: download and verify IDX datasets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .. import download
from ..config import DEFAULT_DATA_DIR
from ..datasets import downloadable
from .common import add_version, run


def data_parser() -> argparse.ArgumentParser:
    """The argument parser of mnist-data."""
    p = argparse.ArgumentParser(prog="mnist-data", description="Download and verify IDX datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("download", "download (or complete) a dataset, verifying SHA-256 sums"),
        ("verify", "check the SHA-256 sums of a downloaded dataset"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument(
            "--dataset", default="mnist", choices=sorted(downloadable()), help="which dataset (default: mnist)"
        )
        s.add_argument(
            "--dir",
            default=DEFAULT_DATA_DIR,
            help=f"parent directory; files go to DIR/DATASET (default: {DEFAULT_DATA_DIR})",
        )
        s.add_argument("--quiet", action="store_true", help="no progress output")
        if name == "download":
            s.add_argument(
                "--force",
                action="store_true",
                help="replace a file of another kind (such as a model saved there by mistake) that sits "
                "under a dataset file's name",
            )
    return add_version(p)


def _data(args: argparse.Namespace) -> int:
    if args.command == "download":
        where = download.download_dataset(args.dataset, args.dir, progress=not args.quiet, force=args.force)
        if not args.quiet:
            print(f"mnist-data: {args.dataset} is ready in {where}", file=sys.stderr)
        return 0
    status = download.dataset_status(args.dataset, args.dir)
    print(f"{args.dataset} in {Path(args.dir) / args.dataset}:")
    for name, state in status.items():
        if state == "ok" or state == "missing":
            print(f"{'ok' if state == 'ok' else 'MISSING':7s} {name}")
        else:
            print(f"BAD     {name}: {state}; remove it or run `mnist-data download --force`")
    return 0 if all(state == "ok" for state in status.values()) else 1


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of mnist-data."""
    return run(_data, data_parser(), argv)


if __name__ == "__main__":
    sys.exit(data_main())
