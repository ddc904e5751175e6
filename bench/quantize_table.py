"""Measure quantised copies of trained models on the MNIST test set: the README's "Quantised files" table.

    python bench/quantize_table.py fc.gguf cnn.gguf ... [--data data/mnist] [--types f16 q8_0 q5_0 q4_0] [--json out.json]

Per model and type (f32 first; the block types zero-padded with pad=True, and also without padding where that
quantises something else): file size, test accuracy with its standard error, the change against f32 with the
standard error of the paired difference (the same 10 000 images), evaluation images/s (best of --repeats runs)
and the median one-image latency. Prints a markdown table and one JSON object per row.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import ggml_mnist as gm


def measure(model: gm.Model, x: np.ndarray, y: np.ndarray, repeats: int, single: int) -> dict:
    """Accuracy, file size, best images/s over repeats and median one-image latency of model."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.gguf")
        model.save(path)
        size = os.path.getsize(path)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = model.predict(x)
        best = max(best, len(x) / (time.perf_counter() - t0))
    times = []
    for i in range(single):
        t0 = time.perf_counter()
        model.predict_proba(x[i : i + 1])
        times.append(time.perf_counter() - t0)
    correct = (pred == y).astype(np.float64)
    return {"bytes": size, "correct": correct, "images_per_second": best, "latency_ms": 1e3 * float(np.median(times))}


def variants(model: gm.Model, types: list[str]) -> list[tuple[str, gm.Model]]:
    """(label, model) for f32 and each type: padded, plus unpadded where it quantises a different set of tensors."""
    out = [("f32", model)]
    for t in types:
        padded = model.quantize(t, pad=True)
        try:
            plain = model.quantize(t)
        except gm.ConfigError:
            plain = None
        if plain is not None and plain.tensor_storage() != padded.tensor_storage():
            out.append((t, plain))
            out.append((f"{t} --pad", padded))
        else:
            out.append((t if plain is not None else f"{t} --pad", padded))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--types", nargs="+", default=["f16", "q8_0", "q5_0", "q4_0"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--single", type=int, default=300, help="one-image predictions timed for the latency")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    x, y = gm.load_mnist(args.data, "test")
    rows = []
    print(
        "| preset | weights | file size | vs f32 | test accuracy | change vs f32 | eval images/s | one-image latency |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in args.models:
        base = gm.load(path, threads=args.threads)
        ref = None
        for label, model in variants(base, args.types):
            m = measure(model, x, y, args.repeats, args.single)
            ref = ref or m
            n = len(y)
            acc = m["correct"].mean()
            diff = m["correct"] - ref["correct"]
            row = {
                "model": path,
                "preset": base.arch,
                "weights": label,
                "bytes": m["bytes"],
                "ratio": ref["bytes"] / m["bytes"],
                "accuracy": acc,
                "accuracy_unc": float(np.sqrt(acc * (1 - acc) / (n - 1))),
                "change": float(diff.mean()),
                "change_unc": float(diff.std(ddof=1) / np.sqrt(n)),
                "changed_predictions": int(np.abs(diff).sum()),
                "images_per_second": m["images_per_second"],
                "latency_ms": m["latency_ms"],
            }
            rows.append(row)
            change = "" if label == "f32" else f"{100 * row['change']:+.2f} ± {100 * row['change_unc']:.2f}"
            print(
                f"| {row['preset']} | {label} | {row['bytes'] / 1e3:,.1f} kB | {row['ratio']:.2f}x | "
                f"{100 * acc:.2f} ± {100 * row['accuracy_unc']:.2f} % | {change} | {row['images_per_second']:,.0f} | "
                f"{row['latency_ms']:.3f} ms |",
                flush=True,
            )
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
