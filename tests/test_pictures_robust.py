"""Hostile and empty pictures: every picture gives a result or an ImageError, quickly (no model training)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ggml_mnist import ImageError, Model, prepare_image
from ggml_mnist.pictures.prepare import MAX_PIECES, find_ink
from support.handwriting import correlation, draw_digits
from support.helpers import THREADS


@pytest.fixture(scope="module")
def fc() -> Model:
    return Model.create("fc", threads=THREADS, seed=3)


def test_binary_noise_gives_a_reading_or_an_image_error(fc: Model) -> None:
    """Fuzz: pictures of random black and white pixels, of every density (these raised ValueError: zero-size)."""
    rng = np.random.default_rng(7)
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        picture = np.where(rng.random((h, w)) < rng.uniform(0.01, 0.99), 0, 255).astype(np.uint8)
        try:
            reading = fc.read_digits(picture)
            assert reading.digits and all(d.input.shape == (28, 28) for d in reading.digits)
        except ImageError:
            pass
        with contextlib.suppress(ImageError):
            fc.predict_image(picture)


@pytest.mark.parametrize("size", [48, 100, 300, 800])
@pytest.mark.parametrize("dust", [0.01, 0.02, 0.03])
def test_dust_alone_is_no_digit(size: int, dust: float) -> None:
    for seed in range(2):
        rng = np.random.default_rng(seed)
        picture = np.where(rng.random((size, size + 17)) < dust, 0, 255).astype(np.uint8)
        with pytest.raises(ImageError, match="specks|no ink"):
            find_ink(picture)


@pytest.mark.parametrize("dust", [0.005, 0.01, 0.02])
def test_a_digit_among_dust_is_still_read(dust: float) -> None:
    clean = np.asarray(draw_digits([3], height=120).convert("L"))
    dusty = np.where(np.random.default_rng(0).random(clean.shape) < dust, 0, clean).astype(np.uint8)
    a, b = prepare_image(clean).astype(float), prepare_image(dusty).astype(float)
    assert correlation(a, b) > 0.75  # read, not refused as dust


def test_dotted_paper_is_refused_with_a_reason(fc: Model) -> None:
    """A grid of 99 x 99 dots, one of them grown into a blot: every dot passes as a piece, and so would be a digit."""
    page = Image.new("L", (99 * 8 + 16, 99 * 8 + 16), 255)
    draw = ImageDraw.Draw(page)
    for i in range(99):
        for j in range(99):
            x, y = 8 + 8 * i, 8 + 8 * j
            draw.rectangle((x, y, x + 2, y + 2), fill=0)
    draw.ellipse((300, 300, 330, 340), outline=0, width=3)
    with pytest.raises(ImageError, match=f"more than a page of digits \\({MAX_PIECES}\\)|specks spread"):
        fc.read_digits(page)


def test_more_marks_than_a_page_holds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound on the marks considered is checked before segmentation (here lowered to 5 marks)."""
    import ggml_mnist.pictures.prepare as imaging

    monkeypatch.setattr(imaging, "MAX_PIECES", 5)
    with pytest.raises(ImageError, match="6 separate marks, more than a page of digits \\(5\\)"):
        find_ink(draw_digits([1, 2, 3, 4, 5, 7], height=60))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        prepare_image(fifo)  # opening it for reading would block until a writer came


def test_a_picture_above_the_pixel_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (300, 200), 255).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(ImageError, match="300x200 pixels, more than"):
        prepare_image(path)


def test_running_out_of_memory_is_an_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ggml_mnist.pictures.prepare as imaging

    def starved(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(imaging, "_find_ink", starved)
    with pytest.raises(ImageError, match="memory"):
        prepare_image(draw_digits([1]))
