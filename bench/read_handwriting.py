"""Measure how well models read handwriting in pictures (prepare_image, predict_image, read_digits).

    python bench/read_handwriting.py MODEL.gguf [MODEL.gguf ...] [--data data/mnist] [--n 1000]

Prints one JSON object per model with the accuracies of:
- mnist_plain: the first N MNIST test digits as they are (model.predict);
- mnist_scans: the same digits rendered as scans (upscaled to 60-600 px, dark ink on light paper, off-centre,
  noise, a lighting gradient, JPEG, tinted paper) and read with prepare_image;
- mnist_scans_naive: those scans converted to grey and resized to 28x28 as most people would (no preparation);
- drawn: digits drawn with Pillow strokes in many conditions (thickness, polarity, size 20-1000 px, rotation,
  slant, noise, gradient, JPEG, paper colour), per condition and overall;
- fonts: digits in the TrueType fonts found under /usr/share/fonts (printed, not handwritten: a sanity check);
- lines: lines of 3-10 MNIST test digits with uneven gaps rendered as scans and read with read_digits
  (digits right when the count matches, position by position; lines read exactly);
- other_writers (with --usps PATH): handwriting from writers outside MNIST, the USPS test set (2 007 digits from
  envelopes, 16x16; zip.test.gz of "The Elements of Statistical Learning", hastie.su.domains/ElemStatLearn/
  datasets/), rendered as low-resolution scans that were upscaled 4-12 times: sharp (16 px tall), scanned coarser
  (11 px), blurred, grainy, all three, and faint and blurred, read with predict_image; "direct" is the 16x16 digits
  given to model.predict in MNIST's layout (no picture step; stretched to 20x20 as USPS stretched them to 16x16),
  which tells the model's share of the errors from the preparation's.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import ggml_mnist as gm  # noqa: E402
from ggml_mnist.pictures.prepare import centre_by_mass  # noqa: E402
from support.handwriting import as_scan, draw_digits, mnist_scan, soft_scan  # noqa: E402

PAPERS = [(255, 255, 255), (240, 232, 210), (225, 225, 230)]
INKS = [(0, 0, 0), (20, 30, 120), (60, 60, 60)]


def _scan_options(rng: np.random.Generator) -> dict:
    return dict(
        invert=bool(rng.random() < 0.3),
        noise=float(rng.choice([0, 0.03, 0.08])),
        gradient=float(rng.choice([0, 0.3, 0.5])),
        jpeg=int(rng.choice([0, 40, 75])) or None,
        paper=PAPERS[int(rng.integers(len(PAPERS)))],
        ink=INKS[int(rng.integers(len(INKS)))],
        rotate=float(rng.uniform(-8, 8)),
    )


def _naive(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((28, 28), Image.Resampling.LANCZOS))


def _read(model: gm.Model, images: list) -> np.ndarray:
    out = []
    for img in images:
        try:
            out.append(model.predict_image(img).label)
        except gm.ImageError:
            out.append(-1)
    return np.array(out)


def mnist_scans(model: gm.Model, x: np.ndarray, y: np.ndarray) -> dict:
    rng = np.random.default_rng(1)
    scans = [
        mnist_scan(d, size=int(rng.choice([60, 150, 300, 600])), seed=i, **_scan_options(rng)) for i, d in enumerate(x)
    ]
    read = _read(model, scans)
    naive = model.predict(np.stack([_naive(s) for s in scans]))
    return {
        "mnist_plain": float((model.predict(x) == y).mean()),
        "mnist_scans": float((read == y).mean()),
        "mnist_scans_naive": float((naive == y).mean()),
        "n": int(len(y)),
    }


def drawn(model: gm.Model) -> dict:
    conditions = {
        "plain": {},
        "thin": dict(thickness=0.04),
        "thick": dict(thickness=0.16),
        "white_on_black": dict(invert=True),
        "size_20": dict(size=20),
        "size_1000": dict(size=1000, thickness=0.03),
        "rotated": dict(rotate=10),
        "slanted": dict(slant=0.25),
        "noisy": dict(noise=0.12),
        "gradient": dict(gradient=0.6),
        "jpeg": dict(jpeg=30),
        "paper": dict(paper=(235, 220, 180), ink=(40, 40, 140)),
        "everything": dict(invert=True, noise=0.06, gradient=0.4, jpeg=60, rotate=-6, size=400),
    }
    out = {}
    hits = total = 0
    for name, opts in conditions.items():
        draw_opts = {k: opts.pop(k) for k in ("thickness", "slant") if k in opts}
        labels, images = [], []
        for seed in range(3):
            for d in range(10):
                img = draw_digits(
                    [d],
                    height=120,
                    thickness=draw_opts.get("thickness", 0.08),
                    slant=draw_opts.get("slant", 0.0),
                    jitter=0.02,
                    seed=seed * 10 + d,
                )
                images.append(as_scan(img, seed=seed, **opts))
                labels.append(d)
        acc = float((_read(model, images) == np.array(labels)).mean())
        out[name] = acc
        hits += acc * len(labels)
        total += len(labels)
    out["all"] = hits / total
    return out


def fonts(model: gm.Model) -> dict:
    out = {}
    for path in sorted(glob.glob("/usr/share/fonts/truetype/*/*.ttf"))[:6]:
        font = ImageFont.truetype(path, 100)
        images = []
        for d in range(10):
            img = Image.new("L", (120, 140), 255)
            ImageDraw.Draw(img).text((30, 10), str(d), font=font, fill=0)
            images.append(img)
        out[os.path.basename(path)] = float((_read(model, images) == np.arange(10)).mean())
    return out


def lines(model: gm.Model, x: np.ndarray, y: np.ndarray, n_lines: int = 60) -> dict:
    rng = np.random.default_rng(2)
    right = total = exact = 0
    for i in range(n_lines):
        k = int(rng.integers(3, 11))
        idx = rng.choice(len(y), k, replace=False)
        gaps = rng.uniform(-2, 14, k - 1).astype(int)  # MNIST digits have ~4 px of margin: -2 nearly touches
        width = 28 * k + int(gaps.sum()) + 40
        page = np.zeros((48, width), dtype=np.uint8)
        pos = 20
        for j, g in zip(idx, list(gaps) + [0]):
            page[10:38, pos : pos + 28] = np.maximum(page[10:38, pos : pos + 28], x[j])
            pos += 28 + int(g)
        img = Image.fromarray(255 - page).resize((width * 5, 48 * 5), Image.Resampling.BICUBIC)
        scan = as_scan(img, seed=i, **_scan_options(rng))
        try:
            read = model.read_digits(scan).text
        except gm.ImageError:
            scan.save(f"/tmp/i10-failed-line-{i}.png")
            read = ""
        truth = "".join(str(int(v)) for v in y[idx])
        total += k
        exact += read == truth
        if len(read) == k:
            right += sum(a == b for a, b in zip(read, truth))
    return {"digits": right / total, "lines_exact": exact / n_lines, "n_digits": total, "n_lines": n_lines}


def load_usps(path: str) -> tuple[np.ndarray, np.ndarray]:
    """USPS digits from the text file of ESL's site (a label, then 256 values in [-1, 1], -1 = paper): [N, 16, 16]
    ink in [0, 1], labels [N]."""
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        rows = np.loadtxt(f, dtype=np.float32)
    return ((rows[:, 1:] + 1.0) / 2.0).reshape(-1, 16, 16), rows[:, 0].astype(np.int64)


def _mnist_layout(ink: np.ndarray) -> np.ndarray:
    """A 16x16 digit in MNIST's layout: stretched to 20x20, centred by its mass in 28x28, uint8 white ink."""
    return centre_by_mass(
        np.clip(np.asarray(Image.fromarray(ink, "F").resize((20, 20), Image.Resampling.BILINEAR)), 0, 1)
    )


def other_writers(model: gm.Model, x: np.ndarray, y: np.ndarray) -> dict:
    conditions = {
        "sharp": dict(res=16),
        "coarser": dict(res=11),
        "blurred": dict(res=16, blur=0.8),
        "grainy": dict(res=16, grain=0.06),
        "coarse_blurred_grainy": dict(res=11, blur=0.6, grain=0.06),
        "faint_blurred": dict(res=16, blur=0.8, dark=0.55),
    }
    out = {"direct": float((model.predict(np.stack([_mnist_layout(d) for d in x])) == y).mean())}
    reads = []
    for name, opts in conditions.items():
        rng = np.random.default_rng(3)
        images = [soft_scan(d, factor=int(rng.choice([4, 8, 12])), seed=i, **opts) for i, d in enumerate(x)]
        reads.append(_read(model, images))
        out[name] = float((reads[-1] == y).mean())
    read, truth = np.concatenate(reads), np.tile(y, len(conditions))
    out["all"] = float((read == truth).mean())
    out["refused"] = int((read < 0).sum())
    out["per_digit"] = {int(d): round(float((read[truth == d] == d).mean()), 4) for d in np.unique(truth)}
    out["read_as"] = {}  # per digit: each wrong answer and how often it was given (-1: refused)
    for d in np.unique(truth):
        wrong, counts = np.unique(read[(truth == d) & (read != d)], return_counts=True)
        out["read_as"][int(d)] = {int(w): int(c) for w, c in zip(wrong, counts)}
    out["n"] = int(len(y))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--n", type=int, default=1000, help="MNIST test digits to render as scans")
    p.add_argument("--usps", help="the USPS test set (zip.test.gz) for the other writers' handwriting")
    p.add_argument("--n-usps", type=int, default=500, help="USPS digits to read (spread over the set)")
    p.add_argument("--only", choices=["lines", "mnist", "drawn", "fonts", "other_writers"], action="append")
    args = p.parse_args()
    if args.only and "other_writers" in args.only and not args.usps:
        p.error("--only other_writers needs --usps PATH (the USPS test set, zip.test.gz)")
    x, y = gm.load_mnist(args.data, "test")
    x, y = x[-args.n :], y[-args.n :]
    if args.usps:
        ux, uy = load_usps(args.usps)
        pick = np.linspace(0, len(uy) - 1, min(args.n_usps, len(uy))).astype(int)
        ux, uy = ux[pick], uy[pick]
    for path in args.models:
        model = gm.load(path)
        parts = [
            ("lines", lambda m=model: lines(m, x, y)),
            ("mnist", lambda m=model: mnist_scans(m, x, y)),
            ("drawn", lambda m=model: drawn(m)),
            ("fonts", lambda m=model: fonts(m)),
        ]
        if args.usps:
            parts.append(("other_writers", lambda m=model: other_writers(m, ux, uy)))
        for name, part in parts:
            if args.only and name not in args.only:
                continue
            print(json.dumps({"model": path, name: part()}), flush=True)


if __name__ == "__main__":
    main()
