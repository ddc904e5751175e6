"""Epoch times of this build against another build of ggml-mnist, alternating, each run in a fresh process.

    python bench/ab_builds.py --other /tmp/old --arch cnn fc --batch-size 100 1000 --pairs 3
    python bench/ab_builds.py --other /tmp/old --arch bench/fashion_best_bn.json --batch-size 100 --pairs 2
    python bench/ab_builds.py --other /tmp/old --arch cnn --batch-size 100 --busy-core 1   # a slowed core

--other is a folder holding another build's package (OTHER/ggml_mnist with its _native module and lib/), made for
example by copying python/ggml_mnist and the installed _native*.so, _build_info.py and lib/ of an older checkout.
Each pair runs both builds one after the other (which goes first alternates) with
gm.train(x, y, arch=A, epochs=E, batch_size=B, threads=T, augment="none", seed=1) on MNIST ($GGML_MNIST_DATA);
the first epoch of every run is dropped as warm-up. --busy-core N keeps a spinning process on core N for the whole
comparison, as a shared host does when it slows one of the cores that training uses. Prints, per network and batch
size, the median epoch seconds of each build and their ratio (this over other), then one JSON line with every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import run_json  # noqa: E402  (bench/run.py)

CHILD = textwrap.dedent("""
    import json, sys
    if sys.argv[1] == "other":  # the package on PYTHONPATH, not the venv's editable install
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    import ggml_mnist as gm
    arch, batch, epochs, threads, data = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    if arch.endswith(".json"):  # a layer file, as mnist-train --arch-file reads it
        arch = tuple(gm.load_layers(arch))
    x, y = gm.load_mnist(data, "train")
    _, history = gm.train(x, y, arch=arch, epochs=epochs, batch_size=batch, threads=threads, augment="none", seed=1,
                          progress=False)
    print(json.dumps({"module": sys.modules["ggml_mnist._native"].__file__,
                      "seconds": [h.seconds for h in history]}))
""")


def run(build: str, other: str, arch: str, batch: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if build == "other":
        env["PYTHONPATH"] = other + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", CHILD, build, arch, str(batch), str(args.epochs), str(args.threads), args.data]
    return run_json(cmd, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="folder with the other build's ggml_mnist package")
    ap.add_argument("--arch", nargs="+", default=["cnn", "fc"], help="presets or layer files (.json)")
    ap.add_argument("--batch-size", nargs="+", type=int, default=[100, 1000])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    ap.add_argument("--busy-core", type=int, help="keep a spinning process on this core meanwhile")
    args = ap.parse_args()
    busy = None
    if args.busy_core is not None:
        core = args.busy_core
        busy = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {core})
        )
    try:
        compare(args)
    finally:
        if busy is not None:
            busy.kill()


def compare(args: argparse.Namespace) -> None:
    other = os.path.abspath(args.other)
    record = {}
    for arch in args.arch:
        for batch in args.batch_size:
            epochs: dict[str, list[float]] = {"this": [], "other": []}
            for i in range(args.pairs):
                for build in ("this", "other") if i % 2 == 0 else ("other", "this"):
                    result = run(build, other, arch, batch, args)
                    if build == "other" and not result["module"].startswith(other):
                        sys.exit(f"ab_builds: the other build ran {result['module']}, not one under {other}")
                    epochs[build] += result["seconds"][1:]
            this, them = statistics.median(epochs["this"]), statistics.median(epochs["other"])
            print(
                f"{arch} batch {batch}: this {this:.3f} s, other {them:.3f} s, this/other {this / them:.2f} "
                f"(fastest {min(epochs['this']):.3f} / {min(epochs['other']):.3f})",
                flush=True,
            )
            record[f"{arch} b{batch}"] = epochs
    print(json.dumps(record))


if __name__ == "__main__":
    main()
