"""Recipe search for the `fast` preset on a validation split: train on the first 55 000 training images,
score the last 5 000. Each argument is one run's options as JSON (train() keywords, plus "net").

    python bench/fast_validation.py '{"epochs": 4, "lr": 0.02, "lr_schedule": "onecycle", "augment": "none", "threads": 1, "seed": 1}'
    python bench/fast_validation.py '{"net": "c8-24", "epochs": 4, ...}'   # conv 8 then 24 channels
    python bench/fast_validation.py '{"net": "bn8-16", ...}'               # batch normalisation after each conv
    python bench/fast_validation.py '{"net": "h64", ...}'                  # cnn plus a hidden dense layer of 64

"net" defaults to the cnn preset. Prints one JSON line per run: the options, validation accuracy in %, the
training time and the epoch times. The test set is never read.
"""

from __future__ import annotations

import json
import os
import sys
import time

import ggml_mnist as gm
from ggml_mnist import layers as L


def network(name: str):
    if name == "cnn":
        return "cnn"
    if name.startswith("bn"):
        a, b = map(int, name[2:].split("-"))
        return [
            L.Conv2d(a, 3, padding=1),
            L.BatchNorm(),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(b, 3, padding=1),
            L.BatchNorm(),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dense(10),
        ]
    if name.startswith("h"):
        return [
            L.Conv2d(8, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(16, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dense(int(name[1:])),
            L.ReLU(),
            L.Dense(10),
        ]
    if name.startswith("c"):
        a, b = map(int, name[1:].split("-"))
        return [
            L.Conv2d(a, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Conv2d(b, 3, padding=1),
            L.ReLU(),
            L.MaxPool2d(2),
            L.Dense(10),
        ]
    sys.exit(f"unknown net {name!r}: use cnn, cA-B, bnA-B or hN")


def main() -> None:
    x, y = gm.load_mnist(os.environ.get("GGML_MNIST_DATA", "data/mnist"), "train")
    for spec in sys.argv[1:]:
        options = json.loads(spec)
        arch = network(options.pop("net", "cnn"))
        t0 = time.perf_counter()
        model, history = gm.train(x[:55000], y[:55000], arch=arch, progress=False, **options)
        seconds = time.perf_counter() - t0
        result = gm.evaluate(model, x[55000:], y[55000:], keep_probabilities=False)
        print(
            json.dumps(
                {
                    **json.loads(spec),
                    "val_acc": round(100 * result.accuracy, 2),
                    "train_s": round(seconds, 1),
                    "epoch_s": [round(h.seconds, 2) for h in history],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
