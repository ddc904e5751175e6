"""mnist-predict's outputs and arguments: --annotate never destroys an input or a foreign file, names collide
nowhere, the model comes first, FIFOs and failures of one picture do not stop the others (no data needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggml_mnist import Model
from ggml_mnist.cli.predict import predict_main
from ggml_mnist.outputs import PNG_SOFTWARE
from ggml_mnist.pictures.annotate import layout_labels
from ggml_mnist.pictures.read import Digit
from support.handwriting import draw_digits
from support.helpers import THREADS


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "fc.gguf"
    Model.create("fc", threads=THREADS, seed=3).save(path)
    return path


@pytest.fixture
def seven(tmp_path: Path) -> Path:
    path = tmp_path / "seven.png"
    draw_digits([7]).save(path)
    return path


def test_annotate_refuses_the_model_and_every_picture(
    model_file: Path, seven: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "marked"
    folder.mkdir()
    earlier = folder / "seven.annotated.png"  # an input that the annotation of seven.png would replace
    draw_digits([1]).save(earlier)
    model_bytes, seven_bytes, earlier_bytes = model_file.read_bytes(), seven.read_bytes(), earlier.read_bytes()
    for force in ([], ["--force"]):
        for target in (model_file, seven):
            assert predict_main([str(model_file), str(seven), "--annotate", str(target), *force]) == 1
        assert predict_main([str(model_file), str(earlier), str(seven), "--annotate", str(folder), *force]) == 1
    assert model_file.read_bytes() == model_bytes and seven.read_bytes() == seven_bytes
    assert earlier.read_bytes() == earlier_bytes
    captured = capsys.readouterr()
    assert captured.err.count("is the input file") == 6 and captured.out == ""  # refused before reading a picture


def test_annotate_replaces_only_its_own_pictures_unless_forced(
    model_file: Path, seven: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "read.png"
    assert predict_main([str(model_file), str(seven), "--annotate", str(out)]) == 0
    assert Image.open(out).info.get("Software") == PNG_SOFTWARE
    assert predict_main([str(model_file), str(seven), "--annotate", str(out)]) == 0  # ours: replaced
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(photo)
    before = photo.read_bytes()
    assert predict_main([str(model_file), str(seven), "--annotate", str(photo)]) == 1
    assert photo.read_bytes() == before and "--force" in capsys.readouterr().err
    assert predict_main([str(model_file), str(seven), "--annotate", str(photo), "--force"]) == 0
    assert Image.open(photo).info.get("Software") == PNG_SOFTWARE


def test_annotating_two_pictures_of_the_same_name_is_refused_before_reading(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    draw_digits([1]).save(tmp_path / "a" / "scan.png")
    draw_digits([2]).save(tmp_path / "b" / "scan.jpg")
    folder = tmp_path / "marked"
    args = [
        str(model_file),
        str(tmp_path / "a" / "scan.png"),
        str(tmp_path / "b" / "scan.jpg"),
        "--annotate",
        str(folder),
    ]
    assert predict_main(args) == 1
    out, err = capsys.readouterr()
    assert out == "" and "would both be annotated as" in err and not (folder / "scan.annotated.png").exists()
    same_twice = [str(model_file), str(tmp_path / "a" / "scan.png"), str(tmp_path / "a" / ".." / "a" / "scan.png")]
    assert predict_main([*same_twice, "--annotate", str(folder)]) == 0  # one picture named twice is no collision
    assert sorted(p.name for p in folder.iterdir()) == ["scan.annotated.png"]


def test_an_existing_directory_gets_the_annotation_of_one_picture(
    model_file: Path, seven: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "marked"
    folder.mkdir()
    assert predict_main([str(model_file), str(seven), "--annotate", str(folder)]) == 0
    assert (folder / "seven.annotated.png").is_file()


def test_swapped_arguments_name_the_order(model_file: Path, seven: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_main([str(seven), str(model_file)]) == 1
    err = capsys.readouterr().err
    assert "the first argument is the model: mnist-predict MODEL.gguf IMAGE" in err and "GGUF" not in err.split(":")[-1]
    assert predict_main([str(model_file), str(seven)]) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_waiting(
    model_file: Path, seven: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert predict_main([str(model_file), str(fifo), str(seven)]) == 1  # would block forever if it opened the FIFO
    out, err = capsys.readouterr()
    assert "not a regular file" in err and out.startswith(f"{seven}: ")


def test_one_failing_picture_does_not_stop_the_others(
    model_file: Path, seven: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ggml_mnist.pictures.prepare as imaging

    real = imaging._find_ink

    def starved(gray: np.ndarray, work_side: int) -> imaging.Ink:
        if gray.shape[1] > 200:
            raise MemoryError
        return real(gray, work_side)

    monkeypatch.setattr(imaging, "_find_ink", starved)
    wide = tmp_path / "wide.png"
    draw_digits([1, 2, 3]).save(wide)
    assert predict_main([str(model_file), str(wide), str(seven), "--digits"]) == 1
    out, err = capsys.readouterr()
    assert "memory" in err and out.startswith(f"{seven}: ")


def test_labels_of_close_digits_do_not_overlap() -> None:
    found = [
        Digit((10 + 22 * i, 30, 30 + 22 * i, 70), 0, i % 10, str(i % 10), 0.99, np.zeros((28, 28), np.uint8))
        for i in range(12)
    ]
    spots = [spot for _, spot in layout_labels(found, (300, 110))]
    for i, a in enumerate(spots):
        assert a[0] >= 0 and a[2] <= 300 and a[1] >= 0 and a[3] <= 110
        for b in spots[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
