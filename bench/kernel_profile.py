"""Where a training epoch's CPU time goes, per ggml kernel, sampled with Linux `perf` (see README "Performance").

    python bench/kernel_profile.py --arch cnn --images 20000 --batch-size 100 --threads 2 [--top 10]

Runs bench/worker.py's training job under `perf record` and prints the top symbols (ggml's CPU kernels are
named ggml_compute_forward_<op>; libgomp is OpenMP's threads waiting; _native is the shim, including its
own ops). Percentages are of all samples on all threads. Prints a one-line reason and exits 0 when perf is
not installed or not permitted, so bench/run.py --profile keeps going.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)")


def profile(arch: str, images: int, batch_size: int, threads: int, data: str, top: int) -> dict:
    perf = shutil.which("perf")
    if perf is None:
        return {"arch": arch, "skipped": "perf is not installed (apt-get install linux-perf)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "perf.data"
        cmd = [
            perf,
            "record",
            "-q",
            "-F",
            "499",
            "-o",
            str(out),
            sys.executable,
            str(HERE / "worker.py"),
            "train",
            "--framework",
            "ours",
            "--arch",
            arch,
            "--epochs",
            "1",
            "--batch-size",
            str(batch_size),
            "--threads",
            str(threads),
            "--data",
            data,
            "--limit",
            str(images),
        ]
        rec = subprocess.run(cmd, capture_output=True, text=True)
        if rec.returncode != 0 or not out.exists():
            return {"arch": arch, "skipped": f"perf record failed: {rec.stderr.strip()[-200:]}"}
        rep = subprocess.run(
            [perf, "report", "-i", str(out), "--sort", "dso,symbol", "--stdio"], capture_output=True, text=True
        ).stdout
    totals: dict[str, float] = {}
    for line in rep.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        if sym.startswith("0x"):  # a static function without a symbol: count it per library
            sym = f"{dso} (unnamed)"
        totals[sym] = totals.get(sym, 0.0) + pct
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {
        "arch": arch,
        "batch_size": batch_size,
        "images": images,
        "top": [{"symbol": s, "percent": round(p, 1)} for s, p in ranked],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["fc", "cnn"])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    args = p.parse_args()
    for arch in args.arch:
        print(json.dumps(profile(arch, args.images, args.batch_size, args.threads, args.data, args.top)))


if __name__ == "__main__":
    main()
