"""Times the shim's matrix-product kernel on every product shape that fc, cnn and best hand it in training (batch
100, and batch 1000 as 8 physical batches of 125), one op at a time through the test-only entry point
gmn_testing_cpu_op, and prints one JSON line: for each shape, the fastest of --reps computations of the op's graph
(gmn_testing_cpu_repeat) in milliseconds, and their sum.

--other NATIVE.so loads another build's native module beside this one (both link the same ggml) and times the two
alternately, shape by shape, --rounds times; each figure is then the fastest over all rounds, and the line gives
both builds and their ratio (this over other). Alternating within one process keeps a shared machine's slow phases
from landing on one build only.

    python bench/gemm_shapes.py --other /tmp/old/ggml_mnist/_native.cpython-311-x86_64-linux-gnu.so --rounds 5

    python bench/gemm_shapes.py --threads 2 --reps 7
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_cpu_kernels import Operand, columns, lib, rows, run, this_build  # noqa: E402  (operands, entry point)

# (network, op, M, N, K or J, b's layout for out_prod): d [M, N]; out_prod's b is "rows" (its N values of a term
# side by side) or "columns" (a transposed gradient); mul_mat's operands are contiguous rows
SHAPES = [
    ("fc b100", "out_prod", 784, 500, 100, "rows"),
    ("fc b100", "out_prod", 500, 100, 10, "columns"),
    ("fc b100", "out_prod", 500, 10, 100, "rows"),
    ("fc b100", "mul_mat", 500, 100, 784, ""),
    ("fc b1000", "out_prod", 784, 500, 1000, "rows"),
    ("fc b1000", "out_prod", 500, 1000, 10, "columns"),
    ("fc b1000", "out_prod", 500, 10, 1000, "rows"),
    ("fc b1000", "mul_mat", 500, 1000, 784, ""),
    ("cnn b100", "out_prod", 9, 8, 78400, "rows"),
    ("cnn b100", "out_prod", 72, 16, 19600, "rows"),
    ("cnn b100", "out_prod", 72, 19600, 16, "columns"),
    ("cnn b100", "out_prod", 784, 100, 10, "columns"),
    ("cnn b100", "mul_mat", 8, 78400, 9, ""),
    ("cnn b100", "mul_mat", 16, 19600, 72, ""),
    ("cnn b125", "out_prod", 72, 24500, 16, "columns"),
    ("best b100", "out_prod", 9, 32, 78400, "rows"),
    ("best b100", "out_prod", 288, 64, 19600, "rows"),
    ("best b100", "out_prod", 288, 19600, 64, "columns"),
    ("best b100", "out_prod", 576, 128, 4900, "rows"),
    ("best b100", "out_prod", 576, 4900, 128, "columns"),
    ("best b100", "out_prod", 1152, 256, 100, "rows"),
    ("best b100", "out_prod", 1152, 100, 256, "columns"),
    ("best b100", "mul_mat", 32, 78400, 9, ""),
    ("best b100", "mul_mat", 64, 19600, 288, ""),
    ("best b100", "mul_mat", 128, 4900, 576, ""),
    ("best b100", "mul_mat", 256, 100, 1152, ""),
]


def operands(op: str, M: int, N: int, K: int, layout: str) -> list:
    rng = np.random.default_rng(M + N + K)
    if op == "mul_mat":
        return [rows(rng, K, M), rows(rng, K, N)]
    return [rows(rng, M, K), rows(rng, N, K) if layout == "rows" else columns(rng, N, K)]


def load_native(path: str) -> Any:
    """Another build's native module, under a name of its own."""
    spec = importlib.util.spec_from_file_location("gmn_other._native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fastest(native: Any, op: int, ops: list[Operand], size: int, threads: int, reps: int) -> float:
    """The fastest of reps computations of op's graph, in milliseconds, and a check that the shim's kernel ran."""
    native.lib.gmn_testing_cpu_repeat(reps)
    try:
        _, taken = run(op, [], ops, threads, room=size, native=native)
    finally:
        native.lib.gmn_testing_cpu_repeat(0)
    assert sum(taken.values()) == 1, f"the shim's kernel took no node ({taken})"
    return native.lib.gmn_testing_cpu_seconds() * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=1, help="alternations of the builds (with --other)")
    ap.add_argument("--other", help="another build's _native module (.so) to time alternately")
    ap.add_argument("--only", help="only the shapes whose name contains this text (e.g. 'cnn b100 out_prod')")
    args = ap.parse_args()
    if args.reps < 1 or args.rounds < 1:
        sys.exit("gemm_shapes: --reps and --rounds must be 1 or more")
    builds = {"this": this_build}
    if args.other:
        builds["other"] = load_native(args.other)
        if not hasattr(builds["other"].lib, "gmn_testing_cpu_repeat"):
            sys.exit(
                f"gemm_shapes: {args.other} predates gmn_testing_cpu_repeat; build the other kernels with "
                "this version's src/gmn_testing.c (swap in the other src/cpu/ only)"
            )
    out: dict[str, Any] = {name: module.__file__ for name, module in builds.items()}
    totals = dict.fromkeys(builds, 0.0)
    for net, op, M, N, K, layout in SHAPES:
        if args.only and args.only not in f"{net} {op} {M}x{N}x{K}{layout[:1]}":
            continue
        code = lib.GMN_TESTING_OUT_PROD if op == "out_prod" else lib.GMN_TESTING_MUL_MAT
        ops = operands(op, M, N, K, layout)
        best = dict.fromkeys(builds, float("inf"))
        for i in range(args.rounds):
            for name in list(builds)[:: 1 if i % 2 == 0 else -1]:
                best[name] = min(best[name], fastest(builds[name], code, ops, M * N, args.threads, args.reps))
        key = f"{net} {op} {M}x{N}x{K}{layout[:1]}"
        out[key] = {name: round(v, 3) for name, v in best.items()}
        for name in builds:
            totals[name] += best[name]
        if args.other:
            out[key]["ratio"] = round(best["this"] / best["other"], 3)
            print(
                f"{key:40s} this {best['this']:8.3f} ms  other {best['other']:8.3f} ms  this/other "
                f"{best['this'] / best['other']:.2f}",
                file=sys.stderr,
                flush=True,
            )
    out["total"] = {name: round(v, 3) for name, v in totals.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
