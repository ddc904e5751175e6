"""Draw the README's picture: MNIST test digits with what a model reads in them (needs Pillow).

    python bench/readme_picture.py MODEL.gguf docs/digits.png [--data data/mnist]

48 test images in file order, 4 of them the model's first mistakes, each digit with its
prediction underneath: green when right, red (with the true label) when wrong.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import ggml_mnist as gm

SCALE, COLS, ROWS, LABEL = 3, 12, 4, 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    model = gm.load(args.model)
    x, y = gm.load_mnist(args.data, "test")
    pred = model.predict(x)
    wrong = np.flatnonzero(pred != y)[:4]
    right = np.flatnonzero(pred == y)[: COLS * ROWS - len(wrong)]
    picks = np.sort(np.concatenate([right, wrong]))
    side = 28 * SCALE
    sheet = Image.new("RGB", (COLS * (side + 8) + 8, ROWS * (side + LABEL + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for k, i in enumerate(picks):
        col, row = k % COLS, k // COLS
        left, top = 8 + col * (side + 8), 8 + row * (side + LABEL + 8)
        digit = Image.fromarray(255 - x[i]).resize((side, side), Image.NEAREST)
        sheet.paste(digit, (left, top))
        ok = pred[i] == y[i]
        text = f"{pred[i]}" if ok else f"{pred[i]} (is {y[i]})"
        draw.text((left + 2, top + side + 1), text, fill=(0, 130, 0) if ok else (200, 0, 0), font=font)
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
