"""The package's old module paths, from before it had rooms: each still imports, as the module it moved to.

``import ggml_mnist.imaging`` gives the module ``ggml_mnist.pictures.prepare`` itself (not a copy), so
``from ggml_mnist.predict_cli import predict_main`` and monkeypatching through the old name keep working, and
``python -m ggml_mnist.tune_cli`` runs ``ggml_mnist.cli.tune``. A name that moved but is not in MOVED
raises the usual ModuleNotFoundError; the table is the whole list.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any, Optional

PACKAGE = __name__.rpartition(".")[0]

# old module (under ggml_mnist) -> the module that holds its code now
MOVED = {
    "imaging": "pictures.prepare",
    "components": "pictures.components",
    "segment": "pictures.segment",
    "reading": "pictures.read",
    "annotate": "pictures.annotate",
    "predict_cli": "cli.predict",
    "plot_cli": "cli.plot",
    "serve_cli": "cli.serve",
    "quantize_cli": "cli.quantize",
    "tune_cli": "cli.tune",
}


def new_name(old: str) -> Optional[str]:
    """The full new name of an old full module name such as 'ggml_mnist.imaging', or None."""
    head, _, tail = old.partition(".")
    return f"{PACKAGE}.{MOVED[tail]}" if head == PACKAGE and tail in MOVED else None


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names of MOVED and loads each as its new module (one module object under both names)."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        new = new_name(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, self, loader_state=new)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__  # the import machinery sets __spec__ to spec next; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # the new module keeps its own name, file and spec

    def get_code(self, fullname: str) -> CodeType:
        """For ``python -m OLD_NAME``: run the new module as the main module."""
        return compile(
            f"import runpy\nrunpy.run_module({new_name(fullname)!r}, run_name='__main__', alter_sys=True)\n",
            f"<{fullname}, moved to {new_name(fullname)}>",
            "exec",
        )


def install() -> None:
    """Put the finder first on sys.meta_path (once), ahead of finders that still know the old files' places."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())


def module(name: str) -> Any:
    """The package's attribute ``name`` for an old module name (``ggml_mnist.imaging`` without an import)."""
    if name in MOVED:
        return importlib.import_module(f"{PACKAGE}.{name}")
    raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
