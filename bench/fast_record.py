"""The `fast` preset's record run: test accuracy and training time per seed, ours and PyTorch alternating, as JSON.

    python bench/fast_record.py --seeds 1 2 3 4 5 --threads 2            # ours and PyTorch (pip install torch==2.13.0)
    python bench/fast_record.py --seeds 1 2 3 4 5 --threads 2 --no-torch

Each run is a fresh subprocess. The data is loaded and converted before the clock starts; the time runs from the
call to train() (its first batch follows at once) to the saved model (ours: gm.train + model.save; PyTorch: the
same network, recipe, batch order rule and one-cycle formula, then torch.save). The test set is scored once per
run, after the clock stops. Seeds run in the order given, ours and PyTorch alternating which goes first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def ours(args: argparse.Namespace) -> dict:
    import ggml_mnist as gm

    x, y = gm.load_mnist(args.data, "train")
    xt, yt = gm.load_mnist(args.data, "test")
    cfg = gm.TrainConfig.defaults(args.preset).replace(seed=args.seed, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, history = gm.train(x, y, config=cfg, progress=False)
        model.save(os.path.join(tmp, "m.gguf"))
        seconds = time.perf_counter() - t0
    acc = gm.evaluate(model, xt, yt, keep_probabilities=False).accuracy
    return {
        "framework": "ours",
        "seed": args.seed,
        "train_seconds": seconds,
        "test_accuracy": acc,
        "epoch_seconds": [h.seconds for h in history],
        "recipe": cfg.as_dict(),
    }


def onecycle_lr(step: int, total: int, lr: float, up: int, min_ratio: float) -> float:
    """The shim's one-cycle rate (src/gmn_train.c), for PyTorch's LambdaLR."""
    if step < up:
        return lr + (lr / 25 - lr) * 0.5 * (1 + math.cos(math.pi * step / up))
    p = min(1.0, (step - up) / max(1, total - up))
    end = lr * min_ratio
    return max(end + (lr - end) * 0.5 * (1 + math.cos(math.pi * p)), 1e-12)


def torch_run(args: argparse.Namespace) -> dict:
    import torch

    import ggml_mnist as gm

    sys.path.insert(0, str(HERE))
    from worker import torch_net  # the preset's network, layer for layer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = gm.TrainConfig.defaults(args.preset)
    assert cfg.lr_schedule == "onecycle" and cfg.optimizer == "adamw" and cfg.augment == "none"
    x8, y8 = gm.load_mnist(args.data, "train")
    xt8, yt8 = gm.load_mnist(args.data, "test")
    x = torch.from_numpy(x8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y8.astype(np.int64))
    net = torch_net(args.preset)
    steps = len(x) // cfg.batch_size
    total, up = cfg.epochs * steps, int(round(cfg.warmup_epochs * steps)) or (cfg.epochs * steps * 3 + 9) // 10
    opt = torch.optim.AdamW(
        net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: onecycle_lr(s, total, cfg.lr, up, cfg.lr_min_ratio) / cfg.lr
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    epochs = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for _ in range(cfg.epochs):
            te = time.perf_counter()
            perm = torch.randperm(len(x))
            net.train()
            for i in range(steps):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
            epochs.append(time.perf_counter() - te)
        torch.save(net.state_dict(), os.path.join(tmp, "m.pt"))
        seconds = time.perf_counter() - t0
    net.eval()
    with torch.inference_mode():
        pred = net(torch.from_numpy(xt8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)).argmax(1).numpy()
    return {
        "framework": "torch",
        "seed": args.seed,
        "train_seconds": seconds,
        "test_accuracy": float((pred == yt8).mean()),
        "epoch_seconds": epochs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="fast")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--data", default=os.environ.get("GGML_MNIST_DATA", "data/mnist"))
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps((ours if args.worker == "ours" else torch_run)(args)))
        return
    runs = []
    for i, seed in enumerate(args.seeds):
        order = ["ours"] if args.no_torch else (["ours", "torch"] if i % 2 == 0 else ["torch", "ours"])
        for fw in order:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    fw,
                    "--seed",
                    str(seed),
                    "--threads",
                    str(args.threads),
                    "--preset",
                    args.preset,
                    "--data",
                    args.data,
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                sys.exit(f"fast_record: the {fw} run of seed {seed} failed:\n{out.stderr[-2000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"seed {seed} {fw}: {100 * r['test_accuracy']:.2f} % in {r['train_seconds']:.2f} s", file=sys.stderr)
    summary = {}
    for fw in ("ours", "torch"):
        mine = [r for r in runs if r["framework"] == fw]
        if mine:
            summary[fw] = {
                "mean_test_accuracy": statistics.mean(r["test_accuracy"] for r in mine),
                "test_accuracy": [r["test_accuracy"] for r in mine],
                "train_seconds": [round(r["train_seconds"], 2) for r in mine],
                "median_train_seconds": statistics.median(r["train_seconds"] for r in mine),
            }
    if "torch" in summary:
        summary["time_ratio_ours_over_torch"] = (
            summary["ours"]["median_train_seconds"] / summary["torch"]["median_train_seconds"]
        )
    print(json.dumps({"preset": args.preset, "threads": args.threads, "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
