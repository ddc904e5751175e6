"""The console scripts, one module each (argparse only; the work happens in the package's API):

- ``train``: mnist-train        - ``eval``: mnist-eval          - ``data``: mnist-data
- ``plot``: mnist-plot          - ``serve``: mnist-serve        - ``predict``: mnist-predict
- ``quantize``: mnist-quantize  - ``tune``: mnist-tune

and ``common``, what they share. ``python -m ggml_mnist.cli.train ...`` runs a script without its console command.
"""

from __future__ import annotations

import importlib
from typing import Any

# the names the single module ggml_mnist.cli offered before the scripts had modules of their own, imported when
# asked for (so that ``python -m ggml_mnist.cli.train`` does not import its own module twice)
_OLD_NAMES = {
    "train_main": "train",
    "train_parser": "train",
    "eval_main": "eval",
    "eval_parser": "eval",
    "data_main": "data",
    "data_parser": "data",
    "printable": "common",
    "check_model_argument": "common",
}

__all__ = list(_OLD_NAMES)


def __getattr__(name: str) -> Any:
    if name in _OLD_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_OLD_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
