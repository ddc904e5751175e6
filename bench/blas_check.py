"""Check a build of ggml-mnist with ggml's BLAS backend (bench/blas_build.sh runs it): the backends it has, then
for fc and cnn one epoch on MNIST ($GGML_MNIST_DATA, 2 threads, batch 100, no augmentation) with the model's plan,
test accuracy and epoch seconds. Exits 1 unless the BLAS backend is there, the plan turns the shim's kernels off
for it, and both networks learn (test accuracy above 90 %)."""

from __future__ import annotations

import os
import sys
import time

import ggml_mnist as gm


def main() -> int:
    print("build_info =", gm.build_info)
    backends = gm.build_info.get("backends", [])
    failures = [] if any("blas" in b.lower() for b in backends) else [f"no BLAS backend in {backends}"]
    data = os.environ.get("GGML_MNIST_DATA")
    if not data:
        print("GGML_MNIST_DATA is not set: point it at the folder with MNIST's IDX files")
        return 1
    for arch in ("fc", "cnn"):
        t = time.perf_counter()
        model, history = gm.train(
            data_dir=data, arch=arch, epochs=1, batch_size=100, threads=2, augment="none", seed=1, progress=False
        )
        seconds = time.perf_counter() - t
        accuracy = model.evaluate(data_dir=data).accuracy
        plan = model.plan
        print(f"{arch}: 1 epoch in {seconds:.1f} s, test accuracy {100 * accuracy:.2f} %")
        print(f"    plan: {plan}")
        if not plan["accel_products"] or plan["kernels"]:
            failures.append(f"{arch}: the plan keeps the shim's kernels beside the BLAS backend")
        if accuracy < 0.9:
            failures.append(f"{arch}: test accuracy {100 * accuracy:.2f} % after one epoch")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
