"""Import a CUDA build of ggml-mnist and show how it picks devices (bench/cuda_build.sh runs it).

Prints ggml_mnist.build_info and gm.devices(), then:
- with no CUDA device (no GPU or no driver): device="auto" must run on the CPU and say so in one line on stderr,
  and training with device="CUDA0" must raise gm.DeviceError naming the fix (in a child process, so that an abort
  shows as one);
- with a CUDA device: device="auto" must pick it, and one tiny epoch must train on CUDA0.
Exits 1 when an expectation fails. Everything ggml-mnist writes to stderr is shown verbatim.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD_TRAIN = textwrap.dedent("""
    import sys, numpy as np, ggml_mnist as gm
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8); y = rng.integers(0, 10, 200).astype(np.int32)
    try:
        model, hist = gm.train(x, y, arch="fc", epochs=1, batch_size=100, device=sys.argv[1], progress=False)
    except gm.DeviceError as e:
        print("DeviceError:", e); sys.exit(3)
    print("trained on", model.device, "loss", round(hist[-1].train_loss, 4))
""")


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def show(title: str, proc: subprocess.CompletedProcess) -> None:
    print(f"--- {title}: exit {proc.returncode}")
    for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        for line in text.rstrip("\n").splitlines():
            print(f"    {stream}| {line}")


def main() -> int:
    failures = []
    # import, build_info and devices in a child too: their stderr (ggml's CUDA initialisation) is part of the answer
    probe = run_child(
        "import ggml_mnist as gm; print('build_info =', gm.build_info); print('ggml', gm.ggml_version); "
        "[print('device', d) for d in gm.devices()]; "
        "m = gm.Model.create('fc', device='auto'); print('auto ->', m.device)"
    )
    show("import, build_info, gm.devices(), Model.create('fc', device='auto')", probe)
    if probe.returncode != 0:
        print("FAIL: the CUDA build does not import or cannot create a model")
        return 1
    has_cuda_backend = "ggml-cuda" in probe.stdout
    cuda_devices = [ln for ln in probe.stdout.splitlines() if ln.startswith("device") and "name='CUDA" in ln]
    auto = next((ln.split("-> ", 1)[1] for ln in probe.stdout.splitlines() if ln.startswith("auto ->")), "")
    if not has_cuda_backend:
        failures.append("build_info['backends'] has no ggml-cuda: the build did not switch CUDA on")
    train = run_child(CHILD_TRAIN, "CUDA0")
    show("gm.train(..., device='CUDA0')", train)
    if cuda_devices:
        if not auto.upper().startswith("CUDA"):
            failures.append(f"a CUDA device is listed but device='auto' chose {auto!r}")
        if train.returncode != 0:
            failures.append("training on CUDA0 failed on a machine that lists a CUDA device")
    else:
        if auto.upper() != "CPU":
            failures.append(f"no CUDA device, yet device='auto' chose {auto!r} instead of the CPU")
        if train.returncode != 3:
            failures.append(
                "training on CUDA0 without a CUDA device did not raise gm.DeviceError "
                f"(exit {train.returncode}{', killed by a signal' if train.returncode < 0 else ''})"
            )
        fallback_lines = [ln for ln in probe.stderr.splitlines() if ln.strip()]
        print(f"--- stderr of gm.devices() and device='auto' without a CUDA device: {len(fallback_lines)} line(s)")
        if len(fallback_lines) != 1:
            failures.append(
                f"expected one line on stderr saying that device='auto' falls back to the CPU and why "
                f"(ggml's CUDA initialisation message); got {len(fallback_lines)}"
            )
        if has_cuda_backend and "DGGML_CUDA=on" in train.stdout:
            failures.append(
                "the DeviceError tells a CUDA build to rebuild with -DGGML_CUDA=on; the fix here is a GPU "
                "and its driver (nvidia-smi), or device='cpu'"
            )
    for f in failures:
        print("FAIL:", f)
    print("cuda_smoke:", "OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
