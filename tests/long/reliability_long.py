"""The long versions of the reliability checks (not collected by pytest; each part has a bounded size).

    python tests/long/reliability_long.py [--parts fuzz,cycles,scale,kills] [--json OUT]

- fuzz:   tests/support/fuzz_loaders.py with --cases per kind (default 5000 each, plus truncation sweeps and the corpus)
- cycles: 200 train/evaluate/save/load cycles of a tiny fc and cnn; RSS growth from cycle 20 to 200, with glibc's
          default malloc settings and with a fixed mmap threshold (the CI test uses the latter)
- scale:  evaluate 1 000 000 images (and --eval-images more) with keep_probabilities=False; train on 200 000
- kills:  SIGKILL/SIGINT a process saving a 63 MB model (hidden=20000) at random moments, --kills times; the file
          must always load as one complete version; then a later save removes the stale temporary files
Prints one JSON object; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from support import reliability as rel  # noqa: E402

MB = 1e6


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fuzz.json"
        run = subprocess.run(
            [
                sys.executable,
                str(TESTS / "support" / "fuzz_loaders.py"),
                "--cases",
                str(args.cases),
                "--json",
                str(out),
                "--time-limit",
                str(args.fuzz_time_limit),
            ],
            capture_output=True,
            text=True,
        )
        report = json.loads(out.read_text())
    report["log"] = run.stdout.strip().splitlines()
    report["ok"] = run.returncode == 0
    return report


def cycles(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, env in (("default_malloc", None), ("fixed_mmap_threshold", rel.FIXED_MMAP_THRESHOLD)):
        rss = rel.rss_per_cycle(args.cycles, env=env)
        result[name] = {
            "growth_20_to_end_mb": round((rss[-1] - rss[19]) / MB, 3),
            "rss_mb_every_20": [round(r / MB, 2) for r in rss[19::20]],
        }
    result["ok"] = result["fixed_mmap_threshold"]["growth_20_to_end_mb"] < 5
    return result


def scale(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"evaluate": [], "train": None}
    for n in sorted({1_000_000, args.eval_images}):
        m = rel.eval_memory(n)
        result["evaluate"].append(
            {
                "images": n,
                "growth_mb": round((m["peak"] - m["rss_before"]) / MB, 1),
                "float_copy_mb": round(m["float_copy_bytes"] / MB),
                "seconds": round(m["seconds"], 2),
            }
        )
    m = rel.train_memory(args.train_images)
    growth = m["peak"] - m["rss_before"]
    result["train"] = {
        "images": args.train_images,
        "growth_mb": round(growth / MB, 1),
        "uint8_copy_mb": round(m["uint8_bytes"] / MB, 1),
        "float_copy_mb": round(m["float_copy_bytes"] / MB, 1),
    }
    result["ok"] = (
        all(e["growth_mb"] < 100 for e in result["evaluate"])
        and 0.9 * m["uint8_bytes"] < growth < 1.5 * m["uint8_bytes"]
    )
    return result


def kills(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        log: list[dict[str, Any]] = []
        error = None
        try:
            rel.kill_campaign(directory, kills=args.kills, hidden=args.hidden, seed=args.seed, max_delay=0.6, log=log)
        except AssertionError as e:  # a damaged file: reported with the kills so far
            error = str(e)
        leftovers = sorted({name for r in log for name in r["new_temp_files"]})
        for name in leftovers:
            rel.age(directory / name, 120)
        from ggml_mnist import Model

        Model.create("fc", hidden=4, threads=1).save(directory / "model.gguf")
        remaining = sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)
    by_signal = {s: sum(r["signal"] == s for r in log) for s in ("SIGKILL", "SIGINT")}
    return {
        "kills": len(log),
        "by_signal": by_signal,
        "file_ok_after_every_kill": error is None and len(log) == args.kills,
        "error": error,
        "saves_that_completed_after_the_signal": sum(r["version"] == r["last_saved"] + 1 for r in log),
        "distinct_versions_seen": len({r["version"] for r in log}),
        "temp_files_left_by_kills": len(leftovers),
        "temp_files_after_next_save": remaining,
        "ok": error is None and not remaining,
    }


PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fuzz": fuzz,
    "cycles": cycles,
    "scale": scale,
    "kills": kills,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--cases", type=int, default=5000, help="fuzz: generated cases per kind (default 5000)")
    p.add_argument("--fuzz-time-limit", type=float, default=1200)
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--eval-images", type=int, default=1_000_000)
    p.add_argument("--train-images", type=int, default=200_000)
    p.add_argument("--kills", type=int, default=60)
    p.add_argument("--hidden", type=int, default=20000, help="kills: fc hidden width of the saved model (20000: 63 MB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    result: dict[str, Any] = {}
    for name in args.parts.split(","):
        t0 = time.monotonic()
        result[name] = PARTS[name](args)
        result[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {json.dumps(result[name])[:2000]}", file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if all(part["ok"] for part in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
