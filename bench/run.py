"""Side-by-side CPU benchmarks of ggml-mnist and PyTorch, as JSON (see README "Performance").

    python bench/run.py --rounds 3 --epochs 3 --threads 2 --batch-size 100 1000 --profile --out bench-results.json

Each round runs the ours and PyTorch workers one after the other (alternating which goes first),
each in a fresh subprocess, so both see the same machine state. Reported per architecture:
median epoch seconds (first epoch of each worker dropped as warm-up), the ratio ours/PyTorch,
peak RSS of a training run, evaluation images/s and one-image latency. With --driver (the C
driver built with -DGGML_MNIST_BUILD_DRIVER=ON and raw IDX files in --raw-data) the binding
overhead (Python API epoch / C epoch - 1) is reported too. Each --batch-size is its own set of rounds;
evaluation does not depend on it and runs once per architecture. --profile adds bench/kernel_profile.py's top
ggml kernels per architecture (Linux perf).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import ggml_mnist as gm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_profile  # noqa: E402  (bench/kernel_profile.py)

HERE = Path(__file__).resolve().parent


def run_json(cmd: list[str], env: Optional[dict[str, str]] = None) -> dict:
    """The JSON object on the last line of cmd's output (a fresh process); exits naming cmd when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(job: str, framework: str, arch: str, args: argparse.Namespace, batch_size: int = 100) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "worker.py"),
        job,
        "--framework",
        framework,
        "--arch",
        arch,
        "--threads",
        str(args.threads),
        "--batch-size",
        str(batch_size),
        "--epochs",
        str(args.epochs),
        "--data",
        args.data,
    ]
    return run_json(cmd)


def driver_epochs(arch: str, args: argparse.Namespace, batch_size: int) -> list[float]:
    raw = Path(args.raw_data)
    cmd = [
        args.driver,
        arch,
        str(raw / "train-images-idx3-ubyte"),
        str(raw / "train-labels-idx1-ubyte"),
        str(args.epochs),
        str(batch_size),
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["seconds"] for line in out.strip().splitlines()]


def median_after_warmup(runs: list[list[float]]) -> float:
    return statistics.median([t for r in runs for t in (r[1:] if len(r) > 1 else r)])


def train_rounds(arch: str, bs: int, args: argparse.Namespace) -> dict:
    train = {"ours": [], "torch": [], "c": []}
    rss = {"ours": [], "torch": []}
    for r in range(args.rounds):
        order = ["ours", "torch"] if r % 2 == 0 else ["torch", "ours"]
        for fw in order:
            res = worker("train", fw, arch, args, bs)
            train[fw].append(res["epoch_seconds"])
            rss[fw].append(res["peak_rss_mb"])
            print(f"[{arch} batch {bs}] round {r + 1} {fw}: {res['epoch_seconds']}", file=sys.stderr)
        if args.driver:
            train["c"].append(driver_epochs(arch, args, bs))
            print(f"[{arch} batch {bs}] round {r + 1} C driver: {train['c'][-1]}", file=sys.stderr)
    ours_s, torch_s = median_after_warmup(train["ours"]), median_after_warmup(train["torch"])
    res = {
        "train_epoch_seconds": {"ours": ours_s, "torch": torch_s},
        "train_ratio_ours_over_torch": ours_s / torch_s,
        "peak_rss_mb": {"ours": max(rss["ours"]), "torch": max(rss["torch"])},
        "raw_epoch_seconds": train,
    }
    if args.driver:
        c_s = median_after_warmup(train["c"])
        res["train_epoch_seconds"]["c_driver"] = c_s
        res["binding_overhead"] = ours_s / c_s - 1.0
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["fc", "cnn"], choices=list(gm.presets()))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, nargs="+", default=[100])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--driver", help="path to the gmn_driver binary (binding-overhead measurement)")
    p.add_argument("--raw-data", help="directory with uncompressed IDX files for the C driver")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--profile", action="store_true", help="add the top ggml kernels per architecture (needs perf)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    report: dict = {
        "threads": args.threads,
        "batch_sizes": args.batch_size,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "results": {},
    }
    for arch in args.arch:
        res: dict = {}
        for bs in args.batch_size:
            res[f"batch_{bs}"] = train_rounds(arch, bs, args)
        if not args.skip_eval:
            ev = {"ours": [], "torch": []}
            for r in range(args.rounds):
                for fw in ["ours", "torch"] if r % 2 == 0 else ["torch", "ours"]:
                    ev[fw].append(worker("eval", fw, arch, args))
            for key in ("images_per_second", "latency_ms"):
                res[key] = {fw: statistics.median(e[key] for e in ev[fw]) for fw in ev}
            res["eval_ratio_ours_over_torch"] = res["images_per_second"]["ours"] / res["images_per_second"]["torch"]
        if args.profile:
            res["profile"] = kernel_profile.profile(arch, 20000, args.batch_size[0], args.threads, args.data, 10)
        report["results"][arch] = res
        print(json.dumps({arch: {k: v for k, v in res.items() if k != "profile"}}), file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
