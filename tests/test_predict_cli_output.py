"""mnist-predict's output: words from the model file never drive the terminal, a closed pipe is no failure, and
--annotate writes PNG files under PNG names only (no data needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ggml_mnist import Model
from ggml_mnist.cli.predict import predict_main
from support.handwriting import draw_digits
from support.helpers import THREADS


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for digit in (1, 4, 7):
        paths.append(folder / f"{digit}.png")
        draw_digits([digit]).save(paths[-1])
    return paths


def test_class_names_from_the_file_are_printed_escaped(
    tmp_path: Path, pictures: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = Model.create("fc", threads=THREADS, seed=3)
    model.metadata["class_names"] = [f"\x1b[31mRED{i}\x1b[0m\n\u202e" for i in range(10)]
    model.save(tmp_path / "m.gguf")
    assert predict_main([str(tmp_path / "m.gguf"), str(pictures[0]), "--show-input"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[31mRED" in out
    assert out.splitlines()[0].startswith(f"{pictures[0]}: \\x1b[31mRED") and out.splitlines()[0].endswith("%)")
    assert predict_main([str(tmp_path / "m.gguf"), str(pictures[0]), "--digits"]) == 0
    assert "\x1b" not in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly_without_blaming_the_pictures(tmp_path: Path, pictures: list[Path]) -> None:
    Model.create("fc", threads=THREADS, seed=3).save(tmp_path / "m.gguf")
    code = "import sys; from ggml_mnist.cli.predict import predict_main; sys.exit(predict_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "m.gguf"), *map(str, pictures * 20)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `| head -c 0` does: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Broken pipe" not in err and "failed" not in err


@pytest.mark.parametrize("name", ["read.jpg", "read.gif", "read", "read.png.txt"])
def test_annotate_takes_png_names_only(
    tmp_path: Path, pictures: list[Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Model.create("fc", threads=THREADS, seed=3).save(tmp_path / "m.gguf")
    assert predict_main([str(tmp_path / "m.gguf"), str(pictures[0]), "--annotate", str(tmp_path / name)]) == 1
    captured = capsys.readouterr()
    assert "give a name ending in .png" in captured.err and captured.out == ""  # before reading the picture
    assert not (tmp_path / name).exists()
    assert predict_main([str(tmp_path / "m.gguf"), str(pictures[0]), "--annotate", str(tmp_path / "READ.PNG")]) == 0
