"""Wall time until the default recipe first reaches a test accuracy, as JSON.

    python bench/time_to_accuracy.py --arch fc --target 0.98
    python bench/time_to_accuracy.py --arch cnn --target 0.99
    python bench/time_to_accuracy.py --arch lenet5 --target 0.99   # any preset of ggml_mnist.presets()
    python bench/time_to_accuracy.py --arch cnn --target 0.99 --stop-at-target

Trains with the default recipe (ggml_mnist.TrainConfig.defaults) and evaluates the test set
after every epoch; the reported time is training time only (evaluation excluded). Also reports
the final test accuracy of the full recipe and the per-epoch curve.
"""

from __future__ import annotations

import argparse
import json
import os

import ggml_mnist as gm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(gm.presets()), required=True)
    p.add_argument("--target", type=float, required=True, help="test accuracy to reach, e.g. 0.98")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count (and so its schedule)")
    p.add_argument("--stop-at-target", action="store_true", help="stop once the target is reached")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    x, y = gm.load_mnist(args.data, "train")
    xt, yt = gm.load_mnist(args.data, "test")
    curve = []
    elapsed = 0.0

    def on_epoch(stats: gm.EpochStats, model: gm.Model) -> None:
        nonlocal elapsed
        elapsed += stats.seconds
        acc = gm.evaluate(model, xt, yt, keep_probabilities=False).accuracy
        curve.append({"epoch": stats.epoch, "train_seconds": round(elapsed, 2), "test_accuracy": acc})
        return not (args.stop_at_target and acc >= args.target)

    cfg = gm.TrainConfig.defaults(args.arch)
    if args.epochs:
        cfg = cfg.replace(epochs=args.epochs)
    model, _ = gm.train(x, y, config=cfg, threads=args.threads, progress=False, on_epoch=on_epoch)
    reached = next((c for c in curve if c["test_accuracy"] >= args.target), None)
    print(
        json.dumps(
            {
                "arch": args.arch,
                "n_params": model.n_params,
                "target": args.target,
                "recipe": cfg.as_dict(),
                "seconds_to_target": reached["train_seconds"] if reached else None,
                "epoch_reached": reached["epoch"] if reached else None,
                "final_test_accuracy": curve[-1]["test_accuracy"],
                "total_train_seconds": round(elapsed, 2),
                "curve": curve,
            }
        )
    )


if __name__ == "__main__":
    main()
