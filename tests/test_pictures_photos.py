"""Phone photos of a sheet on a table: the table at the picture's edges is neither part of the digit nor a digit
itself, and ink cut off by the edge is refused as such (synthetic photos from tests/photos.py, no data)."""

from __future__ import annotations

import pytest
from PIL import Image

from ggml_mnist import ImageError, prepare_image
from ggml_mnist.pictures.prepare import find_ink, prepare_with_box
from ggml_mnist.pictures.segment import segment
from support.handwriting import correlation, draw_digits
from support.photos import photo_of_sheet, sheet_with

SHEET = (1000, 1400)
VIEWS = {  # where the sheet's corners land in a 1000 x 1333 photo: table in the corners and along edges
    "corners": [(60, 50), (940, 20), (1000, 1330), (20, 1390)],
    "strip-top": [(-60, -40), (1040, 30), (1100, 1380), (-20, 1450)],
    "turned": [(-200, 80), (900, -100), (1150, 1300), (-50, 1500)],
}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("digit", [0, 4])
def test_the_table_stays_out_of_the_crop(view: str, digit: int) -> None:
    writing = draw_digits([digit], height=300, thickness=0.08)
    photo = photo_of_sheet(sheet_with(writing, sheet=SHEET, at=(300, 400)), VIEWS[view], (1000, 1333), seed=digit)
    prepared, box = prepare_with_box(photo)
    x0, y0, x1, y1 = box
    assert x0 > 300 and x1 < 800 and y0 > 350 and y1 < 950  # the digit's neighbourhood, no corner of the table
    cropped = prepare_image(photo.crop((200, 250, 850, 1050))).astype(float)  # the photo cut to the paper
    assert correlation(prepared, cropped) > 0.75


def test_a_page_photo_has_no_phantom_digits_at_its_edges() -> None:
    page = sheet_with(draw_digits([1, 2, 3, 4, 5], height=120), sheet=SHEET, at=(100, 500))
    photo = photo_of_sheet(page, [(-150, 60), (1000, -30), (1120, 1300), (-30, 1400)], (1000, 1333), seed=5)
    glyphs = segment(find_ink(photo))
    assert len(glyphs) == 5
    assert all(g.box[1] > 0 and g.box[3] < 1200 for g in glyphs)


def test_a_sheet_on_a_lit_table_photographed_at_an_angle_keeps_the_digit() -> None:
    writing = draw_digits([8], height=200)
    photo = photo_of_sheet(
        sheet_with(writing, sheet=(700, 900), at=(250, 300)),
        [(150, 120), (820, 60), (900, 1100), (90, 1180)],
        (1000, 1300),
        light=0.5,
        seed=3,
    )
    prepared = prepare_image(photo).astype(float)
    cropped = prepare_image(photo.crop((200, 250, 750, 1000))).astype(float)  # the photo cut to the paper
    assert correlation(prepared, cropped) > 0.95


def test_a_digit_cut_off_by_the_edge_is_refused_as_touching_it() -> None:
    """A 7 whose bar runs along the picture's top edge: refused as touching it (it was read with its bar lost). The
    second look of a tight crop, with a margin of paper, accepts ink that reaches across the picture, not this."""
    seven = draw_digits([7], height=200, margin=0.0)
    page = Image.new("L", (seven.width + 100, seven.height + 60), 255)
    page.paste(seven, (50, -6))
    with pytest.raises(ImageError, match="touches the picture's edge"):
        prepare_image(page)


def test_a_digit_reaching_the_edge_is_still_read() -> None:
    """A stroke that only reaches the edge (a 1 cut at its foot) is no background."""
    one = draw_digits([1], height=200)
    cut = one.crop((0, 0, one.width, one.height - 90))
    prepared = prepare_image(cut)
    assert prepared.max() == 255
