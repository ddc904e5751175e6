"""The package's old module paths and the console scripts' entry points still work after the move into rooms."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import ggml_mnist as gm

ROOT = Path(__file__).resolve().parent.parent

# every module path of the flat package that moved, and where its code lives now (written out here, not read
# from ggml_mnist._moved, so that a name dropped from that table fails this test)
OLD_PATHS = {
    "ggml_mnist.imaging": "ggml_mnist.pictures.prepare",
    "ggml_mnist.components": "ggml_mnist.pictures.components",
    "ggml_mnist.segment": "ggml_mnist.pictures.segment",
    "ggml_mnist.reading": "ggml_mnist.pictures.read",
    "ggml_mnist.annotate": "ggml_mnist.pictures.annotate",
    "ggml_mnist.predict_cli": "ggml_mnist.cli.predict",
    "ggml_mnist.plot_cli": "ggml_mnist.cli.plot",
    "ggml_mnist.serve_cli": "ggml_mnist.cli.serve",
    "ggml_mnist.quantize_cli": "ggml_mnist.cli.quantize",
    "ggml_mnist.tune_cli": "ggml_mnist.cli.tune",
}

# what users imported from the old modules (README examples, the old console-script entry points)
OLD_IMPORTS = [
    ("ggml_mnist.imaging", "prepare_image"),
    ("ggml_mnist.imaging", "text_art"),
    ("ggml_mnist.reading", "Prediction"),
    ("ggml_mnist.reading", "DigitReading"),
    ("ggml_mnist.annotate", "annotate"),
    ("ggml_mnist.annotate", "save_png"),
    ("ggml_mnist.segment", "segment"),
    ("ggml_mnist.components", "label"),
    ("ggml_mnist.cli", "train_main"),
    ("ggml_mnist.cli", "eval_main"),
    ("ggml_mnist.cli", "data_main"),
    ("ggml_mnist.cli", "train_parser"),
    ("ggml_mnist.cli", "eval_parser"),
    ("ggml_mnist.cli", "data_parser"),
    ("ggml_mnist.cli", "printable"),
    ("ggml_mnist.cli", "check_model_argument"),
    ("ggml_mnist.predict_cli", "predict_main"),
    ("ggml_mnist.plot_cli", "plot_main"),
    ("ggml_mnist.serve_cli", "serve_main"),
    ("ggml_mnist.quantize_cli", "quantize_main"),
    ("ggml_mnist.tune_cli", "tune_main"),
]

SCRIPTS = [
    "mnist-train",
    "mnist-eval",
    "mnist-data",
    "mnist-plot",
    "mnist-serve",
    "mnist-predict",
    "mnist-quantize",
    "mnist-tune",
]


@pytest.mark.parametrize("old, new", sorted(OLD_PATHS.items()))
def test_an_old_module_path_imports_its_new_module_itself(old: str, new: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # one module: monkeypatching through either name reaches both
    assert module.__name__ == new and module.__spec__.name == new  # it keeps its own name and spec
    assert getattr(gm, old.rpartition(".")[2]) is module  # and the package attribute of the old name


@pytest.mark.parametrize("module, name", OLD_IMPORTS)
def test_what_users_imported_from_the_old_modules_still_imports(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name)
    assert callable(value)


def test_the_old_paths_work_in_a_fresh_interpreter_before_anything_else_is_imported() -> None:
    code = (
        "from ggml_mnist.predict_cli import predict_main\n"
        "import ggml_mnist.imaging as old, ggml_mnist.pictures.prepare as new\n"
        "from ggml_mnist.cli import train_main\n"
        "import ggml_mnist.cli.train as train\n"
        "assert old is new and train.train_main is train_main, 'two copies'\n"
        "print(predict_main.__module__, new.__spec__.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ggml_mnist.cli.predict", "ggml_mnist.pictures.prepare"]


def test_a_name_that_never_existed_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ggml_mnist.no_such_module")
    with pytest.raises(AttributeError, match="no_such_name"):
        gm.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from ggml_mnist.cli import no_such_name", {})


@pytest.mark.parametrize(
    "command", [["-m", "ggml_mnist.tune_cli"], ["-m", "ggml_mnist.cli.tune"], ["-m", "ggml_mnist.cli", "tune"]]
)
def test_python_dash_m_runs_a_script_under_its_old_and_new_names(command: list[str]) -> None:
    out = subprocess.run([sys.executable, *command, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mnist-tune ")
    assert "RuntimeWarning" not in out.stderr


def _pyproject_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_console_scripts_keep_their_names_and_live_in_cli() -> None:
    scripts = _pyproject_scripts()
    assert sorted(scripts) == sorted(SCRIPTS)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == f"ggml_mnist.cli.{name.removeprefix('mnist-')}", target
        assert function == f"{name.removeprefix('mnist-')}_main", target


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_console_script_entry_point_resolves_and_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, _, function = _pyproject_scripts()[name].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"{name} {gm.__version__} ")


def test_the_installed_entry_points_resolve_whichever_install_made_them() -> None:
    """An install made before the move names the old modules; one made after names cli.*: both must load."""
    try:
        dist = importlib.metadata.distribution("ggml-mnist")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ggml-mnist is not installed (tests run from a source tree): pip install -e . installs it")
    installed = {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}
    assert set(SCRIPTS) - {"mnist-tune"} <= set(installed)
    for ep in installed.values():
        assert callable(ep.load()), ep


def test_the_public_api_is_unchanged() -> None:
    for name in [
        "train",
        "evaluate",
        "load",
        "export_gguf",
        "tune",
        "Model",
        "Ensemble",
        "TrainConfig",
        "layers",
        "Sequential",
        "presets",
        "load_layers",
        "prepare_image",
        "Prediction",
        "Digit",
        "DigitReading",
        "plot",
        "devices",
        "read_idx",
        "write_idx",
        "load_mnist",
        "download_dataset",
        "GgmlMnistError",
    ]:
        assert name in gm.__all__ and getattr(gm, name) is not None, name
    assert gm.Prediction is importlib.import_module("ggml_mnist.pictures.read").Prediction
    assert gm.prepare_image is importlib.import_module("ggml_mnist.pictures.prepare").prepare_image
