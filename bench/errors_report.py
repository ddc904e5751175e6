"""What a model still gets wrong on a test set: the confusion matrix, the most confused pairs and the hardest
images, as JSON, plus an optional picture of the hardest images (needs Pillow).

    python bench/errors_report.py MODEL.gguf [--data data/mnist] [--picture docs/hardest.png] [--top 24]

"Hardest" means the lowest probability given to the true class. The picture shows each such image with
"true->predicted (probability of the prediction)" underneath.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import ggml_mnist as gm

SCALE, COLS, LABEL = 3, 12, 14


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--picture")
    p.add_argument("--top", type=int, default=24)
    args = p.parse_args()
    model = gm.load(args.model)
    x, y = gm.load_mnist(args.data, "test")
    result = gm.evaluate(model, x, y)
    cm = result.confusion_matrix()
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[t, q]), t, q) for t in range(len(cm)) for q in range(len(cm)) if off[t, q]), reverse=True)
    p_true = result.probabilities[np.arange(len(y)), y]
    hardest = np.argsort(p_true)[: args.top]
    report = {
        "model": args.model,
        "accuracy": result.accuracy,
        "accuracy_unc": result.accuracy_unc,
        "errors": int(off.sum()),
        "confusion_matrix": cm.tolist(),
        "most_confused": [{"true": t, "predicted": q, "count": c} for c, t, q in pairs[:10]],
        "errors_per_true_class": off.sum(axis=1).tolist(),
        "hardest": [
            {
                "index": int(i),
                "true": int(y[i]),
                "predicted": int(result.predictions[i]),
                "p_true": float(p_true[i]),
                "p_predicted": float(result.probabilities[i].max()),
            }
            for i in hardest
        ],
    }
    print(json.dumps(report, indent=1))
    if args.picture:
        _picture(x[hardest], report["hardest"], args.picture)


def _picture(images: np.ndarray, rows: list[dict], out: str) -> None:
    from PIL import Image, ImageDraw

    side = 28 * SCALE
    n_rows = (len(rows) + COLS - 1) // COLS
    sheet = Image.new("RGB", (COLS * side, n_rows * (side + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (img, info) in enumerate(zip(images, rows)):
        x0, y0 = (k % COLS) * side, (k // COLS) * (side + LABEL)
        sheet.paste(Image.fromarray(255 - img).resize((side, side), Image.NEAREST), (x0, y0))
        text = f"{info['true']}->{info['predicted']} ({info['p_predicted']:.2f})"
        draw.text((x0 + 4, y0 + side + 1), text, fill="red" if info["true"] != info["predicted"] else "black")
    sheet.save(out, optimize=True)


if __name__ == "__main__":
    main()
