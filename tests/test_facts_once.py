"""Facts written once: the shim's enums and limits come from ggml_mnist.h (through the cffi lib), not from numbers
retyped in Python."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import ggml_mnist as gm
from ggml_mnist import _ffi, config, training
from ggml_mnist._ffi import enum_names, lib

HEADER = Path(__file__).resolve().parents[1] / "src" / "ggml_mnist.h"


def header_enum(name: str) -> dict[str, int]:
    """The members of ``enum name`` as the header writes them (NAME = value, or counting on from the last)."""
    body = re.search(r"enum\s+" + name + r"\s*\{(.*?)\}", HEADER.read_text(), re.S)
    assert body, name
    out, value = {}, -1
    for item in re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S).split(","):
        if item.strip():
            key, _, given = item.partition("=")
            value = int(given) if given.strip() else value + 1
            out[key.strip()] = value
    return out


@pytest.mark.skipif(not HEADER.is_file(), reason="needs the source tree's src/ggml_mnist.h (run from a clone)")
@pytest.mark.parametrize(
    "name",
    [
        "gmn_optimizer",
        "gmn_schedule",
        "gmn_graph",
        "gmn_device_type",
        "gmn_layer_kind",
        "gmn_phase",
        "gmn_status",
        "gmn_limit",
    ],
)
def test_enum_names_are_the_headers(name: str) -> None:
    written = header_enum(name)
    names = enum_names(name)
    assert list(names.values()) == sorted(written.values())
    assert all(
        any(key.endswith("_" + short.upper()) and written[key] == code for key in written)
        for short, code in names.items()
    )


def test_python_names_its_choices_from_the_header() -> None:
    assert enum_names("gmn_schedule") == {"constant": 0, "cosine": 1, "linear": 2, "onecycle": 3}
    assert config.OPTIMIZERS == ("adamw", "sgd") and config.GRAPHS == ("auto", "cpu", "portable")
    assert config.SCHEDULES == ("constant", "cosine", "linear", "onecycle")
    assert training._OPTIMIZER_CODES == {"adamw": lib.GMN_OPT_ADAMW, "sgd": lib.GMN_OPT_SGD}
    assert training._SCHEDULE_CODES["onecycle"] == lib.GMN_SCHEDULE_ONECYCLE
    assert gm._DEVICE_TYPES[lib.GMN_DEVICE_CPU] == "cpu" and gm._DEVICE_TYPES[lib.GMN_DEVICE_IGPU] == "igpu"
    assert [d.type for d in gm.devices()].count("cpu") == 1
    assert {layer.code for layer in (gm.layers.Dense(10), gm.layers.ReLU())} == {
        lib.GMN_LAYER_DENSE,
        lib.GMN_LAYER_RELU,
    }


def test_limits_in_messages_are_the_headers() -> None:
    with pytest.raises(gm.ConfigError, match=rf"batch_size must be in \[1, {lib.GMN_MAX_BATCH}\]"):
        gm.TrainConfig(batch_size=lib.GMN_MAX_BATCH + 1).validate()
    with pytest.raises(gm.ConfigError, match=rf"threads must be in \[0, {lib.GMN_MAX_THREADS}\]"):
        gm.TrainConfig(threads=lib.GMN_MAX_THREADS + 1).validate()
    assert (lib.GMN_MAX_BATCH, lib.GMN_MAX_THREADS) == (1_000_000, 1024)


def test_log_levels_map_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _ffi._LEVELS[lib.GMN_LOG_WARN] == logging.WARNING and _ffi._LEVELS[lib.GMN_LOG_DEBUG] == logging.DEBUG
    seen = []

    class Spy:  # the lib, but gmn_log_set only records the native level it is given
        def __getattr__(self, name: str) -> object:
            return getattr(lib, name)

        def gmn_log_set(self, fn: object, userdata: object, level: int) -> None:
            seen.append(level)

    monkeypatch.setattr(_ffi, "lib", Spy())
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 25):
        _ffi.set_verbose(True, level)
    _ffi.set_verbose(False)
    assert seen == [
        lib.GMN_LOG_DEBUG,
        lib.GMN_LOG_INFO,
        lib.GMN_LOG_WARN,
        lib.GMN_LOG_ERROR,
        lib.GMN_LOG_ERROR,
        lib.GMN_LOG_ERROR,
    ]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True, "1"])
def test_a_seed_is_checked_once_for_models_recipes_and_augmentation(seed: object) -> None:
    import numpy as np

    for call in (
        lambda: gm.Model.create("fc", hidden=8, seed=seed),
        lambda: gm.TrainConfig(seed=seed).validate(),
        lambda: gm.augment_images(np.zeros((1, 28, 28), np.uint8), seed=seed),
    ):
        with pytest.raises(gm.ConfigError, match=r"seed must be an integer in \[0, 2\*\*64\), got "):
            call()
    assert _ffi.check_seed(np.uint64(2**64 - 1)) == 2**64 - 1 and type(_ffi.check_seed(np.int64(3))) is int


def test_a_directory_given_as_a_file_is_refused_in_one_place(tmp_path: Path) -> None:
    from PIL import Image

    from ggml_mnist.pictures.annotate import save_png

    package = Path(gm.__file__).parent
    raising = [
        (str(p.relative_to(package)), line.strip())
        for p in sorted(package.rglob("*.py"))
        for line in p.read_text().splitlines()
        if "is a directory;" in line and "raise" in line
    ]
    assert raising == [("outputs.py", 'raise error(f"{subject} is a directory; {fix}")')]
    with pytest.raises(gm.IdxFormatError, match=r"is a directory; give the path of an IDX file"):
        gm.read_idx(tmp_path)
    with pytest.raises(gm.ImageError, match=r"is a directory; give an image file"):
        gm.prepare_image(tmp_path)
    with pytest.raises(gm.ModelIOError, match=r"is a directory; give a file name such as model.gguf"):
        gm.Model.create("fc", hidden=8).save(tmp_path)
    with pytest.raises(gm.ImageError, match=r"the annotated picture '.*' is a directory; give a file name such as"):
        save_png(Image.new("L", (4, 4)), str(tmp_path))
    with pytest.raises(
        gm.ImageError, match=r"cannot write the annotated picture .*: directory '.*nowhere' does not exist"
    ):
        save_png(Image.new("L", (4, 4)), str(tmp_path / "nowhere" / "a.png"))
