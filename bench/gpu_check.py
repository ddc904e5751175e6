"""Train fc, cnn and best on a GPU, against the same seeded run on the CPU and PyTorch on CUDA; one JSON summary.

    python bench/gpu_check.py --device CUDA0 --data ../shared/data/mnist --epochs fc=3,cnn=3,best=2 --budget 420

bench/gpu_check.sh builds or installs the CUDA build first and then runs this. Every training run is a child process
(``job`` below) with its own timeout, so that a crash or an abort inside ggml is one failed entry of the summary,
not the end of the check. Per preset: ours on --device, PyTorch on CUDA (when torch is importable and sees a GPU;
skipped with a reason otherwise) and ours on the CPU, each with the preset's recipe, seed 42, batch 100, no
augmentation and no validation split, for the same number of epochs; then the test accuracy of each.
Epoch seconds are the median after the first (warm-up) epoch. ``--device cpu`` is a smoke mode for machines
without a GPU: the same logic, with PyTorch on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHS = ("fc", "cnn", "best")
DEFAULT_EPOCHS = "fc=3,cnn=3,best=2"


def find_data(given: str | None) -> str:
    """--data, else $GGML_MNIST_DATA, else ../shared/data/mnist or data/mnist next to the repository."""
    root = HERE.parent
    for cand in (
        given,
        os.environ.get("GGML_MNIST_DATA"),
        root.parent / "shared" / "data" / "mnist",
        root / "data" / "mnist",
    ):
        if cand and any((Path(cand) / f"train-images-idx3-ubyte{gz}").exists() for gz in ("", ".gz")):
            return str(Path(cand).resolve())
    sys.exit(
        "gpu_check: no MNIST found: give --data DIR or set GGML_MNIST_DATA (a folder with train-images-idx3-ubyte"
        "[.gz] and the other three files; `mnist-data` downloads them where there is a network)"
    )


def median_after_warmup(times: list[float]) -> float | None:
    return statistics.median(times[1:] if len(times) > 1 else times) if times else None


# ---- one run, in a child process ---------------------------------------------------------------------------------
def load_split(data: str, split: str, limit: int):
    import ggml_mnist as gm

    x, y = gm.load_mnist(data, split)
    return (x[:limit], y[:limit]) if limit else (x, y)


def job_ours(args: argparse.Namespace) -> dict:
    import ggml_mnist as gm

    x, y = load_split(args.data, "train", args.limit)
    xt, yt = load_split(args.data, "test", args.limit)
    times: list[float] = []
    t0 = time.perf_counter()
    model, hist = gm.train(
        x,
        y,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=100,
        seed=42,
        device=args.device,
        threads=args.threads,
        augment="none",
        val_split=0.0,
        progress=False,
        on_epoch=lambda s, _m: times.append(s.seconds),
    )
    wall = time.perf_counter() - t0
    ev = gm.evaluate(model, xt, yt, keep_probabilities=False)
    plan = getattr(model, "plan", None)
    return {
        "device": model.device,
        "epoch_seconds": times,
        "train_wall_seconds": wall,
        "final_train_loss": hist[-1].train_loss,
        "test_accuracy": ev.accuracy,
        "eval_images_per_second": ev.images_per_second,
        "plan": plan if isinstance(plan, dict) else None,
    }


def job_torch(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    import ggml_mnist as gm

    sys.path.insert(0, str(HERE))
    from worker import torch_net  # bench/worker.py: the preset's network, layer for layer

    dev = torch.device("cuda" if args.device.lower() != "cpu" else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(42)
    cfg = gm.TrainConfig.defaults(args.arch)
    x8, y8 = load_split(args.data, "train", args.limit)
    xt8, yt8 = load_split(args.data, "test", args.limit)
    x = torch.from_numpy(x8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28).to(dev)
    y = torch.from_numpy(y8.astype(np.int64)).to(dev)
    net = torch_net(args.arch).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = 100
    steps = len(x) // bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, args.epochs * steps))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    total = torch.zeros((), device=dev)
    for _ in range(args.epochs):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(x), device=dev)
        total = torch.zeros((), device=dev)
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    net.eval()
    with torch.inference_mode():
        xt = torch.from_numpy(xt8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28).to(dev)
        pred = torch.cat([net(xt[i : i + 10000]).argmax(1) for i in range(0, len(xt), 10000)]).cpu().numpy()
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "epoch_seconds": times,
        "final_train_loss": float(total) / steps,
        "test_accuracy": float((pred == yt8).mean()),
    }


def run_job(framework: str, arch: str, device: str, epochs: int, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "job",
        "--framework",
        framework,
        "--arch",
        arch,
        "--device",
        device,
        "--epochs",
        str(epochs),
        "--data",
        args.data,
        "--limit",
        str(args.limit),
        "--threads",
        str(args.threads),
    ]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        res = json.loads(lines[-1])
        res["process_seconds"] = round(wall, 2)
        return res
    why = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}"
    tail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-6:]
    return {"error": f"{why}: " + " | ".join(tail), "process_seconds": round(wall, 2)}


def job_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="gpu_check.py job")
    p.add_argument("--framework", choices=["ours", "torch"], required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    try:
        res = (job_ours if args.framework == "ours" else job_torch)(args)
    except Exception as e:  # noqa: BLE001  (the summary records any failure, with its type)
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return
    print(json.dumps(res))


# ---- the check ---------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import ggml_mnist as gm

    env = {
        "python": sys.version.split()[0],
        "ggml_mnist_build_info": gm.build_info,
        "ggml_version": gm.ggml_version,
        "devices": [dataclasses.asdict(d) for d in gm.devices()],
        "cpu_count": os.cpu_count(),
    }
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        env["nvidia_smi"] = q.stdout.strip().splitlines() if q.returncode == 0 else f"exit {q.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = f"not available ({type(e).__name__})"
    return env


def torch_available(device: str) -> tuple[bool, str]:
    code = (
        "import torch; c = torch.cuda.is_available(); "
        "print(torch.__version__, torch.version.cuda, c, torch.cuda.get_device_name(0) if c else '-')"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "importing torch timed out"
    if out.returncode != 0:
        return False, "torch is not importable: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    version, cuda, avail, name = (out.stdout.split(None, 3) + ["?"] * 4)[:4]
    if device.lower() != "cpu" and avail != "True":
        return False, f"torch {version} (CUDA {cuda}) sees no GPU"
    return True, f"torch {version} (CUDA {cuda}) on {name.strip() if device.lower() != 'cpu' else 'cpu'}"


def parse_epochs(spec: str) -> dict[str, int]:
    out = {}
    for part in spec.split(","):
        arch, _, n = part.partition("=")
        if arch not in ARCHS or not n.isdigit() or int(n) < 1:
            sys.exit(f"gpu_check: --epochs wants e.g. {DEFAULT_EPOCHS}, got {spec!r}")
        out[arch] = int(n)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "job":
        job_main(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="CUDA0", help="the device under test (default CUDA0; cpu: smoke mode)")
    p.add_argument("--data", default=None, help="MNIST folder (default $GGML_MNIST_DATA or ../shared/data/mnist)")
    p.add_argument("--epochs", default=DEFAULT_EPOCHS, help=f"epochs per preset (default {DEFAULT_EPOCHS})")
    p.add_argument("--limit", type=int, default=0, help="use the first N training and test images (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all runs; later runs are skipped")
    p.add_argument("--tolerance", type=float, default=0.5, help="largest |device - CPU| test accuracy, in points")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU runs (no accuracy comparison)")
    p.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = p.parse_args()
    args.data = find_data(args.data)
    epochs = parse_epochs(args.epochs)
    start = time.perf_counter()
    deadline = start + args.budget

    summary: dict = {
        "device": args.device,
        "data": args.data,
        "limit": args.limit,
        "epochs": epochs,
        "environment": environment(args.device),
        "runs": {},
        "problems": [],
    }
    use_torch, torch_note = (False, "--no-torch") if args.no_torch else torch_available(args.device)
    summary["torch"] = torch_note
    if not use_torch:
        print(f"gpu_check: PyTorch skipped: {torch_note}", file=sys.stderr)
    torch_device = "cuda" if args.device.lower() != "cpu" else "cpu"
    plan = [
        (arch, what)
        for arch in epochs
        for what in ("device", "torch", "cpu")
        if (what != "torch" or use_torch) and (what != "cpu" or not args.no_cpu)
    ]
    for arch, what in plan:
        run = summary["runs"].setdefault(arch, {})
        left = deadline - time.perf_counter()
        if left < 10:
            run[what] = {"error": f"skipped: the {args.budget:.0f} s budget is spent"}
            continue
        framework, device = {"device": ("ours", args.device), "torch": ("torch", torch_device), "cpu": ("ours", "cpu")}[
            what
        ]
        print(
            f"gpu_check: {arch} {framework} on {device}, {epochs[arch]} epoch(s) ({left:.0f} s left)",
            file=sys.stderr,
            flush=True,
        )
        res = run_job(framework, arch, device, epochs[arch], args, timeout=left)
        res["epoch_seconds_median"] = median_after_warmup(res.get("epoch_seconds", []))
        run[what] = res
        if "error" in res:
            summary["problems"].append(f"{arch} {what}: {res['error']}")
        print(
            f"gpu_check:   -> {json.dumps({k: res.get(k) for k in ('epoch_seconds_median', 'test_accuracy', 'error') if k in res})}",
            file=sys.stderr,
            flush=True,
        )

    for arch, run in summary["runs"].items():
        dev, cpu, tor = run.get("device", {}), run.get("cpu", {}), run.get("torch", {})
        if "test_accuracy" in dev and "test_accuracy" in cpu:
            diff = 100.0 * (dev["test_accuracy"] - cpu["test_accuracy"])
            run["accuracy_diff_points"] = round(diff, 3)
            if abs(diff) > args.tolerance:
                summary["problems"].append(
                    f"{arch}: test accuracy on {args.device} differs from the CPU's by "
                    f"{diff:+.2f} points (tolerance {args.tolerance})"
                )
        d, c, t = (r.get("epoch_seconds_median") for r in (dev, cpu, tor))
        if d and c:
            run["cpu_over_device_epoch"] = round(c / d, 3)
        if d and t:
            run["ours_over_torch_epoch"] = round(d / t, 3)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["ok"] = not summary["problems"]
    text = json.dumps(summary, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
