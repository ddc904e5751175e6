"""Epoch times run after run: the median and the worst epoch of each network, thread count and OpenMP wait policy.

    python bench/steady_speed.py --arch fc cnn --threads 1 2 --runs 10 --epochs 3 [--policy default passive ...]

Each run is a fresh process (bench/worker.py train) with the policy's environment; the policies alternate within
each round, so a busy spell of the machine hits all of them. A policy is "default" (what ggml_mnist sets when the
environment says nothing), "passive" or "active" (OMP_WAIT_POLICY) or "spin:N" (GOMP_SPINCOUNT=N: spin N times,
then sleep; libgomp's own default is spin:300000). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def environment(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = policy
    elif policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy.split(":", 1)[1]
    return env


def run(arch: str, threads: int, policy: str, args: argparse.Namespace) -> list[float]:
    cmd = [
        sys.executable,
        str(WORKER),
        "train",
        "--framework",
        "ours",
        "--arch",
        arch,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "100",
        "--threads",
        str(threads),
        "--data",
        args.data,
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=environment(policy), check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["epoch_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["fc", "cnn"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--policy", nargs="+", default=["spin:300000", "default"])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0: all 60 000)")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    epochs: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for arch in args.arch:
            for threads in args.threads:
                for policy in args.policy:
                    epochs.setdefault(f"{arch} threads={threads} {policy}", []).extend(run(arch, threads, policy, args))
    print(
        json.dumps(
            {
                key: {"median": statistics.median(v), "worst": max(v), "best": min(v), "n": len(v)}
                for key, v in epochs.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
