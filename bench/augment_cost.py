"""Cost of augmentation: seconds per training epoch with each augmentation level, alternating, as JSON.

    python bench/augment_cost.py --arch fc --rounds 3
    python bench/augment_cost.py --arch cnn --rounds 2

Each round trains one epoch per level (none, light, strong) from the same seed, in turn, so that a
change of machine load hits every level alike; the report gives each level's median epoch time and
its ratio to "none".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import ggml_mnist as gm
from ggml_mnist.augment import LEVELS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(gm.presets()), default="fc")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    x, y = gm.load_mnist(args.data, "train")
    times: dict[str, list[float]] = {level: [] for level in LEVELS}
    for _ in range(args.rounds):
        for level in LEVELS:
            _, history = gm.train(x, y, arch=args.arch, epochs=1, augment=level, threads=args.threads, progress=False)
            times[level].append(history[0].seconds)
    median = {level: statistics.median(t) for level, t in times.items()}
    print(
        json.dumps(
            {
                "arch": args.arch,
                "rounds": args.rounds,
                "seconds": times,
                "median": median,
                "ratio_to_none": {level: median[level] / median["none"] for level in LEVELS},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
