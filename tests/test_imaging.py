"""prepare_image and the page segmentation on pictures drawn in the tests (no model, no data)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ggml_mnist import DataFileNotFoundError, ImageError, prepare_image
from ggml_mnist.pictures.components import label
from ggml_mnist.pictures.prepare import find_ink, stroke_width, text_art
from ggml_mnist.pictures.segment import segment
from support.handwriting import as_scan, correlation, draw_digits


def _mass_centre(img: np.ndarray) -> tuple[float, float]:
    f = img.astype(float)
    return (float(f.sum(1) @ np.arange(28)) / f.sum(), float(f.sum(0) @ np.arange(28)) / f.sum())


@pytest.fixture(scope="module")
def seven() -> Image.Image:
    return draw_digits([7], height=120, thickness=0.08)


@pytest.fixture(scope="module")
def reference(seven: Image.Image) -> np.ndarray:
    return prepare_image(seven)


def test_mnist_layout(reference: np.ndarray) -> None:
    """White ink on black, the ink fitted into 20x20 and centred by mass in 28x28."""
    assert reference.shape == (28, 28) and reference.dtype == np.uint8
    assert reference.max() == 255 and reference[0].max() == 0 and reference[:, 0].max() == 0
    rows, cols = np.nonzero(reference > 30)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in range(18, 22)
    cy, cx = _mass_centre(reference)
    assert abs(cy - 13.5) < 1.0 and abs(cx - 13.5) < 1.0
    assert 1.5 <= stroke_width(reference > 127) <= 4.0  # MNIST's strokes


def test_every_input_type_gives_the_same_digit(seven: Image.Image, reference: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "seven.png"
    seven.save(path)
    buf = io.BytesIO()
    seven.save(buf, "PNG")
    gray = np.asarray(seven)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    for image in (
        path,
        str(path),
        buf.getvalue(),
        seven.convert("RGB"),
        gray,
        gray / 255.0,
        np.dstack([gray] * 3),
        rgba,
        rgba / 255.0,
        gray[..., None],
    ):
        assert np.array_equal(prepare_image(image), reference) or correlation(prepare_image(image), reference) > 0.99


def test_alpha_is_composited_on_white(seven: Image.Image, reference: np.ndarray) -> None:
    ink = np.asarray(seven) < 128
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)  # transparent black background, opaque black ink
    rgba[..., 3] = np.where(ink, 255, 0)
    assert correlation(prepare_image(Image.fromarray(rgba, "RGBA")), reference) > 0.95
    assert correlation(prepare_image(rgba), reference) > 0.95


@pytest.mark.parametrize(
    "options",
    [
        dict(invert=True),
        dict(noise=0.1),
        dict(gradient=0.6),
        dict(jpeg=25),
        dict(paper=(235, 220, 180), ink=(30, 40, 140)),
        dict(invert=True, noise=0.05, gradient=0.5, jpeg=50),
        dict(size=20),
        dict(size=1000),
        dict(rotate=8),
    ],
    ids=lambda o: "-".join(o),
)
def test_robust_to_scans(seven: Image.Image, reference: np.ndarray, options: dict) -> None:
    prepared = prepare_image(as_scan(seven, **options))
    assert correlation(prepared, reference) > (0.75 if "size" in options or "rotate" in options else 0.85)
    cy, cx = _mass_centre(prepared)
    assert abs(cy - 13.5) < 1.0 and abs(cx - 13.5) < 1.0


def test_off_centre_on_a_large_page(seven: Image.Image, reference: np.ndarray) -> None:
    page = Image.new("L", (900, 700), 255)
    page.paste(seven, (700, 20))
    assert correlation(prepare_image(page), reference) > 0.97


def test_a_sheet_photographed_on_a_dark_table(reference: np.ndarray, seven: Image.Image) -> None:
    """Paper covers less than half of the photo: the table must not be taken for paper, nor its edges for ink."""
    sheet = as_scan(seven, paper=(230, 225, 210), gradient=0.3)
    photo = Image.new("RGB", (sheet.width + 120, sheet.height + 80), (60, 45, 30))
    photo.paste(sheet, (70, 30))
    assert correlation(prepare_image(photo), reference) > 0.95


def test_thin_pen_on_a_large_picture_gets_mnist_strokes() -> None:
    thin = draw_digits([4], height=800, thickness=0.003)  # a 2 px pen on a 1200 px picture
    prepared = prepare_image(thin)
    assert 1.5 <= stroke_width(prepared > 127) <= 4.0
    assert correlation(prepared, prepare_image(draw_digits([4], height=120, thickness=0.1))) > 0.8


def test_specks_are_removed(seven: Image.Image, reference: np.ndarray) -> None:
    page = seven.copy()
    draw = ImageDraw.Draw(page)
    for x, y in ((5, 5), (200, 10), (10, 200), (190, 200), (150, 120)):
        draw.ellipse((x, y, x + 2, y + 2), fill=0)
    assert np.array_equal(prepare_image(page), reference)


@pytest.mark.parametrize(
    "picture",
    [
        np.full((50, 50), 255, np.uint8),
        np.zeros((50, 50), np.uint8),
        np.full((50, 50), 0.5),
        np.linspace(0, 1, 80 * 60).reshape(60, 80),
        np.clip(np.random.default_rng(0).normal(0.6, 0.08, (200, 200)), 0, 1),
        (np.random.default_rng(1).random((300, 300)) > 0.999).astype(np.float64),
    ],
    ids=["white", "black", "grey", "gradient", "noise", "dust"],
)
def test_an_empty_picture_is_an_error_not_a_guess(picture: np.ndarray) -> None:
    with pytest.raises(ImageError, match="no ink"):
        prepare_image(picture)


def test_unusable_inputs_name_the_problem(tmp_path: Path) -> None:
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    draw_digits([1]).save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:200])
    cases = [
        (junk, "not a readable image"),
        (truncated, "not a readable image"),
        (tmp_path, "directory"),
        (b"\x89PNG garbage", "not a readable image"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((4, 4, 2)), "shape"),
        (np.array([[np.nan, 0.0]]), "NaN"),
        (np.full((9, 9), -1.0), "negative"),
        (np.full((9, 9), "a"), "numbers"),
        (np.zeros((3, 3)), "at least 5 pixels"),
        (42, "must be a file path"),
    ]
    for image, message in cases:
        with pytest.raises(ImageError, match=message):
            prepare_image(image)
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        prepare_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="preparation"):
        prepare_image(np.zeros((9, 9)), preparation="sketch")


def test_photo_preparation_keeps_the_whole_picture() -> None:
    """Fashion-MNIST's look: no cropping to the ink, the object light on black."""
    photo = np.full((100, 100), 250, np.uint8)
    photo[10:40, 60:90] = 30  # a dark object in the top right corner of a light photo
    prepared = prepare_image(photo, preparation="photo")
    assert prepared[7, 21] > 200 and prepared[20, 7] < 30  # it stays where it was, now light on black
    assert prepared[0, 0] == 0


def test_text_art_shows_the_input(reference: np.ndarray) -> None:
    art = text_art(reference).split("\n")
    assert len(art) == 28 and max(len(line) for line in art) <= 56
    assert "@" in text_art(reference) and art[0].strip() == ""


def _flood_labels(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


@pytest.mark.parametrize("seed", range(5))
def test_components_match_a_flood_fill(seed: int) -> None:
    mask = np.random.default_rng(seed).random((40, 37)) > 0.62
    labels, comps = label(mask)
    assert len(comps) == _flood_labels(mask)
    assert np.array_equal(labels > 0, mask)
    assert sum(c.area for c in comps) == int(mask.sum())
    for c in comps:
        ys, xs = np.nonzero(labels == c.label)
        assert c.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and c.area == len(ys)


def _digit_centres(digits: list[int], height: int, gaps: list[float], margin: float = 0.5) -> list[float]:
    xs = [margin * height]
    for g in gaps:
        xs.append(xs[-1] + (0.6 + g) * height)
    return [x + 0.3 * height for x in xs[: len(digits)]]


@pytest.mark.parametrize("seed", range(4))
def test_a_line_is_cut_into_its_digits_left_to_right(seed: int) -> None:
    rng = np.random.default_rng(seed)
    digits = [int(d) for d in rng.integers(0, 10, int(rng.integers(3, 11)))]
    gaps = [float(g) for g in rng.uniform(0.08, 0.8, len(digits) - 1)]
    page = as_scan(
        draw_digits(digits, height=60, thickness=float(rng.uniform(0.06, 0.14)), gaps=gaps, jitter=0.01, seed=seed),
        noise=0.04,
        gradient=0.4,
        jpeg=60,
    )
    glyphs = segment(find_ink(page))
    assert len(glyphs) == len(digits)
    centres = [(g.box[0] + g.box[2]) / 2 for g in glyphs]
    assert centres == sorted(centres)
    for centre, expected in zip(centres, _digit_centres(digits, 60, gaps)):
        assert abs(centre - expected) < 0.3 * 60


def test_broken_strokes_merge_and_touching_digits_split() -> None:
    broken = draw_digits([5, 1, 7], height=80, gaps=[0.4, 0.4])
    ImageDraw.Draw(broken).rectangle((30, 40 + 16, 40 + 20, 40 + 22), fill=255)  # cut the 5
    assert len(find_ink(broken).pieces) == 4 and len(segment(find_ink(broken))) == 3
    touching = draw_digits([0, 0, 8], height=80, gaps=[-0.03, -0.03], thickness=0.1)
    assert len(find_ink(touching).pieces) == 1
    glyphs = segment(find_ink(touching))
    assert len(glyphs) == 3
    assert all(abs(g.box[2] - g.box[0] - 0.6 * 80) < 0.2 * 80 for g in glyphs)


def test_lines_are_read_top_to_bottom() -> None:
    top, bottom = draw_digits([1, 2, 3], height=50), draw_digits([4, 5, 6, 7], height=50)
    page = Image.new("L", (bottom.width + 40, top.height + bottom.height), 255)
    page.paste(bottom, (0, top.height))
    page.paste(top, (40, 0))
    glyphs = segment(find_ink(page))
    assert [g.line for g in glyphs] == [0, 0, 0, 1, 1, 1, 1]
    assert all(glyphs[i].box[0] < glyphs[i + 1].box[0] for i in (0, 1, 3, 4, 5))
