"""``python -m ggml_mnist.cli SCRIPT [ARGS ...]``: run a console script (mnist-SCRIPT) without its command."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Optional

SCRIPTS = ("train", "eval", "data", "plot", "serve", "predict", "quantize", "tune")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run mnist-SCRIPT with the remaining arguments; 2 with a usage line for anything else."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCRIPTS:
        print(
            f"usage: python -m ggml_mnist.cli {{{','.join(SCRIPTS)}}} [ARGS ...] (the console scripts mnist-SCRIPT)",
            file=sys.stderr,
        )
        return 2
    script = importlib.import_module(f"{__package__}.{argv[0]}")
    return int(getattr(script, f"{argv[0]}_main")(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
