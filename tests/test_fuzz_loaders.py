"""Fuzzing the IDX and GGUF loaders: bounded derandomized runs, truncation sweeps and the regression corpus.

The harness is fuzz_loaders.py (also a script for long runs). GGUF cases run in worker subprocesses,
so a crash in ggml is reported with its recipe instead of killing pytest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from support import fuzz_loaders as fz


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> fz.Workspace:
    return fz.Workspace(tmp_path_factory.mktemp("fuzz"))


@fz.hypothesis_settings(max_examples=400, derandomize=True)
@given(recipe=fz.idx_recipes())
def test_idx_mutations_load_or_raise_data_errors(recipe: fz.Recipe, workspace: fz.Workspace) -> None:
    """Mutated IDX files (raw and gzip) load exactly what write_idx would write, or raise IdxFormatError/DataError."""
    outcome, message = fz.check_idx(workspace, recipe)
    assert outcome in ("ok", "IdxFormatError", "DataError")
    assert outcome == "ok" or re.match(
        r"IDX file '|images |labels |label -?\d+ at index |\d+ images but \d+ labels", message
    )


def test_idx_truncation_at_every_offset(workspace: fz.Workspace) -> None:
    for recipe in fz.sweep_recipes("idx", workspace):
        cut = (recipe.get("gz_ops") or recipe["ops"])[0][1]
        full = len(fz.build_idx(workspace, {"base": recipe["base"], "gz": recipe["gz"]}))
        outcome, message = fz.check_idx(workspace, recipe)
        if cut == full:
            assert outcome == "ok", (recipe, message)
        else:
            assert outcome == "IdxFormatError", (recipe, outcome)


def test_gguf_mutations_never_crash_and_raise_only_model_format_errors() -> None:
    report = fz.generate("gguf", 400, derandomize=True)
    assert report.ok, report.summary()
    assert report.cases == 400
    assert set(report.outcomes) == {"ok", "ModelFormatError"}, report.outcomes
    assert report.outcomes["ModelFormatError"] > 200


def test_gguf_truncation_at_every_offset(tmp_path: Path) -> None:
    """Every prefix of a model file is refused, except prefixes that only drop the final alignment padding."""
    ws = fz.Workspace(tmp_path)
    for base in ("fc-tiny", "cnn-tiny"):
        recipes = fz.sweep_recipes("gguf", ws, bases=[base])
        report = fz.replay(recipes)
        assert report.ok, report.summary()
        outcomes = [r["outcome"] for r in report.results]
        assert len(outcomes) == len(fz.build_gguf(ws, {"base": base})) + 1
        n_ok = outcomes.count("ok")
        assert outcomes == ["ModelFormatError"] * (len(outcomes) - n_ok) + ["ok"] * n_ok
        assert 1 <= n_ok <= fz.GGUF_ALIGNMENT


@pytest.fixture(scope="module")
def corpus_results() -> list[dict[str, Any]]:
    report = fz.replay([case["recipe"] for case in fz.load_corpus()])
    assert len(report.results) == len(fz.load_corpus())
    return report.results


@pytest.mark.parametrize("index", range(len(fz.load_corpus())), ids=[c["name"] for c in fz.load_corpus()])
def test_regression_corpus(index: int, corpus_results: list[dict[str, Any]]) -> None:
    """Cases that once crashed the process or raised the wrong exception now give their recorded outcome."""
    case, result = fz.load_corpus()[index], corpus_results[index]
    assert result["outcome"] == case["outcome"], result["message"]
    assert re.search(case["match"], result["message"]), result["message"]


def test_the_harness_reports_a_crash_and_carries_on() -> None:
    """A case that kills its worker (as a failed GGML_ASSERT does) is reported with its recipe; later cases still run."""
    good = {"kind": "gguf", "base": "fc-tiny"}
    report = fz.replay([good, {"kind": "abort", "base": "fc-tiny", "ops": [["t_drop", 0]]}, good])
    assert [r["outcome"] for r in report.results] == ["ok", "crash", "ok"]
    assert report.crashes[0]["recipe"]["kind"] == "abort" and report.crashes[0]["returncode"] < 0
    assert "Aborted" in report.crashes[0]["output"]
    assert not report.ok


def test_recipes_are_reproducible(tmp_path: Path) -> None:
    """A recipe gives the same bytes in a fresh workspace, so corpus entries mean the same file every time."""
    recipe = fz.load_corpus()[0]["recipe"]
    first = fz.build_gguf(fz.Workspace(tmp_path / "a"), recipe)
    assert fz.build_gguf(fz.Workspace(tmp_path / "b"), recipe) == first
    idx = {"kind": "idx", "base": "images", "gz": True, "ops": [["set_dim", 1, 0]], "gz_ops": [["flip", 30, 1]]}
    assert fz.build_idx(fz.Workspace(tmp_path / "a"), idx) == fz.build_idx(fz.Workspace(tmp_path / "b"), idx)
