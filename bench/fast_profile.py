"""Where the time of a `fast` run goes: setup, gathering batches, the graph, Python, the end-of-epoch check, saving.

    python bench/fast_profile.py --threads 2 [--preset fast] [--seed 1]

The shim's own clocks (gmn_model_train_timing) split the training loop; the rest of the wall time of
gm.train() + model.save() is measured around them. Prints a table on stderr and JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ggml_mnist as gm
from ggml_mnist._ffi import ffi, lib


def handle_of(model: gm.Model):
    return model._handle  # private: this bench reads the shim's clocks directly


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="fast")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    x, y = gm.load_mnist(args.data, "train")
    cfg = gm.TrainConfig.defaults(args.preset).replace(seed=args.seed, threads=args.threads)
    timing = ffi.new("struct gmn_train_timing *")
    marks = {}

    def on_epoch(stats: gm.EpochStats, model: gm.Model) -> None:
        t_hook = time.perf_counter()
        assert lib.gmn_model_train_timing(handle_of(model), timing) == 0
        marks.setdefault("epoch_seconds", []).append(stats.seconds)
        marks["hook"] = marks.get("hook", 0.0) + time.perf_counter() - t_hook

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, history = gm.train(x, y, config=cfg, progress=False, on_epoch=on_epoch)
        t1 = time.perf_counter()
        model.save(os.path.join(tmp, "m.gguf"))
        t2 = time.perf_counter()
    total = t2 - t0
    in_epochs = sum(marks["epoch_seconds"])
    parts = {
        "gather batches (8-bit to float, labels)": timing.data,
        "first graph run (builds and allocates the graphs)": timing.first_graph,
        "graph runs (forward, backward, AdamW step)": timing.graph,
        "Python progress callback (per batch)": timing.callback,
        "end-of-epoch check of the final weights": timing.check,
        "rest of the epoch loops (ggml-opt bookkeeping, Python per epoch)": in_epochs
        - (timing.data + timing.first_graph + timing.graph + timing.callback + timing.check),
        "train() before the first epoch and after the last (checks, dataset copy, model)": (t1 - t0) - in_epochs,
        "model.save": t2 - t1,
    }
    for name, s in parts.items():
        print(f"{s:8.3f} s  {100 * s / total:5.1f} %  {name}", file=__import__("sys").stderr)
    print(
        f"{total:8.3f} s  100.0 %  total ({timing.graph_runs} graph runs, {args.threads} threads)",
        file=__import__("sys").stderr,
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "threads": args.threads,
                "seed": args.seed,
                "total_seconds": total,
                "parts_seconds": parts,
                "graph_runs": timing.graph_runs,
                "augment": cfg.augment,
                "final_train_acc": history[-1].train_acc,
            }
        )
    )


if __name__ == "__main__":
    main()
