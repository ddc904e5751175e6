"""The tree keeps its formatting and lint rules (pyproject.toml [tool.ruff]); CI runs this with the test extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff as _  # noqa: F401  (the test extra pins it)

        command = [sys.executable, "-m", "ruff"]
    except ImportError:
        found = shutil.which("ruff")
        if found is None:
            pytest.skip("ruff is not installed: pip install '.[test]' installs it")
        command = [found]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_passes() -> None:
    out = ruff("check", "--no-cache", ".")
    assert out.returncode == 0, (
        f"ruff check found problems (fix them, or run ruff check --fix):\n{out.stdout}{out.stderr}"
    )


def test_ruff_format_is_applied() -> None:
    out = ruff("format", "--no-cache", "--check", ".")
    assert out.returncode == 0, f"files are not formatted (run ruff format .):\n{out.stdout}{out.stderr}"
