"""Draw the README's "Reading your own digits" picture: a photographed page of handwriting, read by a model.

    python bench/read_digits_picture.py MODEL.gguf docs/read_digits.png [--data data/mnist]

The page holds three lines of MNIST test digits (writers the model never saw), written with uneven
gaps on tinted paper, then photographed badly: turned a little, lit from one side, noisy and saved as
JPEG. model.read_digits finds, cuts and reads the digits; the boxes and labels are drawn by
ggml_mnist.pictures.annotate.annotate (green: at least 90 % sure, orange: 60 %, red: less).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import ggml_mnist as gm  # noqa: E402
from ggml_mnist.pictures.annotate import annotate, save_png  # noqa: E402
from support.handwriting import as_scan  # noqa: E402

LINES = (7, 9, 5)  # digits per line


def page(x: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A black-on-white page of MNIST digits in lines with uneven gaps and baselines, and its text."""
    rows, text = [], []
    for n in LINES:
        idx = rng.choice(len(x[0]), n, replace=False)
        gaps = rng.integers(0, 18, n)
        row = np.zeros((44, 28 * n + int(gaps.sum()) + 20), dtype=np.uint8)
        pos = 20
        for j, g in zip(idx, gaps):
            dy = int(rng.integers(0, 12))
            row[dy : dy + 28, pos : pos + 28] = np.maximum(row[dy : dy + 28, pos : pos + 28], x[0][j])
            pos += 28 + int(g)
        rows.append(row)
        text.append("".join(str(int(v)) for v in x[1][idx]))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate(
        [np.zeros((10, width), np.uint8)] + [np.pad(r, ((0, 12), (0, width - r.shape[1]))) for r in rows]
    )
    return Image.fromarray(255 - sheet).resize((width * 2, sheet.shape[0] * 2), Image.Resampling.BICUBIC), "\n".join(
        text
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--photo", help="also save the page as photographed (JPEG), without the annotations")
    args = p.parse_args()
    model = gm.load(args.model)
    rng = np.random.default_rng(args.seed)
    clean, truth = page(gm.load_mnist(args.data, "test"), rng)
    photo = as_scan(
        clean, paper=(238, 228, 205), ink=(25, 35, 110), rotate=-3, gradient=0.45, noise=0.025, jpeg=60, seed=args.seed
    )
    if args.photo:
        photo.save(args.photo, quality=90)
    reading = model.read_digits(photo)
    save_png(annotate(photo, reading.digits), args.out)
    read, want = reading.text.replace("\n", ""), truth.replace("\n", "")
    right = sum(a == b for a, b in zip(read, want)) if len(read) == len(want) else 0
    print(f"read:\n{reading.text}\ntruth:\n{truth}\n{right} of {len(want)} digits right")


if __name__ == "__main__":
    main()
