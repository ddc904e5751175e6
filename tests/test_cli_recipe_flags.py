"""mnist-train's recipe flags are made from TrainConfig's fields: one flag per field, with the field's help text."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest

import ggml_mnist.cli.train as train_cli
from ggml_mnist import TrainConfig, load
from ggml_mnist.config import option
from support.synthetic import SPLIT_FILES, make_synthetic

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "20", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    data_dir = make_synthetic(tmp_path_factory.mktemp("data"), n_train=200, n_test=50)
    return [str(data_dir / name) for name in SPLIT_FILES["train"]]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings if o.startswith("--")}


def test_every_field_but_arch_is_a_flag_with_the_fields_help_text() -> None:
    options = _options(train_cli.train_parser())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "arch":
            assert flag not in options  # ARCH is the positional (or --arch-file)
            continue
        assert flag in options, flag
        assert options[flag].help.startswith(TrainConfig.help(field.name)), flag
        assert options[flag].dest == field.name and options[flag].default is None  # None: the recipe's own value


def test_the_flags_keep_their_types_choices_and_metavars() -> None:
    options = _options(train_cli.train_parser())
    assert options["--epochs"].type is int and options["--lr"].type is float and options["--seed"].type is int
    assert options["--optimizer"].choices == ("adamw", "sgd")
    assert options["--lr-schedule"].choices == ("constant", "cosine", "linear", "onecycle")  # ggml_mnist.h's order
    assert options["--graph"].choices == ("auto", "cpu", "portable")
    assert options["--conv-channels"].nargs == "+" and options["--conv-channels"].type is int
    assert options["--conv-channels"].metavar == "C" and options["--augment"].metavar == "LEVEL|JSON"
    assert options["--physical-batch-size"].type is int and options["--hidden"].type is int


def test_label_smoothing_and_max_seconds_are_flags_with_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_cli.train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--label-smoothing LABEL_SMOOTHING {TrainConfig.help('label_smoothing')}; default: 0.0" in text
    assert f"--max-seconds MAX_SECONDS {TrainConfig.help('max_seconds')}; default: 0.0" in text
    options = _options(train_cli.train_parser())
    assert options["--label-smoothing"].type is float and options["--max-seconds"].type is float


def test_the_new_flags_reach_the_recipe(files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    assert (
        train_cli.train_main(
            ["fc", str(out), *files, *FAST, "--label-smoothing", "0.1", "--max-seconds", "600", "--max-loss", "50"]
        )
        == 0
    )
    config = load(str(out)).metadata["config"]
    assert (config["label_smoothing"], config["max_seconds"], config["max_loss"]) == (0.1, 600.0, 50.0)


def test_a_bad_value_of_a_new_flag_is_one_line_naming_the_field(
    files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli.train_main(["fc", str(tmp_path / "m.gguf"), *files, *FAST, "--label-smoothing", "1.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist-train: error: label_smoothing must be in [0, 1)") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as info:
        train_cli.train_main(["fc", str(tmp_path / "m.gguf"), "--max-seconds", "soon"])
    assert info.value.code == 2
    assert "argument --max-seconds: invalid float value: 'soon'" in capsys.readouterr().err


def test_a_json_flag_names_itself_and_an_example(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert train_cli.train_main(["fc", str(tmp_path / "m.gguf"), "--augment", "{rotate: 5}"]) == 1
    err = capsys.readouterr().err
    assert "--augment '{rotate: 5}' is not valid JSON" in err and json.dumps({"rotate": 10, "shift": 2}) in err


@dataclasses.dataclass(frozen=True)
class _Grown(TrainConfig):
    """TrainConfig with two more fields, as a later version may have."""

    dropout_boost: float = option(0.25, "extra dropout on every dropout layer")
    frozen_layers: Optional[tuple[int, ...]] = option(None, "layers whose weights stay as they are (default: none)")
    sharpen: bool = option(False, "sharpen every picture")


def test_a_new_config_field_gets_its_flag_without_a_cli_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "TrainConfig", _Grown)
    parser = train_cli.train_parser()
    options = _options(parser)
    assert options["--dropout-boost"].type is float
    assert options["--dropout-boost"].help == "extra dropout on every dropout layer; default: 0.25"
    assert options["--frozen-layers"].nargs == "+" and options["--frozen-layers"].help.endswith("(default: none)")
    args = parser.parse_args(["fc", "out.gguf", "--dropout-boost", "0.5", "--frozen-layers", "1", "2", "--sharpen"])
    recipe = train_cli.recipe_options(args)
    assert (recipe["dropout_boost"], recipe["frozen_layers"], recipe["sharpen"]) == (0.5, [1, 2], True)
    assert recipe["lr"] is None  # not given: the preset's value


def test_a_field_type_without_a_command_line_form_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd(TrainConfig):
        callback: object = option(None, "something to call")

    monkeypatch.setattr(train_cli, "TrainConfig", Odd)
    with pytest.raises(TypeError, match="TrainConfig.callback: no command-line form"):
        train_cli.train_parser()
