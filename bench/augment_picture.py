"""Draw the README's augmentation picture: training digits as each augmentation level changes them (needs Pillow).

    python bench/augment_picture.py docs/augment.png [--data data/mnist]

Row 1 shows 10 training images as they are; then two rows per level ("mild", the cnn's default for digits,
"light" and "strong", two seeds each), and
one row of hello-dl's pixel-flip noise ({"noise_pixels": 30}); each row is labelled on the left.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

import ggml_mnist as gm

SCALE, COLS, LABEL_W = 3, 10, 120


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    x, _ = gm.load_mnist(args.data, "train")
    x = x[:COLS]
    rows = [("original", x / 255.0)]
    for level in ("mild", "light", "strong"):
        for seed in (1, 2):
            rows.append((f"{level}, seed {seed}", gm.augment_images(x, level, seed=seed)))
    rows.append(("noise_pixels 30", gm.augment_images(x, {"noise_pixels": 30}, seed=1)))
    side = 28 * SCALE
    sheet = Image.new("L", (LABEL_W + COLS * side, len(rows) * side), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * side + side // 2 - 6), label, fill=0)
        strip = (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)
        sheet.paste(Image.fromarray(strip).resize((COLS * side, side), Image.NEAREST), (LABEL_W, r * side))
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
